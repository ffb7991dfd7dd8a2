//! SMS through Twilio (`POST /2010-04-01/Accounts/{sid}/Messages.json`, form-encoded). The
//! account SID and auth token are secrets: the URL holds `secret("TWILIO_ACCOUNT_SID")`
//! and the host turns `basic_auth("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN")` into the
//! Basic credentials, so this plugin never sees either.
//!
//! Twilio keeps no key of ours on a message, so a send a crash left in doubt is looked up
//! by what identifies a text: Messages sent to the same number since the day before, with
//! exactly the same body. One is taken as this message. The same text to the same number
//! from another send within that window would be taken for it too; journeys rarely repeat
//! a text so soon, and a repeat of it is what that case would otherwise cost.
//!
//! Each text asks Twilio to report its status to `feedback_url` (the host fills it in from
//! its public URL), with the send's idempotency key in the query. The host checks Twilio's
//! signature (HMAC-SHA1 under the auth token) before `parse_feedback` reads the report.
#![no_std]

use rekindle_sdk::form_urlencoded;
use rekindle_sdk::prelude::*;

/// Twilio errors that mean this recipient cannot get texts: invalid number, unsubscribed
/// (STOP), not a mobile number. The host switches the number off on them, so errors about
/// the account's own settings (21408, a region not enabled; 21612, a route the sender
/// cannot use) are failures, not the recipient's.
const NOT_ELIGIBLE: [i64; 3] = [21211, 21610, 21614];

/// The adapter; callable natively for tests.
pub struct Twilio;

impl Channel for Twilio {
    fn describe() -> AdapterInfo {
        AdapterInfo::new("twilio", env!("CARGO_PKG_VERSION"), "SMS through Twilio Messages", ChannelKind::Sms)
            .contact(ContactKind::Phone)
            .consent(Purpose::Sms)
            .host("api.twilio.com")
            .secret("TWILIO_ACCOUNT_SID")
            .secret("TWILIO_AUTH_TOKEN")
            .param(ParamSpec::text("base_url", "https://api.twilio.com", "Twilio's API root"))
            .param(ParamSpec::text("from", "", "The sending number (E.164) or a Messaging Service SID (MG...)"))
            .param(ParamSpec::text("feedback_url", "", "Where Twilio reports delivery (StatusCallback); the host sets it from its public URL"))
    }

    fn deliver(ctx: &Context, message: &Message) -> Result<Vec<HttpRequest>, String> {
        let from = ctx.text("from")?;
        let sender = match from {
            f if f.starts_with("MG") => "MessagingServiceSid",
            f if f.starts_with('+') => "From",
            other => return Err(format!("parameter `from` must be an E.164 number or a Messaging Service SID, got `{other}`")),
        };
        let text = text_of(message);
        let feedback = ctx.text("feedback_url")?;
        let body = if feedback.is_empty() {
            form_urlencoded(&[("To", &message.to), (sender, from), ("Body", &text)])
        } else {
            // Twilio keeps no key of ours on a message: the callback URL carries it back.
            let separator = if feedback.contains('?') { '&' } else { '?' };
            let callback = format!("{feedback}{separator}{}", form_urlencoded(&[("key", &message.idempotency_key)]));
            form_urlencoded(&[("To", &message.to), (sender, from), ("Body", &text), ("StatusCallback", &callback)])
        };
        let url = format!("{}/Messages.json", account_url(ctx)?);
        Ok(vec![
            HttpRequest::new(HttpMethod::Post, url)
                .header("authorization", basic_auth("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("i-twilio-idempotency-token", message.idempotency_key.clone())
                .body(body.into_bytes()),
        ])
    }

    fn interpret(_ctx: &Context, _request: &HttpRequest, response: &HttpResponse) -> Outcome {
        let json: Option<serde_json::Value> = serde_json::from_slice(&response.body).ok();
        let field = |key: &str| json.as_ref().and_then(|j| j.get(key).cloned());
        match response.status {
            200..=299 => Outcome::Delivered(field("sid").and_then(|s| s.as_str().map(String::from))),
            400 if field("code").and_then(|c| c.as_i64()).is_some_and(|c| NOT_ELIGIBLE.contains(&c)) => {
                Outcome::NotEligible(field("message").and_then(|m| m.as_str().map(String::from)).unwrap_or_default())
            }
            _ => Outcome::from_status(response),
        }
    }

    fn lookup(ctx: &Context, message: &Message) -> Result<HttpRequest, String> {
        let since = date(ctx.now - rekindle_sdk::DAY);
        let query = form_urlencoded(&[("To", &message.to), ("DateSent>", &since), ("PageSize", "50")]);
        let url = format!("{}/Messages.json?{query}", account_url(ctx)?);
        Ok(HttpRequest::new(HttpMethod::Get, url).header("authorization", basic_auth("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN")))
    }

    fn confirm(_ctx: &Context, message: &Message, response: &HttpResponse) -> Found {
        if !(200..=299).contains(&response.status) {
            return Found::Unknown(format!("Twilio answered {}", response.status));
        }
        let json: serde_json::Value = serde_json::from_slice(&response.body).unwrap_or_default();
        let Some(sent) = json["messages"].as_array() else {
            return Found::Unknown("Twilio's answer has no `messages` list".into());
        };
        let text = text_of(message);
        match sent.iter().find(|m| m["body"].as_str() == Some(text.as_str()) && m["to"].as_str() == Some(message.to.as_str())) {
            Some(found) => Found::Accepted(found["sid"].as_str().map(String::from)),
            None => Found::Absent,
        }
    }

    fn signature() -> Option<SignatureScheme> {
        Some(SignatureScheme::TwilioHmacSha1("TWILIO_AUTH_TOKEN".into()))
    }

    /// One status callback: a form with `MessageSid`, `MessageStatus` and, when it did not
    /// arrive, `ErrorCode`; the send's key is in the URL's query.
    fn parse_feedback(ctx: &Context, request: &HttpRequest) -> Result<Vec<FeedbackEvent>, String> {
        let Some((_, send_key)) = request.query().into_iter().find(|(name, _)| name == "key") else {
            // Not a callback this host asked for.
            return Ok(Vec::new());
        };
        let form = rekindle_sdk::form_decode(core::str::from_utf8(&request.body).map_err(|_| "the body is not UTF-8 form data".to_string())?);
        let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let sid = field("MessageSid").or_else(|| field("SmsSid")).ok_or("the callback has no MessageSid")?;
        let status = field("MessageStatus").or_else(|| field("SmsStatus")).ok_or("the callback has no MessageStatus")?;
        let code = field("ErrorCode").and_then(|c| c.trim().parse::<i64>().ok());
        let kind = match status.as_str() {
            "accepted" | "queued" | "scheduled" => FeedbackKind::Processed,
            "sending" | "sent" => FeedbackKind::Sent,
            "delivered" => FeedbackKind::Delivered,
            "read" => FeedbackKind::Opened,
            "undelivered" | "failed" => failure_kind(code),
            // canceled, receiving, received: nothing about this send's delivery.
            _ => return Ok(Vec::new()),
        };
        Ok(vec![FeedbackEvent {
            send_key,
            // Twilio calls back once per status of a message.
            event_id: format!("{sid}:{status}"),
            kind,
            // A callback carries no time; it comes as the status changes.
            at: ctx.now,
            recipient: field("To"),
            reason: code.map(|c| format!("Twilio error {c}")),
            url: None,
            machine: false,
        }])
    }
}

/// Twilio error codes on an undelivered or failed text, by what they say about the number.
fn failure_kind(code: Option<i64>) -> FeedbackKind {
    match code {
        // The recipient replied STOP.
        Some(21610) => FeedbackKind::Unsubscribed,
        // Unknown, unreachable or landline number; invalid or non-mobile To.
        Some(30005 | 30006 | 21211 | 21614) => FeedbackKind::HardBounce,
        // The handset is off or out of coverage: try again later.
        Some(30003) => FeedbackKind::SoftBounce,
        _ => FeedbackKind::Failed,
    }
}

/// A text has no subject or HTML: the text, then the link.
fn text_of(message: &Message) -> String {
    match &message.link {
        Some(link) => format!("{} {link}", message.text),
        None => message.text.clone(),
    }
}

/// The UTC date of `ms` as Twilio's `DateSent` filters take it: `YYYY-MM-DD`.
fn date(ms: i64) -> String {
    // Days since 1970-01-01 to a civil date (the proleptic Gregorian calendar).
    let z = ms.div_euclid(rekindle_sdk::DAY) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The account's API root; the account SID in it is a secret, filled by the host.
fn account_url(ctx: &Context) -> Result<String, String> {
    Ok(format!("{}/2010-04-01/Accounts/{}", ctx.text("base_url")?.trim_end_matches('/'), secret("TWILIO_ACCOUNT_SID")))
}

rekindle_sdk::export_channel!(Twilio);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(951_782_400_000), "2000-02-29");
        assert_eq!(date(1_798_761_599_999), "2026-12-31");
        assert_eq!(date(-1), "1969-12-31");
    }

    #[test]
    fn looks_a_text_up_by_number_and_body() {
        let mut ctx = ctx("+15550000000");
        ctx.now = 1_795_435_200_000; // 2026-11-23T12:00:00Z
        let message = Message {
            idempotency_key: "run-1:send:sms".into(),
            profile_id: "bob".into(),
            to: "+15551230000".into(),
            subject: None,
            text: "Come back".into(),
            html: None,
            link: Some("https://s.example/x".into()),
            image: None,
            data: vec![],
        };
        let request = Twilio::lookup(&ctx, &message).unwrap();
        assert_eq!(request.method, HttpMethod::Get);
        assert_eq!(
            request.url,
            "https://api.twilio.com/2010-04-01/Accounts/{{secret:TWILIO_ACCOUNT_SID#test}}/Messages.json?To=%2B15551230000&DateSent%3E=2026-11-22&PageSize=50"
        );
        let answer = |body: &str| HttpResponse { status: 200, headers: vec![], body: body.as_bytes().to_vec() };
        let listed =
            r#"{"messages":[{"sid":"SM1","to":"+15551230000","body":"Other text"},{"sid":"SM2","to":"+15551230000","body":"Come back https://s.example/x"}]}"#;
        assert_eq!(Twilio::confirm(&ctx, &message, &answer(listed)), Found::Accepted(Some("SM2".into())));
        assert_eq!(Twilio::confirm(&ctx, &message, &answer(r#"{"messages":[{"sid":"SM1","to":"+15551230000","body":"Other text"}]}"#)), Found::Absent);
        assert!(matches!(Twilio::confirm(&ctx, &message, &HttpResponse { status: 401, headers: vec![], body: vec![] }), Found::Unknown(_)));
    }

    fn ctx(from: &str) -> Context {
        let text = |name: &str, value: &str| Field { name: name.into(), value: Value::Text(value.into()) };
        Context { now: 0, params: vec![text("base_url", "https://api.twilio.com"), text("from", from), text("feedback_url", "")] }
    }

    #[test]
    fn asks_for_status_callbacks_and_reads_them() {
        let mut ctx = ctx("+15550000000");
        ctx.params[2].value = Value::Text("https://rekindle.example/v1/feedback/sms".into());
        let request = Twilio::deliver(&ctx, &message()).unwrap().remove(0);
        let form = rekindle_sdk::form_decode(core::str::from_utf8(&request.body).unwrap());
        let callback = form.iter().find(|(k, _)| k == "StatusCallback").map(|(_, v)| v.as_str());
        assert_eq!(callback, Some("https://rekindle.example/v1/feedback/sms?key=run-1%3Asend%3Asms"));
        let report = |status: &str, code: &str| {
            let body = format!("MessageSid=SM1&MessageStatus={status}&To=%2B15551230000&ErrorCode={code}");
            HttpRequest::new(HttpMethod::Post, callback.unwrap()).body(body.into_bytes())
        };
        ctx.now = 42;
        let delivered = Twilio::parse_feedback(&ctx, &report("delivered", "")).unwrap();
        assert_eq!(delivered.len(), 1);
        assert_eq!(
            (delivered[0].send_key.as_str(), delivered[0].event_id.as_str(), delivered[0].kind),
            ("run-1:send:sms", "SM1:delivered", FeedbackKind::Delivered)
        );
        assert_eq!((delivered[0].at, delivered[0].recipient.as_deref()), (42, Some("+15551230000")));
        assert_eq!(Twilio::parse_feedback(&ctx, &report("undelivered", "21610")).unwrap()[0].kind, FeedbackKind::Unsubscribed);
        assert_eq!(Twilio::parse_feedback(&ctx, &report("failed", "30006")).unwrap()[0].kind, FeedbackKind::HardBounce);
        assert_eq!(Twilio::parse_feedback(&ctx, &report("undelivered", "30003")).unwrap()[0].kind, FeedbackKind::SoftBounce);
        assert_eq!(Twilio::parse_feedback(&ctx, &report("undelivered", "30008")).unwrap()[0].kind, FeedbackKind::Failed);
        // A callback without our key is not ours.
        let foreign = HttpRequest::new(HttpMethod::Post, "https://rekindle.example/v1/feedback/sms").body(b"MessageSid=SM2&MessageStatus=sent".to_vec());
        assert!(Twilio::parse_feedback(&ctx, &foreign).unwrap().is_empty());
        let broken = HttpRequest::new(HttpMethod::Post, callback.unwrap()).body(b"MessageStatus=sent".to_vec());
        assert!(Twilio::parse_feedback(&ctx, &broken).unwrap_err().contains("MessageSid"));
    }

    fn message() -> Message {
        Message {
            idempotency_key: "run-1:send:sms".into(),
            profile_id: "ann".into(),
            to: "+15551234567".into(),
            subject: None,
            text: "Ann, 10% off: BACK10".into(),
            html: None,
            link: Some("https://shop.example/s?a=1".into()),
            image: None,
            data: vec![],
        }
    }

    #[test]
    fn formats_a_form_encoded_message_with_secret_placeholders() {
        let request = Twilio::deliver(&ctx("+15550000000"), &message()).unwrap().remove(0);
        assert_eq!(request.url, "https://api.twilio.com/2010-04-01/Accounts/{{secret:TWILIO_ACCOUNT_SID#test}}/Messages.json");
        assert_eq!(
            core::str::from_utf8(&request.body).unwrap(),
            "To=%2B15551234567&From=%2B15550000000&Body=Ann%2C+10%25+off%3A+BACK10+https%3A%2F%2Fshop.example%2Fs%3Fa%3D1"
        );
        assert!(request.headers.iter().any(|(k, v)| k == "authorization" && v == "{{basic-auth:TWILIO_ACCOUNT_SID:TWILIO_AUTH_TOKEN#test}}"));
        let service = Twilio::deliver(&ctx("MG123"), &message()).unwrap().remove(0);
        assert!(core::str::from_utf8(&service.body).unwrap().contains("MessagingServiceSid=MG123"));
        assert!(Twilio::deliver(&ctx("5550000"), &message()).unwrap_err().contains("`from`"));
    }

    #[test]
    fn unsubscribed_numbers_are_not_eligible() {
        let request = Twilio::deliver(&ctx("+15550000000"), &message()).unwrap().remove(0);
        let respond = |status, body: &str| HttpResponse { status, headers: vec![], body: body.as_bytes().to_vec() };
        assert_eq!(Twilio::interpret(&ctx(""), &request, &respond(201, r#"{"sid": "SM1"}"#)), Outcome::Delivered(Some("SM1".into())));
        assert!(matches!(Twilio::interpret(&ctx(""), &request, &respond(400, r#"{"code": 21610, "message": "unsubscribed"}"#)), Outcome::NotEligible(_)));
        assert!(matches!(Twilio::interpret(&ctx(""), &request, &respond(400, r#"{"code": 21602}"#)), Outcome::Failed(_)));
        assert!(matches!(Twilio::interpret(&ctx(""), &request, &respond(503, "")), Outcome::RetryLater(_)));
    }
}
