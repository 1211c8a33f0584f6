//! `asfda score`: scores volumes for how informative annotating them would be.

use asfda::cancel::CancelToken;
use asfda::engine::Engine;
use asfda::score::{score_pool, PoolOrder, Score};
use asfda::{Error, Result};
use std::cell::RefCell;

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::args::{EngineFlags, HELP_TEMPLATE};
use crate::files::{check_output, inputs};
use crate::progress::Progress;
use asfda::atomic_file;

/// Score volumes for how informative annotating them would be -> JSON lines
///
/// Scores every volume (knowledge gap, ASD, confidence, embedding) and appends one JSON score per
/// line to SCORES.jsonl as each volume finishes (ids are file names without .nii/.nii.gz), so an
/// interrupted run keeps its work: run it again and the ids already in the file are skipped
/// (delete the file to score them again). A volume that fails is reported and skipped; the exit
/// status is then 1.
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
    /// Read and prepare the next volume while the model runs on the current one (holds one more
    /// volume in memory; on a 2-core machine it was slower than the default one-at-a-time order,
    /// docs/bench-pool.md)
    #[arg(long)]
    pub prefetch: bool,
}

pub fn run(args: &ScoreArgs) -> Result<()> {
    let out = &args.out;
    check_output(out, "out")?;
    let volumes = inputs(&args.images, args.folder.as_deref())?;
    let (mut log, earlier) = ScoreLog::open(out)?;
    let (done, todo): (Vec<_>, Vec<_>) = volumes.iter().partition(|(_, id)| earlier.iter().any(|s| &s.id == id));
    if !done.is_empty() {
        eprintln!(
            "asfda: {} of {} volume(s) already scored in '{}': skipped (delete the file to score them again)",
            done.len(),
            volumes.len(),
            out.display()
        );
    }
    let mut scores: Vec<Score> = Vec::new();
    let mut failures: Vec<(String, String)> = Vec::new();
    if !todo.is_empty() {
        let engine = Engine::new(&args.engine.bundle(), args.engine.options())?;
        let read_options = args.engine.read_options();
        let cancel = CancelToken::new()?;
        let items: Vec<(String, PathBuf)> = todo.iter().map(|(path, id)| (id.clone(), path.clone())).collect();
        let read = |path: &PathBuf| crate::files::read_volume(path, &read_options);
        let order = if args.prefetch { PoolOrder::Overlapped } else { PoolOrder::Sequential };
        let progress = RefCell::new((Progress::new(items.len(), "scoring"), None::<usize>));
        let mut on_progress = |index: usize, f: f64| {
            let (progress, current) = &mut *progress.borrow_mut();
            if *current != Some(index) {
                progress.start(index, &items[index].0);
                *current = Some(index);
            }
            progress.update(f);
            true
        };
        let mut append_error = None;
        let mut each = |index: usize, result: Result<Score>| {
            let (progress, current) = &mut *progress.borrow_mut();
            if *current != Some(index) {
                progress.start(index, &items[index].0); // failed before the model ran
                *current = Some(index);
            }
            match result {
                Ok(score) => {
                    if let Err(e) = log.append(&score) {
                        append_error = Some(e);
                        return false;
                    }
                    progress.finish_item("done");
                    scores.push(score);
                }
                Err(e) => {
                    let path = &items[index].1;
                    progress.finish_item(&format!("FAILED: {e}"));
                    eprintln!("asfda: error: {}: {e}", path.display());
                    failures.push((path.display().to_string(), e.to_string()));
                }
            }
            true
        };
        score_pool(&engine, &items, &read, order, &cancel, &mut on_progress, &mut each);
        if let Some(e) = append_error {
            return Err(e);
        }
    }
    let skipped: Vec<&str> = done.iter().map(|(_, id)| id.as_str()).collect();
    print_summary(args, &scores, &skipped, &failures);
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::invalid_data(format!(
            "{} of {} volume(s) could not be scored (see above); the other {} are in '{}'",
            failures.len(),
            volumes.len(),
            volumes.len() - failures.len(),
            out.display()
        )))
    }
}

/// The table (or `--json` summary) of the volumes scored in this run.
fn print_summary(args: &ScoreArgs, scores: &[Score], skipped: &[&str], failures: &[(String, String)]) {
    let out = &args.out;
    if args.json {
        let summary = serde_json::json!({
            "out": out.display().to_string(),
            "scores": scores.iter().map(|s| serde_json::json!({
                "id": s.id, "gap_kl": s.gap_kl, "gap_anchor": s.gap_anchor, "asd": s.asd,
                "confidence": s.confidence, "foreground_fraction": s.foreground_fraction,
            })).collect::<Vec<_>>(),
            "skipped": skipped,
            "failed": failures.iter().map(|(p, e)| serde_json::json!({"path": p, "error": e})).collect::<Vec<_>>(),
        });
        println!("{summary}");
        return;
    }
    let w = scores.iter().map(|s| s.id.len()).max().unwrap_or(2).max(2);
    println!(
        "{:<w$} {:>10} {:>10} {:>8} {:>10} {:>10}",
        "id", "gap_kl", "gap_anchor", "asd", "confidence", "foreground"
    );
    for s in scores {
        println!(
            "{:<w$} {:>10.4} {:>10.4} {:>8.4} {:>10.4} {:>10.4}",
            s.id, s.gap_kl, s.gap_anchor, s.asd, s.confidence, s.foreground_fraction
        );
    }
    let already = if skipped.is_empty() { String::new() } else { format!(" ({} were there already)", skipped.len()) };
    println!("wrote {} score(s) to {}{already}", scores.len(), out.display());
}

/// A JSON-lines score file that grows by one line as each volume is scored, so a run that is
/// interrupted (or killed) keeps what it finished, and the next run skips it.
pub struct ScoreLog {
    file: std::fs::File,
    path: PathBuf,
}

impl ScoreLog {
    /// Opens `path` for appending (created if missing); returns the scores already in it. A last
    /// line cut short by a killed run is dropped (the file is rewritten without it); any other
    /// line that is not a score is an error naming it, and the file is left alone.
    pub fn open(path: &Path) -> Result<(ScoreLog, Vec<Score>)> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::io(path, "read score file", &e)),
        };
        let lines: Vec<&str> = text.lines().collect();
        let mut scores = Vec::new();
        let mut torn = false;
        for (n, line) in lines.iter().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            match Score::from_json(line) {
                Ok(score) => scores.push(score),
                Err(_) if n + 1 == lines.len() && !text.ends_with('\n') => torn = true,
                Err(e) => {
                    return Err(e.context(format!(
                        "--out '{}' line {} (the file is not one `asfda score` writes; give another --out)",
                        path.display(),
                        n + 1
                    )))
                }
            }
        }
        if torn || (!text.is_empty() && !text.ends_with('\n')) {
            if torn {
                eprintln!("asfda: the last line of '{}' was cut short (an interrupted run): dropped", path.display());
            }
            let whole: String = scores.iter().map(|s| s.to_json() + "\n").collect();
            atomic_file::write(path, whole.as_bytes())?;
        }
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| Error::io(path, "open score file", &e))?;
        Ok((ScoreLog { file, path: path.to_path_buf() }, scores))
    }

    /// Appends `score` as one line and syncs it, so it survives the process being killed.
    pub fn append(&mut self, score: &Score) -> Result<()> {
        let line = score.to_json() + "\n";
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(|e| Error::io(&self.path, &format!("append the score of '{}' to", score.id), &e))
    }
}
