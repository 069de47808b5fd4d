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
mod apps;
mod auth;
mod body;
pub mod cluster;
pub mod deploy;
mod error;
mod events;
mod functions;
mod kv;
mod logs;
mod metrics;
mod openapi;
pub mod retention;
mod routes;
mod sources;
mod tenant_triggers;
mod text;
mod usage;
mod vars;
mod versions;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use gust_autoscale::ScaleStatus;
use gust_core::access::Action;
use gust_core::delivery::DeliveryPolicy;
use gust_core::{FunctionName, FunctionRecord, InvocationRecord, Limits, LogRecord, TenantId};
use gust_events::Events;
use gust_runtime::Runtime;
use gust_store::{BlobStore, LogStore, Registry};
use utoipa::OpenApi;

pub use aliases::{AliasInfo, CanaryInfo, RolledBack, SetAlias, SplitInfo};
pub use apps::{AppInfo, AppRemoved, AppVersionInfo, Released};
pub use auth::{AuditEntry, Caller, NewTenant, NewToken, TENANT_HEADER, TenantInfo, TokenInfo};
pub use deploy::DeployParams;
pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use events::{
    Accepted, DeadLetterInfo, ListParams, NewSchedule, Redriven, ScheduleInfo, SubmitParams,
};
pub use functions::{CreateFunction, FunctionInfo};
pub use kv::{KeyEntry, KeyPage, NewTrigger, TriggerInfo, Written};
pub use logs::{LogEntry, LogPage, LogParams};
pub use metrics::{DataPlaneStats, DataPlaneView, FunctionScaling, SourceFigures};
pub use sources::SourceInfo;
pub use usage::{FunctionStats, StatsParams};
pub use vars::VarInfo;
pub use versions::VersionInfo;

use body::read_capped;

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
    /// The nodes serving this platform (this one alone on a single node).
    pub cluster: cluster::SharedClusterView,
    /// What retention removed (`retention::spawn` counts into it).
    pub retention: Arc<retention::RetentionStats>,
    /// Events sent to the API keep their caller's `traceparent` and
    /// `tracestate` (traces are on and clients' trace context is believed).
    pub keep_trace_context: bool,
    /// Checks a new source against its broker before it is stored.
    pub source_check: SourceCheck,
}

/// (`<tenant>`, `<function>`, `<id>`, settings with the address in plain
/// text) → why the source cannot work; supplied by the binary.
pub type SourceCheck = Arc<
    dyn Fn(
            gust_core::TenantId,
            gust_core::FunctionName,
            String,
            gust_core::source::SourceSpec,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

/// Looks up a function's scaling; supplied by the binary.
pub type ScaleView = Arc<dyn Fn(&str, &str) -> Option<ScaleStatus> + Send + Sync>;

/// (`<tenant>`, `<name>`, instances to reserve) → why they do not fit.
pub type ReservationCheck = Arc<dyn Fn(&str, &str, u32) -> Result<(), String> + Send + Sync>;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Gust control API",
        description = "Deploy and manage Gust functions."
    ),
    paths(
        functions::list_functions,
        functions::create_function,
        functions::get_function,
        functions::delete_function,
        deploy::deploy_version,
        versions::list_versions,
        versions::get_version,
        versions::get_scale,
        vars::list_vars,
        vars::change_vars,
        routes::list_routes,
        routes::set_routes,
        apps::list_apps,
        apps::get_app,
        apps::release_app,
        apps::rollback_app,
        apps::promote_app,
        apps::remove_app,
        aliases::list_aliases,
        aliases::set_alias,
        aliases::remove_alias,
        aliases::rollback,
        logs::read_logs,
        events::list_invocations,
        events::submit_invocation,
        events::get_invocation,
        events::add_schedule,
        events::list_schedules,
        events::remove_schedule,
        tenant_triggers::list_all_schedules,
        events::list_dead_letters,
        events::redrive_all,
        events::redrive_one,
        usage::usage,
        cluster::cluster_status,
        usage::records,
        usage::function_stats,
        kv::list_keys,
        kv::get_key,
        kv::put_key,
        kv::delete_key,
        kv::add_trigger,
        kv::list_triggers,
        kv::remove_trigger,
        sources::add_source,
        sources::list_sources,
        sources::list_all_sources,
        sources::remove_source,
        tenant_triggers::list_all_triggers,
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
        usage::FunctionStats,
        gust_core::series::Interval,
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
        apps::AppInfo,
        apps::AppVersionInfo,
        apps::NewRelease,
        apps::Released,
        apps::AppRemoved,
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
        sources::SourceInfo,
        gust_core::source::SourceSpec,
        gust_core::source::SourceKind,
        gust_core::source::SignatureStyle,
        gust_events::SourceStatus,
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
        .route(
            "/v1/functions",
            get(functions::list_functions).post(functions::create_function),
        )
        .route(
            "/v1/functions/{name}",
            get(functions::get_function).delete(functions::delete_function),
        )
        .route(
            "/v1/functions/{name}/versions",
            get(versions::list_versions)
                .post(deploy::deploy_version)
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/functions/{name}/versions/{version}",
            get(versions::get_version),
        )
        .route("/v1/functions/{name}/logs", get(logs::read_logs))
        .route("/v1/functions/{name}/scale", get(versions::get_scale))
        .route("/v1/functions/{name}/stats", get(usage::function_stats))
        .route(
            "/v1/functions/{name}/vars",
            get(vars::list_vars).patch(vars::change_vars),
        )
        .route(
            "/v1/functions/{name}/routes",
            get(routes::list_routes).put(routes::set_routes),
        )
        .route("/v1/apps", get(apps::list_apps))
        .route(
            "/v1/apps/{name}",
            get(apps::get_app).delete(apps::remove_app),
        )
        .route(
            "/v1/apps/{name}/releases",
            axum::routing::post(apps::release_app),
        )
        .route(
            "/v1/apps/{name}/rollback",
            axum::routing::post(apps::rollback_app),
        )
        .route(
            "/v1/apps/{name}/promote",
            axum::routing::post(apps::promote_app),
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
            get(events::list_invocations).post(events::submit_invocation),
        )
        .route("/v1/invocations/{id}", get(events::get_invocation))
        .route("/v1/schedules", get(tenant_triggers::list_all_schedules))
        .route("/v1/triggers", get(tenant_triggers::list_all_triggers))
        .route(
            "/v1/functions/{name}/schedules",
            get(events::list_schedules).post(events::add_schedule),
        )
        .route(
            "/v1/functions/{name}/schedules/{id}",
            axum::routing::delete(events::remove_schedule),
        )
        .route(
            "/v1/functions/{name}/dead-letters",
            get(events::list_dead_letters),
        )
        .route(
            "/v1/functions/{name}/dead-letters/redrive",
            axum::routing::post(events::redrive_all),
        )
        .route(
            "/v1/functions/{name}/dead-letters/{id}/redrive",
            axum::routing::post(events::redrive_one),
        )
        .route(
            "/v1/functions/{name}/triggers",
            get(kv::list_triggers).post(kv::add_trigger),
        )
        .route(
            "/v1/functions/{name}/triggers/{id}",
            axum::routing::delete(kv::remove_trigger),
        )
        .route(
            "/v1/functions/{name}/sources",
            get(sources::list_sources).post(sources::add_source),
        )
        .route(
            "/v1/functions/{name}/sources/{id}",
            axum::routing::delete(sources::remove_source),
        )
        .route("/v1/sources", get(sources::list_all_sources))
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
        .route("/v1/cluster", get(cluster::cluster_status))
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

/// A JSON body that must be an object: serde would also build a struct
/// from an array of its fields in order (`[]` as "all defaults").
fn json_object<T: serde::de::DeserializeOwned>(
    body: Result<axum::Json<serde_json::Value>, axum::extract::rejection::JsonRejection>,
) -> Result<T, ApiError> {
    let axum::Json(value) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object".into(),
        ));
    }
    serde_json::from_value(value).map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn function_name(name: String) -> Result<FunctionName, ApiError> {
    FunctionName::new(name).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// How long a change waits for the other nodes of a cluster to serve it.
const CLUSTER_WAIT: Duration = Duration::from_secs(10);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl ApiState {
    /// Waits (briefly) until the data plane serves registry revision
    /// `revision`, here and on every other live node of a cluster; returns
    /// the nodes that did not within the wait.
    async fn until_live(&self, revision: u64) -> Vec<String> {
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
        let lagging = self.cluster.wait_served(revision, CLUSTER_WAIT).await;
        if !lagging.is_empty() {
            tracing::warn!(revision, nodes = ?lagging, "nodes do not serve a registry write yet");
        }
        lagging
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
            .ok_or_else(|| ApiError::no_such_function(name))
    }

    fn url(&self, tenant: &TenantId, name: &FunctionName) -> String {
        format!(
            "{}{}",
            self.public_url.trim_end_matches('/'),
            gust_core::path::function_path(tenant, name)
        )
    }
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
        return Err(ApiError::no_such_function(&name));
    }
    Ok(name)
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
