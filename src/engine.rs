//! The engine: a loaded bundle ready to segment and score volumes. It loads the bundle and
//! creates the inference session once; it is safe to share between threads (ORT runs are
//! serialised on the one session, so concurrent calls give the same results as serial ones).
//!
//! The inference graph's bytes stay in memory, so fine-tuned weights can replace the session's
//! initializers ([`Engine::set_weights`]) without reading the disk again; a call in flight
//! finishes on the model it started with.
//!
//! Memory: segment and score stream the blended logits in z-slabs (see
//! [`crate::window::sliding_window_slabs`]) and read a volume already in RAS order at the model
//! spacing in place, so for a 512 x 512 x 400 volume with 4 classes the Rust heap peaks at about
//! 2x-2.3x the input's f32 size (docs/bench-scoring.md, "Memory"). [`Engine::memory_estimate`]
//! models that working set; the memory limit refuses a call, before any allocation, when the
//! estimate passes it.

use std::path::Path;
use std::sync::{Arc, RwLock};

use ndarray::{s, Array2, Array3, Array4, ArrayD, ArrayView2, ArrayView4, ArrayViewMut4, Axis};

use crate::bundle::{Bundle, SourceKnowledge};
use crate::cancel::CancelToken;
use crate::error::{Error, ErrorKind, Result};
use crate::labels::argmax_classes;
use crate::model::Model;
use crate::preprocess::{self, model_grid, prepare_in_place_on, ModelGrid, ModelImage};
use crate::runtime::{Device, RuntimeOptions};
use crate::score::{entropy_map, Score, ScoreOptions, VolumeStats};
use crate::volume::Volume;
use crate::window::{self, sliding_window_slabs, OutputNames, SlabSink, WindowOptions};

/// Everything an engine can be configured with; `Default` gives the documented defaults.
#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    pub runtime: RuntimeOptions,
    pub window: WindowOptions,
    pub score: ScoreOptions,
    /// Refuse calls whose estimated working memory ([`Engine::memory_estimate`]: asfda's buffers,
    /// the input and the outputs asked for; not ONNX Runtime's arena) exceeds this many bytes
    /// (0 = no limit).
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
    /// Holds the whole [classes, Z, Y, X] probability volume; [`Engine::segment`] and
    /// [`Engine::score`] stream z-slabs instead.
    pub fn infer(&self, volume: &Volume, cancel: &CancelToken, progress: Progress<'_>) -> Result<Inference> {
        let (image, grid) = self.prepare(volume, Work::Infer)?;
        self.infer_model_image(image, grid, cancel, progress)
    }

    /// [`Engine::infer`] on an image already preprocessed for this bundle
    /// ([`crate::preprocess::prepare`]: `image` is [`Prepared::image`], `grid` its
    /// [`Prepared::grid`]), read without a copy. The probabilities equal those of
    /// [`Engine::infer`] on the volume it was prepared from; callers that keep prepared images
    /// (the fine-tuner's training samples) need neither the volume nor a second preprocessing.
    ///
    /// Errors: `InvalidArgument` when `image` does not have the model grid's shape and the
    /// bundle's channel count; `TooLarge` past the memory limit ([`Engine::memory_estimate_prepared`]).
    ///
    /// [`Prepared::image`]: crate::preprocess::Prepared::image
    /// [`Prepared::grid`]: crate::preprocess::Prepared::grid
    pub fn infer_prepared(
        &self,
        image: ArrayView4<'_, f32>,
        grid: &ModelGrid,
        cancel: &CancelToken,
        progress: Progress<'_>,
    ) -> Result<Inference> {
        let [z, y, x] = grid.model_shape();
        let channels = self.bundle.manifest().input.channels;
        if image.shape() != [channels, z, y, x] {
            return Err(Error::invalid_argument(format!(
                "infer_prepared: the image has shape {:?}, its model grid needs [{channels}, {z}, {y}, {x}]",
                image.shape()
            )));
        }
        self.check_memory(Work::Infer, || Ok(self.memory_estimate_prepared(grid)))?;
        self.infer_model_image(ModelImage::Borrowed(image), grid.clone(), cancel, progress)
    }

    fn infer_model_image(
        &self,
        image: ModelImage<'_>,
        grid: ModelGrid,
        cancel: &CancelToken,
        progress: Progress<'_>,
    ) -> Result<Inference> {
        let [z, y, x] = grid.model_shape();
        let mut probabilities: Option<Array4<f32>> = None;
        let features = self.stream(image, cancel, progress, &mut |z0, mut slab| {
            softmax_in_place(slab.view_mut());
            let full = probabilities.get_or_insert_with(|| Array4::zeros((slab.shape()[0], z, y, x)));
            full.slice_mut(s![.., z0..z0 + slab.shape()[1], .., ..]).assign(&slab);
            Ok(())
        })?;
        let probabilities = probabilities.ok_or_else(|| Error::internal("the sliding window produced no slab"))?;
        Ok(Inference { grid, probabilities, features })
    }

    /// Segments `volume`; the label map (and optional maps) land on the caller's voxel grid.
    ///
    /// Labels are the argmax on the model grid mapped back with nearest neighbour, which needs
    /// no class-count-sized buffer on the original grid (see peers.md on memory). The blended
    /// logits are streamed in z-slabs: the full [classes, Z, Y, X] probabilities exist only when
    /// `outputs.probabilities` asks for them.
    pub fn segment(
        &self,
        volume: &Volume,
        outputs: SegmentOutputs,
        cancel: &CancelToken,
        progress: Progress<'_>,
    ) -> Result<Segmentation> {
        let (image, grid) = self.prepare(volume, Work::Segment(outputs))?;
        let mut maps = SegmentMaps::new(&grid, outputs);
        self.stream(image, cancel, progress, &mut |z0, mut slab| {
            softmax_in_place(slab.view_mut());
            maps.add(z0, slab.view());
            Ok(())
        })?;
        maps.into_original(&grid)
    }

    /// Writes `labels` (a [`Segmentation::labels`] of the DICOM series read from `sources`) as a
    /// DICOM Segmentation object at `path`, its segments described by the bundle's classes (name,
    /// colour, coded concept) and the model named as the segmentation algorithm; see
    /// [`crate::volume::write_dicom_seg`].
    #[cfg(feature = "dicom")]
    pub fn write_dicom_seg<P: AsRef<Path>>(
        &self,
        labels: &Volume,
        sources: &[P],
        path: &Path,
    ) -> Result<crate::volume::SegWritten> {
        let manifest = self.bundle.manifest();
        crate::volume::write_dicom_seg(labels, &manifest.classes, &manifest.name, sources, path)
    }

    /// Scores `volume` for how informative annotating it would be (docs/method.md section 1). The
    /// probabilities are streamed in z-slabs into [`VolumeStats`]; no full probability volume is held.
    pub fn score(&self, id: &str, volume: &Volume, cancel: &CancelToken, progress: Progress<'_>) -> Result<Score> {
        let source = self.source_knowledge()?;
        let (image, grid) = self.prepare(volume, Work::Score)?;
        self.score_image(id, image, grid, source, cancel, progress)
    }

    /// Reads `volume` onto the model grid for [`Engine::score_prepared`], without running the
    /// model: a host (or [`crate::score::score_pool`]) prepares the next volume on another
    /// thread while the engine scores this one. Checks what [`Engine::score`] checks first (a 3D
    /// volume, the memory limit). A volume the model reads in place (already in RAS order at the
    /// model spacing) is kept as it is; any other is resampled now and dropped.
    pub fn prepare_for_score(&self, volume: Volume) -> Result<PreparedVolume> {
        let input = &self.bundle.manifest().input;
        volume.check_3d()?;
        let grid = model_grid(&volume, input)?;
        self.check_memory(Work::Score, || Ok(self.estimate_on(&volume, &grid, Work::Score)))?;
        if grid.is_read_in_place() {
            return Ok(PreparedVolume::InPlace(volume));
        }
        let prepared = preprocess::prepare_on(&volume, input, grid)?;
        Ok(PreparedVolume::Resampled(Box::new(prepared)))
    }

    /// [`Engine::score`] of a volume [`Engine::prepare_for_score`] prepared (by this engine or one
    /// of the same bundle): the same score, bit for bit.
    pub fn score_prepared(
        &self,
        id: &str,
        volume: &PreparedVolume,
        cancel: &CancelToken,
        progress: Progress<'_>,
    ) -> Result<Score> {
        let source = self.source_knowledge()?;
        let input = &self.bundle.manifest().input;
        let (image, grid) = match volume {
            PreparedVolume::InPlace(volume) => prepare_in_place_on(volume, input, model_grid(volume, input)?)?,
            PreparedVolume::Resampled(p) => (ModelImage::Borrowed(p.image.view()), p.grid.clone()),
        };
        self.score_image(id, image, grid, source, cancel, progress)
    }

    fn score_image(
        &self,
        id: &str,
        image: ModelImage<'_>,
        grid: ModelGrid,
        source: &SourceKnowledge,
        cancel: &CancelToken,
        progress: Progress<'_>,
    ) -> Result<Score> {
        let mut stats = ScoreStats::new(&grid, &self.options.score);
        let features = self.stream(image, cancel, progress, &mut |z0, mut slab| {
            softmax_in_place(slab.view_mut());
            stats.add(z0, slab.view())
        })?;
        stats.into_score(id, features.view(), source)
    }

    /// [`Engine::score`] and [`Engine::segment`] from one inference: the same score and maps as
    /// the two calls give (bit for bit), in about half the time, since the model runs once. What a
    /// PACS or Slicer host wants when it both ranks a volume and shows its segmentation.
    pub fn score_and_segment(
        &self,
        id: &str,
        volume: &Volume,
        outputs: SegmentOutputs,
        cancel: &CancelToken,
        progress: Progress<'_>,
    ) -> Result<(Score, Segmentation)> {
        let source = self.source_knowledge()?;
        let (image, grid) = self.prepare(volume, Work::ScoreAndSegment(outputs))?;
        let mut stats = ScoreStats::new(&grid, &self.options.score);
        let mut maps = SegmentMaps::new(&grid, outputs);
        let features = self.stream(image, cancel, progress, &mut |z0, mut slab| {
            softmax_in_place(slab.view_mut());
            maps.add(z0, slab.view());
            stats.add(z0, slab.view())
        })?;
        // The score first: its statistics are freed before the maps go back to the input's grid.
        let score = stats.into_score(id, features.view(), source)?;
        Ok((score, maps.into_original(&grid)?))
    }

    /// The bundle's source knowledge, which scoring needs.
    fn source_knowledge(&self) -> Result<&SourceKnowledge> {
        self.source.as_ref().ok_or_else(|| {
            Error::unsupported(format!(
                "model bundle '{}' ships no source knowledge, which scoring needs",
                self.bundle.dir().display()
            ))
        })
    }

    /// Builds the model grid once, checks the memory limit on it and prepares the volume on it.
    fn prepare<'a>(&self, volume: &'a Volume, work: Work) -> Result<(ModelImage<'a>, ModelGrid)> {
        let input = &self.bundle.manifest().input;
        volume.check_3d()?;
        let grid = model_grid(volume, input)?;
        self.check_memory(work, || Ok(self.estimate_on(volume, &grid, work)))?;
        prepare_in_place_on(volume, input, grid)
    }

    /// Runs the streaming sliding window over `image` (dropped when it ends) on the current model.
    fn stream(
        &self,
        image: ModelImage<'_>,
        cancel: &CancelToken,
        progress: Progress<'_>,
        sink: &mut SlabSink<'_>,
    ) -> Result<Array2<f32>> {
        let inference = &self.bundle.manifest().inference;
        let names = OutputNames { logits: &inference.logits, features: &inference.features };
        let tile = self.bundle.manifest().input.patch_size;
        let model = self.model();
        sliding_window_slabs(&model, &names, &image, tile, &self.options.window, cancel, progress, sink)
    }

    /// Estimated peak heap bytes of `work` on `volume`, the caller's volume included (ONNX
    /// Runtime's own arena is not counted). The memory limit compares this number.
    ///
    /// Phases, each counted with what is alive then: preprocessing ([`preprocess::peak_bytes`]);
    /// the streaming window (the model-grid image [`preprocess::image_bytes`], the window's
    /// buffers [`window::peak_bytes`], and the outputs: full probabilities, the voxel statistics
    /// [`VolumeStats::peak_bytes`], or u8 labels and the entropy/probability maps if asked for);
    /// mapping outputs back onto the original grid ([`ModelGrid::labels_to_original_peak_bytes`],
    /// then each optional map, [`ModelGrid::to_original_peak_bytes`]).
    pub fn memory_estimate(&self, volume: &Volume, work: Work) -> Result<u64> {
        volume.check_3d()?;
        let grid = model_grid(volume, &self.bundle.manifest().input)?;
        Ok(self.estimate_on(volume, &grid, work))
    }

    /// [`Engine::memory_estimate`] on the grid of `volume`, already built.
    fn estimate_on(&self, volume: &Volume, grid: &ModelGrid, work: Work) -> u64 {
        let m = self.bundle.manifest();
        let (c, k) = (volume.channels(), m.classes.len());
        let f = std::mem::size_of::<f32>();
        let voxels = |d: [usize; 3]| d.iter().product::<usize>();
        let input = std::mem::size_of_val(volume.data());
        let model_voxels = voxels(grid.model_shape());
        let prep = input + preprocess::peak_bytes(grid, c, &m.input.normalization);

        let valid = {
            let [vz, vy, vx] = grid.valid_region();
            [vz.len(), vy.len(), vx.len()]
        };
        let outputs = match work {
            Work::Infer => k * model_voxels * f,
            Work::Score => VolumeStats::peak_bytes(k, valid, &self.options.score),
            Work::Segment(o) => SegmentMaps::peak_bytes(k, model_voxels, o),
            Work::ScoreAndSegment(o) => {
                VolumeStats::peak_bytes(k, valid, &self.options.score) + SegmentMaps::peak_bytes(k, model_voxels, o)
            }
        };
        let during = input + preprocess::image_bytes(grid, c) + self.window_bytes(grid) + outputs;

        let mut after = 0;
        if let Work::Segment(o) | Work::ScoreAndSegment(o) = work {
            // Back to the original grid (the score's statistics freed by then): the label map,
            // then each optional map.
            let original = voxels(grid.original_dims()) * f;
            let mut held = input + SegmentMaps::peak_bytes(k, model_voxels, o);
            after = held + grid.labels_to_original_peak_bytes();
            held = held - model_voxels + original;
            if o.probabilities {
                after = after.max(held + grid.to_original_peak_bytes(k));
                held = held - k * model_voxels * f + k * original;
            }
            if o.entropy {
                after = after.max(held + grid.to_original_peak_bytes(1));
            }
        }
        (prep.max(during).max(after) + SMALL_BUFFERS) as u64
    }

    /// Estimated peak heap bytes of [`Engine::infer_prepared`] on an image of `grid`, the
    /// caller's prepared image included (as [`Engine::memory_estimate`]): the image, the streaming
    /// window and the full probabilities.
    pub fn memory_estimate_prepared(&self, grid: &ModelGrid) -> u64 {
        let m = self.bundle.manifest();
        let model_voxels: usize = grid.model_shape().iter().product();
        let image = m.input.channels * model_voxels * 4;
        let outputs = m.classes.len() * model_voxels * 4;
        (image + self.window_bytes(grid) + outputs + SMALL_BUFFERS) as u64
    }

    /// The streaming window's own buffers ([`window::peak_bytes`]) for this bundle's tiles.
    fn window_bytes(&self, grid: &ModelGrid) -> usize {
        let m = self.bundle.manifest();
        window::peak_bytes(
            grid.model_shape(),
            m.input.patch_size,
            m.input.channels,
            m.classes.len(),
            &self.options.window,
        )
    }

    /// Refuses work whose estimated working set (`estimate`, computed only when a limit is set)
    /// would pass the configured limit, before any allocation.
    fn check_memory(&self, work: Work, estimate: impl FnOnce() -> Result<u64>) -> Result<()> {
        let limit = self.options.memory_limit_bytes;
        if limit == 0 {
            return Ok(());
        }
        let needed = estimate()?;
        if needed > limit {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "this volume needs about {} MiB of working memory, over the engine's memory limit of {} MiB; \
                     raise the memory limit{}",
                    needed.div_ceil(1 << 20),
                    limit >> 20,
                    match work {
                        Work::Segment(SegmentOutputs { probabilities: true, .. })
                        | Work::ScoreAndSegment(SegmentOutputs { probabilities: true, .. }) =>
                            " or do not ask for probability maps",
                        _ => "",
                    }
                ),
            ));
        }
        Ok(())
    }
}

/// Small buffers the memory estimates do not model: resampling taps, tile features, score histograms.
const SMALL_BUFFERS: usize = 8 << 20;

/// A volume ready for [`Engine::score_prepared`] ([`Engine::prepare_for_score`]).
pub enum PreparedVolume {
    /// Already on the model's grid: read in place while the model runs.
    InPlace(Volume),
    /// Resampled (and normalised) onto the model grid.
    Resampled(Box<preprocess::Prepared>),
}

/// What a call computes, for [`Engine::memory_estimate`].
#[derive(Clone, Copy, Debug)]
pub enum Work {
    /// [`Engine::infer`]: full probabilities on the model grid.
    Infer,
    /// [`Engine::segment`] with these optional maps.
    Segment(SegmentOutputs),
    /// [`Engine::score`].
    Score,
    /// [`Engine::score_and_segment`] with these optional maps.
    ScoreAndSegment(SegmentOutputs),
}

/// The maps [`Engine::segment`] collects from the streamed probability slabs, on the model grid.
struct SegmentMaps {
    outputs: SegmentOutputs,
    shape: [usize; 3],
    labels: Array3<u8>,
    entropy: Option<Array3<f32>>,
    probabilities: Option<Array4<f32>>,
}

impl SegmentMaps {
    fn new(grid: &ModelGrid, outputs: SegmentOutputs) -> SegmentMaps {
        let shape = grid.model_shape();
        let [z, y, x] = shape;
        let entropy = outputs.entropy.then(|| Array3::<f32>::zeros((z, y, x)));
        SegmentMaps { outputs, shape, labels: Array3::zeros((z, y, x)), entropy, probabilities: None }
    }

    /// Bytes held on the model grid: u8 labels, and the optional maps.
    fn peak_bytes(classes: usize, model_voxels: usize, o: SegmentOutputs) -> usize {
        let f = std::mem::size_of::<f32>();
        model_voxels
            + if o.entropy { model_voxels * f } else { 0 }
            + if o.probabilities { classes * model_voxels * f } else { 0 }
    }

    /// Takes the softmax probabilities of the slab starting at model-grid z `z0`.
    fn add(&mut self, z0: usize, slab: ArrayView4<'_, f32>) {
        let zs = z0..z0 + slab.shape()[1];
        self.labels.slice_mut(s![zs.clone(), .., ..]).assign(&argmax_classes(slab));
        if let Some(h) = self.entropy.as_mut() {
            h.slice_mut(s![zs.clone(), .., ..]).assign(&entropy_map(slab));
        }
        if self.outputs.probabilities {
            let [z, y, x] = self.shape;
            let full = self.probabilities.get_or_insert_with(|| Array4::zeros((slab.shape()[0], z, y, x)));
            full.slice_mut(s![.., zs, .., ..]).assign(&slab);
        }
    }

    /// The maps on the caller's grid.
    fn into_original(self, grid: &ModelGrid) -> Result<Segmentation> {
        let labels = grid.labels_to_original(self.labels.view())?;
        let probabilities = self.probabilities.map(|p| grid.to_original(p.view())).transpose()?;
        let entropy = self.entropy.map(|h| grid.to_original(h.insert_axis(Axis(0)).view())).transpose()?;
        Ok(Segmentation { labels, probabilities, entropy })
    }
}

/// The voxel statistics [`Engine::score`] accumulates from the streamed slabs (the unpadded part).
struct ScoreStats<'a> {
    valid: [std::ops::Range<usize>; 3],
    options: &'a ScoreOptions,
    stats: Option<VolumeStats>,
}

impl<'a> ScoreStats<'a> {
    fn new(grid: &ModelGrid, options: &'a ScoreOptions) -> ScoreStats<'a> {
        ScoreStats { valid: grid.valid_region(), options, stats: None }
    }

    /// Takes the softmax probabilities of the slab starting at model-grid z `z0`.
    fn add(&mut self, z0: usize, slab: ArrayView4<'_, f32>) -> Result<()> {
        let [vz, vy, vx] = &self.valid;
        // Only the unpadded part is scored.
        let (lo, hi) = (z0.max(vz.start), (z0 + slab.shape()[1]).min(vz.end));
        if lo < hi {
            let stats = match self.stats.as_mut() {
                Some(stats) => stats,
                None => {
                    let valid = [vz.len(), vy.len(), vx.len()];
                    self.stats.insert(VolumeStats::new(slab.shape()[0], valid, self.options)?)
                }
            };
            stats.add_slab(slab.slice(s![.., lo - z0..hi - z0, vy.clone(), vx.clone()]))?;
        }
        Ok(())
    }

    fn into_score(self, id: &str, features: ArrayView2<'_, f32>, source: &SourceKnowledge) -> Result<Score> {
        let stats = self.stats.ok_or_else(|| Error::internal("the sliding window produced no slab"))?;
        stats.into_score(id, features, source)
    }
}

/// Softmax over axis 0 (classes), in place, numerically stable.
pub fn softmax_in_place(mut logits: ArrayViewMut4<'_, f32>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut a = Array4::from_shape_vec((3, 1, 1, 2), vec![1.0, 1000.0, 2.0, 1000.0, 3.0, -5.0]).unwrap();
        softmax_in_place(a.view_mut());
        for i in 0..2 {
            let s: f32 = (0..3).map(|c| a[[c, 0, 0, i]]).sum();
            assert!((s - 1.0).abs() < 1e-6);
        }
        assert!(a[[2, 0, 0, 0]] > a[[1, 0, 0, 0]] && a[[1, 0, 0, 0]] > a[[0, 0, 0, 0]]);
        assert!(a.iter().all(|v| v.is_finite()), "large logits must not overflow");
        assert_eq!(crate::labels::argmax_classes(a.view())[[0, 0, 0]], 2);
    }
}
