//! Win back after 45 days (seed 003): the last order was between `min_days` and `max_days`
//! whole days ago, inclusive. Day 44 and day 91 are out; 45 and 90 are in.
#![no_std]

use rekindle_sdk::DAY;
use rekindle_sdk::prelude::*;

/// The rule; callable natively for tests and benchmarks.
pub struct WinBackWindow;

impl Rule for WinBackWindow {
    fn describe() -> RuleInfo {
        RuleInfo::new("win-back-window", env!("CARGO_PKG_VERSION"), "Last order between 45 and 90 days ago")
            .param(ParamSpec::integer("min_days", 45, "Fewest whole days since the last order"))
            .param(ParamSpec::integer("max_days", 90, "Most whole days since the last order"))
            .reads(InputQuery::new().aggregate("last_order_at"))
    }

    fn evaluate(ctx: &Context, profile: &Profile) -> Result<Verdict, String> {
        let (min, max) = (ctx.integer("min_days")?, ctx.integer("max_days")?);
        let Some(last) = profile.aggregate_number("last_order_at") else {
            return Ok(Verdict::not_member("never ordered"));
        };
        let days = (ctx.now - last as i64).div_euclid(DAY);
        Ok(Verdict::because((min..=max).contains(&days), || format!("last order {days} whole days ago; window {min} to {max}")))
    }
}

rekindle_sdk::export_rule!(WinBackWindow);

#[cfg(test)]
mod tests {
    use rekindle_sdk::{Field, days};

    use super::*;

    fn member(days_ago: i64) -> bool {
        let ctx = Context {
            now: days(1000),
            params: vec![Field { name: "min_days".into(), value: Value::Integer(45) }, Field { name: "max_days".into(), value: Value::Integer(90) }],
        };
        let mut profile = Profile::empty("p");
        profile.aggregates = Some(vec![Field { name: "last_order_at".into(), value: Value::Integer(days(1000 - days_ago)) }]);
        WinBackWindow::evaluate(&ctx, &profile).unwrap().member
    }

    #[test]
    fn the_window_is_45_to_90_days_inclusive() {
        assert!(!member(44));
        assert!(member(45));
        assert!(member(90));
        assert!(!member(91));
    }

    #[test]
    fn no_order_is_not_a_member() {
        let ctx = Context {
            now: 0,
            params: vec![Field { name: "min_days".into(), value: Value::Integer(45) }, Field { name: "max_days".into(), value: Value::Integer(90) }],
        };
        assert!(!WinBackWindow::evaluate(&ctx, &Profile::empty("p")).unwrap().member);
    }
}
