//! Command-line parsing with `clap` (derive): each command is a struct of its flags (in its own
//! module), the flag groups several commands share are here. An unknown or repeated flag is an
//! error naming it (a typo never silently falls back to a default), and `--help` prints the
//! command's own usage. Parse errors are reworded by [`usage_error`] into the CLI's own messages
//! (`asfda: error: ...`, exit status 1), which scripts and tests rely on.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::error::{ContextKind, ContextValue, ErrorKind as ClapKind};

use asfda::engine::EngineOptions;
use asfda::runtime::{Device, RuntimeOptions};
use asfda::volume::{NonFinitePolicy, ReadOptions};
use asfda::window::WindowOptions;
use asfda::{Error, Result};

/// The help layout of every command: today's `usage:` line first (scripts grep for it), then the
/// description and the flags.
pub const HELP_TEMPLATE: &str = "usage: {usage}\n\n{about-with-newline}\n{all-args}{after-help}";

/// What a value failed to be ("a whole number"); the message becomes `--flag 'value' is not ...`.
#[derive(Debug)]
pub struct Expected(&'static str);

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "is not {}", self.0)
    }
}

impl std::error::Error for Expected {}

/// A whole number (flag values such as `--threads`, `--budget`).
pub fn whole<T: FromStr>(s: &str) -> std::result::Result<T, Expected> {
    s.parse().map_err(|_| Expected("a whole number"))
}

/// A whole number above 0 (`--steps`).
pub fn positive(s: &str) -> std::result::Result<u64, Expected> {
    s.parse().ok().filter(|&n| n > 0).ok_or(Expected("a positive whole number"))
}

/// A number (`--lr`, `--w-dkd`).
pub fn number(s: &str) -> std::result::Result<f64, Expected> {
    s.parse().map_err(|_| Expected("a number"))
}

/// The sliding-window overlap (its range is checked by the engine).
pub fn overlap(s: &str) -> std::result::Result<f64, Expected> {
    s.parse().map_err(|_| Expected("a number in [0, 1)"))
}

/// `--nonfinite`: error | keep | a finite value to put in place of NaN/infinite voxels.
pub fn nonfinite(s: &str) -> std::result::Result<NonFinitePolicy, Expected> {
    match s {
        "error" => Ok(NonFinitePolicy::Error),
        "keep" => Ok(NonFinitePolicy::Keep),
        v => v
            .parse::<f32>()
            .ok()
            .filter(|v| v.is_finite())
            .map(NonFinitePolicy::Replace)
            .ok_or(Expected("error, keep or a finite number")),
    }
}

/// A value the library parses (device, selection method, gap kind): its error message as is.
pub fn library<T: FromStr<Err = Error>>(s: &str) -> Result<T> {
    s.parse()
}

/// `--device --threads --ort`: where and how ONNX Runtime runs.
#[derive(clap::Args, Debug, Clone)]
pub struct RuntimeFlags {
    /// cpu (default) | openvino | auto (CUDA, else OpenVINO, else cpu) | cuda | cuda:N
    #[arg(long, value_name = "D", value_parser = library::<Device>)]
    pub device: Option<Device>,
    /// ONNX Runtime intra-op threads (0 = its default)
    #[arg(long, value_name = "N", value_parser = whole::<usize>)]
    pub threads: Option<usize>,
    /// ONNX Runtime library to load
    #[arg(long, value_name = "PATH")]
    pub ort: Option<PathBuf>,
    /// OpenVINO plugin library for --device openvino/auto (default: $ASFDA_OPENVINO_LIBRARY,
    /// beside the asfda library, the user cache of `make ort-openvino`)
    #[arg(long, value_name = "PATH")]
    pub openvino: Option<PathBuf>,
}

impl RuntimeFlags {
    pub fn options(&self) -> RuntimeOptions {
        RuntimeOptions {
            library_path: self.ort.clone(),
            device: self.device.unwrap_or_default(),
            threads: self.threads.unwrap_or(0),
            openvino_library: self.openvino.clone(),
        }
    }
}

/// The model bundle and how the model runs on a volume (`asfda score`, `segment`, `report`,
/// `finetune`).
#[derive(clap::Args, Debug, Clone)]
pub struct EngineFlags {
    /// Model bundle (default: the shipped demo bundle models/demo_brain_unet)
    #[arg(long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,
    #[command(flatten)]
    pub runtime: RuntimeFlags,
    /// Sliding-window tile overlap in [0, 1) (default 0.5)
    #[arg(long, value_name = "F", value_parser = overlap)]
    pub overlap: Option<f64>,
    /// Tiles per model run (default 2)
    #[arg(long, value_name = "N", value_parser = whole::<usize>)]
    pub tiles_per_batch: Option<usize>,
    /// Mirroring test-time augmentation
    #[arg(long)]
    pub mirror: bool,
    /// NaN/infinite voxels in an image: error (default) | keep | a value to put in their place
    #[arg(long, value_name = "P", value_parser = nonfinite)]
    pub nonfinite: Option<NonFinitePolicy>,
}

impl EngineFlags {
    /// Engine options from `--device --threads --ort --overlap --tiles-per-batch --mirror`.
    pub fn options(&self) -> EngineOptions {
        engine_options(&self.runtime, self.overlap, self.tiles_per_batch, self.mirror)
    }

    /// `--bundle`, or the demo bundle shipped with asfda ([`shipped`]).
    pub fn bundle(&self) -> PathBuf {
        bundle(self.bundle.as_deref())
    }

    /// How images are read: the library's limits, with `--nonfinite`.
    pub fn read_options(&self) -> ReadOptions {
        let defaults = ReadOptions::default();
        ReadOptions { nonfinite: self.nonfinite.unwrap_or(defaults.nonfinite), ..defaults }
    }
}

/// Engine options: the window's defaults where a flag is not given.
pub fn engine_options(
    runtime: &RuntimeFlags,
    overlap: Option<f64>,
    tiles_per_batch: Option<usize>,
    mirror: bool,
) -> EngineOptions {
    let defaults = WindowOptions::default();
    let window = WindowOptions {
        overlap: overlap.unwrap_or(defaults.overlap),
        tiles_per_batch: tiles_per_batch.unwrap_or(defaults.tiles_per_batch),
        mirror: mirror || defaults.mirror,
        ..defaults
    };
    EngineOptions { runtime: runtime.options(), window, ..Default::default() }
}

/// `--bundle`, or the demo bundle shipped with asfda ([`shipped`]).
pub fn bundle(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf).unwrap_or_else(|| shipped("models/demo_brain_unet"))
}

/// A comma-separated list (empty items dropped).
pub fn list(value: Option<&str>) -> Vec<String> {
    value.map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()).unwrap_or_default()
}

/// A comma-separated list of paths (empty items dropped). Split on bytes, not text: a Linux file
/// name need not be UTF-8, and every name the OS allows must work.
pub fn path_list(value: Option<&OsStr>) -> Vec<PathBuf> {
    let Some(value) = value else { return Vec::new() };
    value.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|s| !s.is_empty()).map(path_of).collect()
}

/// `bytes` as a path: on Linux a file name is any bytes.
pub fn path_of(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(bytes))
}

/// Files shipped with asfda (the demo bundle and data), found from where the executable is, not
/// where it was built: `<prefix>/share/asfda/<relative>` for an installed or unpacked release
/// (`<prefix>/bin/asfda`), else `<tree>/<relative>` for an executable built in a source tree
/// (`<tree>/target/<profile>/asfda`). When neither exists, the release path (an error then names it).
pub fn shipped(relative: &str) -> PathBuf {
    let exe = std::env::current_exe().ok().and_then(|p| p.canonicalize().ok());
    let Some(dir) = exe.as_deref().and_then(Path::parent) else { return PathBuf::from(relative) };
    let release = dir.join("../share/asfda").join(relative);
    [release.clone(), dir.join("../..").join(relative)].into_iter().find(|p| p.exists()).unwrap_or(release)
}

/// The flag a clap error is about, as `--name` (clap says `--name <VALUE>`).
fn flag_of(err: &clap::Error) -> Option<String> {
    let text = match err.get(ContextKind::InvalidArg)? {
        ContextValue::String(s) => s.clone(),
        ContextValue::Strings(v) => v.first()?.clone(),
        _ => return None,
    };
    Some(text.split([' ', '=']).next().unwrap_or(&text).to_string())
}

fn value_of(err: &clap::Error, kind: ContextKind) -> Option<String> {
    match err.get(kind)? {
        ContextValue::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// The CLI's message for a clap parse error of `asfda <command>` (`None`: before any command),
/// with `help` (the command's usage) after the messages that are about the command line's shape.
pub fn usage_error(err: &clap::Error, command: Option<&str>, help: &str) -> Error {
    let name = command.unwrap_or("");
    let flag = flag_of(err).unwrap_or_default();
    let with_help = |message: String| Error::invalid_argument(format!("{message}\n\n{help}"));
    match err.kind() {
        ClapKind::InvalidSubcommand => {
            let other = value_of(err, ContextKind::InvalidSubcommand).unwrap_or_default();
            with_help(format!("unknown command '{other}'"))
        }
        ClapKind::UnknownArgument if command.is_none() => with_help(format!("unknown command '{flag}'")),
        ClapKind::UnknownArgument if flag.starts_with("--") => {
            with_help(format!("unknown option '{flag}' for `asfda {name}`"))
        }
        ClapKind::UnknownArgument => with_help(format!("unexpected argument '{flag}'")),
        ClapKind::ArgumentConflict => with_help(format!("{flag} is given twice")),
        ClapKind::TooManyValues => with_help(format!("{flag} takes no value")),
        ClapKind::InvalidValue | ClapKind::NoEquals
            if value_of(err, ContextKind::InvalidValue).is_none_or(|v| v.is_empty()) =>
        {
            with_help(format!("{flag} needs a value"))
        }
        ClapKind::MissingRequiredArgument => {
            Error::invalid_argument(format!("{flag} is required (see `asfda {name} --help`)"))
        }
        ClapKind::ValueValidation => {
            let value = value_of(err, ContextKind::InvalidValue).unwrap_or_default();
            let source = std::error::Error::source(err);
            if let Some(library) = source.and_then(|s| s.downcast_ref::<Error>()) {
                library.clone()
            } else if let Some(expected) = source.and_then(|s| s.downcast_ref::<Expected>()) {
                Error::invalid_argument(format!("{flag} '{value}' {expected}"))
            } else {
                Error::invalid_argument(plain(err))
            }
        }
        _ => with_help(plain(err)),
    }
}

/// clap's own message, without its `error: ` prefix and usage hint.
fn plain(err: &clap::Error) -> String {
    let text = err.render().to_string();
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    text.split("\n\n").next().unwrap_or(text).trim().to_string()
}
