//! Selection of the volumes to annotate (docs/method.md, section 1 "Query") and of the
//! reliable unlabeled volumes for selective semi-supervised fine-tuning (section 2).
//!
//! Input: the [`Score`]s of every volume of the target site and the ids of those already labeled
//! (empty for the first round). The *pool* is the scored volumes that are not labeled. [`select`]
//! picks `budget` volumes of the pool with one [`Method`] and returns them in pick order, each with
//! the score components at the moment it was picked, plus the reliable set.
//!
//! ASFDA (the default method) is a greedy query. With `S` = labeled ∪ already picked:
//!
//! - `d(i, S) = min_{j in S} (1 - cos(z_i, z_j))`, and `d = 1` when `S` is empty (first round,
//!   first pick): 1 is the distance to an orthogonal embedding, so the first pick is driven by the
//!   gap rank alone instead of by an arbitrary constant;
//! - `DKD_i = rank01(gap_i) * d(i, S)`;
//! - `combined_i = w_dkd * rank01(DKD_i) + w_asd * rank01(ASD_i)`;
//!
//! every rank taken over the candidates still remaining; the candidate with the largest
//! `combined` is picked, added to `S`, and everything is recomputed. Near-duplicates of `S` are
//! passed over while other candidates remain ([`SelectOptions::duplicate_fraction`], an addition:
//! the rank fusion alone does not exclude them). Ties of `combined` go to the
//! larger DKD (the less redundant candidate: with two candidates left, a near-duplicate of `S`
//! with the higher ASD would otherwise tie with a distinct one, 0 + 1 = 1 + 0), then to the
//! smallest id.
//!
//! [`rank01`]: average ranks for ties, scaled to [0, 1] (a single value ranks 1).
//!
//! The result depends on the scores and options only, never on the order of `scores` (the pool is
//! processed in id order) nor on the platform: the random baselines use a hand-written SplitMix64
//! ([`crate::rng::SplitMix64`]) with integer arithmetic, so a seed gives the same picks everywhere.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use crate::score::Score;
use crate::stats::quantile;

/// The [`Selection`] JSON format this build writes and reads.
pub const SELECTION_FORMAT_VERSION: u32 = 1;

/// How the volumes to annotate are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// The ASFDA greedy query: DKD rank fused with ASD rank, diversity recomputed after every pick.
    Asfda,
    /// Uniform random: a seeded shuffle of the pool (in id order), first `budget` volumes.
    Random,
    /// Foreground-aware random, the volume-level reading of nnActive's baseline: seeded sampling
    /// without replacement with probability proportional to the predicted `foreground_fraction`.
    /// Volumes with zero foreground are drawn (uniformly) only after every other volume is picked.
    ForegroundRandom,
    /// Entropy only: ASD descending (ties: smallest id).
    Entropy,
    /// DKD only: greedy argmax of `rank01(gap) * d(i, S)`, diversity recomputed after every pick.
    Dkd,
    /// Core-set: k-center greedy on the embeddings, argmax of `d(i, S)`. With `S` empty the first
    /// pick is the volume farthest (1 - cos) from the mean embedding of the pool (the most atypical
    /// one, as in the usual k-center initialisation away from the centre); if that mean is the zero
    /// vector every distance counts as 1 and the smallest id is picked.
    Coreset,
}

impl Method {
    /// Every method, in the order of the C enum.
    pub const ALL: [Method; 6] =
        [Method::Asfda, Method::Random, Method::ForegroundRandom, Method::Entropy, Method::Dkd, Method::Coreset];

    /// The snake_case name used in JSON and accepted by [`FromStr`].
    pub fn name(self) -> &'static str {
        match self {
            Method::Asfda => "asfda",
            Method::Random => "random",
            Method::ForegroundRandom => "foreground_random",
            Method::Entropy => "entropy",
            Method::Dkd => "dkd",
            Method::Coreset => "coreset",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Method> {
        Method::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| {
            Error::invalid_argument(format!(
                "unknown selection method '{s}'; expected one of asfda, random, foreground_random, entropy, dkd, coreset"
            ))
        })
    }
}

/// Which knowledge gap of the [`Score`] feeds DKD \[RECON\].
///
/// Default [`GapKind::Kl`]: DKD is the *divergence* term of the paper, and method.md lists the KL
/// of the volume's feature statistics from the source's first. It also carries information the
/// diversity term does not: it compares per-channel means *and* spreads of the raw tile features,
/// whereas diversity (and the anchor gap) look at the same L2-normalised embedding, so with the
/// anchor gap both factors of DKD would measure directions in one space. The anchor gap depends on
/// how many k-means anchors the exporter chose; it stays available as an option.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapKind {
    /// `Score::gap_kl`: mean over channels of KL(N(mu_i, var_i) || N(mu_s, var_s)).
    #[default]
    Kl,
    /// `Score::gap_anchor`: squared distance of the embedding to the nearest source anchor.
    Anchor,
}

impl GapKind {
    /// The snake_case name used in JSON and accepted by [`FromStr`].
    pub fn name(self) -> &'static str {
        match self {
            GapKind::Kl => "kl",
            GapKind::Anchor => "anchor",
        }
    }

    fn field(self) -> &'static str {
        match self {
            GapKind::Kl => "gap_kl",
            GapKind::Anchor => "gap_anchor",
        }
    }

    fn of(self, score: &Score) -> f64 {
        match self {
            GapKind::Kl => score.gap_kl,
            GapKind::Anchor => score.gap_anchor,
        }
    }
}

impl FromStr for GapKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<GapKind> {
        match s {
            "kl" => Ok(GapKind::Kl),
            "anchor" => Ok(GapKind::Anchor),
            _ => Err(Error::invalid_argument(format!("unknown gap kind '{s}'; expected kl or anchor"))),
        }
    }
}

/// The options of [`select`]. `Default` is the documented default of every \[RECON\] choice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SelectOptions {
    /// Default [`Method::Asfda`].
    pub method: Method,
    /// Volumes to pick, 1..=pool size. Default 1 (set it).
    pub budget: usize,
    /// Seed of the random baselines (ignored by the deterministic methods). Default 0.
    pub seed: u64,
    /// Weight of rank01(DKD) in the ASFDA score. Default 1 (method.md). Finite, >= 0.
    pub w_dkd: f64,
    /// Weight of rank01(ASD) in the ASFDA score. Default 1 (method.md). Finite, >= 0; `w_dkd` and
    /// `w_asd` may not both be 0.
    pub w_asd: f64,
    /// Which gap feeds DKD. Default [`GapKind::Kl`] (see there why).
    pub gap: GapKind,
    /// ASFDA only, an addition to method.md: a candidate with `d(i, S) < duplicate_fraction *
    /// max_k d(k, S)` (over the remaining candidates) is a near-duplicate of an already labeled or
    /// picked volume and is not picked while a candidate that is not remains; the ranks are still
    /// taken over all remaining candidates. Why: the fused score uses ranks, which drop magnitudes.
    /// A candidate with `d ~ 0` has DKD ~ 0, yet that still out-ranks the candidate whose gap ranks
    /// last (its DKD is exactly 0 whatever its diversity), and with the top ASD rank such a
    /// near-copy can win (tests/select.rs builds both cases). Relative to the largest distance, so
    /// it does not depend on how spread the model's embeddings are. Default 0.01 (a candidate 100x
    /// closer to S than the farthest one); 0 gives the plain formula. In [0, 1].
    pub duplicate_fraction: f64,
    /// A reliable volume's confidence is at least this quantile of the confidences of the
    /// unpicked pool. Default 0.5 (method.md: the median). In [0, 1]; 0 disables the condition.
    pub reliable_confidence_quantile: f64,
    /// A reliable volume's distance to labeled ∪ picked is at most this quantile of those
    /// distances over the unpicked pool. Default 0.5 (method.md: the median). In [0, 1]; 1 disables
    /// the condition.
    pub reliable_distance_quantile: f64,
}

impl Default for SelectOptions {
    fn default() -> Self {
        SelectOptions {
            method: Method::Asfda,
            budget: 1,
            seed: 0,
            w_dkd: 1.0,
            w_asd: 1.0,
            gap: GapKind::Kl,
            duplicate_fraction: 0.01,
            reliable_confidence_quantile: 0.5,
            reliable_distance_quantile: 0.5,
        }
    }
}

impl SelectOptions {
    /// Checks every field that does not depend on the scores; the error names the field and the
    /// allowed range. (The budget is compared with the pool size by [`select`].)
    pub fn validate(&self) -> Result<()> {
        if self.budget == 0 {
            return Err(Error::invalid_argument("selection budget is 0; it must be at least 1 volume"));
        }
        for (name, w) in [("w_dkd", self.w_dkd), ("w_asd", self.w_asd)] {
            if !(w.is_finite() && w >= 0.0) {
                return Err(Error::invalid_argument(format!(
                    "selection option {name} is {w}, must be a finite number >= 0"
                )));
            }
        }
        if self.w_dkd == 0.0 && self.w_asd == 0.0 {
            return Err(Error::invalid_argument(
                "selection options w_dkd and w_asd are both 0; at least one weight must be > 0",
            ));
        }
        for (name, q) in [
            ("duplicate_fraction", self.duplicate_fraction),
            ("reliable_confidence_quantile", self.reliable_confidence_quantile),
            ("reliable_distance_quantile", self.reliable_distance_quantile),
        ] {
            if !(0.0..=1.0).contains(&q) {
                return Err(Error::invalid_argument(format!("selection option {name} is {q}, must be in [0, 1]")));
            }
        }
        Ok(())
    }
}

/// One picked volume and the score components at the moment it was picked.
///
/// Every component has the same definition for every method (ranks over the candidates still
/// remaining at that moment, `S` = labeled ∪ earlier picks); the method decides only which
/// candidate is picked. For ASFDA they are what drove the pick; for a baseline they show how ASFDA
/// would have rated the baseline's pick. What each baseline ranked by: Entropy `asd`, Dkd `dkd`,
/// Coreset `diversity` (except its first pick in the first round, chosen by the distance to the
/// pool's mean embedding, see [`Method::Coreset`]), Random and ForegroundRandom nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pick {
    /// The volume's id.
    pub id: String,
    /// Its index in the `scores` given to [`select`].
    pub index: usize,
    /// 0 for the first pick.
    pub order: usize,
    /// The raw knowledge gap of the kind [`SelectOptions::gap`].
    pub gap: f64,
    /// rank01 of the gap among the remaining candidates.
    pub gap_rank: f64,
    /// d(i, S): min over labeled ∪ earlier picks of 1 - cos (1 when that set is empty).
    pub diversity: f64,
    /// gap_rank * diversity.
    pub dkd: f64,
    /// rank01 of dkd among the remaining candidates.
    pub dkd_rank: f64,
    /// The raw ASD.
    pub asd: f64,
    /// rank01 of ASD among the remaining candidates.
    pub asd_rank: f64,
    /// w_dkd * dkd_rank + w_asd * asd_rank, the ASFDA score.
    pub combined: f64,
}

/// The result of [`select`]. Serialise with [`Selection::to_json`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    /// [`SELECTION_FORMAT_VERSION`] of the JSON this was read from or will be written as.
    pub format_version: u32,
    /// The method that made the picks (equals `options.method`).
    pub method: Method,
    /// The options used.
    pub options: SelectOptions,
    /// The picks, in pick order (`picks[k].order == k`).
    pub picks: Vec<Pick>,
    /// Ids of the reliable unpicked pool volumes for SSFT (method.md section 2), sorted.
    pub reliable: Vec<String>,
}

impl Selection {
    /// Compact one-line JSON; reads back bit-exactly with [`Selection::from_json`].
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a Selection always serialises")
    }

    /// Reads a selection written by [`Selection::to_json`]. An unknown `format_version` is
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported); malformed or inconsistent JSON is
    /// [`ErrorKind::Format`](crate::ErrorKind::Format).
    pub fn from_json(text: &str) -> Result<Selection> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::format(format!("selection JSON is malformed: {e}")))?;
        let version = value
            .get("format_version")
            .ok_or_else(|| Error::format("selection JSON has no format_version"))?
            .as_u64()
            .ok_or_else(|| Error::format("selection JSON format_version is not a non-negative integer"))?;
        if version != u64::from(SELECTION_FORMAT_VERSION) {
            return Err(Error::unsupported(format!(
                "selection JSON has format_version {version}; this build of asfda reads version {SELECTION_FORMAT_VERSION}"
            )));
        }
        let sel: Selection =
            serde_json::from_value(value).map_err(|e| Error::format(format!("selection JSON is malformed: {e}")))?;
        sel.check().map_err(|e| Error::format(format!("selection JSON is inconsistent: {e}")))?;
        Ok(sel)
    }

    fn check(&self) -> std::result::Result<(), String> {
        self.options.validate().map_err(|e| e.message().to_string())?;
        if self.method != self.options.method {
            return Err(format!("method is {} but options.method is {}", self.method, self.options.method));
        }
        let mut seen = HashSet::new();
        for (k, p) in self.picks.iter().enumerate() {
            if p.order != k {
                return Err(format!("pick {k} ('{}') has order {}", p.id, p.order));
            }
            if !seen.insert(p.id.as_str()) {
                return Err(format!("'{}' is picked twice", p.id));
            }
        }
        if let Some(r) = self.reliable.iter().find(|r| seen.contains(r.as_str())) {
            return Err(format!("'{r}' is both picked and reliable"));
        }
        Ok(())
    }
}

/// Ranks scaled to [0, 1]: the smallest value gets 0, the largest 1; tied values share the
/// average of their ranks; a single value gets 1. Values must not be NaN (callers validate).
pub fn rank01(values: &[f64]) -> Vec<f64> {
    let n = values.len();
    if n == 1 {
        return vec![1.0];
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; n];
    let mut i = 0;
    while i < n {
        let mut j = i;
        // -0.0 and 0.0 are one value here, as for the comparisons of the methods.
        while j + 1 < n && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let average = (i + j) as f64 / 2.0; // 0-based ranks i..=j
        for &k in &order[i..=j] {
            ranks[k] = average / (n - 1) as f64;
        }
        i = j + 1;
    }
    ranks
}

/// Picks `options.budget` volumes of the pool (`scores` not in `labeled`) with
/// `options.method`, and the reliable set of the remaining pool. See the module documentation.
///
/// Errors ([`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument)): invalid options,
/// an empty pool, a budget larger than the pool, a duplicate id in `scores` or `labeled`, a
/// labeled id not among `scores`. ([`ErrorKind::InvalidData`](crate::ErrorKind::InvalidData)):
/// embeddings of different sizes (naming two ids), an empty or all-zero embedding, NaN/Inf in an
/// embedding or in a score field the method uses (naming the id and field), a negative
/// foreground fraction for [`Method::ForegroundRandom`].
pub fn select(scores: &[Score], labeled: &[&str], options: &SelectOptions) -> Result<Selection> {
    options.validate()?;
    let mut by_id: HashMap<&str, usize> = HashMap::with_capacity(scores.len());
    for (i, s) in scores.iter().enumerate() {
        if by_id.insert(s.id.as_str(), i).is_some() {
            return Err(Error::invalid_argument(format!("volume id '{}' appears twice among the scores", s.id)));
        }
    }
    let mut labeled_idx = Vec::with_capacity(labeled.len());
    let mut is_labeled = vec![false; scores.len()];
    for &id in labeled {
        let &i = by_id.get(id).ok_or_else(|| {
            Error::invalid_argument(format!(
                "labeled volume '{id}' is not among the scores; pass the scores of labeled volumes too (their \
                 embeddings define the diversity)"
            ))
        })?;
        if is_labeled[i] {
            return Err(Error::invalid_argument(format!("labeled volume '{id}' is listed twice")));
        }
        is_labeled[i] = true;
        labeled_idx.push(i);
    }
    // The pool in id order, so the result does not depend on the order of `scores`.
    let mut pool: Vec<usize> = (0..scores.len()).filter(|&i| !is_labeled[i]).collect();
    pool.sort_by(|&a, &b| scores[a].id.cmp(&scores[b].id));
    if pool.is_empty() {
        return Err(Error::invalid_argument(format!(
            "the pool is empty: {} scores given, {} of them labeled; nothing to select from",
            scores.len(),
            labeled.len()
        )));
    }
    if options.budget > pool.len() {
        return Err(Error::invalid_argument(format!(
            "selection budget {} exceeds the pool of {} unlabeled volumes",
            options.budget,
            pool.len()
        )));
    }
    let z = unit_embeddings(scores)?;
    for &i in &pool {
        check_fields(&scores[i], options)?;
    }

    let mut state = Greedy::new(scores, &z, &labeled_idx, &pool, options);
    let mut rng = SplitMix64::new(options.seed);
    let mut picks = Vec::with_capacity(options.budget);
    // Static orders of the non-greedy baselines; greedy ones choose from `state` at every step.
    let mut queue: Vec<usize> = match options.method {
        Method::Random => {
            let mut order = pool.clone();
            shuffle(&mut order, &mut rng);
            order
        }
        Method::ForegroundRandom => foreground_order(scores, &pool, options.budget, &mut rng),
        Method::Entropy => {
            let mut order = pool.clone();
            // Stable sort on id order: ties keep the smallest id first.
            order.sort_by(|&a, &b| scores[b].asd.total_cmp(&scores[a].asd));
            order
        }
        Method::Asfda | Method::Dkd | Method::Coreset => Vec::new(),
    };
    queue.truncate(options.budget);
    for order in 0..options.budget {
        let components = state.components();
        let slot = match options.method {
            Method::Asfda => {
                let eligible = not_duplicates(&components.diversity, options.duplicate_fraction);
                argmax(&components.combined, Some(&components.dkd), &eligible)
            }
            Method::Dkd => argmax(&components.dkd, None, &[]),
            Method::Coreset => argmax(&state.coreset_distance(), None, &[]),
            _ => {
                let target = *queue.get(order).expect("the queue holds `budget` volumes");
                state.remaining.iter().position(|&i| i == target).expect("queued volumes are remaining")
            }
        };
        let i = state.remaining[slot];
        picks.push(Pick {
            id: scores[i].id.clone(),
            index: i,
            order,
            gap: components.gap[slot],
            gap_rank: components.gap_rank[slot],
            diversity: components.diversity[slot],
            dkd: components.dkd[slot],
            dkd_rank: components.dkd_rank[slot],
            asd: scores[i].asd,
            asd_rank: components.asd_rank[slot],
            combined: components.combined[slot],
        });
        state.take(slot);
    }
    let reliable = state.reliable(options);
    Ok(Selection {
        format_version: SELECTION_FORMAT_VERSION,
        method: options.method,
        options: options.clone(),
        picks,
        reliable,
    })
}

/// Every embedding as f64, scaled to unit length (they are stored normalised; scaling again makes
/// 1 - cos exact for any input). Checks sizes, finiteness and a non-zero norm.
fn unit_embeddings(scores: &[Score]) -> Result<Vec<Vec<f64>>> {
    let Some(first) = scores.first() else { return Ok(Vec::new()) };
    scores
        .iter()
        .map(|s| {
            if s.embedding.len() != first.embedding.len() {
                return Err(Error::invalid_data(format!(
                    "embeddings differ in size: '{}' has {} values, '{}' has {}; were the volumes scored with \
                     different models?",
                    first.id,
                    first.embedding.len(),
                    s.id,
                    s.embedding.len()
                )));
            }
            if s.embedding.is_empty() {
                return Err(Error::invalid_data(format!("volume '{}' has an empty embedding", s.id)));
            }
            if let Some((k, v)) = s.embedding.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(Error::invalid_data(format!("volume '{}': embedding[{k}] is {v}", s.id)));
            }
            let v: Vec<f64> = s.embedding.iter().map(|&x| f64::from(x)).collect();
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm == 0.0 {
                return Err(Error::invalid_data(format!("volume '{}' has an all-zero embedding", s.id)));
            }
            Ok(v.into_iter().map(|x| x / norm).collect())
        })
        .collect()
}

/// Rejects NaN/Inf in the fields of a pool volume that the method or the reliable set use.
fn check_fields(s: &Score, options: &SelectOptions) -> Result<()> {
    let mut fields = vec![("confidence", s.confidence), ("asd", s.asd), (options.gap.field(), options.gap.of(s))];
    if options.method == Method::ForegroundRandom {
        fields.push(("foreground_fraction", s.foreground_fraction));
    }
    for (name, v) in fields {
        if !v.is_finite() {
            return Err(Error::invalid_data(format!("volume '{}': {name} is {v}", s.id)));
        }
    }
    if options.method == Method::ForegroundRandom && s.foreground_fraction < 0.0 {
        return Err(Error::invalid_data(format!(
            "volume '{}': foreground_fraction is {}, must be >= 0",
            s.id, s.foreground_fraction
        )));
    }
    Ok(())
}

/// 1 - cos of two unit vectors, clamped to [0, 2] against rounding.
fn distance(a: &[f64], b: &[f64]) -> f64 {
    (1.0 - a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>()).clamp(0.0, 2.0)
}

/// The index of the largest value among the eligible ones (all when `eligible` is empty); ties go
/// to the largest `then` value if given, then to the first index (candidates are in id order, so:
/// the smallest id).
fn argmax(values: &[f64], then: Option<&[f64]>, eligible: &[bool]) -> usize {
    let mut best: Option<usize> = None;
    for (k, &v) in values.iter().enumerate() {
        if !eligible.is_empty() && !eligible[k] {
            continue;
        }
        let better = match best {
            None => true,
            Some(b) => v > values[b] || (v == values[b] && then.is_some_and(|t| t[k] > t[b])),
        };
        if better {
            best = Some(k);
        }
    }
    best.expect("at least one candidate is eligible")
}

/// Which candidates are not near-duplicates of S: `d >= fraction * max d` (see
/// [`SelectOptions::duplicate_fraction`]). The farthest candidate always qualifies.
fn not_duplicates(diversity: &[f64], fraction: f64) -> Vec<bool> {
    let max = diversity.iter().copied().fold(0.0, f64::max);
    diversity.iter().map(|&d| d >= fraction * max).collect()
}

/// Fisher-Yates shuffle.
fn shuffle(items: &mut [usize], rng: &mut SplitMix64) {
    for k in (1..items.len()).rev() {
        let j = rng.below(k as u64 + 1) as usize;
        items.swap(k, j);
    }
}

/// The first `budget` volumes of a seeded sampling without replacement, each draw with probability
/// proportional to `foreground_fraction` among those left; when only zero-foreground volumes are
/// left, they follow in a seeded uniform order.
fn foreground_order(scores: &[Score], pool: &[usize], budget: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let (mut positive, mut zero): (Vec<usize>, Vec<usize>) =
        pool.iter().partition(|&&i| scores[i].foreground_fraction > 0.0);
    let mut order = Vec::with_capacity(budget);
    while order.len() < budget && !positive.is_empty() {
        let total: f64 = positive.iter().map(|&i| scores[i].foreground_fraction).sum();
        let u = rng.unit() * total;
        let mut cumulative = 0.0;
        // Rounding may leave u >= the final sum: the last volume then takes the draw.
        let mut slot = positive.len() - 1;
        for (k, &i) in positive.iter().enumerate() {
            cumulative += scores[i].foreground_fraction;
            if u < cumulative {
                slot = k;
                break;
            }
        }
        order.push(positive.remove(slot));
    }
    shuffle(&mut zero, rng);
    order.extend(zero);
    order
}

/// Per-candidate components at one step of a selection, aligned with `Greedy::remaining`.
struct Components {
    gap: Vec<f64>,
    gap_rank: Vec<f64>,
    diversity: Vec<f64>,
    dkd: Vec<f64>,
    dkd_rank: Vec<f64>,
    asd_rank: Vec<f64>,
    combined: Vec<f64>,
}

/// The state of a selection: remaining candidates (id order) and each one's distance to S.
struct Greedy<'a> {
    scores: &'a [Score],
    z: &'a [Vec<f64>],
    /// Pool indices not yet picked, in id order.
    remaining: Vec<usize>,
    /// `min_dist[k]`: d(remaining[k], S), or `None` while S is empty.
    min_dist: Vec<Option<f64>>,
    /// Mean embedding of the pool (for the first core-set pick).
    pool_mean: Vec<f64>,
    /// Whether S (labeled ∪ picked) is still empty.
    s_empty: bool,
    w: (f64, f64),
    gap: GapKind,
}

impl<'a> Greedy<'a> {
    fn new(scores: &'a [Score], z: &'a [Vec<f64>], labeled: &[usize], pool: &[usize], options: &SelectOptions) -> Self {
        let min_dist =
            pool.iter().map(|&i| labeled.iter().map(|&l| distance(&z[i], &z[l])).min_by(f64::total_cmp)).collect();
        let width = z[pool[0]].len();
        let mut pool_mean = vec![0.0; width];
        for &i in pool {
            pool_mean.iter_mut().zip(&z[i]).for_each(|(m, x)| *m += x);
        }
        Greedy {
            scores,
            z,
            remaining: pool.to_vec(),
            min_dist,
            pool_mean,
            s_empty: labeled.is_empty(),
            w: (options.w_dkd, options.w_asd),
            gap: options.gap,
        }
    }

    fn components(&self) -> Components {
        let gap: Vec<f64> = self.remaining.iter().map(|&i| self.gap.of(&self.scores[i])).collect();
        let asd: Vec<f64> = self.remaining.iter().map(|&i| self.scores[i].asd).collect();
        let gap_rank = rank01(&gap);
        let diversity: Vec<f64> = self.min_dist.iter().map(|d| d.unwrap_or(1.0)).collect();
        let dkd: Vec<f64> = gap_rank.iter().zip(&diversity).map(|(g, d)| g * d).collect();
        let dkd_rank = rank01(&dkd);
        let asd_rank = rank01(&asd);
        let combined = dkd_rank.iter().zip(&asd_rank).map(|(d, a)| self.w.0 * d + self.w.1 * a).collect();
        Components { gap, gap_rank, diversity, dkd, dkd_rank, asd_rank, combined }
    }

    /// The k-center criterion: d(i, S), or with S empty the distance to the pool's mean embedding.
    fn coreset_distance(&self) -> Vec<f64> {
        if !self.s_empty {
            return self.min_dist.iter().map(|d| d.expect("S is not empty")).collect();
        }
        let norm = self.pool_mean.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            return vec![1.0; self.remaining.len()];
        }
        let mean: Vec<f64> = self.pool_mean.iter().map(|x| x / norm).collect();
        self.remaining.iter().map(|&i| distance(&self.z[i], &mean)).collect()
    }

    /// Moves candidate `slot` into S and updates the others' distances to S.
    fn take(&mut self, slot: usize) {
        let picked = self.remaining.remove(slot);
        self.min_dist.remove(slot);
        for (k, &i) in self.remaining.iter().enumerate() {
            let d = distance(&self.z[i], &self.z[picked]);
            self.min_dist[k] = Some(self.min_dist[k].map_or(d, |m| m.min(d)));
        }
        self.s_empty = false;
    }

    /// Reliable set of the remaining (unpicked) pool: confidence >= its q_conf quantile and
    /// d(u, S) <= its q_dist quantile, both quantiles over the unpicked pool. Sorted ids.
    fn reliable(&self, options: &SelectOptions) -> Vec<String> {
        if self.remaining.is_empty() {
            return Vec::new();
        }
        let confidence: Vec<f64> = self.remaining.iter().map(|&i| self.scores[i].confidence).collect();
        let dist: Vec<f64> = self.min_dist.iter().map(|d| d.expect("S holds at least one pick")).collect();
        let c_min = quantile(&confidence, options.reliable_confidence_quantile);
        let d_max = quantile(&dist, options.reliable_distance_quantile);
        // `remaining` is in id order, so the result is sorted.
        (0..self.remaining.len())
            .filter(|&k| confidence[k] >= c_min && dist[k] <= d_max)
            .map(|k| self.scores[self.remaining[k]].id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank01_averages_ties_and_scales_to_unit_interval() {
        assert_eq!(rank01(&[3.0]), vec![1.0]);
        assert_eq!(rank01(&[2.0, 1.0]), vec![1.0, 0.0]);
        // 0-based ranks: 1.0 -> 0; the two 2.0 share (1 + 2) / 2 = 1.5; 5.0 -> 3; scaled by 1/3.
        assert_eq!(rank01(&[2.0, 5.0, 1.0, 2.0]), vec![0.5, 1.0, 0.0, 0.5]);
        assert_eq!(rank01(&[7.0, 7.0, 7.0]), vec![0.5, 0.5, 0.5]);
        assert_eq!(rank01(&[0.0, -0.0, 1.0]), vec![0.25, 0.25, 1.0]);
        assert!(rank01(&[]).is_empty());
    }
}
