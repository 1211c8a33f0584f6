"""Selective semi-supervised fine-tuning (fine-tuning.md) over the library's ``asfda_finetuner_*``.

::

    tuner = asfda.FineTuner(engine, asfda.FineTuneOptions(total_steps=200))
    for id in sel.ids:                                  # annotated picks
        tuner.add_labeled(id, images[id], labels[id])
    for id in sel.reliable:                             # pseudo-labelled by the model
        tuner.add_unlabeled(id, images[id])
    for _ in range(200):
        report = tuner.step()                           # one AdamW step
    dice = tuner.evaluate([(image, label), ...])        # per class, background first
    tuner.save_checkpoint("run.safetensors")                       # resume with FineTuner.resume
    tuner.apply_to(engine)                                 # engine now segments with the new weights
    tuner.export_bundle("adapted_bundle")               # or a new bundle folder

Long calls (step, add_unlabeled, evaluate, export) release the GIL. A fine-tuner is not
thread-safe in the library; these wrappers serialise calls on one FineTuner with a lock, so
sharing one between threads is safe (but not parallel).
"""
from __future__ import annotations

import ctypes as C
import threading
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from . import _lib
from .engine import Engine, _as_volume


def _defaults():
    return _lib.finetune_options_default()


@dataclass
class FineTuneOptions:
    """Fine-tuning settings; the defaults are the library's (asfda_finetune_options_default)."""

    #: Training patch (z, y, x) in model-grid voxels, multiples of the model's
    #: size_divisible_by; an int n means (n, n, n); None = the model's own patch size.
    patch_size: Optional[Union[int, Sequence[int]]] = None
    #: Patches per step.
    batch_size: int = _defaults().batch_size
    #: Length of the learning-rate and pseudo-weight schedules, in steps.
    total_steps: int = _defaults().total_steps
    #: Base learning rate; None = the model manifest's.
    lr: Optional[float] = None
    #: AdamW weight decay; None = the model manifest's.
    weight_decay: Optional[float] = None
    #: Poly schedule exponent: lr (1 - t/T)^e.
    poly_exponent: float = _defaults().poly_exponent
    #: Probability that a patch is centred on a foreground voxel.
    foreground_fraction: float = _defaults().foreground_fraction
    #: Probability that a patch comes from an annotated (not a pseudo-labelled) volume.
    labeled_fraction: float = _defaults().labeled_fraction
    #: Pseudo-label voxels with a top probability below this are ignored.
    pseudo_label_threshold: float = _defaults().pseudo_label_threshold
    #: Share of total_steps over which the pseudo-label weight ramps from ~0 to 1.
    ramp_fraction: float = _defaults().ramp_fraction
    #: Recompute pseudo-labels with the fine-tuned weights every this many steps; 0 = never.
    pseudo_label_refresh_every: int = _defaults().pseudo_label_refresh_every
    #: Use pseudo-labels only while the model making them reaches this mean foreground Dice on
    #: the annotated volumes (:meth:`FineTuner.check_pseudo_labels`); 0 = always.
    pseudo_label_min_dice: float = _defaults().pseudo_label_min_dice
    #: Seed of all random draws.
    seed: int = _defaults().seed

    def _to_c(self) -> "_lib.FineTuneOptions":
        o = _lib.finetune_options_default()
        if self.patch_size is None:
            patch = (0, 0, 0)
        elif isinstance(self.patch_size, int):
            patch = (self.patch_size,) * 3
        else:
            patch = tuple(self.patch_size)
            if len(patch) != 3:
                raise ValueError(f"patch_size must be (z, y, x) or one int, got {self.patch_size!r}")
        for name, value in [("patch_size", p) for p in patch] + [
                ("batch_size", self.batch_size), ("total_steps", self.total_steps),
                ("pseudo_label_refresh_every", self.pseudo_label_refresh_every), ("seed", self.seed)]:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"fine-tuning option {name} must be a non-negative integer, got {value!r}")
        if self.patch_size is not None and 0 in patch:
            raise ValueError(f"patch_size {self.patch_size!r}: every side must be > 0 (None = the model's patch)")
        o.patch_size[:] = patch
        o.batch_size, o.total_steps = self.batch_size, self.total_steps
        o.pseudo_label_refresh_every, o.seed = self.pseudo_label_refresh_every, self.seed
        # The C struct's sentinels: lr 0 and weight_decay < 0 mean "the manifest's". Explicit values
        # that would collide with them are refused here rather than silently reinterpreted.
        if self.lr is not None and not float(self.lr) > 0:
            raise ValueError(f"lr must be > 0 (None = the model manifest's), got {self.lr!r}")
        if self.weight_decay is not None and not float(self.weight_decay) >= 0:
            raise ValueError(f"weight_decay must be >= 0 (None = the model manifest's), got {self.weight_decay!r}")
        o.lr = 0.0 if self.lr is None else float(self.lr)
        o.weight_decay = -1.0 if self.weight_decay is None else float(self.weight_decay)
        for name in ("poly_exponent", "foreground_fraction", "labeled_fraction", "pseudo_label_threshold",
                     "ramp_fraction", "pseudo_label_min_dice"):
            setattr(o, name, float(getattr(self, name)))
        return o


@dataclass(frozen=True)
class StepReport:
    """What one fine-tuning step did."""

    #: Batch loss before the update: loss_ce + loss_dice, each sample weighted (1 annotated,
    #: ``pseudo_weight`` pseudo-labelled) and averaged.
    loss: float
    loss_ce: float
    loss_dice: float
    #: Learning rate of this step.
    lr: float
    #: Weight of pseudo-labelled patches in this step (lambda in fine-tuning.md).
    pseudo_weight: float
    #: 1-based number of this step in the run (resumed steps included).
    step: int
    #: Patches from annotated volumes in this batch.
    labeled_in_batch: int
    #: Patches from pseudo-labelled volumes in this batch.
    pseudo_in_batch: int


@dataclass(frozen=True)
class PseudoLabelCheck:
    """How well the model that makes the pseudo-labels segments the annotated volumes."""

    #: Dice per class (index 0 = background), averaged over the annotated volumes.
    dice: np.ndarray
    #: Mean of ``dice`` over the model's foreground classes.
    foreground_dice: float
    #: ``foreground_dice >= pseudo_label_min_dice``: pseudo-labelled patches are drawn.
    trusted: bool


class FineTuner:
    """A fine-tuning run on an engine's bundle, starting from the bundle's checkpoint.

    ``FineTuner(engine, options)`` or ``FineTuner(engine, total_steps=50, lr=1e-3, ...)``
    (keywords are FineTuneOptions fields). The engine is not changed (see :meth:`apply`) and not
    referenced afterwards."""

    def __init__(self, engine: Engine, options: Optional[FineTuneOptions] = None, **kwargs):
        if options is None:
            options = FineTuneOptions(**kwargs)
        elif kwargs:
            raise TypeError("pass either options or keyword options, not both")
        _check_engine(engine)
        c_opts = options._to_c()
        out = _lib.P()
        _lib.check(_lib.finetuner_new(engine._h, C.byref(c_opts), C.byref(out)))
        self._init(out.value, options)

    def _init(self, handle: int, options: Optional[FineTuneOptions]):
        self._h = C.c_void_p(handle)
        self._lock = threading.Lock()
        #: The options given (None after resume without options: the saved ones are used).
        self.options = options

    @classmethod
    def resume(cls, engine: Engine, path, options: Optional[FineTuneOptions] = None) -> "FineTuner":
        """Continues a run saved with :meth:`save`: weights, optimizer state and step count as
        saved; ``options`` None = the saved options. Add the same volumes again afterwards (any
        order). FormatError for a truncated or corrupt file, InvalidDataError for a checkpoint
        of another bundle or not a fine-tuning checkpoint."""
        _check_engine(engine)
        c_opts = None if options is None else C.byref(options._to_c())
        out = _lib.P()
        _lib.check(_lib.finetuner_resume(engine._h, _lib.fspath(path), c_opts, C.byref(out)))
        self = cls.__new__(cls)
        self._init(out.value, options)
        return self

    def __del__(self):
        h = getattr(self, "_h", None)
        if h:
            _lib.finetuner_free(h)
            self._h = None

    def _call(self, fn, *args):
        with self._lock:
            _lib.check(fn(self._h, *args))

    # ---- data ----------------------------------------------------------------------------

    def add_labeled(self, id: str, image, label) -> None:
        """Adds an annotated volume (asfda.Volume or NIfTI path each). ``label`` must be on
        ``image``'s grid (GeometryMismatchError) with class indices 0..classes-1
        (InvalidDataError names a bad value); ``id`` unique within the run (InvalidArgumentError).
        Only the preprocessed image and labels on the model grid are kept, not the volumes."""
        image, label = _as_volume(image), _as_volume(label)
        self._call(_lib.finetuner_add_labeled, _lib.c_string(id, "id"), image._h, label._h)

    def add_unlabeled(self, id: str, image) -> float:
        """Adds an unannotated volume (one of ``Selection.reliable``): it is segmented now and its
        confident voxels become pseudo-labels. Returns the share of its voxels kept."""
        image = _as_volume(image)
        kept = C.c_double()
        self._call(_lib.finetuner_add_unlabeled, _lib.c_string(id, "id"), image._h, C.byref(kept))
        return kept.value

    # ---- training ------------------------------------------------------------------------

    def step(self) -> StepReport:
        """One AdamW step on a batch of patches. InvalidArgumentError before any annotated volume
        was added; InvalidDataError for a non-finite loss (the state is then unchanged)."""
        r = _lib.StepReport()
        self._call(_lib.finetune_step, C.byref(r))
        return StepReport(r.loss, r.loss_ce, r.loss_dice, r.lr, r.lambda_, r.step, r.labeled_in_batch,
                          r.pseudo_in_batch)

    def check_pseudo_labels(self) -> PseudoLabelCheck:
        """Segments every annotated volume with the model that makes the pseudo-labels (the
        bundle's weights, or those of the last refresh) and compares with the annotations;
        :meth:`step` makes the same check itself when due and draws pseudo-labelled patches only
        if it passes (``FineTuneOptions.pseudo_label_min_dice``). InvalidArgumentError before any
        annotated volume was added."""
        dice = np.empty(self.classes, dtype=np.float64)
        fg, trusted = C.c_double(), C.c_bool()
        self._call(_lib.finetuner_check_pseudo_labels, dice.ctypes.data_as(_lib.DOUBLE_P), dice.size,
                   C.byref(fg), C.byref(trusted))
        return PseudoLabelCheck(dice, fg.value, trusted.value)

    @property
    def steps_done(self) -> int:
        """Steps taken in this run (resumed ones included)."""
        n = C.c_uint64()
        self._call(_lib.finetuner_steps_done, C.byref(n))
        return n.value

    @property
    def classes(self) -> int:
        """Classes of the model, background included (the length of :meth:`evaluate`'s result)."""
        n = C.c_size_t()
        self._call(_lib.finetuner_classes, C.byref(n))
        return n.value

    def evaluate(self, pairs: Iterable[tuple]) -> np.ndarray:
        """Dice per class (index 0 = background; float64, in [0, 1]) of the current weights on
        (image, label) pairs (Volumes or paths, same grid), averaged over the pairs; a class
        absent from both prediction and label scores 1."""
        pairs = [(_as_volume(i), _as_volume(l)) for i, l in pairs]
        if not pairs:
            raise ValueError("evaluate needs at least one (image, label) pair")
        images = (_lib.P * len(pairs))(*[i._h.value for i, _ in pairs])
        labels = (_lib.P * len(pairs))(*[l._h.value for _, l in pairs])
        out = np.empty(self.classes, dtype=np.float64)
        self._call(_lib.finetuner_evaluate, images, labels, len(pairs),
                   out.ctypes.data_as(_lib.DOUBLE_P), out.size)
        return out

    # ---- results -------------------------------------------------------------------------

    def save_checkpoint(self, path) -> None:
        """Saves the run (weights, optimizer state, step count, options) crash-safely (temp file
        renamed over ``path``)."""
        self._call(_lib.finetuner_save_checkpoint, _lib.fspath(path))

    def export_bundle(self, dir) -> None:
        """Writes the adapted model bundle to the new folder ``dir`` (must not exist): usable as
        ``asfda.Engine(dir)`` and by any ONNX runtime (model.onnx with the weights baked in)."""
        self._call(_lib.finetuner_export_bundle, _lib.fspath(dir))

    def apply_to(self, engine: Engine) -> None:
        """Switches ``engine`` (same bundle) to the fine-tuned weights, without reading the disk;
        calls already running on it finish with the weights they started with."""
        _check_engine(engine)
        self._call(_lib.finetuner_apply_to, engine._h)

    def __repr__(self) -> str:
        return f"<asfda.FineTuner steps_done={self.steps_done}>"


def _check_engine(engine) -> None:
    if not isinstance(engine, Engine):
        raise TypeError(f"expected an asfda.Engine, got {type(engine).__name__}")


__all__ = ["FineTuneOptions", "FineTuner", "PseudoLabelCheck", "StepReport"]
