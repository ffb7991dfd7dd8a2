//! Builds the contract's `Profile` for a rule from the store: only what the rule's input
//! query declares, with the computed traits as aggregates.

use rekindle_runtime::json::{series_from, value_from_json};
use rekindle_runtime::wit::{Consent, ContactKind, ContactPoint, Field, InputQuery, Profile, Purpose, Value};
use rekindle_runtime::filter_profile;
use rekindle_store::{Computed, Store, StoreError};

fn purpose(p: rekindle_store::Purpose) -> Purpose {
    match p {
        rekindle_store::Purpose::Email => Purpose::Email,
        rekindle_store::Purpose::Sms => Purpose::Sms,
        rekindle_store::Purpose::Push => Purpose::Push,
        rekindle_store::Purpose::Ads => Purpose::Ads,
    }
}

/// The computed traits as the aggregates rules read: times in ms, values as numbers.
pub(crate) fn aggregates(c: &Computed) -> Vec<Field> {
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

/// The profile `id` names, cut to `query` as seen at `now`; `None` when nobody matched.
pub(crate) async fn rule_profile(store: &Store, id: &str, query: &InputQuery, now: i64) -> Result<Option<Profile>, StoreError> {
    let Some(record) = store.profile(id, 0).await? else { return Ok(None) };
    let mut events = Vec::new();
    for wanted in &query.events {
        let since = wanted
            .lookback_seconds
            .map_or(i64::MIN, |secs| now.saturating_sub(i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)));
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
        consents: Some(
            record.consents.iter().map(|c| Consent { purpose: purpose(c.purpose), granted: c.granted, updated_at: c.updated_at }).collect(),
        ),
        contacts: Some(
            record
                .contacts
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
                .collect(),
        ),
        // Memberships arrive with segment evaluation.
        segments: Some(Vec::new()),
        aggregates: Some(aggregates(&record.computed)),
        timezone: record.timezone.clone(),
    };
    Ok(Some(filter_profile(&full, query, now)))
}
