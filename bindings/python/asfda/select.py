"""Selection: which volumes to annotate under a budget, and which to pseudo-label (method.md
sections 1 and 2), over the library's ``asfda_select``.

::

    sel = asfda.select(scores, budget=4)                   # ASFDA, seed 0, nothing labeled yet
    for p in sel.picks:                                    # in pick order
        print(p.order, p.id, p.gap_rank, p.diversity, p.asd_rank, p.combined)
    sel.reliable                                           # ids to fine-tune on with pseudo-labels
    sel2 = asfda.select(scores, 4, labeled=sel.ids)        # next round

The result depends on the scores and options only (not on the order of ``scores``); the random
methods give the same picks for a seed on every platform.
"""
from __future__ import annotations

import ctypes as C
import json
from dataclasses import dataclass, fields
from typing import Iterable, NamedTuple

from . import _lib, errors
from .score import Score

#: The method names, in the order of the C enum AsfdaSelectMethod.
METHODS = ("asfda", "random", "foreground_random", "entropy", "dkd", "coreset")
#: The gap kinds, in the order of the C enum AsfdaGapKind.
GAPS = ("kl", "anchor")

#: The Selection JSON version the library writes and reads.
SELECTION_FORMAT_VERSION = 1


def _defaults():
    return _lib.select_options_default()


@dataclass
class SelectOptions:
    """Selection settings; the defaults are the library's (asfda_select_options_default).

    ``asfda.select(scores, **dataclasses.asdict(options))`` runs a selection with them."""

    #: Volumes to pick, 1..=number of unlabeled scores.
    budget: int = _defaults().budget
    #: "asfda", "random", "foreground_random", "entropy", "dkd" or "coreset".
    method: str = METHODS[_defaults().method]
    #: Seed of the random methods.
    seed: int = _defaults().seed
    #: Weight of the DKD rank in the ASFDA score (finite, >= 0).
    w_dkd: float = _defaults().w_dkd
    #: Weight of the ASD rank in the ASFDA score (finite, >= 0; not both weights 0).
    w_asd: float = _defaults().w_asd
    #: Which knowledge gap feeds DKD: "kl" or "anchor".
    gap: str = GAPS[_defaults().gap]
    #: ASFDA passes over near-duplicates of labeled + picked closer than this fraction of the
    #: largest distance, while others remain; in [0, 1], 0 = off.
    duplicate_fraction: float = _defaults().duplicate_fraction
    #: Reliable volumes have confidence >= this quantile of the unpicked pool's; in [0, 1].
    reliable_confidence_quantile: float = _defaults().reliable_confidence_quantile
    #: Reliable volumes have distance to labeled + picked <= this quantile; in [0, 1].
    reliable_distance_quantile: float = _defaults().reliable_distance_quantile

    def _to_c(self) -> "_lib.SelectOptions":
        o = _lib.select_options_default()
        # Names are mapped by the library, so the C enum stays the one source of truth.
        code = C.c_int32()
        for name in ("method", "gap"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"selection option {name} must be a name (str), got {getattr(self, name)!r}")
        _lib.check(_lib.select_method_from_name(_lib.c_string(self.method, "method"), C.byref(code)))
        o.method = code.value
        _lib.check(_lib.gap_kind_from_name(_lib.c_string(self.gap, "gap"), C.byref(code)))
        o.gap = code.value
        for name in ("budget", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"selection option {name} must be a non-negative integer, got {value!r}")
            setattr(o, name, value)
        for name in ("w_dkd", "w_asd", "duplicate_fraction", "reliable_confidence_quantile",
                     "reliable_distance_quantile"):
            setattr(o, name, float(getattr(self, name)))
        return o


class Pick(NamedTuple):
    """One picked volume with the score components when it was picked (ranks in [0, 1] over the
    candidates remaining at that moment; same definitions for every method)."""

    #: The volume's id.
    id: str
    #: Its index in the ``scores`` given to :func:`select`.
    index: int
    #: 0 for the first pick.
    order: int
    #: The raw knowledge gap (of the kind chosen in the options).
    gap: float
    #: rank01 of the gap.
    gap_rank: float
    #: Min over labeled + earlier picks of 1 - cos of the embeddings (1 when there were none).
    diversity: float
    #: gap_rank * diversity.
    dkd: float
    #: rank01 of dkd.
    dkd_rank: float
    #: The raw ASD.
    asd: float
    #: rank01 of ASD.
    asd_rank: float
    #: w_dkd * dkd_rank + w_asd * asd_rank (the ASFDA score).
    combined: float


#: The numeric components of a pick, in AsfdaPick order (after index and order).
COMPONENTS = ("gap", "gap_rank", "diversity", "dkd", "dkd_rank", "asd", "asd_rank", "combined")


class Selection:
    """The result of :func:`select`: ``picks`` in pick order, ``reliable`` ids (sorted), the
    ``method`` and ``options`` used. Plain Python data (the library's result is read out and
    freed at once); ``to_json()`` is the library's versioned JSON."""

    def __init__(self, picks, reliable, options: SelectOptions, json_text: str, format_version: int):
        self.picks: list[Pick] = list(picks)
        self.reliable: list[str] = list(reliable)
        self.options = options
        self.format_version = format_version
        self._json = json_text

    @property
    def method(self) -> str:
        return self.options.method

    @property
    def ids(self) -> list[str]:
        """The picked ids, in pick order."""
        return [p.id for p in self.picks]

    def __len__(self) -> int:
        return len(self.picks)

    def __iter__(self):
        return iter(self.picks)

    def to_json(self) -> str:
        """The selection as one line of JSON, as the library writes it (method, options, picks with
        components, reliable ids); the CLI's ``asfda select`` output reads the same."""
        return self._json

    def to_dict(self) -> dict:
        return json.loads(self._json)

    @classmethod
    def from_json(cls, text: str) -> "Selection":
        """Reads JSON written by :meth:`to_json` (or the CLI) with the library's reader
        (asfda_selection_from_json), which checks the version and the structure: FormatError for
        malformed or inconsistent JSON, UnsupportedError for another format_version."""
        if not isinstance(text, str):
            raise TypeError(f"selection JSON must be a str, got {type(text).__name__}")
        out = _lib.P()
        _lib.check(_lib.selection_from_json(_lib.c_string(text, "selection JSON"), C.byref(out)))
        return _from_handle(out.value)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Selection):
            return NotImplemented
        return (self.picks, self.reliable, self.options) == (other.picks, other.reliable, other.options)

    __hash__ = None

    def __repr__(self) -> str:
        return f"<asfda.Selection method={self.method!r} picks={self.ids!r} reliable={len(self.reliable)}>"


def select(scores: Iterable[Score], budget: int, method: str = "asfda", seed: int = 0,
           labeled: Iterable[str] = (), **options) -> Selection:
    """Picks ``budget`` volumes to annotate among the ``scores`` whose id is not in ``labeled``,
    and the reliable set of the rest.

    ``scores``: every scored volume of the site, labeled ones included (their embeddings count
    for diversity). ``labeled``: ids already annotated. ``options``: the other
    :class:`SelectOptions` fields (``w_dkd``, ``w_asd``, ``gap``, ``duplicate_fraction``,
    ``reliable_confidence_quantile``, ``reliable_distance_quantile``).

    Errors: InvalidArgumentError for an empty pool, a budget out of range, duplicate or unknown
    ids, an unknown method or gap, an option out of range; InvalidDataError for embeddings of
    different sizes or non-finite scores; TypeError for an unknown option name."""
    opts = SelectOptions(budget=budget, method=method, seed=seed, **options)
    scores = list(scores)
    for k, s in enumerate(scores):
        if not isinstance(s, Score):
            raise TypeError(f"scores[{k}] is a {type(s).__name__}, not an asfda.Score "
                            "(make one with Engine.score or Score.from_json)")
    if isinstance(labeled, (str, bytes)):
        raise TypeError("labeled must be a list of ids, not one string")
    labeled = list(labeled)
    for i in labeled:
        if not isinstance(i, str):
            raise TypeError(f"labeled ids must be str, got {i!r}")
    labeled = [_lib.c_string(i, f"labeled id {i!r}") for i in labeled]
    c_opts = opts._to_c()
    handles = (_lib.P * len(scores))(*[s._h.value for s in scores])
    ids = (C.c_char_p * len(labeled))(*labeled)
    out = _lib.P()
    _lib.check(_lib.select(handles, len(scores), ids, len(labeled), C.byref(c_opts), C.byref(out)))
    return _from_handle(out.value)


def _from_handle(handle) -> Selection:
    """Reads a library selection handle out into a Selection and frees it."""
    h = C.c_void_p(handle)
    try:
        picks = []
        for i in range(_lib.selection_count(h)):
            p = _lib.Pick()
            _lib.check(_lib.selection_pick(h, i, C.byref(p)))
            picks.append(Pick(_borrowed(_lib.selection_pick_id(h, i)), p.index, p.order,
                              *(getattr(p, c) for c in COMPONENTS)))
        reliable = [_borrowed(_lib.selection_reliable_id(h, i)) for i in range(_lib.selection_reliable_count(h))]
        text = _lib.read_string(_lib.selection_to_json, h)
    finally:
        _lib.selection_free(h)
    # The options as the library read them (one source of truth for what was used).
    d = json.loads(text)
    used = SelectOptions(**{f.name: d["options"][f.name] for f in fields(SelectOptions)})
    return Selection(picks, reliable, used, text, d["format_version"])


def _borrowed(b) -> str:
    if b is None:  # only for an index out of range, which the loops above never ask for
        raise errors.InternalError("ASFDA_STATUS_INTERNAL", (_lib.last_error() or b"").decode(errors="replace"))
    return b.decode()
