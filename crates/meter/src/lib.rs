//! The metering ledger: exactly one usage record per invocation attempt,
//! priced under the plan in force when it ran, stored durably through a
//! [`LedgerStore`], and summed for `gust usage` and exports.
//!
//! How "exactly one" holds:
//! - when an attempt starts, its *marker* (the record as far as known, with
//!   outcome `aborted`) is written through the store's group commit;
//! - when it ends, its record goes to a writer task that prices it and
//!   closes the marker in the same transaction as the record (a key is
//!   never recorded twice);
//! - at start-up, every marker still open belongs to an attempt the server
//!   stopped in the middle of: it is recorded as `aborted`.
//!
//! Owns: the writer, reconciliation, month-to-date totals, aggregation.
//! Pricing arithmetic is pure code in `gust_core::usage`. Must not know
//! HTTP or wasm, and must never drop or double a record.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gust_core::usage::{self, MonthToDate, PricePlan, UsageOutcome, UsageRecord};
use gust_store::{LedgerEntry, LedgerStore, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Records written per ledger transaction, at most.
const BATCH: usize = 1024;
/// Records read per page when summing.
const PAGE: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a ledger record is corrupt: {0}")]
    Corrupt(String),
}

/// The metering ledger. Cheap to clone.
#[derive(Clone)]
pub struct Meter {
    inner: Arc<Inner>,
}

/// A marker to write, and who waits for it.
type Opening = (
    (String, Bytes),
    tokio::sync::oneshot::Sender<Result<(), StoreError>>,
);

/// The price plan in force for a tenant.
pub type Plans = Arc<dyn Fn(&str) -> PricePlan + Send + Sync>;

struct Inner {
    ledger: Arc<dyn LedgerStore>,
    plans: Plans,
    /// Finished records, and whether each was opened with a marker.
    tx: mpsc::UnboundedSender<(UsageRecord, bool)>,
    opens: mpsc::UnboundedSender<Opening>,
    /// Each tenant's month (its first ms) and what it used in it so far.
    months: Mutex<HashMap<String, (u64, MonthToDate)>>,
    /// Records handed to the writer and not yet durable.
    pending: AtomicU64,
    metrics: Metrics,
    written: AtomicU64,
    flushed: tokio::sync::Notify,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct MeterStats {
    pub written: u64,
    /// Records finished but not yet durable (the ledger's lag).
    pub pending: u64,
    /// Attempts since start-up by (tenant, function, outcome).
    pub attempts: Vec<(String, String, UsageOutcome, u64)>,
    pub wall_seconds: Histogram,
    pub cpu_seconds: Histogram,
    pub peak_memory_bytes: Histogram,
}

/// A cumulative histogram, as Prometheus exposes one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// (upper bound, observations at or below it), ascending; `+Inf` is `count`.
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

/// Fixed-bucket histogram of non-negative values, lock-free.
struct Buckets {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// Sum in millionths of the unit.
    sum_micro: AtomicU64,
    count: AtomicU64,
}

impl Buckets {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micro: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micro
            .fetch_add((value * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Histogram {
        let mut running = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(&self.counts)
            .map(|(bound, n)| {
                running += n.load(Ordering::Relaxed);
                (*bound, running)
            })
            .collect();
        Histogram {
            buckets,
            sum: self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6,
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

const SECONDS: &[f64] = &[
    0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 300.0,
];
const BYTES: &[f64] = &[
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
    1_073_741_824.0,
    4_294_967_296.0,
];

/// Every outcome, in the order `Metrics` counts them.
const OUTCOMES: [UsageOutcome; 6] = [
    UsageOutcome::Success,
    UsageOutcome::ErrorStatus,
    UsageOutcome::Trapped,
    UsageOutcome::TimedOut,
    UsageOutcome::Rejected,
    UsageOutcome::Aborted,
];

/// Attempts per outcome (indexed as `OUTCOMES`), per function, per tenant.
type AttemptCounts = HashMap<String, HashMap<String, [u64; OUTCOMES.len()]>>;

/// What `/metrics` shows of the attempts recorded since start-up.
struct Metrics {
    attempts: Mutex<AttemptCounts>,
    wall: Buckets,
    cpu: Buckets,
    memory: Buckets,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            attempts: Mutex::default(),
            wall: Buckets::new(SECONDS),
            cpu: Buckets::new(SECONDS),
            memory: Buckets::new(BYTES),
        }
    }
}

impl Metrics {
    fn observe(&self, r: &UsageRecord) {
        let outcome = OUTCOMES.iter().position(|o| *o == r.outcome).unwrap_or(0);
        let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        // Allocates only for a tenant's or function's first attempt.
        let functions = match attempts.get_mut(&r.tenant) {
            Some(functions) => functions,
            None => attempts.entry(r.tenant.clone()).or_default(),
        };
        let counts = match functions.get_mut(&r.function) {
            Some(counts) => counts,
            None => functions.entry(r.function.clone()).or_default(),
        };
        counts[outcome] += 1;
        drop(attempts);
        if r.outcome != UsageOutcome::Rejected {
            self.wall.observe(r.wall_ns as f64 / 1e9);
            self.cpu.observe(r.cpu_ns as f64 / 1e9);
            self.memory.observe(r.peak_memory_bytes as f64);
        }
    }
}

impl Meter {
    /// Opens the ledger: records every attempt a previous run left open as
    /// `aborted`, then starts the writer.
    pub async fn start(ledger: Arc<dyn LedgerStore>, plans: Plans) -> Result<Self, MeterError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (opens, opens_rx) = mpsc::unbounded_channel();
        let meter = Self {
            inner: Arc::new(Inner {
                ledger,
                plans,
                tx,
                opens,
                months: Mutex::default(),
                pending: AtomicU64::new(0),
                metrics: Metrics::default(),
                written: AtomicU64::new(0),
                flushed: tokio::sync::Notify::new(),
            }),
        };
        let mut aborted = Vec::new();
        for (key, marker) in meter.inner.ledger.open_markers().await? {
            match serde_json::from_slice::<UsageRecord>(&marker) {
                Ok(record) => aborted.push(record),
                Err(e) => tracing::error!(%key, error = %e, "an unreadable ledger marker"),
            }
        }
        if !aborted.is_empty() {
            tracing::warn!(
                count = aborted.len(),
                "recording attempts the last run stopped in the middle of as aborted"
            );
            meter
                .write(aborted.into_iter().map(|r| (r, true)).collect())
                .await?;
        }
        tokio::spawn(meter.clone().writer(rx));
        tokio::spawn(open_markers(meter.inner.ledger.clone(), opens_rx));
        Ok(meter)
    }

    /// Notes that an attempt started: `start` is its record as far as known
    /// (it becomes the `aborted` record if the server stops before the
    /// attempt ends). Resolves once durable; markers of concurrent
    /// attempts are written together.
    pub fn open(
        &self,
        start: &UsageRecord,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        let marker = UsageRecord {
            outcome: UsageOutcome::Aborted,
            ..start.clone()
        };
        let (done, written) = tokio::sync::oneshot::channel();
        let sent = serde_json::to_vec(&marker)
            .map_err(|e| StoreError::Corrupt(e.to_string()))
            .and_then(|bytes| {
                self.inner
                    .opens
                    .send(((marker.key(), Bytes::from(bytes)), done))
                    .map_err(|_| StoreError::Closed)
            });
        async move {
            sent?;
            written.await.map_err(|_| StoreError::Closed)?
        }
    }

    /// Hands a finished attempt's record to the writer (never blocks, never
    /// drops). `opened`: its marker was written (see [`Meter::open`]).
    pub fn record(&self, record: UsageRecord, opened: bool) {
        self.inner.metrics.observe(&record);
        self.inner.pending.fetch_add(1, Ordering::Relaxed);
        if self.inner.tx.send((record, opened)).is_err() {
            // Only when the runtime is shutting down: the marker stays open
            // and the next start records the attempt as aborted.
            self.inner.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Waits until every record handed over so far is durable (at most `limit`).
    pub async fn flush(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            while self.inner.pending.load(Ordering::Acquire) > 0 {
                let notified = self.inner.flushed.notified();
                if self.inner.pending.load(Ordering::Acquire) == 0 {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(20), notified).await;
            }
        })
        .await;
    }

    /// What the tenant's invocations cost this month so far, as far as
    /// this process has counted (`None` until the tenant's first record of
    /// the month since start-up, which sums the month from the ledger).
    pub fn month_cost(&self, tenant: &str, now_ms: u64) -> Option<u64> {
        let month = usage::month_start_ms(now_ms);
        match self.months().get(tenant) {
            Some((cached, totals)) if *cached == month => Some(totals.cost_micros),
            _ => None,
        }
    }

    pub fn stats(&self) -> MeterStats {
        let m = &self.inner.metrics;
        let mut attempts = Vec::new();
        for (tenant, functions) in m.attempts.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            for (function, counts) in functions {
                for (outcome, n) in OUTCOMES.iter().zip(counts).filter(|(_, n)| **n > 0) {
                    attempts.push((tenant.clone(), function.clone(), *outcome, *n));
                }
            }
        }
        attempts.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        MeterStats {
            written: self.inner.written.load(Ordering::Relaxed),
            pending: self.inner.pending.load(Ordering::Relaxed),
            attempts,
            wall_seconds: m.wall.snapshot(),
            cpu_seconds: m.cpu.snapshot(),
            peak_memory_bytes: m.memory.snapshot(),
        }
    }

    async fn writer(self, mut rx: mpsc::UnboundedReceiver<(UsageRecord, bool)>) {
        let mut batch = Vec::with_capacity(BATCH);
        while rx.recv_many(&mut batch, BATCH).await > 0 {
            let records = std::mem::take(&mut batch);
            let count = records.len() as u64;
            // A failed write (a full disk) is retried: a record is never dropped.
            let mut records = Some(records);
            while let Some(pending) = records.take() {
                if let Err(e) = self.write(pending.clone()).await {
                    tracing::error!(error = %e, "writing usage records failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    records = Some(pending);
                }
            }
            self.inner.pending.fetch_sub(count, Ordering::AcqRel);
            self.inner.flushed.notify_waiters();
        }
    }

    /// Prices records and writes them, closing their markers.
    async fn write(&self, records: Vec<(UsageRecord, bool)>) -> Result<(), MeterError> {
        let mut entries = Vec::with_capacity(records.len());
        for (mut record, opened) in records {
            let before = self.month_to_date(&record).await?;
            let plan = (self.inner.plans)(&record.tenant);
            record.billed_ms = usage::billed_ms(record.wall_ns, record.outcome);
            record.gib_us = usage::gib_us(record.memory_limit_bytes, record.billed_ms);
            record.cost_micros = usage::price(&plan, before, &record);
            record.plan = plan.id;
            self.count(&record);
            let bytes =
                serde_json::to_vec(&record).map_err(|e| MeterError::Corrupt(e.to_string()))?;
            entries.push(LedgerEntry {
                tenant: record.tenant.clone(),
                time_ms: record.start_ms,
                key: record.key(),
                record: Bytes::from(bytes),
                opened,
            });
        }
        let written = self.inner.ledger.close(entries).await?;
        self.inner.written.fetch_add(written, Ordering::Relaxed);
        Ok(())
    }

    /// What the record's tenant used in the record's month before it
    /// (summed from the ledger once, then kept up to date in memory).
    async fn month_to_date(&self, record: &UsageRecord) -> Result<MonthToDate, MeterError> {
        let month = usage::month_start_ms(record.start_ms);
        if let Some((cached_month, totals)) = self.months().get(&record.tenant)
            && *cached_month == month
        {
            return Ok(*totals);
        }
        let mut totals = MonthToDate::default();
        let next = usage::month_start_ms(month + 32 * 24 * 3600 * 1000);
        self.for_each(&record.tenant, month, next, |r| {
            add_to_month(&mut totals, r);
        })
        .await?;
        self.months().insert(record.tenant.clone(), (month, totals));
        Ok(totals)
    }

    fn count(&self, record: &UsageRecord) {
        let month = usage::month_start_ms(record.start_ms);
        if let Some((cached_month, totals)) = self.months().get_mut(&record.tenant)
            && *cached_month == month
        {
            add_to_month(totals, record);
        }
    }

    fn months(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, MonthToDate)>> {
        self.inner.months.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Calls `f` on each of a tenant's records with `from_ms <= start < to_ms`, in time order.
    pub async fn for_each(
        &self,
        tenant: &str,
        from_ms: u64,
        to_ms: u64,
        mut f: impl FnMut(&UsageRecord),
    ) -> Result<(), MeterError> {
        let mut after = None;
        loop {
            let page = self
                .inner
                .ledger
                .records(tenant, from_ms, to_ms, after.take(), PAGE)
                .await?;
            let full = page.len() == PAGE;
            for entry in &page {
                let record: UsageRecord = serde_json::from_slice(&entry.record)
                    .map_err(|e| MeterError::Corrupt(format!("{}: {e}", entry.key)))?;
                f(&record);
            }
            match page.last() {
                Some(last) if full => after = Some((last.time_ms, last.key.clone())),
                _ => return Ok(()),
            }
        }
    }

    /// A tenant's usage over a period, in groups.
    pub async fn usage(&self, tenant: &str, query: &UsageQuery) -> Result<UsageReport, MeterError> {
        let mut groups: BTreeMap<String, UsageTotals> = BTreeMap::new();
        let mut total = UsageTotals::default();
        self.for_each(tenant, query.from_ms, query.to_ms, |r| {
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

/// Writes markers as they come, all that are waiting in one call.
async fn open_markers(ledger: Arc<dyn LedgerStore>, mut rx: mpsc::UnboundedReceiver<Opening>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let (markers, waiters): (Vec<_>, Vec<_>) = std::mem::take(&mut batch).into_iter().unzip();
        let written = ledger.open(markers).await;
        for waiter in waiters {
            let _ = waiter.send(written.clone());
        }
    }
}

fn add_to_month(totals: &mut MonthToDate, record: &UsageRecord) {
    if record.outcome != UsageOutcome::Rejected {
        totals.requests += 1;
        totals.gib_us = totals.gib_us.saturating_add(record.gib_us);
        totals.cost_micros = totals.cost_micros.saturating_add(record.cost_micros);
    }
}

/// How to group usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Hour,
    Day,
    Function,
}

impl GroupBy {
    fn key(self, record: &UsageRecord) -> String {
        const HOUR: u64 = 3600 * 1000;
        match self {
            GroupBy::Hour => gust_core::time::rfc3339(record.start_ms / HOUR * HOUR),
            GroupBy::Day => gust_core::time::rfc3339(record.start_ms / (24 * HOUR) * 24 * HOUR),
            GroupBy::Function => record.function.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use gust_core::usage::Trigger;

    fn default_plans() -> Plans {
        Arc::new(|_: &str| PricePlan::default())
    }

    fn record(id: &str, attempt: u32, start_ms: u64, outcome: UsageOutcome) -> UsageRecord {
        UsageRecord {
            invocation_id: id.into(),
            attempt,
            tenant: "t".into(),
            function: "f".into(),
            version: 1,
            trigger: Trigger::Http,
            start_ms,
            wall_ns: 1_500_000,
            cpu_ns: 1_000_000,
            peak_memory_bytes: 0,
            memory_limit_bytes: 128 << 20,
            request_bytes: 10,
            response_bytes: 20,
            outbound_requests: 0,
            outbound_bytes: 0,
            kv_operations: 0,
            outcome,
            status: 200,
            billed_ms: 0,
            gib_us: 0,
            cost_micros: 0,
            plan: String::new(),
        }
    }

    #[tokio::test]
    async fn open_attempts_are_recorded_as_aborted_at_start_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = gust_store::EmbeddedStore::open(&dir.path().join("db")).unwrap();
        let ledger: Arc<dyn LedgerStore> = Arc::new(store);
        let meter = Meter::start(ledger.clone(), default_plans()).await.unwrap();
        let done = record("a", 1, 1000, UsageOutcome::Success);
        meter.open(&done).await.unwrap();
        meter
            .open(&record("b", 1, 2000, UsageOutcome::Success))
            .await
            .unwrap();
        meter.record(done.clone(), true);
        // The same attempt reported twice is recorded once.
        meter.record(done, true);
        meter.flush(Duration::from_secs(5)).await;
        assert_eq!(meter.stats().pending, 0);
        // "b" never finished: a restart records it as aborted.
        let again = Meter::start(ledger.clone(), default_plans()).await.unwrap();
        let query = UsageQuery {
            function: None,
            from_ms: 0,
            to_ms: u64::MAX,
            by: Some(GroupBy::Function),
        };
        let report = again.usage("t", &query).await.unwrap();
        assert_eq!(report.total.invocations, 2);
        let mut outcomes = Vec::new();
        again
            .for_each("t", 0, u64::MAX, |r| outcomes.push((r.key(), r.outcome)))
            .await
            .unwrap();
        assert_eq!(
            outcomes,
            [
                ("a#1".to_string(), UsageOutcome::Success),
                ("b#1".to_string(), UsageOutcome::Aborted)
            ]
        );
        // And a third start finds nothing open.
        let third = Meter::start(ledger, default_plans()).await.unwrap();
        assert_eq!(third.usage("t", &query).await.unwrap().total.invocations, 2);
    }

    #[tokio::test]
    async fn attempts_of_one_event_are_counted_apart_and_totals_add_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = gust_store::EmbeddedStore::open(&dir.path().join("db")).unwrap();
        let meter = Meter::start(Arc::new(store), default_plans())
            .await
            .unwrap();
        meter.record(record("e", 1, 10, UsageOutcome::ErrorStatus), false);
        meter.record(record("e", 2, 20, UsageOutcome::Success), false);
        meter.record(record("r", 1, 30, UsageOutcome::Rejected), false);
        meter.flush(Duration::from_secs(5)).await;
        let report = meter
            .usage(
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
