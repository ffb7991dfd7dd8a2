//! A channel adapter as rekindle-sdk 0.1 built them: it declares a secret and writes
//! `{{secret:API_KEY}}` into its request itself, importing nothing but the log. The host no
//! longer fills such text (customer data can read the same), so it must refuse this
//! component at load and say how to rebuild it.
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
use rekindle::plugin::types::Context;

struct Legacy;

impl Guest for Legacy {
    fn describe() -> AdapterInfo {
        AdapterInfo {
            name: "legacy-secrets".into(),
            version: "0.1.0".into(),
            summary: "writes its secret placeholder itself".into(),
            kind: ChannelKind::Webhook,
            contact: None,
            consent: None,
            hosts: vec!["api.example.com".into()],
            secrets: vec!["API_KEY".into()],
            params: vec![],
        }
    }

    fn deliver(_: Context, message: Message) -> Result<Vec<HttpRequest>, String> {
        Ok(vec![HttpRequest {
            method: HttpMethod::Post,
            url: "https://api.example.com/send".into(),
            headers: vec![("authorization".into(), "Bearer {{secret:API_KEY}}".into())],
            body: message.text.into_bytes(),
        }])
    }

    fn sync_audience(_: Context, _: AudienceChange) -> Result<Vec<HttpRequest>, String> {
        Ok(vec![])
    }

    fn interpret(_: Context, _: HttpRequest, _: HttpResponse) -> Outcome {
        Outcome::Delivered(None)
    }
}

export!(Legacy);
