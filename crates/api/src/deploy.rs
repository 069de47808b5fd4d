//! Deploying a version: `POST /v1/functions/{name}/versions` reads the
//! upload and hands it to the workflow here, which needs no HTTP:
//! [`plan`] checks everything the parameters say against the tenant's
//! quotas, the node's room and the places the function claims, before a
//! byte of the component is read; [`deploy`] then validates and compiles
//! the component through the runtime, stores it, takes the claims,
//! records the version, moves the alias or starts the canary, and returns
//! once the data plane serves it.

use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use bytes::Bytes;
use gust_core::access::{Action, Role};
use gust_core::delivery::DeliveryPolicy;
use gust_core::route::RouteClaim;
use gust_core::{FunctionName, Limits, LimitsPatch, TenantId, VersionRecord};
use gust_store::{Activation, NewVersion, digest_of};
use serde::Deserialize;

use crate::versions::VersionInfo;
use crate::{
    ApiError, ApiState, Caller, ErrorBody, function_name, now_ms, read_capped, routes, text,
};

/// Limits for a new version, as query parameters; omitted ones keep their defaults.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeployParams {
    /// Memory limit in bytes (default 128 MiB).
    pub memory_bytes: Option<u64>,
    /// Wall-clock timeout in ms (default 30000): until the response head
    /// of a request, the whole run of an event.
    pub timeout_ms: Option<u64>,
    /// A streaming response is cut after this long without a part sent, in
    /// ms (default 30000).
    pub stream_idle_ms: Option<u64>,
    /// A streaming response is cut this long after its head, in ms
    /// (default 900000: 15 minutes).
    pub stream_max_ms: Option<u64>,
    /// Its URLs accept WebSocket upgrades (default false).
    pub websocket: Option<bool>,
    /// WebSocket connections held at once on a node (default 1000).
    pub ws_max_connections: Option<u32>,
    /// Largest WebSocket message in bytes (default 64 KiB).
    pub ws_max_message_bytes: Option<u64>,
    /// A WebSocket connection idle this long is closed, in ms (default 300000).
    pub ws_idle_ms: Option<u64>,
    /// Messages per second one connection may send (default 50).
    pub ws_messages_per_second: Option<u32>,
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
    /// `true`: outbound requests to hosts outside Gust carry the
    /// invocation's W3C trace context when traces are on (default `false`).
    pub trace_outbound: Option<bool>,
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
    /// Deploy as a member of this application: the version is recorded
    /// and not served until a release (`POST /v1/apps/{app}/releases`)
    /// makes it live with the other members.
    pub app: Option<String>,
}

impl DeployParams {
    fn activation(&self) -> Result<Activation, ApiError> {
        if self.app.is_some() {
            if self.alias.is_some() || self.canary.is_some() {
                return Err(ApiError::BadRequest(
                    "a member of an application goes live with its release: `app` cannot be combined with `alias` or `canary` (a release can be a canary)".into(),
                ));
            }
            return Ok(Activation::Staged);
        }
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

/// A deploy whose parameters passed every check: what [`deploy`] does
/// with the component.
#[derive(Debug, Clone)]
pub struct Plan {
    pub tenant: TenantId,
    pub name: FunctionName,
    pub limits: Limits,
    pub delivery: DeliveryPolicy,
    pub activation: Activation,
    /// The claims it replaces the function's with (`None`: unchanged).
    pub claims: Option<Vec<RouteClaim>>,
    /// `None`: unchanged (a new function is private).
    pub public: Option<bool>,
    /// The application it joins (its version then waits for a release).
    pub app: Option<FunctionName>,
}

/// A version deployed and served.
#[derive(Debug, Clone)]
pub struct Deployed {
    pub version: VersionRecord,
    /// Time spent validating and compiling the component.
    pub prepare_ms: u64,
    pub activation: Activation,
    /// Live nodes of a cluster that did not serve the version within the
    /// wait (empty: every node serves it).
    pub not_serving: Vec<String>,
}

/// Checks a deploy of `name` by `caller` with `params`, without the
/// component: the role, the parameters, the tenant's function, version
/// and memory quotas, the event destinations, the claimed places and the
/// node's room for a reservation.
pub async fn plan(
    state: &ApiState,
    caller: &Caller,
    name: String,
    params: DeployParams,
) -> Result<Plan, ApiError> {
    let internal_hosts = params.allow_internal_hosts.as_deref().map(|hosts| {
        hosts
            .split(',')
            .filter(|h| !h.trim().is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    });
    if internal_hosts.as_ref().is_some_and(|h| !h.is_empty()) && caller.role != Role::Admin {
        return Err(ApiError::Forbidden(format!(
            "only an admin may let a function reach internal hosts (this machine, a private network): `--allow-internal-host` needs an admin token, and this one is `{}`",
            caller.role
        )));
    }
    let name = function_name(name)?;
    state.check_function_quotas(caller, &name).await?;
    params.check_text()?;
    let delivery = params.delivery()?;
    state.check_destinations(&caller.tenant, &delivery).await?;
    let activation = params.activation()?;
    let app = params.app.clone().map(function_name).transpose()?;
    let claims = match &params.routes {
        Some(routes) => Some(routes::parse_claims(
            state,
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
    let limits = LimitsPatch {
        memory_bytes: params.memory_bytes,
        timeout_ms: params.timeout_ms,
        stream_idle_ms: params.stream_idle_ms,
        stream_max_ms: params.stream_max_ms,
        websocket: params.websocket,
        ws_max_connections: params.ws_max_connections,
        ws_max_message_bytes: params.ws_max_message_bytes,
        ws_idle_ms: params.ws_idle_ms,
        ws_messages_per_second: params.ws_messages_per_second,
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
        trace_outbound: params.trace_outbound,
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
    Ok(Plan {
        tenant: caller.tenant.clone(),
        name,
        limits,
        delivery,
        activation,
        claims,
        public: params.public,
        app,
    })
}

/// Deploys `bytes` as `plan` says: the tenant's storage quota, then the
/// runtime validates and compiles the component (it must fit the memory
/// limit), the blob is stored, the claims taken, the version recorded
/// with its alias or canary; returns once the data plane serves it.
pub async fn deploy(state: &ApiState, plan: Plan, bytes: Bytes) -> Result<Deployed, ApiError> {
    let Plan {
        tenant,
        name,
        limits,
        delivery,
        activation,
        claims,
        public,
        app,
    } = plan;
    if bytes.is_empty() {
        return Err(ApiError::BadRequest(
            "the upload is empty: send the component's bytes as the request body".into(),
        ));
    }
    state
        .check_storage_quota(&tenant, bytes.len() as u64)
        .await?;
    let started = Instant::now();
    let digest = digest_of(&bytes);
    let prepared = state
        .runtime
        .prepare_for(tenant.as_str(), &digest, bytes.clone())
        .await?;
    prepared.check_fits(limits.memory_bytes)?;
    let prepare_ms = started.elapsed().as_millis() as u64;
    let size = bytes.len() as u64;
    // Until the version record names it, a removal must not collect it.
    let uploading = state.registry.components_lock().await?;
    state.blobs.put(bytes).await?;
    // Claims are taken before the version goes live, so a deploy refused
    // for a taken place changes nothing that serves.
    if let Some(claims) = claims {
        match state
            .registry
            .create_function(&tenant, &name, now_ms())
            .await
        {
            Ok(_) | Err(gust_store::RegistryError::AlreadyExists(_)) => {}
            Err(e) => return Err(ApiError::from(e)),
        }
        state.registry.set_routes(&tenant, &name, claims).await?;
    }
    let (version, revision) = state
        .registry
        .deploy(
            &tenant,
            &name,
            NewVersion {
                digest: digest.clone(),
                size_bytes: size,
                limits,
                delivery,
                public,
                activation: activation.clone(),
                app,
            },
            now_ms(),
        )
        .await?;
    drop(uploading);
    let not_serving = state.until_live(revision).await;
    tracing::info!(function = %name, version = version.version, %digest, prepare_ms, "deployed");
    Ok(Deployed {
        version,
        prepare_ms,
        activation,
        not_serving,
    })
}

impl ApiState {
    /// Refuses event destinations (`on_success`, `on_failure`) that name
    /// no function deployed in the tenant: their events would go nowhere.
    pub(crate) async fn check_destinations(
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
            let deployed = match self.registry.function(tenant, &name).await? {
                Some(record) => self.serving(&record).await?.is_some(),
                None => false,
            };
            if !deployed {
                return Err(ApiError::NotFound(format!(
                    "`{field}` names `{name}`, which is not a function deployed in tenant `{tenant}`: deploy it first, or name another"
                )));
            }
        }
        Ok(())
    }

    /// Refuses an upload that would take the tenant past `storage_bytes`.
    async fn check_storage_quota(&self, tenant: &TenantId, upload: u64) -> Result<(), ApiError> {
        let limit = self
            .accounts
            .quotas(tenant)
            .unwrap_or_default()
            .storage_bytes;
        let components = self.registry.component_bytes(tenant).await?;
        let data = self.buckets.usage(tenant).await?.bytes;
        let would_be = components.saturating_add(data).saturating_add(upload);
        if would_be > limit {
            return Err(ApiError::QuotaExceeded(format!(
                "quota `storage_bytes` reached: tenant `{tenant}` stores {components} bytes of components and {data} bytes of key-value data, this upload of {upload} bytes would pass the limit of {limit}; remove old functions or keys, or ask an admin to raise the quota"
            )));
        }
        Ok(())
    }

    /// A deployed version as the deploy answers it: its URL is its alias's,
    /// and `activated` says what it took over.
    fn deployed_info(&self, deployed: Deployed) -> VersionInfo {
        let Deployed {
            version,
            prepare_ms,
            activation,
            not_serving,
        } = deployed;
        let (tenant, name) = (version.tenant.clone(), version.name.clone());
        let mut info = self.version_info(version, Some(prepare_ms));
        info.not_serving = not_serving;
        info.activated = Some(match activation {
            Activation::Alias(alias) => {
                info.url = self.alias_url(&tenant, &name, &alias);
                alias
            }
            Activation::Staged => "staged: live with its application's next release".into(),
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
        info
    }
}

#[utoipa::path(post, path = "/v1/functions/{name}/versions", tag = "versions",
    params(("name" = String, Path, description = "Function name (created if missing)"), DeployParams),
    request_body(content = Vec<u8>, content_type = "application/wasm",
        description = "A WebAssembly component exporting `wasi:http/incoming-handler`"),
    responses(
        (status = 201, description = "Deployed and serving", body = VersionInfo),
        (status = 400, description = "Not a usable component, bad limits, or over the upload cap", body = ErrorBody),
        (status = 415, description = "Not sent as `application/wasm`", body = ErrorBody)))]
pub(crate) async fn deploy_version(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    params: Result<Query<DeployParams>, QueryRejection>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<VersionInfo>), ApiError> {
    caller.require(Action::Write)?;
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let plan = plan(&state, &caller, name, params).await?;
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
    let deployed = deploy(&state, plan, bytes).await?;
    Ok((StatusCode::CREATED, Json(state.deployed_info(deployed))))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Arc;

    use gust_core::access::Role;
    use gust_runtime::{Runtime, RuntimeConfig};
    use gust_store::{
        Accounts, BlobStore, Buckets, DataStore, LogStore, MetaStore, QueueStore, Registry,
        SecretBox,
    };
    use gust_store_embedded::EmbeddedStore;
    use tokio::sync::watch;

    use super::*;

    /// A control plane on an embedded store in a temporary directory,
    /// whose data plane is always caught up.
    struct Fixture {
        state: ApiState,
        _dir: tempfile::TempDir,
        _stopping: watch::Sender<bool>,
        _applied: watch::Sender<u64>,
    }

    async fn fixture(reservations: crate::ReservationCheck) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("gust.redb")).unwrap();
        let meta: Arc<dyn MetaStore> = Arc::new(store.clone());
        let queues: Arc<dyn QueueStore> = Arc::new(store.clone());
        let data: Arc<dyn DataStore> = Arc::new(store.clone());
        let blobs: Arc<dyn BlobStore> = Arc::new(store.clone());
        let logs: Arc<dyn LogStore> = Arc::new(store);
        let runtime = Runtime::new(&RuntimeConfig::new(dir.path().join("artifacts"))).unwrap();
        let (stopping_tx, stopping) = watch::channel(false);
        let (applied_tx, applied) = watch::channel(u64::MAX);
        let state = ApiState {
            registry: Registry::new(meta.clone()),
            blobs,
            logs,
            runtime,
            public_url: "http://127.0.0.1:8080".into(),
            tenant_domain: None,
            public_hosts: Vec::new(),
            max_upload_bytes: 1 << 20,
            // A closure, not `Default::default`: its return type is inferred
            // from the field's.
            #[allow(clippy::redundant_closure)]
            metrics: Arc::new(|| Default::default()),
            events: gust_events::Events::new(queues, meta.clone()),
            buckets: Buckets::new(data),
            accounts: Accounts::start(meta).await.unwrap(),
            meter: None,
            auth: true,
            stopping,
            applied: applied.clone(),
            scale: Arc::new(|_: &str, _: &str| None),
            reservations,
            secrets: Arc::new(SecretBox::from_key(&[7; 32]).unwrap()),
            retention: Default::default(),
            keep_trace_context: false,
            source_check: Arc::new(|_, _, _, _| Box::pin(async { Ok(()) })),
            cluster: Arc::new(crate::cluster::SingleNode {
                node: "test".into(),
                started_ms: 0,
                data_url: String::new(),
                api_url: String::new(),
                applied: applied.clone(),
                #[allow(clippy::redundant_closure)]
                metrics: Arc::new(|| Default::default()),
            }),
        };
        Fixture {
            state,
            _dir: dir,
            _stopping: stopping_tx,
            _applied: applied_tx,
        }
    }

    fn room() -> crate::ReservationCheck {
        Arc::new(|_: &str, _: &str, _: u32| Ok(()))
    }

    fn caller(role: Role) -> Caller {
        Caller {
            tenant: TenantId::default_tenant(),
            role,
            token_id: None,
        }
    }

    /// A component whose handler does nothing; `salt` gives it a digest of its own.
    fn component(salt: u32) -> Bytes {
        let wat = format!(
            r#"(component
  (import "wasi:http/types@0.2.0" (instance $types
    (export "incoming-request" (type (sub resource)))
    (export "response-outparam" (type (sub resource)))))
  (alias export $types "incoming-request" (type $request))
  (alias export $types "response-outparam" (type $response-out))
  (core module $m
    (func (export "salt") (result i32) i32.const {salt})
    (func (export "handle") (param i32 i32)))
  (core instance $i (instantiate $m))
  (func $handle (param "request" (own $request)) (param "response-out" (own $response-out))
    (canon lift (core func $i "handle")))
  (instance $handler (export "handle" (func $handle)))
  (export "wasi:http/incoming-handler@0.2.0" (instance $handler)))"#
        );
        Bytes::from(wat::parse_str(wat).unwrap())
    }

    async fn deploy_with(
        state: &ApiState,
        name: &str,
        params: DeployParams,
        bytes: Bytes,
    ) -> Result<Deployed, ApiError> {
        let plan = plan(state, &caller(Role::Deployer), name.into(), params).await?;
        deploy(state, plan, bytes).await
    }

    fn name(text: &str) -> FunctionName {
        FunctionName::new(text.to_string()).unwrap()
    }

    #[tokio::test]
    async fn a_deploy_stores_the_component_and_makes_it_live() {
        let fixture = fixture(room()).await;
        let state = &fixture.state;
        let bytes = component(1);
        let params = DeployParams {
            memory_bytes: Some(64 << 20),
            ..DeployParams::default()
        };
        let deployed = deploy_with(state, "hello", params, bytes.clone())
            .await
            .unwrap();
        assert_eq!(deployed.version.version, 1);
        assert_eq!(deployed.version.digest, digest_of(&bytes));
        assert_eq!(deployed.version.limits.memory_bytes, 64 << 20);
        assert_eq!(deployed.activation, Activation::default());
        assert_eq!(
            state.blobs.get(&deployed.version.digest).await.unwrap(),
            Some(bytes)
        );
        let tenant = TenantId::default_tenant();
        let record = state
            .registry
            .function(&tenant, &name("hello"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.live().unwrap().target.version, 1);
        assert!(!record.public, "a new function is private");
        let info = state.deployed_info(deployed);
        assert_eq!(info.activated.as_deref(), Some("live"));
        assert_eq!(info.url, "http://127.0.0.1:8080/hello");
    }

    #[tokio::test]
    async fn a_deploy_to_an_alias_leaves_live_where_it_was() {
        let fixture = fixture(room()).await;
        let state = &fixture.state;
        deploy_with(state, "hello", DeployParams::default(), component(1))
            .await
            .unwrap();
        let params = DeployParams {
            alias: Some("staging".into()),
            ..DeployParams::default()
        };
        let deployed = deploy_with(state, "hello", params, component(2))
            .await
            .unwrap();
        assert_eq!(deployed.version.version, 2);
        let tenant = TenantId::default_tenant();
        let record = state
            .registry
            .function(&tenant, &name("hello"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.live().unwrap().target.version, 1);
        assert_eq!(record.aliases["staging"].target.version, 2);
        let info = state.deployed_info(deployed);
        assert_eq!(info.activated.as_deref(), Some("staging"));
        assert_eq!(info.url, "http://127.0.0.1:8080/hello:staging");
    }

    #[tokio::test]
    async fn parameters_are_refused_before_the_component_is_read() {
        let fixture = fixture(Arc::new(|_: &str, _: &str, reserved: u32| {
            Err(format!("{reserved} do not fit"))
        }))
        .await;
        let state = &fixture.state;
        let internal = DeployParams {
            allow_internal_hosts: Some("10.0.0.1".into()),
            ..DeployParams::default()
        };
        let refused = plan(state, &caller(Role::Deployer), "f".into(), internal).await;
        assert!(
            matches!(refused, Err(ApiError::Forbidden(_))),
            "{refused:?}"
        );
        let both = DeployParams {
            alias: Some("staging".into()),
            canary: Some("10%,5m".into()),
            ..DeployParams::default()
        };
        let refused = plan(state, &caller(Role::Admin), "f".into(), both).await;
        assert!(
            matches!(refused, Err(ApiError::BadRequest(_))),
            "{refused:?}"
        );
        let refused = plan(
            state,
            &caller(Role::Admin),
            "Not A Name".into(),
            DeployParams::default(),
        )
        .await;
        assert!(
            matches!(refused, Err(ApiError::BadRequest(_))),
            "{refused:?}"
        );
        let reserving = DeployParams {
            reserved_concurrency: Some(4),
            ..DeployParams::default()
        };
        let refused = plan(state, &caller(Role::Admin), "f".into(), reserving).await;
        match refused {
            Err(ApiError::Conflict(why)) => assert_eq!(why, "4 do not fit"),
            other => panic!("{other:?}"),
        }
        // An admin may let a function reach internal hosts.
        let internal = DeployParams {
            allow_internal_hosts: Some("10.0.0.1".into()),
            ..DeployParams::default()
        };
        let planned = plan(state, &caller(Role::Admin), "f".into(), internal)
            .await
            .unwrap();
        assert_eq!(
            planned.limits.allow_internal_hosts,
            vec!["10.0.0.1".to_string()]
        );
    }

    #[tokio::test]
    async fn an_unusable_upload_records_nothing() {
        let fixture = fixture(room()).await;
        let state = &fixture.state;
        let empty = deploy_with(state, "f", DeployParams::default(), Bytes::new()).await;
        assert!(matches!(empty, Err(ApiError::BadRequest(_))), "{empty:?}");
        let garbage = Bytes::from_static(b"not a component");
        let refused = deploy_with(state, "f", DeployParams::default(), garbage.clone()).await;
        assert!(
            matches!(refused, Err(ApiError::InvalidComponent(_))),
            "{refused:?}"
        );
        let tenant = TenantId::default_tenant();
        assert!(
            state
                .registry
                .function(&tenant, &name("f"))
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(state.blobs.get(&digest_of(&garbage)).await.unwrap(), None);
    }
}
