//! Who may do what: token roles, the actions they allow, and the quotas a
//! tenant is held to. Pure: the control API and the gateway ask these
//! questions; nothing here knows about tokens' storage or HTTP.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The platform's operator: every tenant, tenants themselves.
    Admin,
    /// A tenant's owner: everything in the tenant, its tokens and audit log.
    Owner,
    /// Deploys and manages functions, schedules, triggers and data.
    Deployer,
    /// Reads everything in the tenant, changes nothing.
    Viewer,
    /// Only invokes the tenant's private functions.
    Invoker,
}

/// What a request does, as far as access is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read anything of the tenant (functions, logs, invocations, data…).
    Read,
    /// Change anything of the tenant (deploy, remove, schedules, data…).
    Write,
    /// Call a function (data plane) or submit an event.
    Invoke,
    /// Create and revoke the tenant's tokens; read its audit log.
    ManageTokens,
    /// Create tenants, act on any tenant.
    Administer,
}

impl Role {
    pub fn allows(self, action: Action) -> bool {
        use Action::*;
        match self {
            Role::Admin => true,
            Role::Owner => !matches!(action, Administer),
            Role::Deployer => matches!(action, Read | Write | Invoke),
            Role::Viewer => matches!(action, Read),
            Role::Invoker => matches!(action, Invoke),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Owner => "owner",
            Role::Deployer => "deployer",
            Role::Viewer => "viewer",
            Role::Invoker => "invoker",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "admin" => Role::Admin,
            "owner" => Role::Owner,
            "deployer" => Role::Deployer,
            "viewer" => Role::Viewer,
            "invoker" => Role::Invoker,
            other => {
                return Err(format!(
                    "unknown role `{other}`: use owner, deployer, viewer, invoker or admin"
                ));
            }
        })
    }
}

/// What a tenant may use. Every quota is on by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Quotas {
    /// Functions the tenant may have.
    pub functions: u64,
    /// Versions one function may have.
    pub versions: u64,
    /// Invocations of the tenant's functions running at once.
    pub concurrency: u64,
    /// Invocations per second, on average (a token bucket).
    pub invocations_per_second: u64,
    /// Invocations per second allowed in a burst above the average.
    pub burst: u64,
    /// Events submitted (over HTTP) and not yet finished. Events from the
    /// platform's own triggers (schedules, data changes) are never refused.
    pub event_backlog: u64,
    /// Keys across the tenant's key-value buckets.
    pub kv_keys: u64,
    /// Bytes the tenant stores: its key-value data (keys and values) and
    /// the components of all its functions' versions.
    pub storage_bytes: u64,
    /// Monthly spending limit in micro-units of the price plan's currency
    /// (`null`: none). At it, new invocations and event submissions get 429;
    /// what was accepted before is still delivered.
    pub monthly_budget_micros: Option<u64>,
    /// The largest memory limit one of the tenant's functions may have,
    /// in bytes (each running instance reserves it from the node).
    pub function_memory_bytes: u64,
    /// Instances the tenant's functions may reserve in all (the sum of
    /// their `reserved_concurrency`): slots no other tenant may use.
    pub reserved_concurrency: u64,
    /// Event sources (brokers, databases, webhooks) across the tenant's
    /// functions: each holds a connection open from the node.
    pub sources: u64,
    /// WebSocket connections to the tenant's functions held at once.
    pub websockets: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            functions: 100,
            versions: 1000,
            concurrency: 1000,
            // Above what one node serves: on one node the quota only
            // matters once an admin lowers it for a tenant.
            invocations_per_second: 100_000,
            burst: 100_000,
            event_backlog: 1_000_000,
            kv_keys: 1_000_000,
            storage_bytes: 1 << 30,
            monthly_budget_micros: None,
            function_memory_bytes: 1 << 30,
            reserved_concurrency: 250,
            sources: 100,
            websockets: 10_000,
        }
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
/// Pure: the caller passes the time.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    pub fn new(rate: u64, burst: u64, now_ms: u64) -> Self {
        let burst = burst.max(rate).max(1) as f64;
        Self {
            rate: rate as f64,
            burst,
            tokens: burst,
            last_ms: now_ms,
        }
    }

    /// Takes one token if there is one; otherwise how long until there is.
    pub fn take(&mut self, now_ms: u64) -> Result<(), u64> {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last_ms = self.last_ms.max(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if self.rate <= 0.0 {
            Err(1000)
        } else {
            Err((((1.0 - self.tokens) / self.rate) * 1000.0).ceil() as u64)
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header value. The
/// scheme is matched without regard to case (RFC 9110 §11.1: `Bearer`,
/// `bearer`, `BEARER`), and separated from the token by spaces or tabs;
/// `None` for another scheme or no token.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_matches([' ', '\t']);
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_matched_without_regard_to_case() {
        for value in [
            "Bearer abc",
            "bearer abc",
            "BEARER abc",
            "bEaReR abc",
            "Bearer   abc ",
            "Bearer\tabc",
        ] {
            assert_eq!(bearer_token(value), Some("abc"), "{value:?}");
        }
        for value in [
            "Basic abc",
            "Bearerabc",
            "Bearer",
            "Bearer  ",
            "Token abc",
            "",
        ] {
            assert_eq!(bearer_token(value), None, "{value:?}");
        }
    }

    #[test]
    fn roles_allow_what_they_say() {
        use Action::*;
        let all = [Read, Write, Invoke, ManageTokens, Administer];
        let allowed = |role: Role| {
            all.iter()
                .filter(|a| role.allows(**a))
                .copied()
                .collect::<Vec<_>>()
        };
        assert_eq!(allowed(Role::Admin), all);
        assert_eq!(allowed(Role::Owner), [Read, Write, Invoke, ManageTokens]);
        assert_eq!(allowed(Role::Deployer), [Read, Write, Invoke]);
        assert_eq!(allowed(Role::Viewer), [Read]);
        assert_eq!(allowed(Role::Invoker), [Invoke]);
        assert_eq!("deployer".parse::<Role>(), Ok(Role::Deployer));
        assert!(
            "root"
                .parse::<Role>()
                .unwrap_err()
                .contains("unknown role `root`")
        );
    }

    #[test]
    fn a_token_bucket_allows_bursts_then_the_rate() {
        let mut bucket = TokenBucket::new(10, 20, 0);
        for _ in 0..20 {
            assert!(bucket.take(0).is_ok());
        }
        // Empty: the next token comes in 100 ms.
        assert_eq!(bucket.take(0), Err(100));
        assert_eq!(bucket.take(50), Err(50));
        assert!(bucket.take(100).is_ok());
        // A long pause refills to the burst, not beyond.
        let taken = (0..100).filter(|_| bucket.take(60_000).is_ok()).count();
        assert_eq!(taken, 20);
        // A clock going backwards takes nothing back and gives nothing.
        assert!(bucket.take(30_000).is_err());
    }
}
