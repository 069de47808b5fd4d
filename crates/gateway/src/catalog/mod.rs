//! The catalog: which loaded versions of which function serve a name and
//! its aliases (one loaded version each, splits between two), kept in step
//! with the registry by a watch. It is derived state: rebuilt from
//! the registry at start and after any missed change.
//!
//! A loaded version stays (warm, with its health) while an alias serves
//! it; the function's `live` loaded version stands for it in scaling, events and
//! limits. A request resolves, in order: a tenant's own origin under the
//! tenant domain, a claimed host (which serves its claims and nothing
//! else: it is its holder's origin), a function named in the path, a
//! claimed path prefix.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use gust_autoscale::Activity;
use gust_autoscale::canary::{Health, Snapshot};

use gust_core::app::AppRecord;
use gust_core::cluster::Membership;
use gust_core::config::{self, Variable};
use gust_core::delivery::DeliveryPolicy;
use gust_core::deploy;
use gust_core::route::{ClaimTable, RouteClaim};
use gust_core::{ActiveVersion, FunctionName, FunctionRecord, Limits, TenantId};
use gust_runtime::{Prepared, Runtime};
use gust_store::{BlobStore, MetaEvent, Registry, SecretBox};

use crate::admission::FunctionGate;

mod apps;
mod follow;
mod resolve;

pub(crate) use apps::AppTag;
pub(crate) use follow::follow_registry;
pub(crate) use resolve::Resolved;

/// One version of a function that an alias serves, and its component
/// once loaded.
pub(crate) struct Loaded {
    pub tenant: TenantId,
    pub name: FunctionName,
    pub version: u64,
    /// `version` as its answers' `gust-version` header (made once, shared).
    pub version_header: http::HeaderValue,
    pub digest: String,
    pub limits: Arc<Limits>,
    pub delivery: DeliveryPolicy,
    /// Callable without a token.
    pub public: bool,
    /// Its instances running and waiting, when it has `max_concurrency` or
    /// `reserved_concurrency` (one gate for all of a function's versions
    /// that have the same limit, and kept from version to version while
    /// the limit stays).
    pub gate: Option<Arc<FunctionGate>>,
    /// What the autoscaler observes: one per function, shared by all its
    /// versions and kept from version to version.
    pub activity: Arc<Activity>,
    /// What this version's answers show (a canary is judged on it).
    pub health: Arc<Health>,
    /// Its variables (environment and `wasi:config`), secrets opened.
    pub vars: Arc<[(String, String)]>,
    /// The application version it serves in (a member's only).
    pub app: Option<AppTag>,
    /// It is what `live` points at: only then does it run on the
    /// function's reserved instances (other versions share the node).
    live: std::sync::atomic::AtomicBool,
    /// The component, while the function is warm (`None`: scaled to zero).
    warm: RwLock<Option<Arc<Prepared>>>,
    /// Held while loading, so that concurrent first requests share one load.
    loading: tokio::sync::Mutex<()>,
}

/// Why a function's component could not be made ready.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    #[error("the component {0} is missing from the blob store")]
    MissingBlob(String),
    #[error("{0}")]
    Failed(String),
}

impl Loaded {
    fn new(
        record: &FunctionRecord,
        active: ActiveVersion,
        activity: Arc<Activity>,
        vars: Arc<[(String, String)]>,
        app: Option<AppTag>,
        members: &Arc<dyn Membership>,
    ) -> Self {
        Self {
            tenant: record.tenant.clone(),
            name: record.name.clone(),
            version: active.version,
            version_header: http::HeaderValue::from(active.version),
            digest: active.digest,
            gate: active.limits.concurrency_cap().map(|n| {
                let setting = if active.limits.reserved_concurrency == Some(n) {
                    "reserved_concurrency"
                } else {
                    "max_concurrency"
                };
                Arc::new(FunctionGate::new(n, setting, members.clone()))
            }),
            limits: Arc::new(active.limits),
            delivery: active.delivery,
            public: record.public,
            activity,
            health: Arc::default(),
            vars,
            app,
            live: std::sync::atomic::AtomicBool::new(false),
            warm: RwLock::new(None),
            loading: tokio::sync::Mutex::new(()),
        }
    }

    /// `<tenant>/<function>`.
    pub fn key(&self) -> String {
        route_key(self.tenant.as_str(), self.name.as_str())
    }

    /// Whether it runs on the function's reserved instances.
    pub fn is_live(&self) -> bool {
        self.live.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether this loaded version serves `version` as it is now.
    fn serves(&self, version: &ActiveVersion, public: bool) -> bool {
        self.version == version.version && self.digest == version.digest && self.public == public
    }

    fn warm_component(&self) -> Option<Arc<Prepared>> {
        self.warm.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the component is in memory.
    pub fn is_warm(&self) -> bool {
        self.warm
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Scales the function to zero: its component leaves memory (running
    /// invocations keep their copy until they end). False if it was not warm.
    pub fn unload(&self) -> bool {
        self.warm
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .is_some()
    }

    /// The prepared component, and whether this call had to load it (a
    /// cold start): loaded from the runtime's artifact cache (compiling from
    /// the stored blob only if no artifact exists). Concurrent first
    /// requests share one load.
    pub async fn prepared(
        &self,
        runtime: &Runtime,
        blobs: &dyn BlobStore,
    ) -> Result<(Arc<Prepared>, bool), LoadError> {
        if let Some(prepared) = self.warm_component() {
            return Ok((prepared, false));
        }
        let _turn = self.loading.lock().await;
        if let Some(prepared) = self.warm_component() {
            return Ok((prepared, false));
        }
        let prepared = match runtime.load(&self.digest).await {
            Ok(Some(prepared)) => prepared,
            outcome => {
                if let Err(e) = outcome {
                    // A damaged or unreadable artifact is rebuilt from the component.
                    tracing::warn!(function = %self.name, error = %e, "recompiling");
                }
                let bytes = blobs
                    .get(&self.digest)
                    .await
                    .map_err(|e| LoadError::Failed(e.to_string()))?
                    .ok_or_else(|| LoadError::MissingBlob(self.digest.clone()))?;
                runtime
                    .prepare(&self.digest, bytes)
                    .await
                    .map_err(|e| LoadError::Failed(e.to_string()))?
            }
        };
        *self.warm.write().unwrap_or_else(|p| p.into_inner()) = Some(prepared.clone());
        Ok((prepared, true))
    }
}

/// One function as served: a loaded version per version its aliases serve, and which
/// alias sends its traffic where.
pub(crate) struct Served {
    /// What `live` (the function's URL) points at: the loaded version whose limits,
    /// delivery policy and warmth stand for the function's.
    pub live: Arc<Loaded>,
    aliases: Vec<AliasTargets>,
    /// A canary running on `live`.
    pub canary: Option<RunningCanary>,
    /// Host names and path prefixes it claims.
    claims: Vec<RouteClaim>,
    /// A member's loaded version per application version kept (live,
    /// split, previous): calls from another member resolve here.
    app_versions: Vec<Arc<Loaded>>,
}

/// A canary on `live`: its settings, where its figures start, its loaded version.
pub(crate) struct RunningCanary {
    pub canary: deploy::Canary,
    pub baseline: Baseline,
    pub loaded: Arc<Loaded>,
}

/// An alias's variables over the function's, secrets opened (one that
/// does not open is left out, and said so in the log).
fn opened_vars(
    record: &FunctionRecord,
    alias: &str,
    a: &deploy::Alias,
    secrets: &SecretBox,
) -> Arc<[(String, String)]> {
    let mut vars = Vec::new();
    for (name, value) in config::merged(&record.vars, &a.vars) {
        match value {
            Variable::Plain { value } => vars.push((name.to_string(), value.clone())),
            Variable::Secret { sealed } => {
                let scope = a.vars.contains_key(name).then_some(alias);
                let context = config::secret_context(
                    record.tenant.as_str(),
                    record.name.as_str(),
                    scope,
                    name,
                );
                match secrets.open(&context, sealed) {
                    Ok(value) => vars.push((name.to_string(), value)),
                    Err(e) => tracing::error!(
                        function = %record.name, variable = name, error = %e,
                        "a secret cannot be opened; the function runs without it"
                    ),
                }
            }
        }
    }
    vars.into()
}

/// An alias: its target and, when split, the other version and its share.
struct AliasTargets {
    name: String,
    target: Arc<Loaded>,
    split: Option<(Arc<Loaded>, u16)>,
}

/// The two versions' figures when a canary started (or when this process
/// first served it): its window's figures are counted from here.
#[derive(Clone)]
pub(crate) struct Baseline {
    pub stable_version: u64,
    pub stable: Snapshot,
    pub canary: Snapshot,
}

impl Served {
    /// Builds a served function from its record (`None`: nothing to
    /// serve yet), keeping from `old` the loaded versions that did not
    /// change (warm, with their health), its activity, and gates whose
    /// limit stays. A version served under different variables (an
    /// alias's own) gets a loaded version per set of variables; a new loaded version of a
    /// component already in memory starts warm.
    fn build(
        record: FunctionRecord,
        app: Option<&AppRecord>,
        old: Option<&Served>,
        secrets: &SecretBox,
        members: &Arc<dyn Membership>,
    ) -> Option<Served> {
        // An application that ever named this function serves it (one
        // about to join, named by none yet, still serves its own `live`).
        let app = app.filter(|a| a.members().contains(record.name.as_str()));
        let activity = old.map_or_else(
            || Arc::new(Activity::new(crate::scaling::clock_us())),
            |o| o.live.activity.clone(),
        );
        let earlier = old.map(Served::versions).unwrap_or_default();
        let mut built: Vec<Arc<Loaded>> = Vec::new();
        let mut route_for = |version: &ActiveVersion,
                             vars: &Arc<[(String, String)]>,
                             tag: Option<AppTag>| {
            if let Some(loaded) = built
                .iter()
                .find(|r| r.version == version.version && r.vars == *vars && r.app == tag)
            {
                return loaded.clone();
            }
            let kept = earlier
                .iter()
                .find(|r| r.serves(version, record.public) && r.vars == *vars && r.app == tag);
            let loaded = match kept {
                Some(loaded) => loaded.clone(),
                None => {
                    let mut loaded = Loaded::new(
                        &record,
                        version.clone(),
                        activity.clone(),
                        vars.clone(),
                        tag,
                        members,
                    );
                    // A version keeps its figures (a canary is judged on
                    // them) when only its variables or visibility change.
                    // (Per application release: a canary release is judged
                    // on its own figures.)
                    if let Some(same) = earlier.iter().find(|r| {
                        r.version == version.version
                            && r.digest == version.digest
                            && r.app == loaded.app
                    }) {
                        loaded.health = same.health.clone();
                    }
                    if let Some(gate) = loaded.gate.as_ref().and_then(|new| {
                        built
                            .iter()
                            .chain(earlier.iter())
                            .filter_map(|r| r.gate.as_ref())
                            .find(|g| g.same_limit(new))
                    }) {
                        loaded.gate = Some(gate.clone());
                    }
                    let warm = built
                        .iter()
                        .chain(earlier.iter())
                        .filter(|r| r.digest == loaded.digest)
                        .find_map(|r| r.warm_component());
                    if let Some(prepared) = warm {
                        *loaded.warm.write().unwrap_or_else(|p| p.into_inner()) = Some(prepared);
                    }
                    Arc::new(loaded)
                }
            };
            built.push(loaded.clone());
            loaded
        };
        let open = |alias: &str, a: &deploy::Alias| opened_vars(&record, alias, a, secrets);
        let mut aliases = Vec::new();
        let mut app_versions = Vec::new();
        let (live, canary) = match app {
            Some(app) => {
                // A member: its plain URL serves the application's live
                // version (and split); a release moves it with the others.
                let key: Arc<str> = route_key(record.tenant.as_str(), app.name.as_str()).into();
                for version in app.served_versions() {
                    if let Some(active) = version.functions.get(record.name.as_str()) {
                        let vars = apps::opened_vars(&record, app, version, secrets);
                        let tag = AppTag {
                            app: key.clone(),
                            version: version.version,
                        };
                        app_versions.push(route_for(active, &vars, Some(tag)));
                    }
                }
                let at = |n: u64| {
                    app_versions
                        .iter()
                        .find(|l| l.app.as_ref().is_some_and(|t| t.version == n))
                        .cloned()
                };
                let split = app
                    .split
                    .and_then(|s| at(s.version).map(|l| (l, s.basis_points)));
                let live = match (at(app.live), split) {
                    (Some(live), split) => {
                        aliases.push(AliasTargets {
                            name: deploy::LIVE.into(),
                            target: live.clone(),
                            split,
                        });
                        live
                    }
                    // New in the split's release: only that release has it.
                    (None, Some((only, _))) => {
                        aliases.push(AliasTargets {
                            name: deploy::LIVE.into(),
                            target: only.clone(),
                            split: None,
                        });
                        only
                    }
                    // Dropped from the application: its plain URL serves
                    // nothing; requests still on the release before finish
                    // their calls to it.
                    (None, None) => app_versions.first()?.clone(),
                };
                (live, None)
            }
            None => {
                let live_alias = record.live()?.clone();
                let live_vars = open(deploy::LIVE, &live_alias);
                let live = route_for(&live_alias.target, &live_vars, None);
                let canary_route = live_alias
                    .split
                    .as_ref()
                    .map(|s| route_for(&s.to, &live_vars, None));
                let canary = live_alias
                    .canary
                    .clone()
                    .zip(canary_route)
                    .map(|(canary, loaded)| {
                        let kept = old
                            .and_then(|o| o.canary.as_ref())
                            .filter(|c| {
                                c.canary.version == canary.version
                                    && c.baseline.stable_version == live.version
                            })
                            .map(|c| c.baseline.clone());
                        let baseline = kept.unwrap_or_else(|| Baseline {
                            stable_version: live.version,
                            stable: live.health.snapshot(),
                            canary: loaded.health.snapshot(),
                        });
                        RunningCanary {
                            canary,
                            baseline,
                            loaded,
                        }
                    });
                (live, canary)
            }
        };
        for (name, alias) in &record.aliases {
            if app.is_some() && name == deploy::LIVE {
                continue;
            }
            let vars = open(name, alias);
            let split = alias
                .split
                .as_ref()
                .map(|s| (route_for(&s.to, &vars, None), s.basis_points));
            aliases.push(AliasTargets {
                name: name.clone(),
                target: route_for(&alias.target, &vars, None),
                split,
            });
        }
        for loaded in &built {
            loaded.live.store(
                Arc::ptr_eq(loaded, &live),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        Some(Served {
            live,
            aliases,
            canary,
            claims: record.routes,
            app_versions,
        })
    }

    /// The loaded version a request to `alias` takes (a split's side chosen by
    /// `gust_core::deploy::takes_split`); `None`: no such alias. The
    /// client's key and the random draw are asked for only when the alias
    /// is split, so an unsplit alias costs the request nothing.
    #[inline]
    pub fn pick(
        &self,
        alias: &str,
        sticky: impl FnOnce() -> Option<Vec<u8>>,
        random: impl FnOnce() -> u64,
    ) -> Option<&Arc<Loaded>> {
        let alias = self.aliases.iter().find(|a| a.name == alias)?;
        Some(match &alias.split {
            Some((other, share)) if deploy::takes_split(*share, sticky().as_deref(), random()) => {
                other
            }
            _ => &alias.target,
        })
    }

    /// Every loaded version, once each.
    pub fn versions(&self) -> Vec<Arc<Loaded>> {
        let mut versions = vec![self.live.clone()];
        for alias in &self.aliases {
            let split = alias.split.as_ref().map(|(r, _)| r);
            for loaded in std::iter::once(&alias.target).chain(split) {
                if !versions.iter().any(|v| Arc::ptr_eq(v, loaded)) {
                    versions.push(loaded.clone());
                }
            }
        }
        for loaded in &self.app_versions {
            if !versions.iter().any(|v| Arc::ptr_eq(v, loaded)) {
                versions.push(loaded.clone());
            }
        }
        versions
    }
}

/// `<tenant>/<function>` → the function as served.
pub(crate) struct Catalog {
    functions: RwLock<HashMap<String, Arc<Served>>>,
    /// The registry revision the catalog reflects, its new versions loaded,
    /// for callers that must not answer before the data plane serves what
    /// they wrote (a deploy waits for every node of a cluster to get here).
    applied: tokio::sync::watch::Sender<u64>,
    /// Revisions whose new versions are still loading, and the latest seen.
    pending: std::sync::Mutex<(std::collections::BTreeSet<u64>, u64)>,
    /// Opens the functions' secrets.
    secrets: Arc<SecretBox>,
    /// Every function's claimed hosts and prefixes → (`<tenant>/<name>`, alias).
    /// Swapped whole, so a reader never holds its lock while it looks
    /// functions up (the writer holds their lock while it swaps).
    claims: RwLock<Arc<ClaimTable<(String, String)>>>,
    /// `example.dev`: `<tenant>.example.dev` is that tenant's own origin.
    tenant_domain: Option<String>,
    /// The shared origin's own names: never a claimed host.
    public_hosts: Vec<String>,
    /// The live nodes, among which concurrency limits are shared.
    members: Arc<dyn Membership>,
    /// Applications and their members' records; locked after `functions`.
    apps: std::sync::Mutex<apps::Apps>,
}

impl Catalog {
    pub fn new(
        secrets: Arc<SecretBox>,
        tenant_domain: Option<String>,
        public_hosts: Vec<String>,
        members: Arc<dyn Membership>,
    ) -> Self {
        Self {
            members,
            apps: std::sync::Mutex::default(),
            functions: RwLock::default(),
            applied: tokio::sync::watch::Sender::new(0),
            pending: std::sync::Mutex::default(),
            secrets,
            claims: RwLock::default(),
            tenant_domain: tenant_domain
                .map(|d| d.trim_matches('.').to_ascii_lowercase())
                .filter(|d| !d.is_empty()),
            public_hosts: public_hosts
                .iter()
                .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
        }
    }

    pub fn applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Notes that registry revision `revision` is in the catalog and its
    /// new versions are loading: it counts as applied once they are
    /// ([`Catalog::loaded_revision`]), and so does every later one.
    fn loading_revision(&self, revision: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.0.insert(revision);
        pending.1 = pending.1.max(revision);
    }

    /// Notes that revision `revision` is ready to serve (its versions
    /// loaded, or their loading failed and was said so): the applied
    /// revision moves up to just below the oldest still loading.
    fn loaded_revision(&self, revision: u64) {
        let applied = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.0.remove(&revision);
            pending.1 = pending.1.max(revision);
            match pending.0.first() {
                Some(oldest) => oldest.saturating_sub(1),
                None => pending.1,
            }
        };
        self.mark_applied(applied);
    }

    fn mark_applied(&self, revision: u64) {
        self.applied.send_if_modified(|current| {
            let newer = revision > *current;
            if newer {
                *current = revision;
            }
            newer
        });
    }

    /// The function `name` of `tenant`. Its key is put together on the
    /// stack (every request looks one up; names are at most 63 bytes), on
    /// the heap only when longer.
    #[inline]
    pub fn get(&self, tenant: &str, name: &str) -> Option<Arc<Served>> {
        let mut buf = [0u8; 128];
        match route_key_in(&mut buf, tenant, name) {
            Some(key) => self.get_key(key),
            None => self.get_key(&route_key(tenant, name)),
        }
    }

    /// The function `<tenant>/<name>`.
    #[inline]
    fn get_key(&self, key: &str) -> Option<Arc<Served>> {
        self.functions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Applies one registry change: a function's record, or an
    /// application's (which rebuilds all its members at once).
    fn apply(&self, event: &MetaEvent) -> Applied {
        if let Some((tenant, name)) = Registry::parse_app_key(event.key()) {
            return self.apply_app(tenant.as_str(), name.as_str(), event);
        }
        let Some((tenant, name)) = Registry::parse_function_key(event.key()) else {
            return Applied::default();
        };
        let key = route_key(tenant.as_str(), name.as_str());
        let record = match event {
            MetaEvent::Put(entry) => match Registry::decode_function(entry) {
                Ok(record) => Some(record),
                Err(e) => {
                    tracing::error!(key = entry.key, error = %e, "skipping undecodable function record");
                    return Applied::default();
                }
            },
            MetaEvent::Delete { .. } => None,
        };
        let mut functions = self.functions.write().unwrap_or_else(|p| p.into_inner());
        let app = {
            let mut apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
            apps.note(&key, record.as_ref());
            record.as_ref().and_then(|r| apps.of(r))
        };
        let displaced = self.rebuild(&mut functions, &key, record, app.as_deref());
        Applied {
            displaced,
            touched: vec![key],
        }
    }

    /// Applies a change of application `<tenant>/<name>`'s record: every
    /// member is rebuilt under one write lock.
    fn apply_app(&self, tenant: &str, name: &str, event: &MetaEvent) -> Applied {
        let record = match event {
            MetaEvent::Put(entry) => match Registry::decode_app(entry) {
                Ok(record) => Some(Arc::new(record)),
                Err(e) => {
                    tracing::error!(key = entry.key, error = %e, "skipping undecodable application record");
                    return Applied::default();
                }
            },
            MetaEvent::Delete { .. } => None,
        };
        let mut functions = self.functions.write().unwrap_or_else(|p| p.into_inner());
        let members = {
            let mut apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
            let key = route_key(tenant, name);
            match &record {
                Some(record) => apps.records.insert(key, record.clone()),
                None => apps.records.remove(&key),
            };
            apps.members_of(tenant, name)
        };
        let mut applied = Applied::default();
        for (key, member) in members {
            let displaced = self.rebuild(&mut functions, &key, Some(member), record.as_deref());
            applied.displaced.extend(displaced);
            applied.touched.push(key);
        }
        applied
    }

    /// Rebuilds function `key` from its record (`None`: removed) within
    /// `app`; returns the loaded versions it no longer serves.
    fn rebuild(
        &self,
        functions: &mut HashMap<String, Arc<Served>>,
        key: &str,
        record: Option<FunctionRecord>,
        app: Option<&AppRecord>,
    ) -> Vec<Arc<Loaded>> {
        let old = functions.get(key).cloned();
        let claims_change = |served: Option<&Served>| {
            !old.as_ref()
                .map_or(&[][..], |o| &o.claims[..])
                .eq(served.map_or(&[][..], |s| &s.claims[..]))
        };
        match record
            .and_then(|r| Served::build(r, app, old.as_deref(), &self.secrets, &self.members))
        {
            Some(served) => {
                let kept = served.versions();
                let reindex = claims_change(Some(&served));
                functions.insert(key.to_string(), Arc::new(served));
                if reindex {
                    self.index_claims(functions);
                }
                old.map(|o| o.versions())
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|r| !kept.iter().any(|k| Arc::ptr_eq(k, r)))
                    .collect()
            }
            None => {
                let reindex = claims_change(None);
                functions.remove(key);
                if reindex {
                    self.index_claims(functions);
                }
                old.map(|o| o.versions()).unwrap_or_default()
            }
        }
    }

    /// Every function, as of now.
    pub fn all(&self) -> Vec<Arc<Served>> {
        self.functions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Σ `reserved_concurrency` of the functions (their `live` versions).
    /// The reservation of each function served that has one.
    pub fn reservations(&self) -> Vec<u32> {
        self.functions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter_map(|s| s.live.limits.reserved_concurrency)
            .collect()
    }

    /// Who reserves what (`<tenant>/<function>`, instances), but `except`.
    pub fn reservations_except(&self, except: &str) -> Vec<(String, u32)> {
        let functions = self.functions.read().unwrap_or_else(|p| p.into_inner());
        let mut holders: Vec<(String, u32)> = functions
            .iter()
            .filter(|(key, _)| key.as_str() != except)
            .filter_map(|(key, s)| s.live.limits.reserved_concurrency.map(|n| (key.clone(), n)))
            .collect();
        holders.sort();
        holders
    }

    fn serves_digest(&self, digest: &str) -> bool {
        self.functions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|s| s.versions().iter().any(|r| r.digest == digest))
    }

    /// Replaces every loaded version at once with those of `entries` (a resync):
    /// requests see the old table or the new one, never an empty one.
    /// Returns the digests that no loaded version serves any more.
    fn replace_all(&self, entries: &[gust_store::Entry]) -> Vec<String> {
        let mut functions = self.functions.write().unwrap_or_else(|p| p.into_inner());
        let mut fresh: HashMap<String, Arc<Served>> = HashMap::new();
        let mut apps = apps::Apps::default();
        for entry in entries {
            if let Some((tenant, name)) = Registry::parse_app_key(&entry.key) {
                match Registry::decode_app(entry) {
                    Ok(record) => {
                        apps.records
                            .insert(route_key(tenant.as_str(), name.as_str()), Arc::new(record));
                    }
                    Err(e) => {
                        tracing::error!(key = entry.key, error = %e, "skipping undecodable application record")
                    }
                }
            }
        }
        for entry in entries {
            let Some((tenant, name)) = Registry::parse_function_key(&entry.key) else {
                continue;
            };
            let record = match Registry::decode_function(entry) {
                Ok(record) => record,
                Err(e) => {
                    tracing::error!(key = entry.key, error = %e, "skipping undecodable function record");
                    continue;
                }
            };
            let key = route_key(tenant.as_str(), name.as_str());
            apps.note(&key, Some(&record));
            let app = apps.of(&record);
            if let Some(served) = Served::build(
                record,
                app.as_deref(),
                functions.get(&key).map(|s| s.as_ref()),
                &self.secrets,
                &self.members,
            ) {
                fresh.insert(key, Arc::new(served));
            }
        }
        let serving: std::collections::HashSet<String> = fresh
            .values()
            .flat_map(|s| s.versions())
            .map(|r| r.digest.clone())
            .collect();
        let mut gone: Vec<String> = functions
            .values()
            .flat_map(|s| s.versions())
            .map(|r| r.digest.clone())
            .filter(|d| !serving.contains(d))
            .collect();
        gone.sort();
        gone.dedup();
        self.index_claims(&fresh);
        *functions = fresh;
        *self.apps.lock().unwrap_or_else(|p| p.into_inner()) = apps;
        gone
    }
}

/// What one registry change did to the catalog.
#[derive(Default)]
struct Applied {
    /// Loaded versions no longer served.
    displaced: Vec<Arc<Loaded>>,
    /// The functions (`<tenant>/<name>`) it rebuilt or removed.
    touched: Vec<String>,
}

fn route_key(tenant: &str, name: &str) -> String {
    format!("{tenant}/{name}")
}

/// [`route_key`] written into `buf`, or `None` when it does not fit.
fn route_key_in<'b>(buf: &'b mut [u8], tenant: &str, name: &str) -> Option<&'b str> {
    let key = buf.get_mut(..tenant.len() + 1 + name.len())?;
    let (front, back) = key.split_at_mut(tenant.len());
    front.copy_from_slice(tenant.as_bytes());
    let (slash, back) = back.split_at_mut(1);
    slash.copy_from_slice(b"/");
    back.copy_from_slice(name.as_bytes());
    // Two strings and a `/`: always UTF-8.
    std::str::from_utf8(key).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_key_on_the_stack_is_the_heap_ones_or_nothing() {
        let mut buf = [0u8; 128];
        for (tenant, name) in [("default", "hello"), ("t", ""), ("", "f"), ("é", "ü-1")] {
            assert_eq!(
                route_key_in(&mut buf, tenant, name),
                Some(route_key(tenant, name).as_str())
            );
        }
        // The longest names (63 bytes each) fit; past the buffer, none.
        let long = "a".repeat(63);
        assert_eq!(
            route_key_in(&mut buf, &long, &long),
            Some(route_key(&long, &long).as_str())
        );
        assert_eq!(
            route_key_in(&mut buf, &long, &"b".repeat(64)),
            Some(route_key(&long, &"b".repeat(64)).as_str())
        );
        assert_eq!(route_key_in(&mut buf, &long, &"b".repeat(65)), None);
    }

    #[test]
    fn a_revision_is_applied_once_it_and_every_earlier_one_loaded() {
        let catalog = Catalog::new(
            Arc::new(SecretBox::from_key(&[7; 32]).unwrap()),
            None,
            Vec::new(),
            Arc::new(gust_core::cluster::OneNode::new("a")),
        );
        let applied = catalog.applied();
        catalog.loading_revision(5);
        catalog.loading_revision(6);
        catalog.loading_revision(7);
        // 6 and 7 are ready before 5: nothing moves past 4.
        catalog.loaded_revision(7);
        catalog.loaded_revision(6);
        assert_eq!(*applied.borrow(), 4);
        catalog.loaded_revision(5);
        assert_eq!(*applied.borrow(), 7);
        // A revision with nothing to load is applied at once.
        catalog.loading_revision(8);
        catalog.loaded_revision(8);
        assert_eq!(*applied.borrow(), 8);
    }
}
