//! Rekindle's evaluate stage: who is in which segment. A rule's profile is assembled from
//! the store (`profile`), its definition resolved (`definition`), and profiles are
//! evaluated in pages on both cores (`batch`), on a schedule (`schedule`) or as ingestion
//! touches them (`realtime`), or for a candidate rule without touching memberships
//! (`preview`). Below HTTP: it knows the store and the plugin runtime only.

pub mod batch;
pub mod definition;
pub mod preview;
pub mod profile;
pub mod realtime;
pub mod schedule;

pub use definition::{Cutoffs, EvaluateError};
pub use profile::derive_aggregates;
