"""Progress callbacks for long C calls.

``progress(fraction)`` is called on the calling thread (the C library calls back on the thread
that made the call) with ``fraction`` in [0, 1]. Returning ``False`` cancels the call, which then
raises :class:`asfda.CancelledError`; returning anything else (``None`` included) continues.
An exception raised by the callback cancels the call too, and is re-raised once the C call has
returned (with the library's CancelledError as its context), so nothing is lost and no Python
exception ever travels through C frames. KeyboardInterrupt during a long call surfaces the same
way as soon as the next progress callback runs.
"""
from __future__ import annotations

from typing import Callable, Optional

from . import _lib

ProgressFn = Callable[[float], Optional[bool]]


class Progress:
    """Wraps a Python callable as an AsfdaProgressFn for the duration of one call.

    Use as ``p = Progress(cb); status = fn(..., p.c_fn, None, ...); p.finish(status)``. The
    CFUNCTYPE object is held by this instance, which the caller keeps alive for the whole call
    (ctypes would otherwise free the trampoline while C still holds its pointer)."""

    def __init__(self, callback: Optional[ProgressFn]):
        self.callback = callback
        self.error: Optional[BaseException] = None
        # A NULL function pointer when there is no callback: the C side then skips it.
        self.c_fn = _lib.PROGRESS_FN(self._call) if callback is not None else _lib.PROGRESS_FN()

    def _call(self, _user_data, fraction: float) -> bool:
        if self.error is not None:
            return False
        try:
            result = self.callback(fraction)
            return result is None or bool(result)  # bool() may raise too (e.g. a numpy array)
        except BaseException as e:  # noqa: B902 - KeyboardInterrupt must cancel, not unwind C
            self.error = e
            return False

    def finish(self, status: int) -> None:
        """After the C call: re-raises the callback's exception if it had one (even when the
        call still succeeded, e.g. it raised on the final 1.0 report: the caller must hear of it),
        else raises the status's exception if the call failed.

        Wrap any handle the call produced in its owning object before calling this, so it is
        freed if this raises."""
        if self.error is not None:
            exc, self.error = self.error, None
            if status != 0:
                exc.__context__ = _lib.error_for(status)
            raise exc
        _lib.check(status)
