//! Which invocation log records a search asks for: a time window, text in
//! what the invocation printed, one invocation, a class of status. Pure:
//! the control API reads records and asks [`LogFilter::matches`].

use crate::{LogRecord, Outcome};

/// A status a search asks for: one code (`404`) or a class (`5xx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Code(u16),
    /// `N`xx: 100 × N ≤ status < 100 × (N + 1).
    Class(u16),
}

impl std::str::FromStr for StatusFilter {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!("`{text}` is not a status: give a code such as `404` or a class such as `5xx`")
        };
        let text = text.trim().to_ascii_lowercase();
        if let Some(class) = text.strip_suffix("xx") {
            let class: u16 = class.parse().map_err(|_| bad())?;
            return (1..=5)
                .contains(&class)
                .then_some(Self::Class(class))
                .ok_or_else(bad);
        }
        let code: u16 = text.parse().map_err(|_| bad())?;
        (100..=599)
            .contains(&code)
            .then_some(Self::Code(code))
            .ok_or_else(bad)
    }
}

impl StatusFilter {
    fn matches(self, status: u16) -> bool {
        match self {
            Self::Code(code) => status == code,
            Self::Class(class) => status / 100 == class,
        }
    }
}

/// The status a record stands for: the one answered, else (records
/// written before statuses were kept) what its outcome implies.
pub fn record_status(record: &LogRecord) -> u16 {
    if record.status != 0 {
        return record.status;
    }
    match record.outcome {
        Outcome::Completed => 0,
        Outcome::Trapped { .. } | Outcome::Failed { .. } => 500,
        Outcome::TimedOut => 504,
        Outcome::Cancelled => 499,
    }
}

/// A search over a function's log records; every part given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFilter {
    /// Records at or after this time (Unix ms).
    pub since_ms: Option<u64>,
    /// Records before this time (Unix ms).
    pub until_ms: Option<u64>,
    /// Text in its stdout, stderr or failure message (as is, case and all).
    pub grep: Option<String>,
    /// Exactly this invocation.
    pub invocation: Option<String>,
    pub status: Option<StatusFilter>,
}

impl LogFilter {
    /// Whether it asks for anything (else every record matches).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub fn matches(&self, record: &LogRecord) -> bool {
        if self.since_ms.is_some_and(|since| record.time_ms < since)
            || self.until_ms.is_some_and(|until| record.time_ms >= until)
            || self
                .invocation
                .as_deref()
                .is_some_and(|id| record.invocation_id != id)
            || self
                .status
                .is_some_and(|status| !status.matches(record_status(record)))
        {
            return false;
        }
        let Some(text) = self.grep.as_deref() else {
            return true;
        };
        let message = match &record.outcome {
            Outcome::Trapped { message } | Outcome::Failed { message } => message.as_str(),
            _ => "",
        };
        record.stdout.contains(text) || record.stderr.contains(text) || message.contains(text)
    }

    /// Whether a stored record (its JSON) can match the text searched for,
    /// read without decoding it: `false` means it surely does not. Text
    /// that JSON would escape is not looked for (always `true`).
    pub fn may_match_raw(&self, json: &[u8]) -> bool {
        let Some(text) = self.grep.as_deref() else {
            return true;
        };
        if text.is_empty()
            || text
                .chars()
                .any(|c| c == '"' || c == '\\' || c.is_control())
        {
            return true;
        }
        memchr::memmem::find(json, text.as_bytes()).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(time_ms: u64, id: &str, status: u16, outcome: Outcome, stdout: &str) -> LogRecord {
        LogRecord {
            invocation_id: id.into(),
            time_ms,
            version: 1,
            outcome,
            duration_us: 5,
            peak_memory_bytes: 0,
            stdout: stdout.into(),
            stderr: String::new(),
            truncated: false,
            status,
        }
    }

    #[test]
    fn statuses_parse_as_codes_or_classes_and_nothing_else() {
        assert_eq!("5xx".parse(), Ok(StatusFilter::Class(5)));
        assert_eq!("4XX".parse(), Ok(StatusFilter::Class(4)));
        assert_eq!("404".parse(), Ok(StatusFilter::Code(404)));
        for bad in ["6xx", "0xx", "xx", "99", "600", "abc", "", "5x"] {
            assert!(bad.parse::<StatusFilter>().is_err(), "{bad}");
        }
    }

    #[test]
    fn every_part_given_must_match() {
        let ok = record(1_000, "a", 200, Outcome::Completed, "hello needle\n");
        let failed = record(
            2_000,
            "b",
            500,
            Outcome::Trapped {
                message: "wasm trap: needle".into(),
            },
            "",
        );
        // Written before statuses were kept: the outcome stands for it.
        let old_timeout = record(3_000, "c", 0, Outcome::TimedOut, "");
        let all = [&ok, &failed, &old_timeout];
        let hits = |filter: LogFilter| -> Vec<&str> {
            all.iter()
                .filter(|r| filter.matches(r))
                .map(|r| r.invocation_id.as_str())
                .collect()
        };
        assert_eq!(hits(LogFilter::default()), ["a", "b", "c"]);
        let window = LogFilter {
            since_ms: Some(1_000),
            until_ms: Some(3_000),
            ..LogFilter::default()
        };
        assert_eq!(hits(window), ["a", "b"]);
        let grep = LogFilter {
            grep: Some("needle".into()),
            ..LogFilter::default()
        };
        assert_eq!(hits(grep), ["a", "b"]);
        let errors = LogFilter {
            status: Some(StatusFilter::Class(5)),
            ..LogFilter::default()
        };
        assert_eq!(hits(errors), ["b", "c"]);
        let both = LogFilter {
            grep: Some("needle".into()),
            status: Some(StatusFilter::Code(200)),
            ..LogFilter::default()
        };
        assert_eq!(hits(both), ["a"]);
        let one = LogFilter {
            invocation: Some("c".into()),
            ..LogFilter::default()
        };
        assert_eq!(hits(one), ["c"]);
        let case = LogFilter {
            grep: Some("Needle".into()),
            ..LogFilter::default()
        };
        assert!(hits(case).is_empty());
    }

    #[test]
    fn the_raw_check_never_rules_out_a_match() {
        let filter = |text: &str| LogFilter {
            grep: Some(text.into()),
            ..LogFilter::default()
        };
        let json = serde_json::to_vec(&record(
            1,
            "a",
            200,
            Outcome::Completed,
            "say \"hi\"\tnow é",
        ))
        .unwrap();
        assert!(filter("now é").may_match_raw(&json));
        assert!(!filter("absent").may_match_raw(&json));
        // Escaped in JSON: not looked for raw.
        assert!(filter("\"hi\"").may_match_raw(&json));
        assert!(filter("\tnow").may_match_raw(&json));
    }
}
