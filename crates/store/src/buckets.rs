//! `Buckets`: tenants' key-value data, one namespace per (tenant, bucket),
//! over a [`DataStore`]. Checks keys and values against `gust_core::kv`'s
//! rules and maps them to storage keys, so no caller can reach outside its
//! tenant's buckets.

use std::sync::Arc;

use bytes::Bytes;
use gust_core::TenantId;
use gust_core::kv::{self, BucketName, KvError};

use crate::{DataChange, DataStore, DataWrite, KeyInfo, StoreError};

/// Why a key-value call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BucketsError {
    #[error(transparent)]
    Invalid(#[from] KvError),
    #[error("the value of `{0}` is not a counter (a decimal number)")]
    NotACounter(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for BucketsError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotACounter(stored) => Self::NotACounter(
                kv::parse_storage_key(&stored)
                    .map_or(stored.clone(), |(_, _, key)| key.to_string()),
            ),
            other => Self::Store(other),
        }
    }
}

/// A value and the revision of its last write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub value: Bytes,
    pub revision: u64,
}

/// Tenants' buckets. Cheap to clone.
#[derive(Clone)]
pub struct Buckets {
    data: Arc<dyn DataStore>,
}

impl Buckets {
    pub fn new(data: Arc<dyn DataStore>) -> Self {
        Self { data }
    }

    pub fn store(&self) -> &Arc<dyn DataStore> {
        &self.data
    }

    pub async fn get(
        &self,
        tenant: &TenantId,
        bucket: &BucketName,
        key: &str,
    ) -> Result<Option<Value>, BucketsError> {
        kv::check_key(key)?;
        let entry = self.data.get(&kv::storage_key(tenant, bucket, key)).await?;
        Ok(entry.map(|e| Value {
            value: e.value,
            revision: e.revision,
        }))
    }

    pub async fn get_many(
        &self,
        tenant: &TenantId,
        bucket: &BucketName,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Bytes)>>, BucketsError> {
        check_batch(keys.len())?;
        for key in &keys {
            kv::check_key(key)?;
        }
        let stored = keys
            .iter()
            .map(|k| kv::storage_key(tenant, bucket, k))
            .collect();
        let found = self.data.get_many(stored).await?;
        Ok(keys
            .into_iter()
            .zip(found)
            .map(|(key, entry)| entry.map(|e| (key, e.value)))
            .collect())
    }

    /// Writes one value; returns its revision.
    pub async fn put(
        &self,
        tenant: &TenantId,
        bucket: &BucketName,
        key: &str,
        value: Bytes,
    ) -> Result<u64, BucketsError> {
        let changes = self
            .put_many(tenant, bucket, vec![(key.to_string(), value)])
            .await?;
        Ok(changes.first().map_or(0, |c| c.revision))
    }

    /// Writes several values in one durable transaction.
    pub async fn put_many(
        &self,
        tenant: &TenantId,
        bucket: &BucketName,
        entries: Vec<(String, Bytes)>,
    ) -> Result<Vec<DataChange>, BucketsError> {
        check_batch(entries.len())?;
        let mut writes = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            kv::check_key(&key)?;
            kv::check_value(&value)?;
            writes.push(DataWrite::Put {
                key: kv::storage_key(tenant, bucket, &key),
                value,
            });
        }
        Ok(self
            .data
            .apply(writes)
            .await?
            .into_iter()
            .flatten()
            .collect())
    }

    /// Deletes keys; returns how many existed.
    pub async fn delete_many(
        &self,
        tenant: &TenantId,
        bucket: &BucketName,
        keys: Vec<String>,
    ) -> Result<usize, BucketsError> {
        check_batch(keys.len())?;
        let mut writes = Vec::with_capacity(keys.len());
        for key in keys {
            kv::check_key(&key)?;
            writes.push(DataWrite::Delete {
                key: kv::storage_key(tenant, bucket, &key),
            });
        }
        Ok(self.data.apply(writes).await?.into_iter().flatten().count())
    }

    /// Adds `delta` to a counter (absent counts as 0); returns the new value.
    pub async fn increment(
        &self,
        tenant: &TenantId,
        bucket: &BucketName,
        key: &str,
        delta: u64,
    ) -> Result<u64, BucketsError> {
        kv::check_key(key)?;
        let key = kv::storage_key(tenant, bucket, key);
        let changes = self
            .data
            .apply(vec![DataWrite::Increment { key, delta }])
            .await?;
        let value = changes.into_iter().flatten().next().and_then(|c| c.value);
        value
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
            .ok_or_else(|| BucketsError::Store(StoreError::Corrupt("counter".into())))
    }

    /// Up to `limit` keys of a bucket starting with `prefix`, after `start_after`, in key order.
    pub async fn keys(
        &self,
        tenant: &TenantId,
        bucket: &BucketName,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyInfo>, BucketsError> {
        let base = kv::bucket_prefix(tenant, bucket);
        let found = self
            .data
            .keys(
                &format!("{base}{prefix}"),
                start_after.map(|k| format!("{base}{k}")),
                limit,
            )
            .await?;
        Ok(found
            .into_iter()
            .map(|k| KeyInfo {
                key: k.key[base.len()..].to_string(),
                ..k
            })
            .collect())
    }
}

fn check_batch(n: usize) -> Result<(), KvError> {
    if n > kv::MAX_BATCH_KEYS {
        return Err(KvError::BatchTooLarge(n));
    }
    Ok(())
}
