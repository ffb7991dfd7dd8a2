//! The HTTP API, one module per area.

pub(crate) mod admin;
pub(crate) mod health;
pub(crate) mod ingest;
pub(crate) mod journeys;
pub(crate) mod profiles;
pub mod segments;
pub(crate) mod tiles;
pub(crate) mod tracking_api;

use serde_json::Value;

use crate::ApiError;

/// A request body as JSON, in our error shape when it is not, and without NUL characters,
/// which PostgreSQL cannot store.
pub(crate) fn json_body(body: &[u8]) -> Result<Value, ApiError> {
    let value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest { code: "malformed_json", message: format!("the body is not valid JSON: {e}"), field: None })?;
    refuse_nul(&value, "body")?;
    Ok(value)
}

/// Refuses a NUL character anywhere in `value`, naming where.
pub(crate) fn refuse_nul(value: &Value, path: &str) -> Result<(), ApiError> {
    match value {
        Value::String(s) if s.contains('\0') => Err(ApiError::field(path, format!("{path}: contains a NUL character"))),
        Value::Array(items) => items.iter().enumerate().try_for_each(|(i, v)| refuse_nul(v, &format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            let at = format!("{path}.{k}");
            if k.contains('\0') {
                return Err(ApiError::field(&at, format!("{at}: a key contains a NUL character")));
            }
            refuse_nul(v, &at)
        }),
        _ => Ok(()),
    }
}
