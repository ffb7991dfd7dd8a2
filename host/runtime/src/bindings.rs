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
