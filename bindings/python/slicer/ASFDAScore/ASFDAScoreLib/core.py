"""Scoring volumes given as numpy arrays + IJK-to-RAS matrices, and ranking them with reasons.

Nothing here imports slicer: the module's widget hands over what Slicer gives
(``slicer.util.arrayFromVolume(node)``, a C-ordered [k, j, i] array, and the node's IJKToRAS
matrix), so this logic runs and is tested in plain Python.

Ranking (an interim until the library's selection functions are wrapped): method.md's query
score without its diversity term, ``priority = w_gap * rank01(gap_kl) + w_asd * rank01(asd)``,
highest first. rank01 maps the ascending rank to [0, 1] (ties share their mean rank), so the two
terms weigh equally whatever their units.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

try:
    import asfda
except ImportError:  # running from the repository: use its bindings/python
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    import asfda

#: Below this foreground fraction the model sees almost no anatomy: the volume is probably not
#: a brain MR, or its field of view or orientation is wrong; flagged rather than trusted.
LOW_FOREGROUND = 0.01
#: Below this mean foreground confidence the prediction is flagged as unreliable.
LOW_CONFIDENCE = 0.7


@dataclass
class RankedVolume:
    """One row of the ranked list."""

    rank: int  # 1 = annotate first
    name: str
    priority: float  # in [0, w_gap + w_asd]
    score: "asfda.Score"
    reasons: list = field(default_factory=list)

    @property
    def gap(self) -> float:
        return self.score.gap_kl

    @property
    def asd(self) -> float:
        return self.score.asd

    @property
    def confidence(self) -> float:
        return self.score.confidence

    @property
    def foreground(self) -> float:
        return self.score.foreground_fraction

    def reason_text(self) -> str:
        return "; ".join(self.reasons)


def _rank01(values: np.ndarray) -> np.ndarray:
    """Ascending rank scaled to [0, 1], ties sharing their mean rank; one value -> 1."""
    n = len(values)
    if n == 1:
        return np.ones(1)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(n)
    ranks[order] = np.arange(n, dtype=float)
    for v in np.unique(values):  # ties: the mean of their ranks
        tie = values == v
        ranks[tie] = ranks[tie].mean()
    return ranks / (n - 1)


def _place(values: np.ndarray, i: int) -> int:
    """1 for the largest value (ties share the better place)."""
    return int(np.sum(values > values[i])) + 1


def rank_scores(scores: Iterable["asfda.Score"], w_gap: float = 1.0, w_asd: float = 1.0) -> list:
    """The scores as RankedVolume rows, highest priority first (ties: by name)."""
    scores = list(scores)
    if not scores:
        return []
    gap = np.array([s.gap_kl for s in scores])
    asd = np.array([s.asd for s in scores])
    priority = w_gap * _rank01(gap) + w_asd * _rank01(asd)
    n = len(scores)
    rows = []
    for i, s in enumerate(scores):
        reasons = [
            f"knowledge gap {s.gap_kl:.3g} (#{_place(gap, i)} of {n})",
            f"ASD {s.asd:.3f} (#{_place(asd, i)} of {n})",
            f"confidence {s.confidence:.1%}",
            f"foreground {s.foreground_fraction:.1%}",
        ]
        if s.foreground_fraction < LOW_FOREGROUND:
            reasons.append("almost no anatomy found: check the field of view and orientation")
        if s.confidence < LOW_CONFIDENCE:
            reasons.append("low confidence: the model is unsure here")
        rows.append(RankedVolume(0, s.id, float(priority[i]), s, reasons))
    rows.sort(key=lambda r: (-r.priority, r.name))
    for k, r in enumerate(rows, 1):
        r.rank = k
    return rows


class ScoringCore:
    """Scores numpy volumes with a model bundle; the engine is created on first use."""

    def __init__(self, bundle, threads: int = 0, device: str = "cpu"):
        self.bundle = str(bundle)
        self.threads = threads
        self.device = device
        self._engine = None

    @property
    def engine(self) -> "asfda.Engine":
        if self._engine is None:
            self._engine = asfda.Engine(self.bundle, threads=self.threads, device=self.device)
        return self._engine

    @staticmethod
    def to_volume(array_kji: np.ndarray, ijk_to_ras) -> "asfda.Volume":
        """An asfda volume from Slicer's layout: a [k, j, i] array (C order, as
        arrayFromVolume returns) and the 4x4 IJK-to-RAS matrix. ``array.T`` is the [i, j, k]
        x-fastest array asfda wants, so numpy copies nothing; the library copies once."""
        a = np.asarray(array_kji)
        if a.ndim != 3:
            raise ValueError(f"expected a scalar volume [k, j, i], got shape {a.shape}")
        return asfda.Volume.from_array(a.T, np.asarray(ijk_to_ras, dtype=np.float64), asfda.RAS)

    def score(self, items, progress: Optional[Callable[[float, str], Optional[bool]]] = None) -> list:
        """Scores (name, array_kji, ijk_to_ras) triples in order. ``progress(fraction, name)``
        gets the overall fraction in [0, 1]; returning False cancels (asfda.CancelledError),
        and no partial list is returned."""
        items = list(items)
        scores = []
        for i, (name, array, ijk_to_ras) in enumerate(items):
            volume = self.to_volume(array, ijk_to_ras)

            def each(f, i=i, name=name):
                return None if progress is None else progress((i + f) / len(items), name)

            scores.append(self.engine.score(volume, name, progress=each))
        return scores

    def score_and_rank(self, items, progress=None, w_gap: float = 1.0, w_asd: float = 1.0) -> list:
        return rank_scores(self.score(items, progress), w_gap, w_asd)
