//! What the store does, written once over [`Db`] for both backends: identity resolution
//! and merging, ingestion, computed traits, erasure and reads.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::StoreError;
use crate::computed::{computed_from, ordered_products};
use crate::db::{Db, P, Row};
use crate::model::{
    CONTACT_TRAITS, Change, ClaimedSend, Computed, Consent, Contact, EventMapping, EventRef, Ignored, IngestReport, InputNeeds, JourneyLogEntry, JourneyRun,
    Lease, MembershipChange, MembershipRecord, Message, Product, ProfileRecord, Purpose, RESERVED_TRAITS, RecordedCutoffs, RfmPoint, RuleInput, Scope,
    SegmentDefinition, SendClaim, StepSend, StoredDocument, StoredEvent, StoredJourney, Touch, VerdictWrite,
};
use crate::plain;

fn lookup(db: &mut impl Db, kind: &str, value: &str) -> Result<Option<String>, StoreError> {
    let row = db.query_opt("SELECT profile_id FROM identities WHERE kind = ?1 AND value = ?2", &[P::Text(kind), P::Text(value)])?;
    Ok(row.map(|r| r.text(0)))
}

fn link(db: &mut impl Db, kind: &str, value: &str, profile: &str) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO identities (kind, value, profile_id) VALUES (?1, ?2, ?3) ON CONFLICT (kind, value) DO NOTHING",
        &[P::Text(kind), P::Text(value), P::Text(profile)],
    )
    .map(drop)
}

fn has_user_identity(db: &mut impl Db, profile: &str) -> Result<bool, StoreError> {
    let row = db.query_opt("SELECT 1 FROM identities WHERE profile_id = ?1 AND kind = 'user' LIMIT 1", &[P::Text(profile)])?;
    Ok(row.is_some())
}

fn create_profile(db: &mut impl Db, at: i64) -> Result<String, StoreError> {
    let id = uuid::Uuid::now_v7().to_string();
    db.execute("INSERT INTO profiles (id, created_at, updated_at) VALUES (?1, ?2, ?2)", &[P::Text(&id), P::Int(at)])?;
    Ok(id)
}

/// Folds an anonymous-only profile into another: its identities, events and traits move
/// over (later writes win), and the computed traits are recomputed. Contact points,
/// consents and the traits holding them move only when a server source merges and a
/// server source wrote them: a browser key (anyone's) may have set them while the profile
/// was anonymous, and a login, whoever reports it, must not bring them into an identified
/// profile. What does not move is deleted with the source.
fn merge(db: &mut impl Db, source: &str, target: &str, mapping: &EventMapping, by_browser: bool) -> Result<(), StoreError> {
    let both = [P::Text(source), P::Text(target)];
    let guarded = [P::Text(source), P::Text(target), P::Bool(!by_browser)];
    let source_only = [P::Text(source)];
    let contact_traits = CONTACT_TRAITS.iter().chain(&["consent"]).map(|name| format!("'{name}'")).collect::<Vec<_>>().join(", ");
    let traits = format!(
        "INSERT INTO traits (profile_id, name, value, updated_at, from_browser)
             SELECT ?2, name, value, updated_at, from_browser FROM traits
             WHERE profile_id = ?1 AND (name NOT IN ({contact_traits}) OR (NOT from_browser AND ?3))
             ON CONFLICT (profile_id, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at, from_browser = excluded.from_browser
             WHERE excluded.updated_at > traits.updated_at"
    );
    for sql in [
        "UPDATE identities SET profile_id = ?2 WHERE profile_id = ?1",
        "UPDATE events SET profile_id = ?2 WHERE profile_id = ?1",
        // What providers reported, and the links used, follow the person.
        "UPDATE feedback SET profile_id = ?2 WHERE profile_id = ?1",
        "UPDATE unsubscribes SET profile_id = ?2 WHERE profile_id = ?1",
        "UPDATE profiles SET timezone = (SELECT timezone FROM profiles WHERE id = ?1),
                             timezone_at = (SELECT timezone_at FROM profiles WHERE id = ?1)
             WHERE id = ?2 AND COALESCE(timezone_at, -1) < COALESCE((SELECT timezone_at FROM profiles WHERE id = ?1), -1)",
    ] {
        db.execute(sql, &both)?;
    }
    for sql in [
        traits.as_str(),
        "INSERT INTO contacts (profile_id, kind, address, active, updated_at)
             SELECT ?2, kind, address, active, updated_at FROM contacts WHERE profile_id = ?1 AND NOT from_browser AND ?3
             ON CONFLICT (profile_id, kind, address) DO UPDATE SET active = excluded.active, updated_at = excluded.updated_at, from_browser = excluded.from_browser
             WHERE excluded.updated_at > contacts.updated_at",
        "INSERT INTO consents (profile_id, purpose, granted, updated_at)
             SELECT ?2, purpose, granted, updated_at FROM consents WHERE profile_id = ?1 AND NOT from_browser AND ?3
             ON CONFLICT (profile_id, purpose) DO UPDATE SET granted = excluded.granted, updated_at = excluded.updated_at, from_browser = excluded.from_browser
             WHERE excluded.updated_at > consents.updated_at",
        // What it switched off moves with the contact points and consents it holds off:
        // a browser key must not carry an unsubscribe onto someone else's profile.
        "UPDATE suppressions SET profile_id = ?2 WHERE profile_id = ?1 AND ?3",
    ] {
        db.execute(sql, &guarded)?;
    }
    for table in ["traits", "contacts", "consents", "computed", "suppressions"] {
        db.execute(&format!("DELETE FROM {table} WHERE profile_id = ?1"), &source_only)?;
    }
    db.execute("DELETE FROM profiles WHERE id = ?1", &source_only)?;
    let mut computed = Computed::default();
    let rows =
        db.query("SELECT timestamp, properties FROM events WHERE profile_id = ?1 AND name = ?2", &[P::Text(target), P::Text(&mapping.order_completed)])?;
    for row in rows {
        let properties: Map<String, Value> = serde_json::from_str(&row.text(1)).unwrap_or_default();
        computed.add_order(mapping, row.int(0), &properties);
    }
    save_computed(db, target, &computed)
}

fn load_computed(db: &mut impl Db, profile: &str) -> Result<Computed, StoreError> {
    let row = db.query_opt(
        "SELECT order_count, lifetime_value, first_order_at, last_order_at, category_counts FROM computed WHERE profile_id = ?1",
        &[P::Text(profile)],
    )?;
    Ok(row.as_ref().map(computed_from).unwrap_or_default())
}

fn save_computed(db: &mut impl Db, profile: &str, c: &Computed) -> Result<(), StoreError> {
    if c.order_count == 0 {
        return Ok(());
    }
    let categories = Value::Object(c.category_counts.clone()).to_string();
    db.execute(
        "INSERT INTO computed (profile_id, order_count, lifetime_value, first_order_at, last_order_at, category_counts)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (profile_id) DO UPDATE SET order_count = excluded.order_count, lifetime_value = excluded.lifetime_value,
             first_order_at = excluded.first_order_at, last_order_at = excluded.last_order_at,
             category_counts = excluded.category_counts",
        &[P::Text(profile), P::Int(c.order_count), P::Float(c.lifetime_value), P::OptInt(c.first_order_at), P::OptInt(c.last_order_at), P::Text(&categories)],
    )
    .map(drop)
}

/// Resolves which profile a message belongs to, creating and merging as identities demand.
/// A merge a browser source may not ask for is left undone and reported in `ignored`.
fn resolve(db: &mut impl Db, msg: &Message, mapping: &EventMapping, ignored: &mut Vec<(&'static str, &'static str)>) -> Result<String, StoreError> {
    let by_browser = msg.from_browser;
    let by_user = match &msg.user_id {
        Some(u) => lookup(db, "user", u)?,
        None => None,
    };
    let by_anonymous = match &msg.anonymous_id {
        Some(a) => lookup(db, "anonymous", a)?,
        None => None,
    };
    let profile = match (by_user, by_anonymous) {
        (Some(user), Some(anonymous)) if user != anonymous => {
            // History from before login joins the user, unless the anonymous profile is
            // already someone else's (a shared device): then the two stay apart.
            if !has_user_identity(db, &anonymous)? {
                merge(db, &anonymous, &user, mapping, by_browser)?;
            }
            user
        }
        (Some(user), _) => user,
        // A new user id on a device someone is logged in on: from a browser key that is
        // anyone's claim, so it starts a profile of its own rather than joining theirs.
        (None, Some(anonymous)) if by_browser && msg.user_id.is_some() && has_user_identity(db, &anonymous)? => create_profile(db, msg.received_at)?,
        // The login of someone with no profile yet: their anonymous profile becomes theirs,
        // minus what a browser key (anyone's) wrote on it while it was anonymous.
        (None, Some(anonymous)) if msg.user_id.is_some() && !has_user_identity(db, &anonymous)? => {
            forget_browser_contacts(db, &anonymous)?;
            anonymous
        }
        (None, Some(anonymous)) => anonymous,
        (None, None) => create_profile(db, msg.received_at)?,
    };
    if let Some(u) = &msg.user_id {
        link(db, "user", u, &profile)?;
    }
    if let Some(a) = &msg.anonymous_id {
        link(db, "anonymous", a, &profile)?;
    }
    if let Some(previous) = &msg.previous_id {
        let earlier = match lookup(db, "user", previous)? {
            Some(p) => Some(p),
            None => lookup(db, "anonymous", previous)?,
        };
        match earlier {
            // Anyone can read a browser key off the page: it may fold anonymous history
            // into a user, but never someone with a user id into another profile.
            Some(earlier) if earlier != profile && msg.from_browser && has_user_identity(db, &earlier)? => {
                ignored.push(("previousId", "a browser source cannot merge a profile that has a user id into another"));
            }
            Some(earlier) if earlier != profile => merge(db, &earlier, &profile, mapping, by_browser)?,
            Some(_) => {}
            // An id seen nowhere yet. From a browser key it names only this device: as a
            // user id it would claim, for this profile, a customer who has not signed up.
            None if by_browser => link(db, "anonymous", previous, &profile)?,
            None => {
                link(db, "user", previous, &profile)?;
                link(db, "anonymous", previous, &profile)?;
            }
        }
    }
    Ok(profile)
}

/// Deletes the contact points, consents and contact traits a browser source wrote on a
/// profile about to become someone's: the same rule a merge follows.
fn forget_browser_contacts(db: &mut impl Db, profile: &str) -> Result<(), StoreError> {
    let contact_traits = CONTACT_TRAITS.iter().chain(&["consent"]).map(|name| format!("'{name}'")).collect::<Vec<_>>().join(", ");
    for sql in [
        "DELETE FROM contacts WHERE profile_id = ?1 AND from_browser".to_string(),
        "DELETE FROM consents WHERE profile_id = ?1 AND from_browser".to_string(),
        format!("DELETE FROM traits WHERE profile_id = ?1 AND from_browser AND name IN ({contact_traits})"),
    ] {
        db.execute(&sql, &[P::Text(profile)])?;
    }
    Ok(())
}

/// Who wrote a row: the merge rule above reads it.
#[derive(Clone, Copy)]
pub(crate) struct Writer {
    from_browser: bool,
}

/// What the admin API and provider feedback write: the operator's own word.
pub(crate) const OPERATOR: Writer = Writer { from_browser: false };

fn upsert_trait(db: &mut impl Db, profile: &str, name: &str, value: &Value, at: i64, by: Writer) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO traits (profile_id, name, value, updated_at, from_browser) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (profile_id, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at, from_browser = excluded.from_browser
         WHERE excluded.updated_at >= traits.updated_at",
        &[P::Text(profile), P::Text(name), P::Text(&value.to_string()), P::Int(at), P::Bool(by.from_browser)],
    )
    .map(drop)
}

fn upsert_contact(db: &mut impl Db, profile: &str, kind: &str, address: &str, active: bool, at: i64, by: Writer) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO contacts (profile_id, kind, address, active, updated_at, from_browser) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (profile_id, kind, address) DO UPDATE SET active = excluded.active, updated_at = excluded.updated_at, from_browser = excluded.from_browser
         WHERE excluded.updated_at >= contacts.updated_at",
        &[P::Text(profile), P::Text(kind), P::Text(address), P::Bool(active), P::Int(at), P::Bool(by.from_browser)],
    )
    .map(drop)
}

pub(crate) fn upsert_consent(db: &mut impl Db, profile: &str, purpose: Purpose, granted: bool, at: i64, by: Writer) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO consents (profile_id, purpose, granted, updated_at, from_browser) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (profile_id, purpose) DO UPDATE SET granted = excluded.granted, updated_at = excluded.updated_at, from_browser = excluded.from_browser
         WHERE excluded.updated_at >= consents.updated_at",
        &[P::Text(profile), P::Text(purpose.name()), P::Bool(granted), P::Int(at), P::Bool(by.from_browser)],
    )
    .map(drop)
}

/// Every identity some messages touch, sorted, for [`Db::lock_identities`].
fn identity_keys<'m>(messages: impl Iterator<Item = &'m Message>) -> Vec<String> {
    let mut keys: Vec<String> = messages.flat_map(|m| [&m.user_id, &m.anonymous_id, &m.previous_id]).flatten().cloned().collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Stores a batch of messages; duplicates (by source and message id) are skipped. Events
/// of people already known go together in a few statements ([`plain`]); any other message
/// is written on its own, after everything before it.
pub(crate) fn ingest(db: &mut impl Db, mapping: &EventMapping, messages: &[Message]) -> Result<IngestReport, StoreError> {
    // Every identity the batch names, page views included: shared locks for page views
    // were tried, and let two writers read a profile's computed traits at once and lose
    // an order, and upgrading one for a visitor not yet known deadlocked against the same
    // visitor's next request.
    db.lock_identities(&identity_keys(messages.iter()))?;
    let fresh = plain::claim_message_ids(db, messages)?;
    let mut report = IngestReport::default();
    let mut held = plain::PlainEvents::default();
    // Read again after a message that may have created, linked or merged someone.
    let mut known: Option<plain::Known> = None;
    for (index, msg) in messages.iter().enumerate() {
        if !fresh[index] {
            report.duplicates += 1;
            continue;
        }
        report.accepted += 1;
        if plain::plain_shape(msg) {
            if known.is_none() {
                // Up to the next message that may change who is who: past it, this read
                // would be stale anyway.
                let run = messages[index..].iter().take_while(|m| plain::plain_shape(m));
                known = Some(plain::Known::read(db, run)?);
            }
            if let Some(profile) = known.as_ref().and_then(|k| k.profile_of(msg)) {
                report.touched.push(touch(mapping, msg, &profile));
                held.push(msg, profile);
                continue;
            }
        }
        held.flush(db, mapping)?;
        ingest_one(db, mapping, msg, index, &mut report)?;
        known = None;
    }
    held.finish(db, mapping)?;
    Ok(report)
}

/// What real-time evaluation hears of an accepted message.
fn touch(mapping: &EventMapping, msg: &Message, profile: &str) -> Touch {
    // Identifying messages may merge two profiles, which moves any kind of data.
    let may_merge = (msg.user_id.is_some() && msg.anonymous_id.is_some()) || msg.previous_id.is_some();
    let changes_more = msg.event.is_none() || may_merge || !msg.traits.is_empty() || !msg.consents.is_empty() || msg.push_token.is_some();
    Touch {
        event: if changes_more { None } else { msg.event.clone() },
        order: msg.event.as_ref() == Some(&mapping.order_completed),
        profile_id: profile.to_string(),
    }
}

/// Stores one accepted message: resolves (creating and merging as it must), then writes.
pub(crate) fn ingest_one(db: &mut impl Db, mapping: &EventMapping, msg: &Message, index: usize, report: &mut IngestReport) -> Result<(), StoreError> {
    let mut refused = Vec::new();
    let profile = resolve(db, msg, mapping, &mut refused)?;
    // A browser source may add to anyone, but not change how an identified person is
    // reached or what they consented to.
    let guarded = msg.from_browser && has_user_identity(db, &profile)?;
    let by = Writer { from_browser: msg.from_browser };
    db.execute("UPDATE profiles SET updated_at = ?2 WHERE id = ?1 AND updated_at < ?2", &[P::Text(&profile), P::Int(msg.received_at)])?;
    if let Some(zone) = &msg.timezone {
        db.execute(
            "UPDATE profiles SET timezone = ?2, timezone_at = ?3 WHERE id = ?1 AND COALESCE(timezone_at, -1) <= ?3",
            &[P::Text(&profile), P::Text(zone), P::Int(msg.timestamp)],
        )?;
    }
    write_traits(db, msg, index, &profile, guarded, by, report)?;
    match &msg.push_token {
        Some(_) if guarded => report.ignored.push(Ignored {
            index,
            field: "context.device.token".into(),
            reason: "a browser source cannot change an identified profile's push tokens",
        }),
        Some((token, active)) => upsert_contact(db, &profile, "push_token", token, *active, msg.timestamp, by)?,
        None => {}
    }
    if guarded && !msg.consents.is_empty() {
        report.ignored.push(Ignored { index, field: "consents".into(), reason: "a browser source cannot change an identified profile's consents" });
    } else {
        for (purpose, granted) in &msg.consents {
            upsert_consent(db, &profile, *purpose, *granted, msg.timestamp, by)?;
        }
    }
    report.ignored.extend(refused.into_iter().map(|(field, reason)| Ignored { index, field: field.into(), reason }));
    write_event(db, mapping, msg, &profile)?;
    report.touched.push(touch(mapping, msg, &profile));
    Ok(())
}

/// A message's traits, with the contact points `email` and `phone` carry, except what a
/// browser source may not change (listed in the report as ignored).
fn write_traits(db: &mut impl Db, msg: &Message, index: usize, profile: &str, guarded: bool, by: Writer, report: &mut IngestReport) -> Result<(), StoreError> {
    for (name, value) in &msg.traits {
        // The consent object is a consent, which a browser may give while anonymous.
        let refused = match name.as_str() {
            "consent" if guarded => Some("a browser source cannot change an identified profile's consents"),
            "consent" => None,
            name if guarded && CONTACT_TRAITS.contains(&name) => Some("a browser source cannot change an identified profile's contact points"),
            name if msg.from_browser && RESERVED_TRAITS.contains(&name) => Some("a browser source cannot write a reserved trait"),
            _ => None,
        };
        if let Some(reason) = refused {
            report.ignored.push(Ignored { index, field: format!("traits.{name}"), reason });
            continue;
        }
        upsert_trait(db, profile, name, value, msg.timestamp, by)?;
        let address = value.as_str().map(str::trim).filter(|a| !a.is_empty());
        match (name.as_str(), address) {
            ("email", Some(email)) => upsert_contact(db, profile, "email", &email.to_lowercase(), true, msg.timestamp, by)?,
            ("phone", Some(phone)) => upsert_contact(db, profile, "phone", phone, true, msg.timestamp, by)?,
            _ => {}
        }
    }
    Ok(())
}

/// A message's event, and for an order what it adds to the computed traits and to the
/// products bought together.
fn write_event(db: &mut impl Db, mapping: &EventMapping, msg: &Message, profile: &str) -> Result<(), StoreError> {
    if let Some(event) = &msg.event {
        let properties = Value::Object(msg.properties.clone()).to_string();
        db.execute(
            "INSERT INTO events (profile_id, name, timestamp, properties, message_id) VALUES (?1, ?2, ?3, ?4, ?5)",
            &[P::Text(profile), P::Text(event), P::Int(msg.timestamp), P::Text(&properties), P::Text(&msg.message_id)],
        )?;
        if *event == mapping.order_completed {
            let mut computed = load_computed(db, profile)?;
            computed.add_order(mapping, msg.timestamp, &msg.properties);
            save_computed(db, profile, &computed)?;
            count_co_purchases(db, &ordered_products(mapping, &msg.properties))?;
        }
    }
    Ok(())
}

/// The profile an id names: a profile id, a userId or an anonymousId.
pub(crate) fn resolve_id(db: &mut impl Db, id: &str) -> Result<Option<String>, StoreError> {
    // One round trip, in order of precedence: a profile id, a userId, an anonymousId.
    let row = db.query_opt(
        "SELECT id, 0 AS rank FROM profiles WHERE id = ?1
         UNION ALL SELECT profile_id, CASE kind WHEN 'user' THEN 1 ELSE 2 END FROM identities WHERE value = ?1
         ORDER BY rank LIMIT 1",
        &[P::Text(id)],
    )?;
    Ok(row.map(|r| r.text(0)))
}

/// Records consents given through the consent API; false when nobody matched.
pub(crate) fn set_consents(db: &mut impl Db, id: &str, consents: &[(Purpose, bool)], at: i64) -> Result<bool, StoreError> {
    let Some(profile) = resolve_id(db, id)? else { return Ok(false) };
    for (purpose, granted) in consents {
        upsert_consent(db, &profile, *purpose, *granted, at, OPERATOR)?;
    }
    Ok(true)
}

/// Marks a contact point active or not (a provider reported a push token dead, a bounce),
/// adding it if new; false when nobody matched.
pub(crate) fn set_contact(db: &mut impl Db, id: &str, kind: &str, address: &str, active: bool, at: i64) -> Result<bool, StoreError> {
    let Some(profile) = resolve_id(db, id)? else { return Ok(false) };
    upsert_contact(db, &profile, kind, address, active, at, OPERATOR)?;
    Ok(true)
}

/// Erases a person from every table; false when no profile matched.
pub(crate) fn delete_profile(db: &mut impl Db, id: &str) -> Result<bool, StoreError> {
    let Some(profile) = resolve_id(db, id)? else { return Ok(false) };
    // Taken first, in the order ingestion takes them: a message for this person being
    // stored now finishes before this, or finds no one after it and starts a new profile;
    // a verdict being written now finishes before this (its rows are deleted below) or
    // finds no profile after it.
    let mut keys: Vec<String> = db.query("SELECT value FROM identities WHERE profile_id = ?1", &[P::Text(&profile)])?.iter().map(|r| r.text(0)).collect();
    keys.sort();
    keys.dedup();
    db.lock_identities(&keys)?;
    db.lock_profile(&profile, true)?;
    // Journey sends are keyed by run; the runs and their log name the person.
    db.execute("DELETE FROM journey_sends WHERE run_id IN (SELECT id FROM journey_runs WHERE profile_id = ?1)", &[P::Text(&profile)])?;
    for table in [
        "events",
        "traits",
        "contacts",
        "consents",
        "computed",
        "identities",
        "memberships",
        "membership_log",
        "journey_runs",
        "journey_log",
        "feedback",
        "suppressions",
        "unsubscribes",
    ] {
        db.execute(&format!("DELETE FROM {table} WHERE profile_id = ?1"), &[P::Text(&profile)])?;
    }
    db.execute("DELETE FROM profiles WHERE id = ?1", &[P::Text(&profile)])?;
    Ok(true)
}

/// Inserts or replaces catalog products.
pub(crate) fn upsert_products(db: &mut impl Db, products: &[Product], at: i64) -> Result<usize, StoreError> {
    for p in products {
        db.execute(
            "INSERT INTO products (id, name, category, price, url, image, in_stock, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, category = excluded.category, price = excluded.price,
                 url = excluded.url, image = excluded.image, in_stock = excluded.in_stock, updated_at = excluded.updated_at",
            &[
                P::Text(&p.id),
                P::Text(&p.name),
                P::OptText(p.category.as_deref()),
                P::OptFloat(p.price),
                P::OptText(p.url.as_deref()),
                P::OptText(p.image.as_deref()),
                P::Bool(p.in_stock),
                P::Int(at),
            ],
        )?;
    }
    Ok(products.len())
}

/// The live suppressions of `profile` at `now`, as (kind, target) pairs: not lifted and
/// not expired.
pub(crate) fn live_targets(db: &mut impl Db, profile: &str, now: i64) -> Result<Vec<(String, String)>, StoreError> {
    Ok(db
        .query(
            "SELECT kind, target FROM suppressions WHERE profile_id = ?1 AND lifted_at IS NULL AND (expires_at IS NULL OR expires_at > ?2)",
            &[P::Text(profile), P::Int(now)],
        )?
        .iter()
        .map(|r| (r.text(0), r.text(1)))
        .collect())
}

/// Everything about one profile, with its `recent` latest events.
pub(crate) fn read_profile(db: &mut impl Db, id: &str, recent: usize) -> Result<Option<ProfileRecord>, StoreError> {
    let Some(profile) = resolve_id(db, id)? else { return Ok(None) };
    let Some(row) = db.query_opt("SELECT created_at, updated_at, timezone FROM profiles WHERE id = ?1", &[P::Text(&profile)])? else {
        return Ok(None);
    };
    let who = [P::Text(&profile)];
    let (mut user_ids, mut anonymous_ids) = (Vec::new(), Vec::new());
    for r in db.query("SELECT kind, value FROM identities WHERE profile_id = ?1 ORDER BY value", &who)? {
        if r.text(0) == "user" { user_ids.push(r.text(1)) } else { anonymous_ids.push(r.text(1)) }
    }
    let traits = db
        .query("SELECT name, value, updated_at FROM traits WHERE profile_id = ?1 ORDER BY name", &who)?
        .into_iter()
        .map(|r| (r.text(0), serde_json::from_str(&r.text(1)).unwrap_or(Value::Null), r.int(2)))
        .collect();
    // A live suppression (a bounce, a complaint, an unsubscribe) holds whatever later
    // messages said about the address or the consent.
    let suppressed = live_targets(db, &profile, crate::clock::now_ms())?;
    let held = |kind: &str, target: &str| suppressed.iter().any(|(k, t)| k == kind && t == target);
    let consents = db
        .query("SELECT purpose, granted, updated_at FROM consents WHERE profile_id = ?1 ORDER BY purpose", &who)?
        .into_iter()
        .filter_map(|r| {
            let purpose = Purpose::parse(&r.text(0))?;
            Some(Consent { purpose, granted: r.bool(1) && !held("consent", purpose.name()), updated_at: r.int(2) })
        })
        .collect();
    let contacts = db
        .query("SELECT kind, address, active, updated_at FROM contacts WHERE profile_id = ?1 ORDER BY kind, address", &who)?
        .into_iter()
        .map(|r| {
            let (kind, address) = (r.text(0), r.text(1));
            let active = r.bool(2) && !held("contact", &format!("{kind}:{address}"));
            Contact { kind, address, active, updated_at: r.int(3) }
        })
        .collect();
    let recent_events = db
        .query(
            // The limit is a literal: see `fill_one_profile_events`.
            &format!("SELECT name, timestamp, properties FROM events WHERE profile_id = ?1 ORDER BY timestamp DESC, id DESC LIMIT {recent}"),
            &[P::Text(&profile)],
        )?
        .into_iter()
        .map(|r| StoredEvent { name: r.text(0), timestamp: r.int(1), properties: serde_json::from_str(&r.text(2)).unwrap_or(Value::Null) })
        .collect();
    let computed = load_computed(db, &profile)?;
    Ok(Some(ProfileRecord {
        id: profile,
        user_ids,
        anonymous_ids,
        created_at: row.int(0),
        updated_at: row.int(1),
        timezone: row.opt_text(2),
        traits,
        computed,
        consents,
        contacts,
        recent_events,
    }))
}

/// A profile's `name` events in `[since, until]`, oldest first; only the latest `limit`
/// when given.
pub(crate) fn events(db: &mut impl Db, id: &str, name: &str, since: i64, until: i64, limit: Option<u32>) -> Result<Vec<StoredEvent>, StoreError> {
    let Some(profile) = resolve_id(db, id)? else { return Ok(Vec::new()) };
    let limit = limit.map_or(i64::MAX, i64::from);
    let mut rows = db.query(
        &format!(
            "SELECT timestamp, properties FROM events
             WHERE profile_id = ?1 AND name = ?2 AND timestamp >= ?3 AND timestamp <= ?4
             ORDER BY timestamp DESC, id DESC LIMIT {limit}"
        ),
        &[P::Text(&profile), P::Text(name), P::Int(since), P::Int(until)],
    )?;
    rows.reverse();
    Ok(rows
        .into_iter()
        .map(|r| StoredEvent { name: name.to_string(), timestamp: r.int(0), properties: serde_json::from_str(&r.text(1)).unwrap_or(Value::Null) })
        .collect())
}

/// How many rows each table holds, for tests of erasure and for operators.
pub(crate) fn table_counts(db: &mut impl Db) -> Result<Vec<(String, i64)>, StoreError> {
    let mut counts = Vec::new();
    for table in ["profiles", "identities", "events", "traits", "contacts", "consents", "computed", "products", "memberships", "membership_log"] {
        let n = db.query_opt(&format!("SELECT COUNT(*) FROM {table}"), &[])?.map_or(0, |r| r.int(0));
        counts.push((table.to_string(), n));
    }
    Ok(counts)
}

/// Creates or replaces a segment definition.
pub(crate) fn upsert_segment(db: &mut impl Db, def: &SegmentDefinition, at: i64) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO segments (name, slot, params, schedule, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)
         ON CONFLICT (name) DO UPDATE SET slot = excluded.slot, params = excluded.params, schedule = excluded.schedule,
             updated_at = excluded.updated_at",
        &[P::Text(&def.name), P::Text(&def.slot), P::Text(&def.params.to_string()), P::Text(&def.schedule), P::Int(at)],
    )
    .map(drop)
}

/// When a segment was last defined or redefined, the latest of them; `None` without any.
pub(crate) fn segments_changed_at(db: &mut impl Db) -> Result<Option<i64>, StoreError> {
    Ok(db.query_opt("SELECT MAX(updated_at) FROM segments", &[])?.and_then(|r| r.opt_int(0)))
}

/// Every segment definition, by name.
pub(crate) fn segments(db: &mut impl Db) -> Result<Vec<SegmentDefinition>, StoreError> {
    Ok(db
        .query("SELECT name, slot, params, schedule, last_run FROM segments ORDER BY name", &[])?
        .into_iter()
        .map(|r| SegmentDefinition {
            name: r.text(0),
            slot: r.text(1),
            params: serde_json::from_str(&r.text(2)).unwrap_or(Value::Null),
            schedule: r.text(3),
            last_run: r.opt_int(4),
        })
        .collect())
}

/// The cutoffs a segment's parameters resolved to: (the parameters they were resolved from,
/// the resolved parameters, when).
pub(crate) fn cutoffs(db: &mut impl Db, name: &str) -> Result<Option<RecordedCutoffs>, StoreError> {
    Ok(db.query_opt("SELECT from_params, resolved, computed_at FROM segment_cutoffs WHERE segment = ?1", &[P::Text(name)])?.map(|r| RecordedCutoffs {
        from: serde_json::from_str(&r.text(0)).unwrap_or(Value::Null),
        resolved: serde_json::from_str(&r.text(1)).unwrap_or(Value::Null),
        computed_at: r.int(2),
    }))
}

/// Records what a segment's parameters resolved to at `at`, replacing what was there.
pub(crate) fn record_cutoffs(db: &mut impl Db, name: &str, from: &Value, resolved: &Value, at: i64) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO segment_cutoffs (segment, from_params, resolved, computed_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (segment) DO UPDATE SET from_params = excluded.from_params, resolved = excluded.resolved, computed_at = excluded.computed_at",
        &[P::Text(name), P::Text(&from.to_string()), P::Text(&resolved.to_string()), P::Int(at)],
    )
    .map(drop)
}

/// Records that a segment was evaluated over every profile at `at`.
pub(crate) fn mark_run(db: &mut impl Db, name: &str, at: i64) -> Result<(), StoreError> {
    db.execute("UPDATE segments SET last_run = ?2 WHERE name = ?1", &[P::Text(name), P::Int(at)]).map(drop)
}

/// Applies one verdict: enters, exits or refreshes the membership, logging entries and
/// exits with their reason and the plugin digest.
fn record_verdict(db: &mut impl Db, verdict: &VerdictWrite, at: i64) -> Result<Option<Change>, StoreError> {
    let VerdictWrite { segment, profile_id: profile, member, label, reason, digest } = verdict;
    let label = label.as_deref();
    let current = db.query_opt("SELECT 1 FROM memberships WHERE segment = ?1 AND profile_id = ?2", &[P::Text(segment), P::Text(profile)])?;
    // A verdict for someone erased since their profile was read would bring them back.
    if current.is_some() != *member && !db.lock_profile(profile, false)? {
        return Ok(None);
    }
    let change = match (current.is_some(), *member) {
        (false, true) => {
            db.execute(
                "INSERT INTO memberships (segment, profile_id, label, reason, digest, since) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                &[P::Text(segment), P::Text(profile), P::OptText(label), P::Text(reason), P::Text(digest), P::Int(at)],
            )?;
            Some(Change::Enter)
        }
        (true, true) => {
            db.execute(
                "UPDATE memberships SET label = ?3, reason = ?4, digest = ?5 WHERE segment = ?1 AND profile_id = ?2",
                &[P::Text(segment), P::Text(profile), P::OptText(label), P::Text(reason), P::Text(digest)],
            )?;
            None
        }
        // Gone already (an erasure got there first): nothing exits, nothing is logged.
        (true, false) => {
            (db.execute("DELETE FROM memberships WHERE segment = ?1 AND profile_id = ?2", &[P::Text(segment), P::Text(profile)])? > 0).then_some(Change::Exit)
        }
        (false, false) => None,
    };
    if let Some(change) = change {
        let name = if change == Change::Enter { "enter" } else { "exit" };
        db.execute(
            "INSERT INTO membership_log (segment, profile_id, change, at, label, reason, digest) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            &[P::Text(segment), P::Text(profile), P::Text(name), P::Int(at), P::OptText(label), P::Text(reason), P::Text(digest)],
        )?;
    }
    Ok(change)
}

fn membership_from(r: &Row) -> MembershipRecord {
    MembershipRecord { segment: r.text(0), profile_id: r.text(1), label: r.opt_text(2), reason: r.text(3), digest: r.text(4), since: r.int(5) }
}

/// A page of a segment's members, by profile id after `after`.
pub(crate) fn members(db: &mut impl Db, segment: &str, after: &str, limit: usize) -> Result<Vec<MembershipRecord>, StoreError> {
    Ok(db
        .query(
            "SELECT segment, profile_id, label, reason, digest, since FROM memberships
             WHERE segment = ?1 AND profile_id > ?2 ORDER BY profile_id LIMIT ?3",
            &[P::Text(segment), P::Text(after), P::Int(limit as i64)],
        )?
        .iter()
        .map(membership_from)
        .collect())
}

/// The memberships of the person `id` names.
pub(crate) fn memberships(db: &mut impl Db, id: &str) -> Result<Vec<MembershipRecord>, StoreError> {
    let Some(profile) = resolve_id(db, id)? else { return Ok(Vec::new()) };
    Ok(db
        .query("SELECT segment, profile_id, label, reason, digest, since FROM memberships WHERE profile_id = ?1 ORDER BY segment", &[P::Text(&profile)])?
        .iter()
        .map(membership_from)
        .collect())
}

/// A page of profile ids after `after`, for backfills and scheduled runs.
pub(crate) fn profile_ids(db: &mut impl Db, after: &str, limit: usize) -> Result<Vec<String>, StoreError> {
    Ok(db
        .query("SELECT id FROM profiles WHERE id > ?1 ORDER BY id LIMIT ?2", &[P::Text(after), P::Int(limit as i64)])?
        .into_iter()
        .map(|r| r.text(0))
        .collect())
}

/// The computed traits as they stood at `until`, refolded from the order events up to then:
/// what a replay as of a past time must see.
pub(crate) fn computed_as_of(db: &mut impl Db, mapping: &EventMapping, id: &str, until: i64) -> Result<Computed, StoreError> {
    let Some(profile) = resolve_id(db, id)? else { return Ok(Computed::default()) };
    let mut computed = Computed::default();
    let rows = db.query(
        "SELECT timestamp, properties FROM events WHERE profile_id = ?1 AND name = ?2 AND timestamp <= ?3",
        &[P::Text(&profile), P::Text(&mapping.order_completed), P::Int(until)],
    )?;
    for row in rows {
        let properties: Map<String, Value> = serde_json::from_str(&row.text(1)).unwrap_or_default();
        computed.add_order(mapping, row.int(0), &properties);
    }
    Ok(computed)
}

/// Every buyer's days since the last order at `now`, order count and lifetime value: the
/// population RFM cutoffs are computed from.
pub(crate) fn rfm_population(db: &mut impl Db, now: i64) -> Result<Vec<RfmPoint>, StoreError> {
    Ok(db
        .query("SELECT last_order_at, order_count, lifetime_value FROM computed WHERE order_count > 0", &[])?
        .into_iter()
        .map(|r| RfmPoint { recency_days: (now - r.int(0)) as f64 / 86_400_000.0, frequency: r.int(1) as f64, monetary: r.float(2) })
        .collect())
}

/// A segment's entries and exits after log id `after`, oldest first.
pub(crate) fn changes(db: &mut impl Db, segment: &str, after: i64, limit: usize) -> Result<Vec<MembershipChange>, StoreError> {
    Ok(db
        .query(
            "SELECT id, segment, profile_id, change, at, label, reason, digest FROM membership_log
             WHERE segment = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            &[P::Text(segment), P::Int(after), P::Int(limit as i64)],
        )?
        .into_iter()
        .map(|r| MembershipChange {
            id: r.int(0),
            segment: r.text(1),
            profile_id: r.text(2),
            change: r.text(3),
            at: r.int(4),
            label: r.opt_text(5),
            reason: r.text(6),
            digest: r.text(7),
        })
        .collect())
}

/// One profile's membership of one segment, if any.
pub(crate) fn membership(db: &mut impl Db, segment: &str, profile: &str) -> Result<Option<MembershipRecord>, StoreError> {
    Ok(db
        .query_opt(
            "SELECT segment, profile_id, label, reason, digest, since FROM memberships WHERE segment = ?1 AND profile_id = ?2",
            &[P::Text(segment), P::Text(profile)],
        )?
        .as_ref()
        .map(membership_from))
}

/// What `needs` asks for about the profiles `scope` covers, read with one query per section
/// for a whole page rather than one per profile.
pub(crate) fn rule_inputs(db: &mut impl Db, scope: &Scope, needs: &InputNeeds) -> Result<Vec<RuleInput>, StoreError> {
    let input = |r: &Row| RuleInput { id: r.text(0), timezone: r.opt_text(1), events: vec![Vec::new(); needs.events.len()], ..Default::default() };
    match scope {
        Scope::After { after, limit } => {
            let mut inputs: Vec<RuleInput> = db
                .query("SELECT id, timezone FROM profiles WHERE id > ?1 ORDER BY id LIMIT ?2", &[P::Text(after), P::Int(*limit as i64)])?
                .iter()
                .map(input)
                .collect();
            if let (Some(first), Some(last)) = (inputs.first().map(|i| i.id.clone()), inputs.last().map(|i| i.id.clone())) {
                fill_inputs(db, &mut inputs, &first, &last, needs)?;
            }
            Ok(inputs)
        }
        Scope::Profiles(ids) => {
            let mut all: Vec<RuleInput> = Vec::with_capacity(ids.len());
            for id in ids {
                let Some(row) = db.query_opt("SELECT id, timezone FROM profiles WHERE id = ?1", &[P::Text(id)])? else { continue };
                let mut one = vec![input(&row)];
                fill_inputs(db, &mut one, id, id, needs)?;
                all.append(&mut one);
            }
            Ok(all)
        }
        Scope::Ids(ids) => {
            // Each id resolved to its person, each person once; then as for profile ids.
            let mut profiles: Vec<String> = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(profile) = resolve_id(db, id)?
                    && !profiles.contains(&profile)
                {
                    profiles.push(profile);
                }
            }
            rule_inputs(db, &Scope::Profiles(profiles), needs)
        }
    }
}

/// Fills `inputs`, the profiles with ids in `[first, last]`, section by section.
fn fill_inputs(db: &mut impl Db, inputs: &mut [RuleInput], first: &str, last: &str, needs: &InputNeeds) -> Result<(), StoreError> {
    let at: HashMap<String, usize> = inputs.iter().enumerate().map(|(i, p)| (p.id.clone(), i)).collect();
    let range = [P::Text(first), P::Text(last)];
    // One profile is an equality, so the (profile_id, name, timestamp) index seeks straight
    // to one name's events; a range on the first column could only filter names in a scan.
    let who = if first == last { "profile_id = ?1 AND profile_id = ?2" } else { "profile_id >= ?1 AND profile_id <= ?2" };
    fill_sections(db, &at, inputs, who, &range, needs)?;
    if first == last && !needs.events.is_empty() {
        return fill_one_profile_events(db, &mut inputs[0], first, needs);
    }
    fill_events(db, &at, inputs, who, &range, needs)
}

/// Memberships, and the traits, consents, contacts and computed traits `needs` asks for, of
/// the profiles `who` selects.
fn fill_sections(
    db: &mut impl Db,
    at: &HashMap<String, usize>,
    inputs: &mut [RuleInput],
    who: &str,
    range: &[P; 2],
    needs: &InputNeeds,
) -> Result<(), StoreError> {
    each_row(db, at, inputs, &format!("SELECT profile_id, segment, label, reason, digest, since FROM memberships WHERE {who}"), range, |p, r| {
        p.memberships.push(MembershipRecord {
            segment: r.text(1),
            profile_id: r.text(0),
            label: r.opt_text(2),
            reason: r.text(3),
            digest: r.text(4),
            since: r.int(5),
        })
    })?;
    if needs.traits {
        each_row(db, at, inputs, &format!("SELECT profile_id, name, value FROM traits WHERE {who}"), range, |p, r| {
            p.traits.push((r.text(1), serde_json::from_str(&r.text(2)).unwrap_or(Value::Null)))
        })?;
    }
    if needs.consents {
        each_row(db, at, inputs, &format!("SELECT profile_id, purpose, granted, updated_at FROM consents WHERE {who}"), range, |p, r| {
            if let Some(purpose) = Purpose::parse(&r.text(1)) {
                p.consents.push(Consent { purpose, granted: r.bool(2), updated_at: r.int(3) });
            }
        })?;
    }
    if needs.contacts {
        each_row(db, at, inputs, &format!("SELECT profile_id, kind, address, active, updated_at FROM contacts WHERE {who}"), range, |p, r| {
            p.contacts.push(Contact { kind: r.text(1), address: r.text(2), active: r.bool(3), updated_at: r.int(4) })
        })?;
    }
    if needs.computed {
        each_row(
            db,
            at,
            inputs,
            &format!("SELECT profile_id, order_count, lifetime_value, first_order_at, last_order_at, category_counts FROM computed WHERE {who}"),
            range,
            |p, r| p.computed = computed_from(&Row(r.0[1..].to_vec())),
        )?;
    }
    Ok(())
}

/// The events `needs` asks for, of the profiles `who` selects, each in time order.
fn fill_events(
    db: &mut impl Db,
    at: &HashMap<String, usize>,
    inputs: &mut [RuleInput],
    who: &str,
    range: &[P; 2],
    needs: &InputNeeds,
) -> Result<(), StoreError> {
    for (n, need) in needs.events.iter().enumerate() {
        // Properties are only selected when wanted; the empty text parses to nothing. A
        // limit is applied in the query, per profile, so a rule that wants the last view of
        // someone with thousands never reads the other thousands.
        let columns = format!("profile_id, timestamp, id, {}", if need.properties { "properties" } else { "''" });
        let filter = format!("{who} AND name = ?3 AND timestamp >= ?4 AND timestamp <= ?5");
        let sql = match need.limit {
            None => format!("SELECT {columns} FROM events WHERE {filter}"),
            // One profile was read by `fill_one_profile_events` above.
            Some(_) => format!(
                "SELECT * FROM (SELECT {columns}, ROW_NUMBER() OVER (PARTITION BY profile_id ORDER BY timestamp DESC, id DESC) AS n
                 FROM events WHERE {filter}) AS recent WHERE n <= ?6"
            ),
        };
        let limit = i64::from(need.limit.unwrap_or(u32::MAX));
        let mut rows: Vec<(usize, i64, i64, Value)> = Vec::new();
        let params = [range[0], range[1], P::Text(&need.name), P::Int(need.since), P::Int(need.until), P::Int(limit)];
        for row in db.query(&sql, &params[..if need.limit.is_some() { 6 } else { 5 }])? {
            if let Some(&i) = at.get(&row.text(0)) {
                let properties = if need.properties { serde_json::from_str(&row.text(3)).unwrap_or(Value::Null) } else { Value::Null };
                rows.push((i, row.int(1), row.int(2), properties));
            }
        }
        rows.sort_by_key(|r| (r.0, r.1, r.2));
        for (i, timestamp, _, properties) in rows {
            inputs[i].events[n].push((timestamp, properties));
        }
    }
    Ok(())
}

/// One profile's declared events in a single statement: per event name, the index seeks to
/// the name and walks back from the newest, stopping at the limit. The real-time path reads
/// one person at a time, where a statement per name would cost more than the seeks.
fn fill_one_profile_events(db: &mut impl Db, input: &mut RuleInput, profile: &str, needs: &InputNeeds) -> Result<(), StoreError> {
    let mut params = vec![P::Text(profile)];
    let mut parts = Vec::with_capacity(needs.events.len());
    for (n, need) in needs.events.iter().enumerate() {
        let at = params.len() + 1;
        params.extend([P::Text(&need.name), P::Int(need.since), P::Int(need.until)]);
        let limit = match need.limit {
            // A literal, not a bound `?`: SQLite plans `ORDER BY … LIMIT ?` with the bound
            // value, so it re-prepares such a statement on every run (three times the cost of
            // the query on the real-time path). The per-profile reads below and in
            // `read_profile` and `events` do the same. Limits take few distinct values, so the
            // statement caches stay small.
            Some(limit) => format!(" ORDER BY timestamp DESC, id DESC LIMIT {limit}"),
            None => String::new(),
        };
        let properties = if need.properties { "properties" } else { "''" };
        parts.push(format!(
            "SELECT * FROM (SELECT {n} AS need, timestamp, id, {properties} AS properties FROM events
             WHERE profile_id = ?1 AND name = ?{at} AND timestamp >= ?{} AND timestamp <= ?{}{limit}) AS e{n}",
            at + 1,
            at + 2
        ));
    }
    let mut rows: Vec<(usize, i64, i64, Value)> = Vec::new();
    for row in db.query(&parts.join(" UNION ALL "), &params)? {
        let n = row.int(0) as usize;
        let Some(need) = needs.events.get(n) else { continue };
        let properties = if need.properties { serde_json::from_str(&row.text(3)).unwrap_or(Value::Null) } else { Value::Null };
        rows.push((n, row.int(1), row.int(2), properties));
    }
    rows.sort_by_key(|r| (r.0, r.1, r.2));
    for (n, timestamp, _, properties) in rows {
        input.events[n].push((timestamp, properties));
    }
    Ok(())
}

/// Runs a query over a range of profiles and hands each row to the input it belongs to.
fn each_row(
    db: &mut impl Db,
    at: &HashMap<String, usize>,
    inputs: &mut [RuleInput],
    sql: &str,
    params: &[P<'_>],
    mut apply: impl FnMut(&mut RuleInput, &Row),
) -> Result<(), StoreError> {
    for row in db.query(sql, params)? {
        if let Some(&i) = at.get(&row.text(0)) {
            apply(&mut inputs[i], &row);
        }
    }
    Ok(())
}

/// Applies verdicts in one transaction; returns how many entered or left.
pub(crate) fn record_verdicts(db: &mut impl Db, verdicts: &[VerdictWrite], at: i64) -> Result<usize, StoreError> {
    let mut changes = 0;
    for v in verdicts {
        changes += usize::from(record_verdict(db, v, at)?.is_some());
    }
    Ok(changes)
}

/// Where tile documents live: offers (with their slot) or page slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileDocument {
    Offer,
    PageSlot,
}

/// Creates or replaces an offer (`slot` names its page slot) or a page slot, as JSON text.
pub(crate) fn upsert_tile_document(db: &mut impl Db, kind: TileDocument, id: &str, slot: &str, definition: &str, at: i64) -> Result<(), StoreError> {
    match kind {
        TileDocument::Offer => db.execute(
            "INSERT INTO offers (id, slot, definition, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET slot = excluded.slot, definition = excluded.definition, updated_at = excluded.updated_at",
            &[P::Text(id), P::Text(slot), P::Text(definition), P::Int(at)],
        ),
        TileDocument::PageSlot => db.execute(
            "INSERT INTO tile_slots (name, definition, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, updated_at = excluded.updated_at",
            &[P::Text(id), P::Text(definition), P::Int(at)],
        ),
    }
    .map(drop)
}

/// Deletes an offer or a page slot; false when there was none.
pub(crate) fn delete_tile_document(db: &mut impl Db, kind: TileDocument, id: &str) -> Result<bool, StoreError> {
    let sql = match kind {
        TileDocument::Offer => "DELETE FROM offers WHERE id = ?1",
        TileDocument::PageSlot => "DELETE FROM tile_slots WHERE name = ?1",
    };
    Ok(db.execute(sql, &[P::Text(id)])? > 0)
}

/// Every offer or page slot as stored, by id.
pub(crate) fn tile_documents(db: &mut impl Db, kind: TileDocument) -> Result<Vec<StoredDocument>, StoreError> {
    let sql = match kind {
        TileDocument::Offer => "SELECT id, definition, updated_at FROM offers ORDER BY id",
        TileDocument::PageSlot => "SELECT name, definition, updated_at FROM tile_slots ORDER BY name",
    };
    Ok(db.query(sql, &[])?.into_iter().map(|r| StoredDocument { id: r.text(0), definition: r.text(1), updated_at: r.int(2) }).collect())
}

/// Counts one more order for every pair of products bought together in it.
fn count_co_purchases(db: &mut impl Db, ids: &[String]) -> Result<(), StoreError> {
    for a in ids {
        for b in ids.iter().filter(|b| *b != a) {
            db.execute(
                "INSERT INTO co_purchases (product_id, other_id, orders) VALUES (?1, ?2, 1)
                 ON CONFLICT (product_id, other_id) DO UPDATE SET orders = co_purchases.orders + 1",
                &[P::Text(a), P::Text(b)],
            )?;
        }
    }
    Ok(())
}

fn product_from(r: &Row) -> Product {
    Product { id: r.text(0), name: r.text(1), category: r.opt_text(2), price: r.opt_float(3), url: r.opt_text(4), image: r.opt_text(5), in_stock: r.bool(6) }
}

/// Up to `limit` in-stock products for the person `id` names, none they bought: first what
/// others bought together with their purchases (most orders first), then their categories
/// (most bought first), each category by name.
pub(crate) fn related_products(db: &mut impl Db, mapping: &EventMapping, id: &str, limit: usize) -> Result<Vec<Product>, StoreError> {
    let Some(profile) = resolve_id(db, id)? else { return Ok(Vec::new()) };
    let mut bought: Vec<String> = Vec::new();
    for row in db.query("SELECT properties FROM events WHERE profile_id = ?1 AND name = ?2", &[P::Text(&profile), P::Text(&mapping.order_completed)])? {
        let properties: Map<String, Value> = serde_json::from_str(&row.text(0)).unwrap_or_default();
        for id in ordered_products(mapping, &properties) {
            if !bought.contains(&id) {
                bought.push(id);
            }
        }
    }
    let columns = "p.id, p.name, p.category, p.price, p.url, p.image, p.in_stock";
    let mut picked: Vec<Product> = Vec::new();
    let take = |product: Product, picked: &mut Vec<Product>| {
        if picked.len() < limit && product.in_stock && !bought.contains(&product.id) && !picked.iter().any(|p| p.id == product.id) {
            picked.push(product);
        }
    };
    let mut together: Vec<(i64, Product)> = Vec::new();
    for id in &bought {
        for row in
            db.query(&format!("SELECT {columns}, c.orders FROM co_purchases c JOIN products p ON p.id = c.other_id WHERE c.product_id = ?1"), &[P::Text(id)])?
        {
            together.push((row.int(7), product_from(&row)));
        }
    }
    together.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
    for (_, product) in together {
        take(product, &mut picked);
    }
    let mut categories: Vec<(String, f64)> = load_computed(db, &profile)?.category_counts.iter().filter_map(|(c, n)| Some((c.clone(), n.as_f64()?))).collect();
    categories.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    for (category, _) in categories {
        if picked.len() >= limit {
            break;
        }
        for row in db.query(
            &format!("SELECT {columns} FROM products p WHERE p.category = ?1 AND p.in_stock = ?2 ORDER BY p.name, p.id LIMIT ?3"),
            &[P::Text(&category), P::Bool(true), P::Int((limit + bought.len()) as i64)],
        )? {
            take(product_from(&row), &mut picked);
        }
    }
    Ok(picked)
}

/// Creates or replaces a journey definition, keeping its entry cursor.
pub(crate) fn upsert_journey(db: &mut impl Db, name: &str, definition: &str, at: i64) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO journeys (name, definition, cursor, updated_at) VALUES (?1, ?2, 0, ?3)
         ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, updated_at = excluded.updated_at",
        &[P::Text(name), P::Text(definition), P::Int(at)],
    )
    .map(drop)
}

/// Every deployed journey, by name.
pub(crate) fn journeys(db: &mut impl Db) -> Result<Vec<StoredJourney>, StoreError> {
    Ok(db
        .query("SELECT name, definition, cursor FROM journeys ORDER BY name", &[])?
        .into_iter()
        .map(|r| StoredJourney { name: r.text(0), definition: r.text(1), entry_cursor: r.int(2) })
        .collect())
}

/// Moves a journey's entry cursor forward.
pub(crate) fn set_journey_cursor(db: &mut impl Db, name: &str, cursor: i64) -> Result<(), StoreError> {
    db.execute("UPDATE journeys SET cursor = ?2 WHERE name = ?1 AND cursor < ?2", &[P::Text(name), P::Int(cursor)]).map(drop)
}

fn run_from(r: &Row) -> JourneyRun {
    JourneyRun {
        id: r.text(0),
        journey: r.text(1),
        profile_id: r.text(2),
        step: r.int(3),
        status: r.text(4),
        wake_at: r.opt_int(5),
        step_started_at: r.int(6),
        entered_at: r.int(7),
        ended_reason: r.opt_text(8),
        entered_by: r.opt_text(9),
        version: r.int(10),
    }
}

const RUN_COLUMNS: &str = "id, journey, profile_id, step, status, wake_at, step_started_at, entered_at, ended_reason, entered_by, version";

/// Starts a run unless the re-entry policy forbids it: `never` (one run ever), otherwise
/// not while another run of the same journey is unfinished; and never twice for one cause
/// (`entered_by`). Returns whether it started. Hosts sharing a database decide one
/// customer's entry one at a time, and a unique index on unfinished runs backs that up.
pub(crate) fn start_run(db: &mut impl Db, run: &JourneyRun, re_entry: &str) -> Result<bool, StoreError> {
    db.lock_identities(&[format!("journey-entry:{}:{}", run.journey, run.profile_id)])?;
    let who = [P::Text(&run.journey), P::Text(&run.profile_id)];
    let blocking = if re_entry == "never" {
        "SELECT 1 FROM journey_runs WHERE journey = ?1 AND profile_id = ?2 LIMIT 1"
    } else {
        "SELECT 1 FROM journey_runs WHERE journey = ?1 AND profile_id = ?2 AND status <> 'done' LIMIT 1"
    };
    if db.query_opt(blocking, &who)?.is_some() {
        return Ok(false);
    }
    if let Some(cause) = &run.entered_by
        && db.query_opt("SELECT 1 FROM journey_runs WHERE journey = ?1 AND entered_by = ?2", &[P::Text(&run.journey), P::Text(cause)])?.is_some()
    {
        return Ok(false);
    }
    // Someone erased since they were picked is not taken in.
    if !db.lock_profile(&run.profile_id, false)? {
        return Ok(false);
    }
    let inserted = db.execute(
        &format!("INSERT INTO journey_runs ({RUN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0) ON CONFLICT DO NOTHING"),
        &[
            P::Text(&run.id),
            P::Text(&run.journey),
            P::Text(&run.profile_id),
            P::Int(run.step),
            P::Text(&run.status),
            P::OptInt(run.wake_at),
            P::Int(run.step_started_at),
            P::Int(run.entered_at),
            P::OptText(run.ended_reason.as_deref()),
            P::OptText(run.entered_by.as_deref()),
        ],
    )?;
    Ok(inserted > 0)
}

/// The condition under which `lease` may take a run: nobody holds it, its lease has passed
/// at `?N` (wall-clock milliseconds), or an earlier process of the same host held it.
fn takeable(now: usize, host: usize, owner: usize) -> String {
    format!("(lease_until IS NULL OR lease_until < ?{now} OR (lease_owner LIKE ?{host} AND lease_owner <> ?{owner}))")
}

/// Leases the runs due at `now` to `lease`'s owner until `lease_now + length`: active
/// ones, and waiting ones whose time has come, that no live host holds.
pub(crate) fn claim_due_runs(db: &mut impl Db, now: i64, limit: usize, lease: &Lease, lease_now: i64) -> Result<Vec<JourneyRun>, StoreError> {
    let host = format!("{}/%", lease.host);
    let sql = format!(
        "UPDATE journey_runs SET lease_owner = ?3, lease_until = ?4 WHERE id IN (
             SELECT id FROM journey_runs WHERE (status = 'active' OR (status = 'waiting' AND wake_at <= ?1)) AND {}
             ORDER BY COALESCE(wake_at, 0), id LIMIT ?2{})
         RETURNING {RUN_COLUMNS}",
        takeable(5, 6, 3),
        db.skip_locked()
    );
    let params =
        [P::Int(now), P::Int(limit as i64), P::Text(&lease.owner), P::Int(lease_now.saturating_add(lease.length_ms)), P::Int(lease_now), P::Text(&host)];
    let mut runs: Vec<JourneyRun> = db.query(&sql, &params)?.iter().map(run_from).collect();
    runs.sort_by(|a, b| (a.wake_at.unwrap_or(0), &a.id).cmp(&(b.wake_at.unwrap_or(0), &b.id)));
    Ok(runs)
}

/// Saves a run's position and state, and lets go of its lease, unless it changed since
/// this copy was read or another owner leased it since (another host took it over): then
/// nothing is written and the answer is false.
pub(crate) fn save_run(db: &mut impl Db, run: &JourneyRun, owner: &str) -> Result<bool, StoreError> {
    Ok(db.execute(
        "UPDATE journey_runs SET step = ?2, status = ?3, wake_at = ?4, step_started_at = ?5, ended_reason = ?6,
             version = version + 1, lease_owner = NULL, lease_until = NULL
         WHERE id = ?1 AND version = ?7 AND (lease_owner IS NULL OR lease_owner = ?8)",
        &[
            P::Text(&run.id),
            P::Int(run.step),
            P::Text(&run.status),
            P::OptInt(run.wake_at),
            P::Int(run.step_started_at),
            P::OptText(run.ended_reason.as_deref()),
            P::Int(run.version),
            P::Text(owner),
        ],
    )? > 0)
}

/// The runs of a journey, for operators and tests.
pub(crate) fn journey_runs(db: &mut impl Db, journey: &str) -> Result<Vec<JourneyRun>, StoreError> {
    Ok(db
        .query(&format!("SELECT {RUN_COLUMNS} FROM journey_runs WHERE journey = ?1 ORDER BY entered_at, id"), &[P::Text(journey)])?
        .iter()
        .map(run_from)
        .collect())
}

/// Appends to the journey log.
pub(crate) fn log_journey(db: &mut impl Db, entries: &[JourneyLogEntry]) -> Result<(), StoreError> {
    // A send can outlast its customer's erasure; what it says about them is not kept.
    let mut erased: HashMap<&str, bool> = HashMap::new();
    for e in entries {
        let gone = match erased.get(e.profile_id.as_str()) {
            Some(gone) => *gone,
            None => {
                let gone = !db.lock_profile(&e.profile_id, false)?;
                erased.insert(&e.profile_id, gone);
                gone
            }
        };
        if gone {
            continue;
        }
        db.execute(
            "INSERT INTO journey_log (run_id, journey, profile_id, step, action, channel, detail, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            &[
                P::Text(&e.run_id),
                P::Text(&e.journey),
                P::Text(&e.profile_id),
                P::Text(&e.step),
                P::Text(&e.action),
                P::OptText(e.channel.as_deref()),
                P::Text(&e.detail),
                P::Int(e.at),
            ],
        )?;
    }
    Ok(())
}

/// A journey's log in order.
pub(crate) fn journey_log(db: &mut impl Db, journey: &str) -> Result<Vec<JourneyLogEntry>, StoreError> {
    Ok(db
        .query("SELECT run_id, journey, profile_id, step, action, channel, detail, at FROM journey_log WHERE journey = ?1 ORDER BY id", &[P::Text(journey)])?
        .into_iter()
        .map(|r| JourneyLogEntry {
            run_id: r.text(0),
            journey: r.text(1),
            profile_id: r.text(2),
            step: r.text(3),
            action: r.text(4),
            channel: r.opt_text(5),
            detail: r.text(6),
            at: r.int(7),
        })
        .collect())
}

/// Claims a send before the provider is called, if this host still holds the run (and
/// then extends its lease): [`SendClaim::New`] when nobody claimed it before, else what
/// was recorded (`pending` when a host stopped between claiming and settling).
pub(crate) fn claim_send(
    db: &mut impl Db,
    key: &str,
    run: &JourneyRun,
    channel: &str,
    at: i64,
    lease: &Lease,
    lease_now: i64,
) -> Result<SendClaim, StoreError> {
    // A run erased with its customer since the engine read it is nobody's to message:
    // answered as settled, so nothing is sent.
    let erased = SendClaim::Existing(ClaimedSend { outcome: "erased".into(), claimed_at: at, sent_at: None });
    let Some(owner) = db.query_opt("SELECT profile_id FROM journey_runs WHERE id = ?1", &[P::Text(&run.id)])? else {
        return Ok(erased);
    };
    if !db.lock_profile(&owner.text(0), false)? {
        return Ok(erased);
    }
    if !renew_run_lease(db, run, lease, lease_now)? {
        return Ok(SendClaim::LostRun);
    }
    let inserted = db.execute(
        "INSERT INTO journey_sends (idempotency_key, run_id, channel, outcome, at) VALUES (?1, ?2, ?3, 'pending', ?4)
         ON CONFLICT (idempotency_key) DO NOTHING",
        &[P::Text(key), P::Text(&run.id), P::Text(channel), P::Int(at)],
    )?;
    if inserted > 0 {
        return Ok(SendClaim::New);
    }
    Ok(db
        .query_opt("SELECT outcome, at, sent_at FROM journey_sends WHERE idempotency_key = ?1", &[P::Text(key)])?
        .map_or(SendClaim::New, |r| SendClaim::Existing(ClaimedSend { outcome: r.text(0), claimed_at: r.int(1), sent_at: r.opt_int(2) })))
}

/// Extends `lease` on `run` if its owner still holds the run at the version it read;
/// whether it does.
fn renew_run_lease(db: &mut impl Db, run: &JourneyRun, lease: &Lease, lease_now: i64) -> Result<bool, StoreError> {
    Ok(db.execute(
        "UPDATE journey_runs SET lease_until = ?4 WHERE id = ?1 AND lease_owner = ?2 AND version = ?3",
        &[P::Text(&run.id), P::Text(&lease.owner), P::Int(run.version), P::Int(lease_now.saturating_add(lease.length_ms))],
    )? > 0)
}

/// Records that a claimed send's request is going out at `at`, just before it does, if
/// this host still holds the run (whose lease it extends); whether it does. A request is
/// sent only after this said yes, so a host whose lease passed sends nothing more.
pub(crate) fn mark_sending(db: &mut impl Db, key: &str, run: &JourneyRun, at: i64, lease: &Lease, lease_now: i64) -> Result<bool, StoreError> {
    if !renew_run_lease(db, run, lease, lease_now)? {
        return Ok(false);
    }
    Ok(db.execute("UPDATE journey_sends SET sent_at = ?2 WHERE idempotency_key = ?1 AND outcome = 'pending'", &[P::Text(key), P::Int(at)])? > 0)
}

/// The send already claimed for `step` of `run`, on whichever channel.
pub(crate) fn step_send(db: &mut impl Db, run: &str, step: &str) -> Result<Option<StepSend>, StoreError> {
    let prefix = format!("{run}:{step}:");
    Ok(db
        .query("SELECT idempotency_key, channel, outcome, at, sent_at FROM journey_sends WHERE run_id = ?1", &[P::Text(run)])?
        .into_iter()
        .find(|r| r.text(0).starts_with(&prefix))
        .map(|r| StepSend { key: r.text(0), channel: r.text(1), outcome: r.text(2), claimed_at: r.int(3), sent_at: r.opt_int(4) }))
}

/// Records what the provider said about a claimed send.
pub(crate) fn settle_send(db: &mut impl Db, key: &str, outcome: &str) -> Result<(), StoreError> {
    db.execute("UPDATE journey_sends SET outcome = ?2 WHERE idempotency_key = ?1", &[P::Text(key), P::Text(outcome)]).map(drop)
}

/// Takes (or keeps) the lease `name` for `lease`'s owner until `now` plus its length, if
/// nobody else holds it (an earlier process of the same host does not count); whether the
/// owner holds it.
pub(crate) fn take_lease(db: &mut impl Db, name: &str, lease: &Lease, now: i64) -> Result<bool, StoreError> {
    let host = format!("{}/%", lease.host);
    Ok(db.execute(
        "INSERT INTO leases (name, owner, until) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until
         WHERE leases.owner = excluded.owner OR leases.until < ?4 OR leases.owner LIKE ?5",
        &[P::Text(name), P::Text(&lease.owner), P::Int(now.saturating_add(lease.length_ms)), P::Int(now), P::Text(&host)],
    )? > 0)
}

/// Lets go of lease `name` if `owner` holds it.
pub(crate) fn release_lease(db: &mut impl Db, name: &str, owner: &str) -> Result<(), StoreError> {
    db.execute("DELETE FROM leases WHERE name = ?1 AND owner = ?2", &[P::Text(name), P::Text(owner)]).map(drop)
}

/// Forgets accepted message ids received before `before`, at most `limit` of them; how
/// many. A client retrying a message after that counts it again (Segment keeps 24 hours).
pub(crate) fn sweep_message_ids(db: &mut impl Db, before: i64, limit: usize) -> Result<u64, StoreError> {
    db.execute(
        "DELETE FROM messages WHERE (source, message_id) IN (SELECT source, message_id FROM messages WHERE received_at < ?1 LIMIT ?2)",
        &[P::Int(before), P::Int(limit as i64)],
    )
}

/// Events named `name` stored after event id `after`, oldest first.
/// Journeys that enter on an event follow this feed.
pub(crate) fn events_after(db: &mut impl Db, name: &str, after: i64, limit: usize) -> Result<Vec<EventRef>, StoreError> {
    Ok(db
        .query(
            "SELECT id, profile_id, timestamp FROM events WHERE id > ?2 AND name = ?1 ORDER BY id LIMIT ?3",
            &[P::Text(name), P::Int(after), P::Int(limit as i64)],
        )?
        .into_iter()
        .map(|r| EventRef { id: r.int(0), profile_id: r.text(1), timestamp: r.int(2) })
        .collect())
}

/// Messages sent to a profile by any journey since `since`: what a frequency cap counts.
pub(crate) fn sends_since(db: &mut impl Db, profile: &str, since: i64) -> Result<i64, StoreError> {
    Ok(db
        .query_opt("SELECT COUNT(*) FROM journey_log WHERE profile_id = ?1 AND action = 'sent' AND at >= ?2", &[P::Text(profile), P::Int(since)])?
        .map_or(0, |r| r.int(0)))
}

/// Leases the waiting runs of `journey` whose customer has done `goal` since entering, as
/// [`claim_due_runs`] does: they leave at once rather than at their next wake-up.
pub(crate) fn claim_goal_reached(
    db: &mut impl Db,
    journey: &str,
    goal: &str,
    limit: usize,
    lease: &Lease,
    lease_now: i64,
) -> Result<Vec<JourneyRun>, StoreError> {
    let host = format!("{}/%", lease.host);
    let sql = format!(
        "UPDATE journey_runs SET lease_owner = ?4, lease_until = ?5 WHERE id IN (
             SELECT id FROM journey_runs r WHERE journey = ?1 AND status = 'waiting' AND {}
             AND EXISTS (SELECT 1 FROM events e WHERE e.profile_id = r.profile_id AND e.name = ?2 AND e.timestamp >= r.entered_at)
             LIMIT ?3{})
         RETURNING {RUN_COLUMNS}",
        takeable(6, 7, 4),
        db.skip_locked()
    );
    let params = [
        P::Text(journey),
        P::Text(goal),
        P::Int(limit as i64),
        P::Text(&lease.owner),
        P::Int(lease_now.saturating_add(lease.length_ms)),
        P::Int(lease_now),
        P::Text(&host),
    ];
    Ok(db.query(&sql, &params)?.iter().map(run_from).collect())
}
