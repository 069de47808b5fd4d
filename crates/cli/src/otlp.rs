//! Spans to an OTLP/HTTP collector as protobuf, encoded straight from the
//! SDK's [`SpanData`].
//!
//! `opentelemetry-otlp` first converts every span into `opentelemetry-proto`'s
//! message structs (a `String` for every attribute's key and value, a `Vec`
//! for every id) and then encodes those: in the traces-on profile of
//! `bench/tracing.sh` that conversion and its frees were most of the
//! exporter's cost. This encoder writes the same bytes from the spans as
//! they are: it computes each message's length first (protobuf puts a
//! message's length before it), then writes once into one buffer, with no
//! allocation per span but for a non-empty trace state. A unit test
//! decodes its output with `opentelemetry-proto` and compares it with the
//! library's conversion.
//!
//! The exporter around it does what the library's HTTP exporter does for
//! `http/protobuf` without compression: the endpoint, headers and timeout
//! from the standard variables (resolved in [`Config::from_env`]), retries
//! with exponential backoff and jitter on 429, 502, 503, 504 and transport
//! errors (honouring `Retry-After` in seconds), within the timeout.
//! Other protocols and compression go through `opentelemetry-otlp`
//! (`crate::telemetry`).

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanId, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// Protobuf's wire types used here.
const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const FIXED32: u64 = 5;

/// OTLP's span flags: the parent's "is remote" is known, and is true.
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u64, wire: u64) {
    put_varint(out, (field << 3) | wire);
}

fn key_len(field: u64) -> usize {
    varint_len(field << 3)
}

/// A length-delimited field of `len` bytes, with its key and length.
fn delimited_len(field: u64, len: usize) -> usize {
    key_len(field) + varint_len(len as u64) + len
}

fn put_delimited_head(out: &mut Vec<u8>, field: u64, len: usize) {
    put_key(out, field, LEN);
    put_varint(out, len as u64);
}

/// A string or bytes field, left out when empty (proto3's default).
fn opt_bytes_len(field: u64, bytes: &[u8]) -> usize {
    if bytes.is_empty() {
        0
    } else {
        delimited_len(field, bytes.len())
    }
}

fn put_opt_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    if !bytes.is_empty() {
        put_delimited_head(out, field, bytes.len());
        out.extend_from_slice(bytes);
    }
}

/// A varint field, left out when zero.
fn opt_varint_len(field: u64, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(field) + varint_len(v)
    }
}

fn put_opt_varint(out: &mut Vec<u8>, field: u64, v: u64) {
    if v != 0 {
        put_key(out, field, VARINT);
        put_varint(out, v);
    }
}

fn opt_fixed64_len(field: u64, v: u64) -> usize {
    if v == 0 { 0 } else { key_len(field) + 8 }
}

fn put_opt_fixed64(out: &mut Vec<u8>, field: u64, v: u64) {
    if v != 0 {
        put_key(out, field, FIXED64);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn opt_fixed32_len(field: u64, v: u32) -> usize {
    if v == 0 { 0 } else { key_len(field) + 4 }
}

fn put_opt_fixed32(out: &mut Vec<u8>, field: u64, v: u32) {
    if v != 0 {
        put_key(out, field, FIXED32);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// `AnyValue`'s body. Its one field is written even when it holds the
/// default (a oneof that is set is always on the wire).
fn any_value_len(value: &Value) -> usize {
    match value {
        Value::Bool(b) => key_len(2) + varint_len(u64::from(*b)),
        Value::I64(i) => key_len(3) + varint_len(*i as u64),
        Value::F64(_) => key_len(4) + 8,
        Value::String(s) => delimited_len(1, s.as_str().len()),
        Value::Array(array) => delimited_len(5, array_len(array)),
        // A kind of value this encoder does not know: an empty `AnyValue`.
        _ => 0,
    }
}

fn put_any_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(b) => {
            put_key(out, 2, VARINT);
            put_varint(out, u64::from(*b));
        }
        Value::I64(i) => {
            put_key(out, 3, VARINT);
            put_varint(out, *i as u64);
        }
        Value::F64(f) => {
            put_key(out, 4, FIXED64);
            out.extend_from_slice(&f.to_le_bytes());
        }
        Value::String(s) => {
            put_delimited_head(out, 1, s.as_str().len());
            out.extend_from_slice(s.as_str().as_bytes());
        }
        Value::Array(array) => {
            put_delimited_head(out, 5, array_len(array));
            put_array(out, array);
        }
        _ => {}
    }
}

/// `ArrayValue`'s body: each element an `AnyValue` (field 1).
fn array_len(array: &Array) -> usize {
    fn each<T>(items: &[T], len: impl Fn(&T) -> usize) -> usize {
        items.iter().map(|v| delimited_len(1, len(v))).sum()
    }
    match array {
        Array::Bool(v) => each(v, |b| any_value_len(&Value::Bool(*b))),
        Array::I64(v) => each(v, |i| any_value_len(&Value::I64(*i))),
        Array::F64(v) => each(v, |f| any_value_len(&Value::F64(*f))),
        Array::String(v) => each(v, |s: &StringValue| delimited_len(1, s.as_str().len())),
        _ => 0,
    }
}

fn put_array(out: &mut Vec<u8>, array: &Array) {
    fn each<T>(out: &mut Vec<u8>, items: &[T], value: impl Fn(&T) -> Value) {
        for item in items {
            let value = value(item);
            put_delimited_head(out, 1, any_value_len(&value));
            put_any_value(out, &value);
        }
    }
    match array {
        Array::Bool(v) => each(out, v, |b| Value::Bool(*b)),
        Array::I64(v) => each(out, v, |i| Value::I64(*i)),
        Array::F64(v) => each(out, v, |f| Value::F64(*f)),
        Array::String(v) => {
            for s in v {
                let s = s.as_str();
                put_delimited_head(out, 1, delimited_len(1, s.len()));
                put_delimited_head(out, 1, s.len());
                out.extend_from_slice(s.as_bytes());
            }
        }
        _ => {}
    }
}

/// `KeyValue`'s body: the key, then the value (always present).
fn key_value_len(key: &str, value: &Value) -> usize {
    opt_bytes_len(1, key.as_bytes()) + delimited_len(2, any_value_len(value))
}

fn put_key_value(out: &mut Vec<u8>, key: &str, value: &Value) {
    put_opt_bytes(out, 1, key.as_bytes());
    put_delimited_head(out, 2, any_value_len(value));
    put_any_value(out, value);
}

/// Repeated `KeyValue`s as field `field`.
fn attributes_len(field: u64, attributes: &[KeyValue]) -> usize {
    attributes
        .iter()
        .map(|kv| delimited_len(field, key_value_len(kv.key.as_str(), &kv.value)))
        .sum()
}

fn put_attributes(out: &mut Vec<u8>, field: u64, attributes: &[KeyValue]) {
    for kv in attributes {
        put_delimited_head(out, field, key_value_len(kv.key.as_str(), &kv.value));
        put_key_value(out, kv.key.as_str(), &kv.value);
    }
}

fn kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn flags(trace_flags: u8, remote: bool) -> u32 {
    u32::from(trace_flags) | HAS_IS_REMOTE | if remote { IS_REMOTE } else { 0 }
}

/// `Status`'s body: the message (errors only), then the code.
fn status_len(status: &Status) -> usize {
    match status {
        Status::Unset => 0,
        Status::Ok => opt_varint_len(3, 1),
        Status::Error { description } => {
            opt_bytes_len(2, description.as_bytes()) + opt_varint_len(3, 2)
        }
    }
}

fn put_status(out: &mut Vec<u8>, status: &Status) {
    match status {
        Status::Unset => {}
        Status::Ok => put_opt_varint(out, 3, 1),
        Status::Error { description } => {
            put_opt_bytes(out, 2, description.as_bytes());
            put_opt_varint(out, 3, 2);
        }
    }
}

/// A span's `trace_state` header, made once for its length and its bytes.
fn trace_state(span: &SpanData) -> Cow<'static, str> {
    let state = span.span_context.trace_state();
    if *state == opentelemetry::trace::TraceState::NONE {
        Cow::Borrowed("")
    } else {
        Cow::Owned(state.header())
    }
}

fn parent_id(span: &SpanData) -> Option<[u8; 8]> {
    (span.parent_span_id != SpanId::INVALID).then(|| span.parent_span_id.to_bytes())
}

/// `Span`'s body.
fn span_len(span: &SpanData, state: &str) -> usize {
    let mut n = delimited_len(1, 16) + delimited_len(2, 8) + opt_bytes_len(3, state.as_bytes());
    if parent_id(span).is_some() {
        n += delimited_len(4, 8);
    }
    n += opt_bytes_len(5, span.name.as_bytes())
        + opt_varint_len(6, kind(&span.span_kind))
        + opt_fixed64_len(7, nanos(span.start_time))
        + opt_fixed64_len(8, nanos(span.end_time))
        + attributes_len(9, &span.attributes)
        + opt_varint_len(10, u64::from(span.dropped_attributes_count));
    for event in span.events.events.iter() {
        n += delimited_len(11, event_len(event));
    }
    n += opt_varint_len(12, u64::from(span.events.dropped_count));
    for link in span.links.links.iter() {
        n += delimited_len(13, link_len(link, &link_state(link)));
    }
    n += opt_varint_len(14, u64::from(span.links.dropped_count))
        + delimited_len(15, status_len(&span.status))
        + opt_fixed32_len(
            16,
            flags(
                span.span_context.trace_flags().to_u8(),
                span.parent_span_is_remote,
            ),
        );
    n
}

fn put_span(out: &mut Vec<u8>, span: &SpanData, state: &str) {
    put_delimited_head(out, 1, 16);
    out.extend_from_slice(&span.span_context.trace_id().to_bytes());
    put_delimited_head(out, 2, 8);
    out.extend_from_slice(&span.span_context.span_id().to_bytes());
    put_opt_bytes(out, 3, state.as_bytes());
    if let Some(parent) = parent_id(span) {
        put_delimited_head(out, 4, 8);
        out.extend_from_slice(&parent);
    }
    put_opt_bytes(out, 5, span.name.as_bytes());
    put_opt_varint(out, 6, kind(&span.span_kind));
    put_opt_fixed64(out, 7, nanos(span.start_time));
    put_opt_fixed64(out, 8, nanos(span.end_time));
    put_attributes(out, 9, &span.attributes);
    put_opt_varint(out, 10, u64::from(span.dropped_attributes_count));
    for event in span.events.events.iter() {
        put_delimited_head(out, 11, event_len(event));
        put_opt_fixed64(out, 1, nanos(event.timestamp));
        put_opt_bytes(out, 2, event.name.as_bytes());
        put_attributes(out, 3, &event.attributes);
        put_opt_varint(out, 4, u64::from(event.dropped_attributes_count));
    }
    put_opt_varint(out, 12, u64::from(span.events.dropped_count));
    for link in span.links.links.iter() {
        let state = link_state(link);
        put_delimited_head(out, 13, link_len(link, &state));
        put_delimited_head(out, 1, 16);
        out.extend_from_slice(&link.span_context.trace_id().to_bytes());
        put_delimited_head(out, 2, 8);
        out.extend_from_slice(&link.span_context.span_id().to_bytes());
        put_opt_bytes(out, 3, state.as_bytes());
        put_attributes(out, 4, &link.attributes);
        put_opt_varint(out, 5, u64::from(link.dropped_attributes_count));
        put_opt_fixed32(
            out,
            6,
            flags(
                link.span_context.trace_flags().to_u8(),
                link.span_context.is_remote(),
            ),
        );
    }
    put_opt_varint(out, 14, u64::from(span.links.dropped_count));
    put_delimited_head(out, 15, status_len(&span.status));
    put_status(out, &span.status);
    put_opt_fixed32(
        out,
        16,
        flags(
            span.span_context.trace_flags().to_u8(),
            span.parent_span_is_remote,
        ),
    );
}

fn event_len(event: &opentelemetry::trace::Event) -> usize {
    opt_fixed64_len(1, nanos(event.timestamp))
        + opt_bytes_len(2, event.name.as_bytes())
        + attributes_len(3, &event.attributes)
        + opt_varint_len(4, u64::from(event.dropped_attributes_count))
}

fn link_state(link: &opentelemetry::trace::Link) -> String {
    link.span_context.trace_state().header()
}

fn link_len(link: &opentelemetry::trace::Link, state: &str) -> usize {
    delimited_len(1, 16)
        + delimited_len(2, 8)
        + opt_bytes_len(3, state.as_bytes())
        + attributes_len(4, &link.attributes)
        + opt_varint_len(5, u64::from(link.dropped_attributes_count))
        + opt_fixed32_len(
            6,
            flags(
                link.span_context.trace_flags().to_u8(),
                link.span_context.is_remote(),
            ),
        )
}

/// `InstrumentationScope`'s body.
fn scope_len(scope: &InstrumentationScope) -> usize {
    opt_bytes_len(1, scope.name().as_bytes())
        + opt_bytes_len(2, scope.version().unwrap_or_default().as_bytes())
        + scope
            .attributes()
            .map(|kv| delimited_len(3, key_value_len(kv.key.as_str(), &kv.value)))
            .sum::<usize>()
}

fn put_scope(out: &mut Vec<u8>, scope: &InstrumentationScope) {
    put_opt_bytes(out, 1, scope.name().as_bytes());
    put_opt_bytes(out, 2, scope.version().unwrap_or_default().as_bytes());
    for kv in scope.attributes() {
        put_delimited_head(out, 3, key_value_len(kv.key.as_str(), &kv.value));
        put_key_value(out, kv.key.as_str(), &kv.value);
    }
}

/// The resource, encoded once: the `Resource` message's body and the
/// schema URL of the `ResourceSpans` around it.
#[derive(Debug, Clone, Default)]
pub(crate) struct EncodedResource {
    body: Vec<u8>,
    schema_url: String,
}

impl EncodedResource {
    pub(crate) fn new(resource: &Resource) -> Self {
        let mut body = Vec::new();
        for (key, value) in resource.iter() {
            put_delimited_head(&mut body, 1, key_value_len(key.as_str(), value));
            put_key_value(&mut body, key.as_str(), value);
        }
        EncodedResource {
            body,
            schema_url: resource.schema_url().unwrap_or_default().to_owned(),
        }
    }
}

/// `spans` as an OTLP `ExportTraceServiceRequest`: one `ResourceSpans`,
/// with one `ScopeSpans` per instrumentation scope in the order scopes
/// first appear, each with its spans in their order.
pub(crate) fn encode(spans: &[SpanData], resource: &EncodedResource) -> Vec<u8> {
    // Scopes are few (one per tracer): a list searched from its start.
    let mut scopes: Vec<(&InstrumentationScope, Vec<usize>)> = Vec::new();
    for (i, span) in spans.iter().enumerate() {
        let scope = &span.instrumentation_scope;
        match scopes.iter_mut().find(|(s, _)| *s == scope) {
            Some((_, members)) => members.push(i),
            None => scopes.push((scope, vec![i])),
        }
    }
    let states: Vec<Cow<'static, str>> = spans.iter().map(trace_state).collect();
    let lens: Vec<usize> = spans
        .iter()
        .zip(&states)
        .map(|(span, state)| span_len(span, state))
        .collect();
    let scope_spans_lens: Vec<usize> = scopes
        .iter()
        .map(|(scope, members)| {
            delimited_len(1, scope_len(scope))
                + members
                    .iter()
                    .map(|&i| delimited_len(2, lens[i]))
                    .sum::<usize>()
                + opt_bytes_len(3, scope.schema_url().unwrap_or_default().as_bytes())
        })
        .collect();
    let resource_spans_len = delimited_len(1, resource.body.len())
        + scope_spans_lens
            .iter()
            .map(|&n| delimited_len(2, n))
            .sum::<usize>()
        + opt_bytes_len(3, resource.schema_url.as_bytes());

    let mut out = Vec::with_capacity(delimited_len(1, resource_spans_len));
    put_delimited_head(&mut out, 1, resource_spans_len);
    put_delimited_head(&mut out, 1, resource.body.len());
    out.extend_from_slice(&resource.body);
    for ((scope, members), &len) in scopes.iter().zip(&scope_spans_lens) {
        put_delimited_head(&mut out, 2, len);
        put_delimited_head(&mut out, 1, scope_len(scope));
        put_scope(&mut out, scope);
        for &i in members {
            put_delimited_head(&mut out, 2, lens[i]);
            put_span(&mut out, &spans[i], &states[i]);
        }
        put_opt_bytes(
            &mut out,
            3,
            scope.schema_url().unwrap_or_default().as_bytes(),
        );
    }
    put_opt_bytes(&mut out, 3, resource.schema_url.as_bytes());
    out
}

/// Where and how spans are posted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Config {
    pub(crate) endpoint: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) timeout: Duration,
}

/// The signal-specific variable if set, else the general one.
fn var(get: &impl Fn(&str) -> Option<String>, traces: &str, general: &str) -> Option<String> {
    get(traces)
        .or_else(|| get(general))
        .filter(|v| !v.trim().is_empty())
}

impl Config {
    /// The exporter's settings from the standard variables (read through
    /// `get`), with `endpoint` (the flag's, already ending in
    /// `/v1/traces`) first. `None` when this exporter does not do what
    /// they ask (a protocol other than `http/protobuf`, compression):
    /// `opentelemetry-otlp` exports then.
    pub(crate) fn from_env(
        endpoint: Option<&str>,
        get: impl Fn(&str) -> Option<String>,
    ) -> Option<Config> {
        let protocol = var(
            &get,
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        );
        if protocol.is_some_and(|p| p.trim() != "http/protobuf") {
            return None;
        }
        let compression = var(
            &get,
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        );
        if compression.is_some_and(|c| !c.trim().eq_ignore_ascii_case("none")) {
            return None;
        }
        let endpoint = match endpoint {
            Some(e) => e.to_owned(),
            None => {
                match get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").filter(|v| !v.trim().is_empty()) {
                    Some(e) => e.trim().to_owned(),
                    None => {
                        let base = get("OTEL_EXPORTER_OTLP_ENDPOINT")?;
                        format!("{}/v1/traces", base.trim().trim_end_matches('/'))
                    }
                }
            }
        };
        let mut headers: Vec<(String, String)> = Vec::new();
        for name in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ] {
            for (key, value) in get(name).as_deref().map(parse_headers).unwrap_or_default() {
                headers.retain(|(k, _)| !k.eq_ignore_ascii_case(&key));
                headers.push((key, value));
            }
        }
        let timeout = var(
            &get,
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        )
        .and_then(|ms| ms.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis);
        Some(Config {
            endpoint,
            headers,
            timeout,
        })
    }
}

/// `key=value,key2=value2`, values percent-decoded (kept as written when
/// that is not UTF-8); pairs without a key or a value are skipped.
fn parse_headers(list: &str) -> Vec<(String, String)> {
    list.split(',')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            let (key, value) = (key.trim(), value.trim());
            (!key.is_empty() && !value.is_empty()).then(|| {
                (
                    key.to_owned(),
                    percent_encoding::percent_decode_str(value)
                        .decode_utf8()
                        .map_or_else(|_| value.to_owned(), |v| v.into_owned()),
                )
            })
        })
        .collect()
}

/// Retries after the first try, and their delays (doubling from the
/// first, at most the last, plus up to `JITTER_MS`): OTLP's recommended
/// policy, as `opentelemetry-otlp` has it.
const RETRIES: u32 = 3;
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_millis(1600);
const JITTER_MS: u64 = 100;

/// Whether an answer's status is worth another try (OTLP/HTTP's list).
fn retryable(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// The delay before retry `n` (0 for the first), with `jitter_ms` added.
fn backoff(n: u32, jitter_ms: u64) -> Duration {
    let delay = FIRST_DELAY.saturating_mul(1 << n.min(16)).min(MAX_DELAY);
    delay + Duration::from_millis(jitter_ms % (JITTER_MS + 1))
}

/// The OTLP/HTTP protobuf span exporter.
#[derive(Debug)]
pub(crate) struct ProtoExporter {
    client: reqwest::Client,
    config: Config,
    resource: EncodedResource,
    shut: AtomicBool,
}

impl ProtoExporter {
    pub(crate) fn new(config: Config) -> anyhow::Result<ProtoExporter> {
        use anyhow::Context as _;
        let url = reqwest::Url::parse(&config.endpoint).with_context(|| {
            format!(
                "the OTLP endpoint {:?} is not a URL (give one like http://collector:4318)",
                config.endpoint
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            anyhow::bail!(
                "the OTLP endpoint {:?} is not http or https: Gust exports traces over OTLP/HTTP",
                config.endpoint
            );
        }
        let mut headers = reqwest::header::HeaderMap::new();
        for (key, value) in &config.headers {
            let name = reqwest::header::HeaderName::from_bytes(key.as_bytes())
                .with_context(|| format!("the OTLP header name {key:?} is not valid"))?;
            let value = reqwest::header::HeaderValue::from_str(value)
                .with_context(|| format!("the value of the OTLP header {key:?} is not valid"))?;
            headers.insert(name, value);
        }
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            reqwest::header::HeaderValue::from_static("application/x-protobuf"),
        );
        // reqwest's TLS needs a process-wide crypto provider (`main` installs
        // it first; this makes the exporter not depend on that order).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .context("cannot make the OTLP exporter's HTTP client")?;
        Ok(ProtoExporter {
            client,
            config,
            resource: EncodedResource::default(),
            shut: AtomicBool::new(false),
        })
    }

    /// One try, given at most `time`: `Ok` on 2xx; else the error and,
    /// when another try may succeed, the delay the collector asked for (if
    /// it did).
    async fn post(
        &self,
        body: bytes::Bytes,
        time: Duration,
    ) -> Result<(), (String, Option<Option<Duration>>)> {
        let answer = self
            .client
            .post(&self.config.endpoint)
            .timeout(time)
            .body(body)
            .send()
            .await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => return Err((format!("cannot reach the collector: {e}"), Some(None))),
        };
        let status = answer.status();
        if status.is_success() {
            return Ok(());
        }
        let asked = answer
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = answer.text().await.unwrap_or_default();
        let text: String = text.chars().take(200).collect();
        let error = format!("the collector answered {status}: {text}");
        Err((error, retryable(status.as_u16()).then_some(asked)))
    }
}

impl SpanExporter for ProtoExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if self.shut.load(Ordering::Relaxed) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        let body = bytes::Bytes::from(encode(&batch, &self.resource));
        drop(batch);
        let deadline = Instant::now() + self.config.timeout;
        let mut n = 0;
        loop {
            let (error, again) = match self
                .post(
                    body.clone(),
                    deadline.saturating_duration_since(Instant::now()),
                )
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let Some(asked) = again.filter(|_| n < RETRIES) else {
                return Err(OTelSdkError::InternalFailure(error));
            };
            let jitter = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::from(d.subsec_nanos()));
            let delay = asked.unwrap_or_else(|| backoff(n, jitter));
            if Instant::now() + delay >= deadline {
                return Err(OTelSdkError::InternalFailure(error));
            }
            tokio::time::sleep(delay).await;
            n += 1;
        }
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.shut.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = EncodedResource::new(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Event, Link, SpanContext, TraceFlags, TraceId, TraceState};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message as _;

    fn span(n: u64, scope: &InstrumentationScope) -> SpanData {
        let mut events = SpanEvents::default();
        let mut links = SpanLinks::default();
        if n.is_multiple_of(3) {
            events.events.push(Event::new(
                "retry",
                UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_123 + n),
                vec![KeyValue::new("attempt", n as i64)],
                1,
            ));
            events.dropped_count = 2;
            links.links.push(Link::new(
                SpanContext::new(
                    TraceId::from(0xfeed + u128::from(n)),
                    SpanId::from(0xbeef),
                    TraceFlags::SAMPLED,
                    true,
                    TraceState::from_key_value([("vendor", "x1")]).unwrap(),
                ),
                vec![KeyValue::new("link.kind", "follows")],
                0,
            ));
        }
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(0x0123_4567_89ab_cdef_u128 << 64 | u128::from(n)),
                SpanId::from(n + 1),
                if n.is_multiple_of(2) {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                },
                false,
                if n % 4 == 1 {
                    TraceState::from_key_value([("gust", "t"), ("other", "v")]).unwrap()
                } else {
                    TraceState::NONE
                },
            ),
            parent_span_id: if n.is_multiple_of(2) {
                SpanId::from(99)
            } else {
                SpanId::INVALID
            },
            parent_span_is_remote: n.is_multiple_of(5),
            span_kind: [
                SpanKind::Server,
                SpanKind::Internal,
                SpanKind::Client,
                SpanKind::Producer,
                SpanKind::Consumer,
            ][n as usize % 5]
                .clone(),
            name: if n.is_multiple_of(2) {
                "invoke hello".into()
            } else {
                format!("op {n}").into()
            },
            start_time: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_000 + n),
            end_time: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_050_000 + n),
            attributes: vec![
                KeyValue::new("gust.tenant", "acme"),
                KeyValue::new("gust.version", n as i64),
                KeyValue::new("gust.negative", -(n as i64) - 1),
                KeyValue::new("gust.zero", 0_i64),
                KeyValue::new("gust.empty", ""),
                KeyValue::new("gust.cold", n.is_multiple_of(2)),
                KeyValue::new("gust.ratio", 0.25 * n as f64),
                KeyValue::new(
                    "gust.list",
                    Value::Array(Array::String(vec!["a".into(), "".into()])),
                ),
                KeyValue::new("gust.ints", Value::Array(Array::I64(vec![1, -2, 0]))),
                KeyValue::new("gust.flags", Value::Array(Array::Bool(vec![true, false]))),
                KeyValue::new("gust.floats", Value::Array(Array::F64(vec![1.5, 0.0]))),
                KeyValue::new("x".repeat(200), "y".repeat(300)),
            ],
            dropped_attributes_count: (n % 2) as u32,
            events,
            links,
            status: match n % 3 {
                0 => Status::Unset,
                1 => Status::Ok,
                _ => Status::error(format!("failed {n}")),
            },
            instrumentation_scope: scope.clone(),
        }
    }

    /// What `opentelemetry-proto` makes of the same spans, encoded.
    fn reference(spans: Vec<SpanData>, resource: &Resource) -> ExportTraceServiceRequest {
        let resource = ResourceAttributesWithSchema::from(resource);
        ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(spans, &resource),
        }
    }

    fn check(spans: Vec<SpanData>, resource: Resource) {
        let ours = encode(&spans, &EncodedResource::new(&resource));
        let decoded = ExportTraceServiceRequest::decode(ours.as_slice()).unwrap();
        let expected = reference(spans, &resource);
        assert_eq!(decoded, expected);
        // Byte for byte too: fields in the order of their numbers, like prost.
        assert_eq!(ours, expected.encode_to_vec());
    }

    #[test]
    fn spans_encode_as_the_library_converts_them() {
        let scope = InstrumentationScope::builder("gust")
            .with_version("0.1.0")
            .with_schema_url("https://opentelemetry.io/schemas/1.2.0")
            .with_attributes([KeyValue::new("scope.attr", 7_i64)])
            .build();
        let other = InstrumentationScope::builder("other").build();
        let mut spans: Vec<SpanData> = (0..40).map(|n| span(n, &scope)).collect();
        spans.insert(3, span(100, &other));
        spans.push(span(101, &other));
        let resource = Resource::builder_empty()
            .with_service_name("gust")
            .with_attribute(KeyValue::new("service.instance.id", "node-a"))
            .with_schema_url(
                [KeyValue::new("deployment", "test")],
                "https://example.com/s",
            )
            .build();
        check(spans, resource);
    }

    #[test]
    fn an_empty_batch_and_an_empty_resource_encode_as_the_library_does() {
        check(Vec::new(), Resource::builder_empty().build());
        let scope = InstrumentationScope::builder("").build();
        check(vec![span(7, &scope)], Resource::builder_empty().build());
    }

    #[test]
    fn varint_lengths_match_their_encoding() {
        for v in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn the_config_follows_the_standard_variables() {
        let c = Config::from_env(
            None,
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]),
        )
        .unwrap();
        assert_eq!(c.endpoint, "http://c:4318/v1/traces");
        assert_eq!(c.timeout, Duration::from_secs(10));
        let c = Config::from_env(
            None,
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:9/custom"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "a=1, b = two%20words ,=x,c="),
                ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "A=3"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
            ]),
        )
        .unwrap();
        assert_eq!(c.endpoint, "http://t:9/custom");
        assert_eq!(
            c.headers,
            [
                ("b".to_string(), "two words".to_string()),
                ("A".to_string(), "3".to_string())
            ]
        );
        assert_eq!(c.timeout, Duration::from_millis(2500));
        // The flag's endpoint comes first.
        let c = Config::from_env(
            Some("http://flag:1/v1/traces"),
            env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:9/custom")]),
        )
        .unwrap();
        assert_eq!(c.endpoint, "http://flag:1/v1/traces");
        // What this exporter does not do goes to the library's.
        for (k, v) in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ] {
            assert_eq!(
                Config::from_env(Some("http://x/v1/traces"), env(&[(k, v)])),
                None
            );
        }
        assert_eq!(Config::from_env(None, env(&[])), None);
    }

    /// A collector that answers each export with the next of `statuses`
    /// (then 200), counting the exports; returns its `/v1/traces` URL.
    async fn collector(
        statuses: Vec<u16>,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = seen.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                let status = statuses.get(n).copied().unwrap_or(200);
                async move {
                    assert!(ExportTraceServiceRequest::decode(body).is_ok());
                    (
                        axum::http::StatusCode::from_u16(status).unwrap(),
                        [("retry-after", "0")],
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, seen)
    }

    fn exporter(url: String, timeout: Duration) -> ProtoExporter {
        ProtoExporter::new(Config {
            endpoint: url,
            headers: Vec::new(),
            timeout,
        })
        .unwrap()
    }

    async fn export_to(url: String) -> OTelSdkResult {
        let scope = InstrumentationScope::builder("gust").build();
        exporter(url, Duration::from_secs(5))
            .export(vec![span(1, &scope)])
            .await
    }

    #[test]
    fn an_endpoint_or_header_that_cannot_be_used_is_refused_at_start() {
        let config = |endpoint: &str, headers: &[(&str, &str)]| Config {
            endpoint: endpoint.to_owned(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            timeout: Duration::from_secs(1),
        };
        for (endpoint, headers, says) in [
            ("collector:4318", &[][..], "not http or https"),
            ("no url at all", &[][..], "not a URL"),
            ("ftp://c/v1/traces", &[][..], "not http or https"),
            (
                "http://c/v1/traces",
                &[("bad name", "x")][..],
                "header name",
            ),
            (
                "http://c/v1/traces",
                &[("x-key", "a\nb")][..],
                "value of the OTLP header",
            ),
        ] {
            let e = ProtoExporter::new(config(endpoint, headers)).unwrap_err();
            assert!(format!("{e:#}").contains(says), "{endpoint}: {e:#}");
        }
        assert!(ProtoExporter::new(config("https://c:4318/v1/traces", &[("x-key", "v")])).is_ok());
    }

    #[tokio::test]
    async fn a_collector_that_cannot_be_reached_or_does_not_answer_fails_the_export_in_time() {
        // Nothing listens: tried again, then reported.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/traces", closed.local_addr().unwrap());
        drop(closed);
        let e = export_to(url).await.unwrap_err();
        assert!(e.to_string().contains("cannot reach the collector"), "{e}");

        // A collector that never answers: the export ends at its timeout.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let scope = InstrumentationScope::builder("gust").build();
        let started = Instant::now();
        let result = exporter(url, Duration::from_millis(500))
            .export(vec![span(1, &scope)])
            .await;
        assert!(result.is_err());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn an_exporter_shut_down_exports_nothing() {
        let (url, seen) = collector(Vec::new()).await;
        let exporter = exporter(url, Duration::from_secs(5));
        exporter.shutdown().unwrap();
        let scope = InstrumentationScope::builder("gust").build();
        assert!(matches!(
            exporter.export(vec![span(1, &scope)]).await,
            Err(OTelSdkError::AlreadyShutdown)
        ));
        assert_eq!(seen.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn an_export_is_tried_again_while_the_collector_is_unavailable() {
        let (url, seen) = collector(vec![503, 429, 502]).await;
        export_to(url).await.unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 4);

        // A refusal that another try cannot fix is not tried again.
        let (url, seen) = collector(vec![400]).await;
        let e = export_to(url).await.unwrap_err();
        assert!(e.to_string().contains("400"), "{e}");
        assert_eq!(seen.load(Ordering::SeqCst), 1);

        // Nor past the retries: three after the first.
        let (url, seen) = collector(vec![503; 10]).await;
        assert!(export_to(url).await.is_err());
        assert_eq!(seen.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn retries_back_off_within_the_recommended_bounds() {
        assert_eq!(backoff(0, 0), Duration::from_millis(100));
        assert_eq!(backoff(1, 0), Duration::from_millis(200));
        assert_eq!(backoff(4, 0), Duration::from_millis(1600));
        assert_eq!(backoff(30, 0), Duration::from_millis(1600));
        assert!(backoff(0, 12_345) <= Duration::from_millis(200));
        assert!([429, 502, 503, 504].into_iter().all(retryable));
        assert!(![400, 401, 404, 413, 500].into_iter().any(retryable));
    }
}
