//! The cancellation token shared by every long call (sliding window, scoring, fine-tuning): one
//! thread triggers it, the call stops at its next check, and an ONNX Runtime run in flight is
//! terminated.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use ort::session::RunOptions;

use crate::error::{Error, ErrorKind, Result};

/// Lets another thread stop a running sliding window, including an ONNX Runtime run in flight.
///
/// Creating one needs no ONNX Runtime (its run options are made on the first model run), so a C
/// caller can make a token before any engine exists. One token may serve several calls, also
/// concurrently: triggering it stops them all.
pub struct CancelToken {
    flag: AtomicBool,
    run_options: OnceLock<RunOptions>,
}

impl CancelToken {
    /// A token that is not triggered. Infallible today; `Result` keeps room for a runtime that
    /// needs resources up front.
    pub fn new() -> Result<CancelToken> {
        Ok(CancelToken { flag: AtomicBool::new(false), run_options: OnceLock::new() })
    }

    /// Requests cancellation; the in-flight run (if any) is terminated by ONNX Runtime. Safe
    /// from any thread, any number of times.
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        if let Some(options) = self.run_options.get() {
            let _ = options.terminate();
        }
    }

    /// Un-triggers the token so it can serve another call. Only call it while no call uses the
    /// token: a call in flight may or may not see the reset.
    pub fn reset(&self) -> Result<()> {
        self.flag.store(false, Ordering::SeqCst);
        if let Some(options) = self.run_options.get() {
            options.unterminate()?;
        }
        Ok(())
    }

    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Whether a model run has started with this token (its run options exist): from then on a
    /// [`CancelToken::cancel`] reaches ONNX Runtime directly.
    pub fn run_started(&self) -> bool {
        self.run_options.get().is_some()
    }

    /// The run options every model run of a call uses, so [`CancelToken::cancel`] can terminate it.
    pub fn run_options(&self) -> Result<&RunOptions> {
        if let Some(options) = self.run_options.get() {
            return Ok(options);
        }
        let fresh = RunOptions::new()?;
        let options = self.run_options.get_or_init(|| fresh);
        // A cancel() that ran before the options existed only set the flag; carry it over so a
        // run started now stops too (cancel() stores the flag before reading the options, so one
        // of the two always sees the other).
        if self.is_cancelled() {
            let _ = options.terminate();
        }
        Ok(options)
    }

    pub(crate) fn cancelled_error() -> Error {
        Error::new(ErrorKind::Cancelled, "cancelled by the caller")
    }
}
