//! `asfda score`: scores volumes for how informative annotating them would be.

use asfda::cancel::CancelToken;
use asfda::engine::Engine;
use asfda::score::Score;
use asfda::volume::{read_nifti, ReadOptions};
use asfda::{Error, Result};

use std::path::PathBuf;

use crate::args::{EngineFlags, HELP_TEMPLATE};
use crate::files::{check_output, inputs};
use crate::progress::Progress;
use asfda::atomic_file;

/// Score volumes for how informative annotating them would be -> JSON lines
///
/// Scores every volume (knowledge gap, ASD, confidence, embedding) and writes one JSON score per
/// line to SCORES.jsonl (written when all are done; ids are file names without .nii/.nii.gz).
/// A volume that fails is reported and skipped; the exit status is then 1.
#[derive(clap::Args, Debug)]
#[command(
    override_usage = "asfda score [--bundle DIR] --out SCORES.jsonl (IMAGE... | --folder DIR) [options]",
    help_template = HELP_TEMPLATE
)]
pub struct ScoreArgs {
    /// The volumes to score (or --folder)
    #[arg(value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// The JSON-lines output
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Score every .nii/.nii.gz in DIR instead of the named images
    #[arg(long, value_name = "DIR")]
    pub folder: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineFlags,
    /// Print the summary as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &ScoreArgs) -> Result<()> {
    let out = &args.out;
    check_output(out, "out")?;
    let volumes = inputs(&args.images, args.folder.as_deref())?;
    let engine = Engine::new(&args.engine.bundle(), args.engine.options())?;
    let cancel = CancelToken::new()?;
    let mut progress = Progress::new(volumes.len(), "scoring");
    let mut scores: Vec<Score> = Vec::new();
    let mut failures: Vec<(String, String)> = Vec::new();
    for (index, (path, id)) in volumes.iter().enumerate() {
        progress.start(index, id);
        let result = read_nifti(path, &ReadOptions::default()).and_then(|volume| {
            engine.score(id, &volume, &cancel, &mut |f| {
                progress.update(f);
                true
            })
        });
        match result {
            Ok(score) => {
                progress.finish_item("done");
                scores.push(score);
            }
            Err(e) => {
                progress.finish_item(&format!("FAILED: {e}"));
                eprintln!("asfda: error: {}: {e}", path.display());
                failures.push((path.display().to_string(), e.to_string()));
            }
        }
    }
    let lines: String = scores.iter().map(|s| s.to_json() + "\n").collect();
    atomic_file::write(out, lines.as_bytes())?;

    if args.json {
        let summary = serde_json::json!({
            "out": out.display().to_string(),
            "scores": scores.iter().map(|s| serde_json::json!({
                "id": s.id, "gap_kl": s.gap_kl, "gap_anchor": s.gap_anchor, "asd": s.asd,
                "confidence": s.confidence, "foreground_fraction": s.foreground_fraction,
            })).collect::<Vec<_>>(),
            "failed": failures.iter().map(|(p, e)| serde_json::json!({"path": p, "error": e})).collect::<Vec<_>>(),
        });
        println!("{summary}");
    } else {
        let w = scores.iter().map(|s| s.id.len()).max().unwrap_or(2).max(2);
        println!(
            "{:<w$} {:>10} {:>10} {:>8} {:>10} {:>10}",
            "id", "gap_kl", "gap_anchor", "asd", "confidence", "foreground"
        );
        for s in &scores {
            println!(
                "{:<w$} {:>10.4} {:>10.4} {:>8.4} {:>10.4} {:>10.4}",
                s.id, s.gap_kl, s.gap_anchor, s.asd, s.confidence, s.foreground_fraction
            );
        }
        println!("wrote {} score(s) to {}", scores.len(), out.display());
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::invalid_data(format!(
            "{} of {} volume(s) could not be scored (see above); the other {} are in '{}'",
            failures.len(),
            volumes.len(),
            scores.len(),
            out.display()
        )))
    }
}
