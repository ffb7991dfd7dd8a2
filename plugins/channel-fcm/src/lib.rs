//! Push through Firebase Cloud Messaging HTTP v1 (`POST /v1/projects/{id}/messages:send`).
//! The OAuth access token is `secret("FCM_ACCESS_TOKEN")`, filled in by the host.
//!
//! FCM cannot be asked whether a message arrived, so a send a crash left in doubt is sent
//! again. Each notification carries a tag (Android) and a collapse id (iOS) derived from
//! the idempotency key, so a repeat replaces the first while that is still on show. One
//! already dismissed, or handled by an app in the foreground, is seen twice.
#![no_std]

use rekindle_sdk::prelude::*;
use serde_json::json;

/// The adapter; callable natively for tests.
pub struct Fcm;

impl Channel for Fcm {
    fn describe() -> AdapterInfo {
        AdapterInfo::new("fcm", env!("CARGO_PKG_VERSION"), "Push through FCM HTTP v1", ChannelKind::Push)
            .contact(ContactKind::PushToken)
            .consent(Purpose::Push)
            .host("fcm.googleapis.com")
            .secret("FCM_ACCESS_TOKEN")
            .param(ParamSpec::text("base_url", "https://fcm.googleapis.com", "FCM's API root"))
            .param(ParamSpec::text("project_id", "", "The Firebase project"))
    }

    fn deliver(ctx: &Context, message: &Message) -> Result<Vec<HttpRequest>, String> {
        let project = ctx.text("project_id")?;
        if project.is_empty() || project.contains('/') {
            return Err(format!("parameter `project_id` must name the Firebase project, got `{project}`"));
        }
        let mut notification = json!({"title": message.subject.as_deref().unwrap_or(""), "body": message.text});
        if let Some(image) = &message.image {
            notification["image"] = json!(image);
        }
        // FCM data values must be strings.
        let mut data = serde_json::Map::new();
        data.insert("idempotency_key".into(), json!(message.idempotency_key));
        if let Some(link) = &message.link {
            data.insert("link".into(), json!(link));
        }
        // 32 hex digits of the key's hash: within APNs' 64-byte collapse id limit.
        let collapse = &rekindle_sdk::sha256_hex(&message.idempotency_key)[..32];
        let body = json!({"message": {
            "token": message.to,
            "notification": notification,
            "data": data,
            "android": {"notification": {"tag": collapse}},
            "apns": {"headers": {"apns-collapse-id": collapse}},
        }});
        let url = format!("{}/v1/projects/{project}/messages:send", ctx.text("base_url")?.trim_end_matches('/'));
        Ok(vec![
            HttpRequest::new(HttpMethod::Post, url)
                .header("authorization", format!("Bearer {}", secret("FCM_ACCESS_TOKEN")))
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body).map_err(|e| e.to_string())?),
        ])
    }

    fn interpret(_ctx: &Context, _request: &HttpRequest, response: &HttpResponse) -> Outcome {
        let json: Option<serde_json::Value> = serde_json::from_slice(&response.body).ok();
        let status = json.as_ref().and_then(|j| j["error"]["status"].as_str()).unwrap_or("");
        match response.status {
            200..=299 => Outcome::Delivered(json.as_ref().and_then(|j| j["name"].as_str()).map(String::from)),
            // The token is no longer registered to an app install: stop pushing to it.
            404 | 400 if status == "NOT_FOUND" || status == "UNREGISTERED" || response.text().is_some_and(|t| t.contains("UNREGISTERED")) => {
                Outcome::NotEligible("the push token is no longer registered".into())
            }
            _ => Outcome::from_status(response),
        }
    }
}

rekindle_sdk::export_channel!(Fcm);

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        let text = |name: &str, value: &str| Field { name: name.into(), value: Value::Text(value.into()) };
        Context { now: 0, params: vec![text("base_url", "http://127.0.0.1:9100"), text("project_id", "shop-app")] }
    }

    fn message() -> Message {
        Message {
            idempotency_key: "run-1:send:push".into(),
            profile_id: "ann".into(),
            to: "fcm-token-1".into(),
            subject: Some("We miss you".into()),
            text: "10% off today".into(),
            html: None,
            link: Some("https://shop.example/sale".into()),
            image: Some("https://shop.example/i.jpg".into()),
            data: vec![],
        }
    }

    #[test]
    fn formats_messages_send() {
        let request = Fcm::deliver(&ctx(), &message()).unwrap().remove(0);
        assert_eq!(request.url, "http://127.0.0.1:9100/v1/projects/shop-app/messages:send");
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["message"]["token"], "fcm-token-1");
        assert_eq!(body["message"]["notification"], json!({"title": "We miss you", "body": "10% off today", "image": "https://shop.example/i.jpg"}));
        assert_eq!(body["message"]["data"]["link"], "https://shop.example/sale");
        // A repeat of the same send replaces the first on the device.
        let tag = body["message"]["android"]["notification"]["tag"].as_str().unwrap();
        assert_eq!(tag.len(), 32);
        assert_eq!(body["message"]["apns"]["headers"]["apns-collapse-id"], tag);
        let again: serde_json::Value = serde_json::from_slice(&Fcm::deliver(&ctx(), &message()).unwrap()[0].body).unwrap();
        assert_eq!(again["message"]["android"]["notification"]["tag"], tag);
        let mut no_project = ctx();
        no_project.params[1].value = Value::Text(String::new());
        assert!(Fcm::deliver(&no_project, &message()).unwrap_err().contains("`project_id`"));
    }

    #[test]
    fn unregistered_tokens_are_not_eligible() {
        let request = Fcm::deliver(&ctx(), &message()).unwrap().remove(0);
        let respond = |status, body: &str| HttpResponse { status, headers: vec![], body: body.as_bytes().to_vec() };
        assert_eq!(
            Fcm::interpret(&ctx(), &request, &respond(200, r#"{"name": "projects/shop-app/messages/1"}"#)),
            Outcome::Delivered(Some("projects/shop-app/messages/1".into()))
        );
        assert!(matches!(
            Fcm::interpret(&ctx(), &request, &respond(404, r#"{"error": {"status": "NOT_FOUND", "details": [{"errorCode": "UNREGISTERED"}]}}"#)),
            Outcome::NotEligible(_)
        ));
        assert!(matches!(Fcm::interpret(&ctx(), &request, &respond(503, "")), Outcome::RetryLater(_)));
    }
}
