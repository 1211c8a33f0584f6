//! Batch planning for [`super::FineTuner::step`]: the volumes as the fine-tuner keeps them
//! ([`Sample`]), which patches a step draws ([`plan`], a pure function of the seed, the step and
//! the data) and the batch tensors cut from them ([`assemble`]).

use ndarray::{Array3, Array4, Array5, Axis};

use super::sampling::{crop_image, crop_labels, sample_patch, step_rng, ForegroundIndex, Patch};
use super::ssft::FineTuneOptions;
use crate::preprocess::{ModelGrid, Prepared};

/// Marks ignored voxels in the stored label maps (models have at most 255 classes here).
pub(super) const IGNORED: u8 = u8::MAX;

/// One patch of a planned batch ([`super::FineTuner::plan_batch`]).
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedPatch {
    /// From the annotated set (else the pseudo-labelled one).
    pub labeled: bool,
    /// Index of the volume in its set, in id order.
    pub volume: usize,
    pub id: String,
    pub patch: Patch,
}

/// One volume ready for patch sampling, on the padded model grid. The prepared image is all the
/// fine-tuner keeps of a volume: the pseudo-label check and refreshes infer from it
/// ([`crate::engine::Engine::infer_prepared`]), so the caller's volume is not copied.
#[derive(Clone)]
pub(super) struct Sample {
    pub(super) id: String,
    /// [C, Z, Y, X], preprocessed ([`Prepared::image`]).
    pub(super) image: Array4<f32>,
    pub(super) grid: ModelGrid,
    /// [Z, Y, X]: class indices, or [`IGNORED`] (padding, unreliable pseudo-labels); one byte a
    /// voxel instead of the train step's i64, converted per patch.
    pub(super) labels: Array3<u8>,
    /// Voxels not [`IGNORED`] (a pseudo-labelled volume without any teaches nothing).
    pub(super) reliable: usize,
    /// Per-channel background (minimum), to pad patches reaching outside the grid.
    pub(super) fill: Vec<f32>,
    pub(super) foreground: ForegroundIndex,
}

impl Sample {
    pub(super) fn new(id: &str, prepared: Prepared, labels: Array3<u8>, foreground_classes: &[usize]) -> Sample {
        let Prepared { image, grid } = prepared;
        let fill = image.axis_iter(Axis(0)).map(|c| c.iter().copied().fold(f32::INFINITY, f32::min)).collect();
        let (foreground, reliable) = label_index(&labels, foreground_classes);
        Sample { id: id.to_string(), image, grid, labels, reliable, fill, foreground }
    }

    /// New labels for the same image (a pseudo-label refresh).
    pub(super) fn set_labels(&mut self, labels: Array3<u8>, foreground_classes: &[usize]) {
        (self.foreground, self.reliable) = label_index(&labels, foreground_classes);
        self.labels = labels;
    }
}

/// What sampling derives from a label volume: the foreground index and the count of voxels
/// not [`IGNORED`].
fn label_index(labels: &Array3<u8>, foreground_classes: &[usize]) -> (ForegroundIndex, usize) {
    (ForegroundIndex::new(labels, foreground_classes), labels.iter().filter(|&&l| l != IGNORED).count())
}

/// The patches step `t` (0-based) draws ([`super::FineTuner::plan_batch`]): `options.batch_size`
/// patches from `step_rng(seed, t)`, each from the annotated set with probability
/// `labeled_fraction` (always when `pseudo`, the indices of the usable pseudo-labelled volumes,
/// is empty), the volume uniformly within its set, foreground-centred with probability
/// `foreground_fraction`.
pub(super) fn plan(
    o: &FineTuneOptions,
    t: u64,
    patch_size: [usize; 3],
    annotated: &[Sample],
    pseudo_labelled: &[Sample],
    pseudo: &[usize],
) -> Vec<PlannedPatch> {
    let mut rng = step_rng(o.seed, t);
    (0..o.batch_size)
        .map(|_| {
            let labeled = rng.unit() < o.labeled_fraction || pseudo.is_empty();
            let volume = if labeled {
                rng.below(annotated.len() as u64) as usize
            } else {
                pseudo[rng.below(pseudo.len() as u64) as usize]
            };
            let sample = if labeled { &annotated[volume] } else { &pseudo_labelled[volume] };
            let foreground = rng.unit() < o.foreground_fraction;
            let (z, y, x) = sample.labels.dim();
            let patch = sample_patch(&mut rng, [z, y, x], patch_size, &sample.foreground, foreground);
            PlannedPatch { labeled, volume, id: sample.id.clone(), patch }
        })
        .collect()
}

/// The batch tensors of a plan: images [N, C, Z, Y, X] (padded with each channel's background),
/// labels [N, Z, Y, X] (`ignore` on [`IGNORED`] voxels and outside the grid), and loss weights
/// (1 annotated, `lambda` pseudo-labelled).
pub(super) fn assemble(
    plan: &[PlannedPatch],
    labeled: &[Sample],
    unlabeled: &[Sample],
    channels: usize,
    [pz, py, px]: [usize; 3],
    ignore: i64,
    lambda: f64,
) -> (Array5<f32>, Array4<i64>, Vec<f32>) {
    let n = plan.len();
    let mut image = Array5::<f32>::zeros((n, channels, pz, py, px));
    let mut labels = Array4::<i64>::zeros((n, pz, py, px));
    let mut weights = Vec::with_capacity(n);
    for (b, p) in plan.iter().enumerate() {
        let sample = if p.labeled { &labeled[p.volume] } else { &unlabeled[p.volume] };
        crop_image(&sample.image, p.patch.start, &sample.fill, image.index_axis_mut(Axis(0), b));
        crop_labels(&sample.labels, IGNORED, p.patch.start, ignore, labels.index_axis_mut(Axis(0), b));
        weights.push(if p.labeled { 1.0f32 } else { lambda as f32 });
    }
    (image, labels, weights)
}
