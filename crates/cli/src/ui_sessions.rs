//! The dashboard's sessions in the metadata store, sealed: a browser stays
//! signed in across a restart and on every node of a cluster.
//!
//! Every value is sealed with the key that seals secrets (the cluster's
//! shared key in a cluster), bound to its store key, so neither a token
//! nor a session's anti-forgery value is ever stored in the clear and a
//! value cannot be moved to another key. A value that does not open
//! (sealed under another key) reads as an empty slot.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use gust_store::{MetaStore, SecretBox, StoreError};
use gust_ui::{SessionStore, StoreFailed};

pub struct MetaSessions {
    pub meta: Arc<dyn MetaStore>,
    pub secrets: Arc<SecretBox>,
}

fn failed(e: impl std::fmt::Display) -> StoreFailed {
    StoreFailed(e.to_string())
}

impl MetaSessions {
    /// The value, opened; empty if it does not open (or is empty).
    fn open(&self, key: &str, value: &[u8]) -> String {
        std::str::from_utf8(value)
            .ok()
            .filter(|v| !v.is_empty())
            .and_then(|sealed| self.secrets.open(key, sealed).ok())
            .unwrap_or_default()
    }
}

#[async_trait]
impl SessionStore for MetaSessions {
    async fn get(&self, key: &str) -> Result<Option<(String, u64)>, StoreFailed> {
        let entry = self.meta.get(key).await.map_err(failed)?;
        Ok(entry.map(|e| (self.open(key, &e.value), e.revision)))
    }

    async fn compare_and_set(
        &self,
        key: &str,
        value: String,
        expected: Option<u64>,
    ) -> Result<Option<u64>, StoreFailed> {
        // An empty slot stays empty in the store too: nothing to seal.
        let stored = if value.is_empty() {
            Bytes::new()
        } else {
            Bytes::from(self.secrets.seal(key, &value).map_err(failed)?)
        };
        match self.meta.compare_and_set(key, stored, expected).await {
            Ok(revision) => Ok(Some(revision)),
            Err(StoreError::Conflict { .. }) => Ok(None),
            Err(e) => Err(failed(e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, String, u64)>, StoreFailed> {
        let entries = self.meta.list(prefix).await.map_err(failed)?;
        Ok(entries
            .into_iter()
            .map(|e| {
                let value = self.open(&e.key, &e.value);
                (e.key, value, e.revision)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use gust_store_embedded::EmbeddedStore;

    use super::*;

    #[tokio::test]
    async fn values_are_sealed_to_their_key_and_a_foreign_one_reads_empty() {
        let dir = tempfile::tempdir().unwrap();
        let meta: Arc<dyn MetaStore> =
            Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).unwrap());
        let sessions = MetaSessions {
            meta: meta.clone(),
            secrets: Arc::new(SecretBox::from_key(&[1; 32]).unwrap()),
        };
        let first = sessions
            .compare_and_set("uisession/a/0", "gust_secret_token".into(), None)
            .await
            .unwrap()
            .unwrap();
        let stored = meta.get("uisession/a/0").await.unwrap().unwrap();
        assert!(!String::from_utf8_lossy(&stored.value).contains("gust_secret_token"));
        assert_eq!(
            sessions.get("uisession/a/0").await.unwrap(),
            Some(("gust_secret_token".into(), first))
        );
        // Not over a revision that moved, nor as a create of what exists.
        assert_eq!(
            sessions
                .compare_and_set("uisession/a/0", "x".into(), None)
                .await
                .unwrap(),
            None
        );
        // A value moved to another key, or sealed with another key, does
        // not open.
        meta.put("uisession/b/0", stored.value.clone())
            .await
            .unwrap();
        assert_eq!(sessions.get("uisession/b/0").await.unwrap().unwrap().0, "");
        let other = MetaSessions {
            meta: meta.clone(),
            secrets: Arc::new(SecretBox::from_key(&[2; 32]).unwrap()),
        };
        let listed = other.list("uisession/").await.unwrap();
        assert!(listed.iter().all(|(_, v, _)| v.is_empty()), "{listed:?}");
        // An emptied slot is stored empty.
        sessions
            .compare_and_set("uisession/a/0", String::new(), Some(first))
            .await
            .unwrap()
            .unwrap();
        assert!(
            meta.get("uisession/a/0")
                .await
                .unwrap()
                .unwrap()
                .value
                .is_empty()
        );
    }
}
