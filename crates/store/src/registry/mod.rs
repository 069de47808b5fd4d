//! The registry: functions and their versions, as typed records over a
//! [`MetaStore`]. Keys are `fn/<tenant>/<name>` and
//! `ver/<tenant>/<name>/<version, zero-padded>`, so a prefix lists one
//! tenant's functions or one function's versions in order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use gust_core::app::AppRecord;
use gust_core::config::Variable;
use gust_core::delivery::DeliveryPolicy;
use gust_core::deploy::{
    Alias, CANARY_HISTORY, Canary, CanaryOutcome, CanaryPolicy, CanaryReport, LIVE, Split,
};
use gust_core::route::RouteClaim;
use gust_core::{ActiveVersion, FunctionName, FunctionRecord, Limits, TenantId, VersionRecord};
use serde::{Serialize, de::DeserializeOwned};

use crate::lease::{Lease, LeaseGuard};

mod apps;
mod components;
mod routes;

pub use apps::{AppRelease, ReleaseAs};

use crate::{Entry, MetaStore, StoreError, Watch};
use components::ComponentBytes;

/// Errors from registry operations that callers branch on.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("function `{0}` does not exist")]
    NoSuchFunction(FunctionName),
    #[error("function `{0}` already exists")]
    AlreadyExists(FunctionName),
    #[error("application `{0}` does not exist")]
    NoSuchApp(FunctionName),
    #[error("function `{function}` has no alias `{alias}`")]
    NoSuchAlias {
        function: FunctionName,
        alias: String,
    },
    #[error("function `{function}` has no version {version}")]
    NoSuchVersion {
        function: FunctionName,
        version: u64,
    },
    /// A route another function holds (`owner`: that function, or another
    /// tenant's, not named).
    #[error(
        "the route `{claim}` is claimed by {owner}; choose another host or prefix, or remove it there first"
    )]
    RouteTaken { claim: String, owner: String },
    /// The change cannot be made as asked (the message says why and what to do).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Prefix of every function record, for watchers of all tenants.
pub const FUNCTIONS_PREFIX: &str = "fn/";
/// Aliases a function may have, at most.
pub const MAX_ALIASES: usize = 32;
/// How many times a deploy retries when another write to the same function races it.
const MAX_CAS_RETRIES: usize = 16;

fn function_key(tenant: &TenantId, name: &FunctionName) -> String {
    format!("fn/{tenant}/{name}")
}

/// Prefix of every version record.
const VERSIONS_PREFIX: &str = "ver/";

fn versions_prefix(tenant: &TenantId, name: &FunctionName) -> String {
    format!("ver/{tenant}/{name}/")
}

/// Where a route claim is held, whoever holds it: one key per place.
fn claim_key(claim: &RouteClaim) -> String {
    format!("claim/{}", claim.place())
}

fn version_key(tenant: &TenantId, name: &FunctionName, version: u64) -> String {
    format!("ver/{tenant}/{name}/{version:020}")
}

fn encode<T: Serialize>(value: &T) -> Result<Bytes, StoreError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode<T: DeserializeOwned>(entry: &Entry) -> Result<T, StoreError> {
    serde_json::from_slice(&entry.value)
        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", entry.key)))
}

/// What a deploy records about the new version.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub digest: String,
    pub size_bytes: u64,
    pub limits: Limits,
    pub delivery: DeliveryPolicy,
    /// Make the function public (`Some(true)`) or private; `None` keeps it as it is.
    pub public: Option<bool>,
    /// Which alias the new version takes over.
    pub activation: Activation,
    /// The application the function belongs to (it joins it; one that
    /// belongs to another is refused). `None` keeps it as it is.
    pub app: Option<FunctionName>,
}

/// What a deploy does with its new version. A function's first deploy
/// always makes it `live` (a canary needs a stable version to compare with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Activation {
    /// Point this alias at it (`live`: the function's URL).
    Alias(String),
    /// Send it a share of `live`'s traffic for a window; it is then
    /// promoted or rolled back on what that traffic showed.
    Canary {
        basis_points: u16,
        window_ms: u64,
        policy: CanaryPolicy,
    },
    /// Record it only: an application release makes it live with the
    /// other members (a function's first version is then not served
    /// before that).
    Staged,
}

impl Default for Activation {
    fn default() -> Self {
        Self::Alias(LIVE.into())
    }
}

/// Where a changed alias should point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AliasTarget {
    pub version: u64,
    /// Another version and its share (basis points).
    pub split: Option<(u64, u16)>,
}

/// Ends a canary still running on `alias`, recording why.
fn supersede(record: &mut FunctionRecord, alias: &str, why: &str, now_ms: u64) {
    let Some(a) = record.aliases.get_mut(alias) else {
        return;
    };
    if let Some(canary) = a.canary.take() {
        let stable = a.target.version;
        a.split = None;
        push_report(
            record,
            CanaryReport {
                version: canary.version,
                stable,
                outcome: CanaryOutcome::Superseded,
                reason: why.into(),
                ended_at_ms: now_ms,
            },
        );
    }
}

fn push_report(record: &mut FunctionRecord, report: CanaryReport) {
    record.canaries.push(report);
    let excess = record.canaries.len().saturating_sub(CANARY_HISTORY);
    record.canaries.drain(..excess);
}

/// Typed access to functions and versions. Clones share one cache of
/// each tenant's component bytes.
#[derive(Clone)]
pub struct Registry {
    kv: Arc<dyn MetaStore>,
    components: Arc<Mutex<ComponentBytes>>,
    /// Held while route claims change, so that two changes (on any node)
    /// never take and release the same place in between each other.
    claiming: Lease,
    /// Held from a component's upload until its version record is written,
    /// and while a removal looks for components nothing refers to any
    /// more, so that a component being deployed is never collected.
    uploading: Lease,
}

impl Registry {
    pub fn new(kv: Arc<dyn MetaStore>) -> Self {
        Self {
            claiming: Lease::new(kv.clone(), "claiming"),
            uploading: Lease::new(kv.clone(), "uploading"),
            kv,
            components: Arc::default(),
        }
    }

    /// The log stream that holds a function's invocation logs.
    pub fn log_stream(tenant: &TenantId, name: &FunctionName) -> String {
        format!("{}{tenant}/{name}", Self::LOG_STREAMS)
    }

    /// What every function log stream's name starts with (and no other's).
    pub const LOG_STREAMS: &'static str = "logs/";

    pub async fn function(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
    ) -> Result<Option<FunctionRecord>, RegistryError> {
        let entry = self.kv.get(&function_key(tenant, name)).await?;
        Ok(entry.as_ref().map(decode).transpose()?)
    }

    pub async fn functions(&self, tenant: &TenantId) -> Result<Vec<FunctionRecord>, RegistryError> {
        let entries = self.kv.list(&format!("fn/{tenant}/")).await?;
        Ok(entries
            .iter()
            .filter(|e| Self::parse_function_key(&e.key).is_some())
            .map(decode)
            .collect::<Result<_, _>>()?)
    }

    /// Creates a function with no version yet.
    pub async fn create_function(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        now_ms: u64,
    ) -> Result<FunctionRecord, RegistryError> {
        let record = FunctionRecord {
            tenant: tenant.clone(),
            name: name.clone(),
            created_at_ms: now_ms,
            latest_version: 0,
            aliases: Default::default(),
            canaries: Vec::new(),
            vars: Default::default(),
            routes: Vec::new(),
            public: false,
            app: None,
        };
        match self
            .kv
            .compare_and_set(&function_key(tenant, name), encode(&record)?, None)
            .await
        {
            Ok(_) => Ok(record),
            Err(StoreError::Conflict { .. }) => Err(RegistryError::AlreadyExists(name.clone())),
            Err(e) => Err(e.into()),
        }
    }

    /// Records a new immutable version of `name` (creating the function if
    /// needed) and activates it as `new.activation` says; returns it with the revision of
    /// the function record that activated it. Version numbers are taken with a
    /// compare-and-set on the function record, so concurrent deploys get
    /// distinct numbers.
    pub async fn deploy(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        new: NewVersion,
        now_ms: u64,
    ) -> Result<(VersionRecord, u64), RegistryError> {
        let key = function_key(tenant, name);
        let mut last_conflict = None;
        for _ in 0..MAX_CAS_RETRIES {
            let current = self.kv.get(&key).await?;
            let (mut record, expected) = match &current {
                Some(entry) => (decode::<FunctionRecord>(entry)?, Some(entry.revision)),
                None => (
                    FunctionRecord {
                        tenant: tenant.clone(),
                        name: name.clone(),
                        created_at_ms: now_ms,
                        latest_version: 0,
                        aliases: Default::default(),
                        canaries: Vec::new(),
                        vars: Default::default(),
                        routes: Vec::new(),
                        public: false,
                        app: None,
                    },
                    None,
                ),
            };
            let version = VersionRecord {
                tenant: tenant.clone(),
                name: name.clone(),
                version: record.latest_version + 1,
                digest: new.digest.clone(),
                size_bytes: new.size_bytes,
                limits: new.limits.clone(),
                delivery: new.delivery.clone(),
                created_at_ms: now_ms,
            };
            record.latest_version = version.version;
            if let Some(public) = new.public {
                record.public = public;
            }
            let moves_live = match &new.activation {
                Activation::Alias(alias) => alias == LIVE,
                Activation::Canary { .. } => true,
                Activation::Staged => false,
            };
            if new.app.is_none() && moves_live {
                member_live(&record, LIVE)?;
            }
            if let Some(app) = &new.app {
                match record.app.as_deref() {
                    Some(other) if other != app.as_str() => {
                        return Err(RegistryError::Refused(format!(
                            "function `{name}` belongs to application `{other}`; remove it there first or deploy it under another name"
                        )));
                    }
                    _ => record.app = Some(app.to_string()),
                }
            }
            activate(
                &mut record,
                ActiveVersion::from(&version),
                &new.activation,
                now_ms,
            );
            // The compare-and-set on the function record hands out the
            // version number; only its winner writes that version's record.
            match self
                .kv
                .compare_and_set(&key, encode(&record)?, expected)
                .await
            {
                Ok(revision) => {
                    self.kv
                        .put(
                            &version_key(tenant, name, version.version),
                            encode(&version)?,
                        )
                        .await?;
                    self.forget_component_bytes(tenant);
                    return Ok((version, revision));
                }
                Err(conflict @ StoreError::Conflict { .. }) => last_conflict = Some(conflict),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last_conflict
            .unwrap_or(StoreError::Backend("deploy retries exhausted".into()))
            .into())
    }

    /// Applies `change` to the function's record with a compare-and-set,
    /// again on a race; returns the new record, `change`'s result and the
    /// record's revision.
    async fn update<T>(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        mut change: impl FnMut(&mut FunctionRecord) -> Result<T, RegistryError>,
    ) -> Result<(FunctionRecord, T, u64), RegistryError> {
        let key = function_key(tenant, name);
        for _ in 0..MAX_CAS_RETRIES {
            let Some(entry) = self.kv.get(&key).await? else {
                return Err(RegistryError::NoSuchFunction(name.clone()));
            };
            let mut record: FunctionRecord = decode(&entry)?;
            let before = record.clone();
            let out = change(&mut record)?;
            if record == before {
                // Nothing to write: no new revision for watchers to apply.
                return Ok((record, out, entry.revision));
            }
            match self
                .kv
                .compare_and_set(&key, encode(&record)?, Some(entry.revision))
                .await
            {
                Ok(revision) => return Ok((record, out, revision)),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Backend(format!(
            "`{name}` kept changing under this update; try again"
        ))
        .into())
    }

    /// A version as an alias serves it (it must exist).
    async fn servable(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        version: u64,
    ) -> Result<ActiveVersion, RegistryError> {
        match self.kv.get(&version_key(tenant, name, version)).await? {
            Some(entry) => Ok(ActiveVersion::from(&decode::<VersionRecord>(&entry)?)),
            None => {
                if self.function(tenant, name).await?.is_none() {
                    return Err(RegistryError::NoSuchFunction(name.clone()));
                }
                Err(RegistryError::NoSuchVersion {
                    function: name.clone(),
                    version,
                })
            }
        }
    }

    /// Points `alias` (created if missing) at `to.version`, with `to.split`
    /// sending a share to another version. Ends a canary running on it.
    pub async fn set_alias(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        alias: &str,
        to: AliasTarget,
        now_ms: u64,
    ) -> Result<(FunctionRecord, u64), RegistryError> {
        gust_core::deploy::check_alias(alias).map_err(|e| RegistryError::Refused(e.to_string()))?;
        let target = self.servable(tenant, name, to.version).await?;
        let split = match to.split {
            Some((version, _)) if version == to.version => {
                return Err(RegistryError::Refused(format!(
                    "a split needs two different versions; `{alias}` already points at {version}"
                )));
            }
            Some((version, basis_points)) => Some(Split {
                to: self.servable(tenant, name, version).await?,
                basis_points,
            }),
            None => None,
        };
        let (record, (), revision) = self
            .update(tenant, name, |record| {
                member_live(record, alias)?;
                supersede(record, alias, &format!("`{alias}` was set by hand"), now_ms);
                let full = record.aliases.len() >= MAX_ALIASES;
                match record.aliases.get_mut(alias) {
                    Some(a) => a.point_at(target.clone(), now_ms),
                    None if full => {
                        return Err(RegistryError::Refused(format!(
                            "`{name}` has {MAX_ALIASES} aliases, the most a function may have; remove one first"
                        )));
                    }
                    None => {
                        record
                            .aliases
                            .insert(alias.to_string(), Alias::new(target.clone(), now_ms));
                    }
                }
                if let Some(a) = record.aliases.get_mut(alias) {
                    a.split = split.clone();
                }
                Ok(())
            })
            .await?;
        Ok((record, revision))
    }

    /// Sets (`Some`) or removes (`None`) variables of the function, or of
    /// one of its aliases. Takes effect on the next request, without a
    /// deploy. Refused past [`gust_core::config::MAX_VARIABLES`].
    pub async fn set_vars(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        alias: Option<&str>,
        changes: Vec<(String, Option<Variable>)>,
    ) -> Result<(FunctionRecord, u64), RegistryError> {
        let (record, (), revision) = self
            .update(tenant, name, |record| {
                let vars = match alias {
                    None => &mut record.vars,
                    Some(alias) => {
                        &mut record
                            .aliases
                            .get_mut(alias)
                            .ok_or_else(|| RegistryError::NoSuchAlias {
                                function: name.clone(),
                                alias: alias.into(),
                            })?
                            .vars
                    }
                };
                for (key, value) in &changes {
                    match value {
                        Some(value) => {
                            vars.insert(key.clone(), value.clone());
                        }
                        None => {
                            vars.remove(key);
                        }
                    }
                }
                if vars.len() > gust_core::config::MAX_VARIABLES {
                    return Err(RegistryError::Refused(format!(
                        "`{name}` would have {} variables; at most {} are allowed",
                        vars.len(),
                        gust_core::config::MAX_VARIABLES
                    )));
                }
                Ok(())
            })
            .await?;
        Ok((record, revision))
    }

    /// Removes an alias (never `live`).
    pub async fn remove_alias(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        alias: &str,
    ) -> Result<(FunctionRecord, u64), RegistryError> {
        if alias == LIVE {
            return Err(RegistryError::Refused(format!(
                "`{LIVE}` cannot be removed: it is what `{name}`'s URL serves; point it at another version with `gust alias set {name} {LIVE} VERSION`, or remove the function"
            )));
        }
        let (record, (), revision) = self
            .update(tenant, name, |record| {
                record
                    .aliases
                    .remove(alias)
                    .map(|_| ())
                    .ok_or_else(|| RegistryError::NoSuchAlias {
                        function: name.clone(),
                        alias: alias.into(),
                    })
            })
            .await?;
        Ok((record, revision))
    }

    /// Points `alias` back at the version it served before its last move
    /// (rolling back twice returns to where it was); a canary running on
    /// it is ended instead, the stable version keeping all traffic.
    /// Returns the record, the version now served and the revision.
    pub async fn rollback(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        alias: &str,
        now_ms: u64,
    ) -> Result<(FunctionRecord, u64, u64), RegistryError> {
        let record = self
            .function(tenant, name)
            .await?
            .ok_or_else(|| RegistryError::NoSuchFunction(name.clone()))?;
        member_live(&record, alias)?;
        let current = record
            .aliases
            .get(alias)
            .ok_or_else(|| RegistryError::NoSuchAlias {
                function: name.clone(),
                alias: alias.into(),
            })?;
        let previous = match (&current.canary, current.previous) {
            (Some(_), _) => None,
            (None, Some(previous)) => Some(self.servable(tenant, name, previous).await?),
            (None, None) => {
                return Err(RegistryError::Refused(format!(
                    "`{name}`'s `{alias}` has no earlier version to go back to; point it at one with `gust alias set {name} {alias} VERSION`"
                )));
            }
        };
        let (record, serving, revision) = self
            .update(tenant, name, |record| {
                let a = record
                    .aliases
                    .get_mut(alias)
                    .ok_or_else(|| RegistryError::NoSuchAlias {
                        function: name.clone(),
                        alias: alias.into(),
                    })?;
                if let Some(canary) = a.canary.take() {
                    a.split = None;
                    let stable = a.target.version;
                    push_report(
                        record,
                        CanaryReport {
                            version: canary.version,
                            stable,
                            outcome: CanaryOutcome::RolledBack,
                            reason: "rolled back by hand".into(),
                            ended_at_ms: now_ms,
                        },
                    );
                    return Ok(stable);
                }
                match &previous {
                    // The alias moved meanwhile: roll back from where it is now.
                    Some(previous) if a.previous == Some(previous.version) => {
                        a.point_at(previous.clone(), now_ms);
                        Ok(previous.version)
                    }
                    _ => Err(RegistryError::Refused(format!(
                        "`{name}`'s `{alias}` changed during the rollback; look at `gust alias ls {name}` and try again"
                    ))),
                }
            })
            .await?;
        Ok((record, serving, revision))
    }

    /// Ends the canary of `version` on `live` (if it still runs): promoted
    /// (it takes all of `live`) or rolled back (the stable version keeps
    /// it), with the reason recorded. `None`: no such canary runs any more.
    pub async fn end_canary(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        version: u64,
        promote: bool,
        reason: &str,
        now_ms: u64,
    ) -> Result<Option<u64>, RegistryError> {
        let outcome = self
            .update(tenant, name, |record| {
                let Some(live) = record.aliases.get_mut(LIVE) else {
                    return Ok(false);
                };
                if live.canary.as_ref().map(|c| c.version) != Some(version) {
                    return Ok(false);
                }
                let stable = live.target.version;
                let split = live.split.take();
                live.canary = None;
                if promote && let Some(split) = split {
                    live.point_at(split.to, now_ms);
                }
                push_report(
                    record,
                    CanaryReport {
                        version,
                        stable,
                        outcome: if promote {
                            CanaryOutcome::Promoted
                        } else {
                            CanaryOutcome::RolledBack
                        },
                        reason: reason.into(),
                        ended_at_ms: now_ms,
                    },
                );
                Ok(true)
            })
            .await;
        match outcome {
            Ok((_, true, revision)) => Ok(Some(revision)),
            Ok((_, false, _)) | Err(RegistryError::NoSuchFunction(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn versions(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
    ) -> Result<Vec<VersionRecord>, RegistryError> {
        let entries = self.kv.list(&versions_prefix(tenant, name)).await?;
        if entries.is_empty() && self.function(tenant, name).await?.is_none() {
            return Err(RegistryError::NoSuchFunction(name.clone()));
        }
        Ok(entries.iter().map(decode).collect::<Result<_, _>>()?)
    }

    pub async fn version(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        version: u64,
    ) -> Result<Option<VersionRecord>, RegistryError> {
        if self.function(tenant, name).await?.is_none() {
            return Err(RegistryError::NoSuchFunction(name.clone()));
        }
        let entry = self.kv.get(&version_key(tenant, name, version)).await?;
        Ok(entry.as_ref().map(decode).transpose()?)
    }

    /// Removes a function and all its versions. Returns the revision of the
    /// removal (`None`: there was no such function).
    pub async fn delete_function(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
    ) -> Result<Option<u64>, RegistryError> {
        let _claiming = self.claiming.acquire().await?;
        let record = self.function(tenant, name).await?;
        let existed = self.kv.delete(&function_key(tenant, name)).await?;
        for claim in record.iter().flat_map(|r| &r.routes) {
            self.kv.delete(&claim_key(claim)).await?;
        }
        for entry in self.kv.list(&versions_prefix(tenant, name)).await? {
            self.kv.delete(&entry.key).await?;
        }
        self.forget_component_bytes(tenant);
        Ok(existed)
    }

    /// Watches every tenant's function and application records.
    pub async fn watch_functions(&self) -> Result<Watch, RegistryError> {
        Ok(self.kv.watch(FUNCTIONS_PREFIX).await?)
    }

    /// Decodes a function record seen by [`Registry::watch_functions`].
    pub fn decode_function(entry: &Entry) -> Result<FunctionRecord, StoreError> {
        decode(entry)
    }

    /// The tenant and name a function key (`fn/<tenant>/<name>`) stands for.
    pub fn parse_function_key(key: &str) -> Option<(TenantId, FunctionName)> {
        let rest = key.strip_prefix(FUNCTIONS_PREFIX)?;
        let (tenant, name) = rest.split_once('/')?;
        Some((TenantId::new(tenant).ok()?, FunctionName::new(name).ok()?))
    }
}

/// Refuses to move a member of an application's `live` on its own: the
/// application's releases serve it.
fn member_live(record: &FunctionRecord, alias: &str) -> Result<(), RegistryError> {
    match &record.app {
        Some(app) if alias == LIVE => Err(RegistryError::Refused(format!(
            "function `{}` belongs to application `{app}`: its live version moves with the application's releases (`gust deploy` in the application's folder, or `gust deploy --app {app}` then `gust app release`); another alias may move on its own",
            record.name
        ))),
        _ => Ok(()),
    }
}

/// Activates a freshly deployed `version` on `record` as `how` says.
fn activate(record: &mut FunctionRecord, version: ActiveVersion, how: &Activation, now_ms: u64) {
    if *how == Activation::Staged {
        return;
    }
    if !record.aliases.contains_key(LIVE) {
        // The first deploy: there is nothing to compare a canary with.
        record
            .aliases
            .insert(LIVE.into(), Alias::new(version.clone(), now_ms));
    }
    match how {
        Activation::Alias(alias) => {
            supersede(
                record,
                alias,
                &format!("version {} was deployed to `{alias}`", version.version),
                now_ms,
            );
            match record.aliases.get_mut(alias.as_str()) {
                Some(a) => a.point_at(version, now_ms),
                None => {
                    record
                        .aliases
                        .insert(alias.clone(), Alias::new(version, now_ms));
                }
            }
        }
        Activation::Staged => {}
        Activation::Canary {
            basis_points,
            window_ms,
            policy,
        } => {
            supersede(
                record,
                LIVE,
                &format!("version {} was deployed as a new canary", version.version),
                now_ms,
            );
            if let Some(live) = record.aliases.get_mut(LIVE)
                && live.target.version != version.version
            {
                live.canary = Some(Canary {
                    version: version.version,
                    started_at_ms: now_ms,
                    window_ms: *window_ms,
                    policy: *policy,
                });
                live.split = Some(Split {
                    to: version,
                    basis_points: *basis_points,
                });
                live.updated_at_ms = now_ms;
            }
        }
    }
}
