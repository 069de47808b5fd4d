//! The compact binary form of a usage record, as the journal and the
//! ledger store it: a version byte, fixed-width little-endian numbers, then
//! length-prefixed strings. About a fifth of the JSON form's size and a
//! tenth of its cost to write, which matters at one record per request.
//! Records written as JSON by earlier builds still decode
//! (`decode_json_of_earlier_builds`).

use gust_core::usage::{Trigger, UsageOutcome, UsageRecord};

const VERSION: u8 = 1;
/// The fixed-width part: version, trigger, outcome (a byte each), status
/// (u16), attempt (u32), then fourteen u64.
const FIXED: usize = 1 + 1 + 1 + 2 + 4 + 14 * 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the record ends early")]
    Truncated,
    #[error("unknown record format {0}")]
    Version(u8),
    #[error("unknown {0} code {1}")]
    Code(&'static str, u8),
    #[error("a string field is not UTF-8")]
    Utf8,
    #[error("a string field is longer than 65535 bytes")]
    TooLong,
    #[error("{0} bytes after the record")]
    Trailing(usize),
    #[error("not a usage record: {0}")]
    Json(String),
}

/// Every outcome, in the order of their codes (and of `/metrics` counts).
pub(crate) const OUTCOMES: [UsageOutcome; 8] = [
    UsageOutcome::Success,
    UsageOutcome::ErrorStatus,
    UsageOutcome::Trapped,
    UsageOutcome::TimedOut,
    UsageOutcome::Rejected,
    UsageOutcome::Aborted,
    UsageOutcome::Cancelled,
    UsageOutcome::Incomplete,
];

fn outcome_code(outcome: UsageOutcome) -> u8 {
    OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(0) as u8
}

/// Appends the record's binary form to `out`. Fails only on a string
/// longer than 65535 bytes (ids and names are far shorter).
pub fn encode(record: &UsageRecord, out: &mut Vec<u8>) -> Result<(), DecodeError> {
    let len = encoded_len(record)?;
    let at = out.len();
    out.resize(at + len, 0);
    encode_to(record, &mut out[at..]);
    Ok(())
}

/// How long the record's binary form is. Fails only on a string longer
/// than 65535 bytes.
pub fn encoded_len(record: &UsageRecord) -> Result<usize, DecodeError> {
    let strings = strings(record);
    if strings.iter().any(|s| s.len() > usize::from(u16::MAX)) {
        return Err(DecodeError::TooLong);
    }
    Ok(FIXED + strings.iter().map(|s| 2 + s.len()).sum::<usize>())
}

fn strings(record: &UsageRecord) -> [&str; 4] {
    [
        &record.invocation_id,
        &record.tenant,
        &record.function,
        &record.plan,
    ]
}

/// Writes the record's binary form into `out`, which is exactly
/// [`encoded_len`] long (in place: the journal hands out its frame).
pub fn encode_to(record: &UsageRecord, out: &mut [u8]) {
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        if let Some(to) = out.get_mut(at..at + bytes.len()) {
            to.copy_from_slice(bytes);
        }
        at += bytes.len();
    };
    put(&[
        VERSION,
        match record.trigger {
            Trigger::Http => 0,
            Trigger::Event => 1,
            Trigger::Call => 2,
            Trigger::Webhook => 3,
            Trigger::Mqtt => 4,
            Trigger::Nats => 5,
            Trigger::Amqp => 6,
            Trigger::Redis => 7,
            Trigger::Postgres => 8,
            Trigger::WebSocket => 9,
        },
        outcome_code(record.outcome),
    ]);
    put(&record.status.to_le_bytes());
    put(&record.attempt.to_le_bytes());
    for n in [
        record.version,
        record.start_ms,
        record.wall_ns,
        record.cpu_ns,
        record.peak_memory_bytes,
        record.memory_limit_bytes,
        record.request_bytes,
        record.response_bytes,
        record.outbound_requests,
        record.outbound_bytes,
        record.kv_operations,
        record.billed_ms,
        record.gib_us,
        record.cost_micros,
    ] {
        put(&n.to_le_bytes());
    }
    for s in strings(record) {
        put(&(s.len() as u16).to_le_bytes());
        put(s.as_bytes());
    }
}

/// The attempt a binary record belongs to (invocation id, attempt),
/// without decoding the rest.
pub fn key_of(bytes: &[u8]) -> Option<(&[u8], u32)> {
    if bytes.first() != Some(&VERSION) {
        return None;
    }
    let attempt = u32::from_le_bytes(bytes.get(5..9)?.try_into().ok()?);
    let len = usize::from(u16::from_le_bytes(
        bytes.get(FIXED..FIXED + 2)?.try_into().ok()?,
    ));
    Some((bytes.get(FIXED + 2..FIXED + 2 + len)?, attempt))
}

/// The tenant and start time of a binary record, without decoding the rest.
pub fn tenant_and_start(bytes: &[u8]) -> Option<(&str, u64)> {
    let view = View {
        bytes,
        strings: [(0, 0); 4],
        text: [""; 4],
    };
    if bytes.first() != Some(&VERSION) || bytes.len() < FIXED {
        return None;
    }
    let id_len = usize::from(u16::from_le_bytes(
        bytes.get(FIXED..FIXED + 2)?.try_into().ok()?,
    ));
    let at = FIXED + 2 + id_len;
    let len = usize::from(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
    let tenant = std::str::from_utf8(bytes.get(at + 2..at + 2 + len)?).ok()?;
    Some((tenant, view.number(field::START_MS)))
}

/// The record in `bytes`: the binary form, or JSON (see
/// `decode_json_of_earlier_builds`).
pub fn decode(bytes: &[u8]) -> Result<UsageRecord, DecodeError> {
    match bytes.first() {
        Some(b'{') => decode_json_of_earlier_builds(bytes),
        Some(&VERSION) => decode_binary(bytes),
        Some(other) => Err(DecodeError::Version(*other)),
        None => Err(DecodeError::Truncated),
    }
}

/// A record as builds before the binary form wrote it. Such records stay
/// in a data directory from then for good: the store's migration carries
/// ledger records as they are (it does not know their form), and
/// converting them would put this codec below the store.
fn decode_json_of_earlier_builds(bytes: &[u8]) -> Result<UsageRecord, DecodeError> {
    serde_json::from_slice(bytes).map_err(|e| DecodeError::Json(e.to_string()))
}

/// Indexes of the fixed-width numbers.
mod field {
    pub const START_MS: usize = 1;
    pub const WALL_NS: usize = 2;
    pub const CPU_NS: usize = 3;
    pub const PEAK_MEMORY: usize = 4;
    pub const MEMORY_LIMIT: usize = 5;
    pub const BILLED_MS: usize = 11;
    pub const GIB_US: usize = 12;
    pub const COST: usize = 13;
}

/// A binary record read in place: no allocation to look at it or to
/// price it.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    bytes: &'a [u8],
    /// Where each string starts and ends: invocation id, tenant, function, plan.
    strings: [(usize, usize); 4],
    /// The same strings, checked once.
    text: [&'a str; 4],
}

impl<'a> View<'a> {
    pub fn new(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        match bytes.first() {
            Some(&VERSION) => {}
            Some(other) => return Err(DecodeError::Version(*other)),
            None => return Err(DecodeError::Truncated),
        }
        if bytes.len() < FIXED {
            return Err(DecodeError::Truncated);
        }
        if trigger_of(bytes[1]).is_none() {
            return Err(DecodeError::Code("trigger", bytes[1]));
        }
        if usize::from(bytes[2]) >= OUTCOMES.len() {
            return Err(DecodeError::Code("outcome", bytes[2]));
        }
        let mut strings = [(0, 0); 4];
        let mut text = [""; 4];
        let mut at = FIXED;
        for (slot, text) in strings.iter_mut().zip(&mut text) {
            let len = bytes
                .get(at..at + 2)
                .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
                .ok_or(DecodeError::Truncated)?;
            let raw = bytes
                .get(at + 2..at + 2 + len)
                .ok_or(DecodeError::Truncated)?;
            *text = std::str::from_utf8(raw).map_err(|_| DecodeError::Utf8)?;
            *slot = (at + 2, at + 2 + len);
            at += 2 + len;
        }
        if at != bytes.len() {
            return Err(DecodeError::Trailing(bytes.len() - at));
        }
        Ok(Self {
            bytes,
            strings,
            text,
        })
    }

    fn string(&self, i: usize) -> &'a str {
        self.text[i]
    }

    fn number(&self, i: usize) -> u64 {
        let at = 9 + 8 * i;
        let mut b = [0; 8];
        b.copy_from_slice(&self.bytes[at..at + 8]);
        u64::from_le_bytes(b)
    }

    pub fn invocation_id(&self) -> &'a str {
        self.string(0)
    }
    pub fn tenant(&self) -> &'a str {
        self.string(1)
    }
    pub fn function(&self) -> &'a str {
        self.string(2)
    }
    pub fn attempt(&self) -> u32 {
        u32::from_le_bytes([self.bytes[5], self.bytes[6], self.bytes[7], self.bytes[8]])
    }
    pub fn outcome(&self) -> UsageOutcome {
        OUTCOMES[usize::from(self.bytes[2])]
    }
    pub fn start_ms(&self) -> u64 {
        self.number(field::START_MS)
    }
    pub fn wall_ns(&self) -> u64 {
        self.number(field::WALL_NS)
    }
    pub fn cpu_ns(&self) -> u64 {
        self.number(field::CPU_NS)
    }
    pub fn peak_memory_bytes(&self) -> u64 {
        self.number(field::PEAK_MEMORY)
    }
    pub fn memory_limit_bytes(&self) -> u64 {
        self.number(field::MEMORY_LIMIT)
    }
    pub fn cost_micros(&self) -> u64 {
        self.number(field::COST)
    }

    /// The ledger key of this attempt (see [`UsageRecord::key`]).
    pub fn key(&self) -> String {
        gust_core::usage::attempt_key(self.invocation_id(), self.attempt())
    }

    /// This record, priced: billed ms, GiB-µs, cost and plan set.
    pub fn priced(&self, billed_ms: u64, gib_us: u64, cost_micros: u64, plan: &str) -> Vec<u8> {
        let mut out = Vec::new();
        self.priced_into(billed_ms, gib_us, cost_micros, plan, &mut out);
        out
    }

    /// Appends [`View::priced`] to `out`.
    pub fn priced_into(
        &self,
        billed_ms: u64,
        gib_us: u64,
        cost_micros: u64,
        plan: &str,
        out: &mut Vec<u8>,
    ) {
        let mut cut = plan.len().min(usize::from(u16::MAX));
        while !plan.is_char_boundary(cut) {
            cut -= 1;
        }
        let plan = &plan.as_bytes()[..cut];
        let (plan_start, _) = self.strings[3];
        let base = out.len();
        out.reserve(plan_start + plan.len());
        out.extend_from_slice(&self.bytes[..plan_start - 2]);
        for (i, n) in [
            (field::BILLED_MS, billed_ms),
            (field::GIB_US, gib_us),
            (field::COST, cost_micros),
        ] {
            let at = base + 9 + 8 * i;
            out[at..at + 8].copy_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&(plan.len() as u16).to_le_bytes());
        out.extend_from_slice(plan);
    }

    /// Appends the ledger key of this attempt to `out` (see [`View::key`]).
    pub fn key_into(&self, out: &mut Vec<u8>) {
        gust_core::usage::attempt_key_into(self.invocation_id(), self.attempt(), out);
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let len = u16::from_le_bytes(self.array()?);
        let bytes = self.take(usize::from(len))?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::Utf8)
    }
}

/// The trigger a byte stands for.
fn trigger_of(code: u8) -> Option<Trigger> {
    match code {
        0 => Some(Trigger::Http),
        1 => Some(Trigger::Event),
        2 => Some(Trigger::Call),
        3 => Some(Trigger::Webhook),
        4 => Some(Trigger::Mqtt),
        5 => Some(Trigger::Nats),
        6 => Some(Trigger::Amqp),
        7 => Some(Trigger::Redis),
        8 => Some(Trigger::Postgres),
        9 => Some(Trigger::WebSocket),
        _ => None,
    }
}

fn decode_binary(bytes: &[u8]) -> Result<UsageRecord, DecodeError> {
    let mut r = Reader { bytes };
    r.u8()?;
    let code = r.u8()?;
    let trigger = trigger_of(code).ok_or(DecodeError::Code("trigger", code))?;
    let outcome_byte = r.u8()?;
    let outcome = *OUTCOMES
        .get(usize::from(outcome_byte))
        .ok_or(DecodeError::Code("outcome", outcome_byte))?;
    let status = u16::from_le_bytes(r.array()?);
    let attempt = u32::from_le_bytes(r.array()?);
    let mut numbers = [0u64; 14];
    for n in &mut numbers {
        *n = r.u64()?;
    }
    let [
        version,
        start_ms,
        wall_ns,
        cpu_ns,
        peak_memory_bytes,
        memory_limit_bytes,
        request_bytes,
        response_bytes,
        outbound_requests,
        outbound_bytes,
        kv_operations,
        billed_ms,
        gib_us,
        cost_micros,
    ] = numbers;
    let record = UsageRecord {
        invocation_id: r.string()?,
        attempt,
        tenant: r.string()?,
        function: r.string()?,
        version,
        trigger,
        start_ms,
        wall_ns,
        cpu_ns,
        peak_memory_bytes,
        memory_limit_bytes,
        request_bytes,
        response_bytes,
        outbound_requests,
        outbound_bytes,
        kv_operations,
        outcome,
        status,
        billed_ms,
        gib_us,
        cost_micros,
        plan: r.string()?,
    };
    if !r.bytes.is_empty() {
        return Err(DecodeError::Trailing(r.bytes.len()));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> UsageRecord {
        UsageRecord {
            invocation_id: "01JD8Z4Q6Y2V3W5X7Z9A1B2C3D".into(),
            attempt: 3,
            tenant: "acme".into(),
            function: "résumé".into(),
            version: 7,
            trigger: Trigger::Event,
            start_ms: 1_790_000_000_000,
            wall_ns: 1_500_001,
            cpu_ns: 900_000,
            peak_memory_bytes: 1 << 20,
            memory_limit_bytes: 128 << 20,
            request_bytes: 10,
            response_bytes: 20,
            outbound_requests: 1,
            outbound_bytes: 300,
            kv_operations: 4,
            outcome: UsageOutcome::TimedOut,
            status: 504,
            billed_ms: 2,
            gib_us: 250_000,
            cost_micros: 42,
            plan: "pro".into(),
        }
    }

    #[test]
    fn every_field_round_trips() {
        for outcome in OUTCOMES {
            let record = UsageRecord {
                outcome,
                ..sample()
            };
            let mut bytes = Vec::new();
            encode(&record, &mut bytes).unwrap();
            assert_eq!(decode(&bytes).unwrap(), record);
        }
        for trigger in Trigger::ALL {
            let record = UsageRecord {
                trigger,
                ..sample()
            };
            let mut bytes = Vec::new();
            encode(&record, &mut bytes).unwrap();
            assert_eq!(decode(&bytes).unwrap(), record);
            assert!(View::new(&bytes).is_ok(), "{trigger:?}");
        }
    }

    #[test]
    fn the_key_is_read_without_decoding() {
        let mut bytes = Vec::new();
        encode(&sample(), &mut bytes).unwrap();
        let (id, attempt) = key_of(&bytes).unwrap();
        assert_eq!((id, attempt), (sample().invocation_id.as_bytes(), 3));
        assert_eq!(key_of(&bytes[..FIXED]), None);
        assert_eq!(tenant_and_start(&bytes), Some(("acme", sample().start_ms)));
        for cut in 0..bytes.len() {
            // Up to the end of the tenant only.
            let whole = FIXED + 2 + sample().invocation_id.len() + 2 + 4;
            assert_eq!(
                tenant_and_start(&bytes[..cut]).is_some(),
                cut >= whole,
                "cut at {cut}"
            );
        }
        assert_eq!(key_of(b"{}"), None);
    }

    #[test]
    fn a_view_reads_and_prices_in_place() {
        let unpriced = UsageRecord {
            billed_ms: 0,
            gib_us: 0,
            cost_micros: 0,
            plan: String::new(),
            ..sample()
        };
        let mut bytes = Vec::new();
        encode(&unpriced, &mut bytes).unwrap();
        let view = View::new(&bytes).unwrap();
        assert_eq!(view.tenant(), "acme");
        assert_eq!(view.function(), "résumé");
        assert_eq!(view.key(), unpriced.key());
        assert_eq!(view.outcome(), UsageOutcome::TimedOut);
        assert_eq!(
            (view.start_ms(), view.wall_ns(), view.cpu_ns()),
            (unpriced.start_ms, unpriced.wall_ns, unpriced.cpu_ns)
        );
        assert_eq!(view.memory_limit_bytes(), 128 << 20);
        let priced = view.priced(2, 250_000, 42, "pro");
        assert_eq!(decode(&priced).unwrap(), sample());
        for cut in 0..bytes.len() {
            assert!(View::new(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn json_of_earlier_versions_still_decodes() {
        let json = serde_json::to_vec(&sample()).unwrap();
        assert_eq!(decode(&json).unwrap(), sample());
    }

    #[test]
    fn damaged_records_are_errors_never_panics() {
        let mut bytes = Vec::new();
        encode(&sample(), &mut bytes).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(decode(&trailing), Err(DecodeError::Trailing(1)));
        let mut bad_outcome = bytes.clone();
        bad_outcome[2] = 9;
        assert_eq!(decode(&bad_outcome), Err(DecodeError::Code("outcome", 9)));
        assert_eq!(decode(&[7]), Err(DecodeError::Version(7)));
        let long = UsageRecord {
            function: "x".repeat(70_000),
            ..sample()
        };
        assert_eq!(encode(&long, &mut Vec::new()), Err(DecodeError::TooLong));
    }
}
