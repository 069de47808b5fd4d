//! Cookies a guest sets, confined to what it owns.
//!
//! On the shared origin every tenant's functions live side by side
//! (`/@acme/shop`, `/@mallory/x`, `/hello`), so a browser would send a
//! cookie set with `Path=/` (or a `Domain` reaching a parent domain) to
//! every other function too. A `Set-Cookie` from a function served on the
//! shared origin therefore loses its `Domain` attribute, and its `Path`
//! becomes the function's own base path unless it already lies inside it.
//! On a per-tenant origin (`<tenant>.<tenant-domain>`) and on a host a
//! tenant claims, the tenant owns the path space but not the parent
//! domain, whose other subdomains may be other tenants': only `Domain` is
//! removed (every cookie a guest sets is host-only). Pure code.
//!
//! Other headers act on a whole origin, not a path: on the shared origin
//! `Service-Worker-Allowed` (a worker controlling every tenant's paths)
//! and `Clear-Site-Data` (wiping every tenant's state) are dropped.

/// Cookie names the node itself uses (the dashboard's session, on the
/// API listener, which may share its host with the data plane: browsers
/// scope cookies by host, not port). A guest never receives them and
/// never sets them, on any origin.
pub(crate) const RESERVED: [&str; 2] = ["gust_session", "__Host-gust_session"];

fn reserved(name: &str) -> bool {
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name.trim()))
}

/// Whether a `Set-Cookie` value sets one of the node's own cookies.
pub(crate) fn sets_reserved(set_cookie: &str) -> bool {
    set_cookie
        .split(';')
        .next()
        .and_then(|pair| pair.split_once('='))
        .is_some_and(|(name, _)| reserved(name))
}

/// A `Cookie` header without the node's own cookies; `None` when it has
/// none of them (unchanged), `Some("")` when nothing else is left.
pub(crate) fn without_reserved(cookie: &str) -> Option<String> {
    let pairs: Vec<&str> = cookie.split(';').map(str::trim).collect();
    let kept: Vec<&str> = pairs
        .iter()
        .copied()
        .filter(|pair| !reserved(pair.split_once('=').map_or(*pair, |(name, _)| name)))
        .collect();
    (kept.len() != pairs.len()).then(|| kept.join("; "))
}

/// Where a response's cookies may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CookieScope {
    /// The shared origin: the function's own base path (`/@acme/shop`),
    /// the first `base_len` bytes of the request's path.
    SharedOrigin { base_len: usize },
    /// A tenant's own subdomain of the tenant domain, or a host it claims.
    TenantOrigin,
}

/// `set_cookie` (one `Set-Cookie` value) confined to `scope`, for a
/// request to `path` (its path and query); `None` when it needs no change.
pub(crate) fn confine(set_cookie: &str, scope: CookieScope, path: &str) -> Option<String> {
    let base = match scope {
        CookieScope::TenantOrigin => None,
        CookieScope::SharedOrigin { base_len } => Some(
            path.get(..base_len)
                .unwrap_or_default()
                .trim_end_matches('/'),
        ),
    };
    let mut parts = set_cookie.split(';');
    let pair = parts.next().unwrap_or_default();
    let mut out = String::with_capacity(set_cookie.len() + 16);
    out.push_str(pair.trim());
    let mut changed = false;
    let mut path_seen = false;
    for attribute in parts {
        let trimmed = attribute.trim();
        let name = trimmed
            .split_once('=')
            .map_or(trimmed, |(name, _)| name)
            .trim();
        if name.eq_ignore_ascii_case("domain") {
            changed = true;
            continue;
        }
        if name.eq_ignore_ascii_case("path")
            && let Some(base) = base
        {
            let value = trimmed.split_once('=').map_or("", |(_, v)| v.trim());
            // A later Path attribute wins in browsers: keep only ours.
            if path_seen || !within(value, base) {
                changed = true;
                continue;
            }
            path_seen = true;
        }
        if trimmed.is_empty() {
            continue;
        }
        out.push_str("; ");
        out.push_str(trimmed);
    }
    if let Some(base) = base
        && !path_seen
    {
        // No Path (the browser would default it to the request's
        // directory, which may be the shared root) or one outside: pin it.
        out.push_str("; Path=");
        out.push_str(if base.is_empty() { "/" } else { base });
        changed = true;
    }
    changed.then_some(out)
}

/// Response headers that reach every path of an origin: dropped on the
/// shared origin.
pub(crate) const ORIGIN_WIDE: [&str; 2] = ["service-worker-allowed", "clear-site-data"];

/// Whether cookie path `path` lies inside `base` (on a segment boundary)
/// and does not try to leave it with dot segments.
fn within(path: &str, base: &str) -> bool {
    if !path.starts_with('/') || path.split('/').any(|s| s == ".." || s == ".") {
        return false;
    }
    match path.strip_prefix(base) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nodes_own_cookies_neither_reach_nor_come_from_a_guest() {
        assert!(sets_reserved("gust_session=abc; Path=/ui"));
        assert!(sets_reserved(" GUST_SESSION=abc"));
        assert!(sets_reserved("__Host-gust_session=abc; Secure; Path=/"));
        assert!(!sets_reserved("gust_sessionx=abc"));
        assert!(!sets_reserved("theme=dark; Path=/"));
        assert_eq!(
            without_reserved("a=1; gust_session=s; b=2"),
            Some("a=1; b=2".into())
        );
        assert_eq!(without_reserved("gust_session=s"), Some(String::new()));
        assert_eq!(without_reserved("a=1; b=2"), None);
    }

    const SHOP: CookieScope = CookieScope::SharedOrigin { base_len: 11 };
    const PATH: &str = "/@acme/shop/cart?x=1";

    #[test]
    fn shared_origin_cookies_stay_under_the_function() {
        assert_eq!(
            confine("sid=1; Path=/; Domain=example.com; HttpOnly", SHOP, PATH).as_deref(),
            Some("sid=1; HttpOnly; Path=/@acme/shop")
        );
        assert_eq!(
            confine("sid=1", SHOP, PATH).as_deref(),
            Some("sid=1; Path=/@acme/shop")
        );
        assert_eq!(
            confine("sid=1; path=/@acme/shop/cart; Secure", SHOP, PATH),
            None,
            "inside its own path: unchanged"
        );
        assert_eq!(
            confine("sid=1; Path=/@acme/shopping", SHOP, PATH).as_deref(),
            Some("sid=1; Path=/@acme/shop"),
            "a prefix that is not a segment boundary"
        );
        assert_eq!(
            confine("sid=1; Path=/@acme/shop/../../", SHOP, PATH).as_deref(),
            Some("sid=1; Path=/@acme/shop")
        );
        assert_eq!(
            confine("sid=1; Path=/@acme/shop; Path=/", SHOP, PATH).as_deref(),
            Some("sid=1; Path=/@acme/shop"),
            "a second Path would win in the browser"
        );
        assert_eq!(
            confine("sid=1;DOMAIN=.x.com;Path=/@acme/shop", SHOP, PATH).as_deref(),
            Some("sid=1; Path=/@acme/shop")
        );
    }

    #[test]
    fn tenant_origins_and_claimed_hosts_lose_only_the_domain() {
        assert_eq!(
            confine(
                "a=b; Path=/; Domain=example.dev",
                CookieScope::TenantOrigin,
                "/x"
            )
            .as_deref(),
            Some("a=b; Path=/")
        );
        assert_eq!(
            confine("a=b; Path=/", CookieScope::TenantOrigin, "/x"),
            None
        );
        assert_eq!(
            confine(
                "a=b; Path=/; Domain=example.com",
                CookieScope::TenantOrigin,
                "/x"
            )
            .as_deref(),
            Some("a=b; Path=/"),
            "a claimed host's cookies must not reach its parent domain's other hosts"
        );
    }
}
