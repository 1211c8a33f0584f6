"""The synthetic data generator: real anatomy in, exact labels and the promised site shifts out."""
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from asfda_tools import anatomy, synth

ROOT = Path(__file__).resolve().parents[3]
SUBJECT_KEY = [7, 0, 0, 0]
SCAN_SEED = 11
T1_ORDER = (anatomy.WM, anatomy.GM, anatomy.CSF, anatomy.BACKGROUND)
PD_ORDER = (anatomy.CSF, anatomy.GM, anatomy.WM, anatomy.BACKGROUND)


@pytest.fixture(scope="module")
def anat():
    return anatomy.load_anatomy()


@pytest.fixture(scope="module")
def scans(anat):
    """One subject scanned at every site with the same scan seed: the tissue image before the
    site's artefacts is then identical, so site-to-site differences are the artefacts alone."""
    subject = synth.draw_subject(anat, synth.generators(SUBJECT_KEY)[0])
    return {
        name: synth.acquire(anat, subject, site, np.random.default_rng(SCAN_SEED))
        for name, site in synth.SITES.items()
    }


def class_means(volume):
    return np.array([volume.image[volume.labels == c].mean() for c in range(4)])


def interior(labels, cls):
    """Voxels of a class away from its boundary, where only noise and bias vary the intensity."""
    return ndi.binary_erosion(labels == cls, iterations=1)


def load(path):
    img = nib.load(path)
    return img, np.asarray(img.dataobj)


# --- real anatomy ----------------------------------------------------------------------------

def test_anatomy_reads_the_real_icbm152_files(anat):
    for kind in ("t1", "gm", "wm"):
        assert anatomy.template_path(kind).stat().st_size > 1_000_000
    assert anat.labels.shape == anat.t1.shape == (197, 233, 189)
    assert set(np.unique(anat.labels)) == {0, 1, 2, 3}
    csf, gm, wm = anatomy.label_fractions(anat.labels)
    assert 0.3 <= gm <= 0.6 and 0.3 <= wm <= 0.6
    assert 0.03 <= csf <= 0.25
    brain_litres = (anat.labels > 0).sum() / 1e6
    assert 1.2 < brain_litres < 2.2  # an adult brain plus its CSF, in litres


def test_t1_template_calibration_is_t1_like(anat):
    bg, csf, gm, wm = anatomy.t1_class_means(anat)
    assert wm > gm > csf > bg
    assert 0.55 < gm / wm < 0.9


# --- determinism -----------------------------------------------------------------------------

def test_same_key_gives_identical_arrays_and_bytes(anat, tmp_path):
    a = synth.generate(3, "bias_noise", "pool", 1, anat)
    b = synth.generate(3, "bias_noise", "pool", 1, anat)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.affine, b.affine) and a.params == b.params
    synth.save_nifti(a.image, a.affine, tmp_path / "a" / "x.nii.gz")
    synth.save_nifti(b.image, b.affine, tmp_path / "b" / "x.nii.gz")
    assert (tmp_path / "a" / "x.nii.gz").read_bytes() == (tmp_path / "b" / "x.nii.gz").read_bytes()


@pytest.mark.parametrize("key", [(4, "bias_noise", "pool", 1), (3, "bias_noise", "pool", 2),
                                 (3, "bias_noise", "test", 1)])
def test_other_keys_give_other_volumes(anat, key):
    ref = synth.generate(3, "bias_noise", "pool", 1, anat)
    other = synth.generate(*key, anat)
    assert not np.array_equal(ref.labels, other.labels)
    assert not np.array_equal(ref.image, other.image)


# --- exact labels and files ------------------------------------------------------------------

@pytest.mark.parametrize("site", list(synth.SITES))
def test_labels_are_exact_and_share_the_image_grid(scans, site, tmp_path):
    volume = scans[site]
    assert volume.labels.dtype == np.uint8 and volume.image.dtype == np.int16
    assert set(np.unique(volume.labels)) == {0, 1, 2, 3}
    synth.save_nifti(volume.image, volume.affine, tmp_path / "image.nii.gz")
    synth.save_nifti(volume.labels, volume.affine, tmp_path / "label.nii.gz")
    image, image_data = load(tmp_path / "image.nii.gz")
    label, label_data = load(tmp_path / "label.nii.gz")
    assert image_data.shape == label_data.shape == volume.labels.shape
    assert np.array_equal(label_data, volume.labels) and np.array_equal(image_data, volume.image)
    for img in (image, label):
        assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
        assert np.allclose(img.get_sform(), volume.affine)
        assert np.allclose(img.get_qform(), volume.affine)
    assert (tmp_path / "image.nii.gz").stat().st_size < 2_000_000


def test_thick_slice_operator_preserves_constants_and_averages_slabs():
    op = synth.thick_slice_operator(40, 2.0, 6.0, 1.0)
    assert np.allclose(op.sum(axis=1), 1.0)
    assert (op >= -1e-12).all()
    assert np.count_nonzero(op[20] > 1e-9) >= 3  # each voxel mixes at least a 6 mm slab


# --- the promised site shifts ----------------------------------------------------------------

@pytest.mark.parametrize("site", list(synth.SITES))
def test_contrast_order(scans, site):
    order = PD_ORDER if synth.SITES[site].contrast == "pd" else T1_ORDER
    means = class_means(scans[site])
    assert all(means[a] > means[b] for a, b in zip(order, order[1:])), means


def test_thick_site_loses_high_frequencies_along_the_slice_axis(scans):
    def hf_energy(volume, axis):
        brain = volume.labels > 0
        diff = np.diff(volume.image.astype(float), axis=axis)
        inside = np.take(brain, range(diff.shape[axis]), axis=axis)
        return (diff[inside] ** 2).mean()

    def anisotropy(volume):
        """Slice-axis over in-plane energy: slab averaging also smooths the in-plane noise
        texture, so only this ratio isolates the loss of resolution along the slice axis."""
        return hf_energy(volume, axis) / hf_energy(volume, (axis + 1) % 3)

    axis = synth.SITES["thick"].slab_axis
    assert hf_energy(scans["thick"], axis) < 0.5 * hf_energy(scans["t1"], axis)
    assert anisotropy(scans["thick"]) < 0.6 * anisotropy(scans["t1"])


def test_bias_noise_site_is_noisier(scans):
    def wm_variation(volume):
        values = volume.image[interior(volume.labels, anatomy.WM)].astype(float)
        return values.std() / values.mean()

    assert wm_variation(scans["bias_noise"]) > 1.5 * wm_variation(scans["t1"])
    background = scans["t1"].labels == 0
    assert scans["bias_noise"].image[background].std() > 5 * scans["t1"].image[background].std()


def test_spacing_orient_reorients_to_the_same_anatomy(scans, tmp_path):
    ref, moved = scans["t1"], scans["spacing_orient"]
    assert nib.aff2axcodes(moved.affine) == ("L", "S", "P")
    synth.save_nifti(moved.labels, moved.affine, tmp_path / "label.nii.gz")
    canonical = nib.as_closest_canonical(nib.load(tmp_path / "label.nii.gz"))
    assert nib.aff2axcodes(canonical.affine) == ("R", "A", "S")
    assert np.allclose(canonical.header.get_zooms(), (1.2, 2.5, 1.2))
    labels = np.asarray(canonical.dataobj)

    def class_volumes(lab, affine):
        return np.bincount(lab.ravel(), minlength=4)[1:] * abs(np.linalg.det(affine[:3, :3]))

    ratio = class_volumes(labels, canonical.affine) / class_volumes(ref.labels, ref.affine)
    assert np.all(np.abs(ratio - 1) < 0.3), ratio
    # Sample the reoriented labels at the source grid's voxel centres, through both affines:
    # a wrong flip or permutation would put GM/WM in the wrong place (Dice ~0.5).
    world = synth.Grid(ref.labels.shape, ref.affine).world_points()
    inv = np.linalg.inv(canonical.affine)
    vox = np.tensordot(inv[:3, :3], world, axes=1) + inv[:3, 3, None, None, None]
    sampled = ndi.map_coordinates(labels, vox, order=0)
    for cls in (anatomy.GM, anatomy.WM):
        a, b = sampled == cls, ref.labels == cls
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.85


# --- the CLI ---------------------------------------------------------------------------------

SMALL_COUNTS = ["t1.train=1", "t1.test=0", "pd.pool=1", "pd.test=1", "thick.pool=0",
                "thick.test=0", "bias_noise.pool=0", "bias_noise.test=0",
                "spacing_orient.pool=0", "spacing_orient.test=0"]


def make_data(out, *extra):
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_data.py"), "--out", str(out), *extra],
        capture_output=True, text=True, check=False)


def test_make_data_writes_a_deterministic_manifested_set(tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    for out in runs:
        result = make_data(out, "--seed", "5", "--counts", *SMALL_COUNTS)
        assert result.returncode == 0, result.stderr
    manifest = json.loads((runs[0] / "manifest.json").read_text())
    assert "synthetic derivatives of real anatomy" in manifest["statement"]
    assert "Louis Collins" in (runs[0] / "README.md").read_text()  # the MNI notice travels
    assert [v["id"] for v in manifest["volumes"]] == ["t1_train_000", "pd_pool_000", "pd_test_000"]
    for entry in manifest["volumes"]:
        for key in ("image", "label"):
            assert (runs[0] / entry[key]).read_bytes() == (runs[1] / entry[key]).read_bytes()
        img, data = load(runs[0] / entry["image"])
        assert list(data.shape) == entry["dims"] and np.allclose(img.affine, entry["affine"])
        assert entry["seed_key"][0] == 5
    pool = next(v for v in manifest["volumes"] if v["split"] == "pool")
    assert pool["label"].startswith("pd/pool_labels/")
    assert not list((runs[0] / "pd" / "pool").glob("*label*"))


def test_make_data_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("not generated data")
    result = make_data(tmp_path, "--counts", *SMALL_COUNTS)
    assert result.returncode != 0 and "not replacing" in result.stderr
    assert (tmp_path / "mine.txt").exists()
