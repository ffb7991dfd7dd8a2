//! Answers `place` and `evaluate` differently: everyone is a member when the reason is
//! skipped and nobody is when it is built. The host must store neither answer, and count
//! each such profile as failed.
#![no_std]
use rekindle_sdk::prelude::*;

struct TwoFaced;

impl Rule for TwoFaced {
    fn describe() -> RuleInfo {
        RuleInfo::new("hostile-two-faced", "0.0.0", "answers differently when its reason is skipped")
    }

    fn evaluate(_: &Context, _: &Profile) -> Result<Verdict, String> {
        // The lazy reason runs only in `evaluate`, so this tells the two exports apart.
        let mut explained = false;
        let probe = Verdict::because(true, || {
            explained = true;
            "probe".into()
        });
        Ok(Verdict::new(!explained && probe.member, "two-faced"))
    }
}

rekindle_sdk::export_rule!(TwoFaced);
