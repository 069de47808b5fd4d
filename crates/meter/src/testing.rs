//! What the meter's unit tests share: a plan lookup and a usage record.

use std::sync::Arc;

use gust_core::usage::{PlanHistory, Trigger, UsageOutcome, UsageRecord};

use crate::Plans;

pub(crate) fn default_plans() -> Plans {
    Arc::new(|_: &str| PlanHistory::default())
}

pub(crate) fn record(id: &str, attempt: u32, start_ms: u64, outcome: UsageOutcome) -> UsageRecord {
    UsageRecord {
        invocation_id: id.into(),
        attempt,
        tenant: "t".into(),
        function: "f".into(),
        version: 1,
        trigger: Trigger::Http,
        start_ms,
        wall_ns: 1_500_000,
        cpu_ns: 1_000_000,
        peak_memory_bytes: 0,
        memory_limit_bytes: 128 << 20,
        request_bytes: 10,
        response_bytes: 20,
        outbound_requests: 0,
        outbound_bytes: 0,
        kv_operations: 0,
        outcome,
        status: 200,
        billed_ms: 0,
        gib_us: 0,
        cost_micros: 0,
        plan: String::new(),
    }
}
