//! Recurses without end; the stack limit must stop it.
#![no_std]
use rekindle_sdk::prelude::*;

const NAME: &str = "hostile-infinite-recursion";
struct Deep;

// Deliberately endless: the point is to hit the stack limit.
#[allow(unconditional_recursion)]
fn descend(depth: u64) -> u64 {
    core::hint::black_box(descend(core::hint::black_box(depth + 1))) + 1
}

impl Rule for Deep {
    fn describe() -> RuleInfo {
        RuleInfo::new(NAME, "0.0.0", "misbehaves on purpose")
    }

    fn evaluate(_: &Context, _: &Profile) -> Result<Verdict, String> {
        Ok(Verdict::new(descend(0) > 0, "unreachable"))
    }
}

rekindle_sdk::export_rule!(Deep);
