"""ONNX Runtime loading and facts, and the library's version."""
from __future__ import annotations

import json

from . import _lib


def version() -> str:
    """The loaded libasfda's version, e.g. "0.1.0"."""
    return _lib.library_version()


def demo_bundle() -> str:
    """The demo bundle: the one an installed wheel ships (``asfda/share/asfda/models/
    demo_brain_unet``), else the source tree's ``models/demo_brain_unet`` when this package is
    imported from it. LibraryNotFoundError names both when neither is there."""
    shipped = _lib.PACKAGE_DIR / "share" / "asfda" / "models" / "demo_brain_unet"
    tree = _lib._REPO_ROOT / "models" / "demo_brain_unet"
    for path in (shipped, tree):
        if (path / "manifest.json").is_file():
            return str(path)
    from . import errors
    raise errors.LibraryNotFoundError(f"no demo bundle in {shipped} (a wheel ships it) or {tree} (the source tree)")


def library_path() -> str:
    """The full path of the libasfda.so this package loaded."""
    return str(_lib.path)


def load_runtime(library_path=None) -> None:
    """Loads ONNX Runtime once for this process (None: the library's resolution order)."""
    _lib.check(_lib.runtime_load(_lib.ort_library_option(library_path)))


def runtime_info() -> dict:
    """asfda and ONNX Runtime versions, the ORT library path (and how it was found) and the
    available execution providers. Loads ONNX Runtime if it is not loaded yet."""
    default = _lib.default_ort_library()
    if default is not None:
        # An installed wheel loads the onnxruntime package's library (as Engine and Model do).
        # If another ONNX Runtime is loaded already this is refused, and the info says which.
        _lib.runtime_load(_lib.fspath(default))
    return json.loads(_lib.read_string(_lib.runtime_info_json))
