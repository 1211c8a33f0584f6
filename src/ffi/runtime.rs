//! C ABI for ONNX Runtime loading, runtime info and plain model runs.

use std::ffi::c_char;

use super::{c_path, c_str, check_out, free_handle, guard, non_null, string_out, write_out, AsfdaStatus};
use crate::error::Result;
use crate::model::Model;
use crate::runtime::{Device, Runtime, RuntimeOptions};
use crate::volume::Volume;

/// Where to find ONNX Runtime and where to run. Start from asfda_runtime_options_default()
/// (zero-initialising it, `= {0}`, gives the same defaults).
#[repr(C)]
pub struct AsfdaRuntimeOptions {
    /// Full path of libonnxruntime.so; NULL follows the resolution order (ASFDA_ORT_LIBRARY,
    /// ORT_DYLIB_PATH, next to the asfda library, the user cache).
    pub library_path: *const c_char,
    /// "cpu" (default when NULL), "auto" (CUDA, else OpenVINO, else the CPU), "openvino" (the CPU
    /// through the OpenVINO plugin, found via ASFDA_OPENVINO_LIBRARY, next to the asfda library
    /// or in the user cache: `make ort-openvino`), "cuda" or "cuda:N".
    pub device: *const c_char,
    /// Intra-op CPU threads; 0 lets ONNX Runtime choose.
    pub threads: u32,
}

/// An ONNX model loaded into an ONNX Runtime session. Thread-safe: runs are serialised.
pub struct AsfdaModel(Model);

/// The default runtime options: the library resolution order, CPU, threads chosen by ONNX Runtime.
#[no_mangle]
pub extern "C" fn asfda_runtime_options_default() -> AsfdaRuntimeOptions {
    let d = RuntimeOptions::default();
    AsfdaRuntimeOptions { library_path: std::ptr::null(), device: std::ptr::null(), threads: d.threads as u32 }
}

fn runtime_options(options: *const AsfdaRuntimeOptions) -> Result<RuntimeOptions> {
    // SAFETY: a non-NULL options pointer must point to an initialised struct (header contract).
    match unsafe { options.as_ref() } {
        Some(o) => runtime_options_from(o, "options"),
        None => Ok(RuntimeOptions::default()),
    }
}

/// The Rust runtime options of a C struct; `name` prefixes the fields in error messages.
pub(crate) fn runtime_options_from(o: &AsfdaRuntimeOptions, name: &str) -> Result<RuntimeOptions> {
    let library_path =
        if o.library_path.is_null() { None } else { Some(c_path(o.library_path, &format!("{name}->library_path"))?) };
    let device = if o.device.is_null() { Device::Cpu } else { c_str(o.device, &format!("{name}->device"))?.parse()? };
    Ok(RuntimeOptions { library_path, device, threads: o.threads as usize, openvino_library: None })
}

/// Loads ONNX Runtime once for this process. `library_path` may be NULL (resolution order).
/// Fails with ASFDA_STATUS_RUNTIME_UNAVAILABLE naming every place searched.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_runtime_load(library_path: *const c_char) -> AsfdaStatus {
    guard(|| {
        let path = if library_path.is_null() { None } else { Some(c_path(library_path, "library_path")?) };
        Runtime::load(path.as_deref()).map(|_| ())
    })
}

/// Writes runtime facts as JSON (asfda and ORT versions, library path and how it was found,
/// available execution providers, and `openvino`: whether device "openvino" can run here, the
/// plugin's path or why not; this registers the OpenVINO plugin if found) into `buf` (`capacity` bytes, NUL-terminated, truncated if
/// short) and the size needed including the NUL into `*out_needed`. Loads ONNX Runtime with the
/// default resolution order if it is not loaded yet.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_runtime_info_json(buf: *mut c_char, capacity: usize, out_needed: *mut usize) -> AsfdaStatus {
    guard(|| {
        let runtime = Runtime::load(None)?;
        let json = runtime.info_json()?.to_string();
        string_out(&json, buf, capacity, out_needed)
    })
}

/// Loads an ONNX model with one image input. `options` may be NULL (CPU, default resolution).
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_model_load(
    model_path: *const c_char,
    options: *const AsfdaRuntimeOptions,
    out_model: *mut *mut AsfdaModel,
) -> AsfdaStatus {
    guard(|| {
        check_out(out_model, "out_model")?;
        let path = c_path(model_path, "model_path")?;
        let model = Model::load(&path, &runtime_options(options)?)?;
        write_out(out_model, Box::into_raw(Box::new(AsfdaModel(model))));
        Ok(())
    })
}

/// Frees a model; NULL is a no-op.
#[no_mangle]
pub extern "C" fn asfda_model_free(model: *mut AsfdaModel) {
    free_handle(model);
}

/// Copies the device the model actually runs on ("cpu", "openvino" or "cuda:N"; `auto` resolved) into
/// `buf` and the size needed into `*out_needed`, like asfda_runtime_info_json.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_model_device(
    model: *const AsfdaModel,
    buf: *mut c_char,
    capacity: usize,
    out_needed: *mut usize,
) -> AsfdaStatus {
    guard(|| string_out(&non_null(model, "model")?.0.device().to_string(), buf, capacity, out_needed))
}

/// Runs the model on a whole volume (tensor [1, C, Z, Y, X]) and returns its first output as a
/// new volume on the same grid. Free the result with asfda_volume_free.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_model_run_volume(
    model: *const AsfdaModel,
    input: *const super::volume::AsfdaVolume,
    out_volume: *mut *mut super::volume::AsfdaVolume,
) -> AsfdaStatus {
    guard(|| {
        check_out(out_volume, "out_volume")?;
        let model = non_null(model, "model")?;
        let input: &Volume = &non_null(input, "input")?.0;
        let output = model.0.run_volume(input)?;
        write_out(out_volume, super::volume::into_handle(output));
        Ok(())
    })
}
