//! Padding to the patch size (centred like nnU-Net) and cropping the padding off again.

use std::ops::Range;

use ndarray::{s, Array4, ArrayView4};

use crate::error::{Error, Result};

/// Padding (before, after) in (z, y, x) for resampled dims (x, y, z): up to the patch size,
/// centred like nnU-Net (`before = diff / 2`).
pub(super) fn padding(dims: [usize; 3], patch_zyx: [usize; 3]) -> ([usize; 3], [usize; 3]) {
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
pub(super) fn pad<T: Copy>(
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
pub(super) fn crop(map: ArrayView4<f32>, [rz, ry, rx]: [Range<usize>; 3]) -> Vec<f32> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_is_centred_like_nnunet() {
        // dims (x, y, z) = (10, 20, 7), patch (z, y, x) = (8, 16, 16): z 7 -> 8, y stays, x 10 -> 16.
        let (before, after) = padding([10, 20, 7], [8, 16, 16]);
        assert_eq!(before, [0, 0, 3]);
        assert_eq!(after, [1, 0, 3]);
    }
}
