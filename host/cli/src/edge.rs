//! `rekindle edge build`: a bundle for Cloudflare Workers–compatible runtimes that decides
//! promo tiles without calling the origin. It holds the slots' promo-tiles components and
//! the edge segments' rule components, transpiled with jco (core modules imported
//! statically, as Workers require), the worker script, and a snapshot of slots and offers.

pub mod instrument;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, bail};
use serde_json::Value;

/// The jco release bundles are built with; a bundle's JavaScript depends on it.
pub const JCO: &str = "@bytecodealliance/jco@1.35.0";
/// The workerd release the conformance test and `workerd.capnp` are checked against.
pub const WORKERD: &str = "workerd@1.20261117.1";

const WORKER_JS: &str = include_str!("../assets/edge/worker.js");

/// Flags for `rekindle edge build`.
#[derive(clap::Args)]
pub struct BuildArgs {
    /// Where to write the bundle; created if missing, its old contents replaced.
    #[arg(long)]
    out: PathBuf,
    /// The host to take slots, offers, segments and components from.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The host's admin token.
    #[arg(long, env = "REKINDLE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
}

/// Where Node tools live: `REKINDLE_EDGE_TOOLS`, or a cache directory in the home.
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("REKINDLE_EDGE_TOOLS") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("rekindle/edge-tools")
}

/// The path of a Node tool's executable, installing the pinned packages with npm first
/// when it is missing.
pub fn tool(name: &str) -> anyhow::Result<PathBuf> {
    let dir = tools_dir();
    let bin = dir.join("node_modules/.bin").join(name);
    if bin.exists() {
        return Ok(bin);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    eprintln!("installing {JCO} and {WORKERD} into {} (once)...", dir.display());
    let status = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
        .arg(&dir)
        .args([JCO, WORKERD])
        .status()
        .context("running npm; the edge build needs Node.js and npm (Debian: apt-get install nodejs npm)")?;
    if !status.success() || !bin.exists() {
        bail!("npm could not install {JCO} and {WORKERD} into {}", dir.display());
    }
    Ok(bin)
}

/// The body of an admin GET, or an error naming the URL and what the host said.
fn get(url: &str, token: &str) -> anyhow::Result<Vec<u8>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60)).build()?;
        let response = http.get(url).bearer_auth(token).send().await.with_context(|| format!("fetching {url}"))?;
        let status = response.status();
        let body = response.bytes().await?;
        if !status.is_success() {
            bail!("{url}: {status} {}", String::from_utf8_lossy(&body));
        }
        Ok(body.to_vec())
    })
}

/// Builds the bundle and prints a one-line summary.
pub fn build(args: BuildArgs) -> anyhow::Result<()> {
    let base = args.url.trim_end_matches('/');
    let snapshot: Value = serde_json::from_slice(&get(&format!("{base}/admin/edge/snapshot"), &args.admin_token)?)?;
    let version = snapshot["version"].as_u64().unwrap_or_default();
    if version != rekindle_tiles::edge::SNAPSHOT_VERSION {
        bail!(
            "{base} sends an edge snapshot of version {version}; this rekindle builds bundles from version {}. Use the same release of rekindle for the host and the build",
            rekindle_tiles::edge::SNAPSHOT_VERSION
        );
    }
    let plugins = snapshot["plugins"].as_object().context("the snapshot lists no plugins")?.clone();
    if snapshot["slots"].as_array().is_none_or(Vec::is_empty) {
        bail!("{base} defines no tile slots; define one (POST /v1/tile-slots) before building an edge bundle");
    }
    let jco = tool("jco")?;

    let out = &args.out;
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(out.join("components")).with_context(|| format!("creating {}", out.display()))?;
    let scratch = tempfile::tempdir()?;
    let mut imports = String::new();
    let mut table = String::from("export const components = {\n");
    let mut modules = Vec::new();
    for (i, (slot, info)) in plugins.iter().enumerate() {
        let bytes = get(&format!("{base}/admin/slots/{slot}/component"), &args.admin_token)?;
        let digest: String = sha2_hex(&bytes);
        if Some(digest.as_str()) != info["digest"].as_str() {
            bail!("slot `{slot}` changed while the bundle was being built; build again");
        }
        let name = format!("c{i}");
        let limits = &snapshot["limits"][info["kind"].as_str().unwrap_or_default()];
        let Prepared { cores, restorable, fuel } = prepare(&jco, scratch.path(), out, &name, slot, &bytes, limits)?;
        writeln!(imports, "import {{ instantiate as {name} }} from \"./components/{name}.js\";")?;
        modules.push(format!("components/{name}.js"));
        write!(table, "  {slot:?}: {{ instantiate: {name}, restorable: {restorable}, fuel: {fuel}, shimFuel: {SHIM_FUEL}, modules: {{")?;
        for (k, core) in cores.iter().enumerate() {
            writeln!(imports, "import {name}_{k} from \"./components/{core}\";")?;
            write!(table, " {core:?}: {name}_{k},")?;
            modules.push(format!("components/{core}"));
        }
        writeln!(table, " }} }},")?;
    }
    table.push_str("};\n");
    let header = "// Generated by `rekindle edge build`: the transpiled components, by registry slot.\n";
    std::fs::write(out.join("components.js"), format!("{header}{imports}\n{table}"))?;
    std::fs::write(out.join("worker.js"), WORKER_JS)?;
    std::fs::write(out.join("snapshot.json"), serde_json::to_string_pretty(&snapshot)?)?;
    std::fs::write(out.join("workerd.capnp"), workerd_config(&modules))?;
    std::fs::write(out.join("wrangler.toml"), WRANGLER)?;
    println!(
        "edge bundle in {}: {} slot(s), {} offer(s), {} edge segment(s), {} component(s)",
        out.display(),
        snapshot["slots"].as_array().map_or(0, Vec::len),
        snapshot["offers"].as_array().map_or(0, Vec::len),
        snapshot["segments"].as_array().map_or(0, Vec::len),
        plugins.len()
    );
    Ok(())
}

/// A slot's component ready for the bundle.
struct Prepared {
    /// The core modules' file names, in jco's order.
    cores: Vec<String>,
    /// Whether restoring memories and globals isolates its calls (else a fresh instance each).
    restorable: bool,
    fuel: i64,
}

/// Transpiles a slot's component with jco into `out/components` as `name`, and
/// instruments each core module for the slot kind's deadline and memory cap.
fn prepare(
    jco: &std::path::Path,
    scratch: &std::path::Path,
    out: &std::path::Path,
    name: &str,
    slot: &str,
    bytes: &[u8],
    limits: &Value,
) -> anyhow::Result<Prepared> {
    let input = scratch.join(format!("{name}.wasm"));
    std::fs::write(&input, bytes)?;
    let output = Command::new(jco)
        .arg("transpile")
        .arg(&input)
        .args(["--name", name, "--instantiation", "sync", "--no-typescript", "--no-nodejs-compat", "--base64-cutoff", "0", "--quiet"])
        .arg("-o")
        .arg(out.join("components"))
        .output()
        .with_context(|| format!("running {}", jco.display()))?;
    if !output.status.success() {
        bail!("jco could not transpile slot `{slot}`: {}", String::from_utf8_lossy(&output.stderr));
    }
    let mut cores: Vec<String> = std::fs::read_dir(out.join("components"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with(&format!("{name}.")) && f.ends_with(".wasm"))
        .collect();
    cores.sort();
    // Fuel for the deadline, the memory cap, and the snapshot restored before each call.
    let fuel = fuel_for(limits["deadline_ms"].as_i64().context("the snapshot gives no deadline for this kind")?);
    let cap = limits["memory_bytes"].as_u64().context("the snapshot gives no memory cap for this kind")?;
    // State in jco's glue (resources, tasks) is out of the snapshot's reach.
    let glue = instrument::glue_state(bytes).with_context(|| format!("slot `{slot}` cannot run at the edge"))?;
    let mut restorable = glue.is_none();
    let mut memories = 0;
    for core in &cores {
        let path = out.join("components").join(core);
        let rewritten = instrument::instrument(&std::fs::read(&path)?, fuel, cap).with_context(|| format!("slot `{slot}` cannot run at the edge"))?;
        restorable &= rewritten.restorable;
        memories += usize::from(rewritten.defines_memory);
        std::fs::write(&path, rewritten.bytes)?;
    }
    // The host's memory cap is for the whole instance; the edge caps one memory.
    if memories > 1 {
        bail!("slot `{slot}` cannot run at the edge: its component defines {memories} memories; the edge runs components with one");
    }
    Ok(Prepared { cores, restorable, fuel })
}

/// Units of fuel per millisecond of a call's deadline. One unit covers one instruction;
/// once compiled, workerd runs the hostile endless loop through about this many a
/// millisecond, so a looping call stops close to its deadline, while the shipped tile
/// plugin's whole decision takes 63,000 units, a fortieth of a tile call's budget.
/// Measured in BENCHMARKS.md ("A deadline at the edge").
const FUEL_PER_MS: i64 = 250_000;

/// Fuel for each call in a core module that defines no memory: the small modules that
/// connect a component's imports run a few instructions per import call. A component that
/// hides a loop in one gets only this much of it, so it cannot double its budget.
const SHIM_FUEL: i64 = 100_000;

fn fuel_for(deadline_ms: i64) -> i64 {
    deadline_ms.max(1).saturating_mul(FUEL_PER_MS)
}

fn sha2_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

const WRANGLER: &str = r#"# Deploy with `npx wrangler deploy` from this directory, after
# `npx wrangler secret put REKINDLE_TOKEN_SECRET` (the host's [tiles] token_secret).
name = "rekindle-tiles"
main = "worker.js"
compatibility_date = "2025-09-01"

[[rules]]
type = "CompiledWasm"
globs = ["**/*.wasm"]
fallthrough = false
"#;

/// A workerd configuration serving the bundle: `workerd serve workerd.capnp`, with the
/// secret in `REKINDLE_TOKEN_SECRET`.
fn workerd_config(modules: &[String]) -> String {
    let mut list = String::from(
        "      (name = \"worker.js\", esModule = embed \"worker.js\"),\n      (name = \"components.js\", esModule = embed \"components.js\"),\n      (name = \"snapshot.json\", json = embed \"snapshot.json\"),\n",
    );
    for module in modules {
        let kind = if module.ends_with(".wasm") { "wasm" } else { "esModule" };
        let _ = writeln!(list, "      (name = {module:?}, {kind} = embed {module:?}),");
    }
    format!(
        r#"# Generated by `rekindle edge build`. Run: workerd serve workerd.capnp
# (REKINDLE_TOKEN_SECRET in the environment; --socket-addr http=HOST:PORT to move it).
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [(name = "rekindle", worker = .worker)],
  sockets = [(name = "http", address = "127.0.0.1:8787", http = (), service = "rekindle")],
);

const worker :Workerd.Worker = (
  modules = [
{list}  ],
  compatibilityDate = "2025-09-01",
  bindings = [
    (name = "REKINDLE_TOKEN_SECRET", fromEnvironment = "REKINDLE_TOKEN_SECRET"),
    (name = "REKINDLE_CONFORMANCE", fromEnvironment = "REKINDLE_CONFORMANCE"),
  ],
);
"#
    )
}
