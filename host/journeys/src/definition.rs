//! Journey definitions: how a re-engagement campaign is written (TOML files, or the same
//! shape as JSON through the API) and checked when it is loaded. Errors name the step and
//! the field (`steps[2] "wait-a-week": duration: ...`), or the line for malformed TOML.
//!
//! ```toml
//! name = "Lapsing repeat buyers"
//! holdout_percent = 10
//! re_entry = "after_exit"            # never | after_exit | always
//! quiet_hours = { start = "21:00", end = "08:00" }
//! [entry]
//! segment = "Lapsing repeat buyers"  # or event = "...", or schedule = "daily" with segment, or api = true
//! [goal]
//! event = "Order Completed"          # leaves the journey from any step
//! [[steps]]
//! id = "nudge"
//! type = "send"
//! channels = ["email", "push", "sms"]
//! voucher = "BACK10"
//! template = { subject = "We miss you", text = "Hi {{ traits.first_name }}" }
//! ```

use std::collections::HashSet;

use rekindle_store::StoreError;
use serde::Deserialize;

/// Why a journey could not be deployed or entered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JourneyError {
    /// The journey file is wrong; `field` names the field or step at fault (`name`,
    /// `steps[2] "wait"`), and is `None` for malformed TOML, whose message names the line.
    #[error("{message}")]
    Invalid { field: Option<String>, message: String },
    /// No journey has this name.
    #[error("no journey `{0}`")]
    UnknownJourney(String),
    /// Nobody has this id.
    #[error("no profile for `{0}`")]
    UnknownProfile(String),
    /// The journey's entry is not `api = true`.
    #[error("journey `{0}` does not take entries through the API (its [entry] has no `api = true`)")]
    NotEnteredByApi(String),
    /// The store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// A refusal naming `field`, whose message starts with it.
fn invalid(field: impl Into<String>, problem: impl std::fmt::Display) -> JourneyError {
    let field = field.into();
    JourneyError::Invalid { message: format!("{field}: {problem}"), field: Some(field) }
}

use crate::messages::{MessageTemplate, check_template};

/// A journey as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journey {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub entry: Entry,
    #[serde(default)]
    pub goal: Option<Goal>,
    /// Who may enter again: `never`, `after_exit` (once they left) or `always`.
    #[serde(default = "default_re_entry")]
    pub re_entry: String,
    /// Share of entrants, 0 to 100, held out of every step, by hashing the profile id.
    #[serde(default)]
    pub holdout_percent: u8,
    /// Only profiles with the trait `test` set to true enter: for trying a journey out.
    #[serde(default)]
    pub test_mode: bool,
    /// Sends due in these hours (the customer's time zone) wait until they end.
    #[serde(default)]
    pub quiet_hours: Option<QuietHours>,
    pub steps: Vec<Step>,
}

fn default_re_entry() -> String {
    "after_exit".into()
}

/// How people enter.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// On entering this segment.
    pub segment: Option<String>,
    /// On this event.
    pub event: Option<String>,
    /// With `segment`: everyone in it, on this schedule (`daily`, `weekly`, `biweekly`).
    pub schedule: Option<String>,
    /// Through `POST /v1/journeys/{name}/entries`.
    #[serde(default)]
    pub api: bool,
}

/// What ends the journey early, from any step.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Goal {
    pub event: String,
}

/// Local times between which nothing is sent.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    pub start: String,
    pub end: String,
}

/// One step; `next` (where a step has one) names the step to go to, `exit` ends the
/// journey, and without it the journey goes on with the step written below.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Waits a duration (`30m`, `12h`, `7d`), or until a date trait plus some days.
    Wait {
        id: String,
        duration: Option<String>,
        until_trait: Option<String>,
        #[serde(default)]
        plus_days: i64,
        next: Option<String>,
    },
    /// Waits for an event, at most `timeout`; goes on by which came first.
    WaitFor { id: String, event: String, timeout: String, on_event: String, on_timeout: String },
    /// True/false on a segment membership or a trait's value.
    Split { id: String, segment: Option<String>, r#trait: Option<String>, equals: Option<toml::Value>, yes: String, no: String },
    /// Many ways, on the label a segment's rule gave (a favourite category).
    Branch { id: String, segment: String, branches: std::collections::BTreeMap<String, String>, default: String },
    /// Random A/B (or more) by weight, by hashing the journey run.
    Random { id: String, variants: Vec<Variant> },
    /// A message on the first channel that can reach the customer, in this order.
    Send {
        id: String,
        channels: Vec<String>,
        template: MessageTemplate,
        voucher: Option<String>,
        /// How many related products the template gets (0 for none).
        #[serde(default)]
        products: usize,
        next: Option<String>,
    },
    /// Adds the customer to ad audiences: channel name to the platform's audience id.
    AudienceAdd { id: String, audiences: std::collections::BTreeMap<String, String>, next: Option<String> },
    /// Removes the customer from ad audiences.
    AudienceRemove { id: String, audiences: std::collections::BTreeMap<String, String>, next: Option<String> },
    /// Leaves the journey.
    Exit { id: String },
}

/// One way of a random split.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    pub weight: u32,
    pub next: String,
}

impl Step {
    /// The step's id.
    pub fn id(&self) -> &str {
        match self {
            Step::Wait { id, .. }
            | Step::WaitFor { id, .. }
            | Step::Split { id, .. }
            | Step::Branch { id, .. }
            | Step::Random { id, .. }
            | Step::Send { id, .. }
            | Step::AudienceAdd { id, .. }
            | Step::AudienceRemove { id, .. }
            | Step::Exit { id } => id,
        }
    }

    /// (field, target) of every step this one can go to.
    fn targets(&self) -> Vec<(String, &str)> {
        match self {
            Step::Wait { next, .. } | Step::Send { next, .. } | Step::AudienceAdd { next, .. } | Step::AudienceRemove { next, .. } => {
                next.as_deref().map(|n| ("next".to_string(), n)).into_iter().collect()
            }
            Step::WaitFor { on_event, on_timeout, .. } => vec![("on_event".into(), on_event), ("on_timeout".into(), on_timeout)],
            Step::Split { yes, no, .. } => vec![("yes".into(), yes), ("no".into(), no)],
            Step::Branch { branches, default, .. } => {
                let mut all: Vec<(String, &str)> = branches.iter().map(|(label, to)| (format!("branches.{label}"), to.as_str())).collect();
                all.push(("default".into(), default));
                all
            }
            Step::Random { variants, .. } => variants.iter().enumerate().map(|(i, v)| (format!("variants[{i}].next"), v.next.as_str())).collect(),
            Step::Exit { .. } => Vec::new(),
        }
    }
}

/// A duration as milliseconds: `45s`, `30m`, `12h`, `7d`.
pub fn parse_duration(text: &str) -> Option<i64> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: i64 = number.parse().ok()?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    (n > 0).then(|| n.checked_mul(unit_ms)).flatten().filter(|ms| *ms <= LONGEST_WAIT)
}

/// The longest wait a journey may have: ten years is past any campaign, and far enough
/// from the end of time that no wake-up overflows.
pub const LONGEST_WAIT: i64 = 3_650 * 86_400_000;

fn parse_clock(text: &str) -> Option<u32> {
    let (h, m) = text.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 && m.to_string().len() <= 2).then_some(h * 60 + m)
}

/// Parses and checks a journey file. `channels` are the configured channel names a `send`
/// or audience step may use; the error names the file's line for malformed TOML, and the
/// step and field for everything else.
pub fn load(source: &str, channels: &[&str]) -> Result<Journey, JourneyError> {
    let journey: Journey = toml::from_str(source).map_err(|e| JourneyError::Invalid { field: None, message: e.to_string().trim().to_string() })?;
    check(&journey, channels)?;
    Ok(journey)
}

/// Checks a parsed journey: references between steps, channels, durations, templates.
pub fn check(journey: &Journey, channels: &[&str]) -> Result<(), JourneyError> {
    if journey.name.trim().is_empty() {
        return Err(invalid("name", "a journey needs a name"));
    }
    let entry = &journey.entry;
    let ways = [entry.segment.is_some() && entry.schedule.is_none(), entry.event.is_some(), entry.schedule.is_some(), entry.api].iter().filter(|w| **w).count();
    if ways != 1 {
        return Err(invalid("entry", "give exactly one of `segment`, `event`, `schedule` (with `segment`) or `api = true`"));
    }
    if let Some(schedule) = &entry.schedule {
        if entry.segment.is_none() {
            return Err(invalid("entry.schedule", "a scheduled entry takes everyone in `segment`"));
        }
        if !["daily", "weekly", "biweekly"].contains(&schedule.as_str()) {
            return Err(invalid("entry.schedule", format!("`{schedule}` is not daily, weekly or biweekly")));
        }
    }
    if !["never", "after_exit", "always"].contains(&journey.re_entry.as_str()) {
        return Err(invalid("re_entry", format!("`{}` is not never, after_exit or always", journey.re_entry)));
    }
    if journey.holdout_percent > 100 {
        return Err(invalid("holdout_percent", "must be from 0 to 100"));
    }
    if let Some(quiet) = &journey.quiet_hours {
        for (field, value) in [("start", &quiet.start), ("end", &quiet.end)] {
            if parse_clock(value).is_none() {
                return Err(invalid(format!("quiet_hours.{field}"), format!("`{value}` is not a time like 21:00")));
            }
        }
    }
    if journey.steps.is_empty() {
        return Err(invalid("steps", "a journey needs at least one step"));
    }
    check_steps(&journey.steps, channels)
}

/// Checks the steps: unique ids, targets that exist, channels that are configured, and
/// each kind's own fields.
fn check_steps(steps: &[Step], channels: &[&str]) -> Result<(), JourneyError> {
    let mut ids = HashSet::new();
    for (i, step) in steps.iter().enumerate() {
        if step.id().trim().is_empty() || step.id() == "exit" || !ids.insert(step.id()) {
            return Err(invalid(format!("steps[{i}]"), format!("id: `{}` must be unique, non-empty and not `exit`", step.id())));
        }
    }
    for (i, step) in steps.iter().enumerate() {
        let step_at = format!("steps[{i}] {:?}", step.id());
        let at = |field: &str, problem: String| invalid(step_at.clone(), format!("{field}: {problem}"));
        for (field, target) in step.targets() {
            if target != "exit" && !ids.contains(target) {
                return Err(at(&field, format!("no step `{target}` (or `exit`)")));
            }
        }
        let known_channel = |field: &str, name: &str| -> Result<(), JourneyError> {
            if channels.contains(&name) { Ok(()) } else { Err(at(field, format!("no channel `{name}` is configured (configured: {})", channels.join(", ")))) }
        };
        match step {
            Step::Wait { duration, until_trait, .. } => match (duration, until_trait) {
                (Some(d), None) if parse_duration(d).is_some() => {}
                (Some(d), None) => return Err(at("duration", format!("`{d}` is not a duration like 30m, 12h or 7d, of at most 3650d"))),
                (None, Some(t)) if !t.trim().is_empty() => {}
                _ => return Err(at("duration", "give either `duration` or `until_trait` (with `plus_days`)".into())),
            },
            Step::WaitFor { timeout, .. } if parse_duration(timeout).is_none() => {
                return Err(at("timeout", format!("`{timeout}` is not a duration like 30m, 12h or 7d, of at most 3650d")));
            }
            Step::Split { segment, r#trait, equals, .. } => match (segment, r#trait, equals) {
                (Some(_), None, None) | (None, Some(_), Some(_)) => {}
                _ => return Err(at("segment", "split on either `segment`, or `trait` with `equals`".into())),
            },
            Step::Random { variants, .. } if variants.len() < 2 || variants.iter().map(|v| v.weight).sum::<u32>() == 0 => {
                return Err(at("variants", "give two or more variants with weights that are not all zero".into()));
            }
            Step::Send { channels: order, template, .. } => {
                if order.is_empty() {
                    return Err(at("channels", "list the channels to try, in order".into()));
                }
                for (k, name) in order.iter().enumerate() {
                    known_channel(&format!("channels[{k}]"), name)?;
                }
                check_template(template).map_err(|e| at("template", e))?;
            }
            Step::AudienceAdd { audiences, .. } | Step::AudienceRemove { audiences, .. } => {
                if audiences.is_empty() {
                    return Err(at("audiences", "map each ad channel to its audience id".into()));
                }
                for name in audiences.keys() {
                    known_channel(&format!("audiences.{name}"), name)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHANNELS: [&str; 5] = ["email", "push", "sms", "meta", "tiktok"];

    const LAPSING: &str = r#"
name = "Lapsing repeat buyers"
re_entry = "after_exit"
quiet_hours = { start = "21:00", end = "08:00" }

[entry]
segment = "Lapsing repeat buyers"
schedule = "daily"

[goal]
event = "Order Completed"

[[steps]]
id = "audiences"
type = "audience_add"
audiences = { meta = "1234", tiktok = "aud-1" }

[[steps]]
id = "nudge"
type = "send"
channels = ["email", "push", "sms"]
voucher = "BACK10"
template = { subject = "We miss you, {{ traits.first_name | default('there') }}", text = "Use {{ voucher }}" }

[[steps]]
id = "wait"
type = "wait"
duration = "3d"

[[steps]]
id = "which"
type = "split"
segment = "High lifetime value"
yes = "nudge"
no = "exit"
"#;

    #[test]
    fn a_seed_journey_loads() {
        let journey = load(LAPSING, &CHANNELS).unwrap();
        assert_eq!(journey.steps.len(), 4);
        assert_eq!(journey.entry.schedule.as_deref(), Some("daily"));
        assert_eq!(parse_duration("3d"), Some(3 * 86_400_000));
        assert_eq!(parse_duration("30m"), Some(1_800_000));
        assert_eq!(parse_duration("0d"), None);
        assert_eq!(parse_duration("3 weeks"), None);
    }

    #[test]
    fn errors_name_the_step_and_the_field() {
        let broken = |from: &str, to: &str| load(&LAPSING.replace(from, to), &CHANNELS).unwrap_err().to_string();
        // The field at fault travels with the error, for the API to report.
        let field = |from: &str, to: &str| match load(&LAPSING.replace(from, to), &CHANNELS).unwrap_err() {
            JourneyError::Invalid { field, .. } => field,
            other => panic!("not a refusal of the file: {other:?}"),
        };
        assert_eq!(field("duration = \"3d\"", "duration = \"3x\"").as_deref(), Some("steps[2] \"wait\""));
        assert_eq!(field("re_entry = \"after_exit\"", "re_entry = \"sometimes\"").as_deref(), Some("re_entry"));
        assert_eq!(field("[entry]", "[entry\n"), None, "malformed TOML names its line, not a field");
        assert_eq!(
            broken("duration = \"3d\"", "duration = \"3x\""),
            "steps[2] \"wait\": duration: `3x` is not a duration like 30m, 12h or 7d, of at most 3650d"
        );
        assert_eq!(broken("no = \"exit\"", "no = \"nowhere\""), "steps[3] \"which\": no: no step `nowhere` (or `exit`)");
        assert!(broken("\"email\", \"push\"", "\"email\", \"fax\"").starts_with("steps[1] \"nudge\": channels[1]: no channel `fax`"));
        assert!(broken("tiktok = \"aud-1\"", "google = \"9\"").starts_with("steps[0] \"audiences\": audiences.google: no channel"));
        assert!(
            broken("Use {{ voucher }}", "Use {{ voucher }").starts_with("steps[1] \"nudge\": template: text: line 1"),
            "{}",
            broken("Use {{ voucher }}", "Use {{ voucher }")
        );
        assert_eq!(broken("start = \"21:00\"", "start = \"9pm\""), "quiet_hours.start: `9pm` is not a time like 21:00");
        assert!(broken("schedule = \"daily\"", "schedule = \"hourly\"").starts_with("entry.schedule:"));
        assert!(broken("id = \"wait\"", "id = \"nudge\"").starts_with("steps[2]: id: `nudge` must be unique"));
        // Malformed TOML and unknown fields name the line.
        let err = broken("type = \"wait\"", "type = \"wait\"\ncolour = \"red\"");
        assert!(err.contains("line") && err.contains("colour"), "{err}");
        let err = broken("type = \"split\"", "type = \"teleport\"");
        assert!(err.contains("line") && err.contains("teleport"), "{err}");
    }
}
