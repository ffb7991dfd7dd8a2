//! The signed segment token the edge decides from: who the visitor is, their segments, and
//! the few traits and aggregates the edge's plugins declare they read. Compact and
//! verifiable without the origin: `base64url(payload JSON) "." base64url(HMAC-SHA256)`,
//! the MAC over the first part. Values keep their contract type (`["i", "42"]` is an
//! integer, `["n", 42.0]` a number), so the edge rebuilds exactly the profile the server
//! would pass.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use rekindle_runtime::wit::{Field, Membership, Value};
use serde_json::{Value as Json, json};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// What a token says about a visitor.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    pub profile_id: String,
    pub issued_at: i64,
    pub expires_at: i64,
    pub segments: Vec<Membership>,
    pub traits: Vec<Field>,
    pub aggregates: Vec<Field>,
    /// The visitor's IANA time zone, which plugins receive with the profile.
    pub timezone: Option<String>,
}

/// A contract value in the token's typed JSON form.
pub fn typed(value: &Value) -> Json {
    match value {
        Value::Null => json!(["z"]),
        Value::Boolean(b) => json!(["b", b]),
        // As text: JSON numbers lose integers past 2^53 in JavaScript.
        Value::Integer(i) => json!(["i", i.to_string()]),
        Value::Number(n) => json!(["n", n]),
        Value::Text(s) => json!(["t", s]),
        Value::Json(s) => json!(["j", s]),
    }
}

/// A contract value back from its typed JSON form.
pub fn untyped(json: &Json) -> Option<Value> {
    let tag = json.get(0)?.as_str()?;
    let val = json.get(1);
    Some(match tag {
        "z" => Value::Null,
        "b" => Value::Boolean(val?.as_bool()?),
        "i" => Value::Integer(val?.as_str()?.parse().ok()?),
        "n" => Value::Number(val?.as_f64()?),
        "t" => Value::Text(val?.as_str()?.to_string()),
        "j" => Value::Json(val?.as_str()?.to_string()),
        _ => return None,
    })
}

/// Fields as `[[name, tag, value]]`.
pub fn typed_fields(fields: &[Field]) -> Json {
    Json::Array(
        fields
            .iter()
            .map(|f| {
                let mut entry = vec![json!(f.name)];
                entry.extend(typed(&f.value).as_array().cloned().unwrap_or_default());
                Json::Array(entry)
            })
            .collect(),
    )
}

fn untyped_fields(json: &Json) -> Option<Vec<Field>> {
    json.as_array()?
        .iter()
        .map(|entry| {
            let items = entry.as_array()?;
            let name = items.first()?.as_str()?.to_string();
            let value = untyped(&Json::Array(items[1..].to_vec()))?;
            Some(Field { name, value })
        })
        .collect()
}

fn mac(secret: &[u8], payload: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(payload.as_bytes());
    mac
}

/// Signs `claims` with `secret`.
pub fn issue(claims: &Claims, secret: &[u8]) -> String {
    let payload = json!({
        "v": 1,
        "sub": claims.profile_id,
        "iat": claims.issued_at,
        "exp": claims.expires_at,
        "seg": claims.segments.iter().map(|m| json!([m.segment, m.label, m.since])).collect::<Vec<_>>(),
        "tr": typed_fields(&claims.traits),
        "ag": typed_fields(&claims.aggregates),
        "tz": claims.timezone,
    });
    let payload = URL_SAFE_NO_PAD.encode(payload.to_string());
    let signature = URL_SAFE_NO_PAD.encode(mac(secret, &payload).finalize().into_bytes());
    format!("{payload}.{signature}")
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not two base64url parts")]
    Malformed,
    #[error("the signature does not match")]
    BadSignature,
    #[error("the token expired")]
    Expired,
}

/// The claims of a token signed with `secret` that is still valid at `now`.
pub fn verify(token: &str, secret: &[u8], now: i64) -> Result<Claims, TokenError> {
    let (payload, signature) = token.split_once('.').ok_or(TokenError::Malformed)?;
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Malformed)?;
    mac(secret, payload).verify_slice(&signature).map_err(|_| TokenError::BadSignature)?;
    let json: Json = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|raw| serde_json::from_slice(&raw).ok())
        .ok_or(TokenError::Malformed)?;
    let claims = (|| {
        Some(Claims {
            profile_id: json.get("sub")?.as_str()?.to_string(),
            issued_at: json.get("iat")?.as_i64()?,
            expires_at: json.get("exp")?.as_i64()?,
            segments: json
                .get("seg")?
                .as_array()?
                .iter()
                .map(|m| {
                    Some(Membership {
                        segment: m.get(0)?.as_str()?.to_string(),
                        label: m.get(1)?.as_str().map(str::to_string),
                        since: m.get(2)?.as_i64()?,
                    })
                })
                .collect::<Option<_>>()?,
            traits: untyped_fields(json.get("tr")?)?,
            aggregates: untyped_fields(json.get("ag")?)?,
            timezone: json.get("tz").and_then(Json::as_str).map(str::to_string),
        })
    })()
    .ok_or(TokenError::Malformed)?;
    if now >= claims.expires_at {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            profile_id: "p1".into(),
            issued_at: 1_000,
            expires_at: 2_000,
            segments: vec![Membership { segment: "VIP".into(), label: None, since: 900 }],
            traits: vec![Field { name: "first_name".into(), value: Value::Text("Ann".into()) }],
            aggregates: vec![
                Field { name: "order_count".into(), value: Value::Integer(9_007_199_254_740_993) },
                Field { name: "lifetime_value".into(), value: Value::Number(5.0) },
            ],
            timezone: Some("Europe/Paris".into()),
        }
    }

    #[test]
    fn a_token_round_trips_with_its_types() {
        let token = issue(&claims(), b"secret");
        assert_eq!(verify(&token, b"secret", 1_500), Ok(claims()));
    }

    #[test]
    fn tampered_expired_and_foreign_tokens_are_refused() {
        let token = issue(&claims(), b"secret");
        assert_eq!(verify(&token, b"other", 1_500), Err(TokenError::BadSignature));
        assert_eq!(verify(&token, b"secret", 2_000), Err(TokenError::Expired));
        let (payload, signature) = token.split_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD.encode(
            String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap().replace("VIP", "VVV"),
        );
        assert_eq!(verify(&format!("{forged}.{signature}"), b"secret", 1_500), Err(TokenError::BadSignature));
        assert_eq!(verify("nonsense", b"secret", 1_500), Err(TokenError::Malformed));
    }
}
