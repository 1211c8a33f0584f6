//! Selection (src/select.rs): the ASFDA greedy query against an independent re-implementation, the
//! baselines' definitions, rounds, the reliable set, determinism, JSON and every error case. Pure
//! Rust on synthetic scores; no model needed.

use std::collections::HashSet;

use asfda::score::{Score, ScoreOptions, SCORE_FORMAT_VERSION};
use asfda::select::{rank01, select, GapKind, Method, SelectOptions, Selection, SELECTION_FORMAT_VERSION};
use asfda::stats::quantile;
use asfda::ErrorKind;

/// xorshift64*: deterministic test data without a rand dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn normalised(v: &[f64]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.iter().map(|x| (x / n) as f32).collect()
}

/// A score with the given fields (the rest are consistent placeholders).
fn score(id: &str, embedding: &[f64], gap: f64, asd: f64, confidence: f64, fg: f64) -> Score {
    let options = ScoreOptions::default();
    Score {
        format_version: SCORE_FORMAT_VERSION,
        id: id.to_string(),
        embedding: normalised(embedding),
        gap_kl: gap,
        gap_anchor: gap / 10.0,
        asd,
        asd_threshold: 0.1,
        confidence,
        foreground_fraction: fg,
        entropy_histogram: vec![0; options.histogram_bins],
        voxels: 1000,
        foreground_voxels: 0,
        options,
    }
}

/// `n` volumes with random embeddings (width 8) and random gap, ASD, confidence, foreground.
fn random_scores(n: usize, seed: u64) -> Vec<Score> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    (0..n)
        .map(|k| {
            let e: Vec<f64> = (0..8).map(|_| rng.next() - 0.3).collect();
            score(&format!("v{k:03}"), &e, rng.next() * 3.0, rng.next(), 0.5 + rng.next() / 2.0, rng.next() * 0.2)
        })
        .collect()
}

fn opts(method: Method, budget: usize) -> SelectOptions {
    SelectOptions { method, budget, ..SelectOptions::default() }
}

fn ids(sel: &Selection) -> Vec<&str> {
    sel.picks.iter().map(|p| p.id.as_str()).collect()
}

fn unit(e: &[f32]) -> Vec<f64> {
    let n = e.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    e.iter().map(|&x| f64::from(x) / n).collect()
}

fn dist(a: &Score, b: &Score) -> f64 {
    let (a, b) = (unit(&a.embedding), unit(&b.embedding));
    (1.0 - a.iter().zip(&b).map(|(x, y)| x * y).sum::<f64>()).clamp(0.0, 2.0)
}

/// d(i, S) computed from scratch; None when S is empty.
fn d_to_set(s: &Score, set: &[&Score]) -> Option<f64> {
    set.iter().map(|t| dist(s, t)).min_by(f64::total_cmp)
}

fn kind_of(result: Result<Selection, asfda::Error>) -> (ErrorKind, String) {
    let e = result.expect_err("must fail");
    (e.kind(), e.message().to_string())
}

#[test]
fn every_method_picks_budget_distinct_pool_volumes() {
    let scores = random_scores(15, 1);
    let labeled = ["v003", "v010"];
    for method in Method::ALL {
        for budget in [1, 4, 13] {
            let sel = select(&scores, &labeled, &opts(method, budget)).unwrap();
            assert_eq!(sel.picks.len(), budget, "{method}");
            let set: HashSet<&str> = ids(&sel).into_iter().collect();
            assert_eq!(set.len(), budget, "{method}: duplicate picks {:?}", ids(&sel));
            assert!(labeled.iter().all(|l| !set.contains(l)), "{method} picked a labeled volume");
            for (k, p) in sel.picks.iter().enumerate() {
                assert_eq!(p.order, k);
                assert_eq!(scores[p.index].id, p.id);
            }
            assert_eq!(sel.method, method);
        }
    }
}

#[test]
fn same_seed_same_result_and_input_order_does_not_matter() {
    let scores = random_scores(20, 2);
    let mut reversed = scores.clone();
    reversed.reverse();
    for method in Method::ALL {
        let o = SelectOptions { seed: 77, ..opts(method, 6) };
        let a = select(&scores, &["v005"], &o).unwrap();
        let b = select(&scores, &["v005"], &o).unwrap();
        assert_eq!(a, b, "{method}");
        let r = select(&reversed, &["v005"], &o).unwrap();
        assert_eq!(ids(&a), ids(&r), "{method}: depends on the order of the scores");
        assert_eq!(a.reliable, r.reliable, "{method}");
        for (p, q) in a.picks.iter().zip(&r.picks) {
            assert_eq!(q.index, scores.len() - 1 - p.index);
        }
    }
}

#[test]
fn random_methods_depend_on_the_seed_and_others_do_not() {
    let scores = random_scores(20, 3);
    for method in Method::ALL {
        let a = select(&scores, &[], &SelectOptions { seed: 1, ..opts(method, 5) }).unwrap();
        let b = select(&scores, &[], &SelectOptions { seed: 2, ..opts(method, 5) }).unwrap();
        let random = matches!(method, Method::Random | Method::ForegroundRandom);
        assert_eq!(ids(&a) != ids(&b), random, "{method}: {:?} vs {:?}", ids(&a), ids(&b));
    }
}

#[test]
fn random_covers_every_volume_over_seeds() {
    let scores = random_scores(10, 4);
    let mut count = [0usize; 10];
    for seed in 0..300 {
        let sel = select(&scores, &[], &SelectOptions { seed, ..opts(Method::Random, 2) }).unwrap();
        for p in &sel.picks {
            count[p.index] += 1;
        }
    }
    // 600 picks, 60 expected per volume; every volume is reached and none is starved.
    assert!(count.iter().all(|&c| c > 30), "{count:?}");
}

/// Independent ASFDA reference: every quantity recomputed from scratch at every step.
fn reference_asfda(scores: &[Score], labeled: &[&str], o: &SelectOptions) -> Vec<String> {
    let gap = |s: &Score| match o.gap {
        GapKind::Kl => s.gap_kl,
        GapKind::Anchor => s.gap_anchor,
    };
    let mut set: Vec<&Score> = scores.iter().filter(|s| labeled.contains(&s.id.as_str())).collect();
    let mut remaining: Vec<&Score> = scores.iter().filter(|s| !labeled.contains(&s.id.as_str())).collect();
    remaining.sort_by(|a, b| a.id.cmp(&b.id));
    let mut picked = Vec::new();
    for _ in 0..o.budget {
        let gap_rank = rank01(&remaining.iter().map(|s| gap(s)).collect::<Vec<_>>());
        let dkd: Vec<f64> =
            remaining.iter().zip(&gap_rank).map(|(s, g)| g * d_to_set(s, &set).unwrap_or(1.0)).collect();
        let dkd_rank = rank01(&dkd);
        let asd_rank = rank01(&remaining.iter().map(|s| s.asd).collect::<Vec<_>>());
        let combined: Vec<f64> = (0..remaining.len()).map(|k| o.w_dkd * dkd_rank[k] + o.w_asd * asd_rank[k]).collect();
        let d: Vec<f64> = remaining.iter().map(|s| d_to_set(s, &set).unwrap_or(1.0)).collect();
        let d_max = d.iter().copied().fold(0.0, f64::max);
        let best = (0..remaining.len())
            .filter(|&k| d[k] >= o.duplicate_fraction * d_max)
            .max_by(|&a, &b| combined[a].total_cmp(&combined[b]).then(dkd[a].total_cmp(&dkd[b])).then(b.cmp(&a)))
            .unwrap();
        let s = remaining.remove(best);
        picked.push(s.id.clone());
        set.push(s);
    }
    picked
}

#[test]
fn asfda_matches_an_independent_greedy_reference() {
    for seed in 0..6 {
        let scores = random_scores(25, 10 + seed);
        for (labeled, o) in [
            (vec![], opts(Method::Asfda, 8)),
            (vec!["v001", "v020"], opts(Method::Asfda, 8)),
            (vec!["v004"], SelectOptions { w_dkd: 2.0, w_asd: 0.5, gap: GapKind::Anchor, ..opts(Method::Asfda, 10) }),
            (vec![], SelectOptions { w_asd: 0.0, ..opts(Method::Asfda, 5) }),
            (vec!["v007"], SelectOptions { duplicate_fraction: 0.0, ..opts(Method::Asfda, 12) }),
            (vec!["v007"], SelectOptions { duplicate_fraction: 0.5, ..opts(Method::Asfda, 12) }),
        ] {
            let sel = select(&scores, &labeled, &o).unwrap();
            assert_eq!(ids(&sel), reference_asfda(&scores, &labeled, &o), "seed {seed}, {o:?}");
        }
    }
}

#[test]
fn pick_components_are_consistent_and_match_their_definitions() {
    let scores = random_scores(12, 5);
    let o = SelectOptions { w_dkd: 1.5, w_asd: 0.7, ..opts(Method::Asfda, 4) };
    let sel = select(&scores, &["v000"], &o).unwrap();
    let mut set = vec![&scores[0]];
    for p in &sel.picks {
        let s = &scores[p.index];
        assert_eq!(p.gap, s.gap_kl);
        assert_eq!(p.asd, s.asd);
        assert!((p.diversity - d_to_set(s, &set).unwrap()).abs() < 1e-9);
        assert_eq!(p.dkd, p.gap_rank * p.diversity);
        assert_eq!(p.combined, 1.5 * p.dkd_rank + 0.7 * p.asd_rank);
        for r in [p.gap_rank, p.dkd_rank, p.asd_rank] {
            assert!((0.0..=1.0).contains(&r));
        }
        set.push(s);
    }
    // First round, first pick: S is empty, so d = 1 and DKD = gap rank.
    let first = &select(&scores, &[], &o).unwrap().picks[0];
    assert_eq!(first.diversity, 1.0);
    assert_eq!(first.dkd, first.gap_rank);
}

/// Orthogonal basis vector k of width 8.
fn axis(k: usize) -> Vec<f64> {
    (0..8).map(|j| if j == k { 1.0 } else { 0.0 }).collect()
}

#[test]
fn asfda_skips_near_duplicates_of_picked_and_labeled_volumes_while_distinct_ones_remain() {
    // "a" is the best volume; "a_dup" is a near-copy (cos ~ 1) with nearly the same top gap and
    // ASD; "l_dup" is a near-copy of the labeled "lab" with the highest gap and ASD of all. The
    // distinct volumes b..f have lower, co-monotone gap and ASD.
    let mut near_a = axis(0);
    near_a[1] = 1e-3;
    let mut near_lab = axis(7);
    near_lab[6] = 1e-3;
    let mut scores = vec![
        score("a", &axis(0), 9.0, 0.90, 0.9, 0.1),
        score("a_dup", &near_a, 8.9, 0.89, 0.9, 0.1),
        score("lab", &axis(7), 1.0, 0.10, 0.9, 0.1),
        score("l_dup", &near_lab, 10.0, 0.95, 0.9, 0.1),
    ];
    for (k, id) in ["b", "c", "d", "e", "f"].iter().enumerate() {
        scores.push(score(id, &axis(k + 1), 5.0 - k as f64, 0.8 - 0.1 * k as f64, 0.9, 0.1));
    }
    let sel = select(&scores, &["lab"], &opts(Method::Asfda, 6)).unwrap();
    assert_eq!(ids(&sel), ["a", "b", "c", "d", "e", "f"]);
    // Why duplicate_fraction exists: with the plain rank fusion l_dup (DKD ~ 1e-7, which still
    // out-ranks f's DKD of exactly 0, since f's gap ranks last; top ASD) wins the 5th pick.
    let plain = SelectOptions { duplicate_fraction: 0.0, ..opts(Method::Asfda, 6) };
    assert_eq!(ids(&select(&scores, &["lab"], &plain).unwrap())[4], "l_dup");
    // With the budget exhausting the distinct volumes the duplicates come last.
    let sel = select(&scores, &["lab"], &opts(Method::Asfda, 7)).unwrap();
    assert!(ids(&sel)[6].ends_with("_dup"), "{:?}", ids(&sel));
    // Without the labeled volume, l_dup is distinct and the best of all: picked first.
    let sel = select(&scores, &[], &opts(Method::Asfda, 2)).unwrap();
    assert_eq!(ids(&sel)[0], "l_dup");
    assert_ne!(ids(&sel)[1], "lab", "lab is a near-copy of l_dup");
    // Entropy, by definition, does pick the duplicates (they have the highest ASD).
    let sel = select(&scores, &["lab"], &opts(Method::Entropy, 3)).unwrap();
    assert_eq!(ids(&sel), ["l_dup", "a", "a_dup"]);
}

#[test]
fn entropy_is_asd_descending_with_ties_by_id() {
    let mut scores = random_scores(10, 6);
    scores[7].asd = scores[2].asd; // a tie: v002 before v007
    let sel = select(&scores, &["v009"], &opts(Method::Entropy, 9)).unwrap();
    let asd: Vec<f64> = sel.picks.iter().map(|p| p.asd).collect();
    assert!(asd.windows(2).all(|w| w[0] >= w[1]), "{asd:?}");
    let at = |id: &str| ids(&sel).iter().position(|&x| x == id).unwrap();
    assert_eq!(at("v007"), at("v002") + 1);
}

#[test]
fn coreset_picks_the_farthest_volume_from_the_chosen_set_each_time() {
    let scores = random_scores(30, 7);
    for labeled in [vec![], vec!["v000", "v017"]] {
        let sel = select(&scores, &labeled, &opts(Method::Coreset, 10)).unwrap();
        let mut set: Vec<&Score> = scores.iter().filter(|s| labeled.contains(&s.id.as_str())).collect();
        let mut remaining: Vec<&Score> = scores.iter().filter(|s| !labeled.contains(&s.id.as_str())).collect();
        for (k, p) in sel.picks.iter().enumerate() {
            let key = |s: &Score| -> f64 {
                match d_to_set(s, &set) {
                    Some(d) => d,
                    None => {
                        // First round, first pick: distance to the pool's mean embedding.
                        let mut mean = vec![0.0; 8];
                        for r in &remaining {
                            mean.iter_mut().zip(unit(&r.embedding)).for_each(|(m, x)| *m += x);
                        }
                        let n = mean.iter().map(|x: &f64| x * x).sum::<f64>().sqrt();
                        1.0 - unit(&s.embedding).iter().zip(&mean).map(|(a, b)| a * b / n).sum::<f64>()
                    }
                }
            };
            let best = remaining.iter().map(|s| key(s)).fold(f64::MIN, f64::max);
            let chosen = key(&scores[p.index]);
            assert!((chosen - best).abs() < 1e-12, "pick {k}: {chosen} < farthest {best}");
            remaining.retain(|s| s.id != p.id);
            set.push(&scores[p.index]);
        }
    }
}

#[test]
fn dkd_maximises_gap_rank_times_diversity_each_time() {
    let scores = random_scores(20, 8);
    let sel = select(&scores, &["v002"], &opts(Method::Dkd, 8)).unwrap();
    let mut set = vec![&scores[2]];
    let mut remaining: Vec<&Score> = scores.iter().filter(|s| s.id != "v002").collect();
    for p in &sel.picks {
        let ranks = rank01(&remaining.iter().map(|s| s.gap_kl).collect::<Vec<_>>());
        let best = remaining.iter().zip(&ranks).map(|(s, r)| r * d_to_set(s, &set).unwrap()).fold(f64::MIN, f64::max);
        assert!((p.dkd - best).abs() < 1e-12, "{} vs {best}", p.dkd);
        remaining.retain(|s| s.id != p.id);
        set.push(&scores[p.index]);
    }
}

#[test]
fn foreground_random_prefers_foreground_and_never_picks_empty_volumes_first() {
    let mut scores = random_scores(12, 9);
    let empty = ["v001", "v004", "v005", "v011"];
    for s in scores.iter_mut() {
        if empty.contains(&s.id.as_str()) {
            s.foreground_fraction = 0.0;
        }
    }
    scores[0].foreground_fraction = 0.9; // heavy
    for k in [2, 3, 6, 7, 8, 9, 10] {
        scores[k].foreground_fraction = 0.01;
    }
    let mut heavy_first = 0;
    for seed in 0..200 {
        let o = SelectOptions { seed, ..opts(Method::ForegroundRandom, 8) };
        let sel = select(&scores, &[], &o).unwrap();
        assert!(ids(&sel).iter().all(|id| !empty.contains(id)), "seed {seed}: {:?}", ids(&sel));
        heavy_first += usize::from(sel.picks[0].id == "v000");
        // Beyond the 8 volumes with foreground, the empty ones follow.
        let all = select(&scores, &[], &SelectOptions { seed, ..opts(Method::ForegroundRandom, 12) }).unwrap();
        assert!(ids(&all)[8..].iter().all(|id| empty.contains(id)));
    }
    // P(heavy first) = 0.9 / 0.97 = 0.93; uniform would be 1/8.
    assert!(heavy_first > 160, "{heavy_first}");
}

#[test]
fn rounds_exclude_labeled_volumes_and_count_them_for_diversity() {
    // Three clusters; round 2 has labeled one volume of cluster A, so ASFDA/core-set move away
    // from A even though A holds the highest scores.
    let cluster = |k: usize, eps: f64| {
        let mut e = axis(k);
        e[(k + 1) % 8] = eps;
        e
    };
    let scores = vec![
        score("a1", &cluster(0, 0.00), 9.0, 0.9, 0.9, 0.1),
        score("a2", &cluster(0, 0.01), 8.0, 0.8, 0.9, 0.1),
        score("a3", &cluster(0, 0.02), 7.0, 0.7, 0.9, 0.1),
        score("b1", &cluster(3, 0.00), 3.0, 0.5, 0.9, 0.1),
        score("b2", &cluster(3, 0.01), 2.0, 0.4, 0.9, 0.1),
        score("c1", &cluster(5, 0.00), 1.0, 0.3, 0.9, 0.1),
    ];
    let round1 = select(&scores, &[], &opts(Method::Asfda, 1)).unwrap();
    assert_eq!(ids(&round1), ["a1"]);
    let round2 = select(&scores, &["a1"], &opts(Method::Asfda, 2)).unwrap();
    assert!(ids(&round2).iter().all(|id| !id.starts_with('a')), "{:?}", ids(&round2));
    assert!((round2.picks[0].diversity - dist(&scores[3], &scores[0])).abs() < 1e-9);
    let core = select(&scores, &["a1"], &opts(Method::Coreset, 1)).unwrap();
    assert!(!ids(&core)[0].starts_with('a'));
    // A labeled volume is never picked nor reliable.
    for method in Method::ALL {
        let sel = select(&scores, &["a1", "b1"], &opts(method, 4)).unwrap();
        assert!(ids(&sel)
            .iter()
            .chain(sel.reliable.iter().map(|r| r.as_str()).collect::<Vec<_>>().iter())
            .all(|id| *id != "a1" && *id != "b1"));
    }
}

#[test]
fn reliable_set_follows_its_definition() {
    let scores = random_scores(30, 11);
    let labeled = ["v003", "v012"];
    for (qc, qd, method) in [(0.5, 0.5, Method::Asfda), (0.25, 0.8, Method::Random), (0.0, 1.0, Method::Coreset)] {
        let o = SelectOptions { reliable_confidence_quantile: qc, reliable_distance_quantile: qd, ..opts(method, 6) };
        let sel = select(&scores, &labeled, &o).unwrap();
        let taken: Vec<&Score> =
            scores.iter().filter(|s| labeled.contains(&s.id.as_str()) || ids(&sel).contains(&s.id.as_str())).collect();
        let unpicked: Vec<&Score> = scores.iter().filter(|s| !taken.iter().any(|t| t.id == s.id)).collect();
        let conf: Vec<f64> = unpicked.iter().map(|s| s.confidence).collect();
        let d: Vec<f64> = unpicked.iter().map(|s| d_to_set(s, &taken).unwrap()).collect();
        let (cq, dq) = (quantile(&conf, qc), quantile(&d, qd));
        let mut expected: Vec<String> = unpicked
            .iter()
            .enumerate()
            .filter(|(k, _)| conf[*k] >= cq && d[*k] <= dq)
            .map(|(_, s)| s.id.clone())
            .collect();
        expected.sort();
        assert_eq!(sel.reliable, expected, "{qc} {qd}");
        if qc == 0.0 && qd == 1.0 {
            assert_eq!(sel.reliable.len(), 30 - 2 - 6, "no condition: every unpicked pool volume");
        } else {
            assert!(!sel.reliable.is_empty() && sel.reliable.len() < unpicked.len());
        }
    }
    // The whole pool picked: nothing left to be reliable.
    let sel = select(&scores, &labeled, &opts(Method::Entropy, 28)).unwrap();
    assert!(sel.reliable.is_empty());
}

#[test]
fn reliable_set_prefers_confident_volumes_near_the_labeled_ones() {
    let near = |k: usize, eps: f64| {
        let mut e = axis(k);
        e[k + 1] = eps;
        e
    };
    let scores = vec![
        score("lab", &axis(0), 1.0, 0.1, 0.9, 0.1),
        score("near_sure", &near(0, 0.05), 1.0, 0.1, 0.95, 0.1),
        score("near_unsure", &near(0, 0.06), 1.0, 0.1, 0.40, 0.1),
        score("far_sure", &axis(4), 1.0, 0.1, 0.96, 0.1),
        score("far_unsure", &axis(5), 1.0, 0.1, 0.30, 0.1),
        score("pick_me", &axis(2), 9.0, 0.9, 0.50, 0.1),
    ];
    let sel = select(&scores, &["lab"], &opts(Method::Asfda, 1)).unwrap();
    assert_eq!(ids(&sel), ["pick_me"]);
    assert_eq!(sel.reliable, ["near_sure"]);
}

#[test]
fn json_round_trips_and_rejects_bad_versions() {
    let scores = random_scores(10, 12);
    let sel = select(&scores, &["v001"], &SelectOptions { gap: GapKind::Anchor, ..opts(Method::Asfda, 4) }).unwrap();
    let json = sel.to_json();
    assert!(json.contains(r#""method":"asfda""#) && json.contains(r#""gap":"anchor""#), "{json}");
    assert!(json.contains(&format!(r#""format_version":{SELECTION_FORMAT_VERSION}"#)));
    assert_eq!(Selection::from_json(&json).unwrap(), sel);
    let future = json.replacen(r#""format_version":1"#, r#""format_version":99"#, 1);
    assert_eq!(Selection::from_json(&future).unwrap_err().kind(), ErrorKind::Unsupported);
    assert_eq!(Selection::from_json("{").unwrap_err().kind(), ErrorKind::Format);
    let wrong = json.replacen(r#""method":"asfda""#, r#""method":"random""#, 1);
    let e = Selection::from_json(&wrong).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Format);
    assert!(e.message().contains("options.method"), "{}", e.message());
    let fg = select(&scores, &[], &opts(Method::ForegroundRandom, 2)).unwrap().to_json();
    assert!(fg.contains(r#""method":"foreground_random""#));
}

#[test]
fn method_and_gap_names_parse() {
    for (name, m) in [
        ("asfda", Method::Asfda),
        ("random", Method::Random),
        ("foreground_random", Method::ForegroundRandom),
        ("entropy", Method::Entropy),
        ("dkd", Method::Dkd),
        ("coreset", Method::Coreset),
    ] {
        assert_eq!(name.parse::<Method>().unwrap(), m);
        assert_eq!(m.to_string(), name);
        assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{name}\""));
    }
    let e = "kcenter".parse::<Method>().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message().contains("kcenter") && e.message().contains("coreset"));
    assert_eq!("anchor".parse::<GapKind>().unwrap(), GapKind::Anchor);
    assert_eq!("kl".parse::<GapKind>().unwrap(), GapKind::Kl);
    assert!("l2".parse::<GapKind>().is_err());
    assert_eq!(SelectOptions::default().gap, GapKind::Kl);
}

#[test]
fn pool_and_budget_errors() {
    let scores = random_scores(5, 13);
    let (k, m) = kind_of(select(&[], &[], &opts(Method::Asfda, 1)));
    assert_eq!(k, ErrorKind::InvalidArgument);
    assert!(m.contains("pool is empty"), "{m}");
    let all = ["v000", "v001", "v002", "v003", "v004"];
    let (k, m) = kind_of(select(&scores, &all, &opts(Method::Random, 1)));
    assert_eq!(k, ErrorKind::InvalidArgument);
    assert!(m.contains("pool is empty") && m.contains("5 of them labeled"), "{m}");
    let (k, m) = kind_of(select(&scores, &[], &opts(Method::Asfda, 0)));
    assert_eq!(k, ErrorKind::InvalidArgument);
    assert!(m.contains("budget is 0"), "{m}");
    let (k, m) = kind_of(select(&scores, &["v002"], &opts(Method::Asfda, 5)));
    assert_eq!(k, ErrorKind::InvalidArgument);
    assert!(m.contains("budget 5 exceeds the pool of 4"), "{m}");
    assert_eq!(select(&scores, &["v002"], &opts(Method::Asfda, 4)).unwrap().picks.len(), 4);
}

#[test]
fn id_errors() {
    let mut scores = random_scores(5, 14);
    let (k, m) = kind_of(select(&scores, &["nope"], &opts(Method::Asfda, 1)));
    assert_eq!(k, ErrorKind::InvalidArgument);
    assert!(m.contains("'nope' is not among the scores"), "{m}");
    let (k, m) = kind_of(select(&scores, &["v001", "v001"], &opts(Method::Asfda, 1)));
    assert_eq!(k, ErrorKind::InvalidArgument);
    assert!(m.contains("'v001' is listed twice"), "{m}");
    scores[3].id = "v001".into();
    let (k, m) = kind_of(select(&scores, &[], &opts(Method::Asfda, 1)));
    assert_eq!(k, ErrorKind::InvalidArgument);
    assert!(m.contains("'v001' appears twice"), "{m}");
}

#[test]
fn embedding_errors_name_the_volumes() {
    let base = random_scores(5, 15);
    let mut scores = base.clone();
    scores[3].embedding.push(0.0);
    for method in Method::ALL {
        let (k, m) = kind_of(select(&scores, &[], &opts(method, 1)));
        assert_eq!(k, ErrorKind::InvalidData);
        assert!(m.contains("'v000' has 8") && m.contains("'v003' has 9"), "{m}");
    }
    // A labeled volume's embedding counts too.
    let (k, _) = kind_of(select(&scores, &["v003"], &opts(Method::Asfda, 1)));
    assert_eq!(k, ErrorKind::InvalidData);
    let mut scores = base.clone();
    scores[2].embedding[5] = f32::NAN;
    let (k, m) = kind_of(select(&scores, &["v002"], &opts(Method::Random, 1)));
    assert_eq!(k, ErrorKind::InvalidData);
    assert!(m.contains("'v002': embedding[5] is NaN"), "{m}");
    let mut scores = base.clone();
    scores[1].embedding.iter_mut().for_each(|x| *x = 0.0);
    let (k, m) = kind_of(select(&scores, &[], &opts(Method::Coreset, 1)));
    assert_eq!(k, ErrorKind::InvalidData);
    assert!(m.contains("'v001' has an all-zero embedding"), "{m}");
}

#[test]
fn non_finite_score_fields_name_the_volume_and_field() {
    let base = random_scores(6, 16);
    type Set = fn(&mut Score, f64);
    let cases: [(&str, Set, Method); 6] = [
        ("asd", |s, v| s.asd = v, Method::Entropy),
        ("confidence", |s, v| s.confidence = v, Method::Random),
        ("gap_kl", |s, v| s.gap_kl = v, Method::Asfda),
        ("gap_anchor", |s, v| s.gap_anchor = v, Method::Dkd),
        ("foreground_fraction", |s, v| s.foreground_fraction = v, Method::ForegroundRandom),
        ("asd", |s, v| s.asd = v, Method::Coreset),
    ];
    for (field, set, method) in cases {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut scores = base.clone();
            set(&mut scores[4], bad);
            let gap = if field == "gap_anchor" { GapKind::Anchor } else { GapKind::Kl };
            let (k, m) = kind_of(select(&scores, &[], &SelectOptions { gap, ..opts(method, 2) }));
            assert_eq!(k, ErrorKind::InvalidData, "{field} {bad}");
            assert!(m.contains(&format!("'v004': {field} is")), "{m}");
        }
    }
    // A field the method and the components never read is not checked; the unused gap kind neither.
    let mut scores = base.clone();
    scores[4].foreground_fraction = f64::NAN;
    scores[4].gap_anchor = f64::NAN;
    assert!(select(&scores, &[], &opts(Method::Asfda, 2)).is_ok());
    // Nor the score fields of a labeled volume (only its embedding is used).
    let mut scores = base.clone();
    scores[4].asd = f64::NAN;
    assert!(select(&scores, &["v004"], &opts(Method::Asfda, 2)).is_ok());
    // A negative foreground fraction cannot be a sampling weight.
    let mut scores = base;
    scores[1].foreground_fraction = -0.1;
    let (k, m) = kind_of(select(&scores, &[], &opts(Method::ForegroundRandom, 2)));
    assert_eq!(k, ErrorKind::InvalidData);
    assert!(m.contains("'v001': foreground_fraction is -0.1"), "{m}");
}

#[test]
fn option_errors_name_the_option() {
    let scores = random_scores(5, 17);
    let bad = [
        (SelectOptions { w_dkd: -1.0, ..opts(Method::Asfda, 1) }, "w_dkd is -1"),
        (SelectOptions { w_asd: f64::NAN, ..opts(Method::Asfda, 1) }, "w_asd is NaN"),
        (SelectOptions { w_dkd: f64::INFINITY, ..opts(Method::Asfda, 1) }, "w_dkd is inf"),
        (SelectOptions { w_dkd: 0.0, w_asd: 0.0, ..opts(Method::Asfda, 1) }, "both 0"),
        (SelectOptions { duplicate_fraction: 2.0, ..opts(Method::Asfda, 1) }, "duplicate_fraction is 2"),
        (
            SelectOptions { reliable_confidence_quantile: 1.5, ..opts(Method::Asfda, 1) },
            "reliable_confidence_quantile is 1.5",
        ),
        (
            SelectOptions { reliable_distance_quantile: -0.1, ..opts(Method::Asfda, 1) },
            "reliable_distance_quantile is -0.1",
        ),
        (
            SelectOptions { reliable_distance_quantile: f64::NAN, ..opts(Method::Asfda, 1) },
            "reliable_distance_quantile is NaN",
        ),
    ];
    for (o, needle) in bad {
        assert!(o.validate().is_err());
        let (k, m) = kind_of(select(&scores, &[], &o));
        assert_eq!(k, ErrorKind::InvalidArgument);
        assert!(m.contains(needle), "{m} lacks {needle}");
    }
    assert!(SelectOptions::default().validate().is_ok());
}
