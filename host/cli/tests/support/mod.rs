//! Helpers shared by the CLI tests: the binary, and `rekindle serve` on a free port.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
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

/// Starts `rekindle serve` with `args` on a port of its own choosing; returns it with its
/// base URL once `/health` answers.
pub async fn serve(args: &[&OsStr], token: &str) -> (Server, String) {
    serve_with_env(args, token, &[]).await
}

/// How `rekindle serve` logs its address.
const LISTENING: &str = "rekindle::serve: listening on http://";

/// As [`serve`], with extra environment variables.
///
/// The host binds port 0 and the address comes from its log. A port picked here and bound
/// there later could be taken meanwhile by another test's host, and this test would then
/// talk to the wrong one.
pub async fn serve_with_env(args: &[&OsStr], token: &str, env: &[(&str, &str)]) -> (Server, String) {
    let mut child = rekindle()
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("REKINDLE_ADMIN_TOKEN", token)
        .env("NO_COLOR", "1")
        // The address line must be logged whatever filter the caller set.
        .env("RUST_LOG", format!("{},rekindle::serve=info", std::env::var("RUST_LOG").unwrap_or_else(|_| "info,cranelift=warn,wasmtime=warn".into())))
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    // What the host says on stderr (a start-up error, say), for the failure's message.
    let said: Arc<Mutex<String>> = Arc::default();
    let heard = said.clone();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            let mut heard = heard.lock().unwrap();
            if heard.len() < 16 * 1024 {
                heard.push_str(&line);
                heard.push('\n');
            }
        }
    });
    let server = Server(child);
    let (found, address) = std::sync::mpsc::channel();
    // Drains the log for the host's whole life, so a full pipe never blocks it.
    // REKINDLE_TEST_HOST_LOGS=1 shows the hosts' logs, to see why a test failed.
    std::thread::spawn(move || {
        let show = std::env::var_os("REKINDLE_TEST_HOST_LOGS").is_some();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            // The serve module's own line: a plugin's log could say anything.
            if let Some(at) = line.find(LISTENING) {
                let url: String = line[at + LISTENING.len() - "http://".len()..].chars().take_while(|c| !c.is_whitespace()).collect();
                let _ = found.send(url);
            }
            if show {
                println!("{line}");
            }
        }
    });
    let started = Instant::now();
    let base = loop {
        match address.try_recv() {
            Ok(base) => break base,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                // The log closed: the host exited. Give its stderr a moment to arrive.
                std::thread::sleep(Duration::from_millis(200));
                panic!("rekindle serve exited before it listened; it said:\n{}", said.lock().unwrap())
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                assert!(started.elapsed() < Duration::from_secs(60), "rekindle serve did not listen within 60 s");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
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
