//! Sliding-window inference, nnU-Net style: overlapping tiles, a Gaussian importance map that
//! favours tile centres, several tiles per ONNX Runtime run, per-class logit accumulation, and
//! optional mirroring test-time augmentation. Also collects each tile's feature vector (the
//! embedding used for domain-gap scoring).
//!
//! Memory: [`sliding_window_slabs`] runs the tiles in z order and keeps the accumulators only over
//! the z range of one tile, handing each finished z-slab to a sink; the volume-sized blend of
//! [`sliding_window`] is built on top of it for callers that want it.

use ndarray::{s, Array2, Array3, Array4, Array5, ArrayView4, ArrayViewMut4, Axis};

use crate::cancel::CancelToken;
use crate::error::{Error, ErrorKind, Result};
use crate::model::Model;

/// Sliding-window settings. Defaults follow nnU-Net.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowOptions {
    /// Fraction of a tile shared with its neighbour (0.5 = nnU-Net's step 0.5).
    pub overlap: f64,
    /// Tiles per ONNX Runtime run.
    pub tiles_per_batch: usize,
    /// Average the 8 mirrored passes (nnU-Net's TTA); 8x the cost.
    pub mirror: bool,
    /// Gaussian sigma as a fraction of the tile size (nnU-Net: 1/8).
    pub sigma_scale: f64,
}

impl Default for WindowOptions {
    fn default() -> Self {
        WindowOptions { overlap: 0.5, tiles_per_batch: 2, mirror: false, sigma_scale: 1.0 / 8.0 }
    }
}

impl WindowOptions {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.overlap) {
            return Err(Error::invalid_argument(format!("tile overlap {} must be in [0, 1)", self.overlap)));
        }
        if self.tiles_per_batch == 0 {
            return Err(Error::invalid_argument("tiles per batch must be at least 1"));
        }
        if !(self.sigma_scale.is_finite() && self.sigma_scale > 0.0) {
            return Err(Error::invalid_argument(format!("Gaussian sigma scale {} must be > 0", self.sigma_scale)));
        }
        Ok(())
    }
}

/// Tile start positions along one axis, as nnU-Net computes them: the fewest steps of at most
/// `tile * (1 - overlap)` that cover `size`, spread evenly so the last tile ends at the border.
pub fn tile_starts(size: usize, tile: usize, overlap: f64) -> Vec<usize> {
    if size <= tile {
        return vec![0];
    }
    let target_step = (tile as f64 * (1.0 - overlap)).max(1.0);
    let steps = ((size - tile) as f64 / target_step).ceil() as usize + 1;
    let actual = (size - tile) as f64 / (steps - 1) as f64;
    (0..steps).map(|i| (actual * i as f64).round() as usize).collect()
}

/// The Gaussian importance map of a tile: 1 at the centre, sigma = `sigma_scale` x tile size,
/// zeros clamped to the smallest non-zero value (as nnU-Net does) so no voxel gets weight 0.
pub fn gaussian_importance(tile: [usize; 3], sigma_scale: f64) -> Array3<f32> {
    let axis = |n: usize| -> Vec<f64> {
        let (c, sigma) = ((n as f64 - 1.0) / 2.0, n as f64 * sigma_scale);
        (0..n).map(|i| (-((i as f64 - c).powi(2)) / (2.0 * sigma * sigma)).exp()).collect()
    };
    let (gz, gy, gx) = (axis(tile[0]), axis(tile[1]), axis(tile[2]));
    let mut map = Array3::from_shape_fn((tile[0], tile[1], tile[2]), |(z, y, x)| (gz[z] * gy[y] * gx[x]) as f32);
    let min_positive = map.iter().copied().filter(|&v| v > 0.0).fold(f32::INFINITY, f32::min);
    map.mapv_inplace(|v| if v > 0.0 { v } else { min_positive });
    map
}

/// Blended logits over the whole (padded) model grid and the per-tile features.
pub struct WindowOutput {
    /// Gaussian-weighted mean of the tile logits, [classes, Z, Y, X].
    pub logits: Array4<f32>,
    /// One feature vector per tile (and per mirrored pass), [tiles, features].
    pub features: Array2<f32>,
}

/// Which model outputs hold the logits and the features.
pub struct OutputNames<'a> {
    pub logits: &'a str,
    pub features: &'a str,
}

/// Runs `model` over `image` ([C, Z, Y, X], already normalised and at least one tile in size)
/// tile by tile and returns the blended logits of the whole grid. `progress` receives the
/// fraction done after every batch and returns `false` to stop; `cancel` can also be triggered
/// from another thread. Holds a [classes, Z, Y, X] array; [`sliding_window_slabs`] does not.
pub fn sliding_window(
    model: &Model,
    names: &OutputNames<'_>,
    image: ArrayView4<'_, f32>,
    tile: [usize; 3],
    options: &WindowOptions,
    cancel: &CancelToken,
    progress: &mut dyn FnMut(f64) -> bool,
) -> Result<WindowOutput> {
    let shape = [image.shape()[1], image.shape()[2], image.shape()[3]];
    let mut logits: Option<Array4<f32>> = None;
    let features = sliding_window_slabs(model, names, &image, tile, options, cancel, progress, &mut |z0, slab| {
        let full = logits.get_or_insert_with(|| Array4::zeros((slab.shape()[0], shape[0], shape[1], shape[2])));
        full.slice_mut(s![.., z0..z0 + slab.shape()[1], .., ..]).assign(&slab);
        Ok(())
    })?;
    let logits = logits.ok_or_else(|| Error::internal("no tiles were run"))?;
    Ok(WindowOutput { logits, features })
}

/// Where the sliding window reads its tiles from: a [C, Z, Y, X] array, or an image that makes
/// its tiles on demand ([`crate::preprocess::ModelImage`]).
pub trait TileSource {
    /// Spatial shape (z, y, x).
    fn shape(&self) -> [usize; 3];
    /// The tiles at `starts` as one batch [B, C, z, y, x].
    fn gather(&self, starts: &[[usize; 3]], tile: [usize; 3]) -> Array5<f32>;
}

impl TileSource for ArrayView4<'_, f32> {
    fn shape(&self) -> [usize; 3] {
        let s = ArrayView4::shape(self);
        [s[1], s[2], s[3]]
    }

    fn gather(&self, starts: &[[usize; 3]], tile: [usize; 3]) -> Array5<f32> {
        gather_tiles(self.view(), starts, tile)
    }
}

/// Receives consecutive z-slabs of blended logits: (first z, [classes, dz, Y, X]). The slab may be
/// changed in place (e.g. turned into probabilities); it is scratch memory once the call returns.
pub type SlabSink<'a> = dyn FnMut(usize, ArrayViewMut4<'_, f32>) -> Result<()> + 'a;

/// The sliding window, streaming, over `image` (normalised, at least one tile in size): tiles run in z order and the logits are accumulated only over
/// the z range the current row of tiles covers ([classes + 1, tile z, Y, X] floats). As soon as no
/// remaining tile touches a slice, it is normalised by the Gaussian weights and handed to `sink`,
/// in increasing z, each slice exactly once. Returns the per-tile features [tiles, F].
///
/// The arithmetic per voxel is that of one whole-grid accumulator (same tile order, same
/// operations), so the slabs equal [`sliding_window`]'s logits bit for bit without mirroring;
/// with mirroring, a batch's 8 passes are summed before weighting (float rounding differs).
///
/// Runs `model` through ONNX Runtime; [`sliding_window_slabs_with`] takes any predictor.
#[allow(clippy::too_many_arguments)]
pub fn sliding_window_slabs(
    model: &Model,
    names: &OutputNames<'_>,
    image: &dyn TileSource,
    tile: [usize; 3],
    options: &WindowOptions,
    cancel: &CancelToken,
    progress: &mut dyn FnMut(f64) -> bool,
    sink: &mut SlabSink<'_>,
) -> Result<Array2<f32>> {
    let mut predict = |input: Array5<f32>| run_tiles(model, names, input, cancel);
    sliding_window_slabs_with(&mut predict, image, tile, options, cancel, progress, sink)
}

/// A model on a batch of tiles, as the sliding window calls it (MONAI's `predictor` callable):
/// input [B, C, z, y, x] -> (logits [B, K, z, y, x], features [B, F]).
pub type Predict<'a> = dyn FnMut(Array5<f32>) -> Result<(Array5<f32>, Array2<f32>)> + 'a;

/// [`sliding_window_slabs`] with any predictor in place of an ONNX Runtime model: tiling,
/// mirroring, Gaussian blending, streaming and cancellation are all here; `predict` only maps a
/// batch of tiles to their logits and features. `cancel` is checked before every predictor call.
pub fn sliding_window_slabs_with(
    predict: &mut Predict<'_>,
    image: &dyn TileSource,
    tile: [usize; 3],
    options: &WindowOptions,
    cancel: &CancelToken,
    progress: &mut dyn FnMut(f64) -> bool,
    sink: &mut SlabSink<'_>,
) -> Result<Array2<f32>> {
    options.validate()?;
    let shape = image.shape();
    if shape.iter().zip(&tile).any(|(s, t)| s < t) {
        return Err(Error::invalid_argument(format!(
            "image {shape:?} is smaller than the tile {tile:?}: pad it first"
        )));
    }
    let starts = tile_grid(shape, tile, options.overlap);
    let gaussian = gaussian_importance(tile, options.sigma_scale);
    // Accumulators over slices base..base + tile z.
    let mut acc: Option<Array4<f32>> = None;
    let mut weight = Array3::<f32>::zeros((tile[0], shape[1], shape[2]));
    let mut base = 0usize;
    let mut features = Vec::new();
    let flips = if options.mirror { mirror_sets() } else { vec![vec![]] };
    let total = (starts.len() * flips.len()) as f64;
    let mut done = 0usize;

    for batch in starts.chunks(options.tiles_per_batch) {
        let input = image.gather(batch, tile);
        let mut summed: Option<Array5<f32>> = None;
        for axes in &flips {
            if cancel.is_cancelled() {
                return Err(CancelToken::cancelled_error());
            }
            let (logits, feats) = predict(flipped(&input, axes))?;
            let logits = flipped(&logits, axes);
            match summed.as_mut() {
                None => summed = Some(logits),
                Some(sum) => *sum += &logits,
            }
            features.extend(feats.outer_iter().map(|f| f.to_owned()));
            done += batch.len();
            if !progress(done as f64 / total) {
                return Err(CancelToken::cancelled_error());
            }
        }
        let logits = summed.ok_or_else(|| Error::internal("no mirrored pass ran"))?;
        let classes = logits.shape()[1];
        let acc = acc.get_or_insert_with(|| Array4::zeros((classes, tile[0], shape[1], shape[2])));
        for (i, st) in batch.iter().enumerate() {
            // Tiles come z-row by z-row: slices before this tile's start are complete.
            if st[0] > base {
                emit(acc, &mut weight, st[0] - base, base, sink)?;
                base = st[0];
            }
            let z = st[0] - base;
            let region = s![z..z + tile[0], st[1]..st[1] + tile[1], st[2]..st[2] + tile[2]];
            let mut target = acc.slice_mut(s![.., z..z + tile[0], st[1]..st[1] + tile[1], st[2]..st[2] + tile[2]]);
            target += &(&logits.index_axis(Axis(0), i) * &gaussian);
            let mut w = weight.slice_mut(region);
            for _ in &flips {
                w += &gaussian;
            }
        }
    }
    let acc = acc.as_mut().ok_or_else(|| Error::internal("no tiles were run"))?;
    emit(acc, &mut weight, shape[0] - base, base, sink)?;
    let width = features.first().map_or(0, |f| f.len());
    let flat: Vec<f32> = features.iter().flat_map(|f| f.iter().copied()).collect();
    Array2::from_shape_vec((features.len(), width), flat).map_err(|e| Error::internal(e.to_string()))
}

/// Normalises the first `n` accumulated slices (global z `z0..z0 + n`), hands them to `sink`,
/// then shifts the accumulators down by `n` slices and zeroes the freed end.
fn emit(acc: &mut Array4<f32>, weight: &mut Array3<f32>, n: usize, z0: usize, sink: &mut SlabSink<'_>) -> Result<()> {
    let depth = weight.shape()[0];
    if n > depth {
        // Steps are at most one tile, so a row never skips slices; guard the invariant anyway.
        return Err(Error::internal(format!("tile rows {n} slices apart exceed the tile depth {depth}")));
    }
    {
        let w = weight.slice(s![0..n, .., ..]);
        let mut slab = acc.slice_mut(s![.., 0..n, .., ..]);
        for mut class in slab.outer_iter_mut() {
            class /= &w;
        }
        sink(z0, slab)?;
    }
    let plane = weight.shape()[1] * weight.shape()[2];
    let shift = |block: &mut [f32]| {
        block.copy_within(n * plane.., 0);
        block[(depth - n) * plane..].fill(0.0);
    };
    let acc = acc.as_slice_mut().ok_or_else(|| Error::internal("accumulator not contiguous"))?;
    acc.chunks_exact_mut(depth * plane).for_each(shift);
    shift(weight.as_slice_mut().ok_or_else(|| Error::internal("weights not contiguous"))?);
    Ok(())
}

/// Peak heap bytes of the streaming sliding window's own buffers over a model-grid image of
/// `model_shape` (z, y, x) with `channels` input channels, `classes` output classes and tiles
/// of `tile` (z, y, x): the accumulators over one tile of z (logits and weights) and the batch
/// tensors (input, its mirrored copy, the logits and their sum). The image itself and what the
/// sink keeps are not counted.
pub fn peak_bytes(
    model_shape: [usize; 3],
    tile: [usize; 3],
    channels: usize,
    classes: usize,
    options: &WindowOptions,
) -> usize {
    let f = std::mem::size_of::<f32>();
    let [tz, ty, tx] = tile;
    let [_, my, mx] = model_shape;
    let accumulators = (classes + 1) * tz * my * mx * f;
    let passes = if options.mirror { 2 } else { 1 };
    let batch = options.tiles_per_batch * tz * ty * tx * f * (2 * channels + (2 + passes) * classes);
    accumulators + batch
}

/// One ORT run on a batch of tiles: logits [B, K, z, y, x] and features [B, F].
fn run_tiles(
    model: &Model,
    names: &OutputNames<'_>,
    input: Array5<f32>,
    cancel: &CancelToken,
) -> Result<(Array5<f32>, Array2<f32>)> {
    let outputs = model.run_with_options(input.view().into_dyn(), cancel.run_options()?).map_err(|e| {
        if cancel.is_cancelled() {
            CancelToken::cancelled_error()
        } else {
            e
        }
    })?;
    let pick = |name: &str| {
        model
            .output_names()
            .iter()
            .position(|n| n == name)
            .map(|i| outputs[i].clone())
            .ok_or_else(|| Error::new(ErrorKind::Model, format!("model has no output '{name}'")))
    };
    let logits = pick(names.logits)?
        .into_dimensionality()
        .map_err(|_| Error::new(ErrorKind::Model, "logits are not 5-D [N, K, Z, Y, X]"))?;
    let features = pick(names.features)?
        .into_dimensionality()
        .map_err(|_| Error::new(ErrorKind::Model, "features are not 2-D [N, F]"))?;
    Ok((logits, features))
}

/// Every tile start (z, y, x) over an image of `shape`, z slowest.
pub fn tile_grid(shape: [usize; 3], tile: [usize; 3], overlap: f64) -> Vec<[usize; 3]> {
    let [z, y, x] = std::array::from_fn(|a| tile_starts(shape[a], tile[a], overlap));
    let mut grid = Vec::with_capacity(z.len() * y.len() * x.len());
    for &a in &z {
        for &b in &y {
            grid.extend(x.iter().map(|&c| [a, b, c]));
        }
    }
    grid
}

/// The tiles at `starts` copied out of `image` ([C, Z, Y, X]) into one batch [B, C, z, y, x].
pub fn gather_tiles(image: ArrayView4<'_, f32>, starts: &[[usize; 3]], tile: [usize; 3]) -> Array5<f32> {
    let mut batch = Array5::<f32>::zeros((starts.len(), image.shape()[0], tile[0], tile[1], tile[2]));
    for (i, st) in starts.iter().enumerate() {
        batch.index_axis_mut(Axis(0), i).assign(&image.slice(s![
            ..,
            st[0]..st[0] + tile[0],
            st[1]..st[1] + tile[1],
            st[2]..st[2] + tile[2]
        ]));
    }
    batch
}

/// The 8 subsets of the spatial axes (2, 3, 4 of [N, C, Z, Y, X]) to mirror.
fn mirror_sets() -> Vec<Vec<usize>> {
    (0..8u8).map(|m| (0..3).filter(|b| m & (1 << b) != 0).map(|b| b + 2).collect()).collect()
}

fn flipped(a: &Array5<f32>, axes: &[usize]) -> Array5<f32> {
    let mut view = a.view();
    for &ax in axes {
        view.invert_axis(Axis(ax));
    }
    view.as_standard_layout().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_starts_match_nnunet() {
        // nnU-Net compute_steps_for_sliding_window(image 100, tile 64, step 0.5):
        // ceil(36 / 32) + 1 = 3 steps of 36 / 2 = 18 -> [0, 18, 36]
        assert_eq!(tile_starts(100, 64, 0.5), vec![0, 18, 36]);
        // 160 / 64 / 0.5: steps ceil(96/32)+1 = 4 -> 0, 32, 64, 96
        assert_eq!(tile_starts(160, 64, 0.5), vec![0, 32, 64, 96]);
        assert_eq!(tile_starts(64, 64, 0.5), vec![0]);
        assert_eq!(tile_starts(40, 64, 0.5), vec![0]);
        let starts = tile_starts(517, 96, 0.25);
        assert_eq!(*starts.last().unwrap(), 517 - 96);
        assert!(starts.windows(2).all(|w| w[1] - w[0] <= 72));
    }

    #[test]
    fn gaussian_is_centred_symmetric_and_never_zero() {
        let g = gaussian_importance([8, 6, 10], 1.0 / 8.0);
        let max = g.iter().copied().fold(0.0f32, f32::max);
        assert!(g.iter().all(|&v| v > 0.0 && v <= max));
        assert_eq!(g[[0, 0, 0]], g[[7, 5, 9]]);
        assert!(g[[4, 3, 5]] > g[[0, 3, 5]]);
    }

    #[test]
    fn mirror_sets_cover_all_eight_combinations() {
        let sets = mirror_sets();
        assert_eq!(sets.len(), 8);
        assert!(sets.contains(&vec![]) && sets.contains(&vec![2, 3, 4]));
    }

    #[test]
    fn options_are_validated() {
        for bad in [
            WindowOptions { overlap: 1.0, ..Default::default() },
            WindowOptions { tiles_per_batch: 0, ..Default::default() },
        ] {
            assert_eq!(bad.validate().unwrap_err().kind(), ErrorKind::InvalidArgument);
        }
    }

    /// The tiles themselves as logits (K = C) and each tile's mean as its feature.
    fn identity(input: Array5<f32>) -> Result<(Array5<f32>, Array2<f32>)> {
        let means = input.outer_iter().map(|t| t.mean().unwrap_or(0.0)).collect::<Vec<_>>();
        let features = Array2::from_shape_vec((means.len(), 1), means).unwrap();
        Ok((input, features))
    }

    fn ramp(shape: [usize; 4]) -> Array4<f32> {
        Array4::from_shape_fn(shape, |(c, z, y, x)| (c * 1000 + z * 100 + y * 10 + x) as f32)
    }

    /// (first z, slab) as the sink received them.
    type Slabs = Vec<(usize, Array4<f32>)>;

    /// Runs the streaming window with `predict` over `image` and collects the slabs.
    fn run(
        predict: &mut Predict<'_>,
        image: &Array4<f32>,
        tile: [usize; 3],
        options: &WindowOptions,
        cancel: &CancelToken,
    ) -> Result<(Slabs, Array2<f32>)> {
        let mut slabs = Vec::new();
        let features = sliding_window_slabs_with(
            predict,
            &image.view(),
            tile,
            options,
            cancel,
            &mut |_| true,
            &mut |z0, slab| {
                slabs.push((z0, slab.to_owned()));
                Ok(())
            },
        )?;
        Ok((slabs, features))
    }

    fn assembled(slabs: &[(usize, Array4<f32>)], shape: [usize; 4]) -> Array4<f32> {
        let mut out = Array4::from_elem(shape, f32::NAN);
        for (z0, slab) in slabs {
            out.slice_mut(s![.., *z0..*z0 + slab.shape()[1], .., ..]).assign(slab);
        }
        out
    }

    #[test]
    fn identity_predictor_gives_back_the_image() {
        let shape = [2, 11, 9, 7];
        let image = ramp(shape);
        for mirror in [false, true] {
            let options = WindowOptions { tiles_per_batch: 3, mirror, ..Default::default() };
            let (slabs, features) =
                run(&mut identity, &image, [4, 5, 4], &options, &CancelToken::new().unwrap()).unwrap();
            let out = assembled(&slabs, shape);
            for (a, b) in out.iter().zip(image.iter()) {
                assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "mirror {mirror}: {a} vs {b}");
            }
            let tiles = tile_grid([11, 9, 7], [4, 5, 4], 0.5).len();
            assert_eq!(features.dim(), (tiles * if mirror { 8 } else { 1 }, 1));
        }
    }

    #[test]
    fn gaussian_weights_normalise_to_one() {
        let image = Array4::<f32>::zeros((1, 13, 6, 10));
        let mut constant = |input: Array5<f32>| {
            let (b, _, z, y, x) = input.dim();
            Ok((Array5::from_elem((b, 3, z, y, x), 1.0f32), Array2::zeros((b, 2))))
        };
        let (slabs, _) =
            run(&mut constant, &image, [5, 4, 4], &WindowOptions::default(), &CancelToken::new().unwrap()).unwrap();
        let out = assembled(&slabs, [3, 13, 6, 10]);
        assert!(out.iter().all(|v| (v - 1.0).abs() < 1e-6), "blended constant logits must stay 1");
    }

    #[test]
    fn slabs_come_in_order_and_cover_every_slice_once() {
        let image = ramp([1, 23, 5, 5]);
        let options = WindowOptions { tiles_per_batch: 1, ..Default::default() };
        let (slabs, _) = run(&mut identity, &image, [6, 5, 5], &options, &CancelToken::new().unwrap()).unwrap();
        assert!(slabs.len() > 1, "a tall image streams in several slabs");
        let mut next = 0;
        for (z0, slab) in &slabs {
            assert_eq!(*z0, next, "slabs are consecutive, in increasing z");
            assert!(slab.shape()[1] > 0 && slab.shape()[1] <= 6, "a slab is at most one tile deep");
            next += slab.shape()[1];
        }
        assert_eq!(next, 23);
    }

    #[test]
    fn cancel_and_progress_stop_the_window() {
        let image = ramp([1, 12, 8, 8]);
        let tile = [4, 4, 4];
        let calls = std::cell::Cell::new(0);
        let mut counting = |input: Array5<f32>| {
            calls.set(calls.get() + 1);
            identity(input)
        };
        let cancel = CancelToken::new().unwrap();
        cancel.cancel();
        let err = run(&mut counting, &image, tile, &WindowOptions::default(), &cancel).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Cancelled);
        assert_eq!(calls.get(), 0, "a cancelled token stops the window before any predictor call");

        cancel.reset().unwrap();
        let mut stop_after_first = |_: f64| false;
        let err = sliding_window_slabs_with(
            &mut counting,
            &image.view(),
            tile,
            &WindowOptions::default(),
            &cancel,
            &mut stop_after_first,
            &mut |_, _| Ok(()),
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Cancelled);
        assert_eq!(calls.get(), 1, "progress returning false stops after the batch that reported it");
    }

    #[test]
    fn predictor_errors_and_small_images_are_reported() {
        let image = ramp([1, 8, 8, 8]);
        let mut failing = |_: Array5<f32>| -> Result<(Array5<f32>, Array2<f32>)> { Err(Error::invalid_data("boom")) };
        let err =
            run(&mut failing, &image, [4, 4, 4], &WindowOptions::default(), &CancelToken::new().unwrap()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData);
        let err =
            run(&mut identity, &image, [9, 4, 4], &WindowOptions::default(), &CancelToken::new().unwrap()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }
}
