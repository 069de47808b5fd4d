//! Addressing a function by URL path on the data plane: which function a
//! request path names (claims on hosts and prefixes are in `route`).
//!
//! A function's default URL is `http://<listen>/<name>`; the function sees the
//! rest of the path, so `GET /hello/items?id=3` reaches `hello` as
//! `GET /items?id=3`. Functions of tenants other than `default` live under
//! `/@<tenant>/<name>`. Pure string work, no allocation on the hot path.

/// Where a request goes: a tenant (`None`: the default one), a function, and
/// what is left of the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    pub tenant: Option<&'a str>,
    pub name: &'a str,
    pub tail: &'a str,
}

/// Splits a request's path-and-query into tenant, function and the rest.
pub fn split_target(path_and_query: &str) -> Option<Target<'_>> {
    if let Some(rest) = path_and_query.strip_prefix("/@") {
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let tenant = &rest[..end];
        if tenant.is_empty() || !rest[end..].starts_with('/') {
            return None;
        }
        let (name, tail) = split_function_path(&rest[end..])?;
        return Some(Target {
            tenant: Some(tenant),
            name,
            tail,
        });
    }
    let (name, tail) = split_function_path(path_and_query)?;
    Some(Target {
        tenant: None,
        name,
        tail,
    })
}

/// The path of a function's URL: `/<name>` in the default tenant, else `/@<tenant>/<name>`.
pub fn function_path(tenant: &crate::TenantId, name: &crate::FunctionName) -> String {
    if tenant.as_str() == crate::TenantId::default_tenant().as_str() {
        format!("/{name}")
    } else {
        format!("/@{tenant}/{name}")
    }
}

/// Splits a request's path-and-query into the function name and the path the
/// function sees. `None` when the path names no function (`/`, `//x`).
pub fn split_function_path(path_and_query: &str) -> Option<(&str, &str)> {
    let rest = path_and_query.strip_prefix('/')?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let name = &rest[..end];
    if name.is_empty() {
        return None;
    }
    let tail = &rest[end..];
    Some((name, tail))
}

/// The path the function sees for a `tail` returned by [`split_function_path`]:
/// always absolute, `/` when empty.
pub fn guest_path(tail: &str) -> std::borrow::Cow<'_, str> {
    if tail.starts_with('/') {
        std::borrow::Cow::Borrowed(tail)
    } else {
        std::borrow::Cow::Owned(format!("/{tail}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_name_and_rest() {
        assert_eq!(split_function_path("/hello"), Some(("hello", "")));
        assert_eq!(split_function_path("/hello/"), Some(("hello", "/")));
        assert_eq!(split_function_path("/hello/a/b"), Some(("hello", "/a/b")));
        assert_eq!(split_function_path("/hello?x=1"), Some(("hello", "?x=1")));
        assert_eq!(
            split_function_path("/hello/x?y=/z"),
            Some(("hello", "/x?y=/z"))
        );
    }

    #[test]
    fn no_function_named() {
        assert_eq!(split_function_path("/"), None);
        assert_eq!(split_function_path(""), None);
        assert_eq!(split_function_path("//x"), None);
        assert_eq!(split_function_path("/?x"), None);
        assert_eq!(split_function_path("hello"), None);
    }

    #[test]
    fn tenants_are_named_after_an_at_sign() {
        let t = split_target("/@acme/hello/x?y").unwrap();
        assert_eq!((t.tenant, t.name, t.tail), (Some("acme"), "hello", "/x?y"));
        let d = split_target("/hello/x").unwrap();
        assert_eq!((d.tenant, d.name, d.tail), (None, "hello", "/x"));
        assert_eq!(split_target("/@acme"), None);
        assert_eq!(split_target("/@acme?x"), None);
        assert_eq!(split_target("/@/hello"), None);
        assert_eq!(split_target("/@acme/"), None);
        let acme = crate::TenantId::new("acme").unwrap();
        let hello = crate::FunctionName::new("hello").unwrap();
        assert_eq!(function_path(&acme, &hello), "/@acme/hello");
        assert_eq!(
            function_path(&crate::TenantId::default_tenant(), &hello),
            "/hello"
        );
    }

    #[test]
    fn guest_paths_are_absolute() {
        assert_eq!(guest_path(""), "/");
        assert_eq!(guest_path("?x=1"), "/?x=1");
        assert_eq!(guest_path("/a"), "/a");
    }
}
