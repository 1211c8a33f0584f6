"""Real anatomy for the synthetic data: the ICBM152 2009a template shipped in the nilearn wheel.

The files are read from nilearn's package folder without importing nilearn (it is installed
without its dependencies, only for these files). From the grey/white-matter probability maps we
derive a 4-class label map at 1 mm:

    0 background, 1 CSF/other (inside the brain mask, neither GM nor WM), 2 GM, 3 WM

GM is ``p_gm > 0.5 and p_gm >= p_wm``; WM is ``p_wm > 0.5`` and not GM. The brain mask is
``gaussian(p_gm + p_wm, sigma=2 mm) > 0.3``, closed (2 iterations, 6-connectivity), hole-filled,
and reduced to its largest connected component. Smoothing before thresholding bridges the thin
sulcal CSF between gyri, hole filling adds the ventricles, and the 0.3 threshold makes the mask
match the extent of MNI's own skull-stripped T1 (they differ by 0.3% of the mask's volume
outside it and 1.2% inside it). The T1 template is returned too: the source-site contrast is
calibrated on it.
"""
from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

BACKGROUND, CSF, GM, WM = 0, 1, 2, 3
CLASS_NAMES = ("background", "csf", "gm", "wm")
TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"

MASK_SIGMA_MM = 2.0
MASK_THRESHOLD = 0.3
PURE_TISSUE = 0.9
LABEL_RULE = (
    "0 background; 1 CSF/other: inside the brain mask, neither GM nor WM; 2 GM: p_gm > 0.5 and "
    "p_gm >= p_wm; 3 WM: p_wm > 0.5 and not GM (ICBM152 2009a probability maps, 1 mm)."
)
MASK_RULE = (
    f"brain mask: gaussian(p_gm + p_wm, sigma={MASK_SIGMA_MM} mm) > {MASK_THRESHOLD}, closed "
    "(2 iterations, 6-connectivity), holes filled, largest connected component."
)


@dataclass(frozen=True)
class Anatomy:
    """The real template on its 1 mm RAS grid: labels, T1 in [0, 1], and their shared affine."""

    labels: np.ndarray  # uint8, values in {0, 1, 2, 3}
    t1: np.ndarray  # float32 in [0, 1]
    affine: np.ndarray  # 4x4 voxel -> RAS mm, identical for every template file
    pure: np.ndarray  # bool (4, *shape): voxels of one tissue only, for contrast calibration

    def fov_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """World (RAS mm) coordinates of the first and last voxel centres, axis by axis."""
        corners = np.array([[0, 0, 0], np.array(self.labels.shape) - 1], dtype=float)
        world = nib.affines.apply_affine(self.affine, corners)
        return world.min(axis=0), world.max(axis=0)

    def brain_centre_mm(self) -> np.ndarray:
        """Centroid of the brain mask in RAS mm: the centre of the random affine transforms."""
        vox = np.array(ndi.center_of_mass(self.labels > 0))
        return nib.affines.apply_affine(self.affine, vox)


def template_dir() -> Path:
    """nilearn's data folder, found without importing nilearn."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.origin:
        raise FileNotFoundError("nilearn is not installed: run `make venv` (nilearn, --no-deps)")
    return Path(spec.origin).parent / "datasets" / "data"


def template_path(kind: str) -> Path:
    """Path of one ICBM152 2009a file: kind is 't1', 'gm' or 'wm'."""
    path = template_dir() / TEMPLATE.format(kind)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall nilearn==0.14.1")
    return path


def _read(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """One template as float32 in [0, 1] (the files are uint8 0..255) and its affine."""
    img = nib.load(template_path(kind))
    return np.asarray(img.dataobj, dtype=np.float32) / 255.0, img.affine


def brain_mask(p_gm: np.ndarray, p_wm: np.ndarray) -> np.ndarray:
    """Brain mask from the tissue maps (see the module docstring for why each step)."""
    mask = ndi.gaussian_filter(p_gm + p_wm, MASK_SIGMA_MM) > MASK_THRESHOLD
    mask = ndi.binary_closing(mask, ndi.generate_binary_structure(3, 1), iterations=2)
    mask = ndi.binary_fill_holes(mask)
    components, _ = ndi.label(mask)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == sizes.argmax()


def label_map(p_gm: np.ndarray, p_wm: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The 4-class label map; GM and WM are never dropped, even outside the mask."""
    gm = (p_gm > 0.5) & (p_gm >= p_wm)
    wm = (p_wm > 0.5) & ~gm
    labels = np.where(mask, CSF, BACKGROUND).astype(np.uint8)
    labels[gm] = GM
    labels[wm] = WM
    return labels


def pure_tissue(p_gm: np.ndarray, p_wm: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Voxels of a single tissue: the generator adds partial volume itself, so calibrating on
    mixed voxels would count it twice."""
    other = 1.0 - p_gm - p_wm
    return np.stack([
        labels == BACKGROUND,
        (labels == CSF) & (other > PURE_TISSUE),
        (labels == GM) & (p_gm > PURE_TISSUE),
        (labels == WM) & (p_wm > PURE_TISSUE),
    ])


@functools.lru_cache(maxsize=1)
def load_anatomy() -> Anatomy:
    """Read the three templates once per process and derive the labels (about 4 s)."""
    t1, affine = _read("t1")
    p_gm, gm_affine = _read("gm")
    p_wm, wm_affine = _read("wm")
    if not (np.allclose(affine, gm_affine) and np.allclose(affine, wm_affine)):
        raise ValueError("the ICBM152 T1/GM/WM files do not share one grid")
    mask = brain_mask(p_gm, p_wm)
    labels = label_map(p_gm, p_wm, mask)
    return Anatomy(labels=labels, t1=t1, affine=affine, pure=pure_tissue(p_gm, p_wm, labels))


def t1_class_means(anat: Anatomy) -> np.ndarray:
    """Median T1 template intensity of pure background, CSF, GM and WM, in [0, 1]."""
    return np.array([np.median(anat.t1[m]) for m in anat.pure], dtype=np.float64)


def label_fractions(labels: np.ndarray) -> np.ndarray:
    """Fraction of the brain (labels > 0) taken by CSF, GM and WM."""
    counts = np.bincount(labels.ravel(), minlength=4)[1:4].astype(float)
    return counts / counts.sum()
