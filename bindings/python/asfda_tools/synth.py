"""Deterministic synthetic subjects and simulated scanner sites from real ICBM152 anatomy.

Subjects are SynthSeg-style: the real 1 mm label map (``anatomy.load_anatomy``) is warped by a
random affine (rotation, anisotropic scaling about the brain centre) plus a smooth random
displacement field, and sampled with nearest neighbour at the voxel centres of the output grid,
so every image comes with an exact label map on its own grid. A *site* then turns labels into an
image: a per-subject Gaussian intensity draw per label around the site's contrast profile, a
voxel-sized partial-volume blur, and the site's acquisition artefacts. Everything is drawn from
``numpy.random.Generator`` objects seeded from ``(seed, site, split, index)``; the same key gives
bit-identical arrays. Subjects are synthetic derivatives of real anatomy; shifts are simulated.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from .anatomy import BACKGROUND, WM, Anatomy, load_anatomy, t1_class_means

GENERATOR = "asfda_tools.synth v1"
STATEMENT = (
    "Subjects are synthetic derivatives of real anatomy (ICBM152 2009a GM/WM maps, nilearn 0.14.1 "
    "wheel): random smooth deformations of the real label map with per-label intensity draws. "
    "Scanner sites and their domain shifts are simulated. Labels are exact by construction."
)
SPLIT_IDS = {"train": 0, "test": 1, "pool": 2}

SCANNER_SCALE = 1000.0  # intensity units: the template T1 value 1.0 maps to 1000
DEFORM_LATTICE_MM = 24.0  # control-point spacing of the smooth displacement field
DEFORM_MAX_MM = (1.5, 4.0)  # largest control-point displacement, drawn per subject
ROTATION_MAX_DEG = 10.0
SCALE_MAX = 0.08
GAIN = (0.85, 1.15)  # per-subject global intensity scaling (scanner gain)
CLASS_MEAN_JITTER = 0.03  # per-subject relative s.d. of each class mean
CLASS_REL_STD = (0.03, 0.08)  # per-subject within-class s.d., relative to the class mean
PV_SIGMA_VOXELS = (0.3, 0.5)  # ~ the s.d. of a voxel's box profile (1/sqrt(12) = 0.29)
BIAS_LATTICE_MM = 64.0

# Class means (background, CSF, GM, WM) in scanner units. 't1' is calibrated at run time on the
# real T1 template (pure-tissue medians x SCANNER_SCALE); 'pd' is a PD/T2-like profile: CSF
# brightest, GM > WM, with GM/CSF and WM/CSF ratios between typical PD and T2 weighting.
PD_MEANS = (0.0, 1000.0, 720.0, 560.0)


@dataclass(frozen=True)
class Site:
    """A simulated scanner: contrast, grid and acquisition artefacts, ranges drawn per volume."""

    name: str
    description: str
    contrast: str = "t1"  # 't1' or 'pd'
    spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)  # mm, in array-axis order
    axcodes: tuple[str, str, str] = ("R", "A", "S")  # direction of each array axis
    slab_mm: tuple[float, float] | None = None  # thick-slice thickness range
    slab_axis: int = 2  # array axis of the thick slices
    bias_log_std: tuple[float, float] | None = None  # s.d. of the log bias field at control points
    noise_rel: tuple[float, float] | None = None  # Rician sigma relative to the WM mean


SITES = {
    s.name: s
    for s in (
        Site("t1", "Source site: T1-like contrast calibrated on the real ICBM152 T1 template "
             "(WM > GM > CSF > background), 2 mm isotropic RAS, no artefacts."),
        Site("pd", "Demo target: PD/T2-like contrast (CSF > GM > WM > background), otherwise as "
             "the source (2 mm isotropic RAS, no artefacts).", contrast="pd"),
        Site("thick", "Target: source contrast acquired with thick axial slices: slab average "
             "over 5.0-6.5 mm (drawn per volume, random slab offset) along the S-I axis, "
             "linearly resampled back to the 2 mm RAS grid.", slab_mm=(5.0, 6.5)),
        Site("bias_noise", "Target: source contrast with a smooth multiplicative bias field "
             "(exp of a cubic-spline field, control points every 64 mm, log s.d. 0.10-0.25) and "
             "Rician noise (sigma 3-6% of the WM mean), 2 mm isotropic RAS.",
             bias_log_std=(0.10, 0.25), noise_rel=(0.03, 0.06)),
        Site("spacing_orient", "Target: source contrast on a coronal grid of 1.2 x 1.2 x 2.5 mm "
             "voxels stored with axis codes L, S, P (axis-permuted and flipped; the affine is "
             "exact, so reorienting to RAS recovers the anatomy).",
             spacing=(1.2, 1.2, 2.5), axcodes=("L", "S", "P")),
    )
}
SITE_IDS = {name: i for i, name in enumerate(SITES)}


@dataclass(frozen=True)
class Grid:
    """Voxel grid of one output volume: shape and voxel -> RAS mm affine."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    def world_points(self) -> np.ndarray:
        """RAS mm coordinates of every voxel centre, shape (3, *shape)."""
        vox = np.indices(self.shape, dtype=np.float64)
        return np.tensordot(self.affine[:3, :3], vox, axes=1) + self.affine[:3, 3, None, None, None]


@dataclass(frozen=True)
class Lattice:
    """Regular control-point lattice in RAS mm, for smooth random fields (cubic B-spline)."""

    origin: np.ndarray
    spacing_mm: float
    values: np.ndarray  # (channels, nx, ny, nz)

    def evaluate(self, world: np.ndarray) -> np.ndarray:
        """Interpolate every channel at world points (3, ...), clamped outside the lattice."""
        coords = (world - self.origin[:, None, None, None]) / self.spacing_mm
        return np.stack([
            ndi.map_coordinates(v, coords, order=3, mode="nearest") for v in self.values
        ])


@dataclass(frozen=True)
class Subject:
    """One synthetic subject: the map from its RAS mm space to the template's."""

    centre: np.ndarray
    matrix: np.ndarray  # 3x3 rotation @ scaling, applied about `centre`
    displacement: Lattice  # mm, 3 channels
    params: dict = field(default_factory=dict)

    def to_template(self, world: np.ndarray) -> np.ndarray:
        """Template RAS mm of subject points (3, ...): affine about the centre plus the warp."""
        rel = world - self.centre[:, None, None, None]
        moved = np.tensordot(self.matrix, rel, axes=1) + self.centre[:, None, None, None]
        return moved + self.displacement.evaluate(world)


@dataclass(frozen=True)
class Volume:
    """One generated scan: int16 image and uint8 labels on the same grid."""

    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    site: str
    params: dict


def grid_for(anat: Anatomy, spacing, axcodes) -> Grid:
    """A grid covering the template's field of view with the given spacing and axis codes."""
    lo, hi = anat.fov_mm()
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    shape = []
    for axis, (code, step) in enumerate(zip(axcodes, spacing)):
        world_axis, sign = ("RAS".index(code), 1.0) if code in "RAS" else ("LPI".index(code), -1.0)
        affine[world_axis, axis] = sign * step
        affine[world_axis, 3] = lo[world_axis] if sign > 0 else hi[world_axis]
        shape.append(int(np.floor((hi[world_axis] - lo[world_axis]) / step + 1e-9)) + 1)
    return Grid(tuple(shape), affine)


def random_lattice(anat: Anatomy, spacing_mm: float, channels: int, rng) -> Lattice:
    """Standard-normal control values on a lattice covering the template's field of view."""
    lo, hi = anat.fov_mm()
    counts = np.ceil((hi - lo) / spacing_mm).astype(int) + 1
    return Lattice(lo, spacing_mm, rng.standard_normal((channels, *counts)))


def rotation_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """Rotation about x, then y, then z."""
    cx, cy, cz = np.cos(np.radians(angles_deg))
    sx, sy, sz = np.sin(np.radians(angles_deg))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def draw_subject(anat: Anatomy, rng: np.random.Generator) -> Subject:
    """A random affine (rotation up to 10 deg per axis, scaling +-8% per axis) and a smooth
    warp whose largest control-point displacement is 1.5-4 mm."""
    angles = rng.uniform(-ROTATION_MAX_DEG, ROTATION_MAX_DEG, 3)
    scales = rng.uniform(1 - SCALE_MAX, 1 + SCALE_MAX, 3)
    lattice = random_lattice(anat, DEFORM_LATTICE_MM, 3, rng)
    max_disp = rng.uniform(*DEFORM_MAX_MM)
    peak = np.sqrt((lattice.values**2).sum(axis=0)).max()
    warp = Lattice(lattice.origin, lattice.spacing_mm, lattice.values * (max_disp / peak))
    params = {"rotation_deg": angles.round(3).tolist(), "scale": scales.round(4).tolist(),
              "max_displacement_mm": round(float(max_disp), 3)}
    return Subject(anat.brain_centre_mm(), rotation_matrix(angles) @ np.diag(scales), warp, params)


def subject_labels(anat: Anatomy, subject: Subject, grid: Grid) -> np.ndarray:
    """The subject's labels at the grid's voxel centres (nearest neighbour: exact labels)."""
    template_mm = subject.to_template(grid.world_points())
    inv = np.linalg.inv(anat.affine)
    vox = np.tensordot(inv[:3, :3], template_mm, axes=1) + inv[:3, 3, None, None, None]
    return ndi.map_coordinates(anat.labels, vox, order=0, mode="constant", cval=BACKGROUND)


def contrast_means(anat: Anatomy, contrast: str) -> np.ndarray:
    """Class means (background, CSF, GM, WM) of a site's contrast profile, scanner units."""
    if contrast == "t1":
        return t1_class_means(anat) * SCANNER_SCALE
    if contrast == "pd":
        return np.array(PD_MEANS)
    raise ValueError(f"unknown contrast {contrast!r} (expected 't1' or 'pd')")


def tissue_image(labels: np.ndarray, profile: np.ndarray, rng, params: dict):
    """Per-label Gaussian intensities (a per-subject gain, class-mean jitter and class s.d.);
    returns the image and the class means drawn, which scale the site's noise."""
    gain = rng.uniform(*GAIN)
    means = profile * gain * (1 + CLASS_MEAN_JITTER * rng.standard_normal(4))
    stds = means * rng.uniform(*CLASS_REL_STD, 4)
    params.update(gain=round(float(gain), 4), class_means=means.round(2).tolist())
    noise = rng.standard_normal(labels.shape, dtype=np.float32)
    return (means[labels] + stds[labels] * noise).astype(np.float32), means


def partial_volume(image: np.ndarray, rng, params: dict) -> np.ndarray:
    """Blur by about one voxel's box profile: labels are point samples, real voxels average."""
    sigma = rng.uniform(*PV_SIGMA_VOXELS)
    params["pv_sigma_voxels"] = round(float(sigma), 4)
    return ndi.gaussian_filter(image, sigma, mode="constant")


def thick_slice_operator(n: int, voxel_mm: float, thickness_mm: float, offset_mm: float):
    """(n, n) matrix: average over contiguous slabs of `thickness_mm` starting at `offset_mm`
    (box profile, exact voxel overlaps), then linear interpolation back to the voxel centres."""
    edges = np.arange(n + 1) * voxel_mm  # voxel j spans edges[j]..edges[j + 1]
    slab_edges = np.arange(offset_mm - thickness_mm, n * voxel_mm + thickness_mm, thickness_mm)
    lo = np.maximum(slab_edges[:-1, None], edges[None, :-1])
    hi = np.minimum(slab_edges[1:, None], edges[None, 1:])
    average = np.clip(hi - lo, 0, None)
    keep = average.sum(axis=1) > 0
    average = average[keep] / average[keep].sum(axis=1, keepdims=True)
    slab_centres = ((slab_edges[:-1] + slab_edges[1:]) / 2)[keep]
    voxel_centres = (edges[:-1] + edges[1:]) / 2
    unit = np.eye(len(slab_centres))
    interp = np.stack([np.interp(voxel_centres, slab_centres, row) for row in unit], axis=1)
    return interp @ average


def thick_slices(image: np.ndarray, site: Site, rng, params: dict) -> np.ndarray:
    """Simulate a thick-slice acquisition along `site.slab_axis`, resampled back to the grid."""
    thickness = rng.uniform(*site.slab_mm)
    offset = rng.uniform(0, thickness)
    params.update(slab_mm=round(float(thickness), 3), slab_offset_mm=round(float(offset), 3))
    axis = site.slab_axis
    op = thick_slice_operator(image.shape[axis], site.spacing[axis], thickness, offset)
    moved = np.moveaxis(image, axis, -1) @ op.T.astype(np.float32)
    return np.moveaxis(moved, -1, axis)


def bias_field(anat: Anatomy, grid: Grid, site: Site, rng, params: dict) -> np.ndarray:
    """Smooth multiplicative field exp(f), f a cubic spline of N(0, s) control values."""
    strength = rng.uniform(*site.bias_log_std)
    params["bias_log_std"] = round(float(strength), 4)
    lattice = random_lattice(anat, BIAS_LATTICE_MM, 1, rng)
    log_field = lattice.evaluate(grid.world_points())[0] * strength
    return np.exp(log_field).astype(np.float32)


def rician_noise(image: np.ndarray, wm_mean: float, site: Site, rng, params: dict) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise (Rician; Rayleigh in the background)."""
    rel = rng.uniform(*site.noise_rel)
    params["noise_rel"] = round(float(rel), 4)
    sigma = np.float32(rel * wm_mean)
    real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.hypot(real, imag)


def acquire(anat: Anatomy, subject: Subject, site: Site, rng: np.random.Generator) -> Volume:
    """Scan a subject at a site: exact labels, then the image with the site's artefacts."""
    grid = grid_for(anat, site.spacing, site.axcodes)
    labels = subject_labels(anat, subject, grid).astype(np.uint8)
    params = dict(subject.params)
    image, means = tissue_image(labels, contrast_means(anat, site.contrast), rng, params)
    image = partial_volume(image, rng, params)
    if site.slab_mm:
        image = thick_slices(image, site, rng, params)
    if site.bias_log_std:
        image = image * bias_field(anat, grid, site, rng, params)
    if site.noise_rel:
        image = rician_noise(image, means[WM], site, rng, params)
    pixels = np.clip(np.rint(image), 0, np.iinfo(np.int16).max).astype(np.int16)
    return Volume(pixels, labels, grid.affine, site.name, params)


def seed_key(seed: int, site: str, split: str, index: int) -> list[int]:
    """The entropy of one volume's generators: distinct volumes never share a stream."""
    return [seed, SITE_IDS[site], SPLIT_IDS[split], index]


def generators(key) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent (subject, scan) generators: the same subject can be scanned at any site."""
    subject_seq, scan_seq = np.random.SeedSequence(key).spawn(2)
    return np.random.default_rng(subject_seq), np.random.default_rng(scan_seq)


def generate(seed: int, site: str, split: str, index: int, anat: Anatomy | None = None) -> Volume:
    """One volume, fully determined by (seed, site, split, index)."""
    anat = load_anatomy() if anat is None else anat
    subject_rng, scan_rng = generators(seed_key(seed, site, split, index))
    return acquire(anat, draw_subject(anat, subject_rng), SITES[site], scan_rng)


def nifti(array: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """NIfTI-1 image, unscaled, with sform and qform both set to the affine (code 1)."""
    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    img.header.set_slope_inter(1.0, 0.0)
    img.header.set_xyzt_units("mm")
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    return img


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write .nii.gz with gzip level 6 and mtime 0, so equal arrays give equal bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(nifti(array, affine).to_bytes(), compresslevel=6, mtime=0))
