//! Named plugin slots, each with versions and one active version swapped atomically.
//!
//! The call path takes no lock: it loads the slot map and the slot's active version through
//! `arc-swap`, and holds an `Arc` to the plugin for the whole call, so a call that started on
//! one version finishes on it even if another is activated meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::engine::Runtime;
use crate::error::{CallError, RegistryError};
use crate::kind::Kind;
use crate::plugin::Plugin;

/// One uploaded version of a slot.
struct Version {
    number: u32,
    plugin: Arc<Plugin>,
}

struct Slot {
    kind: Kind,
    active: ArcSwapOption<Version>,
    history: Mutex<SlotHistory>,
}

#[derive(Default)]
struct SlotHistory {
    versions: Vec<Arc<Version>>,
    /// Versions that were active before the current one, most recent last.
    previously_active: Vec<u32>,
}

/// The plugin slots of one host.
pub struct Registry {
    runtime: Runtime,
    slots: ArcSwap<HashMap<String, Arc<Slot>>>,
    /// Serialises writers; readers never take it.
    writer: Mutex<()>,
}

/// A slot as the admin API lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SlotSummary {
    pub slot: String,
    pub kind: Kind,
    pub active: Option<u32>,
    pub versions: Vec<VersionSummary>,
}

/// One version as the admin API lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VersionSummary {
    pub version: u32,
    pub digest: String,
    pub name: String,
    pub plugin_version: String,
    pub size: usize,
    pub active: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave the data half-written, so recover.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn valid_slot_name(name: &str) -> bool {
    // Starting with a letter or digit rules out `.` and `..`, which would be paths on disk.
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

impl Registry {
    /// An empty registry over `runtime`.
    pub fn new(runtime: Runtime) -> Registry {
        Registry { runtime, slots: ArcSwap::from_pointee(HashMap::new()), writer: Mutex::new(()) }
    }

    /// The runtime the registry loads into.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The active plugin of a slot. Lock-free.
    pub fn get(&self, slot: &str) -> Result<Arc<Plugin>, CallError> {
        self.slots.load().get(slot).and_then(|s| s.active.load_full()).map(|v| v.plugin.clone()).ok_or_else(|| CallError::NotLoaded(slot.to_string()))
    }

    /// Loads a component as a new version of a slot, creating the slot on first use. The
    /// version is not activated. Uploading bytes the slot already has returns that version.
    pub fn upload(&self, slot: &str, bytes: &[u8]) -> Result<VersionSummary, RegistryError> {
        if !valid_slot_name(slot) {
            return Err(RegistryError::InvalidSlot(slot.to_string()));
        }
        // Compiling is the slow part; do it before taking the writer lock.
        let plugin = Arc::new(Plugin::load(&self.runtime, bytes)?);
        let _writer = lock(&self.writer);
        let current = self.slots.load_full();
        let slot_ref = match current.get(slot) {
            Some(existing) => {
                if existing.kind != plugin.kind() {
                    return Err(crate::error::LoadError::WrongWorld { slot: slot.to_string(), expected: existing.kind, found: plugin.kind() }.into());
                }
                existing.clone()
            }
            None => {
                let created = Arc::new(Slot { kind: plugin.kind(), active: ArcSwapOption::empty(), history: Mutex::new(SlotHistory::default()) });
                let mut next = (*current).clone();
                next.insert(slot.to_string(), created.clone());
                self.slots.store(Arc::new(next));
                created
            }
        };
        let mut history = lock(&slot_ref.history);
        let active = slot_ref.active.load().as_ref().map(|v| v.number);
        if let Some(same) = history.versions.iter().find(|v| v.plugin.digest() == plugin.digest()) {
            return Ok(summary(same, active));
        }
        let number = history.versions.last().map_or(1, |v| v.number + 1);
        let version = Arc::new(Version { number, plugin });
        history.versions.push(version.clone());
        Ok(summary(&version, active))
    }

    /// Makes `version` the active one; calls already running finish on the old one.
    pub fn activate(&self, slot: &str, version: u32) -> Result<VersionSummary, RegistryError> {
        let _writer = lock(&self.writer);
        let slot_ref = self.slot(slot)?;
        let mut history = lock(&slot_ref.history);
        let chosen = history.versions.iter().find(|v| v.number == version).cloned().ok_or(RegistryError::UnknownVersion { slot: slot.to_string(), version })?;
        let previous = slot_ref.active.swap(Some(chosen.clone()));
        if let Some(previous) = previous.filter(|p| p.number != version) {
            history.previously_active.push(previous.number);
        }
        Ok(summary(&chosen, Some(version)))
    }

    /// Re-activates the version that was active before the current one.
    pub fn rollback(&self, slot: &str) -> Result<VersionSummary, RegistryError> {
        let _writer = lock(&self.writer);
        let slot_ref = self.slot(slot)?;
        let mut history = lock(&slot_ref.history);
        let number = history.previously_active.pop().ok_or_else(|| RegistryError::NothingToRollBack(slot.to_string()))?;
        let chosen =
            history.versions.iter().find(|v| v.number == number).cloned().ok_or(RegistryError::UnknownVersion { slot: slot.to_string(), version: number })?;
        slot_ref.active.store(Some(chosen.clone()));
        Ok(summary(&chosen, Some(number)))
    }

    /// Uploads and activates in one step, as start-up loading does.
    pub fn install(&self, slot: &str, bytes: &[u8]) -> Result<VersionSummary, RegistryError> {
        let uploaded = self.upload(slot, bytes)?;
        self.activate(slot, uploaded.version)
    }

    /// Every slot with its versions, sorted by name.
    pub fn slots(&self) -> Vec<SlotSummary> {
        let slots = self.slots.load();
        let mut list: Vec<SlotSummary> = slots
            .iter()
            .map(|(name, slot)| {
                let active = slot.active.load().as_ref().map(|v| v.number);
                let history = lock(&slot.history);
                SlotSummary { slot: name.clone(), kind: slot.kind, active, versions: history.versions.iter().map(|v| summary(v, active)).collect() }
            })
            .collect();
        list.sort_by(|a, b| a.slot.cmp(&b.slot));
        list
    }

    fn slot(&self, slot: &str) -> Result<Arc<Slot>, RegistryError> {
        self.slots.load().get(slot).cloned().ok_or_else(|| RegistryError::UnknownSlot(slot.to_string()))
    }
}

fn summary(version: &Version, active: Option<u32>) -> VersionSummary {
    let plugin = &version.plugin;
    VersionSummary {
        version: version.number,
        digest: plugin.digest().to_string(),
        name: plugin.info().name().to_string(),
        plugin_version: plugin.info().version().to_string(),
        size: plugin.size(),
        active: active == Some(version.number),
    }
}
