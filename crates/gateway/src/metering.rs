//! The usage record of each attempt the data plane runs or refuses, handed
//! to the ledger (`gust-meter`). An attempt's record needs two things that
//! arrive in either order: the runtime's report (when the instance is gone)
//! and the status answered (when the response head, or an error, is
//! known). A [`Draft`] waits for both, then records once.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

use gust_core::Outcome;
use gust_core::usage::{Trigger, UsageOutcome, UsageRecord};
use gust_meter::Meter;
use gust_runtime::InvocationReport;

use crate::catalog::Route;

/// What is known of an attempt before it runs.
pub(crate) struct Attempt<'a> {
    pub id: &'a str,
    pub attempt: u32,
    pub trigger: Trigger,
    pub request_bytes: u64,
}

pub(crate) fn start_record(route: &Route, attempt: &Attempt<'_>) -> UsageRecord {
    UsageRecord {
        invocation_id: attempt.id.to_string(),
        attempt: attempt.attempt,
        tenant: route.tenant.to_string(),
        function: route.name.to_string(),
        version: route.version,
        trigger: attempt.trigger,
        start_ms: crate::now_ms(),
        wall_ns: 0,
        cpu_ns: 0,
        peak_memory_bytes: 0,
        memory_limit_bytes: route.limits.memory_bytes,
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

/// An attempt's record, waiting for its report and its status.
pub(crate) struct Draft {
    meter: Meter,
    record: Mutex<UsageRecord>,
    runtime_outcome: Mutex<Option<Outcome>>,
    parts_left: AtomicU8,
    /// Its marker is durable (else the record is written without one).
    opened: std::sync::atomic::AtomicBool,
}

impl Draft {
    pub fn new(meter: Meter, record: UsageRecord) -> Self {
        Self {
            meter,
            record: Mutex::new(record),
            runtime_outcome: Mutex::new(None),
            parts_left: AtomicU8::new(2),
            opened: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn record(&self) -> std::sync::MutexGuard<'_, UsageRecord> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The runtime's report: the instance is gone.
    pub fn report(&self, report: &InvocationReport) {
        {
            let mut record = self.record();
            record.wall_ns = u64::try_from(report.duration.as_nanos()).unwrap_or(u64::MAX);
            record.cpu_ns = u64::try_from(report.cpu.as_nanos()).unwrap_or(u64::MAX);
            record.peak_memory_bytes = report.peak_memory_bytes;
            record.kv_operations = report.kv_operations;
            record.outbound_requests = report.outbound_requests;
            record.outbound_bytes = report.outbound_bytes;
        }
        *self
            .runtime_outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(report.outcome.clone());
        self.part_done();
    }

    /// Its marker was written (before the status is known).
    pub fn opened(&self) {
        self.opened.store(true, Ordering::Release);
    }

    /// The status answered (the guest's, or the one the gateway answered for it).
    pub fn status(&self, status: u16, response_bytes: u64) {
        {
            let mut record = self.record();
            record.status = status;
            record.response_bytes = response_bytes;
        }
        self.part_done();
    }

    fn part_done(&self) {
        if self.parts_left.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let outcome = self
            .runtime_outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let mut record = self.record().clone();
        record.outcome = match outcome {
            Some(Outcome::TimedOut) => UsageOutcome::TimedOut,
            Some(Outcome::Trapped { .. }) => UsageOutcome::Trapped,
            Some(Outcome::Completed) if (100..400).contains(&record.status) => {
                UsageOutcome::Success
            }
            _ => UsageOutcome::ErrorStatus,
        };
        self.meter
            .record(record, self.opened.load(Ordering::Acquire));
    }
}
