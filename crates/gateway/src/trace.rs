//! Traces: the spans the data plane makes for each invocation attempt and
//! what the host does around it, and the W3C trace context that ties
//! them to the spans of callers and callees.
//!
//! Spans are made with the OpenTelemetry API by the tracer the binary
//! installs ([`install`]: its SDK tracer, which exports over OTLP when
//! traces are on, `gust up --otlp-endpoint`), else by the global tracer.
//! W3C's `traceparent` is written here directly (as the SDK's propagator
//! writes it, without its `format!`s). Not through `tracing` and its
//! OpenTelemetry bridge: that cost 1.5 times the CPU per request
//! (bench/README.md, session 25).
//! With traces off ([`TraceConfig::enabled`] false) none of this runs: no
//! span, no header read or written. A span ends when the last [`Traced`]
//! holding it is dropped.
//!
//! - **One span per attempt** (`invoke`): tenant, function, version,
//!   alias, invocation id, attempt, trigger; when it ends, outcome,
//!   status, cold start, wall and CPU time. Children: `queue wait` (an
//!   event's attempt: its time in the queue since it was due, from its
//!   acceptance for a first attempt, from its retry's time after),
//!   `admission`,
//!   `kv <op>`, and one named by its method (`GET`) for each request the
//!   guest sends (refused ones make none).
//! - **Its parent**: an HTTP request's `traceparent`/`tracestate` when
//!   the node trusts clients' trace context
//!   ([`TraceConfig::trust_client`]), else a new trace; a call from
//!   another function: the caller's `outbound` span (always trusted: the
//!   host wrote it); an event: the context kept in its envelope (the
//!   span that accepted a request sent as an event; the caller's own for
//!   one sent through the control API, when trusted; else an `accept
//!   event` span made as it was queued, [`accept_event`]), so every
//!   attempt of an event is in one trace. A client's
//!   `tracestate` over [`MAX_TRACESTATE`] bytes is dropped (its
//!   `traceparent` kept): it would be copied into every span and stored
//!   with every event.
//! - **What the guest sees**: `traceparent` (and `tracestate`) of its
//!   own attempt span; an event also brings the context kept in its
//!   envelope as the CloudEvents distributed-tracing attributes
//!   (`ce-traceparent`, `ce-tracestate`).
//! - **What leaves**: calls to other functions always carry the
//!   `outbound` span's context; requests to outside hosts only when the
//!   function opts in (`--trace-outbound`), since a trace id tells the
//!   receiver which request it came from.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use gust_core::usage::Trigger;
use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::global::BoxedTracer;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{
    SpanBuilder, SpanContext, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceState,
    Tracer as _,
};
use opentelemetry::{Context, KeyValue, StringValue};

use crate::catalog::Loaded;

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";
/// The most of a `tracestate` carried on (W3C asks to propagate at least this much).
pub const MAX_TRACESTATE: usize = gust_core::MAX_TRACESTATE_BYTES;

/// The tracer every span is made with when the binary installed none
/// ([`install`]): the global provider's, which the binary sets before
/// traces are turned on.
fn tracer() -> &'static BoxedTracer {
    static TRACER: OnceLock<BoxedTracer> = OnceLock::new();
    TRACER.get_or_init(|| opentelemetry::global::tracer("gust"))
}

/// Starts a span from a builder under a parent context, returning the
/// context that holds it.
type Starter = dyn Fn(SpanBuilder, &Context) -> Context + Send + Sync;

static STARTER: OnceLock<Box<Starter>> = OnceLock::new();

/// Makes every span with `start` (the binary's own tracer, called
/// directly) rather than through the global tracer, which boxes each span
/// once more; the first call counts.
pub fn install(start: impl Fn(SpanBuilder, &Context) -> Context + Send + Sync + 'static) {
    let _ = STARTER.set(Box::new(start));
}

/// A span started from `builder` under `parent`, and the context holding it.
fn start_span(builder: SpanBuilder, parent: &Context) -> Context {
    match STARTER.get() {
        Some(start) => start(builder, parent),
        None => parent.with_span(tracer().build_with_context(builder, parent)),
    }
}

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
            alias: alias_value(alias),
            queued_since: None,
        })
    }

    /// Where an event's attempt starts: under the context it was accepted
    /// in, with its wait in the queue since it was due (`due_ms`: its
    /// acceptance for a first attempt, its retry's time for a retry).
    pub(crate) fn start_event(&self, envelope: &gust_core::Envelope, due_ms: u64) -> Option<Start> {
        self.enabled.then(|| Start {
            parent: extract_stored(
                envelope.traceparent.as_deref(),
                envelope.tracestate.as_deref(),
            ),
            alias: StringValue::from(gust_core::deploy::LIVE),
            queued_since: Some(
                std::time::UNIX_EPOCH
                    + std::time::Duration::from_millis(due_ms.max(envelope.accepted_ms)),
            ),
        })
    }

    /// The span of an event's acceptance (a request sent as an event),
    /// whose context the event keeps; off when traces are off.
    pub(crate) fn accepting(
        &self,
        headers: &HeaderMap,
        trusted: bool,
        loaded: &Loaded,
        id: &str,
    ) -> Traced {
        if !self.enabled {
            return Traced::OFF;
        }
        let parent = if trusted {
            extract(headers)
        } else {
            Context::new()
        };
        let builder = accept_builder(loaded.tenant.as_str(), loaded.name.as_str(), id, []);
        Traced::under(&parent, builder)
    }
}

/// The span of an event's acceptance, before its context is known.
fn accept_builder(
    tenant: &str,
    function: &str,
    id: &str,
    more: impl IntoIterator<Item = KeyValue>,
) -> SpanBuilder {
    let mut attributes = vec![
        KeyValue::new("gust.tenant", tenant.to_owned()),
        KeyValue::new("gust.function", function.to_owned()),
        KeyValue::new("gust.invocation_id", id.to_owned()),
    ];
    attributes.extend(more);
    SpanBuilder::from_name(format!("accept event {function}"))
        .with_kind(SpanKind::Producer)
        .with_attributes(attributes)
}

/// The span an event with no trace context is accepted in (a schedule's
/// tick, a KV change, a source's message; one sent to the API without a
/// believed context): a new trace, ended at once, whose context the event
/// keeps so that its attempts are one trace. For
/// [`gust_events::Events::with_accept_span`].
pub fn accept_event(envelope: &gust_core::Envelope) -> (Option<String>, Option<String>) {
    let builder = accept_builder(
        envelope.tenant.as_str(),
        envelope.function.as_str(),
        &envelope.invocation_id,
        [
            KeyValue::new("cloudevents.event_source", envelope.source.clone()),
            KeyValue::new("cloudevents.event_type", envelope.ty.clone()),
        ],
    );
    Traced::under(&Context::new(), builder).stored()
}

/// A span of the host's (an attempt, a step of it, an outbound request),
/// or nothing when traces are off. Clones share the span; it ends when
/// the last is dropped.
#[derive(Clone)]
pub(crate) struct Traced(Option<Context>);

impl Traced {
    /// No span: traces are off.
    pub(crate) const OFF: Traced = Traced(None);

    fn under(parent: &Context, builder: SpanBuilder) -> Traced {
        Traced(Some(start_span(builder, parent)))
    }

    /// Whether there is no span (traces are off).
    pub(crate) fn is_off(&self) -> bool {
        self.0.is_none()
    }

    /// Sets an attribute of the span.
    pub(crate) fn set(&self, attribute: KeyValue) {
        if let Some(cx) = &self.0 {
            cx.span().set_attribute(attribute);
        }
    }

    /// Marks the span as failed.
    pub(crate) fn error(&self) {
        if let Some(cx) = &self.0 {
            cx.span().set_status(Status::error(""));
        }
    }

    /// A child span named `name`, of kind `kind`, with `attributes`.
    pub(crate) fn child(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Traced {
        match &self.0 {
            None => Traced::OFF,
            Some(cx) => Traced::under(
                cx,
                SpanBuilder::from_name(name)
                    .with_kind(kind)
                    .with_attributes(attributes()),
            ),
        }
    }

    /// Writes the span's context as `traceparent`/`tracestate` into
    /// `headers`, replacing what was there (a stale context is worse than
    /// none); nothing when off.
    pub(crate) fn inject(&self, headers: &mut HeaderMap) {
        let Some(cx) = &self.0 else {
            return;
        };
        headers.remove(TRACEPARENT);
        headers.remove(TRACESTATE);
        let span = cx.span();
        let context = span.span_context();
        let Some(traceparent) = traceparent(context) else {
            return;
        };
        headers.insert(HeaderName::from_static(TRACEPARENT), traceparent);
        let state = context.trace_state();
        if *state != TraceState::NONE
            && let Ok(value) = HeaderValue::try_from(state.header())
            && !value.is_empty()
        {
            headers.insert(HeaderName::from_static(TRACESTATE), value);
        }
    }

    /// The span's context as stored with an event: (`traceparent`, `tracestate`).
    pub(crate) fn stored(&self) -> (Option<String>, Option<String>) {
        let mut headers = HeaderMap::new();
        self.inject(&mut headers);
        let text = |name| {
            headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        (text(TRACEPARENT), text(TRACESTATE))
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

/// The trace context `headers` carry (an empty context when none is valid).
/// Without a `traceparent` there is none, and the propagator (behind a
/// global lock) is not asked.
pub(crate) fn extract(headers: &HeaderMap) -> Context {
    if !headers.contains_key(TRACEPARENT) {
        return Context::new();
    }
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

/// A valid span context as W3C's `traceparent` (version 00: the trace and
/// span ids in lowercase hex, and the sampled flag), written as the SDK's
/// propagator writes it but without its `format!`s; `None` when invalid.
fn traceparent(context: &SpanContext) -> Option<HeaderValue> {
    fn hex(out: &mut [u8], bytes: &[u8]) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0xf)];
        }
    }
    if !context.is_valid() {
        return None;
    }
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex(&mut out[3..35], &context.trace_id().to_bytes());
    hex(&mut out[36..52], &context.span_id().to_bytes());
    hex(
        &mut out[53..55],
        &[(context.trace_flags() & TraceFlags::SAMPLED).to_u8()],
    );
    HeaderValue::from_bytes(&out).ok()
}

/// Where an attempt's span starts: its parent context and what the
/// caller knows that `run` does not.
pub(crate) struct Start {
    pub parent: Context,
    /// The alias the request asked for (`live` when it named none).
    pub alias: StringValue,
    /// An event's attempt: since when it waited in its queue.
    pub queued_since: Option<SystemTime>,
}

/// An alias as an attribute value: `live`, what most requests name, without
/// an allocation.
fn alias_value(alias: &str) -> StringValue {
    if alias == gust_core::deploy::LIVE {
        StringValue::from(gust_core::deploy::LIVE)
    } else {
        StringValue::from(alias.to_owned())
    }
}

/// The attributes an attempt span has once it ended: the 7 it starts with,
/// `gust.cold_start`, the 4 [`finished`] adds and its status (made room for
/// at once, so the span's list is not grown while it runs).
const ATTEMPT_ATTRIBUTES: usize = 13;

/// The span of one attempt of `loaded`, under `start.parent` (a new trace
/// when that is empty), with its `queue wait` child when it was queued.
pub(crate) fn attempt(
    loaded: &Loaded,
    id: &str,
    attempt: u32,
    trigger: Trigger,
    start: Start,
) -> Traced {
    let mut attributes = Vec::with_capacity(ATTEMPT_ATTRIBUTES);
    attributes.extend([
        KeyValue::new("gust.tenant", StringValue::from(loaded.tenant.shared())),
        KeyValue::new("gust.function", StringValue::from(loaded.name.shared())),
        KeyValue::new("gust.version", loaded.version as i64),
        KeyValue::new("gust.alias", start.alias),
        KeyValue::new("gust.invocation_id", id.to_owned()),
        KeyValue::new("gust.attempt", i64::from(attempt)),
        KeyValue::new("gust.trigger", trigger.as_str()),
    ]);
    let builder = SpanBuilder::from_name(format!("invoke {}", loaded.name))
        .with_kind(SpanKind::Server)
        .with_attributes(attributes);
    let span = Traced::under(&start.parent, builder);
    if let (Some(since), Some(cx)) = (start.queued_since, &span.0) {
        let queue_wait = SpanBuilder::from_name("queue wait").with_start_time(since);
        start_span(queue_wait, cx).span().end();
    }
    span
}

/// Records the status an attempt answered (an error from 500 on).
pub(crate) fn answered(span: &Traced, status: u16) {
    if span.is_off() {
        return;
    }
    span.set(KeyValue::new(
        "http.response.status_code",
        i64::from(status),
    ));
    if status >= 500 {
        span.error();
    }
}

/// Records an attempt refused before it ran (no capacity, a quota).
pub(crate) fn refused(span: &Traced, status: u16) {
    if span.is_off() {
        return;
    }
    span.set(KeyValue::new("gust.outcome", "refused"));
    answered(span, status);
}

/// Records what the attempt's guest did, once its instance is gone.
pub(crate) fn finished(span: &Traced, report: &gust_runtime::InvocationReport) {
    let Some(cx) = &span.0 else {
        return;
    };
    cx.span().set_attributes([
        KeyValue::new("gust.outcome", report.outcome.kind()),
        KeyValue::new("gust.wall_us", report.duration.as_micros() as i64),
        KeyValue::new("gust.cpu_us", report.cpu.as_micros() as i64),
        KeyValue::new("gust.peak_memory_bytes", report.peak_memory_bytes as i64),
    ]);
    if !report.outcome.is_success() {
        span.error();
    }
}

/// A child span of `parent` for a step of the host's (`admission`).
pub(crate) fn step(parent: &Traced, name: &'static str) -> Traced {
    parent.child(name, SpanKind::Internal, Vec::new)
}

/// The attempt's span as the runtime sees it: the parent of each
/// outbound request's span.
pub(crate) struct GuestTrace {
    pub span: Traced,
}

impl gust_runtime::Trace for GuestTrace {
    fn outbound(
        &self,
        method: &http::Method,
        host: &str,
        internal: bool,
    ) -> Box<dyn gust_runtime::OutboundSpan> {
        Box::new(self.span.child(method.to_string(), SpanKind::Client, || {
            vec![
                KeyValue::new("http.request.method", method.to_string()),
                KeyValue::new("server.address", host.to_owned()),
                KeyValue::new("gust.internal", internal),
            ]
        }))
    }
}

impl gust_runtime::OutboundSpan for Traced {
    fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        self.inject(&mut headers);
        headers
    }

    fn answered(&self, status: http::StatusCode) {
        answered(self, status.as_u16());
    }

    fn failed(&self) {
        self.error();
    }
}

/// What the runtime gets for an attempt's span (`None` when it is off).
pub(crate) fn for_guest(span: &Traced) -> Option<Arc<dyn gust_runtime::Trace>> {
    (!span.is_off())
        .then(|| Arc::new(GuestTrace { span: span.clone() }) as Arc<dyn gust_runtime::Trace>)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_context_is_written_as_the_w3c_propagator_writes_it() {
        use opentelemetry::propagation::TextMapPropagator as _;
        use opentelemetry::trace::{SpanId, TraceId};
        let propagator = opentelemetry_sdk::propagation::TraceContextPropagator::new();
        let states = [
            TraceState::NONE,
            TraceState::from_key_value([("vendor", "x"), ("other", "1")]).unwrap(),
        ];
        for (i, (trace, span)) in [
            (
                0x0af7651916cd43dd8448eb211c80319c_u128,
                0xb7ad6b7169203331_u64,
            ),
            (1, 1),
            (u128::MAX, u64::MAX),
            (
                0x00f0_0000_0000_0000_0000_0000_0000_0a0b,
                0x0000_0000_0000_00ff,
            ),
        ]
        .into_iter()
        .enumerate()
        {
            for flags in [
                TraceFlags::SAMPLED,
                TraceFlags::default(),
                TraceFlags::new(0xff),
            ] {
                let context = SpanContext::new(
                    TraceId::from(trace),
                    SpanId::from(span),
                    flags,
                    true,
                    states[i % 2].clone(),
                );
                let cx = Context::new().with_remote_span_context(context);
                let mut ours = HeaderMap::new();
                ours.insert(TRACEPARENT, HeaderValue::from_static("stale"));
                Traced(Some(cx.clone())).inject(&mut ours);
                let mut theirs = std::collections::HashMap::new();
                propagator.inject_context(&cx, &mut theirs);
                theirs.retain(|_, v: &mut String| !v.is_empty());
                let ours: std::collections::HashMap<String, String> = ours
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
                    .collect();
                assert_eq!(ours, theirs, "{trace:x} {span:x} {flags:?}");
            }
        }
        // An invalid context writes nothing, and removes a stale one.
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static("stale"));
        Traced(Some(Context::new())).inject(&mut headers);
        assert!(headers.is_empty());
    }

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
