//! Rekindle's decide stage: what a website shows a visitor. Offers and page slots
//! (`catalog`), the decision through the slot's promo-tiles plugin (`decide`), the signed
//! segment token a visitor carries to the edge (`token`), and the snapshot an edge bundle is
//! built from, with the reference answer the edge must reproduce (`edge`). Below HTTP: it
//! knows the store, the runtime and segments.

pub mod catalog;
pub mod decide;
pub mod edge;
mod error;
pub mod token;

pub use decide::{TileService, Visitor};
pub use error::TilesError;
