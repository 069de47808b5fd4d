//! The metering ledger: exactly one usage record per invocation attempt,
//! priced under the plan in force when it ran, stored durably through a
//! [`LedgerStore`], and summed for `gust usage` and exports.
//!
//! How "exactly one" holds, cheaply enough to meter every request:
//! - when an attempt starts, the request's own thread appends an *open*
//!   frame (its record as far as known) to the [`journal`]; when it ends, a
//!   *close* frame (the record, and whether it was opened). Each append is
//!   one small copy into a memory-mapped segment: in the page cache, so it
//!   survives the process being killed, as soon as the call returns;
//! - the indexer reads the journal every [`INDEX_EVERY`] ([`INDEX_WATCHED_EVERY`]
//!   while budgets are checked; or when asked to
//!   flush), pairs closes with their opens, prices the records in order and
//!   commits them to the store in one transaction with markers for the
//!   attempts still running and the journal position it reached: a
//!   record is written only by removing its marker, so never twice;
//! - at start-up, frames after the committed position are indexed the same
//!   way, then every attempt still open (a marker in the store, or an open
//!   frame without its close) is recorded as `aborted`.
//!
//! Owns: the journal, the indexer, reconciliation, month-to-date totals,
//! aggregation. Pricing arithmetic is pure code in `gust_core::usage`.
//! Must not know HTTP or wasm, and must never drop or double a record.

pub mod codec;
pub mod journal;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use codec::OUTCOMES;
use gust_core::usage::{self, MonthToDate, PlanHistory, UsageOutcome, UsageRecord};
use gust_store::{LedgerCommit, LedgerRecords, LedgerStore, StoreError};
use journal::{Journal, Position, Read};
use serde::{Deserialize, Serialize};

/// How often the indexer moves journal frames into the ledger store. Each
/// pass has a fixed cost (a store commit with its fsyncs, a few thread
/// hand-offs: about a millisecond of CPU), so passes are not made more
/// often than this unless a budget is being watched.
pub const INDEX_EVERY: Duration = Duration::from_millis(500);
/// How often while budgets are being checked (a month's cost was asked
/// for in the last [`WATCHED_FOR`]): budgets are checked against what the
/// ledger has counted, so this is how far behind they may be.
pub const INDEX_WATCHED_EVERY: Duration = Duration::from_millis(100);
/// How long a budget check keeps the indexer at [`INDEX_WATCHED_EVERY`].
const WATCHED_FOR: Duration = Duration::from_secs(10);
/// Size of a journal segment (preallocated).
const SEGMENT_BYTES: usize = 16 << 20;
/// Records read per page when summing.
const PAGE: usize = 10_000;

/// Journal frame kinds.
const OPEN: u8 = 1;
const CLOSE: u8 = 2;
const CLOSE_OPENED: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a ledger record is corrupt: {0}")]
    Corrupt(String),
    #[error("the usage journal in {dir}: {error}")]
    Journal { dir: String, error: std::io::Error },
}

/// The metering ledger. Cheap to clone.
#[derive(Clone)]
pub struct Meter {
    inner: Arc<Inner>,
}

/// Where a page of records ends: (start ms, key) of its last record.
pub type Cursor = (u64, String);

/// A tenant's price plans: the one in force now and those before it.
pub type Plans = Arc<dyn Fn(&str) -> PlanHistory + Send + Sync>;

struct Inner {
    ledger: Arc<dyn LedgerStore>,
    plans: Plans,
    journal: Arc<Journal>,
    /// What each tenant used in its latest month so far (indexed records).
    months: Mutex<HashMap<String, (u64, MonthToDate)>>,
    /// What each function cost in its tenant's latest month so far, for
    /// function budgets (complete for every tenant present).
    functions: Mutex<FunctionCosts>,
    /// Tenants whose month is being summed from the ledger (never twice at once).
    loading: Mutex<std::collections::HashSet<String>>,
    /// Held while totals are summed from the ledger or an index pass
    /// commits and adds to them, so the two never interleave.
    merging: tokio::sync::Mutex<()>,
    /// Records handed over (journaled or waiting in memory), and indexed.
    appended: AtomicU64,
    indexed: AtomicU64,
    /// When a month's cost was last asked for (ms since the meter started).
    watched_at: AtomicU64,
    started: std::time::Instant,
    metrics: Metrics,
    written: AtomicU64,
    /// Asks the indexer to run now.
    wake: tokio::sync::Notify,
    /// The indexer finished a pass.
    flushed: tokio::sync::Notify,
    /// The indexer's task, to stop it.
    indexer: Mutex<Option<tokio::task::AbortHandle>>,
}

/// What the indexer knows between passes.
#[derive(Clone, Default)]
struct Index {
    /// Read up to here.
    position: Position,
    /// Attempts opened and not yet closed, and whether the store has
    /// their marker.
    open: HashMap<String, (UsageRecord, bool)>,
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

    fn add(&self, tally: &Tally) {
        for (count, n) in self.counts.iter().zip(&tally.counts) {
            if *n > 0 {
                count.fetch_add(*n, Ordering::Relaxed);
            }
        }
        self.sum_micro.fetch_add(tally.sum_micro, Ordering::Relaxed);
        self.count.fetch_add(tally.count, Ordering::Relaxed);
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

/// Attempts per outcome (indexed as `OUTCOMES`), per function, per tenant.
type AttemptCounts = FastMap<String, FastMap<String, [u64; OUTCOMES.len()]>>;

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
    /// Adds what an index pass observed.
    fn add(&self, observed: &Observed) {
        let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        for (tenant, functions) in &observed.functions {
            let counts = match attempts.get_mut(tenant) {
                Some(counts) => counts,
                None => attempts.entry(tenant.clone()).or_default(),
            };
            for (function, seen) in functions {
                let total = match counts.get_mut(function) {
                    Some(total) => total,
                    None => counts.entry(function.clone()).or_default(),
                };
                for (total, n) in total.iter_mut().zip(seen.attempts) {
                    *total += n;
                }
            }
        }
        drop(attempts);
        self.wall.add(&observed.wall);
        self.cpu.add(&observed.cpu);
        self.memory.add(&observed.memory);
    }
}

/// What an index pass adds to the figures kept in memory (`/metrics`,
/// function costs): gathered while pricing, so that each record is read
/// once, and added after the pass commits.
struct Observed {
    /// Tenant → function → what its records add.
    functions: FastMap<String, FastMap<String, FunctionSeen>>,
    wall: Tally,
    cpu: Tally,
    memory: Tally,
    /// Records of one tenant's function in one month in a row (most are),
    /// summed here and added to `functions` when the run ends.
    run: Run,
}

#[derive(Default)]
struct Run {
    tenant: String,
    function: String,
    month: u64,
    attempts: [u64; OUTCOMES.len()],
    cost: u64,
    records: u64,
}

#[derive(Default)]
struct FunctionSeen {
    attempts: [u64; OUTCOMES.len()],
    /// (month, cost of its records in this pass), months ascending.
    costs: Vec<(u64, u64)>,
}

impl Observed {
    fn new() -> Self {
        Self {
            functions: FastMap::default(),
            wall: Tally::new(SECONDS),
            cpu: Tally::new(SECONDS),
            memory: Tally::new(BYTES),
            run: Run::default(),
        }
    }

    /// Adds a record, priced at `cost`, that started in `month`. What it
    /// adds to `functions` is there after [`Observed::end_run`].
    fn add(&mut self, r: &codec::View<'_>, month: u64, cost: u64) {
        let run = &self.run;
        if run.records == 0
            || run.month != month
            || run.tenant != r.tenant()
            || run.function != r.function()
        {
            self.end_run();
            let run = &mut self.run;
            run.tenant.clear();
            run.tenant.push_str(r.tenant());
            run.function.clear();
            run.function.push_str(r.function());
            run.month = month;
        }
        let run = &mut self.run;
        let outcome = OUTCOMES.iter().position(|o| *o == r.outcome()).unwrap_or(0);
        run.attempts[outcome] += 1;
        run.cost = run.cost.saturating_add(cost);
        run.records += 1;
        if r.outcome() != UsageOutcome::Rejected {
            self.wall.observe(r.wall_ns() as f64 / 1e9);
            self.cpu.observe(r.cpu_ns() as f64 / 1e9);
            self.memory.observe(r.peak_memory_bytes() as f64);
        }
    }

    /// Adds the run of records being summed to `functions`.
    fn end_run(&mut self) {
        let run = &mut self.run;
        if run.records == 0 {
            return;
        }
        let functions = match self.functions.get_mut(run.tenant.as_str()) {
            Some(functions) => functions,
            None => self.functions.entry(run.tenant.clone()).or_default(),
        };
        let seen = match functions.get_mut(run.function.as_str()) {
            Some(seen) => seen,
            None => functions.entry(run.function.clone()).or_default(),
        };
        for (total, n) in seen.attempts.iter_mut().zip(run.attempts) {
            *total += n;
        }
        match seen.costs.iter_mut().find(|(m, _)| *m == run.month) {
            Some((_, total)) => *total = total.saturating_add(run.cost),
            None => {
                seen.costs.push((run.month, run.cost));
                seen.costs.sort_unstable();
            }
        }
        run.attempts = [0; OUTCOMES.len()];
        run.cost = 0;
        run.records = 0;
    }
}

/// A histogram's observations in one pass, before they join [`Buckets`].
struct Tally {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum_micro: u64,
    count: u64,
}

impl Tally {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum_micro: 0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.counts[i] += 1;
        }
        self.sum_micro = self.sum_micro.wrapping_add((value * 1e6) as u64);
        self.count += 1;
    }
}

impl Meter {
    /// Opens the ledger and its journal in `journal_dir`: indexes what the
    /// last run left in the journal, records every attempt it left open as
    /// `aborted`, then starts the indexer.
    pub async fn start(
        ledger: Arc<dyn LedgerStore>,
        plans: Plans,
        journal_dir: &Path,
    ) -> Result<Self, MeterError> {
        let journal_error = |error| MeterError::Journal {
            dir: journal_dir.display().to_string(),
            error,
        };
        let position = ledger
            .position()
            .await?
            .and_then(|bytes| Position::from_bytes(&bytes))
            .unwrap_or_default();
        let (journal, recovered) =
            Journal::open(journal_dir, SEGMENT_BYTES, position.segment).map_err(journal_error)?;
        let meter = Self {
            inner: Arc::new(Inner {
                ledger,
                plans,
                journal: Arc::new(journal),
                months: Mutex::default(),
                functions: Mutex::default(),
                loading: Mutex::default(),
                merging: tokio::sync::Mutex::new(()),
                appended: AtomicU64::new(0),
                indexed: AtomicU64::new(0),
                watched_at: AtomicU64::new(0),
                started: std::time::Instant::now(),
                metrics: Metrics::default(),
                written: AtomicU64::new(0),
                wake: tokio::sync::Notify::new(),
                flushed: tokio::sync::Notify::new(),
                indexer: Mutex::default(),
            }),
        };
        let mut index = Index {
            position,
            open: HashMap::new(),
        };
        for (key, marker) in meter.inner.ledger.open_markers().await? {
            match codec::decode(&marker) {
                Ok(record) => {
                    index.open.insert(key, (record, true));
                }
                Err(e) => tracing::error!(%key, error = %e, "an unreadable ledger marker"),
            }
        }
        let mut recovered = recovered;
        recovered
            .frames
            .retain(|f| f.at.is_some_and(|at| at > position));
        let (mut index, _, _) = meter.index(&index, recovered, true).await?;
        meter
            .inner
            .journal
            .discard_recovered()
            .map_err(journal_error)?;
        index.position = meter.inner.journal.start();
        if let Err(e) = meter.inner.journal.prepare() {
            tracing::error!(error = %e, "cannot make a usage journal segment yet; records wait in memory");
        }
        let indexer = tokio::spawn(meter.clone().indexer(index)).abort_handle();
        *lock(&meter.inner.indexer) = Some(indexer);
        Ok(meter)
    }

    /// Stops indexing (what is journaled stays for the next start), as a
    /// process stopping would.
    pub fn stop(&self) {
        if let Some(indexer) = lock(&self.inner.indexer).take() {
            indexer.abort();
        }
    }

    /// Notes that an attempt started: `start` is its record as far as known
    /// (it becomes the `aborted` record if the server stops before the
    /// attempt ends). In the page cache when this returns.
    pub fn open(&self, start: &UsageRecord) {
        self.append(OPEN, start);
    }

    /// Hands a finished attempt's record over (never blocks, never drops).
    /// `opened`: [`Meter::open`] was called for it.
    pub fn record(&self, record: UsageRecord, opened: bool) {
        self.inner.appended.fetch_add(1, Ordering::AcqRel);
        self.append(if opened { CLOSE_OPENED } else { CLOSE }, &record);
    }

    fn append(&self, kind: u8, record: &UsageRecord) {
        match codec::encoded_len(record) {
            Ok(len) => {
                // Encoded straight into the journal's page.
                self.inner
                    .journal
                    .append_with(kind, len, |out| codec::encode_to(record, out));
            }
            Err(e) => {
                tracing::error!(key = %record.key(), error = %e, "a usage record cannot be encoded")
            }
        }
    }

    /// Waits until every record handed over so far is in the ledger store
    /// (at most `limit`).
    pub async fn flush(&self, limit: Duration) {
        let target = self.inner.appended.load(Ordering::Acquire);
        let _ = tokio::time::timeout(limit, async {
            while self.inner.indexed.load(Ordering::Acquire) < target {
                let notified = self.inner.flushed.notified();
                self.inner.wake.notify_one();
                let _ = tokio::time::timeout(Duration::from_millis(20), notified).await;
            }
        })
        .await;
    }

    /// What the tenant's invocations cost this month so far, as far as
    /// the ledger has counted. `None` while unknown (just after start-up):
    /// the month is then summed from the ledger in the background.
    pub fn month_cost(&self, tenant: &str, now_ms: u64) -> Option<u64> {
        self.watched();
        let month = usage::month_start_ms(now_ms);
        match self.months().get(tenant) {
            Some((cached, totals)) if *cached == month => return Some(totals.cost_micros),
            _ => {}
        }
        self.load_later(tenant, now_ms);
        None
    }

    /// [`Meter::month_cost`] of one function.
    pub fn function_month_cost(&self, tenant: &str, function: &str, now_ms: u64) -> Option<u64> {
        self.watched();
        let month = usage::month_start_ms(now_ms);
        match self.functions().get(tenant) {
            Some((cached, costs)) if *cached == month => {
                return Some(costs.get(function).copied().unwrap_or(0));
            }
            // Kept since an earlier month and nothing indexed in this one yet.
            Some((cached, _)) if *cached < month => return Some(0),
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
    fn pass_every(&self) -> Duration {
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
        let next = usage::month_start_ms(month + 32 * 24 * 3600 * 1000);
        let mut totals = MonthToDate::default();
        let mut costs: FastMap<String, u64> = FastMap::default();
        self.for_each(tenant, month, next, |r| {
            add_to_month(&mut totals, r.outcome, r.gib_us, r.cost_micros);
            let cost = match costs.get_mut(&r.function) {
                Some(cost) => cost,
                None => costs.entry(r.function.clone()).or_default(),
            };
            *cost = cost.saturating_add(r.cost_micros);
        })
        .await?;
        // Unless the indexer already keeps this month (or a later one).
        let mut months = self.months();
        if months.get(tenant).is_none_or(|(kept, _)| *kept < month) {
            months.insert(tenant.to_string(), (month, totals));
        }
        drop(months);
        let mut functions = self.functions();
        if functions.get(tenant).is_none_or(|(kept, _)| *kept < month) {
            functions.insert(tenant.to_string(), (month, costs));
        }
        Ok(())
    }

    /// Adds an index pass's costs to the function costs of the tenants
    /// being kept (the others are summed from the ledger when first asked for).
    fn add_to_functions(&self, observed: &Observed) {
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
            pending: self
                .inner
                .appended
                .load(Ordering::Relaxed)
                .saturating_sub(self.inner.indexed.load(Ordering::Relaxed)),
            attempts,
            wall_seconds: m.wall.snapshot(),
            cpu_seconds: m.cpu.snapshot(),
            peak_memory_bytes: m.memory.snapshot(),
        }
    }

    async fn indexer(self, mut index: Index) {
        let journal = self.inner.journal.clone();
        let mut warned = false;
        // Reused from pass to pass.
        let mut buffer = Read::default();
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.pass_every()) => {}
                () = self.inner.wake.notified() => {}
            }
            let prepared = {
                let journal = journal.clone();
                tokio::task::spawn_blocking(move || journal.prepare()).await
            };
            match prepared {
                Ok(Err(e)) if !warned => {
                    warned = true;
                    tracing::warn!(error = %e, "cannot make a usage journal segment (is the disk full?); records wait in memory");
                }
                Ok(Ok(())) => warned = false,
                _ => {}
            }
            let from = index.position;
            let mut read = std::mem::take(&mut buffer);
            let read = {
                let journal = journal.clone();
                tokio::task::spawn_blocking(move || {
                    journal.read_into(from, &mut read).map(|()| read)
                })
                .await
            };
            let read = match read
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
            {
                Ok(read) => read,
                Err(e) => {
                    tracing::error!(error = %e, "reading the usage journal failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let from_memory = read.from_memory();
            match self.index(&index, read, false).await {
                Ok((next, closed, read)) => {
                    buffer = read;
                    journal.ack_memory(from_memory);
                    index = next;
                    self.inner.indexed.fetch_add(closed, Ordering::AcqRel);
                    self.inner.flushed.notify_waiters();
                    if let Err(e) = journal.retire(index.position) {
                        tracing::warn!(error = %e, "cannot delete an indexed usage journal segment");
                    }
                }
                Err(e) => {
                    // Nothing is lost: the frames are read again next time.
                    tracing::error!(error = %e, "writing usage records failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Indexes what `read` holds (in journal order) after `index`: closes
    /// pair with their opens, records are priced in order, and one store
    /// transaction writes them with markers for attempts still open and
    /// the position reached. With `finalize`, every attempt still open is
    /// recorded as `aborted` instead. Returns the new state and how many
    /// closes it took.
    async fn index(
        &self,
        index: &Index,
        read: Read,
        finalize: bool,
    ) -> Result<(Index, u64, Read), MeterError> {
        let closed_pool = || MeterError::Store(StoreError::Closed);
        let (paired, read) = {
            let index = index.clone();
            tokio::task::spawn_blocking(move || (pair(index, &read, finalize), read))
                .await
                .map_err(|_| closed_pool())?
        };
        let Paired {
            index: next,
            closes,
            markers,
            closed,
        } = paired?;
        if closes.is_empty() && markers.is_empty() && next.position == index.position {
            return Ok((next, closed, read));
        }
        let merging = self.inner.merging.lock().await;
        // What each tenant used in each month before these records.
        let mut months = Months::default();
        // The tenant and month of the record before (most are the same).
        let mut last: Option<(&str, MonthSpan)> = None;
        for (close, _) in &closes {
            let Some((tenant, start_ms)) = codec::tenant_and_start(close.bytes(&read)) else {
                continue;
            };
            if last.is_some_and(|(t, span)| t == tenant && span.contains(start_ms)) {
                continue;
            }
            let span = MonthSpan::of(start_ms);
            last = Some((tenant, span));
            if months
                .get(tenant)
                .is_some_and(|m| m.contains_key(&span.start))
            {
                continue;
            }
            let totals = self.month_to_date(tenant, span.start).await?;
            months
                .entry(tenant.to_string())
                .or_default()
                .insert(span.start, totals);
        }
        let plans = self.inner.plans.clone();
        let (entries, months, observed, read) = tokio::task::spawn_blocking(move || {
            let (entries, months, observed) = price(&read, closes, months, &plans);
            (entries, months, observed, read)
        })
        .await
        .map_err(|_| closed_pool())?;
        let written = self
            .inner
            .ledger
            .commit(LedgerCommit {
                open: markers,
                close: entries,
                position: Some(Bytes::copy_from_slice(&next.position.to_bytes())),
            })
            .await?;
        self.inner.written.fetch_add(written, Ordering::Relaxed);
        self.inner.metrics.add(&observed);
        self.add_to_functions(&observed);
        let mut cached = self.months();
        for (tenant, by_month) in months {
            for (month, totals) in by_month {
                match cached.get(&tenant) {
                    Some((latest, _)) if *latest > month => {}
                    _ => {
                        cached.insert(tenant.clone(), (month, totals));
                    }
                }
            }
        }
        drop(cached);
        drop(merging);
        Ok((next, closed, read))
    }

    /// What a tenant used in a month before the records being indexed
    /// (summed from the ledger once, then kept up to date in memory).
    async fn month_to_date(&self, tenant: &str, month: u64) -> Result<MonthToDate, MeterError> {
        if let Some((cached_month, totals)) = self.months().get(tenant)
            && *cached_month == month
        {
            return Ok(*totals);
        }
        let mut totals = MonthToDate::default();
        let next = usage::month_start_ms(month + 32 * 24 * 3600 * 1000);
        self.for_each(tenant, month, next, |r| {
            add_to_month(&mut totals, r.outcome, r.gib_us, r.cost_micros);
        })
        .await?;
        Ok(totals)
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
            let (page, next) = self.page(tenant, from_ms, to_ms, after.take()).await?;
            page.iter().for_each(&mut f);
            match next {
                Some(next) => after = Some(next),
                None => return Ok(()),
            }
        }
    }

    /// One page of [`Meter::for_each`]: the records after `after`, and
    /// where the next page starts (`None`: this was the last).
    pub async fn page(
        &self,
        tenant: &str,
        from_ms: u64,
        to_ms: u64,
        after: Option<Cursor>,
    ) -> Result<(Vec<UsageRecord>, Option<Cursor>), MeterError> {
        let page = self
            .inner
            .ledger
            .records(tenant, from_ms, to_ms, after, PAGE)
            .await?;
        let next = match page.last() {
            Some(last) if page.len() == PAGE => Some((last.time_ms, last.key.clone())),
            _ => None,
        };
        let records = page
            .iter()
            .map(|entry| {
                codec::decode(&entry.record)
                    .map_err(|e| MeterError::Corrupt(format!("{}: {e}", entry.key)))
            })
            .collect::<Result<_, _>>()?;
        Ok((records, next))
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

/// A finished attempt's record in an index pass: a frame of the read, or
/// made here (an attempt found open at start-up).
enum Close {
    At(std::ops::Range<usize>),
    Owned(Vec<u8>),
}

impl Close {
    fn bytes<'a>(&'a self, read: &'a Read) -> &'a [u8] {
        match self {
            Close::At(range) => &read.bytes[range.clone()],
            Close::Owned(bytes) => bytes,
        }
    }
}

/// An index pass before pricing.
struct Paired {
    index: Index,
    /// Finished attempts in order, and whether the store has their marker.
    closes: Vec<(Close, bool)>,
    /// Markers to write: attempts open after this pass.
    markers: Vec<(String, Bytes)>,
    /// Close frames taken.
    closed: u64,
}

/// Pairs closes with opens. Nothing is decoded but the opens still open
/// at the end of the pass (an open closed in the same pass, most of them,
/// is only matched by its key).
fn pair(index: Index, read: &Read, finalize: bool) -> Result<Paired, MeterError> {
    let mut next = index;
    // Opens of this pass not closed (yet), by attempt: (id, attempt) → frame.
    let mut pending: FastMap<(&[u8], u32), &journal::FrameAt> = FastMap::default();
    let mut closes = Vec::new();
    let mut closed = 0;
    for frame in &read.frames {
        if let Some(at) = frame.at {
            next.position = at;
        }
        let payload = read.payload(frame);
        let Some(id) = codec::key_of(payload) else {
            tracing::error!("an unreadable usage journal frame");
            continue;
        };
        match frame.kind {
            OPEN => {
                pending.insert(id, frame);
            }
            CLOSE => {
                closed += 1;
                closes.push((Close::At(frame.payload.clone()), false));
            }
            CLOSE_OPENED => {
                closed += 1;
                if pending.remove(&id).is_some() {
                    closes.push((Close::At(frame.payload.clone()), false));
                    continue;
                }
                let key = usage::attempt_key(&String::from_utf8_lossy(id.0), id.1);
                if let Some((_, marked)) = next.open.remove(key.as_str()) {
                    closes.push((Close::At(frame.payload.clone()), marked));
                }
                // Else it was closed already: never twice.
            }
            other => tracing::error!(kind = other, "an unknown usage journal frame"),
        }
    }
    // Opens still open: decoded, kept, and marked in the store below.
    let mut still_open: Vec<_> = pending.into_values().collect();
    still_open.sort_by_key(|f| f.payload.start);
    for frame in still_open {
        match codec::decode(read.payload(frame)) {
            Ok(record) => {
                next.open.insert(record.key(), (record, false));
            }
            Err(e) => tracing::error!(error = %e, "an unreadable usage journal frame"),
        }
    }
    if finalize && !next.open.is_empty() {
        tracing::warn!(
            count = next.open.len(),
            "recording attempts the last run stopped in the middle of as aborted"
        );
        for (_, (record, marked)) in next.open.drain() {
            let aborted = UsageRecord {
                outcome: UsageOutcome::Aborted,
                ..record
            };
            closes.push((Close::Owned(encode(&aborted)?.to_vec()), marked));
        }
    }
    let mut markers = Vec::new();
    for (key, (record, marked)) in &mut next.open {
        if !*marked {
            markers.push((key.clone(), encode(record)?));
            *marked = true;
        }
    }
    Ok(Paired {
        index: next,
        closes,
        markers,
        closed,
    })
}

/// Month-to-date totals: tenant → month's first ms → totals.
type Months = FastMap<String, FastMap<u64, MonthToDate>>;
/// What each function cost in a month: tenant → (month, function → cost).
type FunctionCosts = FastMap<String, (u64, FastMap<String, u64>)>;
/// A hash map for the indexer's per-pass work (seeded per map).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Prices records in order from the month-to-date totals before them
/// (`months` has every tenant and month they need); returns the ledger
/// entries, the totals after them and what they add to the figures kept
/// in memory.
fn price(
    read: &Read,
    closes: Vec<(Close, bool)>,
    mut months: Months,
    plans: &Plans,
) -> (LedgerRecords, Months, Observed) {
    // Every tenant priced here has month-to-date totals.
    let plans_of: FastMap<String, PlanHistory> =
        months.keys().map(|t| (t.clone(), plans(t))).collect();
    let bytes = closes.iter().map(|(c, _)| c.bytes(read).len() + 48).sum();
    let mut entries = LedgerRecords::with_capacity(closes.len(), bytes);
    let mut observed = Observed::new();
    let mut span = MonthSpan::of(0);
    // The tenant and month of the record before, its plans and totals
    // (most records share them).
    let mut last: Option<(&str, u64, &PlanHistory, &mut MonthToDate)> = None;
    for (close, marked) in &closes {
        let record = match codec::View::new(close.bytes(read)) {
            Ok(record) => record,
            Err(e) => {
                tracing::error!(error = %e, "an unreadable usage record");
                continue;
            }
        };
        let tenant = record.tenant();
        if !span.contains(record.start_ms()) {
            span = MonthSpan::of(record.start_ms());
        }
        let month = span.start;
        if !last
            .as_ref()
            .is_some_and(|(t, m, _, _)| *t == tenant && *m == month)
        {
            last = None;
            let totals = months.get_mut(tenant).and_then(|m| m.get_mut(&month));
            let (Some(history), Some(totals)) = (plans_of.get(tenant), totals) else {
                tracing::error!(tenant, "no month-to-date totals to price a record with");
                continue;
            };
            last = Some((tenant, month, history, totals));
        }
        let Some((_, _, history, totals)) = last.as_mut() else {
            continue;
        };
        // The plan in force when the invocation started.
        let plan = history.at(record.start_ms());
        let billed_ms = usage::billed_ms(record.wall_ns(), record.outcome());
        let gib_us = usage::gib_us(record.memory_limit_bytes(), billed_ms);
        let cost = usage::price_of(plan, **totals, record.outcome(), gib_us, record.cpu_ns());
        add_to_month(totals, record.outcome(), gib_us, cost);
        observed.add(&record, month, cost);
        entries.push(
            tenant,
            record.start_ms(),
            *marked,
            |out| record.key_into(out),
            |out| record.priced_into(billed_ms, gib_us, cost, &plan.id, out),
        );
    }
    observed.end_run();
    (entries, months, observed)
}

/// The calendar month (UTC) a time falls in, as Unix ms.
#[derive(Debug, Clone, Copy)]
struct MonthSpan {
    start: u64,
    end: u64,
}

impl MonthSpan {
    fn of(ms: u64) -> Self {
        let start = usage::month_start_ms(ms);
        Self {
            start,
            end: usage::month_start_ms(start + 32 * 86_400_000),
        }
    }

    fn contains(&self, ms: u64) -> bool {
        (self.start..self.end).contains(&ms)
    }
}

fn encode(record: &UsageRecord) -> Result<Bytes, MeterError> {
    let mut bytes = Vec::new();
    codec::encode(record, &mut bytes).map_err(|e| MeterError::Corrupt(e.to_string()))?;
    Ok(Bytes::from(bytes))
}

fn add_to_month(totals: &mut MonthToDate, outcome: UsageOutcome, gib_us: u64, cost_micros: u64) {
    if outcome != UsageOutcome::Rejected {
        totals.requests += 1;
        totals.gib_us = totals.gib_us.saturating_add(gib_us);
        totals.cost_micros = totals.cost_micros.saturating_add(cost_micros);
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gust_core::usage::Trigger;

    fn default_plans() -> Plans {
        Arc::new(|_: &str| PlanHistory::default())
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

    /// Frames as the journal would give them back.
    fn frames(list: &[(u8, &UsageRecord)]) -> Read {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), 1 << 16, 0).unwrap();
        journal.prepare().unwrap();
        for (kind, record) in list {
            let mut bytes = Vec::new();
            codec::encode(record, &mut bytes).unwrap();
            assert!(journal.append(*kind, &bytes));
        }
        journal.read(Position::default()).unwrap()
    }

    #[test]
    fn closes_pair_with_opens_once_across_passes() {
        let a = record("a", 1, 1, UsageOutcome::Success);
        let b = record("b", 1, 2, UsageOutcome::Success);
        let r = record("r", 1, 3, UsageOutcome::Rejected);
        // Pass 1: a opens and closes (twice), b opens, r is refused.
        let first = frames(&[
            (OPEN, &a),
            (OPEN, &b),
            (CLOSE_OPENED, &a),
            (CLOSE_OPENED, &a),
            (CLOSE, &r),
        ]);
        let one = pair(Index::default(), &first, false).unwrap();
        let keys = |p: &Paired, read: &Read| {
            p.closes
                .iter()
                .map(|(c, m)| (codec::View::new(c.bytes(read)).unwrap().key(), *m))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys(&one, &first),
            [("a#1".into(), false), ("r#1".into(), false)]
        );
        assert_eq!(one.closed, 3);
        // b is still running: its marker goes to the store.
        assert_eq!(one.markers.len(), 1);
        assert_eq!(one.markers[0].0, "b#1");
        // Pass 2: b closes (its marker is removed with the record); a
        // third close of a is ignored.
        let second = frames(&[(CLOSE_OPENED, &b), (CLOSE_OPENED, &a)]);
        let two = pair(one.index, &second, false).unwrap();
        assert_eq!(keys(&two, &second), [("b#1".into(), true)]);
        assert!(two.markers.is_empty() && two.index.open.is_empty());
        // At start-up, whatever is still open becomes an aborted record.
        let third = frames(&[(OPEN, &a)]);
        let three = pair(Index::default(), &third, true).unwrap();
        let aborted = codec::View::new(three.closes[0].0.bytes(&third)).unwrap();
        assert_eq!(aborted.outcome(), UsageOutcome::Aborted);
        assert!(three.markers.is_empty());
    }

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
    async fn open_attempts_are_recorded_as_aborted_at_start_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = gust_store_embedded::EmbeddedStore::open(&dir.path().join("db")).unwrap();
        let ledger: Arc<dyn LedgerStore> = Arc::new(store);
        let journal = dir.path().join("journal");
        let meter = Meter::start(ledger.clone(), default_plans(), &journal)
            .await
            .unwrap();
        let done = record("a", 1, 1000, UsageOutcome::Success);
        meter.open(&done);
        meter.open(&record("b", 1, 2000, UsageOutcome::Success));
        // "c" started and finished but was never indexed: a kill before
        // the indexer's next pass finds it in the journal.
        let unindexed = record("c", 1, 3000, UsageOutcome::Success);
        meter.record(done.clone(), true);
        // The same attempt reported twice is recorded once.
        meter.record(done, true);
        meter.flush(Duration::from_secs(5)).await;
        assert_eq!(meter.stats().pending, 0);
        // The process "dies": no more indexing, and then...
        meter.stop();
        // ...frames it journaled just before.
        meter.append(OPEN, &unindexed);
        meter.append(CLOSE_OPENED, &unindexed);
        meter.append(OPEN, &record("d", 1, 4000, UsageOutcome::Success));
        // "b" never finished: a restart records it as aborted; "c" is
        // recorded as it ended, "d" as aborted.
        let again = Meter::start(ledger.clone(), default_plans(), &journal)
            .await
            .unwrap();
        let query = UsageQuery {
            function: None,
            from_ms: 0,
            to_ms: u64::MAX,
            by: Some(GroupBy::Function),
        };
        let report = again.usage("t", &query).await.unwrap();
        assert_eq!(report.total.invocations, 4);
        let mut outcomes = Vec::new();
        again
            .for_each("t", 0, u64::MAX, |r| outcomes.push((r.key(), r.outcome)))
            .await
            .unwrap();
        assert_eq!(
            outcomes,
            [
                ("a#1".to_string(), UsageOutcome::Success),
                ("b#1".to_string(), UsageOutcome::Aborted),
                ("c#1".to_string(), UsageOutcome::Success),
                ("d#1".to_string(), UsageOutcome::Aborted),
            ]
        );
        // And a third start finds nothing open.
        again.stop();
        let third = Meter::start(ledger, default_plans(), &journal)
            .await
            .unwrap();
        assert_eq!(third.usage("t", &query).await.unwrap().total.invocations, 4);
    }

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
