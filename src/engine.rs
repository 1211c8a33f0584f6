//! The engine: a loaded bundle ready to segment and score volumes. It loads the bundle and
//! creates the inference session once; it is safe to share between threads (ORT runs are
//! serialised on the one session, so concurrent calls give the same results as serial ones).
//!
//! The inference graph's bytes stay in memory, so fine-tuned weights can replace the session's
//! initializers ([`Engine::set_weights`]) without reading the disk again; a call in flight
//! finishes on the model it started with.

use std::path::Path;
use std::sync::{Arc, RwLock};

use ndarray::{s, Array3, Array4, ArrayD, ArrayView4, Axis};

use crate::bundle::{Bundle, SourceKnowledge};
use crate::error::{Error, ErrorKind, Result};
use crate::model::Model;
use crate::preprocess::{prepare, ModelGrid};
use crate::runtime::{Device, RuntimeOptions};
use crate::score::{entropy_map, score_volume, Score, ScoreOptions};
use crate::volume::Volume;
use crate::window::{sliding_window, Cancel, OutputNames, WindowOptions};

/// Everything an engine can be configured with; `Default` gives the documented defaults.
#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    pub runtime: RuntimeOptions,
    pub window: WindowOptions,
    pub score: ScoreOptions,
    /// Refuse volumes whose working memory would exceed this many bytes (0 = no limit).
    pub memory_limit_bytes: u64,
}

/// A progress callback: fraction done in [0, 1]; return `false` to cancel.
pub type Progress<'a> = &'a mut dyn FnMut(f64) -> bool;

/// The model's output on the model grid.
pub struct Inference {
    pub grid: ModelGrid,
    /// Softmax of the blended logits, [classes, Z, Y, X] over the padded model grid.
    pub probabilities: Array4<f32>,
    /// One feature vector per tile, [tiles, F].
    pub features: ndarray::Array2<f32>,
}

impl Inference {
    /// Probabilities without the padding.
    pub fn valid_probabilities(&self) -> ArrayView4<'_, f32> {
        let [z, y, x] = self.grid.valid_region();
        self.probabilities.slice(s![.., z, y, x])
    }
}

/// A segmentation back on the caller's grid.
pub struct Segmentation {
    /// Class index per voxel (one channel).
    pub labels: Volume,
    /// Per-class probabilities, if requested.
    pub probabilities: Option<Volume>,
    /// Normalised predictive entropy in [0, 1], if requested.
    pub entropy: Option<Volume>,
}

/// Which optional maps [`Engine::segment`] returns.
#[derive(Clone, Copy, Debug, Default)]
pub struct SegmentOutputs {
    pub probabilities: bool,
    pub entropy: bool,
}

pub struct Engine {
    bundle: Bundle,
    /// The inference graph as read from the bundle, kept to rebuild sessions with new weights.
    graph: Arc<[u8]>,
    model: RwLock<Arc<Model>>,
    source: Option<SourceKnowledge>,
    options: EngineOptions,
}

/// Named weights for the inference graph's initializers: (initializer name, value).
pub type Weights<'a> = [(&'a str, &'a ArrayD<f32>)];

impl Engine {
    /// Loads and validates the bundle at `bundle_dir` and creates its inference session.
    pub fn new(bundle_dir: &Path, options: EngineOptions) -> Result<Engine> {
        options.window.validate()?;
        options.score.validate()?;
        let bundle = Bundle::load(bundle_dir, &options.runtime)?;
        let path = bundle.inference_path();
        let graph: Arc<[u8]> = std::fs::read(&path)
            .map_err(|e| Error::new(ErrorKind::Io, format!("cannot read model '{}': {e}", path.display())))?
            .into();
        let model = Model::from_memory_with_weights(&graph, &path.display().to_string(), &options.runtime, &[])?;
        let source = bundle.source_knowledge()?;
        Ok(Engine { bundle, graph, model: RwLock::new(Arc::new(model)), source, options })
    }

    /// Runs the model with `weights` in place of the bundle's (e.g. fine-tuned ones) from now on.
    /// Calls already in flight finish with the weights they started with. Every name must be an
    /// initializer of the inference graph.
    pub fn set_weights(&self, weights: &Weights<'_>) -> Result<()> {
        let model = self.build_model(weights)?;
        *self.model.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(model);
        Ok(())
    }

    /// Goes back to the bundle's own weights.
    pub fn reset_weights(&self) -> Result<()> {
        self.set_weights(&[])
    }

    /// A second engine on the same bundle, options and source knowledge, running `weights`; this
    /// engine is unchanged. Reads nothing from disk.
    pub fn with_weights(&self, weights: &Weights<'_>) -> Result<Engine> {
        Ok(Engine {
            bundle: self.bundle.clone(),
            graph: Arc::clone(&self.graph),
            model: RwLock::new(Arc::new(self.build_model(weights)?)),
            source: self.source.clone(),
            options: self.options.clone(),
        })
    }

    fn build_model(&self, weights: &Weights<'_>) -> Result<Model> {
        self.check_weights(weights)?;
        let name = self.bundle.inference_path().display().to_string();
        Model::from_memory_with_weights(&self.graph, &name, &self.options.runtime, weights)
    }

    /// ORT silently adds an initializer it does not know, so names and shapes are checked
    /// against the manifest's parameter list.
    fn check_weights(&self, weights: &Weights<'_>) -> Result<()> {
        let parameters = &self.bundle.training()?.parameters;
        for (name, value) in weights {
            let spec = parameters.iter().find(|p| p.initializer == *name).ok_or_else(|| {
                Error::invalid_argument(format!(
                    "'{name}' is not a weight of the model (see the manifest's parameters)"
                ))
            })?;
            if value.shape() != spec.shape.as_slice() {
                return Err(Error::invalid_argument(format!(
                    "weight '{name}' has shape {:?}, the model's is {:?}",
                    value.shape(),
                    spec.shape
                )));
            }
        }
        Ok(())
    }

    /// The model calls run on now (a snapshot: a later [`Engine::set_weights`] does not affect it).
    pub fn model(&self) -> Arc<Model> {
        Arc::clone(&self.model.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// The device inference actually runs on.
    pub fn device(&self) -> Device {
        self.model().device()
    }

    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Preprocesses `volume`, runs the sliding window and returns probabilities on the model grid.
    pub fn infer(&self, volume: &Volume, cancel: &Cancel, progress: Progress<'_>) -> Result<Inference> {
        self.check_memory(volume)?;
        let prepared = prepare(volume, &self.bundle.manifest().input)?;
        let inference = &self.bundle.manifest().inference;
        let names = OutputNames { logits: &inference.logits, features: &inference.features };
        let tile = self.bundle.manifest().input.patch_size;
        let model = self.model();
        let out = sliding_window(&model, &names, prepared.image.view(), tile, &self.options.window, cancel, progress)?;
        let mut probabilities = out.logits;
        softmax_in_place(&mut probabilities);
        Ok(Inference { grid: prepared.grid, probabilities, features: out.features })
    }

    /// Segments `volume`; the label map (and optional maps) land on the caller's voxel grid.
    ///
    /// Labels are the argmax on the model grid mapped back with nearest neighbour, which needs
    /// no class-count-sized buffer on the original grid (see peers.md on memory).
    pub fn segment(
        &self,
        volume: &Volume,
        outputs: SegmentOutputs,
        cancel: &Cancel,
        progress: Progress<'_>,
    ) -> Result<Segmentation> {
        let inference = self.infer(volume, cancel, progress)?;
        let labels = argmax(inference.probabilities.view());
        let probabilities = if outputs.probabilities {
            Some(inference.grid.to_original(inference.probabilities.view())?)
        } else {
            None
        };
        let entropy = if outputs.entropy {
            let h = entropy_map(inference.probabilities.view()).insert_axis(Axis(0));
            Some(inference.grid.to_original(h.view())?)
        } else {
            None
        };
        Ok(Segmentation { labels: inference.grid.labels_to_original(labels.view())?, probabilities, entropy })
    }

    /// Scores `volume` for how informative annotating it would be (method.md section 1).
    pub fn score(&self, id: &str, volume: &Volume, cancel: &Cancel, progress: Progress<'_>) -> Result<Score> {
        let source = self.source.as_ref().ok_or_else(|| {
            Error::unsupported(format!(
                "model bundle '{}' ships no source knowledge, which scoring needs",
                self.bundle.dir().display()
            ))
        })?;
        let inference = self.infer(volume, cancel, progress)?;
        score_volume(id, inference.valid_probabilities(), inference.features.view(), source, &self.options.score)
    }

    /// Refuses a volume whose working set (model-grid image, logit accumulators, weights) would
    /// pass the configured limit, before any allocation.
    fn check_memory(&self, volume: &Volume) -> Result<()> {
        let limit = self.options.memory_limit_bytes;
        if limit == 0 {
            return Ok(());
        }
        let m = self.bundle.manifest();
        let spacing = volume.spacing();
        // The padded model grid, axis by axis (dims and spacing are x, y, z; the patch is z, y, x).
        let model_voxels: f64 = (0..3)
            .map(|a| {
                let resampled = (volume.dims()[a] as f64 * spacing[a] / m.input.spacing_mm[a]).round().max(1.0);
                resampled.max(m.input.patch_size[2 - a] as f64)
            })
            .product();
        let per_voxel = 4.0 * (m.input.channels + m.classes.len() + 1) as f64;
        let needed = model_voxels * per_voxel + (volume.data().len() * 4) as f64;
        if needed > limit as f64 {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "this volume needs about {} MiB of working memory, over the engine's limit of {} MiB; raise the memory limit",
                    (needed / 1048576.0).ceil(),
                    limit / 1048576
                ),
            ));
        }
        Ok(())
    }
}

/// Softmax over axis 0 (classes), in place, numerically stable.
pub fn softmax_in_place(logits: &mut Array4<f32>) {
    let (_, z, y, x) = logits.dim();
    for k in 0..z {
        for j in 0..y {
            for i in 0..x {
                let mut lane = logits.slice_mut(s![.., k, j, i]);
                let max = lane.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                lane.mapv_inplace(|v| (v - max).exp());
                let sum: f32 = lane.sum();
                lane /= sum;
            }
        }
    }
}

fn argmax(probabilities: ArrayView4<'_, f32>) -> Array3<u8> {
    let (_, z, y, x) = probabilities.dim();
    Array3::from_shape_fn((z, y, x), |(k, j, i)| {
        let lane = probabilities.slice(s![.., k, j, i]);
        lane.iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |best, (c, &p)| if p > best.1 { (c, p) } else { best })
            .0 as u8
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut a = Array4::from_shape_vec((3, 1, 1, 2), vec![1.0, 1000.0, 2.0, 1000.0, 3.0, -5.0]).unwrap();
        softmax_in_place(&mut a);
        for i in 0..2 {
            let s: f32 = (0..3).map(|c| a[[c, 0, 0, i]]).sum();
            assert!((s - 1.0).abs() < 1e-6);
        }
        assert!(a[[2, 0, 0, 0]] > a[[1, 0, 0, 0]] && a[[1, 0, 0, 0]] > a[[0, 0, 0, 0]]);
        assert!(a.iter().all(|v| v.is_finite()), "large logits must not overflow");
        assert_eq!(argmax(a.view())[[0, 0, 0]], 2);
    }
}
