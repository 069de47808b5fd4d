//! Month-to-date totals, for budgets and for pricing: what each tenant
//! and each of its functions cost this month so far, kept in memory from
//! the records indexed, summed from the ledger (in one pass for both) when
//! the indexer first meets the tenant or a budget first asks for it.
//! A budget being checked makes the indexer pass more often.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gust_core::usage::{self, MonthToDate, UsageOutcome};

use crate::metrics::Observed;
use crate::{FastMap, INDEX_EVERY, INDEX_WATCHED_EVERY, Meter, MeterError, lock};

/// How long a budget check keeps the indexer at [`INDEX_WATCHED_EVERY`].
const WATCHED_FOR: Duration = Duration::from_secs(10);
/// What each function cost in a month: tenant → (month, function → cost).
pub(crate) type FunctionCosts = FastMap<String, (u64, FastMap<String, u64>)>;

impl Meter {
    /// What the tenant's invocations cost this month so far, as far as
    /// the ledger has counted. `None` while unknown (just after start-up):
    /// the month is then summed from the ledger in the background.
    pub fn month_cost(&self, tenant: &str, now_ms: u64) -> Option<u64> {
        self.watched();
        let month = usage::month_start_ms(now_ms);
        match self.months().get(tenant) {
            Some((cached, totals)) if *cached == month => {
                return Some(
                    totals
                        .cost_micros
                        .saturating_add(self.peer_cost(tenant, None, month)),
                );
            }
            _ => {}
        }
        self.load_later(tenant, now_ms);
        None
    }

    /// [`Meter::month_cost`] of one function.
    pub fn function_month_cost(&self, tenant: &str, function: &str, now_ms: u64) -> Option<u64> {
        self.watched();
        let month = usage::month_start_ms(now_ms);
        let peers = || self.peer_cost(tenant, Some(function), month);
        match self.functions().get(tenant) {
            Some((cached, costs)) if *cached == month => {
                let here = costs.get(function).copied().unwrap_or(0);
                return Some(here.saturating_add(peers()));
            }
            // Kept since an earlier month and nothing indexed in this one yet.
            Some((cached, _)) if *cached < month => return Some(peers()),
            _ => {}
        }
        self.load_later(tenant, now_ms);
        None
    }

    /// Notes that a budget is being checked: passes come at
    /// [`INDEX_WATCHED_EVERY`] for a while.
    fn watched(&self) {
        let now = self.inner.started.elapsed().as_millis() as u64;
        let at = self.inner.watched_at.load(Ordering::Relaxed);
        // Stored at most every 100 ms: one shared write, not one per request.
        if at == 0 || now.saturating_sub(at) >= 100 {
            self.inner.watched_at.store(now.max(1), Ordering::Relaxed);
            if at == 0 || now.saturating_sub(at) >= WATCHED_FOR.as_millis() as u64 {
                // Not watched until now: the indexer may be in a long sleep.
                self.inner.wake.notify_one();
            }
        }
    }

    /// How long until the next pass: shorter while budgets are watched.
    pub(crate) fn pass_every(&self) -> Duration {
        self.pass_every_at(self.inner.started.elapsed().as_millis() as u64)
    }

    /// [`Meter::pass_every`] at `now` (ms since the meter started).
    fn pass_every_at(&self, now: u64) -> Duration {
        let at = self.inner.watched_at.load(Ordering::Relaxed);
        if at > 0 && now.saturating_sub(at) < WATCHED_FOR.as_millis() as u64 {
            INDEX_WATCHED_EVERY
        } else {
            INDEX_EVERY
        }
    }

    /// Sums a tenant's month from the ledger in the background (its total
    /// and what each of its functions cost, in one pass), once at a time.
    fn load_later(&self, tenant: &str, now_ms: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !lock(&self.inner.loading).insert(tenant.to_string()) {
            return;
        }
        let meter = self.clone();
        let tenant = tenant.to_string();
        runtime.spawn(async move {
            if let Err(e) = meter.load_month(&tenant, now_ms).await {
                tracing::error!(%tenant, error = %e, "cannot sum this month's usage for a budget");
            }
            lock(&meter.inner.loading).remove(&tenant);
        });
    }

    /// Learns a tenant's month so far from the ledger: its totals and
    /// each function's cost, for budgets (else they are known only from
    /// the records indexed since start-up).
    async fn load_month(&self, tenant: &str, now_ms: u64) -> Result<(), MeterError> {
        let _merging = self.inner.merging.lock().await;
        let month = usage::month_start_ms(now_ms);
        let totals = self.sum_month(tenant, month).await?;
        // Unless the indexer already keeps this month (or a later one).
        let mut months = self.months();
        if months.get(tenant).is_none_or(|(kept, _)| *kept < month) {
            months.insert(tenant.to_string(), (month, totals));
        }
        Ok(())
    }

    /// Sums a tenant's month from the ledger: its totals, returned, and
    /// each function's cost, kept for budgets unless a later month (or
    /// this one) already is. The caller holds `merging`.
    async fn sum_month(&self, tenant: &str, month: u64) -> Result<MonthToDate, MeterError> {
        let next = usage::month_start_ms(month + 32 * 24 * 3600 * 1000);
        let mut totals = MonthToDate::default();
        let mut costs: FastMap<String, u64> = FastMap::default();
        // Its own records: the others' costs come from `peers`.
        self.for_each(crate::Scope::Node, tenant, month, next, |r| {
            add_to_month(&mut totals, r.outcome, r.gib_us, r.cost_micros);
            let cost = match costs.get_mut(&r.function) {
                Some(cost) => cost,
                None => costs.entry(r.function.clone()).or_default(),
            };
            *cost = cost.saturating_add(r.cost_micros);
        })
        .await?;
        let mut functions = self.functions();
        if functions.get(tenant).is_none_or(|(kept, _)| *kept < month) {
            functions.insert(tenant.to_string(), (month, costs));
        }
        Ok(totals)
    }

    /// Adds an index pass's costs to the function costs of the tenants
    /// being kept (the others are summed from the ledger when first asked for).
    pub(crate) fn add_to_functions(&self, observed: &Observed) {
        let mut functions = self.functions();
        for (tenant, seen) in &observed.functions {
            let Some((kept, costs)) = functions.get_mut(tenant) else {
                continue;
            };
            let latest = seen
                .values()
                .filter_map(|s| s.costs.last().map(|(month, _)| *month))
                .max()
                .unwrap_or(0);
            if latest > *kept {
                // A new month: nothing of it was indexed before.
                *kept = latest;
                costs.clear();
            }
            for (function, seen) in seen {
                let Some((_, added)) = seen.costs.iter().find(|(month, _)| month == kept) else {
                    continue;
                };
                let cost = match costs.get_mut(function) {
                    Some(cost) => cost,
                    None => costs.entry(function.clone()).or_default(),
                };
                *cost = cost.saturating_add(*added);
            }
        }
    }

    fn functions(&self) -> std::sync::MutexGuard<'_, FunctionCosts> {
        lock(&self.inner.functions)
    }

    /// What a tenant used in a month before the records being indexed
    /// (summed from the ledger once, then kept up to date in memory).
    pub(crate) async fn month_to_date(
        &self,
        tenant: &str,
        month: u64,
    ) -> Result<MonthToDate, MeterError> {
        if let Some((cached_month, totals)) = self.months().get(tenant)
            && *cached_month == month
        {
            return Ok(*totals);
        }
        // The same pass keeps each function's cost, so that a function
        // budget set later on a busy tenant is known at once.
        self.sum_month(tenant, month).await
    }

    pub(crate) fn months(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, MonthToDate)>> {
        self.inner.months.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) fn add_to_month(
    totals: &mut MonthToDate,
    outcome: UsageOutcome,
    gib_us: u64,
    cost_micros: u64,
) {
    if outcome != UsageOutcome::Rejected {
        totals.requests += 1;
        totals.gib_us = totals.gib_us.saturating_add(gib_us);
        totals.cost_micros = totals.cost_micros.saturating_add(cost_micros);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use gust_core::usage::PlanHistory;

    use super::*;
    use crate::testing::{default_plans, record};
    use crate::{Plans, UsageQuery};

    #[tokio::test]
    async fn passes_come_sooner_while_budgets_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = gust_store_embedded::EmbeddedStore::open(&dir.path().join("db")).unwrap();
        let meter = Meter::start(Arc::new(store), default_plans(), &dir.path().join("j"))
            .await
            .unwrap();
        assert_eq!(meter.pass_every(), INDEX_EVERY);
        // Asking for a month's cost is what a budget check does.
        let _ = meter.month_cost("t", 0);
        assert_eq!(meter.pass_every(), INDEX_WATCHED_EVERY);
        // ...for a while after the last check.
        let at = meter.inner.watched_at.load(Ordering::Relaxed);
        let watched_for = WATCHED_FOR.as_millis() as u64;
        assert_eq!(
            meter.pass_every_at(at + watched_for - 1),
            INDEX_WATCHED_EVERY
        );
        assert_eq!(meter.pass_every_at(at + watched_for), INDEX_EVERY);
    }

    #[tokio::test]
    async fn figures_kept_in_memory_agree_with_the_ledger_across_a_month_boundary() {
        const DAY: u64 = 86_400_000;
        // 2026-10-31 and 2026-11-01 (UTC), noon.
        let october = 20_757 * DAY + DAY / 2;
        let november = october + DAY;
        let plans: Plans = Arc::new(|_: &str| PlanHistory {
            current: usage::PricePlan {
                id: "paid".into(),
                per_million_requests: 1_000_000,
                per_million_gb_seconds: 0,
                per_million_cpu_ms: 0,
                free_requests: 0,
                free_gb_seconds: 0,
            },
            ..PlanHistory::default()
        });
        let dir = tempfile::tempdir().unwrap();
        let store = gust_store_embedded::EmbeddedStore::open(&dir.path().join("db")).unwrap();
        let meter = Meter::start(Arc::new(store), plans, &dir.path().join("j"))
            .await
            .unwrap();
        // Function costs are kept for a tenant once asked for.
        assert_eq!(meter.function_month_cost("t", "f", november), None);
        let mut kept = None;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            kept = meter.function_month_cost("t", "f", november);
            if kept.is_some() {
                break;
            }
        }
        assert_eq!(kept, Some(0));
        let mut g = record("g1", 1, october, UsageOutcome::Success);
        g.function = "g".into();
        // In one pass: October, then November, then October again.
        meter.record(record("a", 1, october, UsageOutcome::Success), false);
        meter.record(record("b", 1, november, UsageOutcome::Success), false);
        meter.record(record("c", 1, november, UsageOutcome::Trapped), false);
        meter.record(g, false);
        meter.record(record("d", 1, october + 1, UsageOutcome::Rejected), false);
        meter.flush(Duration::from_secs(5)).await;
        // One micro-unit per request; a rejection is free.
        assert_eq!(meter.function_month_cost("t", "f", november), Some(2));
        assert_eq!(meter.function_month_cost("t", "g", november), Some(0));
        assert_eq!(meter.month_cost("t", november), Some(2));
        let stats = meter.stats();
        let count = |function: &str, outcome| {
            stats
                .attempts
                .iter()
                .find(|a| a.1 == function && a.2 == outcome)
                .map_or(0, |a| a.3)
        };
        assert_eq!(count("f", UsageOutcome::Success), 2);
        assert_eq!(count("f", UsageOutcome::Trapped), 1);
        assert_eq!(count("f", UsageOutcome::Rejected), 1);
        assert_eq!(count("g", UsageOutcome::Success), 1);
        // Rejections are not in the histograms.
        assert_eq!(stats.wall_seconds.count, 4);
        assert!((stats.cpu_seconds.sum - 0.004).abs() < 1e-9);
        assert_eq!(stats.wall_seconds.buckets.last().unwrap().1, 4);
        let total = |from_ms, to_ms| {
            let meter = meter.clone();
            async move {
                meter
                    .usage(
                        crate::Scope::Node,
                        "t",
                        &UsageQuery {
                            function: None,
                            from_ms,
                            to_ms,
                            by: None,
                        },
                    )
                    .await
                    .unwrap()
                    .total
            }
        };
        assert_eq!(
            total(november - DAY / 2, november + DAY).await.cost_micros,
            2
        );
        assert_eq!(total(0, november - DAY / 2).await.cost_micros, 2);
    }
}
