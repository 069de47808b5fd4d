//! How a function is kept warm, as a deploy states it: its keep-alive
//! policy and its provisioned concurrency. These are settings only; the
//! decisions made from them (when to unload, when to pre-warm, how many
//! instances) are `gust-autoscale`'s.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::time::{format_duration_ms, parse_duration_ms};

/// When an idle function leaves memory (is scaled to zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum KeepAlive {
    /// Unload after this long without an invocation (`0ms`: at once).
    Fixed { idle_ms: u64 },
    /// Learned from the function's own idle times (a histogram per
    /// function, in the spirit of the hybrid histogram policy of Shahrad et
    /// al., 2020); a fixed keep-alive until there is enough history.
    #[default]
    Learned,
}

impl KeepAlive {
    /// The longest fixed keep-alive: a day.
    pub const CEILING_MS: u64 = 24 * 3_600_000;
}

impl FromStr for KeepAlive {
    type Err = String;

    /// `learned`, or a duration (`10m`, `30s`, `0ms`), optionally written
    /// `fixed:10m`.
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "learned" {
            return Ok(KeepAlive::Learned);
        }
        let duration = text.strip_prefix("fixed:").unwrap_or(text);
        let idle_ms = parse_duration_ms(duration)
            .map_err(|e| format!("keep-alive `{text}`: {e}; or use `learned`"))?;
        if idle_ms > Self::CEILING_MS {
            return Err(format!("keep-alive `{text}` is longer than a day (24h)"));
        }
        Ok(KeepAlive::Fixed { idle_ms })
    }
}

impl fmt::Display for KeepAlive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepAlive::Fixed { idle_ms } => f.write_str(&format_duration_ms(*idle_ms)),
            KeepAlive::Learned => f.write_str("learned"),
        }
    }
}

/// Instances kept warm whatever the traffic, always or during weekly hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Provisioned {
    pub instances: u32,
    /// When set, only during these hours (UTC); none outside them.
    pub hours: Option<WeeklyHours>,
}

/// Days of the week and a time span on each, in UTC: `mon-fri 09:00-17:00`.
/// A span that ends before it starts runs over midnight into the next day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeeklyHours {
    /// Bit 0 is Monday, bit 6 Sunday.
    pub days: u8,
    /// Minutes after midnight, 0..=1439.
    pub from_minute: u16,
    /// Minutes after midnight, 1..=1440 (`24:00`).
    pub to_minute: u16,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Provisioned {
    /// The most instances a function may keep provisioned.
    pub const CEILING: u32 = 1000;
}

impl FromStr for Provisioned {
    type Err = String;

    /// `2`, or `2@mon-fri 09:00-17:00` (UTC; days as `mon,wed`, `sat-sun`).
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (count, hours) = match text.split_once('@') {
            Some((count, hours)) => (count, Some(hours.trim())),
            None => (text, None),
        };
        let instances: u32 = count.trim().parse().map_err(|_| {
            format!("provisioned `{text}`: expected a number of instances, like `2` or `2@mon-fri 09:00-17:00`")
        })?;
        if instances > Self::CEILING {
            return Err(format!(
                "provisioned `{text}`: at most {} instances",
                Self::CEILING
            ));
        }
        let hours = hours
            .map(|h| h.parse().map_err(|e| format!("provisioned `{text}`: {e}")))
            .transpose()?;
        Ok(Provisioned { instances, hours })
    }
}

impl FromStr for WeeklyHours {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (days, span) = text
            .split_once(' ')
            .ok_or("expected days and hours, like `mon-fri 09:00-17:00`")?;
        let mut mask = 0u8;
        for part in days.split(',') {
            let day = |name: &str| {
                DAYS.iter()
                    .position(|d| *d == name.trim().to_ascii_lowercase())
                    .ok_or_else(|| format!("`{name}` is not a day: use mon, tue … sun"))
            };
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (day(a)?, day(b)?);
                    let mut d = a;
                    loop {
                        mask |= 1 << d;
                        if d == b {
                            break;
                        }
                        d = (d + 1) % 7;
                    }
                }
                None => mask |= 1 << day(part)?,
            }
        }
        let (from, to) = span
            .trim()
            .split_once('-')
            .ok_or("expected hours like `09:00-17:00`")?;
        let minute = |hhmm: &str| -> Result<u16, String> {
            let bad = || format!("`{hhmm}` is not a time of day like `09:30`");
            let (h, m) = hhmm.trim().split_once(':').ok_or_else(bad)?;
            let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
            if m > 59 || h > 24 || (h == 24 && m > 0) {
                return Err(bad());
            }
            Ok(h * 60 + m)
        };
        let (from_minute, to_minute) = (minute(from)?, minute(to)?);
        if from_minute == to_minute || from_minute == 1440 {
            return Err(format!("the span `{span}` is empty"));
        }
        Ok(WeeklyHours {
            days: mask,
            from_minute,
            to_minute,
        })
    }
}

impl fmt::Display for WeeklyHours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days: Vec<&str> = (0..7)
            .filter(|d| self.days & (1 << d) != 0)
            .map(|d| DAYS[d])
            .collect();
        write!(
            f,
            "{} {:02}:{:02}-{:02}:{:02}",
            days.join(","),
            self.from_minute / 60,
            self.from_minute % 60,
            self.to_minute / 60,
            self.to_minute % 60
        )
    }
}

impl fmt::Display for Provisioned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.hours {
            Some(hours) => write!(f, "{}@{hours}", self.instances),
            None => write!(f, "{}", self.instances),
        }
    }
}

/// Serde through the text form (`#[serde(try_from = "String", into = "String")]`).
macro_rules! text_form {
    ($($t:ty),*) => {$(
        impl TryFrom<String> for $t {
            type Error = String;
            fn try_from(text: String) -> Result<Self, String> {
                text.parse()
            }
        }

        impl From<$t> for String {
            fn from(value: $t) -> String {
                value.to_string()
            }
        }
    )*};
}

text_form!(KeepAlive, Provisioned);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_forms() {
        assert_eq!("learned".parse(), Ok(KeepAlive::Learned));
        assert_eq!("10m".parse(), Ok(KeepAlive::Fixed { idle_ms: 600_000 }));
        assert_eq!("fixed:0ms".parse(), Ok(KeepAlive::Fixed { idle_ms: 0 }));
        assert_eq!(KeepAlive::Fixed { idle_ms: 30_000 }.to_string(), "30s");
        assert!("25h".parse::<KeepAlive>().is_err());
        assert!("soon".parse::<KeepAlive>().is_err());
        let json = serde_json::to_string(&KeepAlive::Fixed { idle_ms: 2000 }).unwrap();
        assert_eq!(json, "\"2s\"");
        assert_eq!(
            serde_json::from_str::<KeepAlive>(&json).unwrap(),
            KeepAlive::Fixed { idle_ms: 2000 }
        );
    }

    #[test]
    fn provisioned_forms() {
        let always: Provisioned = "3".parse().unwrap();
        assert_eq!((always.instances, always.hours), (3, None));
        let office: Provisioned = "2@mon-fri 09:00-17:30".parse().unwrap();
        let hours = office.hours.unwrap();
        assert_eq!(
            (hours.days, hours.from_minute, hours.to_minute),
            (0b001_1111, 540, 1050)
        );
        assert_eq!(office.to_string(), "2@mon,tue,wed,thu,fri 09:00-17:30");
        assert_eq!(office.to_string().parse::<Provisioned>(), Ok(office));
        let weekend_night: Provisioned = "1@sat-sun 22:00-06:00".parse().unwrap();
        assert_eq!(weekend_night.hours.unwrap().days, 0b110_0000);
        let wrapping: Provisioned = "1@fri-mon 00:00-24:00".parse().unwrap();
        assert_eq!(wrapping.hours.unwrap().days, 0b111_0001);
        for bad in [
            "",
            "two",
            "1001",
            "1@mon",
            "1@moon 09:00-10:00",
            "1@mon 9-10",
            "1@mon 10:00-10:00",
            "1@mon 25:00-26:00",
        ] {
            assert!(bad.parse::<Provisioned>().is_err(), "{bad}");
        }
    }
}
