//! The `asfda` command line, built on the public Rust API like any other user.
//!
//! Each command is a module under `src/bin/asfda/` with its own flag spec and help; `asfda
//! <command> --help` prints it. Errors are printed as `asfda: error: ...` with exit status 1.

mod args;
mod demo;
mod files;
mod finetune;
mod progress;
mod report;
mod score;
mod segment;
mod select;

use std::process::ExitCode;

use asfda::model::Model;
use asfda::runtime::Runtime;
use asfda::volume::{read_nifti, write_nifti, OutputType, ReadOptions};
use asfda::{Error, Result};

use args::{Args, Spec};

const USAGE: &str = "usage: asfda <command> [options]   (asfda <command> --help for its options)

commands:
  info        ONNX Runtime version, library path and execution providers
  score       score volumes for how informative annotating them would be -> JSON lines
  select      pick the volumes to annotate from score files, under a budget
  segment     segment a volume: labels (and entropy/probabilities) on the input's grid
  finetune    fine-tune the model on annotated (and pseudo-labelled) volumes -> checkpoint, bundle
  report      the visual report (PNG + Markdown) of a selection: entropy overlays, Dice chart
  run-model   run a one-input ONNX model on a whole volume
  demo        the whole loop on the demo model and synthetic data: score, select, fine-tune,
              Dice before/after, report (out/demo)";

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
        "finetune" => (&finetune::SPEC, finetune::run),
        "demo" => (&demo::SPEC, demo::run),
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
