//! The built-in key-value store's vocabulary: bucket names, key rules, how
//! a tenant's key is laid out in storage, and the change event a write
//! produces for change triggers. Pure: the store and the runtime use it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::TenantId;
use crate::names::{NameError, check_label};

/// The bucket a function gets when it opens `""` or `default`.
pub const DEFAULT_BUCKET: &str = "default";
/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Most keys in one batch call.
pub const MAX_BATCH_KEYS: usize = 1000;
/// Values up to this size travel inside change events; larger ones are
/// announced by size (the function reads the value if it needs it).
pub const MAX_INLINE_CHANGE_BYTES: usize = 64 << 10;

/// Why a key-value request was refused; each message names the fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("bucket name: {0}")]
    Bucket(#[from] NameError),
    #[error("a key must not be empty")]
    EmptyKey,
    #[error("key is {0} bytes long; the limit is {MAX_KEY_BYTES}")]
    KeyTooLong(usize),
    #[error("keys must not contain control characters")]
    KeyControl,
    #[error("value is {0} bytes; the limit is {MAX_VALUE_BYTES}")]
    ValueTooLarge(usize),
    #[error("{0} keys in one batch; the limit is {MAX_BATCH_KEYS}")]
    BatchTooLarge(usize),
}

/// A bucket's name: a DNS-label-like name, unique within its tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BucketName(String);

impl BucketName {
    /// `""` names the default bucket.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        if name.is_empty() {
            return Ok(Self(DEFAULT_BUCKET.to_string()));
        }
        check_label(&name)?;
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for BucketName {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<BucketName> for String {
    fn from(value: BucketName) -> Self {
        value.0
    }
}

impl fmt::Display for BucketName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn check_key(key: &str) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KvError::KeyTooLong(key.len()));
    }
    if key.chars().any(char::is_control) {
        return Err(KvError::KeyControl);
    }
    Ok(())
}

pub fn check_value(value: &[u8]) -> Result<(), KvError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(KvError::ValueTooLarge(value.len()));
    }
    Ok(())
}

/// Where a bucket's keys live in storage: `<tenant>/<bucket>/`. Tenant and
/// bucket names cannot hold `/`, so one bucket's prefix never covers another's.
pub fn bucket_prefix(tenant: &TenantId, bucket: &BucketName) -> String {
    format!("{tenant}/{bucket}/")
}

/// A key as stored, and back.
pub fn storage_key(tenant: &TenantId, bucket: &BucketName, key: &str) -> String {
    format!("{tenant}/{bucket}/{key}")
}

pub fn parse_storage_key(stored: &str) -> Option<(TenantId, BucketName, &str)> {
    let (tenant, rest) = stored.split_once('/')?;
    let (bucket, key) = rest.split_once('/')?;
    Some((
        TenantId::new(tenant).ok()?,
        BucketName::new(bucket).ok()?,
        key,
    ))
}

/// What a change event carries as its data (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEvent {
    pub bucket: String,
    pub key: String,
    /// `put` or `delete`.
    pub operation: String,
    pub revision: u64,
    /// Size of the new value in bytes (0 for a delete).
    pub size: u64,
    /// The new value, when it is UTF-8 text of at most [`MAX_INLINE_CHANGE_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The new value in base64, when it is binary of at most [`MAX_INLINE_CHANGE_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
}

impl ChangeEvent {
    pub fn new(bucket: &BucketName, key: &str, revision: u64, value: Option<&[u8]>) -> Self {
        let (operation, size) = match value {
            Some(v) => ("put", v.len() as u64),
            None => ("delete", 0),
        };
        let inline = value.filter(|v| v.len() <= MAX_INLINE_CHANGE_BYTES);
        let text = inline.and_then(|v| std::str::from_utf8(v).ok());
        Self {
            bucket: bucket.to_string(),
            key: key.to_string(),
            operation: operation.to_string(),
            revision,
            size,
            value: text.map(str::to_string),
            value_base64: match (inline, text) {
                (Some(v), None) => Some(base64(v)),
                _ => None,
            },
        }
    }
}

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_keys() {
        assert_eq!(BucketName::new("").unwrap().as_str(), "default");
        assert!(BucketName::new("Users").is_err());
        assert!(BucketName::new("a/b").is_err());
        assert_eq!(check_key(""), Err(KvError::EmptyKey));
        assert_eq!(check_key("a\nb"), Err(KvError::KeyControl));
        assert_eq!(check_key(&"k".repeat(1025)), Err(KvError::KeyTooLong(1025)));
        assert!(check_key("users/42:name ü").is_ok());
        assert!(check_value(&vec![0; MAX_VALUE_BYTES + 1]).is_err());
    }

    #[test]
    fn storage_keys_round_trip() {
        let t = TenantId::default_tenant();
        let b = BucketName::new("users").unwrap();
        let stored = storage_key(&t, &b, "a/b/c");
        assert!(stored.starts_with(&bucket_prefix(&t, &b)));
        assert_eq!(parse_storage_key(&stored), Some((t, b, "a/b/c")));
        assert_eq!(parse_storage_key("nobucket"), None);
    }

    #[test]
    fn change_events_inline_small_values() {
        let b = BucketName::new("b").unwrap();
        let text = ChangeEvent::new(&b, "k", 7, Some(b"hi"));
        assert_eq!((text.operation.as_str(), text.size), ("put", 2));
        assert_eq!(text.value.as_deref(), Some("hi"));
        let binary = ChangeEvent::new(&b, "k", 8, Some(&[0xff, 0, 1]));
        assert_eq!(binary.value_base64.as_deref(), Some("/wAB"));
        let big = ChangeEvent::new(&b, "k", 9, Some(&vec![b'a'; MAX_INLINE_CHANGE_BYTES + 1]));
        assert_eq!((big.value, big.value_base64), (None, None));
        let gone = ChangeEvent::new(&b, "k", 10, None);
        assert_eq!((gone.operation.as_str(), gone.size), ("delete", 0));
    }

    #[test]
    fn base64_matches_rfc_4648() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }
}
