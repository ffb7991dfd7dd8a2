//! Host bindings for the three plugin worlds, generated from `wit/since_v0.1.0`.
//!
//! The `types` and `log` interfaces are generated once (with the rule world) and shared by
//! the other two worlds, so a `Profile` is one Rust type whatever the plugin kind.

pub(crate) mod rule {
    wasmtime::component::bindgen!({
        path: "../../wit/since_v0.1.0",
        world: "segment-rule",
        additional_derives: [PartialEq],
    });
}

pub(crate) mod channel {
    wasmtime::component::bindgen!({
        path: "../../wit/since_v0.1.0",
        world: "channel-adapter",
        additional_derives: [PartialEq],
        with: {
            "rekindle:plugin/types": super::rule::rekindle::plugin::types,
            "rekindle:plugin/log": super::rule::rekindle::plugin::log,
        },
    });
}

pub(crate) mod tiles {
    wasmtime::component::bindgen!({
        path: "../../wit/since_v0.1.0",
        world: "promo-tiles",
        additional_derives: [PartialEq],
        with: {
            "rekindle:plugin/types": super::rule::rekindle::plugin::types,
            "rekindle:plugin/log": super::rule::rekindle::plugin::log,
        },
    });
}

/// The contract's types as the host sees them, one module for all three worlds.
pub mod wit {
    pub use super::channel::exports::rekindle::plugin::adapter::{
        AdapterInfo, AudienceChange, AudienceMember, ChannelKind, HttpMethod, HttpRequest, HttpResponse, Message, Outcome, Retry,
    };
    pub use super::rule::exports::rekindle::plugin::rule::{RuleInfo, Verdict};
    pub use super::rule::rekindle::plugin::log::Level;
    pub use super::rule::rekindle::plugin::types::{
        Consent, ContactKind, ContactPoint, Context, EventQuery, EventSeries, Field, InputQuery, Membership, ParamKind, ParamSpec, Profile, PropertyColumn,
        Purpose, Timestamp, Value,
    };
    pub use super::tiles::exports::rekindle::plugin::tiles::{Offer, Tile, TileRequest, TilesInfo};

    /// The interface through which an adapter takes its secret placeholders, at version 0.1.
    pub const SECRETS_IMPORT: &str = "rekindle:plugin/secrets@0.1.0";

    /// The optional interface a channel adapter exports to be asked whether a message arrived.
    pub const RECONCILE_EXPORT: &str = "rekindle:plugin/reconcile@0.1.0";

    /// What a provider says about one message, as `reconcile.confirm` answers.
    #[derive(wasmtime::component::ComponentType, wasmtime::component::Lift, wasmtime::component::Lower, Debug, Clone, PartialEq, Eq)]
    #[component(variant)]
    pub enum Found {
        /// It arrived; the provider's id for it, when the answer gives one.
        #[component(name = "accepted")]
        Accepted(Option<String>),
        /// The provider has no message under this idempotency key.
        #[component(name = "absent")]
        Absent,
        /// The answer settles nothing; the host resends.
        #[component(name = "unknown")]
        Unknown(String),
    }

    /// The optional interface a channel adapter exports to read its provider's webhooks.
    pub const FEEDBACK_EXPORT: &str = "rekindle:plugin/feedback@0.1.0";

    /// How a provider signs its webhooks, as `feedback.signature` answers; each names the
    /// secret that checks the signature.
    #[derive(wasmtime::component::ComponentType, wasmtime::component::Lift, wasmtime::component::Lower, Debug, Clone, PartialEq, Eq)]
    #[component(variant)]
    pub enum SignatureScheme {
        /// ECDSA P-256 over SendGrid's timestamp header then the body.
        #[component(name = "sendgrid-ecdsa")]
        SendgridEcdsa(String),
        /// HMAC-SHA1 over Twilio's URL and sorted form parameters.
        #[component(name = "twilio-hmac-sha1")]
        TwilioHmacSha1(String),
        /// Rekindle's own timestamped HMAC-SHA256.
        #[component(name = "hmac-sha256")]
        HmacSha256(String),
    }

    impl SignatureScheme {
        /// The secret that checks the signature.
        pub fn secret(&self) -> &str {
            match self {
                SignatureScheme::SendgridEcdsa(name) | SignatureScheme::TwilioHmacSha1(name) | SignatureScheme::HmacSha256(name) => name,
            }
        }
    }

    /// What happened to a message after the provider accepted it.
    #[derive(wasmtime::component::ComponentType, wasmtime::component::Lift, wasmtime::component::Lower, Debug, Clone, Copy, PartialEq, Eq, Hash)]
    #[component(enum)]
    #[repr(u8)]
    pub enum FeedbackKind {
        #[component(name = "processed")]
        Processed,
        #[component(name = "sent")]
        Sent,
        #[component(name = "deferred")]
        Deferred,
        #[component(name = "delivered")]
        Delivered,
        #[component(name = "opened")]
        Opened,
        #[component(name = "clicked")]
        Clicked,
        #[component(name = "hard-bounce")]
        HardBounce,
        #[component(name = "soft-bounce")]
        SoftBounce,
        #[component(name = "dropped")]
        Dropped,
        #[component(name = "failed")]
        Failed,
        #[component(name = "spam-report")]
        SpamReport,
        #[component(name = "unsubscribed")]
        Unsubscribed,
    }

    impl FeedbackKind {
        /// The kind as the contract spells it, which is how the store keeps it.
        pub fn name(self) -> &'static str {
            match self {
                FeedbackKind::Processed => "processed",
                FeedbackKind::Sent => "sent",
                FeedbackKind::Deferred => "deferred",
                FeedbackKind::Delivered => "delivered",
                FeedbackKind::Opened => "opened",
                FeedbackKind::Clicked => "clicked",
                FeedbackKind::HardBounce => "hard-bounce",
                FeedbackKind::SoftBounce => "soft-bounce",
                FeedbackKind::Dropped => "dropped",
                FeedbackKind::Failed => "failed",
                FeedbackKind::SpamReport => "spam-report",
                FeedbackKind::Unsubscribed => "unsubscribed",
            }
        }
    }

    /// One thing a provider reports about one message, as `feedback.parse` answers.
    #[derive(wasmtime::component::ComponentType, wasmtime::component::Lift, wasmtime::component::Lower, Debug, Clone, PartialEq, Eq)]
    #[component(record)]
    pub struct FeedbackEvent {
        /// The message's idempotency key.
        #[component(name = "send-key")]
        pub send_key: String,
        /// The provider's id for this report.
        #[component(name = "event-id")]
        pub event_id: String,
        pub kind: FeedbackKind,
        /// When it happened, in ms since the epoch.
        pub at: i64,
        /// The address reported about, when the provider names one.
        pub recipient: Option<String>,
        /// The provider's reason or error code.
        pub reason: Option<String>,
        /// The link clicked.
        pub url: Option<String>,
        /// An open by a privacy proxy, not a person.
        pub machine: bool,
    }

    /// The optional interface a rule exports to answer without building its reason.
    pub const PLACEMENT_EXPORT: &str = "rekindle:plugin/placement@0.1.0";

    /// A rule's membership and label without the reason, as `placement.place` answers.
    #[derive(wasmtime::component::ComponentType, wasmtime::component::Lift, wasmtime::component::Lower, Debug, Clone, PartialEq, Eq)]
    #[component(record)]
    pub struct Placed {
        /// Whether the profile belongs to the segment.
        pub member: bool,
        /// The branch label, for multi-branch splits.
        pub label: Option<String>,
    }

    impl From<Verdict> for Placed {
        fn from(verdict: Verdict) -> Placed {
            Placed { member: verdict.member, label: verdict.label }
        }
    }

    /// The interface names a component exports to be a plugin of each kind, at version 0.1.
    pub const RULE_EXPORT: &str = "rekindle:plugin/rule@0.1.0";
    /// See [`RULE_EXPORT`].
    pub const ADAPTER_EXPORT: &str = "rekindle:plugin/adapter@0.1.0";
    /// See [`RULE_EXPORT`].
    pub const TILES_EXPORT: &str = "rekindle:plugin/tiles@0.1.0";
}
