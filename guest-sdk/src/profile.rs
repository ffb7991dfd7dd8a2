//! Questions about a profile's events, traits and aggregates.

use alloc::string::String;

use crate::{ContactKind, Event, Field, Profile, Purpose, Timestamp, Value, DAY};

fn field<'a>(fields: &'a [Field], name: &str) -> Option<&'a Value> {
    fields.iter().find(|f| f.name == name).map(|f| &f.value)
}

impl Event {
    /// The value of property `name`.
    pub fn property(&self, name: &str) -> Option<&Value> {
        field(&self.properties, name)
    }

    /// Property `name` as a number.
    pub fn number(&self, name: &str) -> Option<f64> {
        self.property(name).and_then(Value::as_number)
    }
}

impl Profile {
    /// The events named `name`, oldest first.
    pub fn events_named<'s, 'n>(&'s self, name: &'n str) -> impl Iterator<Item = &'s Event> + use<'s, 'n> {
        self.events.iter().filter(move |e| e.name == name)
    }

    /// How many `name` events there are in all.
    pub fn count(&self, name: &str) -> usize {
        self.events_named(name).count()
    }

    /// How many `name` events fall in the `window` milliseconds up to and including `now`.
    pub fn count_within(&self, name: &str, window: i64, now: Timestamp) -> usize {
        let since = now.saturating_sub(window);
        self.events_named(name).filter(|e| e.timestamp >= since && e.timestamp <= now).count()
    }

    /// How many `name` events happened strictly after `after`, up to `until`.
    pub fn count_between(&self, name: &str, after: Timestamp, until: Timestamp) -> usize {
        self.events_named(name).filter(|e| e.timestamp > after && e.timestamp <= until).count()
    }

    /// The most recent `name` event.
    pub fn last(&self, name: &str) -> Option<&Event> {
        self.events_named(name).max_by_key(|e| e.timestamp)
    }

    /// The earliest `name` event.
    pub fn first(&self, name: &str) -> Option<&Event> {
        self.events_named(name).min_by_key(|e| e.timestamp)
    }

    /// The average gap between consecutive `name` events, in days; `None` with fewer than two.
    pub fn average_interval_days(&self, name: &str) -> Option<f64> {
        let mut count = 0usize;
        let (mut first, mut last) = (i64::MAX, i64::MIN);
        for event in self.events_named(name) {
            count += 1;
            first = first.min(event.timestamp);
            last = last.max(event.timestamp);
        }
        // The mean of consecutive gaps telescopes to (last - first) / (n - 1).
        (count >= 2).then(|| (last - first) as f64 / (count - 1) as f64 / DAY as f64)
    }

    /// Days from the most recent `name` event to `now`, with the fraction.
    pub fn days_since(&self, name: &str, now: Timestamp) -> Option<f64> {
        self.last(name).map(|e| (now - e.timestamp) as f64 / DAY as f64)
    }

    /// The sum of numeric property `property` over all `name` events.
    pub fn sum(&self, name: &str, property: &str) -> f64 {
        self.events_named(name).filter_map(|e| e.number(property)).sum()
    }

    /// Trait `name`.
    pub fn trait_value(&self, name: &str) -> Option<&Value> {
        field(&self.traits, name)
    }

    /// Trait `name` as text.
    pub fn trait_text(&self, name: &str) -> Option<&str> {
        self.trait_value(name).and_then(Value::as_text)
    }

    /// Computed aggregate `name`.
    pub fn aggregate(&self, name: &str) -> Option<&Value> {
        field(&self.aggregates, name)
    }

    /// Computed aggregate `name` as a number.
    pub fn aggregate_number(&self, name: &str) -> Option<f64> {
        self.aggregate(name).and_then(Value::as_number)
    }

    /// Computed aggregate `name` as text.
    pub fn aggregate_text(&self, name: &str) -> Option<&str> {
        self.aggregate(name).and_then(Value::as_text)
    }

    /// Whether the customer granted `purpose`.
    pub fn consents_to(&self, purpose: Purpose) -> bool {
        self.consents.iter().any(|c| c.purpose == purpose && c.granted)
    }

    /// The first active contact point of `kind`.
    pub fn contact(&self, kind: ContactKind) -> Option<&str> {
        self.contacts.iter().find(|c| c.kind == kind && c.active).map(|c| c.address.as_str())
    }

    /// Whether the customer is currently in `segment`.
    pub fn in_segment(&self, segment: &str) -> bool {
        self.segments.iter().any(|m| m.segment == segment)
    }

    /// The label the rule behind `segment` gave, if any.
    pub fn segment_label(&self, segment: &str) -> Option<&str> {
        self.segments.iter().find(|m| m.segment == segment).and_then(|m| m.label.as_deref())
    }

    /// The most frequent text value of property `property` across `name` events (ties go to
    /// the value seen most recently).
    pub fn most_frequent(&self, name: &str, property: &str) -> Option<String> {
        let mut counts: alloc::vec::Vec<(&str, usize, Timestamp)> = alloc::vec::Vec::new();
        for event in self.events_named(name) {
            if let Some(value) = event.property(property).and_then(Value::as_text) {
                match counts.iter_mut().find(|(v, _, _)| *v == value) {
                    Some(entry) => {
                        entry.1 += 1;
                        entry.2 = event.timestamp;
                    }
                    None => counts.push((value, 1, event.timestamp)),
                }
            }
        }
        counts.into_iter().max_by_key(|(_, n, at)| (*n, *at)).map(|(v, _, _)| v.into())
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::*;

    fn order(day: i64, revenue: f64) -> Event {
        Event {
            name: "Order Completed".into(),
            timestamp: day * DAY,
            properties: vec![Field { name: "revenue".into(), value: Value::Number(revenue) }],
        }
    }

    fn profile(events: alloc::vec::Vec<Event>) -> Profile {
        Profile {
            id: "p".into(),
            traits: vec![],
            events,
            consents: vec![],
            contacts: vec![],
            segments: vec![],
            aggregates: vec![],
            timezone: None,
        }
    }

    #[test]
    fn counts_intervals_and_sums() {
        let p = profile(vec![order(0, 10.0), order(60, 20.0), order(120, 30.5)]);
        assert_eq!(p.count("Order Completed"), 3);
        assert_eq!(p.count_within("Order Completed", 60 * DAY, 120 * DAY), 2);
        assert_eq!(p.count_within("Order Completed", 60 * DAY - 1, 120 * DAY), 1);
        assert_eq!(p.average_interval_days("Order Completed"), Some(60.0));
        assert_eq!(p.days_since("Order Completed", 188 * DAY), Some(68.0));
        assert_eq!(p.sum("Order Completed", "revenue"), 60.5);
        assert_eq!(profile(vec![order(0, 1.0)]).average_interval_days("Order Completed"), None);
    }
}
