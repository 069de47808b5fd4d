//! Gust's HTTP data plane: accepts function traffic, resolves each request
//! to the loaded version that serves it, admits it, runs it through the runtime and
//! streams the answer back. It enforces the transport limits (header and
//! body timeouts, body size), stamps every response with its invocation id,
//! writes invocation logs, and drains gracefully on shutdown.
//!
//! Every failure becomes a status code in one place (`error.rs`). The
//! gateway holds no business state: its catalog is derived from the
//! registry and rebuilt from it at will. It must not serve the control API.

mod access;
mod admission;
mod body;
mod calls;
mod canary;
mod catalog;
mod cookies;
mod error;
mod invoker;
mod kv;
mod logs;
mod metering;
mod pipeline;
pub mod scaling;
pub mod trace;
mod webhooks;
mod websocket;

pub use logs::LogConfig;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use gust_events::Events;
use gust_runtime::Runtime;
use gust_store::{BlobStore, Buckets, LogStore, Registry};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::service::service_fn;
use tokio::net::TcpListener;

use crate::catalog::Catalog;
use crate::logs::LogSink;

/// Request header that makes an invocation asynchronous: `Gust-Invocation-Type: Event`.
pub const INVOCATION_TYPE: &str = "gust-invocation-type";
/// Response header: the version that answered.
pub const VERSION_HEADER: http::HeaderName = http::HeaderName::from_static("gust-version");
/// The header every answer carries its invocation id in.
pub(crate) const REQUEST_ID_HEADER: http::HeaderName =
    http::HeaderName::from_static("x-request-id");

/// Sets an answer's `x-request-id` to its invocation id, whose buffer the
/// header takes over (no copy).
pub(crate) fn set_request_id(headers: &mut http::HeaderMap, id: String) {
    if let Ok(value) = http::HeaderValue::from_maybe_shared(bytes::Bytes::from(id)) {
        headers.insert(REQUEST_ID_HEADER, value);
    }
}
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
    /// Spans for traces, and whether clients' trace context is believed.
    pub trace: trace::TraceConfig,
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
            trace: trace::TraceConfig::default(),
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
    /// WebSocket connections open on this node.
    pub websockets_open: u64,
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
    /// Opens webhook sources' signing secrets.
    secrets: Arc<gust_store::SecretBox>,
    /// The WebSocket connections this node holds.
    sockets: Arc<websocket::Sockets>,
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
    /// The live nodes: concurrency limits and tenant quotas are shared
    /// among them.
    pub members: Arc<dyn gust_core::cluster::Membership>,
    /// Requests to the other nodes of a cluster (`None` on one node).
    pub relay: Option<Arc<dyn gust_store::NodeRelay>>,
}

impl Gateway {
    /// Builds the data plane and waits until its catalog holds the
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
            members,
            relay,
        } = services;
        let catalog = Arc::new(Catalog::new(
            secrets.clone(),
            config.tenant_domain.clone(),
            config.public_hosts.clone(),
            members.clone(),
        ));
        let node = Arc::new(admission::NodeSlots::new(
            u32::try_from(config.max_in_flight).unwrap_or(u32::MAX),
            config.memory_budget_bytes,
            members.clone(),
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
                access: access::Access::new(accounts, config.auth, members.clone()),
                config,
                draining: AtomicBool::new(false),
                counters: Counters::default(),
                events,
                buckets,
                meter,
                scaler,
                secrets,
                sockets: Arc::new(websocket::Sockets::new(relay.map(|relay| {
                    websocket::Cluster {
                        relay,
                        members: members.clone(),
                    }
                }))),
            }),
        };
        if let Err(error) = websocket::Sockets::serve_relayed(&gateway.shared).await {
            tracing::error!(%error, "WebSocket commands from other nodes cannot reach this node's connections");
        }
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
    /// Why function `name` of `tenant` may take no new work now (its
    /// tenant's or its own monthly budget spent), or `None`: what event
    /// sources ask before they pull more.
    pub fn out_of_budget(&self, tenant: &gust_core::TenantId, name: &str) -> Option<String> {
        let budget = self
            .shared
            .catalog
            .get(tenant.as_str(), name)
            .and_then(|served| served.live.limits.monthly_budget_micros);
        self.shared
            .access
            .spent(
                tenant,
                budget.map(|budget| (name, budget)),
                self.shared.meter.as_ref(),
                now_ms(),
            )
            .map(|(why, _)| why)
    }

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
            websockets_open: self.shared.sockets.count() as u64,
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
            service_fn(move |req| pipeline::handle(shared.clone(), req))
        };
        let drain = gust_net::serve(listener, config, make_service, shutdown).await;
        self.shared.draining.store(true, Ordering::Relaxed);
        self.shared.sockets.close_all("the server is shutting down");
        tracing::info!("draining in-flight requests");
        let drain_until = std::time::Instant::now() + self.shared.config.drain_timeout;
        if !drain.finish(self.shared.config.drain_timeout).await {
            tracing::warn!("drain timeout passed; closing remaining connections");
        }
        // WebSocket connections run their close invocations and records.
        while self.shared.sockets.count() > 0 && std::time::Instant::now() < drain_until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
