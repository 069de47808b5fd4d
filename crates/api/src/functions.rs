//! `/v1/functions` and `/v1/functions/{name}`: list, create, inspect and
//! delete functions, and how a function is shown.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gust_core::access::Action;
use gust_core::{FunctionName, FunctionRecord, Limits};
use gust_store::Registry;
use serde::{Deserialize, Serialize};

use crate::{ApiError, ApiState, Caller, ErrorBody, aliases, function_name, now_ms};

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
    /// The application it belongs to: its version is that of the
    /// application's live release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateFunction {
    pub name: String,
}

impl ApiState {
    /// Refuses a deploy that would pass the tenant's function or version quota.
    pub(crate) async fn check_function_quotas(
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

    /// The function as the API shows it; a member of one of `apps` (the
    /// tenant's applications) shows its application's live release.
    pub(crate) fn function_info(
        &self,
        record: FunctionRecord,
        apps: &[gust_core::app::AppRecord],
    ) -> FunctionInfo {
        let released = record.app.as_deref().and_then(|name| {
            apps.iter()
                .find(|a| a.name.as_str() == name)?
                .live_version()?
                .functions
                .get(record.name.as_str())
        });
        let live = released.or(record.live().map(|a| &a.target));
        FunctionInfo {
            app: record.app.clone(),
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
}

#[utoipa::path(get, path = "/v1/functions", tag = "functions",
    responses((status = 200, description = "Every function", body = [FunctionInfo])))]
pub(crate) async fn list_functions(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<FunctionInfo>>, ApiError> {
    caller.require(Action::Read)?;
    let records = state.registry.functions(&caller.tenant).await?;
    let apps = state.registry.apps(&caller.tenant).await?;
    Ok(Json(
        records
            .into_iter()
            .map(|r| state.function_info(r, &apps))
            .collect(),
    ))
}

#[utoipa::path(post, path = "/v1/functions", tag = "functions", request_body = CreateFunction,
    responses(
        (status = 201, description = "Created, with no version yet", body = FunctionInfo),
        (status = 400, description = "Invalid name", body = ErrorBody),
        (status = 409, description = "Already exists", body = ErrorBody)))]
pub(crate) async fn create_function(
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
    Ok((StatusCode::CREATED, Json(state.function_info(record, &[]))))
}

#[utoipa::path(get, path = "/v1/functions/{name}", tag = "functions",
    params(("name" = String, Path, description = "Function name")),
    responses(
        (status = 200, body = FunctionInfo),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn get_function(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<FunctionInfo>, ApiError> {
    caller.require(Action::Read)?;
    let name = function_name(name)?;
    let record = state.function_record(&caller.tenant, &name).await?;
    let apps = state.registry.apps(&caller.tenant).await?;
    Ok(Json(state.function_info(record, &apps)))
}

#[utoipa::path(delete, path = "/v1/functions/{name}", tag = "functions",
    params(("name" = String, Path, description = "Function name")),
    responses(
        (status = 204, description = "Removed with its versions and logs"),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn delete_function(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Action::Write)?;
    let name = function_name(name)?;
    if let Some(record) = state.registry.function(&caller.tenant, &name).await? {
        state.check_not_released(&record).await?;
    }
    match remove_function(&state, &caller.tenant, &name).await? {
        Some(_) => Ok(StatusCode::NO_CONTENT),
        None => Err(ApiError::no_such_function(&name)),
    }
}

/// Removes a function with its versions, then what goes with it (its
/// components unless another function runs them, its logs, its sources);
/// returns once the data plane no longer serves it (`None`: no such
/// function).
pub(crate) async fn remove_function(
    state: &ApiState,
    tenant: &gust_core::TenantId,
    name: &gust_core::FunctionName,
) -> Result<Option<u64>, ApiError> {
    // Held until the removal's components are collected, so that no
    // deploy stores the same component in between (see `components_lock`).
    let uploading = state.registry.components_lock().await?;
    let digests: Vec<String> = match state.registry.versions(tenant, name).await {
        Ok(versions) => versions.into_iter().map(|v| v.digest).collect(),
        Err(gust_store::RegistryError::NoSuchFunction(_)) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let Some(revision) = state.registry.delete_function(tenant, name).await? else {
        return Ok(None);
    };
    // What goes with it — its components and compiled artifacts, unless
    // another function (of any tenant) runs the same bytes, and its logs —
    // is removed by a task of its own: a client that hangs up now does
    // not leave it on disk.
    let cleanup = {
        let state = state.clone();
        let stream = Registry::log_stream(tenant, name);
        let (tenant, function) = (tenant.clone(), name.clone());
        tokio::spawn(async move {
            let _uploading = uploading;
            for digest in state.registry.unreferenced(&digests).await? {
                state.runtime.forget_artifact(&digest);
                state.blobs.delete(&digest).await?;
            }
            state.logs.delete_stream(&stream).await?;
            // Its sources stop pulling (webhooks answer 404 from now on).
            for source in state.events.sources(&tenant, &function).await? {
                state
                    .events
                    .remove_source(&tenant, &function, &source.id)
                    .await?;
            }
            Ok::<(), ApiError>(())
        })
    };
    let _ = state.until_live(revision).await;
    cleanup
        .await
        .map_err(|e| ApiError::Internal(format!("removing the function's files: {e}")))??;
    Ok(Some(revision))
}
