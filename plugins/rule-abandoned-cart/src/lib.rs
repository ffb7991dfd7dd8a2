//! Abandoned cart (seed 000): the customer added to cart or started checkout, then placed no
//! order within `wait_minutes` (30). Carts older than `max_age_days` (7) no longer count: by
//! then the campaign has run its course.
#![no_std]

use rekindle_sdk::MINUTE;
use rekindle_sdk::prelude::*;

const CART_EVENTS: [&str; 2] = ["Product Added", "Checkout Started"];
const ORDER: &str = "Order Completed";

/// The rule; callable natively for tests and benchmarks.
pub struct AbandonedCart;

impl Rule for AbandonedCart {
    fn describe() -> RuleInfo {
        let lookback = days(30);
        RuleInfo::new("abandoned-cart", env!("CARGO_PKG_VERSION"), "Added to cart, then no order within 30 minutes")
            .param(ParamSpec::integer("wait_minutes", 30, "Minutes without an order before a cart counts as abandoned"))
            .param(ParamSpec::integer("max_age_days", 7, "Carts older than this are no longer abandoned (at most 30)"))
            .reads(
                InputQuery::new()
                    .event(EventQuery::named(CART_EVENTS[0]).within(lookback).last(1))
                    .event(EventQuery::named(CART_EVENTS[1]).within(lookback).last(1))
                    .event(EventQuery::named(ORDER).within(lookback).last(1)),
            )
    }

    fn evaluate(ctx: &Context, profile: &Profile) -> Result<Verdict, String> {
        let wait = ctx.integer("wait_minutes")? * MINUTE;
        let max_age = days(ctx.integer("max_age_days")?.clamp(1, 30));
        let Some(cart) = CART_EVENTS.iter().filter_map(|name| profile.last(name)).max() else {
            return Ok(Verdict::not_member("no cart activity"));
        };
        if profile.last(ORDER).is_some_and(|order| order >= cart) {
            return Ok(Verdict::not_member("ordered after the latest cart activity"));
        }
        let idle = ctx.now - cart;
        let minutes = idle / MINUTE;
        if idle < wait {
            return Ok(Verdict::because(false, || format!("cart active {minutes} minutes ago; waiting {} minutes", wait / MINUTE)));
        }
        if idle > max_age {
            return Ok(Verdict::because(false, || format!("cart left {} days ago; too old", idle / rekindle_sdk::DAY)));
        }
        Ok(Verdict::because(true, || format!("cart left {minutes} minutes ago with no order")))
    }
}

rekindle_sdk::export_rule!(AbandonedCart);

#[cfg(test)]
mod tests {
    use rekindle_sdk::{EventSeries, Field, minutes};

    use super::*;

    fn member(cart_minutes_ago: i64, order_minutes_ago: Option<i64>) -> bool {
        let now = days(10);
        let ctx = Context {
            now,
            params: vec![Field { name: "wait_minutes".into(), value: Value::Integer(30) }, Field { name: "max_age_days".into(), value: Value::Integer(7) }],
        };
        let mut profile = Profile::empty("p");
        profile.events.push(EventSeries::at("Product Added", [now - minutes(cart_minutes_ago)]));
        if let Some(m) = order_minutes_ago {
            profile.events.push(EventSeries::at(ORDER, [now - minutes(m)]));
        }
        AbandonedCart::evaluate(&ctx, &profile).unwrap().member
    }

    #[test]
    fn thirty_minutes_without_an_order() {
        assert!(!member(29, None));
        assert!(member(30, None));
        assert!(member(31, None));
        assert!(!member(31, Some(5)), "ordered after adding to cart");
        assert!(member(31, Some(60)), "an order before the cart does not rescue it");
        assert!(!member(8 * 24 * 60, None), "older than seven days");
    }

    #[test]
    fn checkout_started_counts_too() {
        let now = days(10);
        let ctx = Context {
            now,
            params: vec![Field { name: "wait_minutes".into(), value: Value::Integer(30) }, Field { name: "max_age_days".into(), value: Value::Integer(7) }],
        };
        let mut profile = Profile::empty("p");
        profile.events.push(EventSeries::at("Product Added", [now - minutes(120)]));
        profile.events.push(EventSeries::at("Checkout Started", [now - minutes(10)]));
        assert!(!AbandonedCart::evaluate(&ctx, &profile).unwrap().member, "the latest cart activity was 10 minutes ago");
    }
}
