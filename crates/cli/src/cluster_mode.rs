//! Cluster mode in the binary (`gust up --cluster`): connecting to NATS
//! and checking it before anything is trusted to it, the cluster-wide key
//! that seals secrets, this node's membership (a heartbeat record in the
//! shared registry), and the cluster view the API serves and deploys wait
//! on. The storage itself is `gust-store-nats`.
//!
//! ## Membership
//! Each node writes `node/<id>` (a [`NodeRecord`]) every
//! [`HEARTBEAT`] and whenever its data plane applies a new registry
//! revision. Every node follows those records with one watch (no listing
//! per look: on JetStream a listing creates a consumer, an entry in the
//! meta group's log). A node whose last heartbeat is older than
//! [`DEAD_AFTER`] is dead: deploys stop waiting for it. Heartbeats are stamped with each
//! node's wall clock, so for deploys, questions to the peers and the
//! duplicate-id check a node whose clock is off by more than
//! `DEAD_AFTER - HEARTBEAT` looks dead (or alive too long). What divides
//! work among the nodes (schedule owners, shares of limits) and the status
//! (`alive`) use [`Members`] instead, which times heartbeats on the
//! observer's own clock; the two views can disagree about a node for a few
//! seconds (a node just started is in the stamped view first).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use bytes::Bytes;
use gust_api::cluster::{
    ClusterStatus, ClusterView, NodeStatus, ReplicaStatus, ServerStatus, StreamStatus,
};
use gust_core::cluster::Membership;
use gust_store::MetaStore;
use gust_store_nats::{ClusterCheck, NatsOptions, NatsStore, ServerReport};
use serde::{Deserialize, Serialize};

/// How often a node renews its record.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A node silent this long is dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(10);
/// A peer whose estimated clock offset is past this is skewed: said in the
/// log, left out of the schedules' owners, and counted toward this node
/// being the outlier. The lease margin (10 s) is what skew must not eat
/// into; a bound this wide is also past what a loaded machine's held-up
/// heartbeats have shown.
const CLOCK_WARN: Duration = Duration::from_secs(10);
/// Heartbeats per peer its clock offset is estimated from.
const CLOCK_SAMPLES: usize = 3;
/// The most a record first seen counts as old: a live node's next
/// heartbeat confirms it before it would be judged dead, whatever its
/// stamp says; a dead one is judged so two heartbeats after this node
/// first saw it.
const FIRST_SIGHT_AGE: Duration =
    Duration::from_secs(DEAD_AFTER.as_secs() - 2 * HEARTBEAT.as_secs());
const NODES: &str = "node/";
/// A value sealed with the cluster key by the first node, which every
/// other node must be able to open: they all hold the same key.
const KEY_CHECK: &str = "cluster/key-check";

#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Cluster mode (NATS JetStream)")]
pub struct ClusterArgs {
    /// Run as one node of a cluster on these NATS servers (comma-separated
    /// `nats://host:port`; NATS 2.12+, JetStream with `sync_interval: always`).
    #[arg(long, value_delimiter = ',', value_name = "URLS", env = "GUST_CLUSTER")]
    pub cluster: Vec<String>,
    /// This node's name in the cluster, unique among its nodes (default:
    /// the host name).
    #[arg(long, value_name = "NAME", env = "GUST_NODE_ID")]
    pub node_id: Option<String>,
    /// NATS credentials file (JWT and seed) for the servers' authentication.
    #[arg(long, value_name = "FILE", requires = "cluster")]
    pub cluster_creds: Option<PathBuf>,
    /// CA certificate (PEM) to trust for TLS to the NATS servers.
    #[arg(long, value_name = "FILE", requires = "cluster")]
    pub cluster_ca: Option<PathBuf>,
    /// The key that seals secrets, the same file on every node (32 random
    /// bytes: `head -c 32 /dev/urandom > cluster.key`). Replaces the
    /// node's own `secret.key`.
    #[arg(
        long,
        value_name = "FILE",
        requires = "cluster",
        env = "GUST_CLUSTER_KEY"
    )]
    pub cluster_key: Option<PathBuf>,
    /// Copies JetStream keeps of each stream; below 3 only with --dev.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub cluster_replicas: usize,
    /// The NATS servers' monitoring endpoints, where each reports its
    /// version and `sync_interval` (default: each server's host, port 8222).
    #[arg(long, value_delimiter = ',', value_name = "URLS")]
    pub cluster_monitor: Vec<String>,
    /// Prefix of every stream and subject this cluster uses, so several
    /// Gust clusters can share one NATS cluster.
    #[arg(long, default_value = "GUST", value_name = "NAME")]
    pub cluster_namespace: String,
}

impl ClusterArgs {
    pub fn enabled(&self) -> bool {
        !self.cluster.is_empty()
    }

    /// The node id: the flag, else the host name.
    pub fn node_id(&self) -> anyhow::Result<String> {
        let id = match &self.node_id {
            Some(id) => id.clone(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default(),
        };
        // A node's name is also its address on the relay between nodes.
        if !gust_store::relay_name(&id) {
            anyhow::bail!(
                "the node id `{id}` is not usable: give each node a name of letters, digits, `-` and `_` (at most 64) with --node-id"
            );
        }
        Ok(id)
    }

    /// The monitoring endpoints to ask: the flag's, else port 8222 on
    /// each server's host.
    fn monitors(&self) -> Vec<String> {
        if !self.cluster_monitor.is_empty() {
            return self.cluster_monitor.clone();
        }
        self.cluster
            .iter()
            .map(|url| {
                let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
                let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
                let host = match host_port.rsplit_once(':') {
                    Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
                    _ => host_port,
                };
                format!("http://{host}:8222")
            })
            .collect()
    }
}

/// What each monitoring endpoint reports, or why it did not.
async fn reports(monitors: &[String]) -> Vec<Result<ServerReport, String>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    let mut out = Vec::new();
    for url in monitors {
        let varz = format!("{}/varz", url.trim_end_matches('/'));
        let report = async {
            let response = http.get(&varz).send().await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("it answered {}", response.status()));
            }
            let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
            Ok(ServerReport::from_varz(url, &body))
        }
        .await
        .map_err(|e| {
            format!(
                "cannot read {varz} ({e}): Gust checks each server's version and `sync_interval` there; open the monitoring port (`http: 8222` in the server's config) or name the endpoints with --cluster-monitor"
            )
        });
        out.push(report);
    }
    out
}

/// Connects to the cluster after checking that it keeps acknowledged
/// writes; every refusal names what to change.
pub async fn connect(args: &ClusterArgs, node: &str, dev: bool) -> anyhow::Result<NatsStore> {
    let check = ClusterCheck {
        replicas: args.cluster_replicas,
        dev,
    };
    let mut problems = Vec::new();
    let mut servers = Vec::new();
    for report in reports(&args.monitors()).await {
        match report {
            Ok(report) => servers.push(report),
            Err(why) => problems.push(why),
        }
    }
    if problems.is_empty() {
        problems = check.problems(&servers);
    }
    if !problems.is_empty() {
        anyhow::bail!(
            "the NATS cluster is not safe for Gust:\n  - {}",
            problems.join("\n  - ")
        );
    }
    let mut options = NatsOptions::new(args.cluster.clone());
    options.creds = args.cluster_creds.clone();
    options.ca = args.cluster_ca.clone();
    options.namespace = args.cluster_namespace.clone();
    options.replicas = args.cluster_replicas;
    options.client_name = node.to_string();
    NatsStore::connect(options)
        .await
        .context("cannot open Gust's streams on the NATS cluster")
}

/// The cluster key, checked against what the first node sealed with it.
pub async fn secret_box(
    args: &ClusterArgs,
    kv: &dyn MetaStore,
) -> anyhow::Result<gust_store::SecretBox> {
    let Some(path) = &args.cluster_key else {
        anyhow::bail!(
            "cluster mode seals secrets with one key that every node shares: create it once (`head -c 32 /dev/urandom > cluster.key`), copy it to every node, and pass --cluster-key cluster.key"
        );
    };
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the cluster key {}", path.display()))?;
    let secrets = gust_store::SecretBox::from_key(&bytes).with_context(|| {
        format!(
            "{} does not hold a 32-byte key (`head -c 32 /dev/urandom > cluster.key` makes one)",
            path.display()
        )
    })?;
    let sealed = secrets.seal(KEY_CHECK, "gust")?;
    match kv
        .compare_and_set(KEY_CHECK, Bytes::from(sealed), None)
        .await
    {
        Ok(_) => {}
        Err(gust_store::StoreError::Conflict { .. }) => {
            let entry = kv.get(KEY_CHECK).await?.context("the key check vanished")?;
            let stored = String::from_utf8_lossy(&entry.value);
            if secrets.open(KEY_CHECK, &stored).is_err() {
                anyhow::bail!(
                    "{} is not the key the cluster's other nodes use: copy the same --cluster-key file to every node",
                    path.display()
                );
            }
        }
        Err(e) => return Err(e.into()),
    }
    Ok(secrets)
}

/// A node's heartbeat record, `node/<id>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    /// Random per process: tells a restarted node from a second one with
    /// the same id.
    pub incarnation: String,
    pub started_ms: u64,
    pub heartbeat_ms: u64,
    pub registry_revision: u64,
    pub warm_functions: u64,
    pub in_flight: u64,
    pub data_url: String,
    pub api_url: String,
    pub version: String,
}

impl NodeRecord {
    /// Whether its heartbeat stamp is recent by this node's wall clock.
    fn alive(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.heartbeat_ms) < DEAD_AFTER.as_millis() as u64
    }

    /// This record as reported, `alive` as this node's membership sees it
    /// (the view its gates and schedules act on).
    fn status(&self, live: &[String]) -> NodeStatus {
        NodeStatus {
            id: self.id.clone(),
            alive: live.contains(&self.id),
            last_heartbeat_ms: self.heartbeat_ms,
            started_ms: self.started_ms,
            registry_revision: self.registry_revision,
            warm_functions: self.warm_functions,
            in_flight: self.in_flight,
            data_url: self.data_url.clone(),
            api_url: self.api_url.clone(),
            version: self.version.clone(),
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn nodes(kv: &dyn MetaStore) -> Result<Vec<NodeRecord>, gust_store::StoreError> {
    Ok(kv
        .list(NODES)
        .await?
        .iter()
        .filter_map(|e| serde_json::from_slice(&e.value).ok())
        .collect())
}

/// Refuses to start a second live node under an id already in use: a
/// fresh record of another incarnation must stop advancing.
pub async fn claim_node_id(kv: &dyn MetaStore, node: &str) -> anyhow::Result<()> {
    let key = format!("{NODES}{node}");
    let read = || async {
        Ok::<_, anyhow::Error>(
            kv.get(&key)
                .await?
                .and_then(|e| serde_json::from_slice::<NodeRecord>(&e.value).ok()),
        )
    };
    let Some(first) = read().await? else {
        return Ok(());
    };
    if !first.alive(now_ms()) {
        return Ok(());
    }
    tokio::time::sleep(HEARTBEAT + HEARTBEAT / 2).await;
    if let Some(again) = read().await?
        && again.heartbeat_ms > first.heartbeat_ms
    {
        anyhow::bail!(
            "another gust node runs as `{node}` (it sent a heartbeat just now, from {}): give each node its own --node-id",
            again.api_url
        );
    }
    Ok(())
}

/// What a node reports of itself in each heartbeat.
pub struct Heartbeat {
    pub node: String,
    /// When this process started, by its clock ([`Members::started_ms`]).
    pub started_ms: u64,
    pub data_url: String,
    pub api_url: String,
    pub applied: tokio::sync::watch::Receiver<u64>,
    pub stats: gust_api::DataPlaneView,
}

/// Writes this node's record now, then every [`HEARTBEAT`] and whenever
/// the data plane applies a registry change; removes it when `stop` fires
/// (a clean stop is not a death).
pub fn start_heartbeats(
    kv: Arc<dyn MetaStore>,
    heartbeat: Heartbeat,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let incarnation = format!("{:016x}", rand_u64());
    let started_ms = heartbeat.started_ms;
    tokio::spawn(async move {
        let key = format!("{NODES}{}", heartbeat.node);
        let mut applied = heartbeat.applied.clone();
        loop {
            let stats = (heartbeat.stats)();
            let record = NodeRecord {
                id: heartbeat.node.clone(),
                incarnation: incarnation.clone(),
                started_ms,
                heartbeat_ms: now_ms(),
                registry_revision: *applied.borrow_and_update(),
                warm_functions: stats.functions_warm,
                in_flight: stats.in_flight,
                data_url: heartbeat.data_url.clone(),
                api_url: heartbeat.api_url.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
            };
            if let Ok(bytes) = serde_json::to_vec(&record)
                && let Err(e) = kv.put(&key, Bytes::from(bytes)).await
            {
                tracing::warn!(error = %e, "cannot write this node's heartbeat");
            }
            tokio::select! {
                () = tokio::time::sleep(HEARTBEAT) => {}
                changed = applied.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep(HEARTBEAT).await;
                    }
                }
                () = async { let _ = stop.wait_for(|s| *s).await; } => break,
            }
        }
        let _ = kv.delete(&key).await;
    })
}

/// The live nodes as this node observes them, refreshed every second from
/// the heartbeat records. A node counts as alive while its heartbeat keeps
/// changing, timed by this node's own monotonic clock, so a peer whose
/// wall clock is off is neither dead nor immortal; only a record seen for
/// the first time is judged by its stamp. This node is always alive to
/// itself.
pub struct Members {
    node: String,
    /// When this node started, by its clock: its heartbeats say so.
    started_ms: u64,
    live: std::sync::RwLock<Arc<[String]>>,
    /// Set once `live` was judged from the records and every live peer's
    /// clock compared with this node's (two heartbeats each, or four heartbeats passed).
    settled: std::sync::atomic::AtomicBool,
    /// This node's clock is off from most live peers' heartbeat stamps.
    clock_outlier: std::sync::atomic::AtomicBool,
    /// `live` without the peers whose clock is off from this node's.
    owners: std::sync::RwLock<Arc<[String]>>,
    /// Every node's record as the watch on `node/` last delivered it
    /// (`None` until its first listing arrived, and while it is started
    /// again).
    records: tokio::sync::watch::Receiver<Option<Arc<[NodeRecord]>>>,
}

impl gust_core::cluster::Membership for Members {
    fn node(&self) -> &str {
        &self.node
    }

    fn live(&self) -> Arc<[String]> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn settled(&self) -> bool {
        self.settled.load(std::sync::atomic::Ordering::Acquire)
    }

    fn clock_outlier(&self) -> bool {
        self.clock_outlier
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn owners(&self) -> Arc<[String]> {
        self.owners
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn up_since_ms(&self) -> Option<u64> {
        let owners = self.owners();
        let records = self.records.borrow();
        let peers = records
            .iter()
            .flat_map(|records| records.iter())
            .filter(|r| r.id != self.node && owners.contains(&r.id))
            .map(|r| r.started_ms);
        Some(peers.fold(self.started_ms, u64::min))
    }
}

impl Members {
    /// When this node started, by its clock.
    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// Every node's record as last seen, or read from the store while the
    /// watch has not delivered its first listing.
    async fn records(
        &self,
        kv: &dyn MetaStore,
    ) -> Result<Arc<[NodeRecord]>, gust_store::StoreError> {
        let seen = self.records.borrow().clone();
        match seen {
            Some(records) => Ok(records),
            None => Ok(nodes(kv).await?.into()),
        }
    }
}

/// Starts keeping [`Members`] for `node`: one watch on the node records
/// (a read of the store per change, none per look), and every half
/// heartbeat the live set judged from them (kept as it was while the
/// records are unknown).
pub fn start_membership(kv: Arc<dyn MetaStore>, node: String) -> Arc<Members> {
    let (publish, records) = tokio::sync::watch::channel(None);
    tokio::spawn(follow_records(kv, publish));
    let members = Arc::new(Members {
        started_ms: now_ms(),
        live: std::sync::RwLock::new(Arc::from(vec![node.clone()])),
        settled: std::sync::atomic::AtomicBool::new(false),
        clock_outlier: std::sync::atomic::AtomicBool::new(false),
        owners: std::sync::RwLock::new(Arc::from(vec![node.clone()])),
        node,
        records,
    });
    let keeper = members.clone();
    let mut records = members.records.clone();
    tokio::spawn(async move {
        // id → (incarnation and heartbeat last seen, when it last changed;
        // `None`: longer ago than this process can tell)
        type Seen = std::collections::HashMap<String, ((String, u64), Option<std::time::Instant>)>;
        let mut seen: Seen = std::collections::HashMap::new();
        // Per node, the offsets (its stamp − this clock on arrival) of the
        // last few heartbeats seen written, and the nodes whose estimated
        // offset (`gust_core::cluster::clock_offset`) is past the bound.
        let mut offsets: std::collections::HashMap<String, std::collections::VecDeque<i64>> =
            std::collections::HashMap::new();
        let mut skewed = std::collections::HashSet::new();
        let started = std::time::Instant::now();
        loop {
            let current = records.borrow_and_update().clone();
            if let Some(current) = current {
                let now = std::time::Instant::now();
                let wall = now_ms();
                let mut next = std::collections::HashMap::new();
                for record in current.iter() {
                    let beat = (record.incarnation.clone(), record.heartbeat_ms);
                    let changed = match seen.remove(&record.id) {
                        Some((last, at)) if last == beat => at,
                        Some(_) => {
                            // A heartbeat just written: its stamp and this
                            // clock should agree within the watch's delay.
                            let samples = offsets.entry(record.id.clone()).or_default();
                            samples.push_back(record.heartbeat_ms as i64 - wall as i64);
                            if samples.len() > CLOCK_SAMPLES {
                                samples.pop_front();
                            }
                            match gust_core::cluster::clock_offset(samples.make_contiguous()) {
                                Some(off) if off.unsigned_abs() > CLOCK_WARN.as_millis() as u64 => {
                                    let newly = skewed.insert(record.id.clone());
                                    if newly {
                                        tracing::warn!(node = %record.id, off_ms = off, "another node's clock is off from this node's: schedules fire by the clock of the node that owns them, and leases assume clocks agree within seconds; run NTP on every node");
                                    }
                                }
                                Some(_) => {
                                    skewed.remove(&record.id);
                                }
                                None => {}
                            }
                            Some(now)
                        }
                        // First sight: as old as its stamp says, but
                        // young enough to live two heartbeats more: the
                        // stamp is the writer's clock, and a node whose
                        // clock is behind this one's must not look dead
                        // (this node would then take over its schedules
                        // and claim ticks from the wrong clock).
                        None => now.checked_sub(
                            Duration::from_millis(wall.saturating_sub(record.heartbeat_ms))
                                .min(FIRST_SIGHT_AGE),
                        ),
                    };
                    next.insert(record.id.clone(), (beat, changed));
                }
                seen = next;
                let mut live: Vec<String> = seen
                    .iter()
                    .filter(|(_, (_, at))| at.is_some_and(|at| now.duration_since(at) < DEAD_AFTER))
                    .map(|(id, _)| id.clone())
                    .chain([keeper.node.clone()])
                    .collect();
                live.sort();
                live.dedup();
                let peers = live.iter().filter(|id| **id != keeper.node).count();
                let off = live.iter().filter(|id| skewed.contains(*id)).count();
                let outlier = gust_core::cluster::clock_outlier(peers, off);
                let was = keeper
                    .clock_outlier
                    .swap(outlier, std::sync::atomic::Ordering::Relaxed);
                if outlier && !was {
                    tracing::error!(
                        peers,
                        off,
                        "this node's clock is off from most other nodes' by more than 10 s: it claims no events and no schedule ticks until it agrees again (their leases are judged by the claimant's clock); fix its time (NTP)"
                    );
                } else if was && !outlier {
                    tracing::warn!(
                        "this node's clock agrees with the others' again: it claims work again"
                    );
                }
                // Settled once every live peer's clock was compared with
                // this one's (two heartbeats each), or after four.
                let settled = live
                    .iter()
                    .all(|id| *id == keeper.node || offsets.get(id).is_some_and(|s| s.len() >= 2))
                    || started.elapsed() > 4 * HEARTBEAT;
                let owners: Vec<String> = live
                    .iter()
                    .filter(|id| !skewed.contains(*id))
                    .cloned()
                    .collect();
                *keeper.owners.write().unwrap_or_else(|p| p.into_inner()) = Arc::from(owners);
                *keeper.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::from(live);
                keeper
                    .settled
                    .store(settled, std::sync::atomic::Ordering::Release);
            }
            tokio::time::sleep(HEARTBEAT / 2).await;
        }
    });
    members
}

/// Keeps `publish` holding every node's record: a watch on `node/`,
/// started again (from a fresh listing) whenever it breaks or falls
/// silent. This node writes its own record every [`HEARTBEAT`], so a watch
/// that delivers nothing for three of them is stuck (its consumer on a
/// replica cut off, or recreating itself without end): the records are
/// `None` (unknown) until a new watch has listed them.
async fn follow_records(
    kv: Arc<dyn MetaStore>,
    publish: tokio::sync::watch::Sender<Option<Arc<[NodeRecord]>>>,
) {
    let decode = |value: &Bytes| serde_json::from_slice::<NodeRecord>(value).ok();
    loop {
        let mut watch = match kv.watch(NODES).await {
            Ok(watch) => watch,
            Err(e) => {
                tracing::debug!(error = %e, "cannot watch the node records; retrying");
                publish.send_replace(None);
                tokio::time::sleep(HEARTBEAT / 2).await;
                continue;
            }
        };
        let mut records: std::collections::BTreeMap<String, NodeRecord> = watch
            .initial
            .iter()
            .filter_map(|e| Some((e.key.clone(), decode(&e.value)?)))
            .collect();
        publish.send_replace(Some(records.values().cloned().collect()));
        loop {
            let change = match tokio::time::timeout(3 * HEARTBEAT, watch.changes.next()).await {
                Ok(Ok(change)) => change,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "the node records' watch stopped; resynchronising");
                    break;
                }
                Err(_) => {
                    tracing::debug!("the node records' watch fell silent; resynchronising");
                    break;
                }
            };
            match change {
                gust_store::MetaEvent::Put(entry) => match decode(&entry.value) {
                    Some(record) => records.insert(entry.key, record),
                    None => records.remove(&entry.key),
                },
                gust_store::MetaEvent::Delete { key, .. } => records.remove(&key),
            };
            if publish.is_closed() {
                return;
            }
            publish.send_replace(Some(records.values().cloned().collect()));
        }
        publish.send_replace(None);
    }
}

fn rand_u64() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// The cluster as the API shows it.
pub struct NatsCluster {
    pub node: String,
    /// The live nodes as this node sees them, and every node's record.
    members: Arc<Members>,
    pub kv: Arc<dyn MetaStore>,
    pub store: NatsStore,
    pub monitors: Vec<String>,
    /// Asks the other nodes (their control APIs).
    http: reqwest::Client,
}

impl NatsCluster {
    pub fn new(
        args: &ClusterArgs,
        members: Arc<Members>,
        kv: Arc<dyn MetaStore>,
        store: NatsStore,
    ) -> Self {
        Self {
            node: members.node().to_string(),
            members,
            kv,
            store,
            monitors: args.monitors(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }
}

#[async_trait]
impl ClusterView for NatsCluster {
    fn node(&self) -> &str {
        &self.node
    }

    async fn status(&self) -> Result<ClusterStatus, String> {
        let live = self.members.live();
        let mut nodes: Vec<NodeStatus> = nodes(self.kv.as_ref())
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .map(|n| n.status(&live))
            .collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        let servers = reports(&self.monitors)
            .await
            .into_iter()
            .zip(&self.monitors)
            .map(|(report, url)| match report {
                Ok(r) => ServerStatus {
                    url: r.url,
                    name: r.name,
                    version: r.version,
                    reachable: true,
                    sync_always: r.sync_always,
                },
                Err(_) => ServerStatus {
                    url: url.clone(),
                    name: String::new(),
                    version: String::new(),
                    reachable: false,
                    sync_always: false,
                },
            })
            .collect();
        let streams = self
            .store
            .streams()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|s| {
                let cluster = s.cluster.unwrap_or_default();
                StreamStatus {
                    name: s.config.name,
                    leader: cluster.leader,
                    replicas: cluster
                        .replicas
                        .into_iter()
                        .map(|p| ReplicaStatus {
                            name: p.name,
                            current: p.current && !p.offline,
                            lag: p.lag.unwrap_or(0),
                        })
                        .collect(),
                    messages: s.state.messages,
                    bytes: s.state.bytes,
                    consumers: s.state.consumer_count as u64,
                }
            })
            .collect();
        Ok(ClusterStatus {
            mode: "cluster".into(),
            node: self.node.clone(),
            nodes,
            servers,
            streams,
        })
    }

    async fn ask_peers(
        &self,
        path_and_query: &str,
        authorization: Option<&str>,
    ) -> Vec<(String, Result<Bytes, String>)> {
        let peers = match self.members.records(self.kv.as_ref()).await {
            Ok(nodes) => {
                let now = now_ms();
                nodes
                    .iter()
                    .filter(|n| n.alive(now) && n.id != self.node)
                    .cloned()
                    .collect::<Vec<_>>()
            }
            Err(e) => return vec![("(every other node)".into(), Err(e.to_string()))],
        };
        let mut asks = tokio::task::JoinSet::new();
        for peer in peers {
            let mut request = self.http.get(format!(
                "{}{path_and_query}",
                peer.api_url.trim_end_matches('/')
            ));
            if let Some(authorization) = authorization {
                request = request.header(reqwest::header::AUTHORIZATION, authorization);
            }
            asks.spawn(async move {
                let answer = async {
                    let response = request.send().await.map_err(|e| e.to_string())?;
                    if !response.status().is_success() {
                        return Err(format!("it answered {}", response.status()));
                    }
                    response.bytes().await.map_err(|e| e.to_string())
                }
                .await;
                (peer.id, answer)
            });
        }
        let mut answers = Vec::new();
        while let Some(answer) = asks.join_next().await {
            if let Ok(answer) = answer {
                answers.push(answer);
            }
        }
        answers
    }

    async fn wait_served(&self, revision: u64, within: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + within;
        let mut changes = self.members.records.clone();
        loop {
            changes.borrow_and_update();
            let lagging: Vec<String> = match self.members.records(self.kv.as_ref()).await {
                Ok(nodes) => {
                    let now = now_ms();
                    nodes
                        .iter()
                        .filter(|n| n.alive(now) && n.registry_revision < revision)
                        .map(|n| n.id.clone())
                        .collect()
                }
                Err(e) => vec![format!("(the node list could not be read: {e})")],
            };
            if lagging.is_empty() || tokio::time::Instant::now() >= deadline {
                return lagging;
            }
            // The next change of any node's record (each node writes its
            // own when it applies a revision), or a look again soon.
            let _ = tokio::time::timeout(Duration::from_millis(250), changes.changed()).await;
        }
    }
}
