//! `rekindle segment preview`: who would qualify, as of any time, with a progress bar over
//! long runs; the host does the evaluation page by page.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Map, Value, json};

/// Flags for `rekindle segment preview`.
#[derive(clap::Args)]
pub struct PreviewArgs {
    /// The rule slot to evaluate.
    #[arg(long)]
    slot: String,
    /// An operator parameter as NAME=VALUE (numbers and true/false are typed); repeat.
    #[arg(long = "param", value_parser = parse_param)]
    params: Vec<(String, Value)>,
    /// Evaluate as of this time (RFC 3339); defaults to now.
    #[arg(long)]
    at: Option<String>,
    /// A defined segment to compare with: who would enter and who would leave.
    #[arg(long)]
    compare: Option<String>,
    /// How many members to show.
    #[arg(long, default_value_t = 10)]
    sample: usize,
    /// The host.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The admin token.
    #[arg(long, env = "REKINDLE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
}

fn parse_param(text: &str) -> Result<(String, Value), String> {
    let (name, raw) = text.split_once('=').ok_or_else(|| format!("`{text}` is not NAME=VALUE"))?;
    let value = serde_json::from_str::<Value>(raw).ok().filter(|v| !v.is_object() && !v.is_array()).unwrap_or_else(|| json!(raw));
    Ok((name.to_string(), value))
}

async fn post(http: &reqwest::Client, url: &str, token: &str, body: &Value) -> anyhow::Result<Value> {
    let response = http.post(url).bearer_auth(token).json(body).send().await.with_context(|| format!("sending to {url}"))?;
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{status}: {}", answer["error"]["message"].as_str().unwrap_or("no details"));
    }
    Ok(answer)
}

pub fn preview(args: PreviewArgs) -> anyhow::Result<()> {
    let base = args.url.trim_end_matches('/').to_string();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(300)).build()?;
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
        let params: Map<String, Value> = args.params.iter().cloned().collect();
        let mut body = json!({ "slot": args.slot, "params": params, "sample": args.sample, "limit": 200 });
        if let Some(at) = &args.at {
            body["at"] = json!(at);
        }
        let mut members = Vec::new();
        let (mut sample, mut evaluated, mut failed) = (Vec::new(), 0u64, 0u64);
        let mut bar: Option<indicatif::ProgressBar> = None;
        loop {
            let page = post(&http, &format!("{base}/v1/segments/preview"), &args.admin_token, &body).await?;
            if let Some(total) = page["total_profiles"].as_u64() {
                let progress = indicatif::ProgressBar::new(total);
                progress.set_style(
                    indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} profiles, {per_sec}, eta {eta}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                bar = Some(progress);
            }
            let done = page["evaluated"].as_u64().unwrap_or(0) + page["failed"].as_u64().unwrap_or(0);
            evaluated += page["evaluated"].as_u64().unwrap_or(0);
            failed += page["failed"].as_u64().unwrap_or(0);
            if let Some(bar) = &bar {
                bar.inc(done);
            }
            for item in page["sample"].as_array().into_iter().flatten() {
                if sample.len() < args.sample {
                    sample.push(item.clone());
                }
            }
            members.extend(page["member_ids"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)));
            match page["next"].as_str() {
                Some(next) => body["after"] = json!(next),
                None => break,
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        println!("{} of {evaluated} profiles would qualify ({failed} could not be evaluated)", members.len());
        for item in &sample {
            println!("  {}  {}", item["profile_id"].as_str().unwrap_or(""), item["reason"].as_str().unwrap_or(""));
        }
        if let Some(name) = &args.compare {
            let mut current = HashSet::new();
            let mut after = String::new();
            loop {
                // Profile ids are UUIDs, safe in a query string as they are.
                let url = format!("{base}/v1/segments/{}/members?limit=1000&after={after}", name.replace(' ', "%20"));
                let response = http.get(&url).bearer_auth(&args.admin_token).send().await?;
                if !response.status().is_success() {
                    bail!("reading the members of `{name}`: {}", response.status());
                }
                let page: Value = response.json().await?;
                current.extend(page["members"].as_array().into_iter().flatten().filter_map(|m| m["profile_id"].as_str().map(str::to_string)));
                match page["next"].as_str() {
                    Some(next) => after = next.to_string(),
                    None => break,
                }
            }
            let candidate: HashSet<String> = members.into_iter().collect();
            let enters = candidate.difference(&current).count();
            let leaves = current.difference(&candidate).count();
            println!("compared with `{name}` ({} members): {enters} would enter, {leaves} would leave", current.len());
        }
        Ok(())
    })
}
