//! The local test harness's call: a plugin called with JSON, answering in JSON, with
//! parameters merged and profiles cut exactly as the host does in production.

use serde_json::{Value as Json, json};

use crate::bindings::wit::HttpRequest;
use crate::error::CallError;
use crate::input::filter_profile;
use crate::json::{
    JsonError, audience_change_from_json, context_from_json, err, message_from_json, offer_from_json, profile_from_json, requests_to_json,
    tile_request_from_json, tiles_to_json, verdict_to_json,
};
use crate::kind::PluginInfo;
use crate::params::{ParamError, merge_params};
use crate::plugin::Plugin;
use crate::secrets::{SecretMarker, show_placeholders};

/// Why [`invoke`] could not produce an answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvokeError {
    /// A field of the input is missing or malformed.
    #[error(transparent)]
    Input(#[from] JsonError),
    /// An operator parameter does not fit the plugin's declaration.
    #[error(transparent)]
    Param(#[from] ParamError),
    /// The plugin failed.
    #[error(transparent)]
    Call(#[from] CallError),
}

fn field_or_null<'a>(input: &'a Json, key: &str) -> &'a Json {
    input.get(key).unwrap_or(&Json::Null)
}

/// `request` with the placeholders of `marker` written as `{{secret:NAME}}`.
fn shown_request(request: &HttpRequest, marker: Option<&SecretMarker>) -> HttpRequest {
    let Some(marker) = marker else { return request.clone() };
    let show = |text: &str| show_placeholders(text, marker);
    HttpRequest {
        method: request.method,
        url: show(&request.url),
        headers: request.headers.iter().map(|(k, v)| (k.clone(), show(v))).collect(),
        body: match std::str::from_utf8(&request.body) {
            Ok(text) => show(text).into_bytes(),
            Err(_) => request.body.clone(),
        },
    }
}

/// Calls a plugin with a JSON input and answers in JSON: the local test harness behind
/// `rekindle plugin run` and the admin API's invoke endpoint.
///
/// The input is `{"context": {...}}` plus, by kind: `"profile"` for a rule; `"request"`,
/// `"offers"` and an optional `"profile"` for tiles; `"message"` or `"audience_change"` for
/// a channel adapter. Parameters are merged over the plugin's defaults and profiles are cut
/// to its declared input, exactly as the host does in production.
pub fn invoke(plugin: &Plugin, input: &Json) -> Result<Json, InvokeError> {
    let mut ctx = context_from_json(field_or_null(input, "context"))?;
    match plugin.info() {
        PluginInfo::Rule(info) => {
            ctx.params = merge_params(&info.params, &ctx.params)?;
            let profile = profile_from_json(field_or_null(input, "profile"))?;
            let profile = filter_profile(&profile, &info.input, ctx.now);
            Ok(json!({ "verdict": verdict_to_json(&plugin.evaluate(&ctx, &profile)?) }))
        }
        PluginInfo::Tiles(info) => {
            ctx.params = merge_params(&info.params, &ctx.params)?;
            let request = tile_request_from_json(field_or_null(input, "request"))?;
            let profile = match input.get("profile") {
                None | Some(Json::Null) => None,
                Some(p) => Some(filter_profile(&profile_from_json(p)?, &info.input, ctx.now)),
            };
            let offers = match input.get("offers") {
                Some(Json::Array(items)) => {
                    items.iter().enumerate().map(|(i, o)| offer_from_json(o, &format!("offers[{i}]"))).collect::<Result<Vec<_>, _>>()?
                }
                _ => return Err(err("offers", "must be an array of offers").into()),
            };
            Ok(json!({ "tiles": tiles_to_json(&plugin.decide(&ctx, &request, profile.as_ref(), &offers)?) }))
        }
        PluginInfo::Channel(info) => {
            ctx.params = merge_params(&info.params, &ctx.params)?;
            let requests = if let Some(message) = input.get("message") {
                plugin.deliver(&ctx, &message_from_json(message)?)?
            } else if let Some(change) = input.get("audience_change") {
                plugin.sync_audience(&ctx, &audience_change_from_json(change)?)?
            } else {
                return Err(err("message", "a channel adapter needs `message` or `audience_change`").into());
            };
            // The author sees the placeholders as `{{secret:NAME}}`, without this call's marker.
            let shown: Vec<HttpRequest> = requests.requests.iter().map(|r| shown_request(r, requests.marker.as_ref())).collect();
            Ok(json!({ "requests": requests_to_json(&shown) }))
        }
    }
}
