//! A channel adapter whose webhook signature names a secret it never declared, hoping the
//! host checks webhooks with whatever secret of the channel that name finds. The host must
//! refuse it at load, naming the secret.
#![no_std]
use rekindle_sdk::prelude::*;

struct Undeclared;

impl Channel for Undeclared {
    fn describe() -> AdapterInfo {
        AdapterInfo::new("hostile-feedback-secret", "0.0.0", "names an undeclared webhook secret", ChannelKind::Webhook)
            .host("hooks.example.com")
            .secret("TOKEN")
    }

    fn deliver(_ctx: &Context, _message: &Message) -> Result<Vec<HttpRequest>, String> {
        Ok(Vec::new())
    }

    fn signature() -> Option<SignatureScheme> {
        Some(SignatureScheme::HmacSha256("SENDGRID_API_KEY".into()))
    }
}

rekindle_sdk::export_channel!(Undeclared);
