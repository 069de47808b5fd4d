//! Continuous deployment's data: aliases (named pointers at versions, each
//! with its own URL), traffic splits between two versions, canaries, and
//! the pure choice of which side of a split a request takes.
//!
//! A function's `live` alias is what its plain URL serves; `/<name>:<alias>/…`
//! reaches any alias. An alias carries everything the data plane needs to
//! run the versions it points at (digest, limits, delivery), so the gateway
//! still watches function records only.

use serde::{Deserialize, Serialize};

use crate::names::{NameError, check_label};
use crate::records::ActiveVersion;

/// The alias a function's plain URL serves; every deployed function has it.
pub const LIVE: &str = "live";
/// Basis points in the whole: a split's share is out of this.
pub const WHOLE: u16 = 10_000;
/// Canary outcomes a function record keeps, newest last.
pub const CANARY_HISTORY: usize = 8;

/// Checks an alias name: like a function name (lowercase letters, digits,
/// `-`, starting with a letter), so it can never be read as a version number.
pub fn check_alias(name: &str) -> Result<(), NameError> {
    check_label(name)
}

/// Where an alias sends its traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Alias {
    /// The version it points at (all its traffic, but a split's share).
    pub target: ActiveVersion,
    /// Another version taking a share of the traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
    /// A canary in progress: the split is judged and ended automatically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    /// The version it pointed at before it last moved (`gust rollback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<u64>,
    /// Variables of this alias only, over the function's.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub vars: crate::config::Variables,
    pub updated_at_ms: u64,
}

impl Alias {
    pub fn new(target: ActiveVersion, now_ms: u64) -> Self {
        Self {
            target,
            split: None,
            canary: None,
            previous: None,
            vars: Default::default(),
            updated_at_ms: now_ms,
        }
    }

    /// Points the alias at `target` (all traffic), remembering where it
    /// pointed for a rollback; ends any split or canary.
    pub fn point_at(&mut self, target: ActiveVersion, now_ms: u64) {
        if target.version != self.target.version {
            self.previous = Some(self.target.version);
        }
        self.target = target;
        self.split = None;
        self.canary = None;
        self.updated_at_ms = now_ms;
    }

    /// The versions it serves: the target, then the split's.
    pub fn versions(&self) -> impl Iterator<Item = &ActiveVersion> {
        std::iter::once(&self.target).chain(self.split.as_ref().map(|s| &s.to))
    }
}

/// A share of an alias's traffic going to another version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Split {
    pub to: ActiveVersion,
    /// Its share in basis points (1–9999: 1000 is 10%).
    pub basis_points: u16,
}

/// A canary: a new version given a share of `live` for a window, then
/// promoted or rolled back by [`crate::deploy`]'s judge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Canary {
    pub version: u64,
    pub started_at_ms: u64,
    pub window_ms: u64,
    pub policy: CanaryPolicy,
}

/// What a canary must show to be promoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CanaryPolicy {
    /// Requests the canary must have served before its error rate or
    /// latency can condemn it.
    pub min_requests: u64,
    /// How far (basis points) its error rate may exceed the stable
    /// version's before it is rolled back (also needs significance).
    pub error_margin_bp: u16,
    /// Its p99 latency may be at most this many percent of the stable
    /// version's …
    pub latency_factor_pct: u32,
    /// … plus this many milliseconds.
    pub latency_slack_ms: u64,
}

impl Default for CanaryPolicy {
    fn default() -> Self {
        Self {
            min_requests: 20,
            error_margin_bp: 200,
            latency_factor_pct: 200,
            latency_slack_ms: 25,
        }
    }
}

/// What `--canary 10%,5m` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CanarySpec {
    pub basis_points: u16,
    pub window_ms: u64,
}

/// Window when `--canary` names only a share.
pub const DEFAULT_CANARY_WINDOW_MS: u64 = 5 * 60_000;

impl std::str::FromStr for CanarySpec {
    type Err = String;

    /// `10%,5m`, `2.5%,30s` or `10%` (a 5-minute window).
    fn from_str(text: &str) -> Result<Self, String> {
        let (share, window) = match text.split_once(',') {
            Some((share, window)) => (share.trim(), Some(window.trim())),
            None => (text.trim(), None),
        };
        let basis_points = parse_share(share)?;
        let window_ms = match window {
            Some(w) => crate::time::parse_duration_ms(w).map_err(|e| e.to_string())?,
            None => DEFAULT_CANARY_WINDOW_MS,
        };
        if !(1000..=24 * 3_600_000).contains(&window_ms) {
            return Err(format!(
                "a canary window must be between 1s and 24h (got `{}`)",
                crate::time::format_duration_ms(window_ms)
            ));
        }
        Ok(Self {
            basis_points,
            window_ms,
        })
    }
}

/// `10%`, `2.5%` or `10` → basis points; refuses 0% and 100% (a split
/// must send traffic both ways).
pub fn parse_share(text: &str) -> Result<u16, String> {
    let number = text.trim().trim_end_matches('%').trim();
    let percent: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a share of traffic: write it as `10%`"))?;
    let bp = (percent * 100.0).round();
    if !(1.0..f64::from(WHOLE)).contains(&bp) {
        return Err(format!(
            "a share of traffic must be above 0% and below 100% (got `{text}`)"
        ));
    }
    Ok(bp as u16)
}

/// A share in basis points as people write it: `10%`, `2.5%`.
pub fn format_share(basis_points: u16) -> String {
    let whole = basis_points / 100;
    match basis_points % 100 {
        0 => format!("{whole}%"),
        rest if rest % 10 == 0 => format!("{whole}.{}%", rest / 10),
        rest => format!("{whole}.{rest:02}%"),
    }
}

/// How a canary ended, as the function record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CanaryReport {
    pub version: u64,
    /// The version it was compared with.
    pub stable: u64,
    pub outcome: CanaryOutcome,
    pub reason: String,
    pub ended_at_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CanaryOutcome {
    Promoted,
    RolledBack,
    /// Replaced by a deploy or an alias change before it was judged.
    Superseded,
}

impl CanaryOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Promoted => "promoted",
            Self::RolledBack => "rolled back",
            Self::Superseded => "superseded",
        }
    }
}

/// What a request URL names after the function: `hello` (live),
/// `hello:staging`.
pub fn split_qualifier(name: &str) -> (&str, &str) {
    match name.split_once(':') {
        Some((function, alias)) => (function, alias),
        None => (name, LIVE),
    }
}

/// Whether a request takes the split's side: by `sticky` (a client's own
/// key, so the same client always lands on the same side) when it has
/// one, else by `random`. Pure: FNV-1a of the key, or the random number,
/// taken modulo [`WHOLE`].
pub fn takes_split(basis_points: u16, sticky: Option<&[u8]>, random: u64) -> bool {
    let draw = match sticky {
        Some(key) => fnv1a(key),
        None => random,
    };
    (draw % u64::from(WHOLE)) < u64::from(basis_points)
}

/// FNV-1a, 64 bits, with a final mix so that nearby keys spread out.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64's finaliser
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_parse_and_print() {
        assert_eq!(parse_share("10%"), Ok(1000));
        assert_eq!(parse_share("10"), Ok(1000));
        assert_eq!(parse_share("2.5%"), Ok(250));
        assert_eq!(parse_share("0.01%"), Ok(1));
        assert!(parse_share("0%").is_err());
        assert!(parse_share("100%").is_err());
        assert!(parse_share("-5%").is_err());
        assert!(parse_share("ten").is_err());
        assert_eq!(format_share(1000), "10%");
        assert_eq!(format_share(250), "2.5%");
        assert_eq!(format_share(1), "0.01%");
    }

    #[test]
    fn canary_specs_parse() {
        let spec: CanarySpec = "10%,5m".parse().unwrap();
        assert_eq!((spec.basis_points, spec.window_ms), (1000, 300_000));
        let spec: CanarySpec = " 25% , 30s ".parse().unwrap();
        assert_eq!((spec.basis_points, spec.window_ms), (2500, 30_000));
        let spec: CanarySpec = "10%".parse().unwrap();
        assert_eq!(spec.window_ms, DEFAULT_CANARY_WINDOW_MS);
        assert!("10%,5".parse::<CanarySpec>().is_err());
        assert!("10%,100ms".parse::<CanarySpec>().is_err());
        assert!("100%,5m".parse::<CanarySpec>().is_err());
    }

    #[test]
    fn qualifiers_name_aliases() {
        assert_eq!(split_qualifier("hello"), ("hello", LIVE));
        assert_eq!(split_qualifier("hello:staging"), ("hello", "staging"));
        assert!(check_alias("staging").is_ok());
        assert!(check_alias("7").is_err());
        assert!(check_alias("Live").is_err());
    }

    #[test]
    fn random_draws_split_by_weight() {
        let taken = (0..100_000u64)
            .filter(|i| takes_split(1000, None, fnv1a(&i.to_le_bytes())))
            .count();
        assert!((9_500..10_500).contains(&taken), "{taken}");
        assert!(!takes_split(1000, None, 1000));
        assert!(takes_split(1000, None, 999));
    }

    #[test]
    fn sticky_keys_always_land_on_the_same_side_and_spread() {
        let mut split = 0;
        for client in 0..10_000u32 {
            let key = format!("client-{client}");
            let side = takes_split(2000, Some(key.as_bytes()), 0);
            for random in [1, 7777, u64::MAX] {
                assert_eq!(takes_split(2000, Some(key.as_bytes()), random), side);
            }
            split += usize::from(side);
        }
        assert!((1_800..2_200).contains(&split), "{split}");
    }

    #[test]
    fn pointing_an_alias_remembers_the_previous_version() {
        let v = |n| ActiveVersion {
            version: n,
            digest: format!("sha256:{n}"),
            limits: crate::Limits::default(),
            delivery: Default::default(),
        };
        let mut alias = Alias::new(v(1), 0);
        alias.split = Some(Split {
            to: v(2),
            basis_points: 1000,
        });
        assert_eq!(alias.versions().count(), 2);
        alias.point_at(v(2), 5);
        assert_eq!(
            (alias.target.version, alias.previous, alias.split.is_none()),
            (2, Some(1), true)
        );
        // Pointing again at the same version keeps the rollback target.
        alias.point_at(v(2), 6);
        assert_eq!(alias.previous, Some(1));
    }
}
