//! `gust up`: the composition root of a single-node platform.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use gust_api::ApiState;
use gust_events::{ChangeFeed, Dispatcher, Events, Scheduler};
use gust_gateway::{Gateway, GatewayConfig, Services};
use gust_runtime::{Runtime, RuntimeConfig};
use gust_store::{
    Accounts, BlobStore, Buckets, DataStore, LogStore, MetaStore, QueueStore, Registry,
};
use gust_store_embedded::{EmbeddedStore, StoreOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  gust up
  gust up --data-dir /var/lib/gust --listen 0.0.0.0:8080 --api-listen 127.0.0.1:8081
  gust up --cluster nats://n1:4222,nats://n2:4222,nats://n3:4222 --node-id a --cluster-key cluster.key")]
pub struct UpArgs {
    /// Where functions, artifacts and logs are kept.
    #[arg(long, default_value = "./.gust", env = "GUST_DATA_DIR")]
    data_dir: PathBuf,
    /// Address for function traffic (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Address for the control API; keep it private.
    #[arg(long, default_value = "127.0.0.1:8081")]
    api_listen: SocketAddr,
    /// Largest component a deploy accepts, in bytes.
    #[arg(long, default_value_t = 50 << 20)]
    max_upload_bytes: usize,
    /// Invocations running at once before new ones get 503. Default: what
    /// the machine holds (instance pool slots, at most 1000, within three
    /// quarters of its available memory at 8 MiB per running instance).
    #[arg(long)]
    max_in_flight: Option<u32>,
    /// Serve each tenant's functions on an origin of its own,
    /// `<tenant>.DOMAIN/<name>/…` (point a wildcard DNS record at this
    /// node), so no two tenants share cookies or storage in a browser.
    #[arg(long, value_name = "DOMAIN")]
    tenant_domain: Option<String>,
    /// A name clients use for the data plane's shared origin (behind a
    /// proxy, say `gust.example.com`); repeat for several. No function may
    /// claim it, so it always serves every function by its path.
    #[arg(long, value_name = "HOST")]
    public_host: Vec<String>,
    /// MiB that running instances may reserve at once (each its function's
    /// memory limit) before new ones get 503. Default: three quarters of
    /// the memory available at start.
    #[arg(long)]
    memory_budget_mb: Option<u64>,
    /// Seconds shutdown waits for in-flight requests.
    #[arg(long, default_value_t = 60)]
    drain_timeout: u64,
    /// Milliseconds a client has to send a request's headers.
    #[arg(long, default_value_t = 10_000)]
    header_read_timeout_ms: u64,
    /// Bytes a request's line and headers may take together, on both
    /// listeners; past it the client gets 431.
    #[arg(long, default_value_t = gust_net::DEFAULT_MAX_HEADER_BYTES)]
    max_header_bytes: usize,
    /// Connections the function listener holds at once; past it the
    /// idlest is closed (a new one refused when all are busy). Default:
    /// three quarters of the file descriptors left after a reserve of an
    /// eighth (at least 256) for storage and the control API, at most 10000.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Connections the function listener holds from one client address
    /// (default: 1000, within --max-connections).
    #[arg(long)]
    max_connections_per_address: Option<usize>,
    /// Connections the control API holds at once (default: a quarter of
    /// what the reserve leaves, at most 1000).
    #[arg(long)]
    api_max_connections: Option<usize>,
    /// Milliseconds a request body may pause between two pieces.
    #[arg(long, default_value_t = 30_000)]
    body_idle_timeout_ms: u64,
    /// Serve both listeners over TLS with this certificate chain (PEM, leaf first).
    #[arg(long, requires = "tls_key", env = "GUST_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert", env = "GUST_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Dev mode: no tokens, every function public. Only on loopback addresses.
    #[arg(long)]
    pub dev: bool,
    /// Mint a new admin token at start (for a lost one) and print it.
    #[arg(long)]
    pub new_admin_token: bool,
    /// Largest payload of an asynchronous invocation, in bytes (and of a
    /// message an event source takes from its broker).
    #[arg(long, default_value_t = 1 << 20)]
    max_event_bytes: u64,
    /// Event sources of every tenant may connect to private and loopback
    /// addresses (by default only the default tenant's may: a tenant's
    /// source could otherwise reach this machine's or network's services).
    #[arg(long)]
    sources_private: bool,
    /// Compiling one uploaded component may take this long (wall clock)
    /// before the deploy is refused: a compile bomb costs no more.
    #[arg(long, default_value_t = 60_000)]
    compile_timeout_ms: u64,
    /// Address space one compilation may use (it runs in a child process).
    #[arg(long, default_value_t = 2 << 30)]
    compile_memory_bytes: u64,
    /// Measurement only: run without the usage ledger (to measure what
    /// metering costs). Invocations then have no usage records.
    #[arg(long, hide = true)]
    no_metering: bool,
    /// Writes are refused (507) while the disk under the data directory has
    /// less free space than this, so the database never fills up mid-write;
    /// they resume once space frees.
    #[arg(long, default_value_t = 64 << 20)]
    min_free_disk_bytes: u64,
    /// Tuning: bytes of each instance's memory kept resident between uses
    /// of a pool slot (reset with memset instead of madvise).
    #[arg(long, default_value_t = 2 << 20)]
    memory_keep_resident_bytes: usize,
    /// How often each function's scaling is decided (scale to zero,
    /// pre-warming, provisioning), in ms.
    #[arg(long, default_value_t = 1000)]
    scale_tick_ms: u64,
    /// Once a function's keep-alive lets it go, it stays in memory this
    /// much longer (ms) before it is scaled to zero.
    #[arg(long, default_value_t = 0)]
    scale_to_zero_grace_ms: u64,
    /// The learned keep-alive's histogram bin (ms; 240 bins): time
    /// compression for trace replays.
    #[arg(long, default_value_t = 60_000)]
    learned_bin_ms: u64,
    /// The learned keep-alive's fixed keep-alive while a function has too
    /// little history (ms).
    #[arg(long, default_value_t = 600_000)]
    learned_fallback_ms: u64,
    /// The learned keep-alive weighs a cold start as this long in memory
    /// (ms): higher, fewer cold starts; lower, less memory.
    #[arg(long, default_value_t = 720_000)]
    learned_cold_start_weight_ms: u64,
    /// Bytes of invocation logs one function may write per second, on
    /// average; past it (and its burst) log records are dropped and counted.
    #[arg(long, default_value_t = 64 << 10)]
    log_rate_bytes: u64,
    /// Bytes of logs one function may write at once above its rate.
    #[arg(long, default_value_t = 1 << 20)]
    log_burst_bytes: u64,
    /// Bytes of logs kept per function; the oldest go first.
    #[arg(long, default_value_t = 16 << 20)]
    log_max_bytes: u64,
    /// Seconds invocation logs are kept (default 7 days).
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    log_max_age_secs: u64,
    /// How long the status of a finished asynchronous invocation is kept
    /// (`0s`: forever).
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = retention_age)]
    retain_statuses: Duration,
    /// How long a dead letter waits for a redrive before it is removed.
    #[arg(long, value_name = "DURATION", default_value = "14d", value_parser = retention_age)]
    retain_dead_letters: Duration,
    /// How long audit log entries are kept.
    #[arg(long, value_name = "DURATION", default_value = "365d", value_parser = retention_age)]
    retain_audit: Duration,
    /// How long usage records (billing) are kept.
    #[arg(long, value_name = "DURATION", default_value = "400d", value_parser = retention_age)]
    retain_usage: Duration,
    /// Versions kept per function besides those an alias serves or may
    /// roll back to (0: all); older ones are removed with their components.
    #[arg(long, value_name = "N", default_value_t = 100)]
    retain_versions: usize,
    /// How often retention removes what is past its age.
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = retention_age)]
    retention_every: Duration,
    /// Export traces over OTLP/HTTP to this collector (its base URL, e.g.
    /// `http://127.0.0.1:4318`; spans go to `/v1/traces`). The standard
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` and other `OTEL_*` variables work too.
    /// Off when neither is set.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Whether a request's own `traceparent` makes its invocation part of
    /// the client's trace (`trust`), or every request from outside starts a
    /// new trace (`ignore`); the same for an event sent through the control
    /// API with a `traceparent`. Calls between functions always keep theirs.
    #[arg(long, value_enum, default_value_t = ClientTraceContext::Trust)]
    trace_client_context: ClientTraceContext,
    #[command(flatten)]
    cluster: crate::cluster_mode::ClusterArgs,
}

/// What `--trace-client-context` does with a client's trace context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ClientTraceContext {
    Trust,
    Ignore,
}

/// A retention age or period: the CLI's one duration syntax.
fn retention_age(text: &str) -> Result<Duration, String> {
    gust_core::time::parse_duration_ms(text)
        .map(Duration::from_millis)
        .map_err(|e| e.to_string())
}

/// The machine's available memory in bytes, if the kernel says.
fn available_memory() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
}

/// What running instances may reserve: three quarters of the available
/// memory (4 GiB where it cannot be read).
fn node_memory_budget(args: &UpArgs) -> u64 {
    match args.memory_budget_mb {
        Some(mb) => mb.max(1) << 20,
        None => available_memory().map_or(4 << 30, |bytes| bytes / 4 * 3),
    }
}

/// The node's limit on running instances: its pool slots, within three
/// quarters of the memory available.
fn node_instances(args: &UpArgs) -> u32 {
    const PER_INSTANCE: u64 = 8 << 20;
    const POOL_SLOTS: u64 = 1000;
    if let Some(n) = args.max_in_flight {
        return n.max(1);
    }
    let available = available_memory();
    let by_memory = available.map_or(POOL_SLOTS, |bytes| bytes / 4 * 3 / PER_INSTANCE);
    by_memory.clamp(16, POOL_SLOTS) as u32
}

/// Each listener's connection limits: the flags', else defaults below the
/// process's file descriptor limit (raised to its hard limit first).
fn connection_limits(args: &UpArgs) -> (gust_net::ConnectionLimits, gust_net::ConnectionLimits) {
    let fds = gust_net::fd_limit();
    let (mut data, mut api) = gust_net::default_limits(fds);
    if let Some(n) = args.max_connections {
        data.per_listener = n.max(1);
        data.per_address = data.per_address.min(data.per_listener);
    }
    if let Some(n) = args.max_connections_per_address {
        data.per_address = n.max(1);
    }
    if let Some(n) = args.api_max_connections {
        api.per_listener = n.max(1);
        api.per_address = api.per_listener;
    }
    let held = (data.per_listener + api.per_listener) as u64;
    if held >= fds {
        tracing::warn!(
            fds,
            held,
            "the connection limits add up to the file descriptor limit or more: storage may run out of descriptors"
        );
    }
    tracing::info!(
        fds,
        connections = data.per_listener,
        per_address = data.per_address,
        api_connections = api.per_listener,
        "connection limits"
    );
    (data, api)
}

pub async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    if args.dev && !(args.listen.ip().is_loopback() && args.api_listen.ip().is_loopback()) {
        anyhow::bail!(
            "--dev turns authentication off, so both --listen and --api-listen must be loopback addresses (127.0.0.1 or ::1)"
        );
    }
    let node = args
        .cluster
        .enabled()
        .then(|| args.cluster.node_id().ok())
        .flatten();
    let telemetry = crate::telemetry::init(args.otlp_endpoint.as_deref(), node.as_deref())?;
    std::fs::create_dir_all(&args.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            args.data_dir.display()
        )
    })?;
    let store_options = StoreOptions {
        min_free_bytes: args.min_free_disk_bytes,
    };
    let store = match EmbeddedStore::open_with(&args.data_dir.join("gust.redb"), &store_options) {
        Ok(store) => store,
        // Its message says what to do; the hint below would mislead.
        Err(newer @ gust_store::StoreError::NewerSchema { .. }) => return Err(newer.into()),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "cannot open the database in {} (is another `gust up` using it?)",
                args.data_dir.display()
            )));
        }
    };
    let mut runtime_config = RuntimeConfig::new(args.data_dir.join("artifacts"));
    let max_in_flight = node_instances(&args);
    runtime_config.max_instances = max_in_flight;
    runtime_config.memory_keep_resident = args.memory_keep_resident_bytes;
    runtime_config.compiler = Some(gust_runtime::Compiler {
        program: std::env::current_exe().context("cannot find the gust binary to compile with")?,
        args: vec!["compile-worker".into()],
        timeout: Duration::from_millis(args.compile_timeout_ms),
        memory_bytes: args.compile_memory_bytes,
    });
    let runtime = Runtime::new(&runtime_config)?;

    // Cluster mode: what every node shares lives in NATS JetStream; the
    // usage ledger (and what is node-local) stays in the data directory.
    let node_id = args.cluster.node_id()?;
    let nats = if args.cluster.enabled() {
        let nats = crate::cluster_mode::connect(&args.cluster, &node_id, args.dev).await?;
        crate::cluster_mode::claim_node_id(&nats, &node_id).await?;
        Some(nats)
    } else {
        None
    };
    let (kv, blobs): (Arc<dyn MetaStore>, Arc<dyn BlobStore>) = match &nats {
        Some(nats) => (Arc::new(nats.clone()), Arc::new(nats.clone())),
        None => (Arc::new(store.clone()), Arc::new(store.clone())),
    };
    let (logs, queues): (Arc<dyn LogStore>, Arc<dyn QueueStore>) = match &nats {
        Some(nats) => (Arc::new(nats.clone()), Arc::new(nats.clone())),
        None => (Arc::new(store.clone()), Arc::new(store.clone())),
    };
    let ledger: Arc<dyn gust_store::LedgerStore> = Arc::new(store.clone());
    let data: Arc<dyn DataStore> = match &nats {
        Some(nats) => Arc::new(nats.clone()),
        None => Arc::new(store),
    };
    let cluster_members = nats
        .as_ref()
        .map(|_| crate::cluster_mode::start_membership(kv.clone(), node_id.clone()));
    let members: Arc<dyn gust_core::cluster::Membership> = match &cluster_members {
        Some(members) => members.clone(),
        None => Arc::new(gust_core::cluster::OneNode::new(node_id.clone())),
    };
    let events = match &nats {
        Some(_) => Events::new(queues, kv.clone()).in_cluster(members.clone()),
        None => Events::new(queues, kv.clone()),
    };
    let events = if telemetry.tracing() {
        events.with_accept_span(Arc::new(gust_gateway::trace::accept_event))
    } else {
        events
    };
    let accounts = Accounts::start(kv.clone()).await?;
    let admin_token = prepare_accounts(&accounts, &args).await?;
    let registry = Registry::new(kv.clone());
    let buckets = Buckets::new(data.clone()).with_quotas(accounts.clone(), registry.clone());
    let meter = if args.no_metering {
        tracing::warn!("metering is OFF (--no-metering): invocations leave no usage records");
        None
    } else {
        let plans = {
            let accounts = accounts.clone();
            Arc::new(move |tenant: &str| {
                gust_core::TenantId::new(tenant)
                    .ok()
                    .and_then(|id| accounts.tenant(&id))
                    .map(|t| t.plans())
                    .unwrap_or_default()
            }) as gust_meter::Plans
        };
        let journal = args.data_dir.join("ledger");
        let meter = match &nats {
            // Every node's records, shipped through the cluster, in a
            // second ledger of this node's (see `gust_meter::SharedUsage`).
            Some(nats) => {
                let path = args.data_dir.join("usage-view.redb");
                let view = EmbeddedStore::open_with(&path, &store_options).with_context(|| {
                    format!("cannot open the cluster's usage view {}", path.display())
                })?;
                let shared = gust_meter::SharedUsage {
                    node: node_id.clone(),
                    log: Arc::new(nats.clone()),
                    view: Arc::new(view),
                };
                gust_meter::Meter::start_shared(ledger, plans, &journal, shared).await
            }
            None => gust_meter::Meter::start(ledger, plans, &journal).await,
        };
        Some(meter.context("cannot open the usage ledger")?)
    };

    // Budgets count what every node of a cluster spent.
    if let (Some(meter), Some(_)) = (&meter, &nats) {
        meter.share_costs(kv.clone(), node_id.clone());
    }

    let data_listener = TcpListener::bind(args.listen).await.with_context(|| {
        format!(
            "cannot listen on {} (pass --listen to pick another address)",
            args.listen
        )
    })?;
    let api_listener = TcpListener::bind(args.api_listen).await.with_context(|| {
        format!(
            "cannot listen on {} (pass --api-listen to pick another address)",
            args.api_listen
        )
    })?;
    if let Some(warning) = gust_net::somaxconn().and_then(gust_net::backlog_warning) {
        tracing::warn!("{warning}");
    }
    let data_addr = data_listener.local_addr()?;
    let api_addr = api_listener.local_addr()?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(gust_net::Tls::from_pem_files(cert, key)?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };

    let gateway_logs = gust_store::LogLimits {
        max_bytes: args.log_max_bytes,
        max_age_ms: args.log_max_age_secs.saturating_mul(1000),
    };
    let gateway_config = GatewayConfig {
        max_in_flight: max_in_flight as usize,
        memory_budget_bytes: node_memory_budget(&args),
        drain_timeout: Duration::from_secs(args.drain_timeout),
        header_read_timeout: Duration::from_millis(args.header_read_timeout_ms),
        body_idle_timeout: Duration::from_millis(args.body_idle_timeout_ms),
        max_event_bytes: args.max_event_bytes,
        auth: !args.dev,
        tenant_domain: args.tenant_domain.clone(),
        public_hosts: args.public_host.clone(),
        scale: gust_gateway::scaling::ScaleConfig {
            tick: Duration::from_millis(args.scale_tick_ms.max(10)),
            node: gust_autoscale::NodeConfig {
                scale_to_zero_grace_ms: args.scale_to_zero_grace_ms,
                learned: gust_autoscale::LearnedConfig {
                    bin_ms: args.learned_bin_ms.max(1),
                    fallback_ms: args.learned_fallback_ms,
                    cold_start_weight_ms: args.learned_cold_start_weight_ms,
                    ..Default::default()
                },
                ..Default::default()
            },
        },
        logs: gust_gateway::LogConfig {
            rate_bytes_per_second: args.log_rate_bytes,
            burst_bytes: args.log_burst_bytes,
            limits: gateway_logs,
        },
        trace: gust_gateway::trace::TraceConfig {
            enabled: telemetry.tracing(),
            trust_client: args.trace_client_context == ClientTraceContext::Trust,
        },
    };
    let secrets = Arc::new(if args.cluster.enabled() {
        crate::cluster_mode::secret_box(&args.cluster, kv.as_ref()).await?
    } else {
        gust_store::SecretBox::load_or_create(&args.data_dir.join("secret.key"))
            .context("cannot open the key that seals secrets")?
    });
    let (gateway, log_writer) = Gateway::start(
        Services {
            runtime: runtime.clone(),
            registry: registry.clone(),
            blobs: blobs.clone(),
            logs: logs.clone(),
            events: events.clone(),
            buckets: buckets.clone(),
            accounts: accounts.clone(),
            meter: meter.clone(),
            secrets: secrets.clone(),
            members: members.clone(),
            relay: nats
                .as_ref()
                .map(|nats| Arc::new(nats.clone()) as Arc<dyn gust_store::NodeRelay>),
        },
        gateway_config,
    )
    .await;
    Dispatcher::start(&events, Arc::new(gateway.clone()));
    Scheduler::start(&events);
    // Nodes of a cluster share one feed: one reads it at a time.
    let feed_lease = nats
        .as_ref()
        .map(|_| gust_store::Lease::new(kv.clone(), "change-feed"));
    ChangeFeed::start(&events, data, feed_lease);
    let sources = gust_sources::Sources::new(
        events.clone(),
        kv.clone(),
        secrets.clone(),
        accounts.clone(),
        gust_sources::SourcesConfig {
            node: node_id.clone(),
            max_event_bytes: usize::try_from(args.max_event_bytes).unwrap_or(usize::MAX),
            shared: nats.is_some(),
            allow_private: args.sources_private,
        },
    )
    .with_budget({
        let gateway = gateway.clone();
        Arc::new(
            move |tenant: &gust_core::TenantId, function: &gust_core::FunctionName| {
                gateway.out_of_budget(tenant, function.as_str())
            },
        )
    });
    sources.start();

    // Signal handlers are installed before the addresses are printed, so a
    // SIGTERM right after start-up still drains and exits 0.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_rx_api = stop_rx.clone();
    let signals = Signals::install();
    let delivering = events.clone();
    let drain_timeout = Duration::from_secs(args.drain_timeout);
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        signals.wait().await;
        tracing::info!("shutting down");
        // No event is claimed from now on; the attempts running go on to
        // their recorded outcome (as requests in flight do), within the
        // same drain timeout, so that a stop redelivers nothing.
        delivering.stop_delivering();
        let _ = stop_tx.send(true);
        let _ = drained_tx.send(delivering.drain(drain_timeout).await);
    });

    let metrics = {
        let gateway = gateway.clone();
        let sources = sources.stats();
        Arc::new(move || data_plane_stats(&gateway, &sources)) as gust_api::DataPlaneView
    };
    let scale = {
        let gateway = gateway.clone();
        Arc::new(move |tenant: &str, name: &str| gateway.scale_status(tenant, name))
            as gust_api::ScaleView
    };
    let reservations = {
        let gateway = gateway.clone();
        Arc::new(move |tenant: &str, name: &str, reserved: u32| {
            gateway.check_reservation(tenant, name, reserved)
        }) as gust_api::ReservationCheck
    };
    let data_url = format!("{scheme}://{data_addr}");
    let api_url = format!("{scheme}://{api_addr}");
    let mut heartbeats = None;
    let cluster: gust_api::cluster::SharedClusterView = match (&nats, &cluster_members) {
        (Some(nats), Some(members)) => {
            heartbeats = Some(crate::cluster_mode::start_heartbeats(
                kv.clone(),
                crate::cluster_mode::Heartbeat {
                    node: node_id.clone(),
                    started_ms: members.started_ms(),
                    data_url: data_url.clone(),
                    api_url: api_url.clone(),
                    applied: gateway.applied_revision(),
                    stats: metrics.clone(),
                },
                stop_rx.clone(),
            ));
            Arc::new(crate::cluster_mode::NatsCluster::new(
                &args.cluster,
                members.clone(),
                kv.clone(),
                nats.clone(),
            ))
        }
        _ => Arc::new(gust_api::cluster::SingleNode {
            node: node_id.clone(),
            started_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            data_url: data_url.clone(),
            api_url: api_url.clone(),
            applied: gateway.applied_revision(),
            metrics: metrics.clone(),
        }),
    };
    let retention = Arc::new(gust_api::retention::RetentionStats::default());
    let ui_secrets = secrets.clone();
    let api_state = ApiState {
        registry,
        blobs,
        logs,
        runtime,
        public_url: format!("{scheme}://{data_addr}"),
        tenant_domain: args.tenant_domain.clone(),
        public_hosts: args.public_host.clone(),
        max_upload_bytes: args.max_upload_bytes,
        metrics,
        events,
        buckets,
        accounts,
        meter: meter.clone(),
        auth: !args.dev,
        stopping: stop_rx_api,
        applied: gateway.applied_revision(),
        scale,
        secrets,
        reservations,
        cluster,
        retention: retention.clone(),
        keep_trace_context: telemetry.tracing()
            && args.trace_client_context == ClientTraceContext::Trust,
        source_check: Arc::new(move |tenant, function, id, spec| {
            let sources = sources.clone();
            Box::pin(async move { sources.check(&tenant, &function, &id, &spec).await })
        }),
    };
    gust_api::retention::spawn(
        api_state.clone(),
        gust_api::retention::RetentionConfig {
            every: args.retention_every.max(Duration::from_millis(100)),
            logs: gateway_logs,
            statuses: args.retain_statuses,
            dead_letters: args.retain_dead_letters,
            audit: args.retain_audit,
            usage: args.retain_usage,
            versions: args.retain_versions,
            data_dir: Some(args.data_dir.clone()),
        },
        retention,
    );
    // The dashboard's sessions live in the metadata store (every node
    // sees them), sealed with the secrets' key.
    let ui_sessions = Arc::new(crate::ui_sessions::MetaSessions {
        meta: kv.clone(),
        secrets: ui_secrets,
    });
    let api = gust_api::router(api_state);
    let api = api.clone().merge(gust_ui::router(
        api,
        gust_ui::UiConfig {
            secure_cookies: tls.is_some(),
            ..Default::default()
        },
        ui_sessions,
    ));

    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    println!("gust: functions on {scheme}://{data_addr}");
    println!("gust: control API on {scheme}://{api_addr}");
    println!("gust: dashboard on {scheme}://{api_addr}/ui/");
    println!("gust: data in {}", args.data_dir.display());
    if nats.is_some() {
        println!(
            "gust: node {node_id} of the cluster on {}",
            args.cluster.cluster.join(",")
        );
    }
    if args.dev {
        println!(
            "gust: DEV MODE: no authentication, every function is public and the control API is open to anyone on this machine"
        );
    } else if let Some(token) = admin_token {
        println!("gust: admin token (shown once, keep it): {token}");
        println!("gust:   export GUST_TOKEN={token}");
    }

    let (data_connections, api_connections) = connection_limits(&args);
    let listen = gust_net::ListenConfig {
        header_read_timeout: Duration::from_millis(args.header_read_timeout_ms),
        tls,
        max_header_bytes: args.max_header_bytes,
        connections: api_connections,
    };
    let data_listen = gust_net::ListenConfig {
        connections: data_connections,
        ..listen.clone()
    };
    let api_server = tokio::spawn(gust_api::serve(
        api_listener,
        api,
        listen,
        stopped(stop_rx.clone()),
    ));
    gateway
        .serve(data_listener, data_listen, stopped(stop_rx))
        .await
        .context("the data plane failed")?;
    let _ = tokio::time::timeout(Duration::from_secs(5), api_server).await;
    let unfinished = tokio::time::timeout(drain_timeout, drained_rx)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    if unfinished > 0 {
        tracing::warn!(
            unfinished,
            "event attempts still running at the drain timeout: they are recorded as aborted and delivered again"
        );
    }
    log_writer.flush(Duration::from_secs(5)).await;
    if let Some(meter) = &meter {
        // What is not durable by then is recorded as aborted at the next start.
        meter.flush(Duration::from_secs(5)).await;
        // In a cluster, the last records go to the others now: this node
        // may never start again.
        meter.ship_left(Duration::from_secs(5)).await;
    }
    if let Some(heartbeats) = heartbeats {
        // Its record removed: a node stopped is not a node dead, and may
        // start again under its id at once.
        let _ = tokio::time::timeout(Duration::from_secs(2), heartbeats).await;
    }
    telemetry.shutdown(Duration::from_secs(5)).await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// SIGINT and SIGTERM, listened for from the moment of `install`.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    async fn wait(self) {
        #[cfg(unix)]
        {
            let (mut term, mut int) = (self.term, self.int);
            let term = async {
                match term.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let int = async {
                match int.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = term => {}
                () = int => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The data plane's figures for `/metrics`.
fn data_plane_stats(
    gateway: &Gateway,
    sources: &gust_sources::SourceStats,
) -> gust_api::DataPlaneStats {
    let g = gateway.stats();
    let s = gateway.scale_stats();
    gust_api::DataPlaneStats {
        requests: g.requests,
        responses_by_class: g.responses_by_class,
        in_flight: g.in_flight,
        invocations_completed: g.invocations_completed,
        invocations_failed: g.invocations_failed,
        logs_dropped: g.logs_dropped,
        websockets_open: g.websockets_open,
        functions: s.functions,
        functions_warm: s.warm,
        pre_warms: s.pre_warms,
        unloads: s.unloads,
        request_cold_starts: s.cold_starts,
        active: s
            .active
            .into_iter()
            .map(
                |(tenant, function, desired, warm)| gust_api::FunctionScaling {
                    tenant,
                    function,
                    desired,
                    warm,
                },
            )
            .collect(),
        sources: sources
            .samples()
            .into_iter()
            .map(|s| gust_api::SourceFigures {
                tenant: s.tenant,
                function: s.function,
                id: s.id,
                kind: s.kind,
                received: s.received,
                queued: s.queued,
                duplicates: s.duplicates,
                rejected: s.rejected,
                errors: s.errors,
                connected: s.connected,
                paused: s.paused,
                lag: s.lag,
            })
            .collect(),
    }
}

/// Makes sure the default tenant exists and, with auth on, that someone can
/// log in: on a fresh data directory (no token yet) or when asked, mints an
/// admin token and returns it to be printed once.
async fn prepare_accounts(accounts: &Accounts, args: &UpArgs) -> anyhow::Result<Option<String>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let default = gust_core::TenantId::default_tenant();
    if accounts.tenant(&default).is_none() {
        accounts
            .create_tenant(default.clone(), Default::default(), now)
            .await?;
    }
    if args.dev || (accounts.any_token() && !args.new_admin_token) {
        return Ok(None);
    }
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("no randomness for a token: {e}"))?;
    let (_, token) = accounts
        .create_token(
            &default,
            gust_core::access::Role::Admin,
            None,
            "first admin token, minted by `gust up`".into(),
            random,
            now,
        )
        .await?;
    Ok(Some(token))
}
