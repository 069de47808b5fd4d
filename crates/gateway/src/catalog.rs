//! The routing table: which version of which function serves a name, kept
//! in step with the registry by a watch. It is derived state: rebuilt from
//! the registry at start and after any missed change.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use gust_scheduler::Activity;

use gust_core::delivery::DeliveryPolicy;
use gust_core::{ActiveVersion, FunctionName, Limits, TenantId};
use gust_runtime::{Prepared, Runtime};
use gust_store::{BlobStore, KvEvent, Registry};

use crate::admission::{FunctionGate, NodeSlots};

/// A function's serving version, and its component once loaded.
pub(crate) struct Route {
    pub tenant: TenantId,
    pub name: FunctionName,
    pub version: u64,
    pub digest: String,
    pub limits: Arc<Limits>,
    pub delivery: DeliveryPolicy,
    /// Callable without a token.
    pub public: bool,
    /// Its instances running and waiting, when it has `max_concurrency` or
    /// `reserved_concurrency` (shared by the routes of successive versions
    /// while the limit stays).
    pub gate: Option<Arc<FunctionGate>>,
    /// What the autoscaler observes: shared by successive versions.
    pub activity: Arc<Activity>,
    /// The component, while the function is warm (`None`: scaled to zero).
    warm: RwLock<Option<Arc<Prepared>>>,
    /// Held while loading, so that concurrent first requests share one load.
    loading: tokio::sync::Mutex<()>,
}

/// Why a function's component could not be made ready.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    #[error("the component {0} is missing from the blob store")]
    MissingBlob(String),
    #[error("{0}")]
    Failed(String),
}

impl Route {
    fn new(tenant: TenantId, name: FunctionName, active: ActiveVersion, public: bool) -> Self {
        Self {
            tenant,
            name,
            version: active.version,
            digest: active.digest,
            gate: active.limits.concurrency_cap().map(|n| {
                let setting = if active.limits.reserved_concurrency == Some(n) {
                    "reserved_concurrency"
                } else {
                    "max_concurrency"
                };
                Arc::new(FunctionGate::new(n, setting))
            }),
            limits: Arc::new(active.limits),
            delivery: active.delivery,
            public,
            activity: Arc::new(Activity::new(crate::scaling::clock_us())),
            warm: RwLock::new(None),
            loading: tokio::sync::Mutex::new(()),
        }
    }

    /// `<tenant>/<function>`.
    pub fn key(&self) -> String {
        route_key(self.tenant.as_str(), self.name.as_str())
    }

    /// Takes over what belongs to the function rather than the version:
    /// its activity, and `old`'s gate when the limit is the same, so that
    /// what runs under the old version still counts.
    fn carry_over(&mut self, old: Option<&Arc<Route>>) {
        if let Some(old) = old {
            self.activity = old.activity.clone();
        }
        if let Some(old_gate) = old.and_then(|o| o.gate.as_ref())
            && self.gate.as_ref().is_some_and(|g| g.same_limit(old_gate))
        {
            self.gate = Some(old_gate.clone());
        }
    }

    fn warm_component(&self) -> Option<Arc<Prepared>> {
        self.warm.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the component is in memory.
    pub fn is_warm(&self) -> bool {
        self.warm
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Scales the function to zero: its component leaves memory (running
    /// invocations keep their copy until they end). False if it was not warm.
    pub fn unload(&self) -> bool {
        self.warm
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .is_some()
    }

    /// The prepared component, and whether this call had to load it (a
    /// cold start): loaded from the runtime's artifact cache (compiling from
    /// the stored blob only if no artifact exists). Concurrent first
    /// requests share one load.
    pub async fn prepared(
        &self,
        runtime: &Runtime,
        blobs: &dyn BlobStore,
    ) -> Result<(Arc<Prepared>, bool), LoadError> {
        if let Some(prepared) = self.warm_component() {
            return Ok((prepared, false));
        }
        let _turn = self.loading.lock().await;
        if let Some(prepared) = self.warm_component() {
            return Ok((prepared, false));
        }
        let prepared = match runtime.load(&self.digest).await {
            Ok(Some(prepared)) => prepared,
            outcome => {
                if let Err(e) = outcome {
                    // A damaged or unreadable artifact is rebuilt from the component.
                    tracing::warn!(function = %self.name, error = %e, "recompiling");
                }
                let bytes = blobs
                    .get(&self.digest)
                    .await
                    .map_err(|e| LoadError::Failed(e.to_string()))?
                    .ok_or_else(|| LoadError::MissingBlob(self.digest.clone()))?;
                runtime
                    .prepare(&self.digest, bytes)
                    .await
                    .map_err(|e| LoadError::Failed(e.to_string()))?
            }
        };
        *self.warm.write().unwrap_or_else(|p| p.into_inner()) = Some(prepared.clone());
        Ok((prepared, true))
    }
}

/// `<tenant>/<function>` → serving route.
pub(crate) struct Catalog {
    routes: RwLock<HashMap<String, Arc<Route>>>,
    /// The registry revision the routes reflect, for callers that must not
    /// answer before the data plane serves what they wrote.
    applied: tokio::sync::watch::Sender<u64>,
}

impl Default for Catalog {
    fn default() -> Self {
        Self {
            routes: RwLock::default(),
            applied: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Catalog {
    pub fn applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }

    fn mark_applied(&self, revision: u64) {
        self.applied.send_if_modified(|current| {
            let newer = revision > *current;
            if newer {
                *current = revision;
            }
            newer
        });
    }

    pub fn get(&self, tenant: &str, name: &str) -> Option<Arc<Route>> {
        let key = route_key(tenant, name);
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned()
    }

    /// Applies one registry change; returns the route it displaced, if any.
    fn apply(&self, event: &KvEvent) -> Option<Arc<Route>> {
        let (tenant, name) = Registry::parse_function_key(event.key())?;
        let key = route_key(tenant.as_str(), name.as_str());
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        let record = match event {
            KvEvent::Put(entry) => match Registry::decode_function(entry) {
                Ok(record) => Some(record),
                Err(e) => {
                    tracing::error!(key = entry.key, error = %e, "skipping undecodable function record");
                    return None;
                }
            },
            KvEvent::Delete { .. } => None,
        };
        match record.and_then(|r| r.active.map(|a| (a, r.public))) {
            Some((active, public)) => {
                let unchanged = routes.get(&key).is_some_and(|r| {
                    r.version == active.version && r.digest == active.digest && r.public == public
                });
                if unchanged {
                    return None;
                }
                let mut route = Route::new(tenant, name, active, public);
                route.carry_over(routes.get(&key));
                routes.insert(key, Arc::new(route))
            }
            None => routes.remove(&key),
        }
    }

    /// Every route, as of now.
    pub fn all(&self) -> Vec<Arc<Route>> {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Σ `reserved_concurrency` of the routes.
    pub fn reserved_total(&self) -> u32 {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter_map(|r| r.limits.reserved_concurrency)
            .sum()
    }

    /// Who reserves what (`<tenant>/<function>`, instances), but `except`.
    pub fn reservations_except(&self, except: &str) -> Vec<(String, u32)> {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        let mut holders: Vec<(String, u32)> = routes
            .iter()
            .filter(|(key, _)| key.as_str() != except)
            .filter_map(|(key, r)| r.limits.reserved_concurrency.map(|n| (key.clone(), n)))
            .collect();
        holders.sort();
        holders
    }

    fn serves_digest(&self, digest: &str) -> bool {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|r| r.digest == digest)
    }

    /// Replaces every route at once with those of `entries` (a resync):
    /// requests see the old table or the new one, never an empty one.
    /// Returns the digests that no route serves any more.
    fn replace_all(&self, entries: &[gust_store::Entry]) -> Vec<String> {
        let fresh = Catalog::default();
        for entry in entries {
            let _ = fresh.apply(&KvEvent::Put(entry.clone()));
        }
        let mut fresh = fresh.routes.into_inner().unwrap_or_else(|p| p.into_inner());
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        // Keep loaded routes that did not change, so they stay warm.
        for (name, route) in fresh.iter_mut() {
            let old = routes.get(name);
            if let Some(old) = old
                && old.version == route.version
                && old.digest == route.digest
                && old.public == route.public
            {
                *route = old.clone();
            } else if let Some(new) = Arc::get_mut(route) {
                new.carry_over(old);
            }
        }
        let gone: Vec<String> = routes
            .values()
            .filter(|old| !fresh.values().any(|r| r.digest == old.digest))
            .map(|old| old.digest.clone())
            .collect();
        *routes = fresh;
        gone
    }
}

fn route_key(tenant: &str, name: &str) -> String {
    format!("{tenant}/{name}")
}

/// Keeps `catalog` in step with the registry until the process ends. Each
/// new route is loaded in the background right away so that its first
/// request does not pay for loading.
pub(crate) async fn follow_registry(
    catalog: Arc<Catalog>,
    registry: Registry,
    runtime: Runtime,
    blobs: Arc<dyn BlobStore>,
    node: Arc<NodeSlots>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    loop {
        let mut watch = match registry.watch_functions().await {
            Ok(watch) => watch,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch the registry; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for digest in catalog.replace_all(&watch.initial) {
            runtime.unload(&digest);
        }
        node.set_reserved(catalog.reserved_total());
        catalog.mark_applied(watch.revision);
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        loop {
            match watch.changes.next().await {
                Ok(event) => {
                    // A component no route serves any more leaves memory (its
                    // artifact stays on disk); running invocations keep their copy.
                    if let Some(old) = catalog.apply(&event)
                        && !catalog.serves_digest(&old.digest)
                    {
                        runtime.unload(&old.digest);
                    }
                    node.set_reserved(catalog.reserved_total());
                    catalog.mark_applied(event.revision());
                    if let Some(route) = Registry::parse_function_key(event.key())
                        .and_then(|(tenant, name)| catalog.get(tenant.as_str(), name.as_str()))
                    {
                        let (runtime, blobs) = (runtime.clone(), blobs.clone());
                        tokio::spawn(async move {
                            if let Err(e) = route.prepared(&runtime, blobs.as_ref()).await {
                                tracing::warn!(function = %route.name, error = %e, "preloading failed");
                            }
                        });
                    }
                }
                Err(gust_store::StoreError::Lagged(n)) => {
                    tracing::warn!(missed = n, "registry watch lagged; resynchronising");
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "registry watch ended; restarting");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    break;
                }
            }
        }
    }
}
