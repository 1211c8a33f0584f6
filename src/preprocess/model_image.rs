//! The model input as the sliding window reads it: an array, or the caller's own voxels
//! normalised and padded tile by tile ([`ModelImage`]).

use ndarray::{Array4, Array5, ArrayView4};

use super::grid::{model_grid, ModelGrid};
use super::normalize::{channel_norm, ChannelNorm};
#[cfg(doc)]
use super::prepare;
use super::{check_finite, prepare_on, Prepared};
use crate::bundle::InputSpec;
use crate::error::Result;
use crate::volume::Volume;
use crate::window::{gather_tiles, TileSource};

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
    prepare_in_place_on(volume, input, model_grid(volume, input)?)
}

/// [`prepare_in_place`] on the grid `grid = model_grid(volume, input)` the caller has already built.
pub(crate) fn prepare_in_place_on<'a>(
    volume: &'a Volume,
    input: &InputSpec,
    grid: ModelGrid,
) -> Result<(ModelImage<'a>, ModelGrid)> {
    if !grid.is_read_in_place() {
        let Prepared { image, grid } = prepare_on(volume, input, grid)?;
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
