//! Builds every plugin under `plugins/` and `tests/hostile/` for wasm32-wasip2, once per
//! change, and emits one path constant per component for the tests and benchmarks.
//!
//! The nested cargo uses its own target directory (`target/wasm`, shared with
//! `scripts/build-plugins`), since the outer build holds the lock on the main one.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn crates_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("Cargo.toml").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest.parent().expect("tests/ sits in the workspace root").to_path_buf();
    for watched in ["plugins", "tests/hostile", "guest-sdk", "wit", "Cargo.lock", ".cargo"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let crates: Vec<String> = [crates_in(&root.join("plugins")), crates_in(&root.join("tests/hostile"))].concat();
    let target_dir = root.join("target/wasm");

    let mut cargo = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .current_dir(&root)
        .args(["build", "--profile", "plugin", "--target", "wasm32-wasip2", "--quiet"])
        .env("CARGO_TARGET_DIR", &target_dir)
        // Flags meant for the host build must not leak into the guest build.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        // Under `cargo clippy` the host build runs through clippy-driver with its own
        // flags; the plugins are built as plain rustc builds, once, whichever command ran.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CLIPPY_ARGS");
    for name in &crates {
        cargo.args(["-p", name]);
    }
    let status = cargo.status().expect("running cargo for the plugins");
    if !status.success() {
        panic!(
            "building the plugins for wasm32-wasip2 failed (see above); \
             is the target installed? `rustup target add wasm32-wasip2`"
        );
    }

    let out_dir = target_dir.join("wasm32-wasip2/plugin");
    let mut consts = String::new();
    let mut all = String::from("/// Every built component: (crate name, path).\npub const ALL: &[(&str, &str)] = &[\n");
    for name in &crates {
        let path = out_dir.join(format!("{}.wasm", name.replace('-', "_")));
        assert!(path.exists(), "cargo built {name} but {} is missing", path.display());
        let ident = name.replace('-', "_").to_uppercase();
        consts.push_str(&format!("/// The component built from `{name}`.\npub const {ident}: &str = {:?};\n", path.display().to_string()));
        all.push_str(&format!("    ({name:?}, {ident}),\n"));
    }
    all.push_str("];\n");
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo")).join("components.rs");
    std::fs::write(out, consts + &all).expect("writing components.rs");
}
