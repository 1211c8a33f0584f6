//! The randomness and schedules of fine-tuning, as pure functions: the per-step random stream,
//! the poly learning rate, the pseudo-label weight ramp, nnU-Net-style patch positions and crops.
//!
//! Everything random in a step is drawn from [`step_rng`]`(seed, t)`, a function of the seed and
//! the step index alone, so a run resumed at step `t` draws exactly what the uninterrupted run
//! drew at step `t` (no generator state needs to be saved).

use ndarray::{s, Array3, Array4, ArrayViewMut3, ArrayViewMut4};

use crate::rng::SplitMix64;

/// The random stream of step `t` (0-based) of a run seeded with `seed`.
///
/// `SplitMix64::new(seed ^ mix(t))`, where `mix` is SplitMix64's output function applied to
/// `t + 1`: neighbouring steps get unrelated streams, and seed 0 / step 0 is not a zero state.
pub fn step_rng(seed: u64, t: u64) -> SplitMix64 {
    let mixed = SplitMix64::new(t).next_u64();
    SplitMix64::new(seed ^ mixed)
}

/// nnU-Net's polynomial decay: `lr * (1 - min(t, T) / T)^exponent` for the step with 0-based
/// index `t` of a schedule of `T = total` steps. Steps past `T` get 0 (AdamW then leaves the
/// weights unchanged: its decay is multiplied by the learning rate too).
pub fn poly_lr(lr: f64, t: u64, total: u64, exponent: f64) -> f64 {
    let total = total.max(1);
    lr * (1.0 - t.min(total) as f64 / total as f64).powf(exponent)
}

/// The weight of pseudo-labelled samples at step `t` (0-based) of `total`: the "sigmoid"
/// ramp-up of Laine & Aila (2017) and Mean Teacher (Tarvainen & Valpola 2017),
///
/// ```text
/// R = ramp_fraction * total,  x = clamp(t / R, 0, 1),  lambda(t) = exp(-5 (1 - x)^2)
/// ```
///
/// so lambda rises smoothly from exp(-5) ~= 0.0067 at t = 0 to exactly 1 at t >= R and stays
/// there; `ramp_fraction = 0` gives 1 from the first step.
pub fn ramp_weight(t: u64, total: u64, ramp_fraction: f64) -> f64 {
    let ramp = ramp_fraction * total as f64;
    if ramp <= 0.0 {
        return 1.0;
    }
    let x = (t as f64 / ramp).clamp(0.0, 1.0);
    (-5.0 * (1.0 - x) * (1.0 - x)).exp()
}

/// Where the foreground voxels of one label map are, per foreground class present (flat indices
/// into the `[Z, Y, X]` map), for foreground-centred patches.
#[derive(Clone, Debug, Default)]
pub struct ForegroundIndex {
    classes: Vec<(usize, Vec<u32>)>,
}

impl ForegroundIndex {
    /// Indexes the voxels of `labels` whose value is one of `foreground` (ignored voxels carry
    /// no class, so unreliable pseudo-labels are never centres).
    pub fn new(labels: &Array3<u8>, foreground: &[usize]) -> ForegroundIndex {
        let mut per_class: Vec<(usize, Vec<u32>)> = foreground.iter().map(|&c| (c, Vec::new())).collect();
        for (i, &l) in labels.iter().enumerate() {
            if let Some((_, list)) = per_class.iter_mut().find(|(c, _)| usize::from(l) == *c) {
                list.push(i as u32);
            }
        }
        per_class.retain(|(_, list)| !list.is_empty());
        ForegroundIndex { classes: per_class }
    }

    /// The foreground classes present.
    pub fn classes(&self) -> impl Iterator<Item = usize> + '_ {
        self.classes.iter().map(|(c, _)| *c)
    }

    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// A class uniformly among those present, then a voxel of it uniformly: (class, flat index).
    fn draw(&self, rng: &mut SplitMix64) -> Option<(usize, usize)> {
        if self.classes.is_empty() {
            return None;
        }
        let (class, voxels) = &self.classes[rng.below(self.classes.len() as u64) as usize];
        Some((*class, voxels[rng.below(voxels.len() as u64) as usize] as usize))
    }
}

/// A patch position on a `[Z, Y, X]` grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Patch {
    /// First voxel (z, y, x); negative when the grid is smaller than the patch along an axis (the
    /// rest is padding).
    pub start: [isize; 3],
    /// The foreground class and voxel (z, y, x) the patch was centred on, for foreground patches.
    pub centre: Option<(usize, [usize; 3])>,
}

/// nnU-Net-style patch position on a grid of `shape` (z, y, x) for a patch of `patch` voxels.
///
/// Along each axis the start lies in `[min(0, n - p), max(0, n - p)]`: the patch stays inside
/// the grid when it fits, and the grid stays inside the patch when it does not. A random patch
/// draws the start uniformly in that range. A foreground patch (when `foreground` is requested
/// and the index is not empty) picks a class uniformly among the foreground classes present,
/// a voxel of that class uniformly, and centres the patch on it (`start = v - p / 2`), clamped
/// to the range above (as nnU-Net clamps to its bounding box), so the voxel is always inside.
/// When no foreground is present, the patch is random.
pub fn sample_patch(
    rng: &mut SplitMix64,
    shape: [usize; 3],
    patch: [usize; 3],
    index: &ForegroundIndex,
    foreground: bool,
) -> Patch {
    let range = |a: usize| {
        let d = shape[a] as isize - patch[a] as isize;
        (d.min(0), d.max(0))
    };
    let centre = if foreground { index.draw(rng) } else { None };
    match centre {
        Some((class, flat)) => {
            let voxel = [flat / (shape[1] * shape[2]), (flat / shape[2]) % shape[1], flat % shape[2]];
            let start = std::array::from_fn(|a| {
                let (lo, hi) = range(a);
                (voxel[a] as isize - (patch[a] / 2) as isize).clamp(lo, hi)
            });
            Patch { start, centre: Some((class, voxel)) }
        }
        None => {
            let start = std::array::from_fn(|a| {
                let (lo, hi) = range(a);
                lo + rng.below((hi - lo + 1) as u64) as isize
            });
            Patch { start, centre: None }
        }
    }
}

/// The overlap of `[start, start + p)` with `[0, n)`: (source range, destination offset).
fn overlap(start: isize, p: usize, n: usize) -> (std::ops::Range<usize>, usize) {
    let from = start.max(0) as usize;
    let to = ((start + p as isize).max(0) as usize).min(n);
    let from = from.min(to);
    (from..to, (from as isize - start) as usize)
}

/// Copies the patch of `image` ([C, Z, Y, X]) at `start` into `out` ([C, pz, py, px]); voxels
/// outside the image get `fill[c]` (the channel's background value, as preprocessing pads).
pub fn crop_image(image: &Array4<f32>, start: [isize; 3], fill: &[f32], mut out: ArrayViewMut4<'_, f32>) {
    let (_, z, y, x) = image.dim();
    let (_, pz, py, px) = out.dim();
    for (c, &f) in fill.iter().enumerate() {
        out.slice_mut(s![c, .., .., ..]).fill(f);
    }
    let (rz, oz) = overlap(start[0], pz, z);
    let (ry, oy) = overlap(start[1], py, y);
    let (rx, ox) = overlap(start[2], px, x);
    let (nz, ny, nx) = (rz.len(), ry.len(), rx.len());
    out.slice_mut(s![.., oz..oz + nz, oy..oy + ny, ox..ox + nx]).assign(&image.slice(s![.., rz, ry, rx]));
}

/// Copies the patch of `labels` ([Z, Y, X], one byte a voxel, `ignored` marking voxels without a
/// label) at `start` into `out` as the train step's i64 labels; ignored voxels and voxels outside
/// the map get `ignore` (the loss's ignore label).
pub fn crop_labels(labels: &Array3<u8>, ignored: u8, start: [isize; 3], ignore: i64, mut out: ArrayViewMut3<'_, i64>) {
    let (z, y, x) = labels.dim();
    let (pz, py, px) = out.dim();
    out.fill(ignore);
    let (rz, oz) = overlap(start[0], pz, z);
    let (ry, oy) = overlap(start[1], py, y);
    let (rx, ox) = overlap(start[2], px, x);
    let (nz, ny, nx) = (rz.len(), ry.len(), rx.len());
    out.slice_mut(s![oz..oz + nz, oy..oy + ny, ox..ox + nx])
        .zip_mut_with(&labels.slice(s![rz, ry, rx]), |o, &l| *o = if l == ignored { ignore } else { i64::from(l) });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poly_lr_follows_nnunet() {
        assert_eq!(poly_lr(1e-3, 0, 100, 0.9), 1e-3);
        let mid = poly_lr(1e-3, 50, 100, 0.9);
        assert!((mid - 1e-3 * 0.5f64.powf(0.9)).abs() < 1e-15);
        assert_eq!(poly_lr(1e-3, 100, 100, 0.9), 0.0);
        assert_eq!(poly_lr(1e-3, 500, 100, 0.9), 0.0);
        assert!(poly_lr(1e-3, 10, 100, 0.9) > poly_lr(1e-3, 11, 100, 0.9));
    }

    #[test]
    fn ramp_rises_from_near_zero_to_one_at_the_ramp_end() {
        assert!((ramp_weight(0, 100, 0.2) - (-5.0f64).exp()).abs() < 1e-15);
        assert_eq!(ramp_weight(20, 100, 0.2), 1.0);
        assert_eq!(ramp_weight(99, 100, 0.2), 1.0);
        let x: f64 = 10.0 / 20.0;
        assert!((ramp_weight(10, 100, 0.2) - (-5.0 * (1.0 - x).powi(2)).exp()).abs() < 1e-15);
        for t in 0..20 {
            assert!(ramp_weight(t, 100, 0.2) < ramp_weight(t + 1, 100, 0.2));
        }
        assert_eq!(ramp_weight(0, 100, 0.0), 1.0);
    }

    #[test]
    fn step_streams_depend_only_on_seed_and_step() {
        let draw = |seed, t| step_rng(seed, t).next_u64();
        assert_eq!(draw(7, 3), draw(7, 3));
        assert_ne!(draw(7, 3), draw(7, 4));
        assert_ne!(draw(7, 3), draw(8, 3));
        let u = step_rng(1, 1).unit();
        assert!((0.0..1.0).contains(&u));
    }

    #[test]
    fn patches_stay_inside_and_foreground_patches_contain_their_voxel() {
        let shape = [40, 30, 20];
        let mut labels = Array3::<u8>::zeros(shape);
        labels[[35, 2, 19]] = 2; // a corner voxel: the clamp must keep it inside
        labels[[10, 10, 10]] = 1;
        let index = ForegroundIndex::new(&labels, &[1, 2, 3]);
        assert_eq!(index.classes().collect::<Vec<_>>(), vec![1, 2]);
        let patch = [16, 16, 32]; // x is larger than the grid: start must be in [-12, 0]
        let mut seen = [0usize; 4];
        for t in 0..2000 {
            let mut rng = step_rng(3, t);
            let fg = t % 2 == 0;
            let p = sample_patch(&mut rng, shape, patch, &index, fg);
            for a in 0..3 {
                let d = shape[a] as isize - patch[a] as isize;
                assert!(p.start[a] >= d.min(0) && p.start[a] <= d.max(0), "{p:?}");
            }
            assert_eq!(p.centre.is_some(), fg);
            if let Some((class, v)) = p.centre {
                assert_eq!(usize::from(labels[v]), class);
                for a in 0..3 {
                    assert!(p.start[a] <= v[a] as isize && (v[a] as isize) < p.start[a] + patch[a] as isize);
                }
                seen[class] += 1;
            }
        }
        // Classes are drawn uniformly, not by voxel count.
        assert!(seen[1] > 400 && seen[2] > 400, "{seen:?}");
    }

    #[test]
    fn crops_pad_outside_the_grid() {
        let image = Array4::from_shape_fn((1, 4, 4, 4), |(_, z, y, x)| (z * 16 + y * 4 + x) as f32);
        let mut out = Array4::<f32>::zeros((1, 4, 4, 8));
        crop_image(&image, [0, 0, -2], &[-1.0], out.view_mut());
        assert_eq!(out[[0, 0, 0, 0]], -1.0);
        assert_eq!(out[[0, 0, 0, 2]], 0.0);
        assert_eq!(out[[0, 1, 2, 5]], image[[0, 1, 2, 3]]);
        assert_eq!(out[[0, 1, 2, 6]], -1.0);
        let labels = Array3::from_shape_fn((4, 4, 4), |(z, _, _)| if z == 2 { 255 } else { z as u8 });
        let mut lab = Array3::<i64>::zeros((3, 1, 1));
        crop_labels(&labels, 255, [1, 0, 0], -100, lab.view_mut());
        assert_eq!(lab.iter().copied().collect::<Vec<_>>(), vec![1, -100, 3]);
        crop_labels(&labels, 255, [3, 0, 0], -100, lab.view_mut());
        assert_eq!(lab.iter().copied().collect::<Vec<_>>(), vec![3, -100, -100]);
    }
}
