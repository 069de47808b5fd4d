//! The registry's metadata ([`MetaStore`]): keys with revisions that grow
//! across the whole store, and watches fed from the writer's commits.

use async_trait::async_trait;
use bytes::Bytes;
use redb::{
    Database, ReadableDatabase as _, ReadableTable as _, TableDefinition, WriteTransaction,
};
use tokio::sync::broadcast;

use gust_store::{Entry, MetaEvent, MetaStore, StoreError, Watch, WatchStream};

use crate::{EmbeddedStore, META, backend, meta_number};

/// The metadata: key → (revision of its last write, value). The table is
/// `kv` on disk: renaming it would need a migration step for no gain.
const ENTRIES: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("kv");
/// [`META`] key: the metadata's last revision.
const KV_REVISION: &str = "kv.revision";

pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(ENTRIES).map_err(backend)?;
    Ok(())
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
    let mut kv = txn.open_table(ENTRIES).map_err(backend)?;
    let current = kv.get(key).map_err(backend)?.map(|v| v.value().0);
    let Some(change) = decide(current)? else {
        return Ok(None);
    };
    let mut meta = txn.open_table(META).map_err(backend)?;
    let revision = meta_number(&meta, KV_REVISION)? + 1;
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
    let kv = txn.open_table(ENTRIES).map_err(backend)?;
    let meta = txn.open_table(META).map_err(backend)?;
    let revision = meta_number(&meta, KV_REVISION)?;
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
            let kv = txn.open_table(ENTRIES).map_err(backend)?;
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

    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        use std::ops::Bound;
        let prefix = prefix.to_string();
        let after = after.map(str::to_string);
        self.read(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let kv = txn.open_table(ENTRIES).map_err(backend)?;
            let start = match &after {
                Some(a) if a.as_str() >= prefix.as_str() => Bound::Excluded(a.as_str()),
                _ => Bound::Included(prefix.as_str()),
            };
            let mut out = Vec::new();
            for item in kv
                .range::<&str>((start, Bound::Unbounded))
                .map_err(backend)?
            {
                let (k, v) = item.map_err(backend)?;
                let key = k.value();
                if !key.starts_with(prefix.as_str()) || out.len() >= limit {
                    break;
                }
                let (revision, bytes) = v.value();
                out.push(Entry {
                    key: key.to_string(),
                    value: Bytes::copy_from_slice(bytes),
                    revision,
                });
            }
            Ok(out)
        })
        .await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn conformance() {
        let (_dir, store) = crate::open_temp();
        gust_store::conformance::kv(&store).await;
    }

    #[tokio::test]
    async fn conformance_registry() {
        let (_dir, store) = crate::open_temp();
        gust_store::conformance::registry(std::sync::Arc::new(store)).await;
    }

    #[tokio::test]
    async fn conformance_accounts() {
        let (_dir, store) = crate::open_temp();
        gust_store::conformance::accounts(std::sync::Arc::new(store)).await;
        let (_dir, store) = crate::open_temp();
        gust_store::conformance::last_admin_token(std::sync::Arc::new(store)).await;
    }

    /// Two registries, accounts or leases on one store stand for two nodes.
    #[tokio::test(flavor = "multi_thread")]
    async fn conformance_two_nodes() {
        use gust_store::MetaStore;
        let two = || {
            let (dir, store) = crate::open_temp();
            let store: std::sync::Arc<dyn MetaStore> = std::sync::Arc::new(store);
            (dir, store.clone(), store)
        };
        let (_dir, one, other) = two();
        gust_store::conformance::leases(one, other).await;
        let (_dir, one, other) = two();
        gust_store::conformance::claims_across_nodes(one, other).await;
        let (_dir, one, other) = two();
        gust_store::conformance::component_bytes_across_nodes(one, other).await;
        let (_dir, one, other) = two();
        gust_store::conformance::revocations_across_nodes(one, other).await;
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
