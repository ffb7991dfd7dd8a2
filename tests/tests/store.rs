//! The store directly, on SQLite and on PostgreSQL: identity merges and concurrent writers.

use std::sync::Arc;

use rekindle_store::{EventNeed, InputNeeds, Message, MessageKind, Product, Scope, VerdictWrite};
use rekindle_tests::Backend;

rekindle_tests::on_each_backend!(
    anonymous_history_merges_into_the_user_on_login,
    concurrent_writers_each_get_their_answer,
    bulk_rule_inputs_page_through_everyone_with_what_rules_declared,
    related_products_are_bought_together_then_from_favourite_categories,
    a_resting_address_comes_back_when_its_suppression_expires_and_a_permanent_one_when_lifted,
    a_browser_login_cannot_carry_an_unsubscribe_onto_someone_else
);
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
        from_browser: false,
    }
}

async fn anonymous_history_merges_into_the_user_on_login(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = rekindle_tests::open_store(backend, dir.path()).await else { return };
    store.ingest(vec![msg("a", Some("bob"), None, None, 1, json!({"plan": "old"}), json!({}))]).await.unwrap();
    store.ingest(vec![msg("b", None, Some("phone"), Some("Order Completed"), 2, json!({}), json!({"total": 15}))]).await.unwrap();
    store.ingest(vec![msg("c", None, Some("phone"), None, 3, json!({"plan": "new"}), json!({}))]).await.unwrap();
    store.ingest(vec![msg("d", Some("bob"), Some("phone"), Some("Order Completed"), 4, json!({}), json!({"revenue": 5}))]).await.unwrap();
    let p = store.profile("bob", 10).await.unwrap().unwrap();
    assert_eq!(p.anonymous_ids, ["phone"]);
    assert_eq!(p.computed.order_count, 2);
    assert_eq!(p.computed.lifetime_value, 20.0);
    assert_eq!(p.traits.iter().find(|t| t.0 == "plan").map(|t| t.1.clone()), Some(json!("new")));
    assert_eq!(store.table_counts().await.unwrap().iter().find(|t| t.0 == "profiles").unwrap().1, 1);
}

/// SQLite commits concurrent requests together; PostgreSQL runs them in parallel
/// transactions serialised per identity. Either way each caller gets its own answer and no
/// order is lost or doubled, even with many writers on the same five people.
async fn concurrent_writers_each_get_their_answer(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = rekindle_tests::open_store(backend, dir.path()).await else { return };
    let store = Arc::new(store);
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

/// Two hosts on one PostgreSQL database, ingesting for the same people at once, agree on
/// every profile afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_share_one_postgres_database() {
    let Some(url) = rekindle_tests::fresh_postgres_database().await else { return };
    let mapping = rekindle_store::EventMapping::default;
    let a = Arc::new(rekindle_store::Store::open_postgres(&url, mapping()).await.unwrap());
    let b = Arc::new(rekindle_store::Store::open_postgres(&url, mapping()).await.unwrap());
    let mut tasks = Vec::new();
    for i in 0..40 {
        let host = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            // The anonymous id is shared by both hosts' messages for each person.
            let user = format!("u{}", i % 4);
            let anonymous = format!("anon-{}", i % 4);
            let anonymous = (i % 3 == 0).then_some(anonymous.as_str());
            let message = msg(&format!("m{i}"), Some(&user), anonymous, Some("Order Completed"), i, json!({}), json!({"revenue": 2}));
            host.ingest(vec![message]).await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().accepted, 1);
    }
    for u in 0..4 {
        let from_a = a.profile(&format!("u{u}"), 100).await.unwrap().unwrap();
        let from_b = b.profile(&format!("anon-{u}"), 100).await.unwrap().unwrap();
        assert_eq!(from_a, from_b);
        assert_eq!(from_a.computed.order_count, 10);
        assert_eq!(from_a.computed.lifetime_value, 20.0);
    }
    assert_eq!(a.table_counts().await.unwrap().iter().find(|t| t.0 == "profiles").unwrap().1, 4);
}

/// The events behind computed traits are configurable: a shop that sends `Purchase` with a
/// `amount` property gets the same traits.
#[tokio::test]
async fn a_custom_event_mapping_feeds_the_computed_traits() {
    let dir = tempfile::tempdir().unwrap();
    let mapping = rekindle_store::EventMapping {
        order_completed: "Purchase".into(),
        revenue_properties: vec!["amount".into()],
        products_property: "items".into(),
        category_property: "department".into(),
        product_id_property: "sku".into(),
    };
    let store = rekindle_store::Store::open_sqlite(&dir.path().join("db"), mapping).unwrap();
    let purchase = msg("p1", Some("ivy"), None, Some("Purchase"), 5, json!({}), json!({"amount": 12.5, "items": [{"department": "garden"}]}));
    let order = msg("p2", Some("ivy"), None, Some("Order Completed"), 6, json!({}), json!({"revenue": 99}));
    store.ingest(vec![purchase, order]).await.unwrap();
    let p = store.profile("ivy", 0).await.unwrap().unwrap();
    assert_eq!((p.computed.order_count, p.computed.lifetime_value), (1, 12.5));
    assert_eq!(p.computed.favourite_category().as_deref(), Some("garden"));
}

/// The bulk read behind scheduled runs gives each profile exactly what the per-profile
/// reads would: events in the window, the latest `limit`, properties only when asked, and
/// current memberships; pages cover everyone once; ids resolve userIds.
async fn bulk_rule_inputs_page_through_everyone_with_what_rules_declared(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = rekindle_tests::open_store(backend, dir.path()).await else { return };
    let mut batch = Vec::new();
    for user in 0..25 {
        let who = format!("user-{user:02}");
        batch.push(msg(&format!("{who}-id"), Some(&who), None, None, 1, json!({"first_name": format!("N{user}")}), json!({})));
        for k in 0..user % 4 {
            let at = 1_000 * (k + 1) as i64;
            batch.push(msg(&format!("{who}-o{k}"), Some(&who), None, Some("Order Completed"), at, json!({}), json!({"revenue": 10, "k": k})));
        }
        batch.push(msg(&format!("{who}-v"), Some(&who), None, Some("Page Viewed"), 500, json!({}), json!({})));
    }
    store.ingest(batch).await.unwrap();
    let bob = store.profile("user-03", 0).await.unwrap().unwrap().id;
    let written = store
        .record_verdicts(
            vec![VerdictWrite {
                segment: "vip".into(),
                profile_id: bob.clone(),
                member: true,
                label: Some("gold".into()),
                reason: "because".into(),
                digest: "d".into(),
            }],
            9,
        )
        .await
        .unwrap();
    assert_eq!(written, 1);

    let needs = InputNeeds {
        traits: true,
        computed: true,
        events: vec![
            EventNeed { name: "Order Completed".into(), since: 1_500, until: 10_000, limit: Some(1), properties: true },
            EventNeed { name: "Page Viewed".into(), since: 0, until: 10_000, limit: None, properties: false },
        ],
        ..InputNeeds::default()
    };
    let (mut seen, mut after) = (Vec::new(), String::new());
    loop {
        let page = store.rule_inputs(Scope::After { after: after.clone(), limit: 7 }, needs.clone()).await.unwrap();
        let Some(last) = page.last() else { break };
        assert!(page.len() <= 7);
        after = last.id.clone();
        seen.extend(page);
    }
    assert_eq!(seen.len(), 25, "every profile once");
    let inputs = store.rule_inputs(Scope::Ids(vec!["user-03".into(), "nobody".into(), bob.clone()]), needs.clone()).await.unwrap();
    assert_eq!(inputs.len(), 1, "a userId resolves, unknown ids are skipped, each person once");
    let three = &inputs[0];
    assert_eq!(seen.iter().find(|p| p.id == bob), Some(three), "both scopes read the same");
    assert_eq!(three.traits, [("first_name".to_string(), json!("N3"))]);
    assert_eq!(three.computed.order_count, 3);
    // Orders at 1000, 2000, 3000: the window drops the first, the limit keeps the latest.
    assert_eq!(three.events[0], [(3_000, json!({"revenue": 10, "k": 2}))]);
    assert_eq!(three.events[1], [(500, Value::Null)], "properties only when asked");
    assert_eq!(three.memberships.len(), 1);
    assert_eq!((three.memberships[0].label.as_deref(), three.memberships[0].since), (Some("gold"), 9));
    assert!(three.consents.is_empty() && three.contacts.is_empty(), "sections not asked for stay empty");
    let none = seen.iter().find(|p| p.traits[0].1 == json!("N0")).unwrap();
    assert_eq!((none.computed.order_count, none.events[0].len()), (0, 0));
}

/// Recommendations for a message: products others bought together with this customer's
/// purchases (most orders first), then their favourite categories; never something they
/// bought, never out of stock.
async fn related_products_are_bought_together_then_from_favourite_categories(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = rekindle_tests::open_store(backend, dir.path()).await else { return };
    let product = |id: &str, category: &str, in_stock: bool| Product {
        id: id.into(),
        name: id.to_uppercase(),
        category: Some(category.into()),
        price: Some(10.0),
        url: None,
        image: None,
        in_stock,
    };
    store
        .upsert_products(vec![
            product("boot", "shoes", true),
            product("sock", "shoes", true),
            product("lace", "shoes", true),
            product("sandal", "shoes", false),
            product("scarf", "accessories", true),
            product("belt", "accessories", true),
            product("hat", "accessories", true),
            product("tee", "tops", true),
        ])
        .await
        .unwrap();
    let order = |id: &str, user: &str, items: &[(&str, &str)]| {
        let products: Vec<Value> = items.iter().map(|(p, c)| json!({"product_id": p, "category": c})).collect();
        msg(id, Some(user), None, Some("Order Completed"), 1, json!({}), json!({"revenue": 10, "products": products}))
    };
    store
        .ingest(vec![
            // Others: boots go with socks (twice) and with a scarf (once).
            order("o1", "x", &[("boot", "shoes"), ("sock", "shoes")]),
            order("o2", "y", &[("boot", "shoes"), ("sock", "shoes"), ("scarf", "accessories")]),
            order("o3", "z", &[("boot", "shoes"), ("sandal", "shoes")]),
            // Ann bought boots, and accessories most of all.
            order("a1", "ann", &[("boot", "shoes")]),
            order("a2", "ann", &[("hat", "accessories")]),
            order("a3", "ann", &[("hat", "accessories"), ("belt", "accessories")]),
        ])
        .await
        .unwrap();
    let ids = |products: Vec<Product>| products.into_iter().map(|p| p.id).collect::<Vec<_>>();
    // sock (2 orders with boots), scarf (1); sandal is out of stock; then accessories she has
    // not bought (none left after scarf), then shoes: lace.
    assert_eq!(ids(store.related_products("ann", 10).await.unwrap()), ["sock", "scarf", "lace"]);
    assert_eq!(ids(store.related_products("ann", 1).await.unwrap()), ["sock"]);
    assert!(store.related_products("nobody", 10).await.unwrap().is_empty());
}

async fn a_resting_address_comes_back_when_its_suppression_expires_and_a_permanent_one_when_lifted(backend: Backend) {
    use rekindle_store::{Suppress, SuppressTarget};
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = rekindle_tests::open_store(backend, dir.path()).await else { return };
    let now = rekindle_store::now_ms();
    store.ingest(vec![msg("i", Some("ann"), None, None, now, json!({"email": "ann@example.com", "phone": "+15550000001"}), json!({}))]).await.unwrap();
    let active = |kind: &'static str| {
        let store = &store;
        async move { store.profile("ann", 0).await.unwrap().unwrap().contacts.iter().any(|c| c.kind == kind && c.active) }
    };
    let contact = |kind: &str| SuppressTarget::Contact { kind: kind.into(), address: None };
    // A soft bounce rests the address for a while; here, two seconds.
    let soft = Suppress { target: contact("email"), reason: "soft bounce".into(), detail: None, expires_at: Some(rekindle_store::now_ms() + 2_000) };
    assert_eq!(store.suppress("ann", "email", "k1", soft, now).await.unwrap(), 1);
    assert!(!active("email").await, "resting");
    let hard = Suppress { target: contact("phone"), reason: "hard bounce".into(), detail: Some("30006".into()), expires_at: None };
    assert_eq!(store.suppress("ann", "sms", "k2", hard, now).await.unwrap(), 1);
    assert!(!active("phone").await);
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    assert!(active("email").await, "a soft bounce expires by itself");
    assert!(!active("phone").await, "a hard bounce holds");
    let live = store.suppressions(0, 10, false, rekindle_store::now_ms()).await.unwrap();
    assert_eq!(live.iter().map(|s| s.target.as_str()).collect::<Vec<_>>(), ["phone:+15550000001"]);
    assert_eq!(store.suppressions(0, 10, true, rekindle_store::now_ms()).await.unwrap().len(), 2);
    let lifted = store.lift_suppression(live[0].id, "ops", rekindle_store::now_ms()).await.unwrap().unwrap();
    assert_eq!(lifted.lifted_by.as_deref(), Some("ops"));
    assert!(active("phone").await, "lifted");
    assert!(store.lift_suppression(live[0].id, "ops", rekindle_store::now_ms()).await.unwrap().is_none());
    // Nobody by that id: nothing recorded.
    let nobody = Suppress { target: contact("email"), reason: "hard bounce".into(), detail: None, expires_at: None };
    assert_eq!(store.suppress("nobody", "email", "k3", nobody, now).await.unwrap(), 0);
}

async fn a_browser_login_cannot_carry_an_unsubscribe_onto_someone_else(backend: Backend) {
    use rekindle_store::{Purpose, Suppress, SuppressTarget};
    let dir = tempfile::tempdir().unwrap();
    let Some(store) = rekindle_tests::open_store(backend, dir.path()).await else { return };
    let now = rekindle_store::now_ms();
    let mut victim = msg("v", Some("victim"), None, None, now - 10, json!({"email": "victim@example.com"}), json!({}));
    victim.consents = vec![(Purpose::Email, true)];
    let anonymous = msg("a", None, Some("anon-1"), Some("Page Viewed"), now - 5, json!({}), json!({}));
    store.ingest(vec![victim, anonymous]).await.unwrap();
    // The attacker's anonymous profile got itself unsubscribed...
    let off = Suppress { target: SuppressTarget::Consent(Purpose::Email), reason: "unsubscribed".into(), detail: None, expires_at: None };
    assert_eq!(store.suppress("anon-1", "email", "k", off, now).await.unwrap(), 1);
    // ...and a browser key now says it is the victim logging in.
    let mut login = msg("l", Some("victim"), Some("anon-1"), None, now, json!({}), json!({}));
    login.from_browser = true;
    store.ingest(vec![login]).await.unwrap();
    let victim = store.profile("victim", 0).await.unwrap().unwrap();
    assert!(victim.anonymous_ids.contains(&"anon-1".to_string()), "merged: {victim:?}");
    assert!(victim.consents.iter().any(|c| c.purpose == Purpose::Email && c.granted), "{:?}", victim.consents);
    assert!(store.suppressions(0, 10, true, now).await.unwrap().is_empty(), "the suppression went with the anonymous profile");
}
