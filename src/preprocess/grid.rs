//! The [`ModelGrid`]: every geometric step from the caller's voxel grid to the padded model grid,
//! computed from the geometry alone ([`model_grid`]), and the maps back and forth.

use std::borrow::Cow;
use std::ops::Range;

use ndarray::{Array3, ArrayView3, ArrayView4};

use super::pad::{crop, pad, padding};
#[cfg(doc)]
use super::prepare;
use super::resample::{nearest_table, resample_linear, resample_peak_elements, sample_nearest};
use super::{check_input_spec, MAX_VOXELS};
use crate::bundle::InputSpec;
use crate::error::{Error, ErrorKind, Result};
use crate::volume::{Orientation, Volume};

/// Row-major voxel -> world RAS mm affine.
type Affine = [[f64; 4]; 4];

/// Relative spacing difference under which a volume is not resampled.
const SPACING_TOLERANCE: f64 = 1e-3;
/// Everything needed to map model-grid outputs back onto the caller's original voxel grid.
///
/// Dims and affines of volumes are in voxel order (x, y, z); everything about the tensor (model
/// shape, padding, valid region) is in tensor order (z, y, x).
#[derive(Clone, Debug)]
pub struct ModelGrid {
    pub(super) orientation: Orientation,
    pub(super) original_dims: [usize; 3],
    pub(super) original_affine: Affine,
    pub(super) canonical_dims: [usize; 3],
    pub(super) canonical_affine: Affine,
    pub(super) resampled_dims: [usize; 3],
    pub(super) resampled_affine: Affine,
    /// (z, y, x)
    pub(super) pad_before: [usize; 3],
    /// (z, y, x)
    pub(super) pad_after: [usize; 3],
}

/// The [`ModelGrid`] [`prepare`] would produce for `volume`, from its geometry alone (no voxel is
/// read or copied), e.g. to size the working memory before any allocation. Same errors as
/// [`prepare`] except the NaN check.
pub fn model_grid(volume: &Volume, input: &InputSpec) -> Result<ModelGrid> {
    check_input_spec(volume, input)?;
    // Every model-side use of a volume (scoring, segmenting, fine-tuning) starts here: a voxel
    // size like 1e-30 mm would make the resampled grid meaningless.
    volume.check_plausible_spacing()?;
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

    /// Whether [`crate::preprocess::prepare_in_place`] reads the caller's voxels in place: the
    /// volume is already canonical RAS at the model spacing (neither reoriented nor resampled).
    pub fn is_read_in_place(&self) -> bool {
        self.orientation.is_identity() && !self.is_resampled()
    }

    /// Peak heap bytes of [`ModelGrid::to_original`] on a `channels`-channel map, the map itself
    /// not counted: the cropped copy, the resampling passes back to the canonical dims and the
    /// result on the original grid (and its reoriented copy unless the volume was RAS).
    pub fn to_original_peak_bytes(&self, channels: usize) -> usize {
        let f = std::mem::size_of::<f32>();
        let voxels = |d: [usize; 3]| d.iter().product::<usize>();
        let undo = usize::from(!self.orientation.is_identity());
        let resample = resample_peak_elements(self.resampled_dims, channels, self.canonical_dims, true) * f;
        channels * voxels(self.resampled_dims) * f
            + resample.max(channels * voxels(self.original_dims) * f * (1 + undo))
    }

    /// Peak heap bytes of [`ModelGrid::labels_to_original`], the label map not counted: the f32
    /// label volume on the original grid (and its reoriented copy unless the volume was RAS).
    pub fn labels_to_original_peak_bytes(&self) -> usize {
        let undo = usize::from(!self.orientation.is_identity());
        self.original_dims.iter().product::<usize>() * std::mem::size_of::<f32>() * (1 + undo)
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
