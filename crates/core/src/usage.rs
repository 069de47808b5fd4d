//! Metering: the usage record of one invocation attempt, price plans, and
//! the arithmetic that turns one into a cost. Pure: the ledger (`gust-meter`)
//! stores records and keeps month-to-date totals; this module decides.
//!
//! Money is counted in micro-units of the plan's currency (1 unit =
//! 1,000,000) as integers, so totals add up exactly, as an accountant
//! reconciling an export expects.

use serde::{Deserialize, Serialize};

/// How an invocation attempt ended, for billing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UsageOutcome {
    /// The guest answered with a 1xx–3xx status.
    Success,
    /// The guest answered with a 4xx or 5xx status.
    ErrorStatus,
    /// The guest trapped (including past its memory limit).
    Trapped,
    /// Stopped at its timeout.
    TimedOut,
    /// Refused before the guest ran (a limit or quota); never charged.
    Rejected,
    /// The server stopped (killed, crashed) while it ran: found at start-up.
    Aborted,
    /// Its client went away before the whole answer was sent, and the
    /// instance was dropped then: charged for the time it ran.
    Cancelled,
    /// The response head was sent but its body did not finish (the guest
    /// trapped, timed out or ran out of memory mid-body): the client saw
    /// the connection end without the body's end.
    Incomplete,
}

/// What started an invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Http,
    /// An event sent over HTTP or the API, a schedule's tick, a KV change.
    Event,
    /// Another function of the tenant called it (`http://gust.internal/…`).
    Call,
    /// An event from a signed webhook source.
    Webhook,
    /// An event from an MQTT source.
    Mqtt,
    /// An event from a NATS source.
    Nats,
    /// An event from an AMQP (RabbitMQ) source.
    Amqp,
    /// An event from a Redis Streams source.
    Redis,
    /// An event from a PostgreSQL change data capture source.
    Postgres,
    /// A WebSocket connection's connect, message or close; and the
    /// connection itself (its record's wall time is how long it was open).
    #[serde(rename = "websocket")]
    WebSocket,
}

impl Trigger {
    pub const ALL: [Trigger; 10] = [
        Trigger::Http,
        Trigger::Event,
        Trigger::Call,
        Trigger::Webhook,
        Trigger::Mqtt,
        Trigger::Nats,
        Trigger::Amqp,
        Trigger::Redis,
        Trigger::Postgres,
        Trigger::WebSocket,
    ];

    /// As it is written in records: `http`, `event`, `call`, or an event
    /// source's kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Http => "http",
            Trigger::Event => "event",
            Trigger::Call => "call",
            Trigger::Webhook => "webhook",
            Trigger::Mqtt => "mqtt",
            Trigger::Nats => "nats",
            Trigger::Amqp => "amqp",
            Trigger::Redis => "redis",
            Trigger::Postgres => "postgres",
            Trigger::WebSocket => "websocket",
        }
    }

    /// The trigger of an event queued by an event source of `origin`'s
    /// kind (the envelope's, which Gust alone sets), else [`Trigger::Event`].
    pub fn of_origin(origin: Option<&str>) -> Trigger {
        match origin.unwrap_or_default() {
            "webhook" => Trigger::Webhook,
            "mqtt" => Trigger::Mqtt,
            "nats" => Trigger::Nats,
            "amqp" => Trigger::Amqp,
            "redis" => Trigger::Redis,
            "postgres" => Trigger::Postgres,
            _ => Trigger::Event,
        }
    }
}

/// One invocation attempt as metered: exactly one per attempt, keyed by
/// `(invocation_id, attempt)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageRecord {
    pub invocation_id: String,
    /// 1 for a request; the delivery attempt for an event (attempts of one
    /// event share its invocation id).
    pub attempt: u32,
    pub tenant: String,
    pub function: String,
    pub version: u64,
    pub trigger: Trigger,
    /// Unix ms when it started.
    pub start_ms: u64,
    pub wall_ns: u64,
    /// Thread CPU time spent running the guest (and the host calls it made
    /// on its thread), not time waiting.
    pub cpu_ns: u64,
    pub peak_memory_bytes: u64,
    pub memory_limit_bytes: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub outbound_requests: u64,
    pub outbound_bytes: u64,
    pub kv_operations: u64,
    pub outcome: UsageOutcome,
    /// The HTTP status answered (0 when none was).
    pub status: u16,
    /// Wall time rounded up to the next millisecond (at least 1 once the guest ran).
    pub billed_ms: u64,
    /// Configured memory × billed duration, in GiB-microseconds (integral).
    pub gib_us: u64,
    /// Under the plan in force when it ran, in micro-units.
    pub cost_micros: u64,
    pub plan: String,
}

/// `<invocation id>#<attempt>`: the ledger key of an attempt (see
/// [`UsageRecord::key`]), made without the formatting machinery, as the
/// meter makes one per record it indexes.
pub fn attempt_key(invocation_id: &str, attempt: u32) -> String {
    let mut key = Vec::with_capacity(invocation_id.len() + 11);
    attempt_key_into(invocation_id, attempt, &mut key);
    // An id, '#' and ASCII digits.
    String::from_utf8(key).unwrap_or_default()
}

/// Appends [`attempt_key`] to `out` (no allocation when it has room).
pub fn attempt_key_into(invocation_id: &str, attempt: u32, out: &mut Vec<u8>) {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    let mut n = attempt;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(invocation_id.as_bytes());
    out.push(b'#');
    out.extend_from_slice(&digits[at..]);
}

impl UsageRecord {
    /// The ledger key of this attempt: unique per attempt.
    pub fn key(&self) -> String {
        attempt_key(&self.invocation_id, self.attempt)
    }

    /// GB-seconds (GiB × s), for display.
    pub fn gb_seconds(&self) -> f64 {
        self.gib_us as f64 / 1e6
    }
}

/// Prices and a monthly free allowance. Every price is in micro-units per
/// million of its unit, so small unit prices stay exact integers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PricePlan {
    pub id: String,
    /// Per million requests.
    pub per_million_requests: u64,
    /// Per million GiB-seconds of configured memory × billed duration.
    pub per_million_gb_seconds: u64,
    /// Per million milliseconds of guest CPU time.
    pub per_million_cpu_ms: u64,
    /// Requests free each calendar month (UTC).
    pub free_requests: u64,
    /// GiB-seconds free each calendar month.
    pub free_gb_seconds: u64,
}

impl Default for PricePlan {
    /// Lambda-like list prices: 0.20 per million requests, 0.0000166667 per
    /// GB-s, CPU not charged apart; 1M requests and 400,000 GB-s free.
    fn default() -> Self {
        Self {
            id: "standard".into(),
            per_million_requests: 200_000,
            per_million_gb_seconds: 16_666_700,
            per_million_cpu_ms: 0,
            free_requests: 1_000_000,
            free_gb_seconds: 400_000,
        }
    }
}

/// A tenant's price plan and the plans before it, so that a record is
/// priced under the plan in force when its invocation *started*, however
/// late it is priced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanHistory {
    pub current: PricePlan,
    /// When `current` took effect (Unix ms; 0: always).
    pub since_ms: u64,
    /// Earlier plans, oldest first, each with when it stopped being in force.
    pub earlier: Vec<(u64, PricePlan)>,
}

impl PlanHistory {
    /// Earlier plans kept: invocations this many plan changes back are
    /// priced under the oldest one kept.
    pub const KEPT: usize = 8;

    /// The plan in force at `ms`.
    pub fn at(&self, ms: u64) -> &PricePlan {
        if ms >= self.since_ms {
            return &self.current;
        }
        self.earlier
            .iter()
            .find(|(until, _)| ms < *until)
            .or(self.earlier.last())
            .map_or(&self.current, |(_, plan)| plan)
    }

    /// `plan` takes effect at `now_ms`.
    pub fn change(&mut self, plan: PricePlan, now_ms: u64) {
        let old = std::mem::replace(&mut self.current, plan);
        self.earlier.push((now_ms, old));
        let excess = self.earlier.len().saturating_sub(Self::KEPT);
        self.earlier.drain(..excess);
        self.since_ms = now_ms;
    }
}

/// What a tenant used so far this month (before the record being priced).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonthToDate {
    pub requests: u64,
    pub gib_us: u64,
    /// What it cost, in micro-units.
    pub cost_micros: u64,
}

/// The first millisecond of the calendar month (UTC) that holds `ms`:
/// free allowances and budgets run per month.
pub fn month_start_ms(ms: u64) -> u64 {
    const DAY: u64 = 86_400_000;
    let (_, _, day) = crate::time::civil_from_days((ms / DAY) as i64);
    (ms / DAY - (day - 1)) * DAY
}

/// Wall time billed: rounded up to the next whole millisecond, at least 1
/// when the guest ran at all; 0 for a rejection.
pub fn billed_ms(wall_ns: u64, outcome: UsageOutcome) -> u64 {
    if outcome == UsageOutcome::Rejected {
        return 0;
    }
    wall_ns.div_ceil(1_000_000).max(1)
}

/// Configured memory × billed time, in GiB-microseconds.
pub fn gib_us(memory_limit_bytes: u64, billed_ms: u64) -> u64 {
    // bytes × ms × 1000 / 2^30, in u128 so nothing overflows.
    let product = u128::from(memory_limit_bytes) * u128::from(billed_ms) * 1000;
    u64::try_from(product.div_ceil(1 << 30)).unwrap_or(u64::MAX)
}

/// The cost of one attempt under `plan`, given what the tenant used earlier
/// this month. Rejections cost nothing; the free allowance is used up first.
pub fn price(plan: &PricePlan, before: MonthToDate, record: &UsageRecord) -> u64 {
    price_of(plan, before, record.outcome, record.gib_us, record.cpu_ns)
}

/// [`price`] from the figures it depends on.
pub fn price_of(
    plan: &PricePlan,
    before: MonthToDate,
    outcome: UsageOutcome,
    gib_us: u64,
    cpu_ns: u64,
) -> u64 {
    if outcome == UsageOutcome::Rejected {
        return 0;
    }
    // Requests: charged per million; each request beyond the free ones
    // costs the difference of the rounded running totals, so the monthly
    // sum is exact whatever the order.
    let charged = |requests: u64| {
        let paid = u128::from(requests.saturating_sub(plan.free_requests));
        paid * u128::from(plan.per_million_requests) / 1_000_000
    };
    let requests = charged(before.requests + 1) - charged(before.requests);
    // Memory time: the same, over GiB-µs beyond the free GiB-s
    // (GiB-µs × per-million-GiB-s / 10^12).
    let free_gib_us = u128::from(plan.free_gb_seconds) * 1_000_000;
    let memory = |gib_us: u64| {
        let paid = u128::from(gib_us).saturating_sub(free_gib_us);
        paid * u128::from(plan.per_million_gb_seconds) / 1_000_000_000_000
    };
    let memory = memory(before.gib_us.saturating_add(gib_us)) - memory(before.gib_us);
    // CPU: ns × per-million-ms / 10^12, per record.
    let cpu = u128::from(cpu_ns) * u128::from(plan.per_million_cpu_ms) / 1_000_000_000_000;
    u64::try_from(requests + memory + cpu).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_of_a_source_are_metered_as_its_kind() {
        assert_eq!(Trigger::of_origin(Some("mqtt")), Trigger::Mqtt);
        assert_eq!(Trigger::of_origin(Some("postgres")), Trigger::Postgres);
        assert_eq!(Trigger::of_origin(Some("kafka")), Trigger::Event);
        assert_eq!(Trigger::of_origin(None), Trigger::Event);
        for t in Trigger::ALL {
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
        }
    }

    #[test]
    fn attempt_keys_read_as_formatting_would_write_them() {
        for attempt in [0, 1, 9, 10, 12_345, u32::MAX] {
            assert_eq!(attempt_key("abc", attempt), format!("abc#{attempt}"));
        }
    }

    fn record(wall_ns: u64, memory: u64) -> UsageRecord {
        let billed = billed_ms(wall_ns, UsageOutcome::Success);
        UsageRecord {
            invocation_id: "i".into(),
            attempt: 1,
            tenant: "t".into(),
            function: "f".into(),
            version: 1,
            trigger: Trigger::Http,
            start_ms: 0,
            wall_ns,
            cpu_ns: wall_ns / 2,
            peak_memory_bytes: 0,
            memory_limit_bytes: memory,
            request_bytes: 0,
            response_bytes: 0,
            outbound_requests: 0,
            outbound_bytes: 0,
            kv_operations: 0,
            outcome: UsageOutcome::Success,
            status: 200,
            billed_ms: billed,
            gib_us: gib_us(memory, billed),
            cost_micros: 0,
            plan: "p".into(),
        }
    }

    fn plan() -> PricePlan {
        PricePlan {
            id: "p".into(),
            per_million_requests: 200_000,
            per_million_gb_seconds: 16_666_700_000,
            per_million_cpu_ms: 0,
            free_requests: 0,
            free_gb_seconds: 0,
        }
    }

    #[test]
    fn months_start_on_the_first_at_midnight_utc() {
        // 2026-11-26T23:59:59.123Z → 2026-11-01T00:00:00Z.
        assert_eq!(month_start_ms(1_795_737_599_123), 1_793_491_200_000);
        assert_eq!(month_start_ms(1_793_491_200_000), 1_793_491_200_000);
        assert_eq!(
            crate::time::rfc3339(month_start_ms(951_782_400_000)),
            "2000-02-01T00:00:00.000Z"
        );
    }

    #[test]
    fn billed_time_rounds_up_to_whole_milliseconds() {
        assert_eq!(billed_ms(1, UsageOutcome::Success), 1);
        assert_eq!(billed_ms(1_000_000, UsageOutcome::Success), 1);
        assert_eq!(billed_ms(1_000_001, UsageOutcome::Success), 2);
        assert_eq!(billed_ms(0, UsageOutcome::Trapped), 1);
        assert_eq!(billed_ms(5_000_000, UsageOutcome::Rejected), 0);
    }

    #[test]
    fn memory_time_is_configured_memory_times_billed_time() {
        // 1 GiB for 1 s = 1 GiB-s = 1,000,000 GiB-µs.
        assert_eq!(gib_us(1 << 30, 1000), 1_000_000);
        // 128 MiB for 1 ms = 1/8 GiB-ms = 125 GiB-µs.
        assert_eq!(gib_us(128 << 20, 1), 125);
        // Rounded up, never to zero for a run.
        assert_eq!(gib_us(1, 1), 1);
    }

    #[test]
    fn a_month_of_requests_sums_exactly_whatever_the_rounding() {
        let plan = plan();
        let r = record(1, 0);
        let mut total = 0;
        let mut before = MonthToDate::default();
        for _ in 0..1_000_000 {
            total += price(&plan, before, &r);
            before.requests += 1;
        }
        assert_eq!(total, 200_000, "0.2 units per million requests");
    }

    #[test]
    fn the_free_allowance_is_used_first() {
        let plan = PricePlan {
            free_requests: 10,
            free_gb_seconds: 1,
            ..plan()
        };
        // 1 GiB for 1 s each: the first is free, the second costs one GB-s.
        let r = record(1_000_000_000, 1 << 30);
        let first = price(&plan, MonthToDate::default(), &r);
        assert_eq!(first, 0);
        let second = price(
            &plan,
            MonthToDate {
                requests: 1,
                gib_us: r.gib_us,
                cost_micros: 0,
            },
            &r,
        );
        assert_eq!(second, 16_666, "16,666.7 µ-units per GB-s, rounded down");
        // Past the free requests, each costs its share.
        let past = price(
            &plan,
            MonthToDate {
                requests: 10 + 999_999,
                gib_us: 0,
                cost_micros: 0,
            },
            &record(1, 0),
        );
        assert_eq!(
            past, 1,
            "the millionth paid request completes the 0.2 units' last µ"
        );
    }

    #[test]
    fn cpu_time_and_rejections() {
        let plan = PricePlan {
            per_million_requests: 0,
            per_million_gb_seconds: 0,
            per_million_cpu_ms: 10_000_000,
            ..plan()
        };
        let mut r = record(4_000_000, 0);
        r.cpu_ns = 3_000_000;
        assert_eq!(price(&plan, MonthToDate::default(), &r), 30);
        r.outcome = UsageOutcome::Rejected;
        assert_eq!(price(&plan, MonthToDate::default(), &r), 0);
    }

    #[test]
    fn a_plan_change_prices_only_later_records() {
        // Pricing takes the plan as an argument: records already priced keep
        // their cost; the ledger prices each record once, when written.
        let cheap = plan();
        let dear = PricePlan {
            per_million_gb_seconds: 2 * cheap.per_million_gb_seconds,
            ..cheap.clone()
        };
        let r = record(1_000_000_000, 1 << 30);
        let before = MonthToDate::default();
        let (dear, cheap) = (price(&dear, before, &r), price(&cheap, before, &r));
        assert!(dear.abs_diff(2 * cheap) <= 1, "{dear} vs 2 × {cheap}");
    }

    #[test]
    fn a_record_is_priced_under_the_plan_in_force_when_it_started() {
        let named = |id: &str| PricePlan {
            id: id.into(),
            ..PricePlan::default()
        };
        let mut plans = PlanHistory {
            current: named("a"),
            since_ms: 0,
            earlier: Vec::new(),
        };
        plans.change(named("b"), 100);
        plans.change(named("c"), 200);
        assert_eq!(plans.at(50).id, "a");
        assert_eq!(plans.at(100).id, "b");
        assert_eq!(plans.at(199).id, "b");
        assert_eq!(plans.at(200).id, "c");
        assert_eq!(plans.at(u64::MAX).id, "c");
        for i in 0..20 {
            plans.change(named(&format!("p{i}")), 300 + i);
        }
        assert_eq!(plans.earlier.len(), PlanHistory::KEPT);
        // Older than what is kept: the oldest kept plan.
        assert_eq!(plans.at(50).id, plans.earlier[0].1.id);
    }
}
