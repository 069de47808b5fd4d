//! What a guest's store holds: WASI contexts, the memory limiter, the
//! outbound-HTTP policy (how a request leaves the node: `outbound.rs`)
//! and the capped stdout/stderr capture.

mod outbound;

pub(crate) use outbound::{OutboundSlots, PER_INVOCATION, PER_TENANT};

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use gust_core::Limits;
use http_body_util::BodyExt;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// Store data for one invocation.
pub(crate) struct Host {
    pub table: ResourceTable,
    pub wasi: WasiCtx,
    pub http: WasiHttpCtx,
    pub outbound: OutboundPolicy,
    pub limiter: MemoryLimiter,
    pub kv: crate::keyvalue::KvState,
    /// What `wasi:config/store` answers (the function's variables).
    pub config: wasmtime_wasi_config::WasiConfigVariables,
    /// Set by the epoch callback when the deadline passed.
    pub timed_out: Option<crate::deadline::Cut>,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// Caps the linear memory of all an instance's memories together and
/// records the peak, which is what the invocation is billed for.
pub(crate) struct MemoryLimiter {
    pub limit: usize,
    pub current: usize,
    pub peak: usize,
    pub exceeded: bool,
}

impl MemoryLimiter {
    pub fn new(limit: u64) -> Self {
        Self {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            current: 0,
            peak: 0,
            exceeded: false,
        }
    }
}

/// Table elements one instance may have; guards host memory, not guest memory.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.current - current.min(self.current) + desired;
        if total > self.limit {
            // `memory.grow` returns -1, as the spec says; most guests then trap.
            self.exceeded = true;
            return Ok(false);
        }
        self.current = total;
        self.peak = self.peak.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Outgoing `wasi:http` requests go only to hosts on the function's
/// allow-list, never to special-purpose addresses unless an admin granted
/// them, and only so many at once (see `outbound.rs`).
pub(crate) struct OutboundPolicy {
    pub limits: Arc<Limits>,
    /// Requests sent (allowed ones), for metering.
    pub requests: u64,
    /// Bytes of their bodies and of the answers', as far as declared
    /// (`content-length`) when they were sent and answered; made at the
    /// first request (most invocations send none).
    pub bytes: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// Where calls to other functions go (`None`: refused).
    pub calls: Option<Arc<dyn crate::invoke::LocalCalls>>,
    /// The tenant the invocation runs for, whose outbound slots it takes.
    pub tenant: gust_core::TenantId,
    /// The invocation's trace, when traces are on.
    pub trace: Option<Arc<dyn crate::invoke::Trace>>,
    /// The node's outbound slots, per tenant.
    pub slots: Arc<OutboundSlots>,
    /// This invocation's requests open now; made at the first request.
    pub open: Option<Arc<std::sync::atomic::AtomicUsize>>,
}

/// Adds an answer's declared size (`content-length`) to the bytes metered.
fn count_answer(bytes: &std::sync::atomic::AtomicU64, headers: &http::HeaderMap) {
    let answered = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    bytes.fetch_add(answered, std::sync::atomic::Ordering::Relaxed);
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<wasmtime_wasi_http::WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let mut request = request;
        let internal = request.uri().host().is_some_and(outbound::is_local_host);
        if internal {
            let Some(calls) = &self.calls else {
                return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
            };
            let span = self.traced(&mut request, true);
            // Counted as an outbound request of the caller; the callee is
            // metered as its own invocation.
            self.requests += 1;
            use http_body::Body as _;
            let sent = request.body().size_hint().exact().unwrap_or(0);
            let bytes = self.bytes.get_or_insert_with(Arc::default).clone();
            bytes.fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
            let request = request.map(|body| {
                body.map_err(|e| Box::new(e) as crate::invoke::BoxError)
                    .boxed_unsync()
            });
            let call = calls.call(request);
            return Box::new(async move {
                let response = call.await.map(|body| {
                    body.map_err(|e| wasmtime_wasi_http::Error::InternalError(Some(e.to_string())))
                        .boxed_unsync()
                });
                answered(span, response.status());
                count_answer(&bytes, response.headers());
                let done: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send> =
                    Box::new(async { Ok(()) });
                Ok((response, done))
            });
        }
        let uri = request.uri();
        let allowed = uri.host().is_some_and(|host| self.limits.allows_host(host));
        if !allowed {
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let open = self.open.get_or_insert_with(Arc::default).clone();
        let slot = match self.slots.take(&self.tenant, &open) {
            Ok(slot) => slot,
            Err(full) => {
                tracing::debug!(tenant = %self.tenant, "outbound request refused: {full}");
                return Box::new(async { Err(wasmtime_wasi_http::Error::ConnectionLimitReached) });
            }
        };
        self.requests += 1;
        let span = self.traced(&mut request, false);
        use http_body::Body as _;
        let sent = request.body().size_hint().exact().unwrap_or(0);
        let bytes = self.bytes.get_or_insert_with(Arc::default).clone();
        bytes.fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
        let limits = self.limits.clone();
        Box::new(async move {
            let sent = outbound::send(request, options, limits, slot).await;
            let (response, rest) = match sent {
                Ok(sent) => sent,
                Err(error) => {
                    if let Some(span) = &span {
                        span.failed();
                    }
                    return Err(error);
                }
            };
            answered(span, response.status());
            count_answer(&bytes, response.headers());
            Ok((response, rest))
        })
    }
}

impl OutboundPolicy {
    /// The bytes sent and answered so far.
    pub fn bytes_counted(&self) -> u64 {
        self.bytes
            .as_ref()
            .map_or(0, |b| b.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// The span of a request about to be sent (none for refused ones, nor
    /// when traces are off); it lives until the answer's head. A call to
    /// another function carries its context, and so does a request to an
    /// outside host when the function opted in; the guest's own trace
    /// headers are replaced then, never merged.
    fn traced(
        &self,
        request: &mut http::Request<wasmtime_wasi_http::WasiBody>,
        internal: bool,
    ) -> Option<Box<dyn crate::invoke::OutboundSpan>> {
        let trace = self.trace.as_ref()?;
        let host = request.uri().host().unwrap_or_default().to_string();
        let span = trace.outbound(request.method(), &host, internal);
        if internal || self.limits.trace_outbound {
            let headers = request.headers_mut();
            headers.remove("traceparent");
            headers.remove("tracestate");
            for (name, value) in &span.headers() {
                headers.insert(name, value.clone());
            }
        }
        Some(span)
    }
}

/// Ends an outbound request's span with the status its answer carries.
fn answered(span: Option<Box<dyn crate::invoke::OutboundSpan>>, status: http::StatusCode) {
    if let Some(span) = span {
        span.answered(status);
    }
}

/// stdout and stderr of one invocation, kept up to a byte budget shared by
/// both streams; what goes past it is dropped (never an error to the guest,
/// which would make logging change a function's behaviour).
#[derive(Clone)]
pub(crate) struct Capture {
    inner: Arc<Mutex<CaptureState>>,
}

struct CaptureState {
    budget: usize,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    truncated: bool,
}

/// What an invocation printed.
pub(crate) struct Captured {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub truncated: bool,
}

impl Capture {
    pub fn new(budget: u64) -> Self {
        Self {
            inner: Arc::new(Mutex::new(CaptureState {
                budget: usize::try_from(budget).unwrap_or(usize::MAX),
                stdout: Vec::new(),
                stderr: Vec::new(),
                truncated: false,
            })),
        }
    }

    pub fn stream(&self, is_stderr: bool) -> CaptureStream {
        CaptureStream {
            capture: self.clone(),
            is_stderr,
        }
    }

    pub fn take(&self) -> Captured {
        let mut state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Captured {
            stdout: std::mem::take(&mut state.stdout),
            stderr: std::mem::take(&mut state.stderr),
            truncated: state.truncated,
        }
    }

    fn write(&self, is_stderr: bool, bytes: &[u8]) {
        let mut state = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let used = state.stdout.len() + state.stderr.len();
        let room = state.budget.saturating_sub(used);
        let kept = bytes.len().min(room);
        if kept < bytes.len() {
            state.truncated = true;
        }
        let target = if is_stderr {
            &mut state.stderr
        } else {
            &mut state.stdout
        };
        target.extend_from_slice(&bytes[..kept]);
    }
}

#[derive(Clone)]
pub(crate) struct CaptureStream {
    capture: Capture,
    is_stderr: bool,
}

impl IsTerminal for CaptureStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CaptureStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for CaptureStream {
    async fn ready(&mut self) {}
}

impl OutputStream for CaptureStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.capture.write(self.is_stderr, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for CaptureStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.capture.write(self.is_stderr, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_keeps_a_shared_budget_and_marks_truncation() {
        let capture = Capture::new(10);
        capture.write(false, b"hello");
        capture.write(true, b"world!!");
        let got = capture.take();
        assert_eq!(got.stdout, b"hello");
        assert_eq!(got.stderr, b"world");
        assert!(got.truncated);
    }

    #[test]
    fn limiter_tracks_peak_across_memories_and_refuses_past_the_limit() {
        let mut limiter = MemoryLimiter::new(100);
        assert!(limiter.memory_growing(0, 40, None).unwrap());
        assert!(limiter.memory_growing(0, 50, None).unwrap());
        assert_eq!(limiter.peak, 90);
        assert!(!limiter.memory_growing(40, 60, None).unwrap());
        assert!(limiter.exceeded);
        assert_eq!(limiter.current, 90);
    }
}
