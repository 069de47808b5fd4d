//! Where a request goes: a tenant's own origin, a claimed host, a
//! function named in the path, a claimed path prefix (in that order);
//! and the table of claims it reads.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use gust_core::deploy;
use gust_core::path;
use gust_core::route::{ClaimTable, RouteClaim};

use super::{Catalog, Served};
use crate::cookies::CookieScope;

/// Which tenant holds each claimed host: the one with the claim nearest
/// the host's root (shortest prefix; the first tenant name on a tie).
/// Claims stored before a host belonged to one tenant can name several
/// tenants on one host; only the holder's are served.
fn host_holders<'a>(
    claims: impl Iterator<Item = (&'a str, &'a RouteClaim)>,
) -> HashMap<&'a str, &'a str> {
    let mut nearest: HashMap<&'a str, (usize, &'a str)> = HashMap::new();
    for (tenant, claim) in claims {
        let Some(host) = claim.host.as_deref() else {
            continue;
        };
        let depth = claim.prefix.as_deref().map_or(0, str::len);
        nearest
            .entry(host)
            .and_modify(|held| *held = (*held).min((depth, tenant)))
            .or_insert((depth, tenant));
    }
    nearest
        .into_iter()
        .map(|(host, (_, tenant))| (host, tenant))
        .collect()
}

/// Where a request goes.
pub(crate) enum Resolved<'p> {
    Found {
        served: Arc<Served>,
        alias: Cow<'p, str>,
        /// The path (and query) the function sees.
        tail: &'p str,
        /// Where the cookies it sets may reach.
        scope: CookieScope,
    },
    /// The path names a function that does not exist.
    NoFunction(&'p str),
    /// The path names no function.
    NoRoute,
}

impl Catalog {
    /// Whether `host` (a Host header) names the shared origin itself.
    fn is_public_host(&self, host: &str) -> bool {
        if self.public_hosts.is_empty() {
            return false;
        }
        let host = host
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(h, _)| h);
        let host = host.strip_suffix('.').unwrap_or(host);
        self.public_hosts
            .iter()
            .any(|own| own.eq_ignore_ascii_case(host))
    }

    /// The tenant whose own origin `host` (a Host header) is, if it is a
    /// subdomain of the tenant domain: `acme.example.dev` → `acme`.
    fn tenant_origin<'h>(&self, host: &'h str) -> Option<&'h str> {
        let domain = self.tenant_domain.as_deref()?;
        let host = host
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(h, _)| h);
        let host = host.strip_suffix('.').unwrap_or(host);
        let cut = host.len().checked_sub(domain.len() + 1)?;
        let (label, rest) = host.split_at(cut);
        (rest[1..].eq_ignore_ascii_case(domain) && rest.starts_with('.') && !label.contains('.'))
            .then_some(label)
    }

    /// Where a request for `host` and `path_and_query` goes: a claimed
    /// host first (and then nothing else), then a function named in the path (`/<name>[:alias]/…`,
    /// `/@<tenant>/…`), then a claimed path prefix.
    #[inline]
    pub fn resolve<'p>(&self, host: &str, path_and_query: &'p str) -> Resolved<'p> {
        if self.tenant_domain.is_some()
            && let Some(tenant) = self.tenant_origin(host)
        {
            // A tenant's own origin serves its functions by name, nothing else.
            let Some((name, tail)) = path::split_function_path(path_and_query) else {
                return Resolved::NoRoute;
            };
            let (name, alias) = deploy::split_qualifier(name);
            let tenant = tenant.to_ascii_lowercase();
            return match self.get(&tenant, name) {
                Some(served) => Resolved::Found {
                    served,
                    alias: Cow::Borrowed(alias),
                    tail,
                    scope: CookieScope::TenantOrigin,
                },
                None => Resolved::NoFunction(name),
            };
        }
        let claimed = |found: Option<(&(String, String), &'p str)>, scope: CookieScope| {
            let ((key, alias), tail) = found?;
            let served = self
                .functions
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(key)
                .cloned()?;
            Some(Resolved::Found {
                served,
                alias: Cow::Owned(alias.clone()),
                tail,
                scope,
            })
        };
        let claims = self
            .claims
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if !claims.is_empty() && claims.claims_host(host) && !self.is_public_host(host) {
            // A claimed host is its holder's origin: other tenants' functions
            // (named in the path or by a path claim) are not served on it,
            // where they would see its users' cookies and tokens.
            return claimed(
                claims.by_host(host, path_and_query),
                CookieScope::TenantOrigin,
            )
            .unwrap_or(Resolved::NoRoute);
        }
        // The shared origin: cookies stay under the part of the path that
        // chose the function.
        let base = |tail: &'p str| CookieScope::SharedOrigin {
            base_len: path_and_query.len() - tail.len(),
        };
        let named = path::split_target(path_and_query);
        if let Some(target) = &named {
            let (name, alias) = deploy::split_qualifier(target.name);
            if let Some(served) = self.get(target.tenant.unwrap_or(DEFAULT_TENANT), name) {
                return Resolved::Found {
                    served,
                    alias: Cow::Borrowed(alias),
                    tail: target.tail,
                    scope: base(target.tail),
                };
            }
        }
        if !claims.is_empty()
            && let Some(found) = claims.by_path(path_and_query)
            && let Some(found) = claimed(Some(found), base(found.1))
        {
            return found;
        }
        match named {
            Some(target) => Resolved::NoFunction(deploy::split_qualifier(target.name).0),
            None => Resolved::NoRoute,
        }
    }

    /// Rebuilds the claim table from the functions' claims.
    pub(super) fn index_claims(&self, functions: &HashMap<String, Arc<Served>>) {
        let holders = host_holders(functions.iter().flat_map(|(key, served)| {
            let tenant = key.split_once('/').map_or("", |(t, _)| t);
            served.claims.iter().map(move |claim| (tenant, claim))
        }));
        let mut table = ClaimTable::default();
        for (key, served) in functions {
            let tenant = key.split_once('/').map_or("", |(t, _)| t);
            for claim in &served.claims {
                if let Some(host) = &claim.host
                    && holders
                        .get(host.as_str())
                        .is_some_and(|holder| *holder != tenant)
                {
                    // Taken before hosts belonged to one tenant: not served.
                    tracing::warn!(%claim, function = %key, "a claim on another tenant's host is ignored; remove it");
                    continue;
                }
                let alias = claim.alias.clone().unwrap_or_else(|| deploy::LIVE.into());
                table.insert(claim, (key.clone(), alias));
            }
        }
        *self.claims.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
    }
}

/// The tenant of paths without `/@<tenant>`.
const DEFAULT_TENANT: &str = "default";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_claimed_by_several_tenants_is_held_by_the_one_nearest_its_root() {
        let claim = |text: &str| text.parse::<RouteClaim>().unwrap();
        let (shop, cart, other, api) = (
            claim("shop.example.com"),
            claim("shop.example.com/cart"),
            claim("other.example.com/a/b"),
            claim("api.example.com/v1"),
        );
        let holders = host_holders(
            [
                ("mallory", &cart),
                ("shopco", &shop),
                ("zed", &other),
                ("acme", &api),
                ("bob", &api),
            ]
            .into_iter(),
        );
        assert_eq!(holders["shop.example.com"], "shopco");
        assert_eq!(holders["other.example.com"], "zed");
        assert_eq!(holders["api.example.com"], "acme", "a tie: the first name");
    }
}
