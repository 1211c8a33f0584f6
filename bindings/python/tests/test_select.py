"""asfda.select over the library's asfda_select: scores built as JSON in Python (the library's
own score format, read by Score.from_json), so every case is exact and cheap."""
import json
import math
from dataclasses import asdict

import numpy as np
import pytest

import asfda
from asfda.select import METHODS


def score(id, embedding, gap_kl=0.5, asd=0.2, confidence=0.9, foreground_fraction=0.3, gap_anchor=0.1):
    return asfda.Score.from_dict({
        "format_version": 1, "id": id, "embedding": list(map(float, embedding)), "gap_kl": gap_kl,
        "gap_anchor": gap_anchor, "asd": asd, "asd_threshold": 0.0, "confidence": confidence,
        "foreground_fraction": foreground_fraction, "entropy_histogram": [0, 0], "voxels": 10,
        "foreground_voxels": 0,
        "options": {"foreground_dilation": 2, "threshold": "first_peak", "histogram_bins": 2,
                    "peak_smoothing": 5, "class_balanced": False, "variance_floor": 0.01},
    })


def pool(n=12, dim=6, seed=3):
    rng = np.random.default_rng(seed)
    return [score(f"v{i:02d}", rng.normal(size=dim), gap_kl=float(rng.uniform(0, 2)), asd=float(rng.uniform(0, 1)),
                  confidence=float(rng.uniform(0.6, 1)), foreground_fraction=float(rng.uniform(0.05, 0.5)))
            for i in range(n)]


def test_options_defaults_come_from_the_library():
    o = asfda.SelectOptions()
    assert (o.method, o.gap, o.budget, o.seed) == ("asfda", "kl", 1, 0)
    assert (o.w_dkd, o.w_asd, o.duplicate_fraction) == (1.0, 1.0, 0.01)
    assert (o.reliable_confidence_quantile, o.reliable_distance_quantile) == (0.5, 0.5)


def test_asfda_picks_with_components_and_reliable_set():
    scores = pool()
    sel = asfda.select(scores, 4)
    assert len(sel) == 4 and sel.method == "asfda" and sel.options.budget == 4
    assert len(set(sel.ids)) == 4
    by_id = {s.id: (k, s) for k, s in enumerate(scores)}
    for k, p in enumerate(sel.picks):
        assert isinstance(p, asfda.Pick) and p.order == k
        index, s = by_id[p.id]
        assert p.index == index and p.gap == s.gap_kl and p.asd == s.asd
        assert p.dkd == pytest.approx(p.gap_rank * p.diversity)
        assert p.combined == pytest.approx(p.dkd_rank + p.asd_rank)
        for r in (p.gap_rank, p.dkd_rank, p.asd_rank):
            assert 0.0 <= r <= 1.0
        assert 0.0 <= p.diversity <= 2.0  # 1 - cos
    # First round, first pick: nothing to be diverse from, so diversity is 1 and DKD = gap rank.
    assert sel.picks[0].diversity == 1.0 and sel.picks[0].dkd == sel.picks[0].gap_rank
    # Later picks: min of 1 - cos to the earlier picks, as method.md defines it.
    unit = {s.id: s.embedding / np.linalg.norm(s.embedding) for s in scores}
    for k, p in enumerate(sel.picks[1:], 1):
        want = min(1.0 - float(unit[p.id] @ unit[q.id]) for q in sel.picks[:k])
        assert p.diversity == pytest.approx(want, abs=1e-6)
    assert sel.reliable == sorted(sel.reliable) and not set(sel.reliable) & set(sel.ids)
    assert set(sel.reliable) <= {s.id for s in scores}
    # The reliable set's conditions (confidence >= median of the unpicked pool).
    unpicked = [s for s in scores if s.id not in sel.ids]
    median = float(np.quantile([s.confidence for s in unpicked], 0.5))
    assert sel.reliable and all(by_id[r][1].confidence >= median - 1e-12 for r in sel.reliable)


def test_the_first_pick_is_the_top_of_gap_plus_asd_rank():
    # Orthogonal embeddings. Gap ranks a 1, c 2/3, d 1/3, b 0; ASD ranks b 1, c 2/3, d 1/3, a 0:
    # c has the top sum (4/3), though neither the top gap (a) nor the top ASD (b).
    scores = [score("a", [1, 0, 0, 0], gap_kl=1.0, asd=0.05), score("b", [0, 1, 0, 0], gap_kl=0.1, asd=0.9),
              score("c", [0, 0, 1, 0], gap_kl=0.9, asd=0.85), score("d", [0, 0, 0, 1], gap_kl=0.2, asd=0.1)]
    (p,) = asfda.select(scores, 1).picks
    assert p.id == "c" and p.index == 2 and p.combined == pytest.approx(4 / 3)
    assert (p.gap_rank, p.asd_rank) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    # Weights move it: DKD only takes the largest gap; the entropy baseline the largest ASD.
    assert asfda.select(scores, 1, w_asd=0.0).ids == ["a"]
    assert asfda.select(scores, 1, method="entropy").ids == ["b"]


def test_diversity_passes_over_a_near_duplicate_of_the_labeled_set():
    e = [1.0, 0.0, 0.0]
    scores = [score("lab", e, gap_kl=0.1, asd=0.1), score("copy", [1.0, 1e-4, 0.0], gap_kl=2.0, asd=0.9),
              score("other", [0.0, 1.0, 0.0], gap_kl=1.0, asd=0.5)]
    sel = asfda.select(scores, 1, labeled=["lab"])
    assert sel.ids == ["other"] and sel.picks[0].diversity == pytest.approx(1.0)
    # Without the near-duplicate rule the copy's top gap and ASD ranks win (ranks drop magnitudes).
    assert asfda.select(scores, 1, labeled=["lab"], duplicate_fraction=0.0).ids == ["copy"]
    # Labeled volumes are never picked, and count: budget is capped by the unlabeled pool.
    assert asfda.select(scores, 2, labeled=["lab"]).ids == ["other", "copy"]
    with pytest.raises(asfda.InvalidArgumentError, match="exceeds the pool of 2"):
        asfda.select(scores, 3, labeled=["lab"])


@pytest.mark.parametrize("method", METHODS)
def test_every_method_respects_the_budget_and_is_deterministic(method):
    scores = pool()
    a = asfda.select(scores, 5, method=method, seed=7)
    assert len(a.ids) == 5 == len(set(a.ids)) and a.method == method
    # Same seed, scores in another order: the same picks (the pool is processed in id order).
    b = asfda.select(list(reversed(scores)), 5, method=method, seed=7)
    assert b.ids == a.ids and b.reliable == a.reliable
    assert [p.index for p in b.picks] == [len(scores) - 1 - p.index for p in a.picks]


def test_random_methods_depend_on_the_seed():
    scores = pool(20)
    runs = {tuple(asfda.select(scores, 5, method="random", seed=s).ids) for s in range(4)}
    assert len(runs) > 1
    assert asfda.select(scores, 5, method="random", seed=1).ids == asfda.select(scores, 5, method="random", seed=1).ids


def test_json_round_trip_and_options_as_keywords():
    scores = pool()
    opts = asfda.SelectOptions(budget=3, method="dkd", gap="anchor", duplicate_fraction=0.0, seed=5)
    sel = asfda.select(scores, **asdict(opts), labeled=["v00"])
    assert sel.options == opts
    d = json.loads(sel.to_json())
    assert d["method"] == "dkd" and d["options"]["gap"] == "anchor" and [p["id"] for p in d["picks"]] == sel.ids
    back = asfda.Selection.from_json(sel.to_json())
    assert back == sel and back.picks == sel.picks and back.to_json() == sel.to_json()
    assert all(math.isfinite(c) for p in back.picks for c in p[3:])
    with pytest.raises(asfda.UnsupportedError, match="format_version 99"):
        asfda.Selection.from_json(json.dumps({**d, "format_version": 99}))
    with pytest.raises(asfda.FormatError, match="malformed"):
        asfda.Selection.from_json(sel.to_json()[:-5])
    twice = {**d, "picks": [d["picks"][0], {**d["picks"][0], "order": 1}]}
    with pytest.raises(asfda.FormatError, match="picked twice"):
        asfda.Selection.from_json(json.dumps(twice))


def test_errors_map_to_their_exception_classes():
    scores = pool(4)
    cases = [
        (lambda: asfda.select(scores, 0), asfda.InvalidArgumentError, "budget is 0"),
        (lambda: asfda.select(scores, 5), asfda.InvalidArgumentError, "exceeds the pool"),
        (lambda: asfda.select([], 1), asfda.InvalidArgumentError, "pool is empty"),
        (lambda: asfda.select(scores, 1, method="best"), asfda.InvalidArgumentError, "best"),
        (lambda: asfda.select(scores, 1, gap="l2"), asfda.InvalidArgumentError, "l2"),
        (lambda: asfda.select(scores, 1, w_dkd=0.0, w_asd=0.0), asfda.InvalidArgumentError, "both 0"),
        (lambda: asfda.select(scores, 1, duplicate_fraction=2.0), asfda.InvalidArgumentError, "duplicate_fraction"),
        (lambda: asfda.select(scores, 1, labeled=["nope"]), asfda.InvalidArgumentError, "'nope' is not among"),
        (lambda: asfda.select(scores, 1, labeled=["v00", "v00"]), asfda.InvalidArgumentError, "listed twice"),
        (lambda: asfda.select(scores + [scores[0]], 1), asfda.InvalidArgumentError, "appears twice"),
        (lambda: asfda.select(scores + [score("short", [1, 0])], 1), asfda.InvalidDataError, "embedding"),
    ]
    for call, cls, text in cases:
        with pytest.raises(cls, match=text) as info:
            call()
        assert info.value.code == cls.code and info.value.status.startswith("ASFDA_STATUS_")
        assert isinstance(info.value, ValueError)  # both classes are ValueErrors too
    # Caught in Python before the C call.
    with pytest.raises(TypeError, match="not an asfda.Score"):
        asfda.select([{"id": "x"}], 1)
    with pytest.raises(TypeError, match="not one string"):
        asfda.select(scores, 1, labeled="v00")
    with pytest.raises(TypeError):
        asfda.select(scores, 1, budgett=2)
    with pytest.raises(TypeError, match="must be str"):
        asfda.select(scores, 1, labeled=[3])
    with pytest.raises(TypeError, match="method must be a name"):
        asfda.select(scores, 1, method=0)
    with pytest.raises(ValueError, match="budget"):
        asfda.select(scores, -1)
