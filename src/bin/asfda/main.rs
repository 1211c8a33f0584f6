//! The `asfda` command line, built on the public Rust API like any other user.
//!
//! Each command is a module under `src/bin/asfda/` with its own flag spec and help; `asfda
//! <command> --help` prints it. Errors are printed as `asfda: error: ...` with exit status 1.

mod args;
mod files;
mod progress;
mod report;
mod score;
mod segment;
mod select;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use asfda::model::Model;
use asfda::runtime::Runtime;
use asfda::volume::{read_nifti, write_nifti, OutputType, ReadOptions, Volume};
use asfda::{Error, Result};

use args::{shipped, Args, Spec};

const USAGE: &str = "usage: asfda <command> [options]   (asfda <command> --help for its options)

commands:
  info        ONNX Runtime version, library path and execution providers
  score       score volumes for how informative annotating them would be -> JSON lines
  select      pick the volumes to annotate from score files, under a budget
  segment     segment a volume: labels (and entropy/probabilities) on the input's grid
  report      the visual report (PNG + Markdown) of a selection: entropy overlays, Dice chart
  run-model   run a one-input ONNX model on a whole volume
  demo        run the shipped tiny model on the shipped MR volume";

const INFO: Spec = Spec {
    name: "info",
    help: "usage: asfda info [--json] [--ort PATH]

Prints the asfda version and the ONNX Runtime in use (version, library path and how it was found,
execution providers).

  --json       print it as JSON
  --ort PATH   ONNX Runtime library to load",
    values: &["ort"],
    switches: &["json"],
    max_positional: 0,
};

const RUN_MODEL: Spec = Spec {
    name: "run-model",
    help: "usage: asfda run-model --model M.onnx --input IN.nii[.gz] --output OUT.nii[.gz] [--device D] [--threads N] [--ort PATH]

Runs a one-input ONNX model on a whole volume; writes its first output (float) on the input's grid.",
    values: &["model", "input", "output", "device", "threads", "ort"],
    switches: &[],
    max_positional: 0,
};

const DEMO: Spec = Spec {
    name: "demo",
    help: "usage: asfda demo [--out DIR] [--device D] [--threads N] [--ort PATH]

Runs the shipped tiny model on the shipped real MR volume and writes the results to DIR
(default out/demo).",
    values: &["out", "device", "threads", "ort"],
    switches: &["json"],
    max_positional: 0,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("asfda: error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let Some((command, rest)) = args.split_first() else {
        println!("{USAGE}");
        return Ok(());
    };
    let (spec, action): (&'static Spec, fn(&Args) -> Result<()>) = match command.as_str() {
        "info" => (&INFO, info),
        "score" => (&score::SPEC, score::run),
        "select" => (&select::SPEC, select::run),
        "segment" => (&segment::SPEC, segment::run),
        "report" => (&report::SPEC, report::run),
        "run-model" => (&RUN_MODEL, run_model),
        "demo" => (&DEMO, demo),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            return Ok(());
        }
        other => return Err(Error::invalid_argument(format!("unknown command '{other}'\n\n{USAGE}"))),
    };
    match Args::parse(spec, rest)? {
        Some(parsed) => action(&parsed),
        None => Ok(()), // --help was printed
    }
}

fn info(flags: &Args) -> Result<()> {
    let runtime = Runtime::load(flags.runtime_options()?.library_path.as_deref())?;
    let info = runtime.info();
    if flags.has("json") {
        println!("{}", serde_json::to_string_pretty(info).map_err(|e| Error::internal(e.to_string()))?);
    } else {
        println!("asfda          {}", info.asfda_version);
        println!("ONNX Runtime   {}", info.ort_version);
        println!("library        {} (found via {:?})", info.library_path.display(), info.library_source);
        println!("providers      {}", info.providers.join(", "));
        println!(
            "CUDA provider  {}",
            if info.cuda_provider_library { "present" } else { "absent (run `make ort-gpu`)" }
        );
    }
    Ok(())
}

fn run_model(flags: &Args) -> Result<()> {
    let model = Model::load(&flags.path("model")?, &flags.runtime_options()?)?;
    let input = read_nifti(&flags.path("input")?, &ReadOptions::default())?;
    let output = model.run_volume(&input)?;
    write_nifti(&output, &flags.path("output")?, OutputType::F32)
}

fn describe(volume: &Volume) -> String {
    let [x, y, z] = volume.dims();
    let [sx, sy, sz] = volume.spacing();
    format!("{x}x{y}x{z} voxels, {} channel(s), spacing {sx:.2}x{sy:.2}x{sz:.2} mm", volume.channels())
}

fn demo(flags: &Args) -> Result<()> {
    let out = flags.get("out").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("out/demo"));
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, "create folder", &e))?;
    info(flags)?;

    let image_path = shipped("data/anatomical.nii");
    let model_path = shipped("models/tiny_conv3d/tiny_conv3d.onnx");
    let image = read_nifti(&image_path, &ReadOptions::default())?;
    println!("\nimage          {} ({})", image_path.display(), describe(&image));
    let (canonical, orientation) = image.to_canonical();
    println!("canonical RAS  {} (reoriented: {})", describe(&canonical), !orientation.is_identity());

    let model = Model::load(&model_path, &flags.runtime_options()?)?;
    let started = Instant::now();
    let probabilities = model.run_volume(&canonical)?;
    println!(
        "model          {} on {} -> {} in {:.1} ms",
        model_path.display(),
        model.device(),
        describe(&probabilities),
        started.elapsed().as_secs_f64() * 1e3
    );

    // Results go back to the input's own voxel grid, so they overlay it in any viewer.
    let probabilities = orientation.undo(&probabilities)?;
    let labels = argmax_labels(&probabilities)?;
    let prob_path = out.join("probabilities.nii.gz");
    let label_path = out.join("labels.nii.gz");
    write_nifti(&probabilities, &prob_path, OutputType::F32)?;
    write_nifti(&labels, &label_path, OutputType::U8)?;
    let foreground = labels.data().iter().filter(|&&v| v > 0.0).count() as f64 / labels.voxel_count() as f64;
    println!("wrote          {} and {}", prob_path.display(), label_path.display());
    println!("foreground     {:.1}% of voxels (label 1)", foreground * 100.0);
    Ok(())
}

/// Per-voxel argmax over channels, as a one-channel label volume on the same grid.
fn argmax_labels(probabilities: &Volume) -> Result<Volume> {
    let n = probabilities.voxel_count();
    let labels = (0..n)
        .map(|i| {
            (0..probabilities.channels())
                .map(|c| probabilities.channel(c)[i])
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |best, (c, p)| if p > best.1 { (c, p) } else { best })
                .0 as f32
        })
        .collect();
    Volume::new(labels, probabilities.dims(), 1, probabilities.affine())
}
