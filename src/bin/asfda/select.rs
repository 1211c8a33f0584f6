//! `asfda select`: picks the volumes to annotate from merged score files.

use std::collections::HashMap;
use std::path::Path;

use asfda::score::Score;
use asfda::select::{select, GapKind, Method, SelectOptions, Selection};
use asfda::{Error, Result};

use crate::args::{Args, Spec};
use asfda::atomic_file;

pub const SPEC: Spec = Spec {
    name: "select",
    help: "usage: asfda select --scores A.jsonl[,B.jsonl...] --budget B [options]

Merges score files (an id may appear only once over all of them), picks B volumes to annotate and
prints them in pick order with the score components behind each pick, and the reliable volumes for
pseudo-labels.

  --scores FILES        comma-separated JSON-lines files written by `asfda score` (required)
  --budget B            volumes to pick, 1..pool size (required)
  --method M            asfda (default) | random | foreground_random | entropy | dkd | coreset
  --seed S              seed of the random baselines (default 0)
  --labeled IDS         comma-separated ids already annotated (excluded from the pool; they count
                        for diversity)
  --gap G               kl (default) | anchor: which knowledge gap feeds DKD
  --w-dkd W, --w-asd W  weights of the DKD and ASD ranks (default 1 and 1)
  --out FILE            write the selection JSON to FILE
  --json                print the selection JSON on stdout instead of the table",
    values: &["scores", "budget", "method", "seed", "labeled", "gap", "w-dkd", "w-asd", "out"],
    switches: &["json"],
    max_positional: 0,
};

/// Reads JSON-lines score files; a duplicate id (within or across files) is an error naming both
/// places.
pub fn read_scores(files: &[String]) -> Result<Vec<Score>> {
    let mut scores = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for file in files {
        let path = Path::new(file);
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "read score file", &e))?;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let place = format!("{file}:{}", n + 1);
            let score = Score::from_json(line).map_err(|e| e.context(&place))?;
            if let Some(first) = seen.insert(score.id.clone(), place.clone()) {
                return Err(Error::invalid_argument(format!(
                    "duplicate volume id '{}' in {place} (first in {first}); each volume must be scored once",
                    score.id
                )));
            }
            scores.push(score);
        }
    }
    if scores.is_empty() {
        return Err(Error::invalid_argument(format!("no scores in {}", files.join(", "))));
    }
    Ok(scores)
}

pub fn run(args: &Args) -> Result<()> {
    args.required("scores")?;
    let scores = read_scores(&args.list("scores"))?;
    let defaults = SelectOptions::default();
    let options = SelectOptions {
        method: args.get("method").map(str::parse::<Method>).transpose()?.unwrap_or(defaults.method),
        budget: args.required("budget")?.parse().map_err(|_| {
            Error::invalid_argument(format!("--budget '{}' is not a whole number", args.get("budget").unwrap_or("")))
        })?,
        seed: args.parsed("seed", "a whole number")?.unwrap_or(defaults.seed),
        gap: args.get("gap").map(str::parse::<GapKind>).transpose()?.unwrap_or(defaults.gap),
        w_dkd: args.parsed("w-dkd", "a number")?.unwrap_or(defaults.w_dkd),
        w_asd: args.parsed("w-asd", "a number")?.unwrap_or(defaults.w_asd),
        ..defaults
    };
    let labeled = args.list("labeled");
    let labeled: Vec<&str> = labeled.iter().map(String::as_str).collect();
    let selection = select(&scores, &labeled, &options)?;
    if let Some(out) = args.get("out") {
        atomic_file::write(Path::new(out), (selection.to_json() + "\n").as_bytes())?;
    }
    if args.has("json") {
        println!("{}", selection.to_json());
    } else {
        print_table(&selection, scores.len() - labeled.len());
        if let Some(out) = args.get("out") {
            println!("wrote the selection to {out}");
        }
    }
    Ok(())
}

pub fn print_table(selection: &Selection, pool: usize) {
    println!(
        "{} of {pool} pool volumes picked by {} (gap {}, seed {})",
        selection.picks.len(),
        selection.method,
        selection.options.gap.name(),
        selection.options.seed
    );
    let w = selection.picks.iter().map(|p| p.id.len()).max().unwrap_or(2).max(2);
    println!(
        "{:>5}  {:<w$} {:>8} {:>9} {:>9} {:>9} {:>8} {:>9} {:>8}",
        "order", "id", "combined", "gap", "gap rank", "diversity", "DKD rank", "ASD", "ASD rank"
    );
    for p in &selection.picks {
        println!(
            "{:>5}  {:<w$} {:>8.3} {:>9.4} {:>9.3} {:>9.4} {:>8.3} {:>9.4} {:>8.3}",
            p.order + 1,
            p.id,
            p.combined,
            p.gap,
            p.gap_rank,
            p.diversity,
            p.dkd_rank,
            p.asd,
            p.asd_rank
        );
    }
    let reliable = if selection.reliable.is_empty() { "none".to_string() } else { selection.reliable.join(", ") };
    println!("reliable for pseudo-labels: {reliable}");
}
