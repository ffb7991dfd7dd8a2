//! Panics with a message; the host must report the message as the trap.
#![no_std]
use rekindle_sdk::prelude::*;

const NAME: &str = "hostile-panics";
struct Boom;

impl Rule for Boom {
    fn describe() -> RuleInfo {
        RuleInfo::new(NAME, "0.0.0", "misbehaves on purpose")
    }

    fn evaluate(_: &Context, profile: &Profile) -> Result<Verdict, String> {
        panic!("no verdict for {}", profile.id)
    }
}

rekindle_sdk::export_rule!(Boom);
