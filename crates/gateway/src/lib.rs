//! Gust's HTTP data plane: accepts function traffic, routes each request to
//! a function's serving version, admits it, runs it through the runtime and
//! streams the answer back. It enforces the transport limits (header and
//! body timeouts, body size), stamps every response with its invocation id,
//! writes invocation logs, and drains gracefully on shutdown.
//!
//! Every failure becomes a status code in one place (`error.rs`). The
//! gateway holds no business state: its routing table is derived from the
//! registry and rebuilt from it at will. It must not serve the control API.

mod body;
mod catalog;
mod error;
mod logs;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gust_core::{LogRecord, Outcome, route};
use gust_runtime::{InvocationReport, Runtime};
use gust_store::{BlobStore, LogStore, Registry};
use http::{HeaderValue, Request, Response, Uri, header};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::body::{BodyFault, LimitedBody};
use crate::catalog::Catalog;
use crate::error::GatewayError;
use crate::logs::LogSink;

/// Body type of every data-plane response.
pub type GatewayBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Transport limits and shutdown behaviour.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Time a client has to send a request's headers (slowloris guard).
    pub header_read_timeout: Duration,
    /// Longest pause allowed between two pieces of a request body.
    pub body_idle_timeout: Duration,
    /// How long shutdown waits for in-flight requests before giving up.
    pub drain_timeout: Duration,
    /// Invocations admitted at once; more get 503 with `Retry-After`.
    pub max_in_flight: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(60),
            max_in_flight: 1000,
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct GatewayStats {
    pub requests: u64,
    /// Responses by status class: index 0 is 1xx … index 4 is 5xx.
    pub responses_by_class: [u64; 5],
    pub in_flight: u64,
    pub invocations_completed: u64,
    pub invocations_failed: u64,
    pub logs_dropped: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    by_class: [AtomicU64; 5],
    completed: AtomicU64,
    failed: AtomicU64,
}

/// The data plane. Clone to share; [`Gateway::serve`] runs it on a listener.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

struct Shared {
    catalog: Arc<Catalog>,
    runtime: Runtime,
    blobs: Arc<dyn BlobStore>,
    logs: LogSink,
    admission: Arc<Semaphore>,
    config: GatewayConfig,
    draining: AtomicBool,
    counters: Counters,
    ids: InvocationIds,
}

/// Handle on the log writer, to flush it at shutdown.
pub struct LogWriter(tokio::task::JoinHandle<()>);

impl LogWriter {
    /// Waits (up to `limit`) for queued logs to be written. Call after every
    /// [`Gateway`] clone is dropped.
    pub async fn flush(self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.0).await;
    }
}

impl Gateway {
    /// Builds the data plane and waits until its routing table holds the
    /// registry's current functions.
    pub async fn start(
        runtime: Runtime,
        registry: Registry,
        blobs: Arc<dyn BlobStore>,
        log_store: Arc<dyn LogStore>,
        config: GatewayConfig,
    ) -> (Self, LogWriter) {
        let catalog = Arc::new(Catalog::default());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(catalog::follow_registry(
            catalog.clone(),
            registry,
            runtime.clone(),
            blobs.clone(),
            ready_tx,
        ));
        let _ = ready_rx.await;
        let (logs, writer) = LogSink::start(log_store);
        let gateway = Self {
            shared: Arc::new(Shared {
                catalog,
                runtime,
                blobs,
                logs,
                admission: Arc::new(Semaphore::new(config.max_in_flight)),
                config,
                draining: AtomicBool::new(false),
                counters: Counters::default(),
                ids: InvocationIds::new(),
            }),
        };
        (gateway, LogWriter(writer))
    }

    pub fn stats(&self) -> GatewayStats {
        let c = &self.shared.counters;
        let by_class = std::array::from_fn(|i| c.by_class[i].load(Ordering::Relaxed));
        GatewayStats {
            requests: c.requests.load(Ordering::Relaxed),
            responses_by_class: by_class,
            in_flight: (self.shared.config.max_in_flight
                - self.shared.admission.available_permits()) as u64,
            invocations_completed: c.completed.load(Ordering::Relaxed),
            invocations_failed: c.failed.load(Ordering::Relaxed),
            logs_dropped: self.shared.logs.dropped.load(Ordering::Relaxed),
        }
    }

    /// Serves function traffic on `listener` until `shutdown` resolves, then
    /// stops accepting, lets in-flight requests finish (up to the drain
    /// timeout) and returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let graceful = GracefulShutdown::new();
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.shared.config.header_read_timeout)
            .keep_alive(true);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, _) = match accepted {
                        Ok(conn) => conn,
                        Err(e) => {
                            // Out of file descriptors and the like: back off, keep serving.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let shared = self.shared.clone();
                    let service = service_fn(move |req| handle(shared.clone(), req));
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
                }
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        self.shared.draining.store(true, Ordering::Relaxed);
        tracing::info!("draining in-flight requests");
        if tokio::time::timeout(self.shared.config.drain_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("drain timeout passed; closing remaining connections");
        }
        Ok(())
    }
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<GatewayBody>, Infallible> {
    let id = shared.ids.next();
    shared.counters.requests.fetch_add(1, Ordering::Relaxed);
    let mut response = match invoke(&shared, request, &id).await {
        Ok(response) => response,
        Err(error) => error.into_response(&id),
    };
    let class = (response.status().as_u16() / 100).clamp(1, 5) as usize - 1;
    shared.counters.by_class[class].fetch_add(1, Ordering::Relaxed);
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    Ok(response)
}

async fn invoke(
    shared: &Arc<Shared>,
    request: Request<Incoming>,
    id: &str,
) -> Result<Response<GatewayBody>, GatewayError> {
    if shared.draining.load(Ordering::Relaxed) {
        return Err(GatewayError::Draining);
    }
    let path_and_query = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let (name, tail) = route::split_function_path(path_and_query).ok_or(GatewayError::NoRoute)?;
    let route = shared
        .catalog
        .get(name)
        .ok_or_else(|| GatewayError::NoSuchFunction(name.to_string()))?;
    let limits = route.limits.clone();

    let declared_length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_length.is_some_and(|len| len > limits.max_body_bytes) {
        return Err(GatewayError::BodyTooLarge {
            limit: limits.max_body_bytes,
        });
    }

    let permit = shared
        .admission
        .clone()
        .try_acquire_owned()
        .map_err(|_| GatewayError::Overloaded)?;

    let prepared = route
        .prepared(&shared.runtime, shared.blobs.as_ref())
        .await
        .map_err(|error| GatewayError::Load {
            function: route.name.to_string(),
            error,
        })?;

    // The guest sees its own path, and the host the client asked for.
    let authority = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let uri: Uri = format!("http://{authority}{}", route::guest_path(tail))
        .parse()
        .map_err(|_| GatewayError::BadRequest("the request's host or path is not a valid URI"))?;
    let (mut parts, body) = request.into_parts();
    parts.uri = uri;
    let fault = BodyFault::default();
    let body = LimitedBody::new(
        body,
        limits.max_body_bytes,
        shared.config.body_idle_timeout,
        fault.clone(),
    );
    let guest_request = Request::from_parts(parts, body);

    let done = {
        let shared = shared.clone();
        let route = route.clone();
        let id = id.to_string();
        move |report: InvocationReport| {
            drop(permit);
            record(&shared, &route, &id, report);
        }
    };
    let result = shared
        .runtime
        .invoke(prepared, limits.clone(), guest_request, done)
        .await;
    if fault.too_large() {
        return Err(GatewayError::BodyTooLarge {
            limit: limits.max_body_bytes,
        });
    }
    if fault.stalled() {
        return Err(GatewayError::BodyStalled);
    }
    result.map_err(|error| GatewayError::Invoke {
        function: route.name.to_string(),
        error,
    })
}

/// Counts a finished invocation and logs what it printed (or how it failed).
fn record(shared: &Shared, route: &catalog::Route, id: &str, report: InvocationReport) {
    let success = report.outcome.is_success();
    let counter = if success {
        &shared.counters.completed
    } else {
        &shared.counters.failed
    };
    counter.fetch_add(1, Ordering::Relaxed);
    if success && report.stdout.is_empty() && report.stderr.is_empty() {
        return;
    }
    if let Outcome::Trapped { message } | Outcome::Failed { message } = &report.outcome {
        tracing::debug!(function = %route.name, invocation_id = id, %message, "invocation failed");
    }
    let record = LogRecord {
        invocation_id: id.to_string(),
        time_ms: now_ms(),
        version: route.version,
        outcome: report.outcome,
        duration_us: report.duration.as_micros() as u64,
        peak_memory_bytes: report.peak_memory_bytes,
        stdout: String::from_utf8_lossy(&report.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&report.stderr).into_owned(),
        truncated: report.output_truncated,
    };
    shared.logs.record(&route.tenant, &route.name, &record);
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Invocation ids: the process start time and a counter, in hex. Unique
/// across restarts of one node and sortable by start within a run.
struct InvocationIds {
    start_ms: u64,
    next: AtomicU64,
}

impl InvocationIds {
    fn new() -> Self {
        Self {
            start_ms: now_ms(),
            next: AtomicU64::new(0),
        }
    }

    fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{:011x}{:09x}", self.start_ms, n)
    }
}
