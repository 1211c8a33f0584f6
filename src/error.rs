//! The crate's one error type. Each [`ErrorKind`] is something a caller can act on and maps 1:1 to
//! a C status code in `ffi`.

use std::fmt;
use std::sync::Arc;

/// What went wrong, at the granularity a caller can act on. New kinds may be added (a `match` on
/// it needs a `_` arm outside this crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An argument was invalid (NULL pointer, unknown enum value, malformed option).
    InvalidArgument,
    /// A file could not be opened, read or written.
    Io,
    /// A file is not in the expected format, or is truncated/corrupt.
    Format,
    /// The input is valid but uses a feature asfda does not support (e.g. a complex datatype).
    Unsupported,
    /// The data is unusable: bad dimensions, zero spacing, singular affine, NaN voxels.
    InvalidData,
    /// Two inputs that must share a voxel grid do not.
    GeometryMismatch,
    /// The input exceeds a configured limit (voxel count, memory).
    TooLarge,
    /// ONNX Runtime could not be found or loaded.
    RuntimeUnavailable,
    /// The requested device (e.g. CUDA) is not available.
    DeviceUnavailable,
    /// ONNX Runtime rejected the model or failed while running it.
    Model,
    /// The caller cancelled the operation.
    Cancelled,
    /// A bug in asfda (including a caught panic).
    Internal,
}

/// An error with a message that says what was wrong and what to do about it.
///
/// The message is the whole story (it already includes the underlying cause's text, and is what
/// `Display` prints); where an I/O, JSON or ONNX Runtime error caused it, that error is also kept
/// and returned by [`std::error::Error::source`], for callers that inspect the chain (e.g. an
/// [`std::io::ErrorKind`]). Two errors compare equal when their kind and message are equal.
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into(), source: None }
    }
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }
    pub fn format(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Format, message)
    }
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }
    pub fn invalid_data(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidData, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    /// An I/O error on `path`, keeping the OS reason (in the message, and as the source: the same
    /// OS error code, or the same [`std::io::ErrorKind`] and text).
    pub fn io(path: &std::path::Path, action: &str, err: &std::io::Error) -> Self {
        let source = match err.raw_os_error() {
            Some(code) => std::io::Error::from_raw_os_error(code),
            None => std::io::Error::new(err.kind(), err.to_string()),
        };
        Self::new(ErrorKind::Io, format!("cannot {action} '{}': {err}", path.display())).with_source(source)
    }
    /// Keeps `source` as the underlying cause ([`std::error::Error::source`]); the message is
    /// unchanged (say the cause in it too).
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }
    /// Prefixes the message with context (e.g. the file name) while keeping the kind.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.message == other.message
    }
}

impl Eq for Error {}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<ort::Error> for Error {
    fn from(err: ort::Error) -> Self {
        Error::new(ErrorKind::Model, format!("ONNX Runtime: {err}")).with_source(err)
    }
}

/// Malformed JSON is a [`ErrorKind::Format`] error; add the file or field with [`Error::context`].
impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Error::format(format!("malformed JSON: {err}")).with_source(err)
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn the_source_chain_keeps_the_underlying_error() {
        // I/O: the same OS error behind the message, through context() too.
        let path = std::path::Path::new("/nonexistent/asfda/x.nii");
        let os = std::fs::File::open(path).unwrap_err();
        let err = Error::io(path, "open", &os).context("reading the pool");
        assert_eq!(err.to_string(), format!("reading the pool: cannot open '{}': {os}", path.display()));
        let source = err.source().expect("an I/O error has a source");
        let io = source.downcast_ref::<std::io::Error>().expect("the source is the io::Error");
        assert_eq!((io.kind(), io.raw_os_error()), (os.kind(), os.raw_os_error()));
        let custom = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "short read");
        let io = Error::io(path, "read", &custom);
        let io = io.source().unwrap().downcast_ref::<std::io::Error>().unwrap();
        assert_eq!((io.kind(), io.to_string().as_str()), (std::io::ErrorKind::UnexpectedEof, "short read"));

        // JSON: kind Format, the serde_json error as the source.
        let json = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let text = json.to_string();
        let err = Error::from(json);
        assert_eq!((err.kind(), err.to_string()), (ErrorKind::Format, format!("malformed JSON: {text}")));
        assert!(err.source().unwrap().downcast_ref::<serde_json::Error>().is_some());

        // A clone shares the source; equality ignores it; errors without a cause have none.
        assert!(err.clone().source().is_some());
        assert_eq!(err, Error::format(format!("malformed JSON: {text}")));
        assert!(Error::invalid_argument("no").source().is_none());
        let wrapped = Error::internal("outer").with_source(Error::invalid_data("inner"));
        assert_eq!(wrapped.source().unwrap().to_string(), "inner");
    }
}
