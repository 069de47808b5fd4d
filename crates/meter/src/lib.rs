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
//! Owns: the [`journal`] and its [`codec`], the indexer (journal →
//! ledger store, reconciliation), month-to-date totals for budgets, the
//! figures `/metrics` shows ([`MeterStats`]), usage reports
//! ([`Meter::usage`]) and, in a cluster, the costs nodes publish to each
//! other (`peers`) and the records they share (`shared`); a module each.
//! Pricing arithmetic is pure code in `gust_core::usage`.
//! Must not know HTTP or wasm, and must never drop or double a record.

mod budgets;
pub mod codec;
mod indexer;
pub mod journal;
mod metrics;
mod peers;
mod report;
mod shared;
#[cfg(test)]
mod testing;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gust_core::usage::{MonthToDate, PlanHistory, UsageRecord};
use gust_store::{LedgerStore, StoreError};
use journal::{Journal, Position};

use budgets::FunctionCosts;
use indexer::{CLOSE, CLOSE_OPENED, Index, OPEN};
use metrics::Metrics;
pub use metrics::{Histogram, MeterStats};
pub use peers::{PUBLISH_EVERY, PUBLISH_WATCHED_EVERY};
pub use report::{GroupBy, UsageGroup, UsageQuery, UsageReport, UsageTotals};
pub use shared::{FOLLOW_EVERY, SharedUsage};

/// How often the indexer moves journal frames into the ledger store. Each
/// pass has a fixed cost (a store commit with its fsyncs, a few thread
/// hand-offs: about a millisecond of CPU), so passes are not made more
/// often than this unless a budget is being watched.
pub const INDEX_EVERY: Duration = Duration::from_millis(500);
/// How often while budgets are being checked (a month's cost was asked
/// for in the last ten seconds): budgets are checked against what the
/// ledger has counted, so this is how far behind they may be.
pub const INDEX_WATCHED_EVERY: Duration = Duration::from_millis(100);
/// Size of a journal segment (preallocated).
const SEGMENT_BYTES: usize = 16 << 20;
/// Records read per page when summing.
const PAGE: usize = 10_000;

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

/// Whose records to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// What ran on this node.
    Node,
    /// What ran on every node of the cluster (this node's alone outside
    /// one), up to the shared log's lag.
    Cluster,
}

/// Where a page of records ends: (start ms, key) of its last record.
pub type Cursor = (u64, String);

/// A tenant's price plans: the one in force now and those before it.
pub type Plans = Arc<dyn Fn(&str) -> PlanHistory + Send + Sync>;

struct Inner {
    ledger: Arc<dyn LedgerStore>,
    /// An index pass kept records in the outbox.
    to_ship: tokio::sync::Notify,
    /// Every node's records, in a cluster (see `shared`).
    view: Option<Arc<dyn LedgerStore>>,
    /// This node's name and the shared log, in a cluster: index passes
    /// keep what they write in the ledger's outbox, to ship (see `shared`).
    ship_to: Option<(String, Arc<dyn gust_store::LogStore>)>,
    /// Held while shipping: the last outbox entry wholly acknowledged.
    shipping: tokio::sync::Mutex<Option<u64>>,
    plans: Plans,
    journal: Arc<Journal>,
    /// What each tenant used in its latest month so far (indexed records).
    months: Mutex<HashMap<String, (u64, MonthToDate)>>,
    /// What each function cost in its tenant's latest month so far, for
    /// function budgets (complete for every tenant present).
    functions: Mutex<FunctionCosts>,
    /// What the other nodes of a cluster spent this month (see `peers`).
    peers: Mutex<peers::PeerCosts>,
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

impl Meter {
    /// Opens the ledger and its journal in `journal_dir`: indexes what the
    /// last run left in the journal, records every attempt it left open as
    /// `aborted`, then starts the indexer.
    pub async fn start(
        ledger: Arc<dyn LedgerStore>,
        plans: Plans,
        journal_dir: &Path,
    ) -> Result<Self, MeterError> {
        Self::begin(ledger, plans, journal_dir, None).await
    }

    /// Starts like [`Meter::start`] as one node of a cluster: its records
    /// are also shipped to the shared log, and reports read every node's
    /// (see the `shared` module).
    pub async fn start_shared(
        ledger: Arc<dyn LedgerStore>,
        plans: Plans,
        journal_dir: &Path,
        shared: SharedUsage,
    ) -> Result<Self, MeterError> {
        let log = shared.log.clone();
        let meter = Self::begin(ledger, plans, journal_dir, Some(shared)).await?;
        tokio::spawn(meter.clone().ship());
        if let Some(view) = meter.inner.view.clone() {
            tokio::spawn(Self::follow_usage(log, view));
        }
        Ok(meter)
    }

    async fn begin(
        ledger: Arc<dyn LedgerStore>,
        plans: Plans,
        journal_dir: &Path,
        shared: Option<SharedUsage>,
    ) -> Result<Self, MeterError> {
        let (view, ship_to) = match shared {
            Some(s) => (Some(s.view), Some((s.node, s.log))),
            None => (None, None),
        };
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
                to_ship: tokio::sync::Notify::new(),
                view,
                ship_to,
                shipping: tokio::sync::Mutex::new(None),
                plans,
                journal: Arc::new(journal),
                months: Mutex::default(),
                functions: Mutex::default(),
                peers: Mutex::default(),
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

    pub fn stats(&self) -> MeterStats {
        let inner = &self.inner;
        let pending = inner
            .appended
            .load(Ordering::Relaxed)
            .saturating_sub(inner.indexed.load(Ordering::Relaxed));
        inner
            .metrics
            .stats(inner.written.load(Ordering::Relaxed), pending)
    }

    /// Removes usage records of attempts that started before `before_ms`
    /// (retention), from this node's ledger and, in a cluster, its view of
    /// every node's, a bounded step at a time with `pause` between steps.
    /// Returns how many records went.
    pub async fn prune(&self, before_ms: u64, pause: Duration) -> Result<u64, MeterError> {
        const STEP: usize = 1024;
        let mut removed = 0;
        for ledger in std::iter::once(&self.inner.ledger).chain(self.inner.view.as_ref()) {
            loop {
                let step = ledger.prune(before_ms, STEP).await?;
                if step == 0 {
                    break;
                }
                removed += step;
                tokio::time::sleep(pause).await;
            }
        }
        Ok(removed)
    }

    /// Whether reports can count every node's records (a cluster node).
    pub fn shares_usage(&self) -> bool {
        self.inner.view.is_some()
    }

    /// Calls `f` on each of a tenant's records in `scope` with
    /// `from_ms <= start < to_ms`, in time order.
    pub async fn for_each(
        &self,
        scope: Scope,
        tenant: &str,
        from_ms: u64,
        to_ms: u64,
        mut f: impl FnMut(&UsageRecord),
    ) -> Result<(), MeterError> {
        let mut after = None;
        loop {
            let (page, next) = self
                .page(scope, tenant, from_ms, to_ms, after.take())
                .await?;
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
        scope: Scope,
        tenant: &str,
        from_ms: u64,
        to_ms: u64,
        after: Option<Cursor>,
    ) -> Result<(Vec<UsageRecord>, Option<Cursor>), MeterError> {
        let ledger = match (scope, &self.inner.view) {
            (Scope::Cluster, Some(view)) => view,
            _ => &self.inner.ledger,
        };
        let page = ledger.records(tenant, from_ms, to_ms, after, PAGE).await?;
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
}

/// A hash map for the indexer's per-pass work (seeded per map).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
