//! One invocation: a fresh store and instance, the request in, the response
//! out, limits enforced, and a report when the store is dropped.
//!
//! Cancellation. hyper drops the service future when an HTTP/1 connection
//! closes mid-request (it reads the socket for EOF once the request body
//! is in; not while a guest leaves a request body unread, nor behind
//! pipelined requests) and drops a response body it stops sending; the
//! guest runs on a task of its own, which both would leave running. So
//! `Runtime::invoke` hands out a `Cancel` guard, held by its future until
//! the response head and then by the response body until its end (or its
//! `Content-Length` is sent; HEAD, 204 and 304 answers never cancel):
//! dropped earlier, it makes the task stop polling the guest at its next
//! yield (an epoch tick at most) and report `Cancelled`, which frees the
//! admission slots. A body the guest did not finish (a trap, a timeout,
//! the memory limit after the head) ends in an error, so hyper closes the
//! connection without the last chunk; the task records why the guest
//! stopped before it drops the store, so the body always knows.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gust_core::{Limits, Outcome};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use http_body_util::combinators::UnsyncBoxBody;
use tokio::sync::oneshot;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpView as _};

use crate::cpu_clock::thread_cpu_ns;
use crate::deadline::{Cut, Deadline, within};
use crate::engine::{EPOCH_TICK, Prepared, Runtime};
use crate::host::{Capture, Host, MemoryLimiter, OutboundPolicy};
use crate::keyvalue::{KeyValue, KvState};

/// Resource handles (streams, headers, pollables…) one instance may hold.
const MAX_HANDLES: usize = 10_000;
/// Bytes of header fields one `fields` resource may hold.
const MAX_FIELDS_BYTES: usize = 64 * 1024;
/// Bytes one `get-random-bytes` call may ask for.
const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// Error type of response bodies handed back to the gateway.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A response body streamed from the guest.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// Why reading a request body for the guest failed; the guest sees the
/// matching `wasi:http` error code.
#[derive(Debug, thiserror::Error)]
pub enum GuestBody {
    #[error("request body is larger than {0} bytes")]
    TooLarge(u64),
    #[error("request body was not received in time")]
    Timeout,
    #[error("request body could not be read: {0}")]
    Io(String),
}

impl From<GuestBody> for wasmtime_wasi_http::Error {
    fn from(value: GuestBody) -> Self {
        match value {
            GuestBody::TooLarge(limit) => Self::HttpRequestBodySize(Some(limit)),
            GuestBody::Timeout => Self::ConnectionReadTimeout,
            GuestBody::Io(message) => Self::InternalError(Some(message)),
        }
    }
}

/// The host name through which a guest calls another function of its
/// tenant: `http://gust.internal/<name>[:alias]/…`, served in process.
pub const LOCAL_HOST: &str = "gust.internal";

/// A body of a call between functions, either way.
pub type CallBody = UnsyncBoxBody<Bytes, BoxError>;

/// Serves a guest's calls to other functions of its tenant (requests to
/// [`LOCAL_HOST`]) without leaving the process. Supplied by the caller
/// of [`crate::Runtime::invoke`], already scoped to the tenant; a failure
/// is an HTTP answer (404, 429, 503, 508 …), as from a remote server.
pub trait LocalCalls: Send + Sync {
    fn call(
        &self,
        request: http::Request<CallBody>,
    ) -> std::pin::Pin<Box<dyn Future<Output = http::Response<CallBody>> + Send>>;
}

/// An invocation's place in a trace, when the node exports traces:
/// supplied by the caller of [`crate::Runtime::invoke`], which owns the
/// spans and how their context is written.
pub trait Trace: Send + Sync {
    /// A span for one outbound request, a child of the invocation's; the
    /// host keeps it until the answer's head arrives (or the request
    /// fails), and it ends when dropped. `internal`: a call to another
    /// function.
    fn outbound(&self, method: &http::Method, host: &str, internal: bool) -> Box<dyn OutboundSpan>;
}

/// The span of one outbound request (see [`Trace::outbound`]).
pub trait OutboundSpan: Send + Sync {
    /// The headers (`traceparent`, `tracestate`) that continue its trace.
    fn headers(&self) -> http::HeaderMap;
    /// The answer's head arrived with `status`.
    fn answered(&self, status: http::StatusCode);
    /// The request failed without an answer.
    fn failed(&self);
}

/// What one invocation may use besides its request: its limits, its
/// tenant's key-value store, its variables and its calls to other
/// functions.
#[derive(Clone)]
pub struct Guest {
    pub limits: Arc<Limits>,
    pub kv: Arc<dyn KeyValue>,
    /// Environment variables, also its `wasi:config` store.
    pub vars: Arc<[(String, String)]>,
    /// `None`: calls to [`LOCAL_HOST`] are refused.
    pub calls: Option<Arc<dyn LocalCalls>>,
    /// Whom it runs for: its outbound requests count against this
    /// tenant's share of the node.
    pub tenant: gust_core::TenantId,
    /// `None`: traces are off, no span is made for its requests.
    pub trace: Option<Arc<dyn Trace>>,
    /// Its response may stream past `timeout_ms`, under the stream limits
    /// (a client's request); `false`: the timeout holds to the end (an
    /// event, whose lease is sized by it).
    pub streams: bool,
}

/// What an invocation did, handed over when its store is dropped.
#[derive(Debug, Clone)]
pub struct InvocationReport {
    pub outcome: Outcome,
    pub duration: Duration,
    pub peak_memory_bytes: u64,
    /// Keys the guest read or wrote through `wasi:keyvalue`.
    pub kv_operations: u64,
    /// Thread CPU time spent running the guest: see [`CpuMetered`].
    pub cpu: Duration,
    /// Outgoing `wasi:http` requests sent, and their declared bytes both ways.
    pub outbound_requests: u64,
    pub outbound_bytes: u64,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Output past the limit was dropped.
    pub output_truncated: bool,
}

/// Why an invocation produced no response. The gateway turns each into a status code.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("{0}")]
    Trapped(String),
    #[error("function exceeded its memory limit of {} MiB", .limit_bytes >> 20)]
    MemoryExceeded { limit_bytes: u64 },
    #[error("function timed out after {timeout_ms} ms")]
    TimedOut { timeout_ms: u64 },
    /// Its response stream went quiet or ran too long (only ever after the
    /// head, so it shows as the body's cut and the record's outcome).
    #[error("{0}")]
    StreamCut(Cut),
    #[error("function returned without sending a response")]
    NoResponse,
    #[error("function failed: {0}")]
    Failed(String),
    #[error("no instance slot is free")]
    Overloaded,
    #[error("internal error: {0}")]
    Internal(String),
}

/// How an invocation ended, as seen from inside its task.
enum Ending {
    Returned,
    TimedOut(Cut),
    Error(wasmtime::Error),
    /// Its caller went away (see [`Cancel`]).
    Cancelled,
}

/// The error a response body ends with when its guest stopped before
/// finishing it (a trap, its timeout, its memory limit, or an `abort`):
/// the server must then end the response so that the client sees it is
/// incomplete (HTTP/1: the connection closes without the last chunk).
#[derive(Debug, thiserror::Error)]
#[error("the response was cut off: {0}")]
pub struct ResponseCut(String);

/// Cancels an invocation when dropped, unless disarmed first. `invoke`'s
/// future holds it until the response head is known, then the response
/// body until its end: whoever serves the client drops one of them when
/// the client goes away, and the guest is stopped at its next yield (an
/// epoch tick at most) and reported as cancelled.
struct Cancel(Option<oneshot::Sender<()>>);

impl Cancel {
    /// The caller no longer stops the guest (the whole answer is out): the
    /// sender goes without a message, which the task reads as "run on".
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for Cancel {
    fn drop(&mut self) {
        if let Some(sender) = self.0.take() {
            let _ = sender.send(());
        }
    }
}

/// Polls `run` until it ends, or `None` as soon as `cancel` says so (a
/// message; a sender dropped without one only stops the watching).
async fn until_cancelled<F: Future>(
    run: F,
    mut cancel: oneshot::Receiver<()>,
) -> Option<F::Output> {
    let mut run = std::pin::pin!(run);
    let mut watching = true;
    std::future::poll_fn(move |cx| {
        if watching {
            match Pin::new(&mut cancel).poll(cx) {
                Poll::Ready(Ok(())) => return Poll::Ready(None),
                Poll::Ready(Err(_)) => watching = false,
                Poll::Pending => {}
            }
        }
        run.as_mut().poll(cx).map(Some)
    })
    .await
}

/// A guest's response body as the runtime hands it out: it ends with
/// [`ResponseCut`] rather than cleanly when the guest stopped abnormally
/// before finishing it, and cancels the invocation when dropped before
/// its end.
struct GuestResponse {
    inner: UnsyncBoxBody<Bytes, wasmtime_wasi_http::Error>,
    /// Why the guest stopped, set before its store (which holds the body's
    /// sending side) is dropped: so a body that ends finds it set.
    failed: Arc<OnceLock<String>>,
    cancel: Cancel,
    /// Bytes still due by the response's `Content-Length`: the server
    /// stops polling (and drops the body) once they are sent.
    due: Option<u64>,
    ended: bool,
    /// The error the body ends with, held back one turn (see [`Self::hold`]).
    held: Option<ResponseCut>,
    /// Moved on by every part the server takes (a stream's idle limit).
    deadline: Arc<Deadline>,
}

impl GuestResponse {
    /// Ends the body in `cut` at the next poll. A server that meets a
    /// body's error drops what it has not written yet (the head, the part
    /// the guest sent): the `Pending` turn lets it write that out first.
    fn hold(
        &mut self,
        cx: &mut Context<'_>,
        cut: ResponseCut,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.held = Some(cut);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Body for GuestResponse {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if let Some(cut) = this.held.take() {
            this.ended = true;
            return Poll::Ready(Some(Err(cut.into())));
        }
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                this.deadline.progressed();
                if let Some(data) = frame.data_ref() {
                    if let Some(due) = this.due.as_mut() {
                        *due = due.saturating_sub(data.len() as u64);
                        if *due == 0 {
                            this.cancel.disarm();
                        }
                    }
                } else {
                    // Trailers: the last frame.
                    this.cancel.disarm();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(code)) => this.hold(
                cx,
                ResponseCut(format!("the function aborted its body: {code:?}")),
            ),
            None => match this.failed.get() {
                Some(reason) => {
                    let cut = ResponseCut(reason.clone());
                    this.hold(cx, cut)
                }
                None => {
                    this.ended = true;
                    this.cancel.disarm();
                    Poll::Ready(None)
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Runtime {
    /// Runs `request` in a fresh instance of `prepared` with what `guest`
    /// says (limits, key-value store, variables, calls).
    ///
    /// Resolves when the guest sends its response head (the body keeps
    /// streaming from the guest) or fails before that. `on_done` is called
    /// exactly once, after the instance is gone, with the report.
    pub async fn invoke<B>(
        &self,
        prepared: Arc<Prepared>,
        guest: Guest,
        request: http::Request<B>,
        on_done: impl FnOnce(InvocationReport) + Send + 'static,
    ) -> Result<http::Response<ResponseBody>, InvokeError>
    where
        B: http_body::Body<Data = Bytes, Error = GuestBody> + Send + 'static,
    {
        let Guest {
            limits,
            kv,
            vars,
            calls,
            tenant,
            trace,
            streams,
        } = guest;
        let started = Instant::now();
        let timeout = Duration::from_millis(limits.timeout_ms);
        let deadline = Arc::new(Deadline::new(
            started,
            timeout,
            streams.then(|| {
                (
                    Duration::from_millis(limits.stream_idle_ms),
                    Duration::from_millis(limits.stream_max_ms),
                )
            }),
        ));
        let capture = Capture::new(limits.max_output_bytes);
        let memory_limit = limits.memory_bytes;

        // Host memory a guest makes the host allocate (handles, headers,
        // random bytes) is bounded too, not only its linear memory.
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(capture.stream(false))
            .stderr(capture.stream(true))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .max_random_size(MAX_RANDOM_BYTES.min(memory_limit))
            .envs(&vars);
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HANDLES);
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(MAX_FIELDS_BYTES);
        let host = Host {
            table,
            wasi: wasi.build(),
            http,
            outbound: OutboundPolicy {
                limits,
                requests: 0,
                bytes: None,
                calls,
                tenant,
                trace,
                slots: self.inner.outbound.clone(),
                open: None,
            },
            limiter: MemoryLimiter::new(memory_limit),
            kv: KvState {
                backend: kv,
                operations: 0,
            },
            config: vars.iter().cloned().collect(),
            timed_out: None,
        };
        let mut store = Store::new(&self.inner.engine, host);
        store.limiter(|host| &mut host.limiter);
        store.set_epoch_deadline(1);
        let watched = deadline.clone();
        store.epoch_deadline_callback(move |mut ctx| match watched.passed(Instant::now()) {
            Some(cut) => {
                ctx.data_mut().timed_out = Some(cut);
                Err(wasmtime::Trap::Interrupt.into())
            }
            None => Ok(UpdateDeadline::Yield(1)),
        });

        // Without a body to send, a dropped response is no sign that the
        // client went away: nothing cancels the guest after its head.
        let bodiless = request.method() == http::Method::HEAD;
        let (response_tx, response_rx) = oneshot::channel();
        let (cancel_tx, cancel_rx) = oneshot::channel();
        let mut cancel = Cancel(Some(cancel_tx));
        let failed = Arc::new(OnceLock::new());
        let failed_in_task = failed.clone();
        let inner = self.inner.clone();
        let in_task = deadline.clone();
        let task = tokio::spawn(async move {
            let run = async {
                let proxy = prepared.pre.instantiate_async(&mut store).await?;
                inner
                    .counters
                    .instantiations
                    .fetch_add(1, Ordering::Relaxed);
                let mut http = store.data_mut().http();
                let request = http.new_incoming_request(
                    wasmtime_wasi_http::p2::bindings::http::types::Scheme::Http,
                    request,
                )?;
                let out = http.new_response_outparam(response_tx)?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, request, out)
                    .await
            };
            // The epoch callback stops a guest that computes past its
            // deadline; this timer stops one that waits on the host (a
            // sleep, a slow outbound call, a client that does not read).
            // The margin lets the callback, which reports more precisely,
            // win when both apply.
            // Both live in the task's own future: no allocation of their
            // own. The run (which borrows the store) ends with this block.
            let cpu = AtomicU64::new(0);
            let ending = {
                let run = CpuMetered {
                    inner: std::pin::pin!(run),
                    total_ns: &cpu,
                };
                let run = within(run, &in_task, 2 * EPOCH_TICK);
                match until_cancelled(run, cancel_rx).await {
                    Some(Ok(Ok(()))) => Ending::Returned,
                    Some(Ok(Err(e))) => Ending::Error(e),
                    Some(Err(cut)) => Ending::TimedOut(cut),
                    None => Ending::Cancelled,
                }
            };
            let host = store.data();
            let timed_out = match ending {
                Ending::TimedOut(cut) => Some(cut),
                _ => host.timed_out,
            };
            let exceeded = host.limiter.exceeded;
            let peak = host.limiter.peak as u64;
            let kv_operations = host.kv.operations;
            let outbound_requests = host.outbound.requests;
            let outbound_bytes = host.outbound.bytes_counted();
            let cancelled = matches!(ending, Ending::Cancelled);
            let error = classify(ending, timed_out, exceeded, memory_limit);
            if let Some(error) = &error {
                let _ = failed_in_task.set(error.to_string());
            } else if cancelled {
                let _ = failed_in_task.set("the invocation was cancelled".to_string());
            }
            // Dropping the store drops the response sender if the guest
            // never used it, and a response body's sender: the body ends
            // then, and finds `failed` set if the guest did not finish.
            drop(store);
            let captured = capture.take();
            let outcome = match &error {
                None if cancelled => Outcome::Cancelled,
                None => Outcome::Completed,
                Some(InvokeError::TimedOut { .. } | InvokeError::StreamCut(_)) => Outcome::TimedOut,
                Some(e @ (InvokeError::Trapped(_) | InvokeError::MemoryExceeded { .. })) => {
                    Outcome::Trapped {
                        message: e.to_string(),
                    }
                }
                Some(e) => Outcome::Failed {
                    message: e.to_string(),
                },
            };
            on_done(InvocationReport {
                outcome,
                duration: started.elapsed(),
                peak_memory_bytes: peak,
                kv_operations,
                cpu: Duration::from_nanos(cpu.load(Ordering::Relaxed)),
                outbound_requests,
                outbound_bytes,
                stdout: captured.stdout,
                stderr: captured.stderr,
                output_truncated: captured.truncated,
            });
            error
        });

        // Dropped with this future (the caller went away), `cancel` stops the guest.
        match response_rx.await {
            Ok(Ok(response)) => {
                let status = response.status();
                let due = response
                    .headers()
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if bodiless
                    || status.is_informational()
                    || status == 204
                    || status == 304
                    || due == Some(0)
                {
                    // No body to stream: the timeout holds to the end.
                    cancel.disarm();
                } else {
                    deadline.head_sent();
                }
                Ok(response.map(|inner| {
                    GuestResponse {
                        inner,
                        failed,
                        cancel,
                        due,
                        ended: false,
                        held: None,
                        deadline,
                    }
                    .boxed_unsync()
                }))
            }
            Ok(Err(code)) => {
                // Its answer is this error: the guest may finish its run.
                cancel.disarm();
                Err(InvokeError::Failed(format!(
                    "the function answered with an error: {code:?}"
                )))
            }
            // The guest ended without answering: its task says why.
            Err(_) => match task.await {
                Ok(Some(error)) => Err(error),
                Ok(None) => Err(InvokeError::NoResponse),
                Err(join) => Err(InvokeError::Internal(join.to_string())),
            },
        }
    }
}

/// Measures the CPU time of the thread that polls `inner`, poll by poll:
/// the guest's own execution and whatever host code runs on its thread
/// within those polls (host calls, instantiation), not time spent waiting
/// (a sleep, an outbound request, a key-value read on the blocking pool).
/// Two readings of the thread's CPU clock per poll ([`thread_cpu_ns`]).
struct CpuMetered<'a, F> {
    inner: std::pin::Pin<&'a mut F>,
    total_ns: &'a AtomicU64,
}

impl<F: std::future::Future> std::future::Future for CpuMetered<'_, F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let this = self.get_mut();
        let before = thread_cpu_ns();
        let polled = this.inner.as_mut().poll(cx);
        let spent = thread_cpu_ns().saturating_sub(before);
        this.total_ns.fetch_add(spent, Ordering::Relaxed);
        polled
    }
}

/// The error a limit that stopped the run makes.
fn cut_error(cut: Cut) -> InvokeError {
    match cut {
        Cut::Timeout(timeout_ms) => InvokeError::TimedOut { timeout_ms },
        cut @ (Cut::Idle(_) | Cut::Total(_)) => InvokeError::StreamCut(cut),
    }
}

fn classify(
    ending: Ending,
    timed_out: Option<Cut>,
    memory_exceeded: bool,
    memory_limit: u64,
) -> Option<InvokeError> {
    match (ending, timed_out) {
        (Ending::Returned | Ending::Cancelled, _) => None,
        (Ending::TimedOut(cut), _) | (Ending::Error(_), Some(cut)) => Some(cut_error(cut)),
        (ending, None) => classify_error(ending, memory_exceeded, memory_limit),
    }
}

fn classify_error(ending: Ending, memory_exceeded: bool, memory_limit: u64) -> Option<InvokeError> {
    match ending {
        Ending::Returned | Ending::Cancelled | Ending::TimedOut(_) => None,
        Ending::Error(_) if memory_exceeded => Some(InvokeError::MemoryExceeded {
            limit_bytes: memory_limit,
        }),
        Ending::Error(e) => {
            if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
                Some(InvokeError::Trapped(trap.to_string()))
            } else if e
                .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                .is_some()
            {
                Some(InvokeError::Overloaded)
            } else if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
                if exit.0 == 0 {
                    None
                } else {
                    Some(InvokeError::Failed(format!(
                        "exited with status {}",
                        exit.0
                    )))
                }
            } else {
                Some(InvokeError::Failed(e.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    type Inner = UnsyncBoxBody<Bytes, wasmtime_wasi_http::Error>;

    fn full(text: &'static str) -> Inner {
        http_body_util::Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|never| match never {})
            .boxed_unsync()
    }

    fn body(inner: Inner, due: Option<u64>) -> (GuestResponse, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let body = GuestResponse {
            inner,
            failed: Arc::default(),
            cancel: Cancel(Some(tx)),
            due,
            ended: false,
            held: None,
            deadline: Arc::new(Deadline::new(Instant::now(), Duration::from_secs(1), None)),
        };
        (body, rx)
    }

    fn poll(body: &mut GuestResponse) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(body).poll_frame(&mut cx)
    }

    #[test]
    fn a_body_whose_guest_stopped_early_ends_in_an_error_not_cleanly() {
        let (mut cut, _rx) = body(full("half"), None);
        cut.failed
            .set("function timed out after 10 ms".into())
            .unwrap();
        assert!(matches!(poll(&mut cut), Poll::Ready(Some(Ok(_)))));
        // One turn for the server to write out the head and the first part.
        assert!(poll(&mut cut).is_pending());
        let Poll::Ready(Some(Err(error))) = poll(&mut cut) else {
            panic!("the end of a body the guest did not finish is an error");
        };
        assert!(error.downcast_ref::<ResponseCut>().is_some());
        assert!(error.to_string().contains("timed out"), "{error}");
        assert!(matches!(poll(&mut cut), Poll::Ready(None)));

        let (mut whole, _rx) = body(full("all"), None);
        assert!(matches!(poll(&mut whole), Poll::Ready(Some(Ok(_)))));
        assert!(matches!(poll(&mut whole), Poll::Ready(None)));
    }

    #[test]
    fn a_body_dropped_before_its_end_cancels_the_guest() {
        let (unread, mut rx) = body(full("never read"), None);
        drop(unread);
        assert_eq!(rx.try_recv(), Ok(()));

        let (mut half, mut rx) = body(full("read"), Some(10));
        assert!(matches!(poll(&mut half), Poll::Ready(Some(Ok(_)))));
        drop(half);
        assert_eq!(rx.try_recv(), Ok(()), "6 of its 10 bytes are still due");
    }

    #[test]
    fn a_body_sent_to_its_end_lets_the_guest_finish() {
        let (mut whole, mut rx) = body(full("all"), None);
        assert!(matches!(poll(&mut whole), Poll::Ready(Some(Ok(_)))));
        assert!(matches!(poll(&mut whole), Poll::Ready(None)));
        drop(whole);
        assert!(rx.try_recv().is_err(), "no cancellation after the end");

        // With a length, the server stops polling once it is sent.
        let (mut sized, mut rx) = body(full("0123456789"), Some(10));
        assert!(matches!(poll(&mut sized), Poll::Ready(Some(Ok(_)))));
        drop(sized);
        assert!(rx.try_recv().is_err(), "all 10 bytes were sent");
    }

    #[test]
    fn a_run_stops_when_cancelled_and_runs_on_when_its_watcher_is_gone() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let (tx, rx) = oneshot::channel();
        let mut watched = std::pin::pin!(until_cancelled(std::future::pending::<()>(), rx));
        assert!(watched.as_mut().poll(&mut cx).is_pending());
        let mut cancel = Cancel(Some(tx));
        drop(std::mem::replace(&mut cancel, Cancel(None)));
        assert_eq!(watched.as_mut().poll(&mut cx), Poll::Ready(None));

        let (tx, rx) = oneshot::channel();
        let mut watched = std::pin::pin!(until_cancelled(std::future::ready(7), rx));
        let mut disarmed = Cancel(Some(tx));
        disarmed.disarm();
        assert_eq!(watched.as_mut().poll(&mut cx), Poll::Ready(Some(7)));
    }
}
