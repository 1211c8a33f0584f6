//! The engine end to end on the demo bundle and the synthetic sites: segmentation back on the
//! caller's grid, orientation round trip, scoring behaving as method.md says, concurrency,
//! cancellation and bad inputs. Needs `make ort` and `make data` (the test command runs both).
//! Subjects are synthetic derivatives of real anatomy; site shifts are simulated.

use std::path::PathBuf;
use std::sync::Arc;

use asfda::cancel::CancelToken;
use asfda::engine::{Engine, EngineOptions, SegmentOutputs, Work};
use asfda::runtime::RuntimeOptions;
use asfda::score::Score;
use asfda::volume::{read_nifti, ReadOptions, Volume};
use asfda::ErrorKind;

mod common;
use common::{data_dir, root};

/// A site's held-out images, sorted.
fn test_images(site: &str) -> Vec<PathBuf> {
    let dir = data_dir().join(site).join("test");
    let mut images: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("_image.nii.gz"))
        .collect();
    images.sort();
    images
}

/// The first `n` held-out (image, label) pairs of a site.
fn cases(site: &str, n: usize) -> Vec<(Volume, Volume)> {
    test_images(site)
        .into_iter()
        .take(n)
        .map(|p| {
            let label = PathBuf::from(p.to_string_lossy().replace("_image.nii.gz", "_label.nii.gz"));
            (read_nifti(&p, &ReadOptions::default()).unwrap(), read_nifti(&label, &ReadOptions::default()).unwrap())
        })
        .collect()
}

fn engine() -> Engine {
    let options = EngineOptions { runtime: RuntimeOptions { threads: 2, ..Default::default() }, ..Default::default() };
    Engine::new(&root().join("models/demo_brain_unet"), options).unwrap()
}

fn mean_dice(pred: &Volume, truth: &Volume) -> f64 {
    let dice: Vec<f64> = (1..4)
        .map(|c| {
            let c = c as f32;
            let (mut inter, mut p, mut t) = (0usize, 0usize, 0usize);
            for (&a, &b) in pred.data().iter().zip(truth.data()) {
                inter += usize::from(a == c && b == c);
                p += usize::from(a == c);
                t += usize::from(b == c);
            }
            2.0 * inter as f64 / (p + t).max(1) as f64
        })
        .collect();
    dice.iter().sum::<f64>() / 3.0
}

fn segment_labels(engine: &Engine, v: &Volume) -> Volume {
    engine.segment(v, SegmentOutputs::default(), &CancelToken::new().unwrap(), &mut |_| true).unwrap().labels
}

fn score(engine: &Engine, id: &str, v: &Volume) -> Score {
    engine.score(id, v, &CancelToken::new().unwrap(), &mut |_| true).unwrap()
}

#[test]
fn segmentation_lands_on_the_callers_grid() {
    let engine = engine();
    let (image, label) = cases("t1", 1).remove(0);
    let seg = engine
        .segment(
            &image,
            SegmentOutputs { probabilities: true, entropy: true },
            &CancelToken::new().unwrap(),
            &mut |_| true,
        )
        .unwrap();
    assert!(seg.labels.same_grid(&image));
    assert!(mean_dice(&seg.labels, &label) > 0.95, "source-site Dice {}", mean_dice(&seg.labels, &label));
    let probs = seg.probabilities.unwrap();
    assert_eq!((probs.dims(), probs.channels()), (image.dims(), 4));
    let entropy = seg.entropy.unwrap();
    assert!(entropy.data().iter().all(|&h| (-1e-6..=1.0 + 1e-6).contains(&h)));

    // Another spacing and orientation (1.2 x 1.2 x 2.5 mm, L-S-P): resampled and reoriented
    // internally, labels back on the file's own grid.
    let (image, label) = cases("spacing_orient", 1).remove(0);
    let labels = segment_labels(&engine, &image);
    assert!(labels.same_grid(&image));
    assert!(mean_dice(&labels, &label) > 0.75, "spacing_orient Dice {}", mean_dice(&labels, &label));
}

#[test]
fn a_flipped_and_permuted_copy_gives_the_flipped_and_permuted_segmentation() {
    let engine = engine();
    let (image, _) = cases("t1", 1).remove(0);
    let [nx, ny, nz] = image.dims();
    // Swap x and z and flip y in voxel space; the affine changes so world positions stay put.
    let src = image.data();
    let data: Vec<f32> = (0..nx * ny * nz)
        .map(|i| {
            let (z, rest) = (i % nz, i / nz);
            let (y, x) = (rest % ny, rest / ny);
            src[x + nx * ((ny - 1 - y) + ny * z)]
        })
        .collect();
    let a = image.affine();
    let mut b = [[0.0; 4]; 4];
    for r in 0..4 {
        b[r][0] = a[r][2];
        b[r][1] = -a[r][1];
        b[r][2] = a[r][0];
        b[r][3] = a[r][3] + a[r][1] * (ny as f64 - 1.0);
    }
    b[3] = [0.0, 0.0, 0.0, 1.0];
    let moved = Volume::new(data, [nz, ny, nx], 1, b).unwrap();
    let (l1, l2) = (segment_labels(&engine, &image), segment_labels(&engine, &moved));
    for i in 0..nx * ny * nz {
        let (z, rest) = (i % nz, i / nz);
        let (y, x) = (rest % ny, rest / ny);
        assert_eq!(l2.data()[i], l1.data()[x + nx * ((ny - 1 - y) + ny * z)], "voxel {x},{y},{z}");
    }
}

#[test]
fn scores_follow_the_method() {
    let engine = engine();
    let source: Vec<Score> =
        cases("t1", 2).iter().enumerate().map(|(i, (v, _))| score(&engine, &format!("t1-{i}"), v)).collect();
    let target: Vec<Score> =
        cases("pd", 2).iter().enumerate().map(|(i, (v, _))| score(&engine, &format!("pd-{i}"), v)).collect();
    let mean = |s: &[Score], f: fn(&Score) -> f64| s.iter().map(f).sum::<f64>() / s.len() as f64;
    let (kl_t, kl_s) = (mean(&target, |s| s.gap_kl), mean(&source, |s| s.gap_kl));
    assert!(kl_t > kl_s, "KL gap: target {kl_t} must exceed source {kl_s}");
    let (an_t, an_s) = (mean(&target, |s| s.gap_anchor), mean(&source, |s| s.gap_anchor));
    assert!(an_t > an_s, "anchor distance: target {an_t} must exceed source {an_s}");
    for s in source.iter().chain(&target) {
        let norm: f32 = s.embedding.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
        assert_eq!(Score::from_json(&s.to_json()).unwrap(), *s, "JSON round trip");
    }

    // Noise makes the model less sure: ASD rises on average.
    let noisy: Vec<Score> = cases("t1", 2)
        .into_iter()
        .enumerate()
        .map(|(i, (mut v, _))| {
            let mut state = 12345u64 + i as u64;
            for x in v.data_mut().iter_mut().filter(|x| **x != 0.0) {
                // xorshift: deterministic noise at ~25% of the WM intensity
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *x += ((state % 1000) as f32 / 1000.0 - 0.5) * 450.0;
            }
            score(&engine, &format!("noisy-{i}"), &v)
        })
        .collect();
    assert!(mean(&noisy, |s| s.asd) > mean(&source, |s| s.asd), "noise must raise ASD");
}

#[test]
fn concurrent_scoring_equals_serial() {
    let engine = Arc::new(engine());
    let volumes: Vec<Volume> = cases("bias_noise", 2).into_iter().map(|(v, _)| v).collect();
    let serial: Vec<String> =
        volumes.iter().enumerate().map(|(i, v)| score(&engine, &i.to_string(), v).to_json()).collect();
    let handles: Vec<_> = volumes
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let engine = Arc::clone(&engine);
            std::thread::spawn(move || score(&engine, &i.to_string(), &v).to_json())
        })
        .collect();
    let parallel: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(parallel, serial);
}

#[test]
fn cancellation_returns_cancelled_and_the_engine_stays_usable() {
    let engine = engine();
    let (image, _) = cases("t1", 1).remove(0);
    let mut calls = 0;
    let err = engine
        .score("x", &image, &CancelToken::new().unwrap(), &mut |_| {
            calls += 1;
            calls < 2
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled);
    assert_eq!(calls, 2);
    assert!(engine.score("x", &image, &CancelToken::new().unwrap(), &mut |_| true).is_ok());
}

#[test]
fn bad_inputs_are_refused_clearly() {
    let engine = engine();
    let (image, _) = cases("t1", 1).remove(0);
    let cancel = CancelToken::new().unwrap();

    let two = Volume::new([image.data(), image.data()].concat(), image.dims(), 2, image.affine()).unwrap();
    let err = engine.score("two", &two, &cancel, &mut |_| true).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message().contains('2') && err.message().contains('1'), "{err}");

    let mut nan = image.clone();
    nan.data_mut()[1000] = f32::NAN;
    assert_eq!(engine.score("nan", &nan, &cancel, &mut |_| true).unwrap_err().kind(), ErrorKind::InvalidData);

    // Smaller than a tile is not an error: it is padded.
    let small = read_nifti(&root().join("data/anatomical.nii"), &ReadOptions::default()).unwrap();
    let labels = segment_labels(&engine, &small);
    assert!(labels.same_grid(&small));

    let limited = Engine::new(
        &root().join("models/demo_brain_unet"),
        EngineOptions { memory_limit_bytes: 1 << 20, ..Default::default() },
    )
    .unwrap();
    let err = limited.score("big", &image, &cancel, &mut |_| true).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge);
    assert!(err.message().contains("memory limit"), "{err}");
}

#[test]
fn weights_swap_in_memory_and_back() {
    use asfda::bundle::Bundle;
    use asfda::tensors::TensorFile;
    let engine = engine();
    let (image, _) = cases("t1", 1).remove(0);
    let before = segment_labels(&engine, &image);

    // The head bias pushed hard towards class 3: every voxel becomes wm.
    let bundle = Bundle::load(&root().join("models/demo_brain_unet"), &RuntimeOptions::default()).unwrap();
    let checkpoint = TensorFile::open(&bundle.path(&bundle.training().unwrap().checkpoint)).unwrap();
    let mut bias = checkpoint.f32("param.head.bias").unwrap();
    bias[3] += 1000.0;
    engine.set_weights(&[("head.bias", &bias)]).unwrap();
    assert!(segment_labels(&engine, &image).data().iter().all(|&l| l == 3.0));

    // A second engine with other weights leaves this one alone.
    let other = engine.with_weights(&[]).unwrap();
    assert_eq!(segment_labels(&other, &image).data(), before.data());
    assert!(segment_labels(&engine, &image).data().iter().all(|&l| l == 3.0));

    engine.reset_weights().unwrap();
    assert_eq!(segment_labels(&engine, &image).data(), before.data());

    let err = engine.set_weights(&[("no.such.weight", &bias)]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.message().contains("no.such.weight"), "{err}");
    let short = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[3]));
    let err = engine.set_weights(&[("head.bias", &short)]).unwrap_err();
    assert!(err.message().contains("[3]") && err.message().contains("[4]"), "{err}");
    assert_eq!(segment_labels(&engine, &image).data(), before.data(), "a failed swap keeps the old weights");
}

#[test]
fn a_cancel_from_another_thread_stops_a_model_run_in_flight() {
    let options = EngineOptions {
        runtime: RuntimeOptions { threads: 2, ..Default::default() },
        // Every tile in one ONNX Runtime run: progress is reported only after that run, so a
        // call that ends Cancelled without any progress report was stopped inside the run.
        window: asfda::window::WindowOptions { tiles_per_batch: 64, ..Default::default() },
        ..Default::default()
    };
    let engine = Engine::new(&root().join("models/demo_brain_unet"), options).unwrap();
    let (image, _) = cases("t1", 1).remove(0);
    let cancel = Arc::new(CancelToken::new().unwrap());
    let remote = Arc::clone(&cancel);
    // Triggers as soon as the run has started (its run options exist), not after a delay.
    let canceller = std::thread::spawn(move || {
        while !remote.run_started() {
            std::thread::yield_now();
        }
        remote.cancel();
    });
    let mut reports = Vec::new();
    let err = engine
        .score("x", &image, &cancel, &mut |f| {
            reports.push(f);
            true
        })
        .unwrap_err();
    canceller.join().unwrap();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert!(reports.is_empty(), "the run completed before the cancel: {reports:?}");

    // The engine stays usable, and the same token serves another call once reset.
    cancel.reset().unwrap();
    assert!(!cancel.is_cancelled());
    let after = engine.score("x", &image, &cancel, &mut |_| true).unwrap();
    assert_eq!(after.to_json(), score(&engine, "x", &image).to_json());
    // A token triggered before the call stops it before any model run.
    let early = CancelToken::new().unwrap();
    early.cancel();
    assert_eq!(engine.score("x", &image, &early, &mut |_| true).unwrap_err().kind(), ErrorKind::Cancelled);
    assert!(!early.run_started());
}

/// Argmax over the channels of a probability volume at voxel i (first maximum wins).
fn argmax_at(p: &[f32], voxels: usize, channels: usize, i: usize) -> usize {
    (0..channels).fold(0, |best, c| if p[c * voxels + i] > p[best * voxels + i] { c } else { best })
}

#[test]
fn probability_and_entropy_maps_are_consistent_with_the_labels() {
    let engine = engine();
    let (image, _) = cases("t1", 1).remove(0);
    let seg = engine
        .segment(
            &image,
            SegmentOutputs { probabilities: true, entropy: true },
            &CancelToken::new().unwrap(),
            &mut |_| true,
        )
        .unwrap();
    let (probs, entropy) = (seg.probabilities.unwrap(), seg.entropy.unwrap());
    assert!(probs.same_grid(&image) && entropy.same_grid(&image) && entropy.channels() == 1);
    let n = image.data().len();
    let p = probs.data();
    for i in 0..n {
        let sum: f32 = (0..4).map(|c| p[c * n + i]).sum();
        assert!((sum - 1.0).abs() < 1e-5, "voxel {i}: probabilities sum to {sum}");
        let h = entropy.data()[i];
        assert!((0.0..=1.0).contains(&h), "voxel {i}: entropy {h}");
        let expected = -(0..4).map(|c| p[c * n + i]).filter(|&q| q > 0.0).map(|q| q * q.ln()).sum::<f32>() / 4f32.ln();
        assert!((h - expected).abs() < 1e-4, "voxel {i}: entropy {h}, from the probabilities {expected}");
    }
    // t1 is at the model's 2 mm spacing, so nothing is resampled: the labels are the argmax.
    let mismatches = (0..n).filter(|&i| seg.labels.data()[i] != argmax_at(p, n, 4, i) as f32).count();
    assert_eq!(mismatches, 0);
    // Labels alone equal the labels computed together with the maps.
    assert_eq!(segment_labels(&engine, &image).data(), seg.labels.data());
}

#[test]
fn streaming_scores_and_segmentations_equal_whole_volume_ones() {
    use asfda::score::score_volume;
    let engine = engine();
    for site in ["t1", "spacing_orient"] {
        let (image, _) = cases(site, 1).remove(0);
        let cancel = CancelToken::new().unwrap();
        // Reference: the whole-grid probabilities of Engine::infer, scored in one piece.
        let inference = engine.infer(&image, &cancel, &mut |_| true).unwrap();
        let source = engine.bundle().source_knowledge().unwrap().unwrap();
        let whole = score_volume(
            "x",
            inference.valid_probabilities(),
            inference.features.view(),
            &source,
            &engine.options().score,
        )
        .unwrap();
        assert_eq!(score(&engine, "x", &image).to_json(), whole.to_json(), "{site}");
        let probs = inference.grid.to_original(inference.probabilities.view()).unwrap();
        let seg = engine
            .segment(&image, SegmentOutputs { probabilities: true, entropy: false }, &cancel, &mut |_| true)
            .unwrap();
        assert_eq!(seg.probabilities.unwrap().data(), probs.data(), "{site}");
    }
}

#[test]
fn the_memory_limit_counts_the_optional_maps() {
    let (image, _) = cases("t1", 1).remove(0);
    let plain = engine();
    let labels_only = plain.memory_estimate(&image, Work::Segment(SegmentOutputs::default())).unwrap();
    let with_maps =
        plain.memory_estimate(&image, Work::Segment(SegmentOutputs { probabilities: true, entropy: true })).unwrap();
    let input = (image.data().len() * 4) as u64;
    assert!(labels_only > input && with_maps > labels_only + 4 * input, "{labels_only} {with_maps} {input}");
    // A limit between the two: labels pass, the maps are refused before any work, by name.
    let limited = Engine::new(
        &root().join("models/demo_brain_unet"),
        EngineOptions { memory_limit_bytes: (labels_only + with_maps) / 2, ..Default::default() },
    )
    .unwrap();
    let cancel = CancelToken::new().unwrap();
    let Err(err) =
        limited.segment(&image, SegmentOutputs { probabilities: true, entropy: true }, &cancel, &mut |_| true)
    else {
        panic!("the maps must be refused under the limit");
    };
    assert_eq!(err.kind(), ErrorKind::TooLarge);
    assert!(err.message().contains("probability maps"), "{err}");
    assert!(limited.segment(&image, SegmentOutputs::default(), &cancel, &mut |_| true).is_ok());
}

#[test]
fn inference_on_a_prepared_image_equals_inference_on_its_volume() {
    use asfda::preprocess::prepare;
    let engine = engine();
    let cancel = CancelToken::new().unwrap();
    // t1 is read in place by infer (RAS at the model spacing); spacing_orient is reoriented and
    // resampled, so both of infer's paths are compared with the prepared one.
    for site in ["t1", "spacing_orient"] {
        let (image, _) = cases(site, 1).remove(0);
        let want = engine.infer(&image, &cancel, &mut |_| true).unwrap();
        let prepared = prepare(&image, &engine.bundle().manifest().input).unwrap();
        drop(image);
        let got = engine.infer_prepared(prepared.image.view(), &prepared.grid, &cancel, &mut |_| true).unwrap();
        assert_eq!(got.probabilities, want.probabilities, "{site}");
        assert_eq!(got.features, want.features, "{site}");
        assert_eq!(got.grid.valid_region(), want.grid.valid_region(), "{site}");
    }
}

#[test]
fn a_prepared_image_of_the_wrong_shape_or_over_the_memory_limit_is_refused() {
    use asfda::preprocess::prepare;
    let (image, _) = cases("t1", 1).remove(0);
    let plain = engine();
    let prepared = prepare(&image, &plain.bundle().manifest().input).unwrap();
    let cancel = CancelToken::new().unwrap();
    let cropped = prepared.image.slice(ndarray::s![.., 1.., .., ..]);
    let Err(err) = plain.infer_prepared(cropped, &prepared.grid, &cancel, &mut |_| true) else {
        panic!("a cropped image must be refused");
    };
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message().contains("shape"), "{err}");

    let needed = plain.memory_estimate_prepared(&prepared.grid);
    let model_bytes = (prepared.image.len() * 4) as u64;
    // The image itself plus four class probabilities per voxel at least.
    assert!(needed >= 5 * model_bytes, "{needed} {model_bytes}");
    let limited = Engine::new(
        &root().join("models/demo_brain_unet"),
        EngineOptions { memory_limit_bytes: needed - 1, ..Default::default() },
    )
    .unwrap();
    let Err(err) = limited.infer_prepared(prepared.image.view(), &prepared.grid, &cancel, &mut |_| true) else {
        panic!("over the memory limit");
    };
    assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
}

#[test]
fn implausible_voxel_spacing_is_refused_naming_it() {
    let engine = engine();
    let mut affine = [[0.0; 4]; 4];
    for (d, s) in [1e-30, 1.0, 1.0].into_iter().enumerate() {
        affine[d][d] = s;
    }
    affine[3][3] = 1.0;
    let tiny = Volume::new(vec![0.0; 8 * 8 * 8], [8, 8, 8], 1, affine).unwrap();
    let cancel = CancelToken::new().unwrap();
    let errors = [
        engine.score("tiny", &tiny, &cancel, &mut |_| true).unwrap_err(),
        engine.segment(&tiny, SegmentOutputs::default(), &cancel, &mut |_| true).err().unwrap(),
        engine.memory_estimate(&tiny, Work::Score).unwrap_err(),
    ];
    for e in errors {
        assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
        assert!(e.message().contains("1e-30") && e.message().contains("implausible"), "{e}");
    }
}

#[test]
fn a_single_slice_is_refused_as_2d() {
    // A 2D image saved as NIfTI (one slice): resampled to the model's grid it would be a smear
    // segmented as whatever the model guesses, so the engine refuses it by name.
    let engine = engine();
    let mut affine = [[0.0; 4]; 4];
    (0..4).for_each(|d| affine[d][d] = 1.0);
    let slice = Volume::new(vec![100.0; 64 * 64], [64, 64, 1], 1, affine).unwrap();
    let cancel = CancelToken::new().unwrap();
    let errors = [
        engine.score("slice", &slice, &cancel, &mut |_| true).unwrap_err(),
        engine.segment(&slice, SegmentOutputs::default(), &cancel, &mut |_| true).err().unwrap(),
    ];
    for e in errors {
        assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
        assert!(e.message().contains("64x64x1") && e.message().contains("single slice"), "{e}");
    }
}

#[test]
fn score_and_segment_in_one_pass_equals_the_two_calls() {
    let engine = engine();
    let cancel = CancelToken::new().unwrap();
    let outputs = SegmentOutputs { probabilities: false, entropy: true };
    // A volume that is resampled and reoriented, so the maps go back through the inverse mapping.
    let site = "spacing_orient";
    let (image, _) = cases(site, 1).remove(0);
    let mut reports = 0;
    let (score_one, seg_one) = engine
        .score_and_segment("x", &image, outputs, &cancel, &mut |_| {
            reports += 1;
            true
        })
        .unwrap();
    assert!(reports >= 1, "{site}: progress is reported");
    assert_eq!(score_one.to_json(), score(&engine, "x", &image).to_json(), "{site}");
    let seg = engine.segment(&image, outputs, &cancel, &mut |_| true).unwrap();
    assert!(seg_one.labels.same_grid(&image) && seg_one.labels.data() == seg.labels.data(), "{site}");
    assert_eq!(seg_one.entropy.unwrap().data(), seg.entropy.unwrap().data(), "{site}");
    // Its memory estimate covers both: at least what either call alone needs.
    let (image, _) = cases("t1", 1).remove(0);
    let both = engine.memory_estimate(&image, Work::ScoreAndSegment(outputs)).unwrap();
    let scoring = engine.memory_estimate(&image, Work::Score).unwrap();
    let segmenting = engine.memory_estimate(&image, Work::Segment(outputs)).unwrap();
    assert!(both > scoring && both >= segmenting, "{both} {scoring} {segmenting}");
}

#[test]
fn a_pool_scored_with_reading_overlapped_equals_one_scored_volume_by_volume() {
    use asfda::engine::PreparedVolume;
    use asfda::score::{score_pool, PoolOrder};
    let engine = engine();
    // pd is on the model's grid (read in place); spacing_orient needs resampling.
    let (pd, oblique) = (test_images("pd").swap_remove(0), test_images("spacing_orient").swap_remove(0));
    let kinds: Vec<bool> = [&pd, &oblique]
        .iter()
        .map(|p| {
            let v = read_nifti(p, &ReadOptions::default()).unwrap();
            matches!(engine.prepare_for_score(v).unwrap(), PreparedVolume::InPlace(_))
        })
        .collect();
    assert_eq!(kinds, [true, false], "one volume of each kind");
    let items: Vec<(String, PathBuf)> = vec![
        ("pd".into(), pd.clone()),
        ("missing".into(), root().join("no/such/volume.nii.gz")),
        ("oblique".into(), oblique.clone()),
    ];
    let read = |p: &PathBuf| read_nifti(p, &ReadOptions::default());
    let expected: Vec<String> = [("pd", &pd), ("oblique", &oblique)]
        .iter()
        .map(|(id, p)| score(&engine, id, &read(p).unwrap()).to_json())
        .collect();
    let cancel = CancelToken::new().unwrap();
    let pooled = |items: &[(String, PathBuf)], order: PoolOrder| {
        let (mut results, mut seen) = (Vec::new(), std::collections::BTreeSet::new());
        let done = score_pool(
            &engine,
            items,
            &read,
            order,
            &cancel,
            &mut |i, _| {
                seen.insert(i);
                true
            },
            &mut |i, r| {
                results.push((i, r));
                true
            },
        );
        assert_eq!(done, items.len(), "{order:?}");
        (results, seen.into_iter().collect::<Vec<_>>())
    };
    let (results, seen) = pooled(&items, PoolOrder::Overlapped);
    let indices: Vec<usize> = results.iter().map(|(i, _)| *i).collect();
    assert_eq!(indices, [0, 1, 2], "results come in the items' order");
    assert_eq!(seen, [0, 2], "progress for the volumes that ran");
    let err = results[1].1.as_ref().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    assert!(err.to_string().contains("'missing'"), "the failed item is named: {err}");
    let scores: Vec<String> = [0, 2].iter().map(|&i| results[i].1.as_ref().unwrap().to_json()).collect();
    assert_eq!(scores, expected, "pooled scores equal Engine::score bit for bit");
    let (results, _) = pooled(&items[1..], PoolOrder::Sequential);
    assert_eq!(results[0].1.as_ref().unwrap_err().kind(), ErrorKind::Io);
    assert_eq!(results[1].1.as_ref().unwrap().to_json(), expected[1], "sequential order, same score");
    // `each` returning false stops the pool (here after the failed read, before any model run);
    // a cancelled token stops it before the next volume.
    let mut calls = 0;
    let done =
        score_pool(&engine, &items[1..], &read, PoolOrder::Overlapped, &cancel, &mut |_, _| true, &mut |_, _| {
            calls += 1;
            false
        });
    assert_eq!((done, calls), (1, 1));
    cancel.cancel();
    let mut results = Vec::new();
    score_pool(&engine, &items, &read, PoolOrder::Overlapped, &cancel, &mut |_, _| true, &mut |_, r| {
        results.push(r.map(|_| ()).map_err(|e| e.kind()));
        true
    });
    assert!(results.len() <= 1 && results.iter().all(|r| *r == Err(ErrorKind::Cancelled)), "{results:?}");
}
