//! Gust's HTTP data plane: accepts function traffic, routes each request to
//! a function's serving version, admits it, runs it through the runtime and
//! streams the answer back. It enforces the transport limits (header and
//! body timeouts, body size), stamps every response with its invocation id,
//! writes invocation logs, and drains gracefully on shutdown.
//!
//! Every failure becomes a status code in one place (`error.rs`). The
//! gateway holds no business state: its routing table is derived from the
//! registry and rebuilt from it at will. It must not serve the control API.

mod access;
mod admission;
mod body;
mod calls;
mod canary;
mod catalog;
mod cookies;
mod error;
mod kv;
mod logs;
mod metering;
pub mod scaling;

pub use logs::LogConfig;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gust_core::delivery::DeliveryPolicy;
use gust_core::usage::Trigger;
use gust_core::{Envelope, LogRecord, Outcome, deploy, path};
use gust_events::{AttemptOutcome, Events, Invoker};
use gust_runtime::{GuestBody, InvocationReport, Runtime};
use gust_store::{BlobStore, Buckets, LogStore, Registry};
use http::{HeaderValue, Request, Response, Uri, header};
use http_body_util::BodyExt as _;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;

use tokio::net::TcpListener;

use crate::body::{BodyFault, LimitedBody};
use crate::catalog::{Catalog, Resolved};
use crate::error::GatewayError;
use crate::logs::LogSink;

/// Request header that makes an invocation asynchronous: `Gust-Invocation-Type: Event`.
pub const INVOCATION_TYPE: &str = "gust-invocation-type";
/// Response header: the version that answered.
pub const VERSION_HEADER: &str = "gust-version";
/// Request header (or cookie) naming a client, so that a split alias
/// always sends the same client to the same version.
pub const CLIENT_HEADER: &str = "gust-client";

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
    /// Σ memory limits of the instances running at once; past it, 503
    /// with `Retry-After`.
    pub memory_budget_bytes: u64,
    /// Largest payload of an asynchronous invocation (an event), in bytes.
    pub max_event_bytes: u64,
    /// Private functions need a token (false only in dev mode).
    pub auth: bool,
    /// `example.dev`: each tenant's functions are also served on its own
    /// origin, `<tenant>.example.dev/<name>/…`.
    pub tenant_domain: Option<String>,
    /// The names clients use for the shared origin (`--public-host`): no
    /// function may claim them, so they always serve every function by
    /// its path.
    pub public_hosts: Vec<String>,
    /// Scale to zero, pre-warming and provisioning.
    pub scale: scaling::ScaleConfig,
    /// Invocation logs: each function's rate, and what its stream keeps.
    pub logs: LogConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(60),
            max_in_flight: 1000,
            memory_budget_bytes: 4 << 30,
            max_event_bytes: 1 << 20,
            auth: true,
            tenant_domain: None,
            public_hosts: Vec::new(),
            scale: scaling::ScaleConfig::default(),
            logs: LogConfig::default(),
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
    node: Arc<admission::NodeSlots>,
    config: GatewayConfig,
    draining: AtomicBool,
    counters: Counters,
    events: Events,
    buckets: Buckets,
    access: access::Access,
    /// The usage ledger (`None`: metering off, for overhead measurements only).
    meter: Option<gust_meter::Meter>,
    scaler: Arc<scaling::Autoscaler>,
}

/// Handle on the log writer, to flush it at shutdown.
pub struct LogWriter {
    task: tokio::task::JoinHandle<()>,
    close: Arc<tokio::sync::Notify>,
}

impl LogWriter {
    /// Writes what is queued and stops the writer (waiting up to `limit`).
    /// Call once the data plane has drained.
    pub async fn flush(self, limit: Duration) {
        self.close.notify_one();
        let _ = tokio::time::timeout(limit, self.task).await;
    }
}

/// What the data plane works with; built by the binary.
pub struct Services {
    pub runtime: Runtime,
    pub registry: Registry,
    pub blobs: Arc<dyn BlobStore>,
    pub logs: Arc<dyn LogStore>,
    pub events: Events,
    pub buckets: Buckets,
    pub accounts: gust_store::Accounts,
    /// The usage ledger; `None` turns metering off (for measurements only).
    pub meter: Option<gust_meter::Meter>,
    /// Opens the functions' secret variables.
    pub secrets: Arc<gust_store::SecretBox>,
}

impl Gateway {
    /// Builds the data plane and waits until its routing table holds the
    /// registry's current functions.
    pub async fn start(services: Services, config: GatewayConfig) -> (Self, LogWriter) {
        let Services {
            runtime,
            registry,
            blobs,
            logs: log_store,
            events,
            buckets,
            accounts,
            meter,
            secrets,
        } = services;
        let catalog = Arc::new(Catalog::new(
            secrets,
            config.tenant_domain.clone(),
            config.public_hosts.clone(),
        ));
        let node = Arc::new(admission::NodeSlots::new(
            u32::try_from(config.max_in_flight).unwrap_or(u32::MAX),
            config.memory_budget_bytes,
        ));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(canary::drive(catalog.clone(), registry.clone()));
        tokio::spawn(catalog::follow_registry(
            catalog.clone(),
            registry,
            runtime.clone(),
            blobs.clone(),
            node.clone(),
            ready_tx,
        ));
        let _ = ready_rx.await;
        let scaler = Arc::new(scaling::Autoscaler::new(config.scale));
        tokio::spawn(scaling::drive(
            scaler.clone(),
            catalog.clone(),
            runtime.clone(),
            blobs.clone(),
        ));
        let close = Arc::new(tokio::sync::Notify::new());
        let (logs, task) = LogSink::start(log_store, close.clone(), config.logs);
        let gateway = Self {
            shared: Arc::new(Shared {
                catalog,
                runtime,
                blobs,
                logs,
                node,
                access: access::Access::new(accounts, config.auth),
                config,
                draining: AtomicBool::new(false),
                counters: Counters::default(),
                events,
                buckets,
                meter,
                scaler,
            }),
        };
        (gateway, LogWriter { task, close })
    }

    /// The registry revision the data plane serves; a control-plane write
    /// at revision R is visible to requests once this reaches R.
    pub fn applied_revision(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.catalog.applied()
    }

    /// Whether `tenant`'s function `name` may set `reserved` of this
    /// node's instances aside (replacing what it reserves now): the
    /// reservations must leave a tenth of the node shared. Else why not,
    /// naming the tenant's own reservations (other tenants' only as a sum).
    pub fn check_reservation(&self, tenant: &str, name: &str, reserved: u32) -> Result<(), String> {
        let node = &self.shared.node;
        let holders = self
            .shared
            .catalog
            .reservations_except(&format!("{tenant}/{name}"));
        let others: u32 = holders.iter().map(|(_, n)| n).sum();
        let prefix = format!("{tenant}/");
        let own: u32 = holders
            .iter()
            .filter(|(key, _)| key.starts_with(&prefix))
            .map(|(_, n)| n)
            .sum();
        let quota = self.shared.access.reserved_concurrency_quota(tenant);
        if u64::from(own) + u64::from(reserved) > quota {
            return Err(format!(
                "quota `reserved_concurrency`: tenant `{tenant}` may reserve {quota} instances in all and reserves {own} already; reserve at most {left}, or ask an admin to raise the quota",
                left = quota.saturating_sub(u64::from(own)),
            ));
        }
        let room = node.limit().saturating_sub(node.unreserved_floor());
        if others.saturating_add(reserved) <= room {
            return Ok(());
        }
        let mut held: Vec<String> = holders
            .iter()
            .filter_map(|(key, n)| Some(format!("{} {n}", key.strip_prefix(&prefix)?)))
            .collect();
        let elsewhere: u32 = holders
            .iter()
            .filter(|(key, _)| !key.starts_with(&prefix))
            .map(|(_, n)| n)
            .sum();
        if elsewhere > 0 {
            held.push(format!("other tenants {elsewhere}"));
        }
        let held = held.join(", ");
        Err(format!(
            "`reserved_concurrency` {reserved} does not fit on this node: it runs {limit} instances at most, {floor} of them must stay shared, and {others} are reserved already ({held}); reserve at most {left}, or start the node with a higher --max-in-flight",
            limit = node.limit(),
            floor = node.unreserved_floor(),
            left = room.saturating_sub(others),
        ))
    }

    /// A function's scaling now and its recent decisions (`gust scale`).
    pub fn scale_status(&self, tenant: &str, name: &str) -> Option<gust_autoscale::ScaleStatus> {
        self.shared
            .scaler
            .status(&self.shared.catalog, tenant, name)
    }

    pub fn scale_stats(&self) -> scaling::ScaleStats {
        self.shared.scaler.stats(&self.shared.catalog)
    }

    pub fn stats(&self) -> GatewayStats {
        let c = &self.shared.counters;
        let by_class = std::array::from_fn(|i| c.by_class[i].load(Ordering::Relaxed));
        GatewayStats {
            requests: c.requests.load(Ordering::Relaxed),
            responses_by_class: by_class,
            in_flight: u64::from(self.shared.node.in_use()),
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
        config: gust_net::ListenConfig,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let shared = self.shared.clone();
        let make_service = move || {
            let shared = shared.clone();
            service_fn(move |req| handle(shared.clone(), req))
        };
        let drain = gust_net::serve(listener, config, make_service, shutdown).await;
        self.shared.draining.store(true, Ordering::Relaxed);
        tracing::info!("draining in-flight requests");
        if !drain.finish(self.shared.config.drain_timeout).await {
            tracing::warn!("drain timeout passed; closing remaining connections");
        }
        Ok(())
    }
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<GatewayBody>, Infallible> {
    let id = shared.events.next_invocation_id();
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
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let (served, alias, tail, scope) = match shared.catalog.resolve(host, path_and_query) {
        Resolved::Found {
            served,
            alias,
            tail,
            scope,
        } => (served, alias, tail, scope),
        Resolved::NoFunction(name) => {
            let error = GatewayError::NoSuchFunction(name.to_string());
            return Err(reject_unread(shared, request, error).await);
        }
        Resolved::NoRoute => {
            return Err(reject_unread(shared, request, GatewayError::NoRoute).await);
        }
    };
    let Some(loaded) = served
        .pick(
            &alias,
            || sticky_key(request.headers()),
            || deploy::fnv1a(id.as_bytes()),
        )
        .cloned()
    else {
        // A private function's aliases are its own business: a caller who
        // may not call it learns nothing, not even that it exists.
        let alias = alias.into_owned();
        let mut request = request;
        let error = match shared.access.authorize(&served.live, request.headers_mut()) {
            Ok(()) => GatewayError::NoSuchAlias {
                function: served.live.name.to_string(),
                alias,
            },
            Err(hidden) => hidden,
        };
        return Err(reject_unread(shared, request, error).await);
    };
    // The path the function sees; the request is moved below.
    let guest_path = path::guest_path(tail).into_owned();
    let other_alias = (alias != deploy::LIVE).then(|| alias.into_owned());
    let mut request = request;
    let admitted = shared
        .access
        .authorize(&loaded, request.headers_mut())
        .and_then(|()| {
            let budget = loaded.limits.monthly_budget_micros;
            let function = budget.map(|budget| (loaded.name.as_str(), budget));
            shared
                .access
                .admit(&loaded.tenant, function, shared.meter.as_ref())
        });
    if let Err(error) = admitted {
        return Err(reject_unread(shared, request, error).await);
    }
    let declared_length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());

    let asynchronous = request
        .headers()
        .get(INVOCATION_TYPE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"event"));
    if asynchronous {
        if let Some(alias) = other_alias {
            let error = GatewayError::EventToAlias { alias };
            return Err(reject_unread(shared, request, error).await);
        }
        return submit_event(shared, &loaded, request, guest_path, declared_length, id).await;
    }

    let limits = loaded.limits.clone();
    if declared_length.is_some_and(|len| len > limits.max_body_bytes) {
        let error = GatewayError::BodyTooLarge {
            limit: limits.max_body_bytes,
        };
        return Err(reject_unread(shared, request, error).await);
    }
    // The guest sees its own path, and the host the client asked for.
    let authority = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let uri: Uri = format!("http://{authority}{guest_path}")
        .parse()
        .map_err(|_| GatewayError::BadRequest("the request's host or path is not a valid URI"))?;
    let (mut parts, body) = request.into_parts();
    // The client's URI, kept for the cookie scope (its path chose the function).
    let asked = std::mem::replace(&mut parts.uri, uri);
    let fault = BodyFault::default();
    let body = LimitedBody::new(
        body,
        limits.max_body_bytes,
        shared.config.body_idle_timeout,
        fault.clone(),
    );
    let attempt = metering::Attempt {
        id,
        attempt: 1,
        trigger: Trigger::Http,
        request_bytes: declared_length.unwrap_or(0),
        fault: Some(fault.clone()),
        depth: 0,
    };
    let result = run(shared, &loaded, Request::from_parts(parts, body), attempt)
        .await
        .map(|mut response| {
            response
                .headers_mut()
                .insert(VERSION_HEADER, HeaderValue::from(loaded.version));
            let path = asked.path_and_query().map_or("/", |pq| pq.as_str());
            confine_cookies(response.headers_mut(), scope, path);
            response
        });
    if fault.too_large() || fault.stalled() {
        // The gateway answers for the guest. Its own answer is read and
        // thrown away, so that it runs to its end: dropping the body would
        // cancel it as if the client had gone.
        if let Ok(response) = result {
            tokio::spawn(discard(response.into_body()));
        }
        if fault.too_large() {
            return Err(GatewayError::BodyTooLarge {
                limit: limits.max_body_bytes,
            });
        }
        return Err(GatewayError::BodyStalled);
    }
    if let Err(GatewayError::OverShare) = &result {
        tokio::time::sleep(admission::OVER_SHARE_DELAY).await;
    }
    result
}

/// Reads a response body to its end (or its error) and drops what it carries.
async fn discard(mut body: GatewayBody) {
    while let Some(Ok(_)) = body.frame().await {}
}

/// Rewrites the guest's `Set-Cookie` headers so that none reaches beyond
/// what the function owns (see `cookies`).
fn confine_cookies(headers: &mut http::HeaderMap, scope: cookies::CookieScope, path: &str) {
    if matches!(scope, cookies::CookieScope::SharedOrigin { .. }) {
        for name in cookies::ORIGIN_WIDE {
            headers.remove(name);
        }
    }
    if !headers.contains_key(header::SET_COOKIE) {
        return;
    }
    let confined: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|value| {
            let text = value.to_str().ok()?;
            match cookies::confine(text, scope, path) {
                None => Some(value.clone()),
                Some(text) => HeaderValue::from_str(&text).ok(),
            }
        })
        .collect();
    headers.remove(header::SET_COOKIE);
    for value in confined {
        headers.append(header::SET_COOKIE, value);
    }
}

/// A client's own key for sticky splits: the `gust-client` header, else
/// the `gust-client` cookie.
fn sticky_key(headers: &http::HeaderMap) -> Option<Vec<u8>> {
    if let Some(value) = headers.get(CLIENT_HEADER) {
        return Some(value.as_bytes().to_vec());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == CLIENT_HEADER).then(|| value.as_bytes().to_vec())
        })
}

enum CappedRead {
    TooLarge,
    Stalled,
}

/// Reads a whole body of at most `cap` bytes. Past the cap it goes on
/// reading and discarding (up to a bound) so that the client, still
/// sending, gets the 413 rather than a reset connection.
async fn read_capped(mut body: Incoming, cap: u64, idle: Duration) -> Result<Bytes, CappedRead> {
    const DISCARD_AT_MOST: u64 = 64 << 20;
    let mut kept = Vec::new();
    let mut seen = 0u64;
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(CappedRead::Stalled),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %e, "request body failed");
                return Err(CappedRead::Stalled);
            }
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    seen += data.len() as u64;
                    if seen <= cap {
                        kept.extend_from_slice(data);
                    } else if seen > DISCARD_AT_MOST {
                        break;
                    }
                }
            }
        }
    }
    if seen > cap {
        return Err(CappedRead::TooLarge);
    }
    Ok(Bytes::from(kept))
}

/// Refuses a request without reading its body for the function. A client
/// that asked `Expect: 100-continue` has sent nothing yet and gets the
/// answer at once; any other is already sending, so the body is read and
/// thrown away first (up to a bound): closing on unread data would reset
/// the connection and the client would never see why.
async fn reject_unread(
    shared: &Shared,
    request: Request<Incoming>,
    error: GatewayError,
) -> GatewayError {
    let waits_for_continue = request
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if waits_for_continue {
        return error;
    }
    let _ = read_capped(request.into_body(), 0, shared.config.body_idle_timeout).await;
    error
}

/// Admits a request and runs it in a fresh instance of the loaded version's
/// function. Every attempt that reaches here gets one usage record:
/// refused (no capacity, a quota, a load failure) or run.
async fn run<B>(
    shared: &Arc<Shared>,
    loaded: &Arc<catalog::Loaded>,
    request: Request<B>,
    attempt: metering::Attempt<'_>,
) -> Result<Response<GatewayBody>, GatewayError>
where
    B: http_body::Body<Data = Bytes, Error = GuestBody> + Send + 'static,
{
    let started = std::time::Instant::now();
    let id = attempt.id;
    let fault = attempt.fault.clone();
    let depth = attempt.depth;
    // Recorded (not run, 499) if the request goes away before its guest starts.
    let admitting = std::sync::Mutex::new(metering::Admitting::new(
        shared
            .meter
            .as_ref()
            .map(|meter| (meter, metering::start_record(loaded, &attempt))),
    ));
    let refuse = |error: GatewayError| {
        admitting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .refuse(error.status_code().as_u16());
        error
    };
    // The function's own limit first (a request may wait for it), then
    // the node's and the tenant's (never waited for).
    let function_permit = match &loaded.gate {
        Some(gate) => Some(
            gate.enter(
                loaded.name.as_str(),
                &loaded.limits,
                attempt.trigger == Trigger::Http,
            )
            .await
            .map_err(refuse)?,
        ),
        None => None,
    };
    let tenant_run = shared.access.admit_run(&loaded.tenant).map_err(refuse)?;
    let on_reservation = loaded.limits.reserved_concurrency.is_some() && loaded.is_live();
    let permit = shared
        .node
        .take(
            (!on_reservation).then_some(&tenant_run.share),
            admission::memory_reservation(loaded.limits.memory_bytes),
        )
        .map_err(refuse)?;
    let tenant_permit = tenant_run.permit;
    let running = scaling::Running::start(&loaded.activity);
    let (prepared, cold) = loaded
        .prepared(&shared.runtime, shared.blobs.as_ref())
        .await
        .map_err(|error| {
            refuse(GatewayError::Load {
                function: loaded.name.to_string(),
                error,
            })
        })?;
    if cold {
        shared.scaler.cold_start(loaded);
    }
    let kv = Arc::new(kv::TenantKv {
        buckets: shared.buckets.clone(),
        tenant: loaded.tenant.clone(),
    });
    // The attempt's open frame is in the journal before the guest runs:
    // if the server dies next, the attempt is recorded as aborted.
    let usage = admitting
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .admitted();
    let draft = usage.map(|(meter, record)| {
        meter.open(&record);
        Arc::new(metering::Draft::new(meter.clone(), record))
    });
    let done = {
        let shared = shared.clone();
        let loaded = loaded.clone();
        let id = id.to_string();
        let draft = draft.clone();
        move |report: InvocationReport| {
            drop(permit);
            drop(tenant_permit);
            drop(function_permit);
            drop(running);
            if let Some(draft) = &draft {
                draft.report(&report);
            }
            record(&shared, &loaded, &id, report);
        }
    };
    let unanswered = metering::Unanswered::new(draft.clone());
    let result = shared
        .runtime
        .invoke(
            prepared,
            gust_runtime::Guest {
                limits: loaded.limits.clone(),
                kv,
                vars: loaded.vars.clone(),
                calls: Some(Arc::new(calls::TenantCalls {
                    shared: shared.clone(),
                    tenant: loaded.tenant.clone(),
                    depth: depth + 1,
                })),
                tenant: loaded.tenant.clone(),
            },
            request,
            done,
        )
        .await
        .map_err(|error| GatewayError::Invoke {
            function: loaded.name.to_string(),
            error,
        });
    unanswered.answered();
    let status = match &result {
        Ok(response) => fault
            .as_ref()
            .and_then(|f| f.status())
            .unwrap_or_else(|| response.status().as_u16()),
        Err(error) => error.status_code().as_u16(),
    };
    loaded
        .health
        .record(status, started.elapsed().as_micros() as u64);
    match (draft, result) {
        (Some(draft), Ok(response)) => {
            // A body over its limit or stalled: the caller answers 413/408.
            draft.status(status);
            Ok(response.map(|body| metering::Counted::new(body, draft).boxed_unsync()))
        }
        (Some(draft), Err(error)) => {
            draft.status(status);
            draft.body_sent(0);
            Err(error)
        }
        (None, result) => result,
    }
}

/// Accepts a request as an event for later delivery: `202` once it is
/// durably queued. CloudEvents attributes come from `ce-*` headers when
/// the client sends them (binary mode), else Gust fills them in.
async fn submit_event(
    shared: &Arc<Shared>,
    loaded: &Arc<catalog::Loaded>,
    request: Request<Incoming>,
    path: String,
    declared_length: Option<u64>,
    id: &str,
) -> Result<Response<GatewayBody>, GatewayError> {
    let backlog = shared.events.backlog(&loaded.tenant);
    if let Err(error) = shared.access.admit_event(&loaded.tenant, backlog) {
        return Err(reject_unread(shared, request, error).await);
    }
    // An event is a request to the function too: its body limit applies.
    let limit = shared
        .config
        .max_event_bytes
        .min(loaded.limits.max_body_bytes);
    if declared_length.is_some_and(|len| len > limit) {
        return Err(GatewayError::EventTooLarge { limit });
    }
    let (parts, body) = request.into_parts();
    let data = read_capped(body, limit, shared.config.body_idle_timeout)
        .await
        .map_err(|fault| match fault {
            CappedRead::TooLarge => GatewayError::EventTooLarge { limit },
            CappedRead::Stalled => GatewayError::BodyStalled,
        })?;
    let envelope = Events::envelope(
        loaded.tenant.clone(),
        loaded.name.clone(),
        id.to_string(),
        path,
        |name| parts.headers.get(name).and_then(|v| v.to_str().ok()),
        data.to_vec(),
    );
    shared.events.submit(envelope).await.map_err(|e| match e {
        gust_events::EventsError::Store(full @ gust_store::StoreError::DiskFull { .. }) => {
            GatewayError::DiskFull(format!("the event was not accepted: {full}"))
        }
        e => {
            tracing::error!(invocation_id = id, error = %e, "could not queue an event");
            GatewayError::EventNotStored
        }
    })?;
    let body = format!("{{\"invocation_id\":\"{id}\",\"state\":\"queued\"}}\n");
    let mut response = Response::new(
        http_body_util::Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = http::StatusCode::ACCEPTED;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

#[async_trait::async_trait]
impl Invoker for Gateway {
    async fn deliver(&self, envelope: &Envelope, attempt: u32) -> AttemptOutcome {
        let shared = &self.shared;
        let id = envelope.invocation_id.as_str();
        let served = shared
            .catalog
            .get(envelope.tenant.as_str(), envelope.function.as_str());
        // Events go to `live`, split as its requests are.
        let random = || deploy::fnv1a(format!("{id}#{attempt}").as_bytes());
        let Some(loaded) = served
            .as_ref()
            .and_then(|s| s.pick(deploy::LIVE, || None, random).cloned())
        else {
            return AttemptOutcome {
                status: 404,
                error: Some(format!("function `{}` no longer exists", envelope.function)),
                body: Bytes::new(),
                not_run: false,
            };
        };
        let mut request = Request::builder()
            .method(http::Method::POST)
            .uri(format!("http://localhost{}", envelope.path))
            .header("ce-specversion", "1.0")
            .header("ce-id", &envelope.id)
            .header("ce-source", &envelope.source)
            .header("ce-type", &envelope.ty)
            .header("ce-time", gust_core::time::rfc3339(envelope.time_ms))
            .header("gust-invocation-id", id)
            .header("gust-attempt", attempt.to_string());
        if let Some(subject) = &envelope.subject {
            request = request.header("ce-subject", subject);
        }
        if let Some(content_type) = &envelope.content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let body = http_body_util::Full::new(Bytes::from(envelope.data.clone()))
            .map_err(|never: Infallible| match never {});
        let request = match request.body(body) {
            Ok(request) => request,
            Err(e) => {
                return AttemptOutcome {
                    status: 400,
                    error: Some(format!("the event's attributes are not valid headers: {e}")),
                    body: Bytes::new(),
                    not_run: false,
                };
            }
        };
        shared.counters.requests.fetch_add(1, Ordering::Relaxed);
        let metered = metering::Attempt {
            id,
            attempt,
            trigger: Trigger::Event,
            request_bytes: envelope.data.len() as u64,
            fault: None,
            depth: 0,
        };
        match run(shared, &loaded, request, metered).await {
            Ok(response) => {
                let status = response.status().as_u16();
                // The attempt is over when the function has sent its whole answer.
                match response.into_body().collect().await {
                    Ok(collected) => AttemptOutcome {
                        status,
                        error: None,
                        body: collected.to_bytes(),
                        not_run: false,
                    },
                    Err(e) => AttemptOutcome {
                        status: 500,
                        error: Some(format!("the response body failed: {e}")),
                        body: Bytes::new(),
                        not_run: false,
                    },
                }
            }
            Err(error) => {
                // No room to run it now is not a failed attempt: the event
                // waits in its queue until capacity frees.
                let not_run = matches!(
                    error,
                    GatewayError::Overloaded
                        | GatewayError::OverShare
                        | GatewayError::MemoryFull
                        | GatewayError::Draining
                        | GatewayError::QuotaExceeded { .. }
                );
                let (status, reason) = error.describe(id);
                AttemptOutcome {
                    status: status.as_u16(),
                    error: Some(reason),
                    body: Bytes::new(),
                    not_run,
                }
            }
        }
    }

    fn policy(
        &self,
        tenant: &gust_core::TenantId,
        function: &gust_core::FunctionName,
    ) -> Option<(DeliveryPolicy, u64)> {
        self.shared
            .catalog
            .get(tenant.as_str(), function.as_str())
            .map(|s| (s.live.delivery.clone(), s.live.limits.timeout_ms))
    }
}

/// Counts a finished invocation and logs what it printed (or how it failed).
fn record(shared: &Shared, loaded: &catalog::Loaded, id: &str, report: InvocationReport) {
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
        tracing::debug!(function = %loaded.name, invocation_id = id, %message, "invocation failed");
    }
    let record = LogRecord {
        invocation_id: id.to_string(),
        time_ms: now_ms(),
        version: loaded.version,
        outcome: report.outcome,
        duration_us: report.duration.as_micros() as u64,
        peak_memory_bytes: report.peak_memory_bytes,
        stdout: String::from_utf8_lossy(&report.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&report.stderr).into_owned(),
        truncated: report.output_truncated,
    };
    shared.logs.record(&loaded.tenant, &loaded.name, &record);
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
