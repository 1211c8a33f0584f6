"""The ASFDAScore Slicer module's logic, without Slicer: volumes handed over the way Slicer
holds them (a C-ordered [k, j, i] array and the IJK-to-RAS matrix), scored with the real library
and the demo bundle, and ranked with reasons."""
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
from ASFDAScoreLib import ScoringCore, rank_scores  # noqa: E402

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
    assert top.gap > bottom.gap and top.asd > bottom.asd and top.priority == 2.0 and bottom.priority == 0.0
    for r in rows:
        text = r.reason_text()
        assert f"knowledge gap {r.gap:.3g}" in text and f"ASD {r.asd:.3f}" in text
        assert f"confidence {r.confidence:.1%}" in text and f"foreground {r.foreground:.1%}" in text
    assert "(#1 of 2)" in top.reasons[0] and "(#2 of 2)" in bottom.reasons[0]
    # Each row carries the library's full score (JSON-ready for the selection step).
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


def test_ranking_rules(ranked):
    base = ranked[0][0].score
    a = fake(base, id="a", gap_kl=1.0, asd=0.1)
    b = fake(base, id="b", gap_kl=0.5, asd=0.9)
    c = fake(base, id="c", gap_kl=0.1, asd=0.2)
    rows = rank_scores([c, a, b])
    # priorities: a = 1 + 0 = 1, b = 0.5 + 1 = 1.5, c = 0 + 0.5 = 0.5
    assert [(r.name, r.priority) for r in rows] == [("b", 1.5), ("a", 1.0), ("c", 0.5)]
    # Weights move the order: gap only.
    assert [r.name for r in rank_scores([c, a, b], w_asd=0.0)] == ["a", "b", "c"]
    # Ties share their rank01 and are ordered by name.
    t = rank_scores([fake(base, id="y"), fake(base, id="x")])
    assert [r.name for r in t] == ["x", "y"] and t[0].priority == t[1].priority
    # One volume, and none.
    assert rank_scores([a])[0].priority == 2.0 and rank_scores([]) == []
    # Flags for results not to trust.
    (odd,) = rank_scores([fake(base, id="odd", foreground_fraction=0.001, confidence=0.5)])
    assert any("field of view" in r for r in odd.reasons) and any("low confidence" in r for r in odd.reasons)
