//! The SQLite store directly: identity merges, last-write-wins, erasure and group commit.

use rekindle_store::{EventMapping, Message, MessageKind, Store};
use serde_json::{Map, Value, json};

fn msg(id: &str, user: Option<&str>, anonymous: Option<&str>, event: Option<&str>, at: i64, traits: Value, properties: Value) -> Message {
    let object = |v: Value| v.as_object().cloned().unwrap_or_else(Map::new);
    Message {
        source: "web".into(),
        message_id: id.into(),
        kind: if event.is_some() { MessageKind::Track } else { MessageKind::Identify },
        user_id: user.map(Into::into),
        anonymous_id: anonymous.map(Into::into),
        previous_id: None,
        event: event.map(Into::into),
        properties: object(properties),
        traits: object(traits),
        timestamp: at,
        received_at: at,
        timezone: None,
        consents: vec![],
        push_token: None,
    }
}

#[tokio::test]
async fn anonymous_history_merges_into_the_user_on_login() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("db.sqlite"), EventMapping::default()).unwrap();
    store.ingest(vec![msg("a", Some("bob"), None, None, 1, json!({"plan": "old"}), json!({}))]).await.unwrap();
    store.ingest(vec![msg("b", None, Some("phone"), Some("Order Completed"), 2, json!({}), json!({"total": 15}))]).await.unwrap();
    store.ingest(vec![msg("c", None, Some("phone"), None, 3, json!({"plan": "new"}), json!({}))]).await.unwrap();
    store
        .ingest(vec![msg("d", Some("bob"), Some("phone"), Some("Order Completed"), 4, json!({}), json!({"revenue": 5}))])
        .await
        .unwrap();
    let p = store.profile("bob", 10).await.unwrap().unwrap();
    assert_eq!(p.anonymous_ids, ["phone"]);
    assert_eq!(p.computed.order_count, 2);
    assert_eq!(p.computed.lifetime_value, 20.0);
    assert_eq!(p.traits.iter().find(|t| t.0 == "plan").map(|t| t.1.clone()), Some(json!("new")));
    assert_eq!(store.table_counts().await.unwrap().iter().find(|t| t.0 == "profiles").unwrap().1, 1);
}

#[tokio::test]
async fn concurrent_writers_share_commits_and_each_gets_its_answer() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(Store::open_sqlite(&dir.path().join("db.sqlite"), EventMapping::default()).unwrap());
    let mut tasks = Vec::new();
    for i in 0..50 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let user = format!("u{}", i % 5);
            store.ingest(vec![msg(&format!("m{i}"), Some(&user), None, Some("Order Completed"), i, json!({}), json!({"revenue": 1}))]).await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().accepted, 1);
    }
    for u in 0..5 {
        assert_eq!(store.profile(&format!("u{u}"), 0).await.unwrap().unwrap().computed.order_count, 10);
    }
}
