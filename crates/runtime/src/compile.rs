//! Compilation of uploaded components in a child process, bounded in time
//! and memory: a compile bomb (a small upload that makes Cranelift work for
//! minutes or allocate gigabytes) costs at most its budget and never the
//! server's memory.
//!
//! The child is the caller's own binary started with the arguments in
//! [`Compiler`] (for `gust`: its hidden `compile-worker` command), which
//! calls [`worker_main`]. It reads the component on stdin, caps its own
//! address space and CPU time with `setrlimit`, compiles with the same
//! engine settings as the server, and writes the compiled artifact to
//! stdout. The server kills it when the wall-clock budget runs out.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::DeployError;

/// How to start a compile worker, and its budget.
#[derive(Debug, Clone)]
pub struct Compiler {
    /// The program to run (the server's own binary) and its arguments.
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Wall-clock time one compilation may take.
    pub timeout: Duration,
    /// Address space the worker may use, in bytes.
    pub memory_bytes: u64,
}

/// Exit status of a worker that found the component invalid (its reason on stderr).
const EXIT_INVALID: i32 = 2;
/// The largest artifact accepted from a worker.
const MAX_ARTIFACT_BYTES: u64 = 1 << 30;

/// The worker's side: compile the component on stdin into an artifact on
/// stdout. Returns the process exit status.
pub fn worker_main(memory_bytes: u64, cpu_seconds: u64) -> i32 {
    use rustix::process::{Resource, Rlimit, setrlimit};
    let limit = |resource, value: u64| {
        setrlimit(
            resource,
            Rlimit {
                current: Some(value),
                maximum: Some(value),
            },
        )
    };
    if let Err(e) = limit(Resource::As, memory_bytes).and(limit(Resource::Cpu, cpu_seconds)) {
        eprintln!("compile worker: cannot limit itself: {e}");
        return 1;
    }
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut bytes) {
        eprintln!("compile worker: reading the component: {e}");
        return 1;
    }
    match compile_upload(&bytes) {
        Ok(artifact) => match std::io::stdout().lock().write_all(&artifact) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("compile worker: writing the artifact: {e}");
                1
            }
        },
        Err(DeployError::Invalid(reason)) => {
            eprint!("{reason}");
            EXIT_INVALID
        }
        Err(e) => {
            eprint!("{e}");
            1
        }
    }
}

/// Validates and compiles an upload with the server's engine settings:
/// what a compile worker does with its input (and what the `upload` fuzz
/// target exercises). Returns the compiled artifact.
pub fn compile_upload(bytes: &[u8]) -> Result<Vec<u8>, DeployError> {
    static ENGINE: std::sync::OnceLock<Result<wasmtime::Engine, String>> =
        std::sync::OnceLock::new();
    crate::Runtime::check_header(bytes)?;
    let engine = ENGINE
        .get_or_init(|| {
            wasmtime::Engine::new(&crate::engine::base_config()).map_err(|e| format!("{e:#}"))
        })
        .as_ref()
        .map_err(|e| DeployError::Storage(format!("engine: {e}")))?;
    engine
        .precompile_component(bytes)
        .map_err(|e| DeployError::Invalid(format!("{e:#}")))
}

impl Compiler {
    /// Compiles `bytes` in a worker and returns the artifact it wrote.
    pub(crate) async fn compile(&self, bytes: bytes::Bytes) -> Result<Vec<u8>, DeployError> {
        let failed = |what: String| DeployError::Storage(format!("compile worker: {what}"));
        let cpu_seconds = self.timeout.as_secs().saturating_add(1);
        let mut child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .arg(self.memory_bytes.to_string())
            .arg(cpu_seconds.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(format!("cannot start {}: {e}", self.program.display())))?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(failed("no pipes".into()));
        };
        let feed = async move {
            // A worker that dies early closes the pipe: its status says why.
            let _ = stdin.write_all(&bytes).await;
            drop(stdin);
        };
        let collect = async move {
            let mut artifact = Vec::new();
            let mut reason = Vec::new();
            let (mut stdout, mut stderr) = (stdout.take(MAX_ARTIFACT_BYTES), stderr.take(64 << 10));
            let (out, err) = tokio::join!(
                stdout.read_to_end(&mut artifact),
                stderr.read_to_end(&mut reason),
            );
            out.and(err).map(|_| (artifact, reason))
        };
        let run = async { tokio::join!(feed, collect, child.wait()) };
        let (_, collected, status) = match tokio::time::timeout(self.timeout, run).await {
            Ok(done) => done,
            Err(_) => {
                let _ = child.kill().await;
                return Err(self.over_time());
            }
        };
        let (artifact, reason) = collected.map_err(|e| failed(e.to_string()))?;
        let status = status.map_err(|e| failed(e.to_string()))?;
        let reason = String::from_utf8_lossy(&reason).trim().to_string();
        if status.success() {
            return Ok(artifact);
        }
        if status.code() == Some(EXIT_INVALID) {
            return Err(DeployError::Invalid(reason));
        }
        use std::os::unix::process::ExitStatusExt as _;
        const SIGXCPU: i32 = 24;
        if status.signal() == Some(SIGXCPU) {
            return Err(self.over_time());
        }
        // Out of address space, Rust aborts ("memory allocation of N bytes
        // failed") and Cranelift may panic; either way past the budget.
        if status.signal().is_some() || reason.contains("memory") {
            return Err(DeployError::CompileBudget(format!(
                "compiling it needed more than its memory budget of {} MiB",
                self.memory_bytes >> 20
            )));
        }
        Err(failed(format!("exited with {status}: {reason}")))
    }

    fn over_time(&self) -> DeployError {
        DeployError::CompileBudget(format!(
            "compiling it took longer than its time budget of {} ms",
            self.timeout.as_millis()
        ))
    }
}
