//! The journey engine: takes people into journeys as they enter the entry segment, and
//! moves each run through its steps on every tick. Every run's position, wake-up time and
//! log are in the store, so a restarted host carries on where it stopped. A send is
//! claimed in the store under its idempotency key (run, step, channel) before the provider
//! is called. A settled send is never repeated. One left `pending` by a crash is in doubt:
//! once the channel's `reconcile_after` has passed, an adapter with a lookup asks its
//! provider whether the message arrived, and only a message the provider lacks (or cannot
//! vouch for) is sent again, under the same key.
//!
//! Supported this far: entry on a segment (with or without a schedule), an event or the
//! API; goal exits, which also take the customer out of the journey's ad audiences;
//! holdouts and test mode; `wait` for a duration, `wait_for` an event, every kind of split,
//! `send` with channel fallback, templates and related products, audience add and remove,
//! quiet hours in the customer's time zone, a frequency cap per customer across journeys,
//! `wait` until a date trait plus some days, and `exit`.

use std::sync::Arc;

use rekindle_runtime::Registry;
use rekindle_runtime::wit::{AudienceChange, AudienceMember, Found, Outcome};
use rekindle_store::{
    ClaimedSend, Clock, EventRef, JourneyLogEntry, JourneyRun, Lease, SendClaim, StepSend, Store, StoreError, StoredJourney, Suppress, SuppressTarget,
};
use serde_json::Value;

use crate::definition::{self, Journey, JourneyError, Step, parse_duration};
use crate::delivery::{Deliverer, DeliveryError, Reconciled};
use crate::messages::{UnsubscribeLink, choose_channel, render};
use crate::unsubscribe::Subscription;

/// Steps one run may take in one tick; a journey looping without a wait stops here.
const MAX_STEPS_PER_TICK: usize = 64;

/// Runs a tick advances at once (see [`Engine::tick`]); the channels' rate limits still
/// pace the requests.
const LANES: usize = 8;

/// The lease under which one host at a time ticks the journeys of a shared database.
const TICK_LEASE: &str = "journeys:tick";

/// How long a lease lasts unless the host says otherwise (`run_lease_seconds`): a host
/// that dies holding runs leaves them to the others this long after its last renewal.
pub const DEFAULT_LEASE: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs journeys over the store with the configured channels.
pub struct Engine {
    pub registry: Arc<Registry>,
    pub store: Arc<Store>,
    pub deliverer: Arc<Deliverer>,
    /// At most this many messages per customer in this window, across all journeys.
    pub frequency_cap: Option<FrequencyCap>,
    /// The leases this host takes on the runs it advances and on the tick, so hosts
    /// sharing a database never advance one run (or tick) at once.
    pub lease: Lease,
    /// Where unsubscribe links point and the key sealing them; without them no email goes
    /// out, since an email must carry a working one-click unsubscribe.
    pub links: Option<crate::unsubscribe::Links>,
}

/// A cap on messages per customer across journeys (`frequency_cap = { messages = 3, days = 7 }`
/// in the config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrequencyCap {
    pub messages: u32,
    pub days: u32,
}

/// What one tick did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TickReport {
    pub entered: usize,
    pub advanced: usize,
    /// Another host, or this host's own loop, held the tick: this one did nothing.
    pub skipped: bool,
}

fn store(engine: &Engine) -> &Store {
    &engine.store
}

impl Engine {
    /// An engine with no frequency cap, leasing as a host of its own for [`DEFAULT_LEASE`].
    pub fn new(registry: Arc<Registry>, store: Arc<Store>, deliverer: Arc<Deliverer>) -> Engine {
        let host = uuid::Uuid::now_v7().simple().to_string();
        Engine { registry, store, deliverer, frequency_cap: None, lease: Lease::new(&host, DEFAULT_LEASE), links: None }
    }

    /// Checks a journey file against the configured channels and stores it.
    pub async fn deploy(&self, source: &str) -> Result<Journey, JourneyError> {
        let journey = definition::load(source, &self.deliverer.channel_names())?;
        store(self).upsert_journey(&journey.name, source).await?;
        Ok(journey)
    }

    /// Puts the person `id` names (profile id, userId or anonymousId) into a journey whose
    /// entry is `api = true`: `Ok(true)` when a run started, `Ok(false)` when the re-entry
    /// policy, test mode or a holdout kept them out.
    pub async fn enter_by_api(&self, journey_name: &str, id: &str, now: i64) -> Result<bool, JourneyError> {
        let journeys = store(self).journeys().await?;
        let stored = journeys.iter().find(|j| j.name == journey_name).ok_or_else(|| JourneyError::UnknownJourney(journey_name.to_string()))?;
        let journey = definition::load(&stored.definition, &self.deliverer.channel_names())?;
        if !journey.entry.api {
            return Err(JourneyError::NotEnteredByApi(journey_name.to_string()));
        }
        let profile = store(self).profile(id, 0).await?.ok_or_else(|| JourneyError::UnknownProfile(id.to_string()))?;
        Ok(self.start(&journey, &profile.id, now, None).await?)
    }

    /// Ticks every `tick` (at most a minute) at `clock`'s time, for the life of the process.
    pub async fn run(self: Arc<Self>, clock: Clock, tick: std::time::Duration) {
        let mut interval = tokio::time::interval(tick.min(std::time::Duration::from_secs(60)));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            match self.tick(clock.now()).await {
                Ok(report) if report.entered + report.advanced > 0 => tracing::info!(entered = report.entered, advanced = report.advanced, "journeys"),
                Ok(_) => {}
                Err(e) => tracing::error!("journeys could not advance: {e}"),
            }
        }
    }

    /// Takes new entrants in, then advances every run that is due at `now`. Of hosts
    /// sharing a database, one at a time ticks (the others find the tick's lease held and
    /// do nothing); each run it advances is leased to it besides. A tick that fails midway
    /// keeps the lease until it passes.
    pub async fn tick(&self, now: i64) -> Result<TickReport, StoreError> {
        let started = std::time::Instant::now();
        let mut report = TickReport::default();
        if !store(self).take_lease(TICK_LEASE, &self.lease).await? {
            return Ok(TickReport { skipped: true, ..report });
        }
        let mut journeys = Vec::new();
        let channels = self.deliverer.channel_names();
        for StoredJourney { name, definition: source, entry_cursor: cursor } in store(self).journeys().await? {
            match definition::load(&source, &channels) {
                Ok(journey) => {
                    report.entered += self.enter(&journey, cursor, now).await?;
                    journeys.push(journey);
                }
                Err(e) => tracing::error!(journey = name, "journey no longer loads; its runs wait: {e}"),
            }
        }
        let tick = Tick { now, started };
        // A goal reached while waiting ends the run now, not at its next wake-up.
        for journey in &journeys {
            if let Some(goal) = &journey.goal {
                for run in store(self).claim_goal_reached(&journey.name, &goal.event, 1000, &self.lease).await? {
                    self.advance(journey, run, &tick).await?;
                    report.advanced += 1;
                }
            }
        }
        // Runs that finish a step are due again at once; a few rounds settle everything
        // due now, and a journey stuck looping without a wait cannot hold the tick.
        for _ in 0..16 {
            // A tick longer than the lease keeps it by renewing; one that lost it stops.
            if !store(self).take_lease(TICK_LEASE, &self.lease).await? {
                tracing::warn!("another host took over the journey tick; this one stops here");
                break;
            }
            let due = store(self).claim_due_runs(now, 500, &self.lease).await?;
            // Runs go in lanes, one customer's runs in one lane, each lane in order and the
            // lanes at once: a slow provider answer holds up one lane, not the tick, and one
            // customer's frequency cap is counted one send at a time.
            let mut lanes: Vec<Vec<JourneyRun>> = (0..LANES).map(|_| Vec::new()).collect();
            for run in due {
                lanes[usize::from(bucket(&run.profile_id)) % LANES].push(run);
            }
            let lanes = lanes.into_iter().map(|lane| self.advance_lane(&journeys, lane, &tick));
            let mut progressed = false;
            for lane in futures_util::future::join_all(lanes).await {
                let (advanced, moved) = lane?;
                report.advanced += advanced;
                progressed |= moved;
            }
            if !progressed {
                break;
            }
        }
        // Whichever host comes next takes the next tick.
        store(self).release_lease(TICK_LEASE, &self.lease.owner).await?;
        Ok(report)
    }

    /// Advances one lane's runs in order: how many, and whether any moved.
    async fn advance_lane(&self, journeys: &[Journey], lane: Vec<JourneyRun>, tick: &Tick) -> Result<(usize, bool), StoreError> {
        let (mut advanced, mut progressed) = (0, false);
        for run in lane {
            let Some(journey) = journeys.iter().find(|j| j.name == run.journey) else {
                // Its journey does not load: let the run go as it is.
                store(self).save_run(run, Vec::new(), &self.lease).await?;
                continue;
            };
            let before = (run.step, run.status.clone(), run.wake_at);
            if let Some(after) = self.advance(journey, run, tick).await? {
                progressed |= before != (after.step, after.status.clone(), after.wake_at);
            }
            advanced += 1;
        }
        Ok((advanced, progressed))
    }

    /// Starts runs for everyone who entered the entry segment (and is still in it), or did
    /// the entry event, since the journey's cursor.
    async fn enter(&self, journey: &Journey, mut cursor: i64, now: i64) -> Result<usize, StoreError> {
        let mut entered = 0;
        if let Some(event) = &journey.entry.event {
            loop {
                let events = store(self).events_after(event, cursor, 1000).await?;
                let Some(last) = events.last().map(|e| e.id) else { break };
                for EventRef { id, profile_id, timestamp: at } in &events {
                    // The run starts at the event, so a 30-minute wait means 30 minutes
                    // after the cart, however late the tick.
                    entered += usize::from(self.start(journey, profile_id, (*at).min(now), Some(format!("event:{id}"))).await?);
                }
                cursor = last;
                store(self).set_journey_cursor(&journey.name, cursor).await?;
            }
            return Ok(entered);
        }
        let Some(segment) = &journey.entry.segment else { return Ok(0) };
        loop {
            let changes = store(self).changes(segment, cursor, 1000).await?;
            let Some(last) = changes.last().map(|c| c.id) else { break };
            for change in changes.iter().filter(|c| c.change == "enter") {
                if store(self).membership(segment, &change.profile_id).await?.is_none() {
                    continue;
                }
                entered += usize::from(self.start(journey, &change.profile_id, now, Some(format!("change:{}", change.id))).await?);
            }
            cursor = last;
            store(self).set_journey_cursor(&journey.name, cursor).await?;
        }
        Ok(entered)
    }

    /// Starts a run for `profile_id`, taken in by `cause` (a membership change or event; none
    /// for the API), unless the re-entry policy, test mode or an earlier run for the same
    /// cause keeps them out.
    async fn start(&self, journey: &Journey, profile_id: &str, now: i64, cause: Option<String>) -> Result<bool, StoreError> {
        if journey.test_mode {
            let profile = store(self).profile(profile_id, 0).await?;
            let test = profile.is_some_and(|p| p.traits.iter().any(|(name, value, _)| name == "test" && value == &Value::Bool(true)));
            if !test {
                return Ok(false);
            }
        }
        let id = uuid::Uuid::now_v7().to_string();
        let held_out = journey.holdout_percent > 0 && bucket(&format!("{}:{profile_id}", journey.name)) < journey.holdout_percent;
        let run = JourneyRun {
            id: id.clone(),
            journey: journey.name.clone(),
            profile_id: profile_id.to_string(),
            step: 0,
            status: if held_out { "done".into() } else { "active".into() },
            wake_at: None,
            step_started_at: now,
            entered_at: now,
            ended_reason: held_out.then(|| "held out".to_string()),
            entered_by: cause,
            version: 0,
        };
        let action = if held_out { "held out" } else { "entered" };
        let why = match (&journey.entry.event, &journey.entry.segment) {
            (Some(event), _) => format!("did {event:?}"),
            (None, segment) => format!("entered {:?}", segment.as_deref().unwrap_or("")),
        };
        let entry = log(&run, "entry", action, None, why, now);
        // The run and its entry in one transaction: a host advancing the new run at once
        // finds its entry logged already.
        store(self).start_run(run, &journey.re_entry, vec![entry]).await
    }

    /// Moves one run (leased to this host) as far as it can go at the tick's time, saving
    /// its position and log; `None` when another host took the run over meanwhile, whose
    /// copy then stands.
    async fn advance(&self, journey: &Journey, mut run: JourneyRun, tick: &Tick) -> Result<Option<JourneyRun>, StoreError> {
        let now = tick.now;
        let mut entries = Vec::new();
        for _ in 0..MAX_STEPS_PER_TICK {
            if run.status == "done" {
                break;
            }
            match self.reached_goal(journey, &mut run, tick, &mut entries).await? {
                Some(true) => break,
                Some(false) => {}
                None => return Ok(self.lost(&run)),
            }
            let Some(step) = journey.steps.get(run.step as usize) else {
                finish(&mut run, "completed");
                break;
            };
            match self.take_step(journey, step, &mut run, tick, &mut entries).await? {
                Flow::Stay => break,
                Flow::Go(next) => follow(journey, step, next, &mut run, now, &mut entries),
                Flow::Lost => return Ok(self.lost(&run)),
            }
        }
        if !store(self).save_run(run.clone(), entries, &self.lease).await? {
            return Ok(self.lost(&run));
        }
        Ok(Some(run))
    }

    fn lost(&self, run: &JourneyRun) -> Option<JourneyRun> {
        tracing::warn!(run = run.id, journey = run.journey, "another host took this run over (its lease passed); its copy stands");
        None
    }

    /// Ends the run when its goal event happened since it entered, leaving the journey's
    /// audiences; whether it did, or `None` when the run was lost to another host.
    async fn reached_goal(&self, journey: &Journey, run: &mut JourneyRun, tick: &Tick, entries: &mut Vec<JourneyLogEntry>) -> Result<Option<bool>, StoreError> {
        let now = tick.now;
        let Some(goal) = &journey.goal else { return Ok(Some(false)) };
        if store(self).events(&run.profile_id, &goal.event, run.entered_at, now, Some(1)).await?.is_empty() {
            return Ok(Some(false));
        }
        entries.push(log(run, "goal", "exited", None, format!("{} after entering", goal.event), now));
        if !self.leave_audiences(journey, run, tick, entries).await? {
            return Ok(None);
        }
        finish(run, "goal");
        Ok(Some(true))
    }

    /// Does what the run's current step asks at `now`: where to go next, or to stay.
    async fn take_step(
        &self,
        journey: &Journey,
        step: &Step,
        run: &mut JourneyRun,
        tick: &Tick,
        entries: &mut Vec<JourneyLogEntry>,
    ) -> Result<Flow, StoreError> {
        let now = tick.now;
        let woken = run.status == "waiting" && run.wake_at.is_some_and(|at| at <= now);
        // A send reads the customer once: for their time zone here, and for the message.
        let profile = if matches!(step, Step::Send { .. }) { store(self).profile(&run.profile_id, 0).await? } else { None };
        let zone = profile.as_ref().and_then(|p| p.timezone.as_deref());
        // Quiet hours, in the customer's time zone (UTC when unknown).
        let quiet = journey.quiet_hours.as_ref().and_then(|q| quiet_until(&q.start, &q.end, zone, now));
        // A send due in quiet hours waits at this step until they end; woken, it sends.
        if !woken && let Some(until) = quiet {
            wait_until(run, until);
            entries.push(log(run, step.id(), "quiet hours", None, format!("until {}", iso(until)), now));
            return Ok(Flow::Stay);
        }
        Ok(match step {
            Step::Wait { duration: Some(duration), .. } if !woken => {
                let until = now.saturating_add(parse_duration(duration).unwrap_or(0));
                wait_until(run, until);
                entries.push(log(run, step.id(), "waiting", None, format!("until {}", iso(until)), now));
                Flow::Stay
            }
            Step::Wait { until_trait: Some(name), plus_days, next, .. } if !woken => {
                self.wait_for_date(step, name, *plus_days, next, run, now, entries).await?
            }
            Step::Wait { next, .. } => Flow::Go(Next::from(next)),
            Step::WaitFor { event, timeout, on_event, on_timeout, .. } => {
                let deadline = run.step_started_at.saturating_add(parse_duration(timeout).unwrap_or(0));
                if !store(self).events(&run.profile_id, event, run.step_started_at, now, Some(1)).await?.is_empty() {
                    entries.push(log(run, step.id(), "event", None, event.clone(), now));
                    Flow::Go(Next::To(on_event.clone()))
                } else if now >= deadline {
                    entries.push(log(run, step.id(), "timeout", None, format!("no {event}"), now));
                    Flow::Go(Next::To(on_timeout.clone()))
                } else {
                    // Looks again within a minute, so an event is noticed soon.
                    wait_until(run, deadline.min(now + 60_000));
                    Flow::Stay
                }
            }
            Step::Split { segment, r#trait, equals, yes, no, .. } => {
                let answer = self.split(run, segment.as_deref(), r#trait.as_deref(), equals.as_ref()).await?;
                entries.push(log(run, step.id(), "split", None, answer.to_string(), now));
                Flow::Go(Next::To(if answer { yes.clone() } else { no.clone() }))
            }
            Step::Branch { segment, branches, default, .. } => {
                let label = store(self).membership(segment, &run.profile_id).await?.and_then(|m| m.label);
                let to = label.as_ref().and_then(|l| branches.get(l)).unwrap_or(default);
                entries.push(log(run, step.id(), "branch", None, label.unwrap_or_default(), now));
                Flow::Go(Next::To(to.clone()))
            }
            Step::Random { variants, .. } => {
                let to = pick_variant(variants, &run.id);
                entries.push(log(run, step.id(), "random", None, to.clone(), now));
                Flow::Go(Next::To(to))
            }
            Step::Send { channels, template, voucher, products, next, .. } => {
                // A send left in doubt by a crash waits here until its provider can be asked.
                let send = SendStep { step: step.id(), order: channels, template, voucher: voucher.as_deref(), products: *products, quiet };
                // A profile erased meanwhile has nobody to send to: the step passes.
                let sent = match &profile {
                    Some(profile) => self.send(run, profile, &send, tick, entries).await?,
                    None => Sent::Done,
                };
                match sent {
                    Sent::WaitUntil(at) => {
                        wait_until(run, at);
                        Flow::Stay
                    }
                    Sent::Done => Flow::Go(Next::from(next)),
                    Sent::Lost => Flow::Lost,
                }
            }
            Step::AudienceAdd { audiences, next, .. } | Step::AudienceRemove { audiences, next, .. } => {
                let add = matches!(step, Step::AudienceAdd { .. });
                match self.audiences(run, step.id(), audiences, add, tick, entries).await? {
                    Synced::Done => Flow::Go(Next::from(next)),
                    Synced::RetryAt(at) => {
                        wait_until(run, at);
                        Flow::Stay
                    }
                    Synced::Lost => Flow::Lost,
                }
            }
            Step::Exit { .. } => Flow::Go(Next::To("exit".into())),
        })
    }

    /// A `wait` until a date trait (RFC 3339 text or milliseconds) plus some days: a date
    /// already past goes straight on, a missing one is logged and skipped.
    #[allow(clippy::too_many_arguments)]
    async fn wait_for_date(
        &self,
        step: &Step,
        name: &str,
        plus_days: i64,
        next: &Option<String>,
        run: &mut JourneyRun,
        now: i64,
        entries: &mut Vec<JourneyLogEntry>,
    ) -> Result<Flow, StoreError> {
        let profile = store(self).profile(&run.profile_id, 0).await?;
        // A trait is whatever a write key sent: a date outside the host's range counts as
        // no date, and the arithmetic cannot overflow.
        let date = profile.and_then(|p| p.traits.into_iter().find(|(n, _, _)| n == name)).and_then(|(_, value, _)| match value {
            Value::Number(n) => n.as_i64(),
            Value::String(text) => chrono::DateTime::parse_from_rfc3339(&text).ok().map(|t| t.timestamp_millis()),
            _ => None,
        });
        let date = date.filter(|d| rekindle_runtime::json::check_timestamp(*d, name).is_ok());
        Ok(match date.and_then(|d| d.checked_add(plus_days.checked_mul(86_400_000)?)) {
            Some(until) if until > now => {
                wait_until(run, until);
                entries.push(log(run, step.id(), "waiting", None, format!("until {} ({name} + {plus_days} days)", iso(until)), now));
                Flow::Stay
            }
            Some(_) => Flow::Go(Next::from(next)),
            None => {
                entries.push(log(run, step.id(), "skipped", None, format!("no date in trait `{name}`"), now));
                Flow::Go(Next::from(next))
            }
        })
    }

    /// A split's answer: membership of `segment`, or `trait` equal to `equals`.
    async fn split(&self, run: &JourneyRun, segment: Option<&str>, r#trait: Option<&str>, equals: Option<&toml::Value>) -> Result<bool, StoreError> {
        Ok(match (segment, r#trait) {
            (Some(segment), _) => store(self).membership(segment, &run.profile_id).await?.is_some(),
            (None, Some(name)) => {
                let want = equals.and_then(|v| serde_json::to_value(v).ok()).unwrap_or(Value::Null);
                store(self).profile(&run.profile_id, 0).await?.is_some_and(|p| p.traits.iter().any(|(n, v, _)| n == name && *v == want))
            }
            _ => false,
        })
    }

    /// Sends one step's message on the first channel that reaches the customer. Says when
    /// to come back if the step must wait: a send in doubt whose provider cannot be asked
    /// yet, one the provider asked to retry later, or a repeat that would fall in quiet
    /// hours.
    async fn send(
        &self,
        run: &JourneyRun,
        profile: &rekindle_store::ProfileRecord,
        send: &SendStep<'_>,
        tick: &Tick,
        entries: &mut Vec<JourneyLogEntry>,
    ) -> Result<Sent, StoreError> {
        let (step, now) = (send.step, tick.now);
        let Claimed { channel, to, key, claimed_at, earlier } = match self.claim(run, profile, send, now, entries).await? {
            Claim::Claimed(claimed) => claimed,
            Claim::Nothing => return Ok(Sent::Done),
            Claim::Lost => return Ok(Sent::Lost),
        };
        let related = if send.products > 0 { store(self).related_products(&run.profile_id, send.products).await? } else { Vec::new() };
        let address = to.clone();
        let needs = self.deliverer.needs(&self.registry, &channel);
        let email = needs.as_ref().is_some_and(|n| n.contact.as_deref() == Some("email"));
        let unsubscribe = match (needs.as_ref().and_then(|n| n.consent), &self.links) {
            (Some(purpose), Some(links)) => {
                let subscription = Subscription { profile_id: run.profile_id.clone(), purpose, topic: None, send_key: key.clone(), channel: channel.clone() };
                links.url(&subscription).map(|url| UnsubscribeLink { url, email })
            }
            _ => None,
        };
        if email && unsubscribe.is_none() {
            store(self).settle_send(&key, "failed").await?;
            let why = "an email needs a one-click unsubscribe link, and this host has none: set public_url";
            entries.push(log(run, step, "failed", Some(&channel), why.into(), now));
            return Ok(Sent::Done);
        }
        let message = match render(send.template, profile, send.voucher, &related, to, key.clone(), unsubscribe.as_ref()) {
            Ok(message) => message,
            Err(e) => {
                store(self).settle_send(&key, "failed").await?;
                entries.push(log(run, step, "failed", Some(&channel), format!("template: {e}"), now));
                return Ok(Sent::Done);
            }
        };
        let mut resent = String::new();
        match earlier {
            Earlier::None => {}
            // Claimed, but the request never went out: nothing can have arrived.
            Earlier::NeverSent => resent = " (sent after a restart: the first attempt never went out)".into(),
            Earlier::Sent(sent_at) => {
                match self.in_doubt(run, step, &channel, &key, &message, sent_at, now, entries).await? {
                    InDoubt::Settled => return Ok(Sent::Done),
                    InDoubt::AskAt(at) => return Ok(Sent::WaitUntil(at)),
                    InDoubt::Resend(why) => resent = format!(" (resent: {why})"),
                }
                // A repeat is a new message to the customer: it keeps to quiet hours.
                if let Some(until) = send.quiet {
                    entries.push(log(run, step, "quiet hours", Some(&channel), format!("resending the message in doubt at {}", iso(until)), now));
                    return Ok(Sent::WaitUntil(until));
                }
            }
        }
        // Just before each attempt goes out: how long to wait before asking the provider
        // counts from there (not from the tick's start, nor the first of several attempts),
        // and a host that lost the run meanwhile sends nothing.
        let mut before_each = self.mark_sending(&key, run, tick);
        let delivered = self.deliverer.deliver_checked(&self.registry, &channel, &message, &mut before_each).await;
        match &delivered {
            Err(DeliveryError::Withdrawn) => return Ok(Sent::Lost),
            // Nothing went out: the adapter could not run now (a deadline on a loaded
            // machine). The claim stays, and the step tries again shortly.
            Err(DeliveryError::AdapterBusy(why)) if now - claimed_at < GIVE_UP_ON_BUSY_ADAPTER => {
                let at = now.saturating_add(BUSY_ADAPTER_RETRY);
                entries.push(log(run, step, "retrying", Some(&channel), format!("the adapter could not run now ({why}); trying again after {}", iso(at)), now));
                return Ok(Sent::WaitUntil(at));
            }
            _ => {}
        }
        let last = delivered.as_ref().ok().and_then(|attempts| attempts.last());
        if let Some(attempt) = last
            && let Outcome::RetryLater(retry) = &attempt.outcome
            && now - claimed_at < GIVE_UP_ASKING_AFTER
        {
            // No answer after sending is a crash's doubt; a provider that asked to retry
            // later gets the same send again later, under the same key. Either way the send
            // stays claimed, and the next visit decides it as one left by a crash.
            let after = if attempt.in_doubt { 1_000 } else { i64::from(retry.after_seconds.unwrap_or(0)).saturating_mul(1000).max(RETRY_LATER_AFTER) };
            let at = now.saturating_add(after);
            let action = if attempt.in_doubt { "in doubt" } else { "retrying" };
            entries.push(log(run, step, action, Some(&channel), format!("{}; trying again after {}", retry.reason, iso(at)), now));
            return Ok(Sent::WaitUntil(at));
        }
        let (action, detail) = match delivered {
            Ok(attempts) => match attempts.last().map(|a| &a.outcome) {
                Some(Outcome::Delivered(id)) => ("sent", id.clone().unwrap_or_default()),
                Some(Outcome::NotEligible(why)) => ("not eligible", why.clone()),
                Some(Outcome::RetryLater(retry)) => ("failed", format!("gave up after a day: {}", retry.reason)),
                Some(Outcome::Failed(why)) => ("failed", why.clone()),
                None => ("failed", "the adapter made no request".into()),
            },
            Err(e) => ("failed", e.to_string()),
        };
        store(self).settle_send(&key, action).await?;
        if action == "not eligible"
            && let Some(kind) = self.deliverer.needs(&self.registry, &channel).and_then(|needs| needs.contact)
        {
            // The provider refused the address itself (a number that texted STOP, a push
            // token no longer registered): no journey tries it again until an operator lifts it.
            let target = SuppressTarget::Contact { kind, address: Some(address) };
            let suppress = Suppress { target, reason: "refused by provider".into(), detail: Some(detail.clone()), expires_at: None };
            store(self).suppress(&run.profile_id, &channel, &key, suppress, now).await?;
        }
        entries.push(log(run, step, action, Some(&channel), detail + &resent, now));
        Ok(Sent::Done)
    }

    /// The channel, address and idempotency key this step sends under, claimed in the
    /// store. A claim made for this step before decides everything: a send settled on any
    /// channel is never repeated, and one left in doubt stays on its channel, since another
    /// channel could message the customer twice.
    async fn claim(
        &self,
        run: &JourneyRun,
        profile: &rekindle_store::ProfileRecord,
        send: &SendStep<'_>,
        now: i64,
        entries: &mut Vec<JourneyLogEntry>,
    ) -> Result<Claim, StoreError> {
        let step = send.step;
        let StepSend { key, channel, claimed_at, sent_at, .. } = match store(self).step_send(&run.id, step).await? {
            Some(claimed) if claimed.outcome != "pending" => return Ok(Claim::Nothing),
            Some(claimed) => claimed,
            None => return self.claim_new(run, profile, send, now, entries).await,
        };
        // The claim is this host's to act on only while it holds the run.
        match store(self).claim_send(&key, run, &channel, now, &self.lease).await? {
            SendClaim::LostRun => return Ok(Claim::Lost),
            SendClaim::Existing(ClaimedSend { outcome, .. }) if outcome != "pending" => return Ok(Claim::Nothing),
            SendClaim::Existing(_) | SendClaim::New => {}
        }
        let reach = self.deliverer.needs(&self.registry, &channel).map(|needs| {
            let (chosen, skipped) = choose_channel(std::slice::from_ref(&needs), profile);
            (chosen.map(|(_, to)| to), skipped)
        });
        match reach {
            Some((Some(to), _)) => Ok(Claim::Claimed(Claimed { channel, to, key, claimed_at, earlier: Earlier::from(sent_at) })),
            unreachable => {
                let why = unreachable.and_then(|(_, skipped)| skipped.into_iter().next()).map_or("the channel is no longer configured".into(), |s| s.reason);
                store(self).settle_send(&key, "failed").await?;
                entries.push(log(run, step, "failed", Some(&channel), format!("in doubt, and no longer sendable: {why}"), now));
                Ok(Claim::Nothing)
            }
        }
    }

    /// A first claim for this step: within the frequency cap, on the first channel in the
    /// step's order that reaches the customer.
    async fn claim_new(
        &self,
        run: &JourneyRun,
        profile: &rekindle_store::ProfileRecord,
        send: &SendStep<'_>,
        now: i64,
        entries: &mut Vec<JourneyLogEntry>,
    ) -> Result<Claim, StoreError> {
        let step = send.step;
        if let Some(cap) = self.frequency_cap {
            let since = now - i64::from(cap.days) * 86_400_000;
            let recent = store(self).sends_since(&run.profile_id, since).await?;
            if recent >= i64::from(cap.messages) {
                let detail = format!("frequency cap: {recent} messages in the last {} days (at most {})", cap.days, cap.messages);
                entries.push(log(run, step, "capped", None, detail, now));
                return Ok(Claim::Nothing);
            }
        }
        let mut needs = Vec::with_capacity(send.order.len());
        for name in send.order {
            match self.deliverer.needs(&self.registry, name) {
                Some(channel) => needs.push(channel),
                None => entries.push(log(run, step, "skipped", Some(name), "not a message channel (an ad audience, or not configured)".into(), now)),
            }
        }
        let (chosen, skipped) = choose_channel(&needs, profile);
        for skip in skipped {
            entries.push(log(run, step, "skipped", Some(&skip.channel), skip.reason, now));
        }
        let Some((channel, to)) = chosen else {
            entries.push(log(run, step, "unreachable", None, "no channel can reach this customer".into(), now));
            return Ok(Claim::Nothing);
        };
        let key = format!("{}:{step}:{}", run.id, channel.name);
        Ok(match store(self).claim_send(&key, run, &channel.name, now, &self.lease).await? {
            SendClaim::New => Claim::Claimed(Claimed { channel: channel.name.clone(), to, key, claimed_at: now, earlier: Earlier::None }),
            SendClaim::Existing(ClaimedSend { outcome, .. }) if outcome != "pending" => Claim::Nothing,
            SendClaim::Existing(ClaimedSend { claimed_at, sent_at, .. }) => {
                Claim::Claimed(Claimed { channel: channel.name.clone(), to, key, claimed_at, earlier: Earlier::from(sent_at) })
            }
            SendClaim::LostRun => Claim::Lost,
        })
    }

    /// Decides a send left in doubt (by a crash, a request that got no answer, or a
    /// provider that asked to retry later): asks the provider when the adapter can, once
    /// `reconcile_after` has passed since the request went out; records a message the
    /// provider has as sent; otherwise says why it must go again.
    #[allow(clippy::too_many_arguments)]
    async fn in_doubt(
        &self,
        run: &JourneyRun,
        step: &str,
        channel: &str,
        key: &str,
        message: &rekindle_runtime::wit::Message,
        sent_at: i64,
        now: i64,
        entries: &mut Vec<JourneyLogEntry>,
    ) -> Result<InDoubt, StoreError> {
        let Some(lookup) = self.deliverer.lookup(&self.registry, channel, message).await else {
            return Ok(InDoubt::Resend("the adapter cannot ask its provider; sent again under the same key".into()));
        };
        let wait = i64::try_from(lookup.after().as_millis()).unwrap_or(i64::MAX);
        let ask_at = sent_at.saturating_add(wait);
        if now < ask_at {
            entries.push(log(run, step, "in doubt", Some(channel), format!("asking the provider at {}", iso(ask_at)), now));
            return Ok(InDoubt::AskAt(ask_at));
        }
        Ok(match self.deliverer.reconcile(lookup, message).await {
            Ok(Reconciled::Answered(Found::Accepted(id))) => {
                store(self).settle_send(key, "sent").await?;
                let detail = format!("{} (confirmed by the provider; not sent again)", id.unwrap_or_default());
                entries.push(log(run, step, "sent", Some(channel), detail, now));
                InDoubt::Settled
            }
            Ok(Reconciled::Answered(Found::Absent)) => InDoubt::Resend("the provider had not received it".into()),
            Ok(Reconciled::Answered(Found::Unknown(why))) => InDoubt::Resend(format!("the provider could not say: {why}")),
            Ok(Reconciled::AskAgain { after, why }) if now - sent_at < GIVE_UP_ASKING_AFTER => {
                let at = now + i64::try_from(after.as_millis()).unwrap_or(i64::MAX / 2);
                entries.push(log(run, step, "in doubt", Some(channel), format!("the provider could not answer ({why}); asking again at {}", iso(at)), now));
                InDoubt::AskAt(at)
            }
            Ok(Reconciled::AskAgain { why, .. }) => InDoubt::Resend(format!("the provider could not answer for a day ({why})")),
            Err(e) => InDoubt::Resend(format!("the lookup failed: {e}")),
        })
    }

    /// Applies an audience step's changes, one claimed change per channel and audience, so
    /// none is applied twice and each keeps its own key when tried again. A change the
    /// provider refused for now is logged as failed and retried (the step waits) for up to
    /// a day; one it refused for good is logged as failed and the run goes on.
    async fn audiences(
        &self,
        run: &JourneyRun,
        step: &str,
        audiences: &std::collections::BTreeMap<String, String>,
        add: bool,
        tick: &Tick,
        entries: &mut Vec<JourneyLogEntry>,
    ) -> Result<Synced, StoreError> {
        let now = tick.now;
        let Some(profile) = store(self).profile(&run.profile_id, 0).await? else { return Ok(Synced::Done) };
        if add && !profile.consents.iter().any(|c| c.purpose == rekindle_store::Purpose::Ads && c.granted) {
            entries.push(log(run, step, "skipped", None, "no ads consent".into(), now));
            return Ok(Synced::Done);
        }
        let active = |kind: &str| profile.contacts.iter().filter(|c| c.kind == kind && c.active).map(|c| c.address.clone()).collect::<Vec<_>>();
        let member = AudienceMember { profile_id: profile.id.clone(), emails: active("email"), phones: active("phone") };
        let (done, failed) = if add { ("audience added", "audience add failed") } else { ("audience removed", "audience remove failed") };
        let mut retry_at = None;
        for (channel, audience) in audiences {
            let key = format!("{}:{step}:{channel}:{audience}:{}", run.id, if add { "add" } else { "remove" });
            let made_at = match store(self).claim_send(&key, run, channel, now, &self.lease).await? {
                SendClaim::LostRun => return Ok(Synced::Lost),
                SendClaim::Existing(ClaimedSend { outcome, .. }) if outcome != "pending" => continue,
                SendClaim::Existing(ClaimedSend { claimed_at, .. }) => claimed_at,
                SendClaim::New => now,
            };
            let (add_list, remove_list) = if add { (vec![member.clone()], Vec::new()) } else { (Vec::new(), vec![member.clone()]) };
            let change = AudienceChange { audience: audience.clone(), add: add_list, remove: remove_list };
            let mut before_each = self.mark_sending(&key, run, tick);
            let synced = self.deliverer.sync_audience_checked(&self.registry, channel, &change, made_at, &mut before_each).await;
            if let Err(DeliveryError::Withdrawn) = synced {
                return Ok(Synced::Lost);
            }
            if let Err(DeliveryError::AdapterBusy(why)) = &synced
                && now - made_at < GIVE_UP_ON_BUSY_ADAPTER
            {
                let at = now.saturating_add(BUSY_ADAPTER_RETRY);
                retry_at = Some(retry_at.map_or(at, |earlier: i64| earlier.min(at)));
                entries.push(log(
                    run,
                    step,
                    failed,
                    Some(channel),
                    format!("{audience}: the adapter could not run now ({why}); trying again after {}", iso(at)),
                    now,
                ));
                continue;
            }
            let refusal = match &synced {
                Ok(attempts) => attempts.iter().find(|a| !matches!(a.outcome, Outcome::Delivered(_))),
                Err(_) => None,
            };
            let (outcome, detail, again) = match (&synced, refusal) {
                (Ok(_), None) => ("sent", audience.clone(), false),
                (Ok(_), Some(attempt)) => {
                    let again = matches!(attempt.outcome, Outcome::RetryLater(_)) && now - made_at < GIVE_UP_ASKING_AFTER;
                    ("failed", format!("{audience}: {}", outcome_text(&attempt.outcome)), again)
                }
                (Err(e), _) => ("failed", format!("{audience}: {e}"), false),
            };
            if again {
                let at = now.saturating_add(RETRY_LATER_AFTER);
                retry_at = Some(retry_at.map_or(at, |earlier: i64| earlier.min(at)));
                entries.push(log(run, step, failed, Some(channel), format!("{detail}; trying again after {}", iso(at)), now));
                continue;
            }
            store(self).settle_send(&key, outcome).await?;
            entries.push(log(run, step, if outcome == "sent" { done } else { failed }, Some(channel), detail, now));
        }
        Ok(retry_at.map_or(Synced::Done, Synced::RetryAt))
    }

    /// The check before each attempt at the send claimed under `key`: records when it went
    /// out, and says whether this host still holds `run`. A store failure counts as no.
    fn mark_sending<'a>(&'a self, key: &'a str, run: &'a JourneyRun, tick: &'a Tick) -> impl FnMut() -> futures_util::future::BoxFuture<'a, bool> + Send + 'a {
        move || {
            Box::pin(async move {
                match store(self).mark_sending(key, run, tick.current(), &self.lease).await {
                    Ok(held) => held,
                    Err(e) => {
                        tracing::error!(key, "could not record a send going out; not sending it: {e}");
                        false
                    }
                }
            })
        }
    }

    /// Takes the customer out of every audience the journey adds to; false when the run
    /// was lost to another host. A removal the provider refuses now is logged as failed:
    /// the run is ending, so it is not retried.
    async fn leave_audiences(&self, journey: &Journey, run: &JourneyRun, tick: &Tick, entries: &mut Vec<JourneyLogEntry>) -> Result<bool, StoreError> {
        for step in journey.steps.iter().take(run.step as usize) {
            if let Step::AudienceAdd { audiences, .. } = step
                && let Synced::Lost = self.audiences(run, step.id(), audiences, false, tick, entries).await?
            {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// An adapter's outcome as the journey log says it.
fn outcome_text(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Delivered(id) => format!("delivered {}", id.as_deref().unwrap_or("")),
        Outcome::NotEligible(why) => format!("not eligible: {why}"),
        Outcome::RetryLater(retry) => format!("retry later: {}", retry.reason),
        Outcome::Failed(why) => format!("failed: {why}"),
    }
}

/// The time a tick runs at, and when it started, so a moment inside it can be told.
struct Tick {
    now: i64,
    started: std::time::Instant,
}

impl Tick {
    /// The tick's time plus what has passed since it started.
    fn current(&self) -> i64 {
        self.now.saturating_add(i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX))
    }
}

/// What a send step's send came to.
enum Sent {
    /// Nothing (more) to send here: the step is done.
    Done,
    /// The step waits until then.
    WaitUntil(i64),
    /// Another host took the run over.
    Lost,
}

/// What an audience step's changes came to.
enum Synced {
    Done,
    RetryAt(i64),
    Lost,
}

/// What claiming a step's send came to.
enum Claim {
    Claimed(Claimed),
    /// Nothing to send: settled before, capped, or unreachable.
    Nothing,
    /// Another host took the run over.
    Lost,
}

/// What happened to a claimed send before this visit.
enum Earlier {
    /// Nothing: it is claimed now.
    None,
    /// Claimed before, but its request never went out.
    NeverSent,
    /// Its request went out at this time, and no outcome was recorded.
    Sent(i64),
}

impl From<Option<i64>> for Earlier {
    fn from(sent_at: Option<i64>) -> Earlier {
        sent_at.map_or(Earlier::NeverSent, Earlier::Sent)
    }
}

enum Next {
    Following,
    To(String),
}

/// A send claimed in the store: its channel, address and idempotency key, when it was
/// claimed, and what happened to it before.
struct Claimed {
    channel: String,
    to: String,
    key: String,
    claimed_at: i64,
    earlier: Earlier,
}

/// What a step decided: go on to another step, or stay at this one (waiting, or done).
enum Flow {
    Go(Next),
    Stay,
    /// Another host took the run over: stop without saving.
    Lost,
}

/// Moves the run to the step `next` names after `step`, or out of the journey.
fn follow(journey: &Journey, step: &Step, next: Next, run: &mut JourneyRun, now: i64, entries: &mut Vec<JourneyLogEntry>) {
    match next {
        Next::Following => {
            let following = run.step + 1;
            go_to(run, following, now);
        }
        Next::To(target) if target == "exit" => {
            entries.push(log(run, step.id(), "exited", None, "exit".into(), now));
            finish(run, "exit");
        }
        Next::To(target) => {
            let index = journey.steps.iter().position(|s| s.id() == target).unwrap_or(journey.steps.len());
            go_to(run, index as i64, now);
        }
    }
}

/// The variant a run's bucket falls in, by weight; the last when weights run out.
fn pick_variant(variants: &[crate::definition::Variant], run_id: &str) -> String {
    let total: u32 = variants.iter().map(|v| v.weight).sum();
    let mut pick = u32::from(bucket(run_id)) * total / 100;
    let chosen = variants.iter().find(|v| {
        pick < v.weight || {
            pick -= v.weight;
            false
        }
    });
    chosen.unwrap_or(&variants[variants.len() - 1]).next.clone()
}

impl From<&Option<String>> for Next {
    fn from(next: &Option<String>) -> Next {
        next.clone().map_or(Next::Following, Next::To)
    }
}

fn go_to(run: &mut JourneyRun, step: i64, now: i64) {
    run.step = step;
    run.status = "active".into();
    run.wake_at = None;
    run.step_started_at = now;
}

fn wait_until(run: &mut JourneyRun, at: i64) {
    run.status = "waiting".into();
    run.wake_at = Some(at);
}

fn finish(run: &mut JourneyRun, reason: &str) {
    run.status = "done".into();
    run.wake_at = None;
    run.ended_reason = Some(reason.into());
}

fn log(run: &JourneyRun, step: &str, action: &str, channel: Option<&str>, detail: String, at: i64) -> JourneyLogEntry {
    JourneyLogEntry {
        run_id: run.id.clone(),
        journey: run.journey.clone(),
        profile_id: run.profile_id.clone(),
        step: step.into(),
        action: action.into(),
        channel: channel.map(String::from),
        detail,
        at,
    }
}

/// The end of the quiet hours `start`..`end` (local `HH:MM`, wrapping midnight when start
/// is later than end) in time zone `zone`, if `now` falls inside them.
pub fn quiet_until(start: &str, end: &str, zone: Option<&str>, now: i64) -> Option<i64> {
    use chrono::{Duration, NaiveTime, TimeZone, Timelike};
    let tz: chrono_tz::Tz = zone.and_then(|z| z.parse().ok()).unwrap_or(chrono_tz::UTC);
    let local = chrono::Utc.timestamp_millis_opt(now).single()?.with_timezone(&tz);
    let (start, end) = (NaiveTime::parse_from_str(start, "%H:%M").ok()?, NaiveTime::parse_from_str(end, "%H:%M").ok()?);
    let time = NaiveTime::from_hms_opt(local.hour(), local.minute(), local.second())?;
    let quiet = if start <= end { time >= start && time < end } else { time >= start || time < end };
    if !quiet {
        return None;
    }
    let mut ends = local.date_naive().and_time(end);
    if ends <= local.naive_local() {
        ends += Duration::days(1);
    }
    // A time skipped by a daylight-saving jump resolves to the next valid instant.
    let resolved = tz.from_local_datetime(&ends).earliest().or_else(|| tz.from_local_datetime(&(ends + Duration::hours(1))).earliest())?;
    Some(resolved.timestamp_millis())
}

/// 0 to 99 from a key, the same everywhere.
fn bucket(key: &str) -> u8 {
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(key.as_bytes());
    (u32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]]) % 100) as u8
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)).unwrap_or_default()
}

/// What became of a send in doubt.
enum InDoubt {
    /// The provider had it: recorded as sent.
    Settled,
    /// Ask the provider at this time.
    AskAt(i64),
    /// Send it again, for this reason.
    Resend(String),
}

/// A send step's settings, as the engine hands them to [`Engine::send`].
struct SendStep<'a> {
    step: &'a str,
    order: &'a [String],
    template: &'a crate::messages::MessageTemplate,
    voucher: Option<&'a str>,
    products: usize,
    /// When the customer's quiet hours end, if they are in them now.
    quiet: Option<i64>,
}

/// How long the engine keeps asking a provider that cannot answer (rate limited, down)
/// about a send in doubt before sending it again, and keeps retrying a send or audience
/// change the provider asked to retry later before recording it as failed.
const GIVE_UP_ASKING_AFTER: i64 = 86_400_000;

/// How soon a send or audience change whose adapter could not run (its deadline passed on
/// a loaded machine, no instance was free) is tried again, and for how long after its claim
/// before it counts as failed: an adapter that always runs out of time is broken.
const BUSY_ADAPTER_RETRY: i64 = 5_000;
const GIVE_UP_ON_BUSY_ADAPTER: i64 = 10 * 60_000;

/// The least wait before a send or audience change the provider asked to retry later (past
/// the host's own retries) is tried again.
const RETRY_LATER_AFTER: i64 = 60_000;

#[cfg(test)]
mod tests {
    use super::quiet_until;

    fn ms(text: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(text).unwrap().timestamp_millis()
    }

    #[test]
    fn quiet_hours_follow_the_customer_time_zone() {
        // 22:30 in Paris (summer, UTC+2) is quiet until 08:00 there, 06:00 UTC.
        assert_eq!(quiet_until("21:00", "08:00", Some("Europe/Paris"), ms("2026-06-01T20:30:00Z")), Some(ms("2026-06-02T06:00:00Z")));
        // 07:59 is still quiet; 08:00 is not.
        assert_eq!(quiet_until("21:00", "08:00", Some("Europe/Paris"), ms("2026-06-02T05:59:00Z")), Some(ms("2026-06-02T06:00:00Z")));
        assert_eq!(quiet_until("21:00", "08:00", Some("Europe/Paris"), ms("2026-06-02T06:00:00Z")), None);
        // The same instant is mid-afternoon in New York.
        assert_eq!(quiet_until("21:00", "08:00", Some("America/New_York"), ms("2026-06-01T20:30:00Z")), None);
        // Unknown zones count as UTC; a window within one day works too.
        assert_eq!(quiet_until("12:00", "14:00", None, ms("2026-06-01T13:00:00Z")), Some(ms("2026-06-01T14:00:00Z")));
        assert_eq!(quiet_until("12:00", "14:00", Some("Not/AZone"), ms("2026-06-01T15:00:00Z")), None);
    }
}
