//! The declared-input filter: a plugin receives only what its `describe()` said it reads.

use crate::bindings::wit::{Event, InputQuery, Profile, Timestamp};

/// Cuts a profile down to what `query` declares, as seen at `now`.
///
/// Events are kept when their name is declared and they fall within the look-back; of
/// those only the most recent `limit` are kept, oldest first, with only the declared
/// properties. Traits and aggregates are kept by name; consents, contacts and segments only
/// when asked for.
pub fn filter_profile(profile: &Profile, query: &InputQuery, now: Timestamp) -> Profile {
    let mut events: Vec<Event> = Vec::new();
    for wanted in &query.events {
        let since = wanted
            .lookback_seconds
            .map(|secs| now.saturating_sub(i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)));
        let matching: Vec<&Event> = profile
            .events
            .iter()
            .filter(|e| e.name == wanted.name && e.timestamp <= now)
            .filter(|e| since.is_none_or(|since| e.timestamp >= since))
            .collect();
        let skip = match wanted.limit {
            Some(limit) => matching.len().saturating_sub(limit as usize),
            None => 0,
        };
        events.extend(matching.into_iter().skip(skip).map(|e| Event {
            name: e.name.clone(),
            timestamp: e.timestamp,
            properties: e
                .properties
                .iter()
                .filter(|p| wanted.properties.iter().any(|name| *name == p.name))
                .cloned()
                .collect(),
        }));
    }
    events.sort_by_key(|e| e.timestamp);
    Profile {
        id: profile.id.clone(),
        traits: profile.traits.iter().filter(|t| query.traits.contains(&t.name)).cloned().collect(),
        events,
        consents: if query.consents { profile.consents.clone() } else { Vec::new() },
        contacts: if query.contacts { profile.contacts.clone() } else { Vec::new() },
        segments: if query.segments { profile.segments.clone() } else { Vec::new() },
        aggregates: profile
            .aggregates
            .iter()
            .filter(|a| query.aggregates.contains(&a.name))
            .cloned()
            .collect(),
        timezone: profile.timezone.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::wit::{EventQuery, Field, Value};

    const DAY: i64 = 86_400_000;

    fn event(name: &str, at: i64) -> Event {
        Event {
            name: name.into(),
            timestamp: at,
            properties: vec![
                Field { name: "revenue".into(), value: Value::Number(10.0) },
                Field { name: "noise".into(), value: Value::Text("x".into()) },
            ],
        }
    }

    #[test]
    fn keeps_declared_events_within_lookback_and_limit() {
        let now = 100 * DAY;
        let profile = Profile {
            id: "p".into(),
            traits: vec![Field { name: "first_name".into(), value: Value::Text("Ann".into()) }],
            events: vec![
                event("Order Completed", 10 * DAY),
                event("Page Viewed", 50 * DAY),
                event("Order Completed", 60 * DAY),
                event("Order Completed", 90 * DAY),
                event("Order Completed", 101 * DAY),
            ],
            consents: vec![],
            contacts: vec![],
            segments: vec![],
            aggregates: vec![Field { name: "order_count".into(), value: Value::Integer(4) }],
            timezone: None,
        };
        let query = InputQuery {
            events: vec![EventQuery {
                name: "Order Completed".into(),
                lookback_seconds: Some(60 * 86_400),
                limit: Some(1),
                properties: vec!["revenue".into()],
            }],
            traits: vec![],
            aggregates: vec!["order_count".into()],
            consents: false,
            contacts: false,
            segments: false,
        };
        let cut = filter_profile(&profile, &query, now);
        assert_eq!(cut.events.len(), 1, "{:?}", cut.events);
        assert_eq!(cut.events[0].timestamp, 90 * DAY);
        assert_eq!(cut.events[0].properties.len(), 1);
        assert!(cut.traits.is_empty());
        assert_eq!(cut.aggregates.len(), 1);
    }
}
