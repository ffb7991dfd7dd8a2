//! RFM win-back (seed 004): high frequency and monetary value, low recency. The quintile
//! cutoffs are population-wide, so the host computes them on each scheduled run and passes
//! them in as parameters (a plugin sees one profile).
#![no_std]

use rekindle_sdk::prelude::*;
use rekindle_sdk::{DAY, RfmCutoffs};

/// The rule; callable natively for tests and benchmarks.
pub struct RfmWinBack;

fn cutoffs(ctx: &Context, name: &str) -> Result<[f64; 4], String> {
    let text = ctx.text(name)?;
    let parsed: Result<Vec<f64>, _> = text.split(',').map(|part| part.trim().parse::<f64>()).collect();
    match parsed.as_deref() {
        Ok([a, b, c, d]) if a <= b && b <= c && c <= d => Ok([*a, *b, *c, *d]),
        _ => Err(format!("parameter `{name}` must be four ascending numbers like \"30,60,120,240\", got {text:?}")),
    }
}

impl Rule for RfmWinBack {
    fn describe() -> RuleInfo {
        RuleInfo::new("rfm-win-back", env!("CARGO_PKG_VERSION"), "High frequency and spend, low recency")
            .param(ParamSpec::text("recency_days_cutoffs", "30,60,120,240", "Quintile cutoffs of days since the last order"))
            .param(ParamSpec::text("frequency_cutoffs", "2,3,5,8", "Quintile cutoffs of order counts"))
            .param(ParamSpec::text("monetary_cutoffs", "50,100,250,500", "Quintile cutoffs of lifetime value"))
            .param(ParamSpec::integer("min_frequency_score", 4, "Lowest frequency score (1-5) that counts as high"))
            .param(ParamSpec::integer("min_monetary_score", 4, "Lowest monetary score (1-5) that counts as high"))
            .param(ParamSpec::integer("max_recency_score", 2, "Highest recency score (1-5) that counts as low"))
            .reads(InputQuery::new().aggregate("order_count").aggregate("lifetime_value").aggregate("last_order_at"))
    }

    fn evaluate(ctx: &Context, profile: &Profile) -> Result<Verdict, String> {
        let cutoffs = RfmCutoffs {
            recency_days: cutoffs(ctx, "recency_days_cutoffs")?,
            frequency: cutoffs(ctx, "frequency_cutoffs")?,
            monetary: cutoffs(ctx, "monetary_cutoffs")?,
        };
        let Some(last) = profile.aggregate_number("last_order_at") else {
            return Ok(Verdict::not_member("never ordered"));
        };
        let recency = (ctx.now - last as i64) as f64 / DAY as f64;
        let orders = profile.aggregate_number("order_count").unwrap_or(0.0);
        let spend = profile.aggregate_number("lifetime_value").unwrap_or(0.0);
        let score = cutoffs.score(recency, orders, spend);
        let member = i64::from(score.frequency) >= ctx.integer("min_frequency_score")?
            && i64::from(score.monetary) >= ctx.integer("min_monetary_score")?
            && i64::from(score.recency) <= ctx.integer("max_recency_score")?;
        let rfm = format!("R{} F{} M{}", score.recency, score.frequency, score.monetary);
        Ok(Verdict::because(member, || format!("{rfm}: {orders} orders, {spend} spent, last {recency:.0} days ago")).labelled(rfm))
    }
}

rekindle_sdk::export_rule!(RfmWinBack);

#[cfg(test)]
mod tests {
    use rekindle_sdk::{Field, days};

    use super::*;

    fn ctx(recency: &str) -> Context {
        let text = |n: &str, v: &str| Field { name: n.into(), value: Value::Text(v.into()) };
        let int = |n: &str, v: i64| Field { name: n.into(), value: Value::Integer(v) };
        Context {
            now: days(1000),
            params: vec![
                text("recency_days_cutoffs", recency),
                text("frequency_cutoffs", "2,3,5,8"),
                text("monetary_cutoffs", "50,100,250,500"),
                int("min_frequency_score", 4),
                int("min_monetary_score", 4),
                int("max_recency_score", 2),
            ],
        }
    }

    fn customer(orders: i64, spend: f64, days_ago: i64) -> Profile {
        let mut p = Profile::empty("p");
        p.aggregates = Some(vec![
            Field { name: "order_count".into(), value: Value::Integer(orders) },
            Field { name: "lifetime_value".into(), value: Value::Number(spend) },
            Field { name: "last_order_at".into(), value: Value::Integer(days(1000 - days_ago)) },
        ]);
        p
    }

    #[test]
    fn high_frequency_high_spend_long_ago() {
        let c = ctx("30,60,120,240");
        // F: 5 orders scores 4; M: 250 scores 4; R: 120 days scores 2.
        assert!(RfmWinBack::evaluate(&c, &customer(5, 250.0, 120)).unwrap().member);
        assert!(!RfmWinBack::evaluate(&c, &customer(5, 250.0, 119)).unwrap().member, "recency score 3 is not low");
        assert!(!RfmWinBack::evaluate(&c, &customer(4, 250.0, 300)).unwrap().member, "frequency score 3 is not high");
        assert!(!RfmWinBack::evaluate(&c, &customer(8, 249.0, 300)).unwrap().member, "monetary score 3 is not high");
        assert_eq!(RfmWinBack::evaluate(&c, &customer(8, 600.0, 300)).unwrap().label.as_deref(), Some("R1 F5 M5"));
    }

    #[test]
    fn bad_cutoffs_name_the_parameter() {
        let err = RfmWinBack::evaluate(&ctx("30,20,10"), &customer(1, 1.0, 1)).unwrap_err();
        assert!(err.contains("`recency_days_cutoffs`"), "{err}");
    }
}
