//! The contract's `Profile` for a rule, built from the store: only what the rule's input
//! query declares, with the computed traits as aggregates.

use rekindle_runtime::filter_profile;
use rekindle_runtime::json::{series_from, value_from_json};
use rekindle_runtime::wit::{Consent, ContactKind, ContactPoint, Field, InputQuery, Membership, Profile, Purpose, Value};
use rekindle_store::{Computed, Store, StoreError};

/// The computed traits as the aggregates rules read: times in ms, values as numbers.
pub fn aggregates(c: &Computed) -> Vec<Field> {
    let mut fields = vec![
        Field { name: "order_count".into(), value: Value::Integer(c.order_count) },
        Field { name: "lifetime_value".into(), value: Value::Number(c.lifetime_value) },
    ];
    let mut push = |name: &str, value: Option<Value>| {
        if let Some(value) = value {
            fields.push(Field { name: name.into(), value });
        }
    };
    push("first_order_at", c.first_order_at.map(Value::Integer));
    push("last_order_at", c.last_order_at.map(Value::Integer));
    push("avg_days_between_orders", c.avg_days_between_orders().map(Value::Number));
    push("favourite_category", c.favourite_category().map(Value::Text));
    fields
}

/// Gives a JSON input's `profile` (as `/admin/slots/{slot}/invoke` and `rekindle plugin
/// run` take it) the aggregates the host would compute from its order events, when it has
/// events and names no aggregates of its own: a rule reading `order_count` sees the orders
/// the case lists, as it would once they were ingested.
pub fn derive_aggregates(input: &mut serde_json::Value) {
    let Some(profile) = input.get_mut("profile").and_then(serde_json::Value::as_object_mut) else { return };
    if profile.contains_key("aggregates") {
        return;
    }
    let Some(events) = profile.get("events").and_then(serde_json::Value::as_array) else { return };
    let mapping = rekindle_store::EventMapping::default();
    if !events.iter().any(|e| e.get("name").and_then(serde_json::Value::as_str) == Some(mapping.order_completed.as_str())) {
        return;
    }
    let mut computed = Computed::default();
    for event in events {
        if event.get("name").and_then(serde_json::Value::as_str) != Some(mapping.order_completed.as_str()) {
            continue;
        }
        // A malformed event is the profile parser's to report, with its path.
        let Ok(at) = rekindle_runtime::json::timestamp_from_json(event.get("timestamp"), "timestamp") else { return };
        let empty = serde_json::Map::new();
        computed.add_order(&mapping, at, event.get("properties").and_then(serde_json::Value::as_object).unwrap_or(&empty));
    }
    profile.insert("aggregates".into(), rekindle_runtime::json::fields_to_json(&aggregates(&computed)));
}

/// The profile `id` names, cut to `query` as seen at `now`, `None` when nobody matched;
/// with `replay`, the computed traits are refolded from the events up
/// to `now`, so a past `now` sees the customer as they were then.
pub async fn profile_at(store: &Store, id: &str, query: &InputQuery, now: i64, replay: bool) -> Result<Option<Profile>, StoreError> {
    let Some(mut record) = store.profile(id, 0).await? else { return Ok(None) };
    if replay && !query.aggregates.is_empty() {
        record.computed = store.computed_as_of(&record.id, now).await?;
    }
    let mut events = Vec::new();
    for wanted in &query.events {
        let since = rekindle_runtime::event_since(wanted, now);
        let stored = store.events(&record.id, &wanted.name, since, now, wanted.limit).await?;
        if stored.is_empty() {
            continue;
        }
        let rows = stored
            .into_iter()
            .map(|event| {
                let properties = wanted
                    .properties
                    .iter()
                    .filter_map(|name| event.properties.get(name).map(|v| Field { name: name.clone(), value: value_from_json(v) }))
                    .collect();
                (event.timestamp, properties)
            })
            .collect();
        events.push(series_from(wanted.name.clone(), rows));
    }
    let full = Profile {
        id: record.id.clone(),
        traits: Some(record.traits.iter().map(|(name, value, _)| Field { name: name.clone(), value: value_from_json(value) }).collect()),
        events,
        consents: Some(consents(&record.consents)),
        contacts: Some(contact_points(&record.contacts)),
        segments: Some(store.memberships(&record.id).await?.into_iter().map(|m| Membership { segment: m.segment, label: m.label, since: m.since }).collect()),
        aggregates: Some(aggregates(&record.computed)),
        timezone: record.timezone.clone(),
    };
    Ok(Some(filter_profile(&full, query, now)))
}

/// Stored consents as the contract's.
pub fn consents(stored: &[rekindle_store::Consent]) -> Vec<Consent> {
    stored.iter().map(|c| Consent { purpose: purpose(c.purpose), granted: c.granted, updated_at: c.updated_at }).collect()
}

/// Stored contact points as the contract's; kinds the contract does not know are left out.
pub fn contact_points(stored: &[rekindle_store::Contact]) -> Vec<ContactPoint> {
    stored
        .iter()
        .filter_map(|c| {
            let kind = match c.kind.as_str() {
                "email" => ContactKind::Email,
                "phone" => ContactKind::Phone,
                "push_token" => ContactKind::PushToken,
                _ => return None,
            };
            Some(ContactPoint { kind, address: c.address.clone(), active: c.active })
        })
        .collect()
}

fn purpose(p: rekindle_store::Purpose) -> Purpose {
    match p {
        rekindle_store::Purpose::Email => Purpose::Email,
        rekindle_store::Purpose::Sms => Purpose::Sms,
        rekindle_store::Purpose::Push => Purpose::Push,
        rekindle_store::Purpose::Ads => Purpose::Ads,
    }
}
