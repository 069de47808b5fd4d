//! The compiled-artifact cache: one file per component per engine, named by
//! the component's content digest and the engine's compatibility fingerprint,
//! so a new Gust (or other engine settings) never loads an incompatible
//! artifact; it compiles again instead.
//!
//! Loading an artifact maps machine code into the process, so a damaged
//! file (a bad disk, a stray write, a torn copy) must never be loaded: each
//! file ends with the CRC-32 of what precedes it and a marker, checked
//! before the bytes reach wasmtime. A file that fails the check is treated
//! as absent and the component is compiled again. The files are the
//! server's own (written atomically into its data directory), so the check
//! is against damage, not forgery: a CRC, at tens of GB/s, keeps the check
//! off a cold start's critical path (SHA-256 took a quarter of one).

use std::hash::{Hash as _, Hasher as _};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use wasmtime::Engine;

use crate::RuntimeError;

pub(crate) struct ArtifactCache {
    dir: PathBuf,
    fingerprint: String,
}

impl ArtifactCache {
    pub fn open(dir: &Path, engine: &Engine) -> Result<Self, RuntimeError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| RuntimeError::Artifacts(format!("create {}: {e}", dir.display())))?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self {
            dir: dir.to_path_buf(),
            fingerprint: format!("{:016x}", hasher.finish()),
        })
    }

    /// Where the artifact of `digest` (`sha256:<hex>`) lives for this engine.
    pub fn path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir.join(format!("{hex}-{}.cwasm", self.fingerprint))
    }

    /// Removes the files no one will load: artifacts of components not in
    /// `keep`, of another engine (an older Gust), and temporary files a
    /// crash left, each only once untouched for `grace` (a deploy
    /// compiles before its version is recorded). Returns (files, bytes).
    pub fn sweep(
        &self,
        keep: &std::collections::HashSet<String>,
        grace: std::time::Duration,
    ) -> std::io::Result<(u64, u64)> {
        let now = std::time::SystemTime::now();
        let (mut files, mut bytes) = (0, 0);
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let wanted = name
                .strip_suffix(".cwasm")
                .and_then(|stem| stem.rsplit_once('-'))
                .is_some_and(|(hex, fingerprint)| {
                    fingerprint == self.fingerprint && keep.contains(&format!("sha256:{hex}"))
                });
            let meta = entry.metadata()?;
            let idle = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|idle| idle >= grace);
            if wanted || !idle || !meta.is_file() {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    files += 1;
                    bytes += meta.len();
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok((files, bytes))
    }

    /// Writes an artifact atomically: readers see the whole file or none.
    pub fn store(&self, digest: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
        let path = self.path(digest);
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(bytes)?;
        tmp.write_all(&checksum(bytes))?;
        tmp.write_all(MARKER)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(path)
    }
}

/// Ends every artifact file, after the checksum. (Files from before,
/// ending `GUSTSUM1` with a SHA-256, are compiled again.)
const MARKER: &[u8; 8] = b"GUSTCRC1";
const CHECKSUM_LEN: usize = 4;

fn checksum(bytes: &[u8]) -> [u8; CHECKSUM_LEN] {
    crc32fast::hash(bytes).to_le_bytes()
}

/// Reads an artifact and checks it; the serialized component without the
/// trailer, or why the file cannot be trusted.
pub(crate) fn read_verified(path: &Path) -> Result<Vec<u8>, String> {
    let mut bytes = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let body_len = bytes
        .len()
        .checked_sub(CHECKSUM_LEN + MARKER.len())
        .ok_or("the artifact is truncated")?;
    if &bytes[bytes.len() - MARKER.len()..] != MARKER {
        return Err("the artifact has no checksum (truncated or not written by Gust)".into());
    }
    if bytes[body_len..body_len + CHECKSUM_LEN] != checksum(&bytes[..body_len]) {
        return Err("the artifact's checksum does not match: it is damaged".into());
    }
    bytes.truncate(body_len);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn damaged_artifacts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::default();
        let cache = ArtifactCache::open(dir.path(), &engine).unwrap();
        let path = cache.store("sha256:ab", b"machine code").unwrap();
        assert_eq!(read_verified(&path).unwrap(), b"machine code");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[3] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(read_verified(&path).unwrap_err().contains("damaged"));
        std::fs::write(&path, &bytes[..20]).unwrap();
        assert!(read_verified(&path).is_err());
    }
}
