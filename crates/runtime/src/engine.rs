use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::artifacts::ArtifactCache;
use crate::host::Host;
use crate::{DeployError, RuntimeError};

/// How often the engine's epoch advances. A guest that does not return to
/// the host is checked (yield, or stop past its deadline) at this interval.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);

/// How the runtime is set up; chosen by the binary.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where compiled artifacts are kept between restarts.
    pub artifacts_dir: PathBuf,
    /// Instances that may run at once (the pooling allocator's slots).
    pub max_instances: u32,
    /// Bytes of each linear memory kept resident (reset with `memset`, not
    /// `madvise`) when a pool slot is reused; see `bench/README.md`.
    pub memory_keep_resident: usize,
    /// Compile uploads in a bounded child process (`None`: in this
    /// process, unbounded; for tests of this crate and embedders).
    pub compiler: Option<crate::Compiler>,
}

impl RuntimeConfig {
    pub fn new(artifacts_dir: PathBuf) -> Self {
        Self {
            artifacts_dir,
            max_instances: 1000,
            memory_keep_resident: 2 << 20,
            compiler: None,
        }
    }
}

/// A component compiled and linked, ready for fresh instances.
pub struct Prepared {
    pub(crate) pre: ProxyPre<Host>,
    digest: String,
    initial_memory_bytes: u64,
}

impl Prepared {
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The largest linear memory the component asks for before it runs a
    /// single instruction (its declared minimum).
    pub fn initial_memory_bytes(&self) -> u64 {
        self.initial_memory_bytes
    }

    /// Refuses a component that could never run within `memory_limit`:
    /// better a 400 at deploy than a failure on every request.
    pub fn check_fits(&self, memory_limit: u64) -> Result<(), DeployError> {
        if self.initial_memory_bytes > memory_limit {
            return Err(DeployError::TooMuchMemory {
                initial: self.initial_memory_bytes,
                limit: memory_limit,
            });
        }
        Ok(())
    }
}

/// Counters about the runtime's work, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuntimeStats {
    /// Components compiled from WebAssembly (deploys and cache misses).
    pub compilations: u64,
    /// Components loaded from an artifact on disk.
    pub artifact_loads: u64,
    /// Instances created.
    pub instantiations: u64,
    /// Components held in memory, ready to instantiate.
    pub loaded: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub compilations: AtomicU64,
    pub artifact_loads: AtomicU64,
    pub instantiations: AtomicU64,
}

/// The WebAssembly runtime: one engine and linker, a cache of prepared
/// components, and invocation. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub engine: Engine,
    linker: Linker<Host>,
    artifacts: ArtifactCache,
    /// Components in memory, owned by whoever serves them (the gateway's
    /// routes, running invocations): dropped by the last of them.
    prepared: Mutex<HashMap<String, Weak<Prepared>>>,
    compiler: Option<crate::Compiler>,
    /// Who compiles next: fair between tenants, bounded per tenant and in all.
    compiling: crate::compile::CompileQueue,
    pub counters: Counters,
    /// Guests' outbound requests open, per tenant (see `host/outbound.rs`).
    pub outbound: Arc<crate::host::OutboundSlots>,
    stop_epoch: Arc<AtomicBool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_epoch.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    pub fn new(config: &RuntimeConfig) -> Result<Self, RuntimeError> {
        let engine = build_engine(config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        link_http(&mut linker).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        wasmtime_wasi_config::add_to_linker(&mut linker, |host: &mut Host| {
            wasmtime_wasi_config::WasiConfig::from(&host.config)
        })
        .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        crate::keyvalue::add_to_linker(&mut linker)
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let artifacts = ArtifactCache::open(&config.artifacts_dir, &engine)?;

        let stop_epoch = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = stop_epoch.clone();
            std::thread::Builder::new()
                .name("gust-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| RuntimeError::Engine(format!("epoch thread: {e}")))?;
        }

        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                artifacts,
                prepared: Mutex::new(HashMap::new()),
                compiler: config.compiler.clone(),
                compiling: crate::compile::CompileQueue::new(
                    crate::compile::MAX_COMPILING,
                    crate::compile::MAX_COMPILING_PER_TENANT,
                ),
                counters: Counters::default(),
                outbound: Arc::new(crate::host::OutboundSlots::new(
                    crate::host::PER_INVOCATION,
                    crate::host::PER_TENANT,
                )),
                stop_epoch,
            }),
        })
    }

    /// Checks the first bytes of an upload: a component, not a core module or something else.
    pub fn check_header(bytes: &[u8]) -> Result<(), DeployError> {
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(DeployError::NotWasm);
        }
        match bytes[4..8] {
            [1, 0, 0, 0] => Err(DeployError::CoreModule),
            [_, _, 1, 0] => Ok(()),
            _ => Err(DeployError::Invalid(
                "unknown WebAssembly binary version or layer".into(),
            )),
        }
    }

    /// Validates, compiles and links an uploaded component, stores its
    /// artifact on disk, and keeps it ready for invocations. Compiles only
    /// when no artifact for this digest and engine exists yet.
    pub async fn prepare(&self, digest: &str, bytes: Bytes) -> Result<Arc<Prepared>, DeployError> {
        self.prepare_for("", digest, bytes).await
    }

    /// [`Runtime::prepare`] for `tenant`'s deploy: its compilation waits in
    /// the tenant's own queue, served in turn with other tenants' (the
    /// node's own recompilations, through `prepare`, count as one more).
    pub async fn prepare_for(
        &self,
        tenant: &str,
        digest: &str,
        bytes: Bytes,
    ) -> Result<Arc<Prepared>, DeployError> {
        Self::check_header(&bytes)?;
        if let Ok(Some(prepared)) = self.load(digest).await {
            return Ok(prepared);
        }
        let _turn = self.inner.compiling.turn(tenant).await?;
        let started = Instant::now();
        let artifact = match &self.inner.compiler {
            Some(compiler) => compiler.compile(bytes).await?,
            None => {
                let engine = self.inner.engine.clone();
                tokio::task::spawn_blocking(move || engine.precompile_component(&bytes))
                    .await
                    .map_err(|e| DeployError::Storage(format!("compilation task failed: {e}")))?
                    .map_err(|e| DeployError::Invalid(format!("{e:#}")))?
            }
        };
        self.inner
            .counters
            .compilations
            .fetch_add(1, Ordering::Relaxed);
        let inner = self.inner.clone();
        let digest = digest.to_string();
        let task = tokio::task::spawn_blocking(move || -> Result<Arc<Prepared>, DeployError> {
            // SAFETY: the artifact was produced just now by this runtime's
            // own compiler (in this process, or in a worker running this
            // very binary with the same engine settings), from the bytes
            // being deployed; `deserialize` requires a trusted `serialize`.
            let component = unsafe { Component::deserialize(&inner.engine, &artifact) }
                // Where this fails it is on the instance limits (tables,
                // memories) every component is held to.
                .map_err(|e| DeployError::Invalid(format!("{e:#}")))?;
            let prepared = inner.link(&digest, &component)?;
            inner
                .artifacts
                .store(&digest, &artifact)
                .map_err(|e| DeployError::Storage(e.to_string()))?;
            tracing::info!(%digest, elapsed_ms = started.elapsed().as_millis() as u64, "compiled component");
            Ok(inner.remember(prepared))
        });
        task.await
            .map_err(|e| DeployError::Storage(format!("compilation task failed: {e}")))?
    }

    /// The prepared component for `digest`: from memory, else from its
    /// artifact on disk. `None` when it was never compiled by this engine;
    /// the caller then fetches the component and calls [`Runtime::prepare`].
    pub async fn load(&self, digest: &str) -> Result<Option<Arc<Prepared>>, RuntimeError> {
        if let Some(found) = self.inner.lookup(digest) {
            return Ok(Some(found));
        }
        let path = self.inner.artifacts.path(digest);
        if !path.exists() {
            return Ok(None);
        }
        let inner = self.inner.clone();
        let digest = digest.to_string();
        let task = tokio::task::spawn_blocking(move || -> Result<Arc<Prepared>, RuntimeError> {
            let load_error = |reason: String| RuntimeError::Load {
                digest: digest.clone(),
                reason,
            };
            let bytes = crate::artifacts::read_verified(&path).map_err(load_error)?;
            // SAFETY: the bytes are an artifact this runtime serialized
            // itself into its own data directory (named by content digest
            // and engine fingerprint, written atomically) and their checksum
            // matches what was written; `deserialize` requires exactly that
            // they come from a trusted `serialize`.
            let component = unsafe { Component::deserialize(&inner.engine, &bytes) }
                .map_err(|e| load_error(format!("{e:#}")))?;
            inner
                .counters
                .artifact_loads
                .fetch_add(1, Ordering::Relaxed);
            let prepared = inner
                .link(&digest, &component)
                .map_err(|e| load_error(e.to_string()))?;
            Ok(inner.remember(prepared))
        });
        let prepared = task.await.map_err(|e| RuntimeError::Load {
            digest: String::new(),
            reason: e.to_string(),
        })??;
        Ok(Some(prepared))
    }

    /// Forgets the runtime's reference to a component (its artifact stays
    /// on disk); it leaves memory when its last holder drops it.
    pub fn unload(&self, digest: &str) {
        self.inner
            .prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(digest);
    }

    /// Removes a component's compiled artifact from disk and forgets it,
    /// once no function refers to its digest. (Were it needed again, it
    /// would be compiled again from the component.)
    pub fn forget_artifact(&self, digest: &str) {
        self.unload(digest);
        let path = self.inner.artifacts.path(digest);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a compiled artifact");
        }
    }

    /// Removes compiled artifacts that no component in `keep` needs (see
    /// the artifact cache's `sweep`); returns (files, bytes) removed.
    pub fn sweep_artifacts(
        &self,
        keep: &std::collections::HashSet<String>,
        grace: std::time::Duration,
    ) -> Result<(u64, u64), RuntimeError> {
        self.inner
            .artifacts
            .sweep(keep, grace)
            .map_err(|e| RuntimeError::Artifacts(format!("sweeping compiled artifacts: {e}")))
    }

    pub fn stats(&self) -> RuntimeStats {
        let c = &self.inner.counters;
        RuntimeStats {
            compilations: c.compilations.load(Ordering::Relaxed),
            artifact_loads: c.artifact_loads.load(Ordering::Relaxed),
            instantiations: c.instantiations.load(Ordering::Relaxed),
            loaded: {
                let mut prepared = self
                    .inner
                    .prepared
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                prepared.retain(|_, p| p.strong_count() > 0);
                prepared.len() as u64
            },
        }
    }
}

impl Inner {
    fn lookup(&self, digest: &str) -> Option<Arc<Prepared>> {
        self.prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .and_then(Weak::upgrade)
    }

    fn remember(&self, prepared: Prepared) -> Arc<Prepared> {
        let prepared = Arc::new(prepared);
        self.prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(prepared.digest.clone(), Arc::downgrade(&prepared));
        prepared
    }

    fn link(&self, digest: &str, component: &Component) -> Result<Prepared, DeployError> {
        let instance_pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| DeployError::UnsupportedImport(format!("{e:#}")))?;
        let pre = ProxyPre::new(instance_pre)
            .map_err(|e| DeployError::MissingHandler(format!("{e:#}")))?;
        const WASM_PAGE: u64 = 64 << 10;
        let initial_memory_bytes = component
            .resources_required()
            .and_then(|r| r.max_initial_memory_size)
            .unwrap_or(0)
            .saturating_mul(WASM_PAGE);
        Ok(Prepared {
            pre,
            digest: digest.to_string(),
            initial_memory_bytes,
        })
    }
}

/// Adds `wasi:http` (types and outgoing handler) to the linker, with the
/// unstable `informational-outbound-responses` feature linked: components
/// built with StarlingMonkey (jco, componentize-js) import
/// `response-outparam.send-informational` and would otherwise be refused.
/// Calling it traps (wasmtime does not implement it); importing it is fine.
fn link_http(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    use wasmtime_wasi_http::WasiHttp;
    use wasmtime_wasi_http::WasiHttpView as _;
    use wasmtime_wasi_http::p2::bindings::{LinkOptions, http};

    let mut options = LinkOptions::default();
    options.informational_outbound_responses(true);
    http::outgoing_handler::add_to_linker::<_, WasiHttp>(linker, Host::http)?;
    http::types::add_to_linker::<_, WasiHttp>(linker, &(&options).into(), Host::http)?;
    Ok(())
}

/// The engine settings that decide compiled code: shared by the server and
/// its compile workers, so a worker's artifact loads in the server.
pub(crate) fn base_config() -> Config {
    let mut wasm = Config::new();
    wasm.wasm_component_model(true)
        .epoch_interruption(true)
        .parallel_compilation(true);
    wasm
}

fn build_engine(config: &RuntimeConfig) -> Result<Engine, RuntimeError> {
    let mut wasm = base_config();

    let n = config.max_instances.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        // A component built by wit-component holds a few core instances and
        // tables (main module, shims, fix-ups) but usually one memory.
        .total_core_instances(n.saturating_mul(8))
        .total_tables(n.saturating_mul(4))
        .total_memories(n.saturating_mul(2))
        .total_stacks(n)
        .max_memories_per_module(1)
        .max_tables_per_module(4)
        .table_elements(100_000)
        .max_memory_size(
            usize::try_from(gust_core::Limits::CEILING_MEMORY_BYTES).unwrap_or(usize::MAX),
        )
        .linear_memory_keep_resident(config.memory_keep_resident)
        .table_keep_resident(64 << 10)
        .pagemap_scan(Enabled::Auto);
    wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    // A trap's message is all anyone sees of it (`InvokeError::Trapped`):
    // walking and resolving the guest's stack for a backtrace would be
    // work for nobody. A run-time setting; compiled artifacts are the same.
    wasm.wasm_backtrace_max_frames(None);
    match Engine::new(&wasm) {
        Ok(engine) => Ok(engine),
        Err(pool_error) => {
            // The pool reserves address space up front; where that is refused
            // (a small `ulimit -v`), fall back to allocating on demand.
            tracing::warn!(error = %format!("{pool_error:#}"), "pooling allocator unavailable; allocating instances on demand");
            wasm.allocation_strategy(InstanceAllocationStrategy::OnDemand);
            Engine::new(&wasm).map_err(|e| RuntimeError::Engine(format!("{e:#}")))
        }
    }
}
