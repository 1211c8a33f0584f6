//! `asfda segment`: a label map (and optional entropy / probability maps) on the input's grid.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use asfda::atomic_file;
use asfda::bundle::ClassInfo;
use asfda::cancel::CancelToken;
use asfda::engine::{Engine, SegmentOutputs};
use asfda::volume::{write_nifti, OutputType};
use asfda::{Error, Result};

use crate::args::{EngineFlags, HELP_TEMPLATE};
use crate::files::{check_nifti_name, check_output, is_dicom_input, read_volume, volume_id};
use crate::progress::Progress;
use crate::score::ScoreLog;

/// Segment a volume: labels (and entropy/probabilities) on the input's grid
///
/// Segments IMAGE. Every output is on IMAGE's own voxel grid (same dims and affine), so it
/// overlays the image in 3D Slicer or any viewer.
#[derive(clap::Args, Debug)]
#[command(
    override_usage = "asfda segment [--bundle DIR] IMAGE (--out LABELS.nii.gz | --dicom-seg SEG.dcm) [options]",
    help_template = HELP_TEMPLATE
)]
pub struct SegmentArgs {
    /// The volume to segment
    #[arg(value_name = "IMAGE")]
    pub image: Option<PathBuf>,
    /// Label map, one class index per voxel, integer NIfTI
    #[arg(long, value_name = "FILE", required_unless_present = "dicom_seg")]
    pub out: Option<PathBuf>,
    /// The label map as a DICOM Segmentation object (binary, one segment per foreground class,
    /// in IMAGE's study and frame of reference, referencing its images); IMAGE must be DICOM
    #[arg(long, value_name = "FILE")]
    pub dicom_seg: Option<PathBuf>,
    /// Normalised predictive entropy in [0, 1], float NIfTI
    #[arg(long, value_name = "FILE")]
    pub entropy: Option<PathBuf>,
    /// Per-class probabilities (one channel per class), float NIfTI
    #[arg(long, value_name = "FILE")]
    pub probabilities: Option<PathBuf>,
    /// Also score the volume, from the same model run, and append its score to FILE (JSON lines,
    /// as `asfda score` writes; the id is IMAGE's file name)
    #[arg(long, value_name = "FILE")]
    pub score: Option<PathBuf>,
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
        [(out.as_ref(), "out"), (entropy_path.as_ref(), "entropy"), (probabilities_path.as_ref(), "probabilities")]
    {
        if let Some(path) = path {
            check_output(path, flag)?;
            check_nifti_name(path, flag)?;
        }
    }
    if let Some(path) = &args.dicom_seg {
        check_output(path, "dicom-seg")?;
        if !is_dicom_input(&image_path) {
            return Err(Error::invalid_argument(format!(
                "--dicom-seg needs a DICOM IMAGE (a series folder or an enhanced DICOM file); '{}' is not DICOM",
                image_path.display()
            )));
        }
    }
    let id = volume_id(&image_path);
    // Opened before the model runs, so a file that is not a score file fails at once.
    let mut score_log = match &args.score {
        Some(path) => {
            check_output(path, "score")?;
            let (log, earlier) = ScoreLog::open(path)?;
            if earlier.iter().any(|s| s.id == id) {
                return Err(Error::invalid_argument(format!(
                    "'{}' already holds a score of '{id}' (use another --score file, or segment without --score)",
                    path.display()
                )));
            }
            Some(log)
        }
        None => None,
    };
    let image = read_volume(&image_path, &args.engine.read_options())?;
    let engine = Engine::new(&args.engine.bundle(), args.engine.options())?;
    let classes = engine.bundle().manifest().classes.clone();
    let outputs = SegmentOutputs { probabilities: probabilities_path.is_some(), entropy: entropy_path.is_some() };

    let mut progress = Progress::new(1, "segmenting");
    progress.start(0, &id);
    let cancel = CancelToken::new()?;
    let mut report = |f| {
        progress.update(f);
        true
    };
    let segmentation = match score_log.as_mut() {
        Some(log) => {
            let (score, segmentation) = engine.score_and_segment(&id, &image, outputs, &cancel, &mut report)?;
            log.append(&score)?;
            segmentation
        }
        None => engine.segment(&image, outputs, &cancel, &mut report)?,
    };
    progress.finish_item("done");

    let label_type = if classes.len() <= 256 { OutputType::U8 } else { OutputType::U16 };
    let table = match &out {
        Some(out) => {
            write_nifti(&segmentation.labels, out, label_type)?;
            let table = color_table_path(out);
            atomic_file::write(&table, color_table(&classes).as_bytes())?;
            Some(table)
        }
        None => None,
    };
    let seg = match &args.dicom_seg {
        Some(path) => Some(engine.write_dicom_seg(&segmentation.labels, &[&image_path], path)?),
        None => None,
    };
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
            .map(|(class, &n)| {
                serde_json::json!({"class": class.name, "color": class.color, "voxels": n, "ml": n as f64 * voxel_ml})
            })
            .collect();
        let summary = serde_json::json!({
            "labels": out.as_ref().map(|p| p.display().to_string()),
            "color_table": table.as_ref().map(|p| p.display().to_string()),
            "dicom_seg": args.dicom_seg.as_ref().map(|p| p.display().to_string()),
            "dicom_seg_series_uid": seg.as_ref().map(|s| s.series_instance_uid.clone()),
            "score": args.score.as_ref().map(|p| p.display().to_string()),
            "entropy": entropy_path.map(|p| p.display().to_string()),
            "probabilities": probabilities_path.map(|p| p.display().to_string()),
            "classes": per_class,
        });
        println!("{summary}");
    } else {
        println!("{:<16} {:>10} {:>10}", "class", "voxels", "ml");
        for (class, &n) in classes.iter().zip(&counts) {
            println!("{:<16} {n:>10} {:>10.1}", class.name, n as f64 * voxel_ml);
        }
        if let (Some(out), Some(table)) = (&out, &table) {
            println!("wrote {} (class names and colours: {})", out.display(), table.display());
        }
        if let (Some(path), Some(seg)) = (&args.dicom_seg, &seg) {
            println!(
                "wrote {} (DICOM SEG, {} segments in {} frames, series {})",
                path.display(),
                seg.segments,
                seg.frames,
                seg.series_instance_uid
            );
        }
        if let Some(path) = &args.score {
            println!("appended the score of '{id}' to {}", path.display());
        }
        for path in [&entropy_path, &probabilities_path].into_iter().flatten() {
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}

/// The colour table beside a label map: `labels.nii.gz` -> `labels.ctbl`.
fn color_table_path(labels: &Path) -> PathBuf {
    let name = labels.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default();
    let stem = name.strip_suffix(b".nii.gz").or_else(|| name.strip_suffix(b".nii")).unwrap_or(name);
    let mut table = stem.to_vec();
    table.extend_from_slice(b".ctbl");
    labels.with_file_name(std::ffi::OsStr::from_bytes(&table))
}

/// The classes as a 3D Slicer colour table (`index name R G B A` per line; Slicer loads it with
/// the label map and shows the classes by name and colour). Background is transparent; a class
/// without a colour in the manifest gets one from a fixed palette.
fn color_table(classes: &[ClassInfo]) -> String {
    const PALETTE: [[u8; 3]; 6] =
        [[128, 174, 128], [241, 214, 145], [177, 122, 101], [111, 184, 210], [216, 101, 79], [221, 130, 101]];
    let mut text = format!("# Color table file written by asfda {}\n# {} values\n", asfda::VERSION, classes.len());
    for (i, class) in classes.iter().enumerate() {
        let [r, g, b] = class.color.unwrap_or(if i == 0 { [0, 0, 0] } else { PALETTE[(i - 1) % PALETTE.len()] });
        let alpha = if i == 0 { 0 } else { 255 };
        // Slicer splits on whitespace: a name with spaces keeps its words joined by '_'.
        let name: String = class.name.split_whitespace().collect::<Vec<_>>().join("_");
        text.push_str(&format!("{i} {name} {r} {g} {b} {alpha}\n"));
    }
    text
}
