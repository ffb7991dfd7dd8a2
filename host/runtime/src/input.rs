//! The declared-input filter: a plugin receives only what its `describe()` said it reads.

use crate::bindings::wit::{EventQuery, EventSeries, Field, InputQuery, Profile, PropertyColumn, Timestamp};

/// A query that reads nothing: the input of a plugin that declares none.
pub fn empty_query() -> InputQuery {
    InputQuery { events: Vec::new(), traits: Vec::new(), aggregates: Vec::new(), consents: false, contacts: false, segments: false }
}

/// The earliest time a declared event query reads at `now`: its look-back, or all history.
pub fn event_since(wanted: &EventQuery, now: Timestamp) -> Timestamp {
    wanted.lookback_seconds.map_or(i64::MIN, |secs| now.saturating_sub(i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)))
}

/// Cuts a profile down to what `query` declares, as seen at `now`.
///
/// Of each declared event name, the occurrences within the look-back and not after `now`
/// are kept, then only the most recent `limit` of them, with only the declared property
/// columns. Traits and aggregates are kept by name, and consents, contacts and segments
/// whole; a section the query does not ask for is `None`.
pub fn filter_profile(profile: &Profile, query: &InputQuery, now: Timestamp) -> Profile {
    let mut events: Vec<EventSeries> = Vec::new();
    for wanted in &query.events {
        let Some(series) = profile.events.iter().find(|s| s.name == wanted.name) else { continue };
        let since = event_since(wanted, now);
        // Timestamps are sorted, so the kept occurrences are one contiguous range.
        let mut lo = series.timestamps.partition_point(|t| *t < since);
        let hi = series.timestamps.partition_point(|t| *t <= now);
        if let Some(limit) = wanted.limit {
            lo = lo.max(hi.saturating_sub(limit as usize));
        }
        if lo >= hi {
            continue;
        }
        let properties = series
            .properties
            .iter()
            .filter(|column| wanted.properties.contains(&column.name))
            .map(|column| PropertyColumn { name: column.name.clone(), values: column.values[lo..hi].to_vec() })
            .collect();
        events.push(EventSeries { name: series.name.clone(), timestamps: series.timestamps[lo..hi].to_vec(), properties });
    }
    let named = |fields: &Option<Vec<Field>>, names: &[String]| {
        (!names.is_empty()).then(|| fields.iter().flatten().filter(|f| names.contains(&f.name)).cloned().collect::<Vec<_>>())
    };
    Profile {
        id: profile.id.clone(),
        traits: named(&profile.traits, &query.traits),
        events,
        consents: whole(query.consents, &profile.consents),
        contacts: whole(query.contacts, &profile.contacts),
        segments: whole(query.segments, &profile.segments),
        aggregates: named(&profile.aggregates, &query.aggregates),
        timezone: profile.timezone.clone(),
    }
}

/// A whole section when the plugin asked for it, else `None`.
fn whole<T: Clone>(wanted: bool, section: &Option<Vec<T>>) -> Option<Vec<T>> {
    wanted.then(|| section.clone().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::wit::{EventQuery, Value};

    const DAY: i64 = 86_400_000;

    fn series(name: &str, days: &[i64]) -> EventSeries {
        let column = |name: &str, value: Value| PropertyColumn { name: name.into(), values: vec![value; days.len()] };
        EventSeries {
            name: name.into(),
            timestamps: days.iter().map(|d| d * DAY).collect(),
            properties: vec![column("revenue", Value::Number(10.0)), column("noise", Value::Text("x".into()))],
        }
    }

    #[test]
    fn keeps_declared_events_within_lookback_and_limit() {
        let now = 100 * DAY;
        let profile = Profile {
            id: "p".into(),
            traits: Some(vec![Field { name: "first_name".into(), value: Value::Text("Ann".into()) }]),
            events: vec![series("Order Completed", &[10, 60, 90, 101]), series("Page Viewed", &[50])],
            consents: Some(vec![]),
            contacts: Some(vec![]),
            segments: Some(vec![]),
            aggregates: Some(vec![Field { name: "order_count".into(), value: Value::Integer(4) }]),
            timezone: None,
        };
        let mut query = InputQuery {
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
        assert_eq!(cut.events[0].timestamps, [90 * DAY]);
        assert_eq!(cut.events[0].properties.len(), 1);
        assert_eq!(cut.events[0].properties[0].values, [Value::Number(10.0)]);
        assert_eq!(cut.traits, None, "undeclared sections are not sent");
        assert_eq!(cut.consents, None);
        assert_eq!(cut.aggregates.map(|a| a.len()), Some(1));

        // The look-back includes its first instant; nothing after `now` is ever passed.
        query.events[0].limit = None;
        query.events[0].lookback_seconds = Some(40 * 86_400);
        assert_eq!(filter_profile(&profile, &query, now).events[0].timestamps, [60 * DAY, 90 * DAY]);
        query.events[0].lookback_seconds = Some(5 * 86_400);
        assert!(filter_profile(&profile, &query, now).events.is_empty());
    }
}
