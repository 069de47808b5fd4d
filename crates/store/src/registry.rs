//! The registry: functions and their versions, as typed records over a
//! [`KvStore`]. Keys are `fn/<tenant>/<name>` and
//! `ver/<tenant>/<name>/<version, zero-padded>`, so a prefix lists one
//! tenant's functions or one function's versions in order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use gust_core::delivery::DeliveryPolicy;
use gust_core::{ActiveVersion, FunctionName, FunctionRecord, Limits, TenantId, VersionRecord};
use serde::{Serialize, de::DeserializeOwned};

use crate::{Entry, KvStore, StoreError, Watch};

/// Errors from registry operations that callers branch on.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("function `{0}` does not exist")]
    NoSuchFunction(FunctionName),
    #[error("function `{0}` already exists")]
    AlreadyExists(FunctionName),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Prefix of every function record, for watchers of all tenants.
pub const FUNCTIONS_PREFIX: &str = "fn/";
/// How many times a deploy retries when another write to the same function races it.
const MAX_CAS_RETRIES: usize = 16;

fn function_key(tenant: &TenantId, name: &FunctionName) -> String {
    format!("fn/{tenant}/{name}")
}

fn versions_prefix(tenant: &TenantId, name: &FunctionName) -> String {
    format!("ver/{tenant}/{name}/")
}

fn version_key(tenant: &TenantId, name: &FunctionName, version: u64) -> String {
    format!("ver/{tenant}/{name}/{version:020}")
}

fn encode<T: Serialize>(value: &T) -> Result<Bytes, StoreError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode<T: DeserializeOwned>(entry: &Entry) -> Result<T, StoreError> {
    serde_json::from_slice(&entry.value)
        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", entry.key)))
}

/// What a deploy records about the new version.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub digest: String,
    pub size_bytes: u64,
    pub limits: Limits,
    pub delivery: DeliveryPolicy,
    /// Make the function public (`Some(true)`) or private; `None` keeps it as it is.
    pub public: Option<bool>,
}

/// Typed access to functions and versions. Clones share one cache of
/// each tenant's component bytes.
#[derive(Clone)]
pub struct Registry {
    kv: Arc<dyn KvStore>,
    components: Arc<Mutex<ComponentBytes>>,
}

/// Each tenant's total component bytes, counted from its version records
/// on first use and forgotten whenever this process changes them (the
/// generation keeps a count that raced a change from being kept).
#[derive(Default)]
struct ComponentBytes {
    generation: u64,
    by_tenant: HashMap<TenantId, u64>,
}

impl Registry {
    pub fn new(kv: Arc<dyn KvStore>) -> Self {
        Self {
            kv,
            components: Arc::default(),
        }
    }

    fn components(&self) -> std::sync::MutexGuard<'_, ComponentBytes> {
        self.components.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forget_component_bytes(&self, tenant: &TenantId) {
        let mut cache = self.components();
        cache.generation += 1;
        cache.by_tenant.remove(tenant);
    }

    /// Bytes of every stored version of every function of the tenant.
    pub async fn component_bytes(&self, tenant: &TenantId) -> Result<u64, RegistryError> {
        let generation = {
            let cache = self.components();
            if let Some(bytes) = cache.by_tenant.get(tenant) {
                return Ok(*bytes);
            }
            cache.generation
        };
        let mut total = 0u64;
        for entry in self.kv.list(&format!("ver/{tenant}/")).await? {
            total = total.saturating_add(decode::<VersionRecord>(&entry)?.size_bytes);
        }
        let mut cache = self.components();
        if cache.generation == generation {
            cache.by_tenant.insert(tenant.clone(), total);
        }
        Ok(total)
    }

    /// The log stream that holds a function's invocation logs.
    pub fn log_stream(tenant: &TenantId, name: &FunctionName) -> String {
        format!("logs/{tenant}/{name}")
    }

    pub async fn function(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
    ) -> Result<Option<FunctionRecord>, RegistryError> {
        let entry = self.kv.get(&function_key(tenant, name)).await?;
        Ok(entry.as_ref().map(decode).transpose()?)
    }

    pub async fn functions(&self, tenant: &TenantId) -> Result<Vec<FunctionRecord>, RegistryError> {
        let entries = self.kv.list(&format!("fn/{tenant}/")).await?;
        Ok(entries.iter().map(decode).collect::<Result<_, _>>()?)
    }

    /// Creates a function with no version yet.
    pub async fn create_function(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        now_ms: u64,
    ) -> Result<FunctionRecord, RegistryError> {
        let record = FunctionRecord {
            tenant: tenant.clone(),
            name: name.clone(),
            created_at_ms: now_ms,
            latest_version: 0,
            active: None,
            public: false,
        };
        match self
            .kv
            .compare_and_set(&function_key(tenant, name), encode(&record)?, None)
            .await
        {
            Ok(_) => Ok(record),
            Err(StoreError::Conflict { .. }) => Err(RegistryError::AlreadyExists(name.clone())),
            Err(e) => Err(e.into()),
        }
    }

    /// Records a new immutable version of `name` (creating the function if
    /// needed) and makes it the active one; returns it with the revision of
    /// the function record that activated it. Version numbers are taken with a
    /// compare-and-set on the function record, so concurrent deploys get
    /// distinct numbers.
    pub async fn deploy(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        new: NewVersion,
        now_ms: u64,
    ) -> Result<(VersionRecord, u64), RegistryError> {
        let key = function_key(tenant, name);
        let mut last_conflict = None;
        for _ in 0..MAX_CAS_RETRIES {
            let current = self.kv.get(&key).await?;
            let (mut record, expected) = match &current {
                Some(entry) => (decode::<FunctionRecord>(entry)?, Some(entry.revision)),
                None => (
                    FunctionRecord {
                        tenant: tenant.clone(),
                        name: name.clone(),
                        created_at_ms: now_ms,
                        latest_version: 0,
                        active: None,
                        public: false,
                    },
                    None,
                ),
            };
            let version = VersionRecord {
                tenant: tenant.clone(),
                name: name.clone(),
                version: record.latest_version + 1,
                digest: new.digest.clone(),
                size_bytes: new.size_bytes,
                limits: new.limits.clone(),
                delivery: new.delivery.clone(),
                created_at_ms: now_ms,
            };
            record.latest_version = version.version;
            if let Some(public) = new.public {
                record.public = public;
            }
            record.active = Some(ActiveVersion {
                version: version.version,
                digest: version.digest.clone(),
                limits: version.limits.clone(),
                delivery: version.delivery.clone(),
            });
            // The compare-and-set on the function record hands out the
            // version number; only its winner writes that version's record.
            match self
                .kv
                .compare_and_set(&key, encode(&record)?, expected)
                .await
            {
                Ok(revision) => {
                    self.kv
                        .put(
                            &version_key(tenant, name, version.version),
                            encode(&version)?,
                        )
                        .await?;
                    self.forget_component_bytes(tenant);
                    return Ok((version, revision));
                }
                Err(conflict @ StoreError::Conflict { .. }) => last_conflict = Some(conflict),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last_conflict
            .unwrap_or(StoreError::Backend("deploy retries exhausted".into()))
            .into())
    }

    pub async fn versions(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
    ) -> Result<Vec<VersionRecord>, RegistryError> {
        let entries = self.kv.list(&versions_prefix(tenant, name)).await?;
        if entries.is_empty() && self.function(tenant, name).await?.is_none() {
            return Err(RegistryError::NoSuchFunction(name.clone()));
        }
        Ok(entries.iter().map(decode).collect::<Result<_, _>>()?)
    }

    pub async fn version(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        version: u64,
    ) -> Result<Option<VersionRecord>, RegistryError> {
        if self.function(tenant, name).await?.is_none() {
            return Err(RegistryError::NoSuchFunction(name.clone()));
        }
        let entry = self.kv.get(&version_key(tenant, name, version)).await?;
        Ok(entry.as_ref().map(decode).transpose()?)
    }

    /// Removes a function and all its versions. Returns the revision of the
    /// removal (`None`: there was no such function).
    pub async fn delete_function(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
    ) -> Result<Option<u64>, RegistryError> {
        let existed = self.kv.delete(&function_key(tenant, name)).await?;
        for entry in self.kv.list(&versions_prefix(tenant, name)).await? {
            self.kv.delete(&entry.key).await?;
        }
        self.forget_component_bytes(tenant);
        Ok(existed)
    }

    /// Watches every tenant's function records.
    pub async fn watch_functions(&self) -> Result<Watch, RegistryError> {
        Ok(self.kv.watch(FUNCTIONS_PREFIX).await?)
    }

    /// Decodes a function record seen by [`Registry::watch_functions`].
    pub fn decode_function(entry: &Entry) -> Result<FunctionRecord, StoreError> {
        decode(entry)
    }

    /// The tenant and name a function key (`fn/<tenant>/<name>`) stands for.
    pub fn parse_function_key(key: &str) -> Option<(TenantId, FunctionName)> {
        let rest = key.strip_prefix(FUNCTIONS_PREFIX)?;
        let (tenant, name) = rest.split_once('/')?;
        Some((TenantId::new(tenant).ok()?, FunctionName::new(name).ok()?))
    }
}
