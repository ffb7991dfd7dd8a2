//! Why a tile definition or an edge request was refused, with the field at fault.

use rekindle_store::StoreError;

/// Why a tile operation failed. The server maps each to its HTTP answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TilesError {
    /// A definition or request field is wrong; `field` is its JSON path.
    #[error("{message}")]
    Field { field: String, message: String },
    /// No such slot or profile.
    #[error("{0}")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl TilesError {
    /// A refusal naming `field`.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> TilesError {
        TilesError::Field { field: field.into(), message: message.into() }
    }
}
