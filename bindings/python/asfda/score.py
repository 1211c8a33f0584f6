"""Scores of volumes (method.md section 1) and their JSON and JSON-lines forms.

A :class:`Score` wraps the library's immutable score. The scalar values and the embedding come
from the C accessors; the rest (id, entropy histogram, voxel counts, the scoring options) from
the score's JSON, which is the library's exact, versioned serialisation.

Merge-friendly list form: :func:`save_scores` writes one score per line (JSON lines), so score
files made on several machines can simply be concatenated, or read together with
:func:`load_scores`, which merges them by id (:func:`merge_scores`).
"""
from __future__ import annotations

import ctypes as C
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np

from . import _lib

#: The scalar values, in the order of AsfdaScoreValues.
VALUES = ("gap_kl", "gap_anchor", "asd", "asd_threshold", "confidence", "foreground_fraction")


class Score:
    """The scores of one volume. Immutable; equal when their JSON forms are equal."""

    def __init__(self, handle: int):
        """Takes ownership of a C handle (``AsfdaScore *``); made by Engine.score or from_json."""
        if not handle:
            raise ValueError("NULL score handle")
        self._h = C.c_void_p(handle)
        values = _lib.ScoreValues()
        _lib.check(_lib.score_values(self._h, C.byref(values)))
        self._values = {name: getattr(values, name) for name in VALUES}
        self._embedding_len = values.embedding_len
        self._dict = None

    def __del__(self):
        h = getattr(self, "_h", None)
        if h:
            _lib.score_free(h)
            self._h = None

    # ---- JSON ----------------------------------------------------------------------------

    def to_json(self) -> str:
        """The library's one-line JSON (versioned; every value reads back bit-exactly)."""
        return _lib.read_string(_lib.score_to_json, self._h)

    @classmethod
    def from_json(cls, text: str) -> "Score":
        """Reads a score written by :meth:`to_json`; FormatError / UnsupportedError otherwise."""
        out = _lib.P()
        _lib.check(_lib.score_from_json(_lib.c_string(text, "score JSON"), C.byref(out)))
        return cls(out.value)

    def to_dict(self) -> dict:
        """The JSON form as a plain dict (a fresh copy)."""
        if self._dict is None:
            self._dict = json.loads(self.to_json())
        return json.loads(json.dumps(self._dict))

    @classmethod
    def from_dict(cls, d: dict) -> "Score":
        # Python writes floats as their shortest round-trip repr, so values survive exactly.
        return cls.from_json(json.dumps(d))

    def _field(self, name):
        if self._dict is None:
            self._dict = json.loads(self.to_json())
        return self._dict[name]

    # ---- values --------------------------------------------------------------------------

    @property
    def id(self) -> str:
        """The caller's name for the volume (unique within a selection)."""
        return self._field("id")

    @property
    def format_version(self) -> int:
        return self._field("format_version")

    @property
    def gap_kl(self) -> float:
        """Mean over feature channels of the Gaussian KL from the source statistics (nats)."""
        return self._values["gap_kl"]

    @property
    def gap_anchor(self) -> float:
        """Squared distance of the embedding to the nearest source anchor."""
        return self._values["gap_anchor"]

    @property
    def asd(self) -> float:
        """Anatomical segmentation difficulty: mean foreground entropy above ``asd_threshold``."""
        return self._values["asd"]

    @property
    def asd_threshold(self) -> float:
        return self._values["asd_threshold"]

    @property
    def confidence(self) -> float:
        """Mean max-probability over the (dilated) predicted foreground."""
        return self._values["confidence"]

    @property
    def foreground_fraction(self) -> float:
        """Voxels predicted foreground, over all voxels."""
        return self._values["foreground_fraction"]

    @property
    def embedding(self) -> np.ndarray:
        """The L2-normalised embedding (float32; a fresh copy each time)."""
        out = np.empty(self._embedding_len, dtype=np.float32)
        _lib.check(_lib.score_embedding(self._h, out.ctypes.data_as(C.POINTER(C.c_float)), out.size))
        return out

    @property
    def entropy_histogram(self) -> np.ndarray:
        """Histogram of the normalised entropy over the dilated foreground (uint32 counts)."""
        return np.asarray(self._field("entropy_histogram"), dtype=np.uint32)

    @property
    def voxels(self) -> int:
        return self._field("voxels")

    @property
    def foreground_voxels(self) -> int:
        """Voxels in the dilated foreground (those the histogram, ASD and confidence are over)."""
        return self._field("foreground_voxels")

    @property
    def options(self) -> dict:
        """The scoring options the score was computed with."""
        return dict(self._field("options"))

    def summary(self) -> dict:
        """id plus the scalar values: one flat row for a table."""
        return {"id": self.id, **self._values}

    # ---- comparison ----------------------------------------------------------------------

    def __eq__(self, other) -> bool:
        if not isinstance(other, Score):
            return NotImplemented
        return self.to_json() == other.to_json()

    __hash__ = None  # equality by value, mutable-looking wrapper: not hashable

    def __repr__(self) -> str:
        vals = ", ".join(f"{k}={v:.4g}" for k, v in self._values.items())
        return f"<asfda.Score id={self.id!r} {vals}>"


def merge_scores(*groups: Iterable[Score]) -> list[Score]:
    """Scores of several groups in one list, ordered by first appearance. The same id twice is
    kept once if both scores are identical, a ValueError if they differ (the same id scored
    differently: two different volumes, or two different models)."""
    merged: dict[str, Score] = {}
    for group in groups:
        for s in group:
            prev = merged.get(s.id)
            if prev is None:
                merged[s.id] = s
            elif prev != s:
                raise ValueError(f"two different scores for id {s.id!r}: rename one of the volumes or drop one score")
    return list(merged.values())


def save_scores(path, scores: Iterable[Score]) -> None:
    """Writes scores as JSON lines (one score per line), atomically (temp file + rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for s in scores:
                f.write(s.to_json() + "\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_scores(*paths) -> list[Score]:
    """Reads JSON-lines score files (blank lines skipped) and merges them with merge_scores.
    A bad line raises the library's FormatError / UnsupportedError naming the file and line."""
    groups = []
    for path in paths:
        group = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    group.append(Score.from_json(line))
                except Exception as e:  # add where it came from, keep the class and status
                    if hasattr(e, "message"):
                        e.message = f"{path}:{n}: {e.message}"
                        e.args = (f"{e.status}: {e.message}",)
                    raise
        groups.append(group)
    return merge_scores(*groups)
