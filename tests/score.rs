//! Per-volume scores (src/score.rs): entropy, foreground dilation, thresholds, ASD, knowledge gap,
//! embedding, JSON, validation, and slab streaming. Pure Rust, no model or ONNX Runtime needed.

use asfda::bundle::SourceKnowledge;
use asfda::score::{
    entropy_map, feature_gap, first_peak_threshold, foreground_region, otsu_threshold, score_volume, EmbeddingKind,
    Score, ScoreOptions, ThresholdMethod, VolumeStats, SCORE_FORMAT_VERSION,
};
use asfda::ErrorKind;
use ndarray::{arr2, s, Array2, Array4, ArrayD, Axis, IxDyn};

/// xorshift64*: deterministic test data without a rand dependency.
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32) / (1u64 << 24) as f32
    }
}

fn source(width: usize) -> SourceKnowledge {
    SourceKnowledge {
        mean: vec![0.5; width],
        var: vec![1.0; width],
        anchors: ArrayD::from_shape_fn(IxDyn(&[2, width]), |i| if i[1] == i[0] { 1.0 } else { 0.0 }),
    }
}

fn features() -> Array2<f32> {
    arr2(&[[1.0, 0.5, 0.25, 2.0], [0.5, 1.0, 0.0, 1.0], [0.0, 0.75, 0.5, 1.5]])
}

/// Probabilities [C, Z, Y, X] with `p` (a distribution over C) at every voxel.
fn constant(shape: [usize; 3], p: &[f32]) -> Array4<f32> {
    Array4::from_shape_fn((p.len(), shape[0], shape[1], shape[2]), |(c, ..)| p[c])
}

fn set_voxel(probs: &mut Array4<f32>, at: [usize; 3], p: &[f32]) {
    for (c, &v) in p.iter().enumerate() {
        probs[[c, at[0], at[1], at[2]]] = v;
    }
}

/// Normalised entropy in f64, for hand computations.
fn entropy(p: &[f64]) -> f64 {
    -p.iter().filter(|&&v| v > 0.0).map(|&v| v * v.ln()).sum::<f64>() / (p.len() as f64).ln()
}

fn options(threshold: ThresholdMethod, dilation: usize) -> ScoreOptions {
    ScoreOptions { threshold, foreground_dilation: dilation, ..ScoreOptions::default() }
}

fn score(probs: &Array4<f32>, options: &ScoreOptions) -> Score {
    score_volume("v", probs.view(), features().view(), &source(4), options).unwrap_or_else(|e| panic!("{e}"))
}

/// Random soft probabilities with a few foreground blobs.
fn random_volume(rng: &mut Rng, classes: usize, shape: [usize; 3]) -> Array4<f32> {
    let mut probs = Array4::zeros((classes, shape[0], shape[1], shape[2]));
    for z in 0..shape[0] {
        for y in 0..shape[1] {
            for x in 0..shape[2] {
                let blob = (z * 7 + y * 3 + x) % 11 < 3;
                let mut p: Vec<f32> = (0..classes).map(|_| rng.next_f32() * 0.4).collect();
                let winner = if blob { 1 + (z + x) % (classes - 1) } else { 0 };
                p[winner] += 1.0;
                let sum: f32 = p.iter().sum();
                for (c, v) in p.iter().enumerate() {
                    probs[[c, z, y, x]] = v / sum;
                }
            }
        }
    }
    probs
}

#[test]
fn uniform_probabilities_have_entropy_one() {
    let h = entropy_map(constant([4, 5, 6], &[0.25; 4]).view());
    assert!(h.iter().all(|&v| (v - 1.0).abs() < 1e-6), "{h:?}");

    // Exactly uniform: argmax ties go to background, so nothing is foreground.
    let s = score(&constant([4, 5, 6], &[0.25; 4]), &options(ThresholdMethod::None, 2));
    assert_eq!((s.foreground_voxels, s.asd), (0, 0.0));

    // A hair towards class 1 everywhere: all foreground, H = 1 - O(1e-10).
    let d = 1e-5;
    let s = score(&constant([4, 5, 6], &[0.25 - d, 0.25 + d, 0.25, 0.25]), &options(ThresholdMethod::None, 2));
    assert_eq!(s.foreground_voxels, 120);
    assert_eq!(s.foreground_fraction, 1.0);
    assert!((s.asd - 1.0).abs() < 1e-6, "asd {}", s.asd);
    assert!((s.confidence - (0.25 + d) as f64).abs() < 1e-6);
    assert_eq!(s.entropy_histogram[99], 120);
}

#[test]
fn one_hot_probabilities_have_entropy_zero_and_full_confidence() {
    let (classes, shape) = (3, [6, 7, 8]);
    let probs = Array4::from_shape_fn((classes, shape[0], shape[1], shape[2]), |(c, z, y, x)| {
        f32::from(u8::from(c == (z * 5 + y * 3 + x) % classes))
    });
    assert!(entropy_map(probs.view()).iter().all(|&v| v == 0.0));
    for threshold in [ThresholdMethod::None, ThresholdMethod::FirstPeak, ThresholdMethod::Otsu] {
        let s = score(&probs, &options(threshold, 1));
        assert_eq!(s.asd, 0.0, "{threshold:?}");
        assert_eq!(s.confidence, 1.0, "{threshold:?}");
        assert_eq!(s.entropy_histogram[0] as u64, s.foreground_voxels);
        assert!(s.foreground_voxels > 0);
    }
}

#[test]
fn background_only_prediction_scores_zero_without_nan() {
    for p in [[1.0, 0.0, 0.0], [0.7, 0.15, 0.15]] {
        for threshold in [ThresholdMethod::None, ThresholdMethod::FirstPeak, ThresholdMethod::Otsu] {
            let mut opts = options(threshold, 2);
            for balanced in [false, true] {
                opts.class_balanced = balanced;
                let s = score(&constant([5, 5, 5], &p), &opts);
                assert_eq!(s.foreground_fraction, 0.0);
                assert_eq!(s.foreground_voxels, 0);
                assert_eq!(s.asd, 0.0);
                assert_eq!(s.confidence, 0.0);
                assert!(s.asd_threshold.is_finite() && s.gap_kl.is_finite() && s.gap_anchor.is_finite());
                assert!(s.entropy_histogram.iter().all(|&c| c == 0));
            }
        }
    }
}

#[test]
fn dilation_grows_a_voxel_to_a_cube_clipped_at_borders() {
    let n = 11;
    for r in 0..=3usize {
        for (at, expected) in [
            ([5, 5, 5], (2 * r + 1).pow(3)),
            ([0, 0, 0], (r + 1).pow(3)),
            ([0, 5, 10], (r + 1) * (2 * r + 1) * (r + 1)),
        ] {
            let mut probs = constant([n, n, n], &[1.0, 0.0]);
            set_voxel(&mut probs, at, &[0.2, 0.8]);
            let region = foreground_region(probs.view(), r).unwrap();
            for ((z, y, x), &inside) in region.indexed_iter() {
                let near = z.abs_diff(at[0]) <= r && y.abs_diff(at[1]) <= r && x.abs_diff(at[2]) <= r;
                assert_eq!(inside, near, "r {r}, seed {at:?}, voxel ({z}, {y}, {x})");
            }
            let s = score(&probs, &options(ThresholdMethod::None, r));
            assert_eq!(s.foreground_voxels, expected as u64, "r {r}, seed {at:?}");
            assert_eq!(s.foreground_fraction, 1.0 / (n * n * n) as f64);
        }
    }
}

#[test]
fn first_peak_threshold_is_the_foot_of_the_first_peak() {
    // A confident spike at bins 0..4, nothing up to bin 29, a peak over bins 30..=50 (top at 40).
    let mut hist = vec![0u64; 100];
    hist[..5].copy_from_slice(&[1000, 600, 200, 50, 10]);
    for (j, count) in hist.iter_mut().enumerate().skip(30).take(21) {
        *count = 10 * (11 - j.abs_diff(40) as u64);
    }
    assert_eq!(first_peak_threshold(&hist, 1), 0.30);
    // Smoothing over 5 bins starts the rise two bins earlier.
    assert_eq!(first_peak_threshold(&hist, 5), 0.28);

    // A smaller peak before a bigger one: the first one wins; its valley is at bin 24.
    let mut two = hist.clone();
    two[25..=27].copy_from_slice(&[5, 8, 5]);
    assert_eq!(first_peak_threshold(&two, 1), 0.25);

    // A shallow valley (not empty) between the spike and the peak: the valley bottom is bin 12.
    let mut shallow = vec![0u64; 100];
    for (j, v) in shallow.iter_mut().enumerate() {
        *v = if j <= 12 { 200 - 10 * j as u64 } else { (75 + 10 * (j as u64 - 12)).min(300) };
    }
    assert_eq!(first_peak_threshold(&shallow, 1), 0.13);

    // Only decreasing (no peak after the spike), or empty: no threshold.
    assert_eq!(first_peak_threshold(&hist[..10], 1), 0.0);
    assert_eq!(first_peak_threshold(&[0; 100], 5), 0.0);
    // A histogram rising to its last bin peaks there; its foot is bin 0.
    let rising: Vec<u64> = (0..10).collect();
    assert_eq!(first_peak_threshold(&rising, 1), 0.1);
    let mut late = vec![0u64; 10];
    late[9] = 4;
    assert_eq!(first_peak_threshold(&late, 1), 0.9);
}

#[test]
fn first_peak_drives_asd() {
    // 20 foreground voxels with H in bin 0 (confident), 10 with H in the 0.5 region (hard).
    let (classes, shape) = (2, [1, 1, 30]);
    let mut probs = constant(shape, &[0.0, 1.0]);
    let hard = [0.11f64, 0.89]; // H = 0.4999...
    for x in 20..30 {
        set_voxel(&mut probs, [0, 0, x], &[hard[0] as f32, hard[1] as f32]);
    }
    let opts = ScoreOptions { peak_smoothing: 1, ..options(ThresholdMethod::FirstPeak, 0) };
    let s = score(&probs, &opts);
    let h = entropy(&hard);
    let bin = (h * 100.0).ceil() as usize - 1;
    assert_eq!(s.entropy_histogram[0], 20);
    assert_eq!(s.entropy_histogram[bin], 10);
    assert_eq!(s.asd_threshold, bin as f64 / 100.0);
    assert!((s.asd - h).abs() < 1e-6, "asd {} expected {h}", s.asd);
    // Without a threshold the confident voxels pull the mean down.
    let plain = score(&probs, &options(ThresholdMethod::None, 0));
    assert!((plain.asd - h / 3.0).abs() < 1e-6);
    assert_eq!(classes, probs.len_of(Axis(0)));

    // Everything in bin 0 (no peak, tau = 0): "H > tau" still leaves out the exactly confident
    // voxels, so ASD is the mean over the 10 slightly uncertain ones.
    let slight = [0.0005f64, 0.9995];
    for x in 20..30 {
        set_voxel(&mut probs, [0, 0, x], &[slight[0] as f32, slight[1] as f32]);
    }
    let h = entropy(&slight);
    assert!(h > 0.0 && h < 0.01);
    for threshold in [ThresholdMethod::FirstPeak, ThresholdMethod::Otsu] {
        let s = score(&probs, &ScoreOptions { threshold, ..opts.clone() });
        assert_eq!(s.asd_threshold, 0.0);
        assert!((s.asd - h).abs() < 1e-6, "{threshold:?}: asd {} expected {h}", s.asd);
    }
    let plain = score(&probs, &options(ThresholdMethod::None, 0));
    assert!((plain.asd - h / 3.0).abs() < 1e-6);
}

#[test]
fn otsu_splits_a_bimodal_histogram_between_the_modes() {
    let mut hist = vec![0u64; 100];
    for (j, count) in hist.iter_mut().enumerate() {
        if (10..=20).contains(&j) {
            *count = 50 + j as u64;
        } else if (70..=80).contains(&j) {
            *count = 90 - j as u64 / 2;
        }
    }
    let tau = otsu_threshold(&hist);
    assert!((0.21..=0.70).contains(&tau), "tau {tau}");
    // Two equal spikes: the first split with both classes non-empty and maximal variance.
    assert_eq!(otsu_threshold(&[5, 0, 0, 5]), 0.25);
    // Unequal, touching modes: the classic weighted split.
    assert_eq!(otsu_threshold(&[10, 10, 0, 0, 1, 1, 1, 1]), 0.25);
    assert_eq!(otsu_threshold(&[0, 7, 0, 0]), 0.0);
}

#[test]
fn noise_raises_asd() {
    let n = 16;
    let mut clean = constant([n, n, n], &[0.9, 0.05, 0.05]);
    for z in 0..n {
        for y in 0..n {
            for x in 0..n {
                let in_sphere = (z as f32 - 5.0).powi(2) + (y as f32 - 5.0).powi(2) + (x as f32 - 6.0).powi(2) < 12.0;
                let in_box = (10..14).contains(&z) && (9..13).contains(&y) && (8..15).contains(&x);
                if in_sphere {
                    set_voxel(&mut clean, [z, y, x], &[0.05, 0.9, 0.05]);
                } else if in_box {
                    set_voxel(&mut clean, [z, y, x], &[0.04, 0.04, 0.92]);
                }
            }
        }
    }
    let mut rng = Rng(99);
    let mut noisy = clean.clone();
    for mut voxel in noisy.lanes_mut(Axis(0)) {
        voxel.iter_mut().for_each(|p| *p += 0.15 * rng.next_f32());
        let sum = voxel.sum();
        voxel.iter_mut().for_each(|p| *p /= sum);
    }
    for threshold in [ThresholdMethod::None, ThresholdMethod::FirstPeak, ThresholdMethod::Otsu] {
        for balanced in [false, true] {
            let opts = ScoreOptions { class_balanced: balanced, ..options(threshold, 2) };
            let (a, b) = (score(&clean, &opts), score(&noisy, &opts));
            assert!(b.asd > a.asd, "{threshold:?} balanced {balanced}: clean {} noisy {}", a.asd, b.asd);
            assert!(b.confidence < a.confidence);
        }
    }
}

#[test]
fn class_balanced_asd_weights_classes_equally() {
    let mut probs = constant([10, 10, 10], &[1.0, 0.0, 0.0]);
    let (p1, p2) = ([0.1f64, 0.8, 0.1], [0.2f64, 0.2, 0.6]);
    let f = |p: &[f64; 3]| p.map(|v| v as f32);
    for z in 1..3 {
        for y in 1..3 {
            for x in 1..3 {
                set_voxel(&mut probs, [z, y, x], &f(&p1));
            }
        }
    }
    set_voxel(&mut probs, [7, 7, 7], &f(&p2));
    let (h1, h2) = (entropy(&p1), entropy(&p2));
    let mut opts = options(ThresholdMethod::None, 0);
    let plain = score(&probs, &opts);
    opts.class_balanced = true;
    let balanced = score(&probs, &opts);
    assert!((plain.asd - (8.0 * h1 + h2) / 9.0).abs() < 1e-6, "plain {}", plain.asd);
    assert!((balanced.asd - (h1 + h2) / 2.0).abs() < 1e-6, "balanced {}", balanced.asd);
    assert!((plain.asd - balanced.asd).abs() > 0.01);
    // Confidence stays the plain voxel mean.
    assert!((plain.confidence - (8.0 * 0.8 + 0.6) / 9.0).abs() < 1e-6);
    assert_eq!(plain.confidence, balanced.confidence);
}

#[test]
fn kl_gap_is_zero_for_identical_stats_and_matches_hand_computation() {
    let opts = ScoreOptions::default();
    // Two tiles m - s, m + s: mean m, population variance s^2.
    let identical = SourceKnowledge {
        mean: vec![1.5, -2.0],
        var: vec![0.25, 4.0],
        anchors: ArrayD::from_shape_vec(IxDyn(&[1, 2]), vec![1.0, 0.0]).unwrap(),
    };
    let tiles = arr2(&[[1.0f32, -4.0], [2.0, 0.0]]);
    let (_, kl, _) = feature_gap(tiles.view(), &identical, &opts).unwrap();
    assert!(kl.abs() < 1e-12, "kl {kl}");

    // Tiles [[1, 2], [3, 2]]: mean (2, 2), variance (1, 0 -> floored to 0.01 * 2).
    // Source mean (0, 1), variance (4, 2).
    let source = SourceKnowledge {
        mean: vec![0.0, 1.0],
        var: vec![4.0, 2.0],
        anchors: ArrayD::from_shape_vec(IxDyn(&[1, 2]), vec![1.0, 0.0]).unwrap(),
    };
    let (_, kl, _) = feature_gap(arr2(&[[1.0f32, 2.0], [3.0, 2.0]]).view(), &source, &opts).unwrap();
    let ch1 = 0.5 * ((4.0f64 / 1.0).ln() + (1.0 + 4.0) / 4.0 - 1.0);
    let ch2 = 0.5 * ((2.0f64 / 0.02).ln() + (0.02 + 1.0) / 2.0 - 1.0);
    assert!((kl - (ch1 + ch2) / 2.0).abs() < 1e-12, "kl {kl}, expected {}", (ch1 + ch2) / 2.0);
    assert!((kl - 1.437_866).abs() < 1e-6);

    // One tile: the variance is all floor, and the floor is an option.
    let one = arr2(&[[2.0f32, 2.0]]);
    let floor = ScoreOptions { variance_floor: 0.1, ..opts };
    let (_, kl, _) = feature_gap(one.view(), &source, &floor).unwrap();
    let ch1 = 0.5 * ((4.0f64 / 0.4).ln() + (0.4 + 4.0) / 4.0 - 1.0);
    let ch2 = 0.5 * ((2.0f64 / 0.2).ln() + (0.2 + 1.0) / 2.0 - 1.0);
    assert!((kl - (ch1 + ch2) / 2.0).abs() < 1e-12);
}

#[test]
fn anchor_gap_is_the_squared_distance_to_the_nearest_anchor() {
    // Tiles average to (3, 4): z = (0.6, 0.8).
    let tiles = arr2(&[[3.0f32, 0.0], [3.0, 8.0]]);
    let anchors = [[1.0f32, 0.0], [-1.0, 0.0], [0.0, 1.0]];
    for first in 0..3 {
        let order: Vec<f32> = (0..3).flat_map(|k| anchors[(first + k) % 3]).collect();
        let source = SourceKnowledge {
            mean: vec![3.0, 4.0],
            var: vec![1.0, 1.0],
            anchors: ArrayD::from_shape_vec(IxDyn(&[3, 2]), order).unwrap(),
        };
        let (z, _, gap) = feature_gap(tiles.view(), &source, &raw()).unwrap();
        assert_eq!(z, vec![0.6, 0.8]);
        // (0.6, 0.8) to (1, 0): 0.8; to (-1, 0): 3.2; to (0, 1): 0.4.
        assert!((gap - 0.4).abs() < 1e-7, "gap {gap}");
    }
}

fn raw() -> ScoreOptions {
    ScoreOptions { embedding: EmbeddingKind::Raw, ..ScoreOptions::default() }
}

#[test]
fn standardised_embedding_is_the_direction_away_from_the_source() {
    let mut rng = Rng(5);
    let tiles = Array2::from_shape_fn((6, 8), |_| rng.next_f32() * 2.0);
    let mut src = source(8);
    src.var = (0..8).map(|f| 0.25 + f as f32).collect();
    let (z, _, gap_std) = feature_gap(tiles.view(), &src, &ScoreOptions::default()).unwrap();
    let mean = tiles.mean_axis(Axis(0)).unwrap();
    let d: Vec<f64> = (0..8).map(|f| (f64::from(mean[f]) - 0.5) / f64::from(src.var[f]).sqrt()).collect();
    let norm = d.iter().map(|v| v * v).sum::<f64>().sqrt();
    for (a, b) in z.iter().zip(&d) {
        assert!((f64::from(*a) - b / norm).abs() < 1e-6, "{z:?} vs {d:?}");
    }
    // The anchor gap lives in the anchors' (raw) space whatever the embedding kind.
    let (_, _, gap_raw) = feature_gap(tiles.view(), &src, &raw()).unwrap();
    assert_eq!(gap_std, gap_raw);
    // Exactly the source mean has no direction of departure: the raw one is kept.
    let at_source = Array2::from_elem((2, 8), 0.5f32);
    let (z, _, _) = feature_gap(at_source.view(), &src, &ScoreOptions::default()).unwrap();
    assert_eq!(z, feature_gap(at_source.view(), &src, &raw()).unwrap().0);
    // Scores written before the option existed were raw, and read back so.
    let mut value: serde_json::Value = serde_json::to_value(ScoreOptions::default()).unwrap();
    value.as_object_mut().unwrap().remove("embedding");
    let old: ScoreOptions = serde_json::from_value(value).unwrap();
    assert_eq!(old.embedding, EmbeddingKind::Raw);
}

#[test]
fn embedding_has_unit_norm_and_the_mean_direction() {
    let mut rng = Rng(3);
    let tiles = Array2::from_shape_fn((7, 32), |_| rng.next_f32() * 2.0 - 0.5);
    let (z, _, _) = feature_gap(tiles.view(), &source(32), &raw()).unwrap();
    let norm: f64 = z.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-6, "norm {norm}");
    let mean = tiles.mean_axis(Axis(0)).unwrap();
    let m_norm = mean.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
    for (a, b) in z.iter().zip(mean.iter()) {
        assert!((f64::from(*a) - f64::from(*b) / m_norm).abs() < 1e-6);
    }
    // All-zero features cannot be normalised.
    let err = feature_gap(Array2::zeros((2, 32)).view(), &source(32), &raw()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidData);
}

#[test]
fn json_round_trip_is_exact() {
    let mut rng = Rng(11);
    for seed in 0..20 {
        let probs = random_volume(&mut rng, 3 + seed % 3, [6, 7, 5]);
        let tiles = Array2::from_shape_fn((1 + seed % 4, 4), |_| rng.next_f32() * 3.0);
        let threshold = [ThresholdMethod::FirstPeak, ThresholdMethod::Otsu, ThresholdMethod::None][seed % 3];
        let opts = ScoreOptions { class_balanced: seed % 2 == 0, ..options(threshold, seed % 3) };
        let s = score_volume(&format!("case-{seed}"), probs.view(), tiles.view(), &source(4), &opts).unwrap();
        let text = s.to_json();
        assert!(!text.contains('\n'));
        let back = Score::from_json(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, s, "{text}");
        assert_eq!(back.to_json(), text);
    }
}

#[test]
fn unknown_format_version_and_malformed_json_are_refused() {
    let s = score(&random_volume(&mut Rng(5), 3, [4, 4, 4]), &ScoreOptions::default());
    let text = s.to_json();
    let needle = format!("\"format_version\":{SCORE_FORMAT_VERSION}");
    assert!(text.contains(&needle));
    let future = text.replace(&needle, "\"format_version\":2");
    let err = Score::from_json(&future).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.message().contains('2'), "{}", err.message());

    for bad in [
        "{not json".to_string(),
        "{}".to_string(),
        text.replace(&needle, "\"format_version\":\"one\""),
        text.replace("\"asd\":", "\"asd_renamed\":"),
        text.replace("\"entropy_histogram\":[", "\"entropy_histogram\":[1,"),
    ] {
        let err = Score::from_json(&bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Format, "{bad}: {}", err.message());
    }
}

#[test]
fn nan_and_invalid_inputs_are_refused_by_name() {
    let good = random_volume(&mut Rng(8), 3, [4, 5, 6]);
    let opts = ScoreOptions::default();
    let run = |probs: &Array4<f32>, tiles: &Array2<f32>| {
        score_volume("v", probs.view(), tiles.view(), &source(4), &opts).unwrap_err()
    };

    let mut nan = good.clone();
    nan[[2, 3, 1, 4]] = f32::NAN;
    let err = run(&nan, &features());
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    assert!(err.message().contains("probabilities") && err.message().contains("NaN"), "{}", err.message());
    assert!(err.message().contains("class 2") && err.message().contains("(3, 1, 4)"), "{}", err.message());

    let mut inf = good.clone();
    inf[[0, 0, 0, 0]] = f32::INFINITY;
    assert_eq!(run(&inf, &features()).kind(), ErrorKind::InvalidData);

    let logits = good.mapv(|p| p * 6.0 - 2.0);
    let err = run(&logits, &features());
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    assert!(err.message().contains("logits"), "{}", err.message());

    let unnormalised = good.mapv(|p| p * 0.5);
    let err = run(&unnormalised, &features());
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    assert!(err.message().contains("sum"), "{}", err.message());

    let mut bad_features = features();
    bad_features[[1, 2]] = f32::NAN;
    let err = run(&good, &bad_features);
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    assert!(err.message().contains("tile features") && err.message().contains("tile 1, channel 2"));

    let mut bad_source = source(4);
    bad_source.var[3] = f32::NAN;
    let err = score_volume("v", good.view(), features().view(), &bad_source, &opts).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    assert!(err.message().contains("source"), "{}", err.message());
}

#[test]
fn mismatched_widths_and_bad_shapes_are_refused() {
    let probs = random_volume(&mut Rng(9), 3, [3, 3, 3]);
    let opts = ScoreOptions::default();
    let err = score_volume("v", probs.view(), features().view(), &source(6), &opts).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message().contains('4') && err.message().contains('6'), "{}", err.message());

    let mut anchors_off = source(4);
    anchors_off.anchors = ArrayD::zeros(IxDyn(&[2, 5]));
    let err = score_volume("v", probs.view(), features().view(), &anchors_off, &opts).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message().contains('4') && err.message().contains('5'), "{}", err.message());

    let one_class = constant([3, 3, 3], &[1.0]);
    let err = score_volume("v", one_class.view(), features().view(), &source(4), &opts).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);

    let no_tiles = Array2::<f32>::zeros((0, 4));
    let err = score_volume("v", probs.view(), no_tiles.view(), &source(4), &opts).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);

    let err = score_volume("", probs.view(), features().view(), &source(4), &opts).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);

    for bad in [
        ScoreOptions { histogram_bins: 1, ..opts.clone() },
        ScoreOptions { peak_smoothing: 4, ..opts.clone() },
        ScoreOptions { variance_floor: 0.0, ..opts.clone() },
        ScoreOptions { variance_floor: f64::NAN, ..opts.clone() },
    ] {
        let err = score_volume("v", probs.view(), features().view(), &source(4), &bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad:?}");
    }
}

#[test]
fn slabs_give_the_same_score_as_the_whole_volume() {
    let mut rng = Rng(21);
    let probs = random_volume(&mut rng, 4, [13, 9, 10]);
    let tiles = features();
    for r in 0..=3 {
        for threshold in [ThresholdMethod::FirstPeak, ThresholdMethod::Otsu] {
            let opts = options(threshold, r);
            let whole = score_volume("v", probs.view(), tiles.view(), &source(4), &opts).unwrap();
            for slab in [1, 2, 3, 5, 13] {
                let mut stats = VolumeStats::new(4, [13, 9, 10], &opts).unwrap();
                let mut z = 0;
                while z < 13 {
                    let dz = slab.min(13 - z);
                    stats.add_slab(probs.slice(s![.., z..z + dz, .., ..])).unwrap();
                    z += dz;
                }
                let streamed = stats.into_score("v", tiles.view(), &source(4)).unwrap();
                assert_eq!(streamed, whole, "r {r}, slab {slab}, {threshold:?}");
            }
        }
    }
    // A non-contiguous view (x reversed, twice) is read correctly.
    let flipped = probs.slice(s![.., .., .., ..;-1]).to_owned();
    let back = flipped.slice(s![.., .., .., ..;-1]);
    let opts = ScoreOptions::default();
    assert_eq!(
        score_volume("v", back, tiles.view(), &source(4), &opts).unwrap(),
        score_volume("v", probs.view(), tiles.view(), &source(4), &opts).unwrap()
    );
}

#[test]
fn slab_misuse_is_refused() {
    let probs = random_volume(&mut Rng(4), 3, [6, 4, 4]);
    let opts = ScoreOptions::default();
    let mut stats = VolumeStats::new(3, [6, 4, 4], &opts).unwrap();
    stats.add_slab(probs.slice(s![.., 0..4, .., ..])).unwrap();
    let err = stats.finish().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message().contains("4 of the volume's 6"), "{}", err.message());

    let mut stats = VolumeStats::new(3, [6, 4, 4], &opts).unwrap();
    stats.add_slab(probs.slice(s![.., 0..4, .., ..])).unwrap();
    assert_eq!(stats.add_slab(probs.view()).unwrap_err().kind(), ErrorKind::InvalidArgument);
    // After an error the accumulator stays refused.
    assert_eq!(stats.add_slab(probs.slice(s![.., 4..6, .., ..])).unwrap_err().kind(), ErrorKind::InvalidArgument);

    let mut stats = VolumeStats::new(3, [6, 4, 5], &opts).unwrap();
    assert_eq!(stats.add_slab(probs.view()).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(VolumeStats::new(1, [6, 4, 4], &opts).err().unwrap().kind(), ErrorKind::InvalidArgument);
    assert_eq!(VolumeStats::new(3, [6, 0, 4], &opts).err().unwrap().kind(), ErrorKind::InvalidArgument);
}

#[test]
fn histogram_matches_the_entropy_map() {
    let probs = random_volume(&mut Rng(17), 3, [5, 6, 7]);
    // A dilation as large as the volume makes every voxel foreground.
    let s = score(&probs, &options(ThresholdMethod::None, 7));
    assert_eq!(s.foreground_voxels, s.voxels);
    let h = entropy_map(probs.view());
    let mut hist = vec![0u32; 100];
    for &v in h.iter() {
        hist[((v * 100.0).ceil() as usize).saturating_sub(1).min(99)] += 1;
    }
    assert_eq!(s.entropy_histogram, hist);
    let mean: f64 = h.iter().map(|&v| f64::from(v)).sum::<f64>() / h.len() as f64;
    assert!((s.asd - mean).abs() < 1e-9);
    // And each value agrees with the f64 formula.
    for (i, &v) in h.indexed_iter() {
        let p: Vec<f64> = (0..3).map(|c| f64::from(probs[[c, i.0, i.1, i.2]])).collect();
        assert!((f64::from(v) - entropy(&p)).abs() < 1e-5);
    }
}

#[test]
fn default_options_are_the_documented_ones() {
    let o = ScoreOptions::default();
    assert_eq!(o.foreground_dilation, 2);
    assert_eq!(o.threshold, ThresholdMethod::FirstPeak);
    assert_eq!(o.histogram_bins, 100);
    assert_eq!(o.peak_smoothing, 5);
    assert!(!o.class_balanced);
    assert_eq!(o.variance_floor, 1e-2);
    let json = serde_json::to_string(&o).unwrap();
    assert!(json.contains("\"threshold\":\"first_peak\""), "{json}");
}

/// Ad-hoc timing, no threshold: `cargo test --release --test score -- --ignored --nocapture`.
#[test]
#[ignore]
fn timing_256_cubed_4_classes() {
    let n = 256;
    let mut rng = Rng(1);
    for fraction in [0.1f32, 1.0] {
        let mut probs = Array4::<f32>::zeros((4, n, n, n));
        let t = std::time::Instant::now();
        for z in 0..n {
            for y in 0..n {
                for x in 0..n {
                    let fg = (z * n * n + y * n + x) as f32 / (n * n * n) as f32 >= 1.0 - fraction;
                    let mut p = [0.05 + 0.1 * rng.next_f32(), 0.05, 0.05, 0.05];
                    p[if fg { 1 + x % 3 } else { 0 }] += 0.8;
                    let sum: f32 = p.iter().sum();
                    for c in 0..4 {
                        probs[[c, z, y, x]] = p[c] / sum;
                    }
                }
            }
        }
        eprintln!("built {fraction} in {:?}", t.elapsed());
        let tiles = features();
        for threshold in [ThresholdMethod::FirstPeak, ThresholdMethod::None] {
            let opts = options(threshold, 2);
            let t = std::time::Instant::now();
            let s = score_volume("t", probs.view(), tiles.view(), &source(4), &opts).unwrap();
            eprintln!(
                "foreground {fraction}: score_volume {:?} ({threshold:?}, |F| = {}, asd {:.4})",
                t.elapsed(),
                s.foreground_voxels,
                s.asd
            );
        }
        let t = std::time::Instant::now();
        let mut stats = VolumeStats::new(4, [n, n, n], &ScoreOptions::default()).unwrap();
        for z in (0..n).step_by(32) {
            stats.add_slab(probs.slice(s![.., z..z + 32, .., ..])).unwrap();
        }
        let streamed = stats.into_score("t", tiles.view(), &source(4)).unwrap();
        eprintln!("foreground {fraction}: 32-slice slabs {:?} (asd {:.4})", t.elapsed(), streamed.asd);
        let t = std::time::Instant::now();
        let h = entropy_map(probs.view());
        eprintln!("entropy_map {:?} ({})", t.elapsed(), h.len());
    }
}
