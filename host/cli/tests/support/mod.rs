//! Helpers shared by the CLI tests: the binary, and `rekindle serve` on a free port.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn rekindle() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rekindle"))
}

pub fn run(command: &mut Command) -> Output {
    command.output().expect("spawning rekindle")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `rekindle serve` with `args` on a free port; returns it with its base URL once
/// `/health` answers.
pub async fn serve(args: &[&OsStr], token: &str) -> (Server, String) {
    serve_with_env(args, token, &[]).await
}

/// As [`serve`], with extra environment variables.
pub async fn serve_with_env(args: &[&OsStr], token: &str, env: &[(&str, &str)]) -> (Server, String) {
    let port = free_port();
    let server = Server(
        rekindle()
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("REKINDLE_ADMIN_TOKEN", token)
            .envs(env.iter().copied())
            // REKINDLE_TEST_HOST_LOGS=1 shows the hosts' logs, to see why a test failed.
            .stdout(if std::env::var_os("REKINDLE_TEST_HOST_LOGS").is_some() { Stdio::inherit() } else { Stdio::null() })
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_until_up(&format!("{base}/health"), "rekindle serve", Duration::from_secs(60)).await;
    (server, base)
}

/// Waits until `url` answers at all, failing the test after `patience`.
pub async fn wait_until_up(url: &str, what: &str, patience: Duration) {
    let started = Instant::now();
    while reqwest::get(url).await.is_err() {
        assert!(started.elapsed() < patience, "{what} did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `plugins` directory under `dir` holding every shipped rule and tile component, named
/// as `scripts/build-plugins` names them.
pub fn shipped_plugins(dir: &Path) -> PathBuf {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    for (name, path) in rekindle_tests::components::ALL {
        if name.starts_with("rule-") || name.starts_with("tiles-") || name.starts_with("channel-") {
            std::fs::copy(path, plugins.join(format!("{}.wasm", name.replace('-', "_")))).unwrap();
        }
    }
    plugins
}
