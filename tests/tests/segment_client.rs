//! Segment's official Python library, pointed at Rekindle with nothing changed but the
//! host, sends identify, track, page and a gzip batch; the profile shows them merged.
//!
//! `scripts/test` installs the library into `target/pyenv`. Without it this test fails
//! rather than skips: compatibility with the official clients is a promise, not an extra.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rekindle_runtime::Registry;
use rekindle_server::{AppState, Ingestion, app};
use rekindle_store::{EventMapping, Store};
use serde_json::Value;

fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("REKINDLE_PYTHON") {
        return path.into();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    root.join("target/pyenv/bin/python")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_library_works_unchanged() {
    let python = python();
    assert!(python.exists(), "{} is missing: run scripts/test, which installs segment-analytics-python there", python.display());
    let data = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&data.path().join("rekindle.db"), EventMapping::default()).unwrap();
    let sources = [("py-key".to_string(), rekindle_server::Source::server("python"))].into_iter().collect();
    let state = AppState::new(Arc::new(Registry::new(rekindle_tests::patient_runtime())), None, Some("admin".into()))
        .with_ingestion(Ingestion { store: store.into(), sources });
    let base = rekindle_tests::serve(app(state)).await;

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/segment_python.py");
    let (python, host) = (python.clone(), base.clone());
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::task::spawn_blocking(move || Command::new(python).arg(script).env("REKINDLE_HOST", host).env("REKINDLE_WRITE_KEY", "py-key").output()),
    )
    .await
    .expect("the Python client hung")
    .unwrap()
    .unwrap();
    assert!(output.status.success(), "python failed:\n{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));

    let profile: Value = reqwest::Client::new().get(format!("{base}/v1/profiles/py-anon")).bearer_auth("admin").send().await.unwrap().json().await.unwrap();
    assert_eq!(profile["user_ids"], serde_json::json!(["py-user"]), "{profile}");
    assert_eq!(profile["traits"]["first_name"], "Py");
    assert_eq!(profile["timezone"], "Europe/Berlin");
    assert_eq!(profile["consents"]["email"]["granted"], true);
    assert_eq!(profile["computed"]["order_count"], 2);
    assert_eq!(profile["computed"]["lifetime_value"], 35.5);
    // Clock-skew correction moves the event by the send latency only: milliseconds here.
    let first = chrono::DateTime::parse_from_rfc3339(profile["computed"]["first_order_at"].as_str().unwrap()).unwrap();
    let drift = (first.timestamp_millis() - 1_767_225_600_000).abs();
    assert!(drift < 5_000, "first order placed {drift} ms from 2026-01-01");
    assert_eq!(profile["computed"]["favourite_category"], "shoes");
    let names: Vec<&str> = profile["recent_events"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"Page Viewed"), "{names:?}");
}
