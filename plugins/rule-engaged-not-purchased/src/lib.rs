//! Engaged but not purchased (seed 002): `Page Viewed` at least once within the last
//! `window_days` (7), and `Order Completed` not once within them.
#![no_std]

use rekindle_sdk::prelude::*;

const VIEW: &str = "Page Viewed";
const ORDER: &str = "Order Completed";

/// The rule; callable natively for tests and benchmarks.
pub struct EngagedNotPurchased;

impl Rule for EngagedNotPurchased {
    fn describe() -> RuleInfo {
        // The look-back covers the largest window an operator is likely to set; the rule
        // applies the configured window itself.
        let lookback = days(30);
        RuleInfo::new("engaged-not-purchased", env!("CARGO_PKG_VERSION"), "Viewed a page within 7 days, ordered nothing within 7 days")
            .param(ParamSpec::integer("window_days", 7, "The window, in days up to now (at most 30)"))
            .reads(InputQuery::new().event(EventQuery::named(VIEW).within(lookback).last(1)).event(EventQuery::named(ORDER).within(lookback).last(1)))
    }

    fn evaluate(ctx: &Context, profile: &Profile) -> Result<Verdict, String> {
        let window = ctx.integer("window_days")?;
        if !(1..=30).contains(&window) {
            return Err(format!("parameter `window_days` must be from 1 to 30, got {window}"));
        }
        let views = profile.count_within(VIEW, days(window), ctx.now);
        let orders = profile.count_within(ORDER, days(window), ctx.now);
        Ok(Verdict::because(views >= 1 && orders == 0, || format!("{views} page view(s) and {orders} order(s) in {window} days")))
    }
}

rekindle_sdk::export_rule!(EngagedNotPurchased);

#[cfg(test)]
mod tests {
    use rekindle_sdk::{EventSeries, Field};

    use super::*;

    fn member(view_days_ago: Option<f64>, order_days_ago: Option<f64>) -> bool {
        let now = days(100);
        let ago = |d: f64| now - (d * rekindle_sdk::DAY as f64) as i64;
        let ctx = Context { now, params: vec![Field { name: "window_days".into(), value: Value::Integer(7) }] };
        let mut profile = Profile::empty("p");
        if let Some(d) = view_days_ago {
            profile.events.push(EventSeries::at(VIEW, [ago(d)]));
        }
        if let Some(d) = order_days_ago {
            profile.events.push(EventSeries::at(ORDER, [ago(d)]));
        }
        EngagedNotPurchased::evaluate(&ctx, &profile).unwrap().member
    }

    #[test]
    fn viewed_within_seven_days_and_no_order_within_seven() {
        assert!(member(Some(1.0), None));
        assert!(member(Some(7.0), None), "exactly 7 days ago is within 7 days");
        assert!(!member(Some(7.01), None));
        assert!(!member(Some(1.0), Some(3.0)));
        assert!(member(Some(1.0), Some(7.01)), "an order 7 days and a bit ago is outside the window");
        assert!(!member(None, None));
    }
}
