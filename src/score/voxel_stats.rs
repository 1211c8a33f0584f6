//! The voxel-wise part of a score, accumulated in one streaming pass over the softmax
//! probabilities ([`VolumeStats`]), and the per-voxel maps built on the same arithmetic.

use std::collections::VecDeque;

use ndarray::{Array3, ArrayView2, ArrayView4, Axis};

use super::gap::feature_gap;
use super::record::{Score, SCORE_FORMAT_VERSION};
#[cfg(doc)]
use super::score_volume;
use super::threshold::{first_peak_bin, otsu_bin};
use super::{ScoreOptions, ThresholdMethod};
use crate::bundle::SourceKnowledge;
use crate::error::{Error, ErrorKind, Result};
use crate::labels::top_class;

/// How far the per-voxel class probabilities may sum away from 1, and a probability exceed 1,
/// before the input is refused as "not softmax probabilities" (catches logits and a wrong layout,
/// tolerates half-precision rounding).
pub const PROBABILITY_TOLERANCE: f32 = 1e-2;

/// Normalised entropy H = -sum_c p_c ln p_c / ln C of every voxel of probabilities [C, Z, Y, X],
/// in [0, 1] (0 ln 0 = 0). Inputs are not validated here (NaN in, NaN out); with C < 2 every H is
/// 0. Uses the same arithmetic as the scores, so its values match their histogram bit for bit.
pub fn entropy_map(probs: ArrayView4<f32>) -> Array3<f32> {
    let (c, z, y, x) = probs.dim();
    if c < 2 {
        return Array3::zeros((z, y, x));
    }
    let inv_ln_c = 1.0 / (c as f32).ln();
    let probs = probs.as_standard_layout();
    let data = probs.as_slice().expect("standard layout is contiguous");
    let stride = z * y * x;
    let out: Vec<f32> = (0..stride).map(|i| entropy_of((0..c).map(|k| data[k * stride + i]), inv_ln_c)).collect();
    Array3::from_shape_vec((z, y, x), out).expect("shape matches")
}

/// The dilated predicted foreground F of probabilities [C, Z, Y, X]: voxels whose argmax is not
/// class 0 (ties go to the lower class, so an exact tie with background is background), dilated by
/// a (2r+1)^3 cube, clipped at the border. Validates like [`score_volume`].
pub fn foreground_region(probs: ArrayView4<f32>, dilation: usize) -> Result<Array3<bool>> {
    let (c, z, y, x) = probs.dim();
    let options = ScoreOptions { foreground_dilation: dilation, ..ScoreOptions::default() };
    let mut stats = VolumeStats::new(c, [z, y, x], &options)?;
    let mut region = Vec::with_capacity(z * y * x);
    stats.add_slab_with(probs, &mut |_, mask: &[u8]| region.extend(mask.iter().map(|&m| m != 0)))?;
    Ok(Array3::from_shape_vec((z, y, x), region).expect("shape matches"))
}

/// The voxel-wise part of a [`Score`].
#[derive(Clone, Debug, PartialEq)]
pub struct VoxelSummary {
    /// As [`Score::asd`].
    pub asd: f64,
    /// As [`Score::asd_threshold`].
    pub asd_threshold: f64,
    /// As [`Score::confidence`].
    pub confidence: f64,
    /// As [`Score::foreground_fraction`].
    pub foreground_fraction: f64,
    /// As [`Score::entropy_histogram`].
    pub entropy_histogram: Vec<u32>,
    /// Voxels in the volume.
    pub voxels: u64,
    /// Voxels predicted foreground (argmax != 0), before dilation.
    pub predicted_foreground_voxels: u64,
    /// Voxels in the dilated foreground F.
    pub foreground_voxels: u64,
}

/// Accumulates the voxel-wise part of a score (entropy histogram, ASD, confidence, foreground
/// fraction) from softmax probabilities, so the whole probability volume never needs to exist at
/// once: create it with the volume's class count and shape, call [`VolumeStats::add_slab`] with
/// [C, dz, Y, X] slabs of consecutive z ranges (any thickness, from z = 0 up), then
/// [`VolumeStats::finish`] or [`VolumeStats::into_score`]. Passing the whole volume as one slab
/// is fine; the result is bit-identical however the volume is cut.
///
/// The dilation needs r slices beyond each slice, so up to r slices of probabilities are kept
/// (copied) between calls; memory is O(r * C * Y * X). After an error the accumulator refuses
/// further use.
pub struct VolumeStats {
    options: ScoreOptions,
    classes: usize,
    shape: [usize; 3],
    inv_ln_c: f32,
    /// Next slice add_slab expects.
    next_z: usize,
    /// Slices < done_z are in the accumulators.
    done_z: usize,
    /// In-plane dilated foreground masks of slices mask_z0..next_z.
    masks: VecDeque<Vec<u8>>,
    mask_z0: usize,
    free_masks: Vec<Vec<u8>>,
    /// Probabilities [C][Y*X] of slices done_z..next_z that arrived in an earlier slab.
    pending: VecDeque<Vec<f32>>,
    predicted_foreground: u64,
    acc: Accumulator,
    scratch: Scratch,
    failed: bool,
}

struct Scratch {
    fg_max: Vec<f32>,
    sum: Vec<f32>,
    mask: Vec<u8>,
    row_dilated: Vec<u8>,
    region: Vec<u8>,
}

/// Per foreground class (index c-1) and histogram bin: voxel count and sum of H.
struct Accumulator {
    bins: usize,
    counts: Vec<u64>,
    sums: Vec<f64>,
    /// Per foreground class: voxels with H exactly 0 (in bin 0, but never above a threshold).
    zeros: Vec<u64>,
    confidence_sum: f64,
    voxels: u64,
}

/// One slice of probabilities: its C planes of Y * X values each.
struct SliceRef<'a> {
    planes: Vec<&'a [f32]>,
}

impl SliceRef<'_> {
    fn plane(&self, c: usize) -> &[f32] {
        self.planes[c]
    }
}

/// Plane (c, z) of a [C, Z, Y, X] view, if it is contiguous in standard order.
fn plane_of<'a>(view: ArrayView4<'a, f32>, c: usize, z: usize) -> Option<&'a [f32]> {
    view.index_axis_move(Axis(0), c).index_axis_move(Axis(0), z).to_slice()
}

impl VolumeStats {
    /// An empty accumulator for a volume of `classes` classes (background = class 0) and spatial
    /// shape [Z, Y, X]. Errors: C < 2, an empty shape or bad options (InvalidArgument).
    pub fn new(classes: usize, shape: [usize; 3], options: &ScoreOptions) -> Result<VolumeStats> {
        options.validate()?;
        if classes < 2 {
            return Err(Error::invalid_argument(format!(
                "probabilities have {classes} class(es); scoring needs background and at least one foreground class"
            )));
        }
        if shape.contains(&0) {
            return Err(Error::invalid_argument(format!("the volume shape {shape:?} (z, y, x) has no voxels")));
        }
        let plane = shape[1] * shape[2];
        let fg = classes - 1;
        Ok(VolumeStats {
            options: options.clone(),
            classes,
            shape,
            inv_ln_c: 1.0 / (classes as f32).ln(),
            next_z: 0,
            done_z: 0,
            masks: VecDeque::new(),
            mask_z0: 0,
            free_masks: Vec::new(),
            pending: VecDeque::new(),
            predicted_foreground: 0,
            acc: Accumulator {
                bins: options.histogram_bins,
                counts: vec![0; fg * options.histogram_bins],
                sums: vec![0.0; fg * options.histogram_bins],
                zeros: vec![0; fg],
                confidence_sum: 0.0,
                voxels: 0,
            },
            scratch: Scratch {
                fg_max: vec![0.0; plane],
                sum: vec![0.0; plane],
                mask: vec![0; plane],
                row_dilated: vec![0; plane],
                region: vec![0; plane],
            },
            failed: false,
        })
    }

    /// Peak heap bytes of a [`VolumeStats`] for `classes` classes over a volume of `shape`
    /// (z, y, x) with `options`, the slabs given to it counted too: up to r = foreground_dilation
    /// pending slices of probabilities, the slab in hand and its per-plane scratch, about
    /// (r + 2) [C, Y, X] f32 planes. Histograms are small and not counted.
    pub fn peak_bytes(classes: usize, shape: [usize; 3], options: &ScoreOptions) -> usize {
        (options.foreground_dilation + 2) * classes * shape[1] * shape[2] * std::mem::size_of::<f32>()
    }

    /// Slices given so far.
    pub fn slices_added(&self) -> usize {
        self.next_z
    }

    /// Adds the probabilities [C, dz, Y, X] of slices `slices_added()..slices_added() + dz`.
    /// Errors: a slab of the wrong class count or in-plane size, or past the end of the volume
    /// (InvalidArgument); invalid probabilities (InvalidData, naming class and voxel).
    pub fn add_slab(&mut self, slab: ArrayView4<f32>) -> Result<()> {
        self.add_slab_with(slab, &mut |_, _| {})
    }

    /// add_slab, calling `visit(z, region)` with the dilated foreground of each finalised slice.
    fn add_slab_with(&mut self, slab: ArrayView4<f32>, visit: &mut dyn FnMut(usize, &[u8])) -> Result<()> {
        if self.failed {
            return Err(Error::invalid_argument("this VolumeStats failed earlier and cannot be used further"));
        }
        let result = self.add_slab_inner(slab, visit);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn add_slab_inner(&mut self, slab: ArrayView4<f32>, visit: &mut dyn FnMut(usize, &[u8])) -> Result<()> {
        let (c, dz, y, x) = slab.dim();
        let [zs, ys, xs] = self.shape;
        if c != self.classes || y != ys || x != xs {
            return Err(Error::invalid_argument(format!(
                "probability slab is [{c}, {dz}, {y}, {x}] (C, Z, Y, X); the volume has {} classes and in-plane size \
                 [{ys}, {xs}]",
                self.classes
            )));
        }
        if self.next_z + dz > zs {
            return Err(Error::invalid_argument(format!(
                "probability slab of {dz} slices starting at z = {} runs past the volume's {zs} slices",
                self.next_z
            )));
        }
        if dz == 0 {
            return Ok(());
        }
        // Planes of a slab cut from a standard [C, Z, Y, X] array are contiguous even though the
        // slab is not; anything else (reversed or permuted axes) is copied once.
        let standard;
        let slab = if plane_of(slab, 0, 0).is_some() {
            slab
        } else {
            standard = slab.as_standard_layout().into_owned();
            standard.view()
        };
        let plane = y * x;
        let z0 = self.next_z;
        let slab_slice = |z: usize| SliceRef {
            planes: (0..c).map(|k| plane_of(slab, k, z - z0).expect("planes share their strides")).collect(),
        };
        let r = self.options.foreground_dilation;
        for z in z0..z0 + dz {
            self.predicted_foreground += self.foreground_mask(z, &slab_slice(z))?;
            let mut mask = self.free_masks.pop().unwrap_or_else(|| vec![0; plane]);
            dilate_plane(&self.scratch.mask, &mut self.scratch.row_dilated, &mut mask, y, x, r);
            self.masks.push_back(mask);
            self.next_z = z + 1;
            while self.done_z < self.next_z && (self.done_z + r < self.next_z || self.next_z == zs) {
                let zf = self.done_z;
                let owned;
                let probs = if zf < z0 {
                    owned = self.pending.pop_front().expect("pending holds every unfinished earlier slice");
                    SliceRef { planes: owned.chunks_exact(plane).collect() }
                } else {
                    slab_slice(zf)
                };
                self.finalise(zf, &probs);
                visit(zf, &self.scratch.region);
                self.done_z += 1;
            }
            // Recycle the masks no unfinished slice needs any more.
            while self.mask_z0 + r < self.done_z {
                let m = self.masks.pop_front().expect("masks cover mask_z0..next_z");
                self.free_masks.push(m);
                self.mask_z0 += 1;
            }
        }
        // Keep copies of the slices still waiting for context.
        for z in self.done_z.max(z0)..self.next_z {
            let s = slab_slice(z);
            let mut copy = Vec::with_capacity(c * plane);
            for k in 0..c {
                copy.extend_from_slice(s.plane(k));
            }
            self.pending.push_back(copy);
        }
        Ok(())
    }

    /// Validates slice z and writes its undilated foreground mask to scratch.mask; returns its
    /// foreground count.
    fn foreground_mask(&mut self, z: usize, probs: &SliceRef) -> Result<u64> {
        let max_p = 1.0 + PROBABILITY_TOLERANCE;
        let mut bad = false;
        let Scratch { fg_max, sum, mask, .. } = &mut self.scratch;
        let p0 = probs.plane(0);
        for c in 0..self.classes {
            let pc = probs.plane(c);
            bad |= pc.iter().fold(false, |b, &v| b | !(v >= 0.0 && v <= max_p));
            match c {
                0 => sum.copy_from_slice(pc),
                1 => {
                    fg_max.copy_from_slice(pc);
                    sum.iter_mut().zip(pc).for_each(|(s, &v)| *s += v);
                }
                _ => {
                    fg_max.iter_mut().zip(pc).for_each(|(m, &v)| *m = m.max(v));
                    sum.iter_mut().zip(pc).for_each(|(s, &v)| *s += v);
                }
            }
        }
        bad |= sum.iter().fold(false, |b, &s| b | not_normalised(s));
        if bad {
            return Err(self.locate_bad(z, probs));
        }
        let mut count = 0u64;
        for ((m, &f), &b) in mask.iter_mut().zip(fg_max.iter()).zip(p0) {
            *m = u8::from(f > b);
            count += u64::from(*m);
        }
        Ok(count)
    }

    fn locate_bad(&self, z: usize, probs: &SliceRef) -> Error {
        let plane = self.shape[1] * self.shape[2];
        let at = |i: usize| format!("(z, y, x) = ({z}, {}, {})", i / self.shape[2], i % self.shape[2]);
        for c in 0..self.classes {
            if let Some((i, v)) = probs.plane(c).iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Error::invalid_data(format!("probabilities: {v} at class {c}, voxel {}", at(i)));
            }
        }
        for c in 0..self.classes {
            let max_p = 1.0 + PROBABILITY_TOLERANCE;
            if let Some((i, v)) = probs.plane(c).iter().enumerate().find(|(_, &v)| !(v >= 0.0 && v <= max_p)) {
                return Error::invalid_data(format!(
                    "probabilities: {v} at class {c}, voxel {} is outside [0, 1]; pass softmax probabilities, not \
                     logits",
                    at(i)
                ));
            }
        }
        for i in 0..plane {
            let s: f32 = (0..self.classes).map(|c| probs.plane(c)[i]).sum();
            if not_normalised(s) {
                return Error::invalid_data(format!(
                    "probabilities: the classes sum to {s} at voxel {}, not 1; pass softmax probabilities laid out \
                     [C, Z, Y, X]",
                    at(i)
                ));
            }
        }
        Error::internal("invalid probabilities not located")
    }

    /// Adds slice z (whose in-plane masks z-r..=z+r are present) to the accumulators; leaves its
    /// dilated foreground in scratch.region.
    fn finalise(&mut self, z: usize, probs: &SliceRef) {
        let r = self.options.foreground_dilation;
        let lo = z.saturating_sub(r);
        let hi = (z + r).min(self.next_z - 1);
        let region = &mut self.scratch.region;
        region.copy_from_slice(&self.masks[lo - self.mask_z0]);
        for zz in lo + 1..=hi {
            region.iter_mut().zip(&self.masks[zz - self.mask_z0]).for_each(|(a, &b)| *a |= b);
        }
        let classes = self.classes;
        let inv_ln_c = self.inv_ln_c;
        let acc = &mut self.acc;
        let bins = acc.bins;
        for (i, _) in region.iter().enumerate().filter(|(_, &m)| m != 0) {
            let at = |c: usize| probs.planes[c][i];
            let h = entropy_of((0..classes).map(at), inv_ln_c);
            // The most probable foreground class (a dilated voxel's may be below background).
            let (best_fg, best_p) = top_class((1..classes).map(at));
            let best_c = best_fg + 1;
            let max_p = at(0).max(best_p);
            let k = (best_c - 1) * bins + bin_of(h, bins);
            acc.counts[k] += 1;
            acc.sums[k] += f64::from(h);
            if h == 0.0 {
                acc.zeros[best_c - 1] += 1;
            }
            acc.confidence_sum += f64::from(max_p);
            acc.voxels += 1;
        }
    }

    /// The voxel-wise summary. Errors if not every slice was added (InvalidArgument).
    pub fn finish(self) -> Result<VoxelSummary> {
        if self.failed {
            return Err(Error::invalid_argument("this VolumeStats failed earlier and cannot be used further"));
        }
        let [zs, ys, xs] = self.shape;
        if self.next_z != zs {
            return Err(Error::invalid_argument(format!(
                "only {} of the volume's {zs} slices were added to its VolumeStats",
                self.next_z
            )));
        }
        let acc = &self.acc;
        let bins = acc.bins;
        let fg = self.classes - 1;
        let histogram: Vec<u64> = (0..bins).map(|b| (0..fg).map(|c| acc.counts[c * bins + b]).sum()).collect();
        let (first_bin, skip_zeros) = match self.options.threshold {
            ThresholdMethod::None => (0, false),
            ThresholdMethod::FirstPeak => (first_peak_bin(&histogram, self.options.peak_smoothing), true),
            ThresholdMethod::Otsu => (otsu_bin(&histogram), true),
        };
        // Per class: (count, sum of H) over the voxels above the threshold.
        let above: Vec<(u64, f64)> = (0..fg)
            .map(|c| {
                let range = c * bins + first_bin..(c + 1) * bins;
                let mut n: u64 = acc.counts[range.clone()].iter().sum();
                if skip_zeros && first_bin == 0 {
                    n -= acc.zeros[c];
                }
                (n, acc.sums[range].iter().sum())
            })
            .collect();
        let asd = if self.options.class_balanced {
            let means: Vec<f64> = above.iter().filter(|(n, _)| *n > 0).map(|(n, s)| s / *n as f64).collect();
            if means.is_empty() {
                0.0
            } else {
                means.iter().sum::<f64>() / means.len() as f64
            }
        } else {
            let n: u64 = above.iter().map(|a| a.0).sum();
            let s: f64 = above.iter().map(|a| a.1).sum();
            if n == 0 {
                0.0
            } else {
                s / n as f64
            }
        };
        let voxels = (zs * ys * xs) as u64;
        let entropy_histogram = histogram
            .iter()
            .map(|&n| {
                u32::try_from(n).map_err(|_| {
                    Error::new(ErrorKind::TooLarge, format!("{n} voxels in one entropy bin exceed the score format"))
                })
            })
            .collect::<Result<Vec<u32>>>()?;
        Ok(VoxelSummary {
            asd,
            asd_threshold: first_bin as f64 / bins as f64,
            confidence: if acc.voxels == 0 { 0.0 } else { acc.confidence_sum / acc.voxels as f64 },
            foreground_fraction: self.predicted_foreground as f64 / voxels as f64,
            entropy_histogram,
            voxels,
            predicted_foreground_voxels: self.predicted_foreground,
            foreground_voxels: acc.voxels,
        })
    }

    /// Finishes the voxel-wise part and combines it with the embedding and knowledge gap of the
    /// volume's tile features [T, F] (see [`feature_gap`]) into a [`Score`].
    pub fn into_score(self, id: &str, tile_features: ArrayView2<f32>, source: &SourceKnowledge) -> Result<Score> {
        if id.is_empty() {
            return Err(Error::invalid_argument("a score needs a non-empty volume id"));
        }
        let options = self.options.clone();
        let (embedding, gap_kl, gap_anchor) = feature_gap(tile_features, source, &options)?;
        let v = self.finish()?;
        Ok(Score {
            format_version: SCORE_FORMAT_VERSION,
            id: id.to_string(),
            embedding,
            gap_kl,
            gap_anchor,
            asd: v.asd,
            asd_threshold: v.asd_threshold,
            confidence: v.confidence,
            foreground_fraction: v.foreground_fraction,
            entropy_histogram: v.entropy_histogram,
            voxels: v.voxels,
            foreground_voxels: v.foreground_voxels,
            options,
        })
    }
}

/// Whether a voxel's class probabilities, summing to `sum`, are not a distribution.
#[inline]
fn not_normalised(sum: f32) -> bool {
    let off = (sum - 1.0).abs();
    off.is_nan() || off > PROBABILITY_TOLERANCE
}

/// Normalised entropy of one voxel's probabilities (0 ln 0 = 0), clamped to [0, 1].
#[inline]
fn entropy_of(probs: impl Iterator<Item = f32>, inv_ln_c: f32) -> f32 {
    let mut h = 0f32;
    for p in probs {
        if p > 0.0 {
            h -= p * p.ln();
        }
    }
    (h * inv_ln_c).clamp(0.0, 1.0)
}

/// The bin of H in a `bins`-bin histogram on [0, 1] with bins (j/B, (j+1)/B] and H = 0 in bin 0.
#[inline]
fn bin_of(h: f32, bins: usize) -> usize {
    ((h * bins as f32).ceil() as usize).saturating_sub(1).min(bins - 1)
}

/// Dilates a [Y, X] 0/1 mask by r voxels along x, then y (the in-plane part of the cube).
fn dilate_plane(mask: &[u8], tmp: &mut [u8], out: &mut [u8], y: usize, x: usize, r: usize) {
    for (src, dst) in mask.chunks_exact(x).zip(tmp.chunks_exact_mut(x)) {
        dst.copy_from_slice(src);
        for k in 1..=r.min(x - 1) {
            dst[..x - k].iter_mut().zip(&src[k..]).for_each(|(d, &s)| *d |= s);
            dst[k..].iter_mut().zip(&src[..x - k]).for_each(|(d, &s)| *d |= s);
        }
    }
    out.copy_from_slice(tmp);
    let n = tmp.len();
    for k in 1..=r.min(y.saturating_sub(1)) {
        let shift = k * x;
        out[..n - shift].iter_mut().zip(&tmp[shift..]).for_each(|(d, &s)| *d |= s);
        out[shift..].iter_mut().zip(&tmp[..n - shift]).for_each(|(d, &s)| *d |= s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_are_right_closed() {
        assert_eq!(bin_of(0.0, 100), 0);
        assert_eq!(bin_of(0.005, 100), 0);
        assert_eq!(bin_of(0.015, 100), 1);
        assert_eq!(bin_of(1.0, 100), 99);
        // A value on an inner edge belongs to the bin below it (so "H > tau" is "bin >= j").
        assert_eq!(bin_of(0.5, 100), 49);
        assert_eq!(bin_of(0.25, 4), 0);
    }

    #[test]
    fn dilate_plane_is_a_clipped_square() {
        let (y, x) = (5, 6);
        let mut mask = vec![0u8; y * x];
        mask[2 * x + 2] = 1;
        mask[0] = 1;
        let (mut tmp, mut out) = (vec![0; y * x], vec![0; y * x]);
        dilate_plane(&mask, &mut tmp, &mut out, y, x, 1);
        for yy in 0..y {
            for xx in 0..x {
                let near = |cy: usize, cx: usize| yy.abs_diff(cy) <= 1 && xx.abs_diff(cx) <= 1;
                assert_eq!(out[yy * x + xx] == 1, near(2, 2) || near(0, 0), "({yy}, {xx})");
            }
        }
    }
}
