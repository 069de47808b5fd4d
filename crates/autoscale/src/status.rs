//! What `gust scale` and the API show of a function's scaling.

use serde::{Deserialize, Serialize};

/// A function's scaling now, and its recent decisions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScaleStatus {
    pub function: String,
    /// Instances its demand, keep-alive and provisioning want (0: scaled to zero).
    pub desired: u32,
    /// Whether its component is in memory (compiled code mapped,
    /// pre-instantiated); when not, its next request loads it from disk.
    pub warm: bool,
    /// Instances running now.
    pub running: u32,
    /// Why: `in_flight`, `keep_alive`, `pre_warm`, `provisioned`, `grace` or `idle`.
    pub reason: String,
    /// The keep-alive policy: `learned` or a duration.
    pub keep_alive: String,
    /// What the policy decided: `fixed`, `learned`, or
    /// `too_little_history` (learned, but the fallback applies yet).
    pub basis: String,
    /// After an invocation: out of memory this long, then in memory for `keep_ms`.
    pub prewarm_ms: u64,
    pub keep_ms: u64,
    /// Idle times learned so far.
    pub idle_samples: u32,
    /// Instances provisioned now (from `provisioned`, by the hour).
    pub provisioned: u32,
    pub provisioned_setting: Option<String>,
    /// Average concurrency over the stable (60 s) and the panic (6 s) window.
    pub stable_concurrency: f64,
    pub panic_concurrency: f64,
    pub panicking: bool,
    /// The most recent changes, oldest first.
    pub history: Vec<ScaleEvent>,
    /// In a cluster, each node's scaling of the function (each node scales
    /// its own instances); the fields above are the answering node's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeScale>,
}

/// One node's scaling of a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeScale {
    pub node: String,
    pub desired: u32,
    pub warm: bool,
    pub running: u32,
    /// As [`ScaleStatus::reason`], or why the node did not answer.
    pub reason: String,
}

impl NodeScale {
    pub fn of(node: &str, status: &ScaleStatus) -> Self {
        Self {
            node: node.to_string(),
            desired: status.desired,
            warm: status.warm,
            running: status.running,
            reason: status.reason.clone(),
        }
    }
}

/// A change of a function's scaling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScaleEvent {
    pub at_ms: u64,
    pub desired: u32,
    pub warm: bool,
    pub reason: String,
    /// What the node did: `pre_warmed`, `unloaded`, `cold_start`, or none
    /// (only the decision changed).
    pub action: Option<String>,
}
