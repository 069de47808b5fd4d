//! The one envelope every event travels in: a CloudEvents 1.0 event plus
//! what delivery needs (target function, invocation id, acceptance time).
//! Functions receive it through the CloudEvents HTTP binding, binary mode.

use serde::{Deserialize, Serialize};

use crate::{FunctionName, TenantId};

/// An accepted event on its way to a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub tenant: TenantId,
    pub function: FunctionName,
    /// Same for every attempt, so a function can deduplicate.
    pub invocation_id: String,
    /// CloudEvents `id`.
    pub id: String,
    /// CloudEvents `source`.
    pub source: String,
    /// CloudEvents `type`.
    #[serde(rename = "type")]
    pub ty: String,
    /// CloudEvents `subject`.
    pub subject: Option<String>,
    /// CloudEvents `time`, as Unix milliseconds.
    pub time_ms: u64,
    /// CloudEvents `datacontenttype`.
    pub content_type: Option<String>,
    /// When Gust accepted the event (Unix ms): the base of its max age.
    pub accepted_ms: u64,
    /// Path and query the function sees (an asynchronous HTTP invocation
    /// keeps the one it was sent to); `/` for other triggers.
    #[serde(default = "root_path")]
    pub path: String,
    /// W3C trace context of the span that accepted the event (when traces
    /// are on): delivered as the CloudEvents distributed-tracing attributes,
    /// so its attempts join the trace of the request that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    /// How deep in a chain of calls between functions it was queued (0:
    /// from outside): its delivery's own calls count on from here, so a
    /// function that keeps queueing events for itself is stopped.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub depth: u32,
    /// The kind of event source that queued it (`mqtt`, `webhook`, …), set
    /// by Gust alone: what its attempts are metered as. A client's
    /// `ce-type` never sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Its status record was written when it was accepted (a trigger's, a
    /// source's or a redriven event): its attempts keep that record
    /// current. Set by Gust alone. Without one, a cluster keeps a first
    /// attempt's success among others' (see `gust-events`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub recorded: bool,
    #[serde(skip)]
    pub data: Vec<u8>,
}

/// The most of a `tracestate` an event keeps (W3C asks to propagate at
/// least this much).
pub const MAX_TRACESTATE_BYTES: usize = 512;

/// A caller's W3C trace context as an event keeps it: (`traceparent`,
/// `tracestate`), each `None` when absent or malformed. A `traceparent`
/// must be a version `00` header with a non-zero trace and parent id (a
/// later version's first fields are read, and kept, as version 00, as W3C
/// says); `tracestate` (every header of that name, joined with commas,
/// as W3C says) is kept only with a kept `traceparent`, when it is
/// printable ASCII of at most [`MAX_TRACESTATE_BYTES`].
pub fn trace_context<'a>(
    traceparent: Option<&str>,
    tracestate: impl IntoIterator<Item = &'a str>,
) -> (Option<String>, Option<String>) {
    let Some(parent) = traceparent.map(str::trim).filter(|p| valid_traceparent(p)) else {
        return (None, None);
    };
    let state = tracestate
        .into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(",");
    let state = (!state.is_empty()
        && state.len() <= MAX_TRACESTATE_BYTES
        && state.bytes().all(|b| (0x20..0x7f).contains(&b)))
    .then_some(state);
    (Some(format!("00{}", &parent[2..55])), state)
}

fn valid_traceparent(header: &str) -> bool {
    let b = header.as_bytes();
    let hex = |s: &[u8]| {
        s.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    let zero = |s: &[u8]| s.iter().all(|&c| c == b'0');
    if b.len() < 55 || !hex(&b[..2]) || &b[..2] == b"ff" {
        return false;
    }
    // Version 00 is exactly 55 bytes; a later one may carry more after a dash.
    if (&b[..2] == b"00" && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
        return false;
    }
    let (trace, span, flags) = (&b[3..35], &b[36..52], &b[53..55]);
    b[2] == b'-'
        && b[35] == b'-'
        && b[52] == b'-'
        && hex(trace)
        && hex(span)
        && hex(flags)
        && !zero(trace)
        && !zero(span)
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn root_path() -> String {
    "/".to_string()
}

/// Why stored envelope bytes could not be read.
#[derive(Debug, thiserror::Error)]
#[error("stored event is corrupt: {0}")]
pub struct EnvelopeError(String);

impl Envelope {
    /// Encodes as `[header length: u32 LE][header JSON][data]`, so data is
    /// stored as is, without base64.
    pub fn encode(&self) -> Vec<u8> {
        let header = serde_json::to_vec(self).unwrap_or_default();
        let mut out = Vec::with_capacity(4 + header.len() + self.data.len());
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&self.data);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let len_bytes: [u8; 4] = bytes
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| EnvelopeError("too short".into()))?;
        let len = u32::from_le_bytes(len_bytes) as usize;
        let header = bytes
            .get(4..4 + len)
            .ok_or_else(|| EnvelopeError("header cut short".into()))?;
        let mut envelope: Envelope =
            serde_json::from_slice(header).map_err(|e| EnvelopeError(e.to_string()))?;
        envelope.data = bytes[4 + len..].to_vec();
        Ok(envelope)
    }
}

/// Where an asynchronous invocation stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InvocationState {
    /// Accepted, waiting for its first attempt.
    Queued,
    /// An attempt is running.
    Running,
    /// The last attempt failed; another is planned.
    Failed,
    Succeeded,
    /// Given up; in the function's dead-letter queue.
    DeadLettered,
}

/// The status of one asynchronous invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InvocationRecord {
    pub invocation_id: String,
    pub function: String,
    pub state: InvocationState,
    pub attempts: u32,
    pub accepted_ms: u64,
    pub updated_ms: u64,
    /// Status of the last attempt (the function's, or 500/504 for a trap/timeout).
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    /// When the next attempt is due (state `failed`).
    pub retry_at_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_context_is_kept_only_when_well_formed() {
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert_eq!(
            trace_context(Some(parent), ["vendor=x"]),
            (Some(parent.to_string()), Some("vendor=x".to_string()))
        );
        // A later version is read, and kept, as version 00.
        let later = format!("01{}-extra", &parent[2..]);
        assert_eq!(trace_context(Some(&later), []).0.as_deref(), Some(parent));
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-more",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g",
        ] {
            assert_eq!(trace_context(Some(bad), ["a=b"]), (None, None), "{bad}");
        }
        // A tracestate never comes alone, nor oversized, nor with control bytes.
        assert_eq!(trace_context(None, ["a=b"]), (None, None));
        let long = format!("a={}", "x".repeat(MAX_TRACESTATE_BYTES));
        assert_eq!(trace_context(Some(parent), [long.as_str()]).1, None);
        assert_eq!(trace_context(Some(parent), ["a=b\u{7}"]).1, None);
        // Several headers are one list; empty ones add nothing.
        assert_eq!(
            trace_context(Some(parent), ["a=1", " ", "b=2 "])
                .1
                .as_deref(),
            Some("a=1,b=2")
        );
        // Two that fit alone but not together are dropped together.
        let half = format!("a={}", "x".repeat(MAX_TRACESTATE_BYTES / 2));
        assert_eq!(
            trace_context(Some(parent), [half.as_str(), half.as_str()]).1,
            None
        );
    }

    #[test]
    fn envelopes_round_trip_with_binary_data() {
        let envelope = Envelope {
            tenant: TenantId::default_tenant(),
            function: FunctionName::new("f").unwrap(),
            invocation_id: "inv".into(),
            id: "e1".into(),
            source: "/test".into(),
            ty: "com.example.thing".into(),
            subject: Some("s".into()),
            time_ms: 5,
            content_type: Some("application/octet-stream".into()),
            accepted_ms: 6,
            path: "/x?y=1".into(),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            tracestate: None,
            depth: 3,
            origin: Some("mqtt".into()),
            recorded: true,
            data: vec![0, 255, 1, 2],
        };
        let decoded = Envelope::decode(&envelope.encode()).unwrap();
        assert_eq!(decoded, envelope);
        assert!(Envelope::decode(b"\x10\0\0\0{").is_err());
        assert!(Envelope::decode(b"").is_err());
    }
}
