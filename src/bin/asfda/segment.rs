//! `asfda segment`: a label map (and optional entropy / probability maps) on the input's grid.

use std::path::PathBuf;

use asfda::cancel::CancelToken;
use asfda::engine::{Engine, SegmentOutputs};
use asfda::volume::{read_nifti, write_nifti, OutputType, ReadOptions};
use asfda::{Error, Result};

use crate::args::{Args, Spec};
use crate::files::{check_output, volume_id};
use crate::progress::Progress;

pub const SPEC: Spec = Spec {
    name: "segment",
    help: "usage: asfda segment [--bundle DIR] IMAGE --out LABELS.nii.gz [options]

Segments IMAGE. Every output is on IMAGE's own voxel grid (same dims and affine), so it overlays
the image in 3D Slicer or any viewer.

  --bundle DIR            model bundle (default: the shipped demo bundle models/demo_brain_unet)
  --out FILE              label map, one class index per voxel, integer NIfTI (required)
  --entropy FILE          normalised predictive entropy in [0, 1], float NIfTI
  --probabilities FILE    per-class probabilities (one channel per class), float NIfTI
  --device D, --threads N, --overlap F, --tiles-per-batch N, --mirror, --ort PATH  as for `asfda score`
  --json                  print the summary as JSON on stdout",
    values: &["bundle", "out", "entropy", "probabilities", "device", "threads", "overlap", "tiles-per-batch", "ort"],
    switches: &["mirror", "json"],
    max_positional: 1,
};

pub fn run(args: &Args) -> Result<()> {
    let image_path = PathBuf::from(
        args.positional
            .first()
            .ok_or_else(|| Error::invalid_argument("no IMAGE given (see `asfda segment --help`)"))?,
    );
    let out = args.path("out")?;
    let entropy_path = args.get("entropy").map(PathBuf::from);
    let probabilities_path = args.get("probabilities").map(PathBuf::from);
    for (path, flag) in
        [(Some(&out), "out"), (entropy_path.as_ref(), "entropy"), (probabilities_path.as_ref(), "probabilities")]
    {
        if let Some(path) = path {
            check_output(path, flag)?;
        }
    }
    let image = read_nifti(&image_path, &ReadOptions::default())?;
    let engine = Engine::new(&args.bundle(), args.engine_options()?)?;
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
    if args.has("json") {
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
