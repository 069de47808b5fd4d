//! `/v1/kv/...`: the tenant's buckets from outside a function (what
//! `gust kv` uses), and `/v1/functions/{name}/triggers`: change triggers.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use gust_core::FunctionName;
use gust_core::kv::{self, BucketName};
use serde::{Deserialize, Serialize};

use gust_core::access::Action;

use crate::{ApiError, ApiState, Caller, existing, now_ms, read_capped, text};

fn bucket_name(name: String) -> Result<BucketName, ApiError> {
    BucketName::new(name).map_err(|e| ApiError::BadRequest(format!("bucket name: {e}")))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KeysParams {
    /// Only keys starting with this.
    pub prefix: Option<String>,
    /// Keys sorting after this one (the `next` of the previous page).
    pub after: Option<String>,
    /// At most this many (default 1000, at most 10000).
    pub limit: Option<usize>,
}

/// A key and its value's revision and size.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyEntry {
    pub key: String,
    pub revision: u64,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyPage {
    pub keys: Vec<KeyEntry>,
    /// Pass as `after` for the next page; absent on the last one.
    pub next: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Written {
    pub revision: u64,
}

#[utoipa::path(get, path = "/v1/kv/{bucket}/keys", tag = "kv",
    params(("bucket" = String, Path, description = "Bucket name"), KeysParams),
    responses((status = 200, body = KeyPage), (status = 400, body = crate::ErrorBody)))]
pub(crate) async fn list_keys(
    State(state): State<ApiState>,
    caller: Caller,
    Path(bucket): Path<String>,
    params: Result<Query<KeysParams>, QueryRejection>,
) -> Result<Json<KeyPage>, ApiError> {
    caller.require(Action::Read)?;
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let bucket = bucket_name(bucket)?;
    let limit = params.limit.unwrap_or(1000).clamp(1, 10_000);
    let keys = state
        .buckets
        .keys(
            &caller.tenant,
            &bucket,
            params.prefix.as_deref().unwrap_or(""),
            params.after.as_deref(),
            limit,
        )
        .await?;
    let next = (keys.len() == limit)
        .then(|| keys.last().map(|k| k.key.clone()))
        .flatten();
    Ok(Json(KeyPage {
        keys: keys
            .into_iter()
            .map(|k| KeyEntry {
                key: k.key,
                revision: k.revision,
                size: k.size,
            })
            .collect(),
        next,
    }))
}

#[utoipa::path(get, path = "/v1/kv/{bucket}/keys/{key}", tag = "kv",
    params(("bucket" = String, Path, description = "Bucket name"), ("key" = String, Path, description = "Key (may contain `/`)")),
    responses(
        (status = 200, description = "The value, as stored; `gust-revision` names its revision", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, body = crate::ErrorBody)))]
pub(crate) async fn get_key(
    State(state): State<ApiState>,
    caller: Caller,
    Path((bucket, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    caller.require(Action::Read)?;
    let bucket = bucket_name(bucket)?;
    let value = state
        .buckets
        .get(&caller.tenant, &bucket, &key)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no key `{key}` in bucket `{bucket}`")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::HeaderName::from_static("gust-revision"),
                value.revision.to_string(),
            ),
        ],
        value.value,
    )
        .into_response())
}

#[utoipa::path(put, path = "/v1/kv/{bucket}/keys/{key}", tag = "kv",
    params(("bucket" = String, Path, description = "Bucket name"), ("key" = String, Path, description = "Key (may contain `/`)")),
    request_body(content = Vec<u8>, description = "The value (at most 1 MiB)"),
    responses(
        (status = 200, body = Written),
        (status = 400, body = crate::ErrorBody),
        (status = 413, body = crate::ErrorBody),
        (status = 429, description = "Over the tenant's `kv_keys` or `storage_bytes` quota", body = crate::ErrorBody)))]
pub(crate) async fn put_key(
    State(state): State<ApiState>,
    caller: Caller,
    Path((bucket, key)): Path<(String, String)>,
    body: Body,
) -> Result<Json<Written>, ApiError> {
    caller.require(Action::Write)?;
    let bucket = bucket_name(bucket)?;
    let value = read_capped(body, kv::MAX_VALUE_BYTES).await.map_err(|_| {
        ApiError::PayloadTooLarge(format!(
            "a value may be at most {} bytes",
            kv::MAX_VALUE_BYTES
        ))
    })?;
    let revision = state
        .buckets
        .put(&caller.tenant, &bucket, &key, value)
        .await?;
    Ok(Json(Written { revision }))
}

#[utoipa::path(delete, path = "/v1/kv/{bucket}/keys/{key}", tag = "kv",
    params(("bucket" = String, Path, description = "Bucket name"), ("key" = String, Path, description = "Key (may contain `/`)")),
    responses((status = 204, description = "Deleted"), (status = 404, body = crate::ErrorBody)))]
pub(crate) async fn delete_key(
    State(state): State<ApiState>,
    caller: Caller,
    Path((bucket, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require(Action::Write)?;
    let bucket = bucket_name(bucket)?;
    match state
        .buckets
        .delete_many(&caller.tenant, &bucket, vec![key.clone()])
        .await?
    {
        0 => Err(ApiError::NotFound(format!(
            "no key `{key}` in bucket `{bucket}`"
        ))),
        _ => Ok(StatusCode::NO_CONTENT),
    }
}

/// A change trigger to add to a function.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTrigger {
    /// The bucket whose changes trigger the function.
    pub bucket: String,
    /// Only keys starting with this (default: every key; at most 1024 bytes).
    pub prefix: Option<String>,
    /// Request path the function sees (default `/`; at most 1024 bytes).
    pub path: Option<String>,
    /// A name for the trigger (default: generated).
    pub id: Option<String>,
}

/// A change trigger as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TriggerInfo {
    pub id: String,
    pub function: String,
    /// `kv`: changes in a bucket.
    pub kind: String,
    pub bucket: String,
    pub prefix: String,
    pub path: String,
    pub created_at_ms: u64,
}

impl From<gust_events::KvTriggerRecord> for TriggerInfo {
    fn from(r: gust_events::KvTriggerRecord) -> Self {
        Self {
            id: r.id,
            function: r.function.to_string(),
            kind: "kv".to_string(),
            bucket: r.bucket.to_string(),
            prefix: r.prefix,
            path: r.path,
            created_at_ms: r.created_ms,
        }
    }
}

#[utoipa::path(post, path = "/v1/functions/{name}/triggers", tag = "triggers",
    params(("name" = String, Path, description = "Function name")),
    request_body = NewTrigger,
    responses(
        (status = 201, body = TriggerInfo),
        (status = 400, body = crate::ErrorBody),
        (status = 404, body = crate::ErrorBody)))]
pub(crate) async fn add_trigger(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<Json<NewTrigger>, JsonRejection>,
) -> Result<(StatusCode, Json<TriggerInfo>), ApiError> {
    caller.require(Action::Write)?;
    let Json(body) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    text::check_opt("prefix", body.prefix.as_deref(), kv::MAX_KEY_BYTES)?;
    text::check_opt("path", body.path.as_deref(), text::MAX_PATH_BYTES)?;
    let name = existing(&state, &caller, name).await?;
    let id = match body.id {
        Some(id) => FunctionName::new(id)
            .map_err(|e| ApiError::BadRequest(format!("trigger id: {e}")))?
            .to_string(),
        None => format!("t{}", state.events.next_invocation_id()),
    };
    let record = gust_events::KvTriggerRecord {
        id,
        tenant: caller.tenant.clone(),
        function: name,
        bucket: bucket_name(body.bucket)?,
        prefix: body.prefix.unwrap_or_default(),
        path: body.path.unwrap_or_else(|| "/".to_string()),
        created_ms: now_ms(),
    };
    state.events.add_kv_trigger(record.clone()).await?;
    Ok((StatusCode::CREATED, Json(record.into())))
}

#[utoipa::path(get, path = "/v1/functions/{name}/triggers", tag = "triggers",
    params(("name" = String, Path, description = "Function name")),
    responses((status = 200, body = [TriggerInfo]), (status = 404, body = crate::ErrorBody)))]
pub(crate) async fn list_triggers(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<TriggerInfo>>, ApiError> {
    caller.require(Action::Read)?;
    let name = existing(&state, &caller, name).await?;
    let records = state.events.kv_triggers(&caller.tenant, &name).await?;
    Ok(Json(records.into_iter().map(TriggerInfo::from).collect()))
}

#[utoipa::path(delete, path = "/v1/functions/{name}/triggers/{id}", tag = "triggers",
    params(("name" = String, Path, description = "Function name"), ("id" = String, Path, description = "Trigger id")),
    responses((status = 204, description = "Removed"), (status = 404, body = crate::ErrorBody)))]
pub(crate) async fn remove_trigger(
    State(state): State<ApiState>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require(Action::Write)?;
    let name = existing(&state, &caller, name).await?;
    state
        .events
        .remove_kv_trigger(&caller.tenant, &name, &id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
