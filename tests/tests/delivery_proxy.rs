//! A proxy in the host's environment must not carry an adapter's request past the check
//! that refuses private addresses: the proxy would resolve the name and connect itself.
//! (Its own test binary, since it sets the process's environment.)

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rekindle_journeys::delivery::{ChannelConfig, Deliverer, DeliveryError};
use rekindle_runtime::wit::{Field, Message, Value};

#[tokio::test]
async fn a_proxy_from_the_environment_is_not_used() {
    // A "proxy" that counts who connects to it.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = proxy.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = proxy.accept().await {
            counted.fetch_add(1, Ordering::Relaxed);
            drop(socket);
        }
    });
    // SAFETY: this test binary runs this one test; nothing reads the environment meanwhile.
    unsafe {
        for name in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
            std::env::set_var(name, format!("http://{address}"));
        }
    }
    let registry = rekindle_tests::registry(&[("channel-sendgrid", rekindle_tests::components::CHANNEL_SENDGRID)]);
    let mut config = ChannelConfig::new("channel-sendgrid");
    let text = |name: &str, value: &str| Field { name: name.into(), value: Value::Text(value.into()) };
    // `localhost` resolves to loopback, which this channel does not allow.
    config.params = vec![text("base_url", "http://localhost:9"), text("from_email", "shop@example.com")];
    config.allowed_hosts = vec!["http://localhost:9".into()];
    config.secrets = HashMap::from([("SENDGRID_API_KEY".to_string(), "SG.never-sent".to_string())]);
    config.max_attempts = 1;
    let deliverer = Deliverer::new(HashMap::from([("email".to_string(), config)])).unwrap();
    let message = Message {
        idempotency_key: "k".into(),
        profile_id: "p".into(),
        to: "ann@example.com".into(),
        subject: None,
        text: "hi".into(),
        html: None,
        link: None,
        image: None,
        data: vec![],
    };
    let err = deliverer.deliver(&registry, "email", &message).await.unwrap_err();
    assert!(matches!(&err, DeliveryError::PrivateAddress(why) if why.contains("localhost")), "{err}");
    assert_eq!(connections.load(Ordering::Relaxed), 0, "the request went to the proxy");
}
