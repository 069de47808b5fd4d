//! `/v1/functions/{name}/versions` (listing and inspecting deployed
//! versions; deploying is `deploy`'s) and a function's scaling.

use axum::Json;
use axum::extract::{Path, Query, State};
use gust_autoscale::ScaleStatus;
use gust_core::access::Action;
use gust_core::{Limits, VersionRecord};
use serde::{Deserialize, Serialize};

use crate::{ApiError, ApiState, Caller, ErrorBody, existing, function_name};

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
    /// Live nodes of a cluster that did not serve this version within the
    /// deploy's wait (only on deploy; absent when every node serves it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_serving: Vec<String>,
}

impl ApiState {
    pub(crate) fn version_info(
        &self,
        record: VersionRecord,
        prepare_ms: Option<u64>,
    ) -> VersionInfo {
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
            not_serving: Vec::new(),
        }
    }
}

#[utoipa::path(get, path = "/v1/functions/{name}/versions", tag = "versions",
    params(("name" = String, Path, description = "Function name")),
    responses(
        (status = 200, body = [VersionInfo]),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn list_versions(
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
pub(crate) async fn get_version(
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
    params(("name" = String, Path, description = "Function name"), ScaleParams),
    responses(
        (status = 200, description = "Desired and warm instances, why, and the recent decisions", body = ScaleStatus),
        (status = 404, description = "No such function, or not deployed yet", body = ErrorBody)))]
pub(crate) async fn get_scale(
    State(state): State<ApiState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    Path(name): Path<String>,
    Query(params): Query<ScaleParams>,
) -> Result<Json<ScaleStatus>, ApiError> {
    caller.require(Action::Read)?;
    let name = existing(&state, &caller, name).await?;
    let mut status = (state.scale)(caller.tenant.as_str(), name.as_str()).ok_or_else(|| {
        ApiError::NotFound(format!(
            "function `{name}` is not deployed (deploy a version first)"
        ))
    })?;
    if params.local != Some(true) {
        // Each node scales its own instances: show every node's.
        let authorization = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let answers = state
            .cluster
            .ask_peers(
                &format!("/v1/functions/{name}/scale?local=true"),
                authorization,
            )
            .await;
        if !answers.is_empty() {
            let mut nodes = vec![gust_autoscale::NodeScale::of(state.cluster.node(), &status)];
            for (node, answer) in answers {
                let parsed = answer.and_then(|body| {
                    serde_json::from_slice::<ScaleStatus>(&body).map_err(|e| e.to_string())
                });
                nodes.push(match parsed {
                    Ok(other) => gust_autoscale::NodeScale::of(&node, &other),
                    Err(e) => gust_autoscale::NodeScale {
                        node,
                        desired: 0,
                        warm: false,
                        running: 0,
                        reason: format!("did not answer: {e}"),
                    },
                });
            }
            nodes.sort_by(|a, b| a.node.cmp(&b.node));
            status.nodes = nodes;
        }
    }
    Ok(Json(status))
}

/// `?local=true`: only the answering node's scaling (in a cluster).
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ScaleParams {
    pub local: Option<bool>,
}
