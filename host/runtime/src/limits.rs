//! What one call may use (time, memory, output), by kind, and how output is counted
//! against it.

use std::time::Duration;

use crate::bindings::wit::{FeedbackEvent, Found, HttpRequest, Outcome, Placed, Tile, Verdict};
use crate::error::CallError;
use crate::json::info_to_json;
use crate::kind::{Kind, PluginInfo};

/// What one call into a plugin may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time for instantiation plus the call.
    pub deadline: Duration,
    /// The most linear memory one instance may grow to.
    pub memory_bytes: usize,
    /// The most bytes of output (strings and lists, added up) a call may return.
    pub output_bytes: usize,
    /// The most bytes of log lines kept per call; the rest is dropped and counted.
    pub log_bytes: usize,
}

impl Limits {
    const fn new(deadline_ms: u64, output_bytes: usize) -> Self {
        Limits { deadline: Duration::from_millis(deadline_ms), memory_bytes: 32 << 20, output_bytes, log_bytes: 1024 }
    }
}

/// Limits for each plugin kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindLimits {
    pub rule: Limits,
    pub tiles: Limits,
    pub channel: Limits,
}

impl Default for KindLimits {
    fn default() -> Self {
        KindLimits {
            rule: Limits::new(10, 16 << 10),
            tiles: Limits::new(10, 64 << 10),
            // Adapters format whole messages and audience batches, so they get more room.
            channel: Limits::new(50, 4 << 20),
        }
    }
}

impl KindLimits {
    /// The same deadline for every kind, for tools and tests where wall-clock time is not
    /// what is being checked.
    pub fn with_deadline(mut self, deadline: Duration) -> KindLimits {
        for limits in [&mut self.rule, &mut self.tiles, &mut self.channel] {
            limits.deadline = deadline;
        }
        self
    }

    /// The limits for one kind.
    pub fn of(&self, kind: Kind) -> Limits {
        match kind {
            Kind::Rule => self.rule,
            Kind::Tiles => self.tiles,
            Kind::Channel => self.channel,
        }
    }
}

/// Refuses output larger than the kind's limit, counted as the bytes of its strings and lists.
pub(crate) fn check_size<T: OutputSize>(value: T, limits: Limits) -> Result<T, CallError> {
    let size = value.output_size();
    if size > limits.output_bytes {
        return Err(CallError::BadOutput(format!("output is {size} bytes; the limit is {} bytes", limits.output_bytes)));
    }
    Ok(value)
}

/// Roughly how many bytes a plugin's output occupies.
pub(crate) trait OutputSize {
    fn output_size(&self) -> usize;
}

impl OutputSize for String {
    fn output_size(&self) -> usize {
        self.len()
    }
}

impl<T: OutputSize> OutputSize for Option<T> {
    fn output_size(&self) -> usize {
        self.as_ref().map_or(0, OutputSize::output_size)
    }
}

/// What each list item counts besides its contents, so a list of empty items is not free.
/// A fixed figure rather than the host's in-memory size, so the edge counts the same.
pub const ITEM_BYTES: usize = 16;

impl<T: OutputSize> OutputSize for Vec<T> {
    fn output_size(&self) -> usize {
        self.iter().map(OutputSize::output_size).sum::<usize>() + self.len() * ITEM_BYTES
    }
}

impl<A: OutputSize, B: OutputSize> OutputSize for (A, B) {
    fn output_size(&self) -> usize {
        self.0.output_size() + self.1.output_size()
    }
}

impl OutputSize for u8 {
    fn output_size(&self) -> usize {
        1
    }
}

impl OutputSize for Verdict {
    fn output_size(&self) -> usize {
        self.reason.len() + self.label.output_size()
    }
}

impl OutputSize for Placed {
    fn output_size(&self) -> usize {
        self.label.output_size()
    }
}

impl OutputSize for Tile {
    fn output_size(&self) -> usize {
        self.offer_id.len()
            + self.title.len()
            + self.body.len()
            + self.image.output_size()
            + self.link.len()
            + self.voucher.output_size()
            + self.reason.len()
            + 8
    }
}

impl OutputSize for HttpRequest {
    fn output_size(&self) -> usize {
        self.url.len() + self.headers.output_size() + self.body.len()
    }
}

impl OutputSize for Outcome {
    fn output_size(&self) -> usize {
        match self {
            Outcome::Delivered(id) => id.output_size(),
            Outcome::RetryLater(retry) => retry.reason.len() + 4,
            Outcome::Failed(reason) | Outcome::NotEligible(reason) => reason.len(),
        }
    }
}

impl OutputSize for FeedbackEvent {
    fn output_size(&self) -> usize {
        self.send_key.len() + self.event_id.len() + self.recipient.output_size() + self.reason.output_size() + self.url.output_size() + 10
    }
}

impl OutputSize for Found {
    fn output_size(&self) -> usize {
        match self {
            Found::Accepted(id) => id.output_size(),
            Found::Absent => 0,
            Found::Unknown(reason) => reason.len(),
        }
    }
}

impl OutputSize for PluginInfo {
    fn output_size(&self) -> usize {
        // describe() runs once per load, so measuring its whole JSON form is cheap enough,
        // and it counts every string: names, docs, defaults, hosts, secrets, the query.
        serde_json::to_string(&info_to_json(self)).map_or(usize::MAX, |s| s.len())
    }
}
