//! Routing on the data plane: which function a request path names.
//!
//! A function's default URL is `http://<listen>/<name>`; the function sees the
//! rest of the path, so `GET /hello/items?id=3` reaches `hello` as
//! `GET /items?id=3`. Pure string work, no allocation on the hot path.

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
    fn guest_paths_are_absolute() {
        assert_eq!(guest_path(""), "/");
        assert_eq!(guest_path("?x=1"), "/?x=1");
        assert_eq!(guest_path("/a"), "/a");
    }
}
