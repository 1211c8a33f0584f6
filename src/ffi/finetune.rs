//! C ABI for Selective Semi-supervised Fine-tuning: `asfda_finetuner_*` and
//! `asfda_finetune_step`, over [`crate::finetune::FineTuner`].

use std::ffi::c_char;

use super::engine::AsfdaEngine;
use super::volume::AsfdaVolume;
use super::{c_path, c_str, check_out, free_handle, guard, non_null, write_out, AsfdaStatus};
use crate::error::{Error, Result};
use crate::finetune::{FineTuneOptions, FineTuner};
use crate::volume::Volume;

/// A fine-tuning run on an engine's bundle: annotated and pseudo-labelled volumes, the weights
/// and AdamW state. Independent of the engine it was made from (which may be freed first). Not
/// thread-safe: use one fine-tuner from one thread at a time.
pub struct AsfdaFineTuner(FineTuner);

/// Fine-tuning settings. Start from asfda_finetune_options_default() and set what you need.
#[repr(C)]
pub struct AsfdaFineTuneOptions {
    /// Training patch (z, y, x) in model-grid voxels, multiples of the model's size_divisible_by;
    /// all three 0 = the model's own patch size. Default 0, 0, 0.
    pub patch_size: [usize; 3],
    /// Patches per step. Default 2.
    pub batch_size: usize,
    /// Length of the learning-rate and pseudo-weight schedules, in steps. Default 100.
    pub total_steps: u64,
    /// Base learning rate; 0 = the model manifest's. Default 0.
    pub lr: f64,
    /// AdamW weight decay; negative = the model manifest's. Default -1.
    pub weight_decay: f64,
    /// Poly schedule exponent: lr (1 - t/T)^e. Default 0.9.
    pub poly_exponent: f64,
    /// Probability that a patch is centred on a foreground voxel. Default 1/3.
    pub foreground_fraction: f64,
    /// Probability that a patch comes from an annotated (not a pseudo-labelled) volume. Default 0.8.
    pub labeled_fraction: f64,
    /// Pseudo-label voxels with a top probability below this are ignored. Default 0.9.
    pub pseudo_label_threshold: f64,
    /// Share of total_steps over which the pseudo-label weight ramps from ~0 to 1. Default 0.2.
    pub ramp_fraction: f64,
    /// Recompute pseudo-labels with the fine-tuned weights every this many steps; 0 = never. Default 0.
    pub pseudo_label_refresh_every: u64,
    /// Use pseudo-labels only while the model making them reaches this mean foreground Dice on
    /// the annotated volumes (asfda_finetuner_check_pseudo_labels); 0 = always. Default 0.5.
    pub pseudo_label_min_dice: f64,
    /// Seed of all random draws. Default 0.
    pub seed: u64,
}

/// What one asfda_finetune_step did.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AsfdaStepReport {
    /// Batch loss before the update: loss_ce + loss_dice, each sample weighted (1 annotated,
    /// lambda pseudo-labelled) and averaged.
    pub loss: f64,
    pub loss_ce: f64,
    pub loss_dice: f64,
    /// Learning rate of this step.
    pub lr: f64,
    /// Weight of pseudo-labelled patches in this step.
    pub lambda: f64,
    /// 1-based number of this step in the fine-tuning run.
    pub step: u64,
    /// Patches from annotated volumes in this batch.
    pub labeled_in_batch: usize,
    /// Patches from pseudo-labelled volumes in this batch.
    pub pseudo_in_batch: usize,
}

/// The default fine-tuning options.
#[no_mangle]
pub extern "C" fn asfda_finetune_options_default() -> AsfdaFineTuneOptions {
    let d = FineTuneOptions::default();
    AsfdaFineTuneOptions {
        patch_size: [0; 3],
        batch_size: d.batch_size,
        total_steps: d.total_steps,
        lr: 0.0,
        weight_decay: -1.0,
        poly_exponent: d.poly_exponent,
        foreground_fraction: d.foreground_fraction,
        labeled_fraction: d.labeled_fraction,
        pseudo_label_threshold: d.pseudo_label_threshold,
        ramp_fraction: d.ramp_fraction,
        pseudo_label_refresh_every: d.pseudo_label_refresh_every,
        pseudo_label_min_dice: d.pseudo_label_min_dice,
        seed: d.seed,
    }
}

fn finetune_options(o: &AsfdaFineTuneOptions) -> Result<FineTuneOptions> {
    let patch_size = match o.patch_size {
        [0, 0, 0] => None,
        p if p.contains(&0) => {
            return Err(Error::invalid_argument(format!(
                "options->patch_size {p:?}: give all three sides, or all 0 for the model's patch"
            )))
        }
        p => Some(p),
    };
    if o.lr.is_nan() || o.weight_decay.is_nan() {
        return Err(Error::invalid_argument("options->lr and options->weight_decay must not be NaN"));
    }
    let options = FineTuneOptions {
        patch_size,
        batch_size: o.batch_size,
        total_steps: o.total_steps,
        lr: (o.lr != 0.0).then_some(o.lr),
        weight_decay: (o.weight_decay >= 0.0).then_some(o.weight_decay),
        poly_exponent: o.poly_exponent,
        foreground_fraction: o.foreground_fraction,
        labeled_fraction: o.labeled_fraction,
        pseudo_label_threshold: o.pseudo_label_threshold,
        ramp_fraction: o.ramp_fraction,
        pseudo_label_refresh_every: o.pseudo_label_refresh_every,
        pseudo_label_min_dice: o.pseudo_label_min_dice,
        seed: o.seed,
    };
    options.validate()?;
    Ok(options)
}

fn into_handle(tuner: FineTuner) -> *mut AsfdaFineTuner {
    Box::into_raw(Box::new(AsfdaFineTuner(tuner)))
}

fn tuner_mut<'a>(tuner: *mut AsfdaFineTuner) -> Result<&'a mut FineTuner> {
    // SAFETY: a non-NULL handle comes from asfda_finetuner_new/_resume (caller contract).
    unsafe { tuner.as_mut() }.map(|t| &mut t.0).ok_or_else(|| Error::invalid_argument("argument 'tuner' is NULL"))
}

/// Starts fine-tuning on `engine`'s bundle from the bundle's checkpoint. `options` NULL = the
/// defaults. The engine is not changed and not referenced afterwards.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_finetuner_new(
    engine: *const AsfdaEngine,
    options: *const AsfdaFineTuneOptions,
    out_tuner: *mut *mut AsfdaFineTuner,
) -> AsfdaStatus {
    guard(|| {
        check_out(out_tuner, "out_tuner")?;
        let engine = &non_null(engine, "engine")?.0;
        let options = if options.is_null() {
            FineTuneOptions::default()
        } else {
            finetune_options(non_null(options, "options")?)?
        };
        write_out(out_tuner, into_handle(FineTuner::new(engine, options)?));
        Ok(())
    })
}

/// Continues a run saved with asfda_finetuner_save_checkpoint: weights, optimizer state and step count as
/// saved; `options` NULL = the saved options. Add the same volumes again afterwards (any order).
/// ASFDA_STATUS_FORMAT for a truncated or corrupt file, ASFDA_STATUS_INVALID_DATA for a file that
/// is not a fine-tuning checkpoint of this engine's bundle.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_finetuner_resume(
    engine: *const AsfdaEngine,
    path: *const c_char,
    options: *const AsfdaFineTuneOptions,
    out_tuner: *mut *mut AsfdaFineTuner,
) -> AsfdaStatus {
    guard(|| {
        check_out(out_tuner, "out_tuner")?;
        let engine = &non_null(engine, "engine")?.0;
        let path = c_path(path, "path")?;
        let options = if options.is_null() { None } else { Some(finetune_options(non_null(options, "options")?)?) };
        write_out(out_tuner, into_handle(FineTuner::resume(engine, &path, options)?));
        Ok(())
    })
}

/// Frees a fine-tuner; NULL is a no-op.
#[no_mangle]
pub extern "C" fn asfda_finetuner_free(tuner: *mut AsfdaFineTuner) {
    free_handle(tuner);
}

/// Adds an annotated volume. `label` must be on `image`'s voxel grid
/// (ASFDA_STATUS_GEOMETRY_MISMATCH) with one channel of class indices 0..classes-1
/// (ASFDA_STATUS_INVALID_DATA names a bad value). `id` must be unique within the run.
/// The fine-tuner keeps only the preprocessed image and labels on the model grid: `image` and
/// `label` may be freed after the call.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_finetuner_add_labeled(
    tuner: *mut AsfdaFineTuner,
    id: *const c_char,
    image: *const AsfdaVolume,
    label: *const AsfdaVolume,
) -> AsfdaStatus {
    guard(|| {
        let tuner = tuner_mut(tuner)?;
        let id = c_str(id, "id")?;
        let (image, label) = (&non_null(image, "image")?.0, &non_null(label, "label")?.0);
        tuner.add_labeled(id, image, label)
    })
}

/// Adds an unannotated volume (from the reliable set of asfda_select): it is segmented now and
/// its confident voxels become pseudo-labels. `out_reliable_fraction` (may be NULL) receives the
/// share of its voxels kept. As for asfda_finetuner_add_labeled, only the model-grid image is kept
/// (refreshes relabel it): `image` may be freed after the call.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_finetuner_add_unlabeled(
    tuner: *mut AsfdaFineTuner,
    id: *const c_char,
    image: *const AsfdaVolume,
    out_reliable_fraction: *mut f64,
) -> AsfdaStatus {
    guard(|| {
        let tuner = tuner_mut(tuner)?;
        let id = c_str(id, "id")?;
        let kept = tuner.add_unlabeled(id, &non_null(image, "image")?.0)?;
        if !out_reliable_fraction.is_null() {
            write_out(out_reliable_fraction, kept);
        }
        Ok(())
    })
}

/// One AdamW step on a batch of patches (labelled and pseudo-labelled mixed; poly learning
/// rate; ramped pseudo-label weight). ASFDA_STATUS_INVALID_ARGUMENT before any annotated volume
/// was added; ASFDA_STATUS_INVALID_DATA for a non-finite loss (the state is then unchanged).
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_finetune_step(tuner: *mut AsfdaFineTuner, out_report: *mut AsfdaStepReport) -> AsfdaStatus {
    guard(|| {
        check_out(out_report, "out_report")?;
        let r = tuner_mut(tuner)?.step()?;
        write_out(
            out_report,
            AsfdaStepReport {
                loss: r.loss.into(),
                loss_ce: r.loss_ce.into(),
                loss_dice: r.loss_dice.into(),
                lr: r.lr,
                lambda: r.lambda,
                step: r.step,
                labeled_in_batch: r.labeled_in_batch,
                pseudo_in_batch: r.pseudo_in_batch,
            },
        );
        Ok(())
    })
}

/// The number of classes of the model (background included): the length of the Dice array of
/// asfda_finetuner_evaluate.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_finetuner_classes(tuner: *const AsfdaFineTuner, out_classes: *mut usize) -> AsfdaStatus {
    guard(|| {
        check_out(out_classes, "out_classes")?;
        write_out(out_classes, non_null(tuner, "tuner")?.0.classes());
        Ok(())
    })
}

/// Steps taken in this fine-tuning run (resumed ones included).
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_finetuner_steps_done(tuner: *const AsfdaFineTuner, out_steps: *mut u64) -> AsfdaStatus {
    guard(|| {
        check_out(out_steps, "out_steps")?;
        write_out(out_steps, non_null(tuner, "tuner")?.0.steps_done());
        Ok(())
    })
}

/// Dice per class (index 0 = background) of the current weights on `count` annotated volumes
/// (each image with its label volume, on the same grid), averaged over volumes; a class absent from both
/// prediction and label scores 1. `dice_per_class` must hold `classes` doubles, `classes` being
/// asfda_finetuner_classes.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_finetuner_evaluate(
    tuner: *const AsfdaFineTuner,
    images: *const *const AsfdaVolume,
    labels: *const *const AsfdaVolume,
    count: usize,
    dice_per_class: *mut f64,
    classes: usize,
) -> AsfdaStatus {
    guard(|| {
        check_out(dice_per_class, "dice_per_class")?;
        let tuner = &non_null(tuner, "tuner")?.0;
        if classes != tuner.classes() {
            return Err(Error::invalid_argument(format!(
                "dice_per_class holds {classes} values; the model has {} classes",
                tuner.classes()
            )));
        }
        if count == 0 {
            return Err(Error::invalid_argument("count is 0: evaluate needs at least one (image, label) pair"));
        }
        non_null(images, "images")?;
        non_null(labels, "labels")?;
        // SAFETY: the caller provides `count` pointers in each array (checked non-NULL above).
        let (images, labels) =
            unsafe { (std::slice::from_raw_parts(images, count), std::slice::from_raw_parts(labels, count)) };
        let cases: Vec<(&Volume, &Volume)> = images
            .iter()
            .zip(labels)
            .enumerate()
            .map(|(i, (&im, &la))| {
                Ok((&non_null(im, &format!("images[{i}]"))?.0, &non_null(la, &format!("labels[{i}]"))?.0))
            })
            .collect::<Result<_>>()?;
        let dice = tuner.evaluate(&cases)?;
        // SAFETY: the caller provides `classes` writable doubles (checked equal to dice.len()).
        unsafe { std::ptr::copy_nonoverlapping(dice.as_ptr(), dice_per_class, classes) };
        Ok(())
    })
}

/// Checks the pseudo-labels' source (see pseudo_label_min_dice): segments every annotated
/// volume with the model that makes the pseudo-labels (the bundle's weights, or those of the last
/// refresh) and compares with the annotations. asfda_finetune_step makes this check itself when
/// due; call this to see its outcome. `dice_per_class` (may be NULL) receives `classes` values
/// (asfda_finetuner_classes), `out_foreground_dice` their mean over the foreground classes, and
/// `out_trusted` (may be NULL) whether pseudo-labelled patches are drawn. The result is kept
/// until the next refresh or annotated volume. ASFDA_STATUS_INVALID_ARGUMENT before any annotated
/// volume was added.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_finetuner_check_pseudo_labels(
    tuner: *mut AsfdaFineTuner,
    dice_per_class: *mut f64,
    classes: usize,
    out_foreground_dice: *mut f64,
    out_trusted: *mut bool,
) -> AsfdaStatus {
    guard(|| {
        check_out(out_foreground_dice, "out_foreground_dice")?;
        let tuner = tuner_mut(tuner)?;
        if !dice_per_class.is_null() && classes != tuner.classes() {
            return Err(Error::invalid_argument(format!(
                "dice_per_class holds {classes} values; the model has {} classes",
                tuner.classes()
            )));
        }
        let check = tuner.check_pseudo_labels()?;
        if !dice_per_class.is_null() {
            // SAFETY: the caller provides `classes` writable doubles (checked equal to dice.len()).
            unsafe { std::ptr::copy_nonoverlapping(check.dice.as_ptr(), dice_per_class, classes) };
        }
        write_out(out_foreground_dice, check.foreground_dice);
        if !out_trusted.is_null() {
            write_out(out_trusted, check.trusted);
        }
        Ok(())
    })
}

/// Saves the run (weights, optimizer state, step count, options) to `path` crash-safely: a
/// temporary file in the same folder renamed over `path`, so a killed process leaves the
/// previous checkpoint or the new one.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_finetuner_save_checkpoint(tuner: *const AsfdaFineTuner, path: *const c_char) -> AsfdaStatus {
    guard(|| {
        let tuner = &non_null(tuner, "tuner")?.0;
        tuner.save_checkpoint(&c_path(path, "path")?)
    })
}

/// Writes the adapted model bundle to the new folder `dir` (must not exist): manifest, train
/// step and source knowledge copied, this run's checkpoint, and model.onnx with the fine-tuned
/// weights baked in (usable by any ONNX runtime). Complete or absent, never half-written.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_finetuner_export_bundle(tuner: *const AsfdaFineTuner, dir: *const c_char) -> AsfdaStatus {
    guard(|| {
        let tuner = &non_null(tuner, "tuner")?.0;
        tuner.export_bundle(&c_path(dir, "dir")?)
    })
}

/// Switches `engine` (same bundle) to the fine-tuned weights, without reading the disk; calls
/// already running on it finish with the weights they started with.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_finetuner_apply_to(tuner: *const AsfdaFineTuner, engine: *mut AsfdaEngine) -> AsfdaStatus {
    guard(|| {
        let tuner = &non_null(tuner, "tuner")?.0;
        tuner.apply_to(&non_null(engine.cast_const(), "engine")?.0)
    })
}
