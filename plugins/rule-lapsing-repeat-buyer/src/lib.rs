//! Lapsing repeat buyers (seed 001): at least `min_orders` orders, and the days since the
//! last order reach the customer's own average gap between orders plus `grace_days`. A
//! customer who buys every 60 days qualifies on day 68, not on day 67.
//!
//! It reads the order aggregates (count, first and last order), not the order events:
//! the average gap between orders telescopes to (last - first) / (count - 1), and
//! aggregates travel in the edge's segment token, so the verdict flips on day 68 at the
//! edge too, from a token issued weeks before.
#![no_std]

use rekindle_sdk::prelude::*;
use rekindle_sdk::{DAY, OneDecimal as D};

/// The rule; its logic is also callable natively, for benchmarks and tests.
pub struct LapsingRepeatBuyer;

impl Rule for LapsingRepeatBuyer {
    fn describe() -> RuleInfo {
        RuleInfo::new("lapsing-repeat-buyer", env!("CARGO_PKG_VERSION"), "Repeat buyers overdue by more than their usual gap")
            .param(ParamSpec::integer("min_orders", 2, "Orders a customer needs to count as a repeat buyer"))
            .param(ParamSpec::number("grace_days", 8.0, "Days beyond the customer's average gap before they count as lapsing"))
            .reads(InputQuery::new().aggregate("order_count").aggregate("first_order_at").aggregate("last_order_at"))
    }

    fn evaluate(ctx: &Context, profile: &Profile) -> Result<Verdict, String> {
        let min_orders = ctx.integer("min_orders")?;
        let grace = ctx.number("grace_days")?;
        let orders = profile.aggregate_number("order_count").unwrap_or(0.0) as i64;
        let first = profile.aggregate_number("first_order_at").map(|t| t as i64);
        let last = profile.aggregate_number("last_order_at").map(|t| t as i64);
        let gap = first.zip(last).filter(|_| orders >= 2).map(|(first, last)| (last - first) as f64 / (orders - 1) as f64 / DAY as f64);
        let since = last.map(|at| (ctx.now - at) as f64 / DAY as f64);
        let (Some(gap), Some(since)) = (gap, since) else {
            return Ok(Verdict::because(false, || format!("{orders} order(s); needs {min_orders} to have a usual gap")));
        };
        if orders < min_orders {
            return Ok(Verdict::because(false, || format!("{orders} order(s); needs {min_orders}")));
        }
        let due = gap + grace;
        Ok(Verdict::because(since >= due, || format!("last order {} days ago; usual gap {} + {} grace = {}", D(since), D(gap), D(grace), D(due))))
    }
}

rekindle_sdk::export_rule!(LapsingRepeatBuyer);

#[cfg(test)]
mod tests {
    use rekindle_sdk::{DAY, days};

    use super::*;

    fn ctx(now_day: i64) -> Context {
        Context {
            now: days(now_day),
            params: vec![Field { name: "min_orders".into(), value: Value::Integer(2) }, Field { name: "grace_days".into(), value: Value::Number(8.0) }],
        }
    }

    /// The aggregates the host computes for orders on `order_days`.
    fn buyer(order_days: &[i64]) -> Profile {
        let mut profile = Profile::empty("p");
        let mut aggregates = vec![Field { name: "order_count".into(), value: Value::Integer(order_days.len() as i64) }];
        if let (Some(first), Some(last)) = (order_days.iter().min(), order_days.iter().max()) {
            aggregates.push(Field { name: "first_order_at".into(), value: Value::Integer(days(*first)) });
            aggregates.push(Field { name: "last_order_at".into(), value: Value::Integer(days(*last)) });
        }
        profile.aggregates = Some(aggregates);
        profile
    }

    fn member(now_day: i64, orders: &[i64]) -> bool {
        LapsingRepeatBuyer::evaluate(&ctx(now_day), &buyer(orders)).unwrap().member
    }

    #[test]
    fn a_sixty_day_buyer_lapses_on_day_68_not_67() {
        // Orders on days 0, 60, 120: a 60-day cycle; the last order is day 120.
        assert!(!member(120 + 67, &[0, 60, 120]));
        let verdict = LapsingRepeatBuyer::evaluate(&ctx(188), &buyer(&[0, 60, 120])).unwrap();
        assert!(verdict.member);
        assert_eq!(verdict.reason, "last order 68.0 days ago; usual gap 60.0 + 8.0 grace = 68.0");
        let just_before = Context { now: days(188) - 1, ..ctx(0) };
        assert!(!LapsingRepeatBuyer::evaluate(&just_before, &buyer(&[0, 60, 120])).unwrap().member);
        assert_eq!(DAY, 86_400_000);
    }

    #[test]
    fn one_order_is_never_lapsing() {
        assert!(!member(1000, &[0]));
        assert!(!member(1000, &[]));
    }

    #[test]
    fn operator_parameters_move_the_threshold() {
        let mut strict = ctx(120 + 61);
        strict.params[1].value = Value::Number(1.0);
        assert!(LapsingRepeatBuyer::evaluate(&strict, &buyer(&[0, 60, 120])).unwrap().member);
        strict.params[0].value = Value::Integer(4);
        assert!(!LapsingRepeatBuyer::evaluate(&strict, &buyer(&[0, 60, 120])).unwrap().member);
    }

    #[test]
    fn a_missing_parameter_is_an_error_naming_it() {
        let err = LapsingRepeatBuyer::evaluate(&Context { now: 0, params: vec![] }, &buyer(&[0, 60])).unwrap_err();
        assert!(err.contains("min_orders"), "{err}");
    }
}
