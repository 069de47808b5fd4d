//! The registry: functions and their versions, as typed records over a
//! [`MetaStore`]. Keys are `fn/<tenant>/<name>` and
//! `ver/<tenant>/<name>/<version, zero-padded>`, so a prefix lists one
//! tenant's functions or one function's versions in order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use gust_core::config::Variable;
use gust_core::delivery::DeliveryPolicy;
use gust_core::deploy::{
    Alias, CANARY_HISTORY, Canary, CanaryOutcome, CanaryPolicy, CanaryReport, LIVE, Split,
};
use gust_core::route::RouteClaim;
use gust_core::{ActiveVersion, FunctionName, FunctionRecord, Limits, TenantId, VersionRecord};
use serde::{Serialize, de::DeserializeOwned};

use crate::lease::{Lease, LeaseGuard};
use crate::{Entry, MetaStore, StoreError, Watch};

/// Errors from registry operations that callers branch on.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("function `{0}` does not exist")]
    NoSuchFunction(FunctionName),
    #[error("function `{0}` already exists")]
    AlreadyExists(FunctionName),
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

/// Each tenant's total component bytes, counted from its version records
/// on first use and forgotten whenever a version record of the tenant
/// changes: at once when this process changes it, and when a watch of
/// every version record sees it (another node's deploy or removal, a few
/// milliseconds later). Counts are kept only while that watch runs; the
/// generation keeps a count that raced a change from being kept.
#[derive(Default)]
struct ComponentBytes {
    generation: u64,
    by_tenant: HashMap<TenantId, u64>,
    /// The watch runs: a count kept now is forgotten on any later change.
    following: bool,
    /// Dropped with the last clone of the registry, which ends the watch.
    follower: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ComponentBytes {
    fn forget_all(&mut self, following: bool) {
        self.generation += 1;
        self.by_tenant.clear();
        self.following = following;
    }
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

    /// Held by a deploy from storing its component until its version
    /// record is written, and by [`Registry::unreferenced`]'s caller
    /// until it has removed what that found: a lease in the store, so it
    /// holds across the nodes of a cluster (within [`Lease`]'s bound).
    pub async fn components_lock(&self) -> Result<LeaseGuard, RegistryError> {
        Ok(self.uploading.acquire().await?)
    }

    /// Those of `digests` that no version of any function refers to: their
    /// components and compiled artifacts may be removed. Reads every
    /// version record; a removal is rare next to a request.
    pub async fn unreferenced(&self, digests: &[String]) -> Result<Vec<String>, RegistryError> {
        let mut left: Vec<String> = digests.to_vec();
        left.sort();
        left.dedup();
        if left.is_empty() {
            return Ok(left);
        }
        for entry in self.kv.list(VERSIONS_PREFIX).await? {
            let record: VersionRecord = decode(&entry)?;
            left.retain(|d| *d != record.digest);
            if left.is_empty() {
                break;
            }
        }
        Ok(left)
    }

    /// The digest of every version of every function, and of every version
    /// an alias serves (its record names the digest, so it serves even if
    /// its version record went in a race with retention): the components
    /// (and compiled artifacts) that must stay.
    pub async fn referenced_digests(
        &self,
    ) -> Result<std::collections::HashSet<String>, RegistryError> {
        let mut digests = std::collections::HashSet::new();
        for entry in self.kv.list(VERSIONS_PREFIX).await? {
            digests.insert(decode::<VersionRecord>(&entry)?.digest);
        }
        for entry in self.kv.list(FUNCTIONS_PREFIX).await? {
            let record: FunctionRecord = decode(&entry)?;
            for alias in record.aliases.values() {
                digests.insert(alias.target.digest.clone());
                if let Some(split) = &alias.split {
                    digests.insert(split.to.digest.clone());
                }
            }
        }
        Ok(digests)
    }

    /// Version retention: removes each function's versions past its `keep`
    /// newest that no alias refers to ([`FunctionRecord::versions_past`]);
    /// returns the removed versions' digests, whose components the caller
    /// collects ([`Registry::unreferenced`]); the caller holds
    /// [`Registry::components_lock`]. Versions are immutable, so one that an
    /// alias moved to meanwhile (the function's record changed during the
    /// removal) is written back as it was. An alias move whose
    /// compare-and-set lands after that check may point at a removed
    /// version: it serves (its record names the digest, which
    /// [`Registry::referenced_digests`] keeps), but is no longer listed.
    pub async fn prune_versions(&self, keep: usize) -> Result<Vec<String>, RegistryError> {
        let mut removed = Vec::new();
        if keep == 0 {
            return Ok(removed);
        }
        for entry in self.kv.list(FUNCTIONS_PREFIX).await? {
            let record: FunctionRecord = decode(&entry)?;
            if record.latest_version <= keep as u64 {
                continue;
            }
            let prefix = versions_prefix(&record.tenant, &record.name);
            let versions: Vec<VersionRecord> = self
                .kv
                .list(&prefix)
                .await?
                .iter()
                .map(decode)
                .collect::<Result<_, _>>()?;
            let numbers: Vec<u64> = versions.iter().map(|v| v.version).collect();
            let past = record.versions_past(&numbers, keep);
            if past.is_empty() {
                continue;
            }
            let mut gone = Vec::new();
            for version in versions.into_iter().filter(|v| past.contains(&v.version)) {
                let key = version_key(&record.tenant, &record.name, version.version);
                if self.kv.delete(&key).await?.is_some() {
                    gone.push(version);
                }
            }
            let now = self.function(&record.tenant, &record.name).await?;
            let still = now.as_ref().map(FunctionRecord::referenced_versions);
            for version in gone {
                if still.as_ref().is_some_and(|s| s.contains(&version.version)) {
                    let key = version_key(&record.tenant, &record.name, version.version);
                    self.kv.put(&key, encode(&version)?).await?;
                } else {
                    removed.push(version.digest);
                }
            }
            self.forget_component_bytes(&record.tenant);
        }
        Ok(removed)
    }

    fn components(&self) -> std::sync::MutexGuard<'_, ComponentBytes> {
        self.components.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forget_component_bytes(&self, tenant: &TenantId) {
        let mut cache = self.components();
        cache.generation += 1;
        cache.by_tenant.remove(tenant);
    }

    /// Bytes of every stored version of every function of the tenant: as
    /// of a few milliseconds ago for changes made by other processes.
    pub async fn component_bytes(&self, tenant: &TenantId) -> Result<u64, RegistryError> {
        let generation = {
            let mut cache = self.components();
            if cache.follower.is_none()
                && let Ok(runtime) = tokio::runtime::Handle::try_current()
            {
                let (keep, stopped) = tokio::sync::oneshot::channel();
                cache.follower = Some(keep);
                runtime.spawn(follow_versions(
                    self.kv.clone(),
                    Arc::downgrade(&self.components),
                    stopped,
                ));
            }
            if cache.following
                && let Some(bytes) = cache.by_tenant.get(tenant)
            {
                return Ok(*bytes);
            }
            cache.generation
        };
        let mut total = 0u64;
        for entry in self.kv.list(&format!("{VERSIONS_PREFIX}{tenant}/")).await? {
            total = total.saturating_add(decode::<VersionRecord>(&entry)?.size_bytes);
        }
        let mut cache = self.components();
        if cache.following && cache.generation == generation {
            cache.by_tenant.insert(tenant.clone(), total);
        }
        Ok(total)
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
        Ok(entries.iter().map(decode).collect::<Result<_, _>>()?)
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

    /// Whether `claims` are free for `name` (or already its own); the
    /// first that is not, as [`RegistryError::RouteTaken`]. A check before
    /// a deploy; [`Registry::set_routes`] takes them for good.
    pub async fn check_routes(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        claims: &[RouteClaim],
    ) -> Result<(), RegistryError> {
        let owner = format!("{tenant}/{name}");
        for claim in claims {
            self.check_host_holder(tenant, claim).await?;
            if let Some(holder) = self.kv.get(&claim_key(claim)).await? {
                let holder = String::from_utf8_lossy(&holder.value).into_owned();
                if holder != owner {
                    return Err(route_taken(tenant, claim, &holder));
                }
            }
        }
        Ok(())
    }

    /// A host belongs to the tenant that holds a claim on it: another
    /// tenant's claim on the same host, with any prefix (or none), is
    /// refused, so no tenant serves paths on an origin whose users'
    /// cookies and tokens belong to someone else. The holder is named only
    /// as "another tenant". [`Registry::set_routes`] runs this under its
    /// claiming lease, so two tenants never take a host at once.
    async fn check_host_holder(
        &self,
        tenant: &TenantId,
        claim: &RouteClaim,
    ) -> Result<(), RegistryError> {
        let Some(host) = &claim.host else {
            return Ok(());
        };
        let host_key = format!("claim/{host}");
        for entry in self.kv.list(&host_key).await? {
            let same_host = entry
                .key
                .strip_prefix(host_key.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
            if !same_host {
                continue;
            }
            let holder = String::from_utf8_lossy(&entry.value).into_owned();
            let holder_tenant = holder.split_once('/').map_or("", |(t, _)| t);
            if holder_tenant != tenant.as_str() {
                return Err(RegistryError::RouteTaken {
                    claim: claim.to_string(),
                    owner: "a function of another tenant".into(),
                });
            }
        }
        Ok(())
    }

    /// Makes `claims` the function's routes. Each place (host and prefix)
    /// is held under one key created by compare-and-set, so two functions
    /// never hold the same; a place another function holds is refused,
    /// naming it (another tenant's only as such), and nothing changes.
    /// Places the function gives up are released.
    pub async fn set_routes(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        claims: Vec<RouteClaim>,
    ) -> Result<(FunctionRecord, u64), RegistryError> {
        let _claiming = self.claiming.acquire().await?;
        let owner = format!("{tenant}/{name}");
        if self.function(tenant, name).await?.is_none() {
            return Err(RegistryError::NoSuchFunction(name.clone()));
        }
        for claim in &claims {
            self.check_host_holder(tenant, claim).await?;
        }
        let mut taken: Vec<String> = Vec::new();
        for claim in &claims {
            let key = claim_key(claim);
            match self
                .kv
                .compare_and_set(&key, Bytes::from(owner.clone()), None)
                .await
            {
                Ok(_) => taken.push(key),
                Err(StoreError::Conflict { .. }) => {
                    let holder = self.kv.get(&key).await?;
                    let holder = holder
                        .as_ref()
                        .map(|e| String::from_utf8_lossy(&e.value).into_owned());
                    if holder.as_deref() == Some(owner.as_str()) {
                        continue;
                    }
                    for key in &taken {
                        self.kv.delete(key).await?;
                    }
                    return Err(route_taken(tenant, claim, holder.as_deref().unwrap_or("")));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let kept = claims.clone();
        let mut replaced = Vec::new();
        let updated = self
            .update(tenant, name, |record| {
                replaced = std::mem::replace(&mut record.routes, kept.clone());
                Ok(())
            })
            .await;
        let (record, (), revision) = match updated {
            Ok(done) => done,
            Err(e) => {
                for key in &taken {
                    self.kv.delete(key).await?;
                }
                return Err(e);
            }
        };
        for old in &replaced {
            if !claims.iter().any(|c| c.place() == old.place()) {
                self.kv.delete(&claim_key(old)).await?;
            }
        }
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

    /// Watches every tenant's function records.
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

/// Forgets the component bytes counted for a tenant whenever one of its
/// version records changes, as long as the registry lives; while the
/// watch is down, nothing is kept (every count reads the records).
async fn follow_versions(
    kv: Arc<dyn MetaStore>,
    cache: Weak<Mutex<ComponentBytes>>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let with = |f: &dyn Fn(&mut ComponentBytes)| match cache.upgrade() {
        Some(cache) => {
            f(&mut cache.lock().unwrap_or_else(|p| p.into_inner()));
            true
        }
        None => false,
    };
    loop {
        let watch = tokio::select! {
            _ = &mut stopped => return,
            watch = kv.watch(VERSIONS_PREFIX) => watch,
        };
        let mut changes = match watch {
            Ok(watch) => watch.changes,
            Err(StoreError::Closed) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch version records; counting component bytes afresh each time");
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        if !with(&|c| c.forget_all(true)) {
            return;
        }
        loop {
            let event = tokio::select! {
                _ = &mut stopped => return,
                event = changes.next() => event,
            };
            match event {
                Ok(event) => {
                    let tenant = event
                        .key()
                        .strip_prefix(VERSIONS_PREFIX)
                        .and_then(|rest| rest.split('/').next())
                        .unwrap_or_default()
                        .to_string();
                    let forgot = with(&|c| {
                        c.generation += 1;
                        c.by_tenant.retain(|t, _| t.as_str() != tenant);
                    });
                    if !forgot {
                        return;
                    }
                }
                Err(e) => {
                    with(&|c| c.forget_all(false));
                    if matches!(e, StoreError::Closed) {
                        return;
                    }
                    break;
                }
            }
        }
    }
}

/// `claim` is held by `holder` (`<tenant>/<function>`), named to its own
/// tenant only.
fn route_taken(tenant: &TenantId, claim: &RouteClaim, holder: &str) -> RegistryError {
    let owner = match holder.split_once('/') {
        Some((t, f)) if t == tenant.as_str() => format!("function `{f}`"),
        Some(_) => "a function of another tenant".into(),
        None => "another function (being changed now)".into(),
    };
    RegistryError::RouteTaken {
        claim: claim.to_string(),
        owner,
    }
}

/// Activates a freshly deployed `version` on `record` as `how` says.
fn activate(record: &mut FunctionRecord, version: ActiveVersion, how: &Activation, now_ms: u64) {
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
