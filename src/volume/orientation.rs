//! Voxel-axis permutations and flips (nibabel's "ornt"), applied to data and affine without
//! resampling, and nibabel's `io_orientation` choice of the closest canonical (RAS+) order.

use super::affine::{self, Affine};
use super::Volume;
use crate::error::{Error, ErrorKind, Result};

/// nibabel's `np.allclose(col, 0)`: a direction column this small has no orientation.
const ZERO_COLUMN_TOLERANCE: f64 = 1e-8;
/// Differences below this between direction cosines are rounding noise, not a preference.
const TIE_TOLERANCE: f64 = 1e-10;

/// A permutation + flips of voxel axes (nibabel "ornt"), applied to data and affine.
///
/// Input axis `i` becomes output axis `axes[i]`, reversed when `flips[i]`; `dims` is the input grid.
#[derive(Clone, Debug, PartialEq)]
pub struct Orientation {
    axes: [usize; 3],
    flips: [bool; 3],
    dims: [usize; 3],
}

impl Orientation {
    /// The orientation that changes nothing on a grid of `dims`.
    pub fn identity(dims: [usize; 3]) -> Self {
        Orientation { axes: [0, 1, 2], flips: [false; 3], dims }
    }

    pub fn is_identity(&self) -> bool {
        self.axes == [0, 1, 2] && self.flips == [false; 3]
    }

    /// Dims of the grid this orientation applies to (the original grid).
    pub fn input_dims(&self) -> [usize; 3] {
        self.dims
    }

    /// Dims of the reoriented (canonical) grid.
    pub fn output_dims(&self) -> [usize; 3] {
        let mut out = [0; 3];
        for (i, &axis) in self.axes.iter().enumerate() {
            out[axis] = self.dims[i];
        }
        out
    }

    /// Original -> reoriented; `GeometryMismatch` if `v` is not on a grid of [`Self::input_dims`].
    pub fn apply(&self, v: &Volume) -> Result<Volume> {
        if v.dims() != self.dims {
            return Err(Error::new(
                ErrorKind::GeometryMismatch,
                format!("the orientation is for dims {:?} but the volume has dims {:?}", self.dims, v.dims()),
            ));
        }
        Ok(self.reorient(v))
    }

    /// Reoriented -> original grid: the exact inverse of [`Self::apply`] (data bit-identical, affine
    /// to rounding). `GeometryMismatch` if `v` is not on a grid of [`Self::output_dims`].
    pub fn undo(&self, v: &Volume) -> Result<Volume> {
        self.inverse().apply(v)
    }

    /// [`Self::undo`] for a plain per-voxel buffer (label map, probabilities) with `channels`
    /// channels, x fastest, channel slowest, on the reoriented grid.
    ///
    /// # Panics
    /// If `data.len()` is not `channels` times the voxel count of [`Self::output_dims`].
    pub fn undo_buffer<T: Copy>(&self, data: &[T], channels: usize) -> Vec<T> {
        self.inverse().permute(data, channels)
    }

    /// nibabel `io_orientation`: the polar factor of the direction matrix (SVD), then output axes
    /// assigned greedily, strongest input axis first, each output axis used once.
    pub(super) fn closest_canonical(a: &Affine, dims: [usize; 3]) -> Orientation {
        let r = polar_direction(a);
        // nibabel 5.4 visits input axes by decreasing max(R**2) of their column, stable on ties.
        let strength = |c: usize| (0..3).map(|row| r[(row, c)] * r[(row, c)]).fold(0.0, f64::max);
        let mut remaining = vec![0, 1, 2];
        let mut order = Vec::with_capacity(3);
        while let Some(strongest) = argmax(remaining.iter().map(|&c| (c, strength(c)))) {
            order.push(strongest);
            remaining.retain(|&c| c != strongest);
        }

        let mut r = r;
        let mut assigned = [None; 3];
        for in_axis in order {
            let col = r.column(in_axis);
            if col.iter().all(|v| v.abs() <= ZERO_COLUMN_TOLERANCE) {
                continue;
            }
            let out_axis = argmax(col.iter().map(|v| v.abs()).enumerate()).unwrap_or(0);
            assigned[in_axis] = Some((out_axis, col[out_axis] < 0.0));
            r.row_mut(out_axis).fill(0.0);
        }
        Self::from_assignment(assigned, dims)
    }

    /// Completes a partial assignment: an axis nibabel leaves unassigned (only possible for
    /// degenerate affines, which `Volume` refuses) takes the first free output axis, unflipped.
    fn from_assignment(assigned: [Option<(usize, bool)>; 3], dims: [usize; 3]) -> Orientation {
        let mut free = (0..3).filter(|axis| !assigned.iter().flatten().any(|(used, _)| used == axis));
        let mut orientation = Orientation::identity(dims);
        for (i, slot) in assigned.iter().enumerate() {
            let (axis, flip) = slot.unwrap_or_else(|| (free.next().unwrap_or(i), false));
            orientation.axes[i] = axis;
            orientation.flips[i] = flip;
        }
        orientation
    }

    /// Reorients a volume known to be on `self.dims`. The new affine is the old one times the
    /// output-voxel -> input-voxel map (nibabel `affine.dot(inv_ornt_aff(ornt, shape))`).
    pub(super) fn reorient(&self, v: &Volume) -> Volume {
        if self.is_identity() {
            return v.clone();
        }
        Volume {
            data: self.permute(&v.data, v.channels),
            dims: self.output_dims(),
            channels: v.channels,
            affine: affine::multiply(&v.affine, &self.output_to_input_voxels()),
            codes: v.codes,
        }
    }

    /// The orientation that maps the output grid back onto the input grid.
    fn inverse(&self) -> Orientation {
        let mut inverse = Orientation::identity(self.output_dims());
        for i in 0..3 {
            inverse.axes[self.axes[i]] = i;
            inverse.flips[self.axes[i]] = self.flips[i];
        }
        inverse
    }

    /// Output voxel coordinates -> input voxel coordinates: input index n along axis i is
    /// `dims[i] - 1 - m` (flipped) or `m`, where m is the index along output axis `axes[i]`.
    pub(super) fn output_to_input_voxels(&self) -> Affine {
        let mut m = [[0.0; 4]; 4];
        m[3][3] = 1.0;
        for i in 0..3 {
            let (sign, offset) = if self.flips[i] { (-1.0, self.dims[i] as f64 - 1.0) } else { (1.0, 0.0) };
            m[i][self.axes[i]] = sign;
            m[i][3] = offset;
        }
        m
    }

    /// Moves every voxel of every channel from the input grid to its place on the output grid.
    fn permute<T: Copy>(&self, data: &[T], channels: usize) -> Vec<T> {
        let n: usize = self.dims.iter().product();
        assert_eq!(
            Some(data.len()),
            n.checked_mul(channels),
            "buffer length does not match dims {:?} x {channels} channel(s)",
            self.dims
        );
        let out_dims = self.output_dims();
        let out_strides = [1, out_dims[0], out_dims[0] * out_dims[1]];
        // Per input axis: output offset of input index 0, and output step per input step.
        let mut base = 0isize;
        let mut step = [0isize; 3];
        for i in 0..3 {
            let stride = out_strides[self.axes[i]] as isize;
            if self.flips[i] {
                base += (self.dims[i] as isize - 1) * stride;
                step[i] = -stride;
            } else {
                step[i] = stride;
            }
        }
        let mut out = data.to_vec();
        for (src, dst) in data.chunks_exact(n.max(1)).zip(out.chunks_exact_mut(n.max(1))) {
            let mut voxels = src.iter();
            for k in 0..self.dims[2] as isize {
                for j in 0..self.dims[1] as isize {
                    let row = base + j * step[1] + k * step[2];
                    for (i, value) in (0..self.dims[0] as isize).zip(&mut voxels) {
                        dst[(row + i * step[0]) as usize] = *value;
                    }
                }
            }
        }
        out
    }
}

/// Index of the largest value, like numpy's argmax on ties: a later value must beat an earlier one
/// by more than SVD rounding noise. So exact ties (a 45 degree rotation) go to the lower axis, while
/// nibabel's choice there depends on LAPACK's rounding noise: for such affines the result matches
/// nibabel about half the time (every other affine matches exactly).
fn argmax(candidates: impl IntoIterator<Item = (usize, f64)>) -> Option<usize> {
    let best = candidates.into_iter().fold(None, |best, (i, v)| match best {
        Some((_, b)) if v <= b + TIE_TOLERANCE => best,
        _ => Some((i, v)),
    });
    best.map(|(i, _)| i)
}

/// nibabel's `R` in `io_orientation`: the closest orthogonal matrix to the unit-column direction
/// matrix, keeping only singular values above `S.max() * 3 * eps` (rank threshold).
fn polar_direction(a: &Affine) -> nalgebra::Matrix3<f64> {
    let spacing = affine::spacing(a).map(|s| if s == 0.0 { 1.0 } else { s });
    let rs =
        affine::linear_part(a) * nalgebra::Matrix3::from_diagonal(&nalgebra::Vector3::from(spacing).map(|s| 1.0 / s));
    let svd = rs.svd(true, true);
    let (Some(u), Some(v_t)) = (svd.u, svd.v_t) else {
        return rs;
    };
    let tol = svd.singular_values.max() * 3.0 * f64::EPSILON;
    let mut r = nalgebra::Matrix3::zeros();
    for (i, s) in svd.singular_values.iter().enumerate() {
        if *s > tol {
            r += u.column(i) * v_t.row(i);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(dims: [usize; 3], channels: usize, a: Affine) -> Volume {
        let n = dims.iter().product::<usize>() * channels;
        Volume::new((0..n).map(|v| v as f32).collect(), dims, channels, a).unwrap()
    }

    #[test]
    fn ras_is_identity() {
        let a = [[2.0, 0.1, 0.0, 5.0], [0.0, 2.0, 0.0, 1.0], [0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
        let v = volume([2, 3, 4], 1, a);
        let (c, o) = v.to_canonical();
        assert!(o.is_identity());
        assert_eq!(c, v);
    }

    #[test]
    fn las_flips_x_like_nibabel() {
        // nibabel: as_closest_canonical(Nifti1Image(arange(24).reshape(2,3,4,order='F'), diag(-2,3,4)))
        let a = [[-2.0, 0.0, 0.0, 10.0], [0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 4.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
        let (c, o) = volume([2, 3, 4], 1, a).to_canonical();
        assert_eq!(c.affine()[0], [2.0, 0.0, 0.0, 8.0]);
        assert_eq!(&c.data()[..4], &[1.0, 0.0, 3.0, 2.0]);
        assert_eq!(o.output_dims(), [2, 3, 4]);
    }

    #[test]
    fn permuted_axes_and_exact_undo() {
        // Voxel axes (i, j, k) point along (S, -R, A): canonical order is (j flipped, k, i).
        let a = [[0.0, -1.5, 0.0, 1.0], [0.0, 0.0, 2.0, 2.0], [3.0, 0.0, 0.0, 3.0], [0.0, 0.0, 0.0, 1.0]];
        let v = volume([2, 3, 4], 2, a);
        let (c, o) = v.to_canonical();
        assert_eq!(c.dims(), [3, 4, 2]);
        assert_eq!(o.output_dims(), [3, 4, 2]);
        // Canonical voxel (0,0,0) is original (0, 2, 0), value 0 + 2*2 = 4.
        assert_eq!(c.data()[0], 4.0);
        assert_eq!(
            c.affine(),
            [[1.5, 0.0, 0.0, -2.0], [0.0, 2.0, 0.0, 2.0], [0.0, 0.0, 3.0, 3.0], [0.0, 0.0, 0.0, 1.0]]
        );
        let back = o.undo(&c).unwrap();
        assert_eq!(back.data(), v.data());
        assert_eq!(back.affine(), v.affine());
        assert_eq!(o.undo_buffer(c.data(), 2), v.data());
        assert_eq!(o.apply(&c).unwrap_err().kind(), ErrorKind::GeometryMismatch);
    }

    #[test]
    fn exact_ties_go_to_the_lower_axis() {
        // 45 degrees in the x-y plane: both columns are equally close to x and y. The choice is
        // deterministic here; nibabel's depends on LAPACK rounding noise (identity for this one).
        let h = std::f64::consts::FRAC_1_SQRT_2;
        let a = [[h, -h, 0.0, 0.0], [h, h, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
        let o = Orientation::closest_canonical(&a, [1, 1, 1]);
        assert_eq!((o.axes, o.flips), ([0, 1, 2], [false; 3]));
        // nibabel io_orientation of the 53.13 degree rotation [[0.6, -0.8], [0.8, 0.6]]: [[1, 1], [0, -1], [2, 1]].
        let a = [[0.6, -0.8, 0.0, 0.0], [0.8, 0.6, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
        let o = Orientation::closest_canonical(&a, [1, 1, 1]);
        assert_eq!((o.axes, o.flips), ([1, 0, 2], [false, true, false]));
    }
}
