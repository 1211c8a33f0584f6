//! Model bundles: a folder with [`MANIFEST_FILE`] (`manifest.json`) and the files it names. The
//! manifest is the single source of model facts (classes, input spec, normalisation, graph I/O
//! names, training setup, source knowledge); it is validated once, against the real ONNX graphs
//! and tensor files, when the bundle is loaded, so later stages trust it.
//!
//! - [`manifest`]: the manifest's serde types, every field documented (also in `docs/manifest.md`);
//! - `validate`: every check, made by [`Bundle::load`] ([`Manifest::problems`], [`InputSpec::validate`]);
//! - `write`: writing an adapted bundle ([`Bundle::write_adapted`]).
//!
//! Written by the Python generator (`bindings/python/asfda_tools/export.py`, whose
//! `asfda_tools/manifest.py` checks the same rules); this module alone knows the bundle's own
//! file names.

use std::path::{Path, PathBuf};

use ndarray::ArrayD;

use crate::error::{Error, ErrorKind, Result};
use crate::runtime::RuntimeOptions;
use crate::tensors::TensorFile;

mod classes;
pub mod manifest;
mod validate;
mod write;

pub use classes::{ClassCode, ClassInfo, CodedConcept};
pub use manifest::{
    InferenceSpec, InputOrientation, InputSpec, Layout, LossKind, LossSpec, Manifest, Normalization, OptimizerKind,
    OptimizerSpec, ParameterSpec, SourceKnowledgeSpec, SourceTensorNames, TrainIo, TrainingSpec, ZscoreMask,
};
pub use write::Adaptation;

/// The manifest format this build reads.
pub const FORMAT_VERSION: u32 = 1;

/// The manifest's file name in a bundle folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The file an adapted bundle ([`Bundle::write_adapted`]) records what was done in.
pub const ADAPTATION_FILE: &str = "adaptation.json";

/// Feature statistics of the source data shipped with the model (no source images needed).
#[derive(Clone, Debug)]
pub struct SourceKnowledge {
    /// Per-channel mean of tile features, \[C\].
    pub mean: Vec<f32>,
    /// Per-channel variance of tile features, \[C\].
    pub var: Vec<f32>,
    /// k-means centres of L2-normalised volume embeddings, \[K, C\].
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
        let mut problems = bundle.manifest.problems();
        if problems.is_empty() {
            // Paths are plain and relative (problems); nothing is opened before each is known
            // to stay inside the folder, nor read before its digest is verified.
            bundle.check_containment()?;
            bundle.check_digests()?;
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
}

/// The input and output names of an ONNX model's graph, read from its protobuf bytes (the
/// walker [`Bundle::load`] uses). Public for the fuzz targets only.
#[doc(hidden)]
pub fn onnx_graph_io(bytes: &[u8]) -> std::result::Result<(Vec<String>, Vec<String>), String> {
    crate::onnx_proto::graph_io(bytes).map_err(|e| e.to_string())
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, "read the bundle manifest", &e))?;
    manifest::parse(&text).map_err(|e| Error::new(ErrorKind::Format, format!("'{}': {e}", path.display())))
}
