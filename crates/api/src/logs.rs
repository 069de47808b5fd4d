//! `/v1/functions/{name}/logs`: a function's invocation logs, paged by
//! sequence number, with an optional long poll for new entries, and
//! searched: a time window, text, one invocation, a status class
//! ([`gust_core::logquery`]). A search reads the stream in order and
//! keeps what matches; one page reads at most [`SCAN_RECORDS`] records,
//! so a search through a long stream answers in pages that may hold
//! fewer entries than asked (`end` says whether the stream was read to
//! its end), never in one long request.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use gust_core::LogRecord;
use gust_core::access::Action;
use gust_core::logquery::{LogFilter, StatusFilter};
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
    /// Only entries written at or after this time (Unix ms).
    pub since_ms: Option<u64>,
    /// Only entries written before this time (Unix ms).
    pub until_ms: Option<u64>,
    /// Only entries whose stdout, stderr or failure message contains this
    /// text (case-sensitive).
    pub grep: Option<String>,
    /// Only the entry of this invocation.
    pub invocation: Option<String>,
    /// Only entries that answered this status (`404`) or class (`5xx`).
    pub status: Option<String>,
}

/// Records one page reads at most (matching or not).
pub const SCAN_RECORDS: usize = 20_000;
/// Bytes of records one page reads at most (matching or not).
const SCAN_BYTES: usize = 64 << 20;
/// Records read from the store at a time.
const CHUNK: usize = 1000;
/// Longest text a search may look for.
const MAX_GREP_BYTES: usize = 1024;

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
    /// The stream was read to its end (for now): a search with more to
    /// read says `false`, and continues from `next`.
    #[serde(default)]
    pub end: bool,
}

impl LogParams {
    fn filter(&self) -> Result<LogFilter, ApiError> {
        if let Some(grep) = &self.grep
            && grep.len() > MAX_GREP_BYTES
        {
            return Err(ApiError::BadRequest(format!(
                "grep is {} bytes: search for at most {MAX_GREP_BYTES}",
                grep.len()
            )));
        }
        if let (Some(since), Some(until)) = (self.since_ms, self.until_ms)
            && until <= since
        {
            return Err(ApiError::BadRequest(format!(
                "until_ms ({until}) must be after since_ms ({since})"
            )));
        }
        Ok(LogFilter {
            since_ms: self.since_ms,
            until_ms: self.until_ms,
            grep: self.grep.clone().filter(|g| !g.is_empty()),
            invocation: self.invocation.clone().filter(|i| !i.is_empty()),
            status: self
                .status
                .as_deref()
                .map(str::parse::<StatusFilter>)
                .transpose()
                .map_err(ApiError::BadRequest)?,
        })
    }
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
    let filter = params.filter()?;
    let name = existing(&state, &caller, name).await?;
    let after = params.after.unwrap_or(0);
    let limit = params.limit.unwrap_or(100).clamp(1, 1000);
    let wait = Duration::from_millis(params.wait_ms.unwrap_or(0).min(30_000));
    let stream = Registry::log_stream(&caller.tenant, &name);
    let deadline = Instant::now() + wait;
    let mut stopping = state.stopping.clone();
    let mut from = after;
    loop {
        let page = scan(&state, &stream, name.as_str(), from, limit, &filter).await?;
        // Long poll only while nothing is new: a search with more to read
        // answers at once, to be continued from `next`.
        let idle = page.entries.is_empty() && page.end;
        if !idle || Instant::now() >= deadline || *stopping.borrow() {
            return Ok(Json(page));
        }
        // What was read matched nothing: wait for what comes after it.
        from = page.next;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stopping.changed() => {}
        }
    }
}

/// Reads `stream` after `after` and keeps up to `limit` entries that
/// match `filter`, reading at most [`SCAN_RECORDS`] records.
async fn scan(
    state: &ApiState,
    stream: &str,
    name: &str,
    after: u64,
    limit: usize,
    filter: &LogFilter,
) -> Result<LogPage, ApiError> {
    let mut entries = Vec::new();
    let mut next = after;
    let (mut scanned, mut bytes) = (0usize, 0usize);
    let chunk = if filter.is_empty() { limit } else { CHUNK };
    loop {
        // A read may answer fewer records than asked while more follow
        // (a cluster's reads stop at a time limit): only an empty read
        // says the stream is read to its end.
        let raw = state.logs.read(stream, next, chunk).await?;
        if raw.is_empty() {
            return Ok(LogPage {
                entries,
                next,
                end: true,
            });
        }
        for (seq, record) in raw {
            // Continue after the last entry read, even one that did not decode.
            next = seq;
            scanned += 1;
            bytes += record.len();
            if !filter.may_match_raw(&record) {
                continue;
            }
            match serde_json::from_slice::<LogRecord>(&record) {
                Ok(record) if filter.matches(&record) => {
                    entries.push(LogEntry { seq, record });
                    if entries.len() == limit {
                        return Ok(LogPage {
                            entries,
                            next,
                            end: false,
                        });
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(%name, seq, error = %e, "skipping undecodable log entry"),
            }
        }
        if scanned >= SCAN_RECORDS || bytes >= SCAN_BYTES {
            return Ok(LogPage {
                entries,
                next,
                end: false,
            });
        }
    }
}
