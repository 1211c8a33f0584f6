//! Every check of a bundle, made once when it is loaded ([`super::Bundle::load`]): the manifest's
//! values on their own ([`Manifest::problems`], [`InputSpec::validate`]), then the files against
//! the manifest (graph input/output names, checkpoint and statistics tensors). Each problem is a
//! line `field.path: what is wrong`, so that a bundle's author sees every mistake at once.
//!
//! The same rules are checked by the Python generator (`asfda_tools/manifest.py`); the golden
//! manifest test (`tests/golden_manifest.rs`, `bindings/python/tests/test_manifest.py`) keeps the
//! two in step.

use std::collections::HashSet;
use std::path::{Component, Path};

use super::manifest::{InputSpec, Manifest, Normalization, TrainingSpec};
use super::{Bundle, FORMAT_VERSION};
use crate::error::{Error, ErrorKind, Result};
use crate::onnx_proto;
use crate::runtime::{Runtime, RuntimeOptions};
use crate::tensors::TensorFile;
use crate::volume::PLAUSIBLE_SPACING_MM;

/// Upper bounds of manifest numbers that size allocations (a hostile manifest must not make
/// them absurd); `asfda_tools/manifest.py` has the same.
const MAX_PATCH: usize = 1024;
const MAX_CHANNELS: usize = 1024;
const MAX_FEATURE_CHANNELS: usize = 65536;
const MAX_ANCHORS: usize = 65536;
const MAX_CLASSES: usize = 65536;

/// Whether `name` is a plain relative path: not empty, only normal components (no root, no
/// prefix, no `.` or `..`).
fn plain_relative(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('\\')
        && !name.contains('\0')
        && Path::new(name).components().all(|c| matches!(c, Component::Normal(_)))
        && !name.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..")
}

/// Whether `v` is a SHA-256 written as 64 lowercase hex digits.
fn sha256_hex(v: &str) -> bool {
    v.len() == 64 && v.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn finite_positive(v: f64) -> bool {
    v.is_finite() && v > 0.0
}

fn finite_non_negative(v: f64) -> bool {
    v.is_finite() && v >= 0.0
}

impl InputSpec {
    /// The problems of the input spec on its own, each `input.<field>: ...`.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.channels == 0 {
            p.push("input.channels: must be at least 1, got 0".into());
        }
        if self.size_divisible_by == 0 {
            p.push("input.size_divisible_by: must be at least 1, got 0".into());
        }
        if self.patch_size.iter().any(|&s| s == 0 || s % self.size_divisible_by.max(1) != 0) {
            p.push(format!(
                "input.patch_size: {:?} is not a positive multiple of size_divisible_by {}",
                self.patch_size, self.size_divisible_by
            ));
        }
        if self.channels > MAX_CHANNELS {
            p.push(format!("input.channels: must be at most {MAX_CHANNELS}, got {}", self.channels));
        }
        if self.patch_size.iter().any(|&s| s > MAX_PATCH) {
            p.push(format!("input.patch_size: {:?} must each be at most {MAX_PATCH}", self.patch_size));
        }
        if !self.spacing_mm.iter().all(|&s| finite_positive(s)) {
            p.push(format!("input.spacing_mm: {:?} must be finite and positive", self.spacing_mm));
        } else if !self.spacing_mm.iter().all(|s| PLAUSIBLE_SPACING_MM.contains(s)) {
            p.push(format!(
                "input.spacing_mm: {:?} is implausible (each must be in {}..={} mm)",
                self.spacing_mm,
                PLAUSIBLE_SPACING_MM.start(),
                PLAUSIBLE_SPACING_MM.end()
            ));
        }
        // `orientation` is an enum: any value it can hold is supported.
        match self.normalization {
            Normalization::Zscore { .. } => {}
            Normalization::CtWindow { lower, upper, mean, std } => {
                for (name, v) in [("lower", lower), ("upper", upper), ("mean", mean), ("std", std)] {
                    if !v.is_finite() {
                        p.push(format!("input.normalization.{name}: must be finite, got {v}"));
                    }
                }
                if lower > upper {
                    p.push(format!("input.normalization.upper: {upper} is below lower {lower} (ct_window)"));
                }
                if std.is_finite() && std <= 0.0 {
                    p.push(format!("input.normalization.std: must be > 0, got {std} (ct_window)"));
                }
            }
            Normalization::Percentile { lower, upper } => {
                for (name, v) in [("lower", lower), ("upper", upper)] {
                    if !(0.0..=100.0).contains(&v) {
                        p.push(format!("input.normalization.{name}: must be a percentile in [0, 100], got {v}"));
                    }
                }
                if lower > upper {
                    p.push(format!("input.normalization.upper: {upper} is below lower {lower} (percentile)"));
                }
            }
        }
        p
    }

    /// Checks the spec on its own (what a manifest's `input` must satisfy; a spec read from a
    /// bundle already has): `InvalidArgument` naming every bad field.
    pub fn validate(&self) -> Result<()> {
        let p = self.problems();
        if p.is_empty() {
            Ok(())
        } else {
            Err(Error::invalid_argument(format!("invalid input spec: {}", p.join("; "))))
        }
    }
}

impl Manifest {
    /// The problems of the manifest on its own (no files read), each `field.path: ...`; empty
    /// when it is valid. [`Manifest::from_json`] and [`Bundle::load`] refuse a manifest with any.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.format_version != FORMAT_VERSION {
            p.push(format!(
                "format_version: {} is not supported (this asfda reads {FORMAT_VERSION})",
                self.format_version
            ));
        }
        if self.name.is_empty() {
            p.push("name: must not be empty".into());
        }
        if self.classes.len() > MAX_CLASSES {
            p.push(format!("classes: must be at most {MAX_CLASSES}, got {}", self.classes.len()));
        }
        if self.classes.len() < 2 {
            let names: Vec<&str> = self.classes.iter().map(|c| c.name.as_str()).collect();
            p.push(format!("classes: need background and at least one class, got {names:?}"));
        }
        for (i, class) in self.classes.iter().enumerate() {
            p.extend(class.problems(&format!("classes.{i}")));
            if self.classes[..i].iter().any(|c| c.name == class.name) {
                p.push(format!("classes.{i}.name: '{}' is the name of an earlier class too", class.name));
            }
        }
        if self.foreground_classes.is_empty()
            || self.foreground_classes.iter().any(|&c| c == 0 || c >= self.classes.len())
        {
            p.push(format!(
                "foreground_classes: {:?} must be class indices in 1..{}",
                self.foreground_classes,
                self.classes.len()
            ));
        }
        p.extend(self.input.problems());
        if self.inference.feature_channels == 0 {
            p.push("inference.feature_channels: must be at least 1, got 0".into());
        }
        if self.inference.feature_channels > MAX_FEATURE_CHANNELS {
            p.push(format!(
                "inference.feature_channels: must be at most {MAX_FEATURE_CHANNELS}, got {}",
                self.inference.feature_channels
            ));
        }
        // `inference.layout`, `training.loss.kind` and `training.optimizer.kind` are enums: any
        // value they can hold is supported.
        if let Some(t) = &self.training {
            if (0..self.classes.len() as i64).contains(&t.loss.ignore_label) {
                p.push(format!("training.loss.ignore_label: {} is a class index", t.loss.ignore_label));
            }
            if !finite_non_negative(t.loss.dice_smooth) {
                p.push(format!("training.loss.dice_smooth: must be finite and >= 0, got {}", t.loss.dice_smooth));
            }
            let o = &t.optimizer;
            if !finite_positive(o.lr) {
                p.push(format!("training.optimizer.lr: must be finite and > 0, got {}", o.lr));
            }
            if !o.betas.iter().all(|b| (0.0..1.0).contains(b)) {
                p.push(format!("training.optimizer.betas: {:?} must each be in [0, 1)", o.betas));
            }
            if !finite_positive(o.eps) {
                p.push(format!("training.optimizer.eps: must be finite and > 0, got {}", o.eps));
            }
            if !finite_non_negative(o.weight_decay) {
                p.push(format!("training.optimizer.weight_decay: must be finite and >= 0, got {}", o.weight_decay));
            }
        }
        if let Some(s) = &self.source_knowledge {
            if s.k == 0 {
                p.push("source_knowledge.k: must be at least 1, got 0".into());
            }
            if s.k > MAX_ANCHORS {
                p.push(format!("source_knowledge.k: must be at most {MAX_ANCHORS}, got {}", s.k));
            }
        }
        let files = self.files();
        for (field, name) in &files {
            if !plain_relative(name) {
                p.push(format!(
                    "{field}: '{name}' must be a plain relative path inside the bundle folder (not empty, not absolute, no '..')"
                ));
            }
        }
        if let Some(digests) = &self.sha256 {
            for (field, name) in &files {
                if !digests.contains_key(*name) {
                    p.push(format!("sha256: has no digest of '{name}' ({field})"));
                }
            }
            for (name, digest) in digests {
                if !files.iter().any(|(_, f)| f == name) {
                    p.push(format!("sha256.{name}: '{name}' is not a file the manifest names"));
                } else if !sha256_hex(digest) {
                    p.push(format!("sha256.{name}: '{digest}' is not a SHA-256 (64 lowercase hex digits)"));
                }
            }
        }
        p
    }
}

impl Bundle {
    /// Before any named file is opened: each (symlinks resolved) must lie inside the bundle
    /// folder (`InvalidData` naming the file otherwise). Assumes [`Manifest::problems`] passed
    /// (plain relative names).
    pub(super) fn check_containment(&self) -> Result<()> {
        let dir = self.dir.canonicalize().map_err(|e| Error::io(&self.dir, "resolve the bundle folder", &e))?;
        for (field, name) in self.manifest.files() {
            let path = self.path(name);
            let real = path.canonicalize().map_err(|e| Error::io(&path, "find the bundle file", &e))?;
            if !real.starts_with(&dir) {
                return Err(Error::invalid_data(format!(
                    "{field}: '{name}' resolves to '{}', outside the bundle folder '{}' (a symlink?); refused",
                    real.display(),
                    dir.display()
                )));
            }
        }
        Ok(())
    }

    /// Verifies every named file against the manifest's `sha256` (a streaming hash):
    /// `InvalidData` naming the file on a mismatch. A manifest without digests (written before
    /// they existed) is accepted with a warning.
    pub(super) fn check_digests(&self) -> Result<()> {
        let Some(digests) = &self.manifest.sha256 else {
            log::warn!(
                "model bundle '{}': manifest.json has no sha256 digests (an older bundle); its files are not verified",
                self.dir.display()
            );
            return Ok(());
        };
        for (field, name) in self.manifest.files() {
            let path = self.path(name);
            let actual = sha256_file(&path)?;
            let expected = digests.get(name).map(String::as_str).unwrap_or_default();
            if actual != expected {
                return Err(Error::invalid_data(format!(
                    "bundle file '{}' ({field}) is corrupt or changed: its SHA-256 is {actual}, the manifest records {expected}",
                    path.display()
                )));
            }
        }
        Ok(())
    }

    /// Checks the files against the manifest: graph I/O names, checkpoint and statistics tensors.
    pub(super) fn check_files(&self, options: &RuntimeOptions) -> Result<Vec<String>> {
        let m = &self.manifest;
        let mut p = Vec::new();
        // The runtime is loaded here so a bundle that loads is one an engine can run.
        Runtime::load(options.library_path.as_deref())?;
        let (inputs, outputs) = graph_io(&self.inference_path())?;
        expect_names(&mut p, "inference input", &inputs, [&m.inference.input]);
        expect_names(&mut p, "inference output", &outputs, [&m.inference.logits, &m.inference.features]);
        if let Some(t) = &m.training {
            p.extend(self.check_training(t)?);
        }
        if let Some(s) = &m.source_knowledge {
            let file = TensorFile::open(&self.path(&s.file))?;
            let c = m.inference.feature_channels;
            for (name, shape) in
                [(&s.tensors.mean, vec![c]), (&s.tensors.var, vec![c]), (&s.tensors.anchors, vec![s.k, c])]
            {
                file.expect_shape(&mut p, name, &shape);
            }
        }
        Ok(p)
    }

    fn check_training(&self, t: &TrainingSpec) -> Result<Vec<String>> {
        let mut p = Vec::new();
        let (inputs, outputs) = graph_io(&self.path(&t.train_step))?;
        let io = &t.io;
        let fixed_in = [&io.image, &io.labels, &io.loss_weight, &io.lr, &io.step, &io.weight_decay];
        expect_names(&mut p, "train-step input", &inputs, fixed_in);
        expect_names(&mut p, "train-step output", &outputs, [&io.loss, &io.loss_ce, &io.loss_dice]);
        let checkpoint = TensorFile::open(&self.path(&t.checkpoint))?;
        for param in &t.parameters {
            let state: Vec<String> = if param.trainable {
                vec![io.param(&param.name), io.m(&param.name), io.v(&param.name)]
            } else {
                vec![io.param(&param.name)]
            };
            for s in &state {
                expect_names(&mut p, "train-step input", &inputs, [s]);
                checkpoint.expect_shape(&mut p, s, &param.shape);
                if param.trainable {
                    expect_names(&mut p, "train-step output", &outputs, [&io.updated(s)]);
                }
            }
        }
        let declared: HashSet<&str> = io.inputs.iter().map(String::as_str).collect();
        let real: HashSet<&str> = inputs.iter().map(String::as_str).collect();
        if declared != real {
            p.push(format!(
                "training.io.inputs differs from the train-step graph: only in manifest {:?}, only in graph {:?}",
                sorted(declared.difference(&real)),
                sorted(real.difference(&declared))
            ));
        }
        if !checkpoint.contains(&io.step_checkpoint_key) {
            p.push(format!("checkpoint '{}' has no '{}' tensor", t.checkpoint, io.step_checkpoint_key));
        }
        Ok(p)
    }
}

/// The SHA-256 of the file at `path`, as 64 lowercase hex digits, read in a stream.
pub(super) fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest as _;
    use std::io::Read as _;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, "open", &e))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, "read", &e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// The SHA-256 of `bytes`, as 64 lowercase hex digits.
pub(super) fn sha256_bytes(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex(&sha2::Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sorted<'a>(it: impl Iterator<Item = &'a &'a str>) -> Vec<&'a str> {
    let mut v: Vec<&str> = it.copied().collect();
    v.sort_unstable();
    v
}

/// The input and output names of an ONNX graph as ONNX Runtime reports them (graph inputs that
/// are initializers excluded), read from the protobuf without creating a session: loading a
/// bundle then costs a file read per graph instead of two session builds.
fn graph_io(path: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, "read the ONNX graph", &e))?;
    onnx_proto::graph_io(&bytes)
        .map_err(|e| Error::new(ErrorKind::Format, format!("'{}' is not an ONNX model: {e}", path.display())))
}

fn expect_names<'a>(
    problems: &mut Vec<String>,
    what: &str,
    present: &[String],
    wanted: impl IntoIterator<Item = &'a String>,
) {
    for name in wanted {
        if !present.iter().any(|p| p == name) {
            problems.push(format!("{what} '{name}' named in the manifest is not in the graph"));
        }
    }
}
