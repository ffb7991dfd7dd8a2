//! The Rekindle plugin runtime: loads WebAssembly components written against the
//! `rekindle:plugin` contract, refuses what they may not import, and calls them in a fresh,
//! limited sandbox per call.
//!
//! This crate wraps wasmtime and nothing else; the HTTP server lives in `rekindle-server`.

mod bindings;
mod cache;
mod engine;
mod error;
mod input;
mod invoke;
pub mod json;
mod kind;
mod limits;
mod params;
mod plugin;
mod policy;
mod pool;
mod registry;
mod secrets;

pub use bindings::wit;
pub use engine::{Runtime, RuntimeConfig};
pub use error::{CallError, LoadError, RegistryError};
pub use input::{empty_query, event_since, filter_profile};
pub use invoke::{InvokeError, invoke};
pub use kind::{Kind, PluginInfo};
pub use limits::{KindLimits, Limits};
pub use params::{ParamError, merge_params};
pub use plugin::{AdapterRequests, Plugin, RuleInstance};
pub use pool::CallPool;
pub use registry::{Registry, SlotSummary, VersionSummary};
pub use secrets::{SecretMarker, SecretRef, fill_placeholders, show_placeholders};
