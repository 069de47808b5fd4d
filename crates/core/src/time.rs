//! Calendar arithmetic on Unix milliseconds, without a time library: what
//! log lines, CloudEvents `ce-time` and schedules need; and the one
//! duration syntax (`30s`, `10m`) every flag, field and parameter uses. Pure.

/// Days since 1970-01-01 → (year, month 1–12, day 1–31), proleptic
/// Gregorian (Howard Hinnant's civil-from-days).
pub fn civil_from_days(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Unix ms → (day of the week, 0 for Monday; minute of the day), UTC.
pub fn weekday_and_minute(unix_ms: u64) -> (u8, u16) {
    let minutes = unix_ms / 60_000;
    // 1970-01-01 was a Thursday.
    (((minutes / 1440 + 3) % 7) as u8, (minutes % 1440) as u16)
}

/// Unix milliseconds as RFC 3339 in UTC: `2026-11-26T23:59:59.123Z`.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// A duration that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error(
        "`{0}` is not a duration: write a whole number and a unit (ms, s, m, h or d), such as 500ms, 30s, 10m, 2h or 7d"
    )]
    Malformed(String),
    #[error("`{0}` is too long a duration")]
    TooLong(String),
}

/// The one duration syntax of the CLI, the API and `gust.toml`: a whole
/// number and a unit, `500ms`, `30s`, `10m`, `2h` or `7d`, → milliseconds.
/// A bare number is refused: `5` could mean any unit.
pub fn parse_duration_ms(text: &str) -> Result<u64, DurationError> {
    parse(text, None)
}

/// [`parse_duration_ms`], where a bare number is seconds: token lifetimes
/// (`--expires-in 3600`), as scripts already pass them.
pub fn parse_duration_ms_or_seconds(text: &str) -> Result<u64, DurationError> {
    parse(text, Some(1000))
}

fn parse(text: &str, bare_scale: Option<u64>) -> Result<u64, DurationError> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let scale = match unit {
        "ms" => Some(1),
        "" => bare_scale,
        "s" => Some(1000),
        "m" => Some(60_000),
        "h" => Some(3_600_000),
        "d" => Some(86_400_000),
        _ => None,
    };
    let Some(scale) = scale.filter(|_| !number.is_empty()) else {
        return Err(DurationError::Malformed(text.to_string()));
    };
    // Only digits are left: a number that does not fit is too long.
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| DurationError::TooLong(text.to_string()))
}

/// Milliseconds in the largest unit that writes them exactly: `10m`, `1500ms`.
pub fn format_duration_ms(ms: u64) -> String {
    for (unit, scale) in [("h", 3_600_000), ("m", 60_000), ("s", 1000)] {
        if ms > 0 && ms.is_multiple_of(scale) {
            return format!("{}{unit}", ms / scale);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_737_599_123), "2026-11-26T23:59:59.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn weekdays_start_on_monday() {
        // 2026-11-27 was a Friday; 13:44 UTC.
        assert_eq!(weekday_and_minute(1_795_787_040_000), (4, 13 * 60 + 44));
        assert_eq!(weekday_and_minute(0), (3, 0));
    }

    #[test]
    fn durations_round_trip() {
        for (text, ms) in [
            ("500ms", 500),
            ("30s", 30_000),
            ("10m", 600_000),
            ("2h", 7_200_000),
        ] {
            assert_eq!(parse_duration_ms(text), Ok(ms));
            assert_eq!(format_duration_ms(ms), text);
        }
        assert_eq!(format_duration_ms(0), "0ms");
        assert_eq!(format_duration_ms(90_000), "90s");
    }

    #[test]
    fn durations_take_days_and_spaces_and_bare_seconds_only_where_asked() {
        assert_eq!(parse_duration_ms("30d"), Ok(30 * 86_400_000));
        assert_eq!(parse_duration_ms("0ms"), Ok(0));
        for bare in ["10", "0"] {
            assert_eq!(
                parse_duration_ms(bare),
                Err(DurationError::Malformed(bare.to_string()))
            );
        }
        assert_eq!(parse_duration_ms_or_seconds("3600"), Ok(3_600_000));
        assert_eq!(parse_duration_ms_or_seconds("12h"), Ok(12 * 3_600_000));
        assert!(parse_duration_ms_or_seconds("12x").is_err());
        assert_eq!(parse_duration_ms(" 1s "), Ok(1000));
        assert_eq!(parse_duration_ms("90m"), Ok(5_400_000));
    }

    #[test]
    fn bad_durations_get_one_message_naming_the_units() {
        for bad in ["m", "10x", "-1s", "1.5s", "1 s", "s10", "", "10 m", "1h30m"] {
            let err = parse_duration_ms(bad).unwrap_err();
            assert_eq!(err, DurationError::Malformed(bad.to_string()));
            assert!(err.to_string().contains("ms, s, m, h or d"), "{err}");
        }
        for long in ["99999999999999999999h", "18446744073709551615d"] {
            assert_eq!(
                parse_duration_ms(long),
                Err(DurationError::TooLong(long.to_string()))
            );
        }
    }
}
