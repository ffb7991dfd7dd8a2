//! JSON forms of the contract's types, for the admin API, the CLI and test fixtures.
//!
//! Traits, properties, aggregates and parameters are JSON objects; timestamps are RFC 3339
//! strings or milliseconds since the epoch. Errors name the JSON path of the bad field.

use serde_json::{Map, Value as Json, json};

use crate::bindings::wit::{
    AdapterInfo, AudienceChange, AudienceMember, ChannelKind, Consent, ContactKind, ContactPoint, Context, EventQuery, EventSeries, Field, HttpMethod,
    HttpRequest, InputQuery, Membership, Message, Offer, Outcome, ParamKind, ParamSpec, Profile, PropertyColumn, Purpose, RuleInfo, Tile, TileRequest,
    TilesInfo, Timestamp, Value, Verdict,
};
use crate::kind::PluginInfo;

/// A JSON input that does not fit, with the path of the field at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct JsonError {
    pub path: String,
    pub problem: String,
}

/// The most events one JSON profile may carry.
pub const MAX_EVENTS: usize = 10_000;
/// The most distinct event property names one JSON profile may use.
pub const MAX_PROPERTY_NAMES: usize = 100;

pub(crate) fn err(path: &str, problem: impl Into<String>) -> JsonError {
    JsonError { path: path.to_string(), problem: problem.into() }
}

/// A contract value from any JSON value; objects and arrays travel as JSON text.
pub fn value_from_json(json: &Json) -> Value {
    match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::Text(s.clone()),
        other => Value::Json(other.to_string()),
    }
}

/// The JSON form of a contract value.
pub fn value_to_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => json!(b),
        Value::Integer(i) => json!(i),
        Value::Number(n) => serde_json::Number::from_f64(*n).map_or(Json::Null, Json::Number),
        Value::Text(s) => json!(s),
        Value::Json(text) => serde_json::from_str(text).unwrap_or_else(|_| json!(text)),
    }
}

/// Fields from a JSON object (`{"first_name": "Ann"}`).
pub fn fields_from_json(json: Option<&Json>, path: &str) -> Result<Vec<Field>, JsonError> {
    match json {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::Object(map)) => Ok(map.iter().map(|(name, value)| Field { name: name.clone(), value: value_from_json(value) }).collect()),
        Some(_) => Err(err(path, "must be an object")),
    }
}

/// A JSON object from fields.
pub fn fields_to_json(fields: &[Field]) -> Json {
    Json::Object(fields.iter().map(|f| (f.name.clone(), value_to_json(&f.value))).collect())
}

/// A timestamp from milliseconds or an RFC 3339 string.
pub fn timestamp_from_json(json: Option<&Json>, path: &str) -> Result<Timestamp, JsonError> {
    let at = match json {
        Some(Json::Number(n)) => n.as_i64().ok_or_else(|| err(path, "must be whole milliseconds"))?,
        Some(Json::String(s)) => {
            chrono::DateTime::parse_from_rfc3339(s).map(|t| t.timestamp_millis()).map_err(|e| err(path, format!("is not an RFC 3339 time ({e})")))?
        }
        Some(_) => return Err(err(path, "must be an RFC 3339 string or milliseconds since the epoch")),
        None => return Err(err(path, "is required")),
    };
    check_timestamp(at, path)
}

/// The latest time the host takes anywhere: the last millisecond of year 9999. Later
/// ones overflow date arithmetic, and past 2^53 JavaScript at the edge rounds them.
pub const LATEST_TIMESTAMP: Timestamp = 253_402_300_799_999;

/// `at` if it lies between the epoch and [`LATEST_TIMESTAMP`]; otherwise an error naming `path`.
pub fn check_timestamp(at: Timestamp, path: &str) -> Result<Timestamp, JsonError> {
    if (0..=LATEST_TIMESTAMP).contains(&at) { Ok(at) } else { Err(err(path, "must lie between 1970 and the end of year 9999")) }
}

/// The RFC 3339 form of a timestamp.
pub fn timestamp_to_json(at: Timestamp) -> Json {
    match chrono::DateTime::from_timestamp_millis(at) {
        Some(t) => json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        None => json!(at),
    }
}

fn object<'a>(json: &'a Json, path: &str) -> Result<&'a Map<String, Json>, JsonError> {
    json.as_object().ok_or_else(|| err(path, "must be an object"))
}

fn string(map: &Map<String, Json>, key: &str, path: &str) -> Result<String, JsonError> {
    match map.get(key) {
        Some(Json::String(s)) => Ok(s.clone()),
        Some(_) => Err(err(&format!("{path}.{key}"), "must be a string")),
        None => Err(err(&format!("{path}.{key}"), "is required")),
    }
}

fn opt_string(map: &Map<String, Json>, key: &str, path: &str) -> Result<Option<String>, JsonError> {
    match map.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(err(&format!("{path}.{key}"), "must be a string")),
    }
}

fn array<'a>(map: &'a Map<String, Json>, key: &str, path: &str) -> Result<&'a [Json], JsonError> {
    match map.get(key) {
        None | Some(Json::Null) => Ok(&[]),
        Some(Json::Array(items)) => Ok(items),
        Some(_) => Err(err(&format!("{path}.{key}"), "must be an array")),
    }
}

fn purpose_from_str(name: &str, path: &str) -> Result<Purpose, JsonError> {
    Ok(match name {
        "email" => Purpose::Email,
        "sms" => Purpose::Sms,
        "push" => Purpose::Push,
        "ads" => Purpose::Ads,
        other => return Err(err(path, format!("unknown purpose `{other}`; use email, sms, push or ads"))),
    })
}

/// The JSON name of a consent purpose.
pub fn purpose_name(purpose: Purpose) -> &'static str {
    match purpose {
        Purpose::Email => "email",
        Purpose::Sms => "sms",
        Purpose::Push => "push",
        Purpose::Ads => "ads",
    }
}

fn contact_kind_from_str(name: &str, path: &str) -> Result<ContactKind, JsonError> {
    Ok(match name {
        "email" => ContactKind::Email,
        "phone" => ContactKind::Phone,
        "push_token" | "push-token" => ContactKind::PushToken,
        other => {
            return Err(err(path, format!("unknown contact kind `{other}`; use email, phone or push_token")));
        }
    })
}

/// The JSON name of a contact kind.
pub fn contact_kind_name(kind: ContactKind) -> &'static str {
    match kind {
        ContactKind::Email => "email",
        ContactKind::Phone => "phone",
        ContactKind::PushToken => "push_token",
    }
}

/// A profile from its JSON form.
pub fn profile_from_json(json: &Json) -> Result<Profile, JsonError> {
    let path = "profile";
    let map = object(json, path)?;
    let events = events_from_json(map, path)?;
    let consents = consents_from_json(map, path)?;
    let contacts = contacts_from_json(map, path)?;
    let segments = memberships_from_json(map, path)?;
    Ok(Profile {
        id: string(map, "id", path)?,
        traits: Some(fields_from_json(map.get("traits"), &format!("{path}.traits"))?),
        events,
        consents: Some(consents),
        contacts: Some(contacts),
        segments: Some(segments),
        aggregates: Some(fields_from_json(map.get("aggregates"), &format!("{path}.aggregates"))?),
        timezone: opt_string(map, "timezone", path)?,
    })
}

/// Flat events in, series by name out, in first-seen order; bounded in count and in
/// distinct property names.
fn events_from_json(map: &Map<String, Json>, path: &str) -> Result<Vec<EventSeries>, JsonError> {
    let mut grouped: Vec<(String, Vec<Row>)> = Vec::new();
    let mut series_of: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut property_names: std::collections::HashSet<String> = std::collections::HashSet::new();
    let events = array(map, "events", path)?;
    if events.len() > MAX_EVENTS {
        return Err(err(&format!("{path}.events"), format!("has {} events; at most {MAX_EVENTS} are accepted", events.len())));
    }
    for (i, event) in events.iter().enumerate() {
        let at = format!("{path}.events[{i}]");
        let e = object(event, &at)?;
        let name = string(e, "name", &at)?;
        let occurrence =
            (timestamp_from_json(e.get("timestamp"), &format!("{at}.timestamp"))?, fields_from_json(e.get("properties"), &format!("{at}.properties"))?);
        // Columns are dense, so distinct property names multiply memory by the event count.
        property_names.extend(occurrence.1.iter().map(|f| f.name.clone()));
        if property_names.len() > MAX_PROPERTY_NAMES {
            return Err(err(&format!("{at}.properties"), format!("more than {MAX_PROPERTY_NAMES} distinct property names across the events")));
        }
        match series_of.get(&name) {
            Some(&index) => grouped[index].1.push(occurrence),
            None => {
                series_of.insert(name.clone(), grouped.len());
                grouped.push((name, vec![occurrence]));
            }
        }
    }
    Ok(grouped.into_iter().map(|(name, occurrences)| series_from(name, occurrences)).collect())
}

/// Consents as `{"email": true, ...}`.
fn consents_from_json(map: &Map<String, Json>, path: &str) -> Result<Vec<Consent>, JsonError> {
    Ok(match map.get("consents") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Object(c)) => {
            let mut list = Vec::new();
            for (name, granted) in c {
                let at = format!("{path}.consents.{name}");
                list.push(Consent {
                    purpose: purpose_from_str(name, &at)?,
                    granted: granted.as_bool().ok_or_else(|| err(&at, "must be true or false"))?,
                    updated_at: 0,
                });
            }
            list
        }
        Some(_) => return Err(err(&format!("{path}.consents"), "must be an object such as {\"email\": true}")),
    })
}

/// Contact points as `[{"kind", "address", "active"?}]`.
fn contacts_from_json(map: &Map<String, Json>, path: &str) -> Result<Vec<ContactPoint>, JsonError> {
    let mut contacts = Vec::new();
    for (i, contact) in array(map, "contacts", path)?.iter().enumerate() {
        let at = format!("{path}.contacts[{i}]");
        let c = object(contact, &at)?;
        contacts.push(ContactPoint {
            kind: contact_kind_from_str(&string(c, "kind", &at)?, &format!("{at}.kind"))?,
            address: string(c, "address", &at)?,
            active: c.get("active").and_then(Json::as_bool).unwrap_or(true),
        });
    }
    Ok(contacts)
}

/// Memberships as segment names or `{"segment", "label"?, "since"?}`.
fn memberships_from_json(map: &Map<String, Json>, path: &str) -> Result<Vec<Membership>, JsonError> {
    let mut segments = Vec::new();
    for (i, membership) in array(map, "segments", path)?.iter().enumerate() {
        let at = format!("{path}.segments[{i}]");
        let m = match membership {
            Json::String(name) => Membership { segment: name.clone(), label: None, since: 0 },
            other => {
                let m = object(other, &at)?;
                Membership {
                    segment: string(m, "segment", &at)?,
                    label: opt_string(m, "label", &at)?,
                    since: match m.get("since") {
                        None => 0,
                        since => timestamp_from_json(since, &format!("{at}.since"))?,
                    },
                }
            }
        };
        segments.push(m);
    }
    Ok(segments)
}

/// The JSON form of a profile, as [`profile_from_json`] reads it.
pub fn profile_to_json(profile: &Profile) -> Json {
    json!({
        "id": profile.id,
        "traits": fields_to_json(profile.traits.as_deref().unwrap_or_default()),
        "events": flat_events(profile),
        "consents": Json::Object(profile.consents.iter().flatten()
            .map(|c| (purpose_name(c.purpose).to_string(), json!(c.granted))).collect()),
        "contacts": profile.contacts.iter().flatten().map(|c| json!({
            "kind": contact_kind_name(c.kind), "address": c.address, "active": c.active,
        })).collect::<Vec<_>>(),
        "segments": profile.segments.iter().flatten().map(|m| json!({
            "segment": m.segment, "label": m.label, "since": timestamp_to_json(m.since),
        })).collect::<Vec<_>>(),
        "aggregates": fields_to_json(profile.aggregates.as_deref().unwrap_or_default()),
        "timezone": profile.timezone,
    })
}

/// One occurrence: when, and its properties.
pub type Row = (Timestamp, Vec<Field>);

/// One event series from its occurrences in any order: sorted by time, with one column per
/// property seen, `null` where an occurrence lacks it.
pub fn series_from(name: String, mut occurrences: Vec<Row>) -> EventSeries {
    occurrences.sort_by_key(|(at, _)| *at);
    let mut properties: Vec<PropertyColumn> = Vec::new();
    let mut column_of: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (row, (_, fields)) in occurrences.iter().enumerate() {
        for field in fields {
            let index = *column_of.entry(field.name.clone()).or_insert_with(|| {
                properties.push(PropertyColumn { name: field.name.clone(), values: vec![Value::Null; occurrences.len()] });
                properties.len() - 1
            });
            properties[index].values[row] = field.value.clone();
        }
    }
    EventSeries { name, timestamps: occurrences.iter().map(|(at, _)| *at).collect(), properties }
}

/// Every occurrence as `{"name", "timestamp", "properties"}`, oldest first.
fn flat_events(profile: &Profile) -> Json {
    let mut flat: Vec<(Timestamp, Json)> = Vec::new();
    for series in &profile.events {
        for (row, at) in series.timestamps.iter().enumerate() {
            let properties: Map<String, Json> = series
                .properties
                .iter()
                .filter(|c| !matches!(c.values.get(row), None | Some(Value::Null)))
                .map(|c| (c.name.clone(), value_to_json(&c.values[row])))
                .collect();
            flat.push((*at, json!({ "name": series.name, "timestamp": timestamp_to_json(*at), "properties": properties })));
        }
    }
    flat.sort_by_key(|(at, _)| *at);
    Json::Array(flat.into_iter().map(|(_, event)| event).collect())
}

/// A call context from `{"now": ..., "params": {...}}`.
pub fn context_from_json(json: &Json) -> Result<Context, JsonError> {
    let map = object(json, "context")?;
    Ok(Context { now: timestamp_from_json(map.get("now"), "context.now")?, params: fields_from_json(map.get("params"), "context.params")? })
}

/// A tile request from `{"slot": ..., "page_url": ..., "max_tiles": 3}`.
pub fn tile_request_from_json(json: &Json) -> Result<TileRequest, JsonError> {
    let map = object(json, "request")?;
    let max_tiles = match map.get("max_tiles") {
        None => 3,
        Some(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| (1..=20).contains(n))
            .ok_or_else(|| err("request.max_tiles", "must be a whole number from 1 to 20"))?,
    };
    Ok(TileRequest { slot: string(map, "slot", "request")?, page_url: opt_string(map, "page_url", "request")?, max_tiles })
}

/// An offer from its JSON form.
pub fn offer_from_json(json: &Json, path: &str) -> Result<Offer, JsonError> {
    let map = object(json, path)?;
    let strings = |key: &str| -> Result<Vec<String>, JsonError> {
        array(map, key, path)?
            .iter()
            .enumerate()
            .map(|(i, s)| s.as_str().map(str::to_string).ok_or_else(|| err(&format!("{path}.{key}[{i}]"), "must be a string")))
            .collect()
    };
    let holdout = match map.get("holdout_percent") {
        None => 0,
        Some(n) => n.as_u64().filter(|n| *n <= 100).ok_or_else(|| err(&format!("{path}.holdout_percent"), "must be a whole number from 0 to 100"))? as u8,
    };
    let priority = match map.get("priority") {
        None => 0,
        Some(n) => n.as_i64().and_then(|n| i32::try_from(n).ok()).ok_or_else(|| err(&format!("{path}.priority"), "must be a whole number"))?,
    };
    Ok(Offer {
        id: string(map, "id", path)?,
        slot: string(map, "slot", path)?,
        priority,
        include_segments: strings("include_segments")?,
        exclude_segments: strings("exclude_segments")?,
        category: opt_string(map, "category", path)?,
        title: string(map, "title", path)?,
        body: opt_string(map, "body", path)?.unwrap_or_default(),
        image: opt_string(map, "image", path)?,
        link: string(map, "link", path)?,
        voucher: opt_string(map, "voucher", path)?,
        holdout_percent: holdout,
        valid_until: match map.get("valid_until") {
            None | Some(Json::Null) => None,
            at => Some(timestamp_from_json(at, &format!("{path}.valid_until"))?),
        },
        attributes: fields_from_json(map.get("attributes"), &format!("{path}.attributes"))?,
    })
}

fn param_kind_name(kind: ParamKind) -> &'static str {
    match kind {
        ParamKind::Boolean => "boolean",
        ParamKind::Integer => "integer",
        ParamKind::Number => "number",
        ParamKind::Text => "text",
    }
}

fn params_to_json(params: &[ParamSpec]) -> Json {
    Json::Array(
        params
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "kind": param_kind_name(p.kind),
                    "default": value_to_json(&p.default),
                    "doc": p.doc,
                })
            })
            .collect(),
    )
}

fn query_to_json(query: &InputQuery) -> Json {
    let event = |e: &EventQuery| {
        json!({
            "name": e.name,
            "lookback_seconds": e.lookback_seconds,
            "limit": e.limit,
            "properties": e.properties,
        })
    };
    json!({
        "events": query.events.iter().map(event).collect::<Vec<_>>(),
        "traits": query.traits,
        "aggregates": query.aggregates,
        "consents": query.consents,
        "contacts": query.contacts,
        "segments": query.segments,
    })
}

fn channel_kind_name(kind: ChannelKind) -> &'static str {
    match kind {
        ChannelKind::Email => "email",
        ChannelKind::Sms => "sms",
        ChannelKind::Push => "push",
        ChannelKind::AdAudience => "ad-audience",
        ChannelKind::Webhook => "webhook",
    }
}

/// The JSON form of what `describe()` returned.
pub fn info_to_json(info: &PluginInfo) -> Json {
    match info {
        PluginInfo::Rule(RuleInfo { name, version, summary, params, input }) => json!({
            "world": "segment-rule", "name": name, "version": version, "summary": summary,
            "params": params_to_json(params), "input": query_to_json(input),
        }),
        PluginInfo::Tiles(TilesInfo { name, version, summary, params, input }) => json!({
            "world": "promo-tiles", "name": name, "version": version, "summary": summary,
            "params": params_to_json(params), "input": query_to_json(input),
        }),
        PluginInfo::Channel(AdapterInfo { name, version, summary, kind, contact, consent, hosts, secrets, params }) => json!({
            "world": "channel-adapter", "name": name, "version": version, "summary": summary,
            "kind": channel_kind_name(*kind),
            "contact": contact.map(contact_kind_name),
            "consent": consent.map(purpose_name),
            "hosts": hosts, "secrets": secrets, "params": params_to_json(params),
        }),
    }
}

/// The JSON form of a verdict.
pub fn verdict_to_json(verdict: &Verdict) -> Json {
    json!({ "member": verdict.member, "reason": verdict.reason, "label": verdict.label })
}

/// The JSON form of ranked tiles.
pub fn tiles_to_json(tiles: &[Tile]) -> Json {
    Json::Array(
        tiles
            .iter()
            .map(|t| {
                json!({
                    "offer_id": t.offer_id, "title": t.title, "body": t.body, "image": t.image,
                    "link": t.link, "voucher": t.voucher, "score": t.score, "reason": t.reason,
                })
            })
            .collect(),
    )
}

fn method_name(method: HttpMethod) -> &'static str {
    match method {
        HttpMethod::Get => "GET",
        HttpMethod::Post => "POST",
        HttpMethod::Put => "PUT",
        HttpMethod::Patch => "PATCH",
        HttpMethod::Delete => "DELETE",
    }
}

/// The JSON form of the requests an adapter returned; UTF-8 bodies stay readable.
pub fn requests_to_json(requests: &[HttpRequest]) -> Json {
    Json::Array(
        requests
            .iter()
            .map(|r| {
                let body = match std::str::from_utf8(&r.body) {
                    Ok(text) => json!(text),
                    Err(_) => json!({ "hex": hex::encode(&r.body) }),
                };
                json!({ "method": method_name(r.method), "url": r.url, "headers": r.headers, "body": body })
            })
            .collect(),
    )
}

/// The JSON form of an outcome.
pub fn outcome_to_json(outcome: &Outcome) -> Json {
    match outcome {
        Outcome::Delivered(id) => json!({ "outcome": "delivered", "provider_id": id }),
        Outcome::RetryLater(retry) => json!({
            "outcome": "retry_later", "after_seconds": retry.after_seconds, "reason": retry.reason,
        }),
        Outcome::Failed(reason) => json!({ "outcome": "failed", "reason": reason }),
        Outcome::NotEligible(reason) => json!({ "outcome": "not_eligible", "reason": reason }),
    }
}

/// A rendered message from its JSON form.
pub fn message_from_json(json: &Json) -> Result<Message, JsonError> {
    let path = "message";
    let map = object(json, path)?;
    Ok(Message {
        idempotency_key: string(map, "idempotency_key", path)?,
        profile_id: string(map, "profile_id", path)?,
        to: string(map, "to", path)?,
        subject: opt_string(map, "subject", path)?,
        text: string(map, "text", path)?,
        html: opt_string(map, "html", path)?,
        link: opt_string(map, "link", path)?,
        image: opt_string(map, "image", path)?,
        data: fields_from_json(map.get("data"), "message.data")?,
    })
}

/// An audience change from `{"audience", "add": [...], "remove": [...]}`.
pub fn audience_change_from_json(json: &Json) -> Result<AudienceChange, JsonError> {
    let path = "audience_change";
    let map = object(json, path)?;
    let members = |key: &str| -> Result<Vec<AudienceMember>, JsonError> {
        array(map, key, path)?
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let at = format!("{path}.{key}[{i}]");
                let m = object(m, &at)?;
                let list = |k: &str| -> Result<Vec<String>, JsonError> {
                    array(m, k, &at)?.iter().map(|v| v.as_str().map(str::to_string).ok_or_else(|| err(&format!("{at}.{k}"), "must be strings"))).collect()
                };
                Ok(AudienceMember { profile_id: string(m, "profile_id", &at)?, emails: list("emails")?, phones: list("phones")? })
            })
            .collect()
    };
    Ok(AudienceChange { audience: string(map, "audience", path)?, add: members("add")?, remove: members("remove")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_round_trips_and_errors_name_the_field() {
        let input = json!({
            "id": "u1",
            "traits": {"first_name": "Ann", "ltv": 520.5, "vip": true},
            "events": [{"name": "Order Completed", "timestamp": "2026-01-02T00:00:00Z",
                        "properties": {"revenue": 40}}],
            "consents": {"email": true},
            "contacts": [{"kind": "email", "address": "ann@example.com"}],
            "aggregates": {"order_count": 1},
        });
        let profile = profile_from_json(&input).unwrap();
        assert_eq!(profile.events[0].timestamps, [1_767_312_000_000]);
        let back = profile_from_json(&profile_to_json(&profile)).unwrap();
        assert_eq!(back, profile);

        let bad = json!({"id": "u1", "events": [{"name": "x", "timestamp": "yesterday"}]});
        let e = profile_from_json(&bad).unwrap_err();
        assert_eq!(e.path, "profile.events[0].timestamp");
        let many: Vec<Json> = (0..=MAX_PROPERTY_NAMES).map(|i| json!({"name": "e", "timestamp": i, "properties": {format!("p{i}"): 1}})).collect();
        let e = profile_from_json(&json!({"id": "u1", "events": many})).unwrap_err();
        assert_eq!(e.path, format!("profile.events[{MAX_PROPERTY_NAMES}].properties"));
        let bad = json!({"id": "u1", "consents": {"fax": true}});
        assert_eq!(profile_from_json(&bad).unwrap_err().path, "profile.consents.fax");
    }
}
