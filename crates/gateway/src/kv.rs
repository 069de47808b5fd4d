//! The key-value store as one invocation sees it: its tenant's buckets.

use async_trait::async_trait;
use bytes::Bytes;
use gust_core::TenantId;
use gust_core::kv::BucketName;
use gust_runtime::{KeyValue, KvFailure};
use gust_store::{Buckets, BucketsError};

/// A tenant's buckets, handed to the runtime for one invocation.
pub(crate) struct TenantKv {
    pub buckets: Buckets,
    pub tenant: TenantId,
    /// The attempt's span (off when traces are off): each operation is a
    /// child of it.
    pub span: crate::trace::Traced,
}

impl TenantKv {
    /// A span for one operation on `bucket` over `keys` keys.
    fn op(&self, name: &'static str, bucket: &str, keys: usize) -> crate::trace::Traced {
        self.span
            .child(name, opentelemetry::trace::SpanKind::Internal, || {
                vec![
                    opentelemetry::KeyValue::new("gust.bucket", bucket.to_owned()),
                    opentelemetry::KeyValue::new("gust.keys", keys as i64),
                ]
            })
    }
}

fn failure(error: BucketsError) -> KvFailure {
    match error {
        BucketsError::Store(full @ gust_store::StoreError::DiskFull { .. }) => {
            KvFailure::Other(full.to_string())
        }
        // Storage failures are not the guest's business beyond "it failed".
        BucketsError::Store(e) => {
            tracing::warn!(error = %e, "key-value storage failed");
            KvFailure::Other("the key-value store failed; retry".into())
        }
        other => KvFailure::Other(other.to_string()),
    }
}

fn bucket(name: &str) -> Result<BucketName, KvFailure> {
    BucketName::new(name).map_err(|_| KvFailure::NoSuchStore)
}

#[async_trait]
impl KeyValue for TenantKv {
    fn open(&self, name: &str) -> Result<String, KvFailure> {
        Ok(bucket(name)?.to_string())
    }

    async fn get_many(
        &self,
        name: &str,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, KvFailure> {
        let _span = self.op("kv get", name, keys.len());
        let found = self
            .buckets
            .get_many(&self.tenant, &bucket(name)?, keys)
            .await
            .map_err(failure)?;
        Ok(found
            .into_iter()
            .map(|entry| entry.map(|(k, v)| (k, v.to_vec())))
            .collect())
    }

    async fn set_many(&self, name: &str, entries: Vec<(String, Vec<u8>)>) -> Result<(), KvFailure> {
        let entries = entries
            .into_iter()
            .map(|(k, v)| (k, Bytes::from(v)))
            .collect::<Vec<_>>();
        let _span = self.op("kv set", name, entries.len());
        self.buckets
            .put_many(&self.tenant, &bucket(name)?, entries)
            .await
            .map_err(failure)?;
        Ok(())
    }

    async fn delete_many(&self, name: &str, keys: Vec<String>) -> Result<(), KvFailure> {
        let _span = self.op("kv delete", name, keys.len());
        self.buckets
            .delete_many(&self.tenant, &bucket(name)?, keys)
            .await
            .map_err(failure)?;
        Ok(())
    }

    async fn increment(&self, name: &str, key: &str, delta: u64) -> Result<u64, KvFailure> {
        let _span = self.op("kv increment", name, 1);
        self.buckets
            .increment(&self.tenant, &bucket(name)?, key, delta)
            .await
            .map_err(failure)
    }

    async fn keys(
        &self,
        name: &str,
        start_after: Option<String>,
        limit: usize,
    ) -> Result<Vec<String>, KvFailure> {
        let _span = self.op("kv keys", name, limit);
        let keys = self
            .buckets
            .keys(
                &self.tenant,
                &bucket(name)?,
                "",
                start_after.as_deref(),
                limit,
            )
            .await
            .map_err(failure)?;
        Ok(keys.into_iter().map(|k| k.key).collect())
    }
}
