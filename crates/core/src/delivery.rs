//! The one delivery policy every event goes through, whatever its trigger:
//! how an attempt's result is judged, when the next attempt happens, and when
//! an event gives up and goes to the dead-letter queue. Pure decisions; the
//! driver that applies them lives in `gust-events`.

use serde::{Deserialize, Serialize};

/// Per-function delivery settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Delay before the second attempt, in ms; doubled each time after.
    pub initial_backoff_ms: u64,
    /// Longest delay between two attempts, in ms.
    pub max_backoff_ms: u64,
    /// An event older than this (since it was accepted) is not tried again, in ms.
    pub max_age_ms: u64,
    /// Attempts of one function's events running at once.
    pub concurrency: u32,
    /// A function that gets an event for each delivered event (data: the
    /// function's response body).
    pub on_success: Option<String>,
    /// A function that gets an event for each dead-lettered event (data: a
    /// JSON report of the failure).
    pub on_failure: Option<String>,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff_ms: 1_000,
            max_backoff_ms: 60_000,
            max_age_ms: 6 * 60 * 60 * 1000,
            concurrency: 16,
            on_success: None,
            on_failure: None,
        }
    }
}

/// How one attempt ended, as far as delivery is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    Succeeded,
    /// Worth trying again: 429, 5xx, a trap, a timeout, no instance free.
    Retryable,
    /// Trying again would fail the same way: other 4xx.
    Permanent,
}

impl AttemptResult {
    /// Judges an attempt by the status the function answered (or the
    /// gateway answered for it: 500 for a trap, 504 for a timeout).
    pub fn from_status(status: u16) -> Self {
        match status {
            200..=299 => Self::Succeeded,
            429 | 500..=599 => Self::Retryable,
            _ => Self::Permanent,
        }
    }
}

/// What to do with an event after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Delivered: forget it.
    Done,
    /// Try again after this many ms.
    RetryAfter(u64),
    /// Give up: to the dead-letter queue, for this reason.
    DeadLetter(DeadReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeadReason {
    AttemptsExhausted,
    TooOld,
    PermanentFailure,
}

impl DeliveryPolicy {
    /// The delay after failed attempt number `attempt` (1-based):
    /// exponential, capped, with "equal jitter" — half fixed, half drawn
    /// from `jitter` in [0, 1) — so retries of many events spread out
    /// without any retry coming much earlier than planned.
    pub fn backoff_ms(&self, attempt: u32, jitter: f64) -> u64 {
        let exponent = attempt.saturating_sub(1).min(32);
        let base = self
            .initial_backoff_ms
            .saturating_mul(1u64 << exponent)
            .min(self.max_backoff_ms);
        let half = base / 2;
        half + (half as f64 * jitter.clamp(0.0, 1.0)) as u64
    }

    /// Decides what follows attempt number `attempt` (1-based) of an event
    /// accepted `age_ms` ago.
    pub fn decide(
        &self,
        attempt: u32,
        result: AttemptResult,
        age_ms: u64,
        jitter: f64,
    ) -> Decision {
        match result {
            AttemptResult::Succeeded => Decision::Done,
            AttemptResult::Permanent => Decision::DeadLetter(DeadReason::PermanentFailure),
            AttemptResult::Retryable if attempt >= self.max_attempts => {
                Decision::DeadLetter(DeadReason::AttemptsExhausted)
            }
            AttemptResult::Retryable => {
                let delay = self.backoff_ms(attempt, jitter);
                if age_ms.saturating_add(delay) > self.max_age_ms {
                    Decision::DeadLetter(DeadReason::TooOld)
                } else {
                    Decision::RetryAfter(delay)
                }
            }
        }
    }

    /// Checks the settings are usable.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 || self.max_attempts > 100 {
            return Err("max_attempts must be between 1 and 100".into());
        }
        if self.concurrency == 0 || self.concurrency > 1000 {
            return Err("concurrency must be between 1 and 1000".into());
        }
        if self.initial_backoff_ms > self.max_backoff_ms {
            return Err("initial_backoff_ms must not exceed max_backoff_ms".into());
        }
        if self.max_age_ms == 0 {
            return Err("max_age_ms must be above 0".into());
        }
        for destination in [&self.on_success, &self.on_failure].into_iter().flatten() {
            crate::FunctionName::new(destination.clone())
                .map_err(|e| format!("destination: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> DeliveryPolicy {
        DeliveryPolicy {
            max_attempts: 4,
            initial_backoff_ms: 100,
            max_backoff_ms: 1_000,
            max_age_ms: 10_000,
            concurrency: 1,
            on_success: None,
            on_failure: None,
        }
    }

    #[test]
    fn statuses_are_judged_as_the_contract_says() {
        assert_eq!(AttemptResult::from_status(200), AttemptResult::Succeeded);
        assert_eq!(AttemptResult::from_status(204), AttemptResult::Succeeded);
        assert_eq!(AttemptResult::from_status(429), AttemptResult::Retryable);
        assert_eq!(AttemptResult::from_status(500), AttemptResult::Retryable);
        assert_eq!(AttemptResult::from_status(503), AttemptResult::Retryable);
        assert_eq!(AttemptResult::from_status(504), AttemptResult::Retryable);
        assert_eq!(AttemptResult::from_status(400), AttemptResult::Permanent);
        assert_eq!(AttemptResult::from_status(404), AttemptResult::Permanent);
        assert_eq!(AttemptResult::from_status(302), AttemptResult::Permanent);
    }

    #[test]
    fn backoff_doubles_is_capped_and_jitter_stays_within_half() {
        let p = policy();
        assert_eq!(p.backoff_ms(1, 0.0), 50);
        assert_eq!(p.backoff_ms(1, 0.999_999), 99);
        assert_eq!(p.backoff_ms(2, 0.0), 100);
        assert_eq!(p.backoff_ms(3, 0.0), 200);
        assert_eq!(p.backoff_ms(5, 0.0), 500);
        assert_eq!(p.backoff_ms(50, 1.0), 1_000);
        for attempt in 1..10 {
            for jitter in [0.0, 0.3, 0.7, 1.0] {
                let d = p.backoff_ms(attempt, jitter);
                let full = (100u64 << (attempt - 1)).min(1_000);
                assert!(d >= full / 2 && d <= full, "{attempt} {jitter} {d}");
            }
        }
    }

    #[test]
    fn decisions() {
        let p = policy();
        assert_eq!(
            p.decide(1, AttemptResult::Succeeded, 0, 0.5),
            Decision::Done
        );
        assert_eq!(
            p.decide(1, AttemptResult::Permanent, 0, 0.5),
            Decision::DeadLetter(DeadReason::PermanentFailure)
        );
        assert_eq!(
            p.decide(1, AttemptResult::Retryable, 0, 0.0),
            Decision::RetryAfter(50)
        );
        assert_eq!(
            p.decide(3, AttemptResult::Retryable, 0, 0.0),
            Decision::RetryAfter(200)
        );
        assert_eq!(
            p.decide(4, AttemptResult::Retryable, 0, 0.0),
            Decision::DeadLetter(DeadReason::AttemptsExhausted)
        );
        assert_eq!(
            p.decide(2, AttemptResult::Retryable, 9_990, 0.0),
            Decision::DeadLetter(DeadReason::TooOld)
        );
    }

    #[test]
    fn validation() {
        assert!(DeliveryPolicy::default().validate().is_ok());
        let mut p = policy();
        p.max_attempts = 0;
        assert!(p.validate().is_err());
        let mut p = policy();
        p.initial_backoff_ms = 5_000;
        assert!(p.validate().is_err());
    }
}
