//! Traces: the spans the data plane makes for each invocation attempt and
//! what the host does around it, and the W3C trace context that ties
//! them to the spans of callers and callees.
//!
//! Spans are `tracing` spans of the target [`TARGET`]; the binary exports
//! them over OTLP when traces are on (`gust up --otlp-endpoint`) and
//! shows them nowhere else. With traces off ([`TraceConfig::enabled`]
//! false) none of this runs: no span, no header read or written.
//!
//! - **One span per attempt** (`invoke`): tenant, function, version,
//!   alias, invocation id, attempt, trigger; when it ends, outcome,
//!   status, cold start, wall and CPU time. Children: `queue wait` (an
//!   event's first attempt: its time from acceptance), `admission`,
//!   `kv <op>`, and one named by its method (`GET`) for each request the
//!   guest sends (refused ones make none).
//! - **Its parent**: an HTTP request's `traceparent`/`tracestate` when
//!   the node trusts clients' trace context
//!   ([`TraceConfig::trust_client`]), else a new trace; a call from
//!   another function: the caller's `outbound` span (always trusted: the
//!   host wrote it); an event: the span that accepted it, kept in its
//!   envelope. A client's `tracestate` over [`MAX_TRACESTATE`] bytes is
//!   dropped (its `traceparent` kept): it would be copied into every
//!   span and stored with every event.
//! - **What the guest sees**: `traceparent` (and `tracestate`) of its
//!   own attempt span; an event also brings the context it was accepted
//!   under as the CloudEvents distributed-tracing attributes
//!   (`ce-traceparent`, `ce-tracestate`).
//! - **What leaves**: calls to other functions always carry the
//!   `outbound` span's context; requests to outside hosts only when the
//!   function opts in (`--trace-outbound`), since a trace id tells the
//!   receiver which request it came from.

use std::sync::Arc;
use std::time::SystemTime;

use gust_core::usage::Trigger;
use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::catalog::Loaded;

/// The `tracing` target of every span made for traces.
pub const TARGET: &str = "gust_trace";

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";
/// The most of a `tracestate` carried on (W3C asks to propagate at least this much).
pub const MAX_TRACESTATE: usize = 512;

/// Whether the data plane makes spans, and whom it believes.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceConfig {
    /// Spans are made (the binary exports them).
    pub enabled: bool,
    /// An HTTP request's `traceparent` is the parent of its span; false:
    /// every request from outside starts a new trace.
    pub trust_client: bool,
}

impl TraceConfig {
    /// Where the attempt of a request with `headers` starts (`None` when
    /// traces are off): under their trace context when it is `trusted`.
    pub(crate) fn start(&self, headers: &HeaderMap, trusted: bool, alias: &str) -> Option<Start> {
        self.enabled.then(|| Start {
            parent: if trusted {
                extract(headers)
            } else {
                Context::new()
            },
            alias: alias.to_string(),
            queued_since: None,
        })
    }

    /// Where an event's attempt starts: under the context it was accepted
    /// in; its first attempt shows its wait in the queue.
    pub(crate) fn start_event(
        &self,
        envelope: &gust_core::Envelope,
        attempt: u32,
    ) -> Option<Start> {
        self.enabled.then(|| Start {
            parent: extract_stored(
                envelope.traceparent.as_deref(),
                envelope.tracestate.as_deref(),
            ),
            alias: gust_core::deploy::LIVE.to_string(),
            queued_since: (attempt == 1).then(|| {
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(envelope.accepted_ms)
            }),
        })
    }

    /// The span of an event's acceptance (a request sent as an event),
    /// whose context the event keeps; disabled when traces are off.
    pub(crate) fn accepting(
        &self,
        headers: &HeaderMap,
        trusted: bool,
        loaded: &Loaded,
        id: &str,
    ) -> Span {
        if !self.enabled {
            return Span::none();
        }
        let span = tracing::info_span!(
            target: TARGET,
            parent: None,
            "accept event",
            otel.name = %format!("accept event {}", loaded.name),
            otel.kind = "producer",
            gust.tenant = loaded.tenant.as_str(),
            gust.function = loaded.name.as_str(),
            gust.invocation_id = id,
        );
        if trusted {
            let parent = extract(headers);
            if parent.span().span_context().is_valid() {
                let _ = span.set_parent(parent);
            }
        }
        span
    }
}

struct Extract<'a>(&'a HeaderMap);

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = self.0.get(key).and_then(|v| v.to_str().ok())?;
        (key != TRACESTATE || value.len() <= MAX_TRACESTATE).then_some(value)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct Inject<'a>(&'a mut HeaderMap);

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The trace context `headers` carry (an empty context when none is valid).
pub(crate) fn extract(headers: &HeaderMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&Extract(headers)))
}

/// The trace context an event carries in its envelope.
pub(crate) fn extract_stored(traceparent: Option<&str>, tracestate: Option<&str>) -> Context {
    let mut headers = HeaderMap::new();
    for (name, value) in [(TRACEPARENT, traceparent), (TRACESTATE, tracestate)] {
        if let Some(value) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(name, value);
        }
    }
    extract(&headers)
}

/// Writes `span`'s context as `traceparent`/`tracestate` into `headers`,
/// replacing what was there (a stale context is worse than none).
pub(crate) fn inject(span: &Span, headers: &mut HeaderMap) {
    headers.remove(TRACEPARENT);
    headers.remove(TRACESTATE);
    let cx = span.context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut Inject(headers)));
}

/// `span`'s context as stored with an event: (`traceparent`, `tracestate`).
pub(crate) fn stored(span: &Span) -> (Option<String>, Option<String>) {
    let mut headers = HeaderMap::new();
    inject(span, &mut headers);
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    (text(TRACEPARENT), text(TRACESTATE))
}

/// Where an attempt's span starts: its parent context and what the
/// caller knows that `run` does not.
pub(crate) struct Start {
    pub parent: Context,
    /// The alias the request asked for (`live` when it named none).
    pub alias: String,
    /// An event's attempt: since when it waited in its queue.
    pub queued_since: Option<SystemTime>,
}

/// The span of one attempt of `loaded`, under `start.parent` (a new trace
/// when that is empty), with its `queue wait` child when it was queued.
pub(crate) fn attempt(
    loaded: &Loaded,
    id: &str,
    attempt: u32,
    trigger: Trigger,
    start: Start,
) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        parent: None,
        "invoke",
        otel.name = %format!("invoke {}", loaded.name),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        gust.tenant = loaded.tenant.as_str(),
        gust.function = loaded.name.as_str(),
        gust.version = loaded.version,
        gust.alias = start.alias.as_str(),
        gust.invocation_id = id,
        gust.attempt = attempt,
        gust.trigger = trigger.as_str(),
        gust.outcome = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        gust.cold_start = tracing::field::Empty,
        gust.wall_us = tracing::field::Empty,
        gust.cpu_us = tracing::field::Empty,
        gust.peak_memory_bytes = tracing::field::Empty,
    );
    if start.parent.span().span_context().is_valid() {
        let _ = span.set_parent(start.parent);
    }
    if let Some(since) = start.queued_since {
        let cx = span.context();
        if cx.span().span_context().is_valid() {
            let tracer = opentelemetry::global::tracer("gust");
            let mut wait = tracer
                .span_builder("queue wait")
                .with_start_time(since)
                .start_with_context(&tracer, &cx);
            wait.end();
        }
    }
    span
}

/// Records the status an attempt answered (an error from 500 on).
pub(crate) fn answered(span: &Span, status: u16) {
    if span.is_disabled() {
        return;
    }
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
}

/// Records an attempt refused before it ran (no capacity, a quota).
pub(crate) fn refused(span: &Span, status: u16) {
    if span.is_disabled() {
        return;
    }
    span.record("gust.outcome", "refused");
    answered(span, status);
}

/// Records what the attempt's guest did, once its instance is gone.
pub(crate) fn finished(span: &Span, report: &gust_runtime::InvocationReport) {
    if span.is_disabled() {
        return;
    }
    span.record("gust.outcome", report.outcome.kind());
    span.record("gust.wall_us", report.duration.as_micros() as u64);
    span.record("gust.cpu_us", report.cpu.as_micros() as u64);
    span.record("gust.peak_memory_bytes", report.peak_memory_bytes);
    if !report.outcome.is_success() {
        span.record("otel.status_code", "ERROR");
    }
}

/// A child span of `parent` for a step of the host's (`admission`).
pub(crate) fn step(parent: &Span, name: &'static str) -> Span {
    if parent.is_disabled() {
        return Span::none();
    }
    tracing::info_span!(target: TARGET, parent: parent, "step", otel.name = name)
}

/// The attempt's span as the runtime sees it: the parent of each
/// outbound request's span.
pub(crate) struct GuestTrace {
    pub span: Span,
}

impl gust_runtime::Trace for GuestTrace {
    fn outbound(&self, method: &http::Method, host: &str, internal: bool) -> Span {
        tracing::info_span!(
            target: TARGET,
            parent: &self.span,
            "outbound",
            otel.name = %method,
            otel.kind = "client",
            http.request.method = %method,
            server.address = host,
            gust.internal = internal,
            http.response.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        )
    }

    fn headers(&self, span: &Span) -> HeaderMap {
        let mut headers = HeaderMap::new();
        inject(span, &mut headers);
        headers
    }
}

/// What the runtime gets for an attempt's span (`None` when it is off).
pub(crate) fn for_guest(span: &Span) -> Option<Arc<dyn gust_runtime::Trace>> {
    (!span.is_disabled())
        .then(|| Arc::new(GuestTrace { span: span.clone() }) as Arc<dyn gust_runtime::Trace>)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_context_reads_back_as_written_and_garbage_as_none() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let cx = extract_stored(Some(parent), Some("vendor=x"));
        let span = cx.span();
        let context = span.span_context();
        assert!(context.is_valid() && context.is_remote());
        assert_eq!(
            context.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(context.span_id().to_string(), "b7ad6b7169203331");
        assert_eq!(context.trace_state().header(), "vendor=x");
        for garbage in [
            "",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "zz-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "not a traceparent",
        ] {
            let cx = extract_stored(Some(garbage), None);
            assert!(!cx.span().span_context().is_valid(), "{garbage}");
        }
        assert!(!extract_stored(None, None).span().span_context().is_valid());
        // A tracestate past the cap is dropped; the traceparent stays.
        let entry = |key: &str| format!("{key}={}", "x".repeat(200));
        let long = [entry("a"), entry("b"), entry("c")].join(",");
        let cx = extract_stored(Some(parent), Some(&long));
        let span = cx.span();
        assert!(span.span_context().is_valid());
        assert_eq!(span.span_context().trace_state().header(), "");
        let fits = [entry("a"), entry("b")].join(",");
        assert!(long.len() > MAX_TRACESTATE && fits.len() <= MAX_TRACESTATE);
        let cx = extract_stored(Some(parent), Some(&fits));
        assert_eq!(cx.span().span_context().trace_state().header(), fits);
    }
}
