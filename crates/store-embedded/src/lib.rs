//! The embedded backend: one redb file in the data directory.
//!
//! redb over SQLite: pure Rust (no C toolchain in CI, no `-sys` build), ACID
//! with copy-on-write B-trees, one writer at a time, and a typed table API
//! that maps one-to-one onto our traits.
//!
//! Each trait is implemented in its own module, which owns its tables:
//! `meta` (the registry's metadata and its watches), `blobs`, `logs`,
//! `data` (tenants' data, its change feed and usage), `queues` and
//! `ledger` (usage records and the ledger file). This file holds what they
//! share: opening, the disk guard, and the writer thread. `migrate` holds
//! the schema version and everything that reads older layouts.
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
//! opening cuts off).
//!
//! ## The schema version
//! The layout of the tables is versioned: the `schema.version` key of the
//! `META` table says which layout the database is in. Opening checks it
//! before anything else and refuses a database a newer Gust wrote
//! ([`StoreError::NewerSchema`]); a database from before versions were
//! recorded is migrated, in one transaction, by `migrate`.

mod blobs;
mod data;
mod ledger;
mod logs;
mod meta;
mod migrate;
mod queues;

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use redb::{Database, TableDefinition, WriteTransaction};
use tokio::sync::{broadcast, oneshot};

use gust_store::{MetaEvent, StoreError};

use ledger::LedgerFile;

/// Store-wide counters and markers: key → number. The keys:
/// - `schema.version`: the layout the database is in ([`migrate::SCHEMA_KEY`]);
/// - `kv.revision`: the metadata's last revision ([`meta`]);
/// - `data.revision`: the data change feed's last sequence number, and
///   `data.revision_floor`: where owners without a revision start ([`data`]).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

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

/// The embedded store: every `gust-store` trait on one redb database (and
/// the usage ledger's file beside it).
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

    /// Opens (or creates) the database file at `path`. A database written
    /// by a newer Gust is refused ([`StoreError::NewerSchema`]) before
    /// anything is changed; one from an earlier Gust is migrated.
    pub fn open_with(path: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(backend)?;
        let found = migrate::schema_of(&db, path)?;
        let txn = db.begin_write().map_err(backend)?;
        // Create every table up front so readers never see a missing one.
        meta::create_tables(&txn)?;
        blobs::create_tables(&txn)?;
        logs::create_tables(&txn)?;
        queues::create_tables(&txn)?;
        data::create_tables(&txn)?;
        ledger::create_tables(&txn)?;
        let ledger = Arc::new(LedgerFile::open(
            &path.with_extension("ledger"),
            ledger::committed_end(&txn)?,
        )?);
        migrate::run(&txn, found, &ledger)?;
        let data_revision = data::last_seq(&txn)?;
        let ledger_end = ledger::committed_end(&txn)?;
        txn.commit().map_err(backend)?;
        ledger.committed(ledger_end);
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

/// A number kept in [`META`] (0 when absent).
fn meta_number(
    meta: &impl redb::ReadableTable<&'static str, u64>,
    key: &str,
) -> Result<u64, StoreError> {
    Ok(meta.get(key).map_err(backend)?.map_or(0, |v| v.value()))
}

#[cfg(test)]
fn open_temp() -> (tempfile::TempDir, EmbeddedStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("gust.redb")).unwrap();
    (dir, store)
}
