//! `asfda score`: scores volumes for how informative annotating them would be.

use asfda::cancel::CancelToken;
use asfda::engine::Engine;
use asfda::score::Score;
use asfda::volume::{read_nifti, ReadOptions};
use asfda::{Error, Result};

use crate::args::{Args, Spec};
use crate::files::{check_output, inputs};
use crate::progress::Progress;
use asfda::atomic_file;

pub const SPEC: Spec = Spec {
    name: "score",
    help: "usage: asfda score [--bundle DIR] --out SCORES.jsonl (IMAGE... | --folder DIR) [options]

Scores every volume (knowledge gap, ASD, confidence, embedding) and writes one JSON score per
line to SCORES.jsonl (written when all are done; ids are file names without .nii/.nii.gz).
A volume that fails is reported and skipped; the exit status is then 1.

  --bundle DIR          model bundle (default: the shipped demo bundle models/demo_brain_unet)
  --out FILE            the JSON-lines output (required)
  --folder DIR          score every .nii/.nii.gz in DIR instead of the named images
  --device D            cpu (default) | auto | cuda | cuda:N
  --threads N           ONNX Runtime intra-op threads (0 = its default)
  --overlap F           sliding-window tile overlap in [0, 1) (default 0.5)
  --tiles-per-batch N   tiles per model run (default 2)
  --mirror              mirroring test-time augmentation
  --ort PATH            ONNX Runtime library to load
  --json                print the summary as JSON on stdout",
    values: &["bundle", "out", "folder", "device", "threads", "overlap", "tiles-per-batch", "ort"],
    switches: &["mirror", "json"],
    max_positional: usize::MAX,
};

pub fn run(args: &Args) -> Result<()> {
    let out = args.path("out")?;
    check_output(&out, "out")?;
    let volumes = inputs(&args.positional, args.get("folder"))?;
    let engine = Engine::new(&args.bundle(), args.engine_options()?)?;
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
    atomic_file::write(&out, lines.as_bytes())?;

    if args.has("json") {
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
