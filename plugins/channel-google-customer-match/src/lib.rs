//! Google Customer Match through the Data Manager API (`audienceMembers:ingest` to add,
//! `audienceMembers:remove` to remove), with SHA-256 hex email and phone. The OAuth token is
//! `secret("GOOGLE_ACCESS_TOKEN")`; the audience a journey names is the user list id.
#![no_std]

use rekindle_sdk::prelude::*;
use rekindle_sdk::{AdPlatform, hash_email, hash_phone};
use serde_json::json;

/// The API takes at most 10,000 members per request.
const BATCH: usize = 10_000;

/// The adapter; callable natively for tests.
pub struct GoogleCustomerMatch;

impl Channel for GoogleCustomerMatch {
    fn describe() -> AdapterInfo {
        AdapterInfo::new("google-customer-match", env!("CARGO_PKG_VERSION"), "Google Customer Match by hashed email and phone", ChannelKind::AdAudience)
            .consent(Purpose::Ads)
            .host("datamanager.googleapis.com")
            .secret("GOOGLE_ACCESS_TOKEN")
            .param(ParamSpec::text("base_url", "https://datamanager.googleapis.com", "The Data Manager API root"))
            .param(ParamSpec::text("customer_id", "", "The Google Ads account (digits, no dashes) owning the list"))
            .param(ParamSpec::text("default_country_code", "1", "Country calling code for phone numbers without one"))
    }

    fn sync_audience(ctx: &Context, change: &AudienceChange) -> Result<Vec<HttpRequest>, String> {
        let customer = ctx.text("customer_id")?;
        if customer.is_empty() || !customer.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("parameter `customer_id` must be the Google Ads account's digits, got `{customer}`"));
        }
        let country = ctx.text("default_country_code")?;
        let base = ctx.text("base_url")?.trim_end_matches('/');
        let destination = json!([{"operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": customer}, "productDestinationId": change.audience}]);
        let mut requests = Vec::new();
        for (verb, members) in [("ingest", &change.add), ("remove", &change.remove)] {
            let members: Vec<serde_json::Value> = members
                .iter()
                .filter_map(|m| {
                    let mut ids: Vec<serde_json::Value> =
                        m.emails.iter().filter_map(|e| hash_email(AdPlatform::Google, e)).map(|h| json!({"emailAddress": h})).collect();
                    ids.extend(m.phones.iter().filter_map(|p| hash_phone(AdPlatform::Google, p, country)).map(|h| json!({"phoneNumber": h})));
                    (!ids.is_empty()).then(|| json!({"userData": {"userIdentifiers": ids}}))
                })
                .collect();
            for chunk in members.chunks(BATCH) {
                let mut body = json!({"destinations": destination, "audienceMembers": chunk, "encoding": "HEX"});
                if verb == "ingest" {
                    // The host only adds customers who granted the ads purpose.
                    body["consent"] = json!({"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_GRANTED"});
                    body["termsOfService"] = json!({"customerMatchTermsOfServiceStatus": "ACCEPTED"});
                }
                requests.push(
                    HttpRequest::new(HttpMethod::Post, format!("{base}/v1/audienceMembers:{verb}"))
                        .header("authorization", format!("Bearer {}", secret("GOOGLE_ACCESS_TOKEN")))
                        .header("content-type", "application/json")
                        .body(serde_json::to_vec(&body).map_err(|e| e.to_string())?),
                );
            }
        }
        Ok(requests)
    }

    fn interpret(_ctx: &Context, _request: &HttpRequest, response: &HttpResponse) -> Outcome {
        let json: Option<serde_json::Value> = serde_json::from_slice(&response.body).ok();
        match response.status {
            200..=299 => Outcome::Delivered(json.as_ref().and_then(|j| j["requestId"].as_str()).map(String::from)),
            _ => Outcome::from_status(response),
        }
    }
}

rekindle_sdk::export_channel!(GoogleCustomerMatch);

#[cfg(test)]
mod tests {
    use rekindle_sdk::sha256_hex;

    use super::*;

    fn ctx() -> Context {
        let text = |name: &str, value: &str| Field { name: name.into(), value: Value::Text(value.into()) };
        Context { now: 0, params: vec![text("base_url", "http://127.0.0.1:9400"), text("customer_id", "1234567890"), text("default_country_code", "1")] }
    }

    #[test]
    fn ingests_and_removes_with_google_hashes() {
        let ann = AudienceMember { profile_id: "ann".into(), emails: vec!["A.nn@gmail.com".into()], phones: vec!["+1 555 123 4567".into()] };
        let change = AudienceChange { audience: "555".into(), add: vec![ann.clone()], remove: vec![ann] };
        let requests = GoogleCustomerMatch::sync_audience(&ctx(), &change).unwrap();
        assert_eq!(requests[0].url, "http://127.0.0.1:9400/v1/audienceMembers:ingest");
        assert_eq!(requests[1].url, "http://127.0.0.1:9400/v1/audienceMembers:remove");
        let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
        assert_eq!(body["destinations"][0]["productDestinationId"], "555");
        // Google drops dots from Gmail local parts before hashing.
        assert_eq!(body["audienceMembers"][0]["userData"]["userIdentifiers"][0]["emailAddress"], sha256_hex("ann@gmail.com"));
        assert_eq!(body["audienceMembers"][0]["userData"]["userIdentifiers"][1]["phoneNumber"], sha256_hex("+15551234567"));
        let removal: serde_json::Value = serde_json::from_slice(&requests[1].body).unwrap();
        assert!(removal.get("consent").is_none());
        let mut bad = ctx();
        bad.params[1].value = Value::Text("123-456".into());
        assert!(GoogleCustomerMatch::sync_audience(&bad, &change).unwrap_err().contains("`customer_id`"));
    }
}
