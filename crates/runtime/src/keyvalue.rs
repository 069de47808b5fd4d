//! `wasi:keyvalue` (store, atomics, batch at 0.2.0-draft) for guests, over
//! whatever [`KeyValue`] the caller hands to [`crate::Runtime::invoke`]. The
//! runtime only translates calls and counts them; which tenant's data is
//! reached, and the rules on keys and values, belong to that implementation.

use std::sync::Arc;

use async_trait::async_trait;
use wasmtime::component::{HasSelf, Linker, Resource};

use crate::host::Host;

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "gust:host/keyvalue",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::BucketHandle,
        },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

/// Why a key-value call failed, as the guest will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvFailure {
    /// The bucket name is not valid.
    NoSuchStore,
    /// The caller may not use this bucket.
    AccessDenied,
    /// Anything else; the text is shown to the guest.
    Other(String),
}

/// The key-value store one invocation may use, already scoped to its
/// tenant. Buckets are named as the guest named them.
#[async_trait]
pub trait KeyValue: Send + Sync {
    /// Checks that the guest may open `bucket`; returns the name to use.
    fn open(&self, bucket: &str) -> Result<String, KvFailure>;
    async fn get_many(
        &self,
        bucket: &str,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, KvFailure>;
    async fn set_many(
        &self,
        bucket: &str,
        entries: Vec<(String, Vec<u8>)>,
    ) -> Result<(), KvFailure>;
    async fn delete_many(&self, bucket: &str, keys: Vec<String>) -> Result<(), KvFailure>;
    async fn increment(&self, bucket: &str, key: &str, delta: u64) -> Result<u64, KvFailure>;
    /// Up to `limit` keys after `start_after`, in key order.
    async fn keys(
        &self,
        bucket: &str,
        start_after: Option<String>,
        limit: usize,
    ) -> Result<Vec<String>, KvFailure>;
}

/// Keys per `list-keys` page.
const PAGE: usize = 1000;

/// A bucket a guest opened. `list-keys` cursors are indexes into `pages`
/// (the last key of each page handed out), so paging costs one range read.
pub struct BucketHandle {
    name: String,
    pages: Vec<String>,
}

/// What one invocation's store holds for `wasi:keyvalue`.
pub(crate) struct KvState {
    pub backend: Arc<dyn KeyValue>,
    /// Keys read or written, for metering.
    pub operations: u64,
}

pub(crate) fn add_to_linker(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    store::add_to_linker::<Host, HasSelf<Host>>(linker, |h| h)?;
    atomics::add_to_linker::<Host, HasSelf<Host>>(linker, |h| h)?;
    batch::add_to_linker::<Host, HasSelf<Host>>(linker, |h| h)?;
    Ok(())
}

fn to_guest(failure: KvFailure) -> store::Error {
    match failure {
        KvFailure::NoSuchStore => store::Error::NoSuchStore,
        KvFailure::AccessDenied => store::Error::AccessDenied,
        KvFailure::Other(text) => store::Error::Other(text),
    }
}

type GuestResult<T> = wasmtime::Result<Result<T, store::Error>>;

impl Host {
    fn bucket_name(&self, bucket: &Resource<BucketHandle>) -> wasmtime::Result<String> {
        Ok(self.table.get(bucket)?.name.clone())
    }

    fn count(&mut self, n: usize) -> Arc<dyn KeyValue> {
        self.kv.operations += n as u64;
        self.kv.backend.clone()
    }
}

impl store::Host for Host {
    async fn open(&mut self, identifier: String) -> GuestResult<Resource<BucketHandle>> {
        match self.kv.backend.open(&identifier) {
            Ok(name) => Ok(Ok(self.table.push(BucketHandle {
                name,
                pages: Vec::new(),
            })?)),
            Err(failure) => Ok(Err(to_guest(failure))),
        }
    }
}

impl store::HostBucket for Host {
    async fn get(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
    ) -> GuestResult<Option<Vec<u8>>> {
        let name = self.bucket_name(&bucket)?;
        let found = self.count(1).get_many(&name, vec![key]).await;
        Ok(found
            .map(|mut values| values.pop().flatten().map(|(_, v)| v))
            .map_err(to_guest))
    }

    async fn set(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
        value: Vec<u8>,
    ) -> GuestResult<()> {
        let name = self.bucket_name(&bucket)?;
        let done = self.count(1).set_many(&name, vec![(key, value)]).await;
        Ok(done.map_err(to_guest))
    }

    async fn delete(&mut self, bucket: Resource<BucketHandle>, key: String) -> GuestResult<()> {
        let name = self.bucket_name(&bucket)?;
        let done = self.count(1).delete_many(&name, vec![key]).await;
        Ok(done.map_err(to_guest))
    }

    async fn exists(&mut self, bucket: Resource<BucketHandle>, key: String) -> GuestResult<bool> {
        let name = self.bucket_name(&bucket)?;
        let found = self.count(1).get_many(&name, vec![key]).await;
        Ok(found
            .map(|values| values.iter().any(Option::is_some))
            .map_err(to_guest))
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<BucketHandle>,
        cursor: Option<u64>,
    ) -> GuestResult<store::KeyResponse> {
        let handle = self.table.get(&bucket)?;
        let name = handle.name.clone();
        let start_after = match cursor {
            None | Some(0) => None,
            Some(n) => match usize::try_from(n - 1)
                .ok()
                .and_then(|i| handle.pages.get(i))
            {
                Some(last) => Some(last.clone()),
                None => {
                    return Ok(Err(store::Error::Other(format!(
                        "unknown cursor {n}: pass back a cursor this bucket handle returned"
                    ))));
                }
            },
        };
        let keys = match self.count(1).keys(&name, start_after, PAGE).await {
            Ok(keys) => keys,
            Err(failure) => return Ok(Err(to_guest(failure))),
        };
        let cursor = match keys.last() {
            Some(last) if keys.len() == PAGE => {
                let handle = self.table.get_mut(&bucket)?;
                handle.pages.push(last.clone());
                Some(handle.pages.len() as u64)
            }
            _ => None,
        };
        Ok(Ok(store::KeyResponse { keys, cursor }))
    }

    async fn drop(&mut self, bucket: Resource<BucketHandle>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for Host {
    async fn increment(
        &mut self,
        bucket: Resource<BucketHandle>,
        key: String,
        delta: u64,
    ) -> GuestResult<u64> {
        let name = self.bucket_name(&bucket)?;
        let sum = self.count(1).increment(&name, &key, delta).await;
        Ok(sum.map_err(to_guest))
    }
}

impl batch::Host for Host {
    async fn get_many(
        &mut self,
        bucket: Resource<BucketHandle>,
        keys: Vec<String>,
    ) -> GuestResult<Vec<Option<(String, Vec<u8>)>>> {
        let name = self.bucket_name(&bucket)?;
        let found = self.count(keys.len()).get_many(&name, keys).await;
        Ok(found.map_err(to_guest))
    }

    async fn set_many(
        &mut self,
        bucket: Resource<BucketHandle>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> GuestResult<()> {
        let name = self.bucket_name(&bucket)?;
        let done = self
            .count(key_values.len())
            .set_many(&name, key_values)
            .await;
        Ok(done.map_err(to_guest))
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<BucketHandle>,
        keys: Vec<String>,
    ) -> GuestResult<()> {
        let name = self.bucket_name(&bucket)?;
        let done = self.count(keys.len()).delete_many(&name, keys).await;
        Ok(done.map_err(to_guest))
    }
}
