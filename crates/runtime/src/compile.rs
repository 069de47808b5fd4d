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

/// Compilations running at once on the node, at most (each may use its whole budget).
pub const MAX_COMPILING: usize = 2;
/// Compilations running at once for one tenant, at most.
pub const MAX_COMPILING_PER_TENANT: usize = 1;

/// Who compiles next: waiting compilations queued per tenant and served
/// round-robin between the tenants waiting, at most `node_limit` running
/// in all and `tenant_limit` per tenant. Pure bookkeeping; `W` is the
/// caller's waiter.
///
/// So one tenant's many slow uploads take at most its own share of the
/// compile slots, and another tenant's deploy waits for at most one
/// compilation per tenant ahead of it, not for the whole backlog.
#[derive(Debug)]
pub(crate) struct FairQueue<W> {
    node_limit: usize,
    tenant_limit: usize,
    running: usize,
    running_by_tenant: std::collections::HashMap<String, usize>,
    waiting: std::collections::HashMap<String, std::collections::VecDeque<W>>,
    /// Tenants with waiters, in the order they are served next.
    turns: std::collections::VecDeque<String>,
}

impl<W> FairQueue<W> {
    pub fn new(node_limit: usize, tenant_limit: usize) -> Self {
        Self {
            node_limit: node_limit.max(1),
            tenant_limit: tenant_limit.max(1),
            running: 0,
            running_by_tenant: Default::default(),
            waiting: Default::default(),
            turns: Default::default(),
        }
    }

    /// `tenant` wants to compile; it waits behind its own earlier requests.
    pub fn push(&mut self, tenant: &str, waiter: W) {
        let queue = self.waiting.entry(tenant.to_string()).or_default();
        if queue.is_empty() {
            self.turns.push_back(tenant.to_string());
        }
        queue.push_back(waiter);
    }

    /// The waiters that may start now (each counted as running until
    /// [`FairQueue::finished`] is called for its tenant).
    pub fn start(&mut self) -> Vec<(String, W)> {
        let mut started = Vec::new();
        while self.running < self.node_limit {
            // The first tenant in turn that is under its own limit.
            let Some(at) = self.turns.iter().position(|tenant| {
                self.running_by_tenant.get(tenant).copied().unwrap_or(0) < self.tenant_limit
            }) else {
                break;
            };
            let Some(tenant) = self.turns.remove(at) else {
                break;
            };
            let Some(queue) = self.waiting.get_mut(&tenant) else {
                continue;
            };
            let Some(waiter) = queue.pop_front() else {
                self.waiting.remove(&tenant);
                continue;
            };
            if queue.is_empty() {
                self.waiting.remove(&tenant);
            } else {
                // Served: to the back of the line.
                self.turns.push_back(tenant.clone());
            }
            self.running += 1;
            *self.running_by_tenant.entry(tenant.clone()).or_insert(0) += 1;
            started.push((tenant, waiter));
        }
        started
    }

    /// A compilation of `tenant`'s ended (or was given up before it began).
    pub fn finished(&mut self, tenant: &str) {
        if let Some(n) = self.running_by_tenant.get_mut(tenant) {
            *n -= 1;
            if *n == 0 {
                self.running_by_tenant.remove(tenant);
            }
            self.running = self.running.saturating_sub(1);
        }
    }

    /// Compilations waiting, in all.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.waiting
            .values()
            .map(std::collections::VecDeque::len)
            .sum()
    }
}

type Waiter = tokio::sync::oneshot::Sender<CompileTurn>;

/// The node's compile queue ([`FairQueue`] over async waiters).
#[derive(Clone)]
pub struct CompileQueue {
    queue: std::sync::Arc<std::sync::Mutex<FairQueue<Waiter>>>,
}

impl std::fmt::Debug for CompileQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CompileQueue")
    }
}

/// A compile slot, held while compiling; dropping it lets the next one start.
#[must_use]
pub struct CompileTurn {
    /// `None` once its place was given back.
    queue: Option<std::sync::Arc<std::sync::Mutex<FairQueue<Waiter>>>>,
    tenant: String,
}

fn lock_queue(
    queue: &std::sync::Mutex<FairQueue<Waiter>>,
) -> std::sync::MutexGuard<'_, FairQueue<Waiter>> {
    queue
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl CompileQueue {
    pub fn new(node_limit: usize, tenant_limit: usize) -> Self {
        Self {
            queue: std::sync::Arc::new(std::sync::Mutex::new(FairQueue::new(
                node_limit,
                tenant_limit,
            ))),
        }
    }

    /// Waits for `tenant`'s turn to compile.
    pub async fn turn(&self, tenant: &str) -> Result<CompileTurn, DeployError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let started = {
            let mut queue = lock_queue(&self.queue);
            queue.push(tenant, tx);
            queue.start()
        };
        hand_out(&self.queue, started);
        rx.await
            .map_err(|_| DeployError::Storage("the runtime is shutting down".into()))
    }
}

/// Gives each started waiter its turn, outside the lock. A waiter that went
/// away (its deploy was dropped) gives its turn back at once, here, in a
/// loop: however many waiters went away, the stack does not grow.
fn hand_out(
    queue: &std::sync::Arc<std::sync::Mutex<FairQueue<Waiter>>>,
    started: Vec<(String, Waiter)>,
) {
    let mut pending = started;
    while let Some((tenant, waiter)) = pending.pop() {
        let turn = CompileTurn {
            queue: Some(queue.clone()),
            tenant,
        };
        if let Err(mut unwanted) = waiter.send(turn) {
            // Disarm its drop, and give its place to the next waiter here.
            unwanted.queue = None;
            let mut locked = lock_queue(queue);
            locked.finished(&unwanted.tenant);
            pending.extend(locked.start());
        }
    }
}

impl Drop for CompileTurn {
    fn drop(&mut self) {
        let Some(queue) = self.queue.take() else {
            return;
        };
        let started = {
            let mut locked = lock_queue(&queue);
            locked.finished(&self.tenant);
            locked.start()
        };
        hand_out(&queue, started);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn names(started: Vec<(String, u32)>) -> Vec<String> {
        started
            .into_iter()
            .map(|(t, w)| format!("{t}{w}"))
            .collect()
    }

    #[test]
    fn many_waiters_that_went_away_give_their_turns_back_without_deep_recursion() {
        let queue = CompileQueue::new(1, 1);
        let started = {
            let mut locked = lock_queue(&queue.queue);
            for n in 0..50_000 {
                let (tx, rx) = tokio::sync::oneshot::channel();
                drop(rx);
                locked.push(&format!("t{n}"), tx);
            }
            locked.start()
        };
        hand_out(&queue.queue, started);
        let locked = lock_queue(&queue.queue);
        assert_eq!(locked.waiting(), 0);
        assert_eq!(locked.running, 0);
    }

    #[test]
    fn one_tenants_backlog_does_not_hold_back_another() {
        let mut queue = FairQueue::new(2, 1);
        for n in 1..=6 {
            queue.push("a", n);
        }
        // One slot for `a`'s first upload; its others wait for its own slot.
        assert_eq!(names(queue.start()), ["a1"]);
        queue.push("b", 1);
        assert_eq!(names(queue.start()), ["b1"], "b starts at once");
        assert!(queue.start().is_empty(), "the node's two slots are taken");
        queue.finished("a");
        assert_eq!(names(queue.start()), ["a2"]);
        assert_eq!(queue.waiting(), 4);
    }

    #[test]
    fn tenants_waiting_are_served_in_turn() {
        let mut queue = FairQueue::new(1, 1);
        for n in 1..=3 {
            queue.push("a", n);
        }
        queue.push("b", 1);
        queue.push("b", 2);
        queue.push("c", 1);
        let mut order = names(queue.start());
        while queue.waiting() > 0 {
            let last = order.last().unwrap().chars().next().unwrap().to_string();
            queue.finished(&last);
            order.extend(names(queue.start()));
        }
        assert_eq!(order, ["a1", "b1", "c1", "a2", "b2", "a3"]);
    }

    #[test]
    fn the_per_tenant_limit_and_the_node_limit_both_hold() {
        let mut queue = FairQueue::new(3, 2);
        for n in 1..=4 {
            queue.push("a", n);
        }
        assert_eq!(names(queue.start()), ["a1", "a2"], "two for one tenant");
        queue.push("b", 1);
        queue.push("b", 2);
        assert_eq!(names(queue.start()), ["b1"], "three on the node");
        queue.finished("b");
        // `a` is at its own limit; `b`'s next one goes first.
        assert_eq!(names(queue.start()), ["b2"]);
        queue.finished("a");
        queue.finished("a");
        assert_eq!(names(queue.start()), ["a3", "a4"]);
        queue.finished("nobody");
        assert!(queue.start().is_empty(), "an unknown tenant frees nothing");
    }

    #[tokio::test]
    async fn a_turn_given_up_or_never_taken_frees_its_slot() {
        let queue = CompileQueue::new(1, 1);
        let first = queue.turn("a").await.unwrap();
        // A deploy that gave up while waiting.
        let abandoned = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.turn("b").await.map(drop) })
        };
        tokio::task::yield_now().await;
        abandoned.abort();
        let _ = abandoned.await;
        let next = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.turn("c").await.map(drop) })
        };
        drop(first);
        tokio::time::timeout(std::time::Duration::from_secs(5), next)
            .await
            .expect("c got its turn after b's was given back")
            .unwrap()
            .unwrap();
        let again = tokio::time::timeout(std::time::Duration::from_secs(5), queue.turn("a")).await;
        assert!(again.is_ok(), "every slot came back");
    }
}
