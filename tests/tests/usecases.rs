//! The five seed campaigns in `usecases/` load as shipped: each journey passes the journey
//! checks with the channels Rekindle ships adapters for, and each segment runs a shipped
//! rule with parameters that rule accepts. Every segment a journey names is defined.

use std::path::PathBuf;

use rekindle_journeys::definition::{self as journey, Step};
use rekindle_runtime::json::fields_from_json;
use rekindle_runtime::{Plugin, PluginInfo, merge_params};
use rekindle_tests::{component, components};

/// The channels a deployment configures for the shipped adapters.
const CHANNELS: [&str; 6] = ["email", "sms", "push", "meta", "tiktok", "google"];

#[test]
fn every_seed_template_loads_with_shipped_rules_and_channels() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../usecases");
    let runtime = rekindle_tests::patient_runtime();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&root).unwrap().flatten().filter(|e| e.path().is_dir()) {
        let dir = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let source = std::fs::read_to_string(dir.join("journey.toml")).unwrap();
        let journey = journey::load(&source, &CHANNELS).unwrap_or_else(|e| panic!("{name}/journey.toml: {e}"));

        let segments: toml::Table = toml::from_str(&std::fs::read_to_string(dir.join("segments.toml")).unwrap()).unwrap();
        let mut defined = Vec::new();
        for segment in segments["segments"].as_array().unwrap() {
            let slot = segment["slot"].as_str().unwrap();
            let path = components::ALL.iter().find(|(crate_name, _)| *crate_name == slot).map(|(_, p)| *p);
            let path = path.unwrap_or_else(|| panic!("{name}/segments.toml: no shipped rule `{slot}`"));
            let plugin = Plugin::load(&runtime, &component(path)).unwrap();
            let PluginInfo::Rule(info) = plugin.info() else { panic!("{slot} is not a rule") };
            let params = segment.get("params").map_or(serde_json::json!({}), |p| serde_json::to_value(p).unwrap());
            let overrides = fields_from_json(Some(&params), "params").unwrap();
            merge_params(&info.params, &overrides).unwrap_or_else(|e| panic!("{name}/segments.toml: {slot}: {e}"));
            defined.push(segment["name"].as_str().unwrap().to_string());
        }
        let mut used: Vec<&str> = journey.entry.segment.iter().map(String::as_str).collect();
        for step in &journey.steps {
            match step {
                Step::Split { segment: Some(segment), .. } | Step::Branch { segment, .. } => used.push(segment),
                _ => {}
            }
        }
        for segment in used {
            assert!(defined.iter().any(|d| d == segment), "{name}: the journey uses segment `{segment}`, which segments.toml does not define");
        }
        names.push(name);
    }
    names.sort();
    assert_eq!(names, ["abandoned-cart", "about-to-sleep", "lapsing-repeat-buyers", "rfm-win-back", "win-back-45"]);
}
