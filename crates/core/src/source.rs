//! Event sources: a function's subscription to a broker or database outside
//! Gust (an MQTT topic, a NATS subject, a RabbitMQ queue, a Redis stream,
//! PostgreSQL row changes) or to signed webhooks. What one is, and the rules
//! that make it valid; the connectors that run them are in `gust-sources`.
//!
//! One shape serves the API, the CLI's flags and `[[sources]]` in
//! `gust.toml`: a kind and the fields that kind uses. A broker's address
//! may hold a password and a webhook has a signing secret: both are sealed
//! at rest and shown redacted ([`redact_url`]).

use serde::{Deserialize, Serialize};

/// What a source connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// Signed HTTP requests to the data plane's `/_gust/webhooks/…`.
    Webhook,
    /// MQTT 3.1.1 topic filters, QoS 1 or 2, a persistent session.
    Mqtt,
    /// A NATS subject: core (at most once) or a JetStream durable consumer.
    Nats,
    /// An AMQP 0-9-1 (RabbitMQ) queue, manual acks.
    Amqp,
    /// A Redis stream read by a consumer group.
    Redis,
    /// PostgreSQL row changes by logical replication (`pgoutput`).
    Postgres,
}

impl SourceKind {
    pub const ALL: [SourceKind; 6] = [
        SourceKind::Webhook,
        SourceKind::Mqtt,
        SourceKind::Nats,
        SourceKind::Amqp,
        SourceKind::Redis,
        SourceKind::Postgres,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Webhook => "webhook",
            SourceKind::Mqtt => "mqtt",
            SourceKind::Nats => "nats",
            SourceKind::Amqp => "amqp",
            SourceKind::Redis => "redis",
            SourceKind::Postgres => "postgres",
        }
    }

    /// An address of this kind's shape (for messages and checks of
    /// settings whose real address comes later).
    pub fn example_url(self) -> &'static str {
        match self {
            SourceKind::Webhook => "",
            SourceKind::Mqtt => "mqtt://host:1883",
            SourceKind::Nats => "nats://host:4222",
            SourceKind::Amqp => "amqp://user:password@host:5672/%2f",
            SourceKind::Redis => "redis://host:6379/0",
            SourceKind::Postgres => "postgres://user:password@host:5432/db",
        }
    }

    /// The URL schemes its `url` may have.
    fn schemes(self) -> &'static [&'static str] {
        match self {
            SourceKind::Webhook => &[],
            SourceKind::Mqtt => &["mqtt", "tcp", "mqtts", "ssl"],
            SourceKind::Nats => &["nats", "tls"],
            SourceKind::Amqp => &["amqp", "amqps"],
            SourceKind::Redis => &["redis", "rediss"],
            SourceKind::Postgres => &["postgres", "postgresql"],
        }
    }
}

impl std::fmt::Display for SourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SourceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SourceKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("no source kind `{s}`: use webhook, mqtt, nats, amqp, redis or postgres")
            })
    }
}

/// How a webhook's sender signs its requests (HMAC-SHA256 of the raw body).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SignatureStyle {
    /// GitHub's `X-Hub-Signature-256: sha256=<hex>`; `X-GitHub-Delivery`
    /// names the delivery (a redelivery keeps it).
    #[default]
    Github,
    /// Stripe's `Stripe-Signature: t=<unix>,v1=<hex>` over `"<t>.<body>"`,
    /// refused outside the replay window; the body's `id` names the event.
    Stripe,
}

impl std::str::FromStr for SignatureStyle {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "github" => Ok(SignatureStyle::Github),
            "stripe" => Ok(SignatureStyle::Stripe),
            _ => Err(format!("no signature style `{s}`: use github or stripe")),
        }
    }
}

/// Default replay window of Stripe-style signatures, in seconds.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;
/// Default bound on a source's events queued and not yet finished: at it,
/// the source stops pulling until the function catches up.
pub const DEFAULT_MAX_BACKLOG: u32 = 1_000;
/// Default number of messages taken from the broker and not yet acknowledged.
pub const DEFAULT_PREFETCH: u32 = 64;
/// Upper bound of both.
pub const MAX_PREFETCH: u32 = 10_000;

/// A source as asked for: a kind and the fields it uses. The kind is kept
/// as text until [`SourceSpec::validate`], so a wrong one gets a readable
/// error rather than a parse failure.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// `webhook`, `mqtt`, `nats`, `amqp`, `redis` or `postgres`.
    pub kind: String,
    /// The broker or database: `mqtt://host:1883`, `nats://host:4222`,
    /// `amqp://user:pass@host:5672/%2f`, `redis://host:6379/0`,
    /// `postgres://user:pass@host:5432/db`. Sealed at rest, shown redacted.
    pub url: Option<String>,
    /// MQTT topic filters (`+` and `#` wildcards); NATS subjects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
    /// Redis: the stream. NATS: a JetStream stream (absent: core NATS, at
    /// most once).
    pub stream: Option<String>,
    /// Redis: the consumer group (default `gust`). NATS JetStream: the
    /// durable consumer (default `gust-<function>-<id>`).
    pub group: Option<String>,
    /// AMQP: the queue.
    pub queue: Option<String>,
    /// PostgreSQL: the publication (must exist).
    pub publication: Option<String>,
    /// PostgreSQL: the replication slot (made if missing; default
    /// `gust_<function>_<id>`).
    pub slot: Option<String>,
    /// MQTT: 1 or 2 (default 1).
    pub qos: Option<u8>,
    /// Redis: the entry field whose value is an event's subject and
    /// ordering key (absent: no order across entries).
    pub key_field: Option<String>,
    /// Messages taken and not yet acknowledged at once (default 64).
    pub prefetch: Option<u32>,
    /// Events of this source queued and not yet finished at which it stops
    /// pulling (default 1000).
    pub max_backlog: Option<u32>,
    /// Webhook: `github` (default) or `stripe`.
    pub style: Option<SignatureStyle>,
    /// Webhook: the signing secret. Sealed at rest, never shown.
    pub secret: Option<String>,
    /// Webhook, Stripe style: the replay window in seconds (default 300).
    pub tolerance_secs: Option<u64>,
    /// Brokers and databases over TLS (`mqtts://`, `tls://`, `amqps://`,
    /// `rediss://`, PostgreSQL's `sslmode=require|verify-ca|verify-full`):
    /// a private CA's certificates, PEM, trusted beside the public roots.
    /// In `gust.toml`, the path of a PEM file beside it will do.
    pub ca: Option<String>,
    /// The request path the function sees (default `/`).
    pub path: Option<String>,
    /// A name for the source (default: generated; `toml-<n>` from `gust.toml`).
    pub id: Option<String>,
}

/// The most PEM text a source's `ca` may hold.
pub const MAX_CA_BYTES: usize = 64 * 1024;

/// At most this many topic filters or subjects per source.
pub const MAX_TOPICS: usize = 64;

impl SourceSpec {
    /// Checks the fields its kind needs and refuses those it does not use.
    pub fn validate(&self) -> Result<SourceKind, String> {
        let kind: SourceKind = self.kind.parse()?;
        let used = |field: &str| -> bool {
            match field {
                "url" => kind != SourceKind::Webhook,
                "topics" => matches!(kind, SourceKind::Mqtt | SourceKind::Nats),
                "stream" => matches!(kind, SourceKind::Redis | SourceKind::Nats),
                "group" => matches!(kind, SourceKind::Redis | SourceKind::Nats),
                "queue" => kind == SourceKind::Amqp,
                "publication" | "slot" => kind == SourceKind::Postgres,
                "qos" => kind == SourceKind::Mqtt,
                "key_field" => kind == SourceKind::Redis,
                "prefetch" => kind != SourceKind::Webhook,
                "style" | "secret" | "tolerance_secs" => kind == SourceKind::Webhook,
                "ca" => kind != SourceKind::Webhook,
                _ => true,
            }
        };
        let present = [
            ("url", self.url.is_some()),
            ("topics", !self.topics.is_empty()),
            ("stream", self.stream.is_some()),
            ("group", self.group.is_some()),
            ("queue", self.queue.is_some()),
            ("publication", self.publication.is_some()),
            ("slot", self.slot.is_some()),
            ("qos", self.qos.is_some()),
            ("key_field", self.key_field.is_some()),
            ("prefetch", self.prefetch.is_some()),
            ("style", self.style.is_some()),
            ("secret", self.secret.is_some()),
            ("tolerance_secs", self.tolerance_secs.is_some()),
            ("ca", self.ca.is_some()),
        ];
        for (field, set) in present {
            if set && !used(field) {
                return Err(format!("a {kind} source has no `{field}`"));
            }
        }
        let need = |field: &str, set: bool| {
            if set {
                Ok(())
            } else {
                Err(format!("a {kind} source needs `{field}`"))
            }
        };
        if kind != SourceKind::Webhook {
            need("url", self.url.is_some())?;
            check_url(kind, self.url.as_deref().unwrap_or_default())?;
        }
        if let Some(ca) = &self.ca {
            if ca.len() > MAX_CA_BYTES {
                return Err(format!("`ca` is longer than {MAX_CA_BYTES} bytes"));
            }
            if !ca.contains("-----BEGIN CERTIFICATE-----") {
                return Err("`ca` holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
            }
        }
        match kind {
            SourceKind::Webhook => {
                let secret = self.secret.as_deref().unwrap_or_default();
                need("secret", !secret.is_empty())?;
                if secret.len() > 512 {
                    return Err("`secret` is longer than 512 bytes".into());
                }
                if self.tolerance_secs.is_some_and(|t| t == 0 || t > 86_400) {
                    return Err("`tolerance_secs` must be between 1 and 86400".into());
                }
            }
            SourceKind::Mqtt => {
                need("topics", !self.topics.is_empty())?;
                for topic in &self.topics {
                    check_mqtt_filter(topic)?;
                }
                if self.qos.is_some_and(|q| !(1..=2).contains(&q)) {
                    return Err(
                        "`qos` must be 1 or 2 (QoS 0 may lose messages: Gust does not offer it)"
                            .into(),
                    );
                }
            }
            SourceKind::Nats => {
                need("topics", !self.topics.is_empty())?;
                for subject in &self.topics {
                    check_nats_subject(subject)?;
                }
                if self.stream.is_none() && self.group.is_some() {
                    return Err("`group` (a durable consumer) needs `stream`".into());
                }
            }
            SourceKind::Amqp => need("queue", self.queue.is_some())?,
            SourceKind::Redis => need("stream", self.stream.is_some())?,
            SourceKind::Postgres => need("publication", self.publication.is_some())?,
        }
        for (field, value) in [
            ("stream", &self.stream),
            ("group", &self.group),
            ("queue", &self.queue),
            ("publication", &self.publication),
            ("slot", &self.slot),
            ("key_field", &self.key_field),
        ] {
            if let Some(value) = value {
                check_name(field, value)?;
            }
        }
        if let Some(slot) = &self.slot {
            let ok = slot.len() <= 63
                && slot
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return Err(
                    "`slot`: use at most 63 lowercase letters, digits and `_` (PostgreSQL's rule)"
                        .into(),
                );
            }
        }
        for (field, value) in [
            ("prefetch", self.prefetch),
            ("max_backlog", self.max_backlog),
        ] {
            if value.is_some_and(|v| v == 0 || v > MAX_PREFETCH) {
                return Err(format!("`{field}` must be between 1 and {MAX_PREFETCH}"));
            }
        }
        Ok(kind)
    }

    /// The spec with each `${NAME}` in `url` and `secret` replaced by
    /// `lookup(NAME)` (what `gust.toml` uses to keep passwords out of the
    /// file). An unknown name is an error naming it.
    pub fn expand(&self, lookup: impl Fn(&str) -> Option<String>) -> Result<SourceSpec, String> {
        let expand = |text: &str| crate::config::expand_env(text, &lookup);
        let mut spec = self.clone();
        spec.url = self.url.as_deref().map(expand).transpose()?;
        spec.secret = self.secret.as_deref().map(expand).transpose()?;
        Ok(spec)
    }

    pub fn prefetch(&self) -> u32 {
        self.prefetch.unwrap_or(DEFAULT_PREFETCH)
    }

    pub fn max_backlog(&self) -> u32 {
        self.max_backlog.unwrap_or(DEFAULT_MAX_BACKLOG)
    }
}

fn check_name(field: &str, value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 255
        && !value.chars().any(|c| c.is_control() || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{field}` must be 1 to 255 characters without spaces or control characters"
        ))
    }
}

fn check_url(kind: SourceKind, url: &str) -> Result<(), String> {
    let scheme = url.split_once("://").map(|(s, _)| s);
    match scheme {
        Some(s) if kind.schemes().contains(&s) => {}
        _ => {
            return Err(format!(
                "`url` of a {kind} source starts with {}",
                kind.schemes()
                    .iter()
                    .map(|s| format!("`{s}://`"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ));
        }
    }
    if url.len() > 2048 || url.chars().any(|c| c.is_control() || c == ' ') {
        return Err("`url` must be at most 2048 characters, without spaces".into());
    }
    Ok(())
}

/// An MQTT topic filter: levels split by `/`, `+` a whole level, `#` the
/// whole last level.
pub fn check_mqtt_filter(filter: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("topic filter `{filter}`: {why}"));
    if filter.is_empty() || filter.len() > 1024 {
        return bad("must be 1 to 1024 bytes");
    }
    if filter.contains('\0') {
        return bad("must not hold a NUL");
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return bad("`#` must be a whole level and the last one");
        }
        if level.contains('+') && *level != "+" {
            return bad("`+` must be a whole level");
        }
    }
    Ok(())
}

/// Whether `topic` (a published name, no wildcards) matches `filter`.
pub fn mqtt_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return !topic.starts_with('$') || !filter.starts_with('#'),
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A NATS subject: dot-separated tokens, `*` a whole token, `>` the last.
pub fn check_nats_subject(subject: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("subject `{subject}`: {why}"));
    if subject.is_empty() || subject.len() > 1024 {
        return bad("must be 1 to 1024 bytes");
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("tokens must be non-empty, without spaces");
        }
        if token.contains('>') && (*token != ">" || i != tokens.len() - 1) {
            return bad("`>` must be a whole token and the last one");
        }
        if token.contains('*') && *token != "*" {
            return bad("`*` must be a whole token");
        }
    }
    Ok(())
}

/// `url` with its password (if any) replaced by `***`: what is shown.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_string()
            };
            format!("{scheme}://{hidden}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: &str) -> SourceSpec {
        SourceSpec {
            kind: kind.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_ca_is_pem_of_bounded_size_and_only_for_brokers() {
        let mut mqtt = spec("mqtt");
        mqtt.url = Some("mqtts://broker:8883".into());
        mqtt.topics = vec!["a/#".into()];
        mqtt.ca = Some("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into());
        assert!(mqtt.validate().is_ok());
        mqtt.ca = Some("ca.pem".into());
        assert!(mqtt.validate().unwrap_err().contains("no PEM certificate"));
        mqtt.ca = Some(format!(
            "-----BEGIN CERTIFICATE-----{}",
            "A".repeat(MAX_CA_BYTES)
        ));
        assert!(mqtt.validate().unwrap_err().contains("longer than"));
        let mut hook = spec("webhook");
        hook.secret = Some("s".into());
        hook.ca = Some("-----BEGIN CERTIFICATE-----".into());
        assert_eq!(hook.validate().unwrap_err(), "a webhook source has no `ca`");
    }

    #[test]
    fn each_kind_says_what_it_needs() {
        assert_eq!(
            spec("kafka").validate().unwrap_err(),
            "no source kind `kafka`: use webhook, mqtt, nats, amqp, redis or postgres"
        );
        assert_eq!(
            spec("redis").validate().unwrap_err(),
            "a redis source needs `url`"
        );
        let mut redis = spec("redis");
        redis.url = Some("http://x".into());
        assert_eq!(
            redis.validate().unwrap_err(),
            "`url` of a redis source starts with `redis://` or `rediss://`"
        );
        redis.url = Some("redis://127.0.0.1:6379".into());
        assert_eq!(
            redis.validate().unwrap_err(),
            "a redis source needs `stream`"
        );
        redis.stream = Some("orders".into());
        assert_eq!(redis.validate(), Ok(SourceKind::Redis));
        redis.queue = Some("q".into());
        assert_eq!(
            redis.validate().unwrap_err(),
            "a redis source has no `queue`"
        );
        let mut hook = spec("webhook");
        assert_eq!(
            hook.validate().unwrap_err(),
            "a webhook source needs `secret`"
        );
        hook.secret = Some("s3cret".into());
        assert_eq!(hook.validate(), Ok(SourceKind::Webhook));
        hook.url = Some("https://x".into());
        assert!(hook.validate().is_err());
        let mut mqtt = spec("mqtt");
        mqtt.url = Some("mqtt://localhost:1883".into());
        mqtt.topics = vec!["sensors/+/temp".into()];
        mqtt.qos = Some(0);
        assert!(mqtt.validate().unwrap_err().contains("QoS 0"));
        mqtt.qos = Some(2);
        assert_eq!(mqtt.validate(), Ok(SourceKind::Mqtt));
        mqtt.prefetch = Some(0);
        assert!(mqtt.validate().is_err());
    }

    #[test]
    fn variables_in_addresses_and_secrets() {
        let mut spec = spec("redis");
        spec.url = Some("redis://:${PW}@h:6379".into());
        spec.stream = Some("s".into());
        let lookup = |name: &str| (name == "PW").then(|| "x y".to_string());
        let expanded = spec.expand(lookup).unwrap();
        assert_eq!(expanded.url.as_deref(), Some("redis://:x y@h:6379"));
        spec.url = Some("redis://${NOPE}".into());
        assert_eq!(
            spec.expand(lookup).unwrap_err(),
            "the environment variable `NOPE` is not set"
        );
        spec.url = Some("redis://${PW".into());
        assert!(spec.expand(lookup).is_err());
    }

    #[test]
    fn mqtt_filters_and_matching() {
        for good in ["a/b", "a/+/c", "#", "a/#", "+", "+/+"] {
            assert!(check_mqtt_filter(good).is_ok(), "{good}");
        }
        for bad in ["", "a/#/b", "a#", "a/b+", "a/\0"] {
            assert!(check_mqtt_filter(bad).is_err(), "{bad}");
        }
        assert!(mqtt_matches("a/+/c", "a/b/c"));
        assert!(!mqtt_matches("a/+/c", "a/b/d"));
        assert!(mqtt_matches("a/#", "a/b/c"));
        assert!(mqtt_matches("a/#", "a"));
        assert!(!mqtt_matches("a/b", "a/b/c"));
        assert!(!mqtt_matches("#", "$SYS/x"));
    }

    #[test]
    fn nats_subjects() {
        for good in ["a.b", "a.*.c", ">", "a.>"] {
            assert!(check_nats_subject(good).is_ok(), "{good}");
        }
        for bad in ["", "a..b", "a.>.b", "a*", "a b"] {
            assert!(check_nats_subject(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_are_never_shown() {
        assert_eq!(
            redact_url("amqp://guest:guest@localhost:5672/%2f"),
            "amqp://guest:***@localhost:5672/%2f"
        );
        assert_eq!(redact_url("redis://:pw@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact_url("mqtt://h:1883"), "mqtt://h:1883");
        assert_eq!(
            redact_url("postgres://u:p@ss@h/db"),
            "postgres://u:***@h/db"
        );
    }
}
