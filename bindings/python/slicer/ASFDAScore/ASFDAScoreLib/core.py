"""Scoring volumes given as numpy arrays + IJK-to-RAS matrices, and ranking them with reasons.

Nothing here imports slicer: the module's widget hands over what Slicer gives
(``slicer.util.arrayFromVolume(node)``, a C-ordered [k, j, i] array, and the node's IJK-to-RAS
matrix), so this logic runs and is tested in plain Python.

Ranking: the library's selection (``asfda.select``, method ASFDA, method.md section 1) run over
the whole pool, so the list is the greedy pick order: each volume is ranked by its ASFDA score
``w_dkd * rank01(DKD) + w_asd * rank01(ASD)`` among the volumes still unranked, where DKD is the
knowledge-gap rank times the diversity to the labeled and already ranked volumes. A volume much
like one ranked above it therefore drops. The reasons are that pick's components. The greedy
order does not depend on the budget, so the first ``budget`` rows are exactly what
``asfda.select(scores, budget)`` picks; with a budget the rows also say which of the others are
reliable for pseudo-labelling.
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

ANNOTATE, PSEUDO_LABEL = "annotate", "pseudo-label"


@dataclass
class RankedVolume:
    """One row of the ranked list."""

    rank: int  # 1 = annotate first (pick order + 1)
    name: str
    score: "asfda.Score"
    pick: "asfda.Pick"  # the selection's components when this volume was picked
    reasons: list = field(default_factory=list)
    #: With a budget: ANNOTATE (within it), PSEUDO_LABEL (reliable for fine-tuning) or "".
    role: str = ""

    @property
    def priority(self) -> float:
        """The ASFDA score when picked, in [0, w_dkd + w_asd] (ranks over the remaining volumes,
        so it need not decrease down the list)."""
        return self.pick.combined

    @property
    def gap(self) -> float:
        return self.pick.gap

    @property
    def diversity(self) -> float:
        return self.pick.diversity

    @property
    def asd(self) -> float:
        return self.pick.asd

    @property
    def confidence(self) -> float:
        return self.score.confidence

    @property
    def foreground(self) -> float:
        return self.score.foreground_fraction

    def reason_text(self) -> str:
        return "; ".join(self.reasons)


def _reasons(p: "asfda.Pick", s: "asfda.Score", w_dkd: float, w_asd: float, remaining: int) -> list:
    among = f"among the {remaining} not yet ranked" if remaining > 1 else "the last one left"
    reasons = [
        f"ASFDA score {p.combined:.2f} = {w_dkd:g} x DKD rank {p.dkd_rank:.2f} + {w_asd:g} x ASD rank "
        f"{p.asd_rank:.2f} ({among})",
        f"knowledge gap {p.gap:.3g} (rank {p.gap_rank:.2f})",
        f"diversity {p.diversity:.3g} (1 - cos to the nearest labeled or higher-ranked volume)",
        f"ASD {p.asd:.3f}",
        f"confidence {s.confidence:.1%}",
        f"foreground {s.foreground_fraction:.1%}",
    ]
    if s.foreground_fraction < LOW_FOREGROUND:
        reasons.append("almost no anatomy found: check the field of view and orientation")
    if s.confidence < LOW_CONFIDENCE:
        reasons.append("low confidence: the model is unsure here")
    return reasons


def rank_scores(scores: Iterable["asfda.Score"], budget: Optional[int] = None, labeled: Iterable[str] = (),
                w_dkd: float = 1.0, w_asd: float = 1.0, **select_options) -> list:
    """The unlabeled scores as RankedVolume rows in ASFDA pick order (asfda.select over the whole
    pool). ``labeled``: ids already annotated (their scores must be among ``scores``: they count
    for diversity and are not ranked). ``budget``: marks the first ``budget`` rows ANNOTATE and
    the reliable others PSEUDO_LABEL. Other keywords go to asfda.select (e.g. gap="anchor")."""
    scores = list(scores)
    labeled = list(labeled)
    if len(scores) <= len(set(labeled)):
        return []
    by_id = {s.id: s for s in scores}
    pool = len(scores) - len(labeled)
    options = dict(labeled=labeled, w_dkd=w_dkd, w_asd=w_asd, **select_options)
    order = asfda.select(scores, pool, **options)
    rows = [RankedVolume(p.order + 1, p.id, by_id[p.id], p, _reasons(p, by_id[p.id], w_dkd, w_asd, pool - p.order))
            for p in order.picks]
    if budget is not None:
        # For ASFDA (greedy) these are the first `budget` rows; roles come from this selection
        # itself, so a method whose picks depend on the budget is labelled correctly too.
        chosen = asfda.select(scores, budget, **options)
        picked, reliable = set(chosen.ids), set(chosen.reliable)
        for r in rows:
            r.role = ANNOTATE if r.name in picked else PSEUDO_LABEL if r.name in reliable else ""
            if r.role == PSEUDO_LABEL:
                r.reasons.append("reliable: confident and close to the annotated set, use its pseudo-labels")
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

            scores.append(self.engine.score(name, volume, progress=each))
        return scores

    def score_and_rank(self, items, progress=None, budget: Optional[int] = None, **rank_options) -> list:
        """Scores the items and ranks them (see rank_scores for ``budget`` and the options)."""
        return rank_scores(self.score(items, progress), budget, **rank_options)
