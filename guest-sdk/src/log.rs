//! Logging to the host, which tags each line with the plugin and caps the bytes per call.

use core::fmt::Write;

use crate::Level;

/// Writes one line to the host log. Prefer the [`log!`](crate::log!) macro.
pub fn log_line(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::bindings::rule::rekindle::plugin::log::write(level, message);
    // Natively (unit tests) there is no host, so print instead.
    #[cfg(not(target_arch = "wasm32"))]
    std::eprintln!("[{}] {message}", log_level(level));
}

/// The lower-case name of a level.
pub fn log_level(level: Level) -> &'static str {
    match level {
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

/// Logs a formatted line: `log!(info, "scored {} offers", n)`.
#[macro_export]
macro_rules! log {
    ($level:ident, $($arg:tt)+) => {
        $crate::log_line($crate::__log_level!($level), &$crate::__private::format!($($arg)+))
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __log_level {
    (debug) => {
        $crate::Level::Debug
    };
    (info) => {
        $crate::Level::Info
    };
    (warn) => {
        $crate::Level::Warn
    };
    (error) => {
        $crate::Level::Error
    };
}

/// A fixed buffer, so reporting a panic never allocates (the panic may be an allocation
/// failure).
struct PanicBuffer {
    bytes: [u8; 512],
    len: usize,
}

impl Write for PanicBuffer {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let room = self.bytes.len() - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.bytes[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

/// Sends `panicked at FILE:LINE:COL: MESSAGE` to the host, which reports it as the trap.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub(crate) fn report_panic(info: &core::panic::PanicInfo<'_>) {
    let mut buffer = PanicBuffer { bytes: [0; 512], len: 0 };
    let _ = write!(buffer, "panicked at ");
    if let Some(location) = info.location() {
        let _ = write!(buffer, "{}:{}:{}: ", location.file(), location.line(), location.column());
    }
    let _ = write!(buffer, "{}", info.message());
    let text = core::str::from_utf8(&buffer.bytes[..buffer.len]).unwrap_or("panicked");
    log_line(Level::Error, text);
}
