//! Components ([`BlobStore`]) in a JetStream Object Store, `<ns>_BLOBS`,
//! one object per digest. Compiled artifacts are never stored here: each
//! node compiles or loads its own (a shared artifact would let one node
//! hand native code to all).

use async_nats::jetstream::{self, object_store};
use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncReadExt as _;

use gust_store::{BlobStore, StoreError, digest_of};

use crate::{NatsOptions, NatsStore, backend};

pub(crate) fn bucket_name(options: &NatsOptions) -> String {
    format!("{}_BLOBS", options.namespace)
}

pub(crate) async fn open_bucket(
    js: &jetstream::Context,
    options: &NatsOptions,
) -> Result<object_store::ObjectStore, StoreError> {
    // Nodes started together on a new cluster all create and configure
    // the bucket at once, and the meta leader then answers some of them
    // after a request's timeout: opening is idempotent, so try again (as
    // every stream's opening does).
    let mut last = None;
    for _ in 0..crate::OPEN_ATTEMPTS {
        match try_open_bucket(js, options).await {
            Ok(bucket) => return Ok(bucket),
            Err(e) => {
                tracing::warn!(bucket = bucket_name(options), error = %e, "opening the object store failed; trying again");
                last = Some(e);
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
    Err(last.unwrap_or(StoreError::Closed))
}

async fn try_open_bucket(
    js: &jetstream::Context,
    options: &NatsOptions,
) -> Result<object_store::ObjectStore, StoreError> {
    let bucket = bucket_name(options);
    if js.get_object_store(&bucket).await.is_err() {
        // Another node may create it at the same moment; either wins.
        if let Err(e) = js
            .create_object_store(object_store::Config {
                bucket: bucket.clone(),
                storage: jetstream::stream::StorageType::File,
                num_replicas: options.replicas,
                ..Default::default()
            })
            .await
            && js.get_object_store(&bucket).await.is_err()
        {
            return Err(StoreError::Backend(format!(
                "cannot create the object store {bucket}: {e}"
            )));
        }
    }
    // Reads through the leader (see the crate's docs), like every stream.
    let stream_name = format!("OBJ_{bucket}");
    let mut stream = js.get_stream(&stream_name).await.map_err(backend)?;
    let mut config = stream.info().await.map_err(backend)?.config.clone();
    if config.allow_direct {
        config.allow_direct = false;
        js.update_stream(config).await.map_err(backend)?;
    }
    js.get_object_store(&bucket).await.map_err(backend)
}

#[async_trait]
impl BlobStore for NatsStore {
    async fn put(&self, bytes: Bytes) -> Result<String, StoreError> {
        let digest = digest_of(&bytes);
        match self.blobs.info(&digest).await {
            Ok(info) if !info.deleted => return Ok(digest),
            Ok(_) => {}
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => {}
            Err(e) => return Err(backend(e)),
        }
        let mut reader: &[u8] = &bytes;
        self.blobs
            .put(digest.as_str(), &mut reader)
            .await
            .map_err(crate::meta::unacknowledged)?;
        Ok(digest)
    }

    async fn get(&self, digest: &str) -> Result<Option<Bytes>, StoreError> {
        let mut object = match self.blobs.get(digest).await {
            Ok(object) => object,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(backend(e)),
        };
        let mut out = Vec::with_capacity(object.info().size);
        object.read_to_end(&mut out).await.map_err(backend)?;
        Ok(Some(Bytes::from(out)))
    }

    async fn digests(&self) -> Result<Vec<String>, StoreError> {
        use futures_util::StreamExt as _;
        let mut list = self.blobs.list().await.map_err(backend)?;
        let mut out = Vec::new();
        while let Some(info) = list.next().await {
            let info = info.map_err(backend)?;
            if !info.deleted {
                out.push(info.name);
            }
        }
        Ok(out)
    }

    async fn delete(&self, digest: &str) -> Result<bool, StoreError> {
        match self.blobs.info(digest).await {
            Ok(info) if !info.deleted => {}
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(backend(e)),
        }
        match self.blobs.delete(digest).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == object_store::DeleteErrorKind::NotFound => Ok(false),
            Err(e) => Err(backend(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testkit;

    #[tokio::test(flavor = "multi_thread")]
    async fn conformance_blobs() {
        let Some(store) = testkit::store().await else {
            return;
        };
        gust_store::conformance::blobs(&store).await;
    }
}
