"""Long asfda work off the GUI thread, without Qt.

``BackgroundTask(work)`` runs ``work(progress, cancel)`` on a worker thread. ``progress(fraction,
message)`` (called on the worker) only puts the report on a queue and returns False once the task
was cancelled; the result or the exception goes on the same queue. The GUI thread drains it with
``poll()`` (the widget calls it from a QTimer), so every GUI update happens on the GUI thread.
``cancel()`` (any thread) sets the asfda.CancelToken the work passes to asfda, which stops even a
model run in the middle; the work then ends with asfda.CancelledError.

The worker must not touch MRML: prepare inputs before starting (logic ``prepare*``) and write
results in the ``onDone`` callback, which ``poll()`` calls on the thread that polls.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Optional

import asfda


class BackgroundTask:
    def __init__(self, work: Callable, name: str = "asfda-task"):
        self.cancelToken = asfda.CancelToken()
        self._work = work
        self._queue: "queue.Queue" = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        #: Set by poll() when the work has ended.
        self.finished = False
        self.result = None
        self.error: Optional[BaseException] = None
        #: The last progress report seen by poll(): (fraction, message).
        self.lastProgress = (0.0, "")

    def start(self) -> "BackgroundTask":
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Asks the work to stop (thread-safe); it ends with asfda.CancelledError."""
        self.cancelToken.cancel()

    @property
    def cancelled(self) -> bool:
        return self.cancelToken.is_cancelled()

    def _progress(self, fraction: float, message: str = "") -> bool:
        self._queue.put(("progress", float(fraction), message))
        return not self.cancelToken.is_cancelled()

    def _run(self) -> None:
        try:
            result = self._work(self._progress, self.cancelToken)
        except BaseException as e:  # noqa: B902 - reported to the GUI thread, never lost
            self._queue.put(("error", e))
        else:
            self._queue.put(("done", result))

    def poll(self, onProgress: Optional[Callable[[float, str], None]] = None,
             onDone: Optional[Callable[[object], None]] = None,
             onError: Optional[Callable[[BaseException], None]] = None) -> bool:
        """Handles every report queued so far on the calling thread; True once the work ended
        (after calling onDone(result) or onError(exception))."""
        while not self.finished:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item[0] == "progress":
                self.lastProgress = item[1:]
                if onProgress is not None:
                    onProgress(*item[1:])
            elif item[0] == "done":
                self.finished, self.result = True, item[1]
                if onDone is not None:
                    onDone(item[1])
            else:
                self.finished, self.error = True, item[1]
                if onError is not None:
                    onError(item[1])
        return self.finished

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Blocks until the worker thread ends (headless use; the GUI polls instead)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()
