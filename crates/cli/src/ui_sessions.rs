//! The dashboard's sessions in the metadata store, sealed: a browser stays
//! signed in across a restart and on every node of a cluster.
//!
//! Every value is sealed with the key that seals secrets (the cluster's
//! shared key in a cluster), bound to its store key, so neither a token
//! nor a session's anti-forgery value is ever stored in the clear and a
//! value cannot be moved to another key. A value that does not open
//! (sealed under another key) reads as absent, or as empty in a listing,
//! which the sessions treat as expired and sweep away.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use gust_store::{MetaStore, SecretBox};
use gust_ui::{SessionStore, StoreFailed};

pub struct MetaSessions {
    pub meta: Arc<dyn MetaStore>,
    pub secrets: Arc<SecretBox>,
}

fn failed(e: impl std::fmt::Display) -> StoreFailed {
    StoreFailed(e.to_string())
}

impl MetaSessions {
    fn open(&self, key: &str, value: &[u8]) -> Option<String> {
        let sealed = std::str::from_utf8(value).ok()?;
        self.secrets.open(key, sealed).ok()
    }
}

#[async_trait]
impl SessionStore for MetaSessions {
    async fn get(&self, key: &str) -> Result<Option<String>, StoreFailed> {
        let entry = self.meta.get(key).await.map_err(failed)?;
        Ok(entry.and_then(|e| self.open(key, &e.value)))
    }

    async fn put(&self, key: &str, value: String) -> Result<(), StoreFailed> {
        let sealed = self.secrets.seal(key, &value).map_err(failed)?;
        self.meta
            .put(key, Bytes::from(sealed))
            .await
            .map_err(failed)?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreFailed> {
        self.meta.delete(key).await.map_err(failed)?;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreFailed> {
        let entries = self.meta.list(prefix).await.map_err(failed)?;
        Ok(entries
            .into_iter()
            .map(|e| {
                let value = self.open(&e.key, &e.value).unwrap_or_default();
                (e.key, value)
            })
            .collect())
    }
}
