"""A heterogeneous target hospital: many acquisition kinds in unequal shares, varied anatomy.

The synthetic-v1 sites (``synth``) each apply one protocol to deformations of one template, so
every volume of a site teaches about the same thing. This module builds one *hospital* whose
pools mix acquisition **kinds** (``KINDS``: a routine T1 protocol with a mild shift, PD/T2-like,
thick slices, strong bias and noise, and rare motion ghosting and FLAIR-like volumes) over
subjects with **anatomical variety** on top of the SynthSeg-style deformation of the real
ICBM152 label map: atrophy (enlarged ventricles, widened sulci), white-matter hyperintensities,
a tumour with mass effect, head size, and skull present or stripped.

Tissues and labels. Every volume is rendered from a *tissue map* (``TISSUES``: background, CSF,
GM, WM, WMH, tumour, oedema, skull, scalp) and its label map is ``TISSUE_CLASS[tissue]``, so
labels are exact by construction. The label map uses the demo model's four classes
(background, CSF/other, GM, WM), because the library's fine-tuning and Dice accept only class
indices in annotations (``FineTuner::add_labeled`` and ``evaluate`` refuse any other value, the
ignore label included). Lesions therefore get the class of the tissue they are:

* WMH (white-matter hyperintensity) -> WM: it is white matter, as SynthSeg and FreeSurfer's
  tissue classes count it; its intensity differs (T1 hypo-, PD/T2 and FLAIR hyperintense).
* tumour -> CSF/other: the model's class 1 is "inside the brain, neither GM nor WM".
* oedema (WM within a rim around the tumour) -> WM: it is oedematous white matter.
* skull and scalp -> background: outside the brain, like everything the model calls background.

The tissue maps are written beside the labels (``<id>_tissue.nii.gz``), so a lesion-aware
evaluation (or an ignore label, once the library accepts one in annotations) needs no new data.

Determinism: every random draw of a volume comes from its own ``SeedSequence(key)`` spawned into
one generator per step (``STEPS``), so the same key gives bit-identical arrays, and a step can be
skipped (``skip=``) without changing any other step's draws: the tests compare each kind and
anatomical change against the same volume without it. Which kind and anatomy each volume of a
split gets is fixed by ``plan`` (exact shares, shuffled by the split's own seed).

Subjects are synthetic derivatives of real anatomy; the acquisition kinds and lesions are
simulated.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .anatomy import BACKGROUND, CSF, GM, WM, Anatomy, load_anatomy, t1_class_means
from .synth import (
    CLASS_MEAN_JITTER, CLASS_REL_STD, DEFORM_LATTICE_MM, DEFORM_MAX_MM, GAIN, PV_SIGMA_VOXELS,
    ROTATION_MAX_DEG, SCALE_MAX, SCANNER_SCALE, Grid, grid_for, rotation_matrix,
    thick_slice_operator,
)

GENERATOR = "asfda_tools.hetero v1"
STATEMENT = (
    "Subjects are synthetic derivatives of real anatomy (ICBM152 2009a GM/WM maps, nilearn 0.14.1 "
    "wheel): random smooth deformations of the real label map with simulated atrophy, white-matter "
    "hyperintensities, tumours with mass effect, head sizes and skulls. The acquisition kinds and "
    "their domain shifts are simulated. Labels are exact by construction."
)

TISSUES = ("background", "csf", "gm", "wm", "wmh", "tumour", "oedema", "skull", "scalp")
WMH, TUMOUR, OEDEMA, SKULL, SCALP = 4, 5, 6, 7, 8
TISSUE_CLASS = np.array([BACKGROUND, CSF, GM, WM, WM, CSF, WM, BACKGROUND, BACKGROUND], np.uint8)
LESION_RULE = (
    "labels use the model's classes 0 background, 1 CSF/other, 2 GM, 3 WM; tissues map to them as "
    "WMH -> 3 WM, tumour -> 1 CSF/other (inside the brain, neither GM nor WM), oedema -> 3 WM, "
    "skull and scalp -> 0 background. The tissue map (<id>_tissue.nii.gz) keeps the lesions apart."
)

# One generator per step; skipping a step leaves every other step's draws unchanged.
STEPS = ("subject", "atrophy", "wmh", "tumour", "skull", "intensity", "pv", "thick", "bias",
         "motion", "noise", "plan")
ANATOMY_STEPS = ("atrophy", "wmh", "tumour", "skull")
ARTEFACT_STEPS = ("thick", "bias", "motion", "noise")

HEAD_SCALE = (0.9, 1.1)  # overall head size (subject / template), on top of synth's per-axis scaling
BIAS_LATTICE_MM = 64.0


@dataclass(frozen=True)
class Kind:
    """An acquisition kind: contrast, and the range of each artefact drawn per volume."""

    name: str
    description: str
    contrast: str  # 't1', 'pd' or 'flair'
    bias_log_std: tuple[float, float] = (0.03, 0.08)
    noise_rel: tuple[float, float] = (0.01, 0.025)  # Rician sigma relative to the WM mean
    slab_mm: tuple[float, float] | None = None  # thick slices along the S-I axis
    ghost: bool = False  # periodic motion: k-space lines of the A-P (phase-encode) axis shifted


KINDS = {
    k.name: k
    for k in (
        Kind("routine", "The hospital's routine T1 protocol: the source contrast with a mild "
             "shift (CSF x1.1-1.5, GM x1.0-1.08, so less GM/WM contrast), mild bias (log s.d. "
             "0.03-0.08) and Rician noise (1-2.5% of WM).", "t1"),
        Kind("pd", "PD/T2-like contrast (CSF > GM > WM; WMH, tumour and oedema bright), mild "
             "bias and noise.", "pd"),
        Kind("thick", "The routine protocol acquired with thick axial slices: slab average over "
             "5.0-6.5 mm along S-I, resampled back to the 2 mm grid.", "t1", slab_mm=(5.0, 6.5)),
        Kind("bias_noise", "The routine protocol on an older scanner: strong bias field (log s.d. "
             "0.20-0.35) and Rician noise (5-9% of WM).", "t1", bias_log_std=(0.20, 0.35),
             noise_rel=(0.05, 0.09)),
        Kind("motion", "The routine protocol with periodic motion: every 3rd-6th phase-encode "
             "(A-P) line of k-space shifted by 3-8 mm, which ghosts the head along A-P.", "t1",
             ghost=True),
        Kind("flair", "FLAIR-like contrast: CSF nulled (darkest tissue), GM > WM, WMH, tumour and "
             "oedema brightest; mild bias and noise.", "flair"),
    )
}

# Tissue means (scanner units) of the non-T1 contrasts, in TISSUES order. The T1 profile is
# calibrated on the real template (see `contrast_profile`).
PD_PROFILE = (0.0, 1000.0, 720.0, 560.0, 860.0, 900.0, 820.0, 90.0, 620.0)
FLAIR_PROFILE = (0.0, 130.0, 720.0, 560.0, 1150.0, 980.0, 1050.0, 80.0, 600.0)

# Sites of the heterogeneous data set: the evaluation hospital and a tuning hospital made with
# other seeds and other shares. Counts per (split, kind).
SITES = {
    "hetero": {
        "pool": {"routine": 20, "pd": 6, "thick": 5, "bias_noise": 5, "motion": 2, "flair": 2},
        "test": {"routine": 6, "pd": 3, "thick": 3, "bias_noise": 2, "motion": 2, "flair": 2},
    },
    "hetero_tune": {
        "pool": {"routine": 12, "pd": 6, "thick": 4, "bias_noise": 4, "motion": 3, "flair": 3},
        "test": {"routine": 4, "pd": 2, "thick": 2, "bias_noise": 2, "motion": 1, "flair": 1},
    },
}
SITE_IDS = {"hetero": 100, "hetero_tune": 101}  # synth's sites use 0..4
SPLIT_IDS = {"test": 1, "pool": 2}
# Shares of the anatomical changes within each split (exact counts, round(share * n), at least 1).
ANATOMY_SHARES = {"atrophy": 0.3, "wmh": 0.3, "tumour": 0.1, "skull": 0.5}


# --- the template's precomputed geometry ------------------------------------------------------

@dataclass(frozen=True)
class Template:
    """The real anatomy plus the distance maps the anatomical changes threshold (mm, 1 mm grid)."""

    anat: Anatomy
    dist_inside: np.ndarray  # float32: distance of brain-mask voxels to the outside (0 outside)
    dist_outside: np.ndarray  # float32: distance of outside voxels to the brain mask (0 inside)
    ventricles: np.ndarray  # bool: the lateral ventricles (deep CSF)
    dist_ventricle: np.ndarray  # float32: distance to the ventricles (capped at VENTRICLE_REACH)
    dist_sulcal_csf: np.ndarray  # float32: distance to sulcal CSF (capped)
    wm_periventricular: np.ndarray  # flat indices of WM within 12 mm of the ventricles
    wm_deep: np.ndarray  # flat indices of WM at least 22 mm inside the brain


VENTRICLE_DEPTH_MM = 12.0  # CSF this deep in the brain mask (and in large components) is ventricle
VENTRICLE_REACH = 20.0
SULCAL_REACH = 4.0


def _capped_edt(mask_of_zero: np.ndarray, margin: int, cap: float) -> np.ndarray:
    """Distance to the True voxels of `mask_of_zero`, computed in their bounding box plus
    `margin` voxels and capped at `cap` elsewhere (the callers threshold below the cap)."""
    out = np.full(mask_of_zero.shape, cap, np.float32)
    idx = np.argwhere(mask_of_zero)
    lo = np.maximum(idx.min(axis=0) - margin, 0)
    hi = np.minimum(idx.max(axis=0) + margin + 1, mask_of_zero.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    out[box] = np.minimum(ndi.distance_transform_edt(~mask_of_zero[box]), cap)
    return out


@functools.lru_cache(maxsize=1)
def load_template() -> Template:
    """The anatomy and its distance maps, once per process (about 10 s on 2 cores)."""
    anat = load_anatomy()
    mask = anat.labels > 0
    dist_inside = ndi.distance_transform_edt(mask).astype(np.float32)
    dist_outside = ndi.distance_transform_edt(~mask).astype(np.float32)
    deep = (anat.labels == CSF) & (dist_inside > VENTRICLE_DEPTH_MM)
    components, _ = ndi.label(deep)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    ventricles = np.isin(components, np.flatnonzero(sizes >= 1000))
    # The deep CSF core grown back into the CSF it is connected to (the whole ventricle).
    ventricles = ndi.binary_propagation(ventricles, mask=(anat.labels == CSF) & (dist_inside > 6))
    dist_ventricle = _capped_edt(ventricles, int(VENTRICLE_REACH) + 1, VENTRICLE_REACH)
    dist_sulcal_csf = _capped_edt((anat.labels == CSF) & ~ventricles, 0, SULCAL_REACH)
    wm = anat.labels == WM
    return Template(
        anat=anat, dist_inside=dist_inside, dist_outside=dist_outside, ventricles=ventricles,
        dist_ventricle=dist_ventricle, dist_sulcal_csf=dist_sulcal_csf,
        wm_periventricular=np.flatnonzero(wm & (dist_ventricle <= 12.0)),
        wm_deep=np.flatnonzero(wm & (dist_inside >= 22.0)),
    )


# --- fast smooth fields on the output grid ----------------------------------------------------

def lattice_on_grid(values: np.ndarray, origin: np.ndarray, spacing_mm: float, grid: Grid):
    """Cubic-spline interpolation of a control lattice (channels, nx, ny, nz) at the voxel
    centres of an axis-aligned grid: the same numbers as ``synth.Lattice.evaluate`` (spline
    prefilter and B-spline weights are separable, and so is mode 'nearest'), at a fraction of
    the cost, as three small 1-D interpolation matrices."""
    affine = grid.affine
    if not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3]))):
        raise ValueError("lattice_on_grid needs an axis-aligned grid")
    mats = []
    for axis, n in enumerate(grid.shape):
        coords = (affine[axis, axis] * np.arange(n) + affine[axis, 3] - origin[axis]) / spacing_mm
        m = values.shape[1 + axis]
        mats.append(np.stack([ndi.map_coordinates(col, coords[None], order=3, mode="nearest")
                              for col in np.eye(m)], axis=1))
    return np.einsum("ia,jb,kc,habc->hijk", *mats, values, optimize=True).astype(np.float32)


def random_lattice(anat: Anatomy, spacing_mm: float, channels: int, rng):
    """Standard-normal control values covering the template's field of view, and their origin."""
    lo, hi = anat.fov_mm()
    counts = np.ceil((hi - lo) / spacing_mm).astype(int) + 1
    return rng.standard_normal((channels, *counts)), lo


# --- the plan of a split ----------------------------------------------------------------------

def split_seed(seed: int, site: str, split: str) -> list[int]:
    return [seed, SITE_IDS[site], SPLIT_IDS[split], 1_000_000]


def seed_key(seed: int, site: str, split: str, index: int) -> list[int]:
    """The entropy of one volume's generators: distinct volumes never share a stream."""
    return [seed, SITE_IDS[site], SPLIT_IDS[split], index]


def anatomy_count(share: float, n: int) -> int:
    return max(1, int(round(share * n))) if n else 0


def plan(seed: int, site: str, split: str, counts: dict[str, int] | None = None) -> list[dict]:
    """Kind and anatomical changes of every volume of a split, in index order: exact counts
    per kind (``SITES``) and per change (``ANATOMY_SHARES``), shuffled by the split's seed."""
    counts = SITES[site][split] if counts is None else counts
    unknown = set(counts) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)} (expected some of {list(KINDS)})")
    rng = np.random.default_rng(split_seed(seed, site, split))
    kinds = [k for k in KINDS for _ in range(counts.get(k, 0))]
    kinds = [kinds[i] for i in rng.permutation(len(kinds))]
    n = len(kinds)
    entries = [{"kind": k, "atrophy": False, "wmh": False, "tumour": False, "skull": False}
               for k in kinds]
    for change, share in ANATOMY_SHARES.items():
        for i in rng.permutation(n)[:anatomy_count(share, n)]:
            entries[i][change] = True
    return entries


# --- one subject's tissue map -----------------------------------------------------------------

@dataclass(frozen=True)
class Subject:
    """The map from a subject's RAS mm space to the template's, and its changed tissue map."""

    centre: np.ndarray
    matrix: np.ndarray
    warp: np.ndarray  # (3, nx, ny, nz) displacement control values, mm
    warp_origin: np.ndarray
    tissue: np.ndarray  # uint8 tissue map on the template's 1 mm grid
    tumour: tuple | None  # (centre mm, radius mm, oedema rim mm) in template space
    params: dict


def draw_deformation(anat: Anatomy, rng, params: dict):
    """synth's random affine and smooth warp, and an overall head size."""
    angles = rng.uniform(-ROTATION_MAX_DEG, ROTATION_MAX_DEG, 3)
    scales = rng.uniform(1 - SCALE_MAX, 1 + SCALE_MAX, 3)
    head = rng.uniform(*HEAD_SCALE)
    values, origin = random_lattice(anat, DEFORM_LATTICE_MM, 3, rng)
    max_disp = rng.uniform(*DEFORM_MAX_MM)
    values = values * (max_disp / np.sqrt((values**2).sum(axis=0)).max())
    params.update(rotation_deg=angles.round(3).tolist(), scale=scales.round(4).tolist(),
                  head_scale=round(float(head), 4), max_displacement_mm=round(float(max_disp), 3))
    # subject -> template: a head `head` times the template's size maps back by 1/head.
    return rotation_matrix(angles) @ np.diag(scales) / head, values, origin


def atrophy(tpl: Template, tissue: np.ndarray, rng, params: dict) -> None:
    """Enlarged ventricles (GM/WM within d_v of them becomes CSF) and widened sulci (GM within
    w of sulcal CSF becomes CSF), both growing with a drawn severity."""
    severity = rng.uniform(0.3, 1.0)
    d_v = 1.5 + 5.0 * severity
    w = 1.0 + 0.5 * severity
    brain = (tissue == GM) | (tissue == WM)
    tissue[brain & (tpl.dist_ventricle <= d_v)] = CSF
    tissue[(tissue == GM) & (tpl.dist_sulcal_csf <= w)] = CSF
    params["atrophy"] = {"severity": round(float(severity), 3), "ventricle_growth_mm": round(d_v, 2),
                         "sulcal_widening_mm": round(w, 2)}


def wmh(tpl: Template, tissue: np.ndarray, rng, params: dict) -> None:
    """White-matter hyperintensities: ellipsoidal blobs of WM (70% periventricular, 30% deep)."""
    n = int(rng.integers(8, 26))
    shape = np.array(tissue.shape)
    blobs = []
    for _ in range(n):
        pool = tpl.wm_periventricular if rng.uniform() < 0.7 else tpl.wm_deep
        centre = np.array(np.unravel_index(pool[rng.integers(len(pool))], tissue.shape))
        radii = rng.uniform(2.0, 7.0, 3)
        lo = np.maximum(centre - np.ceil(radii).astype(int), 0)
        hi = np.minimum(centre + np.ceil(radii).astype(int) + 1, shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        grid = np.ogrid[box]
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0
        local = tissue[box]
        local[inside & (local == WM)] = WMH
        blobs.append({"centre_vox": centre.tolist(), "radii_mm": radii.round(2).tolist()})
    params["wmh"] = {"blobs": len(blobs)}


def tumour(tpl: Template, rng, params: dict) -> tuple:
    """A spherical tumour deep in the white matter, with an oedema rim; applied while sampling
    (``sample_tissue``), where it pushes the surrounding tissue outwards."""
    radius = rng.uniform(8.0, 15.0)
    rim = rng.uniform(3.0, 8.0)
    vox = np.unravel_index(tpl.wm_deep[rng.integers(len(tpl.wm_deep))], tpl.anat.labels.shape)
    centre = tpl.anat.affine[:3, :3] @ np.array(vox, float) + tpl.anat.affine[:3, 3]
    params["tumour"] = {"centre_mm": centre.round(2).tolist(), "radius_mm": round(float(radius), 2),
                        "oedema_mm": round(float(rim), 2)}
    return centre, radius, rim


def skull(tpl: Template, tissue: np.ndarray, rng, params: dict) -> None:
    """Skull (bone) and scalp shells outside the brain mask, after a background gap."""
    gap, bone, scalp = rng.uniform(1.0, 3.0), rng.uniform(4.0, 7.0), rng.uniform(3.0, 6.0)
    outside = tissue == BACKGROUND
    d = tpl.dist_outside
    tissue[outside & (d > gap) & (d <= gap + bone)] = SKULL
    tissue[outside & (d > gap + bone) & (d <= gap + bone + scalp)] = SCALP
    params["skull"] = {"gap_mm": round(float(gap), 2), "bone_mm": round(float(bone), 2),
                       "scalp_mm": round(float(scalp), 2)}


def draw_subject(tpl: Template, entry: dict, rngs: dict, skip=frozenset()) -> Subject:
    """Deformation, head size and the entry's anatomical changes (those not in `skip`)."""
    params: dict = {}
    matrix, warp, origin = draw_deformation(tpl.anat, rngs["subject"], params)
    tissue = tpl.anat.labels.copy()
    if entry["atrophy"] and "atrophy" not in skip:
        atrophy(tpl, tissue, rngs["atrophy"], params)
    if entry["wmh"] and "wmh" not in skip:
        wmh(tpl, tissue, rngs["wmh"], params)
    tumour_spec = tumour(tpl, rngs["tumour"], params) if entry["tumour"] and "tumour" not in skip else None
    if entry["skull"] and "skull" not in skip:
        skull(tpl, tissue, rngs["skull"], params)
    return Subject(tpl.anat.brain_centre_mm(), matrix, warp, origin, tissue, tumour_spec, params)


def sample_tissue(tpl: Template, subject: Subject, grid: Grid) -> np.ndarray:
    """The subject's tissue at the grid's voxel centres (nearest neighbour: exact). A tumour of
    radius R at c replaces the ball |y - c| < R of template space and pushes the rest outwards,
    incompressibly: a point at distance r >= R samples the template at cbrt(r^3 - R^3)."""
    world = grid.world_points()
    rel = world - subject.centre[:, None, None, None]
    template_mm = np.tensordot(subject.matrix, rel, axes=1) + subject.centre[:, None, None, None]
    template_mm += lattice_on_grid(subject.warp, subject.warp_origin, DEFORM_LATTICE_MM, grid)
    ball = rim = None
    if subject.tumour is not None:
        c, radius, rim_mm = subject.tumour
        d = template_mm - c[:, None, None, None]
        r = np.sqrt((d**2).sum(axis=0))
        ball = r < radius
        r_src = np.cbrt(np.maximum(r**3 - radius**3, 0.0))
        template_mm = c[:, None, None, None] + d * (r_src / np.maximum(r, 1e-6))
        rim = ~ball & (r < radius + rim_mm)
    inv = np.linalg.inv(tpl.anat.affine)
    vox = np.tensordot(inv[:3, :3], template_mm, axes=1) + inv[:3, 3, None, None, None]
    tissue = ndi.map_coordinates(subject.tissue, vox, order=0, mode="constant", cval=BACKGROUND)
    if ball is not None:
        tissue[rim & ((tissue == WM) | (tissue == WMH))] = OEDEMA
        tissue[ball] = TUMOUR
    return tissue.astype(np.uint8)


# --- acquisition ------------------------------------------------------------------------------

def contrast_profile(anat: Anatomy, contrast: str) -> np.ndarray:
    """Tissue means (scanner units, TISSUES order) of a contrast."""
    if contrast == "t1":
        bg, csf, gm, wm = t1_class_means(anat) * SCANNER_SCALE
        return np.array([bg, csf, gm, wm, gm + 0.3 * (wm - gm), 0.75 * gm, gm + 0.1 * (wm - gm),
                         0.1 * wm, 1.1 * wm])
    if contrast == "pd":
        return np.array(PD_PROFILE)
    if contrast == "flair":
        return np.array(FLAIR_PROFILE)
    raise ValueError(f"unknown contrast {contrast!r} (expected 't1', 'pd' or 'flair')")


def tissue_image(tissue: np.ndarray, profile: np.ndarray, kind: Kind, rng, params: dict):
    """Per-tissue Gaussian intensities around the kind's profile (gain, jitter, within-tissue
    s.d.); the routine T1 protocol's mild shift scales CSF and GM. Returns image and means."""
    profile = profile.copy()
    if kind.contrast == "t1":
        shift = {"csf": rng.uniform(1.1, 1.5), "gm": rng.uniform(1.0, 1.08)}
        profile[CSF] *= shift["csf"]
        profile[GM] *= shift["gm"]
        params["t1_shift"] = {k: round(float(v), 4) for k, v in shift.items()}
    gain = rng.uniform(*GAIN)
    means = profile * gain * (1 + CLASS_MEAN_JITTER * rng.standard_normal(len(TISSUES)))
    stds = means * rng.uniform(*CLASS_REL_STD, len(TISSUES))
    params.update(gain=round(float(gain), 4), tissue_means=means.round(2).tolist())
    noise = rng.standard_normal(tissue.shape, dtype=np.float32)
    return (means[tissue] + stds[tissue] * noise).astype(np.float32), means


def thick_slices(image: np.ndarray, slab_mm, voxel_mm: float, rng, params: dict) -> np.ndarray:
    """Slab average along the last (S-I) axis, resampled back (``synth.thick_slice_operator``)."""
    thickness = rng.uniform(*slab_mm)
    offset = rng.uniform(0, thickness)
    params.update(slab_mm=round(float(thickness), 3), slab_offset_mm=round(float(offset), 3))
    op = thick_slice_operator(image.shape[2], voxel_mm, thickness, offset)
    return image @ op.T.astype(np.float32)


def bias_field(anat: Anatomy, grid: Grid, log_std, rng, params: dict) -> np.ndarray:
    strength = rng.uniform(*log_std)
    params["bias_log_std"] = round(float(strength), 4)
    values, origin = random_lattice(anat, BIAS_LATTICE_MM, 1, rng)
    return np.exp(lattice_on_grid(values, origin, BIAS_LATTICE_MM, grid)[0] * strength)


GHOST_AXIS = 1  # A-P: the phase-encode axis


def ghosting(image: np.ndarray, voxel_mm: float, rng, params: dict) -> np.ndarray:
    """Periodic motion: every `period`-th phase-encode line was acquired with the head shifted
    by `shift` mm along A-P, i.e. its k-space line carries the shift's phase ramp. The magnitude
    image gets ghosts of the head at multiples of N/period voxels along A-P."""
    n = image.shape[GHOST_AXIS]
    period = int(rng.integers(3, 7))
    first = int(rng.integers(period))
    shift_mm = rng.uniform(3.0, 8.0)
    lines = (np.arange(n) % period) == first
    ramp = np.where(lines, np.exp(-2j * np.pi * np.fft.fftfreq(n) * shift_mm / voxel_mm), 1.0)
    spectrum = np.fft.fft(image, axis=GHOST_AXIS) * ramp[None, :, None]
    params["ghost"] = {"period_lines": period, "first_line": first, "shift_mm": round(float(shift_mm), 3)}
    return np.abs(np.fft.ifft(spectrum, axis=GHOST_AXIS)).astype(np.float32)


def rician_noise(image: np.ndarray, wm_mean: float, rel_range, rng, params: dict) -> np.ndarray:
    rel = rng.uniform(*rel_range)
    params["noise_rel"] = round(float(rel), 4)
    sigma = np.float32(rel * wm_mean)
    real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.hypot(real, imag)


@dataclass(frozen=True)
class Volume:
    """One generated scan: int16 image, uint8 labels and tissue map on the same grid."""

    image: np.ndarray
    labels: np.ndarray
    tissue: np.ndarray
    affine: np.ndarray
    kind: str
    anatomy: dict
    params: dict


def generators(key) -> dict:
    """One independent generator per step."""
    return {name: np.random.default_rng(s)
            for name, s in zip(STEPS, np.random.SeedSequence(key).spawn(len(STEPS)))}


def render(tpl: Template, key, entry: dict, skip=frozenset()) -> Volume:
    """Scan one planned volume. `skip` names anatomical changes or artefacts to leave out (for
    tests: the rest of the volume stays bit-identical)."""
    bad = set(skip) - set(ANATOMY_STEPS) - set(ARTEFACT_STEPS)
    if bad:
        raise ValueError(f"cannot skip {sorted(bad)}: steps are {ANATOMY_STEPS + ARTEFACT_STEPS}")
    rngs = generators(key)
    kind = KINDS[entry["kind"]]
    grid = grid_for(tpl.anat, (2.0, 2.0, 2.0), ("R", "A", "S"))
    subject = draw_subject(tpl, entry, rngs, skip)
    tissue = sample_tissue(tpl, subject, grid)
    params = dict(subject.params)
    image, means = tissue_image(tissue, contrast_profile(tpl.anat, kind.contrast), kind,
                                rngs["intensity"], params)
    sigma = rngs["pv"].uniform(*PV_SIGMA_VOXELS)
    params["pv_sigma_voxels"] = round(float(sigma), 4)
    image = ndi.gaussian_filter(image, sigma, mode="constant")
    if kind.slab_mm and "thick" not in skip:
        image = thick_slices(image, kind.slab_mm, 2.0, rngs["thick"], params)
    if "bias" not in skip:
        image = image * bias_field(tpl.anat, grid, kind.bias_log_std, rngs["bias"], params)
    if kind.ghost and "motion" not in skip:
        image = ghosting(image, 2.0, rngs["motion"], params)
    if "noise" not in skip:
        image = rician_noise(image, means[WM], kind.noise_rel, rngs["noise"], params)
    labels = TISSUE_CLASS[tissue]
    if not entry["skull"]:
        # Skull-stripped: zero outside the brain dilated by one voxel, as a stripping tool leaves it.
        image[~ndi.binary_dilation(labels > 0, iterations=1)] = 0
    pixels = np.clip(np.rint(image), 0, np.iinfo(np.int16).max).astype(np.int16)
    anatomy_flags = {k: entry[k] for k in ANATOMY_SHARES}
    return Volume(pixels, labels, tissue, grid.affine, kind.name, anatomy_flags, params)


def generate(seed: int, site: str, split: str, index: int, tpl: Template | None = None,
             skip=frozenset()) -> Volume:
    """Volume `index` of a split, fully determined by (seed, site, split, index)."""
    tpl = load_template() if tpl is None else tpl
    entries = plan(seed, site, split)
    if not 0 <= index < len(entries):
        raise IndexError(f"{site}.{split} has {len(entries)} volumes, no index {index}")
    return render(tpl, seed_key(seed, site, split, index), entries[index], skip)
