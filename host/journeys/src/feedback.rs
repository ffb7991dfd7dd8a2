//! Reading providers' delivery webhooks. A webhook comes from the internet, so anyone can
//! send one; the host believes it only when the provider's signature holds under the
//! channel's secret, checked here, before the adapter sees the request. The adapter only
//! reads the provider's format into typed reports ([`FeedbackEvent`]); what a report means
//! (a profile event, a contact point switched off, a consent withdrawn) is decided here,
//! the same for every adapter, and recorded by the store.

use std::time::Duration;

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use p256::ecdsa::signature::Verifier as _;
use p256::pkcs8::DecodePublicKey as _;
use rekindle_runtime::wit::{ChannelKind, FeedbackEvent, FeedbackKind, HttpMethod, HttpRequest, SignatureScheme};
use rekindle_runtime::{CallError, Registry};
use rekindle_store::{FeedbackWrite, Purpose, Suppress, SuppressTarget};

use crate::Deliverer;
use crate::delivery::DeliveryError;

/// How far the timestamp of a Rekindle-signed webhook may be from the host's clock.
pub const SIGNATURE_TOLERANCE: Duration = Duration::from_secs(300);

/// How long a soft bounce rests an address before the host tries it again.
pub const SOFT_BOUNCE_REST: Duration = Duration::from_secs(72 * 3600);

/// The most reports one webhook may carry; SendGrid batches up to a few thousand.
pub const MAX_REPORTS: usize = 10_000;

/// The longest text a report's fields may hold; longer is the adapter's mistake.
const MAX_FIELD_CHARS: usize = 2048;

/// Request headers the adapter never sees: credentials an operator may have put on the
/// webhook (basic auth in the URL the provider calls) and what a proxy adds.
const WITHHELD_HEADERS: [&str; 8] =
    ["authorization", "proxy-authorization", "cookie", "forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip", "x-amzn-oidc-data"];

/// The header carrying Rekindle's own webhook signature.
pub const REKINDLE_SIGNATURE_HEADER: &str = "X-Rekindle-Signature";

/// The most of a Twilio callback read before its signature is checked: a callback is a
/// few hundred bytes, and parsing a large form to check it costs memory before anything
/// is known about the caller.
pub const MAX_TWILIO_CALLBACK_BYTES: usize = 64 << 10;

/// What a webhook's reports mean, and the reports left out with why.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reports {
    pub writes: Vec<FeedbackWrite>,
    /// (index in the adapter's list, why) for reports the host cannot use.
    pub ignored: Vec<(usize, String)>,
}

/// One webhook request as the host received it.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// The URL the provider called, query included: Twilio signs it.
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Webhook {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Why a webhook was not taken.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FeedbackError {
    #[error("no channel `{0}` is configured")]
    UnknownChannel(String),
    #[error("channel `{0}` takes no delivery feedback: its adapter does not read webhooks")]
    NoFeedback(String),
    #[error("channel `{channel}` checks its webhooks with secret `{secret}`, which is not configured")]
    MissingSecret { channel: String, secret: String },
    #[error("the signature does not hold: {0}")]
    BadSignature(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("the adapter could not read the webhook: {0}")]
    Unreadable(String),
    /// The adapter broke the contract (a trap, a report without a send key); the provider
    /// did nothing wrong and should send the webhook again later.
    #[error("the adapter failed on the webhook: {0}")]
    AdapterFailed(String),
    #[error("the adapter could not run now: {0}")]
    Busy(String),
}

/// Checks `webhook` against `scheme` under `secret`, at `now` (ms).
pub fn verify(scheme: &SignatureScheme, secret: &str, webhook: &Webhook, now: i64) -> Result<(), String> {
    // Two copies of a signature header (a proxy adding one) leave it unclear which the
    // provider sent: refused rather than guessed.
    for name in [SENDGRID_SIGNATURE, SENDGRID_TIMESTAMP, TWILIO_SIGNATURE, REKINDLE_SIGNATURE_HEADER] {
        if webhook.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).count() > 1 {
            return Err(format!("{name} is given more than once"));
        }
    }
    match scheme {
        SignatureScheme::SendgridEcdsa(_) => verify_sendgrid(secret, webhook),
        SignatureScheme::TwilioHmacSha1(_) => verify_twilio(secret, webhook),
        SignatureScheme::HmacSha256(_) => verify_rekindle(secret, webhook, now),
    }
}

const SENDGRID_SIGNATURE: &str = "X-Twilio-Email-Event-Webhook-Signature";
const SENDGRID_TIMESTAMP: &str = "X-Twilio-Email-Event-Webhook-Timestamp";

/// SendGrid's signed Event Webhook: ECDSA P-256/SHA-256 over the timestamp header then the
/// raw body, with the verification key SendGrid shows (base64 DER).
fn verify_sendgrid(key: &str, webhook: &Webhook) -> Result<(), String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(key.trim()).ok().and_then(|der| p256::ecdsa::VerifyingKey::from_public_key_der(&der).ok());
    let Some(key) = key else {
        // The operator's mistake, not the caller's: logged, and refused like any signature.
        tracing::warn!("SENDGRID_WEBHOOK_KEY is not a base64 DER P-256 public key; every SendGrid webhook is refused");
        return Err("the signature cannot be checked".to_string());
    };
    let signature = webhook.header(SENDGRID_SIGNATURE).ok_or_else(|| format!("no {SENDGRID_SIGNATURE} header"))?;
    let timestamp = webhook.header(SENDGRID_TIMESTAMP).ok_or_else(|| format!("no {SENDGRID_TIMESTAMP} header"))?;
    let signature = b64.decode(signature.trim()).map_err(|_| format!("{SENDGRID_SIGNATURE} is not base64"))?;
    let signature = p256::ecdsa::Signature::from_der(&signature).map_err(|_| format!("{SENDGRID_SIGNATURE} is not a DER ECDSA signature"))?;
    let mut signed = Vec::with_capacity(timestamp.len() + webhook.body.len());
    signed.extend_from_slice(timestamp.as_bytes());
    signed.extend_from_slice(&webhook.body);
    key.verify(&signed, &signature).map_err(|_| "the ECDSA signature does not match the timestamp and body".to_string())
}

const TWILIO_SIGNATURE: &str = "X-Twilio-Signature";

/// Twilio: base64 HMAC-SHA1 under the auth token of the URL then every form parameter's
/// name and value, sorted by name (then value).
fn verify_twilio(token: &str, webhook: &Webhook) -> Result<(), String> {
    let signature = webhook.header(TWILIO_SIGNATURE).ok_or_else(|| format!("no {TWILIO_SIGNATURE} header"))?;
    let signature = base64::engine::general_purpose::STANDARD.decode(signature.trim()).map_err(|_| format!("{TWILIO_SIGNATURE} is not base64"))?;
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes()).map_err(|e| e.to_string())?;
    mac.update(twilio_signed_text(&webhook.url, &webhook.body).as_bytes());
    mac.verify_slice(&signature).map_err(|_| "the HMAC-SHA1 does not match the URL and parameters".to_string())
}

/// What Twilio signs: the URL, then each form parameter's name and value, sorted.
pub fn twilio_signed_text(url: &str, form: &[u8]) -> String {
    let mut params: Vec<(String, String)> = form_urlencoded::parse(form).into_owned().collect();
    params.sort();
    let mut text = url.to_string();
    for (name, value) in params {
        text.push_str(&name);
        text.push_str(&value);
    }
    text
}

/// Rekindle's own: `t=UNIX_SECONDS,v1=HEX` (several `v1` while a secret rotates), the hex
/// HMAC-SHA256 of `t`, `.` and the body, within [`SIGNATURE_TOLERANCE`] of `now`.
fn verify_rekindle(secret: &str, webhook: &Webhook, now: i64) -> Result<(), String> {
    let header = webhook.header(REKINDLE_SIGNATURE_HEADER).ok_or_else(|| format!("no {REKINDLE_SIGNATURE_HEADER} header"))?;
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = Some(t),
            Some(("v1", v)) => candidates.push(v),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or_else(|| format!("{REKINDLE_SIGNATURE_HEADER} has no t="))?;
    let seconds: i64 = timestamp.parse().map_err(|_| format!("{REKINDLE_SIGNATURE_HEADER}: t= is not a number of seconds"))?;
    let skew = (now / 1000).saturating_sub(seconds).unsigned_abs();
    if skew > SIGNATURE_TOLERANCE.as_secs() {
        return Err(format!("the signature's timestamp is {skew} s from the host's clock; at most {} s is accepted", SIGNATURE_TOLERANCE.as_secs()));
    }
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).map_err(|e| e.to_string())?;
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(&webhook.body);
    let expected = mac.finalize().into_bytes();
    let matches = candidates.iter().filter_map(|v| hex::decode(v).ok()).any(|v| constant_time_eq(&v, &expected));
    if matches { Ok(()) } else { Err(format!("no v1= in {REKINDLE_SIGNATURE_HEADER} matches the body")) }
}

/// The `X-Rekindle-Signature` value for `body` signed at `seconds`: what a receiver of the
/// webhook channel sends back with its receipts.
pub fn rekindle_signature(secret: &str, seconds: i64, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(seconds.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={seconds},v1={}", hex::encode(mac.finalize().into_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Deliverer {
    /// Reads one webhook on channel `name`: checks its signature, has the adapter parse it,
    /// and says what each report means. Nothing is recorded here.
    pub async fn read_feedback(&self, registry: &Registry, name: &str, webhook: Webhook, now: i64) -> Result<Reports, FeedbackError> {
        let (plugin, info, ctx) = self.adapter(name, registry).map_err(|e| match e {
            DeliveryError::UnknownChannel(name) => FeedbackError::UnknownChannel(name),
            other => FeedbackError::Busy(other.to_string()),
        })?;
        let Some(scheme) = plugin.feedback_signature() else { return Err(FeedbackError::NoFeedback(name.to_string())) };
        let Some(secret) = self.secret(name, scheme.secret()) else {
            return Err(FeedbackError::MissingSecret { channel: name.to_string(), secret: scheme.secret().to_string() });
        };
        if matches!(scheme, SignatureScheme::TwilioHmacSha1(_)) && webhook.body.len() > MAX_TWILIO_CALLBACK_BYTES {
            return Err(FeedbackError::TooLarge(format!("a Twilio callback is at most {MAX_TWILIO_CALLBACK_BYTES} bytes")));
        }
        verify(scheme, secret, &webhook, now).map_err(FeedbackError::BadSignature)?;
        let headers = webhook.headers.into_iter().filter(|(k, _)| !WITHHELD_HEADERS.iter().any(|w| k.eq_ignore_ascii_case(w))).collect();
        let request = HttpRequest { method: HttpMethod::Post, url: webhook.url, headers, body: webhook.body };
        let events = plugin.call(None, move |adapter| adapter.parse_feedback(&ctx, &request)).await.map_err(|e| match e {
            CallError::Plugin(why) => FeedbackError::Unreadable(why),
            CallError::Timeout(_) | CallError::Busy(_) | CallError::Instantiate(_) => FeedbackError::Busy(e.to_string()),
            other => FeedbackError::AdapterFailed(other.to_string()),
        })?;
        if events.len() > MAX_REPORTS {
            return Err(FeedbackError::Unreadable(format!("{} reports in one webhook; at most {MAX_REPORTS} are taken", events.len())));
        }
        let mut reports = Reports::default();
        for (index, event) in events.into_iter().enumerate() {
            match meaning(&info, index, event, now) {
                Ok(write) => reports.writes.push(write),
                Err(why) => reports.ignored.push((index, why)),
            }
        }
        Ok(reports)
    }

    /// Whether channel `name`'s adapter reads webhooks, and under which secret.
    pub fn feedback_secret(&self, registry: &Registry, name: &str) -> Option<String> {
        let (plugin, _, _) = self.adapter(name, registry).ok()?;
        plugin.feedback_signature().map(|s| s.secret().to_string())
    }
}

/// What one report means on a channel of `info`'s kind: the profile event it records and
/// what it switches off.
fn meaning(info: &rekindle_runtime::wit::AdapterInfo, index: usize, mut event: FeedbackEvent, now: i64) -> Result<FeedbackWrite, String> {
    for (field, value) in [("send-key", &event.send_key), ("event-id", &event.event_id)] {
        if value.is_empty() || value.chars().count() > MAX_FIELD_CHARS {
            return Err(format!("the adapter gave an empty {field}, or one over {MAX_FIELD_CHARS} characters"));
        }
    }
    // A long bounce reason or click URL is kept in part rather than losing the report.
    for text in [&mut event.recipient, &mut event.reason, &mut event.url].into_iter().flatten() {
        if let Some((cut, _)) = text.char_indices().nth(MAX_FIELD_CHARS) {
            text.truncate(cut);
        }
    }
    // A report from the future (a skewed provider clock) is taken as of now.
    let at = if event.at <= 0 || event.at > now { now } else { event.at };
    let contact = info.contact.map(|kind| rekindle_runtime::json::contact_kind_name(kind).to_string());
    let consent = info.consent.and_then(|purpose| Purpose::parse(rekindle_runtime::json::purpose_name(purpose)));
    let detail = event.reason.clone();
    let contact_off = |reason: &str, expires_at: Option<i64>| {
        contact.clone().map(|kind| Suppress {
            target: SuppressTarget::Contact { kind, address: event.recipient.clone() },
            reason: reason.to_string(),
            detail: detail.clone(),
            expires_at,
        })
    };
    let consent_off = |reason: &str| {
        consent.map(|purpose| Suppress { target: SuppressTarget::Consent(purpose), reason: reason.to_string(), detail: detail.clone(), expires_at: None })
    };
    let rest = i64::try_from(SOFT_BOUNCE_REST.as_millis()).unwrap_or(i64::MAX);
    let suppress = match event.kind {
        FeedbackKind::HardBounce => contact_off("hard bounce", None),
        FeedbackKind::SoftBounce => contact_off("soft bounce", Some(at.saturating_add(rest))),
        FeedbackKind::SpamReport => consent_off("spam complaint"),
        FeedbackKind::Unsubscribed => consent_off("unsubscribed"),
        _ => None,
    };
    Ok(FeedbackWrite {
        index,
        event: event_name(info.kind, event.kind, event.machine).map(str::to_string),
        event_id: event.event_id,
        send_key: event.send_key,
        kind: event.kind.name().to_string(),
        at,
        recipient: event.recipient,
        reason: event.reason,
        url: event.url,
        machine: event.machine,
        suppress,
    })
}

/// The profile event a report records, named as a marketer's segment rules and
/// attribution read them; `None` for steps on the provider's side (processed, deferred)
/// and for opens a privacy proxy made.
fn event_name(channel: ChannelKind, kind: FeedbackKind, machine: bool) -> Option<&'static str> {
    use FeedbackKind as K;
    if machine && kind == K::Opened {
        return None;
    }
    let prefix = match channel {
        ChannelKind::Email => "Email",
        ChannelKind::Sms => "SMS",
        ChannelKind::Push => "Push",
        ChannelKind::Webhook => "Message",
        ChannelKind::AdAudience => return None,
    };
    let name = match (prefix, kind) {
        (_, K::Processed | K::Sent | K::Deferred) => return None,
        ("Email", K::Delivered) => "Email Delivered",
        ("Email", K::Opened) => "Email Opened",
        ("Email", K::Clicked) => "Email Link Clicked",
        ("Email", K::HardBounce | K::SoftBounce) => "Email Bounced",
        ("Email", K::Dropped) => "Email Dropped",
        ("Email", K::Failed) => "Email Failed",
        ("Email", K::SpamReport) => "Email Marked as Spam",
        ("Email", K::Unsubscribed) => "Unsubscribed",
        ("SMS", K::Delivered) => "SMS Delivered",
        ("SMS", K::Opened) => "SMS Opened",
        ("SMS", K::Clicked) => "SMS Link Clicked",
        ("SMS", K::HardBounce | K::SoftBounce | K::Dropped) => "SMS Undelivered",
        ("SMS", K::Failed) => "SMS Failed",
        ("SMS", K::SpamReport) => "SMS Marked as Spam",
        ("SMS", K::Unsubscribed) => "SMS Unsubscribed",
        ("Push", K::Delivered) => "Push Delivered",
        ("Push", K::Opened) => "Push Opened",
        ("Push", K::Clicked) => "Push Link Clicked",
        ("Push", K::HardBounce | K::SoftBounce | K::Dropped) => "Push Undelivered",
        ("Push", K::Failed) => "Push Failed",
        ("Push", K::SpamReport) => "Push Marked as Spam",
        ("Push", K::Unsubscribed) => "Push Unsubscribed",
        (_, K::Delivered) => "Message Delivered",
        (_, K::Opened) => "Message Opened",
        (_, K::Clicked) => "Message Link Clicked",
        (_, K::HardBounce | K::SoftBounce | K::Dropped) => "Message Undelivered",
        (_, K::Failed) => "Message Failed",
        (_, K::SpamReport) => "Message Marked as Spam",
        (_, K::Unsubscribed) => "Message Unsubscribed",
    };
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(url: &str, headers: &[(&str, &str)], body: &[u8]) -> Webhook {
        Webhook { url: url.into(), headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), body: body.to_vec() }
    }

    // SendGrid's published test vector (sendgrid-nodejs, eventwebhook).
    const SENDGRID_KEY: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBcepxo7yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA==";
    const SENDGRID_SIG: &str = "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH2j/0=";
    const SENDGRID_BODY: &[u8] = br#"{"category":"example_payload","event":"test_event","message_id":"message_id"}"#;

    #[test]
    fn sendgrid_signature_matches_the_published_vector_and_nothing_else() {
        let scheme = SignatureScheme::SendgridEcdsa("KEY".into());
        let signed = |ts: &str, body: &[u8]| webhook("https://x/", &[(SENDGRID_SIGNATURE, SENDGRID_SIG), (SENDGRID_TIMESTAMP, ts)], body);
        assert_eq!(verify(&scheme, SENDGRID_KEY, &signed("1588788367", SENDGRID_BODY), 0), Ok(()));
        assert!(verify(&scheme, SENDGRID_KEY, &signed("1588788368", SENDGRID_BODY), 0).is_err(), "another timestamp");
        let mut tampered = SENDGRID_BODY.to_vec();
        tampered[2] = b'k';
        assert!(verify(&scheme, SENDGRID_KEY, &signed("1588788367", &tampered), 0).is_err(), "another body");
        assert!(verify(&scheme, SENDGRID_KEY, &webhook("https://x/", &[(SENDGRID_TIMESTAMP, "1588788367")], SENDGRID_BODY), 0).is_err(), "no signature");
        assert!(verify(&scheme, "not-a-key", &signed("1588788367", SENDGRID_BODY), 0).is_err());
        let mut twice = signed("1588788367", SENDGRID_BODY);
        twice.headers.push((SENDGRID_SIGNATURE.into(), SENDGRID_SIG.into()));
        assert!(verify(&scheme, SENDGRID_KEY, &twice, 0).unwrap_err().contains("more than once"), "a duplicated header is refused");
    }

    #[test]
    fn twilio_signature_matches_the_published_vector_and_nothing_else() {
        let scheme = SignatureScheme::TwilioHmacSha1("TOKEN".into());
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let form = b"CallSid=CA1234567890ABCDE&Caller=%2B14158675309&Digits=1234&From=%2B14158675309&To=%2B18005551212";
        let signed = |sig: &str, url: &str, body: &[u8]| webhook(url, &[(TWILIO_SIGNATURE, sig)], body);
        assert_eq!(verify(&scheme, "12345", &signed("RSOYDt4T1cUTdK1PDd93/VVr8B8=", url, form), 0), Ok(()));
        assert!(verify(&scheme, "12346", &signed("RSOYDt4T1cUTdK1PDd93/VVr8B8=", url, form), 0).is_err(), "another token");
        assert!(verify(&scheme, "12345", &signed("RSOYDt4T1cUTdK1PDd93/VVr8B8=", "https://mycompany.com/myapp.php?foo=1", form), 0).is_err(), "another URL");
        assert!(verify(&scheme, "12345", &signed("RSOYDt4T1cUTdK1PDd93/VVr8B8=", url, b"CallSid=CA1234567890ABCDE&Digits=9"), 0).is_err(), "other parameters");
    }

    #[test]
    fn rekindle_signature_holds_within_the_tolerance_only() {
        let scheme = SignatureScheme::HmacSha256("S".into());
        let body = br#"{"receipts":[]}"#;
        let now = 1_700_000_000_000;
        let header = rekindle_signature("secret", now / 1000, body);
        let signed = |h: &str, body: &[u8]| webhook("https://x/", &[(REKINDLE_SIGNATURE_HEADER, h)], body);
        assert_eq!(verify(&scheme, "secret", &signed(&header, body), now), Ok(()));
        assert_eq!(verify(&scheme, "secret", &signed(&header, body), now + 299_000), Ok(()));
        assert!(verify(&scheme, "secret", &signed(&header, body), now + 301_000).unwrap_err().contains("clock"));
        assert!(verify(&scheme, "other", &signed(&header, body), now).is_err());
        assert!(verify(&scheme, "secret", &signed(&header, b"{}"), now).is_err());
        // A rotation: the old secret's v1 beside the new one's.
        let old = rekindle_signature("old", now / 1000, body);
        let both = format!("{header},{}", old.split(',').nth(1).unwrap());
        assert_eq!(verify(&scheme, "old", &signed(&both, body), now), Ok(()));
    }

    #[test]
    fn bounces_and_complaints_switch_off_what_the_channel_needs() {
        let info = |kind, contact, consent| rekindle_runtime::wit::AdapterInfo {
            name: "x".into(),
            version: "1".into(),
            summary: String::new(),
            kind,
            contact,
            consent,
            hosts: vec![],
            secrets: vec![],
            params: vec![],
        };
        let email = info(ChannelKind::Email, Some(rekindle_runtime::wit::ContactKind::Email), Some(rekindle_runtime::wit::Purpose::Email));
        let report = |kind| FeedbackEvent {
            send_key: "k".into(),
            event_id: "e".into(),
            kind,
            at: 1_000,
            recipient: Some("ann@example.com".into()),
            reason: Some("why".into()),
            url: None,
            machine: false,
        };
        let soft = meaning(&email, 0, report(FeedbackKind::SoftBounce), 5_000).unwrap().suppress.unwrap();
        assert_eq!(soft.expires_at, Some(1_000 + 72 * 3_600_000));
        assert_eq!(soft.target, SuppressTarget::Contact { kind: "email".into(), address: Some("ann@example.com".into()) });
        let hard = meaning(&email, 0, report(FeedbackKind::HardBounce), 5_000).unwrap().suppress.unwrap();
        assert_eq!(hard.expires_at, None);
        let spam = meaning(&email, 0, report(FeedbackKind::SpamReport), 5_000).unwrap();
        assert_eq!(spam.suppress.unwrap().target, SuppressTarget::Consent(Purpose::Email));
        assert_eq!(spam.event.as_deref(), Some("Email Marked as Spam"));
        assert_eq!(meaning(&email, 0, report(FeedbackKind::Unsubscribed), 5_000).unwrap().event.as_deref(), Some("Unsubscribed"));
        assert!(meaning(&email, 0, report(FeedbackKind::Delivered), 5_000).unwrap().suppress.is_none());
        // From the future: taken as of now.
        assert_eq!(meaning(&email, 0, FeedbackEvent { at: 9_000, ..report(FeedbackKind::Opened) }, 5_000).unwrap().at, 5_000);
        assert!(meaning(&email, 0, FeedbackEvent { event_id: String::new(), ..report(FeedbackKind::Opened) }, 5_000).unwrap_err().contains("event-id"));
        let long = FeedbackEvent { url: Some("é".repeat(3000)), ..report(FeedbackKind::Clicked) };
        assert_eq!(meaning(&email, 0, long, 5_000).unwrap().url.unwrap().chars().count(), MAX_FIELD_CHARS, "cut on a character boundary");
        // A webhook receiver has no contact point or consent to switch off.
        let hook = info(ChannelKind::Webhook, None, None);
        assert!(meaning(&hook, 0, report(FeedbackKind::HardBounce), 5_000).unwrap().suppress.is_none());
    }

    #[test]
    fn machine_opens_and_provider_steps_record_no_event() {
        assert_eq!(event_name(ChannelKind::Email, FeedbackKind::Opened, true), None);
        assert_eq!(event_name(ChannelKind::Email, FeedbackKind::Opened, false), Some("Email Opened"));
        assert_eq!(event_name(ChannelKind::Sms, FeedbackKind::Processed, false), None);
        assert_eq!(event_name(ChannelKind::Sms, FeedbackKind::HardBounce, false), Some("SMS Undelivered"));
    }
}
