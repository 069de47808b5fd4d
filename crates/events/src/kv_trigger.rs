//! Key-value change triggers: a function subscribes to a bucket (and
//! optionally a key prefix), and every put or delete there becomes an
//! event for it, through [`Events::submit_once`] like any trigger.
//!
//! The source is the data store's change feed, written in the same
//! transaction as each change, so no change is missed even if the server
//! dies between the write and the event. `ChangeFeed` reads the feed from
//! a durable cursor, submits one event per matching subscription, then
//! moves the cursor and trims the feed. A crash in between makes it read
//! the same changes again; each event's invocation id is derived from its
//! function, trigger and revision, and [`Events::submit_once`] skips those
//! already accepted, so at most the last event per key is queued twice —
//! right behind the first copy, which keeps the order per key.
//!
//! A batch that fails part way (one enqueue refused, the cursor not
//! written: a store out of reach) is read again a second later by the
//! same reader, which remembers what it queued since the cursor last
//! moved and does not queue it again. It cannot rely on the statuses for
//! that: an event is accepted once queued even when its status could not
//! be written (the store that keeps statuses may be the one out of
//! reach), and finding no status, `submit_once` would queue a second copy
//! to run as attempt 1 beside the first. Every chain of a batch is waited
//! for, also after one failed, so what was queued is known.
//!
//! Order per key: the events of one key share an ordering group in the
//! function's queue, so they are delivered one at a time in revision
//! order, retries included. Events of different keys run in parallel.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gust_core::kv::{self, BucketName, ChangeEvent};
use gust_core::{FunctionName, TenantId};
use gust_store::{DataChange, DataStore};
use serde::{Deserialize, Serialize};

use crate::{Events, EventsError, check_path, decode, encode, now_ms};

pub(crate) const PREFIX: &str = "ktrig/";
const CURSOR_KEY: &str = "feed/data-cursor";
/// Changes read from the feed at a time.
const BATCH: usize = 512;

/// A function's subscription to changes in a bucket:
/// `ktrig/<tenant>/<function>/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvTriggerRecord {
    pub id: String,
    pub tenant: TenantId,
    pub function: FunctionName,
    pub bucket: BucketName,
    /// Only keys starting with this (all keys when empty).
    #[serde(default)]
    pub prefix: String,
    /// The request path the function sees.
    #[serde(default = "crate::root_path")]
    pub path: String,
    pub created_ms: u64,
}

fn trigger_key(tenant: &TenantId, function: &FunctionName, id: &str) -> String {
    format!("{PREFIX}{tenant}/{function}/{id}")
}

impl Events {
    pub async fn add_kv_trigger(&self, record: KvTriggerRecord) -> Result<(), EventsError> {
        check_path(&record.path).map_err(EventsError::InvalidTrigger)?;
        if !record.prefix.is_empty() {
            kv::check_key(&record.prefix)
                .map_err(|e| EventsError::InvalidTrigger(format!("prefix: {e}")))?;
        }
        let key = trigger_key(&record.tenant, &record.function, &record.id);
        self.kv.put(&key, encode(&record)?).await?;
        Ok(())
    }

    pub async fn kv_triggers(
        &self,
        tenant: &TenantId,
        function: &FunctionName,
    ) -> Result<Vec<KvTriggerRecord>, EventsError> {
        let entries = self
            .kv
            .list(&format!("{PREFIX}{tenant}/{function}/"))
            .await?;
        Ok(entries
            .iter()
            .map(|e| decode(&e.value))
            .collect::<Result<_, _>>()?)
    }

    pub async fn remove_kv_trigger(
        &self,
        tenant: &TenantId,
        function: &FunctionName,
        id: &str,
    ) -> Result<(), EventsError> {
        match self.kv.delete(&trigger_key(tenant, function, id)).await? {
            Some(_) => Ok(()),
            None => Err(EventsError::NoSuchTrigger(id.to_string())),
        }
    }
}

/// Turns the data change feed into events until the process ends.
pub struct ChangeFeed;

impl ChangeFeed {
    /// Reads the feed from now on. With `exclusive` (nodes of a cluster
    /// sharing one feed), only while holding that lease: one reader at a
    /// time keeps each key's events in revision order and each change's
    /// event single. A holder that dies is replaced once its lease runs
    /// out ([`gust_store::Lease::TTL`]): KV-triggered events pause that long.
    pub fn start(events: &Events, data: Arc<dyn DataStore>, exclusive: Option<gust_store::Lease>) {
        let events = events.clone();
        tokio::spawn(async move {
            let _held = match exclusive {
                Some(lease) => loop {
                    match lease.acquire().await {
                        Ok(guard) => {
                            tracing::info!("this node reads the data change feed");
                            break Some(guard);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "change feed: cannot take its lease; retrying in 1 s");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                },
                None => None,
            };
            let mut written = data.last_revision();
            let mut queued = Queued::default();
            loop {
                match pump(&events, data.as_ref(), &mut queued).await {
                    Ok(true) => continue,
                    Ok(false) => {
                        // Caught up: wait for the next write (or a while, as a safety net).
                        let _ =
                            tokio::time::timeout(Duration::from_secs(5), written.changed()).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "change feed: retrying in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }
}

/// The events this reader queued since the cursor was last read at
/// `cursor`, by tenant and invocation id (ids are unique per tenant
/// only): a batch read again is not queued twice.
#[derive(Debug, Default)]
struct Queued {
    cursor: u64,
    ids: HashSet<(TenantId, String)>,
}

/// Handles one batch of the feed; true if there may be more.
async fn pump(
    events: &Events,
    data: &dyn DataStore,
    queued: &mut Queued,
) -> Result<bool, EventsError> {
    let cursor = match events.kv.get(CURSOR_KEY).await? {
        Some(entry) => std::str::from_utf8(&entry.value)
            .ok()
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(0),
        None => 0,
    };
    if cursor != queued.cursor {
        *queued = Queued {
            cursor,
            ids: HashSet::new(),
        };
    }
    let changes = data.changes(cursor, BATCH).await?;
    let Some(last) = changes.last().map(|c| c.seq) else {
        return Ok(false);
    };
    let triggers: Vec<KvTriggerRecord> = events
        .kv
        .list(PREFIX)
        .await?
        .iter()
        .filter_map(|e| decode(&e.value).ok())
        .collect();

    // One chain per (function, key): in order within, in parallel across.
    let mut chains: HashMap<(String, String), Vec<(KvTriggerRecord, DataChange)>> = HashMap::new();
    for change in &changes {
        let Some((tenant, bucket, key)) = kv::parse_storage_key(&change.key) else {
            continue;
        };
        for trigger in &triggers {
            if trigger.tenant == tenant
                && trigger.bucket == bucket
                && key.starts_with(&trigger.prefix)
            {
                chains
                    .entry((trigger.function.to_string(), change.key.clone()))
                    .or_default()
                    .push((trigger.clone(), change.clone()));
            }
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for chain in chains.into_values() {
        let events = events.clone();
        let chain: Vec<_> = chain
            .into_iter()
            .filter(|(trigger, change)| {
                !queued
                    .ids
                    .contains(&(trigger.tenant.clone(), invocation_id(trigger, change)))
            })
            .collect();
        tasks.spawn(async move {
            let mut done = Vec::new();
            for (trigger, change) in chain {
                if let Err(e) = submit(&events, &trigger, &change).await {
                    return (done, Err(e));
                }
                done.push((trigger.tenant.clone(), invocation_id(&trigger, &change)));
            }
            (done, Ok(()))
        });
    }
    // Every chain to its end: what each queued is known before a failure
    // makes the batch be read again.
    let mut failed = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((done, result)) => {
                queued.ids.extend(done);
                if let Err(e) = result {
                    failed.get_or_insert(e);
                }
            }
            Err(_) => {
                failed.get_or_insert(EventsError::Store(gust_store::StoreError::Closed));
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    events
        .kv
        .put(CURSOR_KEY, Bytes::from(last.to_string()))
        .await?;
    data.trim_changes(last).await?;
    Ok(changes.len() == BATCH)
}

/// The invocation id of `trigger`'s event for `change`: the same whenever
/// the change is read.
fn invocation_id(trigger: &KvTriggerRecord, change: &DataChange) -> String {
    format!("kv-{}-{}-{}", trigger.function, trigger.id, change.revision)
}

async fn submit(
    events: &Events,
    trigger: &KvTriggerRecord,
    change: &DataChange,
) -> Result<(), EventsError> {
    let Some((_, bucket, key)) = kv::parse_storage_key(&change.key) else {
        return Ok(());
    };
    let payload = ChangeEvent::new(&bucket, key, change.revision, change.value.as_deref());
    let data = serde_json::to_vec(&payload)
        .map_err(|e| EventsError::Store(gust_store::StoreError::Corrupt(e.to_string())))?;
    let mut envelope = Events::envelope(
        trigger.tenant.clone(),
        trigger.function.clone(),
        invocation_id(trigger, change),
        trigger.path.clone(),
        |_| None,
        data,
    );
    envelope.id = format!("{}-{}", bucket, change.revision);
    envelope.source = format!("/gust/kv/{bucket}");
    envelope.ty = format!("dev.gust.kv.{}", payload.operation);
    envelope.subject = Some(key.to_string());
    envelope.content_type = Some("application/json".to_string());
    envelope.time_ms = now_ms();
    let group = format!("kv/{bucket}/{key}");
    events.submit_once(envelope, Some(group)).await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;
    use gust_store::{Entry, MetaStore, QueueStore, StoreError, Watch};
    use gust_store_embedded::EmbeddedStore;

    use super::*;

    /// Metadata whose creates (the statuses) or cursor writes fail on
    /// demand, as when the stream that keeps them has no leader.
    struct Flaky {
        inner: Arc<EmbeddedStore>,
        fail_creates: AtomicBool,
        fail_cursor: AtomicBool,
    }

    fn out_of_reach() -> StoreError {
        StoreError::Unavailable("no leader".into())
    }

    #[async_trait]
    impl MetaStore for Flaky {
        async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
            MetaStore::get(self.inner.as_ref(), key).await
        }
        async fn put(&self, key: &str, value: Bytes) -> Result<u64, StoreError> {
            if key == CURSOR_KEY && self.fail_cursor.load(Ordering::Relaxed) {
                return Err(out_of_reach());
            }
            MetaStore::put(self.inner.as_ref(), key, value).await
        }
        async fn compare_and_set(
            &self,
            key: &str,
            value: Bytes,
            expected: Option<u64>,
        ) -> Result<u64, StoreError> {
            if expected.is_none() && self.fail_creates.load(Ordering::Relaxed) {
                return Err(out_of_reach());
            }
            self.inner.compare_and_set(key, value, expected).await
        }
        async fn delete(&self, key: &str) -> Result<Option<u64>, StoreError> {
            MetaStore::delete(self.inner.as_ref(), key).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
            MetaStore::list(self.inner.as_ref(), prefix).await
        }
        async fn watch(&self, prefix: &str) -> Result<Watch, StoreError> {
            self.inner.watch(prefix).await
        }
    }

    fn trigger(tenant: &TenantId, function: &FunctionName, bucket: &BucketName) -> KvTriggerRecord {
        KvTriggerRecord {
            id: "t1".into(),
            tenant: tenant.clone(),
            function: function.clone(),
            bucket: bucket.clone(),
            prefix: String::new(),
            path: "/".into(),
            created_ms: 0,
        }
    }

    async fn put(store: &EmbeddedStore, key: String, value: &'static [u8]) -> Option<DataChange> {
        let mut changes = store
            .apply(
                vec![gust_store::DataWrite::Put {
                    key,
                    value: Bytes::from_static(value),
                }],
                None,
            )
            .await
            .unwrap();
        changes.pop().flatten()
    }

    /// A store whose statuses and cursor cannot be written, a trigger on
    /// tenant `acme`'s bucket `default` and two changes in it.
    struct Failing {
        _dir: tempfile::TempDir,
        store: Arc<EmbeddedStore>,
        meta: Arc<Flaky>,
        events: Events,
        tenant: TenantId,
        function: FunctionName,
        bucket: BucketName,
        queue: String,
    }

    async fn failing() -> Failing {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).unwrap());
        let meta = Arc::new(Flaky {
            inner: store.clone(),
            fail_creates: AtomicBool::new(true),
            fail_cursor: AtomicBool::new(true),
        });
        let events = Events::new(store.clone(), meta.clone());
        let tenant = TenantId::new("acme").unwrap();
        let function = FunctionName::new("on-change").unwrap();
        let bucket = BucketName::new("default").unwrap();
        events
            .add_kv_trigger(trigger(&tenant, &function, &bucket))
            .await
            .unwrap();
        for key in ["a", "b"] {
            put(&store, kv::storage_key(&tenant, &bucket, key), b"v").await;
        }
        let queue = crate::queue_name(&tenant, &function);
        Failing {
            _dir: dir,
            store,
            meta,
            events,
            tenant,
            function,
            bucket,
            queue,
        }
    }

    #[tokio::test]
    async fn a_batch_read_again_after_a_failure_queues_nothing_twice() {
        let Failing {
            _dir,
            store,
            meta,
            events,
            tenant,
            function,
            bucket,
            queue,
        } = failing().await;

        // Both changes are queued (accepted without their statuses, which
        // could not be written), then the cursor cannot move.
        let mut queued = Queued::default();
        assert!(pump(&events, store.as_ref(), &mut queued).await.is_err());
        assert_eq!(store.depth(&queue).await.unwrap(), 2);

        // Meanwhile another tenant's function of the same name, with a
        // trigger of the same id, sees its first change: the same
        // invocation id as the first tenant's first, its own event.
        let rival = TenantId::new("rival").unwrap();
        events
            .add_kv_trigger(trigger(&rival, &function, &bucket))
            .await
            .unwrap();
        let first = put(&store, kv::storage_key(&rival, &bucket, "a"), b"v").await;
        let rivals = crate::queue_name(&rival, &function);

        // The batch is read again with the statuses still out of reach:
        // nothing is queued a second time, the other tenant's event is
        // queued, and the cursor moves on.
        meta.fail_cursor.store(false, Ordering::Relaxed);
        assert!(!pump(&events, store.as_ref(), &mut queued).await.unwrap());
        assert_eq!(store.depth(&queue).await.unwrap(), 2);
        assert_eq!(store.depth(&rivals).await.unwrap(), 1, "{first:?}");
        assert!(store.changes(0, 10).await.unwrap().is_empty(), "trimmed");

        // A new change after that is queued as usual.
        meta.fail_creates.store(false, Ordering::Relaxed);
        put(&store, kv::storage_key(&tenant, &bucket, "a"), b"w").await;
        assert!(!pump(&events, store.as_ref(), &mut queued).await.unwrap());
        assert_eq!(store.depth(&queue).await.unwrap(), 3);
    }

    #[tokio::test]
    async fn a_batch_read_again_after_a_restart_queues_nothing_twice() {
        let Failing {
            _dir,
            store,
            meta,
            events,
            queue,
            ..
        } = failing().await;
        assert!(
            pump(&events, store.as_ref(), &mut Queued::default())
                .await
                .is_err()
        );
        assert_eq!(store.depth(&queue).await.unwrap(), 2);
        // The process starts again (what it remembered is gone) and reads
        // the batch again, the statuses still missing: the queue refuses
        // the ids it holds.
        meta.fail_cursor.store(false, Ordering::Relaxed);
        let restarted = Events::new(store.clone(), meta.clone());
        assert!(
            !pump(&restarted, store.as_ref(), &mut Queued::default())
                .await
                .unwrap()
        );
        assert_eq!(store.depth(&queue).await.unwrap(), 2);
    }
}
