//! Gust's control plane: a versioned REST API (`/v1/...`, JSON) to create,
//! list, inspect and delete functions, deploy versions by uploading a
//! component, read invocation logs, manage events, schedules, key-value
//! buckets and change triggers; its OpenAPI document is generated
//! from the handlers below and served at `/v1/openapi.json`. Prometheus
//! metrics are served at `/metrics`.
//!
//! It listens on its own address and must never be reachable on the
//! data-plane port; it serves no function traffic.

mod aliases;
mod auth;
mod error;
mod event_sources;
mod kv;
mod metrics;
mod openapi;
mod routes;
mod text;
mod usage;
mod vars;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use gust_autoscale::ScaleStatus;
use gust_core::InvocationRecord;
use gust_core::access::Action;
use gust_core::delivery::{DeadReason, DeliveryPolicy};
use gust_core::{
    FunctionName, FunctionRecord, Limits, LimitsPatch, LogRecord, TenantId, VersionRecord,
};
use gust_events::Events;
use gust_runtime::Runtime;
use gust_store::{Activation, BlobStore, LogStore, NewVersion, Registry, digest_of};
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;

pub use aliases::{AliasInfo, CanaryInfo, RolledBack, SetAlias, SplitInfo};
pub use auth::{AuditEntry, Caller, NewTenant, NewToken, TENANT_HEADER, TenantInfo, TokenInfo};
pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use kv::{KeyEntry, KeyPage, NewTrigger, TriggerInfo, Written};
pub use metrics::{DataPlaneStats, DataPlaneView, FunctionScaling};
pub use vars::VarInfo;

/// What the API needs; built by the binary.
#[derive(Clone)]
pub struct ApiState {
    pub registry: Registry,
    pub blobs: Arc<dyn BlobStore>,
    pub logs: Arc<dyn LogStore>,
    pub runtime: Runtime,
    /// Base URL of the data plane, e.g. `http://127.0.0.1:8080`.
    pub public_url: String,
    /// The domain whose subdomains are tenants' own origins
    /// (`--tenant-domain`): no function may claim a host under it.
    pub tenant_domain: Option<String>,
    /// Other names of the data plane's shared origin (`--public-host`):
    /// no function may claim them.
    pub public_hosts: Vec<String>,
    /// Largest component accepted by a deploy, in bytes.
    pub max_upload_bytes: usize,
    /// The data plane's figures for `/metrics` (the rest it reads itself).
    pub metrics: DataPlaneView,
    pub events: Events,
    pub buckets: gust_store::Buckets,
    pub accounts: gust_store::Accounts,
    /// The usage ledger (`None`: metering is off).
    pub meter: Option<gust_meter::Meter>,
    /// Tokens required (false only in dev mode, on loopback).
    pub auth: bool,
    /// Turns `true` when the server shuts down; long-polls return then.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// The registry revision the data plane serves: a deploy or delete
    /// answers once its write is live, so the next request sees it.
    pub applied: tokio::sync::watch::Receiver<u64>,
    /// A function's scaling (`<tenant>`, `<name>`), from the data plane.
    pub scale: ScaleView,
    /// Whether the node has room for a function's `reserved_concurrency`.
    pub reservations: ReservationCheck,
    /// Seals secret variables (the data plane opens them).
    pub secrets: Arc<gust_store::SecretBox>,
}

/// Looks up a function's scaling; supplied by the binary.
pub type ScaleView = Arc<dyn Fn(&str, &str) -> Option<ScaleStatus> + Send + Sync>;

/// (`<tenant>`, `<name>`, instances to reserve) → why they do not fit.
pub type ReservationCheck = Arc<dyn Fn(&str, &str, u32) -> Result<(), String> + Send + Sync>;

/// A function as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionInfo {
    pub name: String,
    /// The version serving traffic; `null` before the first deploy.
    pub version: Option<u64>,
    pub latest_version: u64,
    /// Where the function answers on the data plane.
    pub url: String,
    pub digest: Option<String>,
    pub limits: Option<Limits>,
    pub created_at_ms: u64,
    /// Callable without a token.
    pub public: bool,
    /// Where its aliases point (`live`: its URL).
    #[serde(default)]
    pub aliases: Vec<aliases::AliasInfo>,
    /// How its last canaries ended, newest last.
    #[serde(default)]
    pub canaries: Vec<gust_core::deploy::CanaryReport>,
    /// Host names and path prefixes it claims.
    #[serde(default)]
    pub routes: Vec<gust_core::route::RouteClaim>,
}

/// A deployed version as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionInfo {
    pub name: String,
    pub version: u64,
    pub digest: String,
    pub size_bytes: u64,
    pub limits: Limits,
    pub created_at_ms: u64,
    pub url: String,
    /// Time the deploy spent validating and compiling, in ms (only on deploy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prepare_ms: Option<u64>,
    /// What the deploy did with it: the alias it took over, or the canary
    /// it started (only on deploy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateFunction {
    pub name: String,
}

/// Limits for a new version, as query parameters; omitted ones keep their defaults.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeployParams {
    /// Memory limit in bytes (default 128 MiB).
    pub memory_bytes: Option<u64>,
    /// Wall-clock timeout in ms (default 30000).
    pub timeout_ms: Option<u64>,
    /// Largest request body in bytes (default 6 MiB).
    pub max_body_bytes: Option<u64>,
    /// Output kept per invocation in bytes (default 64 KiB).
    pub max_output_bytes: Option<u64>,
    /// Comma-separated hosts the function may call (default: none).
    pub allowed_hosts: Option<String>,
    /// Comma-separated internal hosts (IP addresses or exact names of this
    /// machine or a private network) the function may call: admin only.
    pub allow_internal_hosts: Option<String>,
    /// What the function may cost per month, in micro-units (default: no
    /// limit but the tenant's).
    pub monthly_budget_micros: Option<u64>,
    /// Instances running at once, at most (default: no per-function limit).
    pub max_concurrency: Option<u32>,
    /// Instances of the node set aside for this function alone; it runs
    /// on them only (default: none, it shares the rest of the node).
    pub reserved_concurrency: Option<u32>,
    /// Requests that may wait for a free instance (default 64).
    pub queue_depth: Option<u32>,
    /// How long one may wait, in ms (default 1000).
    pub queue_wait_ms: Option<u64>,
    /// When the idle function leaves memory: `learned` (default) or a
    /// duration such as `10m` or `0ms`.
    pub keep_alive: Option<String>,
    /// Instances kept warm whatever the traffic: `2`, or
    /// `2@mon-fri 09:00-17:00` (UTC) for those hours only.
    pub provisioned: Option<String>,
    /// Event delivery: attempts in all (default 3).
    pub max_attempts: Option<u32>,
    /// Event delivery: delay before the first retry in ms, doubled after (default 1000).
    pub initial_backoff_ms: Option<u64>,
    /// Event delivery: longest delay between attempts in ms (default 60000).
    pub max_backoff_ms: Option<u64>,
    /// Event delivery: an event older than this is dead-lettered, in ms (default 6 h).
    pub max_age_ms: Option<u64>,
    /// Event delivery: attempts running at once (default 16).
    pub concurrency: Option<u32>,
    /// Event delivery: a function told of every delivered event.
    pub on_success: Option<String>,
    /// Event delivery: a function told of every dead-lettered event.
    pub on_failure: Option<String>,
    /// `true`: anyone with the URL may call it; `false`: a token is needed.
    /// Absent: unchanged (a new function is private).
    pub public: Option<bool>,
    /// The alias the new version takes over (default `live`: the
    /// function's URL). A function's first deploy is always `live` too.
    pub alias: Option<String>,
    /// Host names and path prefixes the function claims (comma-separated:
    /// `api.example.com/v1,/shop:staging`), replacing those it has; a
    /// place another function holds fails the deploy (409).
    pub routes: Option<String>,
    /// Deploy as a canary of `live`: `10%,5m` sends it 10% of the traffic
    /// for 5 minutes, then promotes it, or rolls it back as soon as its
    /// errors or latency are worse than the stable version's.
    pub canary: Option<String>,
}

impl DeployParams {
    fn activation(&self) -> Result<Activation, ApiError> {
        match (&self.alias, &self.canary) {
            (Some(_), Some(_)) => Err(ApiError::BadRequest(
                "`canary` splits `live`; it cannot be combined with `alias`".into(),
            )),
            (_, Some(canary)) => {
                let spec: gust_core::deploy::CanarySpec =
                    canary.parse().map_err(ApiError::BadRequest)?;
                Ok(Activation::Canary {
                    basis_points: spec.basis_points,
                    window_ms: spec.window_ms,
                    policy: Default::default(),
                })
            }
            (Some(alias), None) => {
                gust_core::deploy::check_alias(alias)
                    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
                Ok(Activation::Alias(alias.clone()))
            }
            (None, None) => Ok(Activation::default()),
        }
    }
}

impl DeployParams {
    /// Refuses free-text parameters past their size limits.
    fn check_text(&self) -> Result<(), ApiError> {
        let hosts = self.allowed_hosts.as_deref();
        text::check_opt("allowed_hosts", hosts, text::MAX_ALLOWED_HOSTS_BYTES)?;
        let internal = self.allow_internal_hosts.as_deref();
        let max = text::MAX_ALLOWED_HOSTS_BYTES;
        text::check_opt("allow_internal_hosts", internal, max)?;
        text::check_opt("routes", self.routes.as_deref(), text::MAX_ROUTES_BYTES)?;
        for (field, value) in [
            ("keep_alive", &self.keep_alive),
            ("provisioned", &self.provisioned),
            ("canary", &self.canary),
        ] {
            text::check_opt(field, value.as_deref(), text::MAX_SETTING_BYTES)?;
        }
        Ok(())
    }

    fn delivery(&self) -> Result<DeliveryPolicy, ApiError> {
        let d = DeliveryPolicy::default();
        let policy = DeliveryPolicy {
            max_attempts: self.max_attempts.unwrap_or(d.max_attempts),
            initial_backoff_ms: self.initial_backoff_ms.unwrap_or(d.initial_backoff_ms),
            max_backoff_ms: self.max_backoff_ms.unwrap_or(d.max_backoff_ms),
            max_age_ms: self.max_age_ms.unwrap_or(d.max_age_ms),
            concurrency: self.concurrency.unwrap_or(d.concurrency),
            on_success: self.on_success.clone(),
            on_failure: self.on_failure.clone(),
        };
        policy.validate().map_err(ApiError::BadRequest)?;
        Ok(policy)
    }
}

/// A dead-lettered event, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetterInfo {
    pub invocation_id: String,
    pub reason: DeadReason,
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub dead_at_ms: u64,
    /// CloudEvents `id`, `source`, `type` of the event.
    pub event_id: String,
    pub event_source: String,
    pub event_type: String,
    pub data_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Redriven {
    pub redriven: usize,
}

/// The answer to an accepted asynchronous invocation.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Accepted {
    pub invocation_id: String,
    pub state: gust_core::InvocationState,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SubmitParams {
    /// Path (and query) the function sees (default `/`).
    pub path: Option<String>,
}

/// A schedule to add to a function.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSchedule {
    /// Cron with seconds (`*/5 * * * * *`), classic five-field cron, or `@every 30s`.
    pub expr: String,
    /// `UTC` (default), a fixed offset such as `+02:00`, or a tz database name such as `Europe/Paris`.
    pub tz: Option<String>,
    /// A name for the schedule (default: generated).
    pub id: Option<String>,
    /// Ticks missed while the server was down fired when it is back, at most (default 0: skipped).
    pub catch_up: Option<u32>,
    /// Request path the function sees (default `/`; at most 1024 bytes).
    pub path: Option<String>,
}

/// A schedule as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleInfo {
    pub id: String,
    pub function: String,
    pub expr: String,
    pub tz: String,
    pub created_at_ms: u64,
    /// Missed ticks fired after downtime, at most.
    pub catch_up: u32,
    pub path: String,
    /// When it fires next (Unix ms).
    pub next_ms: Option<u64>,
}

impl From<gust_events::ScheduleRecord> for ScheduleInfo {
    fn from(r: gust_events::ScheduleRecord) -> Self {
        let next_ms = gust_core::schedule::Schedule::parse(&r.expr)
            .ok()
            .zip(gust_events::TimeZone::parse(&r.tz).ok())
            .and_then(|(s, zone)| s.next_after(now_ms(), &zone));
        Self {
            id: r.id,
            function: r.function.to_string(),
            expr: r.expr,
            tz: r.tz,
            created_at_ms: r.created_ms,
            catch_up: r.catch_up,
            path: r.path,
            next_ms,
        }
    }
}

/// Largest payload of an event sent through the control API.
const MAX_EVENT_BYTES: usize = 1 << 20;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// At most this many (default 100, at most 10000).
    pub limit: Option<usize>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    /// Return entries with a sequence number above this (default 0).
    pub after: Option<u64>,
    /// At most this many entries (default 100, at most 1000).
    pub limit: Option<usize>,
    /// When nothing is new, wait up to this long for an entry (ms, at most 30000).
    pub wait_ms: Option<u64>,
}

/// One invocation's log entry.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogEntry {
    pub seq: u64,
    #[serde(flatten)]
    pub record: LogRecord,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogPage {
    pub entries: Vec<LogEntry>,
    /// Pass as `after` to continue.
    pub next: u64,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Gust control API",
        description = "Deploy and manage Gust functions."
    ),
    paths(
        list_functions,
        create_function,
        get_function,
        delete_function,
        deploy_version,
        list_versions,
        get_version,
        get_scale,
        vars::list_vars,
        vars::change_vars,
        routes::list_routes,
        routes::set_routes,
        aliases::list_aliases,
        aliases::set_alias,
        aliases::remove_alias,
        aliases::rollback,
        read_logs,
        list_invocations,
        submit_invocation,
        get_invocation,
        add_schedule,
        list_schedules,
        remove_schedule,
        event_sources::list_all_schedules,
        list_dead_letters,
        redrive_all,
        redrive_one,
        usage::usage,
        usage::records,
        kv::list_keys,
        kv::get_key,
        kv::put_key,
        kv::delete_key,
        kv::add_trigger,
        kv::list_triggers,
        kv::remove_trigger,
        event_sources::list_all_triggers,
        auth::create_tenant,
        auth::list_tenants,
        auth::current_tenant,
        auth::set_quotas,
        auth::set_plan,
        auth::create_token,
        auth::list_tokens,
        auth::revoke_token,
        auth::read_audit
    ),
    components(schemas(
        gust_meter::UsageReport,
        gust_meter::UsageGroup,
        gust_meter::UsageTotals,
        gust_meter::GroupBy,
        FunctionInfo,
        VersionInfo,
        vars::VarInfo,
        vars::NewVar,
        gust_core::route::RouteClaim,
        vars::VarsPatch,
        aliases::AliasInfo,
        aliases::SplitInfo,
        aliases::CanaryInfo,
        aliases::SetAlias,
        aliases::RolledBack,
        gust_core::deploy::CanaryReport,
        gust_core::deploy::CanaryOutcome,
        CreateFunction,
        LogEntry,
        LogPage,
        ErrorBody,
        ErrorDetail,
        DeadLetterInfo,
        Redriven,
        Accepted,
        NewSchedule,
        ScheduleInfo,
        InvocationRecord,
        DeliveryPolicy,
        Limits,
        LogRecord,
        gust_core::Outcome,
        kv::KeyEntry,
        kv::KeyPage,
        kv::Written,
        kv::NewTrigger,
        kv::TriggerInfo,
        auth::TenantInfo,
        auth::NewTenant,
        auth::TokenInfo,
        auth::NewToken,
        auth::AuditEntry,
        gust_core::access::Quotas,
        gust_core::access::Role,
        gust_autoscale::ScaleStatus,
        gust_autoscale::ScaleEvent
    ))
)]
struct ApiDoc;

/// The OpenAPI document, as served at `/v1/openapi.json`.
pub fn openapi_json() -> String {
    serde_json::to_value(ApiDoc::openapi())
        .map(openapi::finish)
        .and_then(|doc| serde_json::to_string_pretty(&doc))
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// Serves the control API on `listener` (over TLS when `config` says so)
/// until `shutdown` resolves, then lets requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    config: gust_net::ListenConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let make_service = move || hyper_util::service::TowerToHyperService::new(router.clone());
    let drain = gust_net::serve(listener, config, make_service, shutdown).await;
    drain.finish(Duration::from_secs(30)).await;
}

/// The control API's routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/functions", get(list_functions).post(create_function))
        .route(
            "/v1/functions/{name}",
            get(get_function).delete(delete_function),
        )
        .route(
            "/v1/functions/{name}/versions",
            get(list_versions)
                .post(deploy_version)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/functions/{name}/versions/{version}", get(get_version))
        .route("/v1/functions/{name}/logs", get(read_logs))
        .route("/v1/functions/{name}/scale", get(get_scale))
        .route(
            "/v1/functions/{name}/vars",
            get(vars::list_vars).patch(vars::change_vars),
        )
        .route(
            "/v1/functions/{name}/routes",
            get(routes::list_routes).put(routes::set_routes),
        )
        .route("/v1/functions/{name}/aliases", get(aliases::list_aliases))
        .route(
            "/v1/functions/{name}/aliases/{alias}",
            axum::routing::put(aliases::set_alias).delete(aliases::remove_alias),
        )
        .route(
            "/v1/functions/{name}/rollback",
            axum::routing::post(aliases::rollback),
        )
        .route(
            "/v1/functions/{name}/invocations",
            get(list_invocations).post(submit_invocation),
        )
        .route("/v1/invocations/{id}", get(get_invocation))
        .route("/v1/schedules", get(event_sources::list_all_schedules))
        .route("/v1/triggers", get(event_sources::list_all_triggers))
        .route(
            "/v1/functions/{name}/schedules",
            get(list_schedules).post(add_schedule),
        )
        .route(
            "/v1/functions/{name}/schedules/{id}",
            axum::routing::delete(remove_schedule),
        )
        .route("/v1/functions/{name}/dead-letters", get(list_dead_letters))
        .route(
            "/v1/functions/{name}/dead-letters/redrive",
            axum::routing::post(redrive_all),
        )
        .route(
            "/v1/functions/{name}/dead-letters/{id}/redrive",
            axum::routing::post(redrive_one),
        )
        .route(
            "/v1/functions/{name}/triggers",
            get(kv::list_triggers).post(kv::add_trigger),
        )
        .route(
            "/v1/functions/{name}/triggers/{id}",
            axum::routing::delete(kv::remove_trigger),
        )
        .route("/v1/kv/{bucket}/keys", get(kv::list_keys))
        .route(
            "/v1/kv/{bucket}/keys/{*key}",
            get(kv::get_key)
                .put(kv::put_key)
                .delete(kv::delete_key)
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/tenants",
            get(auth::list_tenants).post(auth::create_tenant),
        )
        .route("/v1/tenant", get(auth::current_tenant))
        .route(
            "/v1/tenants/{id}/quotas",
            axum::routing::put(auth::set_quotas),
        )
        .route("/v1/tenants/{id}/plan", axum::routing::put(auth::set_plan))
        .route(
            "/v1/tokens",
            get(auth::list_tokens).post(auth::create_token),
        )
        .route("/v1/tokens/{id}", axum::routing::delete(auth::revoke_token))
        .route("/v1/audit", get(auth::read_audit))
        .route("/v1/usage", get(usage::usage))
        .route("/v1/usage/records", get(usage::records))
        .route("/v1/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(axum::middleware::map_response(error::json_rejections))
        .with_state(state)
}

fn function_name(name: String) -> Result<FunctionName, ApiError> {
    FunctionName::new(name).map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl ApiState {
    /// Waits (briefly) until the data plane serves registry revision `revision`.
    async fn until_live(&self, revision: u64) {
        let mut applied = self.applied.clone();
        let live = applied.wait_for(|r| *r >= revision);
        if tokio::time::timeout(Duration::from_secs(5), live)
            .await
            .is_err()
        {
            tracing::warn!(
                revision,
                "the data plane has not caught up with a registry write"
            );
        }
    }

    /// The function's record, or 404.
    async fn function_record(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
    ) -> Result<FunctionRecord, ApiError> {
        self.registry
            .function(tenant, name)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("function `{name}` does not exist")))
    }

    /// Refuses event destinations (`on_success`, `on_failure`) that name
    /// no function deployed in the tenant: their events would go nowhere.
    async fn check_destinations(
        &self,
        tenant: &TenantId,
        policy: &DeliveryPolicy,
    ) -> Result<(), ApiError> {
        for (field, destination) in [
            ("on_success", &policy.on_success),
            ("on_failure", &policy.on_failure),
        ] {
            let Some(destination) = destination else {
                continue;
            };
            let name = FunctionName::new(destination.clone())
                .map_err(|e| ApiError::BadRequest(format!("`{field}`: {e}")))?;
            let deployed = self
                .registry
                .function(tenant, &name)
                .await?
                .is_some_and(|f| f.live().is_some());
            if !deployed {
                return Err(ApiError::NotFound(format!(
                    "`{field}` names `{name}`, which is not a function deployed in tenant `{tenant}`: deploy it first, or name another"
                )));
            }
        }
        Ok(())
    }

    /// Refuses a deploy that would pass the tenant's function or version quota.
    async fn check_function_quotas(
        &self,
        caller: &Caller,
        name: &FunctionName,
    ) -> Result<(), ApiError> {
        let quotas = self
            .accounts
            .tenant(&caller.tenant)
            .map(|t| t.quotas)
            .unwrap_or_default();
        match self.registry.function(&caller.tenant, name).await? {
            Some(existing) if existing.latest_version >= quotas.versions => {
                Err(ApiError::QuotaExceeded(format!(
                    "quota `versions` reached: `{name}` has {} versions, the limit is {}; remove the function or ask an admin to raise the quota",
                    existing.latest_version, quotas.versions
                )))
            }
            Some(_) => Ok(()),
            None => {
                let count = self.registry.functions(&caller.tenant).await?.len() as u64;
                if count >= quotas.functions {
                    return Err(ApiError::QuotaExceeded(format!(
                        "quota `functions` reached: tenant `{}` has {count} functions, the limit is {}; remove one or ask an admin to raise the quota",
                        caller.tenant, quotas.functions
                    )));
                }
                Ok(())
            }
        }
    }

    /// Refuses an upload that would take the tenant past `storage_bytes`.
    async fn check_storage_quota(&self, caller: &Caller, upload: u64) -> Result<(), ApiError> {
        let limit = self
            .accounts
            .quotas(&caller.tenant)
            .unwrap_or_default()
            .storage_bytes;
        let components = self.registry.component_bytes(&caller.tenant).await?;
        let data = self.buckets.usage(&caller.tenant).await?.bytes;
        let would_be = components.saturating_add(data).saturating_add(upload);
        if would_be > limit {
            return Err(ApiError::QuotaExceeded(format!(
                "quota `storage_bytes` reached: tenant `{}` stores {components} bytes of components and {data} bytes of key-value data, this upload of {upload} bytes would pass the limit of {limit}; remove old functions or keys, or ask an admin to raise the quota",
                caller.tenant
            )));
        }
        Ok(())
    }

    fn url(&self, tenant: &TenantId, name: &FunctionName) -> String {
        format!(
            "{}{}",
            self.public_url.trim_end_matches('/'),
            gust_core::path::function_path(tenant, name)
        )
    }

    fn function_info(&self, record: FunctionRecord) -> FunctionInfo {
        let live = record.live().map(|a| &a.target);
        FunctionInfo {
            url: self.url(&record.tenant, &record.name),
            name: record.name.to_string(),
            public: record.public,
            version: live.map(|a| a.version),
            latest_version: record.latest_version,
            digest: live.map(|a| a.digest.clone()),
            limits: live.map(|a| a.limits.clone()),
            created_at_ms: record.created_at_ms,
            aliases: self.aliases_of(&record),
            canaries: record.canaries,
            routes: record.routes,
        }
    }

    fn version_info(&self, record: VersionRecord, prepare_ms: Option<u64>) -> VersionInfo {
        VersionInfo {
            url: self.url(&record.tenant, &record.name),
            name: record.name.to_string(),
            version: record.version,
            digest: record.digest,
            size_bytes: record.size_bytes,
            limits: record.limits,
            created_at_ms: record.created_at_ms,
            prepare_ms,
            activated: None,
        }
    }
}

#[utoipa::path(get, path = "/v1/functions", tag = "functions",
    responses((status = 200, description = "Every function", body = [FunctionInfo])))]
async fn list_functions(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<FunctionInfo>>, ApiError> {
    caller.require(Action::Read)?;
    let records = state.registry.functions(&caller.tenant).await?;
    Ok(Json(
        records
            .into_iter()
            .map(|r| state.function_info(r))
            .collect(),
    ))
}

#[utoipa::path(post, path = "/v1/functions", tag = "functions", request_body = CreateFunction,
    responses(
        (status = 201, description = "Created, with no version yet", body = FunctionInfo),
        (status = 400, description = "Invalid name", body = ErrorBody),
        (status = 409, description = "Already exists", body = ErrorBody)))]
async fn create_function(
    State(state): State<ApiState>,
    caller: Caller,
    body: Result<Json<CreateFunction>, JsonRejection>,
) -> Result<(StatusCode, Json<FunctionInfo>), ApiError> {
    caller.require(Action::Write)?;
    let Json(body) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let name = function_name(body.name)?;
    state.check_function_quotas(&caller, &name).await?;
    let record = state
        .registry
        .create_function(&caller.tenant, &name, now_ms())
        .await?;
    Ok((StatusCode::CREATED, Json(state.function_info(record))))
}

#[utoipa::path(get, path = "/v1/functions/{name}", tag = "functions",
    params(("name" = String, Path, description = "Function name")),
    responses(
        (status = 200, body = FunctionInfo),
        (status = 404, body = ErrorBody)))]
async fn get_function(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<FunctionInfo>, ApiError> {
    caller.require(Action::Read)?;
    let name = function_name(name)?;
    let record = state.function_record(&caller.tenant, &name).await?;
    Ok(Json(state.function_info(record)))
}

#[utoipa::path(delete, path = "/v1/functions/{name}", tag = "functions",
    params(("name" = String, Path, description = "Function name")),
    responses(
        (status = 204, description = "Removed with its versions and logs"),
        (status = 404, body = ErrorBody)))]
async fn delete_function(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Action::Write)?;
    let name = function_name(name)?;
    // Held until the removal's components are collected, so that no
    // deploy stores the same component in between (see `components_lock`).
    let uploading = state.registry.components_lock().await;
    let digests: Vec<String> = match state.registry.versions(&caller.tenant, &name).await {
        Ok(versions) => versions.into_iter().map(|v| v.digest).collect(),
        Err(gust_store::RegistryError::NoSuchFunction(_)) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let Some(revision) = state
        .registry
        .delete_function(&caller.tenant, &name)
        .await?
    else {
        return Err(ApiError::NotFound(format!(
            "function `{name}` does not exist"
        )));
    };
    // What goes with it — its components and compiled artifacts, unless
    // another function (of any tenant) runs the same bytes, and its logs —
    // is removed by a task of its own: a client that hangs up now does
    // not leave it on disk.
    let cleanup = {
        let state = state.clone();
        let stream = Registry::log_stream(&caller.tenant, &name);
        tokio::spawn(async move {
            let _uploading = uploading;
            for digest in state.registry.unreferenced(&digests).await? {
                state.runtime.forget_artifact(&digest);
                state.blobs.delete(&digest).await?;
            }
            state.logs.delete_stream(&stream).await?;
            Ok::<(), ApiError>(())
        })
    };
    state.until_live(revision).await;
    cleanup
        .await
        .map_err(|e| ApiError::Internal(format!("removing the function's files: {e}")))??;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/functions/{name}/versions", tag = "versions",
    params(("name" = String, Path, description = "Function name (created if missing)"), DeployParams),
    request_body(content = Vec<u8>, content_type = "application/wasm",
        description = "A WebAssembly component exporting `wasi:http/incoming-handler`"),
    responses(
        (status = 201, description = "Deployed and serving", body = VersionInfo),
        (status = 400, description = "Not a usable component, bad limits, or over the upload cap", body = ErrorBody),
        (status = 415, description = "Not sent as `application/wasm`", body = ErrorBody)))]
async fn deploy_version(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    params: Result<Query<DeployParams>, QueryRejection>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<VersionInfo>), ApiError> {
    caller.require(Action::Write)?;
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let internal_hosts = params.allow_internal_hosts.as_deref().map(|hosts| {
        hosts
            .split(',')
            .filter(|h| !h.trim().is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    });
    if internal_hosts.as_ref().is_some_and(|h| !h.is_empty())
        && caller.role != gust_core::access::Role::Admin
    {
        return Err(ApiError::Forbidden(format!(
            "only an admin may let a function reach internal hosts (this machine, a private network): `--allow-internal-host` needs an admin token, and this one is `{}`",
            caller.role
        )));
    }
    let name = function_name(name)?;
    state.check_function_quotas(&caller, &name).await?;
    params.check_text()?;
    let delivery = params.delivery()?;
    state.check_destinations(&caller.tenant, &delivery).await?;
    let activation = params.activation()?;
    let claims = match &params.routes {
        Some(routes) => Some(routes::parse_claims(
            &state,
            &caller.tenant,
            routes.split(',').filter(|r| !r.trim().is_empty()),
        )?),
        None => None,
    };
    if let Some(claims) = &claims {
        state
            .registry
            .check_routes(&caller.tenant, &name, claims)
            .await?;
    }
    // Claims are taken before the version goes live, so a deploy refused
    // for a taken place changes nothing that serves.
    let take_claims = |claims: Vec<gust_core::route::RouteClaim>| {
        let state = state.clone();
        let tenant = caller.tenant.clone();
        let name = name.clone();
        async move {
            match state
                .registry
                .create_function(&tenant, &name, now_ms())
                .await
            {
                Ok(_) | Err(gust_store::RegistryError::AlreadyExists(_)) => {}
                Err(e) => return Err(ApiError::from(e)),
            }
            state.registry.set_routes(&tenant, &name, claims).await?;
            Ok(())
        }
    };
    let limits = LimitsPatch {
        memory_bytes: params.memory_bytes,
        timeout_ms: params.timeout_ms,
        max_body_bytes: params.max_body_bytes,
        max_output_bytes: params.max_output_bytes,
        allowed_hosts: params.allowed_hosts.map(|hosts| {
            hosts
                .split(',')
                .filter(|h| !h.trim().is_empty())
                .map(str::to_string)
                .collect()
        }),
        allow_internal_hosts: internal_hosts,
        monthly_budget_micros: params.monthly_budget_micros,
        max_concurrency: params.max_concurrency,
        reserved_concurrency: params.reserved_concurrency,
        queue_depth: params.queue_depth,
        queue_wait_ms: params.queue_wait_ms,
        keep_alive: params
            .keep_alive
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(ApiError::BadRequest)?,
        provisioned: params
            .provisioned
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(ApiError::BadRequest)?,
    }
    .resolve()
    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let memory_quota = state
        .accounts
        .quotas(&caller.tenant)
        .unwrap_or_default()
        .function_memory_bytes;
    if limits.memory_bytes > memory_quota {
        return Err(ApiError::QuotaExceeded(format!(
            "quota `function_memory_bytes`: tenant `{}` may give a function at most {} MiB, not {} MiB; deploy with a smaller --memory-mb, or ask an admin to raise the quota",
            caller.tenant,
            memory_quota >> 20,
            limits.memory_bytes >> 20
        )));
    }
    if let Some(reserved) = limits.reserved_concurrency {
        (state.reservations)(caller.tenant.as_str(), name.as_str(), reserved)
            .map_err(ApiError::Conflict)?;
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !matches!(
        content_type,
        "application/wasm" | "application/octet-stream"
    ) {
        // Also keeps web pages from deploying through a simple cross-site POST.
        return Err(ApiError::UnsupportedMediaType(
            "send the component as the body with `Content-Type: application/wasm`".into(),
        ));
    }
    let bytes = read_upload(body, state.max_upload_bytes).await?;
    if bytes.is_empty() {
        return Err(ApiError::BadRequest(
            "the upload is empty: send the component's bytes as the request body".into(),
        ));
    }
    state
        .check_storage_quota(&caller, bytes.len() as u64)
        .await?;
    let started = Instant::now();
    let digest = digest_of(&bytes);
    let prepared = state
        .runtime
        .prepare_for(caller.tenant.as_str(), &digest, bytes.clone())
        .await?;
    prepared.check_fits(limits.memory_bytes)?;
    let prepare_ms = started.elapsed().as_millis() as u64;
    let size = bytes.len() as u64;
    // Until the version record names it, a removal must not collect it.
    let uploading = state.registry.components_lock().await;
    state.blobs.put(bytes).await?;
    if let Some(claims) = claims {
        take_claims(claims).await?;
    }
    let (version, revision) = state
        .registry
        .deploy(
            &caller.tenant,
            &name,
            NewVersion {
                digest: digest.clone(),
                size_bytes: size,
                limits,
                delivery,
                public: params.public,
                activation: activation.clone(),
            },
            now_ms(),
        )
        .await?;
    drop(uploading);
    state.until_live(revision).await;
    tracing::info!(function = %name, version = version.version, %digest, prepare_ms, "deployed");
    let mut info = state.version_info(version, Some(prepare_ms));
    info.activated = Some(match activation {
        Activation::Alias(alias) => {
            info.url = state.alias_url(&caller.tenant, &name, &alias);
            alias
        }
        Activation::Canary {
            basis_points,
            window_ms,
            ..
        } => format!(
            "canary: {} of live for {}",
            gust_core::deploy::format_share(basis_points),
            gust_core::time::format_duration_ms(window_ms)
        ),
    });
    Ok((StatusCode::CREATED, Json(info)))
}

/// Reads an upload up to `cap` bytes. Past the cap it keeps reading (and
/// discarding) up to a bound, so that the client gets the 400 instead of a
/// connection reset while it is still sending.
async fn read_upload(body: Body, cap: usize) -> Result<bytes::Bytes, ApiError> {
    read_capped(body, cap).await.map_err(|too_large| match too_large {
        Some(error) => error,
        None => ApiError::BadRequest(format!(
            "the component is larger than the upload cap of {cap} bytes; shrink it (release build, `strip`) or start the server with a larger `--max-upload-bytes`"
        )),
    })
}

/// Reads a body of at most `cap` bytes (`Err(None)`: larger; `Err(Some)`:
/// the upload failed), discarding the excess so the client hears the answer.
async fn read_capped(body: Body, cap: usize) -> Result<bytes::Bytes, Option<ApiError>> {
    use http_body_util::BodyExt as _;
    const DISCARD_AT_MOST: usize = 1 << 30;
    let mut body = body;
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| Some(ApiError::BadRequest(format!("the upload failed: {e}"))))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= cap {
                kept.extend_from_slice(&data);
            } else if seen > DISCARD_AT_MOST {
                break;
            }
        }
    }
    if seen > cap {
        return Err(None);
    }
    Ok(kept.into())
}

#[utoipa::path(get, path = "/v1/functions/{name}/versions", tag = "versions",
    params(("name" = String, Path, description = "Function name")),
    responses(
        (status = 200, body = [VersionInfo]),
        (status = 404, body = ErrorBody)))]
async fn list_versions(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<VersionInfo>>, ApiError> {
    caller.require(Action::Read)?;
    let name = function_name(name)?;
    let versions = state.registry.versions(&caller.tenant, &name).await?;
    Ok(Json(
        versions
            .into_iter()
            .map(|v| state.version_info(v, None))
            .collect(),
    ))
}

#[utoipa::path(get, path = "/v1/functions/{name}/versions/{version}", tag = "versions",
    params(("name" = String, Path, description = "Function name"), ("version" = u64, Path, description = "Version number")),
    responses(
        (status = 200, body = VersionInfo),
        (status = 404, body = ErrorBody)))]
async fn get_version(
    State(state): State<ApiState>,
    caller: Caller,
    Path((name, version)): Path<(String, u64)>,
) -> Result<Json<VersionInfo>, ApiError> {
    caller.require(Action::Read)?;
    let name = function_name(name)?;
    let record = state
        .registry
        .version(&caller.tenant, &name, version)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("function `{name}` has no version {version}")))?;
    Ok(Json(state.version_info(record, None)))
}

#[utoipa::path(get, path = "/v1/functions/{name}/scale", tag = "functions",
    params(("name" = String, Path, description = "Function name")),
    responses(
        (status = 200, description = "Desired and warm instances, why, and the recent decisions", body = ScaleStatus),
        (status = 404, description = "No such function, or not deployed yet", body = ErrorBody)))]
async fn get_scale(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<ScaleStatus>, ApiError> {
    caller.require(Action::Read)?;
    let name = function_name(name)?;
    (state.scale)(caller.tenant.as_str(), name.as_str())
        .map(Json)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "function `{name}` is not deployed (deploy a version first)"
            ))
        })
}

#[utoipa::path(get, path = "/v1/functions/{name}/logs", tag = "logs",
    params(("name" = String, Path, description = "Function name"), LogParams),
    responses(
        (status = 200, body = LogPage),
        (status = 404, body = ErrorBody)))]
async fn read_logs(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    params: Result<Query<LogParams>, QueryRejection>,
) -> Result<Json<LogPage>, ApiError> {
    caller.require(Action::Read)?;
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let name = function_name(name)?;
    if state
        .registry
        .function(&caller.tenant, &name)
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound(format!(
            "function `{name}` does not exist"
        )));
    }
    let after = params.after.unwrap_or(0);
    let limit = params.limit.unwrap_or(100).clamp(1, 1000);
    let wait = Duration::from_millis(params.wait_ms.unwrap_or(0).min(30_000));
    let stream = Registry::log_stream(&caller.tenant, &name);
    let deadline = Instant::now() + wait;
    let mut stopping = state.stopping.clone();
    let raw = loop {
        let raw = state.logs.read(&stream, after, limit).await?;
        if !raw.is_empty() || Instant::now() >= deadline || *stopping.borrow() {
            break raw;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stopping.changed() => {}
        }
    };
    // Continue after the last entry read, even one that did not decode.
    let last_read = raw.last().map_or(after, |(seq, _)| *seq);
    let mut entries = Vec::with_capacity(raw.len());
    for (seq, bytes) in raw {
        match serde_json::from_slice::<LogRecord>(&bytes) {
            Ok(record) => entries.push(LogEntry { seq, record }),
            Err(e) => tracing::warn!(%name, seq, error = %e, "skipping undecodable log entry"),
        }
    }
    Ok(Json(LogPage {
        entries,
        next: last_read,
    }))
}

async fn existing(
    state: &ApiState,
    caller: &Caller,
    name: String,
) -> Result<FunctionName, ApiError> {
    let name = function_name(name)?;
    if state
        .registry
        .function(&caller.tenant, &name)
        .await?
        .is_none()
    {
        return Err(ApiError::NotFound(format!(
            "function `{name}` does not exist"
        )));
    }
    Ok(name)
}

#[utoipa::path(get, path = "/v1/functions/{name}/invocations", tag = "events",
    params(("name" = String, Path, description = "Function name"), ListParams),
    responses(
        (status = 200, description = "Asynchronous invocations, newest first", body = [InvocationRecord]),
        (status = 404, body = ErrorBody)))]
async fn list_invocations(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Vec<InvocationRecord>>, ApiError> {
    caller.require(Action::Read)?;
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let name = existing(&state, &caller, name).await?;
    let limit = params.limit.unwrap_or(100).clamp(1, 10_000);
    Ok(Json(
        state
            .events
            .invocations(&caller.tenant, &name, limit)
            .await?,
    ))
}

#[utoipa::path(post, path = "/v1/functions/{name}/invocations", tag = "events",
    params(("name" = String, Path, description = "Function name"), SubmitParams),
    request_body(content = Vec<u8>, description = "The event's data; `ce-*` headers set its CloudEvents attributes"),
    responses(
        (status = 202, description = "Durably queued", body = Accepted),
        (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody)))]
async fn submit_invocation(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    params: Result<Query<SubmitParams>, QueryRejection>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    caller.require(Action::Invoke)?;
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    text::check_opt("path", params.path.as_deref(), text::MAX_PATH_BYTES)?;
    let name = function_name(name)?;
    let function = state.function_record(&caller.tenant, &name).await?;
    let limit = state
        .accounts
        .quotas(&caller.tenant)
        .unwrap_or_default()
        .event_backlog;
    if state.events.backlog(&caller.tenant) >= limit {
        return Err(ApiError::QuotaExceeded(format!(
            "tenant `{}` is at its quota `event_backlog` ({limit} events waiting); retry when some are delivered",
            caller.tenant
        )));
    }
    let cap = function
        .live()
        .map_or(MAX_EVENT_BYTES, |a| {
            usize::try_from(a.target.limits.max_body_bytes).unwrap_or(usize::MAX)
        })
        .min(MAX_EVENT_BYTES);
    let data = read_capped(body, cap).await.map_err(|_| {
        ApiError::PayloadTooLarge(format!("an event's payload may be at most {cap} bytes"))
    })?;
    let path = params.path.unwrap_or_else(|| "/".to_string());
    let path = if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    };
    let id = state.events.next_invocation_id();
    let envelope = Events::envelope(
        caller.tenant.clone(),
        name,
        id.clone(),
        path,
        |h| headers.get(h).and_then(|v| v.to_str().ok()),
        data.to_vec(),
    );
    state.events.submit(envelope).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            invocation_id: id,
            state: gust_core::InvocationState::Queued,
        }),
    ))
}

#[utoipa::path(post, path = "/v1/functions/{name}/schedules", tag = "schedules",
    params(("name" = String, Path, description = "Function name")),
    request_body = NewSchedule,
    responses(
        (status = 201, body = ScheduleInfo),
        (status = 400, description = "The expression or time zone does not parse; the message names the fault", body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn add_schedule(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<Json<NewSchedule>, JsonRejection>,
) -> Result<(StatusCode, Json<ScheduleInfo>), ApiError> {
    caller.require(Action::Write)?;
    let Json(body) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    text::check("expr", &body.expr, text::MAX_SCHEDULE_EXPR_BYTES)?;
    text::check_opt("tz", body.tz.as_deref(), text::MAX_TZ_BYTES)?;
    text::check_opt("path", body.path.as_deref(), text::MAX_PATH_BYTES)?;
    let name = existing(&state, &caller, name).await?;
    let id = match body.id {
        Some(id) => FunctionName::new(id)
            .map_err(|e| ApiError::BadRequest(format!("schedule id: {e}")))?
            .to_string(),
        None => format!("s{}", state.events.next_invocation_id()),
    };
    let record = gust_events::ScheduleRecord {
        id,
        tenant: caller.tenant.clone(),
        function: name,
        expr: body.expr,
        tz: body.tz.unwrap_or_else(|| "UTC".to_string()),
        created_ms: now_ms(),
        catch_up: body.catch_up.unwrap_or(0),
        path: body.path.unwrap_or_else(|| "/".to_string()),
    };
    state.events.add_schedule(record.clone()).await?;
    Ok((StatusCode::CREATED, Json(record.into())))
}

#[utoipa::path(get, path = "/v1/functions/{name}/schedules", tag = "schedules",
    params(("name" = String, Path, description = "Function name")),
    responses((status = 200, body = [ScheduleInfo]), (status = 404, body = ErrorBody)))]
async fn list_schedules(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<ScheduleInfo>>, ApiError> {
    caller.require(Action::Read)?;
    let name = existing(&state, &caller, name).await?;
    let records = state.events.schedules(&caller.tenant, &name).await?;
    Ok(Json(records.into_iter().map(ScheduleInfo::from).collect()))
}

#[utoipa::path(delete, path = "/v1/functions/{name}/schedules/{id}", tag = "schedules",
    params(("name" = String, Path, description = "Function name"), ("id" = String, Path, description = "Schedule id")),
    responses((status = 204, description = "Removed"), (status = 404, body = ErrorBody)))]
async fn remove_schedule(
    State(state): State<ApiState>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require(Action::Write)?;
    let name = existing(&state, &caller, name).await?;
    state
        .events
        .remove_schedule(&caller.tenant, &name, &id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/invocations/{id}", tag = "events",
    params(("id" = String, Path, description = "Invocation id")),
    responses(
        (status = 200, body = InvocationRecord),
        (status = 404, body = ErrorBody)))]
async fn get_invocation(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<InvocationRecord>, ApiError> {
    caller.require(Action::Read)?;
    Ok(Json(state.events.invocation(&caller.tenant, &id).await?))
}

#[utoipa::path(get, path = "/v1/functions/{name}/dead-letters", tag = "events",
    params(("name" = String, Path, description = "Function name")),
    responses(
        (status = 200, description = "Events that gave up, oldest first", body = [DeadLetterInfo]),
        (status = 404, body = ErrorBody)))]
async fn list_dead_letters(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<DeadLetterInfo>>, ApiError> {
    caller.require(Action::Read)?;
    let name = existing(&state, &caller, name).await?;
    let letters = state.events.dead_letters(&caller.tenant, &name).await?;
    Ok(Json(
        letters
            .into_iter()
            .map(|l| {
                let event = gust_core::Envelope::decode(&l.envelope).ok();
                DeadLetterInfo {
                    invocation_id: l.invocation_id,
                    reason: l.reason,
                    attempts: l.attempts,
                    last_status: l.last_status,
                    last_error: l.last_error,
                    dead_at_ms: l.dead_at_ms,
                    event_id: event.as_ref().map(|e| e.id.clone()).unwrap_or_default(),
                    event_source: event.as_ref().map(|e| e.source.clone()).unwrap_or_default(),
                    event_type: event.as_ref().map(|e| e.ty.clone()).unwrap_or_default(),
                    data_bytes: event.as_ref().map_or(0, |e| e.data.len() as u64),
                }
            })
            .collect(),
    ))
}

#[utoipa::path(post, path = "/v1/functions/{name}/dead-letters/redrive", tag = "events",
    params(("name" = String, Path, description = "Function name")),
    responses(
        (status = 200, description = "Every dead letter queued again", body = Redriven),
        (status = 404, body = ErrorBody)))]
async fn redrive_all(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Redriven>, ApiError> {
    caller.require(Action::Write)?;
    let name = existing(&state, &caller, name).await?;
    let redriven = state.events.redrive(&caller.tenant, &name, None).await?;
    Ok(Json(Redriven { redriven }))
}

#[utoipa::path(post, path = "/v1/functions/{name}/dead-letters/{id}/redrive", tag = "events",
    params(("name" = String, Path, description = "Function name"), ("id" = String, Path, description = "Invocation id")),
    responses(
        (status = 200, description = "The dead letter queued again", body = Redriven),
        (status = 404, body = ErrorBody)))]
async fn redrive_one(
    State(state): State<ApiState>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<Redriven>, ApiError> {
    caller.require(Action::Write)?;
    let name = existing(&state, &caller, name).await?;
    let redriven = state
        .events
        .redrive(&caller.tenant, &name, Some(&id))
        .await?;
    Ok(Json(Redriven { redriven }))
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json())
}

async fn metrics(State(state): State<ApiState>, request: axum::extract::Request) -> Response {
    // Metrics name every tenant's functions: with auth on, admins only.
    if state.auth {
        let caller = auth::authenticate_request(&state, &request);
        if let Err(e) = caller.and_then(|c| c.require(Action::Administer)) {
            return e.into_response();
        }
    }
    match metrics::render(metrics::Snapshot::take(&state)) {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => ApiError::Internal("cannot encode the metrics".into()).into_response(),
    }
}
