//! The one API error type: 4xx say what was wrong, 5xx are logged and hidden.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rekindle_runtime::{CallError, LoadError, RegistryError};
use serde_json::json;

/// An error answered as `{"error": {"code", "message", "field"?}}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request was malformed; `field` names the JSON path at fault when there is one.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String, field: Option<String> },
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// Missing or wrong credentials.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The uploaded component cannot be used.
    #[error("{0}")]
    Unprocessable(String),
    /// The body is over a size limit.
    #[error("{0}")]
    TooLarge(String),
    /// A part of the host this request needs is not configured or not running.
    #[error("{0}")]
    Unavailable(&'static str),
    /// Refused with its own status and code, naming the field at fault when there is one:
    /// what a provider's webhook gets (401 for a signature that does not hold, 422 for a
    /// report about a send this host never made).
    #[error("{message}")]
    Refused { status: StatusCode, code: &'static str, message: String, field: Option<String> },
    /// The store failed; details go to the log only.
    #[error("the store could not complete the request")]
    Store(String),
    /// The plugin failed while handling the request.
    #[error("{0}")]
    Plugin(CallError),
    /// Anything else; details go to the log only.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// A 400 naming the field at fault.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest { code: "invalid_field", message: message.into(), field: Some(field.into()) }
    }

    /// The HTTP status for this error.
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Plugin(CallError::NotLoaded(_)) => StatusCode::NOT_FOUND,
            ApiError::Plugin(CallError::WrongKind { .. }) => StatusCode::CONFLICT,
            ApiError::Plugin(CallError::Plugin(_)) => StatusCode::UNPROCESSABLE_ENTITY,
            // Every sandbox is busy: the host is at capacity, the plugin did nothing wrong.
            ApiError::Plugin(CallError::Instantiate(_) | CallError::Busy(_)) => StatusCode::SERVICE_UNAVAILABLE,
            // The plugin misbehaved, not the caller or the host.
            ApiError::Plugin(_) => StatusCode::BAD_GATEWAY,
            ApiError::Internal(_) | ApiError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Refused { status, .. } => *status,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } => code,
            ApiError::NotFound(_) => "not_found",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Conflict(_) => "conflict",
            ApiError::Unprocessable(_) => "invalid_component",
            ApiError::Plugin(e) => e.code(),
            ApiError::Internal(_) => "internal",
            ApiError::TooLarge(_) => "too_large",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Store(_) => "store",
            ApiError::Refused { code, .. } => code,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) | ApiError::Store(detail) = &self {
            tracing::error!("internal error: {detail}");
        }
        let mut error = json!({ "code": self.code(), "message": self.to_string() });
        if let ApiError::BadRequest { field: Some(field), .. } | ApiError::Refused { field: Some(field), .. } = &self {
            error["field"] = json!(field);
        }
        (self.status_code(), Json(json!({ "error": error }))).into_response()
    }
}

impl From<RegistryError> for ApiError {
    fn from(err: RegistryError) -> ApiError {
        match err {
            RegistryError::InvalidSlot(_) => ApiError::field("slot", err.to_string()),
            RegistryError::UnknownSlot(_) | RegistryError::UnknownVersion { .. } => ApiError::NotFound(err.to_string()),
            RegistryError::NothingToRollBack(_) => ApiError::Conflict(err.to_string()),
            RegistryError::Load(LoadError::WrongWorld { .. }) => ApiError::Conflict(err.to_string()),
            RegistryError::Load(LoadError::Cache { .. }) => ApiError::Internal(err.to_string()),
            RegistryError::Load(LoadError::Describe(ref call)) if matches!(**call, CallError::Instantiate(_)) => ApiError::Plugin((**call).clone()),
            RegistryError::Load(_) => ApiError::Unprocessable(err.to_string()),
        }
    }
}

impl From<rekindle_runtime::json::JsonError> for ApiError {
    fn from(err: rekindle_runtime::json::JsonError) -> ApiError {
        ApiError::field(err.path.clone(), err.to_string())
    }
}

impl From<rekindle_store::StoreError> for ApiError {
    fn from(err: rekindle_store::StoreError) -> ApiError {
        ApiError::Store(err.to_string())
    }
}

impl From<rekindle_runtime::ParamError> for ApiError {
    fn from(err: rekindle_runtime::ParamError) -> ApiError {
        ApiError::field("context.params", err.to_string())
    }
}

impl From<rekindle_tiles::TilesError> for ApiError {
    fn from(err: rekindle_tiles::TilesError) -> ApiError {
        match err {
            rekindle_tiles::TilesError::Field { field, message } => ApiError::field(field, message),
            rekindle_tiles::TilesError::NotFound(message) => ApiError::NotFound(message),
            rekindle_tiles::TilesError::Store(e) => e.into(),
        }
    }
}

impl From<rekindle_journeys::JourneyError> for ApiError {
    /// An entry refused: an unknown journey or person is a 404; anything else names the journey.
    fn from(err: rekindle_journeys::JourneyError) -> ApiError {
        use rekindle_journeys::JourneyError::*;
        match err {
            UnknownJourney(_) | UnknownProfile(_) => ApiError::NotFound(err.to_string()),
            Invalid { .. } | NotEnteredByApi(_) | Store(_) => ApiError::field("journey", err.to_string()),
        }
    }
}

impl ApiError {
    /// A journey file refused at deploy, naming the field or step at fault. A store failure
    /// answers 400 with the database's text, as it always has; it should be a 500.
    pub fn deploy(err: rekindle_journeys::JourneyError) -> ApiError {
        let field = match &err {
            rekindle_journeys::JourneyError::Invalid { field, .. } => field.clone(),
            _ => None,
        };
        ApiError::BadRequest { code: "invalid_journey", message: err.to_string(), field }
    }
}

impl From<rekindle_segments::EvaluateError> for ApiError {
    /// A segment refused: the field of its definition at fault, the store's failure, or the
    /// rule's.
    fn from(err: rekindle_segments::EvaluateError) -> ApiError {
        use rekindle_segments::EvaluateError::*;
        match err {
            Slot(message) => ApiError::field("slot", message),
            Params(message) => ApiError::field("params", message),
            Field { field, message } => ApiError::field(field, message),
            Refused { .. } => ApiError::field("segments", err.to_string()),
            Store(e) => e.into(),
            Call(e) => ApiError::Plugin(e),
        }
    }
}
