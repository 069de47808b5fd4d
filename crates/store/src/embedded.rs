//! The embedded backend: one redb file in the data directory.
//!
//! redb over SQLite: pure Rust (no C toolchain in CI, no `-sys` build), ACID
//! with copy-on-write B-trees, one writer at a time, and a typed table API
//! that maps one-to-one onto our traits. Every write commits durably before
//! it returns. Blocking redb calls run on tokio's blocking pool.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};
use tokio::sync::broadcast;

use crate::{
    BlobStore, Claimed, Entry, KvEvent, KvStore, LogStore, QueueStore, StoreError, Watch,
    WatchStream, digest_of,
};

const KV: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs");
const LOGS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("logs");
const LOG_HEADS: TableDefinition<&str, u64> = TableDefinition::new("log_heads");
/// (queue, seq) → (not_before_ms, attempts, payload)
const QUEUE: TableDefinition<(&str, u64), (u64, u32, &[u8])> = TableDefinition::new("queue");
/// (queue, not_before_ms, seq): the claim order.
const QUEUE_DUE: TableDefinition<(&str, u64, u64), ()> = TableDefinition::new("queue_due");
/// queue → last sequence number given.
const QUEUE_HEADS: TableDefinition<&str, u64> = TableDefinition::new("queue_heads");

const KV_REVISION: &str = "kv.revision";
/// Watchers further behind than this get [`StoreError::Lagged`] and resync.
const WATCH_BUFFER: usize = 4096;

fn backend(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Backend(e.into().to_string())
}

/// The embedded store: KV, blobs and logs in one redb database.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    changes: broadcast::Sender<KvEvent>,
    /// Held from the start of a KV write until its event is published, so
    /// watchers see events in revision order.
    kv_writer: std::sync::Mutex<()>,
}

impl EmbeddedStore {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(backend)?;
        let txn = db.begin_write().map_err(backend)?;
        {
            // Create every table up front so readers never see a missing one.
            txn.open_table(KV).map_err(backend)?;
            txn.open_table(META).map_err(backend)?;
            txn.open_table(BLOBS).map_err(backend)?;
            txn.open_table(LOGS).map_err(backend)?;
            txn.open_table(LOG_HEADS).map_err(backend)?;
            txn.open_table(QUEUE).map_err(backend)?;
            txn.open_table(QUEUE_DUE).map_err(backend)?;
            txn.open_table(QUEUE_HEADS).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        let (changes, _) = broadcast::channel(WATCH_BUFFER);
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                changes,
                kv_writer: std::sync::Mutex::new(()),
            }),
        })
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|_| StoreError::Closed)?
    }
}

impl Inner {
    /// Runs one KV mutation in a write transaction, bumping the store revision,
    /// and publishes the resulting event after the commit is durable.
    fn mutate_kv(
        &self,
        key: &str,
        decide: impl FnOnce(Option<u64>) -> Result<Option<Option<Bytes>>, StoreError>,
    ) -> Result<Option<KvEvent>, StoreError> {
        let _writer = self.kv_writer.lock().unwrap_or_else(|p| p.into_inner());
        let txn = self.db.begin_write().map_err(backend)?;
        let event = {
            let mut kv = txn.open_table(KV).map_err(backend)?;
            let current = kv.get(key).map_err(backend)?.map(|v| v.value().0);
            // Some(Some(v)): write v; Some(None): delete; None: nothing to do.
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
                    KvEvent::Put(Entry {
                        key: key.to_string(),
                        value,
                        revision,
                    })
                }
                None => {
                    kv.remove(key).map_err(backend)?;
                    KvEvent::Delete {
                        key: key.to_string(),
                        revision,
                    }
                }
            }
        };
        txn.commit().map_err(backend)?;
        // No receivers is fine: nobody is watching.
        let _ = self.changes.send(event.clone());
        Ok(Some(event))
    }

    fn list(&self, prefix: &str) -> Result<(Vec<Entry>, u64), StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
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
}

#[async_trait]
impl KvStore for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let key = key.to_string();
        self.blocking(move |inner| {
            let txn = inner.db.begin_read().map_err(backend)?;
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
        self.blocking(move |inner| {
            let event = inner.mutate_kv(&key, |_| Ok(Some(Some(value))))?;
            Ok(event.map_or(0, |e| e.revision()))
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
        self.blocking(move |inner| {
            let event = inner.mutate_kv(&key, |found| {
                if found != expected {
                    return Err(StoreError::Conflict {
                        key: key.clone(),
                        expected,
                        found,
                    });
                }
                Ok(Some(Some(value)))
            })?;
            Ok(event.map_or(0, |e| e.revision()))
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let key = key.to_string();
        self.blocking(move |inner| {
            let event = inner.mutate_kv(&key, |found| Ok(found.map(|_| None)))?;
            Ok(event.map(|e| e.revision()))
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let prefix = prefix.to_string();
        self.blocking(move |inner| Ok(inner.list(&prefix)?.0)).await
    }

    async fn watch(&self, prefix: &str) -> Result<Watch, StoreError> {
        // Subscribe before reading so no change falls between the two;
        // events at or below the snapshot's revision are skipped.
        let rx = self.inner.changes.subscribe();
        let owned = prefix.to_string();
        let (initial, revision) = self.blocking(move |inner| inner.list(&owned)).await?;
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
    rx: broadcast::Receiver<KvEvent>,
    prefix: String,
    after: u64,
}

#[async_trait]
impl WatchStream for BroadcastWatch {
    async fn next(&mut self) -> Result<KvEvent, StoreError> {
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
        self.blocking(move |inner| {
            let digest = digest_of(&bytes);
            let txn = inner.db.begin_write().map_err(backend)?;
            {
                let mut blobs = txn.open_table(BLOBS).map_err(backend)?;
                if blobs.get(digest.as_str()).map_err(backend)?.is_none() {
                    blobs
                        .insert(digest.as_str(), bytes.as_ref())
                        .map_err(backend)?;
                }
            }
            txn.commit().map_err(backend)?;
            Ok(digest)
        })
        .await
    }

    async fn get(&self, digest: &str) -> Result<Option<Bytes>, StoreError> {
        let digest = digest.to_string();
        self.blocking(move |inner| {
            let txn = inner.db.begin_read().map_err(backend)?;
            let blobs = txn.open_table(BLOBS).map_err(backend)?;
            Ok(blobs
                .get(digest.as_str())
                .map_err(backend)?
                .map(|v| Bytes::copy_from_slice(v.value())))
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
        self.blocking(move |inner| {
            let txn = inner.db.begin_write().map_err(backend)?;
            let mut heads: Vec<(String, u64)> = Vec::new();
            {
                let mut logs = txn.open_table(LOGS).map_err(backend)?;
                let mut head_table = txn.open_table(LOG_HEADS).map_err(backend)?;
                for (stream, bytes) in &records {
                    let seq = match heads.iter_mut().find(|(s, _)| s == stream) {
                        Some((_, seq)) => {
                            *seq += 1;
                            *seq
                        }
                        None => {
                            let last = head_table
                                .get(stream.as_str())
                                .map_err(backend)?
                                .map_or(0, |v| v.value());
                            heads.push((stream.clone(), last + 1));
                            last + 1
                        }
                    };
                    logs.insert((stream.as_str(), seq), bytes.as_ref())
                        .map_err(backend)?;
                }
                for (stream, seq) in &heads {
                    head_table.insert(stream.as_str(), *seq).map_err(backend)?;
                }
            }
            txn.commit().map_err(backend)?;
            Ok(heads)
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
        self.blocking(move |inner| {
            let txn = inner.db.begin_read().map_err(backend)?;
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
        self.blocking(move |inner| {
            let txn = inner.db.begin_write().map_err(backend)?;
            {
                let mut logs = txn.open_table(LOGS).map_err(backend)?;
                logs.retain_in(
                    (stream.as_str(), 0)..=(stream.as_str(), u64::MAX),
                    |_, _| false,
                )
                .map_err(backend)?;
                // Keep the head so sequence numbers are never reused for this stream name.
            }
            txn.commit().map_err(backend)?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl QueueStore for EmbeddedStore {
    async fn enqueue(
        &self,
        queue: &str,
        payloads: Vec<Bytes>,
        not_before_ms: u64,
    ) -> Result<Vec<u64>, StoreError> {
        let queue = queue.to_string();
        self.blocking(move |inner| {
            let txn = inner.db.begin_write().map_err(backend)?;
            let mut seqs = Vec::with_capacity(payloads.len());
            {
                let mut items = txn.open_table(QUEUE).map_err(backend)?;
                let mut due = txn.open_table(QUEUE_DUE).map_err(backend)?;
                let mut heads = txn.open_table(QUEUE_HEADS).map_err(backend)?;
                let mut seq = heads
                    .get(queue.as_str())
                    .map_err(backend)?
                    .map_or(0, |v| v.value());
                for payload in &payloads {
                    seq += 1;
                    items
                        .insert(
                            (queue.as_str(), seq),
                            (not_before_ms, 0u32, payload.as_ref()),
                        )
                        .map_err(backend)?;
                    due.insert((queue.as_str(), not_before_ms, seq), ())
                        .map_err(backend)?;
                    seqs.push(seq);
                }
                heads.insert(queue.as_str(), seq).map_err(backend)?;
            }
            txn.commit().map_err(backend)?;
            Ok(seqs)
        })
        .await
    }

    async fn claim(
        &self,
        queue: &str,
        now_ms: u64,
        lease_ms: u64,
        max: usize,
    ) -> Result<Vec<Claimed>, StoreError> {
        let queue = queue.to_string();
        self.blocking(move |inner| {
            // Workers poll; a read transaction finds "nothing due" without
            // paying for a durable commit.
            {
                let txn = inner.db.begin_read().map_err(backend)?;
                let due = txn.open_table(QUEUE_DUE).map_err(backend)?;
                let mut range = due
                    .range((queue.as_str(), 0, 0)..=(queue.as_str(), now_ms, u64::MAX))
                    .map_err(backend)?;
                if range.next().is_none() {
                    return Ok(Vec::new());
                }
            }
            let txn = inner.db.begin_write().map_err(backend)?;
            let mut claimed = Vec::new();
            {
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
                    let Some((attempts, payload)) =
                        items.get((queue.as_str(), seq)).map_err(backend)?.map(|v| {
                            let (_, attempts, payload) = v.value();
                            (attempts, Bytes::copy_from_slice(payload))
                        })
                    else {
                        continue;
                    };
                    let attempt = attempts + 1;
                    items
                        .insert(
                            (queue.as_str(), seq),
                            (visible_again, attempt, payload.as_ref()),
                        )
                        .map_err(backend)?;
                    due.insert((queue.as_str(), visible_again, seq), ())
                        .map_err(backend)?;
                    claimed.push(Claimed {
                        seq,
                        attempt,
                        payload,
                    });
                }
            }
            txn.commit().map_err(backend)?;
            Ok(claimed)
        })
        .await
    }

    async fn ack(&self, queue: &str, seqs: Vec<u64>) -> Result<(), StoreError> {
        let queue = queue.to_string();
        self.blocking(move |inner| {
            let txn = inner.db.begin_write().map_err(backend)?;
            {
                let mut items = txn.open_table(QUEUE).map_err(backend)?;
                let mut due = txn.open_table(QUEUE_DUE).map_err(backend)?;
                for seq in seqs {
                    let not_before = items
                        .remove((queue.as_str(), seq))
                        .map_err(backend)?
                        .map(|v| v.value().0);
                    if let Some(not_before) = not_before {
                        due.remove((queue.as_str(), not_before, seq))
                            .map_err(backend)?;
                    }
                }
            }
            txn.commit().map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn release(&self, queue: &str, seq: u64, not_before_ms: u64) -> Result<(), StoreError> {
        let queue = queue.to_string();
        self.blocking(move |inner| {
            let txn = inner.db.begin_write().map_err(backend)?;
            {
                let mut items = txn.open_table(QUEUE).map_err(backend)?;
                let mut due = txn.open_table(QUEUE_DUE).map_err(backend)?;
                let current = items.get((queue.as_str(), seq)).map_err(backend)?.map(|v| {
                    let (not_before, attempts, payload) = v.value();
                    (not_before, attempts, payload.to_vec())
                });
                if let Some((old, attempts, payload)) = current {
                    due.remove((queue.as_str(), old, seq)).map_err(backend)?;
                    items
                        .insert(
                            (queue.as_str(), seq),
                            (not_before_ms, attempts, payload.as_slice()),
                        )
                        .map_err(backend)?;
                    due.insert((queue.as_str(), not_before_ms, seq), ())
                        .map_err(backend)?;
                }
            }
            txn.commit().map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn depth(&self, queue: &str) -> Result<u64, StoreError> {
        let queue = queue.to_string();
        self.blocking(move |inner| {
            let txn = inner.db.begin_read().map_err(backend)?;
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
        self.blocking(move |inner| {
            let txn = inner.db.begin_read().map_err(backend)?;
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
        crate::conformance::kv(&store).await;
    }

    #[tokio::test]
    async fn conformance_blobs() {
        let (_dir, store) = open();
        crate::conformance::blobs(&store).await;
    }

    #[tokio::test]
    async fn conformance_logs() {
        let (_dir, store) = open();
        crate::conformance::logs(&store).await;
    }

    #[tokio::test]
    async fn conformance_queues() {
        let (_dir, store) = open();
        crate::conformance::queues(&store).await;
    }

    #[tokio::test]
    async fn conformance_registry() {
        let (_dir, store) = open();
        crate::conformance::registry(Arc::new(store)).await;
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gust.redb");
        let rev = {
            let store = EmbeddedStore::open(&path).unwrap();
            KvStore::put(&store, "k", Bytes::from_static(b"v"))
                .await
                .unwrap()
        };
        let store = EmbeddedStore::open(&path).unwrap();
        let entry = KvStore::get(&store, "k").await.unwrap().unwrap();
        assert_eq!(entry.revision, rev);
        // Revisions keep growing after a restart.
        let next = KvStore::put(&store, "k2", Bytes::new()).await.unwrap();
        assert!(next > rev);
    }
}
