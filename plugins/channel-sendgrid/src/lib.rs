//! Email through SendGrid (`POST /v3/mail/send`). The host renders the message; this
//! formats it as SendGrid's JSON, with the API key as a `secret("SENDGRID_API_KEY")`
//! placeholder the host fills in. `base_url` points tests at a local server.
//!
//! After a crash leaves a send in doubt, the adapter asks SendGrid's Email Activity API
//! whether a message carries the send's idempotency key in its `custom_args`. That API
//! needs SendGrid's extended activity history and an API key with Email Activity access;
//! without them the lookup answers `unknown` and the host resends.
//!
//! SendGrid's signed Event Webhook reports what became of each message: the host checks
//! its ECDSA signature with `SENDGRID_WEBHOOK_KEY` (the verification key SendGrid shows),
//! and `parse_feedback` reads the events carrying our idempotency key back.
#![no_std]

use rekindle_sdk::prelude::*;
use serde_json::json;

/// The adapter; callable natively for tests.
pub struct SendGrid;

impl Channel for SendGrid {
    fn describe() -> AdapterInfo {
        AdapterInfo::new("sendgrid", env!("CARGO_PKG_VERSION"), "Email through SendGrid v3 mail/send", ChannelKind::Email)
            .contact(ContactKind::Email)
            .consent(Purpose::Email)
            .host("api.sendgrid.com")
            .secret("SENDGRID_API_KEY")
            .secret("SENDGRID_WEBHOOK_KEY")
            .param(ParamSpec::text("base_url", "https://api.sendgrid.com", "SendGrid's API root"))
            .param(ParamSpec::text("from_email", "", "The verified sender address"))
            .param(ParamSpec::text("from_name", "", "The sender name shown to customers"))
    }

    fn deliver(ctx: &Context, message: &Message) -> Result<Vec<HttpRequest>, String> {
        let from = ctx.text("from_email")?;
        if !from.contains('@') {
            return Err(format!("parameter `from_email` must be an email address, got `{from}`"));
        }
        let mut content = vec![json!({"type": "text/plain", "value": message.text})];
        if let Some(html) = &message.html {
            content.push(json!({"type": "text/html", "value": html}));
        }
        // The host's one-click unsubscribe (RFC 8058) arrives as message data; SendGrid
        // sets custom headers from `headers`.
        let mut headers = serde_json::Map::new();
        for field in &message.data {
            if let ("List-Unsubscribe" | "List-Unsubscribe-Post", Value::Text(value)) = (field.name.as_str(), &field.value) {
                headers.insert(field.name.clone(), json!(value));
            }
        }
        let mut body = json!({
            "personalizations": [{"to": [{"email": message.to}]}],
            "from": {"email": from, "name": ctx.text("from_name")?},
            "subject": message.subject.as_deref().unwrap_or(""),
            "content": content,
            // Echoed back in SendGrid's event webhooks, so opens and clicks join the journey run.
            "custom_args": {"idempotency_key": message.idempotency_key, "profile_id": message.profile_id},
        });
        if !headers.is_empty() {
            body["headers"] = serde_json::Value::Object(headers);
        }
        Ok(vec![
            HttpRequest::new(HttpMethod::Post, format!("{}/v3/mail/send", ctx.text("base_url")?.trim_end_matches('/')))
                .header("authorization", format!("Bearer {}", secret("SENDGRID_API_KEY")))
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body).map_err(|e| e.to_string())?),
        ])
    }

    fn interpret(_ctx: &Context, _request: &HttpRequest, response: &HttpResponse) -> Outcome {
        match response.status {
            // 202 Accepted; the id SendGrid assigned comes back as X-Message-Id.
            200..=299 => Outcome::Delivered(response.header("x-message-id").map(String::from)),
            _ => Outcome::from_status(response),
        }
    }

    fn lookup(ctx: &Context, message: &Message) -> Result<HttpRequest, String> {
        // Email Activity's query language: custom args are `unique_args['name']="value"`.
        let query = format!("unique_args['idempotency_key']=\"{}\"", message.idempotency_key.replace('\\', "\\\\").replace('"', "\\\""));
        let url =
            format!("{}/v3/messages?{}", ctx.text("base_url")?.trim_end_matches('/'), rekindle_sdk::form_urlencoded(&[("limit", "1"), ("query", &query)]));
        Ok(HttpRequest::new(HttpMethod::Get, url).header("authorization", format!("Bearer {}", secret("SENDGRID_API_KEY"))))
    }

    fn confirm(_ctx: &Context, _message: &Message, response: &HttpResponse) -> Found {
        if !(200..=299).contains(&response.status) {
            return Found::Unknown(format!("Email Activity answered {}", response.status));
        }
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap_or_default();
        match body["messages"].as_array() {
            Some(messages) if messages.is_empty() => Found::Absent,
            Some(messages) => Found::Accepted(messages[0]["msg_id"].as_str().map(String::from)),
            None => Found::Unknown("Email Activity's answer has no `messages` list".into()),
        }
    }

    fn signature() -> Option<SignatureScheme> {
        Some(SignatureScheme::SendgridEcdsa("SENDGRID_WEBHOOK_KEY".into()))
    }

    /// SendGrid posts a JSON array of events; those without our idempotency key (mail this
    /// host did not send through the same account) are left out.
    fn parse_feedback(ctx: &Context, request: &HttpRequest) -> Result<Vec<FeedbackEvent>, String> {
        let events: Vec<serde_json::Value> = serde_json::from_slice(&request.body).map_err(|e| format!("the body is not a JSON array of events: {e}"))?;
        let mut out = Vec::new();
        for (index, event) in events.iter().enumerate() {
            let text = |key: &str| event.get(key).and_then(|v| v.as_str()).map(String::from);
            let Some(send_key) = text("idempotency_key") else { continue };
            let name = text("event").ok_or_else(|| format!("event {index} has no `event`"))?;
            let reason = text("reason").or_else(|| text("response")).or_else(|| text("status"));
            let Some(kind) = kind_of(&name, text("type").as_deref(), reason.as_deref()) else { continue };
            let at = event.get("timestamp").and_then(|t| t.as_i64()).map_or(ctx.now, |s| s.saturating_mul(1000));
            // SendGrid's id is the same each time it sends an event again.
            let event_id = text("sg_event_id").unwrap_or_else(|| format!("{}:{name}:{at}", text("sg_message_id").unwrap_or_default()));
            out.push(FeedbackEvent {
                send_key,
                event_id,
                kind,
                at,
                recipient: text("email"),
                reason,
                url: text("url"),
                machine: event.get("sg_machine_open").and_then(|m| m.as_bool()).unwrap_or(false),
            });
        }
        Ok(out)
    }
}

/// What one SendGrid event is; `None` for those saying nothing about delivery
/// (`group_resubscribe`) or unknown to this adapter.
fn kind_of(event: &str, bounce_type: Option<&str>, reason: Option<&str>) -> Option<FeedbackKind> {
    Some(match event {
        "processed" => FeedbackKind::Processed,
        "deferred" => FeedbackKind::Deferred,
        "delivered" => FeedbackKind::Delivered,
        "open" => FeedbackKind::Opened,
        "click" => FeedbackKind::Clicked,
        // `blocked` is the receiving server refusing for now (reputation, rate); a `bounce`
        // is the address refused for good.
        "bounce" if bounce_type == Some("blocked") => FeedbackKind::SoftBounce,
        "bounce" => FeedbackKind::HardBounce,
        // SendGrid drops mail to addresses on its own suppression lists: the same verdict.
        "dropped" => match reason.unwrap_or("") {
            // `Invalid` alone is the address; `Invalid SMTPAPI header` is ours, not theirs.
            "Bounced Address" | "Invalid" => FeedbackKind::HardBounce,
            "Spam Reporting Address" => FeedbackKind::SpamReport,
            "Unsubscribed Address" => FeedbackKind::Unsubscribed,
            _ => FeedbackKind::Dropped,
        },
        "spamreport" => FeedbackKind::SpamReport,
        "unsubscribe" | "group_unsubscribe" => FeedbackKind::Unsubscribed,
        _ => return None,
    })
}

rekindle_sdk::export_channel!(SendGrid);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_a_message_up_by_its_idempotency_key() {
        let request = SendGrid::lookup(&ctx(), &message()).unwrap();
        assert_eq!(request.method, HttpMethod::Get);
        assert_eq!(request.url, "http://127.0.0.1:9000/v3/messages?limit=1&query=unique_args%5B%27idempotency_key%27%5D%3D%22run-1%3Asend%3Aemail%22");
        assert!(request.headers.iter().any(|(k, v)| k == "authorization" && v == "Bearer {{secret:SENDGRID_API_KEY#test}}"));
        let answer = |status, body: &str| HttpResponse { status, headers: vec![], body: body.as_bytes().to_vec() };
        assert_eq!(
            SendGrid::confirm(&ctx(), &message(), &answer(200, r#"{"messages":[{"msg_id":"abc.1","status":"delivered"}]}"#)),
            Found::Accepted(Some("abc.1".into()))
        );
        assert_eq!(SendGrid::confirm(&ctx(), &message(), &answer(200, r#"{"messages":[]}"#)), Found::Absent);
        // No activity access: nothing is settled, so the host resends.
        assert!(matches!(SendGrid::confirm(&ctx(), &message(), &answer(403, "{}")), Found::Unknown(why) if why.contains("403")));
        assert!(matches!(SendGrid::confirm(&ctx(), &message(), &answer(200, "nonsense")), Found::Unknown(_)));
    }

    fn ctx() -> Context {
        let text = |name: &str, value: &str| Field { name: name.into(), value: Value::Text(value.into()) };
        Context { now: 0, params: vec![text("base_url", "http://127.0.0.1:9000/"), text("from_email", "shop@example.com"), text("from_name", "Shop")] }
    }

    fn message() -> Message {
        Message {
            idempotency_key: "run-1:send:email".into(),
            profile_id: "ann".into(),
            to: "ann@example.com".into(),
            subject: Some("We miss you".into()),
            text: "Come back".into(),
            html: Some("<p>Come back</p>".into()),
            link: None,
            image: None,
            data: vec![],
        }
    }

    #[test]
    fn reads_sendgrids_events_back_by_idempotency_key() {
        let body = br#"[
            {"email":"ann@example.com","timestamp":1700000000,"event":"delivered","sg_event_id":"e1","idempotency_key":"run-1:send:email"},
            {"email":"ann@example.com","timestamp":1700000001,"event":"open","sg_event_id":"e2","sg_machine_open":true,"idempotency_key":"run-1:send:email"},
            {"email":"ann@example.com","timestamp":1700000002,"event":"click","url":"https://shop.example/x","sg_event_id":"e3","idempotency_key":"run-1:send:email"},
            {"email":"bob@example.com","timestamp":1700000003,"event":"bounce","type":"blocked","reason":"421 try later","sg_event_id":"e4","idempotency_key":"run-2:send:email"},
            {"email":"cy@example.com","timestamp":1700000004,"event":"dropped","reason":"Bounced Address","sg_event_id":"e5","idempotency_key":"run-3:send:email"},
            {"email":"other@example.com","timestamp":1700000005,"event":"delivered","sg_event_id":"e6"},
            {"email":"ann@example.com","timestamp":1700000006,"event":"group_resubscribe","sg_event_id":"e7","idempotency_key":"run-1:send:email"}
        ]"#;
        let request = HttpRequest::new(HttpMethod::Post, "https://rekindle.example/v1/feedback/email").body(body.to_vec());
        let events = SendGrid::parse_feedback(&ctx(), &request).unwrap();
        let kinds: Vec<_> = events.iter().map(|e| (e.event_id.as_str(), e.kind, e.machine)).collect();
        assert_eq!(
            kinds,
            [
                ("e1", FeedbackKind::Delivered, false),
                ("e2", FeedbackKind::Opened, true),
                ("e3", FeedbackKind::Clicked, false),
                ("e4", FeedbackKind::SoftBounce, false),
                ("e5", FeedbackKind::HardBounce, false)
            ]
        );
        assert_eq!(events[0].at, 1_700_000_000_000);
        assert_eq!(events[2].url.as_deref(), Some("https://shop.example/x"));
        assert_eq!(events[3].reason.as_deref(), Some("421 try later"));
        let not_json = HttpRequest::new(HttpMethod::Post, "https://x/").body(b"nonsense".to_vec());
        assert!(SendGrid::parse_feedback(&ctx(), &not_json).unwrap_err().contains("JSON array"));
    }

    #[test]
    fn formats_mail_send() {
        let request = SendGrid::deliver(&ctx(), &message()).unwrap().remove(0);
        assert_eq!(request.url, "http://127.0.0.1:9000/v3/mail/send");
        assert!(request.headers.contains(&("authorization".into(), "Bearer {{secret:SENDGRID_API_KEY#test}}".into())));
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["personalizations"][0]["to"][0]["email"], "ann@example.com");
        assert_eq!(body["from"], json!({"email": "shop@example.com", "name": "Shop"}));
        assert_eq!(body["content"][1], json!({"type": "text/html", "value": "<p>Come back</p>"}));
        assert_eq!(body["custom_args"]["idempotency_key"], "run-1:send:email");
        assert!(body.get("headers").is_none());
        let mut unsubscribable = message();
        let text = |name: &str, value: &str| Field { name: name.into(), value: Value::Text(value.into()) };
        unsubscribable.data = vec![
            text("List-Unsubscribe", "<https://r.example/v1/unsubscribe/t>"),
            text("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            text("voucher", "X"),
        ];
        let body: serde_json::Value = serde_json::from_slice(&SendGrid::deliver(&ctx(), &unsubscribable).unwrap()[0].body).unwrap();
        assert_eq!(body["headers"], json!({"List-Unsubscribe": "<https://r.example/v1/unsubscribe/t>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}));
    }

    #[test]
    fn needs_a_sender_and_reads_the_message_id() {
        let mut no_sender = ctx();
        no_sender.params[1].value = Value::Text(String::new());
        assert!(SendGrid::deliver(&no_sender, &message()).unwrap_err().contains("`from_email`"));
        let request = SendGrid::deliver(&ctx(), &message()).unwrap().remove(0);
        let accepted = HttpResponse { status: 202, headers: vec![("X-Message-Id".into(), "abc".into())], body: vec![] };
        assert_eq!(SendGrid::interpret(&ctx(), &request, &accepted), Outcome::Delivered(Some("abc".into())));
        let limited = HttpResponse { status: 429, headers: vec![], body: vec![] };
        assert!(matches!(SendGrid::interpret(&ctx(), &request, &limited), Outcome::RetryLater(_)));
    }
}
