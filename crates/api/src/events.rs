//! A function's events: asynchronous invocations (submitted, listed,
//! looked up), its schedules, and its dead letters and their redrive.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use gust_core::access::Action;
use gust_core::delivery::DeadReason;
use gust_core::{FunctionName, InvocationRecord};
use gust_events::Events;
use serde::{Deserialize, Serialize};

use crate::{
    ApiError, ApiState, Caller, ErrorBody, existing, function_name, now_ms, read_capped, text,
};

/// A dead-lettered event, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetterInfo {
    pub invocation_id: String,
    pub reason: DeadReason,
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub dead_at_ms: u64,
    /// CloudEvents `id`, `source`, `type` of the event.
    pub event_id: String,
    pub event_source: String,
    pub event_type: String,
    pub data_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Redriven {
    pub redriven: usize,
}

/// The answer to an accepted asynchronous invocation.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Accepted {
    pub invocation_id: String,
    pub state: gust_core::InvocationState,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SubmitParams {
    /// Path (and query) the function sees (default `/`).
    pub path: Option<String>,
}

/// A schedule to add to a function.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSchedule {
    /// Cron with seconds (`*/5 * * * * *`), classic five-field cron, or `@every 30s`.
    pub expr: String,
    /// `UTC` (default), a fixed offset such as `+02:00`, or a tz database name such as `Europe/Paris`.
    pub tz: Option<String>,
    /// A name for the schedule (default: generated).
    pub id: Option<String>,
    /// Ticks missed while the server was down fired when it is back, at most (default 0: skipped).
    pub catch_up: Option<u32>,
    /// Request path the function sees (default `/`; at most 1024 bytes).
    pub path: Option<String>,
}

/// A schedule as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleInfo {
    pub id: String,
    pub function: String,
    pub expr: String,
    pub tz: String,
    pub created_at_ms: u64,
    /// Missed ticks fired after downtime, at most.
    pub catch_up: u32,
    pub path: String,
    /// When it fires next (Unix ms).
    pub next_ms: Option<u64>,
    /// In a cluster, the node that claims its ticks, as the node that
    /// answered sees the live nodes (another takes over when it dies).
    #[serde(default)]
    pub owner: Option<String>,
}

impl ScheduleInfo {
    /// A stored schedule with the node that fires it.
    pub(crate) fn listed(
        events: &gust_events::Events,
        record: gust_events::ScheduleRecord,
    ) -> Self {
        let owner = events.schedule_owner(&record);
        Self {
            owner,
            ..record.into()
        }
    }
}

impl From<gust_events::ScheduleRecord> for ScheduleInfo {
    fn from(r: gust_events::ScheduleRecord) -> Self {
        let next_ms = gust_core::schedule::Schedule::parse(&r.expr)
            .ok()
            .zip(gust_events::TimeZone::parse(&r.tz).ok())
            .and_then(|(s, zone)| s.next_after(now_ms(), &zone));
        Self {
            id: r.id,
            function: r.function.to_string(),
            expr: r.expr,
            tz: r.tz,
            created_at_ms: r.created_ms,
            catch_up: r.catch_up,
            path: r.path,
            next_ms,
            owner: None,
        }
    }
}

/// Largest payload of an event sent through the control API.
const MAX_EVENT_BYTES: usize = 1 << 20;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// At most this many (default 100, at most 10000).
    pub limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/functions/{name}/invocations", tag = "events",
    params(("name" = String, Path, description = "Function name"), ListParams),
    responses(
        (status = 200, description = "Asynchronous invocations, newest first", body = [InvocationRecord]),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn list_invocations(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Vec<InvocationRecord>>, ApiError> {
    caller.require(Action::Read)?;
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let name = existing(&state, &caller, name).await?;
    let limit = params.limit.unwrap_or(100).clamp(1, 10_000);
    Ok(Json(
        state
            .events
            .invocations(&caller.tenant, &name, limit)
            .await?,
    ))
}

#[utoipa::path(post, path = "/v1/functions/{name}/invocations", tag = "events",
    params(("name" = String, Path, description = "Function name"), SubmitParams),
    request_body(content = Vec<u8>, description = "The event's data; `ce-*` headers set its CloudEvents attributes, and a W3C `traceparent` (with its `tracestate`) makes its attempts part of that trace"),
    responses(
        (status = 202, description = "Durably queued", body = Accepted),
        (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody)))]
pub(crate) async fn submit_invocation(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    params: Result<Query<SubmitParams>, QueryRejection>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    caller.require(Action::Invoke)?;
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    text::check_opt("path", params.path.as_deref(), text::MAX_PATH_BYTES)?;
    let name = function_name(name)?;
    let function = state.function_record(&caller.tenant, &name).await?;
    let limit = state
        .accounts
        .quotas(&caller.tenant)
        .unwrap_or_default()
        .event_backlog;
    if state.events.backlog(&caller.tenant) >= limit {
        return Err(ApiError::QuotaExceeded(format!(
            "tenant `{}` is at its quota `event_backlog` ({limit} events waiting); retry when some are delivered",
            caller.tenant
        )));
    }
    let cap = state
        .serving(&function)
        .await?
        .map_or(MAX_EVENT_BYTES, |a| {
            usize::try_from(a.limits.max_body_bytes).unwrap_or(usize::MAX)
        })
        .min(MAX_EVENT_BYTES);
    let data = read_capped(body, cap).await.map_err(|_| {
        ApiError::PayloadTooLarge(format!("an event's payload may be at most {cap} bytes"))
    })?;
    let path = params.path.unwrap_or_else(|| "/".to_string());
    let path = if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    };
    let id = state.events.next_invocation_id();
    let header = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    let mut envelope = Events::envelope(
        caller.tenant.clone(),
        name,
        id.clone(),
        path,
        header,
        data.to_vec(),
    );
    // The caller's trace, when traces are on and clients' trace context
    // is believed: every attempt of the event, and its destinations, join it.
    if state.keep_trace_context {
        (envelope.traceparent, envelope.tracestate) = gust_core::trace_context(
            header("traceparent"),
            headers
                .get_all("tracestate")
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
    }
    state.events.submit(envelope).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            invocation_id: id,
            state: gust_core::InvocationState::Queued,
        }),
    ))
}

#[utoipa::path(post, path = "/v1/functions/{name}/schedules", tag = "schedules",
    params(("name" = String, Path, description = "Function name")),
    request_body = NewSchedule,
    responses(
        (status = 201, body = ScheduleInfo),
        (status = 400, description = "The expression or time zone does not parse; the message names the fault", body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn add_schedule(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<Json<NewSchedule>, JsonRejection>,
) -> Result<(StatusCode, Json<ScheduleInfo>), ApiError> {
    caller.require(Action::Write)?;
    let Json(body) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    text::check("expr", &body.expr, text::MAX_SCHEDULE_EXPR_BYTES)?;
    text::check_opt("tz", body.tz.as_deref(), text::MAX_TZ_BYTES)?;
    text::check_opt("path", body.path.as_deref(), text::MAX_PATH_BYTES)?;
    let name = existing(&state, &caller, name).await?;
    let id = match body.id {
        Some(id) => FunctionName::new(id)
            .map_err(|e| ApiError::BadRequest(format!("schedule id: {e}")))?
            .to_string(),
        None => format!("s{}", state.events.next_invocation_id()),
    };
    let record = gust_events::ScheduleRecord {
        id,
        tenant: caller.tenant.clone(),
        function: name,
        expr: body.expr,
        tz: body.tz.unwrap_or_else(|| "UTC".to_string()),
        created_ms: now_ms(),
        catch_up: body.catch_up.unwrap_or(0),
        path: body.path.unwrap_or_else(|| "/".to_string()),
    };
    state.events.add_schedule(record.clone()).await?;
    Ok((StatusCode::CREATED, Json(record.into())))
}

#[utoipa::path(get, path = "/v1/functions/{name}/schedules", tag = "schedules",
    params(("name" = String, Path, description = "Function name")),
    responses((status = 200, body = [ScheduleInfo]), (status = 404, body = ErrorBody)))]
pub(crate) async fn list_schedules(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<ScheduleInfo>>, ApiError> {
    caller.require(Action::Read)?;
    let name = existing(&state, &caller, name).await?;
    let records = state.events.schedules(&caller.tenant, &name).await?;
    Ok(Json(
        records
            .into_iter()
            .map(|r| ScheduleInfo::listed(&state.events, r))
            .collect(),
    ))
}

#[utoipa::path(delete, path = "/v1/functions/{name}/schedules/{id}", tag = "schedules",
    params(("name" = String, Path, description = "Function name"), ("id" = String, Path, description = "Schedule id")),
    responses((status = 204, description = "Removed"), (status = 404, body = ErrorBody)))]
pub(crate) async fn remove_schedule(
    State(state): State<ApiState>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require(Action::Write)?;
    let name = existing(&state, &caller, name).await?;
    state
        .events
        .remove_schedule(&caller.tenant, &name, &id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/invocations/{id}", tag = "events",
    params(("id" = String, Path, description = "Invocation id")),
    responses(
        (status = 200, body = InvocationRecord),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn get_invocation(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<InvocationRecord>, ApiError> {
    caller.require(Action::Read)?;
    Ok(Json(state.events.invocation(&caller.tenant, &id).await?))
}

#[utoipa::path(get, path = "/v1/functions/{name}/dead-letters", tag = "events",
    params(("name" = String, Path, description = "Function name")),
    responses(
        (status = 200, description = "Events that gave up, oldest first", body = [DeadLetterInfo]),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn list_dead_letters(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<DeadLetterInfo>>, ApiError> {
    caller.require(Action::Read)?;
    let name = existing(&state, &caller, name).await?;
    let letters = state.events.dead_letters(&caller.tenant, &name).await?;
    Ok(Json(
        letters
            .into_iter()
            .map(|l| {
                let event = gust_core::Envelope::decode(&l.envelope).ok();
                DeadLetterInfo {
                    invocation_id: l.invocation_id,
                    reason: l.reason,
                    attempts: l.attempts,
                    last_status: l.last_status,
                    last_error: l.last_error,
                    dead_at_ms: l.dead_at_ms,
                    event_id: event.as_ref().map(|e| e.id.clone()).unwrap_or_default(),
                    event_source: event.as_ref().map(|e| e.source.clone()).unwrap_or_default(),
                    event_type: event.as_ref().map(|e| e.ty.clone()).unwrap_or_default(),
                    data_bytes: event.as_ref().map_or(0, |e| e.data.len() as u64),
                }
            })
            .collect(),
    ))
}

#[utoipa::path(post, path = "/v1/functions/{name}/dead-letters/redrive", tag = "events",
    params(("name" = String, Path, description = "Function name")),
    responses(
        (status = 200, description = "Every dead letter queued again", body = Redriven),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn redrive_all(
    State(state): State<ApiState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Redriven>, ApiError> {
    caller.require(Action::Write)?;
    let name = existing(&state, &caller, name).await?;
    let redriven = state.events.redrive(&caller.tenant, &name, None).await?;
    Ok(Json(Redriven { redriven }))
}

#[utoipa::path(post, path = "/v1/functions/{name}/dead-letters/{id}/redrive", tag = "events",
    params(("name" = String, Path, description = "Function name"), ("id" = String, Path, description = "Invocation id")),
    responses(
        (status = 200, description = "The dead letter queued again", body = Redriven),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn redrive_one(
    State(state): State<ApiState>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<Redriven>, ApiError> {
    caller.require(Action::Write)?;
    let name = existing(&state, &caller, name).await?;
    let redriven = state
        .events
        .redrive(&caller.tenant, &name, Some(&id))
        .await?;
    Ok(Json(Redriven { redriven }))
}
