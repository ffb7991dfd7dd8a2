//! Folding order events into computed traits; the same code on ingest and on re-computation
//! after two profiles merge.

use serde_json::{Map, Value};

use crate::db::Row;
use crate::model::{Computed, EventMapping};

impl Computed {
    /// Adds one order to the running traits.
    pub fn add_order(&mut self, mapping: &EventMapping, timestamp: i64, properties: &Map<String, Value>) {
        self.order_count += 1;
        // Finite amounts can still add up to infinity; past that, an order adds nothing.
        let total = self.lifetime_value + order_value(mapping, properties);
        if total.is_finite() {
            self.lifetime_value = total;
        }
        self.first_order_at = Some(self.first_order_at.map_or(timestamp, |t| t.min(timestamp)));
        self.last_order_at = Some(self.last_order_at.map_or(timestamp, |t| t.max(timestamp)));
        for (category, units) in categories(mapping, properties) {
            let count = self.category_counts.entry(category).or_insert(Value::from(0.0));
            *count = Value::from(count.as_f64().unwrap_or(0.0) + units);
        }
    }

    /// The average gap between orders in days; `None` before the second order.
    pub fn avg_days_between_orders(&self) -> Option<f64> {
        let (first, last) = (self.first_order_at?, self.last_order_at?);
        (self.order_count >= 2).then(|| (last - first) as f64 / (self.order_count - 1) as f64 / 86_400_000.0)
    }

    /// Days from the last order to `now`.
    pub fn days_since_last_order(&self, now: i64) -> Option<f64> {
        self.last_order_at.map(|at| (now - at) as f64 / 86_400_000.0)
    }

    /// The category bought most (units; ties go to the name that sorts first).
    pub fn favourite_category(&self) -> Option<String> {
        self.category_counts
            .iter()
            .filter_map(|(name, n)| n.as_f64().map(|n| (name, n)))
            .max_by(|a, b| a.1.total_cmp(&b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(name, _)| name.clone())
    }
}

fn order_value(mapping: &EventMapping, properties: &Map<String, Value>) -> f64 {
    mapping.revenue_properties.iter().find_map(|key| properties.get(key).and_then(number)).unwrap_or(0.0)
}

/// A finite amount: NaN or infinity would put anyone into any lifetime-value segment.
fn number(value: &Value) -> Option<f64> {
    let n = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    n.filter(|n: &f64| n.is_finite())
}

/// (category, units) for each product of the order; a product without quantity counts once.
fn categories(mapping: &EventMapping, properties: &Map<String, Value>) -> Vec<(String, f64)> {
    let Some(Value::Array(products)) = properties.get(&mapping.products_property) else { return Vec::new() };
    products
        .iter()
        .filter_map(|p| {
            let category = p.get(&mapping.category_property)?.as_str()?.trim();
            let units = p.get("quantity").and_then(number).unwrap_or(1.0).max(0.0);
            (!category.is_empty()).then(|| (category.to_string(), units))
        })
        .collect()
}

/// Computed traits as stored: `order_count, lifetime_value, first_order_at, last_order_at,
/// category_counts`, in that order.
pub(crate) fn computed_from(row: &Row) -> Computed {
    Computed {
        order_count: row.int(0),
        lifetime_value: row.float(1),
        first_order_at: row.opt_int(2),
        last_order_at: row.opt_int(3),
        category_counts: serde_json::from_str(&row.text(4)).unwrap_or_default(),
    }
}

/// The catalog ids of an order's products, each once, in order.
pub(crate) fn ordered_products(mapping: &EventMapping, properties: &Map<String, Value>) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    if let Some(Value::Array(products)) = properties.get(&mapping.products_property) {
        for id in products.iter().filter_map(|p| p.get(&mapping.product_id_property)?.as_str()) {
            if !id.is_empty() && !ids.iter().any(|seen| seen == id) {
                ids.push(id.to_string());
            }
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn props(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn folds_orders_into_traits() {
        let mapping = EventMapping::default();
        let mut c = Computed::default();
        c.add_order(
            &mapping,
            60 * 86_400_000,
            &props(json!({"revenue": 40.5, "products": [
            {"category": "shoes", "quantity": 2}, {"category": "tops"}]})),
        );
        c.add_order(&mapping, 0, &props(json!({"total": "20", "products": [{"category": "tops"}]})));
        c.add_order(&mapping, 120 * 86_400_000, &props(json!({"revenue": 10, "products": [{"category": "shoes"}]})));
        assert_eq!(c.order_count, 3);
        assert_eq!(c.lifetime_value, 70.5);
        assert_eq!(c.first_order_at, Some(0));
        assert_eq!(c.avg_days_between_orders(), Some(60.0));
        assert_eq!(c.days_since_last_order(188 * 86_400_000), Some(68.0));
        assert_eq!(c.favourite_category().as_deref(), Some("shoes"));
        assert_eq!(Computed::default().avg_days_between_orders(), None);
    }
}
