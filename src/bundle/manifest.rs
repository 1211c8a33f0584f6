//! The manifest's serde types: `manifest.json` exactly as the Python generator
//! (`bindings/python/asfda_tools/export.py`) writes it. Every field is described here and in
//! `docs/manifest.md`; the checks beyond types (ranges, cross-field rules) are in
//! `super::validate` and run when a manifest is read ([`Manifest::from_json`]).
//!
//! Reading errors name the field's path and, for enums, the allowed values, e.g.
//! "input.orientation: unknown variant \`LPS\`, expected \`RAS\`" or
//! "training.optimizer.lr: missing (required)".

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use super::classes::ClassInfo;
use crate::error::{Error, ErrorKind, Result};

/// The whole manifest (`manifest.json`), the single source of a model's facts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Version of this format; must equal [`super::FORMAT_VERSION`].
    pub format_version: u32,
    /// The model's name; fine-tuning checkpoints record it, and only a bundle of the same name
    /// can resume them.
    pub name: String,
    /// The classes, in the order of the model's output channels; index 0 is background. At least
    /// 2; names unique. Each entry is a name, or an object with a display colour and a coded
    /// concept ([`ClassInfo`]).
    #[serde(deserialize_with = "at::classes")]
    pub classes: Vec<ClassInfo>,
    /// The classes foreground Dice averages over (evaluation, the pseudo-label check) and whose
    /// voxels foreground-centred patches are drawn around: indices in `1..classes.len()`, at least one.
    pub foreground_classes: Vec<usize>,
    /// What the model expects of an image.
    #[serde(deserialize_with = "at::input")]
    pub input: InputSpec,
    /// The inference graph.
    #[serde(deserialize_with = "at::inference")]
    pub inference: InferenceSpec,
    /// The train-step graph and its state; absent (or `null`) when the bundle cannot be fine-tuned.
    #[serde(default, deserialize_with = "at::training")]
    pub training: Option<TrainingSpec>,
    /// Feature statistics of the source data; absent (or `null`) when not shipped (scoring then
    /// lacks the terms that need them).
    #[serde(default, deserialize_with = "at::source_knowledge")]
    pub source_knowledge: Option<SourceKnowledgeSpec>,
    /// SHA-256 of every file the manifest names (key: the file name exactly as the manifest
    /// writes it, value: 64 lowercase hex digits); [`super::Bundle::load`] verifies each file
    /// against it. When present it must list every named file and nothing else. Absent in bundles
    /// written before it existed: those load unverified, with a warning (`log::warn!`).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "at::sha256")]
    pub sha256: Option<BTreeMap<String, String>>,
}

/// What the model expects of an image (`input`). Read from a manifest it has passed
/// [`InputSpec::validate`]; a hand-built one should be checked with it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// Image channels (modalities). At least 1.
    pub channels: usize,
    /// Tile size (z, y, x) the model was trained on, in model-grid voxels: the sliding-window tile
    /// and the default fine-tuning patch. Each a positive multiple of `size_divisible_by`.
    pub patch_size: [usize; 3],
    /// Every spatial size fed to the model must be a multiple of this (2^downsamplings). At least 1.
    pub size_divisible_by: usize,
    /// Voxel spacing (x, y, z) in mm the model expects; volumes are resampled to it. Finite, > 0.
    pub spacing_mm: [f64; 3],
    /// The voxel axis order the model expects.
    #[serde(deserialize_with = "at::orientation")]
    pub orientation: InputOrientation,
    /// Intensity normalisation, applied per volume and channel before tiling.
    #[serde(deserialize_with = "at::normalization")]
    pub normalization: Normalization,
}

/// The voxel orientation the model expects (`input.orientation`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum InputOrientation {
    /// `"RAS"`: volumes are reoriented to the closest canonical RAS (as nibabel's
    /// `as_closest_canonical`: a permutation/flip, no resampling) before inference.
    #[default]
    Ras,
}

/// Intensity normalisation (`input.normalization`), tagged by `kind`. Parameter rules
/// (checked by [`InputSpec::validate`]): `ct_window` needs finite values, `lower <= upper` and
/// `std > 0`; `percentile` needs `0 <= lower <= upper <= 100`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Normalization {
    /// `"zscore"`: (x - mean) / std with statistics over `mask` voxels (MR).
    Zscore {
        /// Which voxels the statistics use; default `"nonzero"`.
        #[serde(default)]
        mask: ZscoreMask,
    },
    /// `"ct_window"`: clip to [lower, upper] (HU), then (x - mean) / std with fixed dataset values
    /// (CT, nnU-Net).
    CtWindow {
        /// Lower clip bound (HU).
        lower: f64,
        /// Upper clip bound (HU), >= `lower`.
        upper: f64,
        /// Dataset mean subtracted after clipping.
        mean: f64,
        /// Dataset standard deviation divided by, > 0.
        std: f64,
    },
    /// `"percentile"`: clip to the volume's [lower, upper] percentiles, then z-score over all voxels.
    Percentile {
        /// Lower percentile, in [0, 100].
        lower: f64,
        /// Upper percentile, in [`lower`, 100].
        upper: f64,
    },
}

/// The voxels z-score statistics use (`input.normalization.mask`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZscoreMask {
    /// `"nonzero"`: voxels that are not exactly zero (skull-stripped MR).
    #[default]
    Nonzero,
    /// `"all"`: every voxel.
    All,
}

/// The inference graph (`inference`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InferenceSpec {
    /// The ONNX file, relative to the bundle folder.
    pub file: String,
    /// Name of the graph input (the image tile, float32 [N, C, Z, Y, X]).
    pub input: String,
    /// Name of the graph output holding the class logits [N, classes, Z, Y, X].
    pub logits: String,
    /// Name of the graph output holding the features scoring uses [N, feature_channels, ...].
    pub features: String,
    /// Channels of the `features` output. At least 1.
    pub feature_channels: usize,
    /// Axis order of the graph's tensors.
    #[serde(deserialize_with = "at::layout")]
    pub layout: Layout,
}

/// Axis order of the inference graph's tensors (`inference.layout`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Layout {
    /// `"NCZYX"`: batch, channel, then z, y, x (the slowest spatial axis first).
    #[default]
    Nczyx,
}

/// The train-step graph and its state (`training`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingSpec {
    /// The train-step ONNX file (one AdamW step per call), relative to the bundle folder.
    pub train_step: String,
    /// The safetensors file with the train step's state (`param.*`, `m.*`, `v.*` and the step
    /// count), relative to the bundle folder.
    pub checkpoint: String,
    /// The model's parameters, in the train step's order.
    #[serde(deserialize_with = "at::parameters")]
    pub parameters: Vec<ParameterSpec>,
    /// Names of the parameters that are not trained (informational: `parameters[].trainable`
    /// is what the library uses).
    pub frozen: Vec<String>,
    /// The loss the train step computes.
    #[serde(deserialize_with = "at::loss")]
    pub loss: LossSpec,
    /// The optimiser the train step implements.
    #[serde(deserialize_with = "at::optimizer")]
    pub optimizer: OptimizerSpec,
    /// Names of the train step's inputs and outputs.
    #[serde(deserialize_with = "at::io")]
    pub io: TrainIo,
}

/// One model parameter (`training.parameters[]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParameterSpec {
    /// The parameter's name; its train-step state is `<param_prefix><name>` (and the AdamW
    /// moments `<m_prefix><name>`, `<v_prefix><name>` when trainable).
    pub name: String,
    /// The initializer of the inference graph that holds this parameter.
    pub initializer: String,
    /// The parameter's shape.
    pub shape: Vec<usize>,
    /// Whether the train step updates it (then it has AdamW moments).
    pub trainable: bool,
}

/// The loss (`training.loss`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossSpec {
    /// Which loss.
    #[serde(deserialize_with = "at::loss_kind")]
    pub kind: LossKind,
    /// Label value the loss ignores (unannotated or unreliable voxels, padding); not a class index.
    pub ignore_label: i64,
    /// Smoothing term of the soft Dice, finite and >= 0.
    pub dice_smooth: f64,
}

/// The loss kind (`training.loss.kind`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// `"dice_ce"`: cross-entropy plus soft Dice over the foreground classes (nnU-Net).
    #[default]
    DiceCe,
}

/// The optimiser (`training.optimizer`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizerSpec {
    /// Which optimiser.
    #[serde(deserialize_with = "at::optimizer_kind")]
    pub kind: OptimizerKind,
    /// Default base learning rate, finite and > 0 (fine-tuning options may override it).
    pub lr: f64,
    /// AdamW's (beta1, beta2), each in [0, 1); baked into the train-step graph.
    pub betas: [f64; 2],
    /// AdamW's epsilon, finite and > 0; baked into the train-step graph.
    pub eps: f64,
    /// Default decoupled weight decay, finite and >= 0 (fine-tuning options may override it).
    pub weight_decay: f64,
}

/// The optimiser kind (`training.optimizer.kind`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// `"adamw"`: Adam with decoupled weight decay (Loshchilov & Hutter), as `torch.optim.AdamW`.
    #[default]
    Adamw,
}

/// Names of the train-step graph's inputs and outputs (`training.io`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainIo {
    /// Input: the image batch, float32 [N, C, Z, Y, X].
    pub image: String,
    /// Input: the label batch, int64 [N, Z, Y, X] (class indices or `ignore_label`).
    pub labels: String,
    /// Input: per-sample loss weights, float32 \[N\].
    pub loss_weight: String,
    /// Input: the learning rate of this step, float32 scalar.
    pub lr: String,
    /// Input: the step count before this step, int64 scalar (AdamW's bias correction).
    pub step: String,
    /// Input: the weight decay of this step, float32 scalar.
    pub weight_decay: String,
    /// Output: the weighted batch loss before the update.
    pub loss: String,
    /// Output: its cross-entropy part.
    pub loss_ce: String,
    /// Output: its Dice part.
    pub loss_dice: String,
    /// Prefix of parameter state inputs (`param.`).
    pub param_prefix: String,
    /// Prefix of AdamW first-moment inputs (`m.`).
    pub m_prefix: String,
    /// Prefix of AdamW second-moment inputs (`v.`).
    pub v_prefix: String,
    /// Prefix of the outputs carrying updated state (`new.`, e.g. `new.param.w`).
    pub new_prefix: String,
    /// The checkpoint tensor holding the step count.
    pub step_checkpoint_key: String,
    /// Every input of the train-step graph (must equal the graph's real inputs).
    pub inputs: Vec<String>,
    /// Every output of the train-step graph.
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

/// Where the source feature statistics are (`source_knowledge`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceKnowledgeSpec {
    /// The safetensors file, relative to the bundle folder.
    pub file: String,
    /// Names of its tensors.
    #[serde(deserialize_with = "at::tensors")]
    pub tensors: SourceTensorNames,
    /// Number of anchors (k-means centres), at least 1.
    pub k: usize,
    /// Source tiles the statistics were computed from (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiles: Option<usize>,
    /// Source volumes the anchors were computed from (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<usize>,
}

/// Tensor names in the source-knowledge file (`source_knowledge.tensors`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceTensorNames {
    /// Per-channel mean of tile features, float32 \[feature_channels\].
    pub mean: String,
    /// Per-channel variance of tile features, float32 \[feature_channels\].
    pub var: String,
    /// k-means centres of L2-normalised volume embeddings, float32 [k, feature_channels].
    pub anchors: String,
}

macro_rules! spelling {
    ($($t:ty),*) => {$(
        /// The manifest's spelling (`"RAS"`, `"NCZYX"`, `"dice_ce"`, `"adamw"`).
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match serde_json::to_value(self) {
                    Ok(serde_json::Value::String(s)) => f.write_str(&s),
                    _ => write!(f, "{self:?}"),
                }
            }
        }
    )*};
}
spelling!(InputOrientation, Layout, LossKind, OptimizerKind, ZscoreMask);

impl Manifest {
    /// Every file the manifest names, with the field that names it (`inference.file`,
    /// `training.train_step`, `training.checkpoint`, `source_knowledge.file`), in that order.
    pub fn files(&self) -> Vec<(&'static str, &str)> {
        let mut files = vec![("inference.file", self.inference.file.as_str())];
        if let Some(t) = &self.training {
            files.push(("training.train_step", t.train_step.as_str()));
            files.push(("training.checkpoint", t.checkpoint.as_str()));
        }
        if let Some(s) = &self.source_knowledge {
            files.push(("source_knowledge.file", s.file.as_str()));
        }
        files
    }

    /// Parses and checks a manifest's text (types, then [`Manifest::problems`]): `Format` for
    /// text that is not a manifest, `InvalidData` for values out of range; both name the field.
    pub fn from_json(text: &str) -> Result<Manifest> {
        let manifest = parse(text).map_err(|e| Error::new(ErrorKind::Format, e))?;
        let problems = manifest.problems();
        if problems.is_empty() {
            Ok(manifest)
        } else {
            Err(Error::invalid_data(problems.join("; ")))
        }
    }
}

/// The manifest in `text`, types checked only; the error names the field.
pub(super) fn parse(text: &str) -> std::result::Result<Manifest, String> {
    // Through a `Value`, so that no inner error message carries a line/column (see `at`).
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    serde_json::from_value(value).map_err(|e| at::join("", &e.to_string()))
}

/// Field-path prefixes for errors: each nested field deserializes through one of these, which
/// prepends its name, so that serde's "missing field \`lr\`" reaches the caller as
/// `training.optimizer.lr: missing (required)`. (Deserialized from a `serde_json::Value`, so no
/// inner message carries a line/column position.)
mod at {
    use serde::de::Error as _;

    use super::{Deserialize, Deserializer};

    /// `inner` under the field `seg`: a message that starts with a path (`a.b: ...`) gets `seg.`
    /// in front of the path; serde's "missing field \`x\`" becomes `seg.x: missing (required)`.
    pub(super) fn join(seg: &str, inner: &str) -> String {
        let path = |p: &str| if seg.is_empty() { p.to_string() } else { format!("{seg}.{p}") };
        if let Some(name) = inner.strip_prefix("missing field `").and_then(|r| r.strip_suffix('`')) {
            return format!("{}: missing (required)", path(name));
        }
        match inner.split_once(": ") {
            Some((p, rest)) if !p.is_empty() && !p.contains(char::is_whitespace) => format!("{}: {rest}", path(p)),
            _ if seg.is_empty() => inner.to_string(),
            _ => format!("{seg}: {inner}"),
        }
    }

    macro_rules! fields {
        ($($f:ident => $seg:literal),*) => {$(
            pub(super) fn $f<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
                T::deserialize(d).map_err(|e| D::Error::custom(join($seg, &e.to_string())))
            }
        )*};
    }
    fields!(input => "input", inference => "inference", training => "training",
        source_knowledge => "source_knowledge", orientation => "orientation", normalization => "normalization",
        layout => "layout", loss => "loss", optimizer => "optimizer", io => "io", parameters => "parameters", loss_kind => "kind",
        optimizer_kind => "kind", tensors => "tensors", sha256 => "sha256");

    /// The `classes` array, each entry's error under its index (`classes.2: ...`).
    pub(super) fn classes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<super::ClassInfo>, D::Error> {
        let items =
            Vec::<serde_json::Value>::deserialize(d).map_err(|e| D::Error::custom(join("classes", &e.to_string())))?;
        items
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                serde_json::from_value(v).map_err(|e| D::Error::custom(join(&format!("classes.{i}"), &e.to_string())))
            })
            .collect()
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn paths_compose() {
            assert_eq!(super::join("optimizer", "missing field `lr`"), "optimizer.lr: missing (required)");
            assert_eq!(
                super::join("training", "optimizer.lr: missing (required)"),
                "training.optimizer.lr: missing (required)"
            );
            assert_eq!(super::join("", "name: missing (required)"), "name: missing (required)");
            assert_eq!(
                super::join("input", "invalid type: string \"a\", expected usize"),
                "input: invalid type: string \"a\", expected usize"
            );
            assert_eq!(super::join("", "missing field `name`"), "name: missing (required)");
        }
    }
}
