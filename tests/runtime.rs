//! ONNX Runtime resolution, runtime info, devices and the first real model run.
//!
//! Resolution is process-global, so each resolution case runs the `asfda` CLI in a child process
//! with its own environment. Needs `make ort` (the README's test command runs it).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use asfda::model::Model;
use asfda::runtime::{Device, Runtime, RuntimeOptions};
use asfda::volume::{read_nifti, ReadOptions};
use asfda::ErrorKind;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn cached_ort() -> PathBuf {
    let dir = asfda::runtime::cache_dir().expect("HOME is set").join("onnxruntime/cpu");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|_| panic!("{} missing: run `make ort` first", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with("libonnxruntime.so."))
        .expect("no libonnxruntime.so.* in the cache: run `make ort`")
}

/// Runs `asfda info --json` (plus `extra` args) with a clean resolution environment plus `env`.
fn info(exe: &Path, env: &[(&str, &str)], extra: &[&str]) -> Output {
    let mut cmd = Command::new(exe);
    cmd.arg("info").arg("--json").args(extra);
    for var in ["ASFDA_ORT_LIBRARY", "ORT_DYLIB_PATH", "ASFDA_CACHE_DIR"] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("asfda CLI runs")
}

fn cli() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_asfda"))
}

fn source_of(out: &Output) -> String {
    assert!(out.status.success(), "asfda info failed: {}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ort_version"], "1.31.1");
    json["library_source"].as_str().unwrap().to_string()
}

fn stderr(out: &Output) -> String {
    assert!(!out.status.success(), "expected failure, got: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_user_cache_is_the_default() {
    assert_eq!(source_of(&info(cli(), &[], &[])), "user_cache");
}

/// Strings in the `.rodata` section of an ELF file (what `readelf -p` prints).
fn rodata(file: &Path) -> String {
    let out = Command::new("readelf").arg("-p").arg(".rodata").arg(file).output().expect("readelf runs (binutils)");
    assert!(out.status.success(), "readelf {}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn no_build_tree_path_is_compiled_into_the_library_or_the_cli() {
    let tree = root().to_str().unwrap();
    let lib = cli().with_file_name("libasfda.so");
    for file in [cli(), lib.as_path()] {
        let strings = rodata(file);
        assert!(strings.len() > 1000, "{}: no .rodata strings read", file.display());
        assert!(!strings.contains(tree), "{} holds the build tree's path {tree}", file.display());
    }
}

#[test]
fn an_unpacked_release_layout_runs_with_nothing_of_the_build_tree() {
    // <prefix>/bin/asfda, <prefix>/lib/libonnxruntime.so.*, <prefix>/share/asfda/models/...
    let prefix = tempfile::tempdir().unwrap();
    let p = prefix.path();
    for dir in ["bin", "lib", "share/asfda/models"] {
        std::fs::create_dir_all(p.join(dir)).unwrap();
    }
    std::fs::copy(cli(), p.join("bin/asfda")).unwrap();
    std::fs::copy(cached_ort(), p.join("lib").join(cached_ort().file_name().unwrap())).unwrap();
    let bundle = p.join("share/asfda/models/demo_brain_unet");
    std::fs::create_dir(&bundle).unwrap();
    for entry in std::fs::read_dir(root().join("models/demo_brain_unet")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), bundle.join(entry.file_name())).unwrap();
    }
    let home = tempfile::tempdir().unwrap();
    let env = [("HOME", home.path().to_str().unwrap()), ("XDG_CACHE_HOME", home.path().to_str().unwrap())];
    let exe = p.join("bin/asfda");
    assert_eq!(source_of(&info(&exe, &env, &[])), "beside_library");
    // The default bundle is the one under share/asfda: the tree's own is never looked at.
    let volume = root().join("data/anatomical.nii");
    let labels = p.join("labels.nii.gz");
    let mut cmd = Command::new(&exe);
    cmd.args(["segment", "--threads", "1", "--json"]).arg(&volume).arg("--out").arg(&labels).current_dir(p);
    for var in ["ASFDA_ORT_LIBRARY", "ORT_DYLIB_PATH", "ASFDA_CACHE_DIR"] {
        cmd.env_remove(var);
    }
    let out = cmd.envs(env).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(labels.is_file());
    std::fs::remove_dir_all(&bundle).unwrap();
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("share/asfda/models/demo_brain_unet"), "the missing default bundle is named: {err}");
}

#[test]
fn resolution_order_explicit_then_asfda_env_then_ort_env() {
    let lib = cached_ort();
    let lib = lib.to_str().unwrap();
    assert_eq!(source_of(&info(cli(), &[("ORT_DYLIB_PATH", lib)], &[])), "ort_env");
    assert_eq!(source_of(&info(cli(), &[("ASFDA_ORT_LIBRARY", lib), ("ORT_DYLIB_PATH", "/nope")], &[])), "asfda_env");
    let both = [("ASFDA_ORT_LIBRARY", "/nope1"), ("ORT_DYLIB_PATH", "/nope2")];
    assert_eq!(source_of(&info(cli(), &both, &["--ort", lib])), "explicit");
}

#[test]
fn a_configured_path_that_is_wrong_is_an_error_not_a_fallback() {
    let msg = stderr(&info(cli(), &[("ASFDA_ORT_LIBRARY", "/no/such/libonnxruntime.so")], &[]));
    assert!(msg.contains("/no/such/libonnxruntime.so") && msg.contains("ASFDA_ORT_LIBRARY"), "{msg}");

    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libonnxruntime.so.1.31.1");
    std::fs::write(&fake, b"definitely not ELF").unwrap();
    let msg = stderr(&info(cli(), &[], &["--ort", fake.to_str().unwrap()]));
    assert!(msg.contains("cannot load ONNX Runtime") && msg.contains(fake.to_str().unwrap()), "{msg}");
}

#[test]
fn nothing_found_says_where_it_looked_and_how_to_fix_it() {
    let empty = tempfile::tempdir().unwrap();
    let msg = stderr(&info(cli(), &[("ASFDA_CACHE_DIR", empty.path().to_str().unwrap())], &[]));
    assert!(msg.contains("ONNX Runtime not found"), "{msg}");
    assert!(msg.contains(empty.path().to_str().unwrap()), "{msg}");
    assert!(msg.contains("make ort") && msg.contains("ASFDA_ORT_LIBRARY"), "{msg}");
}

#[test]
fn library_next_to_the_binary_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("asfda");
    std::fs::copy(cli(), &exe).unwrap();
    std::os::unix::fs::symlink(cached_ort(), dir.path().join("libonnxruntime.so.1.31.1")).unwrap();
    let empty = tempfile::tempdir().unwrap();
    let out = info(&exe, &[("ASFDA_CACHE_DIR", empty.path().to_str().unwrap())], &[]);
    assert_eq!(source_of(&out), "beside_library");
}

fn tiny_model() -> PathBuf {
    root().join("models/tiny_conv3d/tiny_conv3d.onnx")
}

#[test]
fn tiny_model_runs_on_a_real_volume_on_cpu() {
    let rt = Runtime::load(None).unwrap();
    assert_eq!(rt.info().ort_version, "1.31.1");
    assert!(rt.info().providers.iter().any(|p| p == "CPUExecutionProvider"));

    let volume = read_nifti(&root().join("data/anatomical.nii"), &ReadOptions::default()).unwrap();
    let model = Model::load(&tiny_model(), &RuntimeOptions { threads: 1, ..Default::default() }).unwrap();
    assert_eq!(model.device(), Device::Cpu);
    let out = model.run_volume(&volume).unwrap();
    assert_eq!((out.dims(), out.channels()), (volume.dims(), 2));
    assert_eq!(out.affine(), volume.affine());
    let (bg, fg) = (out.channel(0), out.channel(1));
    assert!(bg.iter().zip(fg).all(|(a, b)| (a + b - 1.0).abs() < 1e-5), "softmax over channels");
    let foreground = fg.iter().filter(|&&p| p > 0.5).count() as f64 / fg.len() as f64;
    assert!(foreground > 0.05 && foreground < 0.99, "{foreground}");
    // Deterministic: a second run gives the same bits.
    assert_eq!(model.run_volume(&volume).unwrap().data(), out.data());
}

#[test]
fn devices_cuda_fails_clearly_on_a_cpu_build_and_auto_falls_back() {
    let cpu_only = !Runtime::load(None).unwrap().info().cuda_provider_library;
    assert!(cpu_only, "these tests expect the CPU ONNX Runtime; GPU tests run with `make test-gpu`");
    let cuda = RuntimeOptions { device: Device::Cuda(0), ..Default::default() };
    let err = Model::load(&tiny_model(), &cuda).err().expect("CUDA must fail without the CUDA provider");
    assert_eq!(err.kind(), ErrorKind::DeviceUnavailable);
    assert!(err.message().contains("make ort-gpu"), "{err}");
    // Without CUDA, auto runs on OpenVINO where its plugin offers a device (tests/openvino.rs),
    // else on the CPU provider.
    let auto = RuntimeOptions { device: Device::Auto, ..Default::default() };
    let expected = if Runtime::load(None).unwrap().openvino_status().usable { Device::OpenVino } else { Device::Cpu };
    assert_eq!(Model::load(&tiny_model(), &auto).unwrap().device(), expected);
}

#[test]
fn one_runtime_per_process() {
    Runtime::load(None).unwrap();
    let err = Runtime::load(Some(Path::new("/some/other/libonnxruntime.so"))).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::RuntimeUnavailable);
    assert!(err.message().contains("already loaded"), "{err}");
}

#[test]
fn bad_models_are_model_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.onnx");
    std::fs::write(&bad, b"not a protobuf").unwrap();
    let err = Model::load(&bad, &RuntimeOptions::default()).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Model);
    assert!(err.message().contains("bad.onnx"), "{err}");
    let err = Model::load(&dir.path().join("missing.onnx"), &RuntimeOptions::default()).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Io);
}

/// Needs an NVIDIA GPU and the CUDA flavour of ONNX Runtime: `make test-gpu`.
#[test]
#[ignore = "needs a GPU: run `make test-gpu`"]
fn gpu_cuda_matches_cpu() {
    let volume = read_nifti(&root().join("data/anatomical.nii"), &ReadOptions::default()).unwrap();
    let cpu = Model::load(&tiny_model(), &RuntimeOptions::default()).unwrap();
    let gpu = Model::load(&tiny_model(), &RuntimeOptions { device: Device::Cuda(0), ..Default::default() }).unwrap();
    assert_eq!(gpu.device(), Device::Cuda(0));
    let (a, b) = (cpu.run_volume(&volume).unwrap(), gpu.run_volume(&volume).unwrap());
    let max_diff = a.data().iter().zip(b.data()).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(max_diff < 1e-4, "CPU vs CUDA max difference {max_diff}");
}
