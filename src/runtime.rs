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

const ORT_FILE_PREFIX: &str = "libonnxruntime.so";
const CUDA_PROVIDER_FILE: &str = "libonnxruntime_providers_cuda.so";

/// Where inference runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// A CUDA device by ordinal.
    Cuda(u32),
    /// CUDA device 0 when the provider library and a GPU are present, otherwise the CPU.
    Auto,
}

impl FromStr for Device {
    type Err = Error;
    /// Parses `cpu`, `cuda`, `cuda:<id>` or `auto`.
    fn from_str(s: &str) -> Result<Device> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "auto" => Ok(Device::Auto),
            "cuda" => Ok(Device::Cuda(0)),
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
    /// Intra-op CPU threads; 0 lets ONNX Runtime choose (one per physical core).
    pub threads: usize,
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
        Ok(Runtime { info, env })
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

    /// Starts a session builder for `device` with `threads` intra-op threads.
    /// Returns the builder and the device actually used (`Auto` resolved).
    pub fn session_builder(&self, device: Device, threads: usize) -> Result<(SessionBuilder, Device)> {
        let mut builder = Session::builder(&self.env)?;
        if threads > 0 {
            builder = builder.with_intra_threads(threads).map_err(ort::Error::from)?;
        }
        let used = match device {
            Device::Cpu => Device::Cpu,
            Device::Cuda(id) => {
                self.register_cuda(&mut builder, id)?;
                Device::Cuda(id)
            }
            // A failed registration leaves the builder usable for the CPU provider.
            Device::Auto => {
                let why_not = if self.info.cuda_provider_library {
                    self.start_cuda(&mut builder, 0).err()
                } else {
                    Some(self.no_cuda_provider())
                };
                match why_not {
                    None => {
                        log::info!("device 'auto' runs on cuda:0");
                        Device::Cuda(0)
                    }
                    Some(why) => {
                        log::info!(
                            "device 'auto' falls back to the CPU: {why} (for CUDA, install the GPU runtime with `make ort-gpu`)"
                        );
                        Device::Cpu
                    }
                }
            }
        };
        Ok((builder, used))
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
        configure: impl FnOnce(SessionBuilder) -> ort::Result<SessionBuilder>,
    ) -> Result<(Session, Device)> {
        if !model.is_file() {
            return Err(Error::new(ErrorKind::Io, format!("model file '{}' does not exist", model.display())));
        }
        let (builder, used) = self.session_builder(device, threads)?;
        let mut builder = configure(builder)?;
        let session = builder
            .commit_from_file(model)
            .map_err(|e| Error::new(ErrorKind::Model, format!("cannot load model '{}': {e}", model.display())))?;
        Ok((session, used))
    }

    /// Like [`Runtime::session_from_file_with`], from the bytes of an ONNX model already in
    /// memory (`name` only labels errors). Lets an engine rebuild its session with new weights
    /// without reading the disk again.
    pub fn session_from_memory_with(
        &self,
        model: &[u8],
        name: &str,
        device: Device,
        threads: usize,
        configure: impl FnOnce(SessionBuilder) -> ort::Result<SessionBuilder>,
    ) -> Result<(Session, Device)> {
        let (builder, used) = self.session_builder(device, threads)?;
        let mut builder = configure(builder)?;
        let session = builder
            .commit_from_memory(model)
            .map_err(|e| Error::new(ErrorKind::Model, format!("cannot load model '{name}': {e}")))?;
        Ok((session, used))
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
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(ORT_FILE_PREFIX))
        })
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
