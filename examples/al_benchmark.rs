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
//!
//! The heterogeneous hospital (issue 17; `make data` writes `.cache/data/hetero-v1`):
//!
//!     cargo run --release --example al_benchmark -- --data .cache/data/hetero-v1 --sites hetero
//!         --budgets 2,4,8,16 --seeds 0,1,2,3,4 --test-volumes 18 [--ft-seeds K] [--patch 0]
//!
//! When the data folder's manifest gives each volume a `kind`, every run also records its picks'
//! kinds and the Dice of every test volume with its kind (per-kind Dice), and `--test-volumes N`
//! takes the test volumes round-robin over the kinds. `--ft-seeds K` fine-tunes every selection K
//! times with the patch-sampling seeds 1000 * seed + 1 ..= 1000 * seed + K (recorded as `ft_seed`;
//! the same for every method, so differences stay paired); without it the fine-tuning seed is the
//! selection seed, as before. `--patch 0` uses the bundle's patch size (the library's default).
//! `--picks-only true` only selects (every method, budget and seed, from the cached scores) and
//! writes DIR/picks.jsonl, without fine-tuning.

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
    /// The fine-tuning (patch-sampling) seed when it is not the selection seed (`--ft-seeds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ft_seed: Option<u64>,
    /// The picks' kinds, in pick order (data sets whose manifest records kinds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pick_kinds: Vec<String>,
    /// Every test volume's id, kind and per-class Dice (data sets whose manifest records kinds).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    test: Vec<TestDice>,
    /// None for the unadapted baseline (no step taken).
    final_loss: Option<f32>,
    seconds: f64,
}

#[derive(Serialize, Deserialize)]
struct TestDice {
    id: String,
    kind: String,
    dice_per_class: Vec<f64>,
}

impl Run {
    fn key(&self) -> String {
        with_ft_seed(key(&self.site, &self.method, self.budget, self.seed, self.pseudo, self.min_dice), self.ft_seed)
    }
}

/// A run's key with its fine-tuning seed, when that is not the selection seed.
fn with_ft_seed(key: String, ft_seed: Option<u64>) -> String {
    match ft_seed {
        Some(f) => format!("{key}/ft{f}"),
        None => key,
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
    /// Fine-tuning seeds per selection (0: the selection seed fine-tunes once).
    ft_seeds: u64,
    /// Only select (every method, budget and seed) and write DIR/picks.jsonl: no fine-tuning.
    picks_only: bool,
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
        ft_seeds: 0,
        picks_only: false,
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
            "--ft-seeds" => a.ft_seeds = value.parse().unwrap(),
            "--picks-only" => a.picks_only = value.parse().unwrap(),
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
    /// (id, image, label) of the test volumes used.
    test: Vec<(String, Volume, Volume)>,
    /// Each volume's acquisition kind, from the data folder's manifest (empty when it has none).
    kinds: HashMap<String, String>,
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

/// Volume id -> kind, from `manifest.json` of the data folder (hetero-v1 records one per volume;
/// synthetic-v1 has none: empty map).
fn manifest_kinds(data: &Path) -> HashMap<String, String> {
    let Ok(text) = std::fs::read_to_string(data.join("manifest.json")) else {
        return HashMap::new();
    };
    let manifest: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}/manifest.json: {e}", data.display()));
    manifest["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| Some((v["id"].as_str()?.to_string(), v["kind"].as_str()?.to_string())))
        .collect()
}

/// The first `n` of the sorted test files; with kinds, round-robin over the kinds (in order of
/// first appearance), so any `n` covers as many kinds as it can.
fn take_test(files: Vec<(String, PathBuf)>, kinds: &HashMap<String, String>, n: usize) -> Vec<(String, PathBuf)> {
    if kinds.is_empty() {
        return files.into_iter().take(n).collect();
    }
    let mut groups: Vec<(String, std::collections::VecDeque<(String, PathBuf)>)> = Vec::new();
    for (id, path) in files {
        let kind = kinds.get(&id).cloned().unwrap_or_default();
        match groups.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, g)) => g.push_back((id, path)),
            None => groups.push((kind, [(id, path)].into())),
        }
    }
    let mut taken = Vec::new();
    while taken.len() < n && groups.iter().any(|(_, g)| !g.is_empty()) {
        for (_, g) in groups.iter_mut() {
            if taken.len() < n {
                taken.extend(g.pop_front());
            }
        }
    }
    taken.sort();
    taken
}

fn load_site(engine: &Engine, args: &Args, name: &str) -> Site {
    let dir = args.data.join(name);
    let kinds = manifest_kinds(&args.data);
    let pool: Vec<(String, Volume)> = images(&dir.join("pool")).into_iter().map(|(id, p)| (id, read(&p))).collect();
    let pool_labels =
        pool.iter().map(|(id, _)| read(&dir.join("pool_labels").join(format!("{id}_label.nii.gz")))).collect();
    let test = take_test(images(&dir.join("test")), &kinds, args.test_volumes)
        .into_iter()
        .map(|(id, p)| {
            let label = read(&dir.join("test").join(format!("{id}_label.nii.gz")));
            (id, read(&p), label)
        })
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
    Site { name: name.into(), pool, pool_labels, test, kinds, scores, pseudo: OnceCell::new() }
}

impl Site {
    fn kind(&self, id: &str) -> String {
        self.kinds.get(id).cloned().unwrap_or_default()
    }

    /// Mean per-class Dice over the test volumes, and (with kinds) every volume's own Dice: one
    /// `evaluate` per volume then, whose mean is the same number.
    fn evaluate(&self, tuner: &FineTuner) -> (Vec<f64>, Vec<TestDice>) {
        if self.kinds.is_empty() {
            let cases: Vec<(&Volume, &Volume)> = self.test.iter().map(|(_, i, l)| (i, l)).collect();
            return (tuner.evaluate(&cases).unwrap(), vec![]);
        }
        let each: Vec<TestDice> = self
            .test
            .iter()
            .map(|(id, i, l)| TestDice {
                id: id.clone(),
                kind: self.kind(id),
                dice_per_class: tuner.evaluate(&[(i, l)]).unwrap(),
            })
            .collect();
        let classes = each[0].dice_per_class.len();
        let mean =
            (0..classes).map(|c| each.iter().map(|t| t.dice_per_class[c]).sum::<f64>() / each.len() as f64).collect();
        (mean, each)
    }
}

fn fine_tune_options(args: &Args, seed: u64) -> FineTuneOptions {
    FineTuneOptions {
        seed,
        total_steps: args.steps,
        batch_size: args.batch,
        patch_size: (args.patch > 0).then_some([args.patch; 3]),
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
    let (dice, test) = site.evaluate(&tuner);
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
        ft_seed: None,
        pick_kinds: vec![],
        test,
        final_loss: None,
        seconds: t.elapsed().as_secs_f64(),
    }
}

#[allow(clippy::too_many_arguments)]
fn run_one(
    engine: &Engine,
    args: &Args,
    site: &Site,
    method: Method,
    budget: usize,
    seed: u64,
    pseudo: Pseudo,
    ft_seed: Option<u64>,
) -> Run {
    let t = Instant::now();
    let options = SelectOptions { method, budget, seed, ..Default::default() };
    let selection = select(&site.scores, &[], &options).unwrap();
    let picked: HashSet<&str> = selection.picks.iter().map(|p| p.id.as_str()).collect();

    let mut options = fine_tune_options(args, ft_seed.unwrap_or(seed));
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
    let (dice, test) = site.evaluate(&tuner);
    Run {
        site: site.name.clone(),
        method: method.name().into(),
        budget,
        seed,
        pseudo,
        min_dice: args.min_dice,
        steps: args.steps,
        batch: tuner.options().batch_size,
        patch: if args.patch > 0 { args.patch } else { engine.bundle().manifest().input.patch_size[0] },
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
        ft_seed,
        pick_kinds: if site.kinds.is_empty() {
            vec![]
        } else {
            selection.picks.iter().map(|p| site.kind(&p.id)).collect()
        },
        test,
        final_loss: Some(final_loss),
        seconds: t.elapsed().as_secs_f64(),
    }
}

/// `--picks-only true`: every method's picks (and their kinds) at every budget and seed, from the
/// cached pool scores, into DIR/picks.jsonl (rewritten), with one summary line per selection.
fn write_picks(args: &Args, sites: &[Site]) {
    let mut text = String::new();
    for site in sites {
        for &budget in &args.budgets {
            for &method in &args.methods {
                for &seed in &args.seeds {
                    let options = SelectOptions { method, budget, seed, ..Default::default() };
                    let selection = select(&site.scores, &[], &options).unwrap();
                    let picks: Vec<&str> = selection.picks.iter().map(|p| p.id.as_str()).collect();
                    let kinds: Vec<String> = picks.iter().map(|id| site.kind(id)).collect();
                    eprintln!("{}/{}/{budget}/{seed}: {}", site.name, method.name(), kinds.join(" "));
                    let line = serde_json::json!({"site": site.name, "method": method.name(), "budget": budget,
                                                  "seed": seed, "picks": picks, "pick_kinds": kinds});
                    text += &format!("{line}\n");
                }
            }
        }
    }
    std::fs::write(args.out.join("picks.jsonl"), text).unwrap();
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
    if args.picks_only {
        return write_picks(&args, &sites);
    }
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
                // Fine-tuning seeds: the selection seed itself, or K seeds of its own per selection.
                let ft_seeds: Vec<Option<u64>> = if args.ft_seeds == 0 {
                    vec![None]
                } else {
                    (1..=args.ft_seeds).map(|j| Some(1000 * seed + j)).collect()
                };
                for (method, pseudo) in jobs {
                    for &ft_seed in &ft_seeds {
                        let k =
                            with_ft_seed(key(&site.name, method.name(), budget, seed, pseudo, args.min_dice), ft_seed);
                        if !done.contains(&k) {
                            record(run_one(&engine, &args, site, method, budget, seed, pseudo, ft_seed));
                        }
                    }
                }
            }
        }
    }
}
