//! `rekindle plugin inspect` and `rekindle plugin run`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use rekindle_runtime::{KindLimits, Plugin, Runtime, RuntimeConfig, json};
use serde_json::json;

fn load(file: &Path, deadline_ms: Option<u64>) -> anyhow::Result<Plugin> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let mut limits = KindLimits::default();
    if let Some(ms) = deadline_ms {
        limits = limits.with_deadline(Duration::from_millis(ms));
    }
    let runtime = Runtime::new(RuntimeConfig { max_instances: 4, limits, cache_dir: None, plugin_threads: 1 })
        .map_err(|e| anyhow::anyhow!("starting the WebAssembly engine: {e:#}"))?;
    Plugin::load(&runtime, &bytes).with_context(|| format!("{} cannot be loaded", file.display()))
}

pub fn inspect(file: &Path, as_json: bool, deadline_ms: Option<u64>) -> anyhow::Result<()> {
    let plugin = load(file, deadline_ms)?;
    let describe = json::info_to_json(plugin.info());
    if as_json {
        let report = json!({
            "file": file.display().to_string(),
            "world": plugin.kind().world(),
            "sha256": plugin.digest(),
            "size": plugin.size(),
            "imports": plugin.imports(),
            "describe": describe,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("file     {}", file.display());
    println!("world    rekindle:plugin/{}@0.1.0", plugin.kind().world());
    println!("name     {} {}", plugin.info().name(), plugin.info().version());
    println!("size     {} bytes", plugin.size());
    println!("sha256   {}", plugin.digest());
    println!("imports  {}", plugin.imports().join(", "));
    println!("describe {}", serde_json::to_string_pretty(&describe)?);
    Ok(())
}

pub fn run(file: &Path, input: &Path, deadline_ms: Option<u64>) -> anyhow::Result<()> {
    let plugin = load(file, deadline_ms)?;
    let text = std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
    let mut value: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", input.display()))?;
    // The aggregates the host would compute from the case's orders, as in the host's invoke.
    rekindle_segments::derive_aggregates(&mut value);
    let answer = rekindle_runtime::invoke(&plugin, &value).with_context(|| format!("running {} on {}", file.display(), input.display()))?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}
