//! Returns a verdict whose reason is 1 MiB; the output limit must refuse it.
#![no_std]
use rekindle_sdk::prelude::*;

const NAME: &str = "hostile-huge-output";
struct Verbose;

impl Rule for Verbose {
    fn describe() -> RuleInfo {
        RuleInfo::new(NAME, "0.0.0", "misbehaves on purpose")
    }

    fn evaluate(_: &Context, _: &Profile) -> Result<Verdict, String> {
        Ok(Verdict::member("x".repeat(1 << 20)))
    }
}

rekindle_sdk::export_rule!(Verbose);
