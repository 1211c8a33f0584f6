//! Every check of a bundle, made once when it is loaded ([`super::Bundle::load`]): the manifest's
//! values on their own ([`Manifest::problems`], [`InputSpec::validate`]), then the files against
//! the manifest (graph input/output names, checkpoint and statistics tensors). Each problem is a
//! line `field.path: what is wrong`, so that a bundle's author sees every mistake at once.
//!
//! The same rules are checked by the Python generator (`asfda_tools/manifest.py`); the golden
//! manifest test (`tests/golden_manifest.rs`, `bindings/python/tests/test_manifest.py`) keeps the
//! two in step.

use std::collections::HashSet;
use std::path::Path;

use super::manifest::{InputSpec, Manifest, Normalization, TrainingSpec};
use super::{Bundle, FORMAT_VERSION};
use crate::error::{Error, ErrorKind, Result};
use crate::onnx_proto;
use crate::runtime::{Runtime, RuntimeOptions};
use crate::tensors::TensorFile;

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
        if !self.spacing_mm.iter().all(|&s| finite_positive(s)) {
            p.push(format!("input.spacing_mm: {:?} must be finite and positive", self.spacing_mm));
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
        if self.classes.len() < 2 {
            p.push(format!("classes: need background and at least one class, got {:?}", self.classes));
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
        }
        p
    }
}

impl Bundle {
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
