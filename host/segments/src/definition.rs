//! A segment definition resolved for a run: its rule, its parameters over the rule's
//! defaults, RFM cutoffs recorded or refreshed, and how often its schedule comes round.

use rekindle_runtime::json::fields_from_json;
use std::sync::Arc;

use rekindle_runtime::wit::{Context, InputQuery};
use rekindle_runtime::{Plugin, PluginInfo, Registry, merge_params};
use rekindle_store::{SegmentDefinition, Store, StoreError};

/// Why a segment could not be evaluated for a profile.
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    /// The definition's `slot` holds no plugin, or one that is not a segment rule.
    #[error("{0}")]
    Slot(String),
    /// The definition's `params` do not fit the rule's declaration.
    #[error("{0}")]
    Params(String),
    /// Another field of the definition is wrong; `field` names it.
    #[error("{message}")]
    Field { field: String, message: String },
    /// One of the segments asked to run together cannot run, so none does.
    #[error("segment `{segment}` cannot run: {reason}")]
    Refused { segment: String, reason: Box<EvaluateError> },
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The rule trapped, timed out or returned bad output.
    #[error("the rule failed: {0}")]
    Call(#[from] rekindle_runtime::CallError),
}

/// How often a segment may be re-evaluated over everyone.
pub const SCHEDULES: [&str; 4] = ["realtime", "daily", "weekly", "biweekly"];

/// A definition from JSON (`{"name", "slot", "params"?, "schedule"?}`), every field
/// checked, the rule's parameters included. A candidate for a preview (`"preview"` set)
/// may go without a name.
pub fn parse_definition(registry: &Registry, body: &serde_json::Value) -> Result<SegmentDefinition, EvaluateError> {
    use serde_json::Value;
    let field = |field: &str, message: String| EvaluateError::Field { field: field.to_string(), message };
    let text = |key: &str| -> Result<String, EvaluateError> {
        match body.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 200 => Ok(s.trim().to_string()),
            _ => Err(field(key, format!("`{key}` must be a non-empty string of at most 200 characters"))),
        }
    };
    let name = if body.get("name").is_none() && body.get("preview").is_some() { "preview".to_string() } else { text("name")? };
    let slot = text("slot")?;
    let schedule = match body.get("schedule") {
        None => "daily".to_string(),
        Some(Value::String(s)) if SCHEDULES.contains(&s.as_str()) => s.clone(),
        Some(other) => return Err(field("schedule", format!("`schedule` must be one of {SCHEDULES:?}, got {other}"))),
    };
    let params = match body.get("params") {
        None | Some(Value::Null) => serde_json::json!({}),
        Some(Value::Object(map)) => Value::Object(map.clone()),
        Some(_) => return Err(field("params", "`params` must be an object".into())),
    };
    let def = SegmentDefinition { name, slot, params, schedule, last_run: None };
    // Resolving the rule and merging the parameters now reports a bad definition at once.
    segment_context(registry, &def, 0)?;
    Ok(def)
}

/// A segment's rule, checked to be one, with its context at a time and what it reads.
#[derive(Clone)]
pub struct ResolvedRule {
    pub plugin: Arc<Plugin>,
    /// The definition's parameters over the rule's defaults, at the time asked for.
    pub ctx: Context,
    /// What the rule declared it reads.
    pub query: InputQuery,
}

/// The segment's rule and its context at `now`: its parameters over the rule's defaults.
pub fn segment_context(registry: &Registry, def: &SegmentDefinition, now: i64) -> Result<ResolvedRule, EvaluateError> {
    let plugin = registry.get(&def.slot).map_err(|e| EvaluateError::Slot(format!("slot: {e}")))?;
    let PluginInfo::Rule(info) = plugin.info() else {
        return Err(EvaluateError::Slot(format!("slot: `{}` holds a {} plugin, not a segment rule", def.slot, plugin.kind())));
    };
    let overrides = fields_from_json(Some(&def.params), "params").map_err(|e| EvaluateError::Params(e.to_string()))?;
    let params = merge_params(&info.params, &overrides).map_err(|e| EvaluateError::Params(format!("params: {e}")))?;
    let query = info.input.clone();
    Ok(ResolvedRule { plugin, ctx: Context { now, params }, query })
}

/// Parameters an RFM rule takes as population quintile cutoffs; `"auto"` asks the host to
/// compute them, because a plugin sees one profile at a time.
const RFM_CUTOFFS: [&str; 3] = ["recency_days_cutoffs", "frequency_cutoffs", "monetary_cutoffs"];

/// Four cutoffs splitting `values` into quintiles, as "a,b,c,d".
fn quintile_cutoffs(mut values: Vec<f64>) -> String {
    values.sort_by(f64::total_cmp);
    let at = |k: usize| values.get(values.len() * k / 5).copied().unwrap_or(0.0);
    (1..=4).map(|k| format!("{}", (at(k) * 100.0).round() / 100.0)).collect::<Vec<_>>().join(",")
}

/// Where a run takes `auto` RFM cutoffs from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cutoffs {
    /// Those recorded on the segment's schedule, so every evaluation between two
    /// scheduled runs (real time, reference decisions, the edge's bundle, other hosts on
    /// the same database) uses the same ones; computed for this run only while there are
    /// none for the segment's current parameters (the scheduler records them at start).
    /// Never recorded from here: an admin read at a chosen `now` must not set them.
    Recorded,
    /// Computed afresh at `now` and recorded: a scheduled run, a segment's first, a run
    /// asked for now.
    Refresh,
    /// Computed at `now` for this run only: a preview of another time.
    AtNow,
}

/// The definition with its `auto` parameters resolved, and when those cutoffs were
/// computed (`None` for a definition without any).
pub async fn resolve_auto_params(store: &Store, def: &SegmentDefinition, now: i64, cutoffs: Cutoffs) -> Result<(SegmentDefinition, Option<i64>), StoreError> {
    let wants_auto = RFM_CUTOFFS.iter().any(|name| def.params.get(name).and_then(|v| v.as_str()) == Some("auto"));
    if !wants_auto {
        return Ok((def.clone(), None));
    }
    if cutoffs == Cutoffs::Recorded
        && let Some(recorded) = store.cutoffs(&def.name).await?
        && recorded.from == def.params
    {
        return Ok((SegmentDefinition { params: recorded.resolved, ..def.clone() }, Some(recorded.computed_at)));
    }
    let population = store.rfm_population(now).await?;
    let columns = [
        population.iter().map(|p| p.recency_days).collect::<Vec<_>>(),
        population.iter().map(|p| p.frequency).collect(),
        population.iter().map(|p| p.monetary).collect(),
    ];
    let mut resolved = def.clone();
    for (name, values) in RFM_CUTOFFS.iter().zip(columns) {
        if resolved.params.get(name).and_then(|v| v.as_str()) == Some("auto") {
            resolved.params[*name] = serde_json::Value::String(quintile_cutoffs(values));
        }
    }
    tracing::debug!(segment = def.name, params = %resolved.params, "RFM cutoffs for this run");
    if cutoffs == Cutoffs::Refresh {
        store.record_cutoffs(&def.name, &def.params, &resolved.params, now).await?;
    }
    Ok((resolved, Some(now)))
}

/// How often a schedule re-evaluates everyone. Real-time segments are also swept, since
/// some change with time alone (a cart becomes abandoned 30 minutes after the last event).
pub fn period(schedule: &str) -> i64 {
    const MINUTE: i64 = 60_000;
    match schedule {
        "realtime" => 15 * MINUTE,
        "weekly" => 7 * 24 * 60 * MINUTE,
        "biweekly" => 14 * 24 * 60 * MINUTE,
        _ => 24 * 60 * MINUTE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quintile_cutoffs_split_the_population() {
        assert_eq!(quintile_cutoffs((1..=10).map(f64::from).collect()), "3,5,7,9");
        assert_eq!(quintile_cutoffs(vec![]), "0,0,0,0");
    }
}
