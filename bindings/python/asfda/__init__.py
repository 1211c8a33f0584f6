"""Python bindings for asfda over its C ABI (ctypes; numpy in and out; no compiled extension).

Example::

    import asfda
    engine = asfda.Engine("models/demo_brain_unet", threads=2)
    vol = asfda.Volume.load("case.nii.gz")
    score = engine.score("case", vol, progress=lambda f: print(f"{f:.0%}"))
    print(score.asd, score.gap_kl, score.embedding.shape)
    engine.segment(vol).save("case_labels.nii.gz", "u8")
    sel = asfda.select(scores, budget=4)          # picks with their score components, reliable ids
    tuner = asfda.FineTuner(engine, total_steps=100)

The shared library is found via ``$ASFDA_LIBRARY``, then a ``libasfda.so`` shipped inside this
package, then the source tree's ``target/{release,debug}`` (see :mod:`asfda._lib`). Every failing
call raises a subclass of :class:`asfda.Error` matching its C status (e.g. CancelledError,
InvalidArgumentError), carrying ``status``, ``code`` and ``message``. The decisions the library
makes on its own (device ``"auto"`` falling back to the CPU, pseudo-labels withheld, ...) reach
the :mod:`logging` logger ``"asfda"`` after ``asfda.set_log_callback()`` (see :mod:`asfda.log`).
"""
from __future__ import annotations

from .errors import (
    CancelledError, DeviceUnavailableError, Error, FormatError, GeometryMismatchError, InternalError,
    InvalidArgumentError, InvalidDataError, IoError, LibraryNotFoundError, ModelError,
    RuntimeUnavailableError, TooLargeError, UnsupportedError,
)
from .runtime import demo_bundle, library_path, load_runtime, runtime_info, version
from .volume import LPS, RAS, Volume
from .model import Model
from .score import Score, load_scores, merge_scores, save_scores
from .engine import CancelToken, ClassCode, ClassInfo, CodedConcept, Engine, EngineOptions, Segmentation
from .select import Pick, Selection, SelectOptions, select
from .finetune import FineTuneOptions, FineTuner, PseudoLabelCheck, StepReport
from .log import LogLevel, set_log_callback

#: Earlier name of :class:`Error`, kept for existing callers.
AsfdaError = Error

#: The loaded library's version (the Python package is versioned with the Rust crate).
__version__ = version()

__all__ = [
    "Error", "AsfdaError", "InvalidArgumentError", "IoError", "FormatError", "UnsupportedError",
    "InvalidDataError", "GeometryMismatchError", "TooLargeError", "RuntimeUnavailableError",
    "DeviceUnavailableError", "ModelError", "CancelledError", "InternalError", "LibraryNotFoundError",
    "Volume", "RAS", "LPS", "Model", "Engine", "EngineOptions", "ClassInfo", "ClassCode", "CodedConcept", "CancelToken", "Segmentation", "Score", "save_scores", "load_scores",
    "merge_scores", "select", "Selection", "SelectOptions", "Pick", "FineTuner", "FineTuneOptions",
    "StepReport", "runtime_info", "load_runtime", "version", "library_path", "demo_bundle",
    "LogLevel", "set_log_callback",
]
