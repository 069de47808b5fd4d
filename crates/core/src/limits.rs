use serde::{Deserialize, Serialize};

use crate::scaling::{KeepAlive, Provisioned};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// The limits one invocation of a function runs under. Every limit is on by
/// default; a deploy may change them within the platform's ceilings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Linear memory an instance may grow to, in bytes (all its memories together).
    pub memory_bytes: u64,
    /// Wall-clock time an invocation may take, in milliseconds.
    pub timeout_ms: u64,
    /// Largest request body accepted, in bytes; larger bodies get 413.
    pub max_body_bytes: u64,
    /// Guest stdout + stderr kept per invocation, in bytes; the rest is dropped.
    pub max_output_bytes: u64,
    /// Hosts the function may call through outgoing `wasi:http`: `api.example.com`,
    /// `*.example.com` (any subdomain), or `*` (anything). Empty: no outbound calls.
    pub allowed_hosts: Vec<String>,
    /// What the function may cost per calendar month (UTC), in
    /// micro-units of the tenant's plan; at it, new invocations get 429.
    /// None: only the tenant's budget applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_budget_micros: Option<u64>,
    /// Instances of the function running at once, at most. None: only the
    /// node's and the tenant's limits apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Instances of the node set aside for this function alone: no other
    /// function can take them, and it runs on them only (so at most this
    /// many at once). None: it shares the node's unreserved instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_concurrency: Option<u32>,
    /// Requests that may wait for a free instance when `max_concurrency`
    /// are running (more get 429 at once).
    #[serde(default = "default_queue_depth")]
    pub queue_depth: u32,
    /// How long a request may wait for a free instance, in ms (then 429).
    #[serde(default = "default_queue_wait_ms")]
    pub queue_wait_ms: u64,
    /// When the function leaves memory once idle: `learned` (from its own
    /// idle times) or a fixed duration such as `10m`.
    #[serde(default)]
    #[schema(value_type = String, example = "learned")]
    pub keep_alive: KeepAlive,
    /// Instances kept warm whatever the traffic: `2`, or
    /// `2@mon-fri 09:00-17:00` (UTC) for business hours only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "2@mon-fri 09:00-17:00")]
    pub provisioned: Option<Provisioned>,
}

fn default_queue_depth() -> u32 {
    Limits::DEFAULT_QUEUE_DEPTH
}

fn default_queue_wait_ms() -> u64 {
    Limits::DEFAULT_QUEUE_WAIT_MS
}

impl Limits {
    pub const DEFAULT_MEMORY_BYTES: u64 = 128 * MIB;
    pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
    pub const DEFAULT_MAX_BODY_BYTES: u64 = 6 * MIB;
    pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 64 * KIB;
    pub const DEFAULT_QUEUE_DEPTH: u32 = 64;
    pub const DEFAULT_QUEUE_WAIT_MS: u64 = 1000;

    pub const CEILING_MEMORY_BYTES: u64 = 4 * GIB;
    pub const CEILING_TIMEOUT_MS: u64 = 15 * 60 * 1000;
    pub const CEILING_MAX_BODY_BYTES: u64 = 64 * MIB;
    pub const CEILING_MAX_OUTPUT_BYTES: u64 = 4 * MIB;
    pub const CEILING_MAX_CONCURRENCY: u64 = 10_000;
    pub const CEILING_QUEUE_DEPTH: u64 = 10_000;
    pub const CEILING_QUEUE_WAIT_MS: u64 = 60_000;

    /// Whether a call to `host` is allowed by [`Limits::allowed_hosts`].
    /// `host` is compared without its port, case-insensitively. `*` allows
    /// any public host, but not this machine or a private network (loopback,
    /// private, link-local addresses, `localhost`): those must be listed by
    /// name, so that `*` never opens the control API or a cloud metadata
    /// endpoint to a function.
    pub fn allows_host(&self, host: &str) -> bool {
        let host = host
            .trim_end_matches('.')
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        self.allowed_hosts.iter().any(|pattern| {
            if pattern == "*" {
                !is_internal(&host)
            } else if let Some(suffix) = pattern.strip_prefix("*.") {
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix)
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            } else {
                *pattern == host
            }
        })
    }

    /// True when `host` is allowed only by `*` (no explicit pattern names
    /// it): then the addresses it resolves to must be checked too, since a
    /// public-looking name can point at this machine or a private network.
    pub fn allows_only_by_wildcard(&self, host: &str) -> bool {
        let named = Limits {
            allowed_hosts: self
                .allowed_hosts
                .iter()
                .filter(|p| *p != "*")
                .cloned()
                .collect(),
            ..self.clone()
        };
        self.allows_host(host) && !named.allows_host(host)
    }

    /// The most instances of the function that may run at once, if
    /// anything but the node and the tenant limits it: `max_concurrency`,
    /// within `reserved_concurrency`.
    pub fn concurrency_cap(&self) -> Option<u32> {
        match (self.max_concurrency, self.reserved_concurrency) {
            (Some(max), Some(reserved)) => Some(max.min(reserved)),
            (max, reserved) => max.or(reserved),
        }
    }

    fn validate(&self) -> Result<(), LimitsError> {
        let check = |name: &'static str, value: u64, min: u64, max: u64| {
            if value < min || value > max {
                Err(LimitsError::OutOfRange {
                    name,
                    value,
                    min,
                    max,
                })
            } else {
                Ok(())
            }
        };
        check(
            "memory_bytes",
            self.memory_bytes,
            MIB,
            Self::CEILING_MEMORY_BYTES,
        )?;
        check("timeout_ms", self.timeout_ms, 1, Self::CEILING_TIMEOUT_MS)?;
        check(
            "max_body_bytes",
            self.max_body_bytes,
            0,
            Self::CEILING_MAX_BODY_BYTES,
        )?;
        check(
            "max_output_bytes",
            self.max_output_bytes,
            0,
            Self::CEILING_MAX_OUTPUT_BYTES,
        )?;
        if let Some(n) = self.max_concurrency {
            check(
                "max_concurrency",
                u64::from(n),
                1,
                Self::CEILING_MAX_CONCURRENCY,
            )?;
        }
        check(
            "queue_depth",
            u64::from(self.queue_depth),
            0,
            Self::CEILING_QUEUE_DEPTH,
        )?;
        check(
            "queue_wait_ms",
            self.queue_wait_ms,
            0,
            Self::CEILING_QUEUE_WAIT_MS,
        )?;
        if let Some(n) = self.reserved_concurrency {
            check(
                "reserved_concurrency",
                u64::from(n),
                1,
                Self::CEILING_MAX_CONCURRENCY,
            )?;
            if let Some(max) = self.max_concurrency.filter(|max| *max > n) {
                return Err(LimitsError::OutOfRange {
                    name: "max_concurrency",
                    value: u64::from(max),
                    min: 1,
                    max: u64::from(n),
                });
            }
        }
        if let (Some(p), Some(max)) = (&self.provisioned, self.concurrency_cap())
            && p.instances > max
        {
            return Err(LimitsError::OutOfRange {
                name: "provisioned",
                value: u64::from(p.instances),
                min: 0,
                max: u64::from(max),
            });
        }
        for host in &self.allowed_hosts {
            let name = host.strip_prefix("*.").unwrap_or(host);
            let valid = host == "*"
                || (!name.is_empty()
                    && name.split('.').all(|label| {
                        !label.is_empty()
                            && label
                                .bytes()
                                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    }));
            if !valid {
                return Err(LimitsError::BadHost(host.clone()));
            }
        }
        Ok(())
    }
}

/// Hosts that `*` does not cover: this machine and private networks.
fn is_internal(host: &str) -> bool {
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    host.parse().is_ok_and(is_internal_ip)
}

/// Loopback, private, link-local (cloud metadata), shared, unspecified and
/// broadcast addresses: what `*` never reaches.
pub fn is_internal_ip(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(ip) => {
            ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64
        }
        IpAddr::V6(ip) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || (ip.segments()[0] & 0xfe00) == 0xfc00
                || (ip.segments()[0] & 0xffc0) == 0xfe80
                || ip
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_internal_ip(IpAddr::V4(v4)))
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: Self::DEFAULT_MEMORY_BYTES,
            timeout_ms: Self::DEFAULT_TIMEOUT_MS,
            max_body_bytes: Self::DEFAULT_MAX_BODY_BYTES,
            max_output_bytes: Self::DEFAULT_MAX_OUTPUT_BYTES,
            allowed_hosts: Vec::new(),
            monthly_budget_micros: None,
            max_concurrency: None,
            reserved_concurrency: None,
            queue_depth: Self::DEFAULT_QUEUE_DEPTH,
            queue_wait_ms: Self::DEFAULT_QUEUE_WAIT_MS,
            keep_alive: KeepAlive::default(),
            provisioned: None,
        }
    }
}

/// Why a limit was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    #[error("{name} = {value} is out of range: it must be between {min} and {max}")]
    OutOfRange {
        name: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error(
        "`{0}` is not a host pattern: use a lowercase host name such as `api.example.com`, `*.example.com`, or `*`"
    )]
    BadHost(String),
}

/// The limits a deploy asks for; what it leaves out keeps its default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    pub memory_bytes: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub max_body_bytes: Option<u64>,
    pub max_output_bytes: Option<u64>,
    pub allowed_hosts: Option<Vec<String>>,
    pub monthly_budget_micros: Option<u64>,
    pub max_concurrency: Option<u32>,
    pub reserved_concurrency: Option<u32>,
    pub queue_depth: Option<u32>,
    pub queue_wait_ms: Option<u64>,
    #[schema(value_type = Option<String>, example = "10m")]
    pub keep_alive: Option<KeepAlive>,
    #[schema(value_type = Option<String>, example = "1")]
    pub provisioned: Option<Provisioned>,
}

impl LimitsPatch {
    /// The default limits with this patch applied, validated.
    pub fn resolve(self) -> Result<Limits, LimitsError> {
        let defaults = Limits::default();
        let limits = Limits {
            memory_bytes: self.memory_bytes.unwrap_or(defaults.memory_bytes),
            timeout_ms: self.timeout_ms.unwrap_or(defaults.timeout_ms),
            max_body_bytes: self.max_body_bytes.unwrap_or(defaults.max_body_bytes),
            max_output_bytes: self.max_output_bytes.unwrap_or(defaults.max_output_bytes),
            allowed_hosts: self
                .allowed_hosts
                .unwrap_or_default()
                .into_iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
            monthly_budget_micros: self.monthly_budget_micros,
            max_concurrency: self.max_concurrency,
            reserved_concurrency: self.reserved_concurrency,
            queue_depth: self.queue_depth.unwrap_or(defaults.queue_depth),
            queue_wait_ms: self.queue_wait_ms.unwrap_or(defaults.queue_wait_ms),
            keep_alive: self.keep_alive.unwrap_or(defaults.keep_alive),
            provisioned: self.provisioned,
        };
        limits.validate()?;
        Ok(limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_on() {
        let limits = LimitsPatch::default().resolve().unwrap();
        assert_eq!(limits.memory_bytes, 128 * MIB);
        assert_eq!(limits.timeout_ms, 30_000);
        assert_eq!(limits.max_body_bytes, 6 * MIB);
        assert!(limits.allowed_hosts.is_empty());
        assert!(!limits.allows_host("example.com"));
        assert_eq!(limits.max_concurrency, None);
        assert_eq!((limits.queue_depth, limits.queue_wait_ms), (64, 1000));
        assert_eq!(limits.monthly_budget_micros, None);
    }

    #[test]
    fn concurrency_and_its_queue_are_bounded() {
        for (patch, name) in [
            (
                LimitsPatch {
                    max_concurrency: Some(0),
                    ..LimitsPatch::default()
                },
                "max_concurrency",
            ),
            (
                LimitsPatch {
                    queue_depth: Some(10_001),
                    ..LimitsPatch::default()
                },
                "queue_depth",
            ),
            (
                LimitsPatch {
                    queue_wait_ms: Some(60_001),
                    ..LimitsPatch::default()
                },
                "queue_wait_ms",
            ),
        ] {
            match patch.resolve() {
                Err(LimitsError::OutOfRange { name: got, .. }) => assert_eq!(got, name),
                other => panic!("{name}: {other:?}"),
            }
        }
        // Stored limits from before these fields existed still load.
        let old = r#"{"memory_bytes":1048576,"timeout_ms":1,"max_body_bytes":0,
            "max_output_bytes":0,"allowed_hosts":[]}"#;
        let limits: Limits = serde_json::from_str(old).unwrap();
        assert_eq!((limits.queue_depth, limits.max_concurrency), (64, None));
        assert_eq!(
            (limits.keep_alive, limits.provisioned),
            (KeepAlive::Learned, None)
        );
    }

    #[test]
    fn provisioned_fits_within_max_concurrency() {
        let patch = LimitsPatch {
            max_concurrency: Some(2),
            provisioned: Some("3".parse().unwrap()),
            ..LimitsPatch::default()
        };
        assert!(matches!(
            patch.resolve(),
            Err(LimitsError::OutOfRange {
                name: "provisioned",
                max: 2,
                ..
            })
        ));
    }

    #[test]
    fn a_reservation_caps_the_function() {
        let reserved = |max, reserved| {
            LimitsPatch {
                max_concurrency: max,
                reserved_concurrency: Some(reserved),
                ..LimitsPatch::default()
            }
            .resolve()
        };
        assert_eq!(reserved(None, 4).unwrap().concurrency_cap(), Some(4));
        assert_eq!(reserved(Some(2), 4).unwrap().concurrency_cap(), Some(2));
        // It runs on its reserved instances only: no more may be allowed.
        assert!(matches!(
            reserved(Some(5), 4),
            Err(LimitsError::OutOfRange {
                name: "max_concurrency",
                max: 4,
                ..
            })
        ));
        assert!(matches!(
            reserved(None, 0),
            Err(LimitsError::OutOfRange {
                name: "reserved_concurrency",
                ..
            })
        ));
        let provisioned = LimitsPatch {
            reserved_concurrency: Some(1),
            provisioned: Some("2".parse().unwrap()),
            ..LimitsPatch::default()
        };
        assert!(provisioned.resolve().is_err());
    }

    #[test]
    fn ceilings_are_enforced() {
        let too_much = LimitsPatch {
            memory_bytes: Some(Limits::CEILING_MEMORY_BYTES + 1),
            ..Default::default()
        };
        assert!(matches!(
            too_much.resolve(),
            Err(LimitsError::OutOfRange {
                name: "memory_bytes",
                ..
            })
        ));
        let zero_timeout = LimitsPatch {
            timeout_ms: Some(0),
            ..Default::default()
        };
        assert!(zero_timeout.resolve().is_err());
    }

    #[test]
    fn host_patterns() {
        let limits = LimitsPatch {
            allowed_hosts: Some(vec!["API.example.com".into(), "*.internal.test".into()]),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert!(limits.allows_host("api.example.com"));
        assert!(limits.allows_host("Api.Example.com."));
        assert!(!limits.allows_host("evil-api.example.com"));
        assert!(!limits.allows_host("example.com"));
        assert!(limits.allows_host("a.internal.test"));
        assert!(limits.allows_host("a.b.internal.test"));
        assert!(!limits.allows_host("internal.test"));
        assert!(!limits.allows_host("xinternal.test"));
        let any = LimitsPatch {
            allowed_hosts: Some(vec!["*".into()]),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert!(any.allows_host("anything.example"));
        assert!(any.allows_host("93.184.216.34"));
        for internal in [
            "localhost",
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.4",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "[::1]",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!any.allows_host(internal), "{internal}");
        }
        let listed = LimitsPatch {
            allowed_hosts: Some(vec!["127.0.0.1".into()]),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert!(listed.allows_host("127.0.0.1"));
    }

    #[test]
    fn bad_host_patterns_are_refused() {
        for bad in ["http://x.com", "x.com/path", "", "*.", "a..b", "x.com:80"] {
            let patch = LimitsPatch {
                allowed_hosts: Some(vec![bad.into()]),
                ..Default::default()
            };
            assert!(
                matches!(patch.resolve(), Err(LimitsError::BadHost(_))),
                "{bad}"
            );
        }
    }
}
