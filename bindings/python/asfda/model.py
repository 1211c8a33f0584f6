"""A bare ONNX model with one image input, run on a whole volume (no sliding window)."""
from __future__ import annotations

import ctypes as C

from . import _lib
from .volume import Volume


class Model:
    """An ONNX model loaded into an ONNX Runtime session. Thread-safe: runs are serialised."""

    def __init__(self, path, device: str = "cpu", threads: int = 0, library_path=None):
        opts = _lib.runtime_options_default()
        opts.library_path = _lib.ort_library_option(library_path)
        opts.device = _lib.c_string(device, "device")
        opts.threads = threads
        out = _lib.P()
        _lib.check(_lib.model_load(_lib.fspath(path), C.byref(opts), C.byref(out)))
        self._h = C.c_void_p(out.value)

    def __del__(self):
        h = getattr(self, "_h", None)
        if h:
            _lib.model_free(h)
            self._h = None

    @property
    def device(self) -> str:
        """The device the model actually runs on ("cpu", "openvino" or "cuda:<id>")."""
        return _lib.read_string(_lib.model_device, self._h)

    def run_volume(self, volume: Volume) -> Volume:
        """Runs on the whole volume ([1, C, Z, Y, X]); the first output as a volume on its grid."""
        out = _lib.P()
        _lib.check(_lib.model_run_volume(self._h, volume._h, C.byref(out)))
        return Volume(out.value)
