"""The engine: a loaded model bundle that segments and scores volumes (sliding window).

Long calls (:meth:`Engine.score`, :meth:`Engine.segment`) release the GIL while they run, so
other Python threads (a GUI's event loop, other engines) keep going; an optional ``progress``
callback is called on the calling thread after every batch of tiles (see :mod:`asfda._progress`
for cancellation). One engine may be used from several threads at once.
"""
from __future__ import annotations

import ctypes as C
import os
from dataclasses import dataclass
from typing import NamedTuple, Optional

from . import _lib
from ._progress import Progress, ProgressFn
from .score import Score
from .volume import Volume


def _defaults():
    return _lib.engine_options_default()


@dataclass
class EngineOptions:
    """Engine settings; the defaults are the library's (asfda_engine_options_default)."""

    #: Full path of libonnxruntime.so; None follows the library's resolution order.
    library_path: Optional[str] = None
    #: "cpu", "openvino" (the CPU through OpenVINO), "auto" (CUDA, else OpenVINO, else the CPU),
    #: "cuda" or "cuda:<id>".
    device: str = "cpu"
    #: Intra-op CPU threads; 0 lets ONNX Runtime choose.
    threads: int = 0
    #: Fraction of a tile shared with its neighbour, in [0, 1).
    tile_overlap: float = _defaults().tile_overlap
    #: Tiles per ONNX Runtime run.
    tiles_per_batch: int = _defaults().tiles_per_batch
    #: Average 8 mirrored passes (8x slower).
    mirror: bool = _defaults().mirror
    #: Refuse volumes needing more working memory than this (bytes); 0 = no limit.
    memory_limit_bytes: int = 0

    def _to_c(self, bundle: bytes) -> "_lib.EngineOptions":
        o = _lib.engine_options_default()
        o.bundle_path = bundle
        o.runtime.library_path = _lib.ort_library_option(self.library_path)
        o.runtime.device = _lib.c_string(self.device, "device")
        o.runtime.threads = self.threads
        o.tile_overlap = self.tile_overlap
        o.tiles_per_batch = self.tiles_per_batch
        o.mirror = self.mirror
        o.memory_limit_bytes = self.memory_limit_bytes
        return o


class CancelToken:
    """A cancel token: ``cancel()`` from any thread stops a score or segment call that was
    given it, even in the middle of a model run; the call raises :class:`CancelledError` and the
    engine stays usable. ``reset()`` makes it reusable (only while no call is using it)."""

    def __init__(self):
        out = _lib.P()
        _lib.check(_lib.cancel_token_new(C.byref(out)))
        self._h = out.value

    def __del__(self):
        h, self._h = getattr(self, "_h", None), None
        if h:
            _lib.cancel_token_free(h)

    def cancel(self) -> None:
        _lib.check(_lib.cancel_token_cancel(self._h))

    def reset(self) -> None:
        _lib.check(_lib.cancel_token_reset(self._h))

    def is_cancelled(self) -> bool:
        flag = C.c_bool()
        _lib.check(_lib.cancel_token_is_cancelled(self._h, C.byref(flag)))
        return flag.value


class Segmentation(NamedTuple):
    """Maps on the input's grid: labels (class index, float32), and, when asked for,
    probabilities (one channel per class) and normalised entropy in [0, 1]."""

    labels: Volume
    probabilities: Optional[Volume]
    entropy: Optional[Volume]


def _as_volume(volume) -> Volume:
    if isinstance(volume, Volume):
        return volume
    if isinstance(volume, (str, os.PathLike)):
        return Volume.load(volume)
    raise TypeError(f"expected an asfda.Volume or a NIfTI path, got {type(volume).__name__} "
                    "(make one from numpy with asfda.Volume.from_array)")


@dataclass(frozen=True)
class CodedConcept:
    """A code as DICOM writes one: scheme ("SCT"), value ("389080008"), meaning ("White Matter")."""
    scheme: str
    value: str
    meaning: str


@dataclass(frozen=True)
class ClassCode:
    """What a class is: DICOM SEG's segmented property category and type (``kind``: the
    manifest's ``code.type``)."""
    category: CodedConcept
    kind: CodedConcept


@dataclass(frozen=True)
class ClassInfo:
    """One output class of the model, from the bundle's manifest: its name, display colour
    (sRGB 0-255, or None) and coded meaning (or None)."""
    name: str
    color: Optional[tuple]
    code: Optional[ClassCode]

    @classmethod
    def _from_c(cls, c: "_lib.ClassInfo") -> "ClassInfo":
        concept = lambda k: CodedConcept(k.scheme.decode(), k.value.decode(), k.meaning.decode())  # noqa: E731
        return cls(
            name=c.name.decode(),
            color=tuple(c.color) if c.has_color else None,
            code=ClassCode(concept(c.category), concept(c.kind)) if c.has_code else None,
        )


def _score_id(id: Optional[str], volume) -> str:
    """The id a score names its volume by: ``id``, else the path's file name (a Volume needs one)."""
    if id is not None:
        return id
    if isinstance(volume, Volume):
        raise TypeError("id is required when scoring a Volume (e.g. its file name or series UID)")
    return os.path.basename(os.fspath(volume))


class Engine:
    """A model bundle (folder with manifest.json) loaded and ready to segment and score.

    ``Engine(bundle, options)`` or ``Engine(bundle, threads=2, device="cpu", ...)`` (keywords
    are EngineOptions fields)."""

    def __init__(self, bundle, options: Optional[EngineOptions] = None, **kwargs):
        if options is None:
            options = EngineOptions(**kwargs)
        elif kwargs:
            raise TypeError("pass either options or keyword options, not both")
        self.bundle = os.fspath(bundle)
        self.options = options
        bundle_b = _lib.fspath(bundle)
        c_opts = options._to_c(bundle_b)
        out = _lib.P()
        _lib.check(_lib.engine_new(C.byref(c_opts), C.byref(out)))
        self._h = C.c_void_p(out.value)

    def __del__(self):
        h = getattr(self, "_h", None)
        if h:
            _lib.engine_free(h)
            self._h = None

    @property
    def device(self) -> str:
        """The device inference runs on ("cpu", "openvino" or "cuda:<id>")."""
        return _lib.read_string(_lib.engine_device, self._h)

    @property
    def classes(self) -> list:
        """The model's output classes (:class:`ClassInfo`; index 0 is background), in the order
        of label values."""
        n = C.c_size_t()
        _lib.check(_lib.engine_class_count(self._h, C.byref(n)))
        out = []
        for i in range(n.value):
            info = _lib.ClassInfo()
            _lib.check(_lib.engine_class_info(self._h, i, C.byref(info)))
            out.append(ClassInfo._from_c(info))
        return out

    def score(
        self,
        id: Optional[str],
        volume,
        cancel: Optional[CancelToken] = None,
        progress: Optional[ProgressFn] = None,
    ) -> Score:
        """Scores one volume (an asfda.Volume or a NIfTI path) for how informative annotating it
        would be. ``id`` names it in the score; None takes the path's file name (a Volume needs an
        id). ``progress(fraction)`` may return False to cancel (CancelledError); so does
        ``cancel.cancel()`` from another thread, even during a model run. The argument order is
        Rust's ``Engine::score(id, volume, cancel, progress)`` and C's ``asfda_score_volume``."""
        id = _score_id(id, volume)
        vol = _as_volume(volume)
        p = Progress(progress)
        out = _lib.P()
        token = cancel._h if cancel is not None else None
        status = _lib.score_volume(self._h, _lib.c_string(id, "id"), vol._h, token, p.c_fn, None, C.byref(out))
        score = Score(out.value) if status == 0 else None  # owns the handle before finish() may raise
        p.finish(status)
        return score

    def segment(
        self, volume, cancel: Optional[CancelToken] = None, progress: Optional[ProgressFn] = None
    ) -> Volume:
        """Segments one volume; returns the label map (class index per voxel, float32) on the
        volume's own grid. Save it with ``labels.save(path, "u8")``."""
        return self.segment_maps(volume, cancel=cancel, progress=progress).labels

    def segment_maps(
        self,
        volume,
        probabilities: bool = False,
        entropy: bool = False,
        cancel: Optional[CancelToken] = None,
        progress: Optional[ProgressFn] = None,
    ) -> Segmentation:
        """Like :meth:`segment`, plus the per-class probability map and/or the normalised
        entropy map on the volume's grid (each costs memory: a probability map has one float32
        channel per class)."""
        vol = _as_volume(volume)
        p = Progress(progress)
        labels, probs, ent = _lib.P(), _lib.P(), _lib.P()
        token = cancel._h if cancel is not None else None
        status = _lib.segment_volume(
            self._h,
            vol._h,
            token,
            p.c_fn,
            None,
            C.byref(labels),
            C.byref(probs) if probabilities else None,
            C.byref(ent) if entropy else None,
        )
        result = None
        if status == 0:
            result = Segmentation(
                Volume(labels.value),
                Volume(probs.value) if probabilities else None,
                Volume(ent.value) if entropy else None,
            )
        p.finish(status)
        return result

    def write_dicom_seg(self, labels, sources, path) -> None:
        """Writes ``labels`` (the label map :meth:`segment` returned for the DICOM series read from
        ``sources``: a series folder, a file, or a list of folders and files, as
        :meth:`Volume.load_dicom` takes them) as a binary DICOM Segmentation object at ``path``:
        one segment per foreground class (name, colour and coded concept from :attr:`classes`), in
        the source's study and frame of reference, its frames referencing the source images, with
        new series and instance UIDs. Written atomically."""
        array, n = _lib.path_array(sources, "no DICOM source folder or files given")
        vol = _as_volume(labels)
        _lib.check(_lib.volume_write_dicom_seg(vol._h, self._h, array, n, _lib.fspath(path)))

    def score_and_segment(
        self,
        id: Optional[str],
        volume,
        probabilities: bool = False,
        entropy: bool = False,
        cancel: Optional[CancelToken] = None,
        progress: Optional[ProgressFn] = None,
    ) -> tuple:
        """:meth:`score` and :meth:`segment_maps` from one inference: returns ``(score,
        segmentation)``, the same values the two calls give, in about half their time."""
        id = _score_id(id, volume)
        vol = _as_volume(volume)
        p = Progress(progress)
        score, labels, probs, ent = _lib.P(), _lib.P(), _lib.P(), _lib.P()
        token = cancel._h if cancel is not None else None
        status = _lib.score_and_segment_volume(
            self._h,
            _lib.c_string(id, "id"),
            vol._h,
            token,
            p.c_fn,
            None,
            C.byref(score),
            C.byref(labels),
            C.byref(probs) if probabilities else None,
            C.byref(ent) if entropy else None,
        )
        result = None
        if status == 0:  # own every handle before finish() may raise
            result = (
                Score(score.value),
                Segmentation(
                    Volume(labels.value),
                    Volume(probs.value) if probabilities else None,
                    Volume(ent.value) if entropy else None,
                ),
            )
        p.finish(status)
        return result

    def __repr__(self) -> str:
        return f"<asfda.Engine bundle={self.bundle!r} device={self.device!r}>"

