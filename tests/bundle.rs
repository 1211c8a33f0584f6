//! The shipped demo bundle: validation against its real graphs and files, the train-step graph
//! driven from Rust reproducing the generator's PyTorch losses, and inference with the updated
//! weights. Needs `make ort` (the README's test command runs it).

use std::path::{Path, PathBuf};

use asfda::bundle::Bundle;
use asfda::finetune::{Batch, Trainer};
use asfda::model::Model;
use asfda::runtime::RuntimeOptions;
use asfda::tensors::TensorFile;
use asfda::ErrorKind;
use ndarray::{ArrayD, IxDyn};

fn demo_bundle_dir() -> PathBuf {
    std::env::var_os("ASFDA_TEST_BUNDLE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo_brain_unet"))
}

fn options() -> RuntimeOptions {
    RuntimeOptions { threads: 2, ..Default::default() }
}

fn load() -> Bundle {
    Bundle::load(&demo_bundle_dir(), &options()).unwrap_or_else(|e| panic!("{e}"))
}

struct Reference {
    losses: Vec<f64>,
    lr: f32,
    weight_decay: f32,
    image: ArrayD<f32>,
    labels: ArrayD<i64>,
    loss_weight: Vec<f32>,
}

fn reference() -> Reference {
    let dir = demo_bundle_dir();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let batch = TensorFile::open(&dir.join(json["batch_file"].as_str().unwrap())).unwrap();
    let labels_shape = batch.shape("labels").unwrap();
    Reference {
        losses: json["loss"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect(),
        lr: json["lr"].as_f64().unwrap() as f32,
        weight_decay: json["weight_decay"].as_f64().unwrap() as f32,
        image: batch.f32("image").unwrap(),
        labels: ArrayD::from_shape_vec(IxDyn(&labels_shape), batch.i64("labels").unwrap()).unwrap(),
        loss_weight: batch.f32("loss_weight").unwrap().into_raw_vec_and_offset().0,
    }
}

#[test]
fn demo_bundle_is_valid_and_describes_itself() {
    let bundle = load();
    let m = bundle.manifest();
    let names: Vec<&str> = m.classes.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["background", "csf_other", "gm", "wm"]);
    // Every foreground class says what it is (colour, SNOMED CT codes), as DICOM SEG needs.
    for &c in &m.foreground_classes {
        let code = m.classes[c].code.as_ref().unwrap_or_else(|| panic!("class {c} has no code"));
        assert_eq!((code.category.scheme.as_str(), code.kind.scheme.as_str()), ("SCT", "SCT"));
        assert!(m.classes[c].color.is_some());
    }
    assert_eq!(m.classes[3].code.as_ref().unwrap().kind.meaning, "White Matter");
    assert_eq!(m.foreground_classes, [1, 2, 3]);
    assert!(m.input.patch_size.iter().all(|&s| s >= 64 && s % m.input.size_divisible_by == 0));
    let training = bundle.training().unwrap();
    assert!(training.parameters.iter().filter(|p| p.trainable).count() > 10);
    let knowledge = bundle.source_knowledge().unwrap().expect("the demo ships source knowledge");
    let c = m.inference.feature_channels;
    assert_eq!((knowledge.mean.len(), knowledge.var.len()), (c, c));
    assert_eq!(knowledge.anchors.shape()[1], c);
    assert!(knowledge.var.iter().all(|&v| v >= 0.0));
}

#[test]
fn train_steps_from_rust_reproduce_the_pytorch_reference() {
    let bundle = load();
    let r = reference();
    let mut trainer = Trainer::new(&bundle, &options()).unwrap();
    assert_eq!(trainer.steps_taken(), 0);
    let batch = Batch { image: r.image.view(), labels: r.labels.view(), loss_weight: &r.loss_weight };
    let mut losses = Vec::new();
    for (i, want) in r.losses.iter().enumerate() {
        let report = trainer.step(&batch, r.lr, r.weight_decay).unwrap();
        assert_eq!(report.step, i as i64 + 1);
        assert!((report.loss - (report.loss_ce + report.loss_dice)).abs() < 1e-4 * report.loss.abs().max(1.0));
        let rel = (report.loss as f64 - want).abs() / want.abs();
        // f32 ORT vs f32 PyTorch: the same math in another order; errors grow a little per step.
        assert!(rel < 1e-4 * (i as f64 + 1.0), "step {}: rust {} vs pytorch {want} (rel {rel:e})", i + 1, report.loss);
        losses.push(report.loss);
    }
    assert!(losses.last().unwrap() < &losses[0], "loss must decrease on a repeated batch: {losses:?}");
}

#[test]
fn inference_uses_injected_weights() {
    let bundle = load();
    let r = reference();
    let input = r.image.slice_axis(ndarray::Axis(0), ndarray::Slice::from(0..1)).to_owned();
    let mut trainer = Trainer::new(&bundle, &options()).unwrap();
    let plain = Model::load(&bundle.inference_path(), &options()).unwrap().run(input.view()).unwrap();

    // The checkpoint's own weights injected by name give exactly the plain model's outputs ...
    let same = Model::load_with_weights(&bundle.inference_path(), &options(), &trainer.weights()).unwrap();
    assert_eq!(same.run(input.view()).unwrap(), plain);

    // ... and fine-tuned weights change them.
    let batch = Batch { image: r.image.view(), labels: r.labels.view(), loss_weight: &r.loss_weight };
    for _ in 0..2 {
        trainer.step(&batch, r.lr, r.weight_decay).unwrap();
    }
    let tuned = Model::load_with_weights(&bundle.inference_path(), &options(), &trainer.weights()).unwrap();
    let out = tuned.run(input.view()).unwrap();
    let max_diff = out[0].iter().zip(plain[0].iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(max_diff > 1e-4, "fine-tuned weights did not reach the inference session (max diff {max_diff})");
}

#[test]
fn bad_batches_are_refused_without_changing_state() {
    let bundle = load();
    let r = reference();
    let mut trainer = Trainer::new(&bundle, &options()).unwrap();
    let mut labels = r.labels.clone();
    labels.iter_mut().take(1).for_each(|l| *l = 7);
    let batch = Batch { image: r.image.view(), labels: labels.view(), loss_weight: &r.loss_weight };
    let err = trainer.step(&batch, r.lr, r.weight_decay).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message().contains("label value 7"), "{err}");

    let short = [1.0f32];
    let batch = Batch { image: r.image.view(), labels: r.labels.view(), loss_weight: &short };
    assert_eq!(trainer.step(&batch, r.lr, r.weight_decay).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(trainer.steps_taken(), 0);
}

/// Copies the demo bundle into a temp folder and edits its manifest.
fn tampered(edit: impl FnOnce(&mut serde_json::Value)) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bundle");
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(demo_bundle_dir()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let manifest_path = dir.join(asfda::bundle::MANIFEST_FILE);
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    edit(&mut manifest);
    std::fs::write(&manifest_path, serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
    (tmp, dir)
}

fn load_error(dir: &Path) -> asfda::Error {
    Bundle::load(dir, &options()).expect_err("the tampered bundle must be refused")
}

#[test]
fn inconsistent_bundles_are_reported_by_name() {
    let (_t, dir) = tampered(|m| m["inference"]["logits"] = "logitz".into());
    let err = load_error(&dir);
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    assert!(err.message().contains("'logitz'"), "{err}");

    let (_t, dir) = tampered(|m| {
        let p = &mut m["training"]["parameters"][0];
        p["shape"] = serde_json::json!([3, 3]);
    });
    let err = load_error(&dir);
    assert!(err.message().contains("has shape") && err.message().contains("[3, 3]"), "{err}");

    let (_t, dir) = tampered(|m| m["format_version"] = 2.into());
    assert!(load_error(&dir).message().contains("format_version: 2"));

    let (_t, dir) = tampered(|m| m["foreground_classes"] = serde_json::json!([0, 9]));
    assert!(load_error(&dir).message().contains("foreground_classes"));

    let (_t, dir) = tampered(|m| m["input"]["normalization"] = serde_json::json!({"kind": "magic"}));
    let err = load_error(&dir);
    assert_eq!(err.kind(), ErrorKind::Format);
    assert!(err.message().contains("magic"), "{err}");

    // Enums name the field and the allowed values.
    let (_t, dir) = tampered(|m| m["input"]["orientation"] = "LPS".into());
    let err = load_error(&dir);
    assert_eq!(err.kind(), ErrorKind::Format);
    assert!(err.message().contains("input.orientation: unknown variant `LPS`, expected `RAS`"), "{err}");
    let (_t, dir) = tampered(|m| m["training"]["optimizer"]["kind"] = "sgd".into());
    assert!(load_error(&dir).message().contains("training.optimizer.kind: unknown variant `sgd`"));
    let (_t, dir) = tampered(|m| {
        m["training"]["optimizer"].as_object_mut().unwrap().remove("lr");
    });
    assert!(load_error(&dir).message().contains("training.optimizer.lr: missing"));

    // Normalisation parameters are checked at load, not per call.
    let (_t, dir) = tampered(|m| {
        m["input"]["normalization"] =
            serde_json::json!({"kind": "ct_window", "lower": 0, "upper": 1, "mean": 0, "std": 0})
    });
    let err = load_error(&dir);
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    assert!(err.message().contains("input.normalization.std"), "{err}");

    let (_t, dir) = tampered(|_| {});
    std::fs::remove_file(dir.join("checkpoint.safetensors")).unwrap();
    let err = load_error(&dir);
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.message().contains("checkpoint.safetensors"), "{err}");
}

/// The first problem line of a load error is about `field` (not about ONNX or a file's content).
fn assert_names(err: &asfda::Error, field: &str) {
    assert!(err.message().contains(&format!("{field}:")), "'{field}' not named in: {err}");
    assert!(!err.message().contains("ONNX"), "the path was opened: {err}");
}

#[test]
fn file_names_outside_the_bundle_are_refused_before_opening() {
    let (_t, dir) = tampered(|m| m["inference"]["file"] = "/etc/passwd".into());
    let err = load_error(&dir);
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    assert_names(&err, "inference.file");
    assert!(err.message().contains("plain relative path"), "{err}");

    let (_t, dir) = tampered(|m| m["training"]["train_step"] = "../train_step.onnx".into());
    // The file exists there: only the name is refused.
    std::fs::copy(dir.join("train_step.onnx"), dir.parent().unwrap().join("train_step.onnx")).unwrap();
    let err = load_error(&dir);
    assert_names(&err, "training.train_step");

    let (_t, dir) = tampered(|m| m["source_knowledge"]["file"] = "".into());
    assert_names(&load_error(&dir), "source_knowledge.file");
}

#[cfg(unix)]
#[test]
fn a_symlink_pointing_outside_the_bundle_is_refused() {
    let (_t, dir) = tampered(|_| {});
    let outside = dir.parent().unwrap().join("elsewhere.onnx");
    std::fs::rename(dir.join("model.onnx"), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("model.onnx")).unwrap();
    let err = load_error(&dir);
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    assert!(err.message().contains("inference.file") && err.message().contains("outside the bundle"), "{err}");

    // A symlink that stays inside is fine.
    let (_t, dir) = tampered(|_| {});
    std::fs::create_dir(dir.join("graphs")).unwrap();
    std::fs::rename(dir.join("model.onnx"), dir.join("graphs/model.onnx")).unwrap();
    std::os::unix::fs::symlink("graphs/model.onnx", dir.join("model.onnx")).unwrap();
    Bundle::load(&dir, &options()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_flipped_byte_is_refused_naming_the_file() {
    let (_t, dir) = tampered(|_| {});
    let path = dir.join("model.onnx");
    let mut bytes = std::fs::read(&path).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let err = load_error(&dir);
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    assert!(
        err.message().contains("model.onnx") && err.message().contains("SHA-256") && err.message().contains("corrupt"),
        "{err}"
    );
}

#[test]
fn digests_are_checked_and_optional() {
    // An older bundle without digests loads (with a warning).
    let (_t, dir) = tampered(|m| {
        m.as_object_mut().unwrap().remove("sha256");
    });
    Bundle::load(&dir, &options()).unwrap_or_else(|e| panic!("{e}"));

    let (_t, dir) = tampered(|m| m["sha256"]["model.onnx"] = "ABC".into());
    assert_names(&load_error(&dir), "sha256.model.onnx");
    let (_t, dir) = tampered(|m| m["sha256"]["other.bin"] = "0".repeat(64).into());
    assert_names(&load_error(&dir), "sha256.other.bin");
}

#[test]
fn absurd_numbers_are_refused_naming_the_field() {
    let (_t, dir) = tampered(|m| m["input"]["spacing_mm"] = serde_json::json!([1.0, 1e300, 1.0]));
    let err = load_error(&dir);
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    assert_names(&err, "input.spacing_mm");
    let (_t, dir) = tampered(|m| m["training"]["optimizer"]["lr"] = (-1e-3).into());
    assert_names(&load_error(&dir), "training.optimizer.lr");
    let (_t, dir) = tampered(|m| m["input"]["patch_size"] = serde_json::json!([32, 32, 4096]));
    assert_names(&load_error(&dir), "input.patch_size");
    let (_t, dir) = tampered(|m| m["source_knowledge"]["k"] = 1_000_000.into());
    assert_names(&load_error(&dir), "source_knowledge.k");
}

#[test]
fn an_adapted_bundle_records_its_new_digests_and_loads() {
    let bundle = load();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("adapted");
    let checkpoint = std::fs::read(bundle.path("checkpoint.safetensors")).unwrap();
    let note = serde_json::json!({"what": "test"});
    // The model and checkpoint as they are: the recomputed digests equal the source's.
    let inference = |b: &[u8]| Ok(b.to_vec());
    let adaptation = asfda::bundle::Adaptation { checkpoint: &checkpoint, inference: &inference, note: &note };
    bundle.write_adapted(&out, &adaptation).unwrap();
    let adapted = Bundle::load(&out, &options()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(adapted.manifest().sha256, bundle.manifest().sha256);

    // A bundle written from an older (digest-less) source gets digests, other content kept.
    let (_t, dir) = tampered(|m| {
        m.as_object_mut().unwrap().remove("sha256");
        m["x_extra"] = "kept".into();
    });
    let old = Bundle::load(&dir, &options()).unwrap();
    let out = tmp.path().join("adapted2");
    let adaptation = asfda::bundle::Adaptation { checkpoint: &checkpoint, inference: &inference, note: &note };
    old.write_adapted(&out, &adaptation).unwrap();
    let text = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(value["x_extra"], "kept");
    assert_eq!(value["sha256"].as_object().unwrap().len(), 4);
    Bundle::load(&out, &options()).unwrap_or_else(|e| panic!("{e}"));
}
