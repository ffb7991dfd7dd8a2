//! Whether the verdict being built needs its reason. The `placement` export asks for
//! membership and label alone, and [`crate::Verdict::because`] then skips the text.

#[cfg(target_arch = "wasm32")]
mod flag {
    use core::sync::atomic::{AtomicBool, Ordering};

    // Set by every export that builds verdicts before it calls the rule, so no call
    // inherits another's.
    static QUIET: AtomicBool = AtomicBool::new(false);

    pub fn quiet() -> bool {
        QUIET.load(Ordering::Relaxed)
    }

    pub fn set(quiet: bool) {
        QUIET.store(quiet, Ordering::Relaxed)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod flag {
    // Natively a benchmark evaluates on several threads at once.
    std::thread_local! {
        static QUIET: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
    }

    pub fn quiet() -> bool {
        QUIET.with(|quiet| quiet.get())
    }

    pub fn set(quiet: bool) {
        QUIET.with(|flag| flag.set(quiet))
    }
}

/// Whether reasons are being skipped in this call.
pub(crate) fn quiet() -> bool {
    flag::quiet()
}

/// Runs `f` with reasons skipped, as the `placement` export does: every
/// [`crate::Verdict::because`] inside leaves its reason empty.
pub fn without_reasons<T>(f: impl FnOnce() -> T) -> T {
    quietly(true, f)
}

/// Runs `f` with reasons built, as `rule.evaluate` does.
pub fn with_reasons<T>(f: impl FnOnce() -> T) -> T {
    quietly(false, f)
}

/// Runs `f` with the flag at `quiet`, and puts back what it was after, even if `f` panics
/// (natively a panic can unwind and the thread go on; in a component it aborts the call).
fn quietly<T>(quiet: bool, f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            flag::set(self.0)
        }
    }
    let _restore = Restore(flag::quiet());
    flag::set(quiet);
    f()
}

#[cfg(test)]
mod tests {
    use crate::Verdict;

    use super::*;

    #[test]
    fn a_lazy_reason_is_built_only_when_asked_for() {
        let built = core::cell::Cell::new(0);
        let verdict = || {
            Verdict::because(true, || {
                built.set(built.get() + 1);
                "why".into()
            })
        };
        let quiet = without_reasons(verdict);
        assert_eq!((quiet.member, quiet.reason.as_str(), built.get()), (true, "", 0));
        let loud = with_reasons(verdict);
        assert_eq!((loud.member, loud.reason.as_str(), built.get()), (true, "why", 1));
        // Outside both, as in a plugin's unit tests, reasons are built; and nesting puts
        // back the outer setting.
        assert_eq!(verdict().reason, "why");
        assert_eq!(without_reasons(|| (with_reasons(verdict).reason, verdict().reason)), ("why".into(), "".into()));
    }
}
