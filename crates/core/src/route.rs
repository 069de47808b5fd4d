//! Routes: a function's claims on host names and path prefixes of the data
//! plane (`gust route add`), and the table that matches a request against
//! them, longest prefix first. Addresses in any form, `localhost` and
//! `gust.internal` are no one's. Pure.

/// A function's claim on a host name and/or a path prefix of the data
/// plane, for one of its aliases (default `live`). Written
/// `api.example.com`, `api.example.com/v1`, `/shop`, with `:alias` after.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct RouteClaim {
    /// A host name (lowercase, no port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// A path prefix: `/` and segments, no trailing `/` (absent: every path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The alias it serves (absent: `live`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
}

impl std::str::FromStr for RouteClaim {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (spec, alias) = match text.rsplit_once(':') {
            Some((spec, alias)) => (spec, Some(alias.to_string())),
            None => (text, None),
        };
        let (host, prefix) = match spec.find('/') {
            Some(0) => (None, Some(spec.to_string())),
            Some(i) => (Some(spec[..i].to_string()), Some(spec[i..].to_string())),
            None => (Some(spec.to_string()), None),
        };
        RouteClaim {
            host,
            prefix,
            alias,
        }
        .normalized()
    }
}

impl std::fmt::Display for RouteClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.host.as_deref().unwrap_or(""))?;
        f.write_str(self.prefix.as_deref().unwrap_or(""))?;
        if let Some(alias) = &self.alias {
            write!(f, ":{alias}")?;
        }
        Ok(())
    }
}

impl RouteClaim {
    /// Checks and normalises a claim: a host is lowercased and must be a
    /// DNS name; a prefix starts with `/`, has no empty segment, no query
    /// and no trailing `/`, and may not enter a tenant's space (`/@…`).
    pub fn normalized(mut self) -> Result<RouteClaim, String> {
        if let Some(host) = &mut self.host {
            *host = host.trim().to_ascii_lowercase();
            let valid = !host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                });
            if !valid {
                return Err(format!("`{host}` is not a host name (no port, no scheme)"));
            }
            // Addresses and this machine's own names reach every tenant's
            // functions by path: no function may take them over.
            if is_address_like(host) || is_own_name(host) {
                return Err(format!(
                    "`{host}` cannot be claimed: addresses, localhost and gust.internal serve every function by its path"
                ));
            }
        }
        if let Some(prefix) = &mut self.prefix {
            let trimmed = prefix.trim_end_matches('/');
            if trimmed.is_empty() {
                // `/` claims every path: the same as no prefix.
                self.prefix = None;
            } else {
                let valid = trimmed.starts_with('/')
                    && !trimmed.starts_with("/@")
                    && !trimmed[1..]
                        .split('/')
                        .any(|segment| matches!(segment, "" | "." | ".."))
                    && trimmed
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !matches!(b, b'?' | b'#' | b'%' | b'\\'));
                if !valid {
                    return Err(format!(
                        "`{prefix}` is not a path prefix: `/` then segments (such as `/api/v1`), no query, no `.` or `..` segment, no `%` or `\\`, not `/@…`"
                    ));
                }
                *prefix = trimmed.to_string();
            }
        }
        if self.host.is_none() && self.prefix.is_none() {
            return Err("a route claims a host name, a path prefix, or both".into());
        }
        if let Some(alias) = &self.alias {
            crate::deploy::check_alias(alias).map_err(|e| e.to_string())?;
        }
        Ok(self)
    }

    /// What two claims must not share: host and prefix (not the alias).
    pub fn place(&self) -> String {
        format!(
            "{}{}",
            self.host.as_deref().unwrap_or("*"),
            self.prefix.as_deref().unwrap_or("")
        )
    }
}

/// The host guests call other functions on (`http://gust.internal/<name>/…`),
/// in any case and with or without a trailing dot: never a DNS name, never
/// claimable.
pub const INTERNAL_HOST: &str = "gust.internal";

/// Whether `host` (as written in a URL, any case) is [`INTERNAL_HOST`].
pub fn is_internal_host(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.eq_ignore_ascii_case(INTERNAL_HOST)
}

/// Whether `host` (lowercase) is an IPv4 address in any form a URL parser
/// accepts: a name whose last label is a number (`127.1`, `2130706433`)
/// or a hexadecimal one (`0x7f000001`, `127.0.0.0x1`) is an address, not
/// a DNS name.
fn is_address_like(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let last = host.rsplit('.').next().unwrap_or(host);
    let decimal = !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit());
    let hex = last
        .strip_prefix("0x")
        .is_some_and(|digits| digits.bytes().all(|b| b.is_ascii_hexdigit()));
    decimal || hex
}

/// Names that mean this node itself: `localhost` and the host guests use
/// to call other functions (`gust.internal`), with their subdomains.
fn is_own_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    ["localhost", INTERNAL_HOST]
        .iter()
        .any(|own| host == *own || host.strip_suffix(own).is_some_and(|s| s.ends_with('.')))
}

/// The claims of all functions, for matching requests. Host claims are
/// matched first (longest prefix wins), then — only when the path names
/// no function — claims of a path alone.
#[derive(Debug, Clone)]
pub struct ClaimTable<T> {
    by_host: std::collections::HashMap<String, Vec<(String, T)>>,
    any_host: Vec<(String, T)>,
}

impl<T> Default for ClaimTable<T> {
    fn default() -> Self {
        Self {
            by_host: Default::default(),
            any_host: Vec::new(),
        }
    }
}

impl<T> ClaimTable<T> {
    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty() && self.any_host.is_empty()
    }

    pub fn insert(&mut self, claim: &RouteClaim, target: T) {
        let prefix = claim.prefix.clone().unwrap_or_default();
        let list = match &claim.host {
            Some(host) => self.by_host.entry(host.clone()).or_default(),
            None => &mut self.any_host,
        };
        list.push((prefix, target));
        // Longest prefix first.
        list.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
    }

    /// The claim of `host` (a Host header: any port is ignored) matching
    /// `path_and_query`, with the path the function sees.
    pub fn by_host<'p>(&self, host: &str, path_and_query: &'p str) -> Option<(&T, &'p str)> {
        first_match(self.host_claims(host)?, path_and_query)
    }

    /// Whether any function claims `host` (a Host header): such a host is
    /// its holder's origin, and serves nothing but its claims.
    pub fn claims_host(&self, host: &str) -> bool {
        self.host_claims(host).is_some()
    }

    fn host_claims(&self, host: &str) -> Option<&Vec<(String, T)>> {
        let host = host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        });
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.by_host.get(&host.to_ascii_lowercase())
        } else {
            self.by_host.get(host)
        }
    }

    /// The claim of a path alone matching `path_and_query`.
    pub fn by_path<'p>(&self, path_and_query: &'p str) -> Option<(&T, &'p str)> {
        first_match(&self.any_host, path_and_query)
    }
}

fn first_match<'a, 'p, T>(list: &'a [(String, T)], path: &'p str) -> Option<(&'a T, &'p str)> {
    list.iter().find_map(|(prefix, target)| {
        let rest = path.strip_prefix(prefix.as_str())?;
        (rest.is_empty() || rest.starts_with(['/', '?'])).then_some((target, rest))
    })
}

#[cfg(test)]
mod claim_tests {
    use super::*;

    fn claim(text: &str) -> RouteClaim {
        text.parse().unwrap()
    }

    #[test]
    fn claims_parse_and_print() {
        let c = claim("API.example.com/v1/:staging");
        assert_eq!(c.host.as_deref(), Some("api.example.com"));
        assert_eq!(c.prefix.as_deref(), Some("/v1"));
        assert_eq!(c.alias.as_deref(), Some("staging"));
        assert_eq!(c.to_string(), "api.example.com/v1:staging");
        assert_eq!(claim("/shop").place(), "*/shop");
        assert_eq!(claim("shop.example.com/").prefix, None);
        for bad in [
            "",
            "/",
            "/@acme/x",
            "/a//b",
            "/a?b",
            "ex ample.com",
            "host:8080/x",
            "-a.com",
            "/x:Bad",
            "0x7f000001",
            "0X7F000001",
            "127.1",
            "2130706433",
            "foo.0x1",
            "gust.internal",
            "GUST.INTERNAL",
            "Gust.Internal/x",
            "api.gust.internal",
            "localhost/x",
            "a.localhost",
            "/a/../b",
            "/..",
            "/a/./b",
            "/a%2fb",
            "/a%2Fb",
            "/a\\b",
            "shop.example.com/cart/..",
        ] {
            assert!(bad.parse::<RouteClaim>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_longest_prefix_on_a_segment_boundary_wins() {
        let mut t = ClaimTable::default();
        t.insert(&claim("api.example.com"), "root");
        t.insert(&claim("api.example.com/v1"), "v1");
        t.insert(&claim("api.example.com/v1/admin"), "admin");
        t.insert(&claim("/shop"), "shop");
        assert_eq!(
            t.by_host("api.example.com", "/v1/x?y=1"),
            Some((&"v1", "/x?y=1"))
        );
        assert_eq!(
            t.by_host("API.example.com:8080", "/v1/admin"),
            Some((&"admin", ""))
        );
        assert_eq!(
            t.by_host("api.example.com", "/v10"),
            Some((&"root", "/v10"))
        );
        assert_eq!(t.by_host("api.example.com", "/v1?q"), Some((&"v1", "?q")));
        assert_eq!(t.by_host("other.example.com", "/v1"), None);
        assert_eq!(t.by_path("/shop/cart"), Some((&"shop", "/cart")));
        assert_eq!(t.by_path("/shopping"), None);
        assert!(!t.is_empty());
    }
}
