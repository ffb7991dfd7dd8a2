//! Segment's HTTP Tracking API message format, validated and normalised into store messages.
//!
//! Errors name the message and the field (`batch[3].userId`), and a batch with any bad
//! message is refused whole.

use rekindle_store::{Message, MessageKind, Purpose};
use serde_json::{Map, Value};

use crate::{ApiError, Source, SourceKind};

/// Segment's limit for one message.
pub(crate) const MAX_MESSAGE_BYTES: usize = 32 * 1024;
/// Segment's limit for one batch request.
pub(crate) const MAX_BATCH_BYTES: usize = 500 * 1024;

fn kind_from(name: &str) -> Option<MessageKind> {
    Some(match name {
        "track" => MessageKind::Track,
        "identify" => MessageKind::Identify,
        "page" => MessageKind::Page,
        "screen" => MessageKind::Screen,
        "group" => MessageKind::Group,
        "alias" => MessageKind::Alias,
        _ => return None,
    })
}

/// An id field: Segment accepts strings and numbers.
fn id_field(msg: &Map<String, Value>, key: &str, at: &str) -> Result<Option<String>, ApiError> {
    match msg.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(ApiError::field(format!("{at}.{key}"), format!("{at}: `{key}` must be a string"))),
    }
}

fn object(msg: &Map<String, Value>, key: &str, at: &str) -> Result<Map<String, Value>, ApiError> {
    match msg.get(key) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(map)) => Ok(map.clone()),
        Some(_) => Err(ApiError::field(format!("{at}.{key}"), format!("{at}: `{key}` must be an object"))),
    }
}

fn time(msg: &Map<String, Value>, key: &str, at: &str) -> Result<Option<i64>, ApiError> {
    match msg.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.timestamp_millis()))
            .map_err(|_| ApiError::field(format!("{at}.{key}"), format!("{at}: `{key}` is not an ISO 8601 time: {s:?}"))),
        Some(_) => Err(ApiError::field(format!("{at}.{key}"), format!("{at}: `{key}` must be an ISO 8601 string"))),
    }
}

/// Consents from `context.consent.categoryPreferences` and a `consent` trait object.
fn consents(context: &Map<String, Value>, traits: &Map<String, Value>) -> Vec<(Purpose, bool)> {
    let from_context = context.get("consent").and_then(|c| c.get("categoryPreferences")).and_then(Value::as_object);
    let from_traits = traits.get("consent").and_then(Value::as_object);
    let mut found = Vec::new();
    for map in [from_context, from_traits].into_iter().flatten() {
        for (name, granted) in map {
            let purpose = match name.to_ascii_lowercase().as_str() {
                "advertising" => Some(Purpose::Ads),
                other => Purpose::parse(other),
            };
            if let (Some(purpose), Some(granted)) = (purpose, granted.as_bool()) {
                found.retain(|(p, _)| *p != purpose);
                found.push((purpose, granted));
            }
        }
    }
    found
}

/// The earliest event time accepted: anything before is a mistake, not history.
const EARLIEST_EVENT: i64 = 946_684_800_000; // 2000-01-01T00:00:00Z

/// How far past the host's clock an event may be, after clock-skew correction: a little for
/// clocks that disagree, never enough to skip a journey's wait.
const LATEST_EVENT_AHEAD: i64 = 86_400_000;

/// Properties that are amounts: a text amount must still be a finite number.
const AMOUNTS: &[&str] = &["revenue", "total", "price", "quantity", "value", "subtotal"];

/// Refuses an amount that reads as NaN or infinity, anywhere in a message: computed traits
/// would carry it into every lifetime-value segment.
fn check_amounts(value: &Value, path: &str) -> Result<(), ApiError> {
    match value {
        Value::Array(items) => items.iter().enumerate().try_for_each(|(i, v)| check_amounts(v, &format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            let at = format!("{path}.{k}");
            if AMOUNTS.contains(&k.as_str())
                && let Value::String(text) = v
                && text.trim().parse::<f64>().is_ok_and(|n| !n.is_finite())
            {
                return Err(ApiError::field(&at, format!("{at}: {text:?} is not a finite number")));
            }
            check_amounts(v, &at)
        }),
        _ => Ok(()),
    }
}

/// A batch message's own `type`.
fn kind_of(msg: &Map<String, Value>, at: &str) -> Result<MessageKind, ApiError> {
    match msg.get("type").and_then(Value::as_str) {
        Some(name) => kind_from(name)
            .ok_or_else(|| ApiError::field(format!("{at}.type"), format!("{at}: unknown type {name:?}; use track, identify, page, screen, group or alias"))),
        None => Err(ApiError::field(format!("{at}.type"), format!("{at}: `type` is required in a batch"))),
    }
}

/// The event a message records: a track call's name, or "Page Viewed" and "Screen Viewed"
/// (their `name` and `category` joining the properties); none for the other types.
fn event_of(msg: &Map<String, Value>, kind: MessageKind, properties: &mut Map<String, Value>, at: &str) -> Result<Option<String>, ApiError> {
    Ok(match kind {
        MessageKind::Track => match msg.get("event") {
            Some(Value::String(name)) if !name.trim().is_empty() => Some(name.clone()),
            _ => return Err(ApiError::field(format!("{at}.event"), format!("{at}: a track call needs an `event` name"))),
        },
        MessageKind::Page | MessageKind::Screen => {
            for key in ["name", "category"] {
                if let Some(v) = msg.get(key).filter(|v| !v.is_null()) {
                    properties.entry(key.to_string()).or_insert_with(|| v.clone());
                }
            }
            Some(if kind == MessageKind::Page { "Page Viewed" } else { "Screen Viewed" }.to_string())
        }
        MessageKind::Identify | MessageKind::Group | MessageKind::Alias => None,
    })
}

/// When the event happened, by Segment's clock-skew correction: the client's clock is
/// trusted for the interval between the event and sending it, the server's for when it was
/// sent. A time the correction puts before 2000 or over a day ahead is refused.
fn corrected_time(msg: &Map<String, Value>, at: &str, received_at: i64, batch_sent_at: Option<i64>) -> Result<i64, ApiError> {
    let (original, given_as) = match time(msg, "timestamp", at)? {
        Some(t) => (Some(t), "timestamp"),
        None => (time(msg, "originalTimestamp", at)?, "originalTimestamp"),
    };
    let sent_at = time(msg, "sentAt", at)?.or(batch_sent_at);
    let timestamp = match (original, sent_at) {
        (Some(original), Some(sent)) => received_at.saturating_sub(sent.saturating_sub(original)),
        (Some(original), None) => original,
        (None, _) => received_at,
    };
    if original.is_some() && !(EARLIEST_EVENT..=received_at.saturating_add(LATEST_EVENT_AHEAD)).contains(&timestamp) {
        let field = format!("{at}.{given_as}");
        return Err(ApiError::field(
            &field,
            format!(
                "{field}: after clock-skew correction the event falls at {}, before 2000 or more than a day ahead of the host's clock",
                rekindle_runtime::json::timestamp_to_json(timestamp)
            ),
        ));
    }
    Ok(timestamp)
}

/// Validates one message. `kind` is the endpoint's type, or `None` in a batch, where the
/// message's own `type` says. `batch_sent_at` is the batch's `sentAt`, if any.
pub(crate) fn parse_message(
    value: &Value,
    kind: Option<MessageKind>,
    at: &str,
    source: &Source,
    received_at: i64,
    batch_sent_at: Option<i64>,
) -> Result<Message, ApiError> {
    let Value::Object(msg) = value else {
        return Err(ApiError::field(at, format!("{at}: a message must be a JSON object")));
    };
    // PostgreSQL cannot store a NUL character.
    super::refuse_nul(value, at)?;
    check_amounts(value, at)?;
    let kind = match kind {
        Some(kind) => kind,
        None => kind_of(msg, at)?,
    };
    let user_id = id_field(msg, "userId", at)?;
    let anonymous_id = id_field(msg, "anonymousId", at)?;
    let previous_id = id_field(msg, "previousId", at)?;
    if user_id.is_none() && anonymous_id.is_none() {
        return Err(ApiError::field(format!("{at}.userId"), format!("{at}: needs a `userId` or an `anonymousId`")));
    }
    if kind == MessageKind::Alias && previous_id.is_none() {
        return Err(ApiError::field(format!("{at}.previousId"), format!("{at}: an alias needs `previousId`")));
    }
    let context = object(msg, "context", at)?;
    let mut traits = object(msg, "traits", at)?;
    // Clients send a user's traits with track calls under context.traits.
    if let Some(Value::Object(context_traits)) = context.get("traits") {
        for (k, v) in context_traits {
            traits.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    let mut properties = object(msg, "properties", at)?;
    let event = event_of(msg, kind, &mut properties, at)?;
    if kind == MessageKind::Group {
        // A group call's traits describe the group, not the person: keep only the link.
        traits = Map::new();
        if let Some(group) = id_field(msg, "groupId", at)? {
            traits.insert("group_id".into(), Value::String(group));
        }
    }
    let timestamp = corrected_time(msg, at, received_at, batch_sent_at)?;
    let message_id = match id_field(msg, "messageId", at)? {
        Some(id) => id,
        None => format!("rekindle-{}", uuid::Uuid::now_v7()),
    };
    let push_token = context.get("device").and_then(|d| d.get("token")).and_then(Value::as_str).filter(|t| !t.is_empty()).map(|t| (t.to_string(), true));
    Ok(Message {
        source: source.name.clone(),
        from_browser: source.kind == SourceKind::Browser,
        message_id,
        kind,
        user_id,
        anonymous_id,
        previous_id,
        event,
        consents: consents(&context, &traits),
        traits,
        properties,
        timestamp,
        received_at,
        timezone: context.get("timezone").and_then(Value::as_str).map(str::to_string),
        push_token,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn corrects_clock_skew_like_segment() {
        // The client's clock runs 10 minutes fast; the event happened 5 s before sending.
        let msg = json!({"userId": "u1", "event": "Order Completed",
            "timestamp": "2026-11-23T10:09:55Z", "sentAt": "2026-11-23T10:10:00Z"});
        let received = chrono::DateTime::parse_from_rfc3339("2026-11-23T10:00:01Z").unwrap().timestamp_millis();
        let parsed = parse_message(&msg, Some(MessageKind::Track), "message", &Source::server("web"), received, None).unwrap();
        assert_eq!(parsed.timestamp, received - 5_000);
    }

    #[test]
    fn errors_name_the_message_and_field() {
        let err = parse_message(&json!({"event": "x"}), Some(MessageKind::Track), "batch[3]", &Source::server("web"), 0, None).unwrap_err();
        assert_eq!(err.to_string(), "batch[3]: needs a `userId` or an `anonymousId`");
        let err = parse_message(&json!({"userId": "u"}), Some(MessageKind::Track), "message", &Source::server("web"), 0, None).unwrap_err();
        assert!(err.to_string().contains("`event`"), "{err}");
        let err = parse_message(&json!({"userId": "u", "type": "poke"}), None, "batch[0]", &Source::server("web"), 0, None).unwrap_err();
        assert!(err.to_string().contains("unknown type"), "{err}");
    }

    #[test]
    fn reads_consents_timezone_and_push_tokens() {
        let msg = json!({"userId": "u", "traits": {"email": "A@x.com", "consent": {"sms": false}},
            "context": {"timezone": "Europe/Paris", "device": {"token": "tok-1"},
                        "consent": {"categoryPreferences": {"email": true, "Advertising": true}}}});
        let parsed = parse_message(&msg, Some(MessageKind::Identify), "message", &Source::server("web"), 0, None).unwrap();
        assert_eq!(parsed.timezone.as_deref(), Some("Europe/Paris"));
        assert_eq!(parsed.push_token, Some(("tok-1".into(), true)));
        assert!(parsed.consents.contains(&(Purpose::Email, true)));
        assert!(parsed.consents.contains(&(Purpose::Ads, true)));
        assert!(parsed.consents.contains(&(Purpose::Sms, false)));
    }
}
