//! The OpenVINO plugin for the tests (`make ort-openvino`; the test command runs it). A missing
//! plugin fails the test that needs it, saying how to get it (never a skip).
//!
//! The plugin offers its OpenVINO CPU device only on Intel CPUs. On other x86 CPUs (the AMD EPYC
//! machines this project also runs on), the tests drive the same plugin through a test-only shim
//! (tests/openvino/vendor_shim.c, compiled here with `cc`) that presents the CPU's vendor id as
//! Intel's to the plugin; OpenVINO's CPU plugin itself runs there. asfda never does this: on such
//! a machine it reports that the plugin offers no device (tests/openvino.rs checks both).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use asfda::runtime::{Device, RuntimeOptions};

/// The unmodified plugin in the user cache.
pub fn cached_plugin() -> PathBuf {
    let dir = asfda::runtime::cache_dir().expect("HOME is set").join(asfda::runtime::OPENVINO_CACHE_FOLDER);
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|_| panic!("{} missing: run `make ort-openvino` first", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("libonnxruntime_providers_openvino_plugin.so"))
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| panic!("no OpenVINO plugin in {}: run `make ort-openvino`", dir.display()))
}

/// Whether this CPU is Intel's (the plugin offers its device on it as it is).
pub fn intel_cpu() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").map(|c| c.contains("GenuineIntel")).unwrap_or(false)
}

/// The plugin the tests run on: the cached plugin on an Intel CPU, else the shim around it.
pub fn plugin() -> &'static Path {
    static PLUGIN: OnceLock<PathBuf> = OnceLock::new();
    PLUGIN.get_or_init(|| if intel_cpu() { cached_plugin() } else { build_shim(&cached_plugin()) })
}

/// Runtime options on `device` with the tests' plugin (2 threads).
pub fn options(device: Device) -> RuntimeOptions {
    RuntimeOptions { device, threads: 2, openvino_library: Some(plugin().to_path_buf()), ..Default::default() }
}

/// Entries in ONNX Runtime 1.31's API table (API version 31; ort-sys 2.0.0-rc.15 declares them
/// all, but asfda compiles only the first 22 versions' fields). The shim copies this many.
const ORT_1_31_API_WORDS: usize = 470;

/// Compiles tests/openvino/vendor_shim.c around `real` (indices into ONNX Runtime's API table
/// from ort-sys's declaration of it).
fn build_shim(real: &Path) -> PathBuf {
    use std::mem::{offset_of, size_of};
    let runtime = asfda::runtime::Runtime::load(None).expect("ONNX Runtime (`make ort`)");
    let version = &runtime.info().ort_version;
    assert!(
        version.starts_with("1.31."),
        "tests/openvino/vendor_shim.c copies ONNX Runtime 1.31's API table ({ORT_1_31_API_WORDS} entries); \
         update ORT_1_31_API_WORDS for ONNX Runtime {version}"
    );
    let word = size_of::<usize>();
    let api_words = ORT_1_31_API_WORDS;
    let vendor = offset_of!(ort::sys::OrtApi, HardwareDevice_VendorId) / word;
    let ty = offset_of!(ort::sys::OrtApi, HardwareDevice_Type) / word;
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("openvino_vendor_shim_{}.so", std::process::id()));
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openvino/vendor_shim.c");
    let status = Command::new("cc")
        .args(["-O1", "-shared", "-fPIC", "-Wall", "-Werror"])
        .arg(format!("-DREAL_PLUGIN=\"{}\"", real.display()))
        .arg(format!("-DAPI_WORDS={api_words}"))
        .arg(format!("-DVENDOR_IDX={vendor}"))
        .arg(format!("-DTYPE_IDX={ty}"))
        .arg("-o")
        .arg(&out)
        .arg(&source)
        .arg("-ldl")
        .status()
        .expect("cc runs (the C compiler CI checks for)");
    assert!(status.success(), "compiling {} failed", source.display());
    out
}
