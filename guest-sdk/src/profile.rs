//! Questions about a profile's events, traits and aggregates.

use alloc::string::String;

use crate::{ContactKind, DAY, EventSeries, Field, Profile, PropertyColumn, Purpose, Timestamp, Value};

fn field<'a>(fields: &'a [Field], name: &str) -> Option<&'a Value> {
    fields.iter().find(|f| f.name == name).map(|f| &f.value)
}

/// One occurrence within an [`EventSeries`].
#[derive(Debug, Clone, Copy)]
pub struct Occurrence<'a> {
    series: &'a EventSeries,
    row: usize,
}

impl<'a> Occurrence<'a> {
    /// When it happened.
    pub fn timestamp(&self) -> Timestamp {
        self.series.timestamps[self.row]
    }

    /// Property `name` of this occurrence; `None` if undeclared or absent.
    pub fn property(&self, name: &str) -> Option<&'a Value> {
        self.series.column(name).and_then(|values| values.get(self.row)).filter(|v| **v != Value::Null)
    }

    /// Property `name` as a number.
    pub fn number(&self, name: &str) -> Option<f64> {
        self.property(name).and_then(Value::as_number)
    }

    /// Property `name` as text.
    pub fn text(&self, name: &str) -> Option<&'a str> {
        self.property(name).and_then(Value::as_text)
    }
}

impl EventSeries {
    /// A series of `name` events at the given times, without properties (for tests).
    pub fn at(name: &str, timestamps: impl IntoIterator<Item = Timestamp>) -> EventSeries {
        let mut timestamps: alloc::vec::Vec<Timestamp> = timestamps.into_iter().collect();
        timestamps.sort_unstable();
        EventSeries { name: name.into(), timestamps, properties: alloc::vec::Vec::new() }
    }

    /// Adds a property column (for tests); `values` must align with the timestamps.
    pub fn with(mut self, property: &str, values: impl IntoIterator<Item = Value>) -> EventSeries {
        self.properties.push(PropertyColumn { name: property.into(), values: values.into_iter().collect() });
        self
    }

    /// The values of property `name`, aligned with `timestamps`.
    pub fn column(&self, name: &str) -> Option<&[Value]> {
        self.properties.iter().find(|c| c.name == name).map(|c| c.values.as_slice())
    }

    /// The occurrences, oldest first.
    pub fn occurrences(&self) -> impl DoubleEndedIterator<Item = Occurrence<'_>> + ExactSizeIterator {
        (0..self.timestamps.len()).map(move |row| Occurrence { series: self, row })
    }
}

impl Profile {
    /// A profile with only an id, for tests; fill in what the test needs.
    pub fn empty(id: &str) -> Profile {
        Profile {
            id: id.into(),
            traits: None,
            events: alloc::vec::Vec::new(),
            consents: None,
            contacts: None,
            segments: None,
            aggregates: None,
            timezone: None,
        }
    }

    /// The `name` series, if the customer has any such event (and the plugin declared it).
    pub fn series(&self, name: &str) -> Option<&EventSeries> {
        self.events.iter().find(|s| s.name == name)
    }

    /// The times of the `name` events, oldest first.
    pub fn times(&self, name: &str) -> &[Timestamp] {
        self.series(name).map_or(&[], |s| s.timestamps.as_slice())
    }

    /// The `name` events, oldest first.
    pub fn events_named(&self, name: &str) -> impl DoubleEndedIterator<Item = Occurrence<'_>> {
        self.series(name).into_iter().flat_map(EventSeries::occurrences)
    }

    /// How many `name` events there are in all.
    pub fn count(&self, name: &str) -> usize {
        self.times(name).len()
    }

    /// How many `name` events fall in the `window` milliseconds up to and including `now`.
    pub fn count_within(&self, name: &str, window: i64, now: Timestamp) -> usize {
        let since = now.saturating_sub(window);
        self.times(name).iter().filter(|t| **t >= since && **t <= now).count()
    }

    /// How many `name` events happened strictly after `after`, up to `until`.
    pub fn count_between(&self, name: &str, after: Timestamp, until: Timestamp) -> usize {
        self.times(name).iter().filter(|t| **t > after && **t <= until).count()
    }

    /// When the most recent `name` event happened.
    pub fn last(&self, name: &str) -> Option<Timestamp> {
        self.times(name).last().copied()
    }

    /// When the earliest `name` event happened.
    pub fn first(&self, name: &str) -> Option<Timestamp> {
        self.times(name).first().copied()
    }

    /// The average gap between consecutive `name` events, in days; `None` with fewer than two.
    pub fn average_interval_days(&self, name: &str) -> Option<f64> {
        let times = self.times(name);
        let (first, last) = (*times.first()?, *times.last()?);
        // The mean of consecutive gaps telescopes to (last - first) / (n - 1).
        (times.len() >= 2).then(|| (last - first) as f64 / (times.len() - 1) as f64 / DAY as f64)
    }

    /// Days from the most recent `name` event to `now`, with the fraction.
    pub fn days_since(&self, name: &str, now: Timestamp) -> Option<f64> {
        self.last(name).map(|at| (now - at) as f64 / DAY as f64)
    }

    /// The sum of numeric property `property` over all `name` events.
    pub fn sum(&self, name: &str, property: &str) -> f64 {
        let column = self.series(name).and_then(|s| s.column(property)).unwrap_or(&[]);
        column.iter().filter_map(Value::as_number).sum()
    }

    /// Trait `name`.
    pub fn trait_value(&self, name: &str) -> Option<&Value> {
        field(self.traits.as_deref().unwrap_or_default(), name)
    }

    /// Trait `name` as text.
    pub fn trait_text(&self, name: &str) -> Option<&str> {
        self.trait_value(name).and_then(Value::as_text)
    }

    /// Computed aggregate `name`.
    pub fn aggregate(&self, name: &str) -> Option<&Value> {
        field(self.aggregates.as_deref().unwrap_or_default(), name)
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
        self.consents.iter().flatten().any(|c| c.purpose == purpose && c.granted)
    }

    /// The first active contact point of `kind`.
    pub fn contact(&self, kind: ContactKind) -> Option<&str> {
        self.contacts.iter().flatten().find(|c| c.kind == kind && c.active).map(|c| c.address.as_str())
    }

    /// Whether the customer is currently in `segment`.
    pub fn in_segment(&self, segment: &str) -> bool {
        self.segments.iter().flatten().any(|m| m.segment == segment)
    }

    /// The label the rule behind `segment` gave, if any.
    pub fn segment_label(&self, segment: &str) -> Option<&str> {
        self.segments.iter().flatten().find(|m| m.segment == segment).and_then(|m| m.label.as_deref())
    }

    /// The most frequent text value of property `property` across `name` events (ties go to
    /// the value seen most recently).
    pub fn most_frequent(&self, name: &str, property: &str) -> Option<String> {
        let series = self.series(name)?;
        let column = series.column(property)?;
        let mut counts: alloc::vec::Vec<(&str, usize, usize)> = alloc::vec::Vec::new();
        for (row, value) in column.iter().enumerate() {
            if let Some(value) = value.as_text() {
                match counts.iter_mut().find(|(v, _, _)| *v == value) {
                    Some(entry) => {
                        entry.1 += 1;
                        entry.2 = row;
                    }
                    None => counts.push((value, 1, row)),
                }
            }
        }
        counts.into_iter().max_by_key(|(_, n, row)| (*n, *row)).map(|(v, _, _)| v.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orders() -> Profile {
        let mut p = Profile::empty("p");
        p.events.push(
            EventSeries::at("Order Completed", [0, 60 * DAY, 120 * DAY])
                .with("revenue", [Value::Number(10.0), Value::Integer(20), Value::Number(30.5)])
                .with("category", [Value::Text("shoes".into()), Value::Text("tops".into()), Value::Text("shoes".into())]),
        );
        p
    }

    #[test]
    fn counts_intervals_and_sums() {
        let p = orders();
        assert_eq!(p.count("Order Completed"), 3);
        assert_eq!(p.count_within("Order Completed", 60 * DAY, 120 * DAY), 2);
        assert_eq!(p.count_within("Order Completed", 60 * DAY - 1, 120 * DAY), 1);
        assert_eq!(p.count_between("Order Completed", 0, 120 * DAY), 2);
        assert_eq!(p.average_interval_days("Order Completed"), Some(60.0));
        assert_eq!(p.days_since("Order Completed", 188 * DAY), Some(68.0));
        assert_eq!(p.sum("Order Completed", "revenue"), 60.5);
        assert_eq!(p.most_frequent("Order Completed", "category").as_deref(), Some("shoes"));
        assert_eq!(p.events_named("Order Completed").nth(1).and_then(|o| o.number("revenue")), Some(20.0));
        assert_eq!(p.events_named("Order Completed").last().map(|o| o.timestamp()), Some(120 * DAY));
        let mut one = Profile::empty("q");
        one.events.push(EventSeries::at("Order Completed", [0]));
        assert_eq!(one.average_interval_days("Order Completed"), None);
        assert_eq!(Profile::empty("x").count("Order Completed"), 0);
    }
}
