//! Pseudo-labels for SSFT (docs/method.md section 2): the labelling model's argmax where its top
//! probability reaches `pseudo_label_threshold` ([`pseudo_labels`]), and the check that the
//! labelling model is good enough on the annotated volumes to be trusted at all ([`check`]).

use ndarray::{s, Array3, ArrayView4};

use super::batch::{Sample, IGNORED};
use super::dice::{mean_over, mean_per_class, Overlap};
use crate::cancel::CancelToken;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::labels::top_class;
use crate::preprocess::ModelGrid;

/// A pseudo-labelled volume ready to add to a [`super::FineTuner`] ([`super::FineTuner::pseudo_label_volume`]).
#[derive(Clone)]
pub struct PseudoLabeled {
    pub(super) sample: Sample,
    pub(super) kept: f64,
    pub(super) origin: PseudoOrigin,
}

impl PseudoLabeled {
    pub fn id(&self) -> &str {
        &self.sample.id
    }

    /// Fraction of the volume's voxels whose pseudo-label is kept (confidence >= threshold).
    pub fn kept_fraction(&self) -> f64 {
        self.kept
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct PseudoOrigin {
    pub(super) bundle: String,
    /// Step whose weights labelled (None: the bundle's).
    pub(super) labeler_step: Option<u64>,
    pub(super) threshold_bits: u64,
}

/// How well the model that makes the pseudo-labels segments the annotated volumes
/// ([`super::FineTuner::check_pseudo_labels`]).
#[derive(Clone, Debug, PartialEq)]
pub struct PseudoLabelCheck {
    /// Step whose weights made the pseudo-labels (None: the bundle's).
    pub labeler_step: Option<u64>,
    /// Dice per class (index 0 = background) of the labelling model's argmax against the
    /// annotations, on the model grid, averaged over the annotated volumes.
    pub dice: Vec<f64>,
    /// Mean of `dice` over the manifest's foreground classes.
    pub foreground_dice: f64,
    /// `foreground_dice >= pseudo_label_min_dice`: pseudo-labelled patches are drawn.
    pub trusted: bool,
}

/// `labeler`'s pseudo-labels of a prepared image (class indices, [`IGNORED`] below `threshold`
/// and on the padding), and the fraction of its (unpadded) voxels kept.
pub(super) fn pseudo_labels(
    labeler: &Engine,
    image: ArrayView4<'_, f32>,
    grid: &ModelGrid,
    threshold: f64,
) -> Result<(Array3<u8>, f64)> {
    let inference = labeler.infer_prepared(image, grid, &CancelToken::new()?, &mut |_| true)?;
    let probs = &inference.probabilities;
    let (_, z, y, x) = probs.dim();
    let tau = threshold as f32;
    let mut labels = Array3::from_elem((z, y, x), IGNORED);
    let [rz, ry, rx] = grid.valid_region();
    let mut kept = 0usize;
    for k in rz.clone() {
        for j in ry.clone() {
            for i in rx.clone() {
                let (best, p) = top_class(probs.slice(s![.., k, j, i]).iter().copied());
                if p >= tau {
                    labels[[k, j, i]] = best as u8;
                    kept += 1;
                }
            }
        }
    }
    let valid = rz.len() * ry.len() * rx.len();
    Ok((labels, kept as f64 / valid.max(1) as f64))
}

/// Segments every annotated volume with `labeler` and compares the argmax with the annotation
/// ([`super::FineTuner::check_pseudo_labels`]): trusted when the mean foreground Dice reaches
/// `min_dice`. `InvalidArgument` without annotated volumes.
pub(super) fn check(
    labeler: &Engine,
    labeled: &[Sample],
    foreground_classes: &[usize],
    labeler_step: Option<u64>,
    min_dice: f64,
) -> Result<PseudoLabelCheck> {
    if labeled.is_empty() {
        return Err(Error::invalid_argument(
            "checking pseudo-labels needs at least one annotated volume: add one with add_labeled",
        ));
    }
    let classes = labeler.bundle().manifest().classes.len();
    let mut per_volume = Vec::with_capacity(labeled.len());
    for l in labeled {
        let probs = labeler.infer_prepared(l.image.view(), &l.grid, &CancelToken::new()?, &mut |_| true)?.probabilities;
        let mut overlap = Overlap::new(classes);
        for ((k, j, i), &truth) in l.labels.indexed_iter() {
            if truth != IGNORED {
                overlap.add(top_class(probs.slice(s![.., k, j, i]).iter().copied()).0, usize::from(truth));
            }
        }
        per_volume.push(overlap.dice());
    }
    let dice = mean_per_class(&per_volume, classes);
    let foreground_dice = mean_over(&dice, foreground_classes);
    Ok(PseudoLabelCheck { labeler_step, trusted: foreground_dice >= min_dice, dice, foreground_dice })
}
