//! Model bundles: a folder with `manifest.json` and the files it names. The manifest is the single
//! source of model facts (classes, input spec, normalisation, graph I/O names, training setup,
//! source knowledge); it is validated once, against the real ONNX graphs and tensor files, when
//! the bundle is loaded.
//!
//! Written by the Python generator (`bindings/python/asfda_tools/export.py`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::runtime::{Runtime, RuntimeOptions};
use crate::tensors::TensorFile;

/// The manifest format this build reads.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub name: String,
    /// Class names; index 0 is background.
    pub classes: Vec<String>,
    pub foreground_classes: Vec<usize>,
    pub input: InputSpec,
    pub inference: InferenceSpec,
    pub training: Option<TrainingSpec>,
    pub source_knowledge: Option<SourceKnowledgeSpec>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InputSpec {
    pub channels: usize,
    /// Tile size (z, y, x) the model was trained on.
    pub patch_size: [usize; 3],
    /// Every spatial size fed to the model must be a multiple of this.
    pub size_divisible_by: usize,
    /// Voxel spacing (x, y, z) in mm the model expects.
    pub spacing_mm: [f64; 3],
    /// Only "RAS": volumes are reoriented to the closest canonical RAS before inference.
    pub orientation: String,
    pub normalization: Normalization,
}

/// Intensity normalisation, applied per volume before tiling.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Normalization {
    /// (x - mean) / std with statistics over `mask` voxels (MR).
    Zscore {
        #[serde(default)]
        mask: ZscoreMask,
    },
    /// Clip to [lower, upper] (HU), then (x - mean) / std with fixed dataset values (CT, nnU-Net).
    CtWindow { lower: f64, upper: f64, mean: f64, std: f64 },
    /// Clip to the volume's [lower, upper] percentiles, then z-score over all voxels.
    Percentile { lower: f64, upper: f64 },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZscoreMask {
    /// Voxels that are not exactly zero (skull-stripped MR).
    #[default]
    Nonzero,
    All,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InferenceSpec {
    pub file: String,
    pub input: String,
    pub logits: String,
    pub features: String,
    pub feature_channels: usize,
    /// Only "NCZYX".
    pub layout: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainingSpec {
    pub train_step: String,
    pub checkpoint: String,
    pub parameters: Vec<ParameterSpec>,
    pub frozen: Vec<String>,
    pub loss: LossSpec,
    pub optimizer: OptimizerSpec,
    pub io: TrainIo,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ParameterSpec {
    pub name: String,
    /// The initializer of the inference graph that holds this parameter.
    pub initializer: String,
    pub shape: Vec<usize>,
    pub trainable: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LossSpec {
    pub kind: String,
    /// Label value the loss ignores (unannotated or unreliable voxels).
    pub ignore_label: i64,
    pub dice_smooth: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OptimizerSpec {
    pub kind: String,
    pub lr: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
}

/// Names of the train-step graph's inputs and outputs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainIo {
    pub image: String,
    pub labels: String,
    pub loss_weight: String,
    pub lr: String,
    pub step: String,
    pub weight_decay: String,
    pub loss: String,
    pub loss_ce: String,
    pub loss_dice: String,
    pub param_prefix: String,
    pub m_prefix: String,
    pub v_prefix: String,
    pub new_prefix: String,
    pub step_checkpoint_key: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

impl TrainIo {
    pub fn param(&self, name: &str) -> String {
        format!("{}{name}", self.param_prefix)
    }
    pub fn m(&self, name: &str) -> String {
        format!("{}{name}", self.m_prefix)
    }
    pub fn v(&self, name: &str) -> String {
        format!("{}{name}", self.v_prefix)
    }
    /// The output that carries the updated value of state input `input` (e.g. `new.param.w`).
    pub fn updated(&self, input: &str) -> String {
        format!("{}{input}", self.new_prefix)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceKnowledgeSpec {
    pub file: String,
    pub tensors: SourceTensorNames,
    pub k: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceTensorNames {
    pub mean: String,
    pub var: String,
    pub anchors: String,
}

/// Feature statistics of the source data shipped with the model (no source images needed).
#[derive(Clone, Debug)]
pub struct SourceKnowledge {
    /// Per-channel mean of tile features, [C].
    pub mean: Vec<f32>,
    /// Per-channel variance of tile features, [C].
    pub var: Vec<f32>,
    /// k-means centres of L2-normalised volume embeddings, [K, C].
    pub anchors: ArrayD<f32>,
}

/// A validated model bundle.
#[derive(Clone, Debug)]
pub struct Bundle {
    dir: PathBuf,
    manifest: Manifest,
}

impl Bundle {
    /// Reads and validates `dir/manifest.json`, the files it names, the ONNX graphs' real inputs
    /// and outputs, the checkpoint and the source knowledge. Every mismatch is reported by name.
    pub fn load(dir: &Path, options: &RuntimeOptions) -> Result<Bundle> {
        let manifest = read_manifest(dir)?;
        let bundle = Bundle { dir: dir.to_path_buf(), manifest };
        let mut problems = bundle.check_manifest();
        if problems.is_empty() {
            problems.extend(bundle.check_files(options)?);
        }
        if problems.is_empty() {
            Ok(bundle)
        } else {
            Err(Error::invalid_data(format!(
                "model bundle '{}' is inconsistent:\n  - {}",
                dir.display(),
                problems.join("\n  - ")
            )))
        }
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A file of the bundle by its manifest name.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn inference_path(&self) -> PathBuf {
        self.path(&self.manifest.inference.file)
    }

    /// The training part of the manifest, or an error saying the bundle cannot be fine-tuned.
    pub fn training(&self) -> Result<&TrainingSpec> {
        self.manifest.training.as_ref().ok_or_else(|| {
            Error::unsupported(format!("model bundle '{}' has no training artifacts", self.dir.display()))
        })
    }

    /// Loads the source feature statistics, if the bundle ships them.
    pub fn source_knowledge(&self) -> Result<Option<SourceKnowledge>> {
        let Some(spec) = &self.manifest.source_knowledge else { return Ok(None) };
        let file = TensorFile::open(&self.path(&spec.file))?;
        Ok(Some(SourceKnowledge {
            mean: file.f32(&spec.tensors.mean)?.into_raw_vec_and_offset().0,
            var: file.f32(&spec.tensors.var)?.into_raw_vec_and_offset().0,
            anchors: file.f32(&spec.tensors.anchors)?,
        }))
    }

    /// Semantic checks of the manifest alone.
    fn check_manifest(&self) -> Vec<String> {
        let m = &self.manifest;
        let mut p = Vec::new();
        if m.format_version != FORMAT_VERSION {
            p.push(format!("format_version {} is not supported (this asfda reads {FORMAT_VERSION})", m.format_version));
        }
        if m.classes.len() < 2 {
            p.push(format!("classes: need background and at least one class, got {:?}", m.classes));
        }
        if m.foreground_classes.is_empty() || m.foreground_classes.iter().any(|&c| c == 0 || c >= m.classes.len()) {
            p.push(format!(
                "foreground_classes {:?} must be class indices in 1..{}",
                m.foreground_classes,
                m.classes.len()
            ));
        }
        let i = &m.input;
        if i.channels == 0 {
            p.push("input.channels is 0".into());
        }
        if i.size_divisible_by == 0 || i.patch_size.iter().any(|&s| s == 0 || s % i.size_divisible_by.max(1) != 0) {
            p.push(format!(
                "input.patch_size {:?} is not a positive multiple of size_divisible_by {}",
                i.patch_size, i.size_divisible_by
            ));
        }
        if i.spacing_mm.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            p.push(format!("input.spacing_mm {:?} must be positive", i.spacing_mm));
        }
        if i.orientation != "RAS" {
            p.push(format!("input.orientation '{}' is not supported (only \"RAS\")", i.orientation));
        }
        if m.inference.layout != "NCZYX" {
            p.push(format!("inference.layout '{}' is not supported (only \"NCZYX\")", m.inference.layout));
        }
        if let Some(t) = &m.training {
            if t.loss.kind != "dice_ce" || t.optimizer.kind != "adamw" {
                p.push(format!(
                    "training: loss '{}' / optimizer '{}' unsupported (dice_ce / adamw)",
                    t.loss.kind, t.optimizer.kind
                ));
            }
            if (0..m.classes.len() as i64).contains(&t.loss.ignore_label) {
                p.push(format!("training.loss.ignore_label {} is a class index", t.loss.ignore_label));
            }
        }
        p
    }

    /// Checks the files against the manifest: graph I/O names, checkpoint and statistics tensors.
    fn check_files(&self, options: &RuntimeOptions) -> Result<Vec<String>> {
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

fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, "read the bundle manifest", &e))?;
    serde_json::from_str(&text).map_err(|e| Error::new(ErrorKind::Format, format!("'{}': {e}", path.display())))
}

/// The input and output names of an ONNX graph as ONNX Runtime reports them (graph inputs that
/// are initializers excluded), read from the protobuf without creating a session: loading a
/// bundle then costs a file read per graph instead of two session builds.
fn graph_io(path: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, "read the ONNX graph", &e))?;
    onnx::graph_io(&bytes)
        .map_err(|e| Error::new(ErrorKind::Format, format!("'{}' is not an ONNX model: {e}", path.display())))
}

/// Just enough of the protobuf wire format to read ModelProto.graph's input, output and
/// initializer names (onnx.proto: ModelProto.graph = 7; GraphProto.initializer = 5, input = 11,
/// output = 12; ValueInfoProto.name = 1; TensorProto.name = 8).
mod onnx {
    type Fields<'a> = Vec<(u64, Option<&'a [u8]>)>;

    /// Every field of one message: (field number, payload of length-delimited fields).
    fn fields(buf: &[u8]) -> std::result::Result<Fields<'_>, String> {
        let mut out = Vec::new();
        let mut pos = 0;
        let varint = |pos: &mut usize| -> std::result::Result<u64, String> {
            let mut v = 0u64;
            for shift in (0..64).step_by(7) {
                let b = *buf.get(*pos).ok_or("truncated varint")?;
                *pos += 1;
                v |= u64::from(b & 0x7f) << shift;
                if b & 0x80 == 0 {
                    return Ok(v);
                }
            }
            Err("varint longer than 10 bytes".into())
        };
        while pos < buf.len() {
            let key = varint(&mut pos)?;
            let (field, wire) = (key >> 3, key & 7);
            let skip = match wire {
                0 => {
                    varint(&mut pos)?;
                    0
                }
                1 => 8,
                5 => 4,
                2 => {
                    let len = usize::try_from(varint(&mut pos)?).map_err(|_| "length overflows")?;
                    let end = pos.checked_add(len).filter(|&e| e <= buf.len()).ok_or("truncated field")?;
                    out.push((field, Some(&buf[pos..end])));
                    pos = end;
                    continue;
                }
                w => return Err(format!("unsupported protobuf wire type {w} (field {field})")),
            };
            pos = pos.checked_add(skip).filter(|&e| e <= buf.len()).ok_or("truncated field")?;
            out.push((field, None));
        }
        Ok(out)
    }

    /// The string in field `number` of a message.
    fn name(message: &[u8], number: u64) -> std::result::Result<String, String> {
        let raw = fields(message)?.into_iter().find(|(f, _)| *f == number).and_then(|(_, p)| p).unwrap_or(b"");
        String::from_utf8(raw.to_vec()).map_err(|_| "a name is not UTF-8".to_string())
    }

    /// (inputs without initializers, outputs) of a serialised ModelProto.
    pub(super) fn graph_io(model: &[u8]) -> std::result::Result<(Vec<String>, Vec<String>), String> {
        let graph =
            fields(model)?.into_iter().find(|(f, p)| *f == 7 && p.is_some()).and_then(|(_, p)| p).ok_or("no graph")?;
        let (mut inputs, mut outputs, mut initializers) = (Vec::new(), Vec::new(), Vec::new());
        for (field, payload) in fields(graph)? {
            match (field, payload) {
                (11, Some(m)) => inputs.push(name(m, 1)?),
                (12, Some(m)) => outputs.push(name(m, 1)?),
                (5, Some(m)) => initializers.push(name(m, 8)?),
                _ => {}
            }
        }
        inputs.retain(|i| !initializers.contains(i));
        Ok((inputs, outputs))
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn reads_names_and_refuses_garbage() {
            // ModelProto { graph (7): GraphProto { input (11) {name "x"}, input {name "w"},
            // initializer (5) {name (8) "w"}, output (12) {name "y"} } }
            let vi = |f: u8, n: &[u8]| [&[f << 3 | 2, n.len() as u8 + 2, 1 << 3 | 2, n.len() as u8][..], n].concat();
            let init = [&[5 << 3 | 2, 3, 8 << 3 | 2, 1][..], b"w"].concat();
            let graph = [vi(11, b"x"), vi(11, b"w"), init, vi(12, b"y")].concat();
            let model = [&[1 << 3, 8, 7 << 3 | 2, graph.len() as u8][..], &graph].concat();
            let (inputs, outputs) = super::graph_io(&model).unwrap();
            assert_eq!((inputs, outputs), (vec!["x".to_string()], vec!["y".to_string()]));
            assert!(super::graph_io(&model[..model.len() - 1]).unwrap_err().contains("truncated"));
            assert!(super::graph_io(b"not a model").is_err());
        }
    }
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
