//! About to sleep, one-time purchasers (seed 002): `Order Completed` exactly once ever, and
//! zero times within the last `quiet_days` (180).
#![no_std]

use rekindle_sdk::DAY;
use rekindle_sdk::prelude::*;

/// The rule; callable natively for tests and benchmarks.
pub struct OneTimeAboutToSleep;

impl Rule for OneTimeAboutToSleep {
    fn describe() -> RuleInfo {
        RuleInfo::new("one-time-about-to-sleep", env!("CARGO_PKG_VERSION"), "Exactly one order, and none within 180 days")
            .param(ParamSpec::integer("quiet_days", 180, "Days without an order"))
            .reads(InputQuery::new().aggregate("order_count").aggregate("last_order_at"))
    }

    fn evaluate(ctx: &Context, profile: &Profile) -> Result<Verdict, String> {
        let quiet = ctx.integer("quiet_days")?;
        let orders = profile.aggregate_number("order_count").unwrap_or(0.0) as i64;
        if orders != 1 {
            return Ok(Verdict::because(false, || format!("{orders} orders; needs exactly one")));
        }
        let last = profile.aggregate_number("last_order_at").unwrap_or(0.0) as i64;
        // "Zero times within 180 days": the order happened more than 180 days before now.
        let since = ctx.now - last;
        Ok(Verdict::because(since > quiet * DAY, || format!("one order, {} days ago; quiet after {quiet}", since.div_euclid(DAY))))
    }
}

rekindle_sdk::export_rule!(OneTimeAboutToSleep);

#[cfg(test)]
mod tests {
    use rekindle_sdk::{Field, days};

    use super::*;

    fn member(orders: i64, last_ms_ago: i64) -> bool {
        let ctx = Context { now: days(1000), params: vec![Field { name: "quiet_days".into(), value: Value::Integer(180) }] };
        let mut profile = Profile::empty("p");
        profile.aggregates = Some(vec![
            Field { name: "order_count".into(), value: Value::Integer(orders) },
            Field { name: "last_order_at".into(), value: Value::Integer(days(1000) - last_ms_ago) },
        ]);
        OneTimeAboutToSleep::evaluate(&ctx, &profile).unwrap().member
    }

    #[test]
    fn exactly_one_order_and_none_within_180_days() {
        assert!(member(1, days(181)));
        assert!(member(1, days(180) + 1));
        assert!(!member(1, days(180)), "an order exactly 180 days ago is within 180 days");
        assert!(!member(1, days(179)));
        assert!(!member(2, days(400)));
        assert!(!member(0, days(400)));
    }
}
