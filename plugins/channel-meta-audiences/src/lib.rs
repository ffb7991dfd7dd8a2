//! Meta Custom Audiences (`POST` to add, `DELETE` to remove, `/{audience-id}/users`). Each
//! member goes as a row of normalised SHA-256 email and phone under the `EMAIL`, `PHONE`
//! schema; the access token is `secret("META_ACCESS_TOKEN")`. The audience name a journey
//! uses is the Custom Audience id.
#![no_std]

use rekindle_sdk::prelude::*;
use rekindle_sdk::{AdPlatform, hash_email, hash_phone};
use serde_json::json;

/// Meta takes at most 10,000 rows per request.
const BATCH: usize = 10_000;

/// The adapter; callable natively for tests.
pub struct MetaAudiences;

impl Channel for MetaAudiences {
    fn describe() -> AdapterInfo {
        AdapterInfo::new("meta-audiences", env!("CARGO_PKG_VERSION"), "Meta Custom Audiences by hashed email and phone", ChannelKind::AdAudience)
            .consent(Purpose::Ads)
            .host("graph.facebook.com")
            .secret("META_ACCESS_TOKEN")
            .param(ParamSpec::text("base_url", "https://graph.facebook.com/v21.0", "The Graph API root, with its version"))
            .param(ParamSpec::text("default_country_code", "1", "Country calling code for phone numbers without one"))
    }

    fn sync_audience(ctx: &Context, change: &AudienceChange) -> Result<Vec<HttpRequest>, String> {
        if change.audience.is_empty() || !change.audience.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("the audience must be a Meta Custom Audience id (digits), got `{}`", change.audience));
        }
        let country = ctx.text("default_country_code")?;
        let url = format!("{}/{}/users", ctx.text("base_url")?.trim_end_matches('/'), change.audience);
        let mut requests = Vec::new();
        for (method, members) in [(HttpMethod::Post, &change.add), (HttpMethod::Delete, &change.remove)] {
            let rows: Vec<serde_json::Value> = members.iter().flat_map(|m| rows(m, country)).collect();
            for chunk in rows.chunks(BATCH) {
                let body = json!({"payload": {"schema": ["EMAIL", "PHONE"], "data": chunk}});
                requests.push(
                    HttpRequest::new(method, url.clone())
                        .header("authorization", format!("Bearer {}", secret("META_ACCESS_TOKEN")))
                        .header("content-type", "application/json")
                        .body(serde_json::to_vec(&body).map_err(|e| e.to_string())?),
                );
            }
        }
        Ok(requests)
    }
}

/// One row per identifier pair; a member with two emails and one phone gives two rows.
fn rows(member: &AudienceMember, country: &str) -> Vec<serde_json::Value> {
    let emails: Vec<String> = member.emails.iter().filter_map(|e| hash_email(AdPlatform::Meta, e)).collect();
    let phones: Vec<String> = member.phones.iter().filter_map(|p| hash_phone(AdPlatform::Meta, p, country)).collect();
    let count = emails.len().max(phones.len());
    (0..count).map(|i| json!([emails.get(i).cloned().unwrap_or_default(), phones.get(i).cloned().unwrap_or_default()])).collect()
}

rekindle_sdk::export_channel!(MetaAudiences);

#[cfg(test)]
mod tests {
    use rekindle_sdk::sha256_hex;

    use super::*;

    fn ctx() -> Context {
        let text = |name: &str, value: &str| Field { name: name.into(), value: Value::Text(value.into()) };
        Context { now: 0, params: vec![text("base_url", "http://127.0.0.1:9200/v21.0"), text("default_country_code", "44")] }
    }

    fn member(email: &str, phone: &str) -> AudienceMember {
        AudienceMember { profile_id: "p".into(), emails: vec![email.into()], phones: vec![phone.into()] }
    }

    #[test]
    fn adds_and_removes_hashed_rows() {
        let change =
            AudienceChange { audience: "238712".into(), add: vec![member(" Ann@Example.com ", "07700 900123")], remove: vec![member("bob@example.com", "")] };
        let requests = MetaAudiences::sync_audience(&ctx(), &change).unwrap();
        assert_eq!((requests[0].method, requests[1].method), (HttpMethod::Post, HttpMethod::Delete));
        assert_eq!(requests[0].url, "http://127.0.0.1:9200/v21.0/238712/users");
        let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
        assert_eq!(body["payload"]["schema"], json!(["EMAIL", "PHONE"]));
        // Meta's phone form: digits with the country code and no plus.
        assert_eq!(body["payload"]["data"][0], json!([sha256_hex("ann@example.com"), sha256_hex("447700900123")]));
        let removed: serde_json::Value = serde_json::from_slice(&requests[1].body).unwrap();
        assert_eq!(removed["payload"]["data"][0], json!([sha256_hex("bob@example.com"), ""]));
        assert!(MetaAudiences::sync_audience(&ctx(), &AudienceChange { audience: "lapsing".into(), add: vec![], remove: vec![] }).is_err());
    }
}
