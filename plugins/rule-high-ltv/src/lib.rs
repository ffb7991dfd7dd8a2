//! High lifetime value (seed 002): lifetime value strictly above `min_ltv` (500).
#![no_std]

use rekindle_sdk::prelude::*;

/// The rule; callable natively for tests and benchmarks.
pub struct HighLtv;

impl Rule for HighLtv {
    fn describe() -> RuleInfo {
        RuleInfo::new("high-ltv", env!("CARGO_PKG_VERSION"), "Lifetime value above 500")
            .param(ParamSpec::number("min_ltv", 500.0, "Lifetime value to exceed"))
            .reads(InputQuery::new().aggregate("lifetime_value"))
    }

    fn evaluate(ctx: &Context, profile: &Profile) -> Result<Verdict, String> {
        let min = ctx.number("min_ltv")?;
        let ltv = profile.aggregate_number("lifetime_value").unwrap_or(0.0);
        Ok(Verdict::because(ltv > min, || format!("lifetime value {ltv} against {min}")))
    }
}

rekindle_sdk::export_rule!(HighLtv);

#[cfg(test)]
mod tests {
    use rekindle_sdk::Field;

    use super::*;

    fn member(ltv: f64) -> bool {
        let ctx = Context { now: 0, params: vec![Field { name: "min_ltv".into(), value: Value::Number(500.0) }] };
        let mut profile = Profile::empty("p");
        profile.aggregates = Some(vec![Field { name: "lifetime_value".into(), value: Value::Number(ltv) }]);
        HighLtv::evaluate(&ctx, &profile).unwrap().member
    }

    #[test]
    fn strictly_above_500() {
        assert!(!member(500.0));
        assert!(member(500.01));
        assert!(!member(0.0));
    }
}
