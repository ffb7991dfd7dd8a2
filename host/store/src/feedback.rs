//! Delivery feedback and suppressions: what providers report about a send after accepting
//! it, joined to the send by its idempotency key, recorded once per provider event id, as
//! a profile event, and what it switches off. The deliver stage decides what each report
//! means ([`FeedbackWrite`]); this records it.

use serde_json::{Map, Value, json};

use crate::StoreError;
use crate::db::{Db, P, Row};
use crate::logic::{OPERATOR, upsert_consent};
use crate::model::{FeedbackRefusal, FeedbackReport, FeedbackWrite, Purpose, Suppress, SuppressTarget, Suppression, Touch};

/// The send an idempotency key names on `channel`: its customer and journey. A send made
/// on another channel is not this provider's to report on.
fn send_owner(db: &mut impl Db, channel: &str, key: &str) -> Result<Option<(String, String)>, StoreError> {
    Ok(db
        .query_opt(
            "SELECT r.profile_id, r.journey FROM journey_sends s JOIN journey_runs r ON r.id = s.run_id
             WHERE s.idempotency_key = ?1 AND s.channel = ?2",
            &[P::Text(key), P::Text(channel)],
        )?
        .map(|r| (r.text(0), r.text(1))))
}

/// Records a webhook's reports on `channel` in one transaction: every report names a send
/// this host made, or nothing is recorded. A report already recorded (same provider event
/// id) is counted as a duplicate and changes nothing.
pub(crate) fn record_feedback(
    db: &mut impl Db,
    channel: &str,
    writes: &[FeedbackWrite],
    received_at: i64,
) -> Result<Result<FeedbackReport, FeedbackRefusal>, StoreError> {
    let mut report = FeedbackReport::default();
    let mut known = Vec::with_capacity(writes.len());
    for write in writes {
        match send_owner(db, channel, &write.send_key)? {
            Some(owner) => known.push((write, owner)),
            None => report.unknown.push(write.index),
        }
    }
    // A webhook about nothing this host sent is refused; one that mixes in reports about
    // sends it does not know (another host on the same provider account, a person since
    // erased) records the rest, so one stray report cannot hold up everyone's.
    if known.is_empty()
        && let Some(first) = writes.first()
    {
        return Ok(Err(FeedbackRefusal::UnknownSendKey { index: first.index, key: first.send_key.clone() }));
    }
    for (write, (profile, journey)) in known {
        let inserted = db.execute(
            "INSERT INTO feedback (channel, event_id, send_key, profile_id, journey, kind, at, recipient, reason, url, machine, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) ON CONFLICT (channel, event_id) DO NOTHING",
            &[
                P::Text(channel),
                P::Text(&write.event_id),
                P::Text(&write.send_key),
                P::Text(&profile),
                P::Text(&journey),
                P::Text(&write.kind),
                P::Int(write.at),
                P::OptText(write.recipient.as_deref()),
                P::OptText(write.reason.as_deref()),
                P::OptText(write.url.as_deref()),
                P::Bool(write.machine),
                P::Int(received_at),
            ],
        )?;
        if inserted == 0 {
            report.duplicates += 1;
            continue;
        }
        report.accepted += 1;
        // The profile may be locked by ingestion right now; this waits its turn like any
        // writer, and a profile erased since the send gets nothing.
        if !db.lock_profile(&profile, false)? {
            continue;
        }
        if let Some(event) = &write.event {
            let mut properties = Map::new();
            properties.insert("channel".into(), json!(channel));
            properties.insert("journey".into(), json!(journey));
            properties.insert("send_key".into(), json!(write.send_key));
            properties.insert("provider_event_id".into(), json!(write.event_id));
            for (name, value) in [("recipient", &write.recipient), ("reason", &write.reason), ("url", &write.url)] {
                if let Some(value) = value {
                    properties.insert(name.into(), json!(value));
                }
            }
            let message_id = format!("feedback:{channel}:{}", write.event_id);
            db.execute(
                "INSERT INTO events (profile_id, name, timestamp, properties, message_id) VALUES (?1, ?2, ?3, ?4, ?5)",
                &[P::Text(&profile), P::Text(event), P::Int(write.at), P::Text(&Value::Object(properties).to_string()), P::Text(&message_id)],
            )?;
            report.touched.push(Touch { profile_id: profile.clone(), event: Some(event.clone()), order: false });
        }
        if let Some(suppress) = &write.suppress {
            // Recorded as of the report, but a consent is withdrawn as of now: a grant the
            // store saw after the report's time must not outrank the withdrawal.
            let added = suppress_profile(db, &profile, Some(channel), Some(&write.send_key), suppress, write.at.max(received_at))?;
            if added > 0 {
                report.suppressed += added;
                report.touched.push(Touch { profile_id: profile.clone(), event: None, order: false });
            }
        }
    }
    Ok(Ok(report))
}

/// Switches off what `suppress` names on `profile`, recording each suppression with its
/// reason and send; how many it recorded. A contact suppression without an address covers
/// every address of that kind the profile has. A permanent one switches the address off
/// in the profile too, so every reader of contacts sees it off.
pub(crate) fn suppress_profile(
    db: &mut impl Db,
    profile: &str,
    channel: Option<&str>,
    send_key: Option<&str>,
    suppress: &Suppress,
    at: i64,
) -> Result<usize, StoreError> {
    let targets: Vec<(String, String)> = match &suppress.target {
        SuppressTarget::Contact { kind, address } => {
            let addresses: Vec<String> = db
                .query("SELECT address FROM contacts WHERE profile_id = ?1 AND kind = ?2", &[P::Text(profile), P::Text(kind)])?
                .iter()
                .map(|r| r.text(0))
                .filter(|known| address.as_ref().is_none_or(|wanted| known.eq_ignore_ascii_case(wanted)))
                .collect();
            // A resting address (a soft bounce) stays on in the table: the live suppression
            // holds it off until it expires, and then nothing needs undoing.
            for known in addresses.iter().filter(|_| suppress.expires_at.is_none()) {
                db.execute(
                    "UPDATE contacts SET active = ?4 WHERE profile_id = ?1 AND kind = ?2 AND address = ?3",
                    &[P::Text(profile), P::Text(kind), P::Text(known), P::Bool(false)],
                )?;
            }
            addresses.into_iter().map(|known| ("contact".to_string(), format!("{kind}:{known}"))).collect()
        }
        SuppressTarget::Consent(purpose) => {
            upsert_consent(db, profile, *purpose, false, at, OPERATOR)?;
            vec![("consent".to_string(), purpose.name().to_string())]
        }
    };
    for (kind, target) in &targets {
        db.execute(
            "INSERT INTO suppressions (profile_id, kind, target, reason, detail, channel, send_key, at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            &[
                P::Text(profile),
                P::Text(kind),
                P::Text(target),
                P::Text(&suppress.reason),
                P::OptText(suppress.detail.as_deref()),
                P::OptText(channel),
                P::OptText(send_key),
                P::Int(at),
                P::OptInt(suppress.expires_at),
            ],
        )?;
    }
    Ok(targets.len())
}

const COLUMNS: &str = "id, profile_id, kind, target, reason, detail, channel, send_key, at, expires_at, lifted_at, lifted_by";

fn suppression_from(r: &Row) -> Suppression {
    Suppression {
        id: r.int(0),
        profile_id: r.text(1),
        kind: r.text(2),
        target: r.text(3),
        reason: r.text(4),
        detail: r.opt_text(5),
        channel: r.opt_text(6),
        send_key: r.opt_text(7),
        at: r.int(8),
        expires_at: r.opt_int(9),
        lifted_at: r.opt_int(10),
        lifted_by: r.opt_text(11),
    }
}

/// Suppressions with ids after `after`, oldest first, at most `limit`; lifted and expired
/// ones only when `all`.
pub(crate) fn suppressions(db: &mut impl Db, after: i64, limit: usize, all: bool, now: i64) -> Result<Vec<Suppression>, StoreError> {
    // Everything, or only what holds at `now`; the limit is a literal like every LIMIT here.
    let rows = if all {
        db.query(&format!("SELECT {COLUMNS} FROM suppressions WHERE id > ?1 ORDER BY id LIMIT {limit}"), &[P::Int(after)])?
    } else {
        let sql = format!(
            "SELECT {COLUMNS} FROM suppressions WHERE id > ?1 AND lifted_at IS NULL AND (expires_at IS NULL OR expires_at > ?2) ORDER BY id LIMIT {limit}"
        );
        db.query(&sql, &[P::Int(after), P::Int(now)])?
    };
    Ok(rows.iter().map(suppression_from).collect())
}

/// One suppression by id.
pub(crate) fn suppression(db: &mut impl Db, id: i64) -> Result<Option<Suppression>, StoreError> {
    Ok(db.query_opt(&format!("SELECT {COLUMNS} FROM suppressions WHERE id = ?1"), &[P::Int(id)])?.as_ref().map(suppression_from))
}

/// Lifts a live suppression: a contact point comes back on unless another live suppression
/// still holds it; a consent stays withdrawn until the customer grants it again. `None`
/// when no such suppression is live.
pub(crate) fn lift_suppression(db: &mut impl Db, id: i64, by: &str, at: i64) -> Result<Option<Suppression>, StoreError> {
    let lifted =
        db.execute("UPDATE suppressions SET lifted_at = ?2, lifted_by = ?3 WHERE id = ?1 AND lifted_at IS NULL", &[P::Int(id), P::Int(at), P::Text(by)])?;
    if lifted == 0 {
        return Ok(None);
    }
    let Some(lifted) = suppression(db, id)? else { return Ok(None) };
    // Only a permanent suppression switches the address row off; a resting one (a soft
    // bounce) holds through the overlay and lapses by itself.
    let still_held = db
        .query_opt(
            "SELECT id FROM suppressions WHERE profile_id = ?1 AND kind = ?2 AND target = ?3 AND lifted_at IS NULL AND expires_at IS NULL",
            &[P::Text(&lifted.profile_id), P::Text(&lifted.kind), P::Text(&lifted.target)],
        )?
        .is_some();
    if lifted.kind == "contact"
        && lifted.expires_at.is_none()
        && !still_held
        && let Some((kind, address)) = lifted.target.split_once(':')
    {
        db.execute(
            "UPDATE contacts SET active = ?4 WHERE profile_id = ?1 AND kind = ?2 AND address = ?3",
            &[P::Text(&lifted.profile_id), P::Text(kind), P::Text(address), P::Bool(true)],
        )?;
    }
    Ok(Some(lifted))
}

/// This host's secret `name`, made on first use (32 random bytes, hex) and kept in the
/// database, so every host sharing it seals and opens the same links.
pub(crate) fn host_secret(db: &mut impl Db, name: &str) -> Result<String, StoreError> {
    let fresh: String = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()].iter().map(|u| u.simple().to_string()).collect();
    db.execute("INSERT INTO host_secrets (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING", &[P::Text(name), P::Text(&fresh)])?;
    // Whoever inserted first, this host or another, its value is the one.
    Ok(db.query_opt("SELECT value FROM host_secrets WHERE name = ?1", &[P::Text(name)])?.map_or(fresh, |r| r.text(0)))
}

/// Unsubscribes the profile `id` names from `purpose`, through the link that came with
/// `send_key` on `channel`: withdraws the consent and records `Unsubscribed`. `None` when
/// nobody by that id exists (erased since); `Some(false)` when this send's link was used
/// already, which changes nothing.
pub(crate) fn unsubscribe(
    db: &mut impl Db,
    id: &str,
    purpose: Purpose,
    send_key: &str,
    channel: &str,
    at: i64,
) -> Result<Option<(bool, Vec<Touch>)>, StoreError> {
    let Some(profile) = crate::logic::resolve_id(db, id)? else { return Ok(None) };
    if !db.lock_profile(&profile, false)? {
        return Ok(None);
    }
    // The consent is withdrawn every time: a customer who opted in again since and now
    // presses the old link's button means it again. No suppression row: a customer who
    // later opts in on the shop's own form is believed, unlike a bounce or a complaint.
    // A consent stamped later than now (a skewed client clock) must not outrank this.
    let stamped = db
        .query_opt("SELECT updated_at FROM consents WHERE profile_id = ?1 AND purpose = ?2", &[P::Text(&profile), P::Text(purpose.name())])?
        .map_or(at, |r| r.int(0).saturating_add(1));
    upsert_consent(db, &profile, purpose, false, at.max(stamped), OPERATOR)?;
    let first = db.execute(
        "INSERT INTO unsubscribes (send_key, purpose, profile_id, channel, at) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (send_key, purpose) DO NOTHING",
        &[P::Text(send_key), P::Text(purpose.name()), P::Text(&profile), P::Text(channel), P::Int(at)],
    )? > 0;
    if !first {
        // One `Unsubscribed` per send and purpose, however often it is pressed.
        return Ok(Some((false, vec![Touch { profile_id: profile, event: None, order: false }])));
    }
    let journey = db
        .query_opt("SELECT r.journey FROM journey_sends s JOIN journey_runs r ON r.id = s.run_id WHERE s.idempotency_key = ?1", &[P::Text(send_key)])?
        .map(|r| r.text(0));
    let mut properties = Map::new();
    properties.insert("channel".into(), json!(channel));
    properties.insert("purpose".into(), json!(purpose.name()));
    properties.insert("send_key".into(), json!(send_key));
    properties.insert("source".into(), json!("link"));
    if let Some(journey) = journey {
        properties.insert("journey".into(), json!(journey));
    }
    db.execute(
        "INSERT INTO events (profile_id, name, timestamp, properties, message_id) VALUES (?1, ?2, ?3, ?4, ?5)",
        &[
            P::Text(&profile),
            P::Text("Unsubscribed"),
            P::Int(at),
            P::Text(&Value::Object(properties).to_string()),
            P::Text(&format!("unsubscribe:{send_key}:{}", purpose.name())),
        ],
    )?;
    Ok(Some((true, vec![Touch { profile_id: profile, event: Some("Unsubscribed".into()), order: false }])))
}
