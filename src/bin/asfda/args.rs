//! Command-line parsing: each command declares the `--name value` flags, `--switch`es and
//! positional arguments it takes, so an unknown or repeated flag is an error naming it (a typo
//! never silently falls back to a default) and `--help` prints the command's own usage.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use asfda::engine::EngineOptions;
use asfda::runtime::{Device, RuntimeOptions};
use asfda::window::WindowOptions;
use asfda::{Error, Result};

/// What a command accepts.
pub struct Spec {
    pub name: &'static str,
    /// The command's help text (printed by `--help` and after a usage error).
    pub help: &'static str,
    /// Flags that take a value.
    pub values: &'static [&'static str],
    /// Flags without a value.
    pub switches: &'static [&'static str],
    /// How many positional arguments are allowed (0 = none).
    pub max_positional: usize,
}

/// Parsed arguments of one command.
pub struct Args {
    spec: &'static Spec,
    values: HashMap<String, String>,
    switches: HashSet<String>,
    pub positional: Vec<String>,
}

impl Args {
    /// Parses `args` (after the command name); `Ok(None)` when `--help` was asked for (and printed).
    pub fn parse(spec: &'static Spec, args: &[String]) -> Result<Option<Args>> {
        let mut parsed = Args { spec, values: HashMap::new(), switches: HashSet::new(), positional: Vec::new() };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            if arg == "--help" || arg == "-h" {
                println!("{}", spec.help);
                return Ok(None);
            }
            let Some(flag) = arg.strip_prefix("--") else {
                if parsed.positional.len() == spec.max_positional {
                    return Err(parsed.usage_error(format!("unexpected argument '{arg}'")));
                }
                parsed.positional.push(arg.clone());
                continue;
            };
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (flag, None),
            };
            if spec.switches.contains(&name) {
                if inline.is_some() {
                    return Err(parsed.usage_error(format!("--{name} takes no value")));
                }
                if !parsed.switches.insert(name.to_string()) {
                    return Err(parsed.usage_error(format!("--{name} is given twice")));
                }
            } else if spec.values.contains(&name) {
                let value = match inline {
                    Some(v) => v,
                    None => it.next().cloned().ok_or_else(|| parsed.usage_error(format!("--{name} needs a value")))?,
                };
                if parsed.values.insert(name.to_string(), value).is_some() {
                    return Err(parsed.usage_error(format!("--{name} is given twice")));
                }
            } else {
                return Err(parsed.usage_error(format!("unknown option '--{name}' for `asfda {}`", spec.name)));
            }
        }
        Ok(Some(parsed))
    }

    fn usage_error(&self, message: String) -> Error {
        Error::invalid_argument(format!("{message}\n\n{}", self.spec.help))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn has(&self, switch: &str) -> bool {
        self.switches.contains(switch)
    }

    /// A required value.
    pub fn required(&self, name: &str) -> Result<&str> {
        self.get(name).ok_or_else(|| {
            Error::invalid_argument(format!("--{name} is required (see `asfda {} --help`)", self.spec.name))
        })
    }

    pub fn path(&self, name: &str) -> Result<PathBuf> {
        self.required(name).map(PathBuf::from)
    }

    /// An optional value parsed as `T`; the error names the flag, the value and what was expected.
    pub fn parsed<T: FromStr>(&self, name: &str, expected: &str) -> Result<Option<T>> {
        self.get(name)
            .map(|v| v.parse().map_err(|_| Error::invalid_argument(format!("--{name} '{v}' is not {expected}"))))
            .transpose()
    }

    /// A comma-separated list (empty items dropped).
    pub fn list(&self, name: &str) -> Vec<String> {
        self.get(name)
            .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
            .unwrap_or_default()
    }

    pub fn runtime_options(&self) -> Result<RuntimeOptions> {
        Ok(RuntimeOptions {
            library_path: self.get("ort").map(PathBuf::from),
            device: self.get("device").map(str::parse::<Device>).transpose()?.unwrap_or_default(),
            threads: self.parsed("threads", "a whole number")?.unwrap_or(0),
        })
    }

    /// Engine options from `--device --threads --ort --overlap --tiles-per-batch --mirror`.
    pub fn engine_options(&self) -> Result<EngineOptions> {
        let defaults = WindowOptions::default();
        let window = WindowOptions {
            overlap: self.parsed("overlap", "a number in [0, 1)")?.unwrap_or(defaults.overlap),
            tiles_per_batch: self.parsed("tiles-per-batch", "a whole number")?.unwrap_or(defaults.tiles_per_batch),
            mirror: self.has("mirror") || defaults.mirror,
            ..defaults
        };
        Ok(EngineOptions { runtime: self.runtime_options()?, window, ..Default::default() })
    }

    /// `--bundle`, or the demo bundle shipped in the source tree.
    pub fn bundle(&self) -> PathBuf {
        self.get("bundle").map(PathBuf::from).unwrap_or_else(|| shipped("models/demo_brain_unet"))
    }
}

/// Files shipped in the source tree (the demo's defaults).
pub fn shipped(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}
