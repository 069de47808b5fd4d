//! The compiled-artifact cache: one file per component per engine, named by
//! the component's content digest and the engine's compatibility fingerprint,
//! so a new Gust (or other engine settings) never loads an incompatible
//! artifact; it compiles again instead.

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

    /// Writes an artifact atomically: readers see the whole file or none.
    pub fn store(&self, digest: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
        let path = self.path(digest);
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(path)
    }
}
