//! `asfda select`: picks the volumes to annotate from merged score files.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;

use asfda::score::Score;
use asfda::select::{select, GapKind, Method, SelectOptions, Selection};
use asfda::{Error, Result};

use crate::args::{library, list, number, path_list, whole, HELP_TEMPLATE};
use asfda::atomic_file;

/// Pick the volumes to annotate from score files, under a budget
///
/// Merges score files (an id may appear only once over all of them), picks B volumes to annotate
/// and prints them in pick order with the score components behind each pick, and the reliable
/// volumes for pseudo-labels.
#[derive(clap::Args, Debug)]
#[command(
    override_usage = "asfda select --scores A.jsonl[,B.jsonl...] --budget B [options]",
    help_template = HELP_TEMPLATE
)]
pub struct SelectArgs {
    /// Comma-separated JSON-lines files written by `asfda score`
    #[arg(long, value_name = "FILES")]
    pub scores: OsString,
    /// Volumes to pick, 1..pool size
    #[arg(long, value_name = "B", value_parser = whole::<usize>)]
    pub budget: usize,
    /// asfda (default) | random | foreground_random | entropy | dkd | coreset
    #[arg(long, value_name = "M", value_parser = library::<Method>)]
    pub method: Option<Method>,
    /// Seed of the random baselines (default 0)
    #[arg(long, value_name = "S", value_parser = whole::<u64>)]
    pub seed: Option<u64>,
    /// Comma-separated ids already annotated (excluded from the pool; they count for diversity)
    #[arg(long, value_name = "IDS")]
    pub labeled: Option<String>,
    /// kl (default) | anchor: which knowledge gap feeds DKD
    #[arg(long, value_name = "G", value_parser = library::<GapKind>)]
    pub gap: Option<GapKind>,
    /// Weight of the DKD rank (default 1)
    #[arg(long = "w-dkd", value_name = "W", value_parser = number)]
    pub w_dkd: Option<f64>,
    /// Weight of the ASD rank (default 1)
    #[arg(long = "w-asd", value_name = "W", value_parser = number)]
    pub w_asd: Option<f64>,
    /// Write the selection JSON to FILE
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print the selection JSON on stdout instead of the table
    #[arg(long)]
    pub json: bool,
}

/// Reads JSON-lines score files; a duplicate id (within or across files) is an error naming both
/// places.
pub fn read_scores(files: &[PathBuf]) -> Result<Vec<Score>> {
    let mut scores = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for path in files {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "read score file", &e))?;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let place = format!("{}:{}", path.display(), n + 1);
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
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        return Err(Error::invalid_argument(format!("no scores in {}", names.join(", "))));
    }
    Ok(scores)
}

pub fn run(args: &SelectArgs) -> Result<()> {
    let scores = read_scores(&path_list(Some(&args.scores)))?;
    let defaults = SelectOptions::default();
    let options = SelectOptions {
        method: args.method.unwrap_or(defaults.method),
        budget: args.budget,
        seed: args.seed.unwrap_or(defaults.seed),
        gap: args.gap.unwrap_or(defaults.gap),
        w_dkd: args.w_dkd.unwrap_or(defaults.w_dkd),
        w_asd: args.w_asd.unwrap_or(defaults.w_asd),
        ..defaults
    };
    let labeled = list(args.labeled.as_deref());
    let labeled: Vec<&str> = labeled.iter().map(String::as_str).collect();
    let selection = select(&scores, &labeled, &options)?;
    if let Some(out) = &args.out {
        atomic_file::write(out, (selection.to_json() + "\n").as_bytes())?;
    }
    if args.json {
        println!("{}", selection.to_json());
    } else {
        print_table(&selection, scores.len() - labeled.len());
        if let Some(out) = &args.out {
            println!("wrote the selection to {}", out.display());
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
    // Ranks are recomputed among the volumes not yet picked after each pick (diversity changes),
    // so a later pick can have a higher combined value than an earlier one.
    println!(
        "combined = w_dkd x DKD rank + w_asd x ASD rank, the value that decided each pick among the volumes \
         still unpicked then (ranks are recomputed after every pick, so it need not fall with the order)"
    );
    let reliable = if selection.reliable.is_empty() { "none".to_string() } else { selection.reliable.join(", ") };
    println!("reliable for pseudo-labels: {reliable}");
}
