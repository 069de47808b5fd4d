//! The cluster backend: the `gust-store` traits on NATS JetStream, shared
//! by every node of a cluster (`gust up --cluster`).
//!
//! Each trait is implemented in its own module, on its own JetStream
//! construct: `meta` (the registry's metadata: one stream holding the last
//! value of each key, read through the stream leader), `blobs` (components,
//! in an Object Store), `data` (tenants' data: a stream that is also its
//! change feed), `queues` (event queues: a subject per message, its state
//! in headers), `logs` (a subject per log), `relay` (requests from node
//! to node, on core NATS). The usage ledger is not here:
//! it stays in each node's embedded store. This file holds what they share: connecting, the
//! checks a cluster must pass before Gust trusts it with acknowledged
//! writes (`check`), naming, key encoding and error mapping.
//!
//! ## Names
//! Every stream and subject of one Gust cluster starts with its
//! *namespace* (`GUST` unless set), so several Gust clusters, or the tests,
//! can share one NATS cluster without seeing each other's data.
//!
//! ## Reads are fresh
//! Every stream is created with direct gets off: a read goes to the
//! stream's leader, which has every acknowledged write, instead of a
//! follower that may not have applied it yet (nats-server #4710). A read
//! after a write on another node sees that write. Listings go through a
//! consumer, which JetStream places on any replica: the metadata's are
//! made again until one lands on the leader (`meta`). Exceptions, each
//! fenced by a compare-and-set or meant to catch up: the queues' listings
//! are direct gets (see `queues`); watches, the data change feed and log
//! reads may start on a follower.
//!
//! This crate must not know about HTTP or WebAssembly, and is named only
//! by the composition root (the `gust` binary) and tests.

mod batch;
mod blobs;
pub mod check;
mod data;
mod group;
mod logs;
mod meta;
mod queues;
mod relay;
#[cfg(feature = "testkit")]
pub mod testkit;

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use base64::Engine as _;
use gust_store::StoreError;

pub use check::{ClusterCheck, ServerReport};

/// How to reach a NATS cluster and how Gust uses it.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Server URLs (`nats://host:4222`); the client fails over between them.
    pub servers: Vec<String>,
    /// A NATS credentials file (JWT and NKey seed), if the servers require one.
    pub creds: Option<PathBuf>,
    /// A CA certificate (PEM) to trust for TLS connections.
    pub ca: Option<PathBuf>,
    /// Prefix of every stream and subject Gust creates: one Gust cluster.
    pub namespace: String,
    /// Copies JetStream keeps of every stream (3 for a real cluster).
    pub replicas: usize,
    /// The client's name, as servers list it (the node's id).
    pub client_name: String,
    /// How long a deleted metadata key's tombstone stays (see `meta.rs`);
    /// whole seconds, at least one.
    pub tombstone_ttl: Duration,
}

/// How long a deleted metadata key's tombstone stays by default: far
/// longer than any watch may lag or a compare-and-set may take from its
/// read to its write.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(3600);

impl NatsOptions {
    pub fn new(servers: Vec<String>) -> Self {
        Self {
            servers,
            creds: None,
            ca: None,
            namespace: "GUST".into(),
            replicas: 3,
            client_name: "gust".into(),
            tombstone_ttl: TOMBSTONE_TTL,
        }
    }
}

/// The NATS backend: a connection and the JetStream constructs it uses.
#[derive(Clone)]
pub struct NatsStore {
    client: async_nats::Client,
    js: jetstream::Context,
    options: NatsOptions,
    meta: stream::Stream,
    blobs: jetstream::object_store::ObjectStore,
    meta_subjects: String,
    /// Creates of new keys, written together (see `meta.rs`).
    creates: std::sync::Arc<meta::Creates>,
    /// The listing a paged walk is going through (see `list_page`).
    walk: std::sync::Arc<std::sync::Mutex<Option<meta::Walk>>>,
    data: data::DataState,
    queues: std::sync::Arc<queues::Queues>,
    logs: stream::Stream,
    log_subjects: String,
}

impl std::fmt::Debug for NatsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsStore")
            .field("namespace", &self.options.namespace)
            .field("replicas", &self.options.replicas)
            .finish_non_exhaustive()
    }
}

/// How long a JetStream request may take before it is reported as failed
/// (the cluster has no leader for the stream, say).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a write waits for a lost NATS connection to come back before
/// it is refused.
const RECONNECT_GRACE: Duration = Duration::from_millis(500);

impl NatsStore {
    /// Connects to the servers and creates (or opens) the streams Gust uses.
    pub async fn connect(options: NatsOptions) -> Result<Self, StoreError> {
        let client = connect_client(&options).await?;
        Self::open(client, options).await
    }

    /// Opens the store on a client already connected.
    pub async fn open(
        client: async_nats::Client,
        options: NatsOptions,
    ) -> Result<Self, StoreError> {
        let mut js = jetstream::new(client.clone());
        js.set_timeout(REQUEST_TIMEOUT);
        let meta = meta::open_stream(&js, &options).await?;
        let blobs = blobs::open_bucket(&js, &options).await?;
        let meta_subjects = format!("{}.meta", options.namespace);
        let data = data::open(&js, &options).await?;
        let queues = std::sync::Arc::new(queues::open(&js, &options).await?);
        let logs = logs::open_stream(&js, &options).await?;
        let log_subjects = format!("{}.log", options.namespace);
        Ok(Self {
            client,
            js,
            options,
            meta,
            blobs,
            meta_subjects,
            creates: std::sync::Arc::new(group::GroupCommit::new(meta::MAX_CREATES)),
            walk: Default::default(),
            data,
            queues,
            logs,
            log_subjects,
        })
    }

    /// The connection, for what Gust does on NATS beside storage
    /// (membership, status).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Refuses at once while this node has no connection to any NATS
    /// server: a write would otherwise wait out the request timeout (5 s)
    /// before its caller could say 503. Nothing was sent, so nothing is
    /// lost and no caller is told a write happened that did not.
    /// A reconnect to another server (a rolling restart) takes
    /// milliseconds: the refusal comes only after [`RECONNECT_GRACE`].
    pub(crate) async fn linked(&self) -> Result<(), StoreError> {
        use async_nats::connection::State;
        let deadline = tokio::time::Instant::now() + RECONNECT_GRACE;
        while self.client.connection_state() != State::Connected {
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Unavailable(
                    "this node has lost its connection to NATS (it reconnects by itself): try again shortly, or through another node".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Ok(())
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    pub fn options(&self) -> &NatsOptions {
        &self.options
    }

    /// Name of one of this cluster's streams (`<namespace>_<what>`).
    pub fn stream_name(&self, what: &str) -> String {
        stream_name(&self.options, what)
    }

    /// The state of every stream of this namespace: name, leader,
    /// replicas and their lag, messages.
    pub async fn streams(&self) -> Result<Vec<stream::Info>, StoreError> {
        use futures_util::TryStreamExt as _;
        let prefix = format!("{}_", self.options.namespace);
        let all: Vec<stream::Info> = self.js.streams().try_collect().await.map_err(backend)?;
        Ok(all
            .into_iter()
            .filter(|s| {
                s.config.name.starts_with(&prefix)
                    || s.config.name == format!("OBJ_{}", blobs::bucket_name(&self.options))
            })
            .collect())
    }
}

/// Connects a client with the options' servers, credentials and CA.
pub async fn connect_client(options: &NatsOptions) -> Result<async_nats::Client, StoreError> {
    let mut connect = async_nats::ConnectOptions::new()
        .name(&options.client_name)
        .connection_timeout(REQUEST_TIMEOUT)
        .request_timeout(Some(REQUEST_TIMEOUT))
        .retry_on_initial_connect()
        .max_reconnects(None);
    if let Some(creds) = &options.creds {
        connect = connect.credentials_file(creds).await.map_err(|e| {
            StoreError::Backend(format!(
                "cannot read the NATS credentials file {}: {e}",
                creds.display()
            ))
        })?;
    }
    if let Some(ca) = &options.ca {
        connect = connect.add_root_certificates(ca.clone()).require_tls(true);
    }
    let servers: Vec<async_nats::ServerAddr> = options
        .servers
        .iter()
        .map(|s| {
            s.parse().map_err(|e| {
                StoreError::Backend(format!("`{s}` is not a NATS server address: {e}"))
            })
        })
        .collect::<Result<_, _>>()?;
    // `retry_on_initial_connect` returns at once and connects in the
    // background; wait (bounded) for the first connection so that a
    // cluster that cannot be reached is reported at start.
    let client = connect
        .connect(servers)
        .await
        .map_err(|e| StoreError::Backend(format!("cannot connect to NATS: {e}")))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.connection_state() != async_nats::connection::State::Connected {
        if tokio::time::Instant::now() > deadline {
            return Err(StoreError::Backend(format!(
                "no NATS server of {} answered within 10 s: check the addresses, and that the servers run",
                options.servers.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(client)
}

fn stream_name(options: &NatsOptions, what: &str) -> String {
    format!("{}_{what}", options.namespace)
}

/// The stream settings every Gust stream shares: file storage, the
/// configured replicas, reads through the leader (a stream may turn direct
/// gets on after).
fn durable_stream(options: &NatsOptions, what: &str, subjects: Vec<String>) -> stream::Config {
    stream::Config {
        name: stream_name(options, what),
        subjects,
        storage: stream::StorageType::File,
        num_replicas: options.replicas,
        allow_direct: false,
        mirror_direct: false,
        ..Default::default()
    }
}

/// Creates the stream, or opens it if it exists (another node created it
/// first), then makes sure its settings are the ones given.
async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, StoreError> {
    // Creating a replicated stream waits for the meta leader and a quorum
    // of peers: a busy or just-started cluster can take longer than one
    // request's timeout. Opening or creating is idempotent: try again.
    let mut last = None;
    for _ in 0..OPEN_ATTEMPTS {
        match try_ensure_stream(js, config.clone()).await {
            Ok(stream) => return Ok(stream),
            Err(e) => {
                tracing::warn!(stream = config.name, error = %e, "opening a stream failed; trying again");
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    Err(last.unwrap_or(StoreError::Closed))
}

/// Attempts of [`ensure_stream`] and of opening the object store (each
/// up to [`REQUEST_TIMEOUT`]).
const OPEN_ATTEMPTS: usize = 6;

async fn try_ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, StoreError> {
    match js.get_or_create_stream(config.clone()).await {
        Ok(mut existing) => {
            let info = existing.info().await.map_err(backend)?.clone();
            if info.config.allow_direct != config.allow_direct
                || info.config.allow_message_ttl != config.allow_message_ttl
                || info.config.num_replicas != config.num_replicas
                || info.config.allow_atomic_publish != config.allow_atomic_publish
                || info.config.allow_rollup != config.allow_rollup
                || (config.duplicate_window != Duration::ZERO
                    && info.config.duplicate_window != config.duplicate_window)
                || info.config.subjects != config.subjects
            {
                js.update_stream(config.clone()).await.map_err(backend)?;
                return js.get_stream(&config.name).await.map_err(backend);
            }
            Ok(existing)
        }
        Err(e) => Err(StoreError::Backend(format!(
            "cannot create the JetStream stream {}: {e}",
            config.name
        ))),
    }
}

/// Consumers made for one fresh listing before it settles for a follower
/// (each lands on the leader with a chance of one in the replica count: at
/// R3, 3 on average, at the price of as many entries in the meta group's
/// log; a follower after all once in ~130 listings, which is stale only if
/// that follower lags).
const PLACEMENT_ATTEMPTS: usize = 12;

/// An ordered consumer on `stream`, and how many messages it has to
/// deliver now; with `fresh`, one hosted by the stream's leader.
///
/// JetStream places a single-replica consumer on any replica of the
/// stream, at random, and a follower may lag (a server restarted a moment
/// ago is catching up): a listing it serves can miss writes already
/// acknowledged. So a listing that must be fresh is served from the
/// leader, which holds every acknowledged write: a consumer placed
/// elsewhere is dropped and made again, up to [`PLACEMENT_ATTEMPTS`]
/// times. (An ordered consumer that async-nats recreates mid-read, after
/// a lost heartbeat, lands anywhere again.) A watch or a feed need not
/// be: it catches up with its replica.
async fn ordered_consumer(
    stream: &stream::Stream,
    config: jetstream::consumer::pull::OrderedConfig,
    fresh: bool,
) -> Result<(jetstream::consumer::pull::Ordered, u64), StoreError> {
    let leader = if fresh {
        let info = stream.get_info().await.map_err(backend)?;
        info.cluster.and_then(|c| c.leader)
    } else {
        None
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let consumer = stream
            .create_consumer(config.clone())
            .await
            .map_err(backend)?;
        let info = consumer.cached_info();
        let host = info.cluster.as_ref().and_then(|c| c.leader.clone());
        if leader.is_some() && host != leader {
            if attempt < PLACEMENT_ATTEMPTS {
                let _ = stream.delete_consumer(&info.name).await;
                continue;
            }
            tracing::debug!(?host, ?leader, "a listing is served by a follower");
        }
        let pending = info.num_pending;
        return Ok((consumer.messages().await.map_err(backend)?, pending));
    }
}

/// A failed request to NATS: no server answered, the stream has no
/// leader (no quorum), or the request timed out. All pass once the
/// servers are back, so they are reported as unavailability.
fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Waits before compare-and-set attempt `attempt` (from 1) after a
/// refusal: up to 1, 2, 4 … 64 ms, at random, so that writers racing for
/// one subject spread out instead of colliding again.
pub(crate) async fn back_off(attempt: usize) {
    use std::hash::{BuildHasher as _, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static KEYS: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();
    let ceiling = 1u64 << attempt.min(6);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let micros = KEYS.get_or_init(RandomState::new).hash_one(n) % (ceiling * 1_000);
    tokio::time::sleep(std::time::Duration::from_micros(micros)).await;
}

/// A Gust key as a subject's tokens: each `/`-separated segment in
/// base64url (without padding; `=` stands for an empty segment), so any
/// key is a valid subject and a `/` boundary is a `.` token boundary.
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len() * 4 / 3 + 4);
    for (i, segment) in key.split('/').enumerate() {
        if i > 0 {
            out.push('.');
        }
        if segment.is_empty() {
            out.push('=');
        } else {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(segment, &mut out);
        }
    }
    out
}

/// The key [`encode_key`] made these tokens from.
fn decode_key(tokens: &str) -> Result<String, StoreError> {
    let mut out = String::with_capacity(tokens.len());
    for (i, token) in tokens.split('.').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if token != "=" {
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token)
                .map_err(|e| StoreError::Corrupt(format!("subject token `{token}`: {e}")))?;
            out.push_str(
                &String::from_utf8(bytes)
                    .map_err(|e| StoreError::Corrupt(format!("subject token `{token}`: {e}")))?,
            );
        }
    }
    Ok(out)
}

/// The subject filter that covers every key starting with `prefix`: the
/// prefix's whole segments, then `>` (the caller still checks that a key
/// starts with the prefix when its last segment is partial).
fn prefix_filter(base: &str, prefix: &str) -> String {
    match prefix.rfind('/') {
        Some(at) => format!("{base}.{}.>", encode_key(&prefix[..at])),
        None => format!("{base}.>"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_subject_tokens() {
        for key in [
            "a",
            "a/1",
            "fn/default/hello",
            "a//b/",
            "/",
            "tick/t/f/2026-12-03T10:00:00Z",
            "ünï.cödé/x y",
        ] {
            let tokens = encode_key(key);
            assert!(
                tokens
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_=.".contains(c)),
                "{tokens}"
            );
            assert!(!tokens.starts_with('.') && !tokens.ends_with('.'));
            assert_eq!(decode_key(&tokens).unwrap(), key);
        }
    }

    #[test]
    fn a_prefix_filter_covers_its_whole_segments() {
        assert_eq!(prefix_filter("G.meta", ""), "G.meta.>");
        assert_eq!(prefix_filter("G.meta", "fn"), "G.meta.>");
        assert_eq!(
            prefix_filter("G.meta", "a/"),
            format!("G.meta.{}.>", encode_key("a"))
        );
        assert_eq!(
            prefix_filter("G.meta", "fn/default/he"),
            format!("G.meta.{}.>", encode_key("fn/default"))
        );
    }
}
