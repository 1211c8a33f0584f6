//! What asfda tells its host: the decisions it makes on its own.
//!
//! Some choices are made without an error and would otherwise be invisible to the program that
//! embeds asfda: device `auto` falling back to the CPU, the pseudo-label check withholding
//! pseudo-labels, the working-memory estimate of a call, a volume resampled to the model's
//! spacing, which ONNX Runtime library was loaded and why. asfda reports them through the
//! [`log`](https://docs.rs/log) crate facade, with targets under `asfda` (the emitting module,
//! e.g. `asfda::runtime`):
//!
//! - `warn`: a decision that changes the result (pseudo-labels withheld);
//! - `info`: a decision a host should be able to show (device chosen by `auto`, resampling
//!   applied, ONNX Runtime library loaded);
//! - `debug`: numbers behind a decision (memory estimates).
//!
//! Messages are English sentences for people; their wording is not an API.
//!
//! **Rust programs** install any `log` logger (`env_logger`, `tracing-log`, ...) and filter on
//! the `asfda` target; nothing is printed without one.
//!
//! **C, C++ and Python hosts** call `asfda_set_log_callback` (`asfda::set_log_callback`,
//! `asfda.set_log_callback`). It makes the forwarding logger of this module the process's `log`
//! logger on first use, so there is one callback per process, not per engine: several decisions
//! (loading ONNX Runtime, creating a model) happen outside any engine. The callback runs on
//! whichever thread made the decision (any thread that calls asfda), while asfda waits for it;
//! it must return quickly and must not call back into asfda. Replacing or removing the callback
//! waits for calls of the previous one in progress, so once `asfda_set_log_callback` has
//! returned, the previous callback is never called again and its user data may be freed.

use std::sync::{OnceLock, RwLock};

use ::log::{Level, LevelFilter, Log, Metadata, Record};

use crate::error::{Error, ErrorKind, Result};

/// Receives each record asfda emits: its level and its message.
pub(crate) type Sink = Box<dyn Fn(Level, &str) + Send + Sync>;

/// The process's `log` logger when a host installs a callback: forwards asfda's records to the
/// current sink.
struct Forward {
    sink: RwLock<Option<Sink>>,
}

static FORWARD: Forward = Forward { sink: RwLock::new(None) };

/// Whether [`FORWARD`] is the process's logger (decided once: a `log` logger cannot be removed).
static INSTALLED: OnceLock<bool> = OnceLock::new();

fn is_asfda(target: &str) -> bool {
    target == "asfda" || target.starts_with("asfda::")
}

impl Log for Forward {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= ::log::max_level() && is_asfda(metadata.target())
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // The read lock is held during the call, so that replacing the sink waits for it.
        let sink = self.sink.read().unwrap_or_else(|p| p.into_inner());
        if let Some(sink) = sink.as_ref() {
            sink(record.level(), &record.args().to_string());
        }
    }

    fn flush(&self) {}
}

/// Sets the sink receiving asfda's records up to `max_level` (`None` stops forwarding), for the
/// whole process. Returns once no call of the previous sink is in progress.
///
/// Errors: `Unsupported` when another `log` logger was installed first (a Rust program that
/// embeds asfda and set up its own logging: that logger already receives asfda's records).
pub(crate) fn set_sink(sink: Option<Sink>, max_level: LevelFilter) -> Result<()> {
    let installed = *INSTALLED.get_or_init(|| ::log::set_logger(&FORWARD).is_ok());
    if !installed {
        return match sink {
            // Nothing of ours to turn off; the other logger is not ours to silence.
            None => Ok(()),
            Some(_) => Err(Error::new(
                ErrorKind::Unsupported,
                "another `log` logger is already installed in this process (the program embedding asfda set up \
                 its own logging, which receives asfda's messages); a log callback cannot be added",
            )),
        };
    }
    match sink {
        Some(sink) => {
            *FORWARD.sink.write().unwrap_or_else(|p| p.into_inner()) = Some(sink);
            ::log::set_max_level(max_level);
        }
        None => {
            ::log::set_max_level(LevelFilter::Off);
            *FORWARD.sink.write().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_asfda_targets_are_forwarded() {
        assert!(is_asfda("asfda"));
        assert!(is_asfda("asfda::runtime"));
        assert!(!is_asfda("asfdax"));
        assert!(!is_asfda("ort::session"));
    }
}
