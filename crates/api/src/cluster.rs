//! `GET /v1/cluster`: the nodes of this platform, the NATS servers under
//! it and the state of its streams. The binary supplies the view
//! ([`ClusterView`]); a single node answers with itself alone.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Json;
use axum::extract::State;
use gust_core::access::Action;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{ApiError, ApiState, Caller};

/// The cluster as one node sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterStatus {
    /// `cluster` (on NATS JetStream) or `single` (embedded storage).
    pub mode: String,
    /// The node that answered.
    pub node: String,
    pub nodes: Vec<NodeStatus>,
    /// The NATS servers (empty on a single node).
    pub servers: Vec<ServerStatus>,
    /// Gust's JetStream streams (empty on a single node).
    pub streams: Vec<StreamStatus>,
}

/// One gust node, from its last heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeStatus {
    pub id: String,
    /// Heartbeats arrive (a node is dead after a few missed ones).
    pub alive: bool,
    /// Unix ms of its last heartbeat.
    pub last_heartbeat_ms: u64,
    /// Unix ms it started.
    pub started_ms: u64,
    /// The registry revision its data plane serves.
    pub registry_revision: u64,
    /// Functions with warm instances on it.
    pub warm_functions: u64,
    /// Invocations running on it.
    pub in_flight: u64,
    /// Its data plane and control API, as it announced them.
    pub data_url: String,
    pub api_url: String,
    pub version: String,
}

/// One NATS server, from its monitoring endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServerStatus {
    pub url: String,
    pub name: String,
    pub version: String,
    /// Answered its monitoring endpoint.
    pub reachable: bool,
    /// JetStream syncs every write before acknowledging it.
    pub sync_always: bool,
}

/// One JetStream stream of this cluster.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StreamStatus {
    pub name: String,
    /// The server leading it (none: no quorum; writes to it fail).
    pub leader: Option<String>,
    pub replicas: Vec<ReplicaStatus>,
    pub messages: u64,
    pub bytes: u64,
    pub consumers: u64,
}

/// A follower of a stream.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReplicaStatus {
    pub name: String,
    /// Caught up with the leader.
    pub current: bool,
    /// Operations behind the leader.
    pub lag: u64,
}

/// The cluster this node belongs to; supplied by the binary.
#[async_trait]
pub trait ClusterView: Send + Sync {
    /// This node's id.
    fn node(&self) -> &str;
    async fn status(&self) -> Result<ClusterStatus, String>;
    /// Waits up to `within` until every live node serves registry revision
    /// `revision`; returns the ids of those that do not.
    async fn wait_served(&self, revision: u64, within: Duration) -> Vec<String>;
    /// `GET path_and_query` on the control API of every other live node,
    /// with the caller's `Authorization`: each node's id and its answer's
    /// body, or why there is none.
    async fn ask_peers(
        &self,
        path_and_query: &str,
        authorization: Option<&str>,
    ) -> Vec<(String, Result<bytes::Bytes, String>)>;
}

pub type SharedClusterView = Arc<dyn ClusterView>;

#[utoipa::path(get, path = "/v1/cluster", tag = "cluster",
    responses((status = 200, description = "The nodes, NATS servers and streams", body = ClusterStatus),
        (status = 503, description = "The cluster's state could not be read")))]
pub(crate) async fn cluster_status(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<ClusterStatus>, ApiError> {
    // Node addresses and every stream's state: the operator's view.
    caller.require(Action::Administer)?;
    state
        .cluster
        .status()
        .await
        .map(Json)
        .map_err(|e| ApiError::Store(gust_store::StoreError::Unavailable(e)))
}

/// A single node (embedded storage): the cluster is this node alone.
pub struct SingleNode {
    pub node: String,
    pub started_ms: u64,
    pub data_url: String,
    pub api_url: String,
    pub applied: tokio::sync::watch::Receiver<u64>,
    pub metrics: crate::DataPlaneView,
}

#[async_trait]
impl ClusterView for SingleNode {
    fn node(&self) -> &str {
        &self.node
    }

    async fn status(&self) -> Result<ClusterStatus, String> {
        let stats = (self.metrics)();
        let now = crate::now_ms();
        Ok(ClusterStatus {
            mode: "single".into(),
            node: self.node.clone(),
            nodes: vec![NodeStatus {
                id: self.node.clone(),
                alive: true,
                last_heartbeat_ms: now,
                started_ms: self.started_ms,
                registry_revision: *self.applied.borrow(),
                warm_functions: stats.functions_warm,
                in_flight: stats.in_flight,
                data_url: self.data_url.clone(),
                api_url: self.api_url.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
            }],
            servers: Vec::new(),
            streams: Vec::new(),
        })
    }

    async fn wait_served(&self, _revision: u64, _within: Duration) -> Vec<String> {
        // The node's own data plane is waited for by the caller.
        Vec::new()
    }

    async fn ask_peers(
        &self,
        _path_and_query: &str,
        _authorization: Option<&str>,
    ) -> Vec<(String, Result<bytes::Bytes, String>)> {
        Vec::new()
    }
}
