//! C ABI for the log callback: the decisions asfda makes on its own (see `crate::log`).

use std::ffi::{c_char, c_void, CString};

use super::{guard, AsfdaStatus};
use crate::error::{Error, Result};

/// Severity of a log message (the `level` of AsfdaLogCallback; `max_level` of
/// asfda_set_log_callback, an int32_t). Lower is more severe.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsfdaLogLevel {
    /// Something failed (the failing call also returns a status).
    ASFDA_LOG_ERROR = 1,
    /// A decision that changes the result, e.g. pseudo-labels withheld by the pseudo-label check.
    ASFDA_LOG_WARN = 2,
    /// A decision a host should be able to show, e.g. device "auto" falling back to the CPU, a
    /// volume resampled to the model's spacing, the ONNX Runtime library loaded.
    ASFDA_LOG_INFO = 3,
    /// The numbers behind a decision, e.g. a call's working-memory estimate.
    ASFDA_LOG_DEBUG = 4,
}

impl AsfdaLogLevel {
    fn from_i32(value: i32) -> Option<AsfdaLogLevel> {
        use AsfdaLogLevel::*;
        [ASFDA_LOG_ERROR, ASFDA_LOG_WARN, ASFDA_LOG_INFO, ASFDA_LOG_DEBUG].into_iter().find(|l| *l as i32 == value)
    }

    fn from_log(level: ::log::Level) -> AsfdaLogLevel {
        match level {
            ::log::Level::Error => AsfdaLogLevel::ASFDA_LOG_ERROR,
            ::log::Level::Warn => AsfdaLogLevel::ASFDA_LOG_WARN,
            ::log::Level::Info => AsfdaLogLevel::ASFDA_LOG_INFO,
            ::log::Level::Debug | ::log::Level::Trace => AsfdaLogLevel::ASFDA_LOG_DEBUG,
        }
    }

    fn to_filter(self) -> ::log::LevelFilter {
        match self {
            AsfdaLogLevel::ASFDA_LOG_ERROR => ::log::LevelFilter::Error,
            AsfdaLogLevel::ASFDA_LOG_WARN => ::log::LevelFilter::Warn,
            AsfdaLogLevel::ASFDA_LOG_INFO => ::log::LevelFilter::Info,
            AsfdaLogLevel::ASFDA_LOG_DEBUG => ::log::LevelFilter::Debug,
        }
    }
}

/// Receives one log message: `user_data` as given to asfda_set_log_callback, the message's
/// level, and the message (NUL-terminated UTF-8, valid only during the call: copy it to keep it).
/// Runs on the thread that made the decision, which may be any thread calling asfda, while that
/// call waits: return quickly, never call an asfda function from it, and never let an exception
/// or longjmp leave it.
pub type AsfdaLogCallback = Option<extern "C" fn(user_data: *mut c_void, level: AsfdaLogLevel, message: *const c_char)>;

/// The callback and its user data, called from any thread (the host's contract).
struct Target {
    callback: extern "C" fn(*mut c_void, AsfdaLogLevel, *const c_char),
    user_data: *mut c_void,
}

// SAFETY: asfda_set_log_callback documents that the callback and its user data are used from any
// thread that calls asfda; the host accepts that by installing them.
unsafe impl Send for Target {}
// SAFETY: as for Send: the host promised the callback may run on any thread, concurrently.
unsafe impl Sync for Target {}

impl Target {
    fn call(&self, level: ::log::Level, message: &str) {
        // Interior NULs would cut the message short; replace them so it stays whole.
        let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
        (self.callback)(self.user_data, AsfdaLogLevel::from_log(level), text.as_ptr());
    }
}

fn set_log_callback(callback: AsfdaLogCallback, user_data: *mut c_void, max_level: i32) -> Result<()> {
    let Some(callback) = callback else { return crate::log::set_sink(None, ::log::LevelFilter::Off) };
    let level = AsfdaLogLevel::from_i32(max_level).ok_or_else(|| {
        Error::invalid_argument(format!(
            "max_level {max_level} is not an AsfdaLogLevel (1 = ASFDA_LOG_ERROR .. 4 = ASFDA_LOG_DEBUG)"
        ))
    })?;
    let target = Target { callback, user_data };
    crate::log::set_sink(Some(Box::new(move |level, message| target.call(level, message))), level.to_filter())
}

/// Installs `callback` to receive asfda's log messages of level `max_level` (an AsfdaLogLevel)
/// or more severe, with `user_data` passed back on every call; a NULL `callback` turns logging
/// off (`max_level` is then ignored). One callback per process: it replaces the previous one, and
/// it receives the messages of every engine, model and runtime call in the process.
///
/// What is logged: device "auto" falling back to the CPU (INFO), the ONNX Runtime library loaded
/// (INFO), a volume resampled to the model's spacing (INFO), the pseudo-label check withholding
/// pseudo-labels (WARN), working-memory estimates (DEBUG). Messages are English sentences;
/// their wording is not part of the API.
///
/// The callback may run on any thread that calls asfda, at the same time on several threads,
/// and must not call asfda (see AsfdaLogCallback). When this function returns, the previous
/// callback is not running and is never called again, so its user data may be freed.
///
/// Errors: ASFDA_STATUS_INVALID_ARGUMENT for a `max_level` that is not an AsfdaLogLevel;
/// ASFDA_STATUS_UNSUPPORTED when the process already has a Rust `log` logger of its own (a Rust
/// program linking asfda statically; that logger then receives the messages).
#[no_mangle]
pub extern "C" fn asfda_set_log_callback(
    callback: AsfdaLogCallback,
    user_data: *mut c_void,
    max_level: i32,
) -> AsfdaStatus {
    guard(|| set_log_callback(callback, user_data, max_level))
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;
    use std::sync::Mutex;

    use super::*;

    static SEEN: Mutex<Vec<(AsfdaLogLevel, String)>> = Mutex::new(Vec::new());

    extern "C" fn record(user_data: *mut c_void, level: AsfdaLogLevel, message: *const c_char) {
        assert_eq!(user_data as usize, 42);
        // SAFETY: the library passes a NUL-terminated message valid for the call.
        let text = unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned();
        SEEN.lock().unwrap().push((level, text));
    }

    fn seen(needle: &str) -> Vec<AsfdaLogLevel> {
        SEEN.lock().unwrap().iter().filter(|(_, m)| m.contains(needle)).map(|(l, _)| *l).collect()
    }

    // One test: the callback is process-wide, and unit tests run in parallel threads.
    #[test]
    fn callback_receives_asfda_records_up_to_its_level_and_can_be_removed() {
        let user_data = 42usize as *mut c_void;
        assert_eq!(asfda_set_log_callback(Some(record), user_data, 0), AsfdaStatus::ASFDA_STATUS_INVALID_ARGUMENT);
        assert_eq!(asfda_set_log_callback(Some(record), user_data, 5), AsfdaStatus::ASFDA_STATUS_INVALID_ARGUMENT);

        let level = AsfdaLogLevel::ASFDA_LOG_INFO as i32;
        assert_eq!(asfda_set_log_callback(Some(record), user_data, level), AsfdaStatus::ASFDA_STATUS_OK);
        ::log::info!(target: "asfda::test", "unit-test info \0 with a NUL");
        ::log::debug!(target: "asfda::test", "unit-test debug");
        ::log::warn!(target: "other_crate", "unit-test foreign");
        assert_eq!(seen("unit-test info   with a NUL"), [AsfdaLogLevel::ASFDA_LOG_INFO]);
        assert!(seen("unit-test debug").is_empty(), "above max_level");
        assert!(seen("unit-test foreign").is_empty(), "not an asfda target");

        assert_eq!(asfda_set_log_callback(None, std::ptr::null_mut(), 0), AsfdaStatus::ASFDA_STATUS_OK);
        ::log::warn!(target: "asfda::test", "unit-test after removal");
        assert!(seen("unit-test after removal").is_empty());
    }
}
