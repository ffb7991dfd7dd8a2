//! The HTTP API, one module per area.

pub(crate) mod admin;
pub(crate) mod health;
pub(crate) mod ingest;
pub(crate) mod journeys;
pub(crate) mod profiles;
pub(crate) mod segment;
pub mod segments;
pub(crate) mod tiles;
