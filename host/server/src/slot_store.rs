//! Uploaded components and slot activations on disk, replayed at start-up so a restart
//! serves exactly what was active before.
//!
//! Layout: `DIR/<slot>/<sha256>.wasm` for each version, and `DIR/<slot>/slot.json` holding
//! the version order and the log of activations (by digest, so a version number that came
//! out differently on replay can never activate the wrong component) and rollbacks.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rekindle_runtime::{Registry, RegistryError};
use serde::{Deserialize, Serialize};

/// Why the slot store failed.
#[derive(Debug, thiserror::Error)]
pub enum SlotStoreError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Corrupt { path: String, source: serde_json::Error },
    #[error("restoring slot `{slot}`: {source}")]
    Restore { slot: String, source: RegistryError },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SlotFile {
    /// Digests in version order: the first is version 1.
    versions: Vec<String>,
    ops: Vec<Op>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Op {
    Activate(String),
    Rollback,
}

/// The on-disk record of every slot.
pub struct SlotStore {
    dir: PathBuf,
    writer: Mutex<()>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SlotStoreError + '_ {
    move |source| SlotStoreError::Io { path: path.display().to_string(), source }
}

impl SlotStore {
    /// A store under `dir`, created if missing.
    pub fn open(dir: impl Into<PathBuf>) -> Result<SlotStore, SlotStoreError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(SlotStore { dir, writer: Mutex::new(()) })
    }

    fn read(&self, slot: &str) -> Result<SlotFile, SlotStoreError> {
        let path = self.dir.join(slot).join("slot.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| SlotStoreError::Corrupt { path: path.display().to_string(), source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SlotFile::default()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    fn write(&self, slot: &str, file: &SlotFile) -> Result<(), SlotStoreError> {
        let path = self.dir.join(slot).join("slot.json");
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(file).map_err(|source| SlotStoreError::Corrupt { path: path.display().to_string(), source })?;
        std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an uploaded version (a no-op for bytes the slot already has).
    pub fn record_upload(&self, slot: &str, digest: &str, bytes: &[u8]) -> Result<(), SlotStoreError> {
        let _guard = self.lock();
        let slot_dir = self.dir.join(slot);
        std::fs::create_dir_all(&slot_dir).map_err(io(&slot_dir))?;
        let mut file = self.read(slot)?;
        if file.versions.iter().any(|d| d == digest) {
            return Ok(());
        }
        let component = slot_dir.join(format!("{digest}.wasm"));
        std::fs::write(&component, bytes).map_err(io(&component))?;
        file.versions.push(digest.to_string());
        self.write(slot, &file)
    }

    /// Records an activation of the version with `digest`.
    pub fn record_activate(&self, slot: &str, digest: &str) -> Result<(), SlotStoreError> {
        self.append(slot, Op::Activate(digest.to_string()))
    }

    /// Records a rollback.
    pub fn record_rollback(&self, slot: &str) -> Result<(), SlotStoreError> {
        self.append(slot, Op::Rollback)
    }

    fn append(&self, slot: &str, op: Op) -> Result<(), SlotStoreError> {
        let _guard = self.lock();
        let mut file = self.read(slot)?;
        file.ops.push(op);
        self.write(slot, &file)
    }

    /// Replays every recorded slot into `registry`; returns the slot names restored.
    pub fn restore(&self, registry: &Registry) -> Result<Vec<String>, SlotStoreError> {
        let mut restored = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(io(&self.dir))?;
        let mut slots: Vec<String> =
            entries.flatten().filter(|e| e.path().join("slot.json").exists()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        slots.sort();
        for slot in slots {
            let file = self.read(&slot)?;
            let fail = |source| SlotStoreError::Restore { slot: slot.clone(), source };
            let mut versions = std::collections::HashMap::new();
            for digest in &file.versions {
                let path = self.dir.join(&slot).join(format!("{digest}.wasm"));
                let bytes = std::fs::read(&path).map_err(io(&path))?;
                let uploaded = registry.upload(&slot, &bytes).map_err(fail)?;
                versions.insert(digest.as_str(), uploaded.version);
            }
            for op in &file.ops {
                match op {
                    Op::Activate(digest) => match versions.get(digest.as_str()) {
                        Some(version) => registry.activate(&slot, *version).map(drop),
                        None => {
                            tracing::warn!(slot, digest, "activation of a component that was never stored; skipped");
                            Ok(())
                        }
                    },
                    Op::Rollback => registry.rollback(&slot).map(drop),
                }
                .map_err(fail)?;
            }
            restored.push(slot);
        }
        Ok(restored)
    }
}
