//! 4x4 voxel-to-world affines: validation, LPS/RAS conversion, and the NIfTI qform quaternion
//! encoding, following nibabel's formulas so that results match it to rounding.

use super::Convention;
use crate::error::{Error, Result};
use nalgebra::{Matrix3, Rotation3, UnitQuaternion};

/// Row-major 4x4 affine; rows 0..3 map voxel (i, j, k, 1) to world (x, y, z).
pub(super) type Affine = [[f64; 4]; 4];

/// Below this |det| of the direction matrix (unit columns) the voxel axes are treated as coplanar.
const MIN_NORMALIZED_DET: f64 = 1e-6;

/// Converts between RAS and `convention` (the same operation both ways: negate the x and y rows).
pub(super) fn convert(a: &Affine, convention: Convention) -> Affine {
    let mut out = *a;
    if convention == Convention::Lps {
        for row in out.iter_mut().take(2) {
            row.iter_mut().for_each(|v| *v = -*v);
        }
    }
    out
}

/// Column norms of the 3x3 part: the voxel size along each voxel axis.
pub(super) fn spacing(a: &Affine) -> [f64; 3] {
    std::array::from_fn(|c| (0..3).map(|r| a[r][c] * a[r][c]).sum::<f64>().sqrt())
}

/// The 3x3 part as an nalgebra matrix.
pub(super) fn linear_part(a: &Affine) -> Matrix3<f64> {
    Matrix3::from_fn(|r, c| a[r][c])
}

/// Checks the `Volume` invariants on an affine; `InvalidData` says which one failed.
pub(super) fn validate(a: &Affine) -> Result<()> {
    if a.iter().flatten().any(|v| !v.is_finite()) {
        return Err(Error::invalid_data(format!("the affine {a:?} contains NaN or infinite values")));
    }
    if a[3] != [0.0, 0.0, 0.0, 1.0] {
        return Err(Error::invalid_data(format!("the affine's bottom row is {:?}, must be [0, 0, 0, 1]", a[3])));
    }
    let spacing = spacing(a);
    if let Some(axis) = spacing.iter().position(|s| *s <= 0.0) {
        return Err(Error::invalid_data(format!(
            "the affine {a:?} has zero spacing along voxel axis {axis} (an all-zero column)"
        )));
    }
    // Finite entries can still have a column norm (or a determinant) that overflows f64 (found by
    // fuzzing: entries near 1e200); such a grid has no usable spacing.
    if let Some(axis) = spacing.iter().position(|s| !s.is_finite()) {
        return Err(Error::invalid_data(format!(
            "the affine {a:?} has a spacing along voxel axis {axis} too large to represent"
        )));
    }
    let normalized_det = linear_part(a).determinant() / spacing.iter().product::<f64>();
    // A NaN (inf / inf) counts as singular too.
    if normalized_det.is_nan() || normalized_det.abs() < MIN_NORMALIZED_DET {
        return Err(Error::invalid_data(format!("the affine {a:?} is singular (its voxel axes are coplanar)")));
    }
    Ok(())
}

/// `a * b` for 4x4 matrices.
pub(super) fn multiply(a: &Affine, b: &Affine) -> Affine {
    std::array::from_fn(|r| std::array::from_fn(|c| (0..4).map(|k| a[r][k] * b[k][c]).sum()))
}

/// nibabel `quat2mat`: rotation matrix of quaternion (w, x, y, z), tolerating non-unit input.
pub(super) fn quaternion_to_matrix([w, x, y, z]: [f64; 4]) -> [[f64; 3]; 3] {
    let n = w * w + x * x + y * y + z * z;
    if n < f64::EPSILON {
        return [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    }
    let s = 2.0 / n;
    let (xs, ys, zs) = (x * s, y * s, z * s);
    let (wx, wy, wz) = (w * xs, w * ys, w * zs);
    let (xx, xy, xz) = (x * xs, x * ys, x * zs);
    let (yy, yz, zz) = (y * ys, y * zs, z * zs);
    [[1.0 - (yy + zz), xy - wz, xz + wy], [xy + wz, 1.0 - (xx + zz), yz - wx], [xz - wy, yz + wx, 1.0 - (xx + yy)]]
}

/// The NIfTI qform parameters of an affine (nibabel `set_qform` with `strip_shears=True`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct QformParams {
    /// pixdim[0]: -1 when the voxel axes are left-handed.
    pub qfac: f64,
    pub zooms: [f64; 3],
    /// quatern_b, quatern_c, quatern_d (w >= 0 is implied).
    pub quatern: [f64; 3],
    pub offset: [f64; 3],
}

/// Encodes an affine as a qform. Shear cannot be represented, so the rotation is the closest
/// orthogonal matrix (polar decomposition), exactly as nibabel does; the sform keeps the full affine.
pub(super) fn qform_params(a: &Affine) -> QformParams {
    let zooms = spacing(a);
    let mut r = Matrix3::from_fn(|row, col| a[row][col] / zooms[col]);
    let qfac = if r.determinant() > 0.0 { 1.0 } else { -1.0 };
    if qfac < 0.0 {
        r.column_mut(2).neg_mut();
    }
    let svd = r.svd(true, true);
    let polar = match (svd.u, svd.v_t) {
        (Some(u), Some(v_t)) => u * v_t,
        _ => r,
    };
    let q = UnitQuaternion::from_rotation_matrix(&Rotation3::from_matrix_unchecked(polar));
    // w >= 0 is implicit in NIfTI; q and -q are the same rotation.
    let sign = if q.w < 0.0 { -1.0 } else { 1.0 };
    QformParams { qfac, zooms, quatern: [sign * q.i, sign * q.j, sign * q.k], offset: [a[0][3], a[1][3], a[2][3]] }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qform_affine(p: &QformParams) -> Affine {
        let [b, c, d] = p.quatern;
        let w = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
        let r = quaternion_to_matrix([w, b, c, d]);
        let z = [p.zooms[0], p.zooms[1], p.zooms[2] * p.qfac];
        let mut a = [[0.0, 0.0, 0.0, 0.0], [0.0; 4], [0.0; 4], [0.0, 0.0, 0.0, 1.0]];
        for row in 0..3 {
            for col in 0..3 {
                a[row][col] = r[row][col] * z[col];
            }
            a[row][3] = p.offset[row];
        }
        a
    }

    #[test]
    fn qform_round_trip_oblique_left_handed() {
        // example4d.nii.gz's affine (LAS, oblique).
        let a = [
            [-2.0, 0.0, 0.0, 117.8551],
            [0.0, 1.97371, -0.35554, -35.7229],
            [0.0, 0.32320, 2.17113, -7.2488],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let p = qform_params(&a);
        assert_eq!(p.qfac, -1.0);
        let back = qform_affine(&p);
        for (x, y) in a.iter().flatten().zip(back.iter().flatten()) {
            assert!((x - y).abs() < 1e-4, "{a:?} vs {back:?}");
        }
    }

    #[test]
    fn qform_permuted_right_handed() {
        let a = [[0.0, 0.0, 2.0, 1.0], [3.0, 0.0, 0.0, 2.0], [0.0, 1.5, 0.0, 3.0], [0.0, 0.0, 0.0, 1.0]];
        let p = qform_params(&a);
        assert_eq!(p.qfac, 1.0);
        assert_eq!(qform_affine(&p).map(|r| r.map(|v| (v * 1e9).round() / 1e9)), a);
    }

    #[test]
    fn validate_rejects_bad_affines() {
        let mut a = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
        assert!(validate(&a).is_ok());
        a[2][2] = 0.0;
        assert!(validate(&a).unwrap_err().message().contains("zero spacing along voxel axis 2"));
        a[2][2] = 1.0;
        a[2][0] = 1.0;
        a[2][1] = 1.0;
        a[2][2] = 1.0;
        a[0][2] = 1.0;
        a[1][2] = 1.0;
        a[0][1] = 1.0;
        a[1][0] = 1.0;
        assert!(validate(&a).unwrap_err().message().contains("singular"));
        a = [[f64::NAN, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
        assert!(validate(&a).unwrap_err().message().contains("NaN"));
        a = [[1.8, 0.0, 0.0, 0.0], [0.0, 1e200, 0.0, 0.0], [0.0, 1e200, 1e300, 0.0], [0.0, 0.0, 0.0, 1.0]];
        assert!(validate(&a).unwrap_err().message().contains("voxel axis 1 too large"), "{:?}", validate(&a));
    }

    #[test]
    fn lps_conversion_negates_x_and_y_rows() {
        let a = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [9.0, 10.0, 11.0, 12.0], [0.0, 0.0, 0.0, 1.0]];
        let l = convert(&a, Convention::Lps);
        assert_eq!(l[0], [-1.0, -2.0, -3.0, -4.0]);
        assert_eq!(l[1], [-5.0, -6.0, -7.0, -8.0]);
        assert_eq!(l[2], a[2]);
        assert_eq!(convert(&l, Convention::Lps), a);
        assert_eq!(convert(&a, Convention::Ras), a);
    }
}
