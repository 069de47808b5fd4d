//! Gust's WebAssembly runtime, and the only crate that imports wasmtime.
//!
//! It owns the engine (Cranelift, pooling allocator, epoch interruption), the
//! compiled-artifact cache on disk, validation of uploaded components and
//! their compilation in a bounded child process (`compile.rs`),
//! pre-instantiation, and the invocation of one request in a fresh store and
//! instance with its limits (memory, wall-clock timeout, output, outbound
//! hosts), and the host side of `wasi:keyvalue` over a store the caller
//! provides. When an invocation's store is dropped it hands back an
//! [`InvocationReport`]: how it ended, how long it took, its peak memory and
//! what it printed. That report is the metering hook.
//!
//! It must not route requests, queue work or decide scaling: callers give it
//! a prepared component and a request, and get a response.
//!
//! ## Why a fresh instance per invocation
//! Reusing an instance would save microseconds but leak state between
//! requests (and between callers): globals, heap contents, a half-finished
//! stream. With the pooling allocator and copy-on-write memory images an
//! instantiation costs a few microseconds, so isolation is kept by default.

mod artifacts;
mod compile;
mod cpu_clock;
mod deadline;
mod engine;
mod host;
mod invoke;
mod keyvalue;

pub use compile::{Compiler, compile_upload, worker_main};
pub use deadline::Cut;
pub use engine::{Prepared, Runtime, RuntimeConfig, RuntimeStats};
pub use invoke::{
    CallBody, Guest, GuestBody, InvocationReport, InvokeError, LOCAL_HOST, LocalCalls,
    OutboundSpan, Trace,
};
pub use keyvalue::{KeyValue, KvFailure};

/// Why an uploaded component was refused. Each message is meant for the
/// person who uploaded it.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("the upload is not a WebAssembly binary (it does not start with `\\0asm`)")]
    NotWasm,
    #[error(
        "the upload is a core WebAssembly module, not a component: build for `wasm32-wasip2` (or run `wasm-tools component new`) so it exports `wasi:http/incoming-handler`"
    )]
    CoreModule,
    #[error("the component is not valid: {0}")]
    Invalid(String),
    #[error(
        "the component does not export `wasi:http/incoming-handler@0.2.x`, so Gust cannot send it requests: {0}"
    )]
    MissingHandler(String),
    #[error(
        "the component imports something Gust does not provide (Gust provides `wasi:http`, `wasi:cli`, `wasi:clocks`, `wasi:random`, `wasi:io`, `wasi:filesystem` and `wasi:sockets` at 0.2.x, and `wasi:keyvalue` at 0.2.0-draft): {0}"
    )]
    UnsupportedImport(String),
    #[error(
        "the component asks for {initial} bytes of linear memory at start, more than its memory limit of {limit} bytes: deploy it with a larger `--memory-mb` (`memory_mb` in gust.toml, `memory_bytes` in the API) or lower its initial memory"
    )]
    TooMuchMemory { initial: u64, limit: u64 },
    /// Compilation went past its time or memory budget (a compile bomb, or a
    /// component too large for the server's `--compile-*` settings).
    #[error(
        "the component was not deployed: {0}; shrink it, or ask the operator to raise `--compile-timeout-ms` / `--compile-memory-bytes`"
    )]
    CompileBudget(String),
    #[error("could not store the compiled component: {0}")]
    Storage(String),
}

/// Failures of the runtime itself (not of a guest).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("could not configure the WebAssembly engine: {0}")]
    Engine(String),
    #[error("artifact cache: {0}")]
    Artifacts(String),
    #[error("the stored artifact for {digest} could not be loaded: {reason}")]
    Load { digest: String, reason: String },
}

/// The WIT of what the host links, for guests' toolchains.
pub mod wit {
    include!(concat!(env!("OUT_DIR"), "/host_wit.rs"));
}
