//! What the store takes in and hands out.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The kinds of Segment message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    Track,
    Identify,
    Page,
    Screen,
    Group,
    Alias,
}

/// The consent purposes a profile can grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    Email,
    Sms,
    Push,
    Ads,
}

impl Purpose {
    /// Every purpose, in a fixed order.
    pub const ALL: [Purpose; 4] = [Purpose::Email, Purpose::Sms, Purpose::Push, Purpose::Ads];

    /// The purpose's name in JSON and in the database.
    pub fn name(self) -> &'static str {
        match self {
            Purpose::Email => "email",
            Purpose::Sms => "sms",
            Purpose::Push => "push",
            Purpose::Ads => "ads",
        }
    }

    /// The purpose called `name`, if any.
    pub fn parse(name: &str) -> Option<Purpose> {
        Purpose::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// One validated, normalised message ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The write key's source name; message ids are unique per source.
    pub source: String,
    pub message_id: String,
    pub kind: MessageKind,
    pub user_id: Option<String>,
    pub anonymous_id: Option<String>,
    /// For `alias`: the id being merged into `user_id`.
    pub previous_id: Option<String>,
    /// The event name for track (page and screen calls become `Page Viewed` and
    /// `Screen Viewed`); `None` for identify, group and alias.
    pub event: Option<String>,
    pub properties: Map<String, Value>,
    pub traits: Map<String, Value>,
    /// When it happened, in ms, corrected for the client's clock skew.
    pub timestamp: i64,
    pub received_at: i64,
    pub timezone: Option<String>,
    pub consents: Vec<(Purpose, bool)>,
    /// A device push token, and whether it is active (false when revoked).
    pub push_token: Option<(String, bool)>,
    /// Sent with a browser source's write key, which anyone can read off the shop's page:
    /// it may not change an identified profile's email, phone, push tokens or consents,
    /// merge a profile that has a user id into another, or write reserved traits.
    pub from_browser: bool,
}

/// Traits the host gives a meaning of its own, which a browser source may not write:
/// the computed traits, the test-profile flag and the consent object.
pub const RESERVED_TRAITS: &[&str] = &[
    "order_count",
    "lifetime_value",
    "first_order_at",
    "last_order_at",
    "avg_days_between_orders",
    "days_since_last_order",
    "favourite_category",
    "test",
    "consent",
];

/// Traits that are contact points: an identified profile's are the server's to change.
pub const CONTACT_TRAITS: &[&str] = &["email", "phone"];

/// Part of an accepted message the store did not apply, because the source may not make
/// that change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ignored {
    /// The message's position in the batch.
    #[serde(skip)]
    pub index: usize,
    /// The field, relative to the message: `traits.email`, `previousId`, ...
    pub field: String,
    pub reason: &'static str,
}

/// What an ingest call did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IngestReport {
    pub accepted: usize,
    /// Messages whose id the source had already sent.
    pub duplicates: usize,
    /// The profile each accepted message landed on, and what it changed there.
    #[serde(skip)]
    pub touched: Vec<Touch>,
    /// What browser sources sent that the store did not apply.
    pub ignored: Vec<Ignored>,
}

/// What one accepted message changed on a profile: real-time evaluation re-runs only the
/// segments whose rules read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touch {
    /// The profile, after identity resolution and any merge.
    pub profile_id: String,
    /// The event recorded; `None` for messages that change traits, consents, contacts or
    /// identities, which any rule may read.
    pub event: Option<String>,
    /// The event is the order event, which also moves the computed traits.
    pub order: bool,
}

/// Which events and properties feed the computed traits (Segment's e-commerce spec by
/// default); `[events]` in `rekindle.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventMapping {
    pub order_completed: String,
    /// Property names tried in order for an order's value.
    pub revenue_properties: Vec<String>,
    pub products_property: String,
    pub category_property: String,
    /// The property of each ordered product naming it in the catalog.
    pub product_id_property: String,
}

impl Default for EventMapping {
    fn default() -> Self {
        EventMapping {
            order_completed: "Order Completed".into(),
            revenue_properties: vec!["revenue".into(), "total".into()],
            products_property: "products".into(),
            category_property: "category".into(),
            product_id_property: "product_id".into(),
        }
    }
}

/// Computed traits of one profile.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Computed {
    pub order_count: i64,
    pub lifetime_value: f64,
    pub first_order_at: Option<i64>,
    pub last_order_at: Option<i64>,
    /// Units bought per category.
    #[serde(skip)]
    pub category_counts: Map<String, Value>,
}

/// A contact point as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Contact {
    pub kind: String,
    pub address: String,
    pub active: bool,
    pub updated_at: i64,
}

/// One consent as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Consent {
    pub purpose: Purpose,
    pub granted: bool,
    pub updated_at: i64,
}

/// One stored event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredEvent {
    pub name: String,
    pub timestamp: i64,
    pub properties: Value,
}

/// Everything the store knows about one person.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileRecord {
    pub id: String,
    pub user_ids: Vec<String>,
    pub anonymous_ids: Vec<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub timezone: Option<String>,
    /// Trait name to (value, when it was set).
    pub traits: Vec<(String, Value, i64)>,
    pub computed: Computed,
    pub consents: Vec<Consent>,
    pub contacts: Vec<Contact>,
    /// Most recent first.
    pub recent_events: Vec<StoredEvent>,
}

/// A segment: a rule slot, its parameters and when it is re-evaluated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentDefinition {
    pub name: String,
    pub slot: String,
    /// Operator parameters as a JSON object.
    pub params: Value,
    /// `realtime`, `daily`, `weekly` or `biweekly`.
    pub schedule: String,
    /// When it was last evaluated over every profile.
    pub last_run: Option<i64>,
}

/// One current membership.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MembershipRecord {
    pub segment: String,
    pub profile_id: String,
    pub label: Option<String>,
    pub reason: String,
    pub digest: String,
    pub since: i64,
}

/// One entry or exit from the membership log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MembershipChange {
    /// Increasing; the cursor for reading on.
    pub id: i64,
    pub segment: String,
    pub profile_id: String,
    pub change: String,
    pub at: i64,
    pub label: Option<String>,
    pub reason: String,
    pub digest: String,
}

/// What a verdict changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Enter,
    Exit,
}

/// A catalog product.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Product {
    pub id: String,
    pub name: String,
    pub category: Option<String>,
    pub price: Option<f64>,
    pub url: Option<String>,
    pub image: Option<String>,
    pub in_stock: bool,
}

/// Which profiles a bulk read covers.
#[derive(Debug, Clone)]
pub enum Scope {
    /// The next `limit` profiles by id after `after`: a page of a full run.
    After { after: String, limit: usize },
    /// These profile ids, distinct and already resolved (missing ones are skipped): what
    /// ingestion hands the real-time evaluator.
    Profiles(Vec<String>),
    /// The people these ids name (profile ids, userIds or anonymousIds; unknown ones are
    /// skipped, each person is read once): the people an ingest touched.
    Ids(Vec<String>),
}

/// One event name a bulk read fetches, with its window and per-profile limit.
#[derive(Debug, Clone, PartialEq)]
pub struct EventNeed {
    pub name: String,
    pub since: i64,
    pub until: i64,
    /// Keep only each profile's latest `limit`.
    pub limit: Option<u32>,
    /// Whether the properties are wanted; parsing them is most of an event's cost.
    pub properties: bool,
}

/// The sections a bulk read fetches: the union of what a run's rules declared.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InputNeeds {
    pub traits: bool,
    pub consents: bool,
    pub contacts: bool,
    pub computed: bool,
    pub events: Vec<EventNeed>,
}

/// What a batch of rules may read about one profile; sections not asked for stay empty.
/// Memberships are always read, since a run compares every verdict with them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleInput {
    pub id: String,
    pub timezone: Option<String>,
    pub traits: Vec<(String, Value)>,
    pub consents: Vec<Consent>,
    pub contacts: Vec<Contact>,
    pub computed: Computed,
    pub memberships: Vec<MembershipRecord>,
    /// Per [`InputNeeds::events`] entry, in the same order: (timestamp, properties) oldest first.
    pub events: Vec<Vec<(i64, Value)>>,
}

/// A verdict to apply in a batch; see [`crate::Store::record_verdicts`].
#[derive(Debug, Clone, PartialEq)]
pub struct VerdictWrite {
    pub segment: String,
    pub profile_id: String,
    pub member: bool,
    pub label: Option<String>,
    pub reason: String,
    pub digest: String,
}

/// One person's way through one journey.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JourneyRun {
    pub id: String,
    pub journey: String,
    pub profile_id: String,
    /// Index of the current step.
    pub step: i64,
    /// `active` (due now), `waiting` (until `wake_at`) or `done`.
    pub status: String,
    pub wake_at: Option<i64>,
    pub step_started_at: i64,
    pub entered_at: i64,
    pub ended_reason: Option<String>,
    /// What took the customer in (`change:ID`, `event:ID`); one run per cause.
    #[serde(skip)]
    pub entered_by: Option<String>,
    /// The version this copy was read at; a save from an older copy changes nothing.
    #[serde(skip)]
    pub version: i64,
}

/// Who holds the leases a host takes (on the runs it advances, the journey tick, a
/// scheduled segment run): this process (`owner`), on the host `host` (the same across its
/// restarts), for `length_ms` at a time. A lease held by an earlier process of the same
/// host is taken back at once, since that process is gone; one held by another host waits
/// until it passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub host: String,
    pub owner: String,
    pub length_ms: i64,
}

impl Lease {
    /// Leases of `length` for a new process on the host `host`.
    pub fn new(host: &str, length: std::time::Duration) -> Lease {
        let process = uuid::Uuid::now_v7().simple().to_string();
        Lease { host: host.to_string(), owner: format!("{host}/{process}"), length_ms: i64::try_from(length.as_millis()).unwrap_or(i64::MAX) }
    }
}

/// One thing a journey run did or skipped.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JourneyLogEntry {
    pub run_id: String,
    pub journey: String,
    pub profile_id: String,
    pub step: String,
    /// `entered`, `waiting`, `sent`, `skipped`, `failed`, `split`, `audience`, `exited`, ...
    pub action: String,
    pub channel: Option<String>,
    pub detail: String,
    pub at: i64,
}

/// The RFM cutoffs recorded for a segment: the parameters they were resolved from, what
/// they resolved to, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedCutoffs {
    pub from: Value,
    pub resolved: Value,
    pub computed_at: i64,
}

/// One buyer's place on the RFM axes: days since the last order, orders, lifetime value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RfmPoint {
    pub recency_days: f64,
    pub frequency: f64,
    pub monetary: f64,
}

/// An offer or page slot as stored: its id (or name), its definition's JSON text, and when
/// it was last written.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDocument {
    pub id: String,
    pub definition: String,
    pub updated_at: i64,
}

/// A deployed journey: its name, its definition's TOML, and the event id its entries have
/// been read up to.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredJourney {
    pub name: String,
    pub definition: String,
    pub entry_cursor: i64,
}

/// A stored event, by id, with whose it is and when it happened.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRef {
    pub id: i64,
    pub profile_id: String,
    pub timestamp: i64,
}

/// A send already claimed under an idempotency key: its outcome so far (`pending` until
/// settled) and when it was claimed.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedSend {
    pub outcome: String,
    pub claimed_at: i64,
    /// When the request last went out; `None` when it never did.
    pub sent_at: Option<i64>,
}

/// What claiming a send came to.
#[derive(Debug, Clone, PartialEq)]
pub enum SendClaim {
    /// Claimed now: nobody sent it before.
    New,
    /// Claimed before, with what became of it.
    Existing(ClaimedSend),
    /// This host no longer holds the run: another host took it over.
    LostRun,
}

/// The send claimed for one step of a run, on whichever channel.
#[derive(Debug, Clone, PartialEq)]
pub struct StepSend {
    pub key: String,
    pub channel: String,
    pub outcome: String,
    pub claimed_at: i64,
    /// When the request last went out; `None` when it never did.
    pub sent_at: Option<i64>,
}

/// One provider report about a send, with what the deliver stage decided it means.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackWrite {
    /// Where the report stood in the adapter's list, for answers naming it.
    pub index: usize,
    /// The provider's id for the report; one report per id and channel is kept.
    pub event_id: String,
    /// The send's idempotency key.
    pub send_key: String,
    /// The contract's kind (`delivered`, `hard-bounce`).
    pub kind: String,
    /// When it happened, in ms.
    pub at: i64,
    pub recipient: Option<String>,
    pub reason: Option<String>,
    pub url: Option<String>,
    /// An open by a privacy proxy: kept, not counted.
    pub machine: bool,
    /// The profile event it records (`Email Opened`), if any.
    pub event: Option<String>,
    /// What it switches off, if anything.
    pub suppress: Option<Suppress>,
}

/// What a suppression switches off, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Suppress {
    pub target: SuppressTarget,
    /// Short and stable: `hard bounce`, `spam complaint`, `unsubscribed`.
    pub reason: String,
    /// The provider's words or code.
    pub detail: Option<String>,
    /// When it stops holding; `None` holds until lifted.
    pub expires_at: Option<i64>,
}

/// A contact point (by kind, and address when the report names one) or a consent purpose.
#[derive(Debug, Clone, PartialEq)]
pub enum SuppressTarget {
    Contact { kind: String, address: Option<String> },
    Consent(Purpose),
}

/// What recording a webhook's reports did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FeedbackReport {
    pub accepted: usize,
    /// Reports recorded before (a replayed webhook).
    pub duplicates: usize,
    /// Suppressions the reports switched on.
    pub suppressed: usize,
    /// The profiles the reports changed, for real-time segments.
    #[serde(skip)]
    pub touched: Vec<Touch>,
    /// Reports (by [`FeedbackWrite::index`]) about sends this host did not make on the
    /// channel: left out.
    #[serde(skip)]
    pub unknown: Vec<usize>,
}

/// Why a webhook's reports were refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedbackRefusal {
    /// Report `index` names a send this host never made.
    UnknownSendKey { index: usize, key: String },
}

/// A recorded suppression.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Suppression {
    pub id: i64,
    pub profile_id: String,
    /// `contact` or `consent`.
    pub kind: String,
    /// `email:ann@example.com` for a contact point, the purpose for a consent.
    pub target: String,
    pub reason: String,
    pub detail: Option<String>,
    pub channel: Option<String>,
    pub send_key: Option<String>,
    pub at: i64,
    pub expires_at: Option<i64>,
    pub lifted_at: Option<i64>,
    pub lifted_by: Option<String>,
}
