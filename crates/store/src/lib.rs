//! Gust's storage: the traits every backend implements, the domain services
//! built on them (registry, accounts, buckets, secrets) and the conformance
//! suite every backend must pass. The backends are leaf crates beside this
//! one (`gust-store-embedded`: redb on one machine); only the composition
//! root (the `gust` binary) and tests name a backend.
//!
//! The traits are shaped after what NATS JetStream offers (KV buckets with
//! per-key revisions, compare-and-set and prefix watches; an object store;
//! streams), so a cluster backend can implement them without emulation.
//!
//! This crate must not know about HTTP or WebAssembly: it stores bytes and
//! records, and says nothing about how they are served or run.

mod accounts;
mod buckets;
pub mod conformance;
mod lease;
mod registry;
mod relay;
mod secrets;

use async_trait::async_trait;
use bytes::Bytes;

pub use accounts::{Accounts, AccountsError, AuthError, TenantRecord, TokenRecord};
pub use buckets::{Buckets, BucketsError, Value};
pub use lease::{LEASES_PREFIX, Lease, LeaseGuard};
pub use registry::{
    Activation, AliasTarget, AppRelease, NewVersion, Registry, RegistryError, ReleaseAs,
};
pub use relay::{NodeRelay, RelayError, RelayHandler, relay_name};
pub use secrets::{SecretBox, SecretError};

/// Errors a storage backend reports.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A compare-and-set found another revision than the caller expected.
    #[error("`{key}` was changed concurrently (expected revision {expected:?}, found {found:?})")]
    Conflict {
        key: String,
        expected: Option<u64>,
        found: Option<u64>,
    },
    /// A watcher fell too far behind; it must list again and resume from there.
    #[error("the watcher fell behind by {0} events")]
    Lagged(u64),
    /// The store is closed (the process is shutting down).
    #[error("the store is closed")]
    Closed,
    /// A stored record could not be decoded.
    #[error("a stored record is corrupt: {0}")]
    Corrupt(String),
    /// An increment found a value that is not a decimal counter; nothing was written.
    #[error("the value of `{0}` is not a counter (a decimal number)")]
    NotACounter(String),
    /// The writes would take their owner past its [`Allowance`]; nothing was written.
    #[error("over the allowance of `{owner}`: {what} would reach {would_be} (limit {limit})")]
    OverAllowance {
        owner: String,
        /// Which part of the allowance: [`Allowance::KEYS`] or [`Allowance::BYTES`].
        what: &'static str,
        limit: u64,
        would_be: u64,
    },
    /// The file system under the data directory is (nearly) full: writes
    /// are refused before the database could fail half-way; reads go on.
    #[error(
        "the disk under the data directory is full ({available} bytes free; writes need {required}): free some space or move the data directory; writes resume by themselves"
    )]
    DiskFull { available: u64, required: u64 },
    /// The data was written by a newer Gust, in a layout this build does
    /// not read; nothing was read or changed.
    #[error(
        "the data directory {location} was written by a newer Gust (schema {found}; this gust reads schema {supported} and older): upgrade gust, or start with another --data-dir"
    )]
    NewerSchema {
        /// Where the data is (the database file).
        location: String,
        found: u64,
        supported: u64,
    },
    /// The backend failed (disk, database).
    #[error("storage backend error: {0}")]
    Backend(String),
    /// The shared storage cannot be reached or has no quorum now (a
    /// cluster's NATS servers are down or partitioned). A write that
    /// reports this may or may not have been made; retrying is safe where
    /// the write is idempotent. Passes by itself once the servers are back.
    #[error("the cluster's storage is unavailable ({0}); retry shortly")]
    Unavailable(String),
}

/// One key's current value in a [`MetaStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Bytes,
    /// Revision of the last write to this key; revisions grow across the whole store.
    pub revision: u64,
}

/// A change seen by a watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaEvent {
    Put(Entry),
    Delete { key: String, revision: u64 },
}

impl MetaEvent {
    pub fn key(&self) -> &str {
        match self {
            MetaEvent::Put(entry) => &entry.key,
            MetaEvent::Delete { key, .. } => key,
        }
    }

    pub fn revision(&self) -> u64 {
        match self {
            MetaEvent::Put(entry) => entry.revision,
            MetaEvent::Delete { revision, .. } => *revision,
        }
    }
}

/// The entries under a prefix at one revision, plus every change after it.
pub struct Watch {
    /// The entries under the prefix when the watch started.
    pub initial: Vec<Entry>,
    /// The store's revision at which `initial` was read.
    pub revision: u64,
    /// Changes under the prefix with a revision above `revision`, in
    /// order, each once. A change that a later change of the same key
    /// replaced before the watcher read it may be skipped (the cluster
    /// backend keeps only each key's last value); the later one is always
    /// seen, so a watcher that applies changes ends with the store's state.
    pub changes: Box<dyn WatchStream>,
}

/// The live part of a [`Watch`].
#[async_trait]
pub trait WatchStream: Send {
    /// The next change. [`StoreError::Lagged`] means changes were missed: start a new watch.
    async fn next(&mut self) -> Result<MetaEvent, StoreError>;
}

/// A key-value map with revisions, compare-and-set and prefix watches: the
/// registry's storage (functions, versions, later aliases and triggers).
#[async_trait]
pub trait MetaStore: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError>;
    /// Writes unconditionally; returns the new revision.
    async fn put(&self, key: &str, value: Bytes) -> Result<u64, StoreError>;
    /// Writes only if the key's revision is `expected` (`None`: the key must not exist).
    async fn compare_and_set(
        &self,
        key: &str,
        value: Bytes,
        expected: Option<u64>,
    ) -> Result<u64, StoreError>;
    /// Deletes the key; returns the revision of the delete, `None` if the key did not exist.
    async fn delete(&self, key: &str) -> Result<Option<u64>, StoreError>;
    /// Every entry whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError>;
    /// Up to `limit` entries under `prefix` whose keys come after `after`
    /// (from the first when `None`), in key order: a walk in bounded steps.
    /// A walk may miss keys written after it began (the cluster backend
    /// reads the prefix once per walk). This default reads the whole
    /// prefix for every page; a backend with an ordered index answers
    /// from it.
    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let mut entries = self.list(prefix).await?;
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(entries
            .into_iter()
            .filter(|e| after.is_none_or(|after| e.key.as_str() > after))
            .take(limit)
            .collect())
    }
    /// The entries under `prefix` now, and every later change to them.
    async fn watch(&self, prefix: &str) -> Result<Watch, StoreError>;
}

impl StoreError {
    /// The write was refused as a whole and changed nothing; the caller's
    /// input or expectation is at fault, not the store.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::Conflict { .. }
                | Self::NotACounter(_)
                | Self::OverAllowance { .. }
                | Self::DiskFull { .. }
        )
    }
}

/// A write to tenants' data, applied by [`DataStore::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataWrite {
    Put {
        key: String,
        value: Bytes,
    },
    Delete {
        key: String,
    },
    /// Adds `delta` to a counter stored as decimal text (absent counts as 0).
    Increment {
        key: String,
        delta: u64,
    },
}

impl DataWrite {
    pub fn key(&self) -> &str {
        match self {
            Self::Put { key, .. } | Self::Delete { key } | Self::Increment { key, .. } => key,
        }
    }
}

/// One change to tenants' data, as recorded in the change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataChange {
    /// The change's place in the feed, across all owners (what
    /// [`DataStore::changes`] and [`DataStore::last_revision`] count in);
    /// never shown to a tenant.
    pub seq: u64,
    /// The key's new revision, numbered per owner (a tenant): what the
    /// key's entry, the API and change events show.
    pub revision: u64,
    pub key: String,
    /// The new value; `None` for a delete.
    pub value: Option<Bytes>,
}

/// What one owner keeps in a [`DataStore`]. A key's owner is the part of
/// the key before its first `/` (for Gust's data: the tenant).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataUsage {
    pub keys: u64,
    /// Bytes of keys and values as stored.
    pub bytes: u64,
}

/// How much one owner may keep: checked, in the same transaction, by
/// [`DataStore::apply`]. A write that shrinks usage is always allowed, even
/// above the allowance (so an owner over a lowered quota can clean up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowance {
    pub owner: String,
    pub keys: u64,
    pub bytes: u64,
}

impl Allowance {
    pub const KEYS: &'static str = "keys";
    pub const BYTES: &'static str = "bytes";

    /// Whether writes that take the owner's usage from `before` to `after`
    /// may go ahead: refused when they grow a part of it past its limit;
    /// a write that shrinks usage is always allowed.
    pub fn check(&self, before: DataUsage, after: DataUsage) -> Result<(), StoreError> {
        for (what, now, would_be, limit) in [
            (Self::KEYS, before.keys, after.keys, self.keys),
            (Self::BYTES, before.bytes, after.bytes, self.bytes),
        ] {
            if would_be > now && would_be > limit {
                return Err(StoreError::OverAllowance {
                    owner: self.owner.clone(),
                    what,
                    limit,
                    would_be,
                });
            }
        }
        Ok(())
    }
}

/// A key and what is known of its value without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub key: String,
    pub revision: u64,
    pub size: u64,
}

/// Tenants' key-value data (what functions reach through `wasi:keyvalue`),
/// with a durable change feed: every write is appended to the feed in the
/// same transaction, so a change trigger can never miss one, even across a
/// crash. The feed is kept until its consumer trims it.
#[async_trait]
pub trait DataStore: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError>;
    /// Several keys read at one point in time, in the order asked.
    async fn get_many(&self, keys: Vec<String>) -> Result<Vec<Option<Entry>>, StoreError>;
    /// Applies the writes in order in one durable transaction, all or none.
    /// Returns each write's change (`None`: a delete of a missing key, which
    /// changes nothing and is not in the feed). With an allowance, every
    /// write must belong to its owner, and writes that would take the
    /// owner's usage past it are refused whole with
    /// [`StoreError::OverAllowance`].
    async fn apply(
        &self,
        writes: Vec<DataWrite>,
        allowance: Option<&Allowance>,
    ) -> Result<Vec<Option<DataChange>>, StoreError>;
    /// What `owner` keeps now (kept up to date by every write).
    async fn usage(&self, owner: &str) -> Result<DataUsage, StoreError>;
    /// Up to `limit` keys starting with `prefix` and sorting after `start_after`, in key order.
    async fn keys(
        &self,
        prefix: &str,
        start_after: Option<String>,
        limit: usize,
    ) -> Result<Vec<KeyInfo>, StoreError>;
    /// Up to `limit` changes with a `seq` above `after`, in order.
    async fn changes(&self, after: u64, limit: usize) -> Result<Vec<DataChange>, StoreError>;
    /// Drops the feed's changes up to and including `seq` `through`.
    async fn trim_changes(&self, through: u64) -> Result<(), StoreError>;
    /// The feed's last `seq`; changes whenever a write commits.
    fn last_revision(&self) -> tokio::sync::watch::Receiver<u64>;
}

/// One usage record as the ledger stores it: opaque bytes, indexed by
/// tenant and time, unique by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub tenant: String,
    pub time_ms: u64,
    /// Unique per metered attempt.
    pub key: String,
    pub record: Bytes,
    /// The attempt was opened with a marker: the record is written only
    /// by removing that marker, so a second close of the key writes nothing.
    pub opened: bool,
}

/// Records for one ledger commit, packed: keys and records side by side
/// in one buffer and each tenant named once, so that a commit of
/// thousands of records costs a few allocations, not a few per record
/// (the meter commits one record per request).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerRecords {
    bytes: Vec<u8>,
    tenants: Vec<String>,
    entries: Vec<Packed>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Packed {
    tenant: u32,
    time_ms: u64,
    key: std::ops::Range<usize>,
    record: std::ops::Range<usize>,
    opened: bool,
}

/// One record of [`LedgerRecords`], borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerRecord<'a> {
    pub tenant: &'a str,
    /// The tenant's number in this batch (the same for the same tenant).
    pub tenant_index: u32,
    pub time_ms: u64,
    pub key: &'a str,
    pub record: &'a [u8],
    /// See [`LedgerEntry::opened`].
    pub opened: bool,
}

impl LedgerRecords {
    pub fn with_capacity(records: usize, bytes: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes),
            tenants: Vec::new(),
            entries: Vec::with_capacity(records),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds a record: `key` and then `record` append its key (UTF-8) and
    /// its bytes to the buffer they are given.
    pub fn push(
        &mut self,
        tenant: &str,
        time_ms: u64,
        opened: bool,
        key: impl FnOnce(&mut Vec<u8>),
        record: impl FnOnce(&mut Vec<u8>),
    ) {
        // Most records of a batch share their tenant with the one before.
        let tenant = match self.entries.last() {
            Some(last) if self.tenants[last.tenant as usize] == tenant => last.tenant,
            _ => match self.tenants.iter().position(|t| t == tenant) {
                Some(i) => i as u32,
                None => {
                    self.tenants.push(tenant.to_string());
                    (self.tenants.len() - 1) as u32
                }
            },
        };
        let start = self.bytes.len();
        key(&mut self.bytes);
        let key_end = self.bytes.len();
        record(&mut self.bytes);
        self.entries.push(Packed {
            tenant,
            time_ms,
            key: start..key_end,
            record: key_end..self.bytes.len(),
            opened,
        });
    }

    /// Adds a copy of `record` (from another batch), as written: not opened.
    pub fn push_written(&mut self, record: LedgerRecord<'_>) {
        self.push(
            record.tenant,
            record.time_ms,
            false,
            |b| b.extend_from_slice(record.key.as_bytes()),
            |b| b.extend_from_slice(record.record),
        );
    }

    /// The records in the order they were added. A key that is not UTF-8
    /// reads as empty (see [`LedgerRecords::push`]).
    pub fn iter(&self) -> impl Iterator<Item = LedgerRecord<'_>> {
        self.entries.iter().map(|e| LedgerRecord {
            tenant: &self.tenants[e.tenant as usize],
            tenant_index: e.tenant,
            time_ms: e.time_ms,
            key: std::str::from_utf8(&self.bytes[e.key.clone()]).unwrap_or_default(),
            record: &self.bytes[e.record.clone()],
            opened: e.opened,
        })
    }
}

/// Version byte of [`LedgerRecords::encode`].
const RECORDS_V1: u8 = 1;

impl LedgerRecords {
    /// The records as bytes, to ship or keep: each tenant named once, then
    /// per record its tenant's number, time, key and bytes. `opened` is
    /// not kept: a record written is final.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes.len() + 24 * self.entries.len() + 16);
        out.push(RECORDS_V1);
        out.extend_from_slice(&(self.tenants.len() as u32).to_le_bytes());
        for tenant in &self.tenants {
            out.extend_from_slice(&(tenant.len() as u32).to_le_bytes());
            out.extend_from_slice(tenant.as_bytes());
        }
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.tenant.to_le_bytes());
            out.extend_from_slice(&e.time_ms.to_le_bytes());
            for range in [&e.key, &e.record] {
                out.extend_from_slice(&(range.len() as u32).to_le_bytes());
                out.extend_from_slice(&self.bytes[range.clone()]);
            }
        }
        out
    }

    /// Reads what [`LedgerRecords::encode`] wrote (every record not opened).
    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let mut r = Reader(bytes);
        if r.take(1)? != [RECORDS_V1] {
            return Err(Reader::corrupt("an unknown version"));
        }
        let tenants = r.u32()? as usize;
        let mut names = Vec::with_capacity(tenants.min(4096));
        for _ in 0..tenants {
            names.push(r.text()?.to_string());
        }
        let count = r.u32()? as usize;
        let mut out = Self::with_capacity(count.min(1 << 20), bytes.len());
        for _ in 0..count {
            let tenant = names
                .get(r.u32()? as usize)
                .ok_or_else(|| Reader::corrupt("a tenant out of range"))?;
            let time_ms = r.u64()?;
            let key = r.text()?;
            let len = r.u32()? as usize;
            let record = r.take(len)?;
            out.push(
                tenant,
                time_ms,
                false,
                |b| b.extend_from_slice(key.as_bytes()),
                |b| b.extend_from_slice(record),
            );
        }
        if !r.0.is_empty() {
            return Err(Reader::corrupt("bytes after the last record"));
        }
        Ok(out)
    }
}

/// Reads [`LedgerRecords::encode`]'s fields in order.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn corrupt(what: &str) -> StoreError {
        StoreError::Corrupt(format!("encoded ledger records: {what}"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.0.len() < n {
            return Err(Self::corrupt("cut short"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        let (low, high) = (u64::from(self.u32()?), u64::from(self.u32()?));
        Ok(low | high << 32)
    }

    fn text(&mut self) -> Result<&'a str, StoreError> {
        let len = self.u32()? as usize;
        std::str::from_utf8(self.take(len)?).map_err(|_| Self::corrupt("text not UTF-8"))
    }
}

impl FromIterator<LedgerEntry> for LedgerRecords {
    fn from_iter<I: IntoIterator<Item = LedgerEntry>>(entries: I) -> Self {
        let mut out = Self::default();
        for e in entries {
            out.push(
                &e.tenant,
                e.time_ms,
                e.opened,
                |b| b.extend_from_slice(e.key.as_bytes()),
                |b| b.extend_from_slice(&e.record),
            );
        }
        out
    }
}

impl From<Vec<LedgerEntry>> for LedgerRecords {
    fn from(entries: Vec<LedgerEntry>) -> Self {
        entries.into_iter().collect()
    }
}

/// One transaction of the metering ledger: markers of attempts still
/// running, records (each removing its marker), and how far the writer's
/// journal has been read, all durable together or not at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerCommit {
    /// Attempts that started and have no record yet: each marker stays
    /// until its record is written.
    pub open: Vec<(String, Bytes)>,
    /// An opened entry whose marker is gone (already closed) is skipped.
    pub close: LedgerRecords,
    /// The writer's read position after this commit (opaque to the store).
    pub position: Option<Bytes>,
    /// Also keep the records this commit writes (those it skips are not)
    /// as one entry of the outbox, in the same transaction: what a cluster
    /// node has yet to ship to the shared usage log.
    pub outbox: bool,
}

/// The metering ledger: exactly one record per key, durably. An attempt is
/// *opened* (a marker) when it starts and *closed* by its record; markers
/// still open at start-up are attempts the server stopped in the middle of.
#[async_trait]
pub trait LedgerStore: Send + Sync {
    /// Writes markers, then records (removing their markers), then the
    /// position, in one transaction; returns how many records were written.
    async fn commit(&self, commit: LedgerCommit) -> Result<u64, StoreError>;
    /// The position of the last commit that had one.
    async fn position(&self) -> Result<Option<Bytes>, StoreError>;
    /// Markers of attempts that started and have no record.
    async fn open_markers(&self) -> Result<Vec<(String, Bytes)>, StoreError>;
    /// Up to `limit` of a tenant's records with `from_ms <= time_ms < to_ms`,
    /// in (time, key) order, after `after`.
    async fn records(
        &self,
        tenant: &str,
        from_ms: u64,
        to_ms: u64,
        after: Option<(u64, String)>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, StoreError>;
    /// The first `limit` outbox entries (see [`LedgerCommit::outbox`]), in
    /// commit order, each numbered above every earlier one and encoded by
    /// [`LedgerRecords::encode`]. The upper 32 bits of the numbers are the
    /// same for every entry of one ledger and chosen at random, so entries
    /// of two ledgers (a node's data directory lost and made again) tell
    /// apart.
    async fn outbox(&self, limit: usize) -> Result<Vec<(u64, Bytes)>, StoreError>;
    /// Drops the outbox entries numbered up to and including `through`.
    async fn drop_outbox(&self, through: u64) -> Result<(), StoreError>;
    /// Removes up to about `limit` records (every tenant's) of attempts
    /// that started before `before_ms` (retention); returns how many went.
    /// Called again until it returns 0, each call a bounded step.
    async fn prune(&self, before_ms: u64, limit: usize) -> Result<u64, StoreError>;
}

/// Content-addressed blobs (components). A blob's id is `sha256:<hex>` of its bytes.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Stores the bytes (idempotent) and returns their digest.
    async fn put(&self, bytes: Bytes) -> Result<String, StoreError>;
    async fn get(&self, digest: &str) -> Result<Option<Bytes>, StoreError>;
    /// Removes the bytes of `digest`; whether they were there. The caller
    /// makes sure nothing refers to them any more.
    async fn delete(&self, digest: &str) -> Result<bool, StoreError>;
    /// The digest of every blob stored, in no particular order.
    async fn digests(&self) -> Result<Vec<String>, StoreError>;
}

/// Append-only logs, one per stream name. Each record gets a position
/// above every earlier one of its stream and never reused (not after a
/// delete either), but positions need not be consecutive: a cluster
/// backend numbers records across streams. A position is a cursor to read
/// after, never a count.
#[async_trait]
pub trait LogStore: Send + Sync {
    /// Appends records to streams in one durable write. Returns the
    /// position of the last record given in each stream written, in
    /// first-seen order.
    async fn append(&self, records: Vec<(String, Bytes)>)
    -> Result<Vec<(String, u64)>, StoreError>;
    /// Up to `limit` records of `stream` with a position above `after`,
    /// in order (`after` need not be a position: 0 reads from the start).
    async fn read(
        &self,
        stream: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Bytes)>, StoreError>;
    /// Drops a whole stream.
    async fn delete_stream(&self, stream: &str) -> Result<(), StoreError>;
    /// Appends like [`LogStore::append`] and, in the same write, holds each
    /// stream written to `limits`: its oldest records are dropped while it
    /// is over them (as a JetStream stream's `max_bytes` and `max_age` do).
    /// `now_ms` is the wall clock, which stamps the records.
    async fn append_within(
        &self,
        records: Vec<(String, Bytes)>,
        limits: LogLimits,
        now_ms: u64,
    ) -> Result<Vec<(String, u64)>, StoreError>;
    /// Holds every stream whose name starts with `prefix` to `limits` (for
    /// the age limit, which records reach without a write); the others are
    /// not touched. Returns the records dropped.
    async fn prune(&self, prefix: &str, limits: LogLimits, now_ms: u64) -> Result<u64, StoreError>;
    /// Bytes of records `stream` holds (appended through `append_within`
    /// or `append`, and not yet dropped).
    async fn stream_bytes(&self, stream: &str) -> Result<u64, StoreError>;
}

/// What a log stream keeps: its newest records, up to both limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Bytes of records, at most.
    pub max_bytes: u64,
    /// Age of a record, at most (to the minute: a record may be kept up
    /// to a minute longer).
    pub max_age_ms: u64,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            max_bytes: 16 << 20,
            max_age_ms: 7 * 24 * 3600 * 1000,
        }
    }
}

/// One message claimed from a [`QueueStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub seq: u64,
    /// Claims so far, this one included: the attempt number.
    pub attempt: u32,
    /// When it became claimable (ms since the epoch): the time it was
    /// released or deferred to, a lost claim's lease end, or what it was
    /// enqueued with (0: at once).
    pub due_ms: u64,
    pub payload: Bytes,
    /// It belongs to an ordering group: acknowledging it may make the
    /// group's next message claimable.
    pub grouped: bool,
}

/// One message of a queue as [`QueueStore::peek`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peeked {
    pub seq: u64,
    /// Claims so far.
    pub attempts: u32,
    /// Claimed, and not released since (its lease may have run out: its
    /// claimant stopped).
    pub claimed: bool,
    pub payload: Bytes,
}

/// Durable work queues, one per name, for events waiting to be delivered.
///
/// A message is claimed for a lease; until it is acknowledged or released
/// it is invisible to other claims, and if its claimant dies the lease
/// runs out and it is claimed again (at-least-once). Messages become
/// claimable in `not_before` order, then enqueue order.
///
/// Messages enqueued with an ordering group (a KV key, say) are delivered
/// one at a time per group, in enqueue order: a message is claimable only
/// once every earlier message of its group has been acknowledged, so a
/// retry of one holds back the ones after it instead of being overtaken.
#[async_trait]
pub trait QueueStore: Send + Sync {
    /// Durably appends messages, claimable from `not_before_ms`; returns their sequence numbers.
    async fn enqueue(
        &self,
        queue: &str,
        payloads: Vec<Bytes>,
        not_before_ms: u64,
    ) -> Result<Vec<u64>, StoreError>;
    /// Like [`QueueStore::enqueue`], in the ordering group `group`.
    async fn enqueue_ordered(
        &self,
        queue: &str,
        group: &str,
        payloads: Vec<Bytes>,
        not_before_ms: u64,
    ) -> Result<Vec<u64>, StoreError>;
    /// Enqueues one message the caller names by `id`, the same each time
    /// it submits this message again (a trigger's invocation id), in the
    /// ordering group `group` if given. If this queue stored a message
    /// under `id` within the backend's [`QueueStore::once_window_ms`] (a
    /// try whose answer was lost but which was stored, a process that
    /// stopped before it could record that it enqueued), it is not stored
    /// again: `None`. `Some(seq)`: stored now. Ids of different queues
    /// never meet.
    async fn enqueue_once(
        &self,
        queue: &str,
        group: Option<&str>,
        id: &str,
        payload: Bytes,
        not_before_ms: u64,
    ) -> Result<Option<u64>, StoreError>;
    /// For how long after it stored a message [`QueueStore::enqueue_once`]
    /// refuses another under the same id.
    fn once_window_ms(&self) -> u64;
    /// Claims up to `max` messages due at `now_ms`, hiding each until `now_ms + lease_ms`.
    async fn claim(
        &self,
        queue: &str,
        now_ms: u64,
        lease_ms: u64,
        max: usize,
    ) -> Result<Vec<Claimed>, StoreError>;
    /// Removes delivered (or dead-lettered) messages.
    async fn ack(&self, queue: &str, seqs: Vec<u64>) -> Result<(), StoreError>;
    /// Acknowledges `seq` and, when it was of an ordering group whose next
    /// message is due at `now_ms`, claims that one for `lease_ms` in the
    /// same write (as [`QueueStore::claim`] would), so a group's events
    /// follow each other without a claim's round trip between them.
    /// `None`: nothing claimed (the default: the successor, if any, is
    /// left for `claim`).
    async fn ack_and_claim_next(
        &self,
        queue: &str,
        seq: u64,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<Option<Claimed>, StoreError> {
        let _ = (now_ms, lease_ms);
        self.ack(queue, vec![seq]).await.map(|()| None)
    }
    /// Makes a claimed message claimable again from `not_before_ms` (a retry).
    async fn release(&self, queue: &str, seq: u64, not_before_ms: u64) -> Result<(), StoreError>;
    /// Like [`QueueStore::release`], but the claim does not count as an
    /// attempt (the message was never tried: no capacity to run it).
    async fn defer(&self, queue: &str, seq: u64, not_before_ms: u64) -> Result<(), StoreError>;
    /// Makes the messages of `queue` claimed by this node claimable at
    /// `now_ms`: a node calls it at start, for the claims it held before it
    /// restarted, instead of waiting for their leases to run out. A backend
    /// shared by several nodes releases only this node's claims (it knows
    /// nodes by a name that outlives a restart), never another's still
    /// running; on one node every claim is its own. Returns how many were
    /// released.
    async fn release_claims(&self, queue: &str, now_ms: u64) -> Result<u64, StoreError>;
    /// When the next message becomes claimable (Unix ms): the earliest
    /// `not_before` or lease end. `None` when the queue is empty.
    async fn next_due(&self, queue: &str) -> Result<Option<u64>, StoreError>;
    /// Messages in the queue, claimed or not.
    async fn depth(&self, queue: &str) -> Result<u64, StoreError>;
    /// Shows `visit` the messages of the queue, claimed or not, in
    /// sequence order, until it returns `false`: what is queued, for a
    /// lookup. Linear in the queue's length; the messages are read a few
    /// at a time, never all held at once.
    async fn peek(
        &self,
        queue: &str,
        visit: &mut (dyn FnMut(Peeked) -> bool + Send),
    ) -> Result<(), StoreError>;
    /// Names of the queues that hold messages.
    async fn queues(&self) -> Result<Vec<String>, StoreError>;
    /// Every queue that holds messages with its [`QueueStore::depth`].
    async fn depths(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut depths = Vec::new();
        for queue in self.queues().await? {
            let depth = self.depth(&queue).await?;
            depths.push((queue, depth));
        }
        Ok(depths)
    }
    /// The names of queues enqueued to, as other processes sharing this
    /// store enqueue (a cluster backend's nodes; this process's own
    /// enqueues may come too), so that their consumers here wake at once.
    /// Best effort: a name may be missed, so consumers still poll. `None`
    /// when the store has no other writers (a single-process backend).
    async fn enqueued_elsewhere(
        &self,
    ) -> Result<Option<tokio::sync::mpsc::UnboundedReceiver<String>>, StoreError> {
        Ok(None)
    }
}

/// The digest a [`BlobStore`] gives these bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(bytes);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in hash {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_records_read_back_as_written_and_damage_is_an_error() {
        let entry = |tenant: &str, time_ms, key: &str, record: &[u8], opened| LedgerEntry {
            tenant: tenant.into(),
            time_ms,
            key: key.into(),
            record: Bytes::copy_from_slice(record),
            opened,
        };
        let records: LedgerRecords = vec![
            entry("t", 5, "a#1", b"one", true),
            entry("ü", u64::MAX, "b#2", b"", false),
            entry("t", 0, "", &[0, 255, 7], false),
        ]
        .into();
        let bytes = records.encode();
        let back = LedgerRecords::decode(&bytes).unwrap();
        let seen: Vec<_> = back
            .iter()
            .map(|r| (r.tenant, r.time_ms, r.key, r.record, r.opened))
            .collect();
        assert_eq!(
            seen,
            [
                ("t", 5, "a#1", &b"one"[..], false),
                ("ü", u64::MAX, "b#2", &b""[..], false),
                ("t", 0, "", &[0u8, 255, 7][..], false),
            ]
        );
        assert_eq!(
            LedgerRecords::decode(&LedgerRecords::default().encode())
                .unwrap()
                .len(),
            0
        );
        for cut in 0..bytes.len() {
            assert!(
                LedgerRecords::decode(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(LedgerRecords::decode(&longer).is_err());
        let mut version = bytes;
        version[0] = 9;
        assert!(LedgerRecords::decode(&version).is_err());
    }

    #[test]
    fn an_allowance_refuses_growth_past_it_and_never_shrinking() {
        let allowance = Allowance {
            owner: "t".into(),
            keys: 10,
            bytes: 100,
        };
        let usage = |keys, bytes| DataUsage { keys, bytes };
        assert!(allowance.check(usage(9, 50), usage(10, 100)).is_ok());
        assert!(matches!(
            allowance.check(usage(10, 50), usage(11, 60)),
            Err(StoreError::OverAllowance {
                what: "keys",
                would_be: 11,
                ..
            })
        ));
        assert!(matches!(
            allowance.check(usage(1, 90), usage(1, 101)),
            Err(StoreError::OverAllowance {
                what: "bytes",
                limit: 100,
                ..
            })
        ));
        // Over a lowered allowance, shrinking (or holding) is allowed.
        assert!(allowance.check(usage(20, 500), usage(19, 400)).is_ok());
        assert!(allowance.check(usage(20, 500), usage(20, 500)).is_ok());
    }
}
