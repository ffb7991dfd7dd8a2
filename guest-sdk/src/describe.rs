//! Builders for what `describe()` returns and what the plugin returns.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::{
    AdapterInfo, ChannelKind, ContactKind, EventQuery, HttpMethod, HttpRequest, HttpResponse, InputQuery, Outcome, ParamKind, ParamSpec, Purpose, Retry,
    RuleInfo, TilesInfo, Value, Verdict,
};

impl ParamSpec {
    /// An integer parameter with its default.
    pub fn integer(name: &str, default: i64, doc: &str) -> ParamSpec {
        ParamSpec { name: name.into(), kind: ParamKind::Integer, default: Value::Integer(default), doc: doc.into() }
    }

    /// A number parameter with its default.
    pub fn number(name: &str, default: f64, doc: &str) -> ParamSpec {
        ParamSpec { name: name.into(), kind: ParamKind::Number, default: Value::Number(default), doc: doc.into() }
    }

    /// A text parameter with its default.
    pub fn text(name: &str, default: &str, doc: &str) -> ParamSpec {
        ParamSpec { name: name.into(), kind: ParamKind::Text, default: Value::Text(default.into()), doc: doc.into() }
    }

    /// A boolean parameter with its default.
    pub fn boolean(name: &str, default: bool, doc: &str) -> ParamSpec {
        ParamSpec { name: name.into(), kind: ParamKind::Boolean, default: Value::Boolean(default), doc: doc.into() }
    }
}

impl InputQuery {
    /// Reads nothing; add what the plugin needs.
    pub fn new() -> InputQuery {
        InputQuery { events: Vec::new(), traits: Vec::new(), aggregates: Vec::new(), consents: false, contacts: false, segments: false }
    }

    /// Reads every event of `name` in the whole history, without properties.
    pub fn events(self, name: &str) -> InputQuery {
        self.event(EventQuery::named(name))
    }

    /// Reads the events one [`EventQuery`] describes.
    pub fn event(mut self, query: EventQuery) -> InputQuery {
        self.events.push(query);
        self
    }

    /// Reads one trait.
    pub fn trait_(mut self, name: &str) -> InputQuery {
        self.traits.push(name.into());
        self
    }

    /// Reads one computed aggregate.
    pub fn aggregate(mut self, name: &str) -> InputQuery {
        self.aggregates.push(name.into());
        self
    }

    /// Reads the consents.
    pub fn consents(mut self) -> InputQuery {
        self.consents = true;
        self
    }

    /// Reads the contact points.
    pub fn contacts(mut self) -> InputQuery {
        self.contacts = true;
        self
    }

    /// Reads the current segment memberships.
    pub fn segments(mut self) -> InputQuery {
        self.segments = true;
        self
    }
}

impl Default for InputQuery {
    fn default() -> Self {
        InputQuery::new()
    }
}

impl EventQuery {
    /// Every event of `name`, no properties.
    pub fn named(name: &str) -> EventQuery {
        EventQuery { name: name.into(), lookback_seconds: None, limit: None, properties: Vec::new() }
    }

    /// Only events within `millis` before `ctx.now`.
    pub fn within(mut self, millis: i64) -> EventQuery {
        self.lookback_seconds = Some((millis.max(0) / 1000) as u64);
        self
    }

    /// Only the most recent `n` events.
    pub fn last(mut self, n: u32) -> EventQuery {
        self.limit = Some(n);
        self
    }

    /// Also reads property `name` of each event.
    pub fn property(mut self, name: &str) -> EventQuery {
        self.properties.push(name.into());
        self
    }
}

impl RuleInfo {
    /// A rule with no parameters that reads nothing yet.
    pub fn new(name: &str, version: &str, summary: &str) -> RuleInfo {
        RuleInfo { name: name.into(), version: version.into(), summary: summary.into(), params: Vec::new(), input: InputQuery::new() }
    }

    /// Adds an operator parameter.
    pub fn param(mut self, spec: ParamSpec) -> RuleInfo {
        self.params.push(spec);
        self
    }

    /// Declares what the rule reads.
    pub fn reads(mut self, input: InputQuery) -> RuleInfo {
        self.input = input;
        self
    }
}

impl TilesInfo {
    /// A tile plugin with no parameters that reads nothing yet.
    pub fn new(name: &str, version: &str, summary: &str) -> TilesInfo {
        TilesInfo { name: name.into(), version: version.into(), summary: summary.into(), params: Vec::new(), input: InputQuery::new() }
    }

    /// Adds an operator parameter.
    pub fn param(mut self, spec: ParamSpec) -> TilesInfo {
        self.params.push(spec);
        self
    }

    /// Declares what the plugin reads.
    pub fn reads(mut self, input: InputQuery) -> TilesInfo {
        self.input = input;
        self
    }
}

impl AdapterInfo {
    /// An adapter of `kind` that needs nothing yet.
    pub fn new(name: &str, version: &str, summary: &str, kind: ChannelKind) -> AdapterInfo {
        AdapterInfo {
            name: name.into(),
            version: version.into(),
            summary: summary.into(),
            kind,
            contact: None,
            consent: None,
            hosts: Vec::new(),
            secrets: Vec::new(),
            params: Vec::new(),
        }
    }

    /// The contact point each message goes to.
    pub fn contact(mut self, kind: ContactKind) -> AdapterInfo {
        self.contact = Some(kind);
        self
    }

    /// The consent the customer must have granted.
    pub fn consent(mut self, purpose: Purpose) -> AdapterInfo {
        self.consent = Some(purpose);
        self
    }

    /// A host the adapter's requests go to.
    pub fn host(mut self, host: &str) -> AdapterInfo {
        self.hosts.push(host.into());
        self
    }

    /// A secret the adapter's requests use, where [`crate::secret`] puts it.
    pub fn secret(mut self, name: &str) -> AdapterInfo {
        self.secrets.push(name.into());
        self
    }

    /// Adds an operator parameter.
    pub fn param(mut self, spec: ParamSpec) -> AdapterInfo {
        self.params.push(spec);
        self
    }
}

impl Verdict {
    /// A verdict with its reason and no label.
    pub fn new(member: bool, reason: impl Into<String>) -> Verdict {
        Verdict { member, reason: reason.into(), label: None }
    }

    /// A verdict whose reason is built only if the host keeps it. A run asks every profile
    /// for membership and label, and the reason only of those whose answer changed, so
    /// formatting it on every call is most of a small rule's cost.
    pub fn because(member: bool, reason: impl FnOnce() -> String) -> Verdict {
        let reason = if crate::reason::quiet() { String::new() } else { reason() };
        Verdict { member, reason, label: None }
    }

    /// A member with a reason.
    pub fn member(reason: impl Into<String>) -> Verdict {
        Verdict::new(true, reason)
    }

    /// Not a member, with a reason.
    pub fn not_member(reason: impl Into<String>) -> Verdict {
        Verdict::new(false, reason)
    }

    /// Adds a branch label.
    pub fn labelled(mut self, label: impl Into<String>) -> Verdict {
        self.label = Some(label.into());
        self
    }
}

impl HttpRequest {
    /// A request with no headers and an empty body.
    pub fn new(method: HttpMethod, url: impl Into<String>) -> HttpRequest {
        HttpRequest { method, url: url.into(), headers: Vec::new(), body: Vec::new() }
    }

    /// Adds a header; its value may hold [`crate::secret`] placeholders for the host to fill.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> HttpRequest {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> HttpRequest {
        self.body = body.into();
        self
    }
}

/// `application/x-www-form-urlencoded` text of `pairs`, as form APIs (Twilio) take it.
pub fn form_urlencoded(pairs: &[(&str, &str)]) -> String {
    ::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
}

/// The name and value pairs of `application/x-www-form-urlencoded` text (a form body, or a
/// URL's query), decoded; a malformed escape is kept as written.
pub fn form_decode(text: &str) -> Vec<(String, String)> {
    ::form_urlencoded::parse(text.as_bytes()).map(|(name, value)| (name.into_owned(), value.into_owned())).collect()
}

impl HttpRequest {
    /// The first header of `name`, compared case-insensitively.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The decoded parameters of the URL's query.
    pub fn query(&self) -> Vec<(String, String)> {
        let query = self.url.split_once('?').map_or("", |(_, q)| q);
        form_decode(query.split('#').next().unwrap_or(""))
    }
}

impl HttpResponse {
    /// The first header of `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as text, when it is UTF-8.
    pub fn text(&self) -> Option<&str> {
        core::str::from_utf8(&self.body).ok()
    }
}

impl Outcome {
    /// The usual reading of a status code: 2xx delivered; 408, 429 and 5xx retry later
    /// (with `Retry-After` in seconds when given); any other status failed.
    pub fn from_status(response: &HttpResponse) -> Outcome {
        let status = response.status;
        match status {
            200..=299 => Outcome::Delivered(None),
            408 | 429 | 500..=599 => Outcome::RetryLater(Retry {
                after_seconds: response.header("retry-after").and_then(|v| v.trim().parse().ok()),
                reason: status_reason(response),
            }),
            _ => Outcome::Failed(status_reason(response)),
        }
    }
}

fn status_reason(response: &HttpResponse) -> String {
    let mut reason = alloc::format!("HTTP {}", response.status);
    if let Some(text) = response.text().filter(|t| !t.is_empty()) {
        let cut: String = text.chars().take(200).collect();
        reason.push_str(": ");
        reason.push_str(&cut);
    }
    reason.to_string()
}
