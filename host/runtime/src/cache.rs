//! Compiled components cached on disk, so a restart does not recompile.
//!
//! An artifact is keyed by the component's SHA-256 and the engine's compatibility hash, and
//! only artifacts this cache wrote are ever deserialized.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::error::LoadError;

pub(crate) struct ArtifactCache {
    dir: PathBuf,
    engine_key: String,
}

impl ArtifactCache {
    pub(crate) fn new(dir: PathBuf, engine: &Engine) -> ArtifactCache {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        ArtifactCache { dir, engine_key: format!("{:016x}", hasher.finish()) }
    }

    fn path_for(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_key))
    }

    /// Returns the compiled component, from disk when this engine compiled it before.
    pub(crate) fn load_or_compile(&self, engine: &Engine, digest: &str, bytes: &[u8]) -> Result<Component, LoadError> {
        let path = self.path_for(digest);
        // Read into memory rather than mmap: a file truncated under a live mapping would
        // take the process down with SIGBUS.
        if let Ok(artifact) = std::fs::read(&path) {
            // SAFETY: the file is one this cache wrote for this engine's compatibility hash,
            // named by the digest of the component it was compiled from.
            match unsafe { Component::deserialize(engine, &artifact) } {
                Ok(component) => return Ok(component),
                Err(err) => tracing::warn!(path = %path.display(), "recompiling: {err}"),
            }
        }
        let component = Component::new(engine, bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let serialized = component.serialize().map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        // A cache that cannot be written costs a recompile next time, not this load.
        if let Err(err) = write_atomically(&self.dir, &path, &serialized) {
            tracing::warn!(path = %path.display(), "not caching the compiled component: {err}");
        }
        Ok(component)
    }
}

/// Writes through a temporary file and a rename, so a crash never leaves half an artifact.
fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // Unique per writer, so two loads of the same component never share a temporary file.
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
