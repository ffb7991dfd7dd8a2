//! The generic webhook adapter: each message, or audience change, becomes one JSON POST to
//! the URL the operator configures. The bearer token is a `secret("WEBHOOK_TOKEN")`
//! placeholder the host fills in, so the plugin never sees it.
//!
//! The receiver may report what became of each message by POSTing receipts back to the
//! host's feedback URL, `{"receipts": [{"id", "idempotency_key", "status", "at"}]}`, signed
//! with `WEBHOOK_SIGNING_SECRET` as `X-Rekindle-Signature: t=SECONDS,v1=HEX` (the hex
//! HMAC-SHA256 of `t`, `.` and the body). The host checks the signature.
#![no_std]

use rekindle_sdk::prelude::*;
use serde_json::json;

/// The adapter; callable natively for tests.
pub struct Webhook;

impl Channel for Webhook {
    fn describe() -> AdapterInfo {
        AdapterInfo::new("webhook", env!("CARGO_PKG_VERSION"), "POSTs messages and audience changes as JSON", ChannelKind::Webhook)
            .host("*")
            .secret("WEBHOOK_TOKEN")
            .secret("WEBHOOK_SIGNING_SECRET")
            .param(ParamSpec::text("url", "", "Where to POST; its host must be on the operator's allowlist"))
    }

    fn deliver(ctx: &Context, message: &Message) -> Result<Vec<HttpRequest>, String> {
        let body = json!({
            "type": "message",
            "idempotency_key": message.idempotency_key,
            "profile_id": message.profile_id,
            "to": message.to,
            "subject": message.subject,
            "text": message.text,
            "html": message.html,
            "link": message.link,
            "image": message.image,
            "data": message.data.iter().map(|f| (f.name.clone(), value_json(&f.value))).collect::<serde_json::Map<_, _>>(),
        });
        Ok(vec![post(ctx, &message.idempotency_key, &body)?])
    }

    fn sync_audience(ctx: &Context, change: &AudienceChange) -> Result<Vec<HttpRequest>, String> {
        let ids = |members: &[AudienceMember]| members.iter().map(|m| m.profile_id.clone()).collect::<Vec<_>>();
        let body = json!({ "type": "audience", "audience": change.audience, "add": ids(&change.add), "remove": ids(&change.remove) });
        // One key per change: the audience's name alone would make the receiver replay the
        // first change's answer for every later one.
        Ok(vec![post(ctx, &audience_change_key(ctx, change), &body)?])
    }

    /// As usual, except `409 Conflict`: an Idempotency-Key receiver says so while a request
    /// with the same key is still being processed, so the host asks again later rather than
    /// taking the message as failed.
    fn interpret(_ctx: &Context, _request: &HttpRequest, response: &HttpResponse) -> Outcome {
        if response.status == 409 {
            let after = response.header("retry-after").and_then(|v| v.trim().parse().ok()).or(Some(1));
            return Outcome::RetryLater(Retry { after_seconds: after, reason: "409: the receiver is still processing this key".into() });
        }
        Outcome::from_status(response)
    }

    fn signature() -> Option<SignatureScheme> {
        Some(SignatureScheme::HmacSha256("WEBHOOK_SIGNING_SECRET".into()))
    }

    /// The receiver's receipts. Its `status` is the contract's kind (`delivered`, `opened`,
    /// `clicked`, `hard-bounce`, `soft-bounce`, `unsubscribed`, ...), `at` ms since the epoch.
    fn parse_feedback(ctx: &Context, request: &HttpRequest) -> Result<Vec<FeedbackEvent>, String> {
        let body: serde_json::Value = serde_json::from_slice(&request.body).map_err(|e| format!("the body is not JSON: {e}"))?;
        let receipts = body.get("receipts").and_then(|r| r.as_array()).ok_or("the body has no `receipts` list")?;
        receipts
            .iter()
            .enumerate()
            .map(|(i, receipt)| {
                let text = |key: &str| receipt.get(key).and_then(|v| v.as_str()).map(String::from);
                let required = |key: &str| text(key).filter(|v| !v.is_empty()).ok_or_else(|| format!("receipts[{i}].{key} is missing"));
                let status = required("status")?;
                let kind = kind_named(&status).ok_or_else(|| format!("receipts[{i}].status `{status}` is not a feedback kind"))?;
                Ok(FeedbackEvent {
                    send_key: required("idempotency_key")?,
                    event_id: required("id")?,
                    kind,
                    at: receipt.get("at").and_then(|a| a.as_i64()).unwrap_or(ctx.now),
                    recipient: text("recipient"),
                    reason: text("reason"),
                    url: text("url"),
                    machine: receipt.get("machine").and_then(|m| m.as_bool()).unwrap_or(false),
                })
            })
            .collect()
    }
}

/// The contract's feedback kinds by their names.
fn kind_named(name: &str) -> Option<FeedbackKind> {
    use FeedbackKind as K;
    let kinds = [
        ("processed", K::Processed),
        ("sent", K::Sent),
        ("deferred", K::Deferred),
        ("delivered", K::Delivered),
        ("opened", K::Opened),
        ("clicked", K::Clicked),
        ("hard-bounce", K::HardBounce),
        ("soft-bounce", K::SoftBounce),
        ("dropped", K::Dropped),
        ("failed", K::Failed),
        ("spam-report", K::SpamReport),
        ("unsubscribed", K::Unsubscribed),
    ];
    kinds.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
}

fn post(ctx: &Context, key: &str, body: &serde_json::Value) -> Result<HttpRequest, String> {
    let url = ctx.text("url")?;
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(format!("parameter `url` must be an http(s) URL, got `{url}`"));
    }
    Ok(HttpRequest {
        method: HttpMethod::Post,
        url: url.into(),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("idempotency-key".into(), key.into()),
            ("authorization".into(), format!("Bearer {}", secret("WEBHOOK_TOKEN"))),
        ],
        body: serde_json::to_vec(body).map_err(|e| e.to_string())?,
    })
}

fn value_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Null => serde_json::Value::Null,
        Value::Boolean(b) => json!(b),
        Value::Integer(i) => json!(i),
        Value::Number(n) => json!(n),
        Value::Text(s) => json!(s),
        Value::Json(text) => serde_json::from_str(text).unwrap_or_else(|_| json!(text)),
    }
}

rekindle_sdk::export_channel!(Webhook);

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(url: &str) -> Context {
        Context { now: 0, params: vec![Field { name: "url".into(), value: Value::Text(url.into()) }] }
    }

    fn message() -> Message {
        Message {
            idempotency_key: "run-1:step-2:webhook".into(),
            profile_id: "ann".into(),
            to: "ann@example.com".into(),
            subject: Some("We miss you".into()),
            text: "Come back".into(),
            html: None,
            link: None,
            image: None,
            data: vec![Field { name: "voucher".into(), value: Value::Text("BACK10".into()) }],
        }
    }

    #[test]
    fn delivers_one_json_post_with_a_secret_placeholder() {
        let requests = Webhook::deliver(&ctx("https://hooks.example.com/in"), &message()).unwrap();
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        assert_eq!(request.url, "https://hooks.example.com/in");
        assert!(request.headers.iter().any(|(k, v)| k == "authorization" && v == "Bearer {{secret:WEBHOOK_TOKEN#test}}"));
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["data"]["voucher"], "BACK10");
        assert_eq!(body["idempotency_key"], "run-1:step-2:webhook");
    }

    #[test]
    fn reads_receipts_and_names_the_one_at_fault() {
        let post = |body: &str| HttpRequest::new(HttpMethod::Post, "https://rekindle.example/v1/feedback/hook").body(body.as_bytes().to_vec());
        let ok = post(r#"{"receipts":[{"id":"r1","idempotency_key":"run-1:step-2:webhook","status":"clicked","at":5,"url":"https://s/x"}]}"#);
        let events = Webhook::parse_feedback(&ctx(""), &ok).unwrap();
        assert_eq!((events[0].kind, events[0].at, events[0].url.as_deref()), (FeedbackKind::Clicked, 5, Some("https://s/x")));
        let bad = post(r#"{"receipts":[{"id":"r1","idempotency_key":"k","status":"delivered"},{"id":"r2","idempotency_key":"k","status":"exploded"}]}"#);
        assert!(Webhook::parse_feedback(&ctx(""), &bad).unwrap_err().contains("receipts[1].status"));
        let keyless = post(r#"{"receipts":[{"id":"r1","status":"delivered"}]}"#);
        assert!(Webhook::parse_feedback(&ctx(""), &keyless).unwrap_err().contains("receipts[0].idempotency_key"));
        assert!(Webhook::parse_feedback(&ctx(""), &post("[]")).unwrap_err().contains("receipts"));
    }

    #[test]
    fn refuses_a_url_that_is_not_http() {
        let err = Webhook::deliver(&ctx("ftp://x"), &message()).unwrap_err();
        assert!(err.contains("`url`"), "{err}");
        let err = Webhook::deliver(&ctx(""), &message()).unwrap_err();
        assert!(err.contains("`url`"), "{err}");
    }

    #[test]
    fn reads_status_codes_into_outcomes() {
        let response = |status| HttpResponse { status, headers: vec![("Retry-After".into(), "30".into())], body: vec![] };
        let request = Webhook::deliver(&ctx("https://h/x"), &message()).unwrap().remove(0);
        assert_eq!(Webhook::interpret(&ctx(""), &request, &response(204)), Outcome::Delivered(None));
        assert!(matches!(Webhook::interpret(&ctx(""), &request, &response(429)), Outcome::RetryLater(r) if r.after_seconds == Some(30)));
        assert!(matches!(Webhook::interpret(&ctx(""), &request, &response(400)), Outcome::Failed(_)));
        // Still in flight at the receiver: asked again, never taken as failed.
        assert!(matches!(Webhook::interpret(&ctx(""), &request, &response(409)), Outcome::RetryLater(r) if r.after_seconds == Some(30)));
    }

    #[test]
    fn each_audience_change_has_a_key_of_its_own() {
        let member = AudienceMember { profile_id: "ann".into(), emails: vec![], phones: vec![] };
        let add = AudienceChange { audience: "lapsed".into(), add: vec![member.clone()], remove: vec![] };
        let remove = AudienceChange { audience: "lapsed".into(), add: vec![], remove: vec![member] };
        let key = |now: i64, change: &AudienceChange| {
            let ctx = Context { now, ..ctx("https://h/x") };
            let request = Webhook::sync_audience(&ctx, change).unwrap().remove(0);
            request.headers.iter().find(|(k, _)| k == "idempotency-key").unwrap().1.clone()
        };
        // The same change tried again keeps its key; another change, or the same one made
        // again later, gets another.
        assert_eq!(key(1_000, &add), key(1_000, &add));
        assert_ne!(key(1_000, &add), key(1_000, &remove));
        assert_ne!(key(1_000, &add), key(2_000, &add));
        assert_ne!(key(1_000, &add), "lapsed");
    }
}
