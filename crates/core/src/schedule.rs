//! Schedules: when a function fires on its own. A schedule is a cron
//! expression with seconds (`sec min hour day-of-month month day-of-week`,
//! or the classic five fields with seconds = 0) or a fixed interval
//! (`@every 30s`, `@every 5m`, `@every 1h`), evaluated in a time zone: UTC,
//! a fixed offset (`+02:00`), or any [`Zone`] whose offset changes (the
//! caller supplies the rules, e.g. from the tz database). Pure: the next
//! tick is computed from the last one.
//!
//! Daylight-saving changes, for cron schedules in a zone that has them:
//! a local time that does not exist (clocks go forward over it) is
//! skipped; a local time that happens twice (clocks go back) fires once,
//! at its first occurrence — except for schedules that fire every hour
//! (hour field `*`), which keep firing through the repeated hour as real
//! time passes. Intervals (`@every`) ignore zones.

use serde::{Deserialize, Serialize};

/// Why a schedule was refused; says which field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid schedule `{expr}`: {reason}")]
pub struct ScheduleError {
    pub expr: String,
    pub reason: String,
}

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    Cron(Cron),
    /// Every so many milliseconds, counted from the Unix epoch (so ticks
    /// are the same on every node and across restarts).
    Every(u64),
}

/// A cron expression: the allowed values of each field, as bit sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    seconds: u64,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Both day fields restricted: a day matches if either does (cron's rule).
    day_or: bool,
}

/// A time zone as a fixed offset from UTC, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Offset(pub i32);

/// A time zone as a schedule sees it.
pub trait Zone {
    /// Offset from UTC, in seconds, in force at `utc_s` (Unix seconds).
    fn offset_at(&self, utc_s: i64) -> i32;
    /// The first instant after `utc_s` at which the offset changes.
    fn next_change(&self, utc_s: i64) -> Option<i64>;
}

impl Zone for Offset {
    fn offset_at(&self, _utc_s: i64) -> i32 {
        self.0
    }

    fn next_change(&self, _utc_s: i64) -> Option<i64> {
        None
    }
}

impl Offset {
    /// Parses `UTC`, `Z`, `+02:00`, `-0530`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("utc") || t == "Z" || t.is_empty() {
            return Ok(Self(0));
        }
        let (sign, rest) = match t.as_bytes().first() {
            Some(b'+') => (1, &t[1..]),
            Some(b'-') => (-1, &t[1..]),
            _ => {
                return Err(format!(
                    "time zone `{t}` is not supported: use UTC or a fixed offset such as +02:00"
                ));
            }
        };
        let digits: String = rest.chars().filter(|c| *c != ':').collect();
        if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("time zone offset `{t}` must look like +hh:mm"));
        }
        let hours: i32 = digits[..2].parse().map_err(|_| "bad hours".to_string())?;
        let minutes: i32 = digits[2..].parse().map_err(|_| "bad minutes".to_string())?;
        if hours > 14 || minutes > 59 {
            return Err(format!("time zone offset `{t}` is out of range"));
        }
        Ok(Self(sign * (hours * 3600 + minutes * 60)))
    }
}

impl Schedule {
    pub fn parse(expr: &str) -> Result<Self, ScheduleError> {
        let fail = |reason: String| ScheduleError {
            expr: expr.to_string(),
            reason,
        };
        let trimmed = expr.trim();
        if let Some(every) = trimmed.strip_prefix("@every") {
            let ms = interval_ms(every.trim()).map_err(fail)?;
            return Ok(Schedule::Every(ms));
        }
        let fields: Vec<&str> = trimmed.split_whitespace().collect();
        let fields: Vec<&str> = match fields.len() {
            6 => fields,
            5 => std::iter::once("0").chain(fields).collect(),
            n => {
                return Err(fail(format!(
                    "expected 6 fields (sec min hour day month weekday) or 5, found {n}"
                )));
            }
        };
        let names = [
            "second",
            "minute",
            "hour",
            "day of month",
            "month",
            "day of week",
        ];
        let ranges = [(0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 7)];
        let mut sets = [0u64; 6];
        for i in 0..6 {
            sets[i] = parse_field(fields[i], ranges[i].0, ranges[i].1)
                .map_err(|why| fail(format!("{} field `{}`: {why}", names[i], fields[i])))?;
        }
        // 7 is Sunday too.
        if sets[5] & (1 << 7) != 0 {
            sets[5] |= 1;
            sets[5] &= !(1 << 7);
        }
        Ok(Schedule::Cron(Cron {
            seconds: sets[0],
            minutes: sets[1],
            hours: sets[2],
            days: sets[3],
            months: sets[4],
            weekdays: sets[5],
            day_or: fields[3] != "*" && fields[5] != "*",
        }))
    }

    /// The first tick strictly after `after_ms` (Unix ms), in `zone`'s
    /// civil time. `None` if none comes within about five years.
    pub fn next_after(&self, after_ms: u64, zone: &dyn Zone) -> Option<u64> {
        match self {
            Schedule::Every(ms) => Some((after_ms / ms + 1) * ms),
            Schedule::Cron(cron) => cron.next_in_zone(after_ms, zone),
        }
    }
}

/// `@every`'s interval: a duration of at least 100ms.
fn interval_ms(text: &str) -> Result<u64, String> {
    let ms = crate::time::parse_duration_ms(text).map_err(|e| e.to_string())?;
    if ms < 100 {
        return Err("an interval must be at least 100ms".into());
    }
    Ok(ms)
}

fn parse_field(field: &str, min: u64, max: u64) -> Result<u64, String> {
    let mut set = 0u64;
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u64>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("step `{s}` must be a positive number"))?,
            ),
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (number(a, min, max)?, number(b, min, max)?)
        } else {
            let n = number(range, min, max)?;
            (n, if part.contains('/') { max } else { n })
        };
        if lo > hi {
            return Err(format!("range {lo}-{hi} is backwards"));
        }
        let mut v = lo;
        while v <= hi {
            set |= 1 << v;
            v += step;
        }
    }
    Ok(set)
}

fn number(text: &str, min: u64, max: u64) -> Result<u64, String> {
    let n: u64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if n < min || n > max {
        return Err(format!("{n} is outside {min}-{max}"));
    }
    Ok(n)
}

impl Cron {
    /// The next tick in a zone whose offset may change: compute it with the
    /// offset in force now; if the offset changes before that tick, start
    /// again from the change with the new offset (see the module doc for
    /// what happens to skipped and repeated local times).
    fn next_in_zone(&self, after_ms: u64, zone: &dyn Zone) -> Option<u64> {
        let mut from_ms = after_ms;
        // Each round passes one offset change; a few per year at most.
        for _ in 0..64 {
            let from_s = i64::try_from(from_ms / 1000).ok()?;
            let offset = zone.offset_at(from_s + 1);
            let tick = self.next_after(from_ms, Offset(offset))?;
            let tick_s = i64::try_from(tick / 1000).ok()?;
            let Some(change) = zone.next_change(from_s + 1).filter(|c| *c <= tick_s) else {
                return Some(tick);
            };
            let new_offset = zone.offset_at(change);
            let every_hour = self.hours == (1 << 24) - 1;
            let resume_s = if new_offset < offset && !every_hour {
                // Clocks went back: the local times just passed come again;
                // resume where local time catches up with where it was.
                change + i64::from(offset - new_offset)
            } else {
                change
            };
            from_ms = u64::try_from(resume_s)
                .ok()?
                .checked_mul(1000)?
                .checked_sub(1)?;
        }
        None
    }

    fn day_matches(&self, days_since_epoch: i64) -> bool {
        let (_, month, day) = crate::time::civil_from_days(days_since_epoch);
        if self.months & (1 << month) == 0 {
            return false;
        }
        // 1970-01-01 was a Thursday (4).
        let weekday = (days_since_epoch + 4).rem_euclid(7) as u64;
        let by_day = self.days & (1 << day) != 0;
        let by_weekday = self.weekdays & (1 << weekday) != 0;
        if self.day_or {
            by_day || by_weekday
        } else {
            by_day && by_weekday
        }
    }

    fn next_after(&self, after_ms: u64, offset: Offset) -> Option<u64> {
        // Work in civil seconds of the offset's clock.
        let start = (after_ms / 1000) as i64 + 1 + i64::from(offset.0);
        let first_day = start.div_euclid(86_400);
        for day in first_day..first_day + 5 * 366 {
            let from = if day == first_day {
                start.rem_euclid(86_400)
            } else {
                0
            };
            if self.day_matches(day)
                && let Some(second_of_day) = self.first_time_from(from)
            {
                let civil = day * 86_400 + second_of_day as i64;
                let utc = civil - i64::from(offset.0);
                return u64::try_from(utc).ok().map(|s| s * 1000);
            }
        }
        None
    }

    /// The first matching second of a day at or after `from` (seconds since midnight).
    fn first_time_from(&self, from: i64) -> Option<u64> {
        let from = from as u64;
        for hour in from / 3600..24 {
            if self.hours & (1 << hour) == 0 {
                continue;
            }
            for minute in 0..60 {
                if self.minutes & (1 << minute) == 0 {
                    continue;
                }
                let base = hour * 3600 + minute * 60;
                if base + 59 < from {
                    continue;
                }
                for second in 0..60 {
                    if self.seconds & (1 << second) != 0 && base + second >= from {
                        return Some(base + second);
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-26T23:59:58Z, a Thursday.
    const T: u64 = 1_795_737_598_000;

    fn next(expr: &str, after: u64) -> u64 {
        Schedule::parse(expr)
            .unwrap()
            .next_after(after, &Offset(0))
            .unwrap()
    }

    #[test]
    fn every_second_and_every_five() {
        assert_eq!(next("* * * * * *", T), T + 1000);
        assert_eq!(next("*/5 * * * * *", T), T + 2000); // :00 of the next minute
        assert_eq!(next("*/5 * * * * *", T + 2000), T + 7000);
    }

    #[test]
    fn five_fields_mean_seconds_zero() {
        // Next minute boundary is midnight.
        assert_eq!(next("* * * * *", T), T + 2000);
        assert_eq!(
            next("30 2 * * *", T),
            T + 2000 + (2 * 3600 + 30 * 60) * 1000
        );
    }

    #[test]
    fn days_months_and_weekdays() {
        // Next Monday (1) 09:00:00 after Thursday 23:59:58 is 4 days later.
        let monday_nine = T + 2000 + (3 * 86_400 + 9 * 3600) * 1000;
        assert_eq!(next("0 0 9 * * 1", T), monday_nine);
        assert_eq!(next("0 0 9 * * 1-1", T), monday_nine);
        // 1st of January at midnight: 2027-01-01T00:00:00Z.
        assert_eq!(next("0 0 0 1 1 *", T), 1_798_761_600_000);
        // With both day fields set either may match (cron's rule): Monday
        // the 30th comes before the 1st of December.
        assert_eq!(next("0 0 0 1 * 1", T), T + 2000 + 3 * 86_400 * 1000);
        // Sunday as 7.
        assert_eq!(next("0 0 0 * * 7", T), T + 2000 + 2 * 86_400 * 1000);
    }

    #[test]
    fn offsets_shift_civil_time() {
        // 09:00 at +02:00 is 07:00Z.
        let schedule = Schedule::parse("0 0 9 * * *").unwrap();
        let plus_two = Offset::parse("+02:00").unwrap();
        assert_eq!(plus_two, Offset(7200));
        assert_eq!(
            schedule.next_after(T, &plus_two).unwrap(),
            T + 2000 + 7 * 3600 * 1000
        );
        assert!(Offset::parse("Europe/Paris").is_err());
        assert_eq!(Offset::parse("UTC").unwrap(), Offset(0));
        assert_eq!(Offset::parse("-0530").unwrap(), Offset(-19_800));
    }

    /// Central European time around its 2027 changes: +01:00, then +02:00
    /// from 2027-03-28T01:00Z, then +01:00 again from 2027-10-31T01:00Z.
    struct Cet;
    const SPRING: i64 = 1_806_195_600;
    const AUTUMN: i64 = 1_824_944_400;

    impl Zone for Cet {
        fn offset_at(&self, utc_s: i64) -> i32 {
            if (SPRING..AUTUMN).contains(&utc_s) {
                7200
            } else {
                3600
            }
        }
        fn next_change(&self, utc_s: i64) -> Option<i64> {
            [SPRING, AUTUMN].into_iter().find(|c| *c > utc_s)
        }
    }

    fn ticks(expr: &str, from_s: i64, until_s: i64) -> Vec<i64> {
        let schedule = Schedule::parse(expr).unwrap();
        let mut out = Vec::new();
        let mut at = from_s as u64 * 1000;
        while let Some(next) = schedule.next_after(at, &Cet) {
            if next / 1000 > until_s as u64 {
                break;
            }
            out.push((next / 1000) as i64);
            at = next;
        }
        out
    }

    #[test]
    fn a_named_zone_follows_its_offset_changes() {
        // 09:00 local: 08:00Z in winter, 07:00Z in summer.
        let nine = ticks("0 0 9 * * *", SPRING - 86_400, SPRING + 86_400);
        assert_eq!(nine, [SPRING - 86_400 + 7 * 3600, SPRING + 6 * 3600]);
        // 02:30 local does not exist on the spring day: skipped.
        let half_two = ticks("0 30 2 * * *", SPRING - 3 * 3600, SPRING + 86_400);
        assert_eq!(half_two, [SPRING + 23 * 3600 + 1800]);
        // 02:30 local happens twice on the autumn day: fires once, the first time.
        let twice = ticks("0 30 2 * * *", AUTUMN - 3 * 3600, AUTUMN + 3 * 3600);
        assert_eq!(twice, [AUTUMN - 1800]);
        // An hourly schedule keeps firing through the repeated hour.
        let hourly = ticks("0 0 * * * *", AUTUMN - 3601, AUTUMN + 3600);
        assert_eq!(hourly, [AUTUMN - 3600, AUTUMN, AUTUMN + 3600]);
    }

    #[test]
    fn intervals_are_aligned_to_the_epoch() {
        assert_eq!(next("@every 5s", T), T + 2000);
        assert_eq!(next("@every 1m", T), T + 2000);
        assert_eq!(next("@every 250ms", 1_000), 1_250);
        assert!(Schedule::parse("@every 5").is_err());
        assert!(Schedule::parse("@every 10ms").is_err());
    }

    #[test]
    fn faults_are_named() {
        let e = Schedule::parse("61 * * * * *").unwrap_err();
        assert!(e.reason.contains("second field `61`"), "{e}");
        let e = Schedule::parse("* * * *").unwrap_err();
        assert!(e.reason.contains("found 4"), "{e}");
        let e = Schedule::parse("*/0 * * * * *").unwrap_err();
        assert!(e.reason.contains("step"), "{e}");
        let e = Schedule::parse("* * * 5-2 * *").unwrap_err();
        assert!(e.reason.contains("backwards"), "{e}");
        assert!(
            Schedule::parse("0 0 0 30 2 *")
                .unwrap()
                .next_after(T, &Offset(0))
                .is_none()
        );
    }
}
