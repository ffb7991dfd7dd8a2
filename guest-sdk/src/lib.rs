//! The Rekindle guest SDK: write a segment rule, channel adapter or promo-tile plugin as a
//! plain Rust type and export it with one macro.
//!
//! ```
//! #![no_std]
//! use rekindle_sdk::prelude::*;
//!
//! struct BigSpender;
//!
//! impl Rule for BigSpender {
//!     fn describe() -> RuleInfo {
//!         RuleInfo::new("big-spender", "1.0.0", "Lifetime value above a threshold")
//!             .param(ParamSpec::number("min_ltv", 500.0, "Lifetime value to exceed"))
//!             .reads(InputQuery::new().aggregate("lifetime_value"))
//!     }
//!
//!     fn evaluate(ctx: &Context, profile: &Profile) -> Result<Verdict, String> {
//!         let min = ctx.number("min_ltv")?;
//!         let ltv = profile.aggregate_number("lifetime_value").unwrap_or(0.0);
//!         // The reason is built only when the host keeps it (see `Verdict::because`).
//!         Ok(Verdict::because(ltv > min, || format!("lifetime value {ltv} vs {min}")))
//!     }
//! }
//!
//! rekindle_sdk::export_rule!(BigSpender);
//! # fn main() {}
//! ```
//!
//! Plugins are `#![no_std]`: the SDK brings the allocator and a panic handler that reports
//! the panic message to the host, so a component imports nothing but the `rekindle:plugin`
//! contract and runs unchanged in the host and at the CDN edge. Every export must be a pure
//! function of its arguments; the time is `ctx.now`.

#![no_std]

#[cfg(not(target_arch = "wasm32"))]
extern crate std;

extern crate alloc;
extern crate self as rekindle_sdk;

#[cfg(target_arch = "wasm32")]
mod bump;
mod describe;
mod fmt;
mod hashing;
mod log;
mod params;
mod profile;
mod reason;
mod rfm;
mod template;
mod time;

pub use describe::{form_decode, form_urlencoded};
pub use fmt::OneDecimal;
pub use hashing::{AdPlatform, audience_change_key, hash_email, hash_phone, normalize_email, normalize_phone, percent_bucket, sha256_hex};
pub use log::{log_level, log_line};
pub use profile::Occurrence;
pub use reason::{with_reasons, without_reasons};
pub use rfm::{RfmCutoffs, RfmScore};
pub use template::render;
pub use time::{DAY, HOUR, MINUTE, days, hours, minutes};

/// Raw bindings generated from the WIT contract; prefer the re-exports at the crate root.
pub mod bindings {
    /// The `placing-segment-rule` world: `segment-rule` plus `placement`, which the SDK
    /// answers from the same [`crate::Rule::evaluate`].
    pub mod rule {
        wit_bindgen::generate!({
            path: "../wit/since_v0.1.0",
            world: "placing-segment-rule",
            pub_export_macro: true,
            additional_derives: [PartialEq],
            export_macro_name: "export",
            default_bindings_module: "rekindle_sdk::bindings::rule",
            runtime_path: "rekindle_sdk::__private::wit_bindgen::rt",
        });
    }

    /// The `feedback-channel-adapter` world: `channel-adapter` plus the optional
    /// `reconcile` interface, which answers `unknown` unless the adapter implements it, the
    /// optional `feedback` interface, which answers `none` unless it does, and the
    /// `secrets` import behind [`crate::secret`].
    pub mod channel {
        wit_bindgen::generate!({
            path: "../wit/since_v0.1.0",
            world: "feedback-channel-adapter",
            pub_export_macro: true,
            additional_derives: [PartialEq],
            export_macro_name: "export",
            default_bindings_module: "rekindle_sdk::bindings::channel",
            runtime_path: "rekindle_sdk::__private::wit_bindgen::rt",
            with: {
                "rekindle:plugin/types@0.1.0": crate::bindings::rule::rekindle::plugin::types,
                "rekindle:plugin/log@0.1.0": crate::bindings::rule::rekindle::plugin::log,
            },
        });
    }

    /// The `promo-tiles` world.
    pub mod tiles {
        wit_bindgen::generate!({
            path: "../wit/since_v0.1.0",
            world: "promo-tiles",
            pub_export_macro: true,
            additional_derives: [PartialEq],
            export_macro_name: "export",
            default_bindings_module: "rekindle_sdk::bindings::tiles",
            runtime_path: "rekindle_sdk::__private::wit_bindgen::rt",
            with: {
                "rekindle:plugin/types@0.1.0": crate::bindings::rule::rekindle::plugin::types,
                "rekindle:plugin/log@0.1.0": crate::bindings::rule::rekindle::plugin::log,
            },
        });
    }
}

pub use bindings::channel::exports::rekindle::plugin::adapter::{
    AdapterInfo, AudienceChange, AudienceMember, ChannelKind, HttpMethod, HttpRequest, HttpResponse, Message, Outcome, Retry,
};
pub use bindings::channel::exports::rekindle::plugin::feedback::{FeedbackEvent, FeedbackKind, SignatureScheme};
pub use bindings::channel::exports::rekindle::plugin::reconcile::Found;
pub use bindings::rule::exports::rekindle::plugin::rule::{RuleInfo, Verdict};
pub use bindings::rule::rekindle::plugin::log::Level;
pub use bindings::rule::rekindle::plugin::types::{
    Consent, ContactKind, ContactPoint, Context, EventQuery, EventSeries, Field, InputQuery, Membership, ParamKind, ParamSpec, Profile, PropertyColumn,
    Purpose, Timestamp, Value,
};
pub use bindings::tiles::exports::rekindle::plugin::tiles::{Offer, Tile, TileRequest, TilesInfo};

use alloc::string::String;
use alloc::vec::Vec;

/// A segment rule: decides whether one profile belongs to a segment.
pub trait Rule {
    /// Name, version, parameters and the input the rule reads.
    fn describe() -> RuleInfo;
    /// The verdict for one profile; `Err` says what was wrong with the input.
    fn evaluate(ctx: &Context, profile: &Profile) -> Result<Verdict, String>;
}

/// A channel adapter: turns messages and audience changes into provider HTTP requests.
pub trait Channel {
    /// Kind, contact point, consent, hosts and secrets the adapter needs.
    fn describe() -> AdapterInfo;

    /// The requests that deliver one message.
    fn deliver(_ctx: &Context, _message: &Message) -> Result<Vec<HttpRequest>, String> {
        Err("this adapter does not deliver messages; it only syncs audiences".into())
    }

    /// The requests that add and remove audience members. `ctx.now` is the same on every
    /// attempt at one change; [`audience_change_key`] makes its idempotency key.
    fn sync_audience(_ctx: &Context, _change: &AudienceChange) -> Result<Vec<HttpRequest>, String> {
        Err("this adapter does not sync audiences; it only delivers messages".into())
    }

    /// What a provider response means. The default reads the status code: 2xx delivered,
    /// 408, 429 and 5xx retry (honouring `Retry-After`), other 4xx failed.
    fn interpret(_ctx: &Context, _request: &HttpRequest, response: &HttpResponse) -> Outcome {
        Outcome::from_status(response)
    }

    /// The request asking the provider whether `message` arrived, for a send a crash left in
    /// doubt. The default has none, and the host resends under the same idempotency key.
    fn lookup(_ctx: &Context, _message: &Message) -> Result<HttpRequest, String> {
        Err(NO_LOOKUP.into())
    }

    /// What the provider's answer to [`Channel::lookup`] means.
    fn confirm(_ctx: &Context, _message: &Message, _response: &HttpResponse) -> Found {
        Found::Unknown(NO_LOOKUP.into())
    }

    /// How the provider signs its delivery webhooks, naming a declared secret; the host
    /// checks the signature before [`Channel::parse_feedback`] sees the request. The
    /// default takes no feedback.
    fn signature() -> Option<SignatureScheme> {
        None
    }

    /// The delivery reports in one webhook request whose signature the host checked.
    fn parse_feedback(_ctx: &Context, _request: &HttpRequest) -> Result<Vec<FeedbackEvent>, String> {
        Err(NO_FEEDBACK.into())
    }
}

/// Where secret `name` goes in a request: the host puts the value there when it performs
/// the request, so the adapter never sees it. Declare `name` with `AdapterInfo::secret`.
///
/// The placeholder is good only for the request this call returns. Text that came from
/// data, such as a customer's name that reads `{{secret:NAME}}`, is never filled in.
/// Natively (in unit tests) it reads `{{secret:NAME#test}}`.
pub fn secret(name: &str) -> String {
    #[cfg(target_arch = "wasm32")]
    return bindings::channel::rekindle::plugin::secrets::placeholder(name);
    #[cfg(not(target_arch = "wasm32"))]
    return alloc::format!("{{{{secret:{name}#test}}}}");
}

/// Where HTTP Basic credentials made of secrets `user` and `password` go: the host puts
/// `Basic base64(user:password)` there. Use it as an `authorization` header's whole value.
/// Natively it reads `{{basic-auth:USER:PASS#test}}`.
pub fn basic_auth(user: &str, password: &str) -> String {
    #[cfg(target_arch = "wasm32")]
    return bindings::channel::rekindle::plugin::secrets::basic_auth(user, password);
    #[cfg(not(target_arch = "wasm32"))]
    return alloc::format!("{{{{basic-auth:{user}:{password}#test}}}}");
}

/// Why an adapter without a feedback reader refuses webhooks.
const NO_FEEDBACK: &str = "this adapter does not read its provider's webhooks";

/// Why an adapter without a lookup cannot reconcile.
const NO_LOOKUP: &str = "this adapter cannot ask its provider whether a message arrived";

/// A promo-tile decision: ranks and personalises offers for a page slot.
pub trait Tiles {
    /// Name, version, parameters and the input the plugin reads.
    fn describe() -> TilesInfo;
    /// Ranked tiles for the request; `profile` is `None` for an unknown visitor.
    fn decide(ctx: &Context, request: &TileRequest, profile: Option<&Profile>, offers: &[Offer]) -> Result<Vec<Tile>, String>;
}

/// Exports a [`Rule`] implementation as the component's `placing-segment-rule` world: its
/// `evaluate`, and `place`, the same call with [`Verdict::because`] reasons skipped.
#[macro_export]
#[rustfmt::skip]
macro_rules! export_rule {
    ($rule:ty) => {
        // Natively (unit tests) there is nothing to export, but the type still counts as used.
        #[cfg(not(target_arch = "wasm32"))]
        const _: fn() = || {
            let _ = <$rule as $crate::Rule>::describe;
        };
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __RekindleRule;
            impl $crate::bindings::rule::exports::rekindle::plugin::rule::Guest for __RekindleRule {
                fn describe() -> $crate::RuleInfo {
                    <$rule as $crate::Rule>::describe()
                }
                fn evaluate(
                    ctx: $crate::Context,
                    profile: $crate::Profile,
                ) -> ::core::result::Result<$crate::Verdict, $crate::__private::String> {
                    $crate::with_reasons(|| <$rule as $crate::Rule>::evaluate(&ctx, &profile))
                }
            }
            impl $crate::bindings::rule::exports::rekindle::plugin::placement::Guest for __RekindleRule {
                fn place(
                    ctx: $crate::Context,
                    profile: $crate::Profile,
                ) -> ::core::result::Result<
                    $crate::bindings::rule::exports::rekindle::plugin::placement::Placed,
                    $crate::__private::String,
                > {
                    $crate::without_reasons(|| <$rule as $crate::Rule>::evaluate(&ctx, &profile)).map(|verdict| {
                        $crate::bindings::rule::exports::rekindle::plugin::placement::Placed {
                            member: verdict.member,
                            label: verdict.label,
                        }
                    })
                }
            }
            $crate::bindings::rule::export!(__RekindleRule with_types_in $crate::bindings::rule);
        };
    };
}

/// Exports a [`Channel`] implementation as the component's `feedback-channel-adapter`
/// world.
#[macro_export]
#[rustfmt::skip]
macro_rules! export_channel {
    ($channel:ty) => {
        // Natively (unit tests) there is nothing to export, but the type still counts as used.
        #[cfg(not(target_arch = "wasm32"))]
        const _: fn() = || {
            let _ = <$channel as $crate::Channel>::describe;
        };
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::__private::{String, Vec};
            struct __RekindleChannel;
            impl $crate::bindings::channel::exports::rekindle::plugin::adapter::Guest
                for __RekindleChannel
            {
                fn describe() -> $crate::AdapterInfo {
                    <$channel as $crate::Channel>::describe()
                }
                fn deliver(
                    ctx: $crate::Context,
                    message: $crate::Message,
                ) -> ::core::result::Result<Vec<$crate::HttpRequest>, String> {
                    <$channel as $crate::Channel>::deliver(&ctx, &message)
                }
                fn sync_audience(
                    ctx: $crate::Context,
                    change: $crate::AudienceChange,
                ) -> ::core::result::Result<Vec<$crate::HttpRequest>, String> {
                    <$channel as $crate::Channel>::sync_audience(&ctx, &change)
                }
                fn interpret(
                    ctx: $crate::Context,
                    request: $crate::HttpRequest,
                    response: $crate::HttpResponse,
                ) -> $crate::Outcome {
                    <$channel as $crate::Channel>::interpret(&ctx, &request, &response)
                }
            }
            impl $crate::bindings::channel::exports::rekindle::plugin::reconcile::Guest
                for __RekindleChannel
            {
                fn lookup(
                    ctx: $crate::Context,
                    message: $crate::Message,
                ) -> ::core::result::Result<$crate::HttpRequest, String> {
                    <$channel as $crate::Channel>::lookup(&ctx, &message)
                }
                fn confirm(
                    ctx: $crate::Context,
                    message: $crate::Message,
                    response: $crate::HttpResponse,
                ) -> $crate::Found {
                    <$channel as $crate::Channel>::confirm(&ctx, &message, &response)
                }
            }
            impl $crate::bindings::channel::exports::rekindle::plugin::feedback::Guest
                for __RekindleChannel
            {
                fn signature() -> ::core::option::Option<$crate::SignatureScheme> {
                    <$channel as $crate::Channel>::signature()
                }
                fn parse(
                    ctx: $crate::Context,
                    request: $crate::HttpRequest,
                ) -> ::core::result::Result<Vec<$crate::FeedbackEvent>, String> {
                    <$channel as $crate::Channel>::parse_feedback(&ctx, &request)
                }
            }
            $crate::bindings::channel::export!(__RekindleChannel with_types_in $crate::bindings::channel);
        };
    };
}

/// Exports a [`Tiles`] implementation as the component's `promo-tiles` world.
#[macro_export]
#[rustfmt::skip]
macro_rules! export_tiles {
    ($tiles:ty) => {
        // Natively (unit tests) there is nothing to export, but the type still counts as used.
        #[cfg(not(target_arch = "wasm32"))]
        const _: fn() = || {
            let _ = <$tiles as $crate::Tiles>::describe;
        };
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::__private::{String, Vec};
            struct __RekindleTiles;
            impl $crate::bindings::tiles::exports::rekindle::plugin::tiles::Guest for __RekindleTiles {
                fn describe() -> $crate::TilesInfo {
                    <$tiles as $crate::Tiles>::describe()
                }
                fn decide(
                    ctx: $crate::Context,
                    request: $crate::TileRequest,
                    profile: Option<$crate::Profile>,
                    offers: Vec<$crate::Offer>,
                ) -> ::core::result::Result<Vec<$crate::Tile>, String> {
                    <$tiles as $crate::Tiles>::decide(&ctx, &request, profile.as_ref(), &offers)
                }
            }
            $crate::bindings::tiles::export!(__RekindleTiles with_types_in $crate::bindings::tiles);
        };
    };
}

/// What a plugin needs in scope: the traits, the types and `alloc`'s `String`, `Vec`,
/// `format!` and `vec!`, since plugins are `#![no_std]`.
pub mod prelude {
    pub use crate::{
        AdapterInfo, AudienceChange, AudienceMember, Channel, ChannelKind, ContactKind, Context, EventQuery, EventSeries, FeedbackEvent, FeedbackKind, Field,
        Found, HttpMethod, HttpRequest, HttpResponse, InputQuery, Message, Occurrence, Offer, Outcome, ParamKind, ParamSpec, Profile, Purpose, Retry, Rule,
        RuleInfo, SignatureScheme, Tile, TileRequest, Tiles, TilesInfo, Timestamp, Value, Verdict, audience_change_key, basic_auth, days, hours, minutes,
        secret,
    };
    pub use alloc::borrow::ToOwned;
    pub use alloc::boxed::Box;
    pub use alloc::string::{String, ToString};
    pub use alloc::vec::Vec;
    pub use alloc::{format, vec};
}

#[doc(hidden)]
pub mod __private {
    pub use alloc::format;
    pub use alloc::string::String;
    pub use alloc::vec::Vec;
    pub use wit_bindgen;
}

// Without std nothing links wasi-libc, yet compiler-generated code calls its pure `memcpy`,
// `memcmp` and friends; linking it supplies them and imports nothing.
#[cfg(target_arch = "wasm32")]
#[link(name = "c")]
unsafe extern "C" {}

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: bump::BumpAllocator = bump::BumpAllocator::new();

/// The canonical ABI's allocator entry point. Under std the standard library exports it;
/// plugins are `no_std`, so the SDK does, over the global allocator.
///
/// # Safety
/// Called only by the component model's canonical ABI, with a pointer this function returned.
#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cabi_realloc(old_ptr: *mut u8, old_len: usize, align: usize, new_len: usize) -> *mut u8 {
    use alloc::alloc::{Layout, alloc, realloc};
    if new_len == 0 {
        return align as *mut u8;
    }
    // SAFETY: the canonical ABI passes a power-of-two alignment and, for a non-empty old
    // block, the pointer and length it was given by an earlier call.
    let ptr = unsafe {
        if old_len == 0 {
            alloc(Layout::from_size_align_unchecked(new_len, align))
        } else {
            realloc(old_ptr, Layout::from_size_align_unchecked(old_len, align), new_len)
        }
    };
    if ptr.is_null() {
        core::arch::wasm32::unreachable()
    }
    ptr
}

/// Reports the panic to the host log (which turns it into the call's error) and traps.
#[cfg(target_arch = "wasm32")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    log::report_panic(info);
    core::arch::wasm32::unreachable()
}
