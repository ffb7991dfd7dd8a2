//! Panics for profiles that did "Boom" and admits everyone else: a failure in the middle of
//! a batch, which must cost that one verdict and nothing after it.
#![no_std]
use rekindle_sdk::prelude::*;

struct Sometimes;

impl Rule for Sometimes {
    fn describe() -> RuleInfo {
        RuleInfo::new("hostile-panics-sometimes", "0.0.0", "panics for profiles that did Boom").reads(InputQuery::new().events("Boom"))
    }

    fn evaluate(_: &Context, profile: &Profile) -> Result<Verdict, String> {
        if profile.events.iter().any(|series| series.name == "Boom") {
            panic!("boom for {}", profile.id)
        }
        Ok(Verdict::new(true, "no boom"))
    }
}

rekindle_sdk::export_rule!(Sometimes);
