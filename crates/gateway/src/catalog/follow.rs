//! Keeping the catalog in step with the registry: one watch of every
//! function and application record, each new loaded version preloaded.

use std::sync::Arc;
use std::time::Duration;

use gust_runtime::Runtime;
use gust_store::{BlobStore, Registry};

use super::{Catalog, Loaded};
use crate::admission::NodeSlots;

/// How long a revision waits for its new versions to load before it counts
/// as applied anyway (their first requests then load them). Later
/// revisions wait behind it, so it is kept short.
const PRELOAD_WITHIN: Duration = Duration::from_secs(10);

/// Keeps `catalog` in step with the registry until the process ends. Each
/// new loaded version is loaded in the background right away, so that its
/// first request does not pay for loading, and its revision counts as
/// applied once that is done: a deploy answers when every node can serve
/// the new version warm, not merely knows of it.
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
        node.set_reservations(catalog.reservations());
        catalog.loading_revision(watch.revision);
        catalog.loaded_revision(watch.revision);
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        loop {
            match watch.changes.next().await {
                Ok(event) => {
                    // A component no loaded version serves any more leaves memory (its
                    // artifact stays on disk); running invocations keep their copy.
                    let applied = catalog.apply(&event);
                    for old in applied.displaced {
                        if !catalog.serves_digest(&old.digest) {
                            runtime.unload(&old.digest);
                        }
                    }
                    node.set_reservations(catalog.reservations());
                    let revision = event.revision();
                    let cold: Vec<Arc<Loaded>> = applied
                        .touched
                        .iter()
                        .filter_map(|key| catalog.get_key(key))
                        .flat_map(|s| s.versions())
                        .filter(|loaded| !loaded.is_warm())
                        .collect();
                    catalog.loading_revision(revision);
                    let (catalog, runtime, blobs) =
                        (catalog.clone(), runtime.clone(), blobs.clone());
                    tokio::spawn(async move {
                        let mut loads = tokio::task::JoinSet::new();
                        for loaded in cold {
                            let (runtime, blobs) = (runtime.clone(), blobs.clone());
                            loads.spawn(async move {
                                let load = loaded.prepared(&runtime, blobs.as_ref());
                                match tokio::time::timeout(PRELOAD_WITHIN, load).await {
                                    Ok(Ok(_)) => {}
                                    Ok(Err(e)) => {
                                        tracing::warn!(function = %loaded.name, error = %e, "preloading failed")
                                    }
                                    Err(_) => {
                                        tracing::warn!(function = %loaded.name, "preloading takes long; serving the revision without waiting")
                                    }
                                }
                            });
                        }
                        while loads.join_next().await.is_some() {}
                        catalog.loaded_revision(revision);
                    });
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
