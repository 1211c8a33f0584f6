//! Device `openvino`: the CPU through the OpenVINO execution provider plugin (docs/openvino.md).
//! Inference and the train step on OpenVINO agree with ONNX Runtime's CPU provider; `auto`
//! chooses it; a missing plugin is a clear error with `openvino` and a logged fallback with
//! `auto`. Needs `make ort`, `make ort-openvino` and `make data` (the test command runs them);
//! the fine-tuning tests that also run on OpenVINO are in tests/finetune.rs.

use std::path::Path;
use std::process::{Command, Output};

use asfda::cancel::CancelToken;
use asfda::engine::{Engine, EngineOptions};
use asfda::finetune::{FineTuneOptions, FineTuner};
use asfda::model::Model;
use asfda::runtime::Device;
use asfda::volume::{read_nifti, ReadOptions, Volume};
use asfda::ErrorKind;
use ndarray::Axis;

mod common;
use common::{crop, data_dir, root};
#[path = "common/openvino.rs"]
mod openvino;

fn engine(device: Device) -> Engine {
    let options = EngineOptions { runtime: openvino::options(device), ..Default::default() };
    Engine::new(&root().join("models/demo_brain_unet"), options).unwrap()
}

fn pool(site: &str, i: usize) -> (Volume, Volume) {
    let dir = data_dir().join(site);
    let read = |p: &Path| read_nifti(p, &ReadOptions::default()).unwrap();
    let image = read(&dir.join(format!("pool/{site}_pool_{i:03}_image.nii.gz")));
    let label = read(&dir.join(format!("pool_labels/{site}_pool_{i:03}_label.nii.gz")));
    let (origin, size) = ([22, 30, 24], [56, 64, 48]);
    (crop(&image, origin, size), crop(&label, origin, size))
}

/// Tolerances (f32 on both sides; OpenVINO's convolutions sum in another order, and use Winograd
/// where the CPU offers it): probabilities within 5e-3 (measured 2.3e-3 on an AMD EPYC; bf16
/// would move them by ~1e-1, docs/openvino.md), the argmax equal on at least 99.9% of voxels
/// (measured 99.995%).
const PROBABILITY_TOLERANCE: f32 = 5e-3;
const ARGMAX_AGREEMENT: f64 = 0.999;

#[test]
fn inference_through_openvino_agrees_with_the_cpu_provider() {
    let (cpu, ov) = (engine(Device::Cpu), engine(Device::OpenVino));
    assert_eq!((cpu.device(), ov.device()), (Device::Cpu, Device::OpenVino));
    let cancel = CancelToken::new().unwrap();
    for (site, i) in [("pd", 0), ("thick", 1)] {
        let (image, _) = pool(site, i);
        let a = cpu.infer(&image, &cancel, &mut |_| true).unwrap().probabilities;
        let b = ov.infer(&image, &cancel, &mut |_| true).unwrap().probabilities;
        assert_eq!(a.shape(), b.shape());
        let max_diff = a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        let argmax = |p: &ndarray::Array4<f32>| {
            p.map_axis(Axis(0), |v| {
                v.iter().enumerate().fold((0, f32::MIN), |m, (c, &x)| if x > m.1 { (c, x) } else { m }).0
            })
        };
        let (la, lb) = (argmax(&a), argmax(&b));
        let agree = la.iter().zip(lb.iter()).filter(|(x, y)| x == y).count() as f64 / la.len() as f64;
        eprintln!("{site} {i}: max |p_cpu - p_openvino| = {max_diff:.2e}, argmax agreement {agree:.6}");
        assert!(max_diff < PROBABILITY_TOLERANCE, "{site} {i}: probabilities differ by {max_diff}");
        assert!(agree >= ARGMAX_AGREEMENT, "{site} {i}: argmax agrees on {agree}");
    }
}

#[test]
fn train_steps_through_openvino_agree_with_the_cpu_provider() {
    let (image, label) = pool("pd", 1);
    let (other, _) = pool("pd", 2);
    let options = FineTuneOptions {
        patch_size: Some([32; 3]),
        batch_size: 2,
        total_steps: 6,
        lr: Some(1e-3),
        pseudo_label_min_dice: 0.0,
        seed: 5,
        ..Default::default()
    };
    let run = |device| {
        let engine = engine(device);
        let mut tuner = FineTuner::new(&engine, options.clone()).unwrap();
        tuner.add_labeled("a", &image, &label).unwrap();
        tuner.add_unlabeled("b", &other).unwrap();
        let steps: Vec<_> = (0..3).map(|_| tuner.step().unwrap()).collect();
        (steps, tuner)
    };
    let (cpu_steps, cpu) = run(Device::Cpu);
    let (ov_steps, ov) = run(Device::OpenVino);
    let initial = FineTuner::new(&engine(Device::Cpu), options.clone()).unwrap();
    for (o, c) in ov_steps.iter().zip(&cpu_steps) {
        eprintln!("step {}: loss CPU {} OpenVINO {}", c.step, c.loss, o.loss);
        assert_eq!((o.step, o.labeled_in_batch, o.pseudo_in_batch), (c.step, c.labeled_in_batch, c.pseudo_in_batch));
        assert!((o.loss - c.loss).abs() <= 1e-3 * c.loss.abs(), "loss OpenVINO {} vs CPU {}", o.loss, c.loss);
        assert!((o.loss_dice - c.loss_dice).abs() <= 1e-3 * c.loss_dice.abs().max(1e-3));
    }
    // Parameter updates: AdamW moves a weight whose gradient is ~0 by up to lr either way, so
    // single weights may differ by that much; summed over all weights the two runs' updates must
    // differ by at most 5% of the updates themselves (bf16 gave 17%).
    let (mut apart, mut moved) = (0.0f64, 0.0f64);
    for (((_, o), (_, c)), (_, w0)) in ov.weights().into_iter().zip(cpu.weights()).zip(initial.weights()) {
        for ((a, b), w) in o.iter().zip(c.iter()).zip(w0.iter()) {
            apart += f64::from((a - b).abs());
            moved += f64::from((b - w).abs());
        }
    }
    eprintln!("updates: |OpenVINO - CPU| = {apart:.4e}, |CPU update| = {moved:.4e} ({:.3}%)", 100.0 * apart / moved);
    assert!(
        moved > 0.0 && apart <= 0.05 * moved,
        "OpenVINO vs CPU weights differ by {apart}, training moved them {moved}"
    );
}

#[test]
fn auto_runs_on_openvino_when_there_is_no_cuda() {
    let tiny = root().join("models/tiny_conv3d/tiny_conv3d.onnx");
    let model = Model::load(&tiny, &openvino::options(Device::Auto)).unwrap();
    assert_eq!(model.device(), Device::OpenVino, "the CPU build of ONNX Runtime has no CUDA: auto must pick OpenVINO");
    let engine = engine(Device::Auto);
    assert_eq!(engine.device(), Device::OpenVino);
    // The train step too (compiled for the batch shape at the first step).
    let options = FineTuneOptions { patch_size: Some([32; 3]), batch_size: 1, total_steps: 2, ..Default::default() };
    let mut tuner = FineTuner::new(&engine, options).unwrap();
    let (image, label) = pool("thick", 0);
    tuner.add_labeled("a", &image, &label).unwrap();
    assert!(tuner.step().unwrap().loss.is_finite());
    assert_eq!(tuner.device(), Device::OpenVino);
}

fn cli() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_asfda"))
}

/// `asfda run-model --device DEVICE` on the tiny model, with the user cache moved to `cache`,
/// ONNX Runtime named explicitly and `env` added.
fn run_model(cache: &Path, device: &str, env: &[(&str, &Path)]) -> Output {
    let ort = asfda::runtime::Runtime::load(None).unwrap().info().library_path.clone();
    let out = cache.join(format!("out-{device}.nii"));
    let mut cmd = Command::new(cli());
    cmd.args(["run-model", "--device", device, "--model"])
        .arg(root().join("models/tiny_conv3d/tiny_conv3d.onnx"))
        .arg("--input")
        .arg(root().join("data/anatomical.nii"))
        .arg("--output")
        .arg(&out)
        .env_remove("ASFDA_OPENVINO_LIBRARY")
        .env("ASFDA_CACHE_DIR", cache)
        .env("ASFDA_ORT_LIBRARY", ort);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("asfda CLI runs")
}

#[test]
fn openvino_without_the_plugin_fails_clearly_and_auto_falls_back() {
    let cache = tempfile::tempdir().unwrap();
    let out = run_model(cache.path(), "openvino", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail without the plugin");
    for needle in [
        "device 'openvino' requested but the OpenVINO plugin was not found",
        "make ort-openvino",
        "ASFDA_OPENVINO_LIBRARY",
    ] {
        assert!(stderr.contains(needle), "missing '{needle}' in: {stderr}");
    }
    assert!(stderr.contains(&cache.path().join("onnxruntime-ep-openvino").display().to_string()), "{stderr}");
    // A configured path that does not exist is named, not replaced by another.
    let missing = cache.path().join("nope/libonnxruntime_providers_openvino_plugin.so");
    let out = run_model(cache.path(), "openvino", &[("ASFDA_OPENVINO_LIBRARY", &missing)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(&*missing.to_string_lossy()) && stderr.contains("does not exist"),
        "{stderr}"
    );
    // auto runs anyway (on the CPU provider).
    let out = run_model(cache.path(), "auto", &[]);
    assert!(out.status.success(), "auto must fall back: {}", String::from_utf8_lossy(&out.stderr));
    assert!(cache.path().join("out-auto.nii").is_file());
}

/// The unmodified plugin: on an Intel CPU it runs; on another CPU asfda says it offers no
/// device there (naming the vendor) and `auto` falls back to the CPU provider.
#[test]
fn the_plugin_as_shipped_runs_on_intel_and_is_refused_clearly_elsewhere() {
    let cache = tempfile::tempdir().unwrap();
    let real = openvino::cached_plugin();
    let out = run_model(cache.path(), "openvino", &[("ASFDA_OPENVINO_LIBRARY", &real)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if openvino::intel_cpu() {
        assert!(out.status.success(), "{stderr}");
    } else {
        assert!(!out.status.success());
        assert!(stderr.contains("offers no OpenVINO CPU device on this machine"), "{stderr}");
        assert!(stderr.contains("Intel devices only") && stderr.contains("this CPU's vendor is"), "{stderr}");
        let out = run_model(cache.path(), "auto", &[("ASFDA_OPENVINO_LIBRARY", &real)]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

/// A graph OpenVINO refuses and the CPU provider runs: the train step with its dynamic shapes
/// (the trainer compiles it per batch shape instead, see above).
#[test]
fn a_graph_openvino_refuses_fails_clearly_on_openvino_and_runs_on_the_cpu_with_auto() {
    use asfda::runtime::{ModelSource, Runtime};
    let runtime = Runtime::load(None).unwrap();
    let train_step = root().join("models/demo_brain_unet/train_step.onnx");
    let Err(err) = runtime.session(&openvino::options(Device::OpenVino), ModelSource::File(&train_step), None, Ok)
    else {
        panic!("OpenVINO must refuse the train step's dynamic weight shapes");
    };
    assert_eq!(err.kind(), ErrorKind::Model, "{err}");
    assert!(err.message().contains("OpenVINO could not load model"), "{err}");
    assert!(err.message().contains("dynamic weights shape"), "{err}");
    assert!(err.message().contains("Use device 'cpu'"), "{err}");
    let (_, used) =
        runtime.session(&openvino::options(Device::Auto), ModelSource::File(&train_step), None, Ok).unwrap();
    assert_eq!(used, Device::Cpu);
}

#[test]
fn a_model_openvino_refuses_is_a_model_error_naming_openvino() {
    // A file that is not ONNX: ONNX Runtime refuses it before OpenVINO sees it, on either device;
    // on OpenVINO the error says which device refused.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.onnx");
    std::fs::write(&bad, b"not a model").unwrap();
    let err = Model::load(&bad, &openvino::options(Device::OpenVino)).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Model, "{err}");
    assert!(err.message().contains("OpenVINO could not load model") && err.message().contains("bad.onnx"), "{err}");
    // auto falls back to the CPU provider, which refuses it too: the CPU's error.
    let err = Model::load(&bad, &openvino::options(Device::Auto)).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Model, "{err}");
}
