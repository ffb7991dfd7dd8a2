//! The little SQL the store logic needs, over either driver: parameters and values as
//! plain enums, and one dialect (`?N` placeholders, `ON CONFLICT`) that both SQLite and
//! PostgreSQL accept once the placeholders are rewritten for PostgreSQL.

use crate::StoreError;

/// A query parameter.
#[derive(Debug, Clone, Copy)]
pub(crate) enum P<'a> {
    Text(&'a str),
    Int(i64),
    Float(f64),
    Bool(bool),
    OptText(Option<&'a str>),
    OptInt(Option<i64>),
    OptFloat(Option<f64>),
}

/// A column value as read back.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum V {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
    Bool(bool),
}

/// One result row.
#[derive(Debug, Clone)]
pub(crate) struct Row(pub(crate) Vec<V>);

impl Row {
    fn get(&self, i: usize) -> &V {
        self.0.get(i).unwrap_or(&V::Null)
    }

    pub(crate) fn text(&self, i: usize) -> String {
        self.opt_text(i).unwrap_or_default()
    }

    pub(crate) fn opt_text(&self, i: usize) -> Option<String> {
        match self.get(i) {
            V::Text(s) => Some(s.clone()),
            _ => None,
        }
    }

    pub(crate) fn int(&self, i: usize) -> i64 {
        self.opt_int(i).unwrap_or(0)
    }

    pub(crate) fn opt_int(&self, i: usize) -> Option<i64> {
        match self.get(i) {
            V::Int(n) => Some(*n),
            V::Float(f) => Some(*f as i64),
            V::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    pub(crate) fn float(&self, i: usize) -> f64 {
        match self.get(i) {
            V::Float(f) => *f,
            V::Int(n) => *n as f64,
            _ => 0.0,
        }
    }

    pub(crate) fn opt_float(&self, i: usize) -> Option<f64> {
        match self.get(i) {
            V::Float(f) => Some(*f),
            V::Int(n) => Some(*n as f64),
            _ => None,
        }
    }

    /// SQLite has no boolean type: 0 and 1 come back as integers.
    pub(crate) fn bool(&self, i: usize) -> bool {
        match self.get(i) {
            V::Bool(b) => *b,
            V::Int(n) => *n != 0,
            _ => false,
        }
    }
}

/// A connection or transaction of either backend.
pub(crate) trait Db {
    /// Runs a statement; returns the rows it changed.
    fn execute(&mut self, sql: &str, params: &[P<'_>]) -> Result<u64, StoreError>;
    /// Runs a query; returns every row.
    fn query(&mut self, sql: &str, params: &[P<'_>]) -> Result<Vec<Row>, StoreError>;

    /// Serialises writers that touch the same identities. SQLite's single writer needs
    /// nothing; PostgreSQL takes transaction-scoped advisory locks, since several hosts
    /// may ingest for the same person at once.
    fn lock_identities(&mut self, _keys: &[String]) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether profile `id` exists, locking its row for the transaction when it does:
    /// `exclusive` for an erasure, shared for a write that must not outlive it (a segment
    /// entry). SQLite's single writer orders them already; PostgreSQL, where a verdict and
    /// an erasure can commit at once, needs the row locks, or the verdict could write a
    /// membership for a person just erased.
    fn lock_profile(&mut self, id: &str, _exclusive: bool) -> Result<bool, StoreError> {
        Ok(self.query_opt("SELECT 1 FROM profiles WHERE id = ?1", &[P::Text(id)])?.is_some())
    }

    /// What a `SELECT` that picks rows to claim ends with: PostgreSQL's `FOR UPDATE SKIP
    /// LOCKED`, so hosts claiming at once each get other rows instead of waiting; nothing on
    /// SQLite, whose single writer claims one batch at a time.
    fn skip_locked(&self) -> &'static str {
        ""
    }

    /// What a `SELECT` that locks the rows it reads, to update them, ends with:
    /// PostgreSQL's `FOR NO KEY UPDATE`; nothing on SQLite, whose single writer holds every
    /// row already.
    fn for_update(&self) -> &'static str {
        ""
    }

    /// The first row, if any.
    fn query_opt(&mut self, sql: &str, params: &[P<'_>]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
}

/// Rewrites `?N` placeholders as PostgreSQL's `$N`.
pub(crate) fn dollar_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_placeholders() {
        assert_eq!(dollar_placeholders("SELECT ?1, ?12 WHERE a = '?'"), "SELECT $1, $12 WHERE a = '?'");
    }
}
