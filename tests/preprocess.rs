//! Preprocessing (reorientation, resampling, normalisation, padding) and its inverse, on synthetic
//! phantoms with known answers and on the real test volume `data/anatomical.nii`.

use asfda::bundle::{InputOrientation, InputSpec, Normalization, ZscoreMask};
use asfda::preprocess::{prepare, Prepared};
use asfda::volume::{read_nifti, ReadOptions, Volume};
use asfda::ErrorKind;
use ndarray::{Array3, Array4, Axis};
use std::path::Path;

// ---------------------------------------------------------------------------------------------
// Helpers

type Affine = [[f64; 4]; 4];

/// Leaves values unchanged: a window wider than any value, mean 0, std 1.
const IDENTITY: Normalization = Normalization::CtWindow { lower: -1e30, upper: 1e30, mean: 0.0, std: 1.0 };

fn spec(channels: usize, patch_zyx: [usize; 3], divisor: usize, spacing: [f64; 3], norm: Normalization) -> InputSpec {
    InputSpec {
        channels,
        patch_size: patch_zyx,
        size_divisible_by: divisor,
        spacing_mm: spacing,
        orientation: InputOrientation::Ras,
        normalization: norm,
    }
}

/// A RAS affine with the given spacing and origin.
fn ras(spacing: [f64; 3], origin: [f64; 3]) -> Affine {
    [
        [spacing[0], 0.0, 0.0, origin[0]],
        [0.0, spacing[1], 0.0, origin[1]],
        [0.0, 0.0, spacing[2], origin[2]],
        [0.0, 0.0, 0.0, 1.0],
    ]
}

/// World position of a (possibly fractional) voxel index.
fn world(a: &Affine, ijk: [f64; 3]) -> [f64; 3] {
    std::array::from_fn(|r| (0..3).map(|c| a[r][c] * ijk[c]).sum::<f64>() + a[r][3])
}

fn index(dims: [usize; 3], x: usize, y: usize, z: usize) -> usize {
    x + dims[0] * (y + dims[1] * z)
}

/// One channel with voxel values `f(world position of the voxel centre)`.
fn volume_from_fn(dims: [usize; 3], a: Affine, f: impl Fn([f64; 3]) -> f64) -> Volume {
    let mut data = Vec::with_capacity(dims.iter().product());
    for z in 0..dims[2] {
        for y in 0..dims[1] {
            for x in 0..dims[0] {
                data.push(f(world(&a, [x as f64, y as f64, z as f64])) as f32);
            }
        }
    }
    Volume::new(data, dims, 1, a).unwrap()
}

/// Deterministic pseudo-random values in [0, 1) (xorshift64*).
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

/// (x - mean) / std with population statistics over the values `keep` selects (reference
/// implementation in f64).
fn zscore(x: &[f32], keep: impl Fn(f32) -> bool) -> Vec<f32> {
    let sel: Vec<f64> = x.iter().copied().filter(|v| keep(*v)).map(f64::from).collect();
    let mean = sel.iter().sum::<f64>() / sel.len() as f64;
    let std = (sel.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / sel.len() as f64).sqrt();
    x.iter().map(|v| ((*v as f64 - mean) / std) as f32).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The unpadded part of channel `c` of a prepared image, x fastest (volume order).
fn valid_voxels(p: &Prepared, c: usize) -> Vec<f32> {
    let [rz, ry, rx] = p.grid.valid_region();
    p.image.index_axis(Axis(0), c).slice(ndarray::s![rz, ry, rx]).iter().copied().collect()
}

fn anatomical() -> Volume {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/anatomical.nii");
    read_nifti(&path, &ReadOptions::default()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Identity, orientation, padding

#[test]
fn identity_at_model_spacing_is_the_zscored_data() {
    let dims = [16, 8, 24];
    let n = 16 * 8 * 24;
    let mut data = noise(n, 1);
    data.extend(noise(n, 2).iter().map(|v| 100.0 + 20.0 * v));
    let a = ras([1.5, 1.5, 3.0], [-10.0, 4.0, 2.0]);
    let v = Volume::new(data.clone(), dims, 2, a).unwrap();
    let p =
        prepare(&v, &spec(2, [8, 8, 8], 8, [1.5, 1.5, 3.0], Normalization::Zscore { mask: ZscoreMask::All })).unwrap();

    assert_eq!(p.image.shape(), &[2, 24, 8, 16]);
    assert_eq!(p.grid.model_shape(), [24, 8, 16]);
    assert_eq!(p.grid.valid_region(), [0..24, 0..8, 0..16]);
    assert_eq!((p.grid.pad_before(), p.grid.pad_after()), ([0; 3], [0; 3]));
    assert!(!p.grid.is_resampled() && p.grid.orientation().is_identity());
    assert_eq!(p.grid.model_affine(), a);

    // The tensor read in C order is the volume's data, each channel z-scored on its own.
    let mut expected = zscore(&data[..n], |_| true);
    expected.extend(zscore(&data[n..], |_| true));
    let got = p.image.as_slice().expect("standard layout");
    assert!(max_abs_diff(got, &expected) < 1e-5);
    // And [c, z, y, x] addresses voxel (x, y, z) of channel c.
    assert_eq!(p.image[[1, 5, 3, 7]], expected[n + index(dims, 7, 3, 5)]);
}

/// A base RAS volume and two copies of it on reoriented voxel grids covering the same world points:
/// x and y reversed (LPS voxel order) and axes permuted (voxel axes along S, R, A).
fn reoriented_copies(spacing: [f64; 3]) -> [Volume; 3] {
    let dims = [12, 10, 8];
    let a = ras(spacing, [-5.0, 3.0, 7.0]);
    let base = Volume::new(noise(12 * 10 * 8, 3).iter().map(|v| 10.0 * v + 1.0).collect(), dims, 1, a).unwrap();
    let d = base.data();

    let mut flipped = vec![0.0; d.len()];
    for z in 0..8 {
        for y in 0..10 {
            for x in 0..12 {
                flipped[index(dims, x, y, z)] = d[index(dims, 11 - x, 9 - y, z)];
            }
        }
    }
    let mut fa = a;
    for r in 0..3 {
        fa[r][3] = a[r][3] + 11.0 * a[r][0] + 9.0 * a[r][1];
        fa[r][0] = -a[r][0];
        fa[r][1] = -a[r][1];
    }

    // New voxel (i, j, k) is base voxel (x, y, z) = (j, k, i).
    let pdims = [8, 12, 10];
    let mut permuted = vec![0.0; d.len()];
    for k in 0..10 {
        for j in 0..12 {
            for i in 0..8 {
                permuted[index(pdims, i, j, k)] = d[index(dims, j, k, i)];
            }
        }
    }
    let pa: Affine = std::array::from_fn(|r| [a[r][2], a[r][0], a[r][1], a[r][3]]);
    let flipped = Volume::new(flipped, dims, 1, fa).unwrap();
    let permuted = Volume::new(permuted, pdims, 1, pa).unwrap();
    [base, flipped, permuted]
}

#[test]
fn reoriented_copies_prepare_to_the_same_tensor() {
    // With resampling (anisotropic -> 1.2 mm), so the reorientation must happen before it.
    let [base, flipped, permuted] = reoriented_copies([1.0, 1.5, 2.0]);
    let s = spec(1, [16, 16, 16], 8, [1.2, 1.2, 1.2], Normalization::Zscore { mask: ZscoreMask::Nonzero });
    let p = prepare(&base, &s).unwrap();
    assert!(p.grid.is_resampled());
    for other in [&flipped, &permuted] {
        let q = prepare(other, &s).unwrap();
        assert!(!q.grid.orientation().is_identity());
        assert_eq!(q.image.shape(), p.image.shape());
        assert!(max_abs_diff(q.image.as_slice().unwrap(), p.image.as_slice().unwrap()) < 1e-6);
        let ra = q.grid.resampled_affine();
        assert!(ra.iter().flatten().zip(p.grid.resampled_affine().iter().flatten()).all(|(a, b)| (a - b).abs() < 1e-9));
        // Back onto the caller's own grid.
        let back = q.grid.to_original(q.image.view()).unwrap();
        assert!(back.same_grid(other) && back.affine() == other.affine());
    }

    // At model spacing nothing is interpolated: to_original gives each copy its own voxels back.
    let [base, flipped, permuted] = reoriented_copies([1.0, 1.0, 1.0]);
    let s = spec(1, [8, 8, 8], 8, [1.0; 3], Normalization::Zscore { mask: ZscoreMask::All });
    let p = prepare(&base, &s).unwrap();
    for other in [&flipped, &permuted] {
        let q = prepare(other, &s).unwrap();
        assert_eq!(q.image, p.image);
        let back = q.grid.to_original(q.image.view()).unwrap();
        assert!(max_abs_diff(back.data(), &zscore(other.data(), |_| true)) < 1e-5);
    }
}

#[test]
fn small_volume_is_padded_centred_and_cropped_back() {
    // (x, y, z) = (20, 13, 7), patch (z, y, x) = (16, 16, 16): z 7 -> 16 (4 before, 5 after),
    // y 13 -> 16 (1, 2), x 20 stays (already at least a patch; tiles need not divide it).
    let dims = [20, 13, 7];
    let v = Volume::new(noise(20 * 13 * 7, 4), dims, 1, ras([1.0; 3], [0.0; 3])).unwrap();
    let p = prepare(&v, &spec(1, [16, 16, 16], 8, [1.0; 3], Normalization::Zscore { mask: ZscoreMask::All })).unwrap();
    assert_eq!(p.grid.model_shape(), [16, 16, 20]);
    assert_eq!(p.image.shape(), &[1, 16, 16, 20]);
    assert_eq!((p.grid.pad_before(), p.grid.pad_after()), ([4, 1, 0], [5, 2, 0]));
    assert_eq!(p.grid.valid_region(), [4..11, 1..14, 0..20]);

    let expected = zscore(v.data(), |_| true);
    assert_eq!(valid_voxels(&p, 0), expected);
    // Padding holds the channel's minimum (what background looks like after normalisation).
    let min = expected.iter().copied().fold(f32::INFINITY, f32::min);
    let padding = p.image.len() - expected.len();
    assert_eq!(p.image.iter().filter(|&&v| v == min).count(), padding + expected.iter().filter(|&&v| v == min).count());
    assert_eq!(p.image[[0, 4, 1, 0]], expected[0]);
    assert_eq!(p.image[[0, 3, 1, 0]], min);

    // The model affine places tensor voxel (pad_x, pad_y, pad_z) at the volume's first voxel.
    assert_eq!(world(&p.grid.model_affine(), [0.0, 1.0, 4.0]), [0.0, 0.0, 0.0]);

    // A 3-channel map on the padded grid crops back exactly, channel order kept.
    let map =
        ndarray::concatenate(Axis(0), &[p.image.view(), (&p.image * 2.0).view(), (&p.image + 1.0).view()]).unwrap();
    let back = p.grid.to_original(map.view()).unwrap();
    assert_eq!((back.dims(), back.channels(), back.affine()), (dims, 3, v.affine()));
    assert_eq!(back.channel(0), &expected[..]);
    assert_eq!(back.channel(1), &expected.iter().map(|v| v * 2.0).collect::<Vec<_>>()[..]);
    assert_eq!(back.channel(2), &expected.iter().map(|v| v + 1.0).collect::<Vec<_>>()[..]);

    // The same from a map in another memory layout (Fortran order).
    let mut fortran = Array4::<f32>::zeros(ndarray::ShapeBuilder::f(map.raw_dim()));
    fortran.assign(&map);
    assert!(fortran.as_slice().is_none());
    assert_eq!(p.grid.to_original(fortran.view()).unwrap(), back);

    // Wrong shapes are refused.
    let e = p.grid.to_original(Array4::<f32>::zeros((1, 16, 16, 24)).view()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message().contains("[16, 16, 24]"), "{e}");
    let e = p.grid.to_original(Array4::<f32>::zeros((0, 16, 16, 24)).view()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    let e = p.grid.labels_to_original(Array3::<u8>::zeros((16, 16, 16)).view()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Resampling

#[test]
fn resampled_grid_keeps_the_physical_extent_and_centre() {
    let c = 10f64.to_radians().cos();
    let s = 10f64.to_radians().sin();
    // Slightly oblique (10 degrees about z), anisotropic.
    let oblique =
        [[0.9 * c, -1.1 * s, 0.0, -40.0], [0.9 * s, 1.1 * c, 0.0, 12.0], [0.0, 0.0, 2.5, 30.0], [0.0, 0.0, 0.0, 1.0]];
    for (dims, a, target, expected_dims) in [
        ([40, 36, 30], ras([1.0; 3], [0.0; 3]), [2.0; 3], [20, 18, 15]),
        ([41, 37, 31], ras([0.7, 0.7, 1.3], [5.0, -3.0, 1.0]), [1.5; 3], [19, 17, 27]),
        ([20, 18, 15], ras([2.0; 3], [0.0; 3]), [0.7; 3], [57, 51, 43]),
        ([33, 29, 11], oblique, [1.0, 1.0, 1.0], [30, 32, 28]),
    ] {
        let v = Volume::new(vec![1.0; dims.iter().product()], dims, 1, a).unwrap();
        let p = prepare(&v, &spec(1, [8, 8, 8], 8, target, IDENTITY)).unwrap();
        let g = &p.grid;
        assert_eq!(g.resampled_dims(), expected_dims);
        let (ca, ra) = (g.canonical_affine(), g.resampled_affine());
        let cd = g.canonical_dims();
        // Same centre of the field of view ...
        let centre = |a: &Affine, d: [usize; 3]| world(a, std::array::from_fn(|i| (d[i] as f64 - 1.0) / 2.0));
        let (c0, c1) = (centre(&ca, cd), centre(&ra, expected_dims));
        assert!((0..3).all(|i| (c0[i] - c1[i]).abs() < 1e-9), "{c0:?} vs {c1:?}");
        // ... the same outer corner (voxel edge at -0.5) ...
        let (e0, e1) = (world(&ca, [-0.5; 3]), world(&ra, [-0.5; 3]));
        assert!((0..3).all(|i| (e0[i] - e1[i]).abs() < 1e-9), "{e0:?} vs {e1:?}");
        // ... and the real spacing is old spacing * old dims / new dims, close to the target.
        let sp = g.spacing();
        let old = v.spacing();
        for i in 0..3 {
            assert!((sp[i] - old[i] * dims[i] as f64 / expected_dims[i] as f64).abs() < 1e-12);
            assert!((sp[i] - target[i]).abs() < target[i] / expected_dims[i] as f64);
        }
        // All ones stay all ones (weights sum to 1).
        assert!(valid_voxels(&p, 0).iter().all(|v| (v - 1.0).abs() < 1e-6));
    }
}

#[test]
fn linear_ramp_is_resampled_exactly_in_the_interior() {
    // Trilinear interpolation and the symmetric prefilter reproduce a linear function exactly away
    // from the borders, so every interior model voxel must hold the ramp at the world position the
    // model affine gives it: this pins the sample positions to the affine (a quarter-voxel shift
    // would be an error of ~0.1 here).
    let ramp = |p: [f64; 3]| 0.3 * p[0] - 0.2 * p[1] + 0.5 * p[2] + 1.0;
    let a = ras([1.0, 1.0, 1.0], [-20.0, -15.0, 3.0]);
    let v = volume_from_fn([40, 36, 30], a, ramp);
    for target in [[2.0, 2.0, 2.0], [0.7, 0.7, 0.7], [1.5, 0.8, 3.0]] {
        let p = prepare(&v, &spec(1, [8, 8, 8], 8, target, IDENTITY)).unwrap();
        let g = &p.grid;
        let ma = g.model_affine();
        let [rz, ry, rx] = g.valid_region();
        let margin = 4;
        let mut checked = 0;
        for z in rz.start + margin..rz.end - margin {
            for y in ry.start + margin..ry.end - margin {
                for x in rx.start + margin..rx.end - margin {
                    let expected = ramp(world(&ma, [x as f64, y as f64, z as f64]));
                    let got = p.image[[0, z, y, x]] as f64;
                    assert!((got - expected).abs() < 1e-4, "{target:?} ({x}, {y}, {z}): {got} vs {expected}");
                    checked += 1;
                }
            }
        }
        assert!(checked >= 50, "{target:?}: only {checked} interior voxels");

        // And back: exact in the interior; at the border the half voxel of constant extension
        // costs at most the ramp's slope (0.5 / mm) times half a model voxel per axis.
        let back = g.to_original(p.image.view()).unwrap();
        assert!(back.same_grid(&v));
        let bound = 0.5 * (0.3 + 0.2 + 0.5) * g.spacing().iter().fold(0.0f64, |m, s| m.max(*s)) + 1e-4;
        for z in 0..30 {
            for y in 0..36 {
                for x in 0..40 {
                    let i = index([40, 36, 30], x, y, z);
                    let err = (back.data()[i] - v.data()[i]).abs() as f64;
                    let interior = [x, y, z].iter().zip([40, 36, 30]).all(|(&c, n)| c >= 6 && c + 6 < n);
                    assert!(err < if interior { 1e-4 } else { bound }, "{target:?} ({x}, {y}, {z}): {err}");
                }
            }
        }
    }
}

#[test]
fn upsampling_interpolates_between_voxel_centres() {
    // 4 voxels of 2 mm -> 8 of 1 mm: output centres sit at input coordinates -0.25 (clamped), 0.25,
    // 0.75, ..., 3.25 (clamped).
    let v = Volume::new(vec![0.0, 1.0, 2.0, 3.0], [4, 1, 1], 1, ras([2.0, 1.0, 1.0], [0.0; 3])).unwrap();
    let p = prepare(&v, &spec(1, [1, 1, 1], 1, [1.0; 3], IDENTITY)).unwrap();
    assert_eq!(p.image.as_slice().unwrap(), &[0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0]);
    assert_eq!(world(&p.grid.model_affine(), [0.0; 3]), [-0.5, 0.0, 0.0]);
    // Back down to 2 mm with the prefilter (sigma 0.5 voxel) as the inverse.
    let back = p.grid.to_original(p.image.view()).unwrap();
    assert_eq!(back.dims(), [4, 1, 1]);
    let expected = [0.0, 1.0, 2.0, 3.0];
    assert!(back.data().iter().zip(expected).skip(1).take(2).all(|(a, b)| (a - b).abs() < 1e-4), "{:?}", back.data());
}

#[test]
fn smooth_volume_round_trips_through_a_coarser_grid() {
    // Amplitude 1, wavelengths 36-48 mm. 1 mm -> 2 mm -> 1 mm loses: the prefilter (sigma 0.5 mm)
    // ~0.3% of the amplitude; linear interpolation on the 2 mm grid up to h^2/8 |f''| =
    // (4/8)(2 pi / 36)^2 / 3 per axis, ~0.015 in all; at the border the half voxel of constant
    // extension adds up to slope * 0.5 mm ~ 0.05. Tolerances: 0.02 inside, 0.1 at the border, and a
    // mean error under 0.01 overall.
    let tau = std::f64::consts::TAU;
    let f = |p: [f64; 3]| {
        ((tau * p[0] / 40.0).sin() + (tau * p[1] / 48.0 + 1.0).sin() + (tau * p[2] / 36.0 + 2.0).sin()) / 3.0
    };
    let dims = [40, 36, 30];
    let v = volume_from_fn(dims, ras([1.0; 3], [0.0; 3]), f);
    let p = prepare(&v, &spec(1, [8, 8, 8], 8, [2.0; 3], IDENTITY)).unwrap();
    assert_eq!(p.grid.resampled_dims(), [20, 18, 15]);
    let back = p.grid.to_original(p.image.view()).unwrap();
    let mut sum = 0.0;
    let mut worst_inside = 0.0f32;
    for z in 0..30 {
        for y in 0..36 {
            for x in 0..40 {
                let i = index(dims, x, y, z);
                let err = (back.data()[i] - v.data()[i]).abs();
                sum += err as f64;
                let interior = [x, y, z].iter().zip(dims).all(|(&c, n)| c >= 1 && c + 1 < n);
                if interior {
                    worst_inside = worst_inside.max(err);
                } else {
                    assert!(err < 0.1, "border ({x}, {y}, {z}): {err}");
                }
            }
        }
    }
    let mean = sum / v.data().len() as f64;
    assert!(worst_inside < 0.02 && mean < 0.01, "worst inside {worst_inside}, mean {mean}");
}

#[test]
fn downsampling_a_checkerboard_does_not_alias() {
    // Period 2 voxels, 1 mm -> 3 mm. Output centres land exactly on input voxels 3j + 1, so plain
    // trilinear sampling would return the checkerboard itself at full contrast (+-1, alternating:
    // aliasing); the prefilter (sigma 1 voxel) removes that frequency to ~1.5% per axis.
    let dims = [30, 30, 30];
    let data: Vec<f32> =
        (0..27000).map(|i| if (i % 30 + i / 30 % 30 + i / 900) % 2 == 0 { 1.0 } else { -1.0 }).collect();
    let v = Volume::new(data, dims, 1, ras([1.0; 3], [0.0; 3])).unwrap();
    let p = prepare(&v, &spec(1, [8, 8, 8], 1, [3.0; 3], IDENTITY)).unwrap();
    assert_eq!(p.image.shape(), &[1, 10, 10, 10]);
    // What plain sampling at those positions would give:
    let aliased = v.data()[index(dims, 1, 1, 1)];
    assert_eq!(aliased.abs(), 1.0);
    let worst = p.image.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(worst < 0.02, "checkerboard aliased: max |value| {worst}");

    // Only along the downsampled axis: x 1 mm -> 3 mm, y and z unchanged keep the full pattern.
    let v = Volume::new(v.data().to_vec(), dims, 1, ras([1.0, 3.0, 3.0], [0.0; 3])).unwrap();
    let p = prepare(&v, &spec(1, [1, 1, 1], 1, [3.0; 3], IDENTITY)).unwrap();
    assert_eq!(p.image.shape(), &[1, 30, 30, 10]);
    let worst = p.image.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(worst < 0.15, "max |value| {worst}");
}

// ---------------------------------------------------------------------------------------------
// Labels

/// LAS grid with padding: labels_to_model then labels_to_original is the identity.
#[test]
fn labels_round_trip_exactly_at_model_spacing() {
    let dims = [10, 13, 7];
    let a = [[-2.0, 0.0, 0.0, 20.0], [0.0, 2.0, 0.0, -10.0], [0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
    let labels: Vec<f32> = noise(10 * 13 * 7, 5).iter().map(|v| (v * 4.0).floor()).collect();
    let image = Volume::new(noise(10 * 13 * 7, 6), dims, 1, a).unwrap();
    let lab = Volume::new(labels.clone(), dims, 1, a).unwrap();
    let p = prepare(&image, &spec(1, [8, 16, 16], 8, [2.0; 3], IDENTITY)).unwrap();
    assert!(!p.grid.orientation().is_identity());
    let m = p.grid.labels_to_model(&lab, -100).unwrap();
    assert_eq!(m.shape(), &[8, 16, 16]);
    let [rz, ry, rx] = p.grid.valid_region();
    assert_eq!(p.grid.valid_region(), [0..7, 1..14, 3..13]);
    // Padding holds pad_label, the valid region the labels (x reversed: LAS -> RAS).
    for ((z, y, x), &v) in m.indexed_iter() {
        if rz.contains(&z) && ry.contains(&y) && rx.contains(&x) {
            assert_eq!(v as f32, labels[index(dims, 9 - (x - 3), y - 1, z)]);
        } else {
            assert_eq!(v, -100);
        }
    }
    let back = p.grid.labels_to_original(m.mapv(|v| v.max(0) as u8).view()).unwrap();
    assert_eq!(back.data(), &labels[..]);
    assert!(back.same_grid(&image) && back.affine() == image.affine());
}

/// Two nested ellipsoids (labels 1 and 2) in a 1 mm volume.
fn blob_labels(dims: [usize; 3], a: Affine) -> Volume {
    volume_from_fn(dims, a, |p| {
        let r = |s: [f64; 3]| {
            ((p[0] - 20.0) / s[0]).powi(2) + ((p[1] - 18.0) / s[1]).powi(2) + ((p[2] - 15.0) / s[2]).powi(2)
        };
        if r([7.0, 6.0, 5.0]) < 1.0 {
            2.0
        } else if r([15.0, 13.0, 11.0]) < 1.0 {
            1.0
        } else {
            0.0
        }
    })
}

#[test]
fn labels_mostly_survive_resampling() {
    let dims = [40, 36, 30];
    let a = ras([1.0; 3], [0.0; 3]);
    let lab = blob_labels(dims, a);
    let image = Volume::new(vec![0.0; lab.data().len()], dims, 1, a).unwrap();
    for target in [[2.0; 3], [1.5; 3], [0.8, 1.3, 2.2]] {
        let p = prepare(&image, &spec(1, [8, 8, 8], 8, target, IDENTITY)).unwrap();
        let m = p.grid.labels_to_model(&lab, 255).unwrap();
        assert_eq!(m.shape(), p.grid.model_shape().as_slice());
        // Each label keeps its volume in mm^3 within 10%.
        let voxel_mm3: f64 = p.grid.spacing().iter().product();
        for label in [1i64, 2] {
            let before = lab.data().iter().filter(|v| **v == label as f32).count() as f64;
            let after = m.iter().filter(|v| **v == label).count() as f64 * voxel_mm3;
            assert!((after - before).abs() < 0.1 * before, "{target:?} label {label}: {before} -> {after} mm3");
        }
        let back = p.grid.labels_to_original(m.mapv(|v| v as u8).view()).unwrap();
        let same = back.data().iter().zip(lab.data()).filter(|(a, b)| a == b).count();
        let fraction = same as f64 / lab.data().len() as f64;
        assert!(fraction > 0.95, "{target:?}: only {fraction} of the voxels keep their label");
        // Foreground alone (the background is easy): still most of it.
        let fg = lab.data().iter().filter(|v| **v > 0.0).count();
        let fg_same = back.data().iter().zip(lab.data()).filter(|(a, b)| **b > 0.0 && a == b).count();
        assert!(fg_same as f64 > 0.85 * fg as f64, "{target:?}: foreground {fg_same} of {fg}");
    }
}

#[test]
fn labels_to_model_checks_grid_channels_and_values() {
    let dims = [10, 13, 7];
    let a = ras([2.0; 3], [0.0; 3]);
    let image = Volume::new(vec![1.0; 910], dims, 1, a).unwrap();
    let p = prepare(&image, &spec(1, [16, 16, 16], 8, [2.0; 3], IDENTITY)).unwrap();

    let mut shifted = a;
    shifted[0][3] += 1.0;
    let e = p.grid.labels_to_model(&Volume::new(vec![0.0; 910], dims, 1, shifted).unwrap(), -1).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::GeometryMismatch);
    let e = p.grid.labels_to_model(&Volume::new(vec![0.0; 900], [10, 10, 9], 1, a).unwrap(), -1).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::GeometryMismatch);
    let e = p.grid.labels_to_model(&Volume::new(vec![0.0; 1820], dims, 2, a).unwrap(), -1).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    let mut bad = vec![1.0; 910];
    bad[3] = 0.5;
    bad[4] = f32::NAN;
    let e = p.grid.labels_to_model(&Volume::new(bad, dims, 1, a).unwrap(), -1).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData);
    assert!(e.message().contains("2 label voxel(s)"), "{e}");

    // pad_label fills exactly the padding.
    let m = p.grid.labels_to_model(&Volume::new(vec![1.0; 910], dims, 1, a).unwrap(), -7).unwrap();
    let padded = 16 * 16 * 16 - 910;
    assert_eq!(m.iter().filter(|v| **v == -7).count(), padded);
    assert_eq!(m.iter().filter(|v| **v == 1).count(), 910);
}

// ---------------------------------------------------------------------------------------------
// Normalisation and errors

fn prepare_values(values: &[f32], norm: Normalization) -> Vec<f32> {
    let v = Volume::new(values.to_vec(), [values.len(), 1, 1], 1, ras([1.0; 3], [0.0; 3])).unwrap();
    let p = prepare(&v, &spec(1, [1, 1, 1], 1, [1.0; 3], norm)).unwrap();
    p.image.as_slice().unwrap().to_vec()
}

#[test]
fn zscore_over_nonzero_voxels_or_all() {
    let values = [0.0, 0.0, 2.0, 4.0, 6.0, 0.0, 8.0];
    // Nonzero: mean 5, std sqrt(5); zero voxels are mapped like the rest, to -5 / sqrt(5).
    let got = prepare_values(&values, Normalization::Zscore { mask: ZscoreMask::Nonzero });
    let s5 = 5f32.sqrt();
    let expected = [-5.0 / s5, -5.0 / s5, -3.0 / s5, -1.0 / s5, 1.0 / s5, -5.0 / s5, 3.0 / s5];
    assert!(max_abs_diff(&got, &expected) < 1e-6, "{got:?}");
    // All: mean 20/7.
    let got = prepare_values(&values, Normalization::Zscore { mask: ZscoreMask::All });
    assert!(max_abs_diff(&got, &zscore(&values, |_| true)) < 1e-6);
    let mean: f32 = got.iter().sum::<f32>() / 7.0;
    let var: f32 = got.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 7.0;
    assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5);
    // A constant channel does not divide by zero.
    let got = prepare_values(&[3.0; 5], Normalization::Zscore { mask: ZscoreMask::Nonzero });
    assert_eq!(got, vec![0.0; 5]);
    let got = prepare_values(&[0.0; 5], Normalization::Zscore { mask: ZscoreMask::Nonzero });
    assert_eq!(got, vec![0.0; 5]);
}

#[test]
fn ct_window_clips_then_scales() {
    let values = [-3000.0, -1000.0, -500.0, 0.0, 40.0, 1000.0, 3071.0];
    let norm = Normalization::CtWindow { lower: -1000.0, upper: 1000.0, mean: 100.0, std: 50.0 };
    let got = prepare_values(&values, norm);
    assert_eq!(got, vec![-22.0, -22.0, -12.0, -2.0, -1.2, 18.0, 18.0]);
    // A bad spec is refused once, when its bundle loads (InputSpec::validate), not per call.
    let e = spec(1, [1, 1, 1], 1, [1.0; 3], Normalization::CtWindow { lower: 0.0, upper: 1.0, mean: 0.0, std: 0.0 })
        .validate()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message().contains("input.normalization.std"), "{e}");
}

#[test]
fn percentile_clips_to_the_volumes_percentiles_then_zscores() {
    // 0..=999 shuffled; numpy.percentile(arange(1000), [1, 99]) == [9.99, 989.01].
    let mut values: Vec<f32> = (0..1000).map(|v| v as f32).collect();
    let order = noise(1000, 7);
    values.sort_by(|a, b| order[*a as usize].total_cmp(&order[*b as usize]));
    let got = prepare_values(&values, Normalization::Percentile { lower: 1.0, upper: 99.0 });
    let clipped: Vec<f32> = values.iter().map(|v| v.clamp(9.99, 989.01)).collect();
    let expected = zscore(&clipped, |_| true);
    assert!(max_abs_diff(&got, &expected) < 1e-5);
    // The clipped extremes are equal: 0..=9 all map to the value of 9.99.
    let low = got[values.iter().position(|v| *v == 0.0).unwrap()];
    let at_10 = got[values.iter().position(|v| *v == 10.0).unwrap()];
    assert_eq!(low, got[values.iter().position(|v| *v == 9.0).unwrap()]);
    assert!(low < at_10);

    let e =
        spec(1, [1, 1, 1], 1, [1.0; 3], Normalization::Percentile { lower: 0.5, upper: 150.0 }).validate().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message().contains("input.normalization.upper"), "{e}");
}

#[test]
fn bad_inputs_give_clear_errors() {
    let a = ras([1.0; 3], [0.0; 3]);
    let two = Volume::new(vec![1.0; 16], [2, 2, 2], 2, a).unwrap();
    let e = prepare(&two, &spec(1, [8, 8, 8], 8, [1.0; 3], IDENTITY)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message().contains("2 channel(s)") && e.message().contains("expects 1"), "{e}");

    let mut data = vec![1.0; 8];
    data[1] = f32::NAN;
    data[5] = f32::INFINITY;
    data[6] = f32::NAN;
    let nan = Volume::new(data, [2, 2, 2], 1, a).unwrap();
    let e = prepare(&nan, &spec(1, [8, 8, 8], 8, [1.0; 3], IDENTITY)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData);
    assert!(e.message().contains("3 NaN or infinite"), "{e}");

    let one = Volume::new(vec![1.0; 8], [2, 2, 2], 1, a).unwrap();
    // An orientation other than RAS is unrepresentable (bundle::InputOrientation); the other
    // fields are checked once, when the bundle loads (InputSpec::validate).
    let s = spec(1, [8, 8, 8], 0, [1.0; 3], IDENTITY);
    assert_eq!(s.validate().unwrap_err().kind(), ErrorKind::InvalidArgument);
    let s = spec(1, [8, 8, 8], 8, [1.0, 0.0, 1.0], IDENTITY);
    assert_eq!(s.validate().unwrap_err().kind(), ErrorKind::InvalidArgument);
    // A target spacing that would explode the volume is refused before allocating it.
    let s = spec(1, [8, 8, 8], 8, [1e-4; 3], IDENTITY);
    assert_eq!(prepare(&one, &s).unwrap_err().kind(), ErrorKind::TooLarge);
    let s = spec(1, [usize::MAX - 3, 8, 8], 8, [1.0; 3], IDENTITY);
    assert_eq!(prepare(&one, &s).unwrap_err().kind(), ErrorKind::TooLarge);
}

// ---------------------------------------------------------------------------------------------
// The real test volume

#[test]
fn anatomical_at_its_own_spacing_is_reoriented_and_padded() {
    let v = anatomical();
    assert_eq!((v.dims(), v.spacing()), ([33, 41, 25], [2.0; 3]));
    let p =
        prepare(&v, &spec(1, [32, 32, 32], 8, [2.0; 3], Normalization::Zscore { mask: ZscoreMask::Nonzero })).unwrap();
    let g = &p.grid;
    assert!(!g.is_resampled() && !g.orientation().is_identity());
    // z 25 -> 32 (3, 4); y 41 and x 33 are at least a patch and stay.
    assert_eq!(g.model_shape(), [32, 41, 33]);
    assert_eq!(g.valid_region(), [3..28, 0..41, 0..33]);
    // LAS: canonical x runs the other way.
    let normalised = zscore(v.data(), |v| v != 0.0);
    for (z, y, x) in [(0, 0, 0), (12, 20, 16), (24, 40, 32), (5, 30, 2)] {
        let got = p.image[[0, z + 3, y, x]];
        assert!((got - normalised[index([33, 41, 25], 32 - x, y, z)]).abs() < 1e-5);
    }
    let back = g.to_original(p.image.view()).unwrap();
    assert!(back.same_grid(&v) && back.affine() == v.affine());
    assert!(max_abs_diff(back.data(), &normalised) < 1e-5);
}

#[test]
fn anatomical_at_3mm_maps_back_to_its_grid() {
    let v = anatomical();
    let p =
        prepare(&v, &spec(1, [32, 32, 32], 8, [3.0; 3], Normalization::Zscore { mask: ZscoreMask::Nonzero })).unwrap();
    let g = &p.grid;
    // round(33 * 2 / 3) = 22, round(27.33) = 27, round(16.67) = 17.
    assert_eq!(g.resampled_dims(), [22, 27, 17]);
    assert_eq!(g.model_shape(), [32, 32, 32]);
    let ca = g.canonical_affine();
    let ra = g.resampled_affine();
    let c0 = world(&ca, [16.0, 20.0, 12.0]);
    let c1 = world(&ra, [10.5, 13.0, 8.0]);
    assert!((0..3).all(|i| (c0[i] - c1[i]).abs() < 1e-9), "{c0:?} vs {c1:?}");

    // Intensities: the round trip through 3 mm keeps the anatomy (correlation with the normalised
    // original); the map comes back on the file's own grid.
    let back = g.to_original(p.image.view()).unwrap();
    assert!(back.same_grid(&v) && back.affine() == v.affine());
    let normalised = zscore(v.data(), |v| v != 0.0);
    let corr = correlation(back.data(), &normalised);
    assert!(corr > 0.9, "correlation {corr}");

    // Labels: a threshold mask, to the model grid and back.
    let mean = v.data().iter().sum::<f32>() / v.data().len() as f32;
    let mask = Volume::new(v.data().iter().map(|x| f32::from(*x > mean)).collect(), v.dims(), 1, v.affine()).unwrap();
    let m = g.labels_to_model(&mask, -1).unwrap();
    assert_eq!(m.shape(), &[32, 32, 32]);
    let back = g.labels_to_original(m.mapv(|v| v.max(0) as u8).view()).unwrap();
    let same = back.data().iter().zip(mask.data()).filter(|(a, b)| a == b).count();
    assert!(same as f64 > 0.85 * mask.data().len() as f64, "{same} of {}", mask.data().len());
}

fn correlation(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let ma = a.iter().map(|v| *v as f64).sum::<f64>() / n;
    let mb = b.iter().map(|v| *v as f64).sum::<f64>() / n;
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - ma) * (*y as f64 - mb)).sum();
    let va: f64 = a.iter().map(|x| (*x as f64 - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (*y as f64 - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

/// Not a check: `cargo test --release --test preprocess -- --ignored --nocapture` prints how long a
/// 512 x 512 x 400 volume takes at 0.7 mm -> 1.5 mm.
#[test]
#[ignore]
fn timing_large_volume() {
    let dims = [512, 512, 400];
    let n: usize = dims.iter().product();
    let data: Vec<f32> = (0..n).map(|i| ((i % 512) as f32 * 0.01).sin() * 100.0 + (i / 262_144) as f32).collect();
    let v = Volume::new(data, dims, 1, ras([0.7; 3], [0.0; 3])).unwrap();
    // Twice: the first run of a process also pays for first-touch page faults of fresh memory.
    let cases = [("0.7 mm (no resampling)", 0.7), ("0.7 mm -> 1.5 mm", 1.5), ("0.7 mm -> 1.0 mm", 1.0)];
    for (label, target) in cases.iter().chain(&cases) {
        let target = *target;
        let t = std::time::Instant::now();
        let p =
            prepare(&v, &spec(1, [128, 128, 128], 32, [target; 3], Normalization::Zscore { mask: ZscoreMask::All }))
                .unwrap();
        let prep = t.elapsed();
        let shape = p.grid.model_shape();
        let probs = Array4::<f32>::from_elem((2, shape[0], shape[1], shape[2]), 0.5);
        let t = std::time::Instant::now();
        let back = p.grid.to_original(probs.view()).unwrap();
        let inverse = t.elapsed();
        println!(
            "{label}: prepare {prep:.2?} -> {shape:?}; to_original (2 channels) {inverse:.2?} -> {:?}",
            back.dims()
        );
    }
}

#[test]
fn tiles_read_in_place_equal_the_prepared_image() {
    use asfda::preprocess::{prepare_in_place, ModelImage};
    use asfda::window::{gather_tiles, tile_grid, TileSource};
    // RAS at the model spacing: read in place. Smaller than the patch along y (padded), zeros in
    // part of the volume (the nonzero mask matters), two channels.
    let dims = [40, 20, 36];
    let n: usize = dims.iter().product();
    let mut data = noise(2 * n, 7);
    data.iter_mut().enumerate().filter(|(i, _)| i % 5 == 0).for_each(|(_, v)| *v = 0.0);
    data.iter_mut().for_each(|v| *v = *v * 900.0 - 100.0);
    let volume = Volume::new(data, dims, 2, ras([2.0; 3], [-3.0, 4.0, 5.0])).unwrap();
    let patch = [24, 24, 24];
    for norm in [
        Normalization::Zscore { mask: ZscoreMask::All },
        Normalization::Zscore { mask: ZscoreMask::Nonzero },
        Normalization::CtWindow { lower: 0.0, upper: 500.0, mean: 100.0, std: 50.0 },
        Normalization::Percentile { lower: 1.0, upper: 99.0 },
    ] {
        let spec = spec(2, patch, 8, [2.0; 3], norm.clone());
        let (image, grid) = prepare_in_place(&volume, &spec).unwrap();
        assert!(
            matches!(image, ModelImage::InPlace { .. }),
            "{norm:?}: an RAS volume at the model spacing is read in place"
        );
        let prepared = prepare(&volume, &spec).unwrap();
        assert_eq!(grid.model_shape(), prepared.grid.model_shape());
        assert_eq!(TileSource::shape(&image), grid.model_shape());
        let starts = tile_grid(grid.model_shape(), patch, 0.5);
        let lazy = image.gather(&starts, patch);
        let eager = gather_tiles(prepared.image.view(), &starts, patch);
        assert_eq!(lazy, eager, "{norm:?}: tiles differ");
    }
    // Another spacing or orientation: materialised as before.
    let spec = spec(2, patch, 8, [1.0; 3], Normalization::Zscore { mask: ZscoreMask::All });
    assert!(matches!(prepare_in_place(&volume, &spec).unwrap().0, ModelImage::Owned(_)));
}
