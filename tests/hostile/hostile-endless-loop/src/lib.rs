//! Spins forever; the epoch deadline must stop it.
#![no_std]
use rekindle_sdk::prelude::*;

const NAME: &str = "hostile-endless-loop";
struct Spin;

impl Rule for Spin {
    fn describe() -> RuleInfo {
        RuleInfo::new(NAME, "0.0.0", "misbehaves on purpose")
    }

    fn evaluate(_: &Context, _: &Profile) -> Result<Verdict, String> {
        let mut n: u64 = 0;
        loop {
            n = core::hint::black_box(n.wrapping_add(1));
        }
    }
}

rekindle_sdk::export_rule!(Spin);
