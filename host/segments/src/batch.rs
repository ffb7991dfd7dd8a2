//! Evaluating many profiles against many segments at once, the way scheduled runs,
//! backfills and real-time batches do: a page of profiles is read with a few queries (the
//! union of what the segments' rules declared), evaluated on both cores, and only the
//! verdicts that change something are written, in one transaction per page.

use std::sync::Arc;

use rekindle_runtime::json::{series_from, value_from_json};
use rekindle_runtime::wit::{Context, Field, InputQuery, Membership, Placed, Profile, Verdict};
use rekindle_runtime::{CallError, Plugin, Registry, RuleInstance, filter_profile};
use rekindle_store::{EventNeed, InputNeeds, MembershipRecord, RuleInput, Scope, SegmentDefinition, Store, StoreError, VerdictWrite};

pub use crate::definition::Cutoffs;
use crate::definition::{EvaluateError, ResolvedRule, resolve_auto_params, segment_context};
use crate::profile::{aggregates, consents, contact_points};

/// Profiles read and evaluated together; large enough that per-page costs (queries, task
/// hand-offs, the write transaction) vanish, small enough to keep memory flat.
pub const PAGE: usize = 1000;

/// One segment ready to evaluate: its rule, its context at the run's time and what the
/// rule reads.
pub struct PlannedSegment {
    pub def: SegmentDefinition,
    pub plugin: Arc<Plugin>,
    pub ctx: Context,
    pub query: InputQuery,
    /// When the RFM cutoffs in `ctx` were computed, for a segment with `auto` ones.
    pub cutoffs_at: Option<i64>,
}

/// Segments to evaluate together at one `now`, and the union of what their rules read.
pub struct Plan {
    pub now: i64,
    pub segments: Vec<PlannedSegment>,
    /// Asks every profile for its full verdict, so every stored reason is rebuilt: for a
    /// segment just (re)defined, whose parameters may have changed its reasons and nobody's
    /// membership.
    pub refresh_reasons: bool,
    reads: Reads,
}

/// The union of several plugins' declared input at one `now`: what to read from the store,
/// and how to build the contract profile that every one of them is then cut from.
pub struct Reads {
    needs: InputNeeds,
    /// Per entry of `needs.events`, the property names any plugin wants.
    properties: Vec<Vec<String>>,
}

/// How a run went, per segment in plan order and overall.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunReport {
    pub profiles: usize,
    /// Per planned segment: (evaluated, failed).
    pub per_segment: Vec<(usize, usize)>,
    /// Entries and exits written.
    pub changes: usize,
}

impl RunReport {
    /// Evaluations that produced a verdict, over every segment.
    pub fn evaluations(&self) -> usize {
        self.per_segment.iter().map(|s| s.0).sum()
    }

    /// Evaluations that failed, over every segment.
    pub fn failures(&self) -> usize {
        self.per_segment.iter().map(|s| s.1).sum()
    }
}

impl Plan {
    /// Resolves each definition's rule, parameters (RFM cutoffs as `cutoffs` says) and
    /// input at `now`. Segments that cannot run are returned beside the plan with the reason.
    pub async fn new(
        registry: &Registry,
        store: &Store,
        defs: &[SegmentDefinition],
        now: i64,
        cutoffs: Cutoffs,
    ) -> Result<(Plan, Vec<(String, EvaluateError)>), StoreError> {
        let (mut segments, mut refused) = (Vec::new(), Vec::new());
        for def in defs {
            let (def, cutoffs_at) = resolve_auto_params(store, def, now, cutoffs).await?;
            match segment_context(registry, &def, now) {
                Ok(ResolvedRule { plugin, ctx, query }) => segments.push(PlannedSegment { def, plugin, ctx, query, cutoffs_at }),
                Err(e) => refused.push((def.name.clone(), e)),
            }
        }
        Ok((Plan::from_segments(segments, now), refused))
    }

    /// A plan over segments already resolved.
    pub fn from_segments(segments: Vec<PlannedSegment>, now: i64) -> Plan {
        let reads = Reads::new(segments.iter().map(|s| &s.query), now);
        Plan { now, segments, refresh_reasons: false, reads }
    }

    /// Whether `touch` can change any planned segment's verdict: it changed something
    /// besides events, or recorded an event (or an order, for rules reading aggregates) that
    /// a rule reads.
    pub fn reads(&self, touch: &rekindle_store::Touch) -> bool {
        match &touch.event {
            None => true,
            Some(name) => (touch.order && self.reads.needs.computed) || self.reads.needs.events.iter().any(|e| &e.name == name),
        }
    }

    /// The contract profile holding everything any planned rule reads about `input`; each
    /// rule then sees it cut to its own query.
    pub fn profile(&self, input: &RuleInput) -> Profile {
        self.reads.profile(input)
    }

    /// What the store must read for this plan.
    pub fn needs(&self) -> &InputNeeds {
        &self.reads.needs
    }
}

impl Reads {
    /// What the store must read.
    pub fn needs(&self) -> &InputNeeds {
        &self.needs
    }

    /// The union of `queries` as seen at `now`.
    pub fn new<'a>(queries: impl IntoIterator<Item = &'a InputQuery>, now: i64) -> Reads {
        let mut needs = InputNeeds::default();
        let mut properties: Vec<Vec<String>> = Vec::new();
        for q in queries {
            needs.traits |= !q.traits.is_empty();
            needs.computed |= !q.aggregates.is_empty();
            needs.consents |= q.consents;
            needs.contacts |= q.contacts;
            for wanted in &q.events {
                let since = rekindle_runtime::event_since(wanted, now);
                match needs.events.iter().position(|e| e.name == wanted.name) {
                    Some(i) => {
                        let need = &mut needs.events[i];
                        need.since = need.since.min(since);
                        need.limit = need.limit.zip(wanted.limit).map(|(a, b)| a.max(b));
                        need.properties |= !wanted.properties.is_empty();
                        for p in &wanted.properties {
                            if !properties[i].contains(p) {
                                properties[i].push(p.clone());
                            }
                        }
                    }
                    None => {
                        needs.events.push(EventNeed {
                            name: wanted.name.clone(),
                            since,
                            until: now,
                            limit: wanted.limit,
                            properties: !wanted.properties.is_empty(),
                        });
                        properties.push(wanted.properties.clone());
                    }
                }
            }
        }
        Reads { needs, properties }
    }

    /// The contract profile holding everything any of the plugins reads about `input`;
    /// each then sees it cut to its own query.
    pub fn profile(&self, input: &RuleInput) -> Profile {
        let events = self
            .needs
            .events
            .iter()
            .zip(&self.properties)
            .zip(&input.events)
            .filter(|(_, rows)| !rows.is_empty())
            .map(|((need, wanted), rows)| {
                let rows = rows
                    .iter()
                    .map(|(at, props)| {
                        let fields =
                            wanted.iter().filter_map(|name| props.get(name).map(|v| Field { name: name.clone(), value: value_from_json(v) })).collect();
                        (*at, fields)
                    })
                    .collect();
                series_from(need.name.clone(), rows)
            })
            .collect();
        Profile {
            id: input.id.clone(),
            traits: Some(input.traits.iter().map(|(name, value)| Field { name: name.clone(), value: value_from_json(value) }).collect()),
            events,
            consents: Some(consents(&input.consents)),
            contacts: Some(contact_points(&input.contacts)),
            segments: Some({
                // By name, so the server and the edge (rebuilding them from a token) agree.
                let mut segments: Vec<Membership> =
                    input.memberships.iter().map(|m| Membership { segment: m.segment.clone(), label: m.label.clone(), since: m.since }).collect();
                segments.sort_by(|a, b| a.segment.cmp(&b.segment));
                segments
            }),
            aggregates: Some(aggregates(&input.computed)),
            timezone: input.timezone.clone(),
        }
    }
}

/// Runs rules for one thread of a batch. The host's is [`WasmEvaluator`]; benchmarks plug
/// in native Rust to measure what the sandbox costs on the same pipeline.
pub trait Evaluator: Send + Sync + 'static {
    /// One thread's evaluation state.
    type Worker: Worker;
    /// A worker for one slice of a page.
    fn worker(&self, plan: &Plan) -> Self::Worker;
}

/// Evaluates planned segments for profiles, one thread's share.
pub trait Worker {
    /// The verdict of planned segment `index` for `profile` (already cut to its query).
    fn evaluate(&mut self, plan: &Plan, index: usize, profile: &Profile) -> Result<Verdict, CallError>;

    /// Membership and label alone, which is all a run compares with the stored verdict,
    /// from a rule that can answer without building its reason; the full verdict from one
    /// that cannot, so it is not asked twice.
    fn place(&mut self, plan: &Plan, index: usize, profile: &Profile) -> Result<Answer, CallError> {
        self.evaluate(plan, index, profile).map(Answer::Verdict)
    }
}

/// What [`Worker::place`] got from a rule.
pub enum Answer {
    /// Membership and label; ask [`Worker::evaluate`] for the reason.
    Placed(Placed),
    /// The full verdict, from a rule without `placement`.
    Verdict(Verdict),
}

/// Evaluates with the sandboxed components. Within one page slice each rule keeps one
/// instance: rules are pure functions of their input, the SDK's allocator starts over
/// after every call, and instantiating costs four times the call itself. An instance that
/// fails is thrown away, so a trap never leaks into the next profile's verdict.
pub struct WasmEvaluator;

impl Evaluator for WasmEvaluator {
    type Worker = WasmWorker;

    fn worker(&self, plan: &Plan) -> WasmWorker {
        WasmWorker { instances: plan.segments.iter().map(|_| None).collect() }
    }
}

/// [`WasmEvaluator`]'s per-thread instances.
pub struct WasmWorker {
    instances: Vec<Option<RuleInstance>>,
}

impl WasmWorker {
    /// `call` on segment `index`'s instance, made on first use and thrown away when a call
    /// fails, so a trap never leaks into the next profile's verdict.
    fn with_instance<R>(&mut self, plan: &Plan, index: usize, call: impl FnOnce(&mut RuleInstance) -> Result<R, CallError>) -> Result<R, CallError> {
        let slot = &mut self.instances[index];
        let instance = match slot {
            Some(instance) => instance,
            None => slot.insert(plan.segments[index].plugin.rule_instance()?),
        };
        let result = call(instance);
        if result.is_err() {
            *slot = None;
        }
        result
    }
}

impl Worker for WasmWorker {
    fn evaluate(&mut self, plan: &Plan, index: usize, profile: &Profile) -> Result<Verdict, CallError> {
        let ctx = &plan.segments[index].ctx;
        self.with_instance(plan, index, |instance| instance.evaluate(ctx, profile))
    }

    fn place(&mut self, plan: &Plan, index: usize, profile: &Profile) -> Result<Answer, CallError> {
        let ctx = &plan.segments[index].ctx;
        self.with_instance(plan, index, |instance| {
            if instance.can_place() { instance.place(ctx, profile).map(Answer::Placed) } else { instance.evaluate(ctx, profile).map(Answer::Verdict) }
        })
    }
}

/// One slice's outcome: verdicts that change something, and per-segment counts.
struct SliceResult {
    writes: Vec<VerdictWrite>,
    per_segment: Vec<(usize, usize)>,
    first_error: Option<(String, CallError)>,
}

/// Evaluates every planned segment for `inputs` and keeps the verdicts that differ from
/// the stored membership.
///
/// Everyone is asked for membership and label alone; only a profile whose answer differs
/// from the stored one (or was reached by another version of the rule) is asked again for
/// the full verdict, whose reason is stored. A stored reason therefore explains the verdict
/// as it was reached, and a daily re-run does not rewrite every member for a reason that
/// now says 69 days instead of 68. A plan that `refresh_reasons` (a segment's definition
/// run) asks everyone for the full verdict and rewrites any reason that changed.
fn evaluate_slice<W: Worker>(plan: &Plan, worker: &mut W, inputs: &[RuleInput]) -> SliceResult {
    let mut result = SliceResult { writes: Vec::new(), per_segment: vec![(0, 0); plan.segments.len()], first_error: None };
    for input in inputs {
        let full = plan.profile(input);
        for (index, segment) in plan.segments.iter().enumerate() {
            let profile = filter_profile(&full, &segment.query, plan.now);
            let current = input.memberships.iter().find(|m| m.segment == segment.def.name);
            match changed_verdict(plan, worker, index, &profile, current) {
                Ok(verdict) => {
                    result.per_segment[index].0 += 1;
                    if let Some(verdict) = verdict {
                        result.writes.push(verdict_write(segment, input, verdict));
                    }
                }
                Err(e) => {
                    result.per_segment[index].1 += 1;
                    result.first_error.get_or_insert_with(|| (segment.def.name.clone(), e));
                }
            }
        }
    }
    result
}

/// Segment `index`'s verdict for `profile` when it differs from `current`, the stored one;
/// `None` when it does not.
fn changed_verdict<W: Worker>(
    plan: &Plan,
    worker: &mut W,
    index: usize,
    profile: &Profile,
    current: Option<&MembershipRecord>,
) -> Result<Option<Verdict>, CallError> {
    let digest = plan.segments[index].plugin.digest();
    if plan.refresh_reasons {
        let verdict = worker.evaluate(plan, index, profile)?;
        let unchanged = same_as_stored(current, verdict.member, &verdict.label, Some(&verdict.reason), digest);
        return Ok((!unchanged).then_some(verdict));
    }
    let placed = match worker.place(plan, index, profile)? {
        Answer::Placed(placed) => placed,
        Answer::Verdict(verdict) => {
            let unchanged = same_as_stored(current, verdict.member, &verdict.label, None, digest);
            return Ok((!unchanged).then_some(verdict));
        }
    };
    if same_as_stored(current, placed.member, &placed.label, None, digest) {
        return Ok(None);
    }
    let verdict = worker.evaluate(plan, index, profile)?;
    if verdict.member != placed.member || verdict.label != placed.label {
        return Err(CallError::BadOutput(format!(
            "place answered member {} label {:?}, but evaluate answered member {} label {:?} for the same input",
            placed.member, placed.label, verdict.member, verdict.label
        )));
    }
    Ok(Some(verdict))
}

/// Whether an answer changes nothing stored: not a member and never was, or the same
/// member by the same component with the same label (and `reason`, when it is compared).
fn same_as_stored(current: Option<&MembershipRecord>, member: bool, label: &Option<String>, reason: Option<&str>, digest: &str) -> bool {
    match current {
        None => !member,
        Some(m) => member && m.label == *label && reason.is_none_or(|reason| m.reason == reason) && m.digest == digest,
    }
}

fn verdict_write(segment: &PlannedSegment, input: &RuleInput, verdict: Verdict) -> VerdictWrite {
    VerdictWrite {
        segment: segment.def.name.clone(),
        profile_id: input.id.clone(),
        member: verdict.member,
        label: verdict.label,
        reason: verdict.reason,
        digest: segment.plugin.digest().to_string(),
    }
}

/// Evaluates a page on `lanes` threads and writes what changed.
async fn evaluate_page<E: Evaluator>(
    store: &Store,
    plan: &Arc<Plan>,
    evaluator: &Arc<E>,
    inputs: Vec<RuleInput>,
    lanes: usize,
    report: &mut RunReport,
) -> Result<(), StoreError> {
    let writes = evaluate_inputs(plan, evaluator, inputs, lanes, Lane::Background, report).await?;
    report.changes += store.record_verdicts(writes, plan.now).await?;
    Ok(())
}

/// Which plugin threads evaluation runs on.
#[derive(Clone, Copy)]
enum Lane {
    /// Real-time evaluation, which a membership's latency waits on.
    Realtime,
    /// Scheduled runs over everyone: background work, which yields to the rest.
    Background,
}

/// Evaluates a page on `lanes` threads; returns the verdicts that change something.
async fn evaluate_inputs<E: Evaluator>(
    plan: &Arc<Plan>,
    evaluator: &Arc<E>,
    inputs: Vec<RuleInput>,
    lanes: usize,
    lane: Lane,
    report: &mut RunReport,
) -> Result<Vec<VerdictWrite>, StoreError> {
    let inputs = Arc::new(inputs);
    let per_lane = inputs.len().div_ceil(lanes.max(1)).max(1);
    // On the plugin threads, never the request threads; a scheduled run on low-priority
    // threads of its own, so tile decisions never wait behind one.
    let Some(owner) = plan.segments.first().map(|s| s.plugin.clone()) else { return Ok(Vec::new()) };
    let tasks: Vec<_> = (0..inputs.len())
        .step_by(per_lane)
        .map(|start| {
            let (plan, evaluator, inputs, owner) = (plan.clone(), evaluator.clone(), inputs.clone(), owner.clone());
            tokio::spawn(async move {
                let pool = match lane {
                    Lane::Realtime => owner.realtime_pool(),
                    Lane::Background => owner.background_pool(),
                };
                pool.run(None, move || {
                    let end = (start + per_lane).min(inputs.len());
                    let mut worker = evaluator.worker(&plan);
                    evaluate_slice(&plan, &mut worker, &inputs[start..end])
                })
                .await
            })
        })
        .collect();
    let mut writes = Vec::new();
    for task in tasks {
        let slice = task
            .await
            .map_err(|e| StoreError::Database(format!("evaluation task failed: {e}")))?
            .map_err(|e| StoreError::Database(format!("evaluation task failed: {e}")))?;
        for (total, (ok, bad)) in report.per_segment.iter_mut().zip(slice.per_segment) {
            total.0 += ok;
            total.1 += bad;
        }
        if let Some((segment, e)) = slice.first_error {
            tracing::warn!(segment, "evaluation failed for some profiles; the first: {e}");
        }
        writes.extend(slice.writes);
    }
    report.profiles += inputs.len();
    Ok(writes)
}

/// Evaluates the plan over every stored profile, a page at a time; the next page is read
/// while the current one is evaluated. Uses both cores.
pub async fn run_all<E: Evaluator>(store: &Store, plan: Arc<Plan>, evaluator: Arc<E>) -> Result<RunReport, StoreError> {
    let mut report = RunReport { per_segment: vec![(0, 0); plan.segments.len()], ..RunReport::default() };
    if plan.segments.is_empty() {
        return Ok(report);
    }
    let read = |after: String| store.rule_inputs(Scope::After { after, limit: PAGE }, plan.needs().clone());
    let mut page = read(String::new()).await?;
    while let Some(last) = page.last().map(|p| p.id.clone()) {
        let (evaluated, next) = tokio::join!(evaluate_page(store, &plan, &evaluator, page, 2, &mut report), read(last));
        evaluated?;
        page = next?;
    }
    Ok(report)
}

/// Evaluates the plan for the profiles `ids` (distinct profile ids) and returns the
/// verdicts that change something, unwritten: the real-time path, which writes one batch
/// while it reads the next.
pub async fn evaluate_ids<E: Evaluator>(
    store: &Store,
    plan: Arc<Plan>,
    evaluator: Arc<E>,
    ids: Vec<String>,
) -> Result<(Vec<VerdictWrite>, RunReport), StoreError> {
    let mut report = RunReport { per_segment: vec![(0, 0); plan.segments.len()], ..RunReport::default() };
    let mut writes = Vec::new();
    if plan.segments.is_empty() || ids.is_empty() {
        return Ok((writes, report));
    }
    for chunk in ids.chunks(PAGE) {
        let inputs = store.rule_inputs(Scope::Profiles(chunk.to_vec()), plan.needs().clone()).await?;
        let lanes = if inputs.len() >= 64 { 2 } else { 1 };
        writes.extend(evaluate_inputs(&plan, &evaluator, inputs, lanes, Lane::Realtime, &mut report).await?);
    }
    Ok((writes, report))
}
