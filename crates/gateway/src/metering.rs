//! The usage record of each attempt the data plane runs or refuses, handed
//! to the ledger (`gust-meter`). An attempt's record needs three things
//! that arrive in any order: the runtime's report (when the instance is
//! gone), the status answered (when the response head, or an error, is
//! known) and the bytes the response body really carried (counted by
//! [`Counted`] as it streams, whatever its headers declared). A [`Draft`]
//! waits for all three, then records once.
//!
//! The outcomes this side decides: `rejected` when refused at admission
//! (or when the request goes away before its guest starts, status 499);
//! 499 (`Unanswered`) for a request that goes away before its answer is
//! known; 413/408 for a body over its limit or stalled; `cancelled` for a
//! guest stopped because its client went away (billed for the time it
//! ran); `incomplete` for a response whose body failed after its head.
//! The attempt is opened in the ledger before the guest runs.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use gust_core::Outcome;
use gust_core::usage::{Trigger, UsageOutcome, UsageRecord};
use gust_meter::Meter;
use gust_runtime::InvocationReport;

use crate::catalog::Loaded;

/// What is known of an attempt before it runs.
pub(crate) struct Attempt<'a> {
    pub id: &'a str,
    pub attempt: u32,
    pub trigger: Trigger,
    pub request_bytes: u64,
    /// The request body's fault, which overrides the guest's status.
    pub fault: Option<crate::body::BodyFault>,
    /// How deep in calls between functions (0: not called by one).
    pub depth: u32,
}

pub(crate) fn start_record(loaded: &Loaded, attempt: &Attempt<'_>) -> UsageRecord {
    UsageRecord {
        invocation_id: attempt.id.to_owned(),
        attempt: attempt.attempt,
        tenant: loaded.tenant.as_str().to_owned(),
        function: loaded.name.as_str().to_owned(),
        version: loaded.version,
        trigger: attempt.trigger,
        start_ms: crate::now_ms(),
        wall_ns: 0,
        cpu_ns: 0,
        peak_memory_bytes: 0,
        memory_limit_bytes: loaded.limits.memory_bytes,
        request_bytes: attempt.request_bytes,
        response_bytes: 0,
        outbound_requests: 0,
        outbound_bytes: 0,
        kv_operations: 0,
        outcome: UsageOutcome::Aborted,
        status: 0,
        billed_ms: 0,
        gib_us: 0,
        cost_micros: 0,
        plan: String::new(),
    }
}

/// Records an attempt refused before it ran.
pub(crate) fn rejected(meter: &Meter, mut record: UsageRecord, status: u16) {
    record.outcome = UsageOutcome::Rejected;
    record.status = status;
    meter.record(record, false);
}

/// An attempt between admission and its guest's start (waiting for a
/// place, loading its component): if its request goes away then (the
/// future dropped), it is recorded as not run — `rejected`, never charged,
/// with status 499 (the client closed the request); otherwise its record
/// moves on to a [`Draft`] or a refusal.
pub(crate) struct Admitting<'m> {
    pending: Option<(&'m Meter, UsageRecord)>,
}

impl<'m> Admitting<'m> {
    pub fn new(pending: Option<(&'m Meter, UsageRecord)>) -> Self {
        Self { pending }
    }

    /// Refused at admission: recorded so, with the status answered.
    pub fn refuse(&mut self, status: u16) {
        if let Some((meter, record)) = self.pending.take() {
            rejected(meter, record, status);
        }
    }

    /// Admitted: the record goes on with the run.
    pub fn admitted(mut self) -> Option<(&'m Meter, UsageRecord)> {
        self.pending.take()
    }
}

impl Drop for Admitting<'_> {
    fn drop(&mut self) {
        if let Some((meter, record)) = self.pending.take() {
            rejected(meter, record, 499);
        }
    }
}

/// An attempt's record (opened in the ledger), waiting for its report, its
/// status and its body's end.
pub(crate) struct Draft {
    meter: Meter,
    parts: Mutex<Parts>,
}

/// What a [`Draft`] has gathered so far (one lock per part that comes in).
struct Parts {
    /// Taken when every part is in.
    record: Option<UsageRecord>,
    /// How the runtime saw the instance end (`None` until its report).
    ran: Option<Ran>,
    /// The response body failed before its end: the client got a cut-off answer.
    cut: bool,
    left: u8,
}

/// The part of the runtime's outcome the record's outcome depends on.
#[derive(Clone, Copy)]
enum Ran {
    Completed,
    Trapped,
    TimedOut,
    Failed,
    /// The client went away and the instance was dropped.
    Cancelled,
}

impl Draft {
    pub fn new(meter: Meter, record: UsageRecord) -> Self {
        Self {
            meter,
            parts: Mutex::new(Parts {
                record: Some(record),
                ran: None,
                cut: false,
                left: 3,
            }),
        }
    }

    /// Applies one part to the record; the last part in records it.
    fn part(&self, apply: impl FnOnce(&mut Parts)) {
        let done = {
            let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
            apply(&mut parts);
            parts.left = parts.left.saturating_sub(1);
            if parts.left > 0 {
                return;
            }
            let (ran, cut) = (parts.ran, parts.cut);
            parts.record.take().map(|record| (record, ran, cut))
        };
        let Some((mut record, ran, cut)) = done else {
            return;
        };
        record.outcome = outcome(ran, cut, record.status);
        self.meter.record(record, true);
    }

    /// The runtime's report: the instance is gone.
    pub fn report(&self, report: &InvocationReport) {
        self.part(|parts| {
            parts.ran = Some(match report.outcome {
                Outcome::Completed => Ran::Completed,
                Outcome::Trapped { .. } => Ran::Trapped,
                Outcome::TimedOut => Ran::TimedOut,
                Outcome::Failed { .. } => Ran::Failed,
                Outcome::Cancelled => Ran::Cancelled,
            });
            if let Some(record) = parts.record.as_mut() {
                record.wall_ns = u64::try_from(report.duration.as_nanos()).unwrap_or(u64::MAX);
                record.cpu_ns = u64::try_from(report.cpu.as_nanos()).unwrap_or(u64::MAX);
                record.peak_memory_bytes = report.peak_memory_bytes;
                record.kv_operations = report.kv_operations;
                record.outbound_requests = report.outbound_requests;
                record.outbound_bytes = report.outbound_bytes;
            }
        });
    }

    /// The status answered (the guest's, or the one the gateway answered for it).
    pub fn status(&self, status: u16) {
        self.part(|parts| {
            if let Some(record) = parts.record.as_mut() {
                record.status = status;
            }
        });
    }

    /// The response body ended (or was dropped) after `bytes`.
    pub fn body_sent(&self, bytes: u64) {
        self.part(|parts| {
            if let Some(record) = parts.record.as_mut() {
                record.response_bytes = bytes;
            }
        });
    }

    /// The response body failed after `bytes`: the answer is incomplete.
    pub fn body_cut(&self, bytes: u64) {
        self.part(|parts| {
            parts.cut = true;
            if let Some(record) = parts.record.as_mut() {
                record.response_bytes = bytes;
            }
        });
    }
}

/// A record's outcome from how the instance ended, whether the response
/// body was cut off, and the status answered.
fn outcome(ran: Option<Ran>, cut: bool, status: u16) -> UsageOutcome {
    match ran {
        // The client is gone, whatever the guest was doing.
        Some(Ran::Cancelled) => UsageOutcome::Cancelled,
        // The head went out, the body's end did not.
        _ if cut => UsageOutcome::Incomplete,
        Some(Ran::TimedOut) => UsageOutcome::TimedOut,
        Some(Ran::Trapped) => UsageOutcome::Trapped,
        Some(Ran::Completed) if (100..400).contains(&status) => UsageOutcome::Success,
        // A status the guest answered as an error, or one the gateway
        // answered because the guest could not run.
        Some(Ran::Completed | Ran::Failed) | None => UsageOutcome::ErrorStatus,
    }
}

/// Answers for an attempt whose request went away before its response
/// head was known (the client closed the connection; a drain cut it):
/// status 499, no body, so its record is still written.
pub(crate) struct Unanswered(Option<Arc<Draft>>);

impl Unanswered {
    pub fn new(draft: Option<Arc<Draft>>) -> Self {
        Self(draft)
    }

    /// The answer is known: the caller reports it.
    pub fn answered(mut self) {
        self.0 = None;
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(draft) = self.0.take() {
            draft.status(499);
            draft.body_sent(0);
        }
    }
}

/// A response body that counts the bytes it carries and tells its draft
/// when it ends, fails or is dropped (the client went away).
pub(crate) struct Counted {
    inner: crate::GatewayBody,
    draft: Option<Arc<Draft>>,
    bytes: u64,
}

impl Counted {
    pub fn new(inner: crate::GatewayBody, draft: Arc<Draft>) -> Self {
        Self {
            inner,
            draft: Some(draft),
            bytes: 0,
        }
    }

    fn finish(&mut self) {
        if let Some(draft) = self.draft.take() {
            draft.body_sent(self.bytes);
        }
    }

    fn cut(&mut self) {
        if let Some(draft) = self.draft.take() {
            draft.body_cut(self.bytes);
        }
    }
}

impl Body for Counted {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
            Poll::Ready(Some(Err(_))) => self.cut(),
            Poll::Ready(None) => self.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancelled_instance_is_recorded_as_cancelled_whatever_was_answered() {
        for status in [200, 499, 500] {
            for cut in [false, true] {
                assert_eq!(
                    outcome(Some(Ran::Cancelled), cut, status),
                    UsageOutcome::Cancelled
                );
            }
        }
    }

    #[test]
    fn a_body_cut_off_after_its_head_is_recorded_as_incomplete() {
        for ran in [Ran::Trapped, Ran::TimedOut, Ran::Failed, Ran::Completed] {
            assert_eq!(outcome(Some(ran), true, 200), UsageOutcome::Incomplete);
        }
        // Not cut: how the guest ended decides, as before.
        assert_eq!(
            outcome(Some(Ran::Trapped), false, 200),
            UsageOutcome::Trapped
        );
        assert_eq!(
            outcome(Some(Ran::TimedOut), false, 504),
            UsageOutcome::TimedOut
        );
        assert_eq!(
            outcome(Some(Ran::Completed), false, 200),
            UsageOutcome::Success
        );
        assert_eq!(
            outcome(Some(Ran::Completed), false, 404),
            UsageOutcome::ErrorStatus
        );
        assert_eq!(outcome(None, false, 503), UsageOutcome::ErrorStatus);
    }
}
