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
    /// Wall-clock time an invocation may take, in milliseconds: an event's
    /// whole run, a request's until its response head. Once the head is
    /// sent the stream limits below apply instead.
    pub timeout_ms: u64,
    /// A response body that streams (server-sent events, a long export) is
    /// cut when no part of it went out for this long, in ms.
    #[serde(default = "default_stream_idle_ms")]
    pub stream_idle_ms: u64,
    /// A response body is cut when it is still streaming this long after
    /// its head went out, in ms.
    #[serde(default = "default_stream_max_ms")]
    pub stream_max_ms: u64,
    /// Largest request body accepted, in bytes; larger bodies get 413.
    pub max_body_bytes: u64,
    /// Guest stdout + stderr kept per invocation, in bytes; the rest is dropped.
    pub max_output_bytes: u64,
    /// Hosts the function may call through outgoing `wasi:http`: `api.example.com`,
    /// `*.example.com` (any subdomain), or `*` (anything). Empty: no outbound calls.
    /// None of them reaches a special-purpose address (loopback, private,
    /// link-local …; see [`crate::address`]), whatever it is or resolves to.
    pub allowed_hosts: Vec<String>,
    /// Internal hosts an admin granted the function: exact IP addresses or
    /// host names (no wildcards) it may call although they are, or resolve
    /// to, special-purpose addresses — this machine, a private network.
    /// Every port of them. Only an admin may deploy a version with any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_internal_hosts: Vec<String>,
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
    /// Its outbound requests to hosts outside Gust carry the W3C trace
    /// context (`traceparent`, `tracestate`) of the invocation when traces
    /// are on. Off by default: a trace id tells the receiver which request
    /// it belongs to. Calls to other functions always carry it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trace_outbound: bool,
    /// Its URLs accept WebSocket upgrades: Gust holds each connection and
    /// runs the function for its connect, each message and its close.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub websocket: bool,
    /// WebSocket connections to the function held at once on a node.
    #[serde(default = "default_ws_max_connections")]
    pub ws_max_connections: u32,
    /// Largest WebSocket message accepted, in bytes (larger: close 1009).
    #[serde(default = "default_ws_max_message_bytes")]
    pub ws_max_message_bytes: u64,
    /// A WebSocket connection with no message either way for this long is
    /// closed (1001), in ms.
    #[serde(default = "default_ws_idle_ms")]
    pub ws_idle_ms: u64,
    /// Messages per second one connection may send, on average (a token
    /// bucket as deep as one second's worth); faster: close 1008.
    #[serde(default = "default_ws_messages_per_second")]
    pub ws_messages_per_second: u32,
}

fn default_ws_max_connections() -> u32 {
    Limits::DEFAULT_WS_MAX_CONNECTIONS
}

fn default_ws_max_message_bytes() -> u64 {
    Limits::DEFAULT_WS_MAX_MESSAGE_BYTES
}

fn default_ws_idle_ms() -> u64 {
    Limits::DEFAULT_WS_IDLE_MS
}

fn default_ws_messages_per_second() -> u32 {
    Limits::DEFAULT_WS_MESSAGES_PER_SECOND
}

fn default_queue_depth() -> u32 {
    Limits::DEFAULT_QUEUE_DEPTH
}

fn default_stream_idle_ms() -> u64 {
    Limits::DEFAULT_STREAM_IDLE_MS
}

fn default_stream_max_ms() -> u64 {
    Limits::DEFAULT_STREAM_MAX_MS
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
    pub const DEFAULT_STREAM_IDLE_MS: u64 = 30_000;
    pub const DEFAULT_STREAM_MAX_MS: u64 = 15 * 60 * 1000;
    pub const DEFAULT_WS_MAX_CONNECTIONS: u32 = 1000;
    pub const DEFAULT_WS_MAX_MESSAGE_BYTES: u64 = 64 * KIB;
    pub const DEFAULT_WS_IDLE_MS: u64 = 5 * 60 * 1000;
    pub const DEFAULT_WS_MESSAGES_PER_SECOND: u32 = 50;

    pub const CEILING_MEMORY_BYTES: u64 = 4 * GIB;
    pub const CEILING_TIMEOUT_MS: u64 = 15 * 60 * 1000;
    pub const CEILING_MAX_BODY_BYTES: u64 = 64 * MIB;
    pub const CEILING_MAX_OUTPUT_BYTES: u64 = 4 * MIB;
    pub const CEILING_MAX_CONCURRENCY: u64 = 10_000;
    pub const CEILING_QUEUE_DEPTH: u64 = 10_000;
    pub const CEILING_QUEUE_WAIT_MS: u64 = 60_000;
    pub const CEILING_STREAM_IDLE_MS: u64 = 10 * 60 * 1000;
    pub const CEILING_STREAM_MAX_MS: u64 = 24 * 60 * 60 * 1000;
    pub const CEILING_WS_MAX_CONNECTIONS: u64 = 100_000;
    pub const CEILING_WS_MAX_MESSAGE_BYTES: u64 = 4 * MIB;
    pub const CEILING_WS_IDLE_MS: u64 = 2 * 60 * 60 * 1000;
    pub const CEILING_WS_MESSAGES_PER_SECOND: u64 = 10_000;

    /// Whether the function may send a request to `host` (as written in
    /// the request, before any lookup): a host an admin granted
    /// ([`Limits::allow_internal_hosts`]), or one [`Limits::allowed_hosts`]
    /// matches that does not name an internal address by itself
    /// (`localhost`, `127.0.0.1`, `0x7f000001`, `[::1]` …: not even when
    /// listed). Compared without its port, case-insensitively, with or
    /// without a trailing dot. What the host resolves to is judged by
    /// [`Limits::allows_address`] after the lookup.
    pub fn allows_host(&self, host: &str) -> bool {
        let host = normalize_host(host);
        if self.grants_internal(&host, None) {
            return true;
        }
        if crate::address::is_internal_host(&host) {
            return false;
        }
        self.allowed_hosts.iter().any(|pattern| {
            if pattern == "*" {
                true
            } else if let Some(suffix) = pattern.strip_prefix("*.") {
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix)
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            } else {
                *pattern == host
            }
        })
    }

    /// Whether the function may connect to `ip`, which `host` (as in the
    /// request) is or resolved to: any address that is not special-purpose,
    /// and a special-purpose one only when an admin granted the host by
    /// name or the address itself.
    pub fn allows_address(&self, host: &str, ip: std::net::IpAddr) -> bool {
        !crate::address::is_internal_ip(ip) || self.grants_internal(&normalize_host(host), Some(ip))
    }

    /// Whether `host` (normalized) or `ip` is in `allow_internal_hosts`.
    /// Addresses compare as addresses (`127.1` is `127.0.0.1`; an
    /// IPv4-mapped IPv6 address is its IPv4 address).
    fn grants_internal(&self, host: &str, ip: Option<std::net::IpAddr>) -> bool {
        let host_ip = crate::address::parse_ip_host(host).map(|a| a.to_canonical());
        let ip = ip.map(|a| a.to_canonical());
        self.allow_internal_hosts.iter().any(|granted| {
            match crate::address::parse_ip_host(granted).map(|a| a.to_canonical()) {
                Some(granted) => Some(granted) == host_ip || Some(granted) == ip,
                None => *granted == host,
            }
        })
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
            "stream_idle_ms",
            self.stream_idle_ms,
            1,
            Self::CEILING_STREAM_IDLE_MS,
        )?;
        check(
            "stream_max_ms",
            self.stream_max_ms,
            1,
            Self::CEILING_STREAM_MAX_MS,
        )?;
        check(
            "ws_max_connections",
            u64::from(self.ws_max_connections),
            1,
            Self::CEILING_WS_MAX_CONNECTIONS,
        )?;
        check(
            "ws_max_message_bytes",
            self.ws_max_message_bytes,
            1,
            Self::CEILING_WS_MAX_MESSAGE_BYTES,
        )?;
        check("ws_idle_ms", self.ws_idle_ms, 1, Self::CEILING_WS_IDLE_MS)?;
        check(
            "ws_messages_per_second",
            u64::from(self.ws_messages_per_second),
            1,
            Self::CEILING_WS_MESSAGES_PER_SECOND,
        )?;
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
            if crate::address::is_internal_host(name) {
                let range = crate::address::parse_ip_host(name)
                    .and_then(crate::address::special_purpose)
                    .map_or_else(|| "this machine".to_string(), |r| r.to_string());
                return Err(LimitsError::InternalHost {
                    host: host.clone(),
                    range,
                });
            }
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
        for host in &self.allow_internal_hosts {
            let is_ip = crate::address::parse_ip_host(host).is_some();
            let is_name = !host.is_empty()
                && host.split('.').all(|label| {
                    !label.is_empty()
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                });
            if !is_ip && !is_name {
                return Err(LimitsError::BadInternalHost(host.clone()));
            }
        }
        Ok(())
    }
}

/// A host as allow-lists compare it: lowercase, no trailing dot, no
/// brackets around an IPv6 address.
fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.')
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// An `allow_internal_hosts` entry as stored: an address in its canonical
/// text (`127.1` → `127.0.0.1`, `[::1]` → `::1`), a name lowercase
/// without a trailing dot.
fn normalize_internal_host(host: &str) -> String {
    let host = host.trim();
    match crate::address::parse_ip_host(host) {
        Some(ip) => ip.to_string(),
        None => normalize_host(host),
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: Self::DEFAULT_MEMORY_BYTES,
            timeout_ms: Self::DEFAULT_TIMEOUT_MS,
            stream_idle_ms: Self::DEFAULT_STREAM_IDLE_MS,
            stream_max_ms: Self::DEFAULT_STREAM_MAX_MS,
            max_body_bytes: Self::DEFAULT_MAX_BODY_BYTES,
            max_output_bytes: Self::DEFAULT_MAX_OUTPUT_BYTES,
            allowed_hosts: Vec::new(),
            allow_internal_hosts: Vec::new(),
            monthly_budget_micros: None,
            max_concurrency: None,
            reserved_concurrency: None,
            queue_depth: Self::DEFAULT_QUEUE_DEPTH,
            queue_wait_ms: Self::DEFAULT_QUEUE_WAIT_MS,
            keep_alive: KeepAlive::default(),
            provisioned: None,
            trace_outbound: false,
            websocket: false,
            ws_max_connections: Self::DEFAULT_WS_MAX_CONNECTIONS,
            ws_max_message_bytes: Self::DEFAULT_WS_MAX_MESSAGE_BYTES,
            ws_idle_ms: Self::DEFAULT_WS_IDLE_MS,
            ws_messages_per_second: Self::DEFAULT_WS_MESSAGES_PER_SECOND,
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
    /// An allowed host names this machine or a special-purpose address:
    /// allow-lists never reach those.
    #[error(
        "`{host}` is an internal address ({range}): `--allow-host` never reaches this machine or a private network; an admin can grant an internal host with `--allow-internal-host`"
    )]
    InternalHost { host: String, range: String },
    #[error(
        "`{0}` cannot be granted as an internal host: give one IP address or one host name (no wildcards, no port)"
    )]
    BadInternalHost(String),
}

/// The limits a deploy asks for; what it leaves out keeps its default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    pub memory_bytes: Option<u64>,
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub stream_idle_ms: Option<u64>,
    #[serde(default)]
    pub stream_max_ms: Option<u64>,
    pub max_body_bytes: Option<u64>,
    pub max_output_bytes: Option<u64>,
    pub allowed_hosts: Option<Vec<String>>,
    /// Only an admin may set it (the control API refuses anyone else).
    #[serde(default)]
    pub allow_internal_hosts: Option<Vec<String>>,
    pub monthly_budget_micros: Option<u64>,
    pub max_concurrency: Option<u32>,
    pub reserved_concurrency: Option<u32>,
    pub queue_depth: Option<u32>,
    pub queue_wait_ms: Option<u64>,
    #[schema(value_type = Option<String>, example = "10m")]
    pub keep_alive: Option<KeepAlive>,
    #[schema(value_type = Option<String>, example = "1")]
    pub provisioned: Option<Provisioned>,
    #[serde(default)]
    pub trace_outbound: Option<bool>,
    #[serde(default)]
    pub websocket: Option<bool>,
    #[serde(default)]
    pub ws_max_connections: Option<u32>,
    #[serde(default)]
    pub ws_max_message_bytes: Option<u64>,
    #[serde(default)]
    pub ws_idle_ms: Option<u64>,
    #[serde(default)]
    pub ws_messages_per_second: Option<u32>,
}

impl LimitsPatch {
    /// The default limits with this patch applied, validated.
    pub fn resolve(self) -> Result<Limits, LimitsError> {
        let defaults = Limits::default();
        let limits = Limits {
            memory_bytes: self.memory_bytes.unwrap_or(defaults.memory_bytes),
            timeout_ms: self.timeout_ms.unwrap_or(defaults.timeout_ms),
            stream_idle_ms: self.stream_idle_ms.unwrap_or(defaults.stream_idle_ms),
            stream_max_ms: self.stream_max_ms.unwrap_or(defaults.stream_max_ms),
            max_body_bytes: self.max_body_bytes.unwrap_or(defaults.max_body_bytes),
            max_output_bytes: self.max_output_bytes.unwrap_or(defaults.max_output_bytes),
            allowed_hosts: self
                .allowed_hosts
                .unwrap_or_default()
                .into_iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
            allow_internal_hosts: self
                .allow_internal_hosts
                .unwrap_or_default()
                .iter()
                .map(|h| normalize_internal_host(h))
                .collect(),
            monthly_budget_micros: self.monthly_budget_micros,
            max_concurrency: self.max_concurrency,
            reserved_concurrency: self.reserved_concurrency,
            queue_depth: self.queue_depth.unwrap_or(defaults.queue_depth),
            queue_wait_ms: self.queue_wait_ms.unwrap_or(defaults.queue_wait_ms),
            keep_alive: self.keep_alive.unwrap_or(defaults.keep_alive),
            provisioned: self.provisioned,
            trace_outbound: self.trace_outbound.unwrap_or(defaults.trace_outbound),
            websocket: self.websocket.unwrap_or(defaults.websocket),
            ws_max_connections: self
                .ws_max_connections
                .unwrap_or(defaults.ws_max_connections),
            ws_max_message_bytes: self
                .ws_max_message_bytes
                .unwrap_or(defaults.ws_max_message_bytes),
            ws_idle_ms: self.ws_idle_ms.unwrap_or(defaults.ws_idle_ms),
            ws_messages_per_second: self
                .ws_messages_per_second
                .unwrap_or(defaults.ws_messages_per_second),
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
        // Every form of an internal address, as a request may write it.
        for internal in [
            "0x7f000001",
            "2130706433",
            "127.1",
            "LOCALHOST.",
            "a.localhost",
            "[::ffff:127.0.0.1]",
            "[64:ff9b::7f00:1]",
            "[2002:7f00:1::]",
            "198.18.0.1",
            "224.0.0.1",
        ] {
            assert!(!any.allows_host(internal), "{internal}");
        }
    }

    #[test]
    fn internal_hosts_are_refused_in_the_allow_list() {
        for internal in [
            "127.0.0.1",
            "localhost",
            "*.localhost",
            "a.localhost",
            "0x7f000001",
            "2130706433",
            "10.0.0.1",
            "169.254.169.254",
            "[::1]",
            "[::ffff:127.0.0.1]",
        ] {
            let patch = LimitsPatch {
                allowed_hosts: Some(vec!["api.example.com".into(), internal.into()]),
                ..Default::default()
            };
            match patch.resolve() {
                Err(e @ LimitsError::InternalHost { .. }) => {
                    assert!(e.to_string().contains("--allow-internal-host"), "{e}")
                }
                other => panic!("{internal}: {other:?}"),
            }
        }
        let err = LimitsPatch {
            allowed_hosts: Some(vec!["127.0.0.1".into()]),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("127.0.0.0/8 (loopback)"), "{err}");
        // A version stored before this rule (never validated again) still
        // does not reach what it lists.
        let old: Limits = serde_json::from_str(
            r#"{"memory_bytes":1048576,"timeout_ms":1,"max_body_bytes":0,
            "max_output_bytes":0,"allowed_hosts":["127.0.0.1","localhost"]}"#,
        )
        .unwrap();
        assert!(!old.allows_host("127.0.0.1"));
        assert!(!old.allows_host("localhost"));
        assert!(!old.allows_address("anything", "127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn an_internal_grant_names_exact_hosts_and_addresses() {
        let granted = LimitsPatch {
            allowed_hosts: Some(vec!["*".into()]),
            allow_internal_hosts: Some(vec![
                "127.1".into(),
                "DB.Internal.".into(),
                "[fd00::5]".into(),
            ]),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            granted.allow_internal_hosts,
            ["127.0.0.1", "db.internal", "fd00::5"]
        );
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        for host in [
            "127.0.0.1",
            "0x7f000001",
            "[::ffff:127.0.0.1]",
            "db.internal",
            "DB.INTERNAL.",
            "[fd00::5]",
        ] {
            assert!(granted.allows_host(host), "{host}");
        }
        assert!(!granted.allows_host("127.0.0.2"));
        assert!(!granted.allows_host("localhost"));
        assert!(!granted.allows_host("[fd00::6]"));
        // After the lookup: a granted name may resolve anywhere; any name
        // may reach a granted address; nothing else internal.
        assert!(granted.allows_address("db.internal", ip("10.9.8.7")));
        assert!(granted.allows_address("elsewhere.example", ip("127.0.0.1")));
        assert!(granted.allows_address("elsewhere.example", ip("::ffff:127.0.0.1")));
        assert!(!granted.allows_address("elsewhere.example", ip("10.9.8.7")));
        assert!(!granted.allows_address("localhost", ip("127.0.0.2")));
        assert!(granted.allows_address("elsewhere.example", ip("8.8.8.8")));
        // Without a grant, even a listed name never reaches internal addresses.
        let listed = LimitsPatch {
            allowed_hosts: Some(vec!["vm".into()]),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert!(listed.allows_host("vm"));
        assert!(!listed.allows_address("vm", ip("127.0.0.1")));
        assert!(!listed.allows_address("vm", ip("64:ff9b::a00:1")));
        // A grant alone is enough to call the granted host.
        let only = LimitsPatch {
            allow_internal_hosts: Some(vec!["127.0.0.1".into()]),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert!(only.allows_host("127.0.0.1"));
        assert!(!only.allows_host("example.com"));
        for bad in [
            "*",
            "*.example.com",
            "",
            "a b",
            "[::1]:80",
            "db.internal:5432",
            "http://x",
        ] {
            let patch = LimitsPatch {
                allow_internal_hosts: Some(vec![bad.into()]),
                ..Default::default()
            };
            assert!(
                matches!(patch.resolve(), Err(LimitsError::BadInternalHost(_))),
                "{bad}"
            );
        }
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
