//! `/v1/functions/{name}/aliases` and `/rollback`: where a function's
//! aliases point, traffic splits between two versions, and going back.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use gust_core::access::Action;
use gust_core::deploy::{self, Alias, LIVE};
use gust_core::{FunctionName, FunctionRecord, TenantId};
use gust_store::AliasTarget;
use serde::{Deserialize, Serialize};

use crate::{ApiError, ApiState, Caller, ErrorBody, function_name, now_ms};

/// An alias as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AliasInfo {
    pub name: String,
    /// The version it points at.
    pub version: u64,
    /// Where it answers on the data plane.
    pub url: String,
    /// Another version taking a share of its traffic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitInfo>,
    /// A canary running on it (only ever on `live`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryInfo>,
    /// Where `gust rollback` takes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<u64>,
    pub updated_at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SplitInfo {
    pub version: u64,
    /// Its share of the traffic, in percent (`10` for 10%).
    pub percent: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CanaryInfo {
    pub version: u64,
    pub started_at_ms: u64,
    pub window_ms: u64,
    /// When it is judged at the latest (earlier if it fails).
    pub ends_at_ms: u64,
}

/// Where to point an alias.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetAlias {
    pub version: u64,
    /// Send a share of its traffic to another version.
    pub split: Option<SplitInfo>,
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RollbackParams {
    /// The alias to roll back (default `live`).
    pub alias: Option<String>,
}

/// What a rollback did.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RolledBack {
    /// The version the alias serves now.
    pub version: u64,
    pub alias: AliasInfo,
}

impl ApiState {
    /// An alias's URL: the function's own for `live`, else `…/<name>:<alias>`.
    pub(crate) fn alias_url(&self, tenant: &TenantId, name: &FunctionName, alias: &str) -> String {
        let url = self.url(tenant, name);
        if alias == LIVE {
            url
        } else {
            format!("{url}:{alias}")
        }
    }

    /// A version that `live` is about to serve must fit the node's
    /// reservations, as at deploy (409 if it does not).
    async fn check_live_reservation(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        version: u64,
    ) -> Result<(), ApiError> {
        let reserved = self
            .registry
            .version(tenant, name, version)
            .await?
            .and_then(|v| v.limits.reserved_concurrency);
        if let Some(reserved) = reserved {
            (self.reservations)(tenant.as_str(), name.as_str(), reserved)
                .map_err(ApiError::Conflict)?;
        }
        Ok(())
    }

    pub(crate) fn alias_info(
        &self,
        record: &FunctionRecord,
        name: &str,
        alias: &Alias,
    ) -> AliasInfo {
        AliasInfo {
            name: name.to_string(),
            version: alias.target.version,
            url: self.alias_url(&record.tenant, &record.name, name),
            split: alias.split.as_ref().map(|s| SplitInfo {
                version: s.to.version,
                percent: f64::from(s.basis_points) / 100.0,
            }),
            canary: alias.canary.as_ref().map(|c| CanaryInfo {
                version: c.version,
                started_at_ms: c.started_at_ms,
                window_ms: c.window_ms,
                ends_at_ms: c.started_at_ms.saturating_add(c.window_ms),
            }),
            previous: alias.previous,
            updated_at_ms: alias.updated_at_ms,
        }
    }

    pub(crate) fn aliases_of(&self, record: &FunctionRecord) -> Vec<AliasInfo> {
        record
            .aliases
            .iter()
            .map(|(name, alias)| self.alias_info(record, name, alias))
            .collect()
    }

    fn one_alias(&self, record: &FunctionRecord, alias: &str) -> Result<AliasInfo, ApiError> {
        record
            .aliases
            .get(alias)
            .map(|a| self.alias_info(record, alias, a))
            .ok_or_else(|| ApiError::Internal(format!("alias `{alias}` vanished after its change")))
    }
}

#[utoipa::path(get, path = "/v1/functions/{name}/aliases", tag = "versions",
    params(("name" = String, Path, description = "Function name")),
    responses((status = 200, body = [AliasInfo]), (status = 404, body = ErrorBody)))]
pub(crate) async fn list_aliases(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<AliasInfo>>, ApiError> {
    caller.require(Action::Read)?;
    let name = function_name(name)?;
    let record = state.function_record(&caller.tenant, &name).await?;
    Ok(Json(state.aliases_of(&record)))
}

#[utoipa::path(put, path = "/v1/functions/{name}/aliases/{alias}", tag = "versions",
    params(("name" = String, Path, description = "Function name"), ("alias" = String, Path, description = "Alias name (created if missing)")),
    request_body = SetAlias,
    responses(
        (status = 200, description = "Pointed, and serving", body = AliasInfo),
        (status = 400, body = ErrorBody),
        (status = 404, description = "No such function or version", body = ErrorBody),
        (status = 409, description = "Not a valid alias or split", body = ErrorBody)))]
pub(crate) async fn set_alias(
    State(state): State<ApiState>,
    caller: Caller,
    Path((name, alias)): Path<(String, String)>,
    body: Result<Json<SetAlias>, JsonRejection>,
) -> Result<Json<AliasInfo>, ApiError> {
    caller.require(Action::Write)?;
    let Json(body) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let name = function_name(name)?;
    deploy::check_alias(&alias).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let split = match &body.split {
        Some(split) => Some((
            split.version,
            deploy::parse_share(&split.percent.to_string()).map_err(ApiError::BadRequest)?,
        )),
        None => None,
    };
    if alias == LIVE {
        state
            .check_live_reservation(&caller.tenant, &name, body.version)
            .await?;
    }
    let to = AliasTarget {
        version: body.version,
        split,
    };
    let (record, revision) = state
        .registry
        .set_alias(&caller.tenant, &name, &alias, to, now_ms())
        .await?;
    let _ = state.until_live(revision).await;
    tracing::info!(function = %name, %alias, version = body.version, "alias set");
    Ok(Json(state.one_alias(&record, &alias)?))
}

#[utoipa::path(delete, path = "/v1/functions/{name}/aliases/{alias}", tag = "versions",
    params(("name" = String, Path, description = "Function name"), ("alias" = String, Path, description = "Alias name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`live` cannot be removed", body = ErrorBody)))]
pub(crate) async fn remove_alias(
    State(state): State<ApiState>,
    caller: Caller,
    Path((name, alias)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require(Action::Write)?;
    let name = function_name(name)?;
    let (_, revision) = state
        .registry
        .remove_alias(&caller.tenant, &name, &alias)
        .await?;
    let _ = state.until_live(revision).await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/functions/{name}/rollback", tag = "versions",
    params(("name" = String, Path, description = "Function name"), RollbackParams),
    responses(
        (status = 200, description = "The alias serves its previous version (or a canary on it ended)", body = RolledBack),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Nothing to roll back to", body = ErrorBody)))]
pub(crate) async fn rollback(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    params: Result<Query<RollbackParams>, QueryRejection>,
) -> Result<Json<RolledBack>, ApiError> {
    caller.require(Action::Write)?;
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let name = function_name(name)?;
    let alias = params.alias.unwrap_or_else(|| LIVE.into());
    if alias == LIVE {
        let record = state.function_record(&caller.tenant, &name).await?;
        let back_to = record
            .live()
            .filter(|live| live.canary.is_none())
            .and_then(|live| live.previous);
        if let Some(version) = back_to {
            state
                .check_live_reservation(&caller.tenant, &name, version)
                .await?;
        }
    }
    let (record, version, revision) = state
        .registry
        .rollback(&caller.tenant, &name, &alias, now_ms())
        .await?;
    let _ = state.until_live(revision).await;
    tracing::info!(function = %name, %alias, version, "rolled back");
    Ok(Json(RolledBack {
        version,
        alias: state.one_alias(&record, &alias)?,
    }))
}
