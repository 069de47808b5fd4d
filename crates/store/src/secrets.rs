//! Secrets at rest: a node key (32 random bytes in a file only its owner
//! may read) seals each secret value with ChaCha20-Poly1305, bound to
//! where it belongs (tenant, function, alias, name) as associated data,
//! so a sealed value copied elsewhere does not open. The sealed text is
//! `hex(nonce ‖ ciphertext ‖ tag)`.

use std::io::Write as _;
use std::path::Path;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// Why a secret could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the secret key file {path}: {error}")]
    KeyFile { path: String, error: String },
    #[error("no randomness for a nonce")]
    Random,
    #[error(
        "a sealed secret does not open with this node's key (damaged, moved, or sealed by another key)"
    )]
    Open,
}

/// Seals and opens secret values with the node's key.
pub struct SecretBox {
    key: LessSafeKey,
    random: SystemRandom,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// The key in `path`, made (readable by its owner only) if missing.
    pub fn load_or_create(path: &Path) -> Result<SecretBox, SecretError> {
        let fail = |error: String| SecretError::KeyFile {
            path: path.display().to_string(),
            error,
        };
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                SystemRandom::new()
                    .fill(&mut key)
                    .map_err(|_| SecretError::Random)?;
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut file = options.open(path).map_err(|e| fail(e.to_string()))?;
                file.write_all(&key).map_err(|e| fail(e.to_string()))?;
                file.sync_all().map_err(|e| fail(e.to_string()))?;
                key.to_vec()
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        Self::from_key(&bytes).ok_or_else(|| fail("it does not hold a 32-byte key".into()))
    }

    /// A box with `key` (32 bytes).
    pub fn from_key(key: &[u8]) -> Option<SecretBox> {
        let key = UnboundKey::new(&aead::CHACHA20_POLY1305, key).ok()?;
        Some(SecretBox {
            key: LessSafeKey::new(key),
            random: SystemRandom::new(),
        })
    }

    /// Seals `plain`, bound to `context`.
    pub fn seal(&self, context: &str, plain: &str) -> Result<String, SecretError> {
        let mut nonce = [0u8; aead::NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| SecretError::Random)?;
        let mut data = plain.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .map_err(|_| SecretError::Random)?;
        let mut out = String::with_capacity(2 * (nonce.len() + data.len()));
        for b in nonce.iter().chain(&data) {
            out.push_str(&format!("{b:02x}"));
        }
        Ok(out)
    }

    /// Opens what [`SecretBox::seal`] made for `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<String, SecretError> {
        let bytes: Option<Vec<u8>> = (0..sealed.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(sealed.get(i..i + 2)?, 16).ok())
            .collect();
        let mut bytes = bytes.ok_or(SecretError::Open)?;
        if bytes.len() < aead::NONCE_LEN {
            return Err(SecretError::Open);
        }
        let mut data = bytes.split_off(aead::NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&bytes).map_err(|_| SecretError::Open)?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut data)
            .map_err(|_| SecretError::Open)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SecretError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_in_their_place_and_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let sealer = SecretBox::load_or_create(&path).unwrap();
        let sealed = sealer.seal("t/f:/DB_PASSWORD", "hunter2").unwrap();
        assert!(!sealed.contains("hunter2"));
        assert_ne!(sealed, sealer.seal("t/f:/DB_PASSWORD", "hunter2").unwrap());
        // The same key file opens it again (after a restart).
        let again = SecretBox::load_or_create(&path).unwrap();
        assert_eq!(again.open("t/f:/DB_PASSWORD", &sealed).unwrap(), "hunter2");
        assert!(again.open("t/other:/DB_PASSWORD", &sealed).is_err());
        assert!(
            again
                .open("t/f:/DB_PASSWORD", &sealed[..sealed.len() - 2])
                .is_err()
        );
        assert!(again.open("t/f:/DB_PASSWORD", "zz").is_err());
        let other = SecretBox::from_key(&[7; 32]).unwrap();
        assert!(other.open("t/f:/DB_PASSWORD", &sealed).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
