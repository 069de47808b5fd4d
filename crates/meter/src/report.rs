//! Usage reports: which records to sum ([`UsageQuery`], [`GroupBy`]) and
//! what the sums are ([`UsageTotals`], [`UsageReport`]), for `gust usage`
//! and exports.

use std::collections::BTreeMap;

use gust_core::usage::{UsageOutcome, UsageRecord};
use serde::{Deserialize, Serialize};

use crate::{Meter, MeterError, Scope};

impl Meter {
    /// A tenant's usage over a period, in groups, from the records in `scope`.
    pub async fn usage(
        &self,
        scope: Scope,
        tenant: &str,
        query: &UsageQuery,
    ) -> Result<UsageReport, MeterError> {
        let mut groups: BTreeMap<String, UsageTotals> = BTreeMap::new();
        let mut total = UsageTotals::default();
        self.for_each(scope, tenant, query.from_ms, query.to_ms, |r| {
            if query.function.as_ref().is_some_and(|f| *f != r.function) {
                return;
            }
            total.add(r);
            if let Some(key) = query.by.map(|by| by.key(r)) {
                groups.entry(key).or_default().add(r);
            }
        })
        .await?;
        Ok(UsageReport {
            from_ms: query.from_ms,
            to_ms: query.to_ms,
            groups: groups
                .into_iter()
                .map(|(key, totals)| UsageGroup { key, totals })
                .collect(),
            total,
        })
    }
}

/// How to group usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Hour,
    Day,
    Function,
    /// By application: summed here per function, which the caller (who
    /// knows which function belongs to which) folds with
    /// [`UsageReport::fold_groups`].
    App,
}

impl GroupBy {
    fn key(self, record: &UsageRecord) -> String {
        const HOUR: u64 = 3600 * 1000;
        match self {
            GroupBy::Hour => gust_core::time::rfc3339(record.start_ms / HOUR * HOUR),
            GroupBy::Day => gust_core::time::rfc3339(record.start_ms / (24 * HOUR) * 24 * HOUR),
            GroupBy::Function | GroupBy::App => record.function.clone(),
        }
    }
}

/// Which records to sum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub function: Option<String>,
    pub from_ms: u64,
    pub to_ms: u64,
    pub by: Option<GroupBy>,
}

/// Sums over a set of usage records.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageTotals {
    /// Attempts that ran (rejections not included).
    pub invocations: u64,
    pub rejected: u64,
    /// Attempts beyond the first of an event (already in `invocations`).
    pub retries: u64,
    pub billed_ms: u64,
    pub gb_seconds: f64,
    pub cpu_ms: f64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub outbound_requests: u64,
    pub kv_operations: u64,
    pub cost_micros: u64,
    /// GiB-µs, exact (what `gb_seconds` shows rounded).
    pub gib_us: u64,
}

impl UsageTotals {
    /// Adds another sum to this one.
    pub fn merge(&mut self, other: &UsageTotals) {
        self.invocations += other.invocations;
        self.rejected += other.rejected;
        self.retries += other.retries;
        self.billed_ms += other.billed_ms;
        self.gib_us = self.gib_us.saturating_add(other.gib_us);
        self.gb_seconds = self.gib_us as f64 / 1e6;
        self.cpu_ms += other.cpu_ms;
        self.request_bytes += other.request_bytes;
        self.response_bytes += other.response_bytes;
        self.outbound_requests += other.outbound_requests;
        self.kv_operations += other.kv_operations;
        self.cost_micros = self.cost_micros.saturating_add(other.cost_micros);
    }

    fn add(&mut self, r: &UsageRecord) {
        if r.outcome == UsageOutcome::Rejected {
            self.rejected += 1;
        } else {
            self.invocations += 1;
        }
        if r.attempt > 1 {
            self.retries += 1;
        }
        self.billed_ms += r.billed_ms;
        self.gib_us = self.gib_us.saturating_add(r.gib_us);
        self.gb_seconds = self.gib_us as f64 / 1e6;
        self.cpu_ms += r.cpu_ns as f64 / 1e6;
        self.request_bytes += r.request_bytes;
        self.response_bytes += r.response_bytes;
        self.outbound_requests += r.outbound_requests;
        self.kv_operations += r.kv_operations;
        self.cost_micros = self.cost_micros.saturating_add(r.cost_micros);
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageGroup {
    pub key: String,
    #[serde(flatten)]
    pub totals: UsageTotals,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageReport {
    pub from_ms: u64,
    pub to_ms: u64,
    pub groups: Vec<UsageGroup>,
    pub total: UsageTotals,
}

impl UsageReport {
    /// Regroups a report grouped by function: each group goes to the
    /// group `into` names for its key, or is dropped (`None`), and the
    /// total becomes the sum of what is kept.
    pub fn fold_groups(&mut self, into: impl Fn(&str) -> Option<String>) {
        let mut folded: BTreeMap<String, UsageTotals> = BTreeMap::new();
        for group in std::mem::take(&mut self.groups) {
            if let Some(key) = into(&group.key) {
                folded.entry(key).or_default().merge(&group.totals);
            }
        }
        self.total = UsageTotals::default();
        for totals in folded.values() {
            self.total.merge(totals);
        }
        self.groups = folded
            .into_iter()
            .map(|(key, totals)| UsageGroup { key, totals })
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::testing::{default_plans, record};

    #[tokio::test]
    async fn attempts_of_one_event_are_counted_apart_and_totals_add_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = gust_store_embedded::EmbeddedStore::open(&dir.path().join("db")).unwrap();
        let meter = Meter::start(Arc::new(store), default_plans(), &dir.path().join("j"))
            .await
            .unwrap();
        meter.record(record("e", 1, 10, UsageOutcome::ErrorStatus), false);
        meter.record(record("e", 2, 20, UsageOutcome::Success), false);
        meter.record(record("r", 1, 30, UsageOutcome::Rejected), false);
        meter.flush(Duration::from_secs(5)).await;
        let report = meter
            .usage(
                crate::Scope::Node,
                "t",
                &UsageQuery {
                    function: Some("f".into()),
                    from_ms: 0,
                    to_ms: 100,
                    by: Some(GroupBy::Hour),
                },
            )
            .await
            .unwrap();
        assert_eq!(report.total.invocations, 2);
        assert_eq!(report.total.retries, 1);
        assert_eq!(report.total.rejected, 1);
        // 1.5 ms bills as 2 ms; a rejection bills nothing.
        assert_eq!(report.total.billed_ms, 4);
        assert_eq!(report.groups.len(), 1);
        assert_eq!(report.groups[0].totals, report.total);
    }
}
