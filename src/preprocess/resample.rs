//! Separable trilinear resampling with a fused Gaussian anti-aliasing prefilter, and nearest
//! neighbour tables for label maps (the convention is in the module documentation of
//! [`crate::preprocess`]).

use std::borrow::Cow;

/// Gaussian kernels end at this many sigmas (scipy's `truncate` default, used by skimage).
const GAUSSIAN_TRUNCATE: f64 = 4.0;
/// Elements per block when accumulating rows/slices, so the output block stays in L1.
const BLOCK: usize = 2048;

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
pub(super) fn resample_linear(
    data: Cow<'_, [f32]>,
    dims: [usize; 3],
    channels: usize,
    new_dims: [usize; 3],
) -> Vec<f32> {
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
pub(super) fn nearest_table(n_in: usize, n_out: usize) -> Vec<usize> {
    if n_in == n_out {
        return (0..n_out).collect();
    }
    let scale = n_in as f64 / n_out as f64;
    (0..n_out).map(|j| (((j as f64 + 0.5) * scale - 0.5 + 0.5).floor().max(0.0) as usize).min(n_in - 1)).collect()
}

/// `out[x, y, z] = f(src[tables[0][x], tables[1][y], tables[2][z]])` for a one-channel `src` of
/// `src_dims` (x, y, z; x fastest); the output dims are the table lengths.
pub(super) fn sample_nearest<T: Copy, U>(
    src: &[T],
    src_dims: [usize; 3],
    tables: &[Vec<usize>; 3],
    f: impl Fn(T) -> U,
) -> Vec<U> {
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
}
