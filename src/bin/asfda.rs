//! The `asfda` command line, built on the public Rust API like any other user.
//!
//!   asfda info [--json] [--ort PATH]
//!   asfda run-model --model M.onnx --input IN.nii[.gz] --output OUT.nii[.gz] [--device D] [--threads N] [--ort PATH]
//!   asfda demo [--out DIR] [--device D] [--threads N] [--ort PATH]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use asfda::model::Model;
use asfda::runtime::{Device, Runtime, RuntimeOptions};
use asfda::volume::{read_nifti, write_nifti, OutputType, ReadOptions, Volume};
use asfda::{Error, Result};

const USAGE: &str = "usage:
  asfda info [--json] [--ort PATH]
      ONNX Runtime version, library path and execution providers.
  asfda run-model --model M.onnx --input IN.nii[.gz] --output OUT.nii[.gz] [--device cpu|auto|cuda[:N]] [--threads N] [--ort PATH]
      Runs a one-input ONNX model on a whole volume; writes its first output (float) on the input's grid.
  asfda demo [--out DIR] [--device ...] [--threads N] [--ort PATH]
      Runs the shipped tiny model on the shipped real MR volume and writes the results to DIR (default out/demo).";

/// Files shipped in the source tree that the demo uses by default.
fn shipped(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

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
    let flags = Flags::parse(rest)?;
    match command.as_str() {
        "info" => info(&flags),
        "run-model" => run_model(&flags),
        "demo" => demo(&flags),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(Error::invalid_argument(format!("unknown command '{other}'\n{USAGE}"))),
    }
}

/// `--name value` pairs and bare `--switch`es.
struct Flags(HashMap<String, Option<String>>);

impl Flags {
    const SWITCHES: [&'static str; 1] = ["json"];

    fn parse(args: &[String]) -> Result<Flags> {
        let mut map = HashMap::new();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let name = arg
                .strip_prefix("--")
                .ok_or_else(|| Error::invalid_argument(format!("unexpected argument '{arg}'\n{USAGE}")))?;
            let value = if Self::SWITCHES.contains(&name) {
                None
            } else {
                Some(it.next().ok_or_else(|| Error::invalid_argument(format!("--{name} needs a value")))?.clone())
            };
            map.insert(name.to_string(), value);
        }
        Ok(Flags(map))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.as_deref())
    }

    fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        self.get(name)
            .map(PathBuf::from)
            .ok_or_else(|| Error::invalid_argument(format!("--{name} is required\n{USAGE}")))
    }

    fn runtime_options(&self) -> Result<RuntimeOptions> {
        let threads = match self.get("threads") {
            Some(t) => {
                t.parse().map_err(|_| Error::invalid_argument(format!("--threads '{t}' is not a whole number")))?
            }
            None => 0,
        };
        Ok(RuntimeOptions {
            library_path: self.get("ort").map(PathBuf::from),
            device: self.get("device").map(str::parse::<Device>).transpose()?.unwrap_or_default(),
            threads,
        })
    }
}

fn info(flags: &Flags) -> Result<()> {
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

fn run_model(flags: &Flags) -> Result<()> {
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

fn demo(flags: &Flags) -> Result<()> {
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
