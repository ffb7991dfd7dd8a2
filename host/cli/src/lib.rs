//! The `rekindle` command line: `serve`, `plugin inspect`, `plugin run` and `plugin new`.

mod config;
mod demo;
pub mod edge;
mod plugin;
mod scaffold;
mod segment;
mod serve;
mod simulate;
mod usecase;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Rekindle wins back lapsing customers with sandboxed WebAssembly plugins.
#[derive(Parser)]
#[command(name = "rekindle", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server with the plugins of a directory.
    Serve(serve::ServeArgs),
    /// Work with plugin components.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Demo data.
    #[command(subcommand)]
    Demo(DemoCommand),
    /// Segments on a running host.
    #[command(subcommand)]
    Segment(SegmentCommand),
    /// Promo tiles at the CDN edge.
    #[command(subcommand)]
    Edge(EdgeCommand),
    /// The seed campaign templates in `usecases/`.
    #[command(subcommand)]
    Usecase(UsecaseCommand),
    /// Journeys.
    #[command(subcommand)]
    Journey(JourneyCommand),
}

#[derive(Subcommand)]
enum JourneyCommand {
    /// Replay a journey over a copy of the host's data on a virtual clock, sending nothing.
    Simulate(simulate::SimulateArgs),
}

#[derive(Subcommand)]
enum UsecaseCommand {
    /// Put a template's segments and journey on a running host.
    Deploy(usecase::DeployArgs),
}

#[derive(Subcommand)]
enum EdgeCommand {
    /// Build a Workers-compatible bundle that decides tiles without calling the origin.
    Build(edge::BuildArgs),
}

#[derive(Subcommand)]
enum SegmentCommand {
    /// Who would qualify for a rule and parameters, as of any time, without changing anything.
    Preview(segment::PreviewArgs),
}

#[derive(Subcommand)]
enum DemoCommand {
    /// Send a deterministic, realistic shop to a running host through its ingestion API.
    Generate(demo::GenerateArgs),
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Show a component's world, describe() output, imports, size and SHA-256.
    Inspect {
        /// The .wasm component.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The deadline for describe(), in milliseconds; the host's default when omitted.
        #[arg(long)]
        deadline_ms: Option<u64>,
    },
    /// Call a component once with a JSON input, as the host would: the local test harness.
    Run {
        /// The .wasm component.
        file: PathBuf,
        /// A JSON file with "context" and, by kind, "profile", "request"/"offers" or "message".
        #[arg(long)]
        input: PathBuf,
        /// The call's deadline in milliseconds; the host's default for the kind when omitted.
        #[arg(long)]
        deadline_ms: Option<u64>,
    },
    /// Create a plugin crate that builds and passes its test on the first try.
    New {
        /// Crate name, such as `rule-vip` or `channel-acme-sms`.
        name: String,
        /// What kind of plugin.
        #[arg(long, value_enum)]
        kind: PluginKind,
        /// Where to create it; defaults to ./NAME.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The guest SDK to depend on; defaults to this checkout's `guest-sdk`.
        #[arg(long)]
        sdk_path: Option<PathBuf>,
    },
}

/// The plugin kinds `plugin new` scaffolds.
#[derive(Clone, Copy, ValueEnum)]
pub enum PluginKind {
    Rule,
    Channel,
    Tiles,
}

/// Parses the command line and runs it; errors print with their context chain.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Demo(DemoCommand::Generate(args)) => demo::generate(args),
        Command::Segment(SegmentCommand::Preview(args)) => segment::preview(args),
        Command::Edge(EdgeCommand::Build(args)) => edge::build(args),
        Command::Usecase(UsecaseCommand::Deploy(args)) => usecase::deploy(args),
        Command::Journey(JourneyCommand::Simulate(args)) => simulate::simulate(args),
        Command::Plugin(PluginCommand::Inspect { file, json, deadline_ms }) => plugin::inspect(&file, json, deadline_ms),
        Command::Plugin(PluginCommand::Run { file, input, deadline_ms }) => plugin::run(&file, &input, deadline_ms),
        Command::Plugin(PluginCommand::New { name, kind, dir, sdk_path }) => scaffold::new_plugin(&name, kind, dir, sdk_path),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
