//! Budgets across a cluster. Each node's ledger holds only what ran on it,
//! so each node publishes its month-to-date costs per tenant (and per
//! function, where it keeps them) to the shared registry, under
//! `usage/<tenant>/<month>/<node>`, and follows what the others publish: a
//! budget is checked against this node's own count plus the others' last
//! published ones.
//!
//! The others' part lags by up to their index pass ([`crate::INDEX_EVERY`],
//! or [`crate::INDEX_WATCHED_EVERY`] while they check budgets too) plus
//! [`PUBLISH_EVERY`] ([`PUBLISH_WATCHED_EVERY`]) plus the watch's
//! delivery, so a tenant spending on every node at once can overshoot its
//! budget by what it spends in that lag on the other nodes (measured:
//! bench/README.md). A node that dies keeps its last published figures
//! counted for the month.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gust_core::usage;
use gust_store::{MetaEvent, MetaStore};
use serde::{Deserialize, Serialize};

use crate::{FastMap, Meter, lock};

/// How often a node publishes the costs that changed.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// How often while budgets are being checked on this node (its index
/// passes come every [`crate::INDEX_WATCHED_EVERY`] then too).
pub const PUBLISH_WATCHED_EVERY: Duration = Duration::from_millis(200);
const PREFIX: &str = "usage/";

/// One node's month of one tenant, as published.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Published {
    cost_micros: u64,
    /// Per function, where the node keeps them (it does for every tenant
    /// whose budgets it checks).
    #[serde(default)]
    functions: HashMap<String, u64>,
}

/// The other nodes' costs this month: tenant → (month, total, per function).
pub(crate) type PeerCosts = FastMap<String, (u64, u64, FastMap<String, u64>)>;

impl Meter {
    /// Shares this node's month-to-date costs with the other nodes of a
    /// cluster, and counts theirs in budgets, for as long as the process
    /// runs.
    pub fn share_costs(&self, kv: Arc<dyn MetaStore>, node: String) {
        tokio::spawn(self.clone().publish(kv.clone(), node.clone()));
        tokio::spawn(self.clone().follow(kv, node));
    }

    /// What the other nodes spent this month for `tenant` (0 if unknown),
    /// and for one of its functions.
    pub(crate) fn peer_cost(&self, tenant: &str, function: Option<&str>, month: u64) -> u64 {
        match lock(&self.inner.peers).get(tenant) {
            Some((kept, total, functions)) if *kept == month => match function {
                None => *total,
                Some(f) => functions.get(f).copied().unwrap_or(0),
            },
            _ => 0,
        }
    }

    async fn publish(self, kv: Arc<dyn MetaStore>, node: String) {
        let mut last: HashMap<String, (u64, Published)> = HashMap::new();
        loop {
            let every = if self.pass_every() < crate::INDEX_EVERY {
                PUBLISH_WATCHED_EVERY
            } else {
                PUBLISH_EVERY
            };
            tokio::time::sleep(every).await;
            let month = usage::month_start_ms(now_ms());
            let now: Vec<(String, Published)> = {
                let months = self.months();
                let functions = lock(&self.inner.functions);
                months
                    .iter()
                    .filter(|(_, (kept, _))| *kept == month)
                    .map(|(tenant, (_, totals))| {
                        let functions = match functions.get(tenant) {
                            Some((kept, costs)) if *kept == month => {
                                costs.iter().map(|(f, c)| (f.clone(), *c)).collect()
                            }
                            _ => HashMap::new(),
                        };
                        let published = Published {
                            cost_micros: totals.cost_micros,
                            functions,
                        };
                        (tenant.clone(), published)
                    })
                    .collect()
            };
            for (tenant, published) in now {
                let before = last.get(&tenant);
                if before.is_some_and(|b| *b == (month, published.clone())) {
                    continue;
                }
                let Ok(bytes) = serde_json::to_vec(&published) else {
                    continue;
                };
                let key = format!("{PREFIX}{tenant}/{month}/{node}");
                match kv.put(&key, Bytes::from(bytes)).await {
                    Ok(_) => {
                        // A month over: its figures are no longer needed.
                        if let Some((old, _)) = before
                            && *old != month
                        {
                            let _ = kv.delete(&format!("{PREFIX}{tenant}/{old}/{node}")).await;
                        }
                        last.insert(tenant, (month, published));
                    }
                    Err(e) => {
                        tracing::warn!(%tenant, error = %e, "cannot publish this node's usage costs")
                    }
                }
            }
        }
    }

    async fn follow(self, kv: Arc<dyn MetaStore>, node: String) {
        loop {
            let mut watch = match kv.watch(PREFIX).await {
                Ok(watch) => watch,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow the other nodes' usage; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // (tenant, node) → (month, figures)
            let mut seen: Seen = HashMap::new();
            for entry in &watch.initial {
                take(&mut seen, &node, &entry.key, Some(&entry.value));
            }
            *lock(&self.inner.peers) = sum(&seen);
            loop {
                match watch.changes.next().await {
                    Ok(MetaEvent::Put(entry)) => {
                        take(&mut seen, &node, &entry.key, Some(&entry.value))
                    }
                    Ok(MetaEvent::Delete { key, .. }) => take(&mut seen, &node, &key, None),
                    Err(e) => {
                        tracing::warn!(error = %e, "the other nodes' usage watch stopped; resynchronising");
                        break;
                    }
                }
                *lock(&self.inner.peers) = sum(&seen);
            }
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the other nodes published: (tenant, node) → (month, figures).
type Seen = HashMap<(String, String), (u64, Published)>;

/// Notes a published figure (`None`: removed), unless it is this node's.
fn take(seen: &mut Seen, node: &str, key: &str, value: Option<&Bytes>) {
    let Some((tenant, month, from)) = parse_key(key) else {
        return;
    };
    if from == node {
        return;
    }
    let slot = (tenant.to_string(), from.to_string());
    match value.and_then(|v| serde_json::from_slice::<Published>(v).ok()) {
        Some(published) => {
            if seen.get(&slot).is_none_or(|(kept, _)| *kept <= month) {
                seen.insert(slot, (month, published));
            }
        }
        None => {
            if seen.get(&slot).is_some_and(|(kept, _)| *kept == month) {
                seen.remove(&slot);
            }
        }
    }
}

/// `usage/<tenant>/<month>/<node>` → its parts.
fn parse_key(key: &str) -> Option<(&str, u64, &str)> {
    let mut parts = key.strip_prefix(PREFIX)?.splitn(3, '/');
    let tenant = parts.next()?;
    let month = parts.next()?.parse().ok()?;
    let node = parts.next()?;
    Some((tenant, month, node))
}

/// Each tenant's latest month summed over the nodes that published it.
fn sum(seen: &Seen) -> PeerCosts {
    let mut costs = PeerCosts::default();
    for ((tenant, _), (month, published)) in seen {
        let entry = costs
            .entry(tenant.clone())
            .or_insert_with(|| (*month, 0, FastMap::default()));
        if *month > entry.0 {
            *entry = (*month, 0, FastMap::default());
        }
        if *month < entry.0 {
            continue;
        }
        entry.1 = entry.1.saturating_add(published.cost_micros);
        for (function, cost) in &published.functions {
            let sum = entry.2.entry(function.clone()).or_default();
            *sum = sum.saturating_add(*cost);
        }
    }
    costs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published(cost: u64, functions: &[(&str, u64)]) -> Published {
        Published {
            cost_micros: cost,
            functions: functions.iter().map(|(f, c)| (f.to_string(), *c)).collect(),
        }
    }

    #[test]
    fn the_latest_month_of_each_tenant_is_summed_over_the_nodes() {
        let mut seen = HashMap::new();
        seen.insert(("t".into(), "a".into()), (100, published(5, &[("f", 5)])));
        seen.insert(
            ("t".into(), "b".into()),
            (100, published(7, &[("f", 3), ("g", 4)])),
        );
        // Last month's figures of a node not heard from since.
        seen.insert(("t".into(), "c".into()), (50, published(1000, &[])));
        seen.insert(("u".into(), "a".into()), (100, published(1, &[])));
        let costs = sum(&seen);
        let (month, total, functions) = &costs["t"];
        assert_eq!((*month, *total), (100, 12));
        assert_eq!(functions["f"], 8);
        assert_eq!(functions["g"], 4);
        assert_eq!(costs["u"].1, 1);
    }

    #[test]
    fn keys_name_tenant_month_and_node() {
        assert_eq!(
            parse_key("usage/acme/1700000000000/a"),
            Some(("acme", 1_700_000_000_000, "a"))
        );
        assert_eq!(parse_key("usage/acme/x/a"), None);
        assert_eq!(parse_key("other/acme/1/a"), None);
    }
}
