//! Active-learning benchmark (issue 5, item 4): at equal annotation budgets on synthetic target
//! sites, ASFDA selection + SSFT against random, foreground-aware random, entropy (ASD only),
//! DKD only and core-set selection with the same fine-tuning, and SSFT against fine-tuning with
//! all pseudo-labels and with none. Dice is measured on each site's held-out test volumes.
//!
//!     cargo run --release --example al_benchmark -- [--out DIR] [--sites pd,thick]
//!         [--budgets 2,4,8] [--seeds 0,1,2] [--methods asfda,random,...] [--steps N]
//!         [--batch B] [--patch P] [--lr LR] [--threads T] [--ablation-budget B] [--overlap F]
//!         [--test-volumes N] [--refresh N] [--selection-only true] [--min-dice D]
//!
//! Results are appended to DIR/runs.jsonl one run per line, and runs already there are skipped,
//! so an interrupted benchmark resumes where it stopped. Pool scores are cached in
//! DIR/scores-<site>.jsonl. `scripts/al_report.py` turns runs.jsonl into the table and the plot.
//! Data: synthetic derivatives of real anatomy (ICBM152); the site shifts are simulated.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use asfda::cancel::CancelToken;
use asfda::engine::{Engine, EngineOptions};
use asfda::finetune::{FineTuneOptions, FineTuner, PseudoLabeled};
use asfda::runtime::RuntimeOptions;
use asfda::score::Score;
use asfda::select::{select, Method, SelectOptions};
use asfda::volume::{read_nifti, ReadOptions, Volume};
use once_cell::sync::OnceCell;
use serde::{Deserialize, Serialize};

/// Which unlabeled volumes get pseudo-labels during fine-tuning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Pseudo {
    /// SSFT: the reliable set chosen with the selection.
    Reliable,
    /// Every unqueried pool volume.
    All,
    /// Labeled volumes only.
    None,
    /// SSFT's reliable set, relabelled with the fine-tuned weights every `--refresh` steps
    /// (and the pseudo weight's ramp stretched to the first refresh), instead of keeping the
    /// unadapted model's pseudo-labels. Only run when `--refresh` is given.
    ReliableRefresh,
}

#[derive(Serialize, Deserialize)]
struct Run {
    site: String,
    method: String,
    budget: usize,
    seed: u64,
    pseudo: Pseudo,
    /// `FineTuneOptions::pseudo_label_min_dice` (records from before the check: 0, i.e. off).
    #[serde(default)]
    min_dice: f64,
    steps: u64,
    /// Patches per step. Runs recorded before this field all used the default, 2.
    #[serde(default = "default_batch")]
    batch: usize,
    patch: usize,
    lr: f64,
    overlap: f64,
    test_volumes: usize,
    picks: Vec<String>,
    pseudo_volumes: usize,
    /// The last pseudo-label check: the labelling model's mean foreground Dice on the picks, and
    /// whether that trusted the pseudo-labels (None: no check made).
    #[serde(default)]
    labeler_dice: Option<f64>,
    #[serde(default)]
    pseudo_trusted: Option<bool>,
    /// Pseudo-labelled patches over all steps.
    #[serde(default)]
    pseudo_patches: Option<usize>,
    dice_per_class: Vec<f64>,
    dice_mean: f64,
    /// None for the unadapted baseline (no step taken).
    final_loss: Option<f32>,
    seconds: f64,
}

impl Run {
    fn key(&self) -> String {
        key(&self.site, &self.method, self.budget, self.seed, self.pseudo, self.min_dice)
    }
}

/// A run's identity. The pseudo-label check changes nothing without pseudo-labels, so those
/// runs keep one key whatever `min_dice` is.
fn key(site: &str, method: &str, budget: usize, seed: u64, pseudo: Pseudo, min_dice: f64) -> String {
    let base = format!("{site}/{method}/{budget}/{seed}/{pseudo:?}");
    if pseudo == Pseudo::None || min_dice <= 0.0 {
        base
    } else {
        format!("{base}/check{min_dice}")
    }
}

struct Args {
    out: PathBuf,
    data: PathBuf,
    sites: Vec<String>,
    budgets: Vec<usize>,
    seeds: Vec<u64>,
    methods: Vec<Method>,
    steps: u64,
    /// Patches per step (`FineTuneOptions::batch_size`).
    batch: usize,
    patch: usize,
    lr: Option<f64>,
    threads: usize,
    ablation_budget: usize,
    overlap: f64,
    test_volumes: usize,
    /// Pseudo-label refresh interval of the `ReliableRefresh` ablation (0: not run).
    refresh: u64,
    /// Also run every method without pseudo-labels at the ablation budget, which compares the
    /// selections alone (ASFDA's own no-pseudo-label run is part of the SSFT ablation).
    selection_only: bool,
    /// `FineTuneOptions::pseudo_label_min_dice` of every fine-tuning run.
    min_dice: f64,
}

fn list<T: std::str::FromStr>(text: &str) -> Vec<T>
where
    T::Err: std::fmt::Debug,
{
    text.split(',').map(|s| s.trim().parse().expect("bad list item")).collect()
}

fn parse_args() -> Args {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut a = Args {
        out: root.join("out/al-benchmark"),
        data: root.join(".cache/data/synthetic-v1"),
        sites: vec!["pd".into(), "thick".into()],
        budgets: vec![2, 4, 8],
        seeds: vec![0, 1, 2],
        methods: vec![Method::Asfda, Method::Random, Method::ForegroundRandom, Method::Entropy, Method::Coreset],
        steps: 40,
        batch: FineTuneOptions::default().batch_size,
        patch: 48,
        lr: None,
        threads: 2,
        ablation_budget: 4,
        overlap: 0.25,
        test_volumes: 4,
        refresh: 0,
        selection_only: false,
        min_dice: FineTuneOptions::default().pseudo_label_min_dice,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).map(String::as_str).unwrap_or_else(|| panic!("{} needs a value", pair[0]));
        match pair[0].as_str() {
            "--out" => a.out = value.into(),
            "--data" => a.data = value.into(),
            "--sites" => a.sites = list(value),
            "--budgets" => a.budgets = list(value),
            "--seeds" => a.seeds = list(value),
            "--methods" => a.methods = list(value),
            "--steps" => a.steps = value.parse().unwrap(),
            "--batch" => a.batch = value.parse().unwrap(),
            "--patch" => a.patch = value.parse().unwrap(),
            "--lr" => a.lr = Some(value.parse().unwrap()),
            "--threads" => a.threads = value.parse().unwrap(),
            "--ablation-budget" => a.ablation_budget = value.parse().unwrap(),
            "--overlap" => a.overlap = value.parse().unwrap(),
            "--test-volumes" => a.test_volumes = value.parse().unwrap(),
            "--refresh" => a.refresh = value.parse().unwrap(),
            "--selection-only" => a.selection_only = value.parse().unwrap(),
            "--min-dice" => a.min_dice = value.parse().unwrap(),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// Sorted `<id>_image.nii.gz` files of a folder, as (id, path).
fn images(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e} (run `make data`)", dir.display()))
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            Some((name.strip_suffix("_image.nii.gz")?.to_string(), p))
        })
        .collect();
    found.sort();
    found
}

fn read(path: &Path) -> Volume {
    read_nifti(path, &ReadOptions::default()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

struct Site {
    name: String,
    pool: Vec<(String, Volume)>,
    pool_labels: Vec<Volume>,
    test: Vec<(Volume, Volume)>,
    scores: Vec<Score>,
    /// Every pool volume pseudo-labelled once by the unadapted model (the same for every run),
    /// on first use: a resumed or pseudo-label-free benchmark never pays for it.
    pseudo: OnceCell<HashMap<String, PseudoLabeled>>,
}

impl Site {
    fn pseudo_labels(&self, engine: &Engine, args: &Args) -> &HashMap<String, PseudoLabeled> {
        self.pseudo.get_or_init(|| {
            let t = Instant::now();
            let labeler = FineTuner::new(engine, fine_tune_options(args, 0)).unwrap();
            let pseudo =
                self.pool.iter().map(|(id, v)| (id.clone(), labeler.pseudo_label_volume(id, v).unwrap())).collect();
            eprintln!(
                "{}: pseudo-labelled {} pool volumes in {:.0} s",
                self.name,
                self.pool.len(),
                t.elapsed().as_secs_f64()
            );
            pseudo
        })
    }
}

fn load_site(engine: &Engine, args: &Args, name: &str) -> Site {
    let dir = args.data.join(name);
    let pool: Vec<(String, Volume)> = images(&dir.join("pool")).into_iter().map(|(id, p)| (id, read(&p))).collect();
    let pool_labels =
        pool.iter().map(|(id, _)| read(&dir.join("pool_labels").join(format!("{id}_label.nii.gz")))).collect();
    let test = images(&dir.join("test"))
        .into_iter()
        .take(args.test_volumes)
        .map(|(id, p)| (read(&p), read(&dir.join("test").join(format!("{id}_label.nii.gz")))))
        .collect();
    let cache = args.out.join(format!("scores-{name}.jsonl"));
    let scores: Vec<Score> = match std::fs::read_to_string(&cache) {
        Ok(text) => text.lines().map(|l| Score::from_json(l).unwrap()).collect(),
        Err(_) => {
            let t = Instant::now();
            let scores: Vec<Score> = pool
                .iter()
                .map(|(id, v)| engine.score(id, v, &CancelToken::new().unwrap(), &mut |_| true).unwrap())
                .collect();
            let text: String = scores.iter().map(|s| s.to_json() + "\n").collect();
            std::fs::write(&cache, text).unwrap();
            eprintln!("{name}: scored {} pool volumes in {:.0} s", scores.len(), t.elapsed().as_secs_f64());
            scores
        }
    };
    Site { name: name.into(), pool, pool_labels, test, scores, pseudo: OnceCell::new() }
}

fn fine_tune_options(args: &Args, seed: u64) -> FineTuneOptions {
    FineTuneOptions {
        seed,
        total_steps: args.steps,
        batch_size: args.batch,
        patch_size: Some([args.patch; 3]),
        lr: args.lr,
        pseudo_label_min_dice: args.min_dice,
        ..Default::default()
    }
}

fn default_batch() -> usize {
    2
}

fn dice_mean(per_class: &[f64]) -> f64 {
    // Foreground classes only (class 0 is background).
    per_class[1..].iter().sum::<f64>() / (per_class.len() - 1) as f64
}

/// The unadapted model's Dice on the site's test volumes.
fn baseline(engine: &Engine, args: &Args, site: &Site) -> Run {
    let t = Instant::now();
    let tuner = FineTuner::new(engine, FineTuneOptions::default()).unwrap();
    let cases: Vec<(&Volume, &Volume)> = site.test.iter().map(|(i, l)| (i, l)).collect();
    let dice = tuner.evaluate(&cases).unwrap();
    Run {
        site: site.name.clone(),
        method: "none".into(),
        budget: 0,
        seed: 0,
        pseudo: Pseudo::None,
        min_dice: 0.0,
        steps: 0,
        batch: 0,
        patch: args.patch,
        lr: 0.0,
        overlap: args.overlap,
        test_volumes: site.test.len(),
        picks: vec![],
        pseudo_volumes: 0,
        labeler_dice: None,
        pseudo_trusted: None,
        pseudo_patches: None,
        dice_mean: dice_mean(&dice),
        dice_per_class: dice,
        final_loss: None,
        seconds: t.elapsed().as_secs_f64(),
    }
}

fn run_one(engine: &Engine, args: &Args, site: &Site, method: Method, budget: usize, seed: u64, pseudo: Pseudo) -> Run {
    let t = Instant::now();
    let options = SelectOptions { method, budget, seed, ..Default::default() };
    let selection = select(&site.scores, &[], &options).unwrap();
    let picked: HashSet<&str> = selection.picks.iter().map(|p| p.id.as_str()).collect();

    let mut options = fine_tune_options(args, seed);
    if pseudo == Pseudo::ReliableRefresh {
        options.pseudo_label_refresh_every = args.refresh;
        options.ramp_fraction = args.refresh as f64 / args.steps as f64;
    }
    let mut tuner = FineTuner::new(engine, options).unwrap();
    for pick in &selection.picks {
        tuner.add_labeled(&pick.id, &site.pool[pick.index].1, &site.pool_labels[pick.index]).unwrap();
    }
    let unlabeled: Vec<usize> = match pseudo {
        Pseudo::None => vec![],
        Pseudo::All => (0..site.pool.len()).filter(|&i| !picked.contains(site.pool[i].0.as_str())).collect(),
        Pseudo::Reliable | Pseudo::ReliableRefresh => {
            selection.reliable.iter().map(|id| site.pool.iter().position(|(pid, _)| pid == id).unwrap()).collect()
        }
    };
    for &i in &unlabeled {
        tuner.add_pseudo_labeled(&site.pseudo_labels(engine, args)[&site.pool[i].0]).unwrap();
    }
    let (mut final_loss, mut pseudo_patches) = (f32::NAN, 0);
    for _ in 0..args.steps {
        let report = tuner.step().unwrap();
        final_loss = report.loss;
        pseudo_patches += report.pseudo_in_batch;
    }
    let check = tuner.pseudo_label_check();
    let cases: Vec<(&Volume, &Volume)> = site.test.iter().map(|(i, l)| (i, l)).collect();
    let dice = tuner.evaluate(&cases).unwrap();
    Run {
        site: site.name.clone(),
        method: method.name().into(),
        budget,
        seed,
        pseudo,
        min_dice: args.min_dice,
        steps: args.steps,
        batch: tuner.options().batch_size,
        patch: args.patch,
        overlap: args.overlap,
        test_volumes: site.test.len(),
        lr: args.lr.unwrap_or(engine.bundle().manifest().training.as_ref().map_or(0.0, |t| t.optimizer.lr)),
        picks: selection.picks.iter().map(|p| p.id.clone()).collect(),
        pseudo_volumes: unlabeled.len(),
        labeler_dice: check.map(|c| c.foreground_dice),
        pseudo_trusted: check.map(|c| c.trusted),
        pseudo_patches: Some(pseudo_patches),
        dice_mean: dice_mean(&dice),
        dice_per_class: dice,
        final_loss: Some(final_loss),
        seconds: t.elapsed().as_secs_f64(),
    }
}

fn main() {
    let args = parse_args();
    std::fs::create_dir_all(&args.out).unwrap();
    let runs_path = args.out.join("runs.jsonl");
    let done: HashSet<String> = std::fs::read_to_string(&runs_path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Run>(l).ok())
        .map(|r| r.key())
        .collect();
    let mut out = std::fs::OpenOptions::new().create(true).append(true).open(&runs_path).unwrap();
    let mut options =
        EngineOptions { runtime: RuntimeOptions { threads: args.threads, ..Default::default() }, ..Default::default() };
    options.window.overlap = args.overlap;
    let engine = Engine::new(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo_brain_unet"), options).unwrap();

    // Budget by budget (in the order given), then seed by seed, then site: an interrupted
    // benchmark has every method, seed and site of the first budgets rather than one seed of all.
    let sites: Vec<Site> = args.sites.iter().map(|name| load_site(&engine, &args, name)).collect();
    let mut record = |run: Run| {
        let loss = run.final_loss.map_or("-".to_string(), |l| format!("{l:.4}"));
        let check = match (run.labeler_dice, run.pseudo_trusted) {
            (Some(d), Some(t)) => format!("  labeler dice {d:.3} {}", if t { "trusted" } else { "not trusted" }),
            _ => String::new(),
        };
        eprintln!("{:<48} dice {:.4}  loss {loss}  {:.0} s{check}", run.key(), run.dice_mean, run.seconds);
        writeln!(out, "{}", serde_json::to_string(&run).unwrap()).unwrap();
        out.flush().unwrap();
    };
    for site in &sites {
        if !done.contains(&key(&site.name, "none", 0, 0, Pseudo::None, 0.0)) {
            record(baseline(&engine, &args, site));
        }
    }
    for &budget in &args.budgets {
        for &seed in &args.seeds {
            for site in &sites {
                let mut jobs: Vec<(Method, Pseudo)> = args.methods.iter().map(|&m| (m, Pseudo::Reliable)).collect();
                if budget == args.ablation_budget {
                    jobs.extend([(Method::Asfda, Pseudo::All), (Method::Asfda, Pseudo::None)]);
                    if args.refresh > 0 {
                        jobs.push((Method::Asfda, Pseudo::ReliableRefresh));
                    }
                    if args.selection_only {
                        jobs.extend(args.methods.iter().filter(|&&m| m != Method::Asfda).map(|&m| (m, Pseudo::None)));
                    }
                }
                for (method, pseudo) in jobs {
                    if !done.contains(&key(&site.name, method.name(), budget, seed, pseudo, args.min_dice)) {
                        record(run_one(&engine, &args, site, method, budget, seed, pseudo));
                    }
                }
            }
        }
    }
}
