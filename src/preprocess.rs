//! Preprocessing driven by the bundle manifest ([`InputSpec`]), nnU-Net-like, and its inverse.
//!
//! [`prepare`] turns a caller's [`Volume`] into the model's input tensor `[C, Z, Y, X]`:
//!
//! 1. checks: channel count, orientation `"RAS"`, no NaN/infinite voxels;
//! 2. closest canonical RAS orientation ([`Volume::to_canonical`], a permutation/flip, no resampling);
//! 3. resampling to `spacing_mm` when any axis differs by more than 1e-3 relative (see below);
//! 4. per-channel intensity normalisation ([`Normalization`]);
//! 5. padding to at least the patch size, split before/after like nnU-Net (`before = diff / 2`,
//!    the rest after), with each channel's minimum after normalisation — what background looks
//!    like to the model (z-scored MR background, CT air); zero-padding in normalised space reads as
//!    mid-grey tissue and cost 2.5 Dice points on the demo model. Tiles are patch-sized, so the
//!    image itself need not be a multiple of `size_divisible_by` (only the patch is).
//!
//! The [`ModelGrid`] it returns remembers every step, so outputs on the model grid map back onto the
//! caller's original voxel grid ([`ModelGrid::to_original`], [`ModelGrid::labels_to_original`]) and
//! annotations on the original grid map onto the model grid ([`ModelGrid::labels_to_model`]).
//!
//! # Resampling convention
//!
//! The sample positions of `skimage.transform.resize` (which nnU-Net calls, there with cubic splines
//! and no prefilter) and of SimpleITK resampling that keeps the field of view: the physical extent of
//! the grid, `dims * spacing` (voxel edges, not centres), is preserved. Along an axis with `n` input and `m` output voxels, `scale = n / m`, output voxel
//! `j` samples the input at the continuous voxel coordinate
//!
//! ```text
//! i = (j + 0.5) * scale - 0.5
//! ```
//!
//! so the new affine is exactly `A_new = A * M` with `M = [diag(scale), (scale - 1) / 2]` (voxel
//! centres move, the outer edges stay). The new size is `round(n * spacing / target)` (at least 1),
//! so the real spacing of the resampled grid is `spacing * n / m`, which differs from the target by
//! less than half a voxel over the whole extent (as in nnU-Net); [`ModelGrid::spacing`] reports it.
//! An axis whose size does not change is left exactly as it is (no interpolation, scale 1).
//! Coordinates outside `[0, n - 1]` (the outer half voxel) are clamped: constant extension at the
//! border (skimage `mode="edge"`).
//!
//! Interpolation is trilinear and separable (one axis at a time, shrinking axes first). When an axis
//! is downsampled (`scale > 1`), a Gaussian anti-aliasing prefilter with `sigma = (scale - 1) / 2`
//! input voxels is applied along it first (skimage's default; kernel truncated at `4 sigma`,
//! `nearest` border), fused with the interpolation into one set of weights per output voxel. The
//! result equals scipy's `zoom(gaussian_filter(x, sigma, mode="nearest"), order=1, grid_mode=True,
//! mode="nearest")`, i.e. skimage `resize(order=1, mode="edge", anti_aliasing=True)`, to f32 rounding.
//!
//! Unlike nnU-Net (normalise, then resample), intensities are normalised after resampling, on the
//! model grid.
//!
//! The inverse ([`ModelGrid::to_original`]) is the same operation from the resampled grid back to the
//! canonical dims, so its sample positions `j = (i + 0.5) / scale - 0.5` are exactly the inverse map
//! of the forward ones (with the prefilter when the original grid is the coarser one). Label maps use
//! nearest neighbour on the same positions (`round half up`).

use std::borrow::Cow;
use std::ops::Range;

use ndarray::{s, Array3, Array4, Array5, ArrayView3, ArrayView4};

use crate::bundle::{InputOrientation, InputSpec, Normalization, ZscoreMask};
use crate::error::{Error, ErrorKind, Result};
use crate::volume::{Orientation, Volume};
use crate::window::{gather_tiles, TileSource};

/// Row-major voxel -> world RAS mm affine.
type Affine = [[f64; 4]; 4];

/// Relative spacing difference under which a volume is not resampled.
const SPACING_TOLERANCE: f64 = 1e-3;
/// Floor for a standard deviation used as a divisor (nnU-Net's `max(std, 1e-8)`).
const MIN_STD: f64 = 1e-8;
/// Gaussian kernels end at this many sigmas (scipy's `truncate` default, used by skimage).
const GAUSSIAN_TRUNCATE: f64 = 4.0;
/// Most voxels (all channels) a resampled or padded volume may have.
const MAX_VOXELS: usize = 1 << 31;
/// Elements per block when accumulating rows/slices, so the output block stays in L1.
const BLOCK: usize = 2048;

/// The model input for one volume: `image` is `[C, Z, Y, X]`, normalised and padded to
/// [`ModelGrid::model_shape`]; `grid` maps model-grid results back.
#[derive(Clone)]
pub struct Prepared {
    pub image: Array4<f32>,
    pub grid: ModelGrid,
}

/// Shape only: the voxels of a real image would flood logs.
impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").field("image_shape", &self.image.shape()).field("grid", &self.grid).finish()
    }
}

/// Everything needed to map model-grid outputs back onto the caller's original voxel grid.
///
/// Dims and affines of volumes are in voxel order (x, y, z); everything about the tensor (model
/// shape, padding, valid region) is in tensor order (z, y, x).
#[derive(Clone, Debug)]
pub struct ModelGrid {
    orientation: Orientation,
    original_dims: [usize; 3],
    original_affine: Affine,
    canonical_dims: [usize; 3],
    canonical_affine: Affine,
    resampled_dims: [usize; 3],
    resampled_affine: Affine,
    /// (z, y, x)
    pad_before: [usize; 3],
    /// (z, y, x)
    pad_after: [usize; 3],
}

/// Preprocesses `volume` for a model with input spec `input` (see the module documentation).
///
/// Errors: `InvalidArgument` for a channel count other than `input.channels` or an unusable spec
/// (zero patch size/divisor, non-positive spacing, bad normalisation parameters); `Unsupported` for an
/// orientation other than `"RAS"`; `InvalidData` for NaN/infinite voxels; `TooLarge` when the
/// resampled volume would exceed 2^31 voxels.
pub fn prepare(volume: &Volume, input: &InputSpec) -> Result<Prepared> {
    let grid = model_grid(volume, input)?;
    check_finite(volume)?;
    let channels = volume.channels();
    // An already-RAS volume is read in place: the first resampling pass (or the one copy that
    // normalisation needs) reads the caller's voxels directly.
    let canonical = if grid.orientation.is_identity() {
        Cow::Borrowed(volume.data())
    } else {
        Cow::Owned(volume.to_canonical().0.into_data())
    };
    let mut data = resample_linear(canonical, grid.canonical_dims, channels, grid.resampled_dims);
    let n: usize = grid.resampled_dims.iter().product();
    for voxels in data.chunks_exact_mut(n) {
        normalize(voxels, &input.normalization);
    }
    let [nx, ny, nz] = grid.resampled_dims;
    let background: Vec<f32> = data.chunks_exact(n).map(|c| c.iter().copied().fold(f32::INFINITY, f32::min)).collect();
    let image = pad(data, [channels, nz, ny, nx], grid.pad_before, grid.pad_after, &background)?;
    Ok(Prepared { image, grid })
}

/// `InvalidData` for NaN/infinite voxels.
fn check_finite(volume: &Volume) -> Result<()> {
    let nonfinite = volume.nonfinite_count();
    if nonfinite > 0 {
        return Err(Error::invalid_data(format!(
            "the image has {nonfinite} NaN or infinite voxel(s) (of {}); replace them before preprocessing \
             (e.g. ReadOptions::nonfinite = NonFinitePolicy::Replace)",
            volume.data().len()
        )));
    }
    Ok(())
}

/// The [`ModelGrid`] [`prepare`] would produce for `volume`, from its geometry alone (no voxel is
/// read or copied), e.g. to size the working memory before any allocation. Same errors as
/// [`prepare`] except the NaN check.
pub fn model_grid(volume: &Volume, input: &InputSpec) -> Result<ModelGrid> {
    check_input_spec(volume, input)?;
    let (orientation, canonical_dims, canonical_affine) = volume.canonical_geometry();
    let channels = volume.channels();
    let canonical_spacing: [f64; 3] =
        std::array::from_fn(|c| (0..3).map(|r| canonical_affine[r][c] * canonical_affine[r][c]).sum::<f64>().sqrt());
    let resampled_dims = target_dims(canonical_dims, canonical_spacing, input.spacing_mm);
    let too_large = |what: &str, dims: [usize; 3]| {
        let total = dims.iter().try_fold(channels, |acc, &d| acc.checked_mul(d));
        if total.is_some_and(|t| t <= MAX_VOXELS) {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::TooLarge,
            format!(
                "the {what} volume would have {dims:?} voxels x {channels} channel(s), more than {MAX_VOXELS} \
                 (canonical dims {canonical_dims:?}, spacing {canonical_spacing:?} mm -> {:?} mm)",
                input.spacing_mm
            ),
        ))
    };
    too_large("resampled", resampled_dims)?;
    let (pad_before, pad_after) = padding(resampled_dims, input.patch_size);
    too_large(
        "padded",
        std::array::from_fn(|a| resampled_dims[a].saturating_add(pad_before[2 - a] + pad_after[2 - a])),
    )?;
    Ok(ModelGrid {
        orientation,
        original_dims: volume.dims(),
        original_affine: volume.affine(),
        canonical_dims,
        canonical_affine,
        resampled_dims,
        resampled_affine: resampled_affine(&canonical_affine, canonical_dims, resampled_dims),
        pad_before,
        pad_after,
    })
}

/// Peak elements held at once by [`resample_linear`] from `dims` to `new_dims` with `channels`
/// channels (the source counted only when `source_owned`), for memory estimates.
pub(crate) fn resample_peak_elements(
    dims: [usize; 3],
    channels: usize,
    new_dims: [usize; 3],
    source_owned: bool,
) -> usize {
    let size = |d: [usize; 3]| d.iter().product::<usize>() * channels;
    let axes = resample_order(dims, new_dims);
    if axes.is_empty() {
        return size(dims) * if source_owned { 1 } else { 2 };
    }
    let mut current = dims;
    let mut peak = 0;
    for (i, axis) in axes.into_iter().enumerate() {
        let mut next = current;
        next[axis] = new_dims[axis];
        let held = if i == 0 && !source_owned { 0 } else { size(current) };
        peak = peak.max(held + size(next));
        current = next;
    }
    peak
}

impl ModelGrid {
    /// Padded (z, y, x) shape of the tensor fed to the model.
    pub fn model_shape(&self) -> [usize; 3] {
        std::array::from_fn(|a| self.resampled_dims[2 - a] + self.pad_before[a] + self.pad_after[a])
    }

    /// The unpadded part of the model grid, (z, y, x).
    pub fn valid_region(&self) -> [Range<usize>; 3] {
        std::array::from_fn(|a| self.pad_before[a]..self.pad_before[a] + self.resampled_dims[2 - a])
    }

    /// Padding before each axis, (z, y, x).
    pub fn pad_before(&self) -> [usize; 3] {
        self.pad_before
    }

    /// Padding after each axis, (z, y, x).
    pub fn pad_after(&self) -> [usize; 3] {
        self.pad_after
    }

    /// The reorientation applied to reach canonical RAS (identity when the volume already was).
    pub fn orientation(&self) -> &Orientation {
        &self.orientation
    }

    /// Dims (x, y, z) of the caller's volume.
    pub fn original_dims(&self) -> [usize; 3] {
        self.original_dims
    }

    /// Affine of the caller's volume.
    pub fn original_affine(&self) -> [[f64; 4]; 4] {
        self.original_affine
    }

    /// Dims (x, y, z) after reorientation to canonical RAS.
    pub fn canonical_dims(&self) -> [usize; 3] {
        self.canonical_dims
    }

    pub fn canonical_affine(&self) -> [[f64; 4]; 4] {
        self.canonical_affine
    }

    /// Whether the volume was resampled: its spacing differed from the model's enough to change its dims.
    pub fn is_resampled(&self) -> bool {
        self.resampled_dims != self.canonical_dims
    }

    /// Dims (x, y, z) of the resampled, unpadded grid.
    pub fn resampled_dims(&self) -> [usize; 3] {
        self.resampled_dims
    }

    /// Affine of the resampled, unpadded grid: `canonical_affine * M` (see the module documentation).
    pub fn resampled_affine(&self) -> [[f64; 4]; 4] {
        self.resampled_affine
    }

    /// Affine of the padded model grid, voxel (x, y, z) of the tensor -> world RAS mm (padding voxels
    /// included), e.g. to write a model-grid map as NIfTI.
    pub fn model_affine(&self) -> [[f64; 4]; 4] {
        let mut a = self.resampled_affine;
        for (r, row) in a.iter_mut().take(3).enumerate() {
            row[3] -= (0..3).map(|c| self.resampled_affine[r][c] * self.pad_before[2 - c] as f64).sum::<f64>();
        }
        a
    }

    /// Real voxel size (x, y, z) in mm of the model grid (close to, not always equal to, the target).
    pub fn spacing(&self) -> [f64; 3] {
        std::array::from_fn(|c| (0..3).map(|r| self.resampled_affine[r][c].powi(2)).sum::<f64>().sqrt())
    }

    /// A K-channel float map on the (padded) model grid, `[K, Z, Y, X]`, to a K-channel [`Volume`] on
    /// the original grid: crops the padding, resamples trilinearly back to the canonical dims and
    /// undoes the reorientation. The result has the original dims and affine exactly. The resampling
    /// is the forward one run backwards (same sample positions, inverted), with the anti-aliasing
    /// prefilter along axes where the original grid is the coarser one; weights sum to 1, so
    /// probabilities stay probabilities.
    ///
    /// Errors: `InvalidArgument` if the map is not `[K >= 1, model_shape]`.
    pub fn to_original(&self, map: ArrayView4<f32>) -> Result<Volume> {
        let k = map.shape()[0];
        self.check_model_shape(&map.shape()[1..], k, "to_original: the map")?;
        let data = crop(map, self.valid_region());
        let data = resample_linear(Cow::Owned(data), self.resampled_dims, k, self.canonical_dims);
        self.canonical_to_original(data, k)
    }

    /// A label map on the (padded) model grid, `[Z, Y, X]`, to a one-channel [`Volume`] of label values
    /// on the original grid, by nearest neighbour.
    ///
    /// Errors: `InvalidArgument` if the map's shape is not [`Self::model_shape`].
    pub fn labels_to_original(&self, labels: ArrayView3<u8>) -> Result<Volume> {
        self.check_model_shape(labels.shape(), 1, "labels_to_original: the label map")?;
        let labels = labels.as_standard_layout();
        let src = labels.as_slice().ok_or_else(|| Error::internal("a standard-layout array has no slice"))?;
        let [z, y, x] = self.model_shape();
        let tables: [Vec<usize>; 3] = std::array::from_fn(|a| {
            let offset = self.pad_before[2 - a];
            nearest_table(self.resampled_dims[a], self.canonical_dims[a]).into_iter().map(|i| i + offset).collect()
        });
        let data = sample_nearest(src, [x, y, z], &tables, |v| v as f32);
        self.canonical_to_original(data, 1)
    }

    /// A one-channel label [`Volume`] on the original grid (the grid of the prepared image) to the
    /// model grid `[Z, Y, X]` (padded shape), by nearest neighbour; padding voxels get `pad_label`
    /// (pass the loss's ignore label).
    ///
    /// Errors: `GeometryMismatch` if the labels are not on the image's grid; `InvalidArgument` for
    /// more than one channel; `InvalidData` for non-integer or non-finite label values.
    pub fn labels_to_model(&self, labels: &Volume, pad_label: i64) -> Result<Array3<i64>> {
        // A reference on the image grid for Volume::check_same_grid: zero-initialised memory is
        // allocated lazily by the OS, and the check reads only dims and affine, so it costs nothing.
        let reference =
            Volume::new(vec![0.0; self.original_dims.iter().product()], self.original_dims, 1, self.original_affine)?;
        reference.check_same_grid(labels, "labels_to_model: the image and the label volume")?;
        if labels.channels() != 1 {
            return Err(Error::invalid_argument(format!(
                "labels_to_model: the label volume has {} channels, expected 1",
                labels.channels()
            )));
        }
        let bad = labels.data().iter().filter(|v| !(v.is_finite() && v.fract() == 0.0)).count();
        if bad > 0 {
            return Err(Error::invalid_data(format!(
                "labels_to_model: {bad} label voxel(s) are not integers (NaN, infinite or fractional values)"
            )));
        }
        let canonical = if self.orientation.is_identity() {
            Cow::Borrowed(labels.data())
        } else {
            Cow::Owned(self.orientation.apply(labels)?.into_data())
        };
        let tables: [Vec<usize>; 3] =
            std::array::from_fn(|a| nearest_table(self.canonical_dims[a], self.resampled_dims[a]));
        let data = sample_nearest(&canonical, self.canonical_dims, &tables, |v| v as i64);
        drop(canonical);
        let [nx, ny, nz] = self.resampled_dims;
        let padded = pad(data, [1, nz, ny, nx], self.pad_before, self.pad_after, &[pad_label])?;
        let shape = self.model_shape();
        padded.into_shape_with_order(shape).map_err(|e| Error::internal(format!("labels_to_model: {e}")))
    }

    /// `InvalidArgument` unless `shape` (z, y, x) is the model shape and `channels >= 1`.
    fn check_model_shape(&self, shape: &[usize], channels: usize, what: &str) -> Result<()> {
        let expected = self.model_shape();
        if shape == expected && channels >= 1 {
            return Ok(());
        }
        Err(Error::invalid_argument(format!(
            "{what} has shape {shape:?} x {channels} channel(s) but the model grid is (z, y, x) {expected:?} \
             with at least one channel"
        )))
    }

    /// Canonical-grid voxels (x fastest, channel slowest) -> a volume on the original grid.
    fn canonical_to_original(&self, data: Vec<f32>, channels: usize) -> Result<Volume> {
        let data = if self.orientation.is_identity() { data } else { self.orientation.undo_buffer(&data, channels) };
        Volume::new(data, self.original_dims, channels, self.original_affine)
    }
}

/// The spec must be usable and match the volume.
fn check_input_spec(volume: &Volume, input: &InputSpec) -> Result<()> {
    if volume.channels() != input.channels {
        return Err(Error::invalid_argument(format!(
            "the image has {} channel(s) but the model expects {}",
            volume.channels(),
            input.channels
        )));
    }
    if input.orientation != InputOrientation::Ras {
        return Err(Error::unsupported(format!(
            "input orientation '{}' is not supported (only \"RAS\")",
            input.orientation
        )));
    }
    if input.size_divisible_by == 0 || input.patch_size.contains(&0) {
        return Err(Error::invalid_argument(format!(
            "input patch_size {:?} and size_divisible_by {} must be positive",
            input.patch_size, input.size_divisible_by
        )));
    }
    if input.spacing_mm.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(Error::invalid_argument(format!("input spacing_mm {:?} must be positive", input.spacing_mm)));
    }
    match input.normalization {
        Normalization::Zscore { .. } => Ok(()),
        Normalization::CtWindow { lower, upper, mean, std } => {
            if [lower, upper, mean, std].iter().all(|v| v.is_finite()) && lower <= upper && std > 0.0 {
                Ok(())
            } else {
                Err(Error::invalid_argument(format!(
                    "ct_window normalisation needs finite lower <= upper and std > 0, got lower {lower}, upper {upper}, \
                     mean {mean}, std {std}"
                )))
            }
        }
        Normalization::Percentile { lower, upper } => {
            if (0.0..=100.0).contains(&lower) && (0.0..=100.0).contains(&upper) && lower <= upper {
                Ok(())
            } else {
                Err(Error::invalid_argument(format!(
                    "percentile normalisation needs 0 <= lower <= upper <= 100 (percent), got {lower} and {upper}"
                )))
            }
        }
    }
}

/// Dims (x, y, z) after resampling from `spacing` to `target`: unchanged unless some axis differs by
/// more than [`SPACING_TOLERANCE`] relative; else `round(dims * spacing / target)`, at least 1.
fn target_dims(dims: [usize; 3], spacing: [f64; 3], target: [f64; 3]) -> [usize; 3] {
    if (0..3).all(|a| (spacing[a] - target[a]).abs() <= SPACING_TOLERANCE * target[a]) {
        return dims;
    }
    std::array::from_fn(|a| {
        let n = (dims[a] as f64 * spacing[a] / target[a]).round();
        if n >= 1.0 {
            // Saturating: absurd sizes are refused by the caller's voxel limit.
            n.min(usize::MAX as f64) as usize
        } else {
            1
        }
    })
}

/// `affine * M`, M mapping new voxel j to old voxel `scale * j + (scale - 1) / 2` on each axis.
fn resampled_affine(affine: &Affine, dims: [usize; 3], new_dims: [usize; 3]) -> Affine {
    let scale: [f64; 3] = std::array::from_fn(|a| dims[a] as f64 / new_dims[a] as f64);
    let mut out = *affine;
    for r in 0..3 {
        for c in 0..3 {
            out[r][c] = affine[r][c] * scale[c];
            out[r][3] += affine[r][c] * (scale[c] - 1.0) / 2.0;
        }
    }
    out
}

/// Padding (before, after) in (z, y, x) for resampled dims (x, y, z): up to the patch size,
/// centred like nnU-Net (`before = diff / 2`).
fn padding(dims: [usize; 3], patch_zyx: [usize; 3]) -> ([usize; 3], [usize; 3]) {
    let mut before = [0; 3];
    let mut after = [0; 3];
    for a in 0..3 {
        let n = dims[2 - a];
        let diff = n.max(patch_zyx[a]) - n;
        before[a] = diff / 2;
        after[a] = diff - diff / 2;
    }
    (before, after)
}

/// `data` as `[C, Z, Y, X]` (shape `czyx`) padded with `values[c]` in channel `c`: no copy without
/// padding, else one sequential pass writing each output element once.
fn pad<T: Copy>(
    data: Vec<T>,
    czyx: [usize; 4],
    before: [usize; 3],
    after: [usize; 3],
    values: &[T],
) -> Result<Array4<T>> {
    let internal = |e: ndarray::ShapeError| Error::internal(format!("padding a {czyx:?} array: {e}"));
    if before == [0; 3] && after == [0; 3] {
        return Array4::from_shape_vec(czyx, data).map_err(internal);
    }
    let [c, z, y, x] = czyx;
    let shape = [c, z + before[0] + after[0], y + before[1] + after[1], x + before[2] + after[2]];
    let [_, _, py, px] = shape;
    let mut out = Vec::with_capacity(shape.iter().product());
    for (channel, &value) in data.chunks_exact(x * y * z).zip(values) {
        out.resize(out.len() + before[0] * py * px, value);
        for slice in channel.chunks_exact(x * y) {
            out.resize(out.len() + before[1] * px, value);
            for row in slice.chunks_exact(x) {
                out.resize(out.len() + before[2], value);
                out.extend_from_slice(row);
                out.resize(out.len() + after[2], value);
            }
            out.resize(out.len() + after[1] * px, value);
        }
        out.resize(out.len() + after[0] * py * px, value);
    }
    Array4::from_shape_vec(shape, out).map_err(internal)
}

/// The `[z, y, x]` ranges of every channel of a `[K, Z, Y, X]` view, copied out in C order (row by
/// row when the view is in standard layout).
fn crop(map: ArrayView4<f32>, [rz, ry, rx]: [Range<usize>; 3]) -> Vec<f32> {
    let cropped = map.slice(s![.., rz.clone(), ry.clone(), rx.clone()]);
    if let Some(voxels) = cropped.as_slice() {
        return voxels.to_vec();
    }
    let Some(all) = map.as_slice() else {
        return cropped.iter().copied().collect();
    };
    let (nz, ny, nx) = (map.shape()[1], map.shape()[2], map.shape()[3]);
    let mut out = Vec::with_capacity(cropped.len());
    for channel in all.chunks_exact(nz * ny * nx) {
        for z in rz.clone() {
            for y in ry.clone() {
                let row = (z * ny + y) * nx;
                out.extend_from_slice(&channel[row + rx.start..row + rx.end]);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Resampling

/// Per output voxel along one axis: the first input index and the weights of consecutive inputs.
struct Taps {
    first: Vec<usize>,
    /// Output j's weights are `weights[offsets[j]..offsets[j + 1]]`.
    offsets: Vec<usize>,
    weights: Vec<f32>,
}

impl Taps {
    /// Linear interpolation from `n_in` to `n_out` samples (positions `(j + 0.5) * scale - 0.5`,
    /// clamped), preceded by a Gaussian prefilter (sigma `(scale - 1) / 2`, `nearest` border) when
    /// `scale = n_in / n_out > 1`, fused into one weight vector per output.
    fn linear(n_in: usize, n_out: usize) -> Taps {
        let scale = n_in as f64 / n_out as f64;
        let kernel = if scale > 1.0 { gaussian_kernel((scale - 1.0) / 2.0) } else { vec![1.0] };
        let radius = kernel.len() / 2;
        let last = n_in - 1;
        let mut taps = Taps { first: Vec::with_capacity(n_out), offsets: vec![0], weights: Vec::new() };
        let mut dense = Vec::new();
        for j in 0..n_out {
            let p = ((j as f64 + 0.5) * scale - 0.5).clamp(0.0, last as f64);
            let i0 = (p.floor() as usize).min(last);
            let f = p - i0 as f64;
            let i1 = (i0 + 1).min(last);
            let lo = i0.saturating_sub(radius);
            dense.clear();
            dense.resize((i1 + radius).min(last) - lo + 1, 0.0f64);
            for (k, g) in kernel.iter().enumerate() {
                // Input index i + k - radius, clamped to the volume (`nearest` border).
                let at = |i: usize| (i + k).saturating_sub(radius).min(last) - lo;
                dense[at(i0)] += (1.0 - f) * g;
                dense[at(i1)] += f * g;
            }
            let start = dense.iter().position(|w| *w != 0.0).unwrap_or(0);
            let end = dense.iter().rposition(|w| *w != 0.0).map_or(dense.len(), |e| e + 1);
            taps.first.push(lo + start);
            taps.weights.extend(dense[start..end].iter().map(|w| *w as f32));
            taps.offsets.push(taps.weights.len());
        }
        taps
    }

    fn get(&self, j: usize) -> (usize, &[f32]) {
        (self.first[j], &self.weights[self.offsets[j]..self.offsets[j + 1]])
    }
}

/// Normalised Gaussian weights over `[-r, r]`, `r = int(4 sigma + 0.5)` (scipy's `gaussian_filter1d`).
fn gaussian_kernel(sigma: f64) -> Vec<f64> {
    let radius = (GAUSSIAN_TRUNCATE * sigma + 0.5) as usize;
    let weights: Vec<f64> =
        (0..=2 * radius).map(|i| (-0.5 * ((i as f64 - radius as f64) / sigma).powi(2)).exp()).collect();
    let sum: f64 = weights.iter().sum();
    weights.into_iter().map(|w| w / sum).collect()
}

/// Separable trilinear resampling (with anti-aliasing) of `channels` channels from `dims` to
/// `new_dims` (x, y, z; x fastest, channel slowest). Axes whose size does not change are untouched;
/// the others are done one at a time, the most shrinking first, so later passes work on less data.
fn resample_linear(data: Cow<'_, [f32]>, dims: [usize; 3], channels: usize, new_dims: [usize; 3]) -> Vec<f32> {
    let axes = resample_order(dims, new_dims);
    let Some((&first, rest)) = axes.split_first() else {
        return data.into_owned();
    };
    // The first pass reads the source where it lies (possibly the caller's volume).
    let mut current_dims = dims;
    let mut current = resample_axis(&data, current_dims, channels, first, &Taps::linear(dims[first], new_dims[first]));
    drop(data);
    current_dims[first] = new_dims[first];
    for &axis in rest {
        let taps = Taps::linear(current_dims[axis], new_dims[axis]);
        current = resample_axis(&current, current_dims, channels, axis, &taps);
        current_dims[axis] = new_dims[axis];
    }
    current
}

/// The axes [`resample_linear`] resamples, in order: those whose size changes, the most
/// shrinking first, so later passes work on less data.
fn resample_order(dims: [usize; 3], new_dims: [usize; 3]) -> Vec<usize> {
    let mut axes: Vec<usize> = (0..3).filter(|&a| dims[a] != new_dims[a]).collect();
    axes.sort_by(|&a, &b| {
        let ratio = |axis: usize| new_dims[axis] as f64 / dims[axis] as f64;
        ratio(a).total_cmp(&ratio(b))
    });
    axes
}

/// One resampling pass along `axis` of a `dims` x `channels` buffer.
fn resample_axis(src: &[f32], dims: [usize; 3], channels: usize, axis: usize, taps: &Taps) -> Vec<f32> {
    let n_in = dims[axis];
    let n_out = taps.first.len();
    // Viewed as [outer, n, inner] with inner contiguous.
    let inner: usize = dims[..axis].iter().product();
    let outer: usize = dims[axis + 1..].iter().product::<usize>() * channels;
    let mut out = vec![0.0f32; outer * n_out * inner];
    if inner == 1 {
        for (line, out_line) in src.chunks_exact(n_in).zip(out.chunks_exact_mut(n_out)) {
            for (j, o) in out_line.iter_mut().enumerate() {
                let (first, w) = taps.get(j);
                *o = w.iter().zip(&line[first..]).map(|(w, v)| w * v).sum();
            }
        }
        return out;
    }
    for (block, out_block) in src.chunks_exact(n_in * inner).zip(out.chunks_exact_mut(n_out * inner)) {
        for (j, out_row) in out_block.chunks_exact_mut(inner).enumerate() {
            let (first, w) = taps.get(j);
            for start in (0..inner).step_by(BLOCK) {
                let end = (start + BLOCK).min(inner);
                let o = &mut out_row[start..end];
                for (t, &wt) in w.iter().enumerate() {
                    let row = (first + t) * inner;
                    for (ov, sv) in o.iter_mut().zip(&block[row + start..row + end]) {
                        *ov += wt * sv;
                    }
                }
            }
        }
    }
    out
}

/// For each of `n_out` output voxels, the nearest of `n_in` input voxels under the resampling
/// convention (position `(j + 0.5) * n_in / n_out - 0.5`, rounded half up, clamped).
fn nearest_table(n_in: usize, n_out: usize) -> Vec<usize> {
    if n_in == n_out {
        return (0..n_out).collect();
    }
    let scale = n_in as f64 / n_out as f64;
    (0..n_out).map(|j| (((j as f64 + 0.5) * scale - 0.5 + 0.5).floor().max(0.0) as usize).min(n_in - 1)).collect()
}

/// `out[x, y, z] = f(src[tables[0][x], tables[1][y], tables[2][z]])` for a one-channel `src` of
/// `src_dims` (x, y, z; x fastest); the output dims are the table lengths.
fn sample_nearest<T: Copy, U>(src: &[T], src_dims: [usize; 3], tables: &[Vec<usize>; 3], f: impl Fn(T) -> U) -> Vec<U> {
    let [tx, ty, tz] = tables;
    let mut out = Vec::with_capacity(tx.len() * ty.len() * tz.len());
    for &z in tz {
        for &y in ty {
            let row = &src[(z * src_dims[1] + y) * src_dims[0]..][..src_dims[0]];
            out.extend(tx.iter().map(|&x| f(row[x])));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Normalisation

/// Normalises one channel in place (parameters checked by [`check_input_spec`]).
fn normalize(x: &mut [f32], normalization: &Normalization) {
    let n = channel_norm(x, normalization);
    for v in x.iter_mut() {
        *v = n.apply(*v);
    }
}

/// The per-voxel map a channel's normalisation amounts to once its statistics are known, so it
/// can be applied to voxels read elsewhere (tiles read from the caller's volume) with the same
/// arithmetic as [`normalize`].
#[derive(Clone, Copy, Debug)]
pub enum ChannelNorm {
    /// `((clamp(v) as f64 - mean) * inv) as f32`, clamp in f32 (percentile) or none (z-score).
    Standardize { clamp: Option<(f32, f32)>, mean: f64, inv: f64 },
    /// `((clamp(v as f64, lower, upper) - mean) / std) as f32` (CT window).
    Window { lower: f64, upper: f64, mean: f64, std: f64 },
}

impl ChannelNorm {
    #[inline]
    fn apply(&self, v: f32) -> f32 {
        match *self {
            ChannelNorm::Standardize { clamp, mean, inv } => {
                let v = clamp.map_or(v, |(lo, hi)| v.clamp(lo, hi));
                ((v as f64 - mean) * inv) as f32
            }
            ChannelNorm::Window { lower, upper, mean, std } => (((v as f64).clamp(lower, upper) - mean) / std) as f32,
        }
    }
}

/// The statistics of one (unnormalised) channel under `normalization`.
fn channel_norm(x: &[f32], normalization: &Normalization) -> ChannelNorm {
    let standardize = |clamp: Option<(f32, f32)>, (mean, std): (f64, f64)| ChannelNorm::Standardize {
        clamp,
        mean,
        inv: 1.0 / std.max(MIN_STD),
    };
    match *normalization {
        Normalization::Zscore { mask } => standardize(
            None,
            match mask {
                ZscoreMask::All => mean_std(x.iter().copied()),
                ZscoreMask::Nonzero if x.iter().any(|v| *v != 0.0) => mean_std(x.iter().copied().filter(|v| *v != 0.0)),
                // An all-zero channel has no foreground: it stays all zero.
                ZscoreMask::Nonzero => (0.0, 0.0),
            },
        ),
        Normalization::CtWindow { lower, upper, mean, std } => ChannelNorm::Window { lower, upper, mean, std },
        Normalization::Percentile { lower, upper } => {
            let (lo, hi) = percentiles(x, lower, upper);
            standardize(Some((lo, hi)), mean_std(x.iter().map(|v| v.clamp(lo, hi))))
        }
    }
}

/// The model input of one volume for [`crate::window::sliding_window_slabs`]: materialised, or —
/// when the volume is already canonical RAS at the model spacing — the caller's own voxels,
/// normalised and padded tile by tile as the window reads them, so no volume-sized copy exists.
/// Either way the tiles hold exactly the values [`prepare`]'s image has.
pub enum ModelImage<'a> {
    /// [`Prepared::image`].
    Owned(Array4<f32>),
    /// A [`Prepared::image`] the caller keeps (e.g. a fine-tuner's training sample), read without a copy.
    Borrowed(ArrayView4<'a, f32>),
    /// The caller's `[C, Z, Y, X]` voxels (x fastest) of unpadded shape `shape` (z, y, x).
    InPlace {
        data: &'a [f32],
        shape: [usize; 3],
        /// Padded (z, y, x) shape, [`ModelGrid::model_shape`].
        model_shape: [usize; 3],
        norms: Vec<ChannelNorm>,
        background: Vec<f32>,
        pad_before: [usize; 3],
    },
}

/// Like [`prepare`], without copying the volume when it needs neither reorientation nor
/// resampling (see [`ModelImage`]).
pub fn prepare_in_place<'a>(volume: &'a Volume, input: &InputSpec) -> Result<(ModelImage<'a>, ModelGrid)> {
    let grid = model_grid(volume, input)?;
    if !grid.orientation.is_identity() || grid.is_resampled() {
        let Prepared { image, grid } = prepare(volume, input)?;
        return Ok((ModelImage::Owned(image), grid));
    }
    check_finite(volume)?;
    let n: usize = grid.resampled_dims.iter().product();
    let norms: Vec<ChannelNorm> =
        volume.data().chunks_exact(n).map(|c| channel_norm(c, &input.normalization)).collect();
    let background = volume
        .data()
        .chunks_exact(n)
        .zip(&norms)
        .map(|(c, norm)| c.iter().map(|&v| norm.apply(v)).fold(f32::INFINITY, f32::min))
        .collect();
    let [nx, ny, nz] = grid.resampled_dims;
    let image = ModelImage::InPlace {
        data: volume.data(),
        shape: [nz, ny, nx],
        model_shape: grid.model_shape(),
        norms,
        background,
        pad_before: grid.pad_before,
    };
    Ok((image, grid))
}

impl ModelImage<'_> {
    /// The whole image, when it exists as an array.
    fn array(&self) -> Option<ArrayView4<'_, f32>> {
        match self {
            ModelImage::Owned(image) => Some(image.view()),
            ModelImage::Borrowed(image) => Some(image.view()),
            ModelImage::InPlace { .. } => None,
        }
    }
}

impl TileSource for ModelImage<'_> {
    fn shape(&self) -> [usize; 3] {
        match self {
            ModelImage::Owned(image) => [image.shape()[1], image.shape()[2], image.shape()[3]],
            ModelImage::Borrowed(image) => [image.shape()[1], image.shape()[2], image.shape()[3]],
            ModelImage::InPlace { model_shape, .. } => *model_shape,
        }
    }

    fn gather(&self, starts: &[[usize; 3]], tile: [usize; 3]) -> Array5<f32> {
        if let Some(image) = self.array() {
            return gather_tiles(image, starts, tile);
        }
        let ModelImage::InPlace { data, shape, norms, background, pad_before, .. } = self else {
            unreachable!("only an in-place image has no array")
        };
        let [nz, ny, nx] = *shape;
        let channels = norms.len();
        let mut batch = Vec::with_capacity(starts.len() * channels * tile.iter().product::<usize>());
        // Source index range along an axis for padded positions start..start + len.
        let inside = |start: usize, len: usize, before: usize, n: usize| {
            let lo = start.max(before).min(start + len);
            let hi = (start + len).min(before + n).max(lo);
            (lo - start, hi - start, lo.saturating_sub(before))
        };
        for st in starts {
            for c in 0..channels {
                let (norm, fill) = (norms[c], background[c]);
                let channel = &data[c * nz * ny * nx..(c + 1) * nz * ny * nx];
                let (x0, x1, sx) = inside(st[2], tile[2], pad_before[2], nx);
                for z in st[0]..st[0] + tile[0] {
                    for y in st[1]..st[1] + tile[1] {
                        let (Some(zs), Some(ys)) = (z.checked_sub(pad_before[0]), y.checked_sub(pad_before[1])) else {
                            batch.resize(batch.len() + tile[2], fill);
                            continue;
                        };
                        if zs >= nz || ys >= ny {
                            batch.resize(batch.len() + tile[2], fill);
                            continue;
                        }
                        let row = &channel[(zs * ny + ys) * nx..][..nx];
                        batch.resize(batch.len() + x0, fill);
                        batch.extend(row[sx..sx + (x1 - x0)].iter().map(|&v| norm.apply(v)));
                        batch.resize(batch.len() + tile[2] - x1, fill);
                    }
                }
            }
        }
        Array5::from_shape_vec((starts.len(), channels, tile[0], tile[1], tile[2]), batch)
            .expect("one value per tile voxel")
    }
}

/// Mean and population standard deviation (numpy's default), accumulated in f64 in two passes.
fn mean_std(values: impl Iterator<Item = f32> + Clone) -> (f64, f64) {
    let (sum, count) = values.clone().fold((0.0f64, 0usize), |(s, n), v| (s + v as f64, n + 1));
    if count == 0 {
        return (0.0, 0.0);
    }
    let mean = sum / count as f64;
    let var = values.map(|v| (v as f64 - mean).powi(2)).sum::<f64>() / count as f64;
    (mean, var.sqrt())
}

/// The `lower` and `upper` percentiles (0..=100) of `x` with numpy's default linear interpolation
/// (`h = (n - 1) p / 100`), by selection on one copy.
fn percentiles(x: &[f32], lower: f64, upper: f64) -> (f32, f32) {
    let mut sorted = x.to_vec();
    let mut at = |p: f64| {
        let h = (sorted.len() - 1) as f64 * p / 100.0;
        let i = (h.floor() as usize).min(sorted.len() - 1);
        let (_, &mut a, rest) = sorted.select_nth_unstable_by(i, f32::total_cmp);
        let b = rest.iter().copied().reduce(f32::min).unwrap_or(a);
        (a as f64 + (h - i as f64) * (b as f64 - a as f64)) as f32
    };
    (at(lower), at(upper))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_without_prefilter_are_linear_interpolation() {
        // 4 -> 8: positions (j + 0.5) / 2 - 0.5 = -0.25 (clamped), 0.25, 0.75, ...
        let taps = Taps::linear(4, 8);
        assert_eq!(taps.get(0), (0, &[1.0f32][..]));
        assert_eq!(taps.get(1), (0, &[0.75f32, 0.25][..]));
        assert_eq!(taps.get(2), (0, &[0.25f32, 0.75][..]));
        assert_eq!(taps.get(7), (3, &[1.0f32][..]));
    }

    #[test]
    fn taps_with_prefilter_sum_to_one_and_are_symmetric() {
        // 9 -> 3: scale 3, sigma 1, radius 4; output 1 samples input 4 exactly.
        let taps = Taps::linear(9, 3);
        let (first, w) = taps.get(1);
        assert_eq!((first, w.len()), (0, 9));
        assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        for k in 0..4 {
            assert!((w[k] - w[8 - k]).abs() < 1e-7);
        }
        let g = gaussian_kernel(1.0);
        assert!((w[4] as f64 - g[4]).abs() < 1e-7);
        for j in 0..3 {
            let (_, w) = taps.get(j);
            assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn nearest_table_follows_the_convention() {
        assert_eq!(nearest_table(8, 4), vec![1, 3, 5, 7]);
        assert_eq!(nearest_table(4, 8), vec![0, 0, 1, 1, 2, 2, 3, 3]);
        assert_eq!(nearest_table(3, 3), vec![0, 1, 2]);
    }

    #[test]
    fn padding_is_centred_like_nnunet() {
        // dims (x, y, z) = (10, 20, 7), patch (z, y, x) = (8, 16, 16): z 7 -> 8, y stays, x 10 -> 16.
        let (before, after) = padding([10, 20, 7], [8, 16, 16]);
        assert_eq!(before, [0, 0, 3]);
        assert_eq!(after, [1, 0, 3]);
    }

    #[test]
    fn percentiles_match_numpy() {
        // numpy.percentile([4, 1, 3, 2, 5], [10, 95]) == [1.4, 4.8]
        let (lo, hi) = percentiles(&[4.0, 1.0, 3.0, 2.0, 5.0], 10.0, 95.0);
        assert!((lo - 1.4).abs() < 1e-6 && (hi - 4.8).abs() < 1e-6, "{lo} {hi}");
        assert_eq!(percentiles(&[7.0], 0.0, 100.0), (7.0, 7.0));
    }
}
