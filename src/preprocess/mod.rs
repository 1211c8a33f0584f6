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
//!
//! # Layout
//!
//! One file per concept: the model grid and its inverse maps (`grid`), the resampling kernels
//! (`resample`), intensity normalisation (`normalize`), padding and cropping (`pad`) and the
//! in-place tile source (`model_image`); the public names are re-exported here.

mod grid;
mod model_image;
mod normalize;
mod pad;
mod resample;

use std::borrow::Cow;

use ndarray::Array4;

use crate::bundle::{InputSpec, Normalization};
use crate::error::{Error, Result};
use crate::volume::Volume;

pub use grid::{model_grid, ModelGrid};
pub(crate) use model_image::prepare_in_place_on;
pub use model_image::{prepare_in_place, ModelImage};
pub use normalize::ChannelNorm;

use normalize::normalize;
use pad::pad;
use resample::{resample_linear, resample_peak_elements};

/// Most voxels (all channels) a resampled or padded volume may have.
const MAX_VOXELS: usize = 1 << 31;

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

/// Preprocesses `volume` for a model with input spec `input` (see the module documentation).
///
/// Errors: `InvalidArgument` for a channel count other than `input.channels` or an unusable spec
/// (zero patch size/divisor, non-positive spacing, bad normalisation parameters); `Unsupported` for an
/// orientation other than `"RAS"`; `InvalidData` for NaN/infinite voxels; `TooLarge` when the
/// resampled volume would exceed 2^31 voxels.
pub fn prepare(volume: &Volume, input: &InputSpec) -> Result<Prepared> {
    prepare_on(volume, input, model_grid(volume, input)?)
}

/// [`prepare`] on the grid `grid = model_grid(volume, input)` the caller has already built (the
/// engine builds it once per call, for the memory estimate and for preparation).
pub(crate) fn prepare_on(volume: &Volume, input: &InputSpec, grid: ModelGrid) -> Result<Prepared> {
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

/// The volume must match the spec (the channel count).
fn check_input_spec(volume: &Volume, input: &InputSpec) -> Result<()> {
    // The spec itself was checked once, when its bundle was loaded (`InputSpec::validate`); only
    // what depends on the volume is checked per call.
    if volume.channels() != input.channels {
        return Err(Error::invalid_argument(format!(
            "the image has {} channel(s) but the model expects {}",
            volume.channels(),
            input.channels
        )));
    }
    Ok(())
}

/// Peak heap bytes of preparing a volume of `channels` channels onto `grid` with
/// `normalization` ([`prepare_in_place`]), the caller's volume not counted: a reoriented copy
/// unless the volume is already RAS, the resampling passes and the padded model-grid image, or,
/// when the volume is read in place (already RAS at the model spacing), only the copy that
/// percentile normalisation sorts.
pub fn peak_bytes(grid: &ModelGrid, channels: usize, normalization: &Normalization) -> usize {
    let f = std::mem::size_of::<f32>();
    let resampled_voxels: usize = grid.resampled_dims().iter().product();
    let percentile_copy = match normalization {
        Normalization::Percentile { .. } => resampled_voxels * f,
        _ => 0,
    };
    if grid.is_read_in_place() {
        return percentile_copy;
    }
    let reoriented = !grid.orientation().is_identity();
    let resample = resample_peak_elements(grid.canonical_dims(), channels, grid.resampled_dims(), reoriented) * f;
    percentile_copy + resample.max(channels * resampled_voxels * f + image_bytes(grid, channels))
}

/// Bytes of the model-grid image [`prepare_in_place`] holds while the sliding window reads it: 0
/// when the caller's volume is read in place, else the padded `[C, Z, Y, X]` f32 image.
pub fn image_bytes(grid: &ModelGrid, channels: usize) -> usize {
    if grid.is_read_in_place() {
        0
    } else {
        channels * grid.model_shape().iter().product::<usize>() * std::mem::size_of::<f32>()
    }
}
