//! Favourite category (seed 002): everyone is a member; the label is the category they buy
//! most, for a multi-branch split (shoes, tops, pants, ...), or `none`.
#![no_std]

use rekindle_sdk::prelude::*;

/// The rule; callable natively for tests and benchmarks.
pub struct FavouriteCategory;

impl Rule for FavouriteCategory {
    fn describe() -> RuleInfo {
        RuleInfo::new("favourite-category", env!("CARGO_PKG_VERSION"), "Labels each customer with the category they buy most")
            .param(ParamSpec::text("fallback", "none", "The label for customers with no purchases"))
            .reads(InputQuery::new().aggregate("favourite_category"))
    }

    fn evaluate(ctx: &Context, profile: &Profile) -> Result<Verdict, String> {
        let label = profile.aggregate_text("favourite_category").unwrap_or(ctx.text("fallback")?);
        Ok(Verdict::because(true, || format!("favourite category {label}")).labelled(label))
    }
}

rekindle_sdk::export_rule!(FavouriteCategory);

#[cfg(test)]
mod tests {
    use rekindle_sdk::Field;

    use super::*;

    #[test]
    fn labels_with_the_favourite_or_the_fallback() {
        let ctx = Context { now: 0, params: vec![Field { name: "fallback".into(), value: Value::Text("none".into()) }] };
        let mut profile = Profile::empty("p");
        assert_eq!(FavouriteCategory::evaluate(&ctx, &profile).unwrap().label.as_deref(), Some("none"));
        profile.aggregates = Some(vec![Field { name: "favourite_category".into(), value: Value::Text("shoes".into()) }]);
        let verdict = FavouriteCategory::evaluate(&ctx, &profile).unwrap();
        assert!(verdict.member);
        assert_eq!(verdict.label.as_deref(), Some("shoes"));
    }
}
