//! Blobs ([`BlobStore`]): content-addressed bytes (function artifacts),
//! keyed by their digest.

use async_trait::async_trait;
use bytes::Bytes;
use redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition, WriteTransaction};

use gust_store::{BlobStore, StoreError, digest_of};

use crate::{EmbeddedStore, backend};

/// digest → bytes.
const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs");

pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(BLOBS).map_err(backend)?;
    Ok(())
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

    async fn digests(&self) -> Result<Vec<String>, StoreError> {
        self.read(|db| {
            let txn = db.begin_read().map_err(backend)?;
            let blobs = txn.open_table(BLOBS).map_err(backend)?;
            let mut out = Vec::new();
            for entry in blobs.iter().map_err(backend)? {
                out.push(entry.map_err(backend)?.0.value().to_string());
            }
            Ok(out)
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

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn conformance() {
        let (_dir, store) = crate::open_temp();
        gust_store::conformance::blobs(&store).await;
    }
}
