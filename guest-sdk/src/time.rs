//! Durations as milliseconds, the unit of [`crate::Timestamp`].

/// One minute in milliseconds.
pub const MINUTE: i64 = 60_000;
/// One hour in milliseconds.
pub const HOUR: i64 = 60 * MINUTE;
/// One day in milliseconds.
pub const DAY: i64 = 24 * HOUR;

/// `n` days in milliseconds.
pub const fn days(n: i64) -> i64 {
    n * DAY
}

/// `n` hours in milliseconds.
pub const fn hours(n: i64) -> i64 {
    n * HOUR
}

/// `n` minutes in milliseconds.
pub const fn minutes(n: i64) -> i64 {
    n * MINUTE
}
