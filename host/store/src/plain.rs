//! The common case of ingestion in few statements: events of people already known, which
//! create, link and merge nothing. A batch of them costs a handful of multi-row statements
//! instead of about ten per message, which is what makes PostgreSQL (one round trip per
//! statement) keep up. Everything else takes the per-message path in `logic`, in order.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::StoreError;
use crate::computed::{computed_from, ordered_products};
use crate::db::{Db, P};
use crate::model::{Computed, EventMapping, Message};

/// The row counts a multi-row statement is cut into, largest first. A few fixed shapes
/// mean few distinct statements, and PostgreSQL prepares each once per connection.
const SHAPES: [usize; 5] = [256, 64, 16, 4, 1];

/// `n` rows cut into [`SHAPES`], largest first.
fn chunks(mut n: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    for shape in SHAPES {
        while n >= shape {
            sizes.push(shape);
            n -= shape;
        }
    }
    sizes
}

/// `rows` cut into slices of the [`SHAPES`], largest first.
fn shaped<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = rows;
    chunks(rows.len()).into_iter().map(move |size| {
        let (now, later) = rest.split_at(size);
        rest = later;
        now
    })
}

/// `(?1, ?2), (?3, ?4)`: the placeholders of `rows` rows of `columns` values, numbered
/// from `first`.
fn placeholders(rows: usize, columns: usize, first: usize) -> String {
    let row = |r: usize| format!("({})", (0..columns).map(|c| format!("?{}", first + r * columns + c)).collect::<Vec<_>>().join(", "));
    (0..rows).map(row).collect::<Vec<_>>().join(", ")
}

/// `?first, …` for an `IN` list of the smallest shape that holds `n` (at most the
/// largest): a short list is padded with its last value, which `IN` ignores.
fn in_list(n: usize, first: usize) -> (usize, String) {
    let shape = SHAPES.iter().rev().copied().find(|&s| s >= n).unwrap_or(SHAPES[0]);
    (shape, (0..shape).map(|i| format!("?{}", first + i)).collect::<Vec<_>>().join(", "))
}

/// Runs `sql(list)` for `values` in `IN` lists of fixed shapes, with `before` as the
/// leading parameters; the rows of every call.
fn query_in<'a>(db: &mut impl Db, values: &[&'a str], before: &[P<'a>], sql: impl Fn(&str) -> String) -> Result<Vec<crate::db::Row>, StoreError> {
    let mut rows = Vec::new();
    let mut rest = values;
    while let Some(last) = rest.last() {
        let (shape, list) = in_list(rest.len(), before.len() + 1);
        let (now, later) = rest.split_at(shape.min(rest.len()));
        let mut params: Vec<P<'a>> = before.to_vec();
        params.extend(now.iter().map(|v| P::Text(v)));
        params.resize(before.len() + shape, P::Text(last));
        rows.extend(db.query(&sql(&list), &params)?);
        rest = later;
    }
    Ok(rows)
}

/// Which messages of a batch are new, by source and message id, claiming their ids in a
/// few statements. A message repeated within the batch is new only the first time.
pub(crate) fn claim_message_ids(db: &mut impl Db, messages: &[Message]) -> Result<Vec<bool>, StoreError> {
    let mut first = HashSet::new();
    let mut unique: Vec<&Message> = messages.iter().filter(|m| first.insert((m.source.as_str(), m.message_id.as_str()))).collect();
    // In key order, so two writers carrying the same ids (a batch redelivered to another
    // host) wait on them in the same order instead of each on the other.
    unique.sort_unstable_by(|a, b| (&a.source, &a.message_id).cmp(&(&b.source, &b.message_id)));
    let mut claimed: HashSet<(String, String)> = HashSet::new();
    for now in shaped(&unique) {
        let sql = format!(
            "INSERT INTO messages (source, message_id, received_at) VALUES {} ON CONFLICT (source, message_id) DO NOTHING RETURNING source, message_id",
            placeholders(now.len(), 3, 1)
        );
        let params: Vec<P<'_>> = now.iter().flat_map(|m| [P::Text(&m.source), P::Text(&m.message_id), P::Int(m.received_at)]).collect();
        claimed.extend(db.query(&sql, &params)?.iter().map(|r| (r.text(0), r.text(1))));
    }
    Ok(messages.iter().map(|m| claimed.remove(&(m.source.clone(), m.message_id.clone()))).collect())
}

/// Whether a message could take the plain path, if its ids are known: an event that
/// writes no traits, consents or push token and names no previous id.
pub(crate) fn plain_shape(msg: &Message) -> bool {
    msg.event.is_some()
        && msg.traits.is_empty()
        && msg.consents.is_empty()
        && msg.push_token.is_none()
        && msg.previous_id.is_none()
        && (msg.user_id.is_some() || msg.anonymous_id.is_some())
}

/// The profiles of the ids messages name, as the database has them now.
#[derive(Default)]
pub(crate) struct Known {
    users: HashMap<String, String>,
    anonymous: HashMap<String, String>,
}

impl Known {
    /// Looks up the user and anonymous ids of `messages`.
    pub(crate) fn read<'m>(db: &mut impl Db, messages: impl Iterator<Item = &'m Message>) -> Result<Known, StoreError> {
        let (mut users, mut anonymous) = (Vec::new(), Vec::new());
        for msg in messages {
            users.extend(msg.user_id.as_deref());
            anonymous.extend(msg.anonymous_id.as_deref());
        }
        let mut known = Known::default();
        for (kind, ids, into) in [("user", users, &mut known.users), ("anonymous", anonymous, &mut known.anonymous)] {
            let mut ids = ids;
            ids.sort_unstable();
            ids.dedup();
            let rows = query_in(db, &ids, &[P::Text(kind)], |list| format!("SELECT value, profile_id FROM identities WHERE kind = ?1 AND value IN ({list})"))?;
            into.extend(rows.iter().map(|r| (r.text(0), r.text(1))));
        }
        Ok(known)
    }

    /// The profile of a message of [`plain_shape`] whose every id is known and names the
    /// same profile; `None` when resolving it would create, link or merge.
    pub(crate) fn profile_of(&self, msg: &Message) -> Option<String> {
        let user = msg.user_id.as_ref().map(|u| self.users.get(u));
        let anonymous = msg.anonymous_id.as_ref().map(|a| self.anonymous.get(a));
        match (user, anonymous) {
            (Some(Some(user)), Some(Some(anonymous))) if user == anonymous => Some(user.clone()),
            (Some(Some(user)), None) => Some(user.clone()),
            (None, Some(Some(anonymous))) => Some(anonymous.clone()),
            _ => None,
        }
    }
}

/// Plain events held back to be written together, in the order they came.
#[derive(Default)]
pub(crate) struct PlainEvents<'m> {
    held: Vec<(&'m Message, String)>,
    /// The profiles whose `updated_at` moves, by the time it moves to, for [`Self::finish`].
    received: BTreeMap<i64, Vec<String>>,
    /// Orders counted for each pair of products bought together, for [`Self::finish`].
    pairs: BTreeMap<(String, String), i64>,
}

impl<'m> PlainEvents<'m> {
    pub(crate) fn push(&mut self, msg: &'m Message, profile: String) {
        self.received.entry(msg.received_at).or_default().push(profile.clone());
        self.held.push((msg, profile));
    }

    /// Writes what is held, as the per-message path would have: each profile's latest
    /// time zone, the events, and for orders the computed traits and the products bought
    /// together.
    pub(crate) fn flush(&mut self, db: &mut impl Db, mapping: &EventMapping) -> Result<(), StoreError> {
        if self.held.is_empty() {
            return Ok(());
        }
        let held = std::mem::take(&mut self.held);
        set_time_zones(db, &held)?;
        insert_events(db, &held)?;
        count_orders(db, mapping, &held, &mut self.pairs)?;
        Ok(())
    }

    /// Flushes, then moves each profile's `updated_at` to its latest message's, in one
    /// statement per receipt time with the rows locked in id order, at the end of the
    /// batch, so the row locks are held briefly.
    pub(crate) fn finish(mut self, db: &mut impl Db, mapping: &EventMapping) -> Result<(), StoreError> {
        self.flush(db, mapping)?;
        count_co_purchases(db, std::mem::take(&mut self.pairs))?;
        let locked = db.for_update();
        for (at, mut profiles) in std::mem::take(&mut self.received) {
            profiles.sort_unstable();
            profiles.dedup();
            let profiles: Vec<&str> = profiles.iter().map(String::as_str).collect();
            if !locked.is_empty() {
                query_in(db, &profiles, &[P::Int(at)], |list| format!("SELECT id FROM profiles WHERE updated_at < ?1 AND id IN ({list}) ORDER BY id{locked}"))?;
            }
            query_in(db, &profiles, &[P::Int(at)], |list| {
                format!("UPDATE profiles SET updated_at = ?1 WHERE updated_at < ?1 AND id IN ({list}) RETURNING id")
            })?;
        }
        Ok(())
    }
}

/// Moves each profile's time zone to the one of its latest-timestamped message, as the
/// same updates message by message would.
fn set_time_zones(db: &mut impl Db, held: &[(&Message, String)]) -> Result<(), StoreError> {
    let mut zones: BTreeMap<&str, (&str, i64)> = BTreeMap::new();
    for (msg, profile) in held {
        if let Some(zone) = &msg.timezone {
            let latest = zones.entry(profile).or_insert((zone, msg.timestamp));
            // Later messages win ties, as the per-message update's `<=` lets them.
            if msg.timestamp >= latest.1 {
                *latest = (zone, msg.timestamp);
            }
        }
    }
    for (profile, (zone, at)) in zones {
        db.execute(
            "UPDATE profiles SET timezone = ?2, timezone_at = ?3 WHERE id = ?1 AND COALESCE(timezone_at, -1) <= ?3",
            &[P::Text(profile), P::Text(zone), P::Int(at)],
        )?;
    }
    Ok(())
}

fn insert_events(db: &mut impl Db, held: &[(&Message, String)]) -> Result<(), StoreError> {
    let rows: Vec<(&Message, &str, String)> =
        held.iter().map(|(msg, profile)| (*msg, profile.as_str(), serde_json::Value::Object(msg.properties.clone()).to_string())).collect();
    for now in shaped(&rows) {
        let sql = format!("INSERT INTO events (profile_id, name, timestamp, properties, message_id) VALUES {}", placeholders(now.len(), 5, 1));
        let params: Vec<P<'_>> = now
            .iter()
            .flat_map(|(msg, profile, properties)| {
                let event = msg.event.as_deref().unwrap_or_default();
                [P::Text(profile), P::Text(event), P::Int(msg.timestamp), P::Text(properties), P::Text(&msg.message_id)]
            })
            .collect();
        db.execute(&sql, &params)?;
    }
    Ok(())
}

/// The computed traits the orders among `held` move, and the pairs of products they
/// bought together, counted into `pairs`.
fn count_orders(db: &mut impl Db, mapping: &EventMapping, held: &[(&Message, String)], pairs: &mut BTreeMap<(String, String), i64>) -> Result<(), StoreError> {
    let orders: Vec<&(&Message, String)> = held.iter().filter(|(msg, _)| msg.event.as_ref() == Some(&mapping.order_completed)).collect();
    if orders.is_empty() {
        return Ok(());
    }
    let mut buyers: Vec<&str> = orders.iter().map(|(_, profile)| profile.as_str()).collect();
    buyers.sort_unstable();
    buyers.dedup();
    // The identity locks keep out writers naming the same ids, not one naming another id of
    // the same person: the buyer's row, locked before the traits are read, does.
    let locked = db.for_update();
    if !locked.is_empty() {
        query_in(db, &buyers, &[], |list| format!("SELECT id FROM profiles WHERE id IN ({list}) ORDER BY id{locked}"))?;
    }
    let rows = query_in(db, &buyers, &[], |list| {
        format!("SELECT order_count, lifetime_value, first_order_at, last_order_at, category_counts, profile_id FROM computed WHERE profile_id IN ({list})")
    })?;
    let mut computed: BTreeMap<&str, Computed> = buyers.iter().map(|b| (*b, Computed::default())).collect();
    for row in &rows {
        if let Some(slot) = computed.get_mut(row.text(5).as_str()) {
            *slot = computed_from(row);
        }
    }
    for (msg, profile) in orders {
        if let Some(c) = computed.get_mut(profile.as_str()) {
            c.add_order(mapping, msg.timestamp, &msg.properties);
        }
        let products = ordered_products(mapping, &msg.properties);
        for a in &products {
            for b in products.iter().filter(|b| *b != a) {
                *pairs.entry((a.clone(), b.clone())).or_default() += 1;
            }
        }
    }
    save_all_computed(db, &computed.into_iter().collect::<Vec<_>>())?;
    Ok(())
}

/// Adds `pairs` to the co-purchase counts: once per batch and in key order, since writers
/// for different people count the same pairs at once, and in any other order two of them
/// could each wait for the other.
fn count_co_purchases(db: &mut impl Db, pairs: BTreeMap<(String, String), i64>) -> Result<(), StoreError> {
    let pairs: Vec<_> = pairs.into_iter().collect();
    for now in shaped(&pairs) {
        let sql = format!(
            "INSERT INTO co_purchases (product_id, other_id, orders) VALUES {}
             ON CONFLICT (product_id, other_id) DO UPDATE SET orders = co_purchases.orders + excluded.orders",
            placeholders(now.len(), 3, 1)
        );
        let params: Vec<P<'_>> = now.iter().flat_map(|((a, b), n)| [P::Text(a), P::Text(b), P::Int(*n)]).collect();
        db.execute(&sql, &params)?;
    }
    Ok(())
}

/// Saves each profile's computed traits, as `logic::save_computed` does one at a time.
fn save_all_computed(db: &mut impl Db, computed: &[(&str, Computed)]) -> Result<(), StoreError> {
    let rows: Vec<(&str, &Computed, String)> = computed
        .iter()
        .filter(|(_, c)| c.order_count > 0)
        .map(|(profile, c)| (*profile, c, serde_json::Value::Object(c.category_counts.clone()).to_string()))
        .collect();
    for now in shaped(&rows) {
        let sql = format!(
            "INSERT INTO computed (profile_id, order_count, lifetime_value, first_order_at, last_order_at, category_counts) VALUES {}
             ON CONFLICT (profile_id) DO UPDATE SET order_count = excluded.order_count, lifetime_value = excluded.lifetime_value,
                 first_order_at = excluded.first_order_at, last_order_at = excluded.last_order_at, category_counts = excluded.category_counts",
            placeholders(now.len(), 6, 1)
        );
        let params: Vec<P<'_>> = now
            .iter()
            .flat_map(|(profile, c, categories)| {
                [
                    P::Text(profile),
                    P::Int(c.order_count),
                    P::Float(c.lifetime_value),
                    P::OptInt(c.first_order_at),
                    P::OptInt(c.last_order_at),
                    P::Text(categories),
                ]
            })
            .collect();
        db.execute(&sql, &params)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-message path every message took before: the reference the plain path must
    /// match, table for table.
    fn one_by_one(db: &mut impl Db, mapping: &EventMapping, messages: &[Message]) -> crate::model::IngestReport {
        let mut report = crate::model::IngestReport::default();
        for (index, msg) in messages.iter().enumerate() {
            let sql = "INSERT INTO messages (source, message_id, received_at) VALUES (?1, ?2, ?3) ON CONFLICT (source, message_id) DO NOTHING";
            if db.execute(sql, &[P::Text(&msg.source), P::Text(&msg.message_id), P::Int(msg.received_at)]).unwrap() == 0 {
                report.duplicates += 1;
                continue;
            }
            report.accepted += 1;
            crate::logic::ingest_one(db, mapping, msg, index, &mut report).unwrap();
        }
        report
    }

    /// A mixed stream: anonymous browsing, logins, aliases, orders with products, time
    /// zones and repeated message ids, over a few people, from a fixed seed.
    fn stream(batch: usize, seed: &mut u64) -> Vec<Message> {
        let mut next = |n: u64| {
            *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (*seed >> 33) % n
        };
        // Some batches long enough for the largest statement shapes.
        let size = if batch % 5 == 4 { 300 } else { 40 };
        (0..size)
            .map(|i| {
                let person = next(6);
                // A few ids repeat within the batch, and a few the previous batch sent.
                let message_id = match next(10) {
                    0 => format!("m{batch}-0"),
                    1 => format!("m{}-{i}", batch.saturating_sub(1)),
                    _ => format!("m{batch}-{i}"),
                };
                let mut msg = Message {
                    source: "shop".into(),
                    message_id,
                    kind: crate::model::MessageKind::Track,
                    user_id: None,
                    anonymous_id: None,
                    previous_id: None,
                    event: Some("Page Viewed".into()),
                    properties: serde_json::Map::new(),
                    traits: serde_json::Map::new(),
                    // Coarse, so time zones tie and the later message must win.
                    timestamp: 1_000_000 + ((batch * 100 + i) / 4) as i64 * 10 - next(3) as i64 * 10,
                    received_at: 2_000_000 + batch as i64 * 1000 + next(3) as i64,
                    timezone: (next(4) == 0).then(|| ["Europe/Paris", "America/Chicago"][next(2) as usize].to_string()),
                    consents: Vec::new(),
                    push_token: None,
                    from_browser: next(3) == 0,
                };
                match next(8) {
                    0 => msg.user_id = Some(format!("u{person}")),
                    1 | 2 => msg.anonymous_id = Some(format!("a{person}-{}", next(2))),
                    3 => {
                        msg.user_id = Some(format!("u{person}"));
                        msg.anonymous_id = Some(format!("a{person}-{}", next(2)));
                    }
                    4 => {
                        msg.kind = crate::model::MessageKind::Identify;
                        msg.event = None;
                        msg.user_id = Some(format!("u{person}"));
                        msg.anonymous_id = Some(format!("a{person}-{}", next(2)));
                        msg.traits.insert("first_name".into(), format!("P{person}").into());
                    }
                    5 => {
                        msg.kind = crate::model::MessageKind::Alias;
                        msg.event = None;
                        msg.user_id = Some(format!("u{person}"));
                        msg.previous_id = Some(format!("a{}-0", next(6)));
                    }
                    _ => {
                        msg.event = Some("Order Completed".into());
                        msg.user_id = Some(format!("u{person}"));
                        let products: Vec<serde_json::Value> =
                            (0..next(4)).map(|p| serde_json::json!({"product_id": format!("p{}", (p + next(3)) % 5), "category": "shoes"})).collect();
                        msg.properties.insert("revenue".into(), (10 + next(90)).into());
                        msg.properties.insert("products".into(), products.into());
                    }
                }
                msg
            })
            .collect()
    }

    /// Every table a message writes, with profile ids replaced by the identities each
    /// profile has (ids are random per database).
    fn dump(db: &mut impl Db) -> Vec<String> {
        let mut names: HashMap<String, String> = HashMap::new();
        for row in db.query("SELECT profile_id, kind || ':' || value FROM identities ORDER BY kind, value", &[]).unwrap() {
            let name = names.entry(row.text(0)).or_default();
            name.push_str(&row.text(1));
            name.push(' ');
        }
        let mut out = Vec::new();
        for (table, sql) in [
            ("profiles", "SELECT id, updated_at, timezone, timezone_at FROM profiles"),
            ("events", "SELECT profile_id, name, timestamp, properties, message_id FROM events ORDER BY id"),
            ("computed", "SELECT profile_id, order_count, lifetime_value, first_order_at, last_order_at, category_counts FROM computed"),
            ("traits", "SELECT profile_id, name, value, updated_at FROM traits"),
            ("identities", "SELECT profile_id, kind, value FROM identities"),
            ("co_purchases", "SELECT product_id, other_id, orders FROM co_purchases"),
            ("messages", "SELECT source, message_id, received_at FROM messages"),
        ] {
            let mut rows: Vec<String> = db
                .query(sql, &[])
                .unwrap()
                .iter()
                .map(|r| {
                    let values: Vec<String> = r.0.iter().map(|v| format!("{v:?}")).collect();
                    let mut line = values.join(" | ");
                    for (id, name) in &names {
                        line = line.replace(id, name);
                    }
                    format!("{table}: {line}")
                })
                .collect();
            // Events keep their order; the other tables are sets.
            if table != "events" {
                rows.sort();
            }
            out.extend(rows);
        }
        out
    }

    /// A connection that counts the statements inserting events, and the rows they insert.
    struct Counting<'a> {
        db: crate::sqlite::Lite<'a>,
        statements: usize,
        rows: u64,
    }

    impl Db for Counting<'_> {
        fn execute(&mut self, sql: &str, params: &[P<'_>]) -> Result<u64, StoreError> {
            let changed = self.db.execute(sql, params)?;
            if sql.starts_with("INSERT INTO events") {
                self.statements += 1;
                self.rows += changed;
            }
            Ok(changed)
        }

        fn query(&mut self, sql: &str, params: &[P<'_>]) -> Result<Vec<crate::db::Row>, StoreError> {
            self.db.query(sql, params)
        }
    }

    #[test]
    fn a_batch_through_the_plain_path_writes_what_one_message_at_a_time_wrote() {
        let mapping = EventMapping::default();
        let open = || {
            let mut conn = rusqlite::Connection::open_in_memory().unwrap();
            crate::sqlite::migrate(&mut conn).unwrap();
            conn
        };
        let (plain, reference) = (open(), open());
        let canonical = |db: &mut crate::sqlite::Lite<'_>, report: crate::model::IngestReport| {
            let names: HashMap<String, String> = db
                .query(
                    "SELECT profile_id, group_concat(kind || ':' || value, ' ') FROM (SELECT * FROM identities ORDER BY kind, value) GROUP BY profile_id",
                    &[],
                )
                .unwrap()
                .iter()
                .map(|r| (r.text(0), r.text(1)))
                .collect();
            let touched: Vec<String> =
                report.touched.iter().map(|t| format!("{} {:?} {}", names.get(&t.profile_id).cloned().unwrap_or_default(), t.event, t.order)).collect();
            let ignored: Vec<String> = report.ignored.iter().map(|i| format!("{} {} {}", i.index, i.field, i.reason)).collect();
            (report.accepted, report.duplicates, touched, ignored)
        };
        let mut seed = 7;
        let mut counted = Counting { db: crate::sqlite::Lite(&plain), statements: 0, rows: 0 };
        for batch in 0..30 {
            let messages = stream(batch, &mut seed);
            let mut b = crate::sqlite::Lite(&reference);
            let report = crate::logic::ingest(&mut counted, &mapping, &messages).unwrap();
            let by_one = one_by_one(&mut b, &mapping, &messages);
            // Later batches may merge a profile a touch named, so compare each batch's now.
            assert_eq!(canonical(&mut counted.db, report), canonical(&mut b, by_one), "batch {batch}");
            assert_eq!(dump(&mut counted.db), dump(&mut b), "after batch {batch}");
        }
        // One message at a time inserts one event per statement; the plain path, many. (The
        // stream is mostly logins and merges, so runs of plain events between them are short.)
        assert!(
            2 * counted.rows > 3 * counted.statements as u64,
            "the stream must exercise the plain path: {} events in {} statements",
            counted.rows,
            counted.statements
        );
    }

    #[test]
    fn rows_are_cut_into_few_shapes_that_add_up() {
        for n in 0..700 {
            let sizes = chunks(n);
            assert_eq!(sizes.iter().sum::<usize>(), n);
            assert!(sizes.iter().all(|s| SHAPES.contains(s)));
        }
        assert_eq!(chunks(100), [64, 16, 16, 4]);
    }

    #[test]
    fn placeholders_number_rows_in_order() {
        assert_eq!(placeholders(2, 3, 1), "(?1, ?2, ?3), (?4, ?5, ?6)");
        assert_eq!(in_list(3, 2), (4, "?2, ?3, ?4, ?5".to_string()));
        assert_eq!(in_list(1000, 1).0, 256);
    }
}
