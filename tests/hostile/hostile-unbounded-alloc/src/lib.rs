//! Allocates without end; the memory cap must stop it.
#![no_std]
use rekindle_sdk::prelude::*;

const NAME: &str = "hostile-unbounded-alloc";
struct Hoard;

impl Rule for Hoard {
    fn describe() -> RuleInfo {
        RuleInfo::new(NAME, "0.0.0", "misbehaves on purpose")
    }

    fn evaluate(_: &Context, _: &Profile) -> Result<Verdict, String> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // Reserve without touching: the point is the cap, not the page faults.
            hoard.push(core::hint::black_box(Vec::with_capacity(1 << 20)));
        }
    }
}

rekindle_sdk::export_rule!(Hoard);
