//! Who would qualify: a candidate rule and parameters evaluated over stored history as of
//! any time, without touching memberships, and compared with a defined segment's members.

use std::collections::HashSet;

use rekindle_store::{SegmentDefinition, Store};

use crate::definition::{EvaluateError, ResolvedRule, segment_context};
use crate::profile::profile_at;

/// Profiles read and evaluated together in a whole run.
const PAGE: usize = 500;

/// What to preview.
pub struct PreviewRequest {
    /// The candidate: a slot and its parameters.
    pub def: SegmentDefinition,
    /// When to evaluate; with `replay`, history is read as it stood then.
    pub at: i64,
    pub replay: bool,
    /// How many members to show with the rule's reason.
    pub sample_size: usize,
    /// One page of this many profiles after `after`; `None` covers everyone.
    pub page: Option<usize>,
    pub after: String,
    /// A defined segment whose members to compare with; whole runs only.
    pub compare: Option<String>,
}

/// A member shown with why the rule took them.
pub struct SampleMember {
    pub profile_id: String,
    pub reason: String,
    pub label: Option<String>,
}

/// How the candidate's members differ from a defined segment's.
pub struct Comparison {
    pub segment: String,
    /// The defined segment's member count.
    pub current: usize,
    /// Members of the candidate who are not in the segment, and the other way round.
    pub enters: Vec<String>,
    pub leaves: Vec<String>,
}

/// What the candidate rule decided.
pub struct Preview {
    /// The rule build that decided.
    pub digest: String,
    pub evaluated: usize,
    pub failed: usize,
    pub members: Vec<String>,
    pub sample: Vec<SampleMember>,
    /// With a page: where the next one starts, when there is one.
    pub next: Option<String>,
    /// With the first page: how many profiles there are to cover.
    pub total_profiles: Option<i64>,
    pub compare: Option<Comparison>,
}

/// Evaluates the candidate over the stored profiles the request covers.
pub async fn preview(registry: &rekindle_runtime::Registry, store: &Store, request: &PreviewRequest) -> Result<Preview, EvaluateError> {
    let ResolvedRule { plugin, ctx, query } = segment_context(registry, &request.def, request.at)?;
    let mut answer = Preview {
        digest: plugin.digest().to_string(),
        evaluated: 0,
        failed: 0,
        members: Vec::new(),
        sample: Vec::new(),
        next: None,
        total_profiles: None,
        compare: None,
    };
    if request.page.is_some() && request.after.is_empty() {
        let counts = store.table_counts().await?;
        answer.total_profiles = Some(counts.iter().find(|(table, _)| table == "profiles").map_or(0, |(_, rows)| *rows));
    }
    let mut after = request.after.clone();
    loop {
        let size = request.page.unwrap_or(PAGE);
        let page = store.profile_ids(&after, size).await?;
        let Some(last) = page.last().cloned() else { break };
        let mut profiles = Vec::with_capacity(page.len());
        for id in &page {
            if let Some(profile) = profile_at(store, id, &query, request.at, request.replay).await? {
                profiles.push(profile);
            }
        }
        // One hop to the plugin threads per page: the calls themselves take microseconds.
        let (call, ctx) = (plugin.clone(), ctx.clone());
        let verdicts =
            plugin.background_pool().run(None, move || profiles.into_iter().map(|p| (p.id.clone(), call.evaluate(&ctx, &p))).collect::<Vec<_>>()).await?;
        for (id, verdict) in verdicts {
            match verdict {
                Ok(v) => {
                    answer.evaluated += 1;
                    if v.member {
                        if answer.sample.len() < request.sample_size {
                            answer.sample.push(SampleMember { profile_id: id.clone(), reason: v.reason, label: v.label });
                        }
                        answer.members.push(id);
                    }
                }
                Err(e) => {
                    answer.failed += 1;
                    tracing::debug!(profile = id, "preview call failed: {e}");
                }
            }
        }
        if request.page.is_some() {
            answer.next = (page.len() == size).then_some(last);
            break;
        }
        after = last;
    }
    if let Some(name) = &request.compare {
        answer.compare = Some(compare(store, name, &answer.members).await?);
    }
    Ok(answer)
}

/// The candidate's `members` against the segment `name`'s current ones.
async fn compare(store: &Store, name: &str, members: &[String]) -> Result<Comparison, EvaluateError> {
    let mut current = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = store.members(name, &cursor, 1000).await?;
        let Some(last) = page.last() else { break };
        cursor = last.profile_id.clone();
        current.extend(page.into_iter().map(|m| m.profile_id));
    }
    let now: HashSet<&String> = members.iter().collect();
    let before: HashSet<&String> = current.iter().collect();
    Ok(Comparison {
        segment: name.to_string(),
        current: current.len(),
        enters: now.difference(&before).map(|id| (*id).clone()).collect(),
        leaves: before.difference(&now).map(|id| (*id).clone()).collect(),
    })
}
