//! `rekindle journey simulate FILE --days N`: replays a journey over a copy of a host's
//! data on a virtual clock, with the `segments.toml` beside it when there is one. Segments are re-evaluated every simulated midnight, the
//! journey advances every simulated hour, and adapters format every message but nothing
//! is sent. Prints how many people took each path. The host's own data is never touched.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use rekindle_journeys::delivery::{ChannelConfig, Deliverer};
use rekindle_journeys::engine::Engine;
use rekindle_runtime::{Registry, Runtime, RuntimeConfig};
use rekindle_server::Ingestion;
use rekindle_store::{EventMapping, Store};

/// The channel names the seed templates use, the shipped adapter behind each, and the
/// account parameters it needs to format a request (nothing is sent).
const DEFAULT_CHANNELS: [(&str, &str, &str, &str); 6] = [
    ("email", "channel-sendgrid", "from_email", "simulation@example.com"),
    ("sms", "channel-twilio", "from", "+10000000000"),
    ("push", "channel-fcm", "project_id", "simulation"),
    ("meta", "channel-meta-audiences", "default_country_code", "1"),
    ("tiktok", "channel-tiktok-audiences", "advertiser_id", "0"),
    ("google", "channel-google-customer-match", "customer_id", "0"),
];

/// Flags for `rekindle journey simulate`.
#[derive(clap::Args)]
pub struct SimulateArgs {
    /// The journey file (`usecases/win-back-45/journey.toml`).
    journey: PathBuf,
    /// How many days to replay.
    #[arg(long, default_value_t = 14)]
    days: u32,
    /// The host's data directory; its SQLite database is copied, never changed.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// The plugins (rules and channel adapters), as `rekindle serve --plugins` takes them.
    #[arg(long, default_value = "target/plugins")]
    plugins: PathBuf,
    /// Where the virtual clock starts (RFC 3339); now when omitted.
    #[arg(long)]
    start: Option<String>,
}

/// Runs the simulation and prints the paths.
pub fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let source = std::fs::read_to_string(&args.journey).with_context(|| format!("reading {}", args.journey.display()))?;
    let scratch = tempfile::tempdir()?;
    let copy = copy_database(&args.data_dir, scratch.path())?;
    let start = match &args.start {
        Some(text) => chrono::DateTime::parse_from_rfc3339(text).with_context(|| format!("--start {text:?} is not RFC 3339"))?.timestamp_millis(),
        None => chrono::Utc::now().timestamp_millis(),
    };

    let registry = Arc::new(Registry::new(Runtime::new(RuntimeConfig::default()).map_err(|e| anyhow::anyhow!("{e:#}"))?));
    for (slot, file) in crate::serve::plugin_files(&args.plugins)? {
        registry.install(&slot, &std::fs::read(&file)?).with_context(|| format!("loading {}", file.display()))?;
    }
    let channels: HashMap<String, ChannelConfig> = DEFAULT_CHANNELS
        .iter()
        .filter(|(_, slot, _, _)| registry.get(slot).is_ok())
        .map(|(name, slot, param, value)| {
            let mut config = ChannelConfig::new(*slot);
            config.params = vec![rekindle_runtime::wit::Field { name: param.to_string(), value: rekindle_runtime::wit::Value::Text(value.to_string()) }];
            (name.to_string(), config)
        })
        .collect();

    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async {
        let store = Store::open_sqlite(&copy, EventMapping::default())?;
        let ingestion = Arc::new(Ingestion { store: store.into(), sources: HashMap::new() });
        let mut engine = Engine::new(registry.clone(), ingestion.store.clone(), Arc::new(Deliverer::dry_run(channels)?));
        // Nothing is sent: the links only have to be there, as they would be on a host.
        engine.links = Some(rekindle_journeys::unsubscribe::Links {
            base_url: Some("https://rekindle.invalid".into()),
            key: rekindle_journeys::unsubscribe::LinkKey::new(b"simulation: no message leaves, no link opens"),
        });
        define_segments_beside(&args.journey, &registry, &ingestion.store).await?;
        let journey = engine.deploy(&source).await.map_err(|e| anyhow::anyhow!("{}: {e}", args.journey.display()))?;
        const HOUR: i64 = 3_600_000;
        for hour in 0..i64::from(args.days) * 24 {
            let now = start + hour * HOUR;
            if hour % 24 == 0 {
                // Every simulated midnight, segments catch up with time, as the scheduler would.
                let defs = ingestion.store.segments().await?;
                let (plan, _) = rekindle_segments::batch::Plan::new(&registry, &ingestion.store, &defs, now, rekindle_segments::Cutoffs::AtNow).await?;
                rekindle_segments::schedule::run_planned(&ingestion.store, plan).await?;
            }
            engine.tick(now).await?;
        }
        print_report(&ingestion.store, &journey, args.days, start).await
    })
}

/// Copies the host's SQLite database (with its WAL) from `data_dir` into `scratch`, so the
/// simulation never writes to it.
fn copy_database(data_dir: &std::path::Path, scratch: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let database = data_dir.join("rekindle.db");
    anyhow::ensure!(database.exists(), "{} holds no rekindle.db; run the host (scripts/demo) first", data_dir.display());
    let copy = scratch.join("rekindle.db");
    std::fs::copy(&database, &copy).with_context(|| format!("copying {}", database.display()))?;
    for suffix in ["-wal", "-shm"] {
        let side = data_dir.join(format!("rekindle.db{suffix}"));
        if side.exists() {
            std::fs::copy(&side, scratch.join(format!("rekindle.db{suffix}")))?;
        }
    }
    Ok(copy)
}

/// A template's segments.toml beside the journey defines its audiences in the copy, each
/// checked as the host checks a definition; the midnight run then evaluates them.
async fn define_segments_beside(journey: &std::path::Path, registry: &Registry, store: &Store) -> anyhow::Result<()> {
    let beside = journey.with_file_name("segments.toml");
    if !beside.exists() {
        return Ok(());
    }
    let table: toml::Table = toml::from_str(&std::fs::read_to_string(&beside)?).with_context(|| format!("{} is not valid TOML", beside.display()))?;
    for (i, segment) in table.get("segments").and_then(|s| s.as_array()).into_iter().flatten().enumerate() {
        let body = serde_json::to_value(segment)?;
        let def = rekindle_segments::definition::parse_definition(registry, &body).map_err(|e| anyhow::anyhow!("{}: segments[{i}]: {e}", beside.display()))?;
        store.upsert_segment(def).await?;
    }
    Ok(())
}

/// Prints how many runs took each path through the journey, and how they ended.
async fn print_report(store: &Store, journey: &rekindle_journeys::Journey, days: u32, start: i64) -> anyhow::Result<()> {
    let log = store.journey_log(&journey.name).await?;
    let runs = store.journey_runs(&journey.name).await?;
    let mut paths: BTreeMap<(usize, String), usize> = BTreeMap::new();
    for entry in &log {
        let position = journey.steps.iter().position(|s| s.id() == entry.step).map_or(0, |i| i + 1);
        let what = match (&entry.channel, entry.action.as_str()) {
            (Some(channel), "skipped") => format!("skipped {channel}: {}", entry.detail),
            (Some(channel), action) => format!("{action} on {channel}"),
            (None, "split" | "branch" | "random") => format!("{} -> {}", entry.action, entry.detail),
            (None, "skipped" | "capped") => format!("{}: {}", entry.action, entry.detail),
            (None, action) => action.to_string(),
        };
        *paths.entry((position, format!("{:<14} {what}", entry.step))).or_default() += 1;
    }
    println!(
        "{} over {} days from {}: {} entered",
        journey.name,
        days,
        chrono::DateTime::from_timestamp_millis(start).unwrap_or_default().to_rfc3339(),
        runs.len()
    );
    for ((_, line), count) in paths {
        println!("{count:>7}  {line}");
    }
    let mut ends: BTreeMap<String, usize> = BTreeMap::new();
    for run in &runs {
        *ends.entry(run.ended_reason.clone().unwrap_or_else(|| format!("still {}", run.status))).or_default() += 1;
    }
    for (end, count) in ends {
        println!("{count:>7}  ended: {end}");
    }
    Ok(())
}
