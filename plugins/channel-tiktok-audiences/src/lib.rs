//! TikTok audiences through the Business API segment mapping (`POST
//! /open_api/v1.3/segment/mapping/`, `action` add or delete), by SHA-256 email and phone.
//! TikTok answers HTTP 200 with a `code`; 0 is success. The token is
//! `secret("TIKTOK_ACCESS_TOKEN")`.
#![no_std]

use rekindle_sdk::prelude::*;
use rekindle_sdk::{AdPlatform, hash_email, hash_phone};
use serde_json::json;

/// TikTok's rate-limit code, the one failure worth retrying.
const RATE_LIMITED: i64 = 40100;

/// The adapter; callable natively for tests.
pub struct TikTokAudiences;

impl Channel for TikTokAudiences {
    fn describe() -> AdapterInfo {
        AdapterInfo::new("tiktok-audiences", env!("CARGO_PKG_VERSION"), "TikTok audiences by hashed email and phone", ChannelKind::AdAudience)
            .consent(Purpose::Ads)
            .host("business-api.tiktok.com")
            .secret("TIKTOK_ACCESS_TOKEN")
            .param(ParamSpec::text("base_url", "https://business-api.tiktok.com", "TikTok's Business API root"))
            .param(ParamSpec::text("advertiser_id", "", "The advertiser account owning the audience"))
            .param(ParamSpec::text("default_country_code", "1", "Country calling code for phone numbers without one"))
    }

    fn sync_audience(ctx: &Context, change: &AudienceChange) -> Result<Vec<HttpRequest>, String> {
        let advertiser = ctx.text("advertiser_id")?;
        if advertiser.is_empty() {
            return Err("parameter `advertiser_id` names the TikTok advertiser account".into());
        }
        let country = ctx.text("default_country_code")?;
        let url = format!("{}/open_api/v1.3/segment/mapping/", ctx.text("base_url")?.trim_end_matches('/'));
        let mut requests = Vec::new();
        for (action, members) in [("add", &change.add), ("delete", &change.remove)] {
            if members.is_empty() {
                continue;
            }
            let id = |hash: Option<String>| match hash {
                Some(h) => json!({"id": h, "audience_ids": [change.audience]}),
                None => json!({}),
            };
            let batch: Vec<serde_json::Value> = members
                .iter()
                .map(|m| {
                    json!([
                        id(m.emails.first().and_then(|e| hash_email(AdPlatform::TikTok, e))),
                        id(m.phones.first().and_then(|p| hash_phone(AdPlatform::TikTok, p, country))),
                    ])
                })
                .collect();
            let body = json!({"advertiser_ids": [advertiser], "action": action, "id_schema": ["EMAIL_SHA256", "PHONE_SHA256"], "batch_data": batch});
            requests.push(
                HttpRequest::new(HttpMethod::Post, url.clone())
                    .header("access-token", secret("TIKTOK_ACCESS_TOKEN"))
                    .header("content-type", "application/json")
                    .body(serde_json::to_vec(&body).map_err(|e| e.to_string())?),
            );
        }
        Ok(requests)
    }

    fn interpret(_ctx: &Context, _request: &HttpRequest, response: &HttpResponse) -> Outcome {
        let json: Option<serde_json::Value> = serde_json::from_slice(&response.body).ok();
        let code = json.as_ref().and_then(|j| j["code"].as_i64());
        let message = || json.as_ref().and_then(|j| j["message"].as_str()).unwrap_or("").to_string();
        match (response.status, code) {
            (200..=299, Some(0)) => Outcome::Delivered(json.as_ref().and_then(|j| j["request_id"].as_str()).map(String::from)),
            (200..=299, Some(RATE_LIMITED)) => Outcome::RetryLater(rekindle_sdk::Retry { after_seconds: None, reason: message() }),
            (200..=299, _) => Outcome::Failed(format!("TikTok code {}: {}", code.unwrap_or(-1), message())),
            _ => Outcome::from_status(response),
        }
    }
}

rekindle_sdk::export_channel!(TikTokAudiences);

#[cfg(test)]
mod tests {
    use rekindle_sdk::sha256_hex;

    use super::*;

    fn ctx() -> Context {
        let text = |name: &str, value: &str| Field { name: name.into(), value: Value::Text(value.into()) };
        Context { now: 0, params: vec![text("base_url", "http://127.0.0.1:9300"), text("advertiser_id", "7001"), text("default_country_code", "1")] }
    }

    #[test]
    fn maps_members_with_tiktok_hashes() {
        let ann = AudienceMember { profile_id: "ann".into(), emails: vec!["ANN@example.com".into()], phones: vec!["(555) 123-4567".into()] };
        let change = AudienceChange { audience: "aud-9".into(), add: vec![ann], remove: vec![] };
        let requests = TikTokAudiences::sync_audience(&ctx(), &change).unwrap();
        assert_eq!(requests.len(), 1, "nothing to remove, no delete request");
        let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
        assert_eq!(body["action"], "add");
        // TikTok's phone form is E.164 with the plus.
        assert_eq!(body["batch_data"][0][0], json!({"id": sha256_hex("ann@example.com"), "audience_ids": ["aud-9"]}));
        assert_eq!(body["batch_data"][0][1]["id"], sha256_hex("+15551234567"));
    }

    #[test]
    fn reads_tiktok_codes() {
        let request = HttpRequest::new(HttpMethod::Post, "x");
        let respond = |body: &str| HttpResponse { status: 200, headers: vec![], body: body.as_bytes().to_vec() };
        assert!(matches!(TikTokAudiences::interpret(&ctx(), &request, &respond(r#"{"code": 0, "request_id": "r1"}"#)), Outcome::Delivered(Some(_))));
        assert!(matches!(TikTokAudiences::interpret(&ctx(), &request, &respond(r#"{"code": 40100, "message": "slow down"}"#)), Outcome::RetryLater(_)));
        assert!(matches!(TikTokAudiences::interpret(&ctx(), &request, &respond(r#"{"code": 40001, "message": "bad"}"#)), Outcome::Failed(_)));
    }
}
