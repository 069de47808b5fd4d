use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a name must not be empty")]
    Empty,
    #[error("`{0}` is longer than 63 characters")]
    TooLong(String),
    #[error(
        "`{0}` is not a valid name: use lowercase letters, digits and `-`, starting with a letter and not ending with `-`"
    )]
    Invalid(String),
}

/// Validates a DNS-label-like name: it ends up in URLs, keys and log lines.
pub(crate) fn check_label(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > 63 {
        return Err(NameError::TooLong(name.to_string()));
    }
    let bytes = name.as_bytes();
    let ok_chars = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    if !ok_chars || !bytes[0].is_ascii_lowercase() || bytes[bytes.len() - 1] == b'-' {
        return Err(NameError::Invalid(name.to_string()));
    }
    Ok(())
}

/// A function's name, unique within its tenant: `hello`, `resize-image`.
/// Shared, not copied, when cloned (a request's path clones it several times).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FunctionName(Arc<str>);

impl FunctionName {
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        check_label(&name)?;
        Ok(Self(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name itself, shared (for a value that outlives a borrow).
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl TryFrom<String> for FunctionName {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<FunctionName> for String {
    fn from(value: FunctionName) -> Self {
        value.0.to_string()
    }
}

impl fmt::Display for FunctionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The tenant that owns a record. Every stored record carries one; until
/// tenants exist it is always [`TenantId::default_tenant`]. Shared, not
/// copied, when cloned.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(Arc<str>);

impl TenantId {
    pub fn new(id: impl Into<String>) -> Result<Self, NameError> {
        let id = id.into();
        check_label(&id)?;
        Ok(Self(id.into()))
    }

    /// The tenant of a single-team installation.
    pub fn default_tenant() -> Self {
        Self("default".into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id itself, shared (for a value that outlives a borrow).
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl Default for TenantId {
    fn default() -> Self {
        Self::default_tenant()
    }
}

impl TryFrom<String> for TenantId {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<TenantId> for String {
    fn from(value: TenantId) -> Self {
        value.0.to_string()
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "hello", "resize-image", "v2", "a-1-b"] {
            assert!(FunctionName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_what_would_break_urls_or_keys() {
        assert_eq!(FunctionName::new(""), Err(NameError::Empty));
        for bad in ["Hello", "1abc", "a_b", "a/b", "-a", "a-", "a.b", "é"] {
            assert!(
                matches!(FunctionName::new(bad), Err(NameError::Invalid(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            FunctionName::new("a".repeat(64)),
            Err(NameError::TooLong(_))
        ));
    }

    #[test]
    fn deserializing_validates() {
        assert!(serde_json::from_str::<FunctionName>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<FunctionName>("\"Not Ok\"").is_err());
    }
}
