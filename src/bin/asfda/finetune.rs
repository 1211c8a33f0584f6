//! `asfda finetune`: Selective Semi-supervised Fine-tuning of a bundle on annotated volumes (and
//! pseudo-labelled reliable ones), with checkpoints, resume and bundle export. The training loop
//! ([`train`]) is shared with `asfda demo`.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use asfda::engine::Engine;
use asfda::finetune::{FineTuneOptions, FineTuner, StepReport};
use asfda::select::Selection;
use asfda::volume::{read_nifti, ReadOptions, Volume};
use asfda::{Error, Result};

use crate::args::{number, path_list, path_of, positive, whole, EngineFlags, HELP_TEMPLATE};
use crate::files::{check_output, read_volume, volume_id};
use crate::progress::{Progress, StepBar};

/// Fine-tune the model on annotated (and pseudo-labelled) volumes -> checkpoint, bundle
///
/// Fine-tunes the bundle's model (SSFT: annotated patches plus pseudo-labelled patches of reliable
/// volumes, poly learning rate, ramped pseudo-label weight) and shows a progress bar on stderr.
/// Annotated volumes are required; label maps must be on their image's voxel grid.
#[derive(clap::Args, Debug)]
#[command(
    override_usage = "asfda finetune [--bundle DIR] --steps N (--labeled IMG=LABEL[,...] | --selection SELECTION.json --pool DIR --labels DIR) [options]",
    help_template = HELP_TEMPLATE
)]
pub struct FinetuneArgs {
    /// Annotated volumes as image=label file pairs (ids: image file names)
    #[arg(long, value_name = "IMG=LABEL[,...]", help_heading = "Data")]
    pub labeled: Option<OsString>,
    /// Selection JSON of `asfda select --out`: its picks are the annotated volumes, their images in
    /// --pool and their labels in --labels (found by id: ID, ID with _image -> _label, or ID_label;
    /// .nii.gz or .nii)
    #[arg(long, value_name = "FILE", help_heading = "Data")]
    pub selection: Option<PathBuf>,
    /// With --selection: the folder of the images
    #[arg(long, value_name = "DIR", help_heading = "Data")]
    pub pool: Option<PathBuf>,
    /// With --selection: the folder of the labels
    #[arg(long, value_name = "DIR", help_heading = "Data")]
    pub labels: Option<PathBuf>,
    /// Volumes to pseudo-label (the reliable set)
    #[arg(long, value_name = "IMG[,...]", help_heading = "Data")]
    pub unlabeled: Option<OsString>,
    /// With --selection: pseudo-label its reliable volumes (from --pool)
    #[arg(long, help_heading = "Data")]
    pub reliable: bool,

    /// Length of the run (its LR and pseudo-weight schedules); with --resume the steps continue
    /// from the checkpoint's count up to N
    #[arg(long, value_name = "N", value_parser = positive, help_heading = "Training")]
    pub steps: u64,
    /// Cubic training patch side in model voxels, a multiple of the model's size_divisible_by
    /// (default: the manifest's patch)
    #[arg(long, value_name = "P", value_parser = whole::<usize>, help_heading = "Training")]
    pub patch: Option<usize>,
    /// Patches per step (default 2)
    #[arg(long, value_name = "B", value_parser = whole::<usize>, help_heading = "Training")]
    pub batch: Option<usize>,
    /// Base learning rate (default: the manifest's)
    #[arg(long, value_name = "LR", value_parser = number, help_heading = "Training")]
    pub lr: Option<f64>,
    /// Seed of the patch sampling (default 0)
    #[arg(long, value_name = "S", value_parser = whole::<u64>, help_heading = "Training")]
    pub seed: Option<u64>,
    /// Use pseudo-labels only while the model making them reaches this mean foreground Dice on
    /// the annotated volumes (default 0.5; 0 = always)
    #[arg(long, value_name = "D", value_parser = number, help_heading = "Training")]
    pub min_pseudo_dice: Option<f64>,
    /// Save the run here (atomically) every --save-every steps and at the end (default: the
    /// --resume file, else no checkpoint)
    #[arg(long, value_name = "PATH", help_heading = "Training")]
    pub checkpoint: Option<PathBuf>,
    /// Continue the run saved in PATH (add the same data again); its saved options are kept
    /// except those given here
    #[arg(long, value_name = "PATH", help_heading = "Training")]
    pub resume: Option<PathBuf>,
    /// Also save every K steps (needs a checkpoint path; default 0 = end only)
    #[arg(long, value_name = "K", value_parser = whole::<u64>, help_heading = "Training")]
    pub save_every: Option<u64>,
    /// Write the adapted bundle to DIR (a new folder)
    #[arg(long, value_name = "DIR", help_heading = "Training")]
    pub export: Option<PathBuf>,
    /// Print one JSON line per step on stdout
    #[arg(long, help_heading = "Training")]
    pub json: bool,

    // The model that makes the pseudo-labels, and how it runs.
    #[command(flatten, next_help_heading = "Model")]
    pub engine: EngineFlags,
}

/// Training data by file: (id, image, label) and (id, image).
#[derive(Default)]
pub struct Data {
    pub labeled: Vec<(String, PathBuf, PathBuf)>,
    pub unlabeled: Vec<(String, PathBuf)>,
}

/// The NIfTI file in `dir` named by the first of `stems` that exists, as .nii.gz or .nii.
pub fn find_volume(dir: &Path, stems: &[String]) -> Option<PathBuf> {
    stems
        .iter()
        .flat_map(|stem| [format!("{stem}.nii.gz"), format!("{stem}.nii")])
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// The image of volume `id` in `dir`; the error names `what` the volume is.
pub fn find_image(dir: &Path, id: &str, what: &str) -> Result<PathBuf> {
    find_volume(dir, &[id.to_string()]).ok_or_else(|| {
        Error::invalid_argument(format!(
            "no image for {what} '{id}' in '{}' (looked for {id}.nii.gz, {id}.nii)",
            dir.display()
        ))
    })
}

/// The label file of volume `id` in `dir`: `_image` -> `_label` in the id, `ID_label`, or the id
/// itself (a folder of labels only); the `_label` names come first since images and labels may
/// share a folder.
pub fn find_label(dir: &Path, id: &str) -> Result<PathBuf> {
    let stems = [id.replace("_image", "_label"), format!("{id}_label"), id.to_string()];
    find_volume(dir, &stems).ok_or_else(|| {
        Error::invalid_argument(format!(
            "no label file for '{id}' in '{}' (looked for {}, {} and {}; .nii.gz or .nii)",
            dir.display(),
            stems[0],
            stems[1],
            stems[2]
        ))
    })
}

/// Reads a selection JSON file; the error names the file.
pub fn read_selection(path: &Path) -> Result<Selection> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "read selection", &e))?;
    Selection::from_json(text.trim()).map_err(|e| e.context(path.display()))
}

fn existing(path: PathBuf, what: &str) -> Result<PathBuf> {
    if !path.is_file() {
        return Err(Error::invalid_argument(format!("{what} '{}' does not exist or is not a file", path.display())));
    }
    Ok(path)
}

/// An `IMAGE=LABEL` item of --labeled, split at its first '=' (as bytes: paths need not be UTF-8).
fn image_label(pair: &Path) -> Result<(PathBuf, PathBuf)> {
    let bytes = pair.as_os_str().as_bytes();
    let at = bytes
        .iter()
        .position(|&b| b == b'=')
        .ok_or_else(|| Error::invalid_argument(format!("--labeled item '{}' is not IMAGE=LABEL", pair.display())))?;
    Ok((path_of(&bytes[..at]), path_of(&bytes[at + 1..])))
}

/// The data named by the flags, every file checked to exist (before any model work).
fn data(args: &FinetuneArgs) -> Result<Data> {
    let mut data = Data::default();
    let required = |path: &Option<PathBuf>, flag: &str| {
        path.clone()
            .ok_or_else(|| Error::invalid_argument(format!("--{flag} is required (see `asfda finetune --help`)")))
    };
    match (&args.labeled, &args.selection) {
        (Some(_), Some(_)) => return Err(Error::invalid_argument("give either --labeled or --selection, not both")),
        (None, None) => {
            return Err(Error::invalid_argument(
                "no annotated volumes: give --labeled IMG=LABEL[,...] or --selection FILE --pool DIR --labels DIR",
            ))
        }
        (Some(_), None) => {
            for pair in path_list(args.labeled.as_deref()) {
                let (image, label) = image_label(&pair)?;
                let image = existing(image, "--labeled image")?;
                data.labeled.push((volume_id(&image), image, existing(label, "--labeled label")?));
            }
            if args.reliable {
                return Err(Error::invalid_argument("--reliable needs --selection (it names the reliable volumes)"));
            }
        }
        (None, Some(file)) => {
            let selection = read_selection(file)?;
            let pool = required(&args.pool, "pool")?;
            let labels = required(&args.labels, "labels")?;
            for pick in &selection.picks {
                let image = find_image(&pool, &pick.id, "picked volume")?;
                data.labeled.push((pick.id.clone(), image, find_label(&labels, &pick.id)?));
            }
            if args.reliable {
                for id in &selection.reliable {
                    let image = find_image(&pool, id, "reliable volume")?;
                    data.unlabeled.push((id.clone(), image));
                }
            }
        }
    }
    for image in path_list(args.unlabeled.as_deref()) {
        let image = existing(image, "--unlabeled image")?;
        data.unlabeled.push((volume_id(&image), image));
    }
    if data.labeled.is_empty() {
        return Err(Error::invalid_argument("no annotated volumes given"));
    }
    Ok(data)
}

/// Reads the volumes and adds them to `tuner` (pseudo-labelling the unannotated ones), with
/// progress; returns the fraction of voxels kept by each pseudo-label map.
pub fn add_data(tuner: &mut FineTuner, data: &Data, images: &ReadOptions) -> Result<Vec<(String, f64)>> {
    let total = data.labeled.len() + data.unlabeled.len();
    let mut progress = Progress::new(total, "loading");
    for (i, (id, image, label)) in data.labeled.iter().enumerate() {
        progress.start(i, &format!("{id} (annotated)"));
        let (image_v, label_v): (Volume, Volume) =
            (read_volume(image, images)?, read_nifti(label, &ReadOptions::default())?);
        tuner.add_labeled(id, &image_v, &label_v).map_err(|e| {
            e.context(format!("annotated volume '{id}' ({} with label {})", image.display(), label.display()))
        })?;
        progress.finish_item("done");
    }
    let mut kept = Vec::new();
    for (i, (id, image)) in data.unlabeled.iter().enumerate() {
        progress.start(data.labeled.len() + i, &format!("{id} (pseudo-labelling)"));
        let volume = read_volume(image, images)?;
        let fraction = tuner.add_unlabeled(id, &volume).map_err(|e| e.context(image.display()))?;
        progress.finish_item(&format!("{:.0}% of voxels reliable", fraction * 100.0));
        kept.push((id.clone(), fraction));
    }
    Ok(kept)
}

/// The FineTuner for `options` (fresh) or continued from `resume` with `options` overriding the
/// saved ones where `explicit` says a flag set them.
pub fn tuner(
    engine: &Engine,
    options: FineTuneOptions,
    resume: Option<&Path>,
    explicit: &Explicit,
) -> Result<FineTuner> {
    let Some(path) = resume else { return FineTuner::new(engine, options) };
    let saved = FineTuner::resume(engine, path, None)?;
    let mut merged = saved.options().clone();
    merged.total_steps = options.total_steps;
    if explicit.patch {
        merged.patch_size = options.patch_size;
    }
    if explicit.batch {
        merged.batch_size = options.batch_size;
    }
    if explicit.lr {
        merged.lr = options.lr;
    }
    if explicit.seed {
        merged.seed = options.seed;
    }
    if explicit.min_pseudo_dice {
        merged.pseudo_label_min_dice = options.pseudo_label_min_dice;
    }
    if merged == *saved.options() {
        return Ok(saved);
    }
    drop(saved);
    FineTuner::resume(engine, path, Some(merged))
}

/// Which training flags were given (the rest keep a resumed run's saved values).
#[derive(Default)]
pub struct Explicit {
    pub patch: bool,
    pub batch: bool,
    pub lr: bool,
    pub seed: bool,
    pub min_pseudo_dice: bool,
}

/// Steps `tuner` until it has done `steps` steps, saving to `checkpoint` every `save_every` steps
/// (0 = never in between) and at the end; one JSON line per step on stdout with `json`.
pub fn train(
    tuner: &mut FineTuner,
    steps: u64,
    checkpoint: Option<&Path>,
    save_every: u64,
    json: bool,
) -> Result<Vec<StepReport>> {
    let first = tuner.steps_done();
    let bar = StepBar::new(first, steps);
    let mut reports = Vec::new();
    let mut told = None;
    while tuner.steps_done() < steps {
        let started = Instant::now();
        let r = tuner.step()?;
        if let Some(c) = tuner.pseudo_label_check().filter(|c| told != Some(c.labeler_step)) {
            told = Some(c.labeler_step);
            let by = c.labeler_step.map_or("the bundle's weights".to_string(), |t| format!("the weights of step {t}"));
            let min = tuner.options().pseudo_label_min_dice;
            let verdict = if c.trusted { "used" } else { "not used (--min-pseudo-dice)" };
            bar.println(&format!(
                "pseudo-labels by {by}: mean foreground Dice {:.3} on the annotated volumes (need {min}): {verdict}",
                c.foreground_dice
            ));
        }
        let seconds = started.elapsed().as_secs_f64();
        let last = r.step == steps;
        let save = checkpoint.filter(|_| last || (save_every > 0 && r.step.is_multiple_of(save_every)));
        if let Some(path) = save {
            tuner.save_checkpoint(path)?;
        }
        bar.show(&r, save.is_some());
        if json {
            let line = serde_json::json!({
                "step": r.step, "steps": steps, "loss": r.loss, "loss_ce": r.loss_ce, "loss_dice": r.loss_dice,
                "lr": r.lr, "lambda": r.lambda, "labeled_in_batch": r.labeled_in_batch,
                "pseudo_in_batch": r.pseudo_in_batch, "seconds": seconds,
                "checkpoint": save.map(|p| p.display().to_string()),
            });
            println!("{line}");
        }
        reports.push(r);
    }
    Ok(reports)
}

/// The fine-tuning options named by the flags (unset ones at their defaults) and which were set.
pub fn options(args: &FinetuneArgs) -> Result<(FineTuneOptions, Explicit)> {
    let defaults = FineTuneOptions::default();
    let explicit = Explicit {
        patch: args.patch.is_some(),
        batch: args.batch.is_some(),
        lr: args.lr.is_some(),
        seed: args.seed.is_some(),
        min_pseudo_dice: args.min_pseudo_dice.is_some(),
    };
    let options = FineTuneOptions {
        patch_size: args.patch.map(|p| [p; 3]),
        batch_size: args.batch.unwrap_or(defaults.batch_size),
        total_steps: args.steps,
        lr: args.lr,
        seed: args.seed.unwrap_or(defaults.seed),
        pseudo_label_min_dice: args.min_pseudo_dice.unwrap_or(defaults.pseudo_label_min_dice),
        ..defaults
    };
    options.validate()?;
    Ok((options, explicit))
}

pub fn run(args: &FinetuneArgs) -> Result<()> {
    let steps = args.steps;
    let (options, explicit) = options(args)?;
    let resume = args.resume.clone();
    if let Some(r) = &resume {
        if !r.is_file() {
            return Err(Error::invalid_argument(format!("--resume '{}' does not exist", r.display())));
        }
    }
    let checkpoint = args.checkpoint.clone().or_else(|| resume.clone());
    let save_every: u64 = args.save_every.unwrap_or(0);
    if save_every > 0 && checkpoint.is_none() {
        return Err(Error::invalid_argument("--save-every needs --checkpoint PATH (or --resume PATH)"));
    }
    if let Some(c) = &checkpoint {
        check_output(c, "checkpoint")?;
    }
    let export = args.export.clone();
    if let Some(dir) = &export {
        if dir.exists() {
            return Err(Error::invalid_argument(format!(
                "--export '{}' already exists; name a new folder",
                dir.display()
            )));
        }
        check_output(dir, "export")?;
    }
    let data = data(args)?;

    let engine = Engine::new(&args.engine.bundle(), args.engine.options())?;
    let mut tuner = tuner(&engine, options, resume.as_deref(), &explicit)?;
    let start = tuner.steps_done();
    if let Some(r) = &resume {
        eprintln!("resuming {} at step {start} of {steps}", r.display());
    }
    add_data(&mut tuner, &data, &args.engine.read_options())?;
    let reports = train(&mut tuner, steps, checkpoint.as_deref(), save_every, args.json)?;
    if reports.is_empty() {
        eprintln!("the run is already at step {start} of {steps}: nothing to do");
    }
    if let Some(dir) = &export {
        tuner.export_bundle(dir)?;
    }
    if !args.json {
        if let Some(last) = reports.last() {
            println!("fine-tuned steps {}..{} of {steps}; last loss {:.4}", start + 1, last.step, last.loss);
        }
        if let Some(c) = &checkpoint {
            println!("checkpoint {} (step {})", c.display(), tuner.steps_done());
        }
        if let Some(dir) = &export {
            println!("adapted bundle {}", dir.display());
        }
    }
    Ok(())
}
