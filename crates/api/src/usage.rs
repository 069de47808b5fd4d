//! `/v1/usage`: the caller's tenant's metered usage, summed and grouped,
//! and the ledger's records for a period as CSV or JSON lines — whose
//! totals equal the summary's for the same period.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use bytes::Bytes;
use gust_core::access::Action;
use gust_core::usage::UsageRecord;
use gust_meter::{GroupBy, Meter, Scope, UsageQuery, UsageReport};
use serde::Deserialize;

use crate::auth::Caller;
use crate::{ApiError, ApiState};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// Only this function.
    pub function: Option<String>,
    /// Start of the period, Unix ms (default: the first of this month, UTC).
    pub from_ms: Option<u64>,
    /// End of the period (excluded), Unix ms (default: now).
    pub to_ms: Option<u64>,
    /// `hour`, `day`, `function` or `app` (functions in no application
    /// are summed under `-`).
    pub by: Option<GroupBy>,
    /// Only the functions of this application (as they belong now), with
    /// `by` `function` or `app`, or none.
    pub app: Option<String>,
    /// For `/v1/usage/records`: `csv` (default) or `jsonl`.
    pub format: Option<String>,
    /// In a cluster: only the records of what ran on the answering node
    /// (default: every node's).
    pub local: Option<bool>,
}

impl UsageParams {
    fn query(&self) -> Result<UsageQuery, ApiError> {
        let now = crate::now_ms();
        let from_ms = self
            .from_ms
            .unwrap_or_else(|| gust_core::usage::month_start_ms(now));
        let to_ms = self.to_ms.unwrap_or(now + 1);
        if from_ms >= to_ms {
            return Err(ApiError::BadRequest(
                "the period is empty: `from_ms` must be before `to_ms`".into(),
            ));
        }
        Ok(UsageQuery {
            function: self.function.clone(),
            from_ms,
            to_ms,
            by: self.by,
        })
    }
}

fn meter(state: &ApiState) -> Result<&Meter, ApiError> {
    state.meter.as_ref().ok_or_else(|| {
        ApiError::NotFound("metering is off on this server (`--no-metering`)".into())
    })
}

#[utoipa::path(get, path = "/v1/usage", tag = "usage", params(UsageParams),
    responses((status = 200, description = "Totals for the period, and per group", body = UsageReport)))]
pub(crate) async fn usage(
    State(state): State<ApiState>,
    caller: Caller,
    params: Result<Query<UsageParams>, QueryRejection>,
) -> Result<Json<UsageReport>, ApiError> {
    caller.require(Action::Read)?;
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let query = params.query()?;
    // In a cluster each node's view holds every node's records (see
    // `gust_meter::SharedUsage`); `local` asks for this node's alone.
    let scope = if params.local == Some(true) {
        Scope::Node
    } else {
        Scope::Cluster
    };
    let mut query = query;
    let by_app = query.by == Some(GroupBy::App);
    let folding = by_app || params.app.is_some();
    let by_function = query.by == Some(GroupBy::Function);
    if params.app.is_some() && !(by_app || by_function || query.by.is_none()) {
        return Err(ApiError::BadRequest(
            "`app` sums an application's functions: group by `function` or `app`, or not at all"
                .into(),
        ));
    }
    if folding {
        query.by = Some(GroupBy::Function);
    }
    let mut report = meter(&state)?
        .usage(scope, caller.tenant.as_str(), &query)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if folding {
        // Which application each function belongs to now.
        let app_of: std::collections::HashMap<String, String> = state
            .registry
            .functions(&caller.tenant)
            .await?
            .into_iter()
            .filter_map(|r| Some((r.name.to_string(), r.app?)))
            .collect();
        let wanted = params.app.clone();
        report.fold_groups(|function| {
            let app = app_of.get(function).map_or("-", String::as_str);
            if wanted.as_deref().is_some_and(|w| w != app) {
                return None;
            }
            Some(if by_app {
                app.to_string()
            } else {
                function.to_string()
            })
        });
        if !by_app && !by_function {
            report.groups.clear();
        }
    }
    Ok(Json(report))
}

/// The columns of a CSV export, in order.
const CSV_COLUMNS: &str = "invocation_id,attempt,function,version,trigger,start_ms,wall_ns,cpu_ns,peak_memory_bytes,memory_limit_bytes,request_bytes,response_bytes,outbound_requests,outbound_bytes,kv_operations,outcome,status,billed_ms,gib_us,cost_micros,plan";

/// The serde name of a unit enum value (`http`, `timed_out`).
fn serde_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn csv_row(r: &UsageRecord) -> String {
    format!(
        "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
        r.invocation_id,
        r.attempt,
        r.function,
        r.version,
        serde_name(&r.trigger),
        r.start_ms,
        r.wall_ns,
        r.cpu_ns,
        r.peak_memory_bytes,
        r.memory_limit_bytes,
        r.request_bytes,
        r.response_bytes,
        r.outbound_requests,
        r.outbound_bytes,
        r.kv_operations,
        serde_name(&r.outcome),
        r.status,
        r.billed_ms,
        r.gib_us,
        r.cost_micros,
        r.plan
    )
}

#[utoipa::path(get, path = "/v1/usage/records", tag = "usage", params(UsageParams),
    responses((status = 200, description = "Every usage record of the period, as CSV (with a header row) or JSON lines", content_type = "text/csv")))]
pub(crate) async fn records(
    State(state): State<ApiState>,
    caller: Caller,
    params: Result<Query<UsageParams>, QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    caller.require(Action::Read)?;
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let query = params.query()?;
    let jsonl = match params.format.as_deref() {
        None | Some("csv") => false,
        Some("jsonl") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unknown format `{other}`: use csv or jsonl"
            )));
        }
    };
    let meter = meter(&state)?.clone();
    let scope = if params.local == Some(true) {
        Scope::Node
    } else {
        Scope::Cluster
    };
    let body = export(meter, scope, caller.tenant.to_string(), query, jsonl).await?;
    let content_type = if jsonl {
        "application/jsonl"
    } else {
        "text/csv"
    };
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// `GET /v1/functions/{name}/stats`: the period, in intervals.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsParams {
    /// Start, Unix ms (default: an hour before `to_ms`; at most 31 days before it).
    pub from_ms: Option<u64>,
    /// End (excluded), Unix ms (default: now).
    pub to_ms: Option<u64>,
    /// Intervals the period is cut into (default 60, at most 1,440).
    pub intervals: Option<usize>,
}

/// A function's activity over a period, from its usage records.
#[derive(Debug, serde::Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionStats {
    pub function: String,
    pub from_ms: u64,
    pub step_ms: u64,
    pub intervals: Vec<gust_core::series::Interval>,
}

/// The most intervals one answer holds.
const MAX_INTERVALS: usize = 1440;
/// The longest period one answer covers (its records are all read).
const MAX_PERIOD_MS: u64 = 31 * 86_400_000;

#[utoipa::path(get, path = "/v1/functions/{name}/stats", tag = "usage",
    params(("name" = String, Path, description = "Function name"), StatsParams),
    responses(
        (status = 200, description = "Requests, errors, p50/p99 latency and cost per interval", body = FunctionStats),
        (status = 404, body = crate::ErrorBody)))]
pub(crate) async fn function_stats(
    State(state): State<ApiState>,
    caller: Caller,
    axum::extract::Path(name): axum::extract::Path<String>,
    params: Result<Query<StatsParams>, QueryRejection>,
) -> Result<Json<FunctionStats>, ApiError> {
    caller.require(Action::Read)?;
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let name = crate::existing(&state, &caller, name).await?;
    let now = crate::now_ms();
    let to_ms = params.to_ms.unwrap_or(now + 1);
    let from_ms = params.from_ms.unwrap_or(to_ms.saturating_sub(3_600_000));
    if from_ms >= to_ms {
        return Err(ApiError::BadRequest(
            "the period is empty: `from_ms` must be before `to_ms`".into(),
        ));
    }
    if to_ms - from_ms > MAX_PERIOD_MS {
        return Err(ApiError::BadRequest(
            "the period is longer than 31 days: ask for a shorter one (`from_ms`, `to_ms`), or export the records (`/v1/usage/records`)".into(),
        ));
    }
    let count = params.intervals.unwrap_or(60);
    if count == 0 || count > MAX_INTERVALS {
        return Err(ApiError::BadRequest(format!(
            "`intervals` must be between 1 and {MAX_INTERVALS}"
        )));
    }
    // No interval shorter than a millisecond.
    let count = count.min((to_ms - from_ms) as usize);
    let step_ms = (to_ms - from_ms).div_ceil(count as u64).max(1);
    let mut series = gust_core::series::SeriesBuilder::new(from_ms, step_ms, count);
    meter(&state)?
        .for_each(
            Scope::Cluster,
            caller.tenant.as_str(),
            from_ms,
            to_ms,
            |r| {
                if r.function == name.as_str() {
                    series.add(r);
                }
            },
        )
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(FunctionStats {
        function: name.to_string(),
        from_ms,
        step_ms,
        intervals: series.finish(),
    }))
}

/// The records of `query`, rendered as CSV (with a header row) or JSON
/// lines. The first page is read before answering, so a ledger error
/// there is still a 500; the rest streams page by page (an export may be
/// millions of rows), and an error on a later page ends the body with an
/// error, so the client sees a broken transfer, never a shorter file.
async fn export(
    meter: Meter,
    scope: Scope,
    tenant: String,
    query: UsageQuery,
    jsonl: bool,
) -> Result<axum::body::Body, ApiError> {
    let (first, mut next) = meter
        .page(scope, &tenant, query.from_ms, query.to_ms, None)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let render = move |records: &[UsageRecord], header: bool| {
        let mut out = String::new();
        if header {
            out.push_str(CSV_COLUMNS);
            out.push('\n');
        }
        for r in records {
            if query.function.as_ref().is_some_and(|f| *f != r.function) {
                continue;
            }
            if jsonl {
                if let Ok(line) = serde_json::to_string(r) {
                    out.push_str(&line);
                    out.push('\n');
                }
            } else {
                out.push_str(&csv_row(r));
            }
        }
        Bytes::from(out)
    };
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let first = render(&first, !jsonl);
    tokio::spawn(async move {
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        while let Some(after) = next.take() {
            match meter
                .page(scope, &tenant, query.from_ms, query.to_ms, Some(after))
                .await
            {
                Ok((page, after)) => {
                    next = after;
                    if tx.send(Ok(render(&page, false))).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // Cut the transfer short: never a silently shorter export.
                    tracing::error!(error = %e, "a usage export stopped");
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            }
        }
    });
    Ok(axum::body::Body::new(Chunks(rx)))
}

/// A response body fed page by page through a channel.
struct Chunks(tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|chunk| chunk.map(http_body::Frame::data)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use gust_core::usage::{PlanHistory, Trigger, UsageOutcome};
    use gust_store::{LedgerCommit, LedgerEntry, LedgerStore, StoreError};
    use gust_store_embedded::EmbeddedStore;
    use http_body_util::BodyExt as _;

    use super::*;

    /// The embedded ledger, whose reads fail after the first page.
    struct FailsAfterFirstPage(EmbeddedStore);

    #[async_trait]
    impl LedgerStore for FailsAfterFirstPage {
        async fn commit(&self, commit: LedgerCommit) -> Result<u64, StoreError> {
            self.0.commit(commit).await
        }
        async fn position(&self) -> Result<Option<Bytes>, StoreError> {
            self.0.position().await
        }
        async fn open_markers(&self) -> Result<Vec<(String, Bytes)>, StoreError> {
            self.0.open_markers().await
        }
        async fn records(
            &self,
            tenant: &str,
            from_ms: u64,
            to_ms: u64,
            after: Option<(u64, String)>,
            limit: usize,
        ) -> Result<Vec<LedgerEntry>, StoreError> {
            if after.is_some() {
                return Err(StoreError::Backend("the disk went away".into()));
            }
            self.0.records(tenant, from_ms, to_ms, after, limit).await
        }
        async fn outbox(&self, limit: usize) -> Result<Vec<(u64, Bytes)>, StoreError> {
            self.0.outbox(limit).await
        }
        async fn drop_outbox(&self, through: u64) -> Result<(), StoreError> {
            self.0.drop_outbox(through).await
        }
        async fn prune(&self, before_ms: u64, limit: usize) -> Result<u64, StoreError> {
            self.0.prune(before_ms, limit).await
        }
    }

    fn record(n: u64) -> UsageRecord {
        UsageRecord {
            invocation_id: format!("inv{n:06}"),
            attempt: 1,
            tenant: "t".into(),
            function: "f".into(),
            version: 1,
            trigger: Trigger::Http,
            start_ms: 1_000 + n,
            wall_ns: 1_000_000,
            cpu_ns: 500_000,
            peak_memory_bytes: 0,
            memory_limit_bytes: 128 << 20,
            request_bytes: 0,
            response_bytes: 0,
            outbound_requests: 0,
            outbound_bytes: 0,
            kv_operations: 0,
            outcome: UsageOutcome::Success,
            status: 200,
            billed_ms: 0,
            gib_us: 0,
            cost_micros: 0,
            plan: String::new(),
        }
    }

    #[tokio::test]
    async fn an_export_cut_short_by_the_ledger_ends_in_an_error_not_a_shorter_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("db")).unwrap();
        let meter = Meter::start(
            Arc::new(FailsAfterFirstPage(store)),
            Arc::new(|_: &str| PlanHistory::default()),
            &dir.path().join("journal"),
        )
        .await
        .unwrap();
        // More than one page of records.
        let records = 12_000;
        for n in 0..records {
            meter.record(record(n), false);
        }
        meter.flush(Duration::from_secs(30)).await;
        let query = UsageQuery {
            function: None,
            from_ms: 0,
            to_ms: u64::MAX,
            by: None,
        };
        let mut body = export(meter, Scope::Node, "t".into(), query, false)
            .await
            .unwrap();
        let mut rows = 0;
        let failed = loop {
            match body.frame().await {
                Some(Ok(frame)) => {
                    let data = frame.into_data().unwrap();
                    rows += data.iter().filter(|b| **b == b'\n').count();
                }
                Some(Err(e)) => break e.to_string(),
                None => panic!("the export ended cleanly after {rows} lines"),
            }
        };
        // The header and the first page arrived, then the error.
        assert!(rows > 1 && rows < records as usize + 1, "{rows} lines");
        assert!(failed.contains("the disk went away"), "{failed}");
    }
}
