use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Variables;
use crate::deploy::{Alias, CanaryReport, LIVE};

use crate::delivery::DeliveryPolicy;
use crate::{FunctionName, Limits, TenantId};

/// A function as the registry stores it: its name, its version counter and
/// its aliases (the versions that serve traffic). Everything the data plane
/// needs to route and run a request is in here, so a router watches only
/// these records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(from = "StoredFunction")]
pub struct FunctionRecord {
    #[schema(value_type = String)]
    pub tenant: TenantId,
    #[schema(value_type = String)]
    pub name: FunctionName,
    pub created_at_ms: u64,
    /// The highest version number ever deployed (0: none yet). Numbers are never reused.
    pub latest_version: u64,
    /// Alias name → where it sends traffic; `live` (the plain URL's) exists
    /// from the first deploy on.
    #[serde(default)]
    pub aliases: BTreeMap<String, Alias>,
    /// How its last canaries ended, newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub canaries: Vec<CanaryReport>,
    /// Its variables (an alias's own override them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: Variables,
    /// Host names and path prefixes it claims on the data plane.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<crate::route::RouteClaim>,
    /// Anyone with the URL may call it; otherwise a token of its tenant
    /// that may invoke is needed (when the server requires tokens).
    #[serde(default)]
    pub public: bool,
    /// The application it belongs to (its plain URL then serves the
    /// application's live version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

/// A function record as stored by any release: one written before aliases
/// existed has its serving version in `active`, which becomes `live`.
#[derive(Deserialize)]
struct StoredFunction {
    tenant: TenantId,
    name: FunctionName,
    created_at_ms: u64,
    latest_version: u64,
    #[serde(default)]
    aliases: BTreeMap<String, Alias>,
    #[serde(default)]
    canaries: Vec<CanaryReport>,
    #[serde(default)]
    vars: Variables,
    #[serde(default)]
    routes: Vec<crate::route::RouteClaim>,
    #[serde(default)]
    public: bool,
    #[serde(default)]
    active: Option<ActiveVersion>,
    #[serde(default)]
    app: Option<String>,
}

impl From<StoredFunction> for FunctionRecord {
    fn from(stored: StoredFunction) -> Self {
        let mut aliases = stored.aliases;
        if let Some(active) = stored.active
            && aliases.is_empty()
        {
            aliases.insert(LIVE.into(), Alias::new(active, stored.created_at_ms));
        }
        Self {
            tenant: stored.tenant,
            name: stored.name,
            created_at_ms: stored.created_at_ms,
            latest_version: stored.latest_version,
            aliases,
            canaries: stored.canaries,
            vars: stored.vars,
            routes: stored.routes,
            public: stored.public,
            app: stored.app,
        }
    }
}

impl FunctionRecord {
    /// The `live` alias: what the function's plain URL serves.
    pub fn live(&self) -> Option<&Alias> {
        self.aliases.get(LIVE)
    }

    /// Every version an alias serves or may go back to: its target, its
    /// split's, its canary's and the one before its last move.
    pub fn referenced_versions(&self) -> std::collections::BTreeSet<u64> {
        self.aliases
            .values()
            .flat_map(|a| {
                [
                    Some(a.target.version),
                    a.split.as_ref().map(|s| s.to.version),
                    a.canary.as_ref().map(|c| c.version),
                    a.previous,
                ]
            })
            .flatten()
            .collect()
    }

    /// Which of `versions` retention removes when `keep` are kept: all but
    /// the `keep` newest and those an alias refers to (`keep` 0 keeps all).
    pub fn versions_past(&self, versions: &[u64], keep: usize) -> Vec<u64> {
        if keep == 0 {
            return Vec::new();
        }
        let referenced = self.referenced_versions();
        let mut newest_first = versions.to_vec();
        newest_first.sort_unstable_by(|a, b| b.cmp(a));
        newest_first.dedup();
        newest_first
            .into_iter()
            .skip(keep)
            .filter(|v| !referenced.contains(v))
            .collect()
    }
}

/// A version of a function, with what the data plane needs to run it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActiveVersion {
    pub version: u64,
    /// Content hash of the component (`sha256:<hex>`).
    pub digest: String,
    pub limits: Limits,
    /// How events for this version are delivered.
    #[serde(default)]
    pub delivery: DeliveryPolicy,
}

/// One immutable deployed version of a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionRecord {
    #[schema(value_type = String)]
    pub tenant: TenantId,
    #[schema(value_type = String)]
    pub name: FunctionName,
    pub version: u64,
    pub digest: String,
    pub size_bytes: u64,
    pub limits: Limits,
    #[serde(default)]
    pub delivery: DeliveryPolicy,
    pub created_at_ms: u64,
}

impl From<&VersionRecord> for ActiveVersion {
    fn from(v: &VersionRecord) -> Self {
        Self {
            version: v.version,
            digest: v.digest.clone(),
            limits: v.limits.clone(),
            delivery: v.delivery.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_from_before_aliases_serves_its_active_version_as_live() {
        let limits = serde_json::to_string(&Limits::default()).unwrap();
        let old = format!(
            r#"{{"tenant":"default","name":"hello","created_at_ms":5,"latest_version":2,
            "active":{{"version":2,"digest":"sha256:ab","limits":{limits}}},"public":true}}"#
        );
        let record: FunctionRecord = serde_json::from_str(&old).unwrap();
        let live = record.live().unwrap();
        assert_eq!(
            (live.target.version, live.target.digest.as_str()),
            (2, "sha256:ab")
        );
        let again: FunctionRecord =
            serde_json::from_str(&serde_json::to_string(&record).unwrap()).unwrap();
        assert_eq!(again, record);
    }

    #[test]
    fn retention_keeps_the_newest_versions_and_every_one_an_alias_refers_to() {
        use crate::deploy::{Canary, Split};
        let v = |n| ActiveVersion {
            version: n,
            digest: format!("sha256:{n}"),
            limits: Limits::default(),
            delivery: Default::default(),
        };
        let mut live = Alias::new(v(9), 0);
        live.previous = Some(2);
        live.split = Some(Split {
            to: v(3),
            basis_points: 100,
        });
        let mut beta = Alias::new(v(1), 0);
        beta.canary = Some(Canary {
            version: 4,
            started_at_ms: 0,
            window_ms: 1,
            policy: Default::default(),
        });
        let record = FunctionRecord {
            tenant: TenantId::default_tenant(),
            name: FunctionName::new("f").unwrap(),
            created_at_ms: 0,
            latest_version: 10,
            aliases: [(LIVE.to_string(), live), ("beta".to_string(), beta)].into(),
            canaries: Vec::new(),
            vars: Default::default(),
            routes: Vec::new(),
            public: false,
            app: None,
        };
        let all: Vec<u64> = (1..=10).collect();
        assert_eq!(
            record.referenced_versions().into_iter().collect::<Vec<_>>(),
            [1, 2, 3, 4, 9]
        );
        // The two newest (10, 9) and the referenced stay.
        assert_eq!(record.versions_past(&all, 2), [8, 7, 6, 5]);
        assert_eq!(record.versions_past(&all, 7), [] as [u64; 0]);
        assert!(record.versions_past(&all, 0).is_empty(), "0 keeps all");
    }
}

/// Identifies one invocation across responses (`x-request-id`), logs and usage.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InvocationId(pub String);

impl std::fmt::Display for InvocationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// The guest returned normally.
    Completed,
    /// The guest trapped (including running out of memory).
    Trapped { message: String },
    /// The invocation ran past its timeout and was stopped.
    TimedOut,
    /// The guest could not be run, or failed without trapping.
    Failed { message: String },
    /// Its client went away before the whole answer was sent: the instance
    /// was dropped where it was.
    Cancelled,
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Completed)
    }

    /// Its kind, as one word: `completed`, `trapped`, `timed_out`, `failed`, `cancelled`.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Trapped { .. } => "trapped",
            Outcome::TimedOut => "timed_out",
            Outcome::Failed { .. } => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// What one invocation printed, with how it ended. Stored per function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogRecord {
    pub invocation_id: String,
    pub time_ms: u64,
    pub version: u64,
    pub outcome: Outcome,
    pub duration_us: u64,
    pub peak_memory_bytes: u64,
    pub stdout: String,
    pub stderr: String,
    /// Output past the function's `max_output_bytes` was dropped.
    pub truncated: bool,
    /// The HTTP status answered (0 in records written before it was kept;
    /// see [`crate::logquery::record_status`]).
    #[serde(default)]
    pub status: u16,
}
