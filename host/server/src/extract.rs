//! What handlers take from a request before they run: a JSON body in our error shape, and
//! the admin token.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::error::ApiError;
use crate::state::AppState;

/// A request body parsed as JSON: `malformed_json` in our shape when it is not, and no NUL
/// characters anywhere. It wraps `Bytes`, not `axum::Json`, so a body without a
/// `Content-Type` header is read as before.
pub(crate) struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<JsonBody, Response> {
        let body = Bytes::from_request(request, state).await.map_err(IntoResponse::into_response)?;
        json_body(&body).map(JsonBody).map_err(IntoResponse::into_response)
    }
}

/// A request body as JSON, in our error shape when it is not, and without NUL characters,
/// which PostgreSQL cannot store.
pub(crate) fn json_body(body: &[u8]) -> Result<Value, ApiError> {
    let value = serde_json::from_slice(body).map_err(|e| ApiError::BadRequest {
        code: "malformed_json",
        message: format!("the body is not valid JSON: {e}"),
        field: None,
    })?;
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

/// Lets a request through only with `Authorization: Bearer <admin token>`.
pub(crate) async fn require_admin_token(State(state): State<AppState>, request: Request, next: Next) -> Result<Response, ApiError> {
    let Some(expected) = state.admin_token.as_deref() else {
        return Err(ApiError::Unauthorized("the admin API is disabled: start the server with an admin token"));
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized("send `Authorization: Bearer <admin token>`"))?;
    if !constant_time_eq::constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        return Err(ApiError::Unauthorized("wrong admin token"));
    }
    Ok(next.run(request).await)
}
