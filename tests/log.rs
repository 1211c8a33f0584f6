//! asfda reports the decisions it makes on its own through the `log` facade (src/log.rs): a Rust
//! program sees them with any logger. The C callback that forwards them is tested in
//! src/ffi/log.rs, cpp_demo/tests/c_log_test.c and bindings/python/tests/test_log.py.
//! Needs `make ort`.

use std::path::Path;
use std::sync::Mutex;

use asfda::model::Model;
use asfda::runtime::{Device, RuntimeOptions};

/// Keeps every record of this process.
struct Capture(Mutex<Vec<(log::Level, String, String)>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        self.0.lock().unwrap().push((record.level(), record.target().to_string(), record.args().to_string()));
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

// One test in this binary: the logger is process-wide.
#[test]
fn device_auto_reports_where_it_runs_and_runtime_load_reports_the_library() {
    log::set_logger(&CAPTURE).expect("no other logger in this test binary");
    log::set_max_level(log::LevelFilter::Debug);

    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny_conv3d/tiny_conv3d.onnx");
    let auto = RuntimeOptions { device: Device::Auto, threads: 1, ..Default::default() };
    let used = Model::load(&model, &auto).unwrap().device();

    let records = CAPTURE.0.lock().unwrap().clone();
    let about = |needle: &str| records.iter().filter(|(_, _, m)| m.contains(needle)).collect::<Vec<_>>();
    let auto_records = about("device 'auto'");
    assert_eq!(auto_records.len(), 1, "{records:?}");
    let (level, target, message) = auto_records[0];
    assert_eq!((*level, target.as_str()), (log::Level::Info, "asfda::runtime"));
    match used {
        // The CPU build of ONNX Runtime (`make ort`) has no CUDA provider: the fallback says why.
        Device::Cpu => {
            assert!(message.contains("falls back to the CPU"), "{message}");
            assert!(message.contains("libonnxruntime_providers_cuda.so"), "{message}");
        }
        Device::Cuda(0) => assert!(message.contains("runs on cuda:0"), "{message}"),
        // Where the OpenVINO plugin offers a device (`make ort-openvino`, an Intel CPU): the
        // choice, and why not CUDA.
        Device::OpenVino => {
            assert!(message.contains("runs on openvino"), "{message}");
            assert!(message.contains("libonnxruntime_providers_cuda.so"), "{message}");
        }
        other => panic!("auto resolved to {other}"),
    }
    let loaded = about("loaded ONNX Runtime");
    assert_eq!(loaded.len(), 1, "{records:?}");
    assert!(loaded[0].2.contains("libonnxruntime.so"), "{:?}", loaded[0]);
}
