//! Selective Semi-supervised Fine-tuning on the demo bundle and the synthetic target sites:
//! training progress, exact resume, crash-safe checkpoints, pseudo-labels, schedules and
//! sampling, export and bad inputs. Needs `make ort` and `make data` (the test command runs both).
//! Subjects are synthetic derivatives of real anatomy; site shifts are simulated.
//!
//! Most tests work on crops of the real volumes (one 64^3 inference tile) to keep debug-build
//! inference short.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use asfda::cancel::CancelToken;
use asfda::engine::{Engine, EngineOptions, SegmentOutputs};
use asfda::finetune::checkpoint;
use asfda::finetune::sampling::{poly_lr, ramp_weight};
use asfda::finetune::{FineTuneOptions, FineTuner};
use asfda::rng::SplitMix64;
use asfda::runtime::{Device, RuntimeOptions};
use asfda::volume::{read_nifti, ReadOptions, Volume};
use asfda::ErrorKind;
use ndarray::s;

mod common;
use common::{crop, data_dir, root};
#[path = "common/openvino.rs"]
mod openvino;

fn engine() -> Engine {
    engine_on(Device::Cpu)
}

/// The demo engine on `device`. A representative subset of these tests runs on the CPU provider
/// and on OpenVINO (`make ort-openvino`; tests/openvino.rs compares the two directly).
fn engine_on(device: Device) -> Engine {
    let runtime = match device {
        Device::OpenVino => openvino::options(Device::OpenVino),
        _ => RuntimeOptions { device, threads: 2, ..Default::default() },
    };
    let engine =
        Engine::new(&root().join("models/demo_brain_unet"), EngineOptions { runtime, ..Default::default() }).unwrap();
    assert_eq!(engine.device(), device);
    engine
}

fn read(path: &Path) -> Volume {
    read_nifti(path, &ReadOptions::default()).unwrap()
}

/// Pool volume `i` of a site with its oracle label.
fn pool(site: &str, i: usize) -> (Volume, Volume) {
    let dir = data_dir().join(site);
    (
        read(&dir.join(format!("pool/{site}_pool_{i:03}_image.nii.gz"))),
        read(&dir.join(format!("pool_labels/{site}_pool_{i:03}_label.nii.gz"))),
    )
}

/// A central block of pool volume `i`: smaller than one 64^3 tile along two axes (so
/// preprocessing pads it), brain tissue of every class inside.
fn small(site: &str, i: usize) -> (Volume, Volume) {
    let (image, label) = pool(site, i);
    let (origin, size) = ([22, 30, 24], [56, 64, 48]);
    (crop(&image, origin, size), crop(&label, origin, size))
}

fn options(patch: usize, batch: usize, total: u64, seed: u64) -> FineTuneOptions {
    FineTuneOptions { patch_size: Some([patch; 3]), batch_size: batch, total_steps: total, seed, ..Default::default() }
}

fn weights_bits(t: &FineTuner) -> Vec<(String, Vec<u32>)> {
    t.weights().into_iter().map(|(n, w)| (n.to_string(), w.iter().map(|v| v.to_bits()).collect())).collect()
}

#[test]
fn loss_decreases_with_annotations_on_the_target_site() {
    loss_decreases_on(Device::Cpu);
}

#[test]
fn loss_decreases_with_annotations_on_the_target_site_on_openvino() {
    loss_decreases_on(Device::OpenVino);
}

fn loss_decreases_on(device: Device) {
    let engine = engine_on(device);
    let o = FineTuneOptions { lr: Some(1e-3), ..options(32, 2, 16, 1) };
    let mut tuner = FineTuner::new(&engine, o).unwrap();
    for i in 0..2 {
        let (image, label) = pool("pd", i);
        tuner.add_labeled(&format!("pd{i}"), &image, &label).unwrap();
    }
    let losses: Vec<f32> = (0..16).map(|_| tuner.step().unwrap().loss).collect();
    eprintln!("losses: {losses:?}");
    let mean = |l: &[f32]| l.iter().sum::<f32>() / l.len() as f32;
    let (first, last) = (mean(&losses[..5]), mean(&losses[11..]));
    assert!(last < 0.8 * first, "loss must fall: first five {first}, last five {last} ({losses:?})");
    assert!(losses.iter().all(|l| l.is_finite()));
}

#[test]
fn a_resumed_run_continues_exactly() {
    resumed_run_on(Device::Cpu);
}

/// OpenVINO too gives the same bits for the same step (its compiled graph is deterministic at a
/// fixed thread count), so a resumed run continues exactly there as well.
#[test]
fn a_resumed_run_continues_exactly_on_openvino() {
    resumed_run_on(Device::OpenVino);
}

fn resumed_run_on(device: Device) {
    let engine = engine_on(device);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.safetensors");
    // The pseudo-label check off, so that the resumed steps mix in pseudo-labelled patches.
    let o = FineTuneOptions { ramp_fraction: 0.5, pseudo_label_min_dice: 0.0, ..options(32, 2, 10, 11) };
    let (labeled, label) = small("pd", 0);
    let (unlabeled, _) = small("pd", 2);

    let mut a = FineTuner::new(&engine, o.clone()).unwrap();
    a.add_labeled("a-labeled", &labeled, &label).unwrap();
    a.add_unlabeled("b-pseudo", &unlabeled).unwrap();
    a.step().unwrap();
    a.step().unwrap();
    a.save_checkpoint(&path).unwrap();
    assert!(a.plan_batch(2).iter().any(|p| !p.labeled), "step 3 should mix in a pseudo-labelled patch");
    let expected = a.step().unwrap();

    // Data re-added in the other order: sampling goes by id, not by insertion order.
    let mut b = FineTuner::resume(&engine, &path, None).unwrap();
    assert_eq!(b.steps_done(), 2);
    assert_eq!(b.options(), &o);
    b.add_unlabeled("b-pseudo", &unlabeled).unwrap();
    b.add_labeled("a-labeled", &labeled, &label).unwrap();
    let got = b.step().unwrap();
    assert_eq!(got.step, 3);
    assert_eq!(
        (got.loss.to_bits(), got.loss_ce.to_bits(), got.loss_dice.to_bits()),
        (expected.loss.to_bits(), expected.loss_ce.to_bits(), expected.loss_dice.to_bits()),
        "resumed {got:?} vs uninterrupted {expected:?}"
    );
    assert_eq!(got, expected);
    assert!(weights_bits(&a) == weights_bits(&b), "weights after the resumed step differ");
}

/// Child mode of the kill test: saves in a loop until killed (see below).
const SAVE_LOOP_ENV: &str = "ASFDA_TEST_SAVE_LOOP_DIR";

fn save_loop(dir: &Path) -> ! {
    let engine = engine();
    let mut tuner = FineTuner::new(&engine, options(16, 1, 10, 3)).unwrap();
    let (image, label) = small("pd", 0);
    tuner.add_labeled("x", &image, &label).unwrap();
    tuner.save_checkpoint(&dir.join("ref0")).unwrap();
    tuner.step().unwrap();
    tuner.save_checkpoint(&dir.join("ref1")).unwrap();
    let state0 = std::fs::read(dir.join("ref0")).unwrap();
    let path = dir.join("checkpoint.safetensors");
    tuner.save_checkpoint(&path).unwrap();
    println!("READY");
    loop {
        // The same crash-safe writer save_checkpoint uses, to alternate two different states.
        asfda::atomic_file::write(&path, &state0).unwrap();
        tuner.save_checkpoint(&path).unwrap();
    }
}

#[test]
fn a_process_killed_while_saving_leaves_the_last_good_checkpoint() {
    if let Some(dir) = std::env::var_os(SAVE_LOOP_ENV) {
        save_loop(Path::new(&dir));
    }
    let engine = engine();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint.safetensors");
    let mut rng = SplitMix64::new(42);
    let (mut seen, mut interrupted) = ([0usize; 2], 0);
    const KILLS: usize = 20;
    for kill in 0..KILLS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "a_process_killed_while_saving_leaves_the_last_good_checkpoint", "--nocapture"])
            .env(SAVE_LOOP_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert!(lines.any(|l| l.is_ok_and(|l| l.trim() == "READY")), "child {kill} never got ready");
        std::thread::sleep(Duration::from_millis(rng.below(250)));
        child.kill().unwrap();
        child.wait().unwrap();

        let bytes = std::fs::read(&path).unwrap();
        let refs = [std::fs::read(dir.path().join("ref0")).unwrap(), std::fs::read(dir.path().join("ref1")).unwrap()];
        let which = refs.iter().position(|r| *r == bytes);
        assert!(which.is_some(), "kill {kill}: the checkpoint at the path is neither written state");
        seen[which.unwrap()] += 1;
        if kill % 4 == 0 {
            // Byte identity with a written state already proves it; loading costs two sessions.
            let resumed = FineTuner::resume(&engine, &path, None).unwrap();
            assert_eq!(resumed.steps_done() as usize, which.unwrap(), "kill {kill}");
        }
        // A temporary file of the checkpoint means the kill landed inside a save. The next
        // writer of the same path removes it: never more than the one just killed is left.
        let leftovers = checkpoint_temporaries(dir.path());
        assert!(leftovers.len() <= 1, "kill {kill}: stale temporaries pile up: {leftovers:?}");
        interrupted += leftovers.len();
    }
    // One more save, as the next run would make: nothing of the dead writers is left.
    asfda::atomic_file::write(&path, &std::fs::read(dir.path().join("ref0")).unwrap()).unwrap();
    assert_eq!(checkpoint_temporaries(dir.path()), Vec::<String>::new(), "a save after the kills cleans up");
    eprintln!(
        "{KILLS} kills: state 0 found {} times, state 1 {} times; {interrupted} kills interrupted a write",
        seen[0], seen[1]
    );
}

/// The crash-safe writer's temporary files of `checkpoint.safetensors` in `dir`
/// (`.checkpoint.safetensors.asfda-<pid>-<n>.tmp`).
fn checkpoint_temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".checkpoint.safetensors.asfda-") && n.ends_with(".tmp"))
        .collect()
}

#[test]
fn pseudo_labels_schedules_and_sampling_follow_the_options() {
    let engine = engine();
    let (labeled, label) = small("pd", 0);
    let (unlabeled, _) = small("pd", 3);
    // The pseudo-label check off: this test is about sampling with pseudo-labels in use.
    let o = FineTuneOptions { ramp_fraction: 0.5, pseudo_label_min_dice: 0.0, ..options(32, 2, 6, 7) };
    let mut tuner = FineTuner::new(&engine, o.clone()).unwrap();
    tuner.add_labeled("l", &labeled, &label).unwrap();
    let kept = tuner.add_unlabeled("u", &unlabeled).unwrap();

    // Pseudo-labels: argmax where the top probability reaches tau_pl, the ignore label elsewhere
    // (padding included).
    let pseudo = tuner.labels("u").unwrap();
    let ignore = tuner.ignore_label();
    assert_eq!(pseudo, &expected_pseudo(&engine, &unlabeled, 0.9, ignore));
    let inference = engine.infer(&unlabeled, &CancelToken::new().unwrap(), &mut |_| true).unwrap();
    let valid = inference.grid.valid_region();
    let (mut ignored_inside, mut labelled) = (0, 0);
    for ((k, j, i), &l) in pseudo.indexed_iter() {
        let inside = valid[0].contains(&k) && valid[1].contains(&j) && valid[2].contains(&i);
        let top = inference.probabilities.slice(s![.., k, j, i]).iter().copied().fold(f32::MIN, f32::max);
        if inside && top < 0.9 {
            assert_eq!(l, ignore);
            ignored_inside += 1;
        }
        labelled += usize::from(l != ignore);
    }
    assert!(ignored_inside > 0 && labelled > 0, "{ignored_inside} unreliable, {labelled} kept");
    let valid_voxels = valid.iter().map(|r| r.len()).product::<usize>();
    assert!((kept - labelled as f64 / valid_voxels as f64).abs() < 1e-12);

    // Sampling: labelled share, foreground-centred share, centres on their class.
    let labels_l = tuner.labels("l").unwrap();
    let draws = 600;
    let (mut n_labeled, mut n_fg, mut n) = (0, 0, 0);
    for t in 0..draws {
        for p in tuner.plan_batch(t) {
            n += 1;
            n_labeled += usize::from(p.labeled);
            if let Some((class, v)) = p.patch.centre {
                n_fg += 1;
                assert!([1, 2, 3].contains(&class));
                let map = if p.labeled { &labels_l } else { &pseudo };
                assert_eq!(map[v], class as i64, "{p:?}");
            }
        }
    }
    let share = |k: usize| k as f64 / n as f64;
    let want = tuner.options().labeled_fraction;
    assert!((share(n_labeled) - want).abs() < 0.04, "labelled share {} (option {want})", share(n_labeled));
    assert!((share(n_fg) - 1.0 / 3.0).abs() < 0.04, "foreground-centred share {}", share(n_fg));
    assert_eq!(tuner.plan_batch(4), tuner.plan_batch(4), "a step's plan is a function of (seed, step)");

    // Schedules: poly LR and the lambda ramp, reported per step.
    let base_lr = engine.bundle().training().unwrap().optimizer.lr;
    for t in 0..3u64 {
        let plan = tuner.plan_batch(t);
        let r = tuner.step().unwrap();
        assert_eq!(r.step, t + 1);
        assert_eq!(r.lr, poly_lr(base_lr, t, 6, 0.9));
        assert_eq!(r.lambda, ramp_weight(t, 6, 0.5));
        assert_eq!(r.labeled_in_batch, plan.iter().filter(|p| p.labeled).count());
        assert_eq!(r.labeled_in_batch + r.pseudo_in_batch, 2);
    }
    assert!(ramp_weight(0, 6, 0.5) < 0.01 && ramp_weight(3, 6, 0.5) == 1.0);
}

#[test]
fn export_and_apply_run_the_fine_tuned_weights() {
    export_and_apply_on(Device::Cpu);
}

#[test]
fn export_and_apply_run_the_fine_tuned_weights_on_openvino() {
    export_and_apply_on(Device::OpenVino);
}

fn export_and_apply_on(device: Device) {
    let engine = engine_on(device);
    let (image, label) = small("pd", 1);
    let mut tuner = FineTuner::new(&engine, FineTuneOptions { lr: Some(1e-3), ..options(32, 1, 4, 2) }).unwrap();
    tuner.add_labeled("l", &image, &label).unwrap();

    // Before any step, evaluation is the bundle's own segmentation scored against the label.
    let seg = engine.segment(&image, SegmentOutputs::default(), &CancelToken::new().unwrap(), &mut |_| true).unwrap();
    let dice = tuner.evaluate(&[(&image, &label)]).unwrap();
    assert_eq!(dice.len(), 4);
    for (c, d) in dice.iter().enumerate() {
        let c = c as f32;
        let (mut inter, mut total) = (0usize, 0usize);
        for (&p, &t) in seg.labels.data().iter().zip(label.data()) {
            inter += usize::from(p == c && t == c);
            total += usize::from(p == c) + usize::from(t == c);
        }
        let want = if total == 0 { 1.0 } else { 2.0 * inter as f64 / total as f64 };
        assert!((d - want).abs() < 1e-12, "class {c}: {d} vs {want}");
    }

    tuner.step().unwrap();
    tuner.step().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("adapted");
    tuner.export_bundle(&out).unwrap();
    assert!(!dir.path().join("adapted.partial").exists());
    let err = tuner.export_bundle(&out).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message().contains("already exists"), "{}", err.message());

    // The exported bundle loads (validated against its graphs and checkpoint) and its standalone
    // model gives what the original engine gives once switched to the fine-tuned weights.
    let adapted = Engine::new(&out, engine.options().clone()).unwrap();
    let cancel = CancelToken::new().unwrap();
    let before = engine.infer(&image, &cancel, &mut |_| true).unwrap().probabilities;
    tuner.apply_to(&engine).unwrap();
    let applied = engine.infer(&image, &cancel, &mut |_| true).unwrap().probabilities;
    let exported = adapted.infer(&image, &cancel, &mut |_| true).unwrap().probabilities;
    let max_diff = |a: &ndarray::Array4<f32>, b: &ndarray::Array4<f32>| {
        a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max)
    };
    assert!(max_diff(&applied, &exported) < 1e-5, "exported vs applied: {}", max_diff(&applied, &exported));
    assert!(max_diff(&before, &applied) > 1e-3, "the fine-tuned weights must change the output");
    // Its checkpoint continues the run: resuming it gives the same step count.
    let resumed = FineTuner::resume(&adapted, &out.join("checkpoint.safetensors"), None).unwrap();
    assert_eq!(resumed.steps_done(), 2);
    engine.reset_weights().unwrap();
}

#[test]
fn bad_inputs_are_refused_with_clear_errors() {
    let engine = engine();
    let (image, label) = small("pd", 0);
    let mut tuner = FineTuner::new(&engine, options(32, 1, 4, 0)).unwrap();

    let err = tuner.step().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message().contains("annotated volume"), "{}", err.message());

    let mut bad = label.clone();
    bad.data_mut()[1234] = 7.0;
    let err = tuner.add_labeled("bad", &image, &bad).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    assert!(err.message().contains("value 7"), "{}", err.message());
    bad.data_mut()[1234] = 1.5;
    assert_eq!(tuner.add_labeled("bad", &image, &bad).unwrap_err().kind(), ErrorKind::InvalidData);

    let shifted = {
        let mut a = label.affine();
        a[0][3] += 2.0;
        Volume::new(label.data().to_vec(), label.dims(), 1, a).unwrap()
    };
    assert_eq!(tuner.add_labeled("s", &image, &shifted).unwrap_err().kind(), ErrorKind::GeometryMismatch);
    let smaller = crop(&label, [0, 0, 0], [40, 40, 40]);
    assert_eq!(tuner.add_labeled("s", &image, &smaller).unwrap_err().kind(), ErrorKind::GeometryMismatch);

    tuner.add_labeled("ok", &image, &label).unwrap();
    let err = tuner.add_labeled("ok", &image, &label).unwrap_err();
    assert!(err.message().contains("already added"), "{}", err.message());

    for o in [
        FineTuneOptions { batch_size: 0, ..Default::default() },
        FineTuneOptions { pseudo_label_threshold: 1.5, ..Default::default() },
        FineTuneOptions { lr: Some(-1.0), ..Default::default() },
        FineTuneOptions { patch_size: Some([30, 32, 32]), ..Default::default() },
    ] {
        let err = FineTuner::new(&engine, o).err().expect("bad options must be refused");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{}", err.message());
    }

    // Resume: truncated, foreign (the bundle's own checkpoint, another bundle's), mismatched.
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    tuner.save_checkpoint(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = FineTuner::resume(&engine, &truncated, None).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Format, "{}", err.message());
    let bundle_cp = root().join("models/demo_brain_unet/checkpoint.safetensors");
    let err = FineTuner::resume(&engine, &bundle_cp, None).err().unwrap();
    assert!(err.message().contains("not an asfda fine-tuning checkpoint"), "{}", err.message());

    let cp = checkpoint::read(&good, "step").unwrap();
    let rewrite = |name: &str, meta: checkpoint::Meta, shrink: Option<&str>| {
        let tensors: Vec<(String, ndarray::ArrayD<f32>)> = cp
            .tensors
            .iter()
            .map(|(n, v)| {
                let v = if Some(n.as_str()) == shrink {
                    v.slice_axis(ndarray::Axis(0), (0..1).into()).to_owned()
                } else {
                    v.clone()
                };
                (n.clone(), v)
            })
            .collect();
        let bytes = checkpoint::encode(tensors.iter().map(|(n, v)| (n.as_str(), v)), "step", cp.step, &meta).unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let other = checkpoint::Meta { bundle: "some-other-model".into(), ..cp.meta.clone() };
    let err = FineTuner::resume(&engine, &rewrite("other.safetensors", other, None), None).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    assert!(err.message().contains("some-other-model"), "{}", err.message());
    let err =
        FineTuner::resume(&engine, &rewrite("shape.safetensors", cp.meta.clone(), Some("param.head.weight")), None)
            .err()
            .unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    assert!(err.message().contains("param.head.weight") && err.message().contains("shape"), "{}", err.message());
    // And the untouched one resumes.
    assert_eq!(FineTuner::resume(&engine, &good, None).unwrap().steps_done(), 0);
}

/// Pseudo-labels as method.md defines them, from an engine's inference: argmax where the top
/// probability reaches `tau`, `ignore` elsewhere and on the padding.
fn expected_pseudo(engine: &Engine, image: &Volume, tau: f32, ignore: i64) -> ndarray::Array3<i64> {
    let inference = engine.infer(image, &CancelToken::new().unwrap(), &mut |_| true).unwrap();
    let valid = inference.grid.valid_region();
    let (_, z, y, x) = inference.probabilities.dim();
    ndarray::Array3::from_shape_fn((z, y, x), |(k, j, i)| {
        let lane = inference.probabilities.slice(s![.., k, j, i]);
        let (best, p) = lane.iter().enumerate().fold((0, f32::MIN), |b, (c, &p)| if p > b.1 { (c, p) } else { b });
        let inside = valid[0].contains(&k) && valid[1].contains(&j) && valid[2].contains(&i);
        if inside && p >= tau {
            best as i64
        } else {
            ignore
        }
    })
}

#[test]
fn refreshed_pseudo_labels_come_from_the_fine_tuned_weights_and_resume_at_a_boundary() {
    let engine = engine();
    let (labeled, label) = small("pd", 0);
    let (unlabeled, _) = small("pd", 2);
    let o = FineTuneOptions { lr: Some(2e-3), pseudo_label_refresh_every: 2, ..options(32, 1, 8, 5) };
    let mut a = FineTuner::new(&engine, o).unwrap();
    a.add_labeled("l", &labeled, &label).unwrap();
    a.add_unlabeled("u", &unlabeled).unwrap();
    let initial = a.labels("u").unwrap().clone();
    a.step().unwrap();
    a.step().unwrap();
    assert_eq!(a.labels("u").unwrap(), &initial, "no refresh before step index 2");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("at-boundary.safetensors");
    a.save_checkpoint(&path).unwrap();

    // Step index 2 first relabels with the weights after two steps.
    let refreshed_engine = engine.with_weights(&a.weights()).unwrap();
    let want = expected_pseudo(&refreshed_engine, &unlabeled, 0.9, a.ignore_label());
    let expected = a.step().unwrap();
    assert_eq!(a.labels("u").unwrap(), &want);
    let check = a.pseudo_label_check().expect("the step checks the refreshed labeller");
    assert_eq!(check.labeler_step, Some(2));
    assert_ne!(&want, &initial, "two steps at lr 2e-3 should move some pseudo-labels");

    // Resumed at that boundary, pseudo-labels come from the checkpoint's weights: same step.
    let mut b = FineTuner::resume(&engine, &path, None).unwrap();
    b.add_labeled("l", &labeled, &label).unwrap();
    b.add_unlabeled("u", &unlabeled).unwrap();
    assert_eq!(b.labels("u").unwrap(), &want);
    let got = b.step().unwrap();
    assert_eq!(got.loss.to_bits(), expected.loss.to_bits());
    assert!(weights_bits(&a) == weights_bits(&b));
}

#[test]
fn shared_pseudo_labels_train_like_add_unlabeled() {
    let engine = engine();
    let (image, label) = small("pd", 0);
    let (other, _) = small("pd", 1);
    let o = FineTuneOptions { pseudo_label_min_dice: 0.0, ..options(32, 2, 10, 3) };
    let mut direct = FineTuner::new(&engine, o.clone()).unwrap();
    direct.add_labeled("a", &image, &label).unwrap();
    let kept = direct.add_unlabeled("b", &other).unwrap();

    let mut shared = FineTuner::new(&engine, o.clone()).unwrap();
    shared.add_labeled("a", &image, &label).unwrap();
    let pseudo = FineTuner::new(&engine, o.clone()).unwrap().pseudo_label_volume("b", &other).unwrap();
    assert_eq!((pseudo.id(), pseudo.kept_fraction()), ("b", kept));
    assert_eq!(shared.add_pseudo_labeled(&pseudo).unwrap(), kept);
    assert_eq!(shared.labels("b"), direct.labels("b"));
    for _ in 0..2 {
        assert_eq!(shared.step().unwrap(), direct.step().unwrap());
    }
    assert_eq!(weights_bits(&shared), weights_bits(&direct));

    // Another threshold labels differently: refused, as is an id added twice.
    let mut strict = FineTuner::new(&engine, FineTuneOptions { pseudo_label_threshold: 0.99, ..o }).unwrap();
    let err = strict.add_pseudo_labeled(&pseudo).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert_eq!(shared.add_pseudo_labeled(&pseudo).unwrap_err().kind(), ErrorKind::InvalidArgument);
}

/// A shared pseudo-labelled volume carries its prepared image, so a refresh relabels it exactly
/// as it relabels a volume added with add_unlabeled.
#[test]
fn shared_pseudo_labels_are_refreshed_like_added_ones() {
    let engine = engine();
    let (image, label) = small("pd", 0);
    let (other, _) = small("pd", 2);
    let o = FineTuneOptions {
        lr: Some(2e-3),
        pseudo_label_refresh_every: 2,
        pseudo_label_min_dice: 0.0,
        ..options(32, 1, 8, 5)
    };
    let mut direct = FineTuner::new(&engine, o.clone()).unwrap();
    direct.add_labeled("a", &image, &label).unwrap();
    direct.add_unlabeled("b", &other).unwrap();
    let pseudo = FineTuner::new(&engine, o.clone()).unwrap().pseudo_label_volume("b", &other).unwrap();
    drop(other);
    let mut shared = FineTuner::new(&engine, o).unwrap();
    shared.add_labeled("a", &image, &label).unwrap();
    shared.add_pseudo_labeled(&pseudo).unwrap();
    let initial = shared.labels("b").unwrap();
    for _ in 0..3 {
        assert_eq!(shared.step().unwrap(), direct.step().unwrap());
    }
    assert_ne!(shared.labels("b").unwrap(), initial, "step index 2 relabels");
    assert_eq!(shared.labels("b"), direct.labels("b"));
    assert_eq!(weights_bits(&shared), weights_bits(&direct));
}

/// Mean foreground Dice (classes 1..4) of `engine`'s argmax against `labels` (model grid), over
/// the voxels `labels` does not ignore: what the pseudo-label check computes, done by hand.
fn labeler_dice(engine: &Engine, image: &Volume, labels: &ndarray::Array3<i64>, ignore: i64) -> Vec<f64> {
    let argmax = expected_pseudo(engine, image, 0.0, ignore);
    (0..4i64)
        .map(|c| {
            let (mut inter, mut total) = (0usize, 0usize);
            for (&p, &t) in argmax.iter().zip(labels) {
                if t != ignore {
                    inter += usize::from(p == c && t == c);
                    total += usize::from(p == c) + usize::from(t == c);
                }
            }
            if total == 0 {
                1.0
            } else {
                2.0 * inter as f64 / total as f64
            }
        })
        .collect()
}

#[test]
fn pseudo_labels_are_used_only_while_their_model_segments_the_annotations_well() {
    let engine = engine();
    let default_min = FineTuneOptions::default().pseudo_label_min_dice;
    assert_eq!(default_min, 0.5);

    // pd: the unadapted model is confidently wrong there, so its pseudo-labels are withheld.
    let (labeled, label) = small("pd", 0);
    let (unlabeled, _) = small("pd", 3);
    let mut tuner = FineTuner::new(&engine, options(32, 2, 6, 1)).unwrap();
    let err = tuner.check_pseudo_labels().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message().contains("annotated volume"), "{err}");
    tuner.add_labeled("l", &labeled, &label).unwrap();
    tuner.add_unlabeled("u", &unlabeled).unwrap();
    assert!(tuner.pseudo_label_check().is_none(), "made when first needed, not before");
    assert!((0..50).flat_map(|t| tuner.plan_batch(t)).all(|p| p.labeled), "unchecked: no pseudo patch planned");
    let check = tuner.check_pseudo_labels().unwrap().clone();
    let want = labeler_dice(&engine, &labeled, &tuner.labels("l").unwrap(), tuner.ignore_label());
    for (got, want) in check.dice.iter().zip(&want) {
        assert!((got - want).abs() < 1e-12, "{:?} vs {want:?}", check.dice);
    }
    assert!((check.foreground_dice - (want[1] + want[2] + want[3]) / 3.0).abs() < 1e-12);
    assert_eq!(check.labeler_step, None);
    assert!(check.foreground_dice < default_min && !check.trusted, "{check:?}");
    for _ in 0..3 {
        let r = tuner.step().unwrap();
        assert_eq!((r.labeled_in_batch, r.pseudo_in_batch), (2, 0), "step {}", r.step);
    }
    // A new annotated volume makes the check out of date.
    let (labeled2, label2) = small("pd", 1);
    tuner.add_labeled("l2", &labeled2, &label2).unwrap();
    assert!(tuner.pseudo_label_check().is_none());

    // A threshold at the measured Dice (>=) trusts the same pseudo-labels: they are drawn.
    let o = FineTuneOptions { pseudo_label_min_dice: check.foreground_dice, ..options(32, 2, 6, 1) };
    let mut lenient = FineTuner::new(&engine, o).unwrap();
    lenient.add_labeled("l", &labeled, &label).unwrap();
    lenient.add_unlabeled("u", &unlabeled).unwrap();
    assert!(lenient.check_pseudo_labels().unwrap().trusted);
    assert!((0..50).flat_map(|t| lenient.plan_batch(t)).any(|p| !p.labeled));

    // thick: the unadapted model segments well, so the default threshold trusts it.
    let (labeled, label) = small("thick", 0);
    let mut thick = FineTuner::new(&engine, options(32, 2, 6, 1)).unwrap();
    thick.add_labeled("l", &labeled, &label).unwrap();
    let check = thick.check_pseudo_labels().unwrap();
    assert!(check.trusted && check.foreground_dice >= default_min, "{check:?}");
}

/// Needs an NVIDIA GPU and the CUDA flavour of ONNX Runtime: `make test-gpu`. The same run on
/// CUDA and on CPU: the same patches (sampling does not depend on the device), the same
/// pseudo-label check outcome, and losses and weights equal to f32 round-off (cuDNN sums in
/// another order).
#[test]
#[ignore = "needs a GPU: run `make test-gpu`"]
fn gpu_fine_tuning_steps_match_cpu() {
    let cuda = Engine::new(
        &root().join("models/demo_brain_unet"),
        EngineOptions {
            runtime: RuntimeOptions { device: Device::Cuda(0), ..Default::default() },
            ..Default::default()
        },
    )
    .unwrap();
    let (image, label) = small("thick", 0);
    let (other, _) = small("thick", 1);
    let run = |engine: &Engine| {
        let mut tuner = FineTuner::new(engine, options(32, 2, 4, 7)).unwrap();
        tuner.add_labeled("a", &image, &label).unwrap();
        tuner.add_unlabeled("b", &other).unwrap();
        let steps: Vec<_> = (0..3).map(|_| tuner.step().unwrap()).collect();
        let check = tuner.pseudo_label_check().cloned();
        (steps, check, tuner)
    };
    let (cpu_steps, cpu_check, cpu) = run(&engine());
    let (gpu_steps, gpu_check, gpu) = run(&cuda);
    assert_eq!(gpu_check.map(|c| c.trusted), cpu_check.map(|c| c.trusted));
    for (g, c) in gpu_steps.iter().zip(&cpu_steps) {
        assert_eq!((g.step, g.labeled_in_batch, g.pseudo_in_batch), (c.step, c.labeled_in_batch, c.pseudo_in_batch));
        assert!((g.loss - c.loss).abs() <= 1e-3 * c.loss.abs(), "loss CUDA {} vs CPU {}", g.loss, c.loss);
    }
    // Adam moves a weight whose gradient is ~0 by up to lr either way, so single weights may
    // differ by that much; overall, the two runs must differ far less than training moved them.
    let initial = FineTuner::new(&engine(), options(32, 2, 4, 7)).unwrap();
    let (mut apart, mut moved) = (0.0f64, 0.0f64);
    for (((_, g), (_, c)), (_, w0)) in gpu.weights().into_iter().zip(cpu.weights()).zip(initial.weights()) {
        for ((a, b), w) in g.iter().zip(c.iter()).zip(w0.iter()) {
            apart += f64::from((a - b).abs());
            moved += f64::from((b - w).abs());
        }
    }
    assert!(moved > 0.0 && apart <= 0.05 * moved, "CUDA vs CPU weights differ by {apart}, training moved them {moved}");
}
