//! What a journey's `send` step does before any adapter runs. It picks the first channel in
//! the step's order that can reach the customer: a contact point, and consent for its
//! purpose. Every channel passed over is recorded with the reason. The host then renders
//! the message from minijinja templates over the customer's traits, the voucher and
//! related products. The adapter only formats the rendered message for its provider.

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use rekindle_runtime::wit::{Field, Message, Value as WitValue};
use rekindle_store::{Product, ProfileRecord, Purpose};
use serde_json::Value;

/// A channel a send step may use, as the host knows it: what it needs from the customer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelNeeds {
    /// The configured channel's name (`email`, `sms`, `push`, ...).
    pub name: String,
    /// The contact point kind it sends to: `email`, `phone` or `push_token`. `None` (a
    /// webhook to the operator's own system) addresses the message to the user id.
    pub contact: Option<String>,
    /// The consent it needs; `None` leaves consent to the receiver.
    pub consent: Option<Purpose>,
}

/// A channel passed over, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub channel: String,
    pub reason: String,
}

/// The first channel of `order` that can reach `profile`, with the address; every channel
/// before it is returned as skipped, with the reason.
pub fn choose_channel<'a>(order: &'a [ChannelNeeds], profile: &ProfileRecord) -> (Option<(&'a ChannelNeeds, String)>, Vec<Skipped>) {
    let mut skipped = Vec::new();
    for channel in order {
        // An adapter that reaches a contact point must name the consent it needs; only one
        // with neither (a webhook to the operator's own system) leaves consent to the receiver.
        if channel.contact.is_some() && channel.consent.is_none() {
            skipped.push(Skipped { channel: channel.name.clone(), reason: "the adapter declares no consent purpose for its contact point".into() });
            continue;
        }
        let consented = channel.consent.is_none_or(|purpose| profile.consents.iter().any(|c| c.purpose == purpose && c.granted));
        let address = match &channel.contact {
            Some(kind) => profile.contacts.iter().find(|c| &c.kind == kind && c.active).map(|c| c.address.clone()),
            // The operator's own systems know their user id; the profile id is the fallback.
            None => Some(profile.user_ids.first().unwrap_or(&profile.id).clone()),
        };
        let consent = channel.consent.map_or("", |p| p.name());
        let contact = channel.contact.as_deref().unwrap_or_default().replace('_', " ");
        let reason = match (consented, &address) {
            (true, Some(address)) => return (Some((channel, address.clone())), skipped),
            (false, Some(_)) => format!("no {consent} consent"),
            (true, None) => format!("no active {contact}"),
            (false, None) => format!("no {consent} consent and no active {contact}"),
        };
        skipped.push(Skipped { channel: channel.name.clone(), reason });
    }
    (None, skipped)
}

/// A message's templates: minijinja over `traits`, `voucher`, `products` and `profile`.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageTemplate {
    pub subject: Option<String>,
    pub text: String,
    pub html: Option<String>,
    pub link: Option<String>,
    pub image: Option<String>,
}

/// The template parts by name, for error messages that say which one is wrong.
fn parts(template: &MessageTemplate) -> Vec<(&'static str, &str)> {
    let mut parts = vec![("text", template.text.as_str())];
    for (name, part) in [("subject", &template.subject), ("html", &template.html), ("link", &template.link), ("image", &template.image)] {
        if let Some(part) = part {
            parts.push((name, part.as_str()));
        }
    }
    parts
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // A trait the customer lacks renders empty (use `| default("there")`), rather than
    // failing a send; a typo in a filter or a tag is still caught when the journey loads.
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    // Traits are whatever a write key sent: in the HTML part, markup in a first name must
    // arrive as text, not as a link in the shop's own email. Templates are named after
    // their part, so only `html` escapes; the text part is plain text.
    env.set_auto_escape_callback(|part| if part == "html" { AutoEscape::Html } else { AutoEscape::None });
    env
}

/// Checks every part of a template compiles; the error names the part and the line.
pub fn check_template(template: &MessageTemplate) -> Result<(), String> {
    let env = environment();
    for (name, source) in parts(template) {
        env.template_from_named_str(name, source).map_err(|e| format!("{name}: {}", describe_error(&e)))?;
    }
    Ok(())
}

fn describe_error(e: &minijinja::Error) -> String {
    match e.line() {
        Some(line) => format!("line {line}: {}", e.detail().unwrap_or(&e.to_string())),
        None => e.to_string(),
    }
}

/// A message's unsubscribe link, and whether it is an email, which must show it and carry
/// the one-click headers (RFC 8058).
#[derive(Debug, Clone, PartialEq)]
pub struct UnsubscribeLink {
    pub url: String,
    pub email: bool,
}

/// The rendered message for `profile` on one channel: `to` is the address the channel
/// chose, `key` the idempotency key of this (journey run, step, channel). An email with an
/// unsubscribe link shows it even when the template forgot `{{ unsubscribe_url }}`.
pub fn render(
    template: &MessageTemplate,
    profile: &ProfileRecord,
    voucher: Option<&str>,
    products: &[Product],
    to: String,
    key: String,
    unsubscribe: Option<&UnsubscribeLink>,
) -> Result<Message, String> {
    let env = environment();
    let traits: serde_json::Map<String, Value> = profile.traits.iter().map(|(name, value, _)| (name.clone(), value.clone())).collect();
    let products: Vec<Value> = products
        .iter()
        .map(|p| serde_json::json!({"id": p.id, "name": p.name, "category": p.category, "price": p.price, "url": p.url, "image": p.image}))
        .collect();
    let ctx = minijinja::Value::from(minijinja::value::Serde(serde_json::json!({
        "traits": traits, "voucher": voucher, "products": products, "profile": {"id": profile.id},
        "unsubscribe_url": unsubscribe.map(|u| u.url.as_str()),
    })));
    let one = |name: &str, source: &str| -> Result<String, String> {
        env.render_named_str(name, source, &ctx).map_err(|e| format!("{name}: {}", describe_error(&e)))
    };
    let optional = |name: &str, part: &Option<String>| part.as_deref().map(|p| one(name, p)).transpose();
    let mut data = Vec::new();
    if let Some(voucher) = voucher {
        data.push(Field { name: "voucher".into(), value: WitValue::Text(voucher.into()) });
    }
    if !products.is_empty() {
        data.push(Field { name: "products".into(), value: WitValue::Json(Value::Array(products.clone()).to_string()) });
    }
    let mut text = one("text", &template.text)?;
    let mut html = optional("html", &template.html)?;
    if let Some(link) = unsubscribe.filter(|link| link.email) {
        if !text.contains(&link.url) {
            text.push_str(&format!("\n\nUnsubscribe: {}", link.url));
        }
        if let Some(html) = html.as_mut().filter(|html| !html.contains(&link.url)) {
            let href = link.url.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;").replace('>', "&gt;");
            let footer = format!("<p><a href=\"{href}\">Unsubscribe</a></p>");
            // Inside the body of a whole document, else at the end.
            match html.to_ascii_lowercase().rfind("</body>") {
                Some(at) => html.insert_str(at, &footer),
                None => html.push_str(&footer),
            }
        }
        // The adapter puts these in the email's headers; mail clients show an unsubscribe
        // button that POSTs to the link.
        data.push(Field { name: "List-Unsubscribe".into(), value: WitValue::Text(format!("<{}>", link.url)) });
        data.push(Field { name: "List-Unsubscribe-Post".into(), value: WitValue::Text("List-Unsubscribe=One-Click".into()) });
    }
    Ok(Message {
        idempotency_key: key,
        profile_id: profile.id.clone(),
        to,
        subject: optional("subject", &template.subject)?,
        text,
        html,
        link: optional("link", &template.link)?,
        image: optional("image", &template.image)?,
        data,
    })
}

#[cfg(test)]
mod tests {
    use rekindle_store::{Computed, Consent, Contact};
    use serde_json::json;

    use super::*;

    fn ann(consents: &[(Purpose, bool)], contacts: &[(&str, &str, bool)]) -> ProfileRecord {
        ProfileRecord {
            id: "p-ann".into(),
            user_ids: vec!["ann".into()],
            anonymous_ids: vec![],
            created_at: 0,
            updated_at: 0,
            timezone: None,
            traits: vec![("first_name".into(), json!("Ann"), 0)],
            computed: Computed::default(),
            consents: consents.iter().map(|(purpose, granted)| Consent { purpose: *purpose, granted: *granted, updated_at: 0 }).collect(),
            contacts: contacts
                .iter()
                .map(|(kind, address, active)| Contact { kind: (*kind).into(), address: (*address).into(), active: *active, updated_at: 0 })
                .collect(),
            recent_events: vec![],
        }
    }

    fn order() -> Vec<ChannelNeeds> {
        [("email", "email", Purpose::Email), ("push", "push_token", Purpose::Push), ("sms", "phone", Purpose::Sms)]
            .into_iter()
            .map(|(name, contact, consent)| ChannelNeeds { name: name.into(), contact: Some(contact.into()), consent: Some(consent) })
            .collect()
    }

    #[test]
    fn a_channel_needing_no_contact_or_consent_reaches_everyone_by_user_id() {
        let hook = ChannelNeeds { name: "hook".into(), contact: None, consent: None };
        let (chosen, skipped) = choose_channel(std::slice::from_ref(&hook), &ann(&[], &[]));
        assert_eq!(chosen.map(|(c, to)| (c.name.as_str(), to)), Some(("hook", "ann".to_string())));
        assert!(skipped.is_empty());
        // A contact point without a consent purpose is an adapter's mistake, not a licence.
        let careless = ChannelNeeds { name: "sms".into(), contact: Some("phone".into()), consent: None };
        let reachable = ann(&[(Purpose::Sms, true)], &[("phone", "+15551234567", true)]);
        let (none, skipped) = choose_channel(std::slice::from_ref(&careless), &reachable);
        assert!(none.is_none());
        assert_eq!(skipped[0].reason, "the adapter declares no consent purpose for its contact point");
    }

    #[test]
    fn the_first_reachable_consented_channel_wins_and_skips_say_why() {
        let order = order();
        let profile = ann(
            &[(Purpose::Email, false), (Purpose::Push, true), (Purpose::Sms, true)],
            &[("email", "ann@example.com", true), ("push_token", "tok", false), ("phone", "+15551234567", true)],
        );
        let (chosen, skipped) = choose_channel(&order, &profile);
        assert_eq!(chosen.map(|(c, to)| (c.name.as_str(), to)), Some(("sms", "+15551234567".to_string())));
        assert_eq!(
            skipped,
            [Skipped { channel: "email".into(), reason: "no email consent".into() }, Skipped { channel: "push".into(), reason: "no active push token".into() },]
        );
        let (none, skipped) = choose_channel(&order, &ann(&[], &[]));
        assert!(none.is_none());
        assert_eq!(skipped[2].reason, "no sms consent and no active phone");
    }

    #[test]
    fn renders_traits_voucher_and_products() {
        let template = MessageTemplate {
            subject: Some("{{ traits.first_name | default('there') }}, we miss you".into()),
            text: "Use {{ voucher }}.{% for p in products %} {{ p.name }}{% endfor %}".into(),
            link: Some("https://shop.example/?v={{ voucher }}".into()),
            ..MessageTemplate::default()
        };
        let boot = Product { id: "boot".into(), name: "Boot".into(), category: None, price: Some(80.0), url: None, image: None, in_stock: true };
        let message = render(&template, &ann(&[], &[]), Some("BACK10"), &[boot], "ann@example.com".into(), "run:1:email".into(), None).unwrap();
        assert_eq!(message.subject.as_deref(), Some("Ann, we miss you"));
        assert_eq!(message.text, "Use BACK10. Boot");
        assert_eq!(message.link.as_deref(), Some("https://shop.example/?v=BACK10"));
        assert_eq!(message.idempotency_key, "run:1:email");
        let mut stranger = ann(&[], &[]);
        stranger.traits.clear();
        let message = render(&template, &stranger, None, &[], "x".into(), "k".into(), None).unwrap();
        assert_eq!(message.subject.as_deref(), Some("there, we miss you"));
    }

    #[test]
    fn the_html_part_escapes_what_customers_wrote_and_the_text_part_does_not() {
        let template = MessageTemplate {
            subject: Some("Hi {{ traits.first_name }}".into()),
            text: "Hi {{ traits.first_name }}".into(),
            html: Some("<p>Hi {{ traits.first_name }}, <a href=\"https://shop.example/\">shop</a></p>".into()),
            ..MessageTemplate::default()
        };
        let mut phisher = ann(&[], &[]);
        phisher.traits = vec![("first_name".into(), json!("<a href=\"https://evil.example\">Verify your account</a>"), 0)];
        let message = render(&template, &phisher, None, &[], "x".into(), "k".into(), None).unwrap();
        assert_eq!(
            message.html.as_deref(),
            Some(
                "<p>Hi &lt;a href=&quot;https:&#x2f;&#x2f;evil.example&quot;&gt;Verify your account&lt;&#x2f;a&gt;, <a href=\"https://shop.example/\">shop</a></p>"
            )
        );
        assert_eq!(message.text, "Hi <a href=\"https://evil.example\">Verify your account</a>");
        assert_eq!(message.subject.as_deref(), Some("Hi <a href=\"https://evil.example\">Verify your account</a>"));
    }

    #[test]
    fn a_broken_template_names_its_part_and_line() {
        let template =
            MessageTemplate { text: "fine".into(), html: Some("<p>\n{{ traits.first_name | nosuchfilter }}</p>".into()), ..MessageTemplate::default() };
        let err = check_template(&template).err().or_else(|| render(&template, &ann(&[], &[]), None, &[], "x".into(), "k".into(), None).err()).unwrap();
        assert!(err.starts_with("html: line 2"), "{err}");
        let unclosed = MessageTemplate { text: "{% if voucher %}".into(), ..MessageTemplate::default() };
        assert!(check_template(&unclosed).unwrap_err().starts_with("text: "), "must name the part");
    }

    #[test]
    fn an_email_shows_its_unsubscribe_link_and_carries_the_one_click_headers() {
        let link = UnsubscribeLink { url: "https://rekindle.example/v1/unsubscribe/u1.abc.def".into(), email: true };
        let forgot = MessageTemplate { text: "Come back".into(), html: Some("<p>Come back</p>".into()), ..Default::default() };
        let message = render(&forgot, &ann(&[], &[]), None, &[], "ann@example.com".into(), "k".into(), Some(&link)).unwrap();
        assert_eq!(message.text, "Come back\n\nUnsubscribe: https://rekindle.example/v1/unsubscribe/u1.abc.def");
        assert_eq!(message.html.as_deref(), Some("<p>Come back</p><p><a href=\"https://rekindle.example/v1/unsubscribe/u1.abc.def\">Unsubscribe</a></p>"));
        let header = |name: &str| message.data.iter().find(|f| f.name == name).map(|f| f.value.clone());
        assert_eq!(header("List-Unsubscribe"), Some(WitValue::Text("<https://rekindle.example/v1/unsubscribe/u1.abc.def>".into())));
        assert_eq!(header("List-Unsubscribe-Post"), Some(WitValue::Text("List-Unsubscribe=One-Click".into())));
        let document = MessageTemplate { text: "x".into(), html: Some("<html><body><p>Hi</p></BODY></html>".into()), ..Default::default() };
        let message = render(&document, &ann(&[], &[]), None, &[], "ann@example.com".into(), "k".into(), Some(&link)).unwrap();
        assert!(message.html.unwrap().ends_with("Unsubscribe</a></p></BODY></html>"), "the footer goes inside the body");
        // A template placing the link itself is left as written.
        let placed = MessageTemplate { text: "Bye: {{ unsubscribe_url }}".into(), ..Default::default() };
        let message = render(&placed, &ann(&[], &[]), None, &[], "ann@example.com".into(), "k".into(), Some(&link)).unwrap();
        assert_eq!(message.text, "Bye: https://rekindle.example/v1/unsubscribe/u1.abc.def");
        // A text message gets the variable, not the footer or the headers.
        let sms = UnsubscribeLink { email: false, ..link };
        let message = render(&forgot, &ann(&[], &[]), None, &[], "+1555".into(), "k".into(), Some(&sms)).unwrap();
        assert_eq!(message.text, "Come back");
        assert!(message.data.is_empty());
    }
}
