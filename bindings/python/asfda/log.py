"""The decisions asfda makes on its own, as log messages (``asfda_set_log_callback``).

asfda decides some things without an error: device ``"auto"`` falling back to the CPU, the
pseudo-label check withholding pseudo-labels, a volume resampled to the model's spacing, which
ONNX Runtime library it loaded, the working-memory estimate of a call. Nothing is reported
until a callback is installed::

    import logging, asfda
    logging.basicConfig(level=logging.INFO)
    asfda.set_log_callback()          # to the standard logging module, logger "asfda"
    asfda.set_log_callback(lambda level, message: print(level.name, message))
    asfda.set_log_callback(None)      # off

One callback per process (it receives the messages of every engine and model). It runs on the
thread that made the decision, which may be a thread other than the one that installed it, while
that asfda call waits: keep it short, and do not call asfda from it (the library forbids it).
An exception it raises is reported through :func:`sys.unraisablehook` and does not stop asfda.
Messages are English sentences; their wording is not an API.
"""
from __future__ import annotations

import enum
import logging
import sys
import threading
from typing import Callable, Optional, Union

from . import _lib


class LogLevel(enum.IntEnum):
    """AsfdaLogLevel: lower is more severe."""

    ERROR = 1
    WARN = 2
    INFO = 3
    DEBUG = 4


LogCallback = Callable[[LogLevel, str], None]

#: The standard-library logger the default callback writes to.
LOGGER_NAME = "asfda"

_TO_LOGGING = {
    LogLevel.ERROR: logging.ERROR,
    LogLevel.WARN: logging.WARNING,
    LogLevel.INFO: logging.INFO,
    LogLevel.DEBUG: logging.DEBUG,
}


def to_logging(level: LogLevel, message: str) -> None:
    """The default callback: logs ``message`` on the ``"asfda"`` logger at the matching level."""
    logging.getLogger(LOGGER_NAME).log(_TO_LOGGING.get(level, logging.INFO), message)


# The installed trampoline. ctypes frees a CFUNCTYPE object's code when the object dies, so it
# is held here until the C library no longer calls it (asfda_set_log_callback returning is that
# guarantee). The lock orders concurrent set_log_callback calls from Python threads.
_installed = None
_lock = threading.Lock()


def _trampoline(callback: LogCallback):
    def call(_user_data, level: int, message: Optional[bytes]) -> None:
        try:
            try:
                lvl = LogLevel(level)
            except ValueError:  # a level added by a newer library
                lvl = LogLevel.DEBUG
            callback(lvl, (message or b"").decode("utf-8", errors="replace"))
        except BaseException as e:  # noqa: B902 - nothing may unwind through the C frames
            sys.unraisablehook(_Unraisable(e, callback))

    return _lib.LOG_CALLBACK(call)


class _Unraisable:
    """The argument sys.unraisablehook expects."""

    def __init__(self, exc: BaseException, obj):
        self.exc_type, self.exc_value, self.exc_traceback = type(exc), exc, exc.__traceback__
        self.err_msg = "Exception ignored in the asfda log callback"
        self.object = obj


def set_log_callback(
    callback: Optional[LogCallback] = to_logging, max_level: Union[LogLevel, int, str] = LogLevel.DEBUG
) -> None:
    """Sends asfda's log messages up to ``max_level`` (a :class:`LogLevel`, its value, or a
    name such as ``"info"``) to ``callback(level, message)``; by default to the ``"asfda"``
    logger of the :mod:`logging` module (which then filters by its own level). ``None`` turns
    logging off. Replaces the previous callback of the process."""
    global _installed
    if isinstance(max_level, str):
        try:
            max_level = LogLevel[max_level.upper()]
        except KeyError:
            raise ValueError(f"unknown log level {max_level!r}: use one of "
                             f"{', '.join(l.name.lower() for l in LogLevel)}") from None
    with _lock:
        c_fn = _trampoline(callback) if callback is not None else _lib.LOG_CALLBACK()
        _lib.check(_lib.set_log_callback(c_fn, None, int(max_level)))
        _installed = c_fn if callback is not None else None
