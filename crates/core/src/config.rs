//! A function's variables: plain values and secrets, set per function and
//! overridden per alias, seen by the guest as environment variables and
//! through `wasi:config/store`. A secret is stored sealed (the store
//! seals and opens it; this crate only carries the sealed text) and is
//! never shown by a listing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Variables a function (or an alias) may have, at most.
pub const MAX_VARIABLES: usize = 64;
/// Longest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 32 * 1024;
/// Longest name.
pub const MAX_NAME_BYTES: usize = 128;

/// One variable's value as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Variable {
    Plain {
        value: String,
    },
    /// Sealed by the store's secret key: only the data plane opens it.
    Secret {
        sealed: String,
    },
}

impl Variable {
    pub fn is_secret(&self) -> bool {
        matches!(self, Variable::Secret { .. })
    }
}

/// Name → value.
pub type Variables = BTreeMap<String, Variable>;

/// A variable's name: an environment variable's (letters, digits and `_`,
/// not starting with a digit), at most [`MAX_NAME_BYTES`].
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid variable name: use letters, digits and `_` (at most {MAX_NAME_BYTES}), not starting with a digit"
        ))
    }
}

/// A value's size and content (no NUL: it becomes an environment variable).
pub fn check_value(name: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "`{name}` is {} bytes long; a value may be at most {MAX_VALUE_BYTES}",
            value.len()
        ));
    }
    if value.contains('\0') {
        return Err(format!("`{name}` contains a NUL character"));
    }
    Ok(())
}

/// `text` with each `${NAME}` replaced by `lookup(NAME)` (the deployer's
/// environment, in `gust.toml`); an unset name is an error that names it.
pub fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("`{text}`: `${{` without its `}}`"))?;
        let name = &after[..end];
        let value =
            lookup(name).ok_or_else(|| format!("the environment variable `{name}` is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// What the guest sees: the function's variables, then the alias's over
/// them, in name order.
pub fn merged<'a>(function: &'a Variables, alias: &'a Variables) -> Vec<(&'a str, &'a Variable)> {
    let mut all: BTreeMap<&str, &Variable> =
        function.iter().map(|(k, v)| (k.as_str(), v)).collect();
    for (k, v) in alias {
        all.insert(k.as_str(), v);
    }
    all.into_iter().collect()
}

/// What a sealed secret is bound to, so that it cannot be moved to another
/// function, alias or name and still open.
pub fn secret_context(tenant: &str, function: &str, alias: Option<&str>, name: &str) -> String {
    format!("{tenant}/{function}:{}/{name}", alias.unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_environment_variable_names() {
        assert!(check_name("GREETING").is_ok());
        assert!(check_name("_x1").is_ok());
        assert!(check_name("1X").is_err());
        assert!(check_name("A-B").is_err());
        assert!(check_name("").is_err());
        assert!(check_name(&"A".repeat(129)).is_err());
        assert!(check_value("A", "ok").is_ok());
        assert!(check_value("A", "a\0b").is_err());
        assert!(check_value("A", &"x".repeat(MAX_VALUE_BYTES + 1)).is_err());
    }

    #[test]
    fn an_alias_overrides_the_function() {
        let plain = |v: &str| Variable::Plain { value: v.into() };
        let function: Variables = [("A".into(), plain("1")), ("B".into(), plain("2"))].into();
        let alias: Variables = [("B".into(), plain("3")), ("C".into(), plain("4"))].into();
        let seen: Vec<(&str, &Variable)> = merged(&function, &alias);
        let names: Vec<&str> = seen.iter().map(|(k, _)| *k).collect();
        assert_eq!(names, ["A", "B", "C"]);
        assert_eq!(seen[1].1, &plain("3"));
    }
}
