//! `/v1/functions/{name}/logs`: a function's invocation logs, paged by
//! sequence number, with an optional long poll for new entries.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use gust_core::LogRecord;
use gust_core::access::Action;
use gust_store::Registry;
use serde::{Deserialize, Serialize};

use crate::{ApiError, ApiState, Caller, ErrorBody, existing};

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

#[utoipa::path(get, path = "/v1/functions/{name}/logs", tag = "logs",
    params(("name" = String, Path, description = "Function name"), LogParams),
    responses(
        (status = 200, body = LogPage),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn read_logs(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    params: Result<Query<LogParams>, QueryRejection>,
) -> Result<Json<LogPage>, ApiError> {
    caller.require(Action::Read)?;
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let name = existing(&state, &caller, name).await?;
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
