//! `asfda segment`: a label map (and optional entropy / probability maps) on the input's grid.

use std::path::PathBuf;

use asfda::cancel::CancelToken;
use asfda::engine::{Engine, SegmentOutputs};
use asfda::volume::{write_nifti, OutputType};
use asfda::{Error, Result};

use crate::args::{EngineFlags, HELP_TEMPLATE};
use crate::files::{check_nifti_name, check_output, read_volume, volume_id};
use crate::progress::Progress;

/// Segment a volume: labels (and entropy/probabilities) on the input's grid
///
/// Segments IMAGE. Every output is on IMAGE's own voxel grid (same dims and affine), so it
/// overlays the image in 3D Slicer or any viewer.
#[derive(clap::Args, Debug)]
#[command(
    override_usage = "asfda segment [--bundle DIR] IMAGE --out LABELS.nii.gz [options]",
    help_template = HELP_TEMPLATE
)]
pub struct SegmentArgs {
    /// The volume to segment
    #[arg(value_name = "IMAGE")]
    pub image: Option<PathBuf>,
    /// Label map, one class index per voxel, integer NIfTI
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Normalised predictive entropy in [0, 1], float NIfTI
    #[arg(long, value_name = "FILE")]
    pub entropy: Option<PathBuf>,
    /// Per-class probabilities (one channel per class), float NIfTI
    #[arg(long, value_name = "FILE")]
    pub probabilities: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineFlags,
    /// Print the summary as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &SegmentArgs) -> Result<()> {
    let image_path =
        args.image.clone().ok_or_else(|| Error::invalid_argument("no IMAGE given (see `asfda segment --help`)"))?;
    let out = args.out.clone();
    let entropy_path = args.entropy.clone();
    let probabilities_path = args.probabilities.clone();
    for (path, flag) in
        [(Some(&out), "out"), (entropy_path.as_ref(), "entropy"), (probabilities_path.as_ref(), "probabilities")]
    {
        if let Some(path) = path {
            check_output(path, flag)?;
            check_nifti_name(path, flag)?;
        }
    }
    let image = read_volume(&image_path, &args.engine.read_options())?;
    let engine = Engine::new(&args.engine.bundle(), args.engine.options())?;
    let classes = engine.bundle().manifest().classes.clone();
    let outputs = SegmentOutputs { probabilities: probabilities_path.is_some(), entropy: entropy_path.is_some() };

    let mut progress = Progress::new(1, "segmenting");
    progress.start(0, &volume_id(&image_path));
    let cancel = CancelToken::new()?;
    let segmentation = engine.segment(&image, outputs, &cancel, &mut |f| {
        progress.update(f);
        true
    })?;
    progress.finish_item("done");

    let label_type = if classes.len() <= 256 { OutputType::U8 } else { OutputType::U16 };
    write_nifti(&segmentation.labels, &out, label_type)?;
    if let (Some(path), Some(entropy)) = (&entropy_path, &segmentation.entropy) {
        write_nifti(entropy, path, OutputType::F32)?;
    }
    if let (Some(path), Some(probabilities)) = (&probabilities_path, &segmentation.probabilities) {
        write_nifti(probabilities, path, OutputType::F32)?;
    }

    // Per-class voxel counts and volumes: what a reader checks first.
    let mut counts = vec![0u64; classes.len()];
    for &v in segmentation.labels.data() {
        if let Some(c) = counts.get_mut(v as usize) {
            *c += 1;
        }
    }
    let voxel_ml = segmentation.labels.spacing().iter().product::<f64>() / 1000.0;
    if args.json {
        let per_class: Vec<_> = classes
            .iter()
            .zip(&counts)
            .map(|(name, &n)| serde_json::json!({"class": name, "voxels": n, "ml": n as f64 * voxel_ml}))
            .collect();
        let summary = serde_json::json!({
            "labels": out.display().to_string(),
            "entropy": entropy_path.map(|p| p.display().to_string()),
            "probabilities": probabilities_path.map(|p| p.display().to_string()),
            "classes": per_class,
        });
        println!("{summary}");
    } else {
        println!("{:<16} {:>10} {:>10}", "class", "voxels", "ml");
        for (name, &n) in classes.iter().zip(&counts) {
            println!("{name:<16} {n:>10} {:>10.1}", n as f64 * voxel_ml);
        }
        println!("wrote {}", out.display());
        for path in [&entropy_path, &probabilities_path].into_iter().flatten() {
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
