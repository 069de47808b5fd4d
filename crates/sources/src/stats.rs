//! Counters of every source this node runs, read by `/metrics`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One source's counters, updated by its task.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Messages taken from the broker.
    pub received: AtomicU64,
    /// Events queued from them.
    pub queued: AtomicU64,
    /// Redeliveries recognised by their id and not queued again.
    pub duplicates: AtomicU64,
    /// Messages refused (over the event size limit): acknowledged, not queued.
    pub rejected: AtomicU64,
    /// Connections that failed or ended.
    pub errors: AtomicU64,
    pub connected: AtomicBool,
    pub paused: AtomicBool,
    /// Messages waiting at the broker, where it says (`u64::MAX`: unknown).
    pub lag: AtomicU64,
}

/// A source's counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSample {
    pub tenant: String,
    pub function: String,
    pub id: String,
    pub kind: &'static str,
    pub received: u64,
    pub queued: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub errors: u64,
    pub connected: bool,
    pub paused: bool,
    /// Messages waiting at the broker, where it reports them.
    pub lag: Option<u64>,
}

struct Entry {
    tenant: String,
    function: String,
    id: String,
    kind: &'static str,
    counters: Arc<Counters>,
}

/// The counters of the sources this node runs. Cheap to clone.
#[derive(Clone, Default)]
pub struct SourceStats {
    entries: Arc<Mutex<BTreeMap<String, Entry>>>,
}

impl std::fmt::Debug for SourceStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SourceStats(..)")
    }
}

impl SourceStats {
    pub(crate) fn register(&self, record: &gust_events::SourceRecord) -> Arc<Counters> {
        let counters = Arc::new(Counters {
            lag: AtomicU64::new(u64::MAX),
            ..Default::default()
        });
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entry = entries.entry(record.key()).or_insert_with(|| Entry {
            tenant: record.tenant.to_string(),
            function: record.function.to_string(),
            id: record.id.clone(),
            kind: record.kind.as_str(),
            counters: counters.clone(),
        });
        entry.counters.clone()
    }

    pub(crate) fn forget(&self, key: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(key);
    }

    /// Every source this node runs, with its counters.
    pub fn samples(&self) -> Vec<SourceSample> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .values()
            .map(|e| {
                let c = &e.counters;
                let lag = c.lag.load(Ordering::Relaxed);
                SourceSample {
                    tenant: e.tenant.clone(),
                    function: e.function.clone(),
                    id: e.id.clone(),
                    kind: e.kind,
                    received: c.received.load(Ordering::Relaxed),
                    queued: c.queued.load(Ordering::Relaxed),
                    duplicates: c.duplicates.load(Ordering::Relaxed),
                    rejected: c.rejected.load(Ordering::Relaxed),
                    errors: c.errors.load(Ordering::Relaxed),
                    connected: c.connected.load(Ordering::Relaxed),
                    paused: c.paused.load(Ordering::Relaxed),
                    lag: (lag != u64::MAX).then_some(lag),
                }
            })
            .collect()
    }
}
