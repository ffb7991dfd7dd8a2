//! The HTTP API, one module per area.

pub(crate) mod admin;
pub(crate) mod health;
