//! Finding and loading ONNX Runtime, choosing a device, and creating sessions.
//!
//! ONNX Runtime is loaded at run time from a full path (never through the loader's search order:
//! an unrelated `libonnxruntime` elsewhere on the system is a known source of crashes). The
//! library is process-global: the first successful load wins, and later requests for another
//! file are refused with an error rather than silently ignored.
//!
//! Resolution order (the first *configured* source is authoritative; the last two are probes):
//! 1. the explicit path in [`RuntimeOptions::library_path`];
//! 2. the `ASFDA_ORT_LIBRARY` environment variable;
//! 3. the `ORT_DYLIB_PATH` environment variable (ort's own convention);
//! 4. a `libonnxruntime.so*` next to the asfda shared library (or the executable it is linked
//!    into), or in `../lib` from it (an unpacked release: `bin/asfda`, `lib/`);
//! 5. the user's cache folder that `make ort` / `make ort-gpu` fill ([`cache_dir`]:
//!    `$ASFDA_CACHE_DIR`, else `$XDG_CACHE_HOME/asfda`, else `~/.cache/asfda`; then
//!    `onnxruntime/{gpu,cpu}` in it).
//!
//! Nothing here depends on where asfda was built: a library or executable copied elsewhere
//! resolves the same way.
//!
//! Device `openvino` runs on the CPU through the OpenVINO execution provider, a plugin library
//! (PyPI `onnxruntime-ep-openvino`, `make ort-openvino`) registered with ONNX Runtime on first
//! use. The plugin is found in the same order: [`RuntimeOptions::openvino_library`], then
//! `$ASFDA_OPENVINO_LIBRARY` (both authoritative), then a
//! `libonnxruntime_providers_openvino_plugin.so*` next to the asfda library (or in `../lib`), then
//! `onnxruntime-ep-openvino/` in the user cache. Sessions on it run in f32 (OpenVINO's default on
//! CPUs with AVX-512 BF16 is bf16) and use the plugin's OpenVINO CPU device (metadata
//! `ov_device` = `CPU`). See docs/openvino.md.

use std::ffi::{c_char, c_void, CStr, CString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use once_cell::sync::OnceCell;
use ort::ep::ExecutionProvider;
use ort::session::builder::SessionBuilder;
use ort::session::Session;

use crate::error::{Error, ErrorKind, Result};

/// Environment variable naming the ONNX Runtime library asfda should load.
pub const ENV_ORT_LIBRARY: &str = "ASFDA_ORT_LIBRARY";
/// ort's own environment variable, honoured after ours.
pub const ENV_ORT_DYLIB_PATH: &str = "ORT_DYLIB_PATH";
/// Environment variable naming the user's asfda cache folder (default `$XDG_CACHE_HOME/asfda`,
/// else `~/.cache/asfda`).
pub const ENV_CACHE_DIR: &str = "ASFDA_CACHE_DIR";

/// Environment variable naming the OpenVINO execution provider plugin asfda should register.
pub const ENV_OPENVINO_LIBRARY: &str = "ASFDA_OPENVINO_LIBRARY";
/// The folder in the user cache that `make ort-openvino` fills.
pub const OPENVINO_CACHE_FOLDER: &str = "onnxruntime-ep-openvino";

const ORT_FILE_PREFIX: &str = "libonnxruntime.so";
const OPENVINO_PLUGIN_PREFIX: &str = "libonnxruntime_providers_openvino_plugin.so";
/// The execution provider name of the plugin's devices (its `AUTO` meta device is
/// `OpenVINOExecutionProvider.AUTO`, not used).
const OPENVINO_EP: &str = "OpenVINOExecutionProvider";
const CPU_EP: &str = "CPUExecutionProvider";
/// The name asfda registers the plugin under (one registration per process).
const OPENVINO_REGISTRATION: &str = "asfda-openvino";
/// How to get the plugin, for error and log messages.
const OPENVINO_FIX: &str =
    "run `make ort-openvino` in the asfda source tree (puts the onnxruntime-ep-openvino wheel's \
     plugin in the user cache, ~/.cache/asfda/onnxruntime-ep-openvino), `pip install asfda[openvino]` for the Python \
     wheel, or set ASFDA_OPENVINO_LIBRARY to the full path of libonnxruntime_providers_openvino_plugin.so";
const CUDA_PROVIDER_FILE: &str = "libonnxruntime_providers_cuda.so";

/// Where inference runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// A CUDA device by ordinal.
    Cuda(u32),
    /// The CPU through OpenVINO (the `onnxruntime-ep-openvino` plugin, `make ort-openvino`), in f32.
    OpenVino,
    /// CUDA device 0 when the provider library and a GPU are present, else OpenVINO when its
    /// plugin is found and offers a CPU device, else the CPU execution provider.
    Auto,
}

impl FromStr for Device {
    type Err = Error;
    /// Parses `cpu`, `cuda`, `cuda:<id>`, `openvino` or `auto`.
    fn from_str(s: &str) -> Result<Device> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "auto" => Ok(Device::Auto),
            "cuda" => Ok(Device::Cuda(0)),
            "openvino" => Ok(Device::OpenVino),
            other => {
                other.strip_prefix("cuda:").and_then(|id| id.parse::<u32>().ok()).map(Device::Cuda).ok_or_else(|| {
                    Error::invalid_argument(format!(
                        "unknown device '{s}': use 'cpu', 'auto', 'cuda' or 'cuda:<id>' (e.g. 'cuda:0')"
                    ))
                })
            }
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(id) => write!(f, "cuda:{id}"),
            Device::OpenVino => f.write_str("openvino"),
            Device::Auto => f.write_str("auto"),
        }
    }
}

/// How to find ONNX Runtime and where to run.
#[derive(Clone, Debug, Default)]
pub struct RuntimeOptions {
    /// Full path of `libonnxruntime.so*`; `None` follows the resolution order in the module docs.
    pub library_path: Option<PathBuf>,
    pub device: Device,
    /// Intra-op CPU threads; 0 lets ONNX Runtime choose (one per physical core). On OpenVINO,
    /// also its `INFERENCE_NUM_THREADS` (0: OpenVINO chooses).
    pub threads: usize,
    /// Full path of the OpenVINO plugin (`libonnxruntime_providers_openvino_plugin.so`); `None`
    /// follows the resolution order in the module docs. Used by devices `openvino` and `auto`.
    pub openvino_library: Option<PathBuf>,
}

/// Which step of the resolution order supplied the library.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LibrarySource {
    Explicit,
    AsfdaEnv,
    OrtEnv,
    BesideLibrary,
    UserCache,
}

/// Facts about the loaded ONNX Runtime.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RuntimeInfo {
    pub asfda_version: &'static str,
    pub ort_version: String,
    pub library_path: PathBuf,
    pub library_source: LibrarySource,
    /// Execution providers compiled into the loaded library (e.g. `CPUExecutionProvider`).
    pub providers: Vec<String>,
    /// Whether the CUDA provider library sits next to the core library.
    pub cuda_provider_library: bool,
}

/// The loaded ONNX Runtime: one per process.
pub struct Runtime {
    info: RuntimeInfo,
    env: ort::environment::Environment,
    /// The OpenVINO plugin, registered on first use (the first resolution wins, like the library's):
    /// where it came from, or why it cannot be used.
    openvino: OnceCell<std::result::Result<OpenVinoPlugin, String>>,
}

/// The registered OpenVINO plugin.
#[derive(Clone, Debug)]
pub struct OpenVinoPlugin {
    pub path: PathBuf,
    pub source: LibrarySource,
}

/// Whether device `openvino` can run here ([`Runtime::openvino_status`]).
#[derive(Clone, Debug, serde::Serialize)]
pub struct OpenVinoStatus {
    /// The plugin offers an OpenVINO CPU device: `openvino` runs, `auto` picks it when there is no CUDA.
    pub usable: bool,
    pub plugin: Option<PathBuf>,
    pub source: Option<LibrarySource>,
    /// Why not, with how to fix it.
    pub why_not: Option<String>,
}

/// Where a session's model comes from.
#[derive(Clone, Copy)]
pub enum ModelSource<'a> {
    File(&'a Path),
    /// The model's bytes and a name for errors.
    Memory(&'a [u8], &'a str),
}

impl ModelSource<'_> {
    fn name(&self) -> String {
        match self {
            ModelSource::File(p) => p.display().to_string(),
            ModelSource::Memory(_, name) => name.to_string(),
        }
    }
}

static RUNTIME: OnceCell<Runtime> = OnceCell::new();
static LOAD_LOCK: Mutex<()> = Mutex::new(());

impl Runtime {
    /// Loads ONNX Runtime (once per process) and returns it.
    ///
    /// A later call with a different explicit path fails: one process holds one ONNX Runtime.
    pub fn load(explicit: Option<&Path>) -> Result<&'static Runtime> {
        if let Some(rt) = RUNTIME.get() {
            return rt.check_same_library(explicit).map(|_| rt);
        }
        // Serialise first loads so two threads never race to dlopen different files.
        let _guard = LOAD_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rt) = RUNTIME.get() {
            return rt.check_same_library(explicit).map(|_| rt);
        }
        let (path, source) = resolve_library(explicit)?;
        let rt = Runtime::open(path, source)?;
        log::info!(
            "loaded ONNX Runtime {} from '{}' (found by: {source:?}); execution providers: {}",
            rt.info.ort_version,
            rt.info.library_path.display(),
            rt.info.providers.join(", ")
        );
        Ok(RUNTIME.get_or_init(|| rt))
    }

    /// The runtime if it was already loaded.
    pub fn get() -> Option<&'static Runtime> {
        RUNTIME.get()
    }

    pub fn info(&self) -> &RuntimeInfo {
        &self.info
    }

    pub fn environment(&self) -> &ort::environment::Environment {
        &self.env
    }

    fn open(path: PathBuf, source: LibrarySource) -> Result<Runtime> {
        let ort_version = library_version(&path)?;
        let builder = ort::init_from(&path).map_err(|e| {
            Error::new(ErrorKind::RuntimeUnavailable, format!("cannot use ONNX Runtime at '{}': {e}", path.display()))
        })?;
        let env = builder.with_name("asfda").build()?;
        let providers = available_providers()?;
        let cuda_provider_library = path.with_file_name(CUDA_PROVIDER_FILE).is_file();
        let info = RuntimeInfo {
            asfda_version: crate::VERSION,
            ort_version,
            library_path: path,
            library_source: source,
            providers,
            cuda_provider_library,
        };
        Ok(Runtime { info, env, openvino: OnceCell::new() })
    }

    fn check_same_library(&self, explicit: Option<&Path>) -> Result<()> {
        let Some(requested) = explicit else { return Ok(()) };
        let requested = absolute(requested);
        let same = std::fs::canonicalize(&requested).ok() == std::fs::canonicalize(&self.info.library_path).ok();
        if same {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::RuntimeUnavailable,
                format!(
                    "ONNX Runtime is already loaded from '{}' in this process; cannot also load '{}'. \
                     Use one library per process (pass the same path, or none).",
                    self.info.library_path.display(),
                    requested.display()
                ),
            ))
        }
    }

    /// A session builder with `threads` intra-op threads and no provider chosen yet.
    fn base_builder(&self, threads: usize) -> Result<SessionBuilder> {
        let mut builder = Session::builder(&self.env)?;
        if threads > 0 {
            builder = builder.with_intra_threads(threads).map_err(ort::Error::from)?;
        }
        Ok(builder)
    }

    /// A session builder on ONNX Runtime's own CPU provider, selected explicitly: ort sets the
    /// "max efficiency" automatic device policy on every builder, which (once the OpenVINO plugin
    /// is registered) would otherwise hand a session without providers to OpenVINO.
    fn cpu_builder(&self, threads: usize) -> Result<SessionBuilder> {
        let cpu: Vec<_> = self.env.devices().filter(|d| d.ep().is_ok_and(|ep| ep == CPU_EP)).take(1).collect();
        if cpu.is_empty() {
            return Err(Error::internal("ONNX Runtime lists no CPUExecutionProvider device"));
        }
        Ok(self.base_builder(threads)?.with_devices(cpu, None).map_err(ort::Error::from)?)
    }

    /// Starts a session builder for `device` (CPU or CUDA; `Auto` tries CUDA) with `threads`
    /// intra-op threads. Returns the builder and the device used. OpenVINO sessions are made by
    /// [`Runtime::session`], which can fall back when the plugin refuses a model.
    pub fn session_builder(&self, device: Device, threads: usize) -> Result<(SessionBuilder, Device)> {
        let mut builder = self.base_builder(threads)?;
        let used = match device {
            Device::Cpu => return Ok((self.cpu_builder(threads)?, Device::Cpu)),
            Device::OpenVino => {
                return Err(Error::invalid_argument(
                    "device 'openvino' sessions are made with Runtime::session (OpenVINO may refuse a model)",
                ))
            }
            Device::Cuda(id) => {
                self.register_cuda(&mut builder, id)?;
                Device::Cuda(id)
            }
            // A failed registration leaves the builder usable for the CPU provider.
            Device::Auto => match self.try_cuda(&mut builder) {
                Ok(()) => Device::Cuda(0),
                Err(_) => return Ok((self.cpu_builder(threads)?, Device::Cpu)),
            },
        };
        Ok((builder, used))
    }

    /// Registers CUDA device 0 for `auto`, or says why not.
    fn try_cuda(&self, builder: &mut SessionBuilder) -> std::result::Result<(), String> {
        if self.info.cuda_provider_library {
            self.start_cuda(builder, 0)
        } else {
            Err(self.no_cuda_provider())
        }
    }

    /// Creates a session for `model` on `options.device`, with `configure` applied to the builder
    /// before the model is loaded (e.g. to override initializers). `fixed_shapes` are the input
    /// shapes OpenVINO compiles for (its `reshape_input`, e.g. `image[2,1,64,64,64],labels[2,64,64,64]`);
    /// `None` keeps the model's own (dynamic) shapes. Returns the session and the device used.
    ///
    /// `auto` tries CUDA, then OpenVINO, then the CPU provider, and logs (INFO) where it runs or
    /// why it fell back; an explicit `openvino` fails with [`ErrorKind::DeviceUnavailable`] when
    /// the plugin is missing or offers no CPU device, and with [`ErrorKind::Model`] naming the
    /// plugin when it refuses the model.
    pub fn session(
        &self,
        options: &RuntimeOptions,
        model: ModelSource<'_>,
        fixed_shapes: Option<&str>,
        configure: impl Fn(SessionBuilder) -> ort::Result<SessionBuilder>,
    ) -> Result<(Session, Device)> {
        if let ModelSource::File(path) = model {
            if !path.is_file() {
                return Err(Error::new(ErrorKind::Io, format!("model file '{}' does not exist", path.display())));
            }
        }
        let commit = |builder: SessionBuilder| -> std::result::Result<Session, ort::Error> {
            let mut builder = configure(builder)?;
            match model {
                ModelSource::File(path) => builder.commit_from_file(path),
                ModelSource::Memory(bytes, _) => builder.commit_from_memory(bytes),
            }
        };
        let model_error =
            |e: ort::Error| Error::new(ErrorKind::Model, format!("cannot load model '{}': {e}", model.name()));
        let threads = options.threads;
        match options.device {
            Device::Cpu | Device::Cuda(_) => {
                let (builder, used) = self.session_builder(options.device, threads)?;
                Ok((commit(builder).map_err(model_error)?, used))
            }
            Device::OpenVino => {
                let builder = self.openvino_builder(options, fixed_shapes).map_err(|why| openvino_unavailable(&why))?;
                let session = commit(builder).map_err(|e| {
                    Error::new(
                        ErrorKind::Model,
                        format!(
                            "OpenVINO could not load model '{}': {e}. Use device 'cpu' (or 'auto', which falls back to it).",
                            model.name()
                        ),
                    )
                })?;
                Ok((session, Device::OpenVino))
            }
            Device::Auto => {
                let mut builder = self.base_builder(threads)?;
                let cuda = match self.try_cuda(&mut builder) {
                    Ok(()) => {
                        log::info!("device 'auto' runs on cuda:0");
                        return Ok((commit(builder).map_err(model_error)?, Device::Cuda(0)));
                    }
                    Err(why) => why,
                };
                let openvino = match self.openvino_builder(options, fixed_shapes) {
                    Ok(ov) => match commit(ov) {
                        Ok(session) => {
                            log::info!("device 'auto' runs on openvino (CUDA: {cuda})");
                            return Ok((session, Device::OpenVino));
                        }
                        Err(e) => format!("OpenVINO could not load model '{}' ({e})", model.name()),
                    },
                    Err(why) => why,
                };
                log::info!(
                    "device 'auto' falls back to the CPU: CUDA: {cuda} (for CUDA, install the GPU runtime with `make ort-gpu`); \
                     OpenVINO: {openvino}"
                );
                let builder = self.cpu_builder(threads)?;
                Ok((commit(builder).map_err(model_error)?, Device::Cpu))
            }
        }
    }

    fn register_cuda(&self, builder: &mut SessionBuilder, id: u32) -> Result<()> {
        let unavailable = |why: String| {
            Error::new(
                ErrorKind::DeviceUnavailable,
                format!("CUDA device {id} requested but {why}. Use device 'cpu' or 'auto', or install the GPU runtime with `make ort-gpu`."),
            )
        };
        if !self.info.cuda_provider_library {
            return Err(unavailable(self.no_cuda_provider()));
        }
        let device_id =
            i32::try_from(id).map_err(|_| Error::invalid_argument(format!("CUDA device id {id} is too large")))?;
        self.start_cuda(builder, device_id).map_err(unavailable)
    }

    /// Why CUDA cannot run when the provider library is missing.
    fn no_cuda_provider(&self) -> String {
        format!("the ONNX Runtime at '{}' has no {CUDA_PROVIDER_FILE} beside it", self.info.library_path.display())
    }

    /// Registers the CUDA provider for `device_id` on `builder`, or says why it could not start
    /// (a failed registration leaves the builder usable for the CPU provider).
    fn start_cuda(&self, builder: &mut SessionBuilder, device_id: i32) -> std::result::Result<(), String> {
        ort::ep::CUDA::default()
            .with_device_id(device_id)
            .register(builder)
            .map_err(|e| format!("the CUDA provider could not start ({e})"))
    }

    /// The OpenVINO plugin as `auto` and `openvino` would find it (registering it if that has not
    /// happened yet): where it is and whether it offers an OpenVINO CPU device here.
    pub fn openvino_status(&self) -> OpenVinoStatus {
        match self.openvino(None) {
            Ok(p) => {
                OpenVinoStatus { usable: true, plugin: Some(p.path.clone()), source: Some(p.source), why_not: None }
            }
            Err(why) => OpenVinoStatus { usable: false, plugin: None, source: None, why_not: Some(why) },
        }
    }

    /// [`RuntimeInfo`] as JSON, with `openvino` ([`Runtime::openvino_status`]) added.
    pub fn info_json(&self) -> Result<serde_json::Value> {
        let mut json = serde_json::to_value(&self.info).map_err(|e| Error::internal(e.to_string()))?;
        let openvino = serde_json::to_value(self.openvino_status()).map_err(|e| Error::internal(e.to_string()))?;
        if let Some(map) = json.as_object_mut() {
            map.insert("openvino".into(), openvino);
        }
        Ok(json)
    }

    /// Whether `auto` would pick CUDA (its provider library is present; starting it may still fail).
    pub fn cuda_available(&self) -> bool {
        self.info.cuda_provider_library
    }

    /// The OpenVINO plugin, registered with ONNX Runtime on the first call, or why it cannot run
    /// here (not found, not loadable, or no OpenVINO CPU device on this machine). The first
    /// call's resolution holds for the process; a later call naming another file is refused.
    pub fn openvino(&self, explicit: Option<&Path>) -> std::result::Result<&OpenVinoPlugin, String> {
        let result = self.openvino.get_or_init(|| self.register_openvino(explicit));
        let plugin = result.as_ref().map_err(Clone::clone)?;
        if let Some(requested) = explicit {
            let same = std::fs::canonicalize(absolute(requested)).ok() == std::fs::canonicalize(&plugin.path).ok();
            if !same {
                return Err(format!(
                    "the OpenVINO plugin is already registered from '{}' in this process; cannot also use '{}'",
                    plugin.path.display(),
                    requested.display()
                ));
            }
        }
        Ok(plugin)
    }

    fn register_openvino(&self, explicit: Option<&Path>) -> std::result::Result<OpenVinoPlugin, String> {
        let (path, source) = resolve_openvino(explicit)?;
        self.env
            .register_ep_library(OPENVINO_REGISTRATION, &path)
            .map_err(|e| {
                format!(
                    "the OpenVINO plugin '{}' could not be registered ({e}). Fix: re-run `make ort-openvino` (it needs ONNX Runtime 1.23 or later)",
                    path.display()
                )
            })?;
        log::info!("registered the OpenVINO plugin '{}' (found by: {source:?})", path.display());
        if self.openvino_cpu_devices().is_empty() {
            let cpu = self
                .env
                .devices()
                .find(|d| d.hardware_device().ty() == ort::memory::DeviceType::CPU)
                .and_then(|d| d.hardware_device().vendor().ok().map(str::to_string))
                .unwrap_or_else(|| "unknown".into());
            return Err(format!(
                "the OpenVINO plugin '{}' offers no OpenVINO CPU device on this machine (the plugin serves Intel \
                 devices only; this CPU's vendor is {cpu})",
                path.display()
            ));
        }
        Ok(OpenVinoPlugin { path, source })
    }

    /// The plugin's OpenVINO CPU devices (`ov_device` = `CPU`), once it is registered.
    fn openvino_cpu_devices(&self) -> Vec<ort::device::Device<'_>> {
        self.env
            .devices()
            .filter(|d| {
                d.ep().is_ok_and(|ep| ep == OPENVINO_EP) && ep_metadata(d, "ov_device").as_deref() == Some("CPU")
            })
            .collect()
    }

    /// A session builder on the OpenVINO CPU device in f32, or why there is none.
    fn openvino_builder(
        &self,
        options: &RuntimeOptions,
        fixed_shapes: Option<&str>,
    ) -> std::result::Result<SessionBuilder, String> {
        self.openvino(options.openvino_library.as_deref())?;
        let builder = self.base_builder(options.threads).map_err(|e| e.to_string())?;
        let mut cpu = serde_json::Map::new();
        // OpenVINO's CPU default is bf16 on CPUs with AVX-512 BF16 (logits off by up to 0.18,
        // train-step updates 17% off, docs/openvino.md): asfda always asks for f32.
        cpu.insert("INFERENCE_PRECISION_HINT".into(), "f32".into());
        if options.threads > 0 {
            cpu.insert("INFERENCE_NUM_THREADS".into(), options.threads.to_string().into());
        }
        let config = serde_json::json!({ "CPU": cpu }).to_string();
        let mut ep_options = vec![(format!("{OPENVINO_EP}.load_config"), config)];
        if let Some(shapes) = fixed_shapes {
            ep_options.push((format!("{OPENVINO_EP}.reshape_input"), shapes.to_string()));
        }
        builder
            .with_devices(self.openvino_cpu_devices(), Some(&ep_options))
            .map_err(|e| format!("the OpenVINO execution provider could not be added to the session ({e})"))
    }

    /// Loads an ONNX model file into a session on `device`.
    pub fn session_from_file(&self, model: &Path, device: Device, threads: usize) -> Result<(Session, Device)> {
        self.session_from_file_with(model, device, threads, Ok)
    }

    /// Like [`Runtime::session_from_file`], with `configure` applied to the builder before the
    /// model is loaded (e.g. to override initializers).
    pub fn session_from_file_with(
        &self,
        model: &Path,
        device: Device,
        threads: usize,
        configure: impl Fn(SessionBuilder) -> ort::Result<SessionBuilder>,
    ) -> Result<(Session, Device)> {
        let options = RuntimeOptions { device, threads, ..Default::default() };
        self.session(&options, ModelSource::File(model), None, configure)
    }
}

/// The error of an explicit `openvino` device whose plugin cannot run (`why`).
pub(crate) fn openvino_unavailable(why: &str) -> Error {
    Error::new(
        ErrorKind::DeviceUnavailable,
        format!("device 'openvino' requested but {why}. Or use device 'cpu' or 'auto' (which falls back to the CPU)."),
    )
}

/// The value of `key` in an EP device's metadata.
fn ep_metadata(device: &ort::device::Device<'_>, key: &str) -> Option<String> {
    use ort::AsPointer;
    let api = ort::api();
    let key = CString::new(key).ok()?;
    // SAFETY: the device pointer is valid while the environment lives (borrowed by `device`);
    // EpDevice_EpMetadata returns a pointer owned by the device (or NULL), GetKeyValue a string
    // owned by those pairs (or NULL); the string is copied before returning.
    unsafe {
        let pairs = (api.EpDevice_EpMetadata)(device.ptr());
        if pairs.is_null() {
            return None;
        }
        let value = (api.GetKeyValue)(pairs, key.as_ptr());
        (!value.is_null()).then(|| CStr::from_ptr(value).to_string_lossy().into_owned())
    }
}

/// Absolute form of `p` relative to the current directory (ort resolves relative paths against
/// the executable's folder, which is never what a caller means).
fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Walks the resolution order and returns the first library that exists.
fn resolve_library(explicit: Option<&Path>) -> Result<(PathBuf, LibrarySource)> {
    let configured = [
        (explicit.map(Path::to_path_buf), LibrarySource::Explicit, "explicit library path"),
        (env_path(ENV_ORT_LIBRARY), LibrarySource::AsfdaEnv, ENV_ORT_LIBRARY),
        (env_path(ENV_ORT_DYLIB_PATH), LibrarySource::OrtEnv, ENV_ORT_DYLIB_PATH),
    ];
    // A configured source is authoritative: if it is wrong, say so rather than silently using another.
    if let Some((Some(path), source, what)) = configured.into_iter().find(|(p, _, _)| p.is_some()) {
        let path = absolute(&path);
        return if path.is_file() {
            Ok((path, source))
        } else {
            Err(Error::new(
                ErrorKind::RuntimeUnavailable,
                format!("ONNX Runtime library '{}' (from {what}) does not exist", path.display()),
            ))
        };
    }
    let mut looked = Vec::new();
    let own = own_directory();
    let cache = cache_dir();
    let probes = [
        (own.clone(), LibrarySource::BesideLibrary),
        (own.and_then(|d| d.join("../lib").canonicalize().ok()), LibrarySource::BesideLibrary),
        (cache.as_ref().map(|c| c.join("onnxruntime/gpu")), LibrarySource::UserCache),
        (cache.as_ref().map(|c| c.join("onnxruntime/cpu")), LibrarySource::UserCache),
    ];
    for (dir, source) in probes {
        let Some(dir) = dir else { continue };
        if let Some(found) = find_ort_in(&dir) {
            return Ok((found, source));
        }
        looked.push(dir.display().to_string());
    }
    Err(Error::new(
        ErrorKind::RuntimeUnavailable,
        format!(
            "ONNX Runtime not found. Looked for: the explicit library path (none given), ${ENV_ORT_LIBRARY} (unset), \
             ${ENV_ORT_DYLIB_PATH} (unset), and {ORT_FILE_PREFIX}* in: {}. Fix: run `make ort` in the asfda source tree \
             (puts the onnxruntime wheel's library in the user cache, ~/.cache/asfda/onnxruntime), place \
             libonnxruntime.so beside the asfda library, or set {ENV_ORT_LIBRARY} to its full path.",
            looked.join(", ")
        ),
    ))
}

/// Finds the OpenVINO plugin: the explicit path, `$ASFDA_OPENVINO_LIBRARY` (authoritative), then
/// next to the asfda library (or `../lib`), then the user cache; or says where it looked.
fn resolve_openvino(explicit: Option<&Path>) -> std::result::Result<(PathBuf, LibrarySource), String> {
    let configured = [
        (explicit.map(Path::to_path_buf), LibrarySource::Explicit, "the explicit OpenVINO library path"),
        (env_path(ENV_OPENVINO_LIBRARY), LibrarySource::AsfdaEnv, ENV_OPENVINO_LIBRARY),
    ];
    if let Some((Some(path), source, what)) = configured.into_iter().find(|(p, _, _)| p.is_some()) {
        let path = absolute(&path);
        return if path.is_file() {
            Ok((path, source))
        } else {
            Err(format!("the OpenVINO plugin '{}' (from {what}) does not exist. Fix: {OPENVINO_FIX}", path.display()))
        };
    }
    let own = own_directory();
    let probes = [
        (own.clone(), LibrarySource::BesideLibrary),
        (own.and_then(|d| d.join("../lib").canonicalize().ok()), LibrarySource::BesideLibrary),
        (cache_dir().map(|c| c.join(OPENVINO_CACHE_FOLDER)), LibrarySource::UserCache),
    ];
    let mut looked = Vec::new();
    for (dir, source) in probes {
        let Some(dir) = dir else { continue };
        if let Some(found) = find_prefixed_in(&dir, OPENVINO_PLUGIN_PREFIX) {
            return Ok((found, source));
        }
        looked.push(dir.display().to_string());
    }
    Err(format!(
        "the OpenVINO plugin was not found (${ENV_OPENVINO_LIBRARY} is unset; no {OPENVINO_PLUGIN_PREFIX}* in: {}). Fix: {OPENVINO_FIX}",
        looked.join(", ")
    ))
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The user's asfda cache folder: `$ASFDA_CACHE_DIR`, else `$XDG_CACHE_HOME/asfda`, else
/// `$HOME/.cache/asfda` (the XDG base-directory convention); `None` when none of them is set.
pub fn cache_dir() -> Option<PathBuf> {
    env_path(ENV_CACHE_DIR)
        .or_else(|| env_path("XDG_CACHE_HOME").map(|d| d.join("asfda")))
        .or_else(|| env_path("HOME").map(|h| h.join(".cache").join("asfda")))
}

/// The core library in `dir`: prefers the versioned file (`libonnxruntime.so.1.31.1`), which is
/// what the wheel ships; never a provider library.
fn find_ort_in(dir: &Path) -> Option<PathBuf> {
    find_prefixed_in(dir, ORT_FILE_PREFIX)
}

/// The file in `dir` whose name starts with `prefix`, the last in name order (the most
/// versioned: `x.so.1.8.1` after `x.so.1` and `x.so`).
fn find_prefixed_in(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix)))
        .collect();
    found.sort();
    found.pop()
}

/// The folder holding the binary this code lives in (the asfda cdylib, or an executable that
/// links asfda statically).
fn own_directory() -> Option<PathBuf> {
    // SAFETY: Dl_info is plain C data (pointers and integers); all zeroes is a valid value.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let addr = own_directory as *const c_void;
    // SAFETY: dladdr only reads the address and fills `info`; dli_fname points into the loader's tables.
    let ok = unsafe { libc::dladdr(addr, &mut info) } != 0;
    if !ok || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr succeeded and dli_fname is non-NULL: a NUL-terminated path in the loader's tables.
    let file = unsafe { CStr::from_ptr(info.dli_fname) }.to_str().ok()?;
    std::fs::canonicalize(file).ok()?.parent().map(Path::to_path_buf)
}

/// Reads the version string straight from the library's `OrtGetApiBase`, before ort touches it,
/// so a file that is not ONNX Runtime gives a clear error.
fn library_version(path: &Path) -> Result<String> {
    let bad = |why: String| {
        Error::new(ErrorKind::RuntimeUnavailable, format!("cannot load ONNX Runtime from '{}': {why}", path.display()))
    };
    let c_path =
        CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| bad("path contains a NUL byte".into()))?;
    // SAFETY: dlopen/dlsym/dlclose with valid C strings; the handle is closed on every path.
    unsafe {
        let handle = libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        if handle.is_null() {
            return Err(bad(dl_error()));
        }
        let sym = libc::dlsym(handle, c"OrtGetApiBase".as_ptr());
        let version = if sym.is_null() {
            Err(bad("the file does not export OrtGetApiBase (not an ONNX Runtime library)".into()))
        } else {
            let get_base: unsafe extern "C" fn() -> *const ort::sys::OrtApiBase = std::mem::transmute(sym);
            let base = get_base();
            if base.is_null() {
                Err(bad("OrtGetApiBase returned NULL".into()))
            } else {
                let v = ((*base).GetVersionString)();
                Ok(CStr::from_ptr(v).to_string_lossy().into_owned())
            }
        };
        // ort keeps its own handle open; this only drops our reference.
        libc::dlclose(handle);
        version
    }
}

fn dl_error() -> String {
    // SAFETY: dlerror returns NULL or a thread-local C string.
    // SAFETY: dlerror takes no arguments and returns NULL or a NUL-terminated message.
    let msg: *const c_char = unsafe { libc::dlerror() };
    if msg.is_null() {
        "unknown dlopen error".into()
    } else {
        // SAFETY: non-NULL, NUL-terminated, valid until the next dlerror call on this thread.
        unsafe { CStr::from_ptr(msg) }.to_string_lossy().into_owned()
    }
}

/// Execution providers compiled into the loaded library.
fn available_providers() -> Result<Vec<String>> {
    let api = ort::api();
    let mut list: *mut *mut c_char = std::ptr::null_mut();
    let mut count: i32 = 0;
    // SAFETY: documented ORT C API; the list is released below with its own length.
    unsafe {
        let status = (api.GetAvailableProviders)(&mut list, &mut count);
        if !status.0.is_null() {
            (api.ReleaseStatus)(status.0);
            return Err(Error::internal("ONNX Runtime could not list its execution providers"));
        }
        let names =
            (0..count.max(0) as usize).map(|i| CStr::from_ptr(*list.add(i)).to_string_lossy().into_owned()).collect();
        let _ = (api.ReleaseAvailableProviders)(list, count);
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_parsing() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("AUTO".parse::<Device>().unwrap(), Device::Auto);
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda(3));
        assert_eq!("OpenVINO".parse::<Device>().unwrap(), Device::OpenVino);
        assert_eq!(Device::OpenVino.to_string(), "openvino");
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x", ""] {
            let err = bad.parse::<Device>().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad}");
            assert!(err.message().contains("cuda:<id>"), "{bad}: {err}");
        }
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn finds_versioned_core_library_not_providers() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["libonnxruntime_providers_shared.so", "libonnxruntime.so.1.31.1", "other.so"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        assert_eq!(find_ort_in(dir.path()).unwrap(), dir.path().join("libonnxruntime.so.1.31.1"));
        assert!(find_ort_in(&dir.path().join("missing")).is_none());
    }

    #[test]
    fn not_an_ort_library_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("libonnxruntime.so");
        std::fs::write(&fake, b"not a shared object").unwrap();
        let err = library_version(&fake).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::RuntimeUnavailable);
        assert!(err.message().contains(&*fake.to_string_lossy()), "{err}");
    }
}
