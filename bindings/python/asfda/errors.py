"""The exception hierarchy: one class per AsfdaStatus, all under :class:`Error`.

Every failing C call raises the subclass of its status; the exception carries the status name
(``err.status``, e.g. ``"ASFDA_STATUS_IO"``), its number (``err.code``) and asfda's message
(``err.message``: what was wrong and what to do).
"""
from __future__ import annotations


class Error(RuntimeError):
    """A non-OK status from the asfda C API."""

    #: The AsfdaStatus value this class stands for (None on the base class).
    code: int | None = None

    def __init__(self, status: str, message: str, code: int | None = None):
        self.status = status
        self.message = message
        if code is not None:
            self.code = code
        super().__init__(f"{status}: {message}")


class InvalidArgumentError(Error, ValueError):
    """An argument was invalid (NULL pointer, unknown enum value, malformed option)."""
    code = 1


class IoError(Error):
    """A file could not be opened, read or written."""
    code = 2


class FormatError(Error):
    """A file is not in the expected format, or is truncated or corrupt."""
    code = 3


class UnsupportedError(Error):
    """Valid input using a feature asfda does not support."""
    code = 4


class InvalidDataError(Error, ValueError):
    """Unusable data: bad dimensions, zero spacing, singular affine, NaN voxels."""
    code = 5


class GeometryMismatchError(Error):
    """Two inputs that must share a voxel grid do not."""
    code = 6


class TooLargeError(Error):
    """The input exceeds a configured limit (voxel count, memory)."""
    code = 7


class RuntimeUnavailableError(Error):
    """ONNX Runtime could not be found or loaded."""
    code = 8


class DeviceUnavailableError(Error):
    """The requested device (e.g. CUDA) is not available."""
    code = 9


class ModelError(Error):
    """ONNX Runtime rejected the model or failed while running it."""
    code = 10


class CancelledError(Error):
    """The caller cancelled the operation (a progress callback returned False)."""
    code = 11


class InternalError(Error):
    """A bug in asfda (including a caught panic). Please report it."""
    code = 12


#: status number -> exception class.
BY_CODE: dict[int, type[Error]] = {
    cls.code: cls
    for cls in (InvalidArgumentError, IoError, FormatError, UnsupportedError, InvalidDataError,
                GeometryMismatchError, TooLargeError, RuntimeUnavailableError, DeviceUnavailableError,
                ModelError, CancelledError, InternalError)
}


class LibraryNotFoundError(ImportError):
    """libasfda.so was not found or could not be loaded; the message lists every place tried."""
