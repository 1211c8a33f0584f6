//! The C ABI: a thin layer that validates arguments, converts them, calls the Rust API and maps
//! errors. No logic of its own.
//!
//! Conventions (also stated in the header):
//! - every fallible function returns an [`AsfdaStatus`] (0 = OK) and writes its out-parameters
//!   only on success;
//! - a non-OK status leaves a message in a thread-local slot, read with
//!   `asfda_last_error_message()` or `asfda_last_error_copy()`;
//! - no panic crosses the boundary: each exported function runs inside `catch_unwind`;
//! - handles come in `_new`/`_load` + `_free` pairs; `_free(NULL)` does nothing.

#![allow(non_camel_case_types)]
// C-style names are the ABI.
// Exported functions take raw pointers from C, which cannot see a Rust `unsafe` marker; the
// pointer contracts are documented in the header and NULL is always checked.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use crate::error::{Error, ErrorKind, Result};

pub mod engine;
pub mod finetune;
pub mod log;
pub mod runtime;
pub mod select;
pub mod volume;

/// Result of every fallible asfda C function. 0 is success. An int32_t in C; the functions
/// returning it are marked ASFDA_MUST_USE, so compilers warn when a status is ignored.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsfdaStatus {
    /// Success.
    ASFDA_STATUS_OK = 0,
    /// An argument was invalid (NULL pointer, unknown enum value, malformed option).
    ASFDA_STATUS_INVALID_ARGUMENT = 1,
    /// A file could not be opened, read or written.
    ASFDA_STATUS_IO = 2,
    /// A file is not in the expected format, or is truncated or corrupt.
    ASFDA_STATUS_FORMAT = 3,
    /// Valid input using a feature asfda does not support.
    ASFDA_STATUS_UNSUPPORTED = 4,
    /// Unusable data: bad dimensions, zero spacing, singular affine, NaN voxels.
    ASFDA_STATUS_INVALID_DATA = 5,
    /// Two inputs that must share a voxel grid do not.
    ASFDA_STATUS_GEOMETRY_MISMATCH = 6,
    /// The input exceeds a configured limit (voxel count, memory).
    ASFDA_STATUS_TOO_LARGE = 7,
    /// ONNX Runtime could not be found or loaded.
    ASFDA_STATUS_RUNTIME_UNAVAILABLE = 8,
    /// The requested device (e.g. CUDA) is not available.
    ASFDA_STATUS_DEVICE_UNAVAILABLE = 9,
    /// ONNX Runtime rejected the model or failed while running it.
    ASFDA_STATUS_MODEL = 10,
    /// The caller cancelled the operation.
    ASFDA_STATUS_CANCELLED = 11,
    /// A bug in asfda (including a caught panic). Please report it.
    ASFDA_STATUS_INTERNAL = 12,
}

impl From<ErrorKind> for AsfdaStatus {
    fn from(kind: ErrorKind) -> Self {
        use AsfdaStatus::*;
        match kind {
            ErrorKind::InvalidArgument => ASFDA_STATUS_INVALID_ARGUMENT,
            ErrorKind::Io => ASFDA_STATUS_IO,
            ErrorKind::Format => ASFDA_STATUS_FORMAT,
            ErrorKind::Unsupported => ASFDA_STATUS_UNSUPPORTED,
            ErrorKind::InvalidData => ASFDA_STATUS_INVALID_DATA,
            ErrorKind::GeometryMismatch => ASFDA_STATUS_GEOMETRY_MISMATCH,
            ErrorKind::TooLarge => ASFDA_STATUS_TOO_LARGE,
            ErrorKind::RuntimeUnavailable => ASFDA_STATUS_RUNTIME_UNAVAILABLE,
            ErrorKind::DeviceUnavailable => ASFDA_STATUS_DEVICE_UNAVAILABLE,
            ErrorKind::Model => ASFDA_STATUS_MODEL,
            ErrorKind::Cancelled => ASFDA_STATUS_CANCELLED,
            ErrorKind::Internal => ASFDA_STATUS_INTERNAL,
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // Interior NULs would truncate the C string; replace them so the message stays whole.
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|slot| *slot.borrow_mut() = c);
}

/// Runs `body` behind the panic boundary, records any error, and returns the status.
pub(crate) fn guard(body: impl FnOnce() -> Result<()>) -> AsfdaStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            set_last_error("");
            AsfdaStatus::ASFDA_STATUS_OK
        }
        Ok(Err(err)) => {
            set_last_error(err.message());
            err.kind().into()
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("internal error (a bug in asfda, please report it): {what}"));
            AsfdaStatus::ASFDA_STATUS_INTERNAL
        }
    }
}

/// Runs `body` behind the panic boundary for functions that cannot fail and return a value.
pub(crate) fn guard_value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

/// Rejects a NULL pointer argument, naming it.
pub(crate) fn non_null<'a, T>(ptr: *const T, name: &str) -> Result<&'a T> {
    // SAFETY: the caller (C) promises a non-NULL pointer is valid for the call's duration.
    unsafe { ptr.as_ref() }.ok_or_else(|| Error::invalid_argument(format!("argument '{name}' is NULL")))
}

/// Writes `value` through an out-pointer, which must not be NULL (checked by the caller first,
/// so that nothing is written on failure).
pub(crate) fn write_out<T>(out: *mut T, value: T) {
    // SAFETY: every caller checked `out` with `check_out` before doing any work.
    unsafe { out.write(value) }
}

/// Rejects a NULL out-parameter, naming it.
pub(crate) fn check_out<T>(out: *mut T, name: &str) -> Result<()> {
    if out.is_null() {
        Err(Error::invalid_argument(format!("out-parameter '{name}' is NULL")))
    } else {
        Ok(())
    }
}

/// A path from a C string argument. On Unix a path is bytes: any file name the OS accepts
/// (also one that is not UTF-8, e.g. Latin-1 from an old archive) reaches the file system as
/// given. Elsewhere paths must be UTF-8.
pub(crate) fn c_path(ptr: *const c_char, name: &str) -> Result<PathBuf> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        if ptr.is_null() {
            return Err(Error::invalid_argument(format!("argument '{name}' is NULL")));
        }
        // SAFETY: a non-NULL argument must be a NUL-terminated string (documented in the header).
        let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(bytes)))
    }
    #[cfg(not(unix))]
    {
        c_str(ptr, name).map(PathBuf::from)
    }
}

/// A UTF-8 string from a C string argument.
pub(crate) fn c_str<'a>(ptr: *const c_char, name: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(Error::invalid_argument(format!("argument '{name}' is NULL")));
    }
    // SAFETY: a non-NULL argument must be a NUL-terminated string (documented in the header).
    unsafe { CStr::from_ptr(ptr) }
        .to_str()
        .map_err(|_| Error::invalid_argument(format!("argument '{name}' is not valid UTF-8")))
}

/// Copies `text` into a caller buffer of `capacity` bytes, always NUL-terminated when
/// `capacity > 0` (truncating if needed), and returns the size needed including the NUL — the
/// snprintf convention, so callers can size a buffer with a first call of capacity 0.
pub(crate) fn copy_to_buffer(text: &str, buf: *mut c_char, capacity: usize) -> usize {
    let bytes = text.as_bytes();
    if !buf.is_null() && capacity > 0 {
        let n = bytes.len().min(capacity - 1);
        // SAFETY: the caller provides `capacity` writable bytes at `buf`.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), n);
            *buf.add(n) = 0;
        }
    }
    bytes.len() + 1
}

/// Frees a handle made by `Box::into_raw`; NULL is a no-op. A panic in a destructor is caught.
pub(crate) fn free_handle<T>(handle: *mut T) {
    if !handle.is_null() {
        // SAFETY: every handle comes from Box::into_raw in this crate and is freed once (caller contract).
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(handle) })));
    }
}

/// Copies `text` into a caller buffer (see [`copy_to_buffer`]) and writes the size needed to
/// `out_needed`, which must not be NULL.
pub(crate) fn string_out(text: &str, buf: *mut c_char, capacity: usize, out_needed: *mut usize) -> Result<()> {
    check_out(out_needed, "out_needed")?;
    write_out(out_needed, copy_to_buffer(text, buf, capacity));
    Ok(())
}

/// The message explaining the last non-OK status on this thread ("" after a success). The
/// pointer stays valid until the next asfda call on the same thread.
#[no_mangle]
pub extern "C" fn asfda_last_error_message() -> *const c_char {
    guard_value(c"".as_ptr(), || LAST_ERROR.with(|slot| slot.borrow().as_ptr()))
}

/// Copies the last error message of this thread into `buf` (`capacity` bytes, always
/// NUL-terminated when capacity > 0) and returns the size needed including the NUL.
#[no_mangle]
pub extern "C" fn asfda_last_error_copy(buf: *mut c_char, capacity: usize) -> usize {
    guard_value(0, || LAST_ERROR.with(|slot| copy_to_buffer(&slot.borrow().to_string_lossy(), buf, capacity)))
}

/// A short English name of a status code, e.g. "ASFDA_STATUS_IO"; "unknown status" for
/// values that are not an AsfdaStatus.
#[no_mangle]
pub extern "C" fn asfda_status_name(status: i32) -> *const c_char {
    use AsfdaStatus::*;
    let all = [
        (ASFDA_STATUS_OK, c"ASFDA_STATUS_OK"),
        (ASFDA_STATUS_INVALID_ARGUMENT, c"ASFDA_STATUS_INVALID_ARGUMENT"),
        (ASFDA_STATUS_IO, c"ASFDA_STATUS_IO"),
        (ASFDA_STATUS_FORMAT, c"ASFDA_STATUS_FORMAT"),
        (ASFDA_STATUS_UNSUPPORTED, c"ASFDA_STATUS_UNSUPPORTED"),
        (ASFDA_STATUS_INVALID_DATA, c"ASFDA_STATUS_INVALID_DATA"),
        (ASFDA_STATUS_GEOMETRY_MISMATCH, c"ASFDA_STATUS_GEOMETRY_MISMATCH"),
        (ASFDA_STATUS_TOO_LARGE, c"ASFDA_STATUS_TOO_LARGE"),
        (ASFDA_STATUS_RUNTIME_UNAVAILABLE, c"ASFDA_STATUS_RUNTIME_UNAVAILABLE"),
        (ASFDA_STATUS_DEVICE_UNAVAILABLE, c"ASFDA_STATUS_DEVICE_UNAVAILABLE"),
        (ASFDA_STATUS_MODEL, c"ASFDA_STATUS_MODEL"),
        (ASFDA_STATUS_CANCELLED, c"ASFDA_STATUS_CANCELLED"),
        (ASFDA_STATUS_INTERNAL, c"ASFDA_STATUS_INTERNAL"),
    ];
    all.iter().find(|(s, _)| *s as i32 == status).map_or(c"unknown status".as_ptr(), |(_, name)| name.as_ptr())
}

/// The asfda version, e.g. "0.1.0" (static string; never free it).
#[no_mangle]
pub extern "C" fn asfda_version() -> *const c_char {
    static VERSION: &CStr = match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(v) => v,
        Err(_) => panic!("version contains a NUL"),
    };
    VERSION.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        // SAFETY: asfda_last_error_message returns a NUL-terminated thread-local string.
        unsafe { CStr::from_ptr(asfda_last_error_message()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn panic_becomes_internal_status_with_message() {
        let status = guard(|| panic!("boom {}", 42));
        assert_eq!(status, AsfdaStatus::ASFDA_STATUS_INTERNAL);
        assert!(last_error().contains("boom 42"), "{}", last_error());
    }

    #[test]
    fn error_kind_maps_to_status_and_success_clears_message() {
        let status = guard(|| Err(Error::new(ErrorKind::TooLarge, "too big")));
        assert_eq!(status, AsfdaStatus::ASFDA_STATUS_TOO_LARGE);
        assert_eq!(last_error(), "too big");
        assert_eq!(guard(|| Ok(())), AsfdaStatus::ASFDA_STATUS_OK);
        assert_eq!(last_error(), "");
    }

    #[test]
    fn copy_to_buffer_truncates_and_reports_needed_size() {
        let mut buf = [0x7f as c_char; 4];
        assert_eq!(copy_to_buffer("hello", buf.as_mut_ptr(), buf.len()), 6);
        // SAFETY: copy_to_buffer NUL-terminated buf.
        assert_eq!(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap(), "hel");
        assert_eq!(copy_to_buffer("hello", std::ptr::null_mut(), 0), 6);
    }

    #[test]
    fn status_names_cover_every_code_and_reject_others() {
        for code in 0..=12 {
            // SAFETY: asfda_status_name returns a static NUL-terminated string.
            let name = unsafe { CStr::from_ptr(asfda_status_name(code)) }.to_str().unwrap();
            assert!(name.starts_with("ASFDA_STATUS_"), "{code}: {name}");
        }
        // SAFETY: as above.
        let name = unsafe { CStr::from_ptr(asfda_status_name(99)) }.to_str().unwrap();
        assert_eq!(name, "unknown status");
    }
}
