//! `Buckets`: tenants' key-value data, one namespace per (tenant, bucket),
//! over a [`DataStore`]. Checks keys and values against `gust_core::kv`'s
//! rules and maps them to storage keys, so no caller can reach outside its
//! tenant's buckets. With quotas on, every write that adds keys or bytes is
//! held to the tenant's `kv_keys` and `storage_bytes` (which also counts
//! its components), in the same transaction as the write.

use std::sync::Arc;

use bytes::Bytes;
use gust_core::TenantId;
use gust_core::kv::{self, BucketName, KvError};

use crate::{
    Accounts, Allowance, DataChange, DataStore, DataUsage, DataWrite, KeyInfo, Registry, StoreError,
};

/// Why a key-value call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BucketsError {
    #[error(transparent)]
    Invalid(#[from] KvError),
    #[error("the value of `{0}` is not a counter (a decimal number)")]
    NotACounter(String),
    /// A tenant quota (`kv_keys` or `storage_bytes`) would be exceeded; nothing was written.
    #[error(
        "tenant `{tenant}` is at its quota `{quota}` ({limit}{unit}); delete keys or old versions, or ask an admin to raise it"
    )]
    Quota {
        tenant: String,
        quota: &'static str,
        limit: u64,
        unit: &'static str,
    },
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
    quotas: Option<(Accounts, Registry)>,
}

impl Buckets {
    /// Buckets without quotas.
    pub fn new(data: Arc<dyn DataStore>) -> Self {
        Self { data, quotas: None }
    }

    /// Holds every tenant to its `kv_keys` and `storage_bytes` quotas.
    pub fn with_quotas(self, accounts: Accounts, registry: Registry) -> Self {
        Self {
            quotas: Some((accounts, registry)),
            ..self
        }
    }

    pub fn store(&self) -> &Arc<dyn DataStore> {
        &self.data
    }

    /// What the tenant keeps in its buckets.
    pub async fn usage(&self, tenant: &TenantId) -> Result<DataUsage, BucketsError> {
        Ok(self.data.usage(tenant.as_str()).await?)
    }

    /// Applies writes, held to the tenant's quotas when they are on.
    async fn apply(
        &self,
        tenant: &TenantId,
        writes: Vec<DataWrite>,
    ) -> Result<Vec<Option<DataChange>>, BucketsError> {
        let Some((accounts, registry)) = &self.quotas else {
            return Ok(self.data.apply(writes, None).await?);
        };
        let quotas = accounts.quotas(tenant).unwrap_or_default();
        let components = registry
            .component_bytes(tenant)
            .await
            .map_err(|e| BucketsError::Store(StoreError::Backend(e.to_string())))?;
        // The bytes left for data are what the components leave.
        let allowance = Allowance {
            owner: tenant.to_string(),
            keys: quotas.kv_keys,
            bytes: quotas.storage_bytes.saturating_sub(components),
        };
        match self.data.apply(writes, Some(&allowance)).await {
            Err(StoreError::OverAllowance { what, .. }) => {
                let (quota, limit, unit) = if what == Allowance::KEYS {
                    ("kv_keys", quotas.kv_keys, " keys")
                } else {
                    (
                        "storage_bytes",
                        quotas.storage_bytes,
                        " bytes, components included",
                    )
                };
                Err(BucketsError::Quota {
                    tenant: tenant.to_string(),
                    quota,
                    limit,
                    unit,
                })
            }
            other => Ok(other?),
        }
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
            .apply(tenant, writes)
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
        Ok(self
            .apply(tenant, writes)
            .await?
            .into_iter()
            .flatten()
            .count())
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
            .apply(tenant, vec![DataWrite::Increment { key, delta }])
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
