//! The crate's one error type. Each [`ErrorKind`] is something a caller can act on and maps 1:1 to
//! a C status code in `ffi`.

use std::fmt;

/// What went wrong, at the granularity a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into() }
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
    /// An I/O error on `path`, keeping the OS reason.
    pub fn io(path: &std::path::Path, action: &str, err: &std::io::Error) -> Self {
        Self::new(ErrorKind::Io, format!("cannot {action} '{}': {err}", path.display()))
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

impl std::error::Error for Error {}

impl From<ort::Error> for Error {
    fn from(err: ort::Error) -> Self {
        Error::new(ErrorKind::Model, format!("ONNX Runtime: {err}"))
    }
}
