//! `rekindle usecase deploy NAME`: puts one of the seed campaigns in `usecases/` on a
//! running host: its segments (backfilled over the stored customers), then its journey,
//! which the host checks against its configured channels.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;

/// Flags for `rekindle usecase deploy`.
#[derive(clap::Args)]
pub struct DeployArgs {
    /// The template: a folder name in the usecases directory (`lapsing-repeat-buyers`).
    name: String,
    /// Where the templates are.
    #[arg(long, default_value = "usecases")]
    dir: PathBuf,
    /// The host to deploy to.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The host's admin token.
    #[arg(long, env = "REKINDLE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
}

/// Deploys the template and prints what each step did.
pub fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let folder = args.dir.join(&args.name);
    if !folder.is_dir() {
        let known: Vec<String> = std::fs::read_dir(&args.dir)
            .map(|entries| entries.flatten().filter(|e| e.path().is_dir()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        bail!("no template `{}` in {} (there are: {})", args.name, args.dir.display(), known.join(", "));
    }
    let segments_path = folder.join("segments.toml");
    let segments: toml::Table = toml::from_str(&std::fs::read_to_string(&segments_path).with_context(|| format!("reading {}", segments_path.display()))?)
        .with_context(|| format!("{} is not valid TOML", segments_path.display()))?;
    let journey_path = folder.join("journey.toml");
    let journey = std::fs::read_to_string(&journey_path).with_context(|| format!("reading {}", journey_path.display()))?;
    let base = args.url.trim_end_matches('/').to_string();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(300)).build()?;
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
        for (i, segment) in segments.get("segments").and_then(|s| s.as_array()).into_iter().flatten().enumerate() {
            let body = serde_json::to_value(segment)?;
            let response = http.post(format!("{base}/v1/segments")).bearer_auth(&args.admin_token).json(&body).send().await?;
            let status = response.status();
            let answer: Value = response.json().await.unwrap_or(Value::Null);
            if !status.is_success() {
                bail!("{}: segments[{i}]: {}", segments_path.display(), answer["error"]["message"].as_str().unwrap_or(&answer.to_string()));
            }
            println!("segment {:?}: {} members", answer["segment"]["name"].as_str().unwrap_or(""), answer["members"]);
        }
        let response = http.post(format!("{base}/v1/journeys")).bearer_auth(&args.admin_token).body(journey).send().await?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{}: {}", journey_path.display(), answer["error"]["message"].as_str().unwrap_or(&answer.to_string()));
        }
        println!("journey {:?} deployed with {} steps", answer["deployed"].as_str().unwrap_or(""), answer["steps"]);
        Ok(())
    })
}
