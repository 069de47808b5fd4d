//! Schedules' time zones: UTC, a fixed offset, or an IANA name (`Europe/Paris`)
//! looked up in the tz database (the system's zoneinfo, else a copy bundled
//! in the binary). The tick arithmetic itself is pure code in
//! `gust_core::schedule`; this only answers its questions about a zone.

use gust_core::schedule::{Offset, Zone};

/// A schedule's time zone.
#[derive(Debug, Clone)]
pub enum TimeZone {
    Fixed(Offset),
    Named(jiff::tz::TimeZone),
}

impl TimeZone {
    /// `UTC`, `+02:00`, or a tz database name such as `America/New_York`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Ok(offset) = Offset::parse(text) {
            return Ok(Self::Fixed(offset));
        }
        let name = text.trim();
        if name.starts_with(['+', '-']) {
            // A malformed offset: `Offset::parse`'s message says what is wrong.
            return Offset::parse(name).map(Self::Fixed);
        }
        jiff::tz::TimeZone::get(name).map(Self::Named).map_err(|_| {
            format!(
                "unknown time zone `{name}`: use a tz database name such as Europe/Paris, UTC, or a fixed offset such as +02:00"
            )
        })
    }
}

fn timestamp(utc_s: i64) -> jiff::Timestamp {
    let clamped = utc_s.clamp(
        jiff::Timestamp::MIN.as_second(),
        jiff::Timestamp::MAX.as_second(),
    );
    jiff::Timestamp::from_second(clamped).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

impl Zone for TimeZone {
    fn offset_at(&self, utc_s: i64) -> i32 {
        match self {
            Self::Fixed(offset) => offset.0,
            Self::Named(tz) => tz.to_offset(timestamp(utc_s)).seconds(),
        }
    }

    fn next_change(&self, utc_s: i64) -> Option<i64> {
        match self {
            Self::Fixed(_) => None,
            Self::Named(tz) => tz
                .following(timestamp(utc_s))
                .next()
                .map(|t| t.timestamp().as_second()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gust_core::schedule::Schedule;

    #[test]
    fn names_offsets_and_faults() {
        assert!(matches!(
            TimeZone::parse("UTC"),
            Ok(TimeZone::Fixed(Offset(0)))
        ));
        assert!(matches!(
            TimeZone::parse("+02:00"),
            Ok(TimeZone::Fixed(Offset(7200)))
        ));
        assert!(
            TimeZone::parse("+25:00")
                .unwrap_err()
                .contains("out of range")
        );
        let e = TimeZone::parse("Mars/Olympus").unwrap_err();
        assert!(e.contains("unknown time zone `Mars/Olympus`"), "{e}");
    }

    #[test]
    fn a_tz_database_zone_follows_daylight_saving() {
        let paris = TimeZone::parse("Europe/Paris").unwrap();
        // 2027-03-28T01:00:00Z: Paris goes from +01:00 to +02:00.
        let spring = 1_806_195_600;
        assert_eq!(paris.offset_at(spring - 1), 3600);
        assert_eq!(paris.offset_at(spring), 7200);
        assert_eq!(paris.next_change(spring - 10), Some(spring));
        // 09:00 in Paris: 08:00Z the day before the change, 07:00Z the day of it.
        let nine = Schedule::parse("0 0 9 * * *").unwrap();
        let before = (spring - 86_400) as u64 * 1000;
        let first = nine.next_after(before, &paris).unwrap();
        assert_eq!(first, (spring - 86_400 + 7 * 3600) as u64 * 1000);
        let second = nine.next_after(first, &paris).unwrap();
        assert_eq!(second, (spring + 6 * 3600) as u64 * 1000);
    }
}
