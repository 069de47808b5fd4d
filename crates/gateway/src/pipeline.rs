//! The request pipeline: a data-plane request is resolved to a loaded
//! version (host and path, alias, sticky split), authorized, admitted
//! (the function's, the tenant's and the node's limits), run in a fresh
//! instance, and answered; every failure on the way becomes a
//! [`GatewayError`], turned into a response in `error.rs`. Bodies are
//! read capped, and a refused request's body is drained so that the
//! client hears the answer instead of a reset.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use gust_core::usage::Trigger;
use gust_core::{LogRecord, Outcome, deploy, path};
use gust_runtime::{GuestBody, InvocationReport};
use http::{HeaderValue, Request, Response, Uri, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use crate::admission::{self, Refusal};
use crate::body::{BodyFault, LimitedBody};
use crate::catalog::{self, Resolved};
use crate::error::GatewayError;
use crate::invoker::submit_event;
use crate::{CLIENT_HEADER, GatewayBody, INVOCATION_TYPE, Shared, VERSION_HEADER};
use crate::{calls, cookies, kv, metering, now_ms, scaling, trace, websocket};

pub(crate) async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<GatewayBody>, Infallible> {
    let id = shared.events.next_invocation_id();
    shared.counters.requests.fetch_add(1, Ordering::Relaxed);
    let mut response = match invoke(&shared, request, &id).await {
        Ok(response) => response,
        Err(error) => error.into_response(&id),
    };
    let class = (response.status().as_u16() / 100).clamp(1, 5) as usize - 1;
    shared.counters.by_class[class].fetch_add(1, Ordering::Relaxed);
    crate::set_request_id(response.headers_mut(), id);
    Ok(response)
}

async fn invoke(
    shared: &Arc<Shared>,
    request: Request<Incoming>,
    id: &str,
) -> Result<Response<GatewayBody>, GatewayError> {
    if shared.draining.load(Ordering::Relaxed) {
        return Err(GatewayError::Draining);
    }
    let path_and_query = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    if path_and_query.starts_with(crate::webhooks::PREFIX) {
        return crate::webhooks::receive(shared, request).await;
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let (served, alias, tail, scope) = match shared.catalog.resolve(host, path_and_query) {
        Resolved::Found {
            served,
            alias,
            tail,
            scope,
        } => (served, alias, tail, scope),
        Resolved::NoFunction(name) => {
            let error = GatewayError::NoSuchFunction(name.to_string());
            return Err(reject_unread(shared, request, error).await);
        }
        Resolved::NoRoute => {
            return Err(reject_unread(shared, request, GatewayError::NoRoute).await);
        }
    };
    let Some(loaded) = served
        .pick(
            &alias,
            || sticky_key(request.headers()),
            || deploy::fnv1a(id.as_bytes()),
        )
        .cloned()
    else {
        // A private function's aliases are its own business: a caller who
        // may not call it learns nothing, not even that it exists.
        let alias = alias.into_owned();
        let mut request = request;
        let error = match shared.access.authorize(&served.live, request.headers_mut()) {
            Ok(()) => GatewayError::NoSuchAlias {
                function: served.live.name.to_string(),
                alias,
            },
            Err(hidden) => hidden,
        };
        return Err(reject_unread(shared, request, error).await);
    };
    // The path the function sees; the request is moved below.
    let guest_path = path::guest_path(tail).into_owned();
    let other_alias = (alias != deploy::LIVE).then(|| alias.into_owned());
    let mut request = request;
    strip_reserved_cookies(request.headers_mut());
    let admitted = shared
        .access
        .authorize(&loaded, request.headers_mut())
        .and_then(|()| {
            let budget = loaded.limits.monthly_budget_micros;
            let function = budget.map(|budget| (loaded.name.as_str(), budget));
            shared
                .access
                .admit(&loaded.tenant, function, shared.meter.as_ref())
        });
    if let Err(error) = admitted {
        return Err(reject_unread(shared, request, error).await);
    }
    websocket::strip_reserved(request.headers_mut());
    if loaded.limits.websocket && websocket::is_upgrade(request.headers()) {
        let uri = guest_uri(request.headers(), &guest_path)?;
        let alias = other_alias.unwrap_or_else(|| deploy::LIVE.to_string());
        return websocket::accept(shared, &loaded, request, uri, alias, id).await;
    }
    let declared_length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());

    let asynchronous = request
        .headers()
        .get(INVOCATION_TYPE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"event"));
    if asynchronous {
        if let Some(alias) = other_alias {
            let error = GatewayError::EventToAlias { alias };
            return Err(reject_unread(shared, request, error).await);
        }
        return submit_event(shared, &loaded, request, guest_path, declared_length, id, 0).await;
    }

    let limits = loaded.limits.clone();
    if declared_length.is_some_and(|len| len > limits.max_body_bytes) {
        let error = GatewayError::BodyTooLarge {
            limit: limits.max_body_bytes,
        };
        return Err(reject_unread(shared, request, error).await);
    }
    let uri = guest_uri(request.headers(), &guest_path)?;
    let trace = &shared.config.trace;
    let start = trace.start(
        request.headers(),
        trace.trust_client,
        other_alias.as_deref().unwrap_or(deploy::LIVE),
    );
    let (mut parts, body) = request.into_parts();
    // The client's URI, kept for the cookie scope (its path chose the function).
    let asked = std::mem::replace(&mut parts.uri, uri);
    let fault = BodyFault::default();
    let body = LimitedBody::new(
        body,
        limits.max_body_bytes,
        shared.config.body_idle_timeout,
        fault.clone(),
    );
    let attempt = metering::Attempt {
        id,
        attempt: 1,
        trigger: Trigger::Http,
        request_bytes: declared_length.unwrap_or(0),
        fault: Some(fault.clone()),
        depth: 0,
    };
    let result = run(
        shared,
        &loaded,
        Request::from_parts(parts, body),
        attempt,
        start,
    )
    .await
    .map(|mut response| {
        response
            .headers_mut()
            .insert(VERSION_HEADER, loaded.version_header.clone());
        let path = asked.path_and_query().map_or("/", |pq| pq.as_str());
        confine_cookies(response.headers_mut(), scope, path);
        response
    });
    if fault.too_large() || fault.stalled() {
        // The gateway answers for the guest. Its own answer is read and
        // thrown away, so that it runs to its end: dropping the body would
        // cancel it as if the client had gone.
        if let Ok(response) = result {
            tokio::spawn(discard(response.into_body()));
        }
        if fault.too_large() {
            return Err(GatewayError::BodyTooLarge {
                limit: limits.max_body_bytes,
            });
        }
        return Err(GatewayError::BodyStalled);
    }
    if let Err(GatewayError::Refused(Refusal::OverShare)) = &result {
        tokio::time::sleep(admission::OVER_SHARE_DELAY).await;
    }
    result
}

/// The URI the guest sees: its own path, and the host the client asked for.
fn guest_uri(headers: &http::HeaderMap, guest_path: &str) -> Result<Uri, GatewayError> {
    let authority = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    // One buffer, sized first, that the URI then keeps (no copy).
    let mut uri = String::with_capacity(7 + authority.len() + guest_path.len());
    uri.push_str("http://");
    uri.push_str(authority);
    uri.push_str(guest_path);
    Uri::try_from(uri)
        .map_err(|_| GatewayError::BadRequest("the request's host or path is not a valid URI"))
}

/// Reads a response body to its end (or its error) and drops what it carries.
pub(crate) async fn discard(mut body: GatewayBody) {
    while let Some(Ok(_)) = body.frame().await {}
}

/// Takes the node's own cookies (the dashboard's session) out of a
/// request before a guest sees it.
fn strip_reserved_cookies(headers: &mut http::HeaderMap) {
    if !headers.contains_key(header::COOKIE) {
        return;
    }
    let values: Vec<HeaderValue> = headers.get_all(header::COOKIE).iter().cloned().collect();
    let mut changed = false;
    let kept: Vec<HeaderValue> = values
        .iter()
        .filter_map(|value| {
            let Ok(text) = value.to_str() else {
                return Some(value.clone());
            };
            match cookies::without_reserved(text) {
                None => Some(value.clone()),
                Some(rest) => {
                    changed = true;
                    (!rest.is_empty()).then(|| HeaderValue::from_str(&rest).ok())?
                }
            }
        })
        .collect();
    if changed {
        headers.remove(header::COOKIE);
        for value in kept {
            headers.append(header::COOKIE, value);
        }
    }
}

/// Rewrites the guest's `Set-Cookie` headers so that none reaches beyond
/// what the function owns (see `cookies`), and drops any that would set
/// the node's own cookies.
fn confine_cookies(headers: &mut http::HeaderMap, scope: cookies::CookieScope, path: &str) {
    if matches!(scope, cookies::CookieScope::SharedOrigin { .. }) {
        for name in cookies::ORIGIN_WIDE {
            headers.remove(name);
        }
    }
    if !headers.contains_key(header::SET_COOKIE) {
        return;
    }
    let confined: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|value| {
            let text = value.to_str().ok()?;
            if cookies::sets_reserved(text) {
                return None;
            }
            match cookies::confine(text, scope, path) {
                None => Some(value.clone()),
                Some(text) => HeaderValue::from_str(&text).ok(),
            }
        })
        .collect();
    headers.remove(header::SET_COOKIE);
    for value in confined {
        headers.append(header::SET_COOKIE, value);
    }
}

/// A client's own key for sticky splits: the `gust-client` header, else
/// the `gust-client` cookie.
fn sticky_key(headers: &http::HeaderMap) -> Option<Vec<u8>> {
    if let Some(value) = headers.get(CLIENT_HEADER) {
        return Some(value.as_bytes().to_vec());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == CLIENT_HEADER).then(|| value.as_bytes().to_vec())
        })
}

pub(crate) enum CappedRead {
    TooLarge,
    Stalled,
}

/// Reads a whole body of at most `cap` bytes. Past the cap it goes on
/// reading and discarding (up to a bound) so that the client, still
/// sending, gets the 413 rather than a reset connection.
pub(crate) async fn read_capped<B>(
    mut body: B,
    cap: u64,
    idle: Duration,
) -> Result<Bytes, CappedRead>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    const DISCARD_AT_MOST: u64 = 64 << 20;
    let mut kept = Vec::new();
    let mut seen = 0u64;
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(CappedRead::Stalled),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %e, "request body failed");
                return Err(CappedRead::Stalled);
            }
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    seen += data.len() as u64;
                    if seen <= cap {
                        kept.extend_from_slice(data);
                    } else if seen > DISCARD_AT_MOST {
                        break;
                    }
                }
            }
        }
    }
    if seen > cap {
        return Err(CappedRead::TooLarge);
    }
    Ok(Bytes::from(kept))
}

/// Refuses a request without reading its body for the function. A client
/// that asked `Expect: 100-continue` has sent nothing yet and gets the
/// answer at once; any other is already sending, so the body is read and
/// thrown away first (up to a bound): closing on unread data would reset
/// the connection and the client would never see why.
pub(crate) async fn reject_unread<B>(
    shared: &Shared,
    request: Request<B>,
    error: GatewayError,
) -> GatewayError
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let waits_for_continue = request
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if waits_for_continue {
        return error;
    }
    let _ = read_capped(request.into_body(), 0, shared.config.body_idle_timeout).await;
    error
}

/// Admits a request and runs it in a fresh instance of the loaded version's
/// function. Every attempt that reaches here gets one usage record:
/// refused (no capacity, a quota, a load failure) or run.
///
/// `start`: where its span goes in a trace (`None` when traces are off).
pub(crate) async fn run<B>(
    shared: &Arc<Shared>,
    loaded: &Arc<catalog::Loaded>,
    mut request: Request<B>,
    attempt: metering::Attempt<'_>,
    start: Option<trace::Start>,
) -> Result<Response<GatewayBody>, GatewayError>
where
    B: http_body::Body<Data = Bytes, Error = GuestBody> + Send + 'static,
{
    let started = std::time::Instant::now();
    let span = match start {
        Some(start) => trace::attempt(loaded, attempt.id, attempt.attempt, attempt.trigger, start),
        None => trace::Traced::OFF,
    };
    let id = attempt.id;
    let fault = attempt.fault.clone();
    let depth = attempt.depth;
    // A client (or a calling guest) reads the answer as it streams; an
    // event's run keeps its timeout to the end.
    let streams = matches!(attempt.trigger, Trigger::Http | Trigger::Call);
    // Recorded (not run, 499) if the request goes away before its guest starts.
    let admitting = std::sync::Mutex::new(metering::Admitting::new(
        shared
            .meter
            .as_ref()
            .map(|meter| (meter, metering::start_record(loaded, &attempt))),
    ));
    let refuse = |error: GatewayError| {
        let status = error.status_code().as_u16();
        admitting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .refuse(status);
        trace::refused(&span, status);
        error
    };
    let admission = trace::step(&span, "admission");
    // The function's own limit first (a request may wait for it), then
    // the node's and the tenant's (never waited for).
    let function_permit = match &loaded.gate {
        Some(gate) => Some(
            gate.enter(
                loaded.name.as_str(),
                &loaded.limits,
                attempt.trigger == Trigger::Http,
            )
            .await
            .map_err(|refusal| refuse(refusal.into()))?,
        ),
        None => None,
    };
    let tenant_run = shared.access.admit_run(&loaded.tenant).map_err(refuse)?;
    let on_reservation = loaded.limits.reserved_concurrency.is_some() && loaded.is_live();
    let permit = shared
        .node
        .take(
            (!on_reservation).then_some(&tenant_run.share),
            admission::memory_reservation(loaded.limits.memory_bytes),
        )
        .map_err(|refusal| refuse(refusal.into()))?;
    drop(admission);
    let tenant_permit = tenant_run.permit;
    let running = scaling::Running::start(&loaded.activity);
    let (prepared, cold) = loaded
        .prepared(&shared.runtime, shared.blobs.as_ref())
        .await
        .map_err(|error| {
            refuse(GatewayError::Load {
                function: loaded.name.to_string(),
                error,
            })
        })?;
    if cold {
        shared.scaler.cold_start(loaded);
    }
    if !span.is_off() {
        span.set(opentelemetry::KeyValue::new("gust.cold_start", cold));
        // The guest sees its own attempt's place in the trace.
        span.inject(request.headers_mut());
    }
    let kv = Arc::new(kv::TenantKv {
        buckets: shared.buckets.clone(),
        tenant: loaded.tenant.clone(),
        span: span.clone(),
    });
    // The attempt's open frame is in the journal before the guest runs:
    // if the server dies next, the attempt is recorded as aborted.
    let usage = admitting
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .admitted();
    let draft = usage.map(|(meter, record)| {
        meter.open(&record);
        Arc::new(metering::Draft::new(meter.clone(), record))
    });
    let log = Arc::new(PendingLog {
        shared: shared.clone(),
        loaded: loaded.clone(),
        id: id.to_string(),
        state: std::sync::Mutex::new((None, None)),
    });
    // Dropped before the answer (the caller went away): 499.
    let unanswered_log = Unlogged(log.clone());
    let done = {
        let draft = draft.clone();
        let span = span.clone();
        move |report: InvocationReport| {
            drop(permit);
            drop(tenant_permit);
            drop(function_permit);
            drop(running);
            if let Some(draft) = &draft {
                draft.report(&report);
            }
            trace::finished(&span, &report);
            log.report(report);
        }
    };
    let unanswered = metering::Unanswered::new(draft.clone());
    let result = shared
        .runtime
        .invoke(
            prepared,
            gust_runtime::Guest {
                limits: loaded.limits.clone(),
                kv,
                vars: loaded.vars.clone(),
                calls: Some(Arc::new(calls::TenantCalls {
                    shared: shared.clone(),
                    tenant: loaded.tenant.clone(),
                    depth: depth + 1,
                    app: loaded.app.clone(),
                })),
                tenant: loaded.tenant.clone(),
                trace: trace::for_guest(&span),
                streams,
            },
            request,
            done,
        )
        .await
        .map_err(|error| GatewayError::Invoke {
            function: loaded.name.to_string(),
            error,
        });
    unanswered.answered();
    let status = match &result {
        Ok(response) => fault
            .as_ref()
            .and_then(|f| f.status())
            .unwrap_or_else(|| response.status().as_u16()),
        Err(error) => error.status_code().as_u16(),
    };
    loaded
        .health
        .record(status, started.elapsed().as_micros() as u64);
    trace::answered(&span, status);
    unanswered_log.0.status(status);
    match (draft, result) {
        (Some(draft), Ok(response)) => {
            // A body over its limit or stalled: the caller answers 413/408.
            draft.status(status);
            Ok(response.map(|body| metering::Counted::new(body, draft).boxed_unsync()))
        }
        (Some(draft), Err(error)) => {
            draft.status(status);
            draft.body_sent(0);
            Err(error)
        }
        (None, result) => result,
    }
}

/// An attempt's log record needs two things that come from two places:
/// the report, when its instance is gone, and the status, once `run` has
/// the answer. Either may come first (a small answer's instance may be
/// gone before `run` resumes); the second to come writes the record.
struct PendingLog {
    shared: Arc<Shared>,
    loaded: Arc<catalog::Loaded>,
    id: String,
    state: std::sync::Mutex<(Option<u16>, Option<InvocationReport>)>,
}

impl PendingLog {
    fn report(&self, report: InvocationReport) {
        count(&self.shared, &report);
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match state.0 {
            Some(status) => {
                drop(state);
                record(&self.shared, &self.loaded, &self.id, report, status);
            }
            None => state.1 = Some(report),
        }
    }

    /// The first status given counts.
    fn status(&self, status: u16) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.0.is_some() {
            return;
        }
        state.0 = Some(status);
        if let Some(report) = state.1.take() {
            drop(state);
            record(&self.shared, &self.loaded, &self.id, report, status);
        }
    }
}

/// Gives a [`PendingLog`] the status 499 if `run` is dropped before it
/// had an answer (the caller went away).
struct Unlogged(Arc<PendingLog>);

impl Drop for Unlogged {
    fn drop(&mut self) {
        self.0.status(499);
    }
}

/// Counts a finished invocation.
fn count(shared: &Shared, report: &InvocationReport) {
    let counter = if report.outcome.is_success() {
        &shared.counters.completed
    } else {
        &shared.counters.failed
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Logs what a finished invocation printed, or how it failed, or that it
/// answered a server error; a quiet success leaves no record.
fn record(
    shared: &Shared,
    loaded: &catalog::Loaded,
    id: &str,
    report: InvocationReport,
    status: u16,
) {
    let success = report.outcome.is_success();
    if success && status < 500 && report.stdout.is_empty() && report.stderr.is_empty() {
        return;
    }
    if let Outcome::Trapped { message } | Outcome::Failed { message } = &report.outcome {
        tracing::debug!(function = %loaded.name, invocation_id = id, %message, "invocation failed");
    }
    let record = LogRecord {
        invocation_id: id.to_string(),
        time_ms: now_ms(),
        version: loaded.version,
        outcome: report.outcome,
        duration_us: report.duration.as_micros() as u64,
        peak_memory_bytes: report.peak_memory_bytes,
        stdout: String::from_utf8_lossy(&report.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&report.stderr).into_owned(),
        truncated: report.output_truncated,
        status,
    };
    shared.logs.record(&loaded.tenant, &loaded.name, &record);
}
