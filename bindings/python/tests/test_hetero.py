"""The heterogeneous target hospital (asfda_tools.hetero): exact shares, exact labels, and each
acquisition kind and anatomical change has the property it claims. Most checks compare a volume
with the same volume rendered without the step under test (``skip=``), which leaves every other
random draw unchanged."""
import collections
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from asfda_tools import anatomy, hetero, synth

ROOT = Path(__file__).resolve().parents[3]
CSF, GM, WM = anatomy.CSF, anatomy.GM, anatomy.WM
NONE = {"atrophy": False, "wmh": False, "tumour": False, "skull": False}


@pytest.fixture(scope="module")
def tpl():
    return hetero.load_template()


def entry(kind, **changes):
    return {"kind": kind, **NONE, **changes}


def render(tpl, kind, key=(9, 100, 2, 0), skip=(), **changes):
    return hetero.render(tpl, list(key), entry(kind, **changes), frozenset(skip))


def tissue_mean(volume, t):
    inner = ndi.binary_erosion(volume.tissue == t, iterations=1)
    return float(volume.image[inner].mean())


# --- plan: kinds and anatomy in exact, deterministic shares ---------------------------------

@pytest.mark.parametrize("site,split", [(s, p) for s in hetero.SITES for p in hetero.SITES[s]])
def test_plan_has_the_declared_shares_and_is_deterministic(site, split):
    entries = hetero.plan(0, site, split)
    assert entries == hetero.plan(0, site, split)
    assert dict(collections.Counter(e["kind"] for e in entries)) == {
        k: n for k, n in hetero.SITES[site][split].items() if n}
    n = len(entries)
    for change, share in hetero.ANATOMY_SHARES.items():
        assert sum(e[change] for e in entries) == max(1, round(share * n))
    kinds = [e["kind"] for e in entries]
    assert kinds != sorted(kinds, key=list(hetero.KINDS).index)  # shuffled, not grouped by kind


def test_evaluation_site_is_a_heterogeneous_hospital():
    pool = collections.Counter(e["kind"] for e in hetero.plan(0, "hetero", "pool"))
    test = collections.Counter(e["kind"] for e in hetero.plan(0, "hetero", "test"))
    assert sum(pool.values()) >= 40 and sum(test.values()) >= 16
    assert set(pool) == set(test) == set(hetero.KINDS)  # stratified over the same kinds
    assert 0.4 <= pool["routine"] / sum(pool.values()) <= 0.6  # about half routine
    assert min(pool.values()) <= 2 and min(test.values()) >= 2  # rare kinds, each tested twice
    tune = collections.Counter(e["kind"] for e in hetero.plan(0, "hetero_tune", "pool"))
    assert tune != pool  # other shares
    assert hetero.seed_key(0, "hetero", "pool", 0) != hetero.seed_key(0, "hetero_tune", "pool", 0)


def test_plan_refuses_unknown_kinds():
    with pytest.raises(ValueError, match="unknown kinds"):
        hetero.plan(0, "hetero", "pool", {"routine": 2, "ct": 1})


# --- determinism and exact labels ------------------------------------------------------------

def test_same_key_gives_identical_volumes_and_other_keys_other_ones(tpl, tmp_path):
    a = hetero.generate(0, "hetero", "pool", 3, tpl)
    b = hetero.generate(0, "hetero", "pool", 3, tpl)
    for x, y in [(a.image, b.image), (a.labels, b.labels), (a.tissue, b.tissue)]:
        assert np.array_equal(x, y)
    assert a.params == b.params
    synth.save_nifti(a.image, a.affine, tmp_path / "a.nii.gz")
    synth.save_nifti(b.image, b.affine, tmp_path / "b.nii.gz")
    assert (tmp_path / "a.nii.gz").read_bytes() == (tmp_path / "b.nii.gz").read_bytes()
    c = hetero.generate(0, "hetero_tune", "pool", 3, tpl)
    assert not np.array_equal(a.tissue, c.tissue)


def test_lattice_on_grid_matches_synths_spline(tpl):
    grid = synth.grid_for(tpl.anat, (2.0, 2.0, 2.0), ("R", "A", "S"))
    values, origin = hetero.random_lattice(tpl.anat, 24.0, 2, np.random.default_rng(1))
    fast = hetero.lattice_on_grid(values, origin, 24.0, grid)
    slow = synth.Lattice(origin, 24.0, values).evaluate(grid.world_points())
    assert np.abs(fast - slow).max() < 1e-5 * np.abs(slow).max()


@pytest.mark.parametrize("kind", list(hetero.KINDS))
def test_labels_are_the_tissue_maps_classes_and_the_image_is_rendered_from_them(tpl, kind):
    changes = dict(atrophy=True, wmh=True, tumour=True, skull=True)
    v = render(tpl, kind, **changes)
    assert v.labels.dtype == v.tissue.dtype == np.uint8 and v.image.dtype == np.int16
    assert v.labels.shape == v.tissue.shape == v.image.shape == (99, 117, 95)
    assert np.array_equal(v.labels, hetero.TISSUE_CLASS[v.tissue])
    assert set(np.unique(v.labels)) == {0, 1, 2, 3}
    assert set(np.unique(v.tissue)) == set(range(len(hetero.TISSUES)))
    # Without the artefacts, each tissue's interior has the mean the generator drew for it.
    clean = render(tpl, kind, skip=hetero.ARTEFACT_STEPS, **changes)
    assert np.array_equal(clean.tissue, v.tissue)
    drawn = clean.params["tissue_means"]
    for t in range(1, len(hetero.TISSUES)):
        if ndi.binary_erosion(clean.tissue == t, iterations=1).sum() > 20:
            assert tissue_mean(clean, t) == pytest.approx(drawn[t], rel=0.06), hetero.TISSUES[t]


# --- acquisition kinds -----------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(hetero.KINDS))
def test_contrast_order(tpl, kind):
    v = render(tpl, kind, wmh=True)
    m = {t: tissue_mean(v, t) for t in (CSF, GM, WM, hetero.WMH)}
    if kind == "pd":
        assert m[CSF] > m[GM] > m[WM] and m[hetero.WMH] > m[WM]
    elif kind == "flair":
        assert m[GM] > m[WM] > m[CSF] and m[CSF] < 0.35 * m[GM] and m[hetero.WMH] > 1.5 * m[WM]
    else:
        assert m[WM] > m[GM] > m[CSF] and m[hetero.WMH] < m[WM]


def hf_ratio(image, brain):
    """High-frequency energy along S-I relative to R-L, inside the brain."""
    def hf(axis):
        d = np.diff(image.astype(np.float64), axis=axis)
        keep = np.take(brain, range(1, brain.shape[axis]), axis=axis)
        return (d[keep] ** 2).mean()
    return hf(2) / hf(0)


def test_thick_slices_lose_high_frequencies_along_si_only(tpl):
    thick = render(tpl, "thick", skip=("noise",))
    flat = render(tpl, "thick", skip=("noise", "thick"))
    brain = ndi.binary_erosion(thick.labels > 0, iterations=2)
    assert 5.0 <= thick.params["slab_mm"] <= 6.5
    assert hf_ratio(thick.image, brain) < 0.5 * hf_ratio(flat.image, brain)


def test_motion_ghosts_the_head_along_the_phase_encode_axis(tpl):
    moved = render(tpl, "motion", skull=True, skip=("noise",))
    still = render(tpl, "motion", skull=True, skip=("noise", "motion"))
    head = ndi.binary_dilation(moved.tissue > 0, iterations=5)
    far = ~head  # air, where only ghosts put signal (noise is off)
    wm = tissue_mean(still, WM)
    assert still.image[far].mean() < 0.002 * wm
    assert moved.image[far].mean() > 0.02 * wm  # ghost energy in the air
    # Ghosts repeat the head along A-P: the air signal is correlated with the head shifted by
    # N / period voxels along axis 1, not along R-L.
    p = moved.params["ghost"]["period_lines"]
    shift = int(round(moved.image.shape[1] / p))
    ghost_ap = np.roll(still.image.astype(float), shift, axis=1)[far]
    ghost_rl = np.roll(still.image.astype(float), shift, axis=0)[far]
    air = moved.image[far].astype(float)
    assert np.corrcoef(air, ghost_ap)[0, 1] > np.corrcoef(air, ghost_rl)[0, 1] + 0.1


def noise_and_bias(tpl, kind):
    full = render(tpl, kind)
    no_noise = render(tpl, kind, skip=("noise",))
    flat = render(tpl, kind, skip=("noise", "bias"))
    wm = ndi.binary_erosion(full.tissue == WM, iterations=1)
    noise = (full.image.astype(float) - no_noise.image)[wm].std() / flat.image[wm].mean()
    bias = np.log(np.maximum(no_noise.image[wm], 1) / np.maximum(flat.image[wm], 1)).std()
    return noise, bias


def test_bias_noise_kind_has_strong_bias_and_noise_routine_mild(tpl):
    noise, bias = noise_and_bias(tpl, "bias_noise")
    assert 0.04 <= noise <= 0.12 and bias >= 0.12
    noise, bias = noise_and_bias(tpl, "routine")
    assert noise <= 0.035 and bias <= 0.1


def test_routine_shift_is_mild_and_recorded(tpl):
    v = render(tpl, "routine")
    assert 1.1 <= v.params["t1_shift"]["csf"] <= 1.5 and 1.0 <= v.params["t1_shift"]["gm"] <= 1.08
    assert "slab_mm" not in v.params and "ghost" not in v.params


# --- anatomy ---------------------------------------------------------------------------------

def test_atrophy_enlarges_ventricles_and_widens_sulci(tpl):
    old = render(tpl, "routine", atrophy=True, skip=hetero.ARTEFACT_STEPS)
    young = render(tpl, "routine", atrophy=True, skip=hetero.ARTEFACT_STEPS + ("atrophy",))
    count = lambda v, t: int((v.tissue == t).sum())  # noqa: E731
    assert count(old, CSF) > 1.3 * count(young, CSF)
    assert count(young, GM) > count(old, GM) > 0.6 * count(young, GM)
    assert count(old, WM) < count(young, WM)
    assert np.array_equal(old.tissue > 0, young.tissue > 0)  # the brain's outline stays
    # Only GM/WM turned into CSF: nothing else changed.
    changed = old.tissue != young.tissue
    assert (old.tissue[changed] == CSF).all() and np.isin(young.tissue[changed], [GM, WM]).all()


def test_wmh_are_labelled_white_matter(tpl):
    v = render(tpl, "flair", wmh=True)
    lesion = v.tissue == hetero.WMH
    assert lesion.sum() > 50
    assert (v.labels[lesion] == WM).all()
    base = render(tpl, "flair", wmh=True, skip=("wmh",))
    assert (base.tissue[lesion] == WM).all()  # lesions only replace white matter


def test_tumour_has_its_class_and_pushes_tissue_away(tpl):
    v = render(tpl, "pd", tumour=True)
    base = render(tpl, "pd", tumour=True, skip=("tumour",))
    core = v.tissue == hetero.TUMOUR
    r = v.params["tumour"]["radius_mm"]
    expected = 4 / 3 * np.pi * (r * v.params["head_scale"]) ** 3 / 8  # 2 mm voxels
    assert 0.6 * expected < core.sum() < 1.5 * expected
    assert (v.labels[core] == CSF).all()
    assert (v.tissue == hetero.OEDEMA).sum() > 0 and (v.labels[v.tissue == hetero.OEDEMA] == WM).all()
    # Mass effect: outside the tumour and its oedema, tissue moved (not just overwritten).
    lesion = ndi.binary_dilation(core | (v.tissue == hetero.OEDEMA), iterations=1)
    assert ((v.tissue != base.tissue) & ~lesion).sum() > 100


def test_skull_present_or_stripped(tpl):
    head = render(tpl, "routine", skull=True)
    assert (head.tissue == hetero.SKULL).sum() > 10_000 and (head.tissue == hetero.SCALP).sum() > 10_000
    assert (head.labels[head.tissue >= hetero.SKULL] == 0).all()
    assert tissue_mean(head, hetero.SCALP) > 3 * tissue_mean(head, hetero.SKULL)  # fat vs bone, T1
    stripped = render(tpl, "routine")
    outside = ~ndi.binary_dilation(stripped.labels > 0, iterations=1)
    assert (stripped.image[outside] == 0).all() and (stripped.tissue < hetero.SKULL).all()
    assert (head.image[outside] > 0).mean() > 0.5  # noise and scalp where the skull is kept


def test_head_size_varies(tpl):
    sizes = [(hetero.generate(0, "hetero", "test", i, tpl).labels > 0).sum() for i in range(3)]
    assert max(sizes) > 1.1 * min(sizes)


# --- the script ------------------------------------------------------------------------------

def test_make_hetero_data_writes_the_planned_volumes_deterministically(tpl, tmp_path):
    out = tmp_path / "h"
    counts = ["hetero.pool.motion=1", "hetero.pool.routine=1", "hetero.test.flair=1"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_hetero_data.py"), "--out", str(out),
         "--sites", "hetero", "--counts", *counts], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert "synthetic derivatives of real anatomy" in manifest["statement"]
    assert "Louis Collins" in (out / "NOTICE-synthetic-v1-README.md").read_text()
    assert [v["id"] for v in manifest["volumes"]] == ["hetero_pool_000", "hetero_pool_001", "hetero_test_000"]
    assert sorted(v["kind"] for v in manifest["volumes"][:2]) == ["motion", "routine"]
    for v in manifest["volumes"]:
        plan = hetero.plan(0, "hetero", v["split"], {"motion": 1, "routine": 1} if v["split"] == "pool" else {"flair": 1})
        entry = plan[int(v["id"][-3:])]
        again = hetero.render(tpl, v["seed_key"], entry)  # in another process: same bytes
        for key, array in (("image", again.image), ("label", again.labels), ("tissue", again.tissue)):
            assert np.array_equal(np.asarray(nib.load(out / v[key]).dataobj), array)
        assert v["kind"] == entry["kind"] and v["anatomy"] == {k: entry[k] for k in hetero.ANATOMY_SHARES}
    assert not list((out / "hetero" / "pool").glob("*label*")) and not list((out / "hetero" / "pool").glob("*tissue*"))
    # refuses to replace a folder it did not write
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("mine")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_hetero_data.py"), "--out",
                             str(foreign)], capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "not replacing" in result.stderr
