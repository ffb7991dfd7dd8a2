//! A channel adapter exporting only the `channel-adapter` world, as one built before the
//! optional `reconcile` interface existed: the host must load it and deliver through it,
//! and resend a send left in doubt rather than ask.
#![no_std]
extern crate alloc;
// Links the SDK's allocator and panic handler.
use rekindle_sdk as _;

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

wit_bindgen::generate!({
    path: "../../../wit/since_v0.1.0",
    world: "channel-adapter",
});

use exports::rekindle::plugin::adapter::{AdapterInfo, AudienceChange, ChannelKind, Guest, HttpMethod, HttpRequest, HttpResponse, Message, Outcome};
use rekindle::plugin::types::{Context, ParamKind, ParamSpec, Value};

struct Plain;

impl Guest for Plain {
    fn describe() -> AdapterInfo {
        AdapterInfo {
            name: "plain-channel".into(),
            version: "0.1.0".into(),
            summary: "POSTs each message's text".into(),
            kind: ChannelKind::Webhook,
            contact: None,
            consent: None,
            hosts: vec!["127.0.0.1".into()],
            secrets: vec![],
            params: vec![ParamSpec { name: "url".into(), kind: ParamKind::Text, default: Value::Text(String::new()), doc: "Where to POST".into() }],
        }
    }

    fn deliver(ctx: Context, message: Message) -> Result<Vec<HttpRequest>, String> {
        let url = ctx.params.iter().find(|p| p.name == "url").and_then(|p| match &p.value {
            Value::Text(url) => Some(url.clone()),
            _ => None,
        });
        Ok(vec![HttpRequest {
            method: HttpMethod::Post,
            url: url.ok_or("parameter `url` is missing")?,
            headers: vec![("idempotency-key".into(), message.idempotency_key)],
            body: message.text.into_bytes(),
        }])
    }

    fn sync_audience(_: Context, _: AudienceChange) -> Result<Vec<HttpRequest>, String> {
        Err("messages only".into())
    }

    fn interpret(_: Context, _: HttpRequest, response: HttpResponse) -> Outcome {
        if (200..300).contains(&response.status) { Outcome::Delivered(None) } else { Outcome::Failed(alloc::format!("status {}", response.status)) }
    }
}

export!(Plain);
