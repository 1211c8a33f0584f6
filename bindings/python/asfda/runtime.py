"""ONNX Runtime loading and facts, and the library's version."""
from __future__ import annotations

import json

from . import _lib


def version() -> str:
    """The loaded libasfda's version, e.g. "0.1.0"."""
    return _lib.library_version()


def library_path() -> str:
    """The full path of the libasfda.so this package loaded."""
    return str(_lib.path)


def load_runtime(library_path=None) -> None:
    """Loads ONNX Runtime once for this process (None: the library's resolution order)."""
    _lib.check(_lib.runtime_load(None if library_path is None else _lib.fspath(library_path)))


def runtime_info() -> dict:
    """asfda and ONNX Runtime versions, the ORT library path (and how it was found) and the
    available execution providers. Loads ONNX Runtime if it is not loaded yet."""
    return json.loads(_lib.read_string(_lib.runtime_info_json))
