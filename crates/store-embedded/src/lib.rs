//! The embedded backend: one redb file in the data directory.
//!
//! redb over SQLite: pure Rust (no C toolchain in CI, no `-sys` build), ACID
//! with copy-on-write B-trees, one writer at a time, and a typed table API
//! that maps one-to-one onto our traits.
//!
//! ## Group commit
//! Every write is durable (fsync) before its call returns, and a durable
//! commit costs the same for one record as for hundreds. So all writes go
//! to one writer thread, which takes every write waiting, applies them in
//! one transaction, commits once, and only then answers each caller. Under
//! load, many callers share each fsync; alone, a write waits for nothing.
//! A write that is refused (a compare-and-set conflict) changes nothing and
//! does not disturb the others in its batch. Reads run on tokio's blocking
//! pool, beside the writer (redb readers see the last commit).
//!
//! ## The usage ledger's file
//! Usage records are the bulk of what is written (one per invocation), so
//! their blocks are not B-tree values: each ledger commit appends its
//! blocks to `<database>.ledger` and syncs it (`fdatasync`), then records
//! where each block is, with the file's new committed length, in the same
//! transaction as the rest of the commit. A crash between the two leaves
//! bytes past the committed length, which the next commit overwrites (and
//! opening cuts off). Blocks written before the file existed stay in the
//! database and read as before.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{
    Database, ReadableDatabase as _, ReadableTable as _, ReadableTableMetadata as _,
    TableDefinition, WriteTransaction,
};
use tokio::sync::{broadcast, oneshot};

use gust_store::{
    Allowance, BlobStore, Claimed, DataChange, DataStore, DataUsage, DataWrite, Entry, KeyInfo,
    LedgerCommit, LedgerEntry, LedgerRecord, LedgerRecords, LedgerStore, LogLimits, LogStore,
    MetaEvent, MetaStore, QueueStore, StoreError, Watch, WatchStream, digest_of,
};

const KV: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs");
const LOGS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("logs");
const LOG_HEADS: TableDefinition<&str, u64> = TableDefinition::new("log_heads");
/// stream → bytes of the records it holds.
const LOG_BYTES: TableDefinition<&str, u64> = TableDefinition::new("log_bytes");
/// (stream, minute of the wall clock) → the first sequence number appended
/// in that minute: what ages records out without a time in each.
const LOG_MINUTES: TableDefinition<(&str, u64), u64> = TableDefinition::new("log_minutes");
const MINUTE_MS: u64 = 60_000;
/// (queue, seq) → (not_before_ms, state, payload); `state` holds the
/// attempts so far and the flags [`CLAIMED`] and [`GROUPED`], so claiming
/// and acknowledging touch no other table for the common case.
const QUEUE: TableDefinition<(&str, u64), (u64, u32, &[u8])> = TableDefinition::new("queue");
/// (queue, not_before_ms, seq): the claim order.
const QUEUE_DUE: TableDefinition<(&str, u64, u64), ()> = TableDefinition::new("queue_due");
/// queue → last sequence number given.
const QUEUE_HEADS: TableDefinition<&str, u64> = TableDefinition::new("queue_heads");
/// In a message's state: claimed, and not yet acknowledged or released.
const CLAIMED: u32 = 1 << 31;
/// In a message's state: it belongs to an ordering group.
const GROUPED: u32 = 1 << 30;
/// In a message's state: the attempts so far.
const ATTEMPTS: u32 = GROUPED - 1;
/// (queue, seq) → ordering group, for messages enqueued in one.
const QUEUE_GROUP_OF: TableDefinition<(&str, u64), &str> = TableDefinition::new("queue_group_of");
/// (queue, group, seq): a group's unacknowledged messages in order. Only
/// the first of each group is in `QUEUE_DUE`; the others wait here.
const QUEUE_GROUPS: TableDefinition<(&str, &str, u64), ()> = TableDefinition::new("queue_groups");

/// Tenants' data: key → (its owner's revision, value).
const DATA: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("data");
/// The change feed of stores written before revisions were numbered per
/// owner: seq → (key, is_delete, value). Moved into `DATA_FEED` at open.
const DATA_CHANGES: TableDefinition<u64, (&str, bool, &[u8])> =
    TableDefinition::new("data_changes");
/// The change feed: seq (across all owners) → (key, is_delete, value, the
/// owner's revision).
const DATA_FEED: TableDefinition<u64, (&str, bool, &[u8], u64)> = TableDefinition::new("data_feed");
/// The last revision of each owner: revisions are numbered per owner, so
/// that one tenant's revisions say nothing of another's writes.
const DATA_REVISIONS: TableDefinition<&str, u64> = TableDefinition::new("data_revisions");
/// Where owners without a revision yet start: the store-wide sequence when
/// a store from before per-owner revisions was first opened (0 for new
/// stores), so a key's revision never goes back.
const DATA_REVISION_FLOOR: &str = "data.revision_floor";

/// Usage per owner (the part of a data key before its first `/`): (keys, bytes).
const DATA_USAGE: TableDefinition<&str, (u64, u64)> = TableDefinition::new("data_usage");
/// Set once `DATA_USAGE` has been counted from `DATA` (stores made before it existed).
const DATA_USAGE_COUNTED: &str = "data.usage_counted";

/// Ledger markers of attempts that started: key → marker.
const LEDGER_OPEN: TableDefinition<&str, &[u8]> = TableDefinition::new("ledger_open");
/// Usage records: (tenant, time ms, key) → record.
const LEDGER: TableDefinition<(&str, u64, &str), &[u8]> = TableDefinition::new("ledger");
/// Usage records in blocks: a commit's records of one tenant that started
/// in one second, keyed (tenant, second's first ms, block number). A
/// thousand records cost one B-tree insert instead of a thousand.
const LEDGER_BLOCKS: TableDefinition<(&str, u64, u64), &[u8]> =
    TableDefinition::new("ledger_blocks");
/// Usage record blocks in the ledger file: (tenant, second's first ms,
/// block number) → (offset, length).
const LEDGER_SPANS: TableDefinition<(&str, u64, u64), (u64, u64)> =
    TableDefinition::new("ledger_spans");
/// The span of a ledger block.
const BLOCK_MS: u64 = 1000;
/// `LEDGER_META` key: the ledger file's committed length (u64, little-endian).
const LEDGER_FILE_END: &str = "file_end";
/// The meter's journal position of the last ledger commit (`"position"`).
const LEDGER_META: TableDefinition<&str, &[u8]> = TableDefinition::new("ledger_meta");

const KV_REVISION: &str = "kv.revision";
const DATA_REVISION: &str = "data.revision";
/// Watchers further behind than this get [`StoreError::Lagged`] and resync.
const WATCH_BUFFER: usize = 4096;
/// Writes applied in one transaction at most.
const MAX_BATCH: usize = 1024;

fn backend(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Backend(e.into().to_string())
}

/// Answers a caller once its batch is committed (`Ok`) or abandoned (`Err`).
type Finish = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// One write: applied inside the batch's transaction; the KV changes it
/// made are pushed to the event list, published after the commit.
type Job = Box<dyn FnOnce(&WriteTransaction, &mut Vec<MetaEvent>) -> Result<Finish, Finish> + Send>;

/// The embedded store: KV, blobs, logs and queues in one redb database.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

/// How the embedded store is set up.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Writes are refused (with [`StoreError::DiskFull`]) while the file
    /// system holding the database has less than this many bytes available,
    /// so the database never runs out of space in the middle of a commit.
    pub min_free_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            min_free_bytes: 64 << 20,
        }
    }
}

/// Watches the free space under the database. Checked before every write,
/// at most every [`DiskGuard::RECHECK`] (a `statvfs` call).
struct DiskGuard {
    dir: std::path::PathBuf,
    min_free: u64,
    last: std::sync::Mutex<Option<(std::time::Instant, u64)>>,
}

impl DiskGuard {
    const RECHECK: std::time::Duration = std::time::Duration::from_millis(100);

    fn check(&self) -> Result<(), StoreError> {
        if self.min_free == 0 {
            return Ok(());
        }
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let available = match *last {
            Some((at, available)) if at.elapsed() < Self::RECHECK => available,
            _ => {
                let available = rustix::fs::statvfs(&self.dir)
                    .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
                    .unwrap_or(u64::MAX);
                *last = Some((std::time::Instant::now(), available));
                available
            }
        };
        if available < self.min_free {
            return Err(StoreError::DiskFull {
                available,
                required: self.min_free,
            });
        }
        Ok(())
    }
}

struct Inner {
    db: Arc<Database>,
    ledger: Arc<LedgerFile>,
    disk: DiskGuard,
    changes: broadcast::Sender<MetaEvent>,
    data_revision: tokio::sync::watch::Sender<u64>,
    writes: std_mpsc::Sender<Job>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the writer after the writes queued; wait
        // for it so the database file is released when the store is dropped.
        let (closed, _) = std_mpsc::channel();
        drop(std::mem::replace(&mut self.writes, closed));
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the database file at `path`, with default options.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, &StoreOptions::default())
    }

    /// Opens (or creates) the database file at `path`.
    pub fn open_with(path: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(backend)?;
        let txn = db.begin_write().map_err(backend)?;
        {
            // Create every table up front so readers never see a missing one.
            txn.open_table(KV).map_err(backend)?;
            txn.open_table(META).map_err(backend)?;
            txn.open_table(BLOBS).map_err(backend)?;
            txn.open_table(LOGS).map_err(backend)?;
            txn.open_table(LOG_HEADS).map_err(backend)?;
            txn.open_table(LOG_BYTES).map_err(backend)?;
            txn.open_table(LOG_MINUTES).map_err(backend)?;
            txn.open_table(QUEUE).map_err(backend)?;
            txn.open_table(QUEUE_DUE).map_err(backend)?;
            txn.open_table(QUEUE_HEADS).map_err(backend)?;
            txn.open_table(QUEUE_GROUP_OF).map_err(backend)?;
            txn.open_table(QUEUE_GROUPS).map_err(backend)?;
            txn.open_table(DATA).map_err(backend)?;
            txn.open_table(DATA_FEED).map_err(backend)?;
            txn.open_table(DATA_REVISIONS).map_err(backend)?;
            txn.open_table(DATA_USAGE).map_err(backend)?;
            txn.open_table(LEDGER_OPEN).map_err(backend)?;
            txn.open_table(LEDGER).map_err(backend)?;
            txn.open_table(LEDGER_META).map_err(backend)?;
            txn.open_table(LEDGER_BLOCKS).map_err(backend)?;
            txn.open_table(LEDGER_SPANS).map_err(backend)?;
        }
        move_ledger_to_blocks(&txn)?;
        let ledger = {
            let meta = txn.open_table(LEDGER_META).map_err(backend)?;
            // Unreadable, it must not read as 0: opening would cut the file.
            let end = match meta.get(LEDGER_FILE_END).map_err(backend)? {
                None => 0,
                Some(v) => u64::from_le_bytes(v.value().try_into().map_err(|_| {
                    StoreError::Corrupt(
                        "the usage ledger file's committed length is damaged".into(),
                    )
                })?),
            };
            Arc::new(LedgerFile::open(&path.with_extension("ledger"), end)?)
        };
        count_usage_once(&txn)?;
        number_revisions_per_owner(&txn)?;
        let data_revision = {
            let meta = txn.open_table(META).map_err(backend)?;
            meta.get(DATA_REVISION)
                .map_err(backend)?
                .map_or(0, |v| v.value())
        };
        txn.commit().map_err(backend)?;
        let db = Arc::new(db);
        let (changes, _) = broadcast::channel(WATCH_BUFFER);
        let (writes, jobs) = std_mpsc::channel::<Job>();
        let writer = {
            let db = db.clone();
            let changes = changes.clone();
            std::thread::Builder::new()
                .name("gust-store-writer".into())
                .spawn(move || write_loop(&db, &changes, &jobs))
                .map_err(|e| StoreError::Backend(format!("writer thread: {e}")))?
        };
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                ledger,
                disk: DiskGuard {
                    dir: path
                        .parent()
                        .filter(|p| !p.as_os_str().is_empty())
                        .unwrap_or(Path::new("."))
                        .to_path_buf(),
                    min_free: options.min_free_bytes,
                    last: std::sync::Mutex::new(None),
                },
                changes,
                data_revision: tokio::sync::watch::Sender::new(data_revision),
                writes,
                writer: Some(writer),
            }),
        })
    }

    /// Runs a read on tokio's blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|_| StoreError::Closed)?
    }

    /// Runs a write in the next group commit and returns its result once
    /// that commit is durable. `Err(StoreError::Conflict)` from `op` means
    /// "refused, nothing written" (so do other refusals, see
    /// [`StoreError::is_refusal`]); any other error abandons the batch.
    async fn write<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction, &mut Vec<MetaEvent>) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner.disk.check()?;
        let (tx, rx) = oneshot::channel::<Result<T, StoreError>>();
        let job: Job = Box::new(move |txn, events| match op(txn, events) {
            Ok(value) => Ok(Box::new(move |committed: Result<(), StoreError>| {
                let _ = tx.send(committed.map(|()| value));
            })),
            Err(refused) if refused.is_refusal() => Ok(Box::new(move |_| {
                let _ = tx.send(Err(refused));
            })),
            Err(failed) => Err(Box::new(move |_| {
                let _ = tx.send(Err(failed));
            })),
        });
        self.inner
            .writes
            .send(job)
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| {
            StoreError::Backend("the write was abandoned with its batch; retry".into())
        })?
    }
}

impl EmbeddedStore {
    /// Ends a claim: the message is due again at `not_before_ms`; with
    /// `refund`, the claim does not count as an attempt.
    async fn unclaim(
        &self,
        queue: &str,
        seq: u64,
        not_before_ms: u64,
        refund: bool,
    ) -> Result<(), StoreError> {
        let queue = queue.to_string();
        self.write(move |txn, _| {
            let mut items = txn.open_table(QUEUE).map_err(backend)?;
            let mut due = txn.open_table(QUEUE_DUE).map_err(backend)?;
            let current = items.get((queue.as_str(), seq)).map_err(backend)?.map(|v| {
                let (not_before, attempts, payload) = v.value();
                (not_before, attempts, payload.to_vec())
            });
            if let Some((old, state, payload)) = current {
                due.remove((queue.as_str(), old, seq)).map_err(backend)?;
                items
                    .insert(
                        (queue.as_str(), seq),
                        (not_before_ms, unclaimed(state, refund), payload.as_slice()),
                    )
                    .map_err(backend)?;
                due.insert((queue.as_str(), not_before_ms, seq), ())
                    .map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    /// Appends messages to a queue, in an ordering group or not. A grouped
    /// message is claimable at once only if its group holds nothing else;
    /// otherwise `ack` of its predecessor makes it claimable.
    async fn append_to_queue(
        &self,
        queue: &str,
        group: Option<String>,
        payloads: Vec<Bytes>,
        not_before_ms: u64,
    ) -> Result<Vec<u64>, StoreError> {
        let queue = queue.to_string();
        self.write(move |txn, _| {
            let mut seqs = Vec::with_capacity(payloads.len());
            let mut items = txn.open_table(QUEUE).map_err(backend)?;
            let mut due = txn.open_table(QUEUE_DUE).map_err(backend)?;
            let mut heads = txn.open_table(QUEUE_HEADS).map_err(backend)?;
            let mut grouping = match &group {
                Some(group) => Some((
                    group.as_str(),
                    txn.open_table(QUEUE_GROUP_OF).map_err(backend)?,
                    txn.open_table(QUEUE_GROUPS).map_err(backend)?,
                )),
                None => None,
            };
            let mut seq = heads
                .get(queue.as_str())
                .map_err(backend)?
                .map_or(0, |v| v.value());
            for payload in &payloads {
                seq += 1;
                let state = if grouping.is_some() { GROUPED } else { 0 };
                items
                    .insert(
                        (queue.as_str(), seq),
                        (not_before_ms, state, payload.as_ref()),
                    )
                    .map_err(backend)?;
                let claimable = match &mut grouping {
                    None => true,
                    Some((g, group_of, groups)) => {
                        let waiting = groups
                            .range((queue.as_str(), *g, 0)..=(queue.as_str(), *g, u64::MAX))
                            .map_err(backend)?
                            .next()
                            .is_some();
                        groups
                            .insert((queue.as_str(), *g, seq), ())
                            .map_err(backend)?;
                        group_of
                            .insert((queue.as_str(), seq), *g)
                            .map_err(backend)?;
                        !waiting
                    }
                };
                if claimable {
                    due.insert((queue.as_str(), not_before_ms, seq), ())
                        .map_err(backend)?;
                }
                seqs.push(seq);
            }
            heads.insert(queue.as_str(), seq).map_err(backend)?;
            Ok(seqs)
        })
        .await
    }
}

/// The writer thread: batches every waiting write into one transaction.
fn write_loop(
    db: &Database,
    changes: &broadcast::Sender<MetaEvent>,
    jobs: &std_mpsc::Receiver<Job>,
) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let Ok(txn) = db.begin_write() else {
            // Dropping the jobs closes their callers' channels: each caller
            // hears its write was abandoned and may retry.
            drop(batch);
            continue;
        };
        let mut events = Vec::new();
        let mut finishes = Vec::with_capacity(batch.len());
        let mut failure = None;
        let mut jobs_left = batch.into_iter();
        for job in jobs_left.by_ref() {
            match job(&txn, &mut events) {
                Ok(finish) => finishes.push(finish),
                Err(finish) => {
                    // A failed write may have changed some tables: the whole
                    // batch is rolled back and every caller hears of it.
                    finish(Err(StoreError::Backend("the write failed".into())));
                    failure = Some(StoreError::Backend(
                        "another write in the same commit failed; retry".into(),
                    ));
                    break;
                }
            }
        }
        let outcome = match failure {
            Some(error) => {
                let _ = txn.abort();
                // Jobs never run are dropped: their callers get an error.
                drop(jobs_left);
                Err(error)
            }
            None => txn.commit().map_err(backend),
        };
        if outcome.is_ok() {
            for event in events {
                // No receivers is fine: nobody is watching.
                let _ = changes.send(event);
            }
        }
        for finish in finishes {
            finish(outcome.clone());
        }
    }
}

/// Applies one KV mutation inside a batch: `decide` sees the key's current
/// revision and returns the change (`Some(Some(v))` write, `Some(None)`
/// delete, `None` nothing). Returns the new revision, if anything changed.
fn mutate_kv(
    txn: &WriteTransaction,
    events: &mut Vec<MetaEvent>,
    key: &str,
    decide: impl FnOnce(Option<u64>) -> Result<Option<Option<Bytes>>, StoreError>,
) -> Result<Option<u64>, StoreError> {
    let mut kv = txn.open_table(KV).map_err(backend)?;
    let current = kv.get(key).map_err(backend)?.map(|v| v.value().0);
    let Some(change) = decide(current)? else {
        return Ok(None);
    };
    let mut meta = txn.open_table(META).map_err(backend)?;
    let revision = meta
        .get(KV_REVISION)
        .map_err(backend)?
        .map_or(0, |v| v.value())
        + 1;
    meta.insert(KV_REVISION, revision).map_err(backend)?;
    match change {
        Some(value) => {
            kv.insert(key, (revision, value.as_ref()))
                .map_err(backend)?;
            events.push(MetaEvent::Put(Entry {
                key: key.to_string(),
                value,
                revision,
            }));
        }
        None => {
            kv.remove(key).map_err(backend)?;
            events.push(MetaEvent::Delete {
                key: key.to_string(),
                revision,
            });
        }
    }
    Ok(Some(revision))
}

fn list(db: &Database, prefix: &str) -> Result<(Vec<Entry>, u64), StoreError> {
    let txn = db.begin_read().map_err(backend)?;
    let kv = txn.open_table(KV).map_err(backend)?;
    let meta = txn.open_table(META).map_err(backend)?;
    let revision = meta
        .get(KV_REVISION)
        .map_err(backend)?
        .map_or(0, |v| v.value());
    let mut out = Vec::new();
    for item in kv.range(prefix..).map_err(backend)? {
        let (k, v) = item.map_err(backend)?;
        let key = k.value();
        if !key.starts_with(prefix) {
            break;
        }
        let (rev, bytes) = v.value();
        out.push(Entry {
            key: key.to_string(),
            value: Bytes::copy_from_slice(bytes),
            revision: rev,
        });
    }
    Ok((out, revision))
}

#[async_trait]
impl MetaStore for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let key = key.to_string();
        self.read(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let kv = txn.open_table(KV).map_err(backend)?;
            Ok(kv.get(key.as_str()).map_err(backend)?.map(|v| {
                let (revision, bytes) = v.value();
                Entry {
                    key: key.clone(),
                    value: Bytes::copy_from_slice(bytes),
                    revision,
                }
            }))
        })
        .await
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<u64, StoreError> {
        let key = key.to_string();
        self.write(move |txn, events| {
            Ok(mutate_kv(txn, events, &key, |_| Ok(Some(Some(value))))?.unwrap_or(0))
        })
        .await
    }

    async fn compare_and_set(
        &self,
        key: &str,
        value: Bytes,
        expected: Option<u64>,
    ) -> Result<u64, StoreError> {
        let key = key.to_string();
        self.write(move |txn, events| {
            let revision = mutate_kv(txn, events, &key, |found| {
                if found != expected {
                    return Err(StoreError::Conflict {
                        key: key.clone(),
                        expected,
                        found,
                    });
                }
                Ok(Some(Some(value)))
            })?;
            Ok(revision.unwrap_or(0))
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let key = key.to_string();
        self.write(move |txn, events| mutate_kv(txn, events, &key, |found| Ok(found.map(|_| None))))
            .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let prefix = prefix.to_string();
        self.read(move |db| Ok(list(db, &prefix)?.0)).await
    }

    async fn watch(&self, prefix: &str) -> Result<Watch, StoreError> {
        // Subscribe before reading so no change falls between the two;
        // events at or below the snapshot's revision are skipped.
        let rx = self.inner.changes.subscribe();
        let owned = prefix.to_string();
        let (initial, revision) = self.read(move |db| list(db, &owned)).await?;
        Ok(Watch {
            initial,
            revision,
            changes: Box::new(BroadcastWatch {
                rx,
                prefix: prefix.to_string(),
                after: revision,
            }),
        })
    }
}

struct BroadcastWatch {
    rx: broadcast::Receiver<MetaEvent>,
    prefix: String,
    after: u64,
}

#[async_trait]
impl WatchStream for BroadcastWatch {
    async fn next(&mut self) -> Result<MetaEvent, StoreError> {
        loop {
            match self.rx.recv().await {
                Ok(event) => {
                    if event.revision() > self.after && event.key().starts_with(&self.prefix) {
                        self.after = event.revision();
                        return Ok(event);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => return Err(StoreError::Lagged(n)),
                Err(broadcast::error::RecvError::Closed) => return Err(StoreError::Closed),
            }
        }
    }
}

#[async_trait]
impl BlobStore for EmbeddedStore {
    async fn put(&self, bytes: Bytes) -> Result<String, StoreError> {
        // Hash off the writer thread: it is the only one that commits.
        let digest = digest_of(&bytes);
        let key = digest.clone();
        self.write(move |txn, _| {
            let mut blobs = txn.open_table(BLOBS).map_err(backend)?;
            if blobs.get(key.as_str()).map_err(backend)?.is_none() {
                blobs
                    .insert(key.as_str(), bytes.as_ref())
                    .map_err(backend)?;
            }
            Ok(())
        })
        .await?;
        Ok(digest)
    }

    async fn get(&self, digest: &str) -> Result<Option<Bytes>, StoreError> {
        let digest = digest.to_string();
        self.read(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let blobs = txn.open_table(BLOBS).map_err(backend)?;
            Ok(blobs
                .get(digest.as_str())
                .map_err(backend)?
                .map(|v| Bytes::copy_from_slice(v.value())))
        })
        .await
    }

    async fn delete(&self, digest: &str) -> Result<bool, StoreError> {
        let digest = digest.to_string();
        self.write(move |txn, _| {
            let mut blobs = txn.open_table(BLOBS).map_err(backend)?;
            let removed = blobs.remove(digest.as_str()).map_err(backend)?.is_some();
            Ok(removed)
        })
        .await
    }
}

#[async_trait]
impl LogStore for EmbeddedStore {
    async fn append(
        &self,
        records: Vec<(String, Bytes)>,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.write(move |txn, _| append_logs(txn, &records, wall_ms()))
            .await
    }

    async fn append_within(
        &self,
        records: Vec<(String, Bytes)>,
        limits: LogLimits,
        now_ms: u64,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.write(move |txn, _| {
            let heads = append_logs(txn, &records, now_ms)?;
            for (stream, _) in &heads {
                prune_log(txn, stream, limits, now_ms)?;
            }
            Ok(heads)
        })
        .await
    }

    async fn prune(&self, limits: LogLimits, now_ms: u64) -> Result<u64, StoreError> {
        self.write(move |txn, _| {
            let streams = {
                let sizes = txn.open_table(LOG_BYTES).map_err(backend)?;
                let mut streams = Vec::new();
                for item in sizes.iter().map_err(backend)? {
                    let (stream, _) = item.map_err(backend)?;
                    streams.push(stream.value().to_string());
                }
                streams
            };
            let mut dropped = 0;
            for stream in &streams {
                dropped += prune_log(txn, stream, limits, now_ms)?;
            }
            Ok(dropped)
        })
        .await
    }

    async fn stream_bytes(&self, stream: &str) -> Result<u64, StoreError> {
        let stream = stream.to_string();
        EmbeddedStore::read(self, move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let sizes = txn.open_table(LOG_BYTES).map_err(backend)?;
            Ok(sizes
                .get(stream.as_str())
                .map_err(backend)?
                .map_or(0, |v| v.value()))
        })
        .await
    }

    async fn read(
        &self,
        stream: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Bytes)>, StoreError> {
        let stream = stream.to_string();
        EmbeddedStore::read(self, move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let logs = txn.open_table(LOGS).map_err(backend)?;
            let start = after.saturating_add(1);
            let mut out = Vec::new();
            for item in logs
                .range((stream.as_str(), start)..=(stream.as_str(), u64::MAX))
                .map_err(backend)?
                .take(limit)
            {
                let (k, v) = item.map_err(backend)?;
                out.push((k.value().1, Bytes::copy_from_slice(v.value())));
            }
            Ok(out)
        })
        .await
    }

    async fn delete_stream(&self, stream: &str) -> Result<(), StoreError> {
        let stream = stream.to_string();
        self.write(move |txn, _| {
            let mut logs = txn.open_table(LOGS).map_err(backend)?;
            logs.retain_in(
                (stream.as_str(), 0)..=(stream.as_str(), u64::MAX),
                |_, _| false,
            )
            .map_err(backend)?;
            let mut minutes = txn.open_table(LOG_MINUTES).map_err(backend)?;
            minutes
                .retain_in(
                    (stream.as_str(), 0)..=(stream.as_str(), u64::MAX),
                    |_, _| false,
                )
                .map_err(backend)?;
            txn.open_table(LOG_BYTES)
                .map_err(backend)?
                .remove(stream.as_str())
                .map_err(backend)?;
            // Keep the head so sequence numbers are never reused for this stream name.
            Ok(())
        })
        .await
    }
}

/// The wall clock in ms (stamps log records appended without a time).
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Appends log records in `txn`, counting each stream's bytes and marking
/// the minute (`now_ms`) its records were appended in.
fn append_logs(
    txn: &redb::WriteTransaction,
    records: &[(String, Bytes)],
    now_ms: u64,
) -> Result<Vec<(String, u64)>, StoreError> {
    // stream → (first seq given now, last seq given now, bytes added)
    let mut heads: Vec<(String, u64, u64, u64)> = Vec::new();
    let mut logs = txn.open_table(LOGS).map_err(backend)?;
    let mut head_table = txn.open_table(LOG_HEADS).map_err(backend)?;
    for (stream, bytes) in records {
        let seq = match heads.iter_mut().find(|(s, ..)| s == stream) {
            Some((_, _, seq, added)) => {
                *seq += 1;
                *added += bytes.len() as u64;
                *seq
            }
            None => {
                let last = head_table
                    .get(stream.as_str())
                    .map_err(backend)?
                    .map_or(0, |v| v.value());
                heads.push((stream.clone(), last + 1, last + 1, bytes.len() as u64));
                last + 1
            }
        };
        logs.insert((stream.as_str(), seq), bytes.as_ref())
            .map_err(backend)?;
    }
    let mut sizes = txn.open_table(LOG_BYTES).map_err(backend)?;
    let mut minutes = txn.open_table(LOG_MINUTES).map_err(backend)?;
    let minute = now_ms / MINUTE_MS;
    for (stream, first, last, added) in &heads {
        head_table.insert(stream.as_str(), *last).map_err(backend)?;
        let held = sizes
            .get(stream.as_str())
            .map_err(backend)?
            .map_or(0, |v| v.value());
        sizes
            .insert(stream.as_str(), held.saturating_add(*added))
            .map_err(backend)?;
        if minutes
            .get((stream.as_str(), minute))
            .map_err(backend)?
            .is_none()
        {
            minutes
                .insert((stream.as_str(), minute), *first)
                .map_err(backend)?;
        }
    }
    Ok(heads
        .into_iter()
        .map(|(stream, _, last, _)| (stream, last))
        .collect())
}

/// Drops `stream`'s oldest records while it is over `limits`; returns how many.
fn prune_log(
    txn: &redb::WriteTransaction,
    stream: &str,
    limits: LogLimits,
    now_ms: u64,
) -> Result<u64, StoreError> {
    let mut logs = txn.open_table(LOGS).map_err(backend)?;
    let mut sizes = txn.open_table(LOG_BYTES).map_err(backend)?;
    let mut minutes = txn.open_table(LOG_MINUTES).map_err(backend)?;
    let mut held = sizes.get(stream).map_err(backend)?.map_or(0, |v| v.value());
    let before = held;
    let mut dropped = 0u64;
    // By age: records appended in a minute wholly before the cutoff go.
    let cutoff = now_ms.saturating_sub(limits.max_age_ms) / MINUTE_MS;
    let oldest = minutes
        .range((stream, 0)..=(stream, u64::MAX))
        .map_err(backend)?
        .next()
        .transpose()
        .map_err(backend)?
        .map(|(k, _)| k.value().1);
    if oldest.is_some_and(|minute| minute < cutoff) {
        let keep_from = minutes
            .range((stream, cutoff)..=(stream, u64::MAX))
            .map_err(backend)?
            .next()
            .transpose()
            .map_err(backend)?
            .map_or(u64::MAX, |(_, seq)| seq.value());
        logs.retain_in((stream, 0)..(stream, keep_from), |_, v| {
            held = held.saturating_sub(v.len() as u64);
            dropped += 1;
            false
        })
        .map_err(backend)?;
        minutes
            .retain_in((stream, 0)..(stream, cutoff), |_, _| false)
            .map_err(backend)?;
    }
    // By size: the oldest records go until the rest fits.
    if held > limits.max_bytes {
        let mut through = None;
        for item in logs
            .range((stream, 0)..=(stream, u64::MAX))
            .map_err(backend)?
        {
            let (k, v) = item.map_err(backend)?;
            held = held.saturating_sub(v.value().len() as u64);
            dropped += 1;
            through = Some(k.value().1);
            if held <= limits.max_bytes {
                break;
            }
        }
        if let Some(through) = through {
            logs.retain_in((stream, 0)..=(stream, through), |_, _| false)
                .map_err(backend)?;
        }
    }
    if held != before {
        sizes.insert(stream, held).map_err(backend)?;
    }
    Ok(dropped)
}

/// The tables one data write touches.
struct DataTables<'t> {
    data: redb::Table<'t, &'static str, (u64, &'static [u8])>,
    feed: redb::Table<'t, u64, (&'static str, bool, &'static [u8], u64)>,
    revisions: redb::Table<'t, &'static str, u64>,
    /// Where owners without a revision start.
    floor: u64,
}

/// Applies one data write inside a transaction; the change it made, if any.
/// `seq` is the feed's position across all owners.
fn write_data(
    tables: &mut DataTables<'_>,
    seq: &mut u64,
    write: DataWrite,
) -> Result<(Option<DataChange>, (i64, i64)), StoreError> {
    let DataTables {
        data,
        feed,
        revisions,
        floor,
    } = tables;
    let old = data
        .get(write.key())
        .map_err(backend)?
        .map(|v| v.value().1.to_vec());
    let (key, value) = match write {
        DataWrite::Put { key, value } => (key, Some(value)),
        DataWrite::Delete { key } => {
            if old.is_none() {
                return Ok((None, (0, 0)));
            }
            data.remove(key.as_str()).map_err(backend)?;
            (key, None)
        }
        DataWrite::Increment { key, delta } => {
            let current = match &old {
                None => 0,
                Some(v) => counter(v).ok_or_else(|| StoreError::NotACounter(key.clone()))?,
            };
            let next = current.wrapping_add(delta);
            (key, Some(Bytes::from(next.to_string())))
        }
    };
    *seq += 1;
    let owner = owner_of(&key);
    let revision = revisions
        .get(owner)
        .map_err(backend)?
        .map_or(*floor, |v| v.value())
        + 1;
    revisions.insert(owner, revision).map_err(backend)?;
    let bytes = value.as_deref().unwrap_or_default();
    if value.is_some() {
        data.insert(key.as_str(), (revision, bytes))
            .map_err(backend)?;
    }
    feed.insert(*seq, (key.as_str(), value.is_none(), bytes, revision))
        .map_err(backend)?;
    let delta = usage_delta(
        &key,
        old.as_ref().map(Vec::len),
        value.as_ref().map(Bytes::len),
    );
    Ok((
        Some(DataChange {
            seq: *seq,
            revision,
            key,
            value,
        }),
        delta,
    ))
}

/// Moves a store from before per-owner revisions to them, once: the old
/// feed's changes keep their store-wide numbers as revisions, and owners
/// start above the last of them.
fn number_revisions_per_owner(txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META).map_err(backend)?;
    if meta.get(DATA_REVISION_FLOOR).map_err(backend)?.is_some() {
        return Ok(());
    }
    let floor = meta
        .get(DATA_REVISION)
        .map_err(backend)?
        .map_or(0, |v| v.value());
    let mut old = txn.open_table(DATA_CHANGES).map_err(backend)?;
    let mut feed = txn.open_table(DATA_FEED).map_err(backend)?;
    for entry in old.iter().map_err(backend)? {
        let (seq, record) = entry.map_err(backend)?;
        let (key, deleted, value) = record.value();
        feed.insert(seq.value(), (key, deleted, value, seq.value()))
            .map_err(backend)?;
    }
    old.retain(|_, _| false).map_err(backend)?;
    meta.insert(DATA_REVISION_FLOOR, floor).map_err(backend)?;
    Ok(())
}

/// Counts every owner's usage from the data itself, the first time a store
/// that predates usage counting is opened.
fn count_usage_once(txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META).map_err(backend)?;
    if meta.get(DATA_USAGE_COUNTED).map_err(backend)?.is_some() {
        return Ok(());
    }
    let data = txn.open_table(DATA).map_err(backend)?;
    let mut counted: HashMap<String, (u64, u64)> = HashMap::new();
    for entry in data.iter().map_err(backend)? {
        let (key, value) = entry.map_err(backend)?;
        let key = key.value();
        let owner = counted.entry(owner_of(key).to_string()).or_default();
        owner.0 += 1;
        owner.1 += (key.len() + value.value().1.len()) as u64;
    }
    let mut usage = txn.open_table(DATA_USAGE).map_err(backend)?;
    for (owner, counts) in counted {
        usage.insert(owner.as_str(), counts).map_err(backend)?;
    }
    meta.insert(DATA_USAGE_COUNTED, 1).map_err(backend)?;
    Ok(())
}

fn counter(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// The part of a data key before its first `/`: whose usage it counts in.
fn owner_of(key: &str) -> &str {
    key.split_once('/').map_or(key, |(owner, _)| owner)
}

/// How a key going from `old` to `new` value length changes (keys, bytes).
fn usage_delta(key: &str, old: Option<usize>, new: Option<usize>) -> (i64, i64) {
    let size = |len: Option<usize>| len.map_or(0, |l| (key.len() + l) as i64);
    (
        i64::from(new.is_some()) - i64::from(old.is_some()),
        size(new) - size(old),
    )
}

/// The longest a counter's decimal text can be.
const COUNTER_MAX_LEN: usize = 20;

/// Checks the writes before any is made: every increment must find a
/// counter (or a key this call puts or deletes first), and returns how the
/// writes change usage per owner — exact for puts and deletes, an upper
/// bound for increments.
fn project(
    data: &redb::Table<&str, (u64, &[u8])>,
    writes: &[DataWrite],
) -> Result<HashMap<String, (i64, i64)>, StoreError> {
    // Each key's value length as the writes so far leave it.
    let mut pending: HashMap<&str, Option<usize>> = HashMap::new();
    let mut deltas: HashMap<String, (i64, i64)> = HashMap::new();
    for write in writes {
        let key = write.key();
        let old = match pending.get(key) {
            Some(len) => *len,
            None => match data.get(key).map_err(backend)? {
                Some(v) => {
                    let stored = v.value().1;
                    if matches!(write, DataWrite::Increment { .. }) && counter(stored).is_none() {
                        return Err(StoreError::NotACounter(key.to_string()));
                    }
                    Some(stored.len())
                }
                None => None,
            },
        };
        let new = match write {
            DataWrite::Put { value, .. } => Some(value.len()),
            DataWrite::Delete { .. } => None,
            DataWrite::Increment { .. } => Some(COUNTER_MAX_LEN.max(old.unwrap_or(0))),
        };
        pending.insert(key, new);
        let (keys, bytes) = usage_delta(key, old, new);
        let owner = deltas.entry(owner_of(key).to_string()).or_default();
        owner.0 += keys;
        owner.1 += bytes;
    }
    Ok(deltas)
}

fn check_allowance(
    usage: &redb::Table<&str, (u64, u64)>,
    allowance: &Allowance,
    writes: &[DataWrite],
    projected: HashMap<String, (i64, i64)>,
) -> Result<(), StoreError> {
    if let Some(stranger) = writes.iter().find(|w| owner_of(w.key()) != allowance.owner) {
        return Err(StoreError::Backend(format!(
            "`{}` is not owned by `{}`",
            stranger.key(),
            allowance.owner
        )));
    }
    let Some(&(keys, bytes)) = projected.get(&allowance.owner) else {
        return Ok(());
    };
    let now = read_usage(usage, &allowance.owner)?;
    for (what, delta, current, limit) in [
        (Allowance::KEYS, keys, now.keys, allowance.keys),
        (Allowance::BYTES, bytes, now.bytes, allowance.bytes),
    ] {
        let would_be = current.saturating_add_signed(delta);
        if delta > 0 && would_be > limit {
            return Err(StoreError::OverAllowance {
                owner: allowance.owner.clone(),
                what,
                limit,
                would_be,
            });
        }
    }
    Ok(())
}

fn read_usage(
    usage: &impl redb::ReadableTable<&'static str, (u64, u64)>,
    owner: &str,
) -> Result<DataUsage, StoreError> {
    Ok(usage
        .get(owner)
        .map_err(backend)?
        .map_or_else(DataUsage::default, |v| {
            let (keys, bytes) = v.value();
            DataUsage { keys, bytes }
        }))
}

#[async_trait]
impl LedgerStore for EmbeddedStore {
    async fn commit(&self, commit: LedgerCommit) -> Result<u64, StoreError> {
        let ledger = self.inner.ledger.clone();
        // One ledger commit at a time: each appends where the last ended.
        let _serial = ledger.commits.lock().await;
        let start = ledger.end();
        let file = ledger.clone();
        let (written, end) = self
            .write(move |txn, _| {
                let mut open = txn.open_table(LEDGER_OPEN).map_err(backend)?;
                for (key, marker) in &commit.open {
                    open.insert(key.as_str(), marker.as_ref())
                        .map_err(backend)?;
                }
                let mut written = 0;
                // (tenant, second) → its records, by the tenant's number
                // in the batch (no string compared per record).
                let mut blocks: BTreeMap<(u32, u64), (&str, Vec<LedgerRecord<'_>>)> =
                    BTreeMap::new();
                for entry in commit.close.iter() {
                    // Only an opened entry has a marker to remove (and is
                    // skipped if it is gone: closed already).
                    if entry.opened && open.remove(entry.key).map_err(backend)?.is_none() {
                        continue;
                    }
                    let second = entry.time_ms / BLOCK_MS * BLOCK_MS;
                    blocks
                        .entry((entry.tenant_index, second))
                        .or_insert_with(|| (entry.tenant, Vec::new()))
                        .1
                        .push(entry);
                    written += 1;
                }
                // The blocks go to the file, synced, before the
                // transaction that says where they are can commit.
                let mut bytes = file.scratch();
                let mut spans = Vec::with_capacity(blocks.len());
                for ((_, second), (tenant, entries)) in blocks {
                    let at = bytes.len() as u64;
                    encode_block_into(&entries, &mut bytes);
                    spans.push((tenant, second, start + at, bytes.len() as u64 - at));
                }
                let end = start + bytes.len() as u64;
                let appended = file.append(start, &bytes);
                file.keep_scratch(bytes);
                appended?;
                let mut table = txn.open_table(LEDGER_SPANS).map_err(backend)?;
                for (tenant, second, offset, len) in spans {
                    let next = table
                        .range((tenant, second, 0)..=(tenant, second, u64::MAX))
                        .map_err(backend)?
                        .next_back()
                        .transpose()
                        .map_err(backend)?
                        .map_or(0, |(key, _)| key.value().2 + 1);
                    table
                        .insert((tenant, second, next), (offset, len))
                        .map_err(backend)?;
                }
                let mut meta = txn.open_table(LEDGER_META).map_err(backend)?;
                meta.insert(LEDGER_FILE_END, end.to_le_bytes().as_slice())
                    .map_err(backend)?;
                if let Some(position) = &commit.position {
                    meta.insert("position", position.as_ref())
                        .map_err(backend)?;
                }
                Ok((written, end))
            })
            .await?;
        // Committed: the next commit appends after these blocks. (Had it
        // failed, the next one would overwrite them.)
        ledger.committed(end);
        Ok(written)
    }

    async fn position(&self) -> Result<Option<Bytes>, StoreError> {
        self.read(|db| {
            let txn = db.begin_read().map_err(backend)?;
            let meta = match txn.open_table(LEDGER_META) {
                Ok(meta) => meta,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(backend(e)),
            };
            Ok(meta
                .get("position")
                .map_err(backend)?
                .map(|v| Bytes::copy_from_slice(v.value())))
        })
        .await
    }

    async fn open_markers(&self) -> Result<Vec<(String, Bytes)>, StoreError> {
        self.read(|db| {
            let txn = db.begin_read().map_err(backend)?;
            let open = txn.open_table(LEDGER_OPEN).map_err(backend)?;
            let mut out = Vec::new();
            for entry in open.iter().map_err(backend)? {
                let (key, marker) = entry.map_err(backend)?;
                out.push((
                    key.value().to_string(),
                    Bytes::copy_from_slice(marker.value()),
                ));
            }
            Ok(out)
        })
        .await
    }

    async fn records(
        &self,
        tenant: &str,
        from_ms: u64,
        to_ms: u64,
        after: Option<(u64, String)>,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let tenant = tenant.to_string();
        let file = self.inner.ledger.clone();
        self.read(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let in_db = txn.open_table(LEDGER_BLOCKS).map_err(backend)?;
            let in_file = txn.open_table(LEDGER_SPANS).map_err(backend)?;
            let mut out = Vec::new();
            let start_ms = match &after {
                Some((time, _)) => from_ms.max(*time),
                None => from_ms,
            };
            if start_ms >= to_ms {
                return Ok(out);
            }
            let wanted = |e: &LedgerEntry| {
                (from_ms..to_ms).contains(&e.time_ms)
                    && after
                        .as_ref()
                        .is_none_or(|(t, k)| (e.time_ms, e.key.as_str()) > (*t, k.as_str()))
            };
            let first = start_ms / BLOCK_MS * BLOCK_MS;
            let range = (tenant.as_str(), first, 0)..(tenant.as_str(), to_ms, 0);
            // Blocks of the database (written before the ledger file) and
            // of the file, each in (second, number) order, merged by second.
            let mut from_db = in_db
                .range(range.clone())
                .map_err(backend)?
                .map(|block| {
                    let (key, value) = block.map_err(backend)?;
                    Ok((key.value().1, value.value().to_vec()))
                })
                .peekable();
            let mut from_file = in_file
                .range(range)
                .map_err(backend)?
                .map(|span| {
                    let (key, value) = span.map_err(backend)?;
                    let (offset, len) = value.value();
                    Ok((key.value().1, file.read(offset, len)?))
                })
                .peekable();
            // Records within a second are sorted once all its blocks are read.
            let mut second = Vec::new();
            let mut current = None;
            let at = |block: Option<&Result<(u64, Vec<u8>), StoreError>>| match block {
                // An error first, so that it is returned.
                Some(Err(_)) => Some(0),
                Some(Ok((at, _))) => Some(*at),
                None => None,
            };
            loop {
                let block = match (at(from_db.peek()), at(from_file.peek())) {
                    (None, None) => break,
                    (Some(db), Some(file)) if file < db => from_file.next(),
                    (Some(_), _) => from_db.next(),
                    (None, Some(_)) => from_file.next(),
                };
                let Some(block) = block else {
                    break;
                };
                let (at, bytes) = block?;
                if current.is_some_and(|c| c != at) {
                    take_sorted(&mut second, &mut out, &wanted);
                    if out.len() >= limit {
                        break;
                    }
                }
                current = Some(at);
                second.extend(decode_block(&tenant, &bytes)?);
            }
            take_sorted(&mut second, &mut out, &wanted);
            out.truncate(limit);
            Ok(out)
        })
        .await
    }
}

/// The usage ledger's blocks: an append-only file, written only up to its
/// committed length (kept in the database).
struct LedgerFile {
    file: std::fs::File,
    path: std::path::PathBuf,
    /// The committed length: where the next commit appends.
    end: std::sync::Mutex<u64>,
    /// Held for a whole ledger commit.
    commits: tokio::sync::Mutex<()>,
    /// The buffer the last commit's blocks were encoded in, kept for the
    /// next: a commit's megabytes then land in memory already touched,
    /// not in pages the kernel must fault in and zero each time.
    scratch: std::sync::Mutex<Vec<u8>>,
}

impl LedgerFile {
    /// Opens (or creates) the file; bytes past `end` (a commit that did
    /// not complete) are cut off.
    fn open(path: &Path, end: u64) -> Result<Self, StoreError> {
        let io = |e: std::io::Error| {
            StoreError::Backend(format!("the usage ledger file {}: {e}", path.display()))
        };
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < end {
            return Err(StoreError::Corrupt(format!(
                "the usage ledger file {} has {len} bytes, but {end} were committed: it was cut short or replaced; restore it from a backup",
                path.display()
            )));
        }
        if len > end {
            file.set_len(end).map_err(io)?;
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            end: std::sync::Mutex::new(end),
            commits: tokio::sync::Mutex::new(()),
            scratch: std::sync::Mutex::new(Vec::new()),
        })
    }

    fn io(&self, e: std::io::Error) -> StoreError {
        StoreError::Backend(format!(
            "the usage ledger file {}: {e}",
            self.path.display()
        ))
    }

    fn end(&self) -> u64 {
        *self.end.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn committed(&self, end: u64) {
        *self.end.lock().unwrap_or_else(|p| p.into_inner()) = end;
    }

    /// An empty buffer for a commit's blocks (see [`LedgerFile::keep_scratch`]).
    fn scratch(&self) -> Vec<u8> {
        let mut bytes =
            std::mem::take(&mut *self.scratch.lock().unwrap_or_else(|p| p.into_inner()));
        bytes.clear();
        bytes
    }

    /// Keeps a commit's buffer for the next commit, unless a burst made
    /// it larger than is worth holding on to.
    fn keep_scratch(&self, bytes: Vec<u8>) {
        const KEEP_AT_MOST: usize = 64 << 20;
        if bytes.capacity() <= KEEP_AT_MOST {
            *self.scratch.lock().unwrap_or_else(|p| p.into_inner()) = bytes;
        }
    }

    /// Writes `bytes` at `at` and waits until they are on disk.
    fn append(&self, at: u64, bytes: &[u8]) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt as _;
        if bytes.is_empty() {
            return Ok(());
        }
        self.file.write_all_at(bytes, at).map_err(|e| self.io(e))?;
        self.file.sync_data().map_err(|e| self.io(e))?;
        self.forget(at, at + bytes.len() as u64);
        Ok(())
    }

    /// Drops the synced pages of `from..to` from the page cache (best
    /// effort), as a database does with its write-ahead log: only queries
    /// and exports read them back, rarely, while keeping them would grow
    /// the page cache by the ledger's whole write rate, each commit
    /// taking memory never touched before (on a virtual machine, a fault
    /// in the hypervisor per page: several times the cost of the copy)
    /// and pushing out cached pages that are read. Dropped pages are
    /// free for the next commit to write into. The last partial page
    /// stays: the next commit writes into it.
    fn forget(&self, from: u64, to: u64) {
        const PAGE: u64 = 4096;
        let from = from / PAGE * PAGE;
        let to = to / PAGE * PAGE;
        if let Some(len) = std::num::NonZeroU64::new(to.saturating_sub(from)) {
            let _ = rustix::fs::fadvise(&self.file, from, Some(len), rustix::fs::Advice::DontNeed);
        }
    }

    fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        use std::os::unix::fs::FileExt as _;
        let len = usize::try_from(len)
            .map_err(|_| StoreError::Corrupt("a ledger block is too large".into()))?;
        let mut bytes = vec![0; len];
        self.file
            .read_exact_at(&mut bytes, offset)
            .map_err(|e| self.io(e))?;
        Ok(bytes)
    }
}

/// Moves `second`'s records that `wanted` accepts to `out`, in (time, key) order.
fn take_sorted(
    second: &mut Vec<LedgerEntry>,
    out: &mut Vec<LedgerEntry>,
    wanted: &impl Fn(&LedgerEntry) -> bool,
) {
    second.sort_by(|a, b| (a.time_ms, &a.key).cmp(&(b.time_ms, &b.key)));
    out.extend(second.drain(..).filter(|e| wanted(e)));
}

/// A block: `count u32`, then per record `time u64 | key len u16 | key |
/// record len u32 | record` (little-endian).
fn encode_block(entries: &[LedgerEntry]) -> Vec<u8> {
    let packed: LedgerRecords = entries.iter().cloned().collect();
    let records: Vec<_> = packed.iter().collect();
    let mut out = Vec::new();
    encode_block_into(&records, &mut out);
    out
}

/// Appends a block of `entries` to `out`.
fn encode_block_into(entries: &[LedgerRecord<'_>], out: &mut Vec<u8>) {
    let size: usize = entries
        .iter()
        .map(|e| 14 + e.key.len() + e.record.len())
        .sum();
    out.reserve(4 + size);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.time_ms.to_le_bytes());
        out.extend_from_slice(&(e.key.len() as u16).to_le_bytes());
        out.extend_from_slice(e.key.as_bytes());
        out.extend_from_slice(&(e.record.len() as u32).to_le_bytes());
        out.extend_from_slice(e.record);
    }
}

fn decode_block(tenant: &str, bytes: &[u8]) -> Result<Vec<LedgerEntry>, StoreError> {
    let corrupt = || StoreError::Corrupt("a ledger block is damaged".into());
    let mut rest = bytes;
    let mut take = |n: usize| -> Result<&[u8], StoreError> {
        if rest.len() < n {
            return Err(corrupt());
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let word = |b: &[u8]| {
        b.iter()
            .rev()
            .fold(0u64, |n, byte| n << 8 | u64::from(*byte))
    };
    let count = word(take(4)?) as usize;
    let mut out = Vec::with_capacity(count.min(bytes.len() / 14));
    for _ in 0..count {
        let time_ms = word(take(8)?);
        let key_len = word(take(2)?) as usize;
        let key = std::str::from_utf8(take(key_len)?).map_err(|_| corrupt())?;
        let key = key.to_string();
        let record_len = word(take(4)?) as usize;
        let record = Bytes::copy_from_slice(take(record_len)?);
        out.push(LedgerEntry {
            tenant: tenant.to_string(),
            time_ms,
            key,
            record,
            opened: false,
        });
    }
    Ok(out)
}

/// Moves records of the earlier one-row-per-record table into blocks (once).
fn move_ledger_to_blocks(txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut old = txn.open_table(LEDGER).map_err(backend)?;
    if old.is_empty().map_err(backend)? {
        return Ok(());
    }
    let mut blocks: BTreeMap<(String, u64), Vec<LedgerEntry>> = BTreeMap::new();
    for row in old.iter().map_err(backend)? {
        let (key, record) = row.map_err(backend)?;
        let (tenant, time_ms, key) = key.value();
        blocks
            .entry((tenant.to_string(), time_ms / BLOCK_MS * BLOCK_MS))
            .or_default()
            .push(LedgerEntry {
                tenant: tenant.to_string(),
                time_ms,
                key: key.to_string(),
                record: Bytes::copy_from_slice(record.value()),
                opened: false,
            });
    }
    let mut new = txn.open_table(LEDGER_BLOCKS).map_err(backend)?;
    for ((tenant, second), entries) in &blocks {
        new.insert(
            (tenant.as_str(), *second, 0),
            encode_block(entries).as_slice(),
        )
        .map_err(backend)?;
    }
    old.retain(|_, _| false).map_err(backend)?;
    Ok(())
}

#[async_trait]
impl DataStore for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let mut found = self.get_many(vec![key.to_string()]).await?;
        Ok(found.pop().flatten())
    }

    async fn get_many(&self, keys: Vec<String>) -> Result<Vec<Option<Entry>>, StoreError> {
        self.read(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let data = txn.open_table(DATA).map_err(backend)?;
            keys.into_iter()
                .map(|key| {
                    let found = data.get(key.as_str()).map_err(backend)?.map(|v| {
                        let (revision, value) = v.value();
                        (revision, Bytes::copy_from_slice(value))
                    });
                    Ok(found.map(|(revision, value)| Entry {
                        key,
                        value,
                        revision,
                    }))
                })
                .collect()
        })
        .await
    }

    async fn apply(
        &self,
        writes: Vec<DataWrite>,
        allowance: Option<&Allowance>,
    ) -> Result<Vec<Option<DataChange>>, StoreError> {
        let allowance = allowance.cloned();
        let changes = self
            .write(move |txn, _| {
                let mut meta = txn.open_table(META).map_err(backend)?;
                let mut tables = DataTables {
                    data: txn.open_table(DATA).map_err(backend)?,
                    feed: txn.open_table(DATA_FEED).map_err(backend)?,
                    revisions: txn.open_table(DATA_REVISIONS).map_err(backend)?,
                    floor: meta
                        .get(DATA_REVISION_FLOOR)
                        .map_err(backend)?
                        .map_or(0, |v| v.value()),
                };
                let mut usage = txn.open_table(DATA_USAGE).map_err(backend)?;
                let start = meta
                    .get(DATA_REVISION)
                    .map_err(backend)?
                    .map_or(0, |v| v.value());
                // Refusals (a bad counter, over the allowance) must leave
                // nothing behind, and the transaction is shared with other
                // callers: check everything before the first write.
                let projected = project(&tables.data, &writes)?;
                if let Some(allowance) = &allowance {
                    check_allowance(&usage, allowance, &writes, projected)?;
                }
                let mut revision = start;
                let mut changes = Vec::with_capacity(writes.len());
                let mut deltas: HashMap<String, (i64, i64)> = HashMap::new();
                for write in writes {
                    // A refusal here (a counter overwritten earlier in the
                    // same call) comes after writes: abandon the batch.
                    let (change, delta) =
                        write_data(&mut tables, &mut revision, write).map_err(|e| match e {
                            e if e.is_refusal() => {
                                StoreError::Backend(format!("{e}; nothing was written"))
                            }
                            e => e,
                        })?;
                    if let Some(change) = &change {
                        let owner = deltas.entry(owner_of(&change.key).to_string()).or_default();
                        owner.0 += delta.0;
                        owner.1 += delta.1;
                    }
                    changes.push(change);
                }
                for (owner, (keys, bytes)) in deltas {
                    let now = read_usage(&usage, &owner)?;
                    let next = (
                        now.keys.saturating_add_signed(keys),
                        now.bytes.saturating_add_signed(bytes),
                    );
                    usage.insert(owner.as_str(), next).map_err(backend)?;
                }
                if revision != start {
                    meta.insert(DATA_REVISION, revision).map_err(backend)?;
                }
                Ok(changes)
            })
            .await?;
        if let Some(last) = changes.iter().flatten().map(|c| c.seq).max() {
            self.inner
                .data_revision
                .send_modify(|r| *r = (*r).max(last));
        }
        Ok(changes)
    }

    async fn usage(&self, owner: &str) -> Result<DataUsage, StoreError> {
        let owner = owner.to_string();
        self.read(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let usage = txn.open_table(DATA_USAGE).map_err(backend)?;
            read_usage(&usage, &owner)
        })
        .await
    }

    async fn keys(
        &self,
        prefix: &str,
        start_after: Option<String>,
        limit: usize,
    ) -> Result<Vec<KeyInfo>, StoreError> {
        let prefix = prefix.to_string();
        self.read(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let data = txn.open_table(DATA).map_err(backend)?;
            let from = match &start_after {
                Some(after) if after.as_str() >= prefix.as_str() => after.as_str(),
                _ => prefix.as_str(),
            };
            let mut out = Vec::new();
            for entry in data.range(from..).map_err(backend)? {
                let (key, value) = entry.map_err(backend)?;
                let key = key.value();
                if !key.starts_with(prefix.as_str()) || out.len() >= limit {
                    break;
                }
                if start_after.as_deref() == Some(key) {
                    continue;
                }
                let (revision, bytes) = value.value();
                out.push(KeyInfo {
                    key: key.to_string(),
                    revision,
                    size: bytes.len() as u64,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn changes(&self, after: u64, limit: usize) -> Result<Vec<DataChange>, StoreError> {
        self.read(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let feed = txn.open_table(DATA_FEED).map_err(backend)?;
            let mut out = Vec::new();
            for entry in feed
                .range(after.saturating_add(1)..)
                .map_err(backend)?
                .take(limit)
            {
                let (seq, record) = entry.map_err(backend)?;
                let (key, deleted, value, revision) = record.value();
                out.push(DataChange {
                    seq: seq.value(),
                    revision,
                    key: key.to_string(),
                    value: (!deleted).then(|| Bytes::copy_from_slice(value)),
                });
            }
            Ok(out)
        })
        .await
    }

    async fn trim_changes(&self, through: u64) -> Result<(), StoreError> {
        self.write(move |txn, _| {
            let mut feed = txn.open_table(DATA_FEED).map_err(backend)?;
            feed.retain_in(..=through, |_, _| false).map_err(backend)?;
            Ok(())
        })
        .await
    }

    fn last_revision(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.data_revision.subscribe()
    }
}

/// A claimed message's state once its claim ends.
fn unclaimed(state: u32, refund: bool) -> u32 {
    let attempts = state & ATTEMPTS;
    let attempts = if refund {
        attempts.saturating_sub(1)
    } else {
        attempts
    };
    attempts | (state & GROUPED)
}

/// After `seq` (of an ordering group) is acknowledged: drops it from its
/// group and makes the group's next message claimable.
fn release_next_in_group(
    txn: &WriteTransaction,
    items: &mut redb::Table<(&str, u64), (u64, u32, &[u8])>,
    due: &mut redb::Table<(&str, u64, u64), ()>,
    queue: &str,
    seq: u64,
) -> Result<(), StoreError> {
    let mut group_of = txn.open_table(QUEUE_GROUP_OF).map_err(backend)?;
    let mut groups = txn.open_table(QUEUE_GROUPS).map_err(backend)?;
    let Some(group) = group_of
        .remove((queue, seq))
        .map_err(backend)?
        .map(|g| g.value().to_string())
    else {
        return Ok(());
    };
    let group = group.as_str();
    groups.remove((queue, group, seq)).map_err(backend)?;
    let next = groups
        .range((queue, group, 0)..=(queue, group, u64::MAX))
        .map_err(backend)?
        .next()
        .transpose()
        .map_err(backend)?
        .map(|(k, _)| k.value().2);
    if let Some(next) = next
        && let Some(not_before) = items
            .get((queue, next))
            .map_err(backend)?
            .map(|v| v.value().0)
    {
        due.insert((queue, not_before, next), ()).map_err(backend)?;
    }
    Ok(())
}

#[async_trait]
impl QueueStore for EmbeddedStore {
    async fn enqueue(
        &self,
        queue: &str,
        payloads: Vec<Bytes>,
        not_before_ms: u64,
    ) -> Result<Vec<u64>, StoreError> {
        self.append_to_queue(queue, None, payloads, not_before_ms)
            .await
    }

    async fn enqueue_ordered(
        &self,
        queue: &str,
        group: &str,
        payloads: Vec<Bytes>,
        not_before_ms: u64,
    ) -> Result<Vec<u64>, StoreError> {
        self.append_to_queue(queue, Some(group.to_string()), payloads, not_before_ms)
            .await
    }

    async fn claim(
        &self,
        queue: &str,
        now_ms: u64,
        lease_ms: u64,
        max: usize,
    ) -> Result<Vec<Claimed>, StoreError> {
        // A read finds "nothing due" without paying for a durable commit.
        let probe = queue.to_string();
        let anything_due = self
            .read(move |db| {
                let txn = db.begin_read().map_err(backend)?;
                let due = txn.open_table(QUEUE_DUE).map_err(backend)?;
                let mut range = due
                    .range((probe.as_str(), 0, 0)..=(probe.as_str(), now_ms, u64::MAX))
                    .map_err(backend)?;
                Ok(range.next().is_some())
            })
            .await?;
        if !anything_due {
            return Ok(Vec::new());
        }
        let queue = queue.to_string();
        self.write(move |txn, _| {
            let mut claimed = Vec::new();
            let mut items = txn.open_table(QUEUE).map_err(backend)?;
            let mut due = txn.open_table(QUEUE_DUE).map_err(backend)?;
            let mut ready = Vec::new();
            for entry in due
                .range((queue.as_str(), 0, 0)..=(queue.as_str(), now_ms, u64::MAX))
                .map_err(backend)?
                .take(max)
            {
                let (key, _) = entry.map_err(backend)?;
                let (_, not_before, seq) = key.value();
                ready.push((not_before, seq));
            }
            let visible_again = now_ms.saturating_add(lease_ms);
            for (not_before, seq) in ready {
                due.remove((queue.as_str(), not_before, seq))
                    .map_err(backend)?;
                let Some((state, payload)) =
                    items.get((queue.as_str(), seq)).map_err(backend)?.map(|v| {
                        let (_, state, payload) = v.value();
                        (state, Bytes::copy_from_slice(payload))
                    })
                else {
                    continue;
                };
                let attempt = (state & ATTEMPTS) + 1;
                let state = attempt | (state & GROUPED) | CLAIMED;
                items
                    .insert(
                        (queue.as_str(), seq),
                        (visible_again, state, payload.as_ref()),
                    )
                    .map_err(backend)?;
                due.insert((queue.as_str(), visible_again, seq), ())
                    .map_err(backend)?;
                claimed.push(Claimed {
                    seq,
                    attempt,
                    payload,
                    grouped: state & GROUPED != 0,
                });
            }
            Ok(claimed)
        })
        .await
    }

    async fn ack(&self, queue: &str, seqs: Vec<u64>) -> Result<(), StoreError> {
        let queue = queue.to_string();
        self.write(move |txn, _| {
            let mut items = txn.open_table(QUEUE).map_err(backend)?;
            let mut due = txn.open_table(QUEUE_DUE).map_err(backend)?;
            for seq in seqs {
                let removed = items
                    .remove((queue.as_str(), seq))
                    .map_err(backend)?
                    .map(|v| (v.value().0, v.value().1));
                let Some((not_before, state)) = removed else {
                    continue;
                };
                due.remove((queue.as_str(), not_before, seq))
                    .map_err(backend)?;
                if state & GROUPED != 0 {
                    release_next_in_group(txn, &mut items, &mut due, &queue, seq)?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn release(&self, queue: &str, seq: u64, not_before_ms: u64) -> Result<(), StoreError> {
        self.unclaim(queue, seq, not_before_ms, false).await
    }

    async fn defer(&self, queue: &str, seq: u64, not_before_ms: u64) -> Result<(), StoreError> {
        self.unclaim(queue, seq, not_before_ms, true).await
    }

    async fn release_claims(&self, queue: &str, now_ms: u64) -> Result<u64, StoreError> {
        let queue = queue.to_string();
        self.write(move |txn, _| {
            let mut items = txn.open_table(QUEUE).map_err(backend)?;
            let mut due = txn.open_table(QUEUE_DUE).map_err(backend)?;
            // Only at start-up: a scan of the queue is fine.
            let mut held = Vec::new();
            for entry in items
                .range((queue.as_str(), 0)..=(queue.as_str(), u64::MAX))
                .map_err(backend)?
            {
                let (key, value) = entry.map_err(backend)?;
                let (lease_end, state, payload) = value.value();
                if state & CLAIMED != 0 {
                    held.push((key.value().1, lease_end, state, payload.to_vec()));
                }
            }
            for (seq, lease_end, state, payload) in &held {
                due.remove((queue.as_str(), *lease_end, *seq))
                    .map_err(backend)?;
                items
                    .insert(
                        (queue.as_str(), *seq),
                        (now_ms, state & !CLAIMED, payload.as_slice()),
                    )
                    .map_err(backend)?;
                due.insert((queue.as_str(), now_ms, *seq), ())
                    .map_err(backend)?;
            }
            let seqs = held;
            Ok(seqs.len() as u64)
        })
        .await
    }

    async fn next_due(&self, queue: &str) -> Result<Option<u64>, StoreError> {
        let queue = queue.to_string();
        self.read(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let due = txn.open_table(QUEUE_DUE).map_err(backend)?;
            let first = due
                .range((queue.as_str(), 0, 0)..=(queue.as_str(), u64::MAX, u64::MAX))
                .map_err(backend)?
                .next()
                .transpose()
                .map_err(backend)?;
            Ok(first.map(|(key, _)| key.value().1))
        })
        .await
    }

    async fn depth(&self, queue: &str) -> Result<u64, StoreError> {
        let queue = queue.to_string();
        self.read(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let items = txn.open_table(QUEUE).map_err(backend)?;
            let mut n = 0;
            for entry in items
                .range((queue.as_str(), 0)..=(queue.as_str(), u64::MAX))
                .map_err(backend)?
            {
                entry.map_err(backend)?;
                n += 1;
            }
            Ok(n)
        })
        .await
    }

    async fn queues(&self) -> Result<Vec<String>, StoreError> {
        self.read(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let items = txn.open_table(QUEUE).map_err(backend)?;
            let mut names: Vec<String> = Vec::new();
            let mut next = items
                .first()
                .map_err(backend)?
                .map(|(k, _)| k.value().0.to_string());
            while let Some(name) = next {
                // Skip to the first key after this queue's last possible key.
                next = items
                    .range((name.as_str(), u64::MAX)..)
                    .map_err(backend)?
                    .map(|e| e.map(|(k, _)| k.value().0.to_string()))
                    .find(|n| !matches!(n, Ok(n) if *n == name))
                    .transpose()
                    .map_err(backend)?;
                names.push(name);
            }
            Ok(names)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, EmbeddedStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("gust.redb")).unwrap();
        (dir, store)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn conformance_kv() {
        let (_dir, store) = open();
        gust_store::conformance::kv(&store).await;
    }

    #[tokio::test]
    async fn conformance_blobs() {
        let (_dir, store) = open();
        gust_store::conformance::blobs(&store).await;
    }

    #[tokio::test]
    async fn conformance_logs() {
        let (_dir, store) = open();
        gust_store::conformance::logs(&store).await;
        gust_store::conformance::log_limits(&store).await;
    }

    fn entry(time_ms: u64, key: &str) -> LedgerEntry {
        LedgerEntry {
            tenant: "t".into(),
            time_ms,
            key: key.into(),
            record: Bytes::from(format!("record {key}")),
            opened: false,
        }
    }

    async fn ledger_keys(store: &EmbeddedStore) -> Vec<String> {
        store
            .records("t", 0, u64::MAX, None, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect()
    }

    #[tokio::test]
    async fn ledger_blocks_from_before_the_ledger_file_read_with_the_new_ones() {
        let (_dir, store) = open();
        // A block as earlier versions stored it, in the database.
        {
            let old = [entry(1_500, "b"), entry(2_100, "d")];
            let txn = store.inner.db.begin_write().unwrap();
            {
                let mut blocks = txn.open_table(LEDGER_BLOCKS).unwrap();
                blocks
                    .insert(("t", 1_000, 0), encode_block(&old[..1]).as_slice())
                    .unwrap();
                blocks
                    .insert(("t", 2_000, 0), encode_block(&old[1..]).as_slice())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        store
            .commit(LedgerCommit {
                open: vec![],
                close: vec![entry(1_400, "a"), entry(1_600, "c"), entry(3_000, "e")].into(),
                position: None,
            })
            .await
            .unwrap();
        assert_eq!(ledger_keys(&store).await, ["a", "b", "c", "d", "e"]);
        // Paged across both.
        let page = store
            .records("t", 0, u64::MAX, Some((1_500, "b".into())), 2)
            .await
            .unwrap();
        let keys: Vec<_> = page.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["c", "d"]);
    }

    #[test]
    fn a_commit_buffer_is_kept_for_the_next_unless_a_burst_made_it_huge() {
        let dir = tempfile::tempdir().unwrap();
        let file = LedgerFile::open(&dir.path().join("gust.ledger"), 0).unwrap();
        let mut bytes = file.scratch();
        bytes.extend_from_slice(b"last commit");
        let kept = bytes.capacity();
        file.keep_scratch(bytes);
        let again = file.scratch();
        assert!(again.is_empty(), "a reused buffer starts empty");
        assert_eq!(again.capacity(), kept);
        // Over 64 MiB (capacity only: never touched, so not committed memory).
        file.keep_scratch(Vec::with_capacity((64 << 20) + 1));
        assert_eq!(file.scratch().capacity(), 0, "a burst's buffer is dropped");
    }

    #[tokio::test]
    async fn each_ledger_commit_writes_only_its_own_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("gust.redb")).unwrap();
        let file = dir.path().join("gust.ledger");
        let mut sizes = vec![0];
        // Alike commits (the buffer of one is reused by the next).
        for (n, key) in ["a", "b", "c"].into_iter().enumerate() {
            store
                .commit(LedgerCommit {
                    open: vec![],
                    close: vec![entry(1_000 + n as u64, key)].into(),
                    position: None,
                })
                .await
                .unwrap();
            sizes.push(std::fs::metadata(&file).unwrap().len());
        }
        let grown: Vec<u64> = sizes.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(grown[0] > 0);
        assert_eq!(grown, [grown[0]; 3], "file sizes {sizes:?}");
        assert_eq!(ledger_keys(&store).await, ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn a_ledger_commit_that_did_not_complete_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gust.redb");
        let file = dir.path().join("gust.ledger");
        {
            let store = EmbeddedStore::open(&path).unwrap();
            store
                .commit(LedgerCommit {
                    open: vec![],
                    close: vec![entry(1_000, "a")].into(),
                    position: None,
                })
                .await
                .unwrap();
        }
        let committed = std::fs::metadata(&file).unwrap().len();
        assert!(committed > 0);
        // A crash after the blocks were written, before the transaction.
        {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&file)
                .unwrap();
            f.write_all(b"half a block").unwrap();
        }
        let store = EmbeddedStore::open(&path).unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().len(), committed);
        store
            .commit(LedgerCommit {
                open: vec![],
                close: vec![entry(1_001, "b")].into(),
                position: None,
            })
            .await
            .unwrap();
        assert_eq!(ledger_keys(&store).await, ["a", "b"]);
        drop(store);
        // A file shorter than what was committed is refused, not misread.
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.set_len(committed).unwrap();
        let refused = EmbeddedStore::open(&path).err().unwrap();
        assert!(
            matches!(&refused, StoreError::Corrupt(m) if m.contains("cut short")),
            "{refused}"
        );
    }

    #[test]
    fn a_damaged_ledger_file_length_is_refused_not_read_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gust.redb");
        {
            let store = EmbeddedStore::open(&path).unwrap();
            let txn = store.inner.db.begin_write().unwrap();
            txn.open_table(LEDGER_META)
                .unwrap()
                .insert(LEDGER_FILE_END, b"abc".as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let refused = EmbeddedStore::open(&path).err().unwrap();
        assert!(
            matches!(&refused, StoreError::Corrupt(m) if m.contains("committed length")),
            "{refused}"
        );
    }

    #[tokio::test]
    async fn conformance_queues() {
        let (_dir, store) = open();
        gust_store::conformance::queues(&store).await;
    }

    #[tokio::test]
    async fn conformance_ordered_queues() {
        let (_dir, store) = open();
        gust_store::conformance::ordered_queues(&store).await;
    }

    #[tokio::test]
    async fn conformance_data() {
        let (_dir, store) = open();
        gust_store::conformance::data(&store).await;
    }

    #[tokio::test]
    async fn conformance_ledger() {
        let (_dir, store) = open();
        gust_store::conformance::ledger(&store).await;
    }

    #[tokio::test]
    async fn conformance_registry() {
        let (_dir, store) = open();
        gust_store::conformance::registry(Arc::new(store)).await;
    }

    #[tokio::test]
    async fn conformance_accounts() {
        let (_dir, store) = open();
        gust_store::conformance::accounts(Arc::new(store)).await;
        let (_dir, store) = open();
        gust_store::conformance::last_admin_token(Arc::new(store)).await;
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gust.redb");
        let rev = {
            let store = EmbeddedStore::open(&path).unwrap();
            MetaStore::put(&store, "k", Bytes::from_static(b"v"))
                .await
                .unwrap()
        };
        let store = EmbeddedStore::open(&path).unwrap();
        let entry = MetaStore::get(&store, "k").await.unwrap().unwrap();
        assert_eq!(entry.revision, rev);
        // Revisions keep growing after a restart.
        let next = MetaStore::put(&store, "k2", Bytes::new()).await.unwrap();
        assert!(next > rev);
    }
}
