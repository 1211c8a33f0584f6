"""The ASFDAScore Slicer module's logic, without Slicer: volumes handed over the way Slicer
holds them (a C-ordered [k, j, i] array and the IJK-to-RAS matrix), scored with the real library
and the demo bundle, and ranked by the library's ASFDA selection with each pick's components as
the reasons."""
import json
import py_compile
import sys

import nibabel as nib
import numpy as np
import pytest

import asfda
from synthetic_data import BUNDLE, ROOT, image

MODULE_DIR = ROOT / "bindings" / "python" / "slicer" / "ASFDAScore"
sys.path.insert(0, str(MODULE_DIR))
from ASFDAScoreLib import ANNOTATE, PSEUDO_LABEL, ScoringCore, rank_scores  # noqa: E402

CASES = [("t1_test_000", image("t1", "test", 0)), ("bias_noise_pool_000", image("bias_noise", "pool", 0))]


def as_slicer_gives_it(path):
    """What slicer.util.arrayFromVolume and GetIJKToRASMatrix give for a loaded NIfTI."""
    img = nib.load(path)
    return np.ascontiguousarray(np.asarray(img.dataobj, dtype=np.float32).T), img.affine


def test_the_logic_does_not_import_slicer():
    assert "slicer" not in sys.modules and "qt" not in sys.modules
    py_compile.compile(str(MODULE_DIR / "ASFDAScore.py"), doraise=True)  # the Slicer part at least parses


def test_slicer_layout_makes_the_same_volume_as_the_file():
    for _, path in CASES:
        kji, ijk_to_ras = as_slicer_gives_it(path)
        vol = ScoringCore.to_volume(kji, ijk_to_ras)
        ref = asfda.Volume.load(path)
        np.testing.assert_array_equal(vol.view(), ref.view())
        np.testing.assert_allclose(vol.affine, ref.affine, atol=1e-5)
    with pytest.raises(ValueError, match="scalar volume"):
        ScoringCore.to_volume(np.zeros((2, 3, 4, 2), np.float32), np.eye(4))


@pytest.fixture(scope="module")
def core():
    return ScoringCore(BUNDLE, threads=2)


@pytest.fixture(scope="module")
def ranked(core):
    seen = []
    items = [(name, *as_slicer_gives_it(path)) for name, path in CASES]
    rows = core.score_and_rank(items, progress=lambda f, name: seen.append((f, name)))
    return rows, seen


def test_scores_and_ranks_the_shifted_site_first(ranked):
    rows, _ = ranked
    assert [r.rank for r in rows] == [1, 2]
    top, bottom = rows
    # The noisy, bias-field site: larger knowledge gap and harder anatomy, so annotate it first.
    assert top.name == "bias_noise_pool_000" and bottom.name == "t1_test_000"
    assert top.gap > bottom.gap and top.asd > bottom.asd
    # First pick: top gap rank (diversity 1: nothing labeled) and top ASD rank.
    assert (top.pick.gap_rank, top.diversity, top.pick.asd_rank, top.priority) == (1.0, 1.0, 1.0, 2.0)
    # Second: the only one left (ranks 1), its diversity the real 1 - cos to the first.
    e0, e1 = top.score.embedding, bottom.score.embedding
    cos = float(e0 @ e1 / np.linalg.norm(e0) / np.linalg.norm(e1))
    assert bottom.diversity == pytest.approx(1.0 - cos, abs=1e-6) and 0.0 < bottom.diversity < 1.0
    # The rows are exactly asfda.select's picks.
    scored_order = [r.score for r in sorted(rows, key=lambda r: r.pick.index)]  # as scored: t1 first
    assert [s.id for s in scored_order] == [name for name, _ in CASES]
    assert [r.pick for r in rows] == asfda.select(scored_order, 2).picks
    for r in rows:
        text = r.reason_text()
        assert f"ASFDA score {r.priority:.2f}" in text and f"DKD rank {r.pick.dkd_rank:.2f}" in text
        assert f"knowledge gap {r.gap:.3g}" in text and f"diversity {r.diversity:.3g}" in text
        assert f"ASD {r.asd:.3f}" in text
        assert f"confidence {r.confidence:.1%}" in text and f"foreground {r.foreground:.1%}" in text
        assert r.role == ""
    assert "among the 2 not yet ranked" in top.reasons[0] and "the last one left" in bottom.reasons[0]
    # Each row carries the library's full score (JSON-ready).
    assert json.loads(top.score.to_json())["id"] == "bias_noise_pool_000"


def test_progress_is_overall_and_increasing(ranked):
    _, seen = ranked
    fractions = [f for f, _ in seen]
    assert all(a < b for a, b in zip(fractions, fractions[1:])) and fractions[-1] == 1.0
    names = [n for _, n in seen]
    assert names[0] == "t1_test_000" and names[-1] == "bias_noise_pool_000"
    # The first volume's reports end at 1/2.
    assert max(f for f, n in seen if n == "t1_test_000") == 0.5


def test_cancel_from_the_progress_callback(core):
    items = [(name, *as_slicer_gives_it(path)) for name, path in CASES]
    with pytest.raises(asfda.CancelledError):
        core.score(items, progress=lambda f, name: False)


def fake(score, **values):
    d = score.to_dict()
    d.update(values)
    return asfda.Score.from_dict(d)


def test_ranking_is_the_asfda_selection_with_diversity(ranked):
    base = ranked[0][0].score
    dim = len(base.embedding)

    def e(*hot):
        v = np.zeros(dim)
        for i, x in hot:
            v[i] = x
        return v.tolist()

    a = fake(base, id="a", gap_kl=1.0, asd=0.9, embedding=e((0, 1.0)))
    a2 = fake(base, id="a2", gap_kl=0.95, asd=0.8, embedding=e((0, 1.0), (1, 1e-4)))  # a's near-twin
    b = fake(base, id="b", gap_kl=0.5, asd=0.5, embedding=e((1, 1.0)))
    c = fake(base, id="c", gap_kl=0.1, asd=0.1, embedding=e((2, 1.0)))
    rows = rank_scores([c, a2, b, a])
    # a first (top of both ranks). Its twin a2 has the next-best gap and ASD, yet drops below b:
    # nearly no diversity from a, so it is passed over as a near-duplicate while b and c remain.
    assert [r.name for r in rows][:2] == ["a", "b"] and rows[0].priority == 2.0
    assert rows[[r.name for r in rows].index("a2")].diversity < 1e-6
    # Without diversity (the old stop-gap: gap rank + ASD rank) a2 would be second.
    assert sorted([a, a2, b, c], key=lambda s: -(s.gap_kl + s.asd))[1].id == "a2"
    # Options reach the selection: ASD only, near-duplicate rule off.
    assert [r.name for r in rank_scores([c, a2, b, a], w_dkd=0.0, duplicate_fraction=0.0)][:2] == ["a", "a2"]
    # Labeled volumes count for diversity but are not ranked: with a labeled, a2 is last.
    lab = rank_scores([c, a2, b, a], labeled=["a"])
    assert [r.name for r in lab][-1] == "a2" and "a" not in [r.name for r in lab]
    # A budget: the head of the ranking is annotated (same picks as asfda.select with that budget),
    # and the reliable others are marked for pseudo-labels.
    rows = rank_scores([c, a2, b, a], budget=2)
    chosen = asfda.select([c, a2, b, a], 2)
    assert [r.name for r in rows if r.role == ANNOTATE] == chosen.ids == ["a", "b"]
    assert sorted(r.name for r in rows if r.role == PSEUDO_LABEL) == chosen.reliable
    # One volume, none, all labeled; errors are the library's.
    assert [r.name for r in rank_scores([a])] == ["a"] and rank_scores([]) == []
    assert rank_scores([a], labeled=["a"]) == []
    with pytest.raises(asfda.InvalidArgumentError, match="exceeds the pool"):
        rank_scores([a, b], budget=3)
    # Flags for results not to trust.
    (odd,) = rank_scores([fake(base, id="odd", foreground_fraction=0.001, confidence=0.5)])
    assert any("field of view" in r for r in odd.reasons) and any("low confidence" in r for r in odd.reasons)
