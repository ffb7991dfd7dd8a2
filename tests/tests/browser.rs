//! The shipped example page in headless Chromium (Debian `chromium`, installed by
//! scripts/test): served from its own origin, it loads `/v1/tiles.js` from a running host,
//! renders the visitor's personal tile, and a real mouse click on it lands as a
//! `Promo Clicked` event on the visitor's profile, beside the `Promo Viewed` impression.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rekindle_runtime::Registry;
use rekindle_server::{AppState, Ingestion, app};
use rekindle_tests::Backend;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const ADMIN: &str = "admin";
/// The write key the example page carries.
const WRITE_KEY: &str = "demo-write-key";
/// The identity secret of examples/demo.toml, which signed the page's user id.
const DEMO_IDENTITY_SECRET: &[u8] = b"demo-identity-secret-change-me-0123";

/// The Chromium binary, or `None` outside CI when it is not installed; in CI a missing
/// browser fails the test.
fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("REKINDLE_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|name| which(name)));
    assert!(found.is_some() || std::env::var_os("CI").is_none(), "Chromium is missing: scripts/test installs the Debian package");
    if found.is_none() {
        eprintln!("skipping: no chromium on PATH (scripts/test installs it)");
    }
    found
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file()))
}

struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    port: u16,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn launch(binary: &PathBuf) -> Browser {
    let profile = tempfile::tempdir().unwrap();
    let child = Command::new(binary)
        .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .args(["--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromium");
    // Chromium writes the port it picked to DevToolsActivePort in its profile directory.
    let started = Instant::now();
    let port = loop {
        if let Ok(text) = std::fs::read_to_string(profile.path().join("DevToolsActivePort"))
            && let Some(port) = text.lines().next().and_then(|l| l.trim().parse().ok())
        {
            break port;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "chromium did not open its debugging port");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Browser { child, _profile: profile, port }
}

/// A Chrome DevTools Protocol session with one page.
struct Page {
    socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    next_id: u64,
}

impl Page {
    async fn open(browser: &Browser) -> Page {
        let targets: Value = reqwest::get(format!("http://127.0.0.1:{}/json/list", browser.port)).await.unwrap().json().await.unwrap();
        let page = targets.as_array().unwrap().iter().find(|t| t["type"] == "page").expect("a page target");
        let (socket, _) = tokio_tungstenite::connect_async(page["webSocketDebuggerUrl"].as_str().unwrap()).await.unwrap();
        Page { socket, next_id: 0 }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.socket.send(Message::text(json!({"id": id, "method": method, "params": params}).to_string())).await.unwrap();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(30), self.socket.next()).await.expect("CDP answer").unwrap().unwrap();
            let Message::Text(text) = message else { continue };
            let reply: Value = serde_json::from_str(&text).unwrap();
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// Evaluates a JavaScript expression in the page and returns its JSON value.
    async fn eval(&mut self, expression: &str) -> Value {
        self.call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true})).await["result"]["value"].clone()
    }
}

/// The links of the tiles the page renders, once it renders any (JSON text).
async fn rendered_links(page: &mut Page) -> Value {
    let started = Instant::now();
    loop {
        let rendered = page.eval("JSON.stringify(Array.from(document.querySelectorAll('.rekindle-tile')).map(a => a.getAttribute('href')))").await;
        if rendered.as_str().is_some_and(|r| r != "[]") {
            return rendered;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no tile rendered; page: {}", page.eval("document.body.innerHTML").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Serves the shipped example page, pointed at `host`, from its own origin.
async fn serve_page(host: &str) -> String {
    let page = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/tiles/index.html")).unwrap();
    assert!(page.contains("http://127.0.0.1:8080/v1/tiles.js"), "the example page loads the snippet from the demo host");
    let page = page.replace("http://127.0.0.1:8080", host);
    let router = axum::Router::new().route("/tiles/", axum::routing::get(move || async move { axum::response::Html(page) }));
    rekindle_tests::serve(router).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_page_renders_a_personal_tile_and_reports_the_click() {
    let Some(binary) = chromium() else { return };
    let data = tempfile::tempdir().unwrap();
    let page_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host_origin = format!("http://{}", page_listener.local_addr().unwrap());
    // The page's origin is only known once it is served, and the host must allow it; so
    // the page server starts first on a port the host is then told about.
    let page_origin = serve_page(&host_origin).await;

    let registry = Arc::new(Registry::new(rekindle_tests::patient_runtime()));
    registry.install("tiles-basic", &rekindle_tests::component(rekindle_tests::components::TILES_BASIC)).unwrap();
    registry.install("rule-high-ltv", &rekindle_tests::component(rekindle_tests::components::RULE_HIGH_LTV)).unwrap();
    let store = rekindle_tests::open_store(Backend::Sqlite, data.path()).await.unwrap();
    // The page was signed with the demo's identity secret: the two must not drift apart.
    let demo = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/demo.toml")).unwrap();
    assert!(
        demo.contains(&format!("identity_secret = \"{}\"", std::str::from_utf8(DEMO_IDENTITY_SECRET).unwrap())),
        "examples/demo.toml changed its identity secret"
    );
    let sources = [(WRITE_KEY.to_string(), rekindle_server::Source::browser("web", Some(DEMO_IDENTITY_SECRET)))].into_iter().collect();
    let state = AppState::new(registry, None, Some(ADMIN.into()))
        .with_ingestion(Ingestion { store: store.into(), sources })
        .with_tile_origins(vec![page_origin.clone()]);
    tokio::spawn(async move { axum::serve(page_listener, app(state)).await.unwrap() });

    let http = reqwest::Client::new();
    let admin = |path: &str, body: Value| http.post(format!("{host_origin}{path}")).bearer_auth(ADMIN).json(&body).send();
    let batch = json!({"batch": [
        {"type": "identify", "messageId": "m1", "userId": "user-1", "traits": {"first_name": "Maya"}},
        {"type": "track", "messageId": "m2", "userId": "user-1", "event": "Order Completed", "properties": {"revenue": 900}},
    ]});
    assert!(http.post(format!("{host_origin}/v1/batch")).basic_auth(WRITE_KEY, Some("")).json(&batch).send().await.unwrap().status().is_success());
    for (path, body) in [
        ("/v1/segments", json!({"name": "VIP", "slot": "rule-high-ltv"})),
        ("/v1/tile-slots", json!({"name": "home-hero", "fallback": [{"title": "Our sale", "link": "/sale"}]})),
        ("/v1/tile-slots", json!({"name": "home-sidebar", "max_tiles": 2})),
        (
            "/v1/offers",
            json!({"id": "vip", "slot": "home-hero", "include_segments": ["VIP"], "title": "Early access for {{first_name|you}}",
                              "voucher": "VIP20", "link": format!("{page_origin}/vip")}),
        ),
        ("/v1/offers", json!({"id": "generic", "slot": "home-hero", "title": "New arrivals", "link": format!("{page_origin}/new")})),
    ] {
        let response = admin(path, body).await.unwrap();
        assert!(response.status().is_success(), "{path}: {}", response.text().await.unwrap());
    }

    let browser = launch(&binary).await;
    let mut page = Page::open(&browser).await;
    page.call("Page.navigate", json!({"url": format!("{page_origin}/tiles/")})).await;
    let started = Instant::now();
    let title = loop {
        let title = page.eval("(document.querySelector('[data-rekindle-slot=\"home-hero\"] .rekindle-title') || {}).textContent || null").await;
        if let Value::String(title) = title {
            break title;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no tile rendered; page: {}", page.eval("document.body.innerHTML").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(title, "Early access for Maya");
    assert_eq!(page.eval("document.querySelector('.rekindle-voucher').textContent").await, "VIP20");

    // A real click at the tile's centre, as a visitor's mouse would.
    let rect = page.eval("JSON.stringify(document.querySelector('[data-rekindle-slot=\"home-hero\"] .rekindle-tile').getBoundingClientRect())").await;
    let rect: Value = serde_json::from_str(rect.as_str().unwrap()).unwrap();
    let (x, y) = (rect["x"].as_f64().unwrap() + rect["width"].as_f64().unwrap() / 2.0, rect["y"].as_f64().unwrap() + rect["height"].as_f64().unwrap() / 2.0);
    for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
        page.call("Input.dispatchMouseEvent", json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})).await;
    }

    let started = Instant::now();
    loop {
        let profile: Value = http.get(format!("{host_origin}/v1/profiles/user-1?events=20")).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
        let events = profile["recent_events"].as_array().cloned().unwrap_or_default();
        let named = |name: &str| events.iter().find(|e| e["name"] == name).cloned();
        if let (Some(clicked), Some(viewed)) = (named("Promo Clicked"), named("Promo Viewed")) {
            assert_eq!(clicked["properties"]["offer_id"], "vip", "{clicked}");
            assert_eq!(clicked["properties"]["slot"], "home-hero");
            assert_eq!(clicked["properties"]["decision_id"], viewed["properties"]["decision_id"]);
            assert_eq!(clicked["properties"]["decision_id"].as_str().unwrap().len(), 24);
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no click event on the profile: {profile}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Defence in depth: a host (or an edge, or anything in between) that answers with a
/// `javascript:` or protocol-relative link must still not get it into the shop's page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snippet_refuses_links_that_are_not_http_urls_or_site_paths() {
    let Some(binary) = chromium() else { return };
    let tile = |id: &str, link: &str, image: Option<&str>| json!({"decision_id": format!("d-{id}"), "offer_id": id, "title": id, "body": "", "image": image, "link": link, "voucher": null, "plugin": null});
    let answer = json!({"decisions": [{"slot": "home-hero", "fallback": false, "tiles": [
        tile("script", "javascript:document.title='owned'", None),
        tile("elsewhere", "//evil.example/login", None),
        tile("backslash", "/\\evil.example/login", None),
        tile("data-image", "/ok", Some("data:image/svg+xml,<svg onload=alert(1)>")),
        tile("safe", "/sale", None),
    ]}]});
    // Stands in for a compromised host: the real snippet, and a decision no host would give.
    let snippet = include_str!("../../host/server/assets/tiles.js");
    let router = axum::Router::new()
        .route("/v1/tiles.js", axum::routing::get(move || async move { ([("content-type", "text/javascript")], snippet) }))
        .route("/v1/tiles", axum::routing::post(move || async move { ([("access-control-allow-origin", "*")], axum::Json(answer.clone())) }))
        .route("/v1/track", axum::routing::post(|| async { ([("access-control-allow-origin", "*")], "{}") }));
    let host = rekindle_tests::serve(router).await;
    let page_origin = serve_page(&host).await;

    let browser = launch(&binary).await;
    let mut page = Page::open(&browser).await;
    page.call("Page.navigate", json!({"url": format!("{page_origin}/tiles/")})).await;
    let rendered = rendered_links(&mut page).await;
    assert_eq!(rendered, "[\"/sale\"]");
    assert_eq!(page.eval("document.querySelectorAll('img').length").await, 0);
}

/// An edge that marks its answer stale (the visitor's token predates the catalog) gets
/// the origin's answer instead, once, and the origin's fresh token is kept; when the
/// origin cannot answer, the edge's answer stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_edge_answer_is_replaced_by_the_origins_once() {
    let Some(binary) = chromium() else { return };
    let tile = |id: &str, link: &str| json!({"decision_id": format!("d-{id}"), "offer_id": id, "title": id, "body": "", "image": null, "link": link, "voucher": null, "plugin": null});
    let from_edge = json!({"decisions": [{"slot": "home-hero", "fallback": false, "stale": true, "tiles": [tile("edge", "/from-edge")]}]});
    let from_origin = json!({"decisions": [{"slot": "home-hero", "fallback": false, "tiles": [tile("origin", "/from-origin")]}]});
    let snippet = include_str!("../../host/server/assets/tiles.js");
    let origin_asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for origin_answers in [true, false] {
        let asked = origin_asked.clone();
        let answer = from_origin.clone();
        let router = axum::Router::new()
            .route("/v1/tiles.js", axum::routing::get(move || async move { ([("content-type", "text/javascript")], snippet) }))
            .route(
                "/v1/tiles",
                axum::routing::post(move || {
                    let (asked, answer) = (asked.clone(), answer.clone());
                    async move {
                        asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let status = if origin_answers { axum::http::StatusCode::OK } else { axum::http::StatusCode::SERVICE_UNAVAILABLE };
                        (
                            status,
                            [("access-control-allow-origin", "*"), ("access-control-expose-headers", "x-rekindle-token"), ("x-rekindle-token", "fresh-token")],
                            axum::Json(answer),
                        )
                    }
                }),
            )
            .route("/v1/track", axum::routing::post(|| async { ([("access-control-allow-origin", "*")], "{}") }));
        let host = rekindle_tests::serve(router).await;
        let edge_answer = from_edge.clone();
        let page = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/tiles/index.html")).unwrap();
        // The edge sits on the shop's own origin, as a site would route it.
        let edge_router = axum::Router::new()
            .route(
                "/tiles/",
                axum::routing::get({
                    let host = host.clone();
                    move |headers: axum::http::HeaderMap| {
                        let origin = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or_default().to_string();
                        let page = page.replace("http://127.0.0.1:8080/v1/tiles.js\"", &format!("{host}/v1/tiles.js\" data-edge-url=\"http://{origin}/edge\""));
                        async move { axum::response::Html(page) }
                    }
                }),
            )
            .route("/edge/v1/tiles", axum::routing::post(move || async move { axum::Json(edge_answer.clone()) }));
        let shop = rekindle_tests::serve(edge_router).await;

        let browser = launch(&binary).await;
        let mut page = Page::open(&browser).await;
        page.call("Page.navigate", json!({"url": format!("{shop}/tiles/")})).await;
        let rendered = rendered_links(&mut page).await;
        if origin_answers {
            assert_eq!(rendered, "[\"/from-origin\"]");
            assert!(page.eval("document.cookie").await.as_str().unwrap().contains("rekindle_token=fresh-token"));
        } else {
            assert_eq!(rendered, "[\"/from-edge\"]", "the edge's answer stands when the origin cannot answer");
        }
    }
    assert_eq!(origin_asked.load(std::sync::atomic::Ordering::SeqCst), 2, "the origin is asked once per page");
}
