//! The `asfda` command line, built on the public Rust API like any other user.
//!
//! Each command is a module under `src/bin/asfda/` with its own flags (a `clap` derive struct)
//! and help; `asfda <command> --help` prints it. Errors are printed as `asfda: error: ...` with
//! exit status 1.

mod args;
mod demo;
mod files;
mod finetune;
mod progress;
mod report;
mod score;
mod segment;
mod select;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::error::ErrorKind as ClapKind;
use clap::{CommandFactory, Parser, Subcommand};

use asfda::model::Model;
use asfda::runtime::Runtime;
use asfda::volume::{write_nifti, OutputType, ReadOptions};
use asfda::{Error, Result};

use args::{RuntimeFlags, HELP_TEMPLATE};

/// Active source-free domain adaptation of 3D medical segmentation models: score volumes, select
/// the ones to annotate, fine-tune, segment.
#[derive(Parser, Debug)]
#[command(
    name = "asfda",
    version,
    override_usage = "asfda <command> [options]   (asfda <command> --help for its options)",
    help_template = HELP_TEMPLATE,
    subcommand_help_heading = "commands",
    max_term_width = 100
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    Info(Info),
    Score(score::ScoreArgs),
    Select(select::SelectArgs),
    Segment(segment::SegmentArgs),
    Finetune(finetune::FinetuneArgs),
    Report(report::ReportArgs),
    RunModel(RunModel),
    Demo(demo::DemoArgs),
}

/// ONNX Runtime version, library path and execution providers
///
/// Prints the asfda version and the ONNX Runtime in use (version, library path and how it was
/// found, execution providers).
#[derive(clap::Args, Debug)]
#[command(override_usage = "asfda info [--json] [--ort PATH]", help_template = HELP_TEMPLATE)]
struct Info {
    /// Print it as JSON
    #[arg(long)]
    json: bool,
    /// ONNX Runtime library to load
    #[arg(long, value_name = "PATH")]
    ort: Option<PathBuf>,
}

/// Run a one-input ONNX model on a whole volume
///
/// Runs a one-input ONNX model on a whole volume; writes its first output (float) on the input's
/// grid.
#[derive(clap::Args, Debug)]
#[command(
    override_usage = "asfda run-model --model M.onnx --input IN.nii[.gz] --output OUT.nii[.gz] [--device D] [--threads N] [--ort PATH]",
    help_template = HELP_TEMPLATE
)]
struct RunModel {
    /// The ONNX model
    #[arg(long, value_name = "M.onnx")]
    model: PathBuf,
    /// The input volume
    #[arg(long, value_name = "IN.nii[.gz]")]
    input: PathBuf,
    /// Where to write the model's first output
    #[arg(long, value_name = "OUT.nii[.gz]")]
    output: PathBuf,
    #[command(flatten)]
    runtime: RuntimeFlags,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            if matches!(
                err.kind(),
                ClapKind::DisplayHelp | ClapKind::DisplayVersion | ClapKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = err.print();
                return ExitCode::SUCCESS;
            }
            return fail(&parse_error(&err));
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

fn fail(err: &Error) -> ExitCode {
    eprintln!("asfda: error: {err}");
    ExitCode::FAILURE
}

/// A parse error in the CLI's words, followed by the usage of the command it concerns.
fn parse_error(err: &clap::Error) -> Error {
    let mut cli = Cli::command();
    cli.build();
    let name = std::env::args().nth(1).filter(|n| cli.find_subcommand(n).is_some());
    let help = match name.as_deref().and_then(|n| cli.find_subcommand_mut(n)) {
        Some(command) => command.render_long_help(),
        None => cli.render_help(),
    };
    args::usage_error(err, name.as_deref(), help.to_string().trim_end())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        None => {
            println!("{}", Cli::command().render_help().to_string().trim_end());
            Ok(())
        }
        Some(Command::Info(a)) => info(&a),
        Some(Command::Score(a)) => score::run(&a),
        Some(Command::Select(a)) => select::run(&a),
        Some(Command::Segment(a)) => segment::run(&a),
        Some(Command::Finetune(a)) => finetune::run(&a),
        Some(Command::Report(a)) => report::run(&a),
        Some(Command::RunModel(a)) => run_model(&a),
        Some(Command::Demo(a)) => demo::run(&a),
    }
}

fn info(flags: &Info) -> Result<()> {
    let runtime = Runtime::load(flags.ort.as_deref())?;
    let info = runtime.info();
    if flags.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&runtime.info_json()?).map_err(|e| Error::internal(e.to_string()))?
        );
    } else {
        println!("asfda          {}", info.asfda_version);
        println!("ONNX Runtime   {}", info.ort_version);
        println!("library        {} (found via {:?})", info.library_path.display(), info.library_source);
        println!("providers      {}", info.providers.join(", "));
        println!(
            "CUDA provider  {}",
            if info.cuda_provider_library { "present" } else { "absent (run `make ort-gpu`)" }
        );
        let openvino = runtime.openvino_status();
        match (&openvino.plugin, &openvino.why_not) {
            (Some(p), _) => println!(
                "OpenVINO       {} (found via {:?})",
                p.display(),
                openvino.source.unwrap_or(info.library_source)
            ),
            (None, Some(why)) => println!("OpenVINO       unavailable: {why}"),
            (None, None) => println!("OpenVINO       unavailable"),
        }
    }
    Ok(())
}

fn run_model(flags: &RunModel) -> Result<()> {
    files::check_output(&flags.output, "output")?;
    files::check_nifti_name(&flags.output, "output")?;
    let model = Model::load(&flags.model, &flags.runtime.options())?;
    let input = files::read_volume(&flags.input, &ReadOptions::default())?;
    let output = model.run_volume(&input)?;
    write_nifti(&output, &flags.output, OutputType::F32)
}
