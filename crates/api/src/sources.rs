//! `/v1/functions/{name}/sources` and `/v1/sources`: event sources (brokers,
//! databases, signed webhooks). A source is checked against its broker
//! before it is stored (`ApiState::source_check`), its address and secret
//! are sealed, and neither is ever shown again: the address comes back
//! with its password hidden, the secret not at all.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gust_core::FunctionName;
use gust_core::access::Action;
use gust_core::source::{SourceKind, SourceSpec, redact_url};
use gust_events::{SourceRecord, SourceStatus, seal_context};
use serde::{Deserialize, Serialize};

use crate::{ApiError, ApiState, Caller, existing, now_ms, text};

/// A source as the API shows it: its settings without secrets, and what
/// it is doing.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SourceInfo {
    pub id: String,
    pub function: String,
    pub kind: SourceKind,
    /// Its settings; `url` with the password hidden, no `secret`.
    pub spec: SourceSpec,
    /// Where a webhook source's sender posts (webhooks only).
    pub webhook_url: Option<String>,
    /// What the node running it last said (`None`: not started yet).
    pub status: Option<SourceStatus>,
    pub created_at_ms: u64,
}

fn info(state: &ApiState, record: SourceRecord, status: Option<SourceStatus>) -> SourceInfo {
    let mut spec = record.spec.clone();
    spec.url = record.shown_url.clone();
    spec.secret = None;
    spec.id = None;
    let webhook_url = (record.kind == SourceKind::Webhook).then(|| {
        format!(
            "{}/_gust/webhooks/{}/{}/{}",
            state.public_url.trim_end_matches('/'),
            record.tenant,
            record.function,
            record.id
        )
    });
    let status = status.or_else(|| {
        (record.kind == SourceKind::Webhook).then(|| SourceStatus {
            state: "waiting".to_string(),
            last_error: None,
            since_ms: record.created_ms,
            node: String::new(),
        })
    });
    SourceInfo {
        id: record.id,
        function: record.function.to_string(),
        kind: record.kind,
        spec,
        webhook_url,
        status,
        created_at_ms: record.created_ms,
    }
}

async fn with_status(state: &ApiState, record: SourceRecord) -> Result<SourceInfo, ApiError> {
    let status = state
        .events
        .source_status(&record.tenant, &record.function, &record.id)
        .await?;
    Ok(info(state, record, status))
}

#[utoipa::path(post, path = "/v1/functions/{name}/sources", tag = "sources",
    params(("name" = String, Path, description = "Function name")),
    request_body = SourceSpec,
    responses(
        (status = 201, body = SourceInfo),
        (status = 400, body = crate::ErrorBody, description = "Invalid settings, or the broker refused them"),
        (status = 404, body = crate::ErrorBody),
        (status = 429, body = crate::ErrorBody, description = "The tenant has as many sources as it may")))]
pub(crate) async fn add_source(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<(StatusCode, Json<SourceInfo>), ApiError> {
    caller.require(Action::Write)?;
    let mut spec: SourceSpec = crate::json_object(body)?;
    text::check_opt("path", spec.path.as_deref(), text::MAX_PATH_BYTES)?;
    let kind = spec.validate().map_err(ApiError::BadRequest)?;
    let name = existing(&state, &caller, name).await?;
    let id = match spec.id.take() {
        Some(id) => FunctionName::new(id)
            .map_err(|e| ApiError::BadRequest(format!("source id: {e}")))?
            .to_string(),
        None => format!("s{}", state.events.next_invocation_id()),
    };
    let existing_sources = state.events.all_sources(Some(&caller.tenant)).await?;
    let replaces = existing_sources
        .iter()
        .any(|r| r.function == name && r.id == id);
    let limit = state
        .accounts
        .quotas(&caller.tenant)
        .unwrap_or_default()
        .sources;
    if !replaces && existing_sources.len() as u64 >= limit {
        return Err(ApiError::QuotaExceeded(format!(
            "tenant `{}` is at its quota `sources` ({limit}): remove one first (`gust source rm`), or ask an admin for more",
            caller.tenant
        )));
    }
    (state.source_check)(
        caller.tenant.clone(),
        name.clone(),
        id.clone(),
        spec.clone(),
    )
    .await
    .map_err(|why| ApiError::BadRequest(format!("the {kind} source was not added: {why}")))?;
    let seal = |field: &str, plain: &str| {
        state
            .secrets
            .seal(&seal_context(&caller.tenant, &name, &id, field), plain)
            .map_err(|e| ApiError::Internal(e.to_string()))
    };
    let shown_url = spec.url.as_deref().map(redact_url);
    if let Some(url) = spec.url.take() {
        spec.url = Some(seal("url", &url)?);
    }
    if let Some(secret) = spec.secret.take() {
        spec.secret = Some(seal("secret", &secret)?);
    }
    let record = SourceRecord {
        id,
        tenant: caller.tenant.clone(),
        function: name,
        kind,
        spec,
        shown_url,
        created_ms: now_ms(),
    };
    state.events.add_source(record.clone()).await?;
    Ok((StatusCode::CREATED, Json(info(&state, record, None))))
}

#[utoipa::path(get, path = "/v1/functions/{name}/sources", tag = "sources",
    params(("name" = String, Path, description = "Function name")),
    responses((status = 200, body = [SourceInfo]), (status = 404, body = crate::ErrorBody)))]
pub(crate) async fn list_sources(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<SourceInfo>>, ApiError> {
    caller.require(Action::Read)?;
    let name = existing(&state, &caller, name).await?;
    let mut out = Vec::new();
    for record in state.events.sources(&caller.tenant, &name).await? {
        out.push(with_status(&state, record).await?);
    }
    Ok(Json(out))
}

#[utoipa::path(get, path = "/v1/sources", tag = "sources",
    responses((status = 200, body = [SourceInfo])))]
pub(crate) async fn list_all_sources(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Vec<SourceInfo>>, ApiError> {
    caller.require(Action::Read)?;
    let mut out = Vec::new();
    for record in state.events.all_sources(Some(&caller.tenant)).await? {
        out.push(with_status(&state, record).await?);
    }
    Ok(Json(out))
}

#[utoipa::path(delete, path = "/v1/functions/{name}/sources/{id}", tag = "sources",
    params(("name" = String, Path, description = "Function name"), ("id" = String, Path, description = "Source id")),
    responses((status = 204, description = "Removed: it stops within a second"), (status = 404, body = crate::ErrorBody)))]
pub(crate) async fn remove_source(
    State(state): State<ApiState>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require(Action::Write)?;
    let name = existing(&state, &caller, name).await?;
    state
        .events
        .remove_source(&caller.tenant, &name, &id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
