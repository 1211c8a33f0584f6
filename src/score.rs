//! Per-volume scores for active selection (shared/design/method.md, section 1), computed from the
//! model's blended softmax probabilities [C, Z, Y, X] and its per-tile deep features [T, F]:
//!
//! - **ASD** (anatomical segmentation difficulty): the normalised predictive entropy
//!   `H(v) = -sum_c p_c ln p_c / ln C` in [0, 1], averaged over the (dilated) predicted foreground
//!   `F` above an adaptive threshold;
//! - **confidence** (mean over `F` of `max_c p_c`) and the **foreground fraction**;
//! - the **embedding** `z` (L2-normalised mean tile feature) and the **knowledge gap** to the
//!   source statistics shipped with the model: a per-channel Gaussian KL and the squared distance to
//!   the nearest source anchor.
//!
//! Everything marked \[RECON\] in method.md is a field of [`ScoreOptions`]; its `Default` is the
//! documented default, and the options used travel inside every [`Score`].
//!
//! The voxel-wise part is accumulated by [`VolumeStats`], which accepts the whole probability
//! volume at once or consecutive z-slabs (the sliding window can stream them), in one pass over
//! the probabilities; the result does not depend on how the volume was cut into slabs.
//!
//! A [`Score`] is small and serialisable ([`Score::to_json`], versioned), so scores made on several
//! machines can be merged before selection.

use std::collections::VecDeque;

use ndarray::{Array3, ArrayView2, ArrayView4, Axis};
use serde::{Deserialize, Serialize};

use crate::bundle::SourceKnowledge;
use crate::error::{Error, ErrorKind, Result};

/// The [`Score`] JSON format this build writes and reads.
pub const SCORE_FORMAT_VERSION: u32 = 1;

/// How far the per-voxel class probabilities may sum away from 1, and a probability exceed 1,
/// before the input is refused as "not softmax probabilities" (catches logits and a wrong layout,
/// tolerates half-precision rounding).
pub const PROBABILITY_TOLERANCE: f32 = 1e-2;

/// Source variances are floored at this before use, so a channel that is constant on the source
/// (a dead ReLU) gives a finite KL: 0 when the target matches it, very large when the target
/// activates it (an extreme shift, ranked as such).
pub const SOURCE_VARIANCE_EPSILON: f64 = 1e-12;

/// How the entropy threshold tau of ASD is chosen from the histogram of H over the foreground.
/// The threshold is always a bin edge, and ASD averages H over the foreground voxels with H > tau.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdMethod {
    /// UGTST \[RECON\]: the left edge of the first peak of the (smoothed) histogram; see
    /// [`first_peak_threshold`].
    FirstPeak,
    /// Otsu's threshold on the histogram; see [`otsu_threshold`].
    Otsu,
    /// No threshold: ASD is the mean of H over the whole foreground (tau reported as 0).
    None,
}

/// How the volume's embedding z (used for diversity, core-set and the anchor gap) is formed from
/// the mean of its tile features.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbeddingKind {
    /// method.md as written: the L2-normalised mean feature. Post-ReLU features share one large
    /// common direction, so every volume's z is nearly the same (measured on the demo model:
    /// 1 - cos between target volumes about 1e-5) and diversity barely separates them.
    Raw,
    /// \[RECON\] default: the mean feature standardised by the source statistics,
    /// (mu_i - mu_s) / sigma_s, then L2-normalised: the direction in which the volume departs
    /// from the source. Removes the common direction, so 1 - cos spreads over [0, 2]. A volume
    /// exactly at the source mean (no direction) keeps the raw one.
    #[default]
    SourceStandardized,
}

/// The options of scoring; every \[RECON\] choice of method.md section 1 is one of these.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreOptions {
    /// Radius r, in voxels, by which the predicted foreground (argmax != background) is dilated,
    /// a 3x3x3 cube applied r times (= a (2r+1)^3 cube, clipped at the volume border), so that
    /// the uncertain boundary just outside the prediction counts. Default 2 (method.md: "dilated
    /// by r voxels (default 2) so boundaries count"); 0 disables dilation.
    pub foreground_dilation: usize,
    /// How the ASD threshold tau is chosen. Default [`ThresholdMethod::FirstPeak`] (method.md:
    /// "left edge of the first peak of the 100-bin histogram of H over F (UGTST); Otsu as an
    /// option").
    pub threshold: ThresholdMethod,
    /// Number of equal bins of the entropy histogram over [0, 1]. Default 100 (method.md). Bin j
    /// holds H in (j/B, (j+1)/B]; bin 0 also holds H = 0, so exactly confident voxels sit in bin 0.
    pub histogram_bins: usize,
    /// Width, in bins, of the centred moving average applied to the histogram before
    /// [`ThresholdMethod::FirstPeak`] looks for its first peak (odd; 1 = no smoothing). At the
    /// ends of the histogram the window is truncated (mean of the bins present), which
    /// keeps a monotone histogram monotone. Default 5 (0.05 of entropy with 100 bins): damps the
    /// bin-to-bin counting noise, so a ripple is less likely to be taken for the first peak, and
    /// moves tau left by at most two bins (UGTST's window is not known).
    pub peak_smoothing: usize,
    /// false (default, method.md): ASD is the plain mean of H over the thresholded foreground.
    /// true: the mean over foreground classes of each class's mean, so a large organ does not
    /// drown a small hard one. A foreground voxel belongs to its predicted class; a voxel added by
    /// the dilation (predicted background) belongs to its most probable foreground class. Classes
    /// with no voxel above tau are left out.
    pub class_balanced: bool,
    /// Floor of the volume's per-channel feature variance in the KL gap, relative to the source
    /// variance of that channel: `var_i = max(var_i, variance_floor * var_s)`. A volume that fits
    /// in one tile (T = 1) has variance 0 and an infinite KL without it. Default 1e-2: a volume's
    /// own tile spread is naturally narrower than the source spread pooled over many volumes, and
    /// 1e-2 caps the variance-ratio term at ln(100)/2 = 2.3 nats per channel, so an unknown spread
    /// cannot outweigh the mean shift the gap is meant to measure. Must be > 0.
    pub variance_floor: f64,
    /// How the embedding is formed; see [`EmbeddingKind`]. Default
    /// [`EmbeddingKind::SourceStandardized`]. Scores written before this option existed read
    /// back as [`EmbeddingKind::Raw`], which is how they were computed.
    #[serde(default = "raw_embedding")]
    pub embedding: EmbeddingKind,
}

fn raw_embedding() -> EmbeddingKind {
    EmbeddingKind::Raw
}

impl Default for ScoreOptions {
    fn default() -> Self {
        ScoreOptions {
            foreground_dilation: 2,
            threshold: ThresholdMethod::FirstPeak,
            histogram_bins: 100,
            peak_smoothing: 5,
            class_balanced: false,
            variance_floor: 1e-2,
            embedding: EmbeddingKind::SourceStandardized,
        }
    }
}

impl ScoreOptions {
    /// Checks every field; the error names the field and the allowed range.
    pub fn validate(&self) -> Result<()> {
        if self.histogram_bins < 2 {
            return Err(Error::invalid_argument(format!(
                "score option histogram_bins is {}, must be at least 2",
                self.histogram_bins
            )));
        }
        if self.peak_smoothing == 0 || self.peak_smoothing.is_multiple_of(2) {
            return Err(Error::invalid_argument(format!(
                "score option peak_smoothing is {}, must be an odd number of bins (1 = no smoothing)",
                self.peak_smoothing
            )));
        }
        if !(self.variance_floor.is_finite() && self.variance_floor > 0.0) {
            return Err(Error::invalid_argument(format!(
                "score option variance_floor is {}, must be a finite number > 0",
                self.variance_floor
            )));
        }
        Ok(())
    }
}

/// The scores of one target volume. Serialise with [`Score::to_json`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// [`SCORE_FORMAT_VERSION`] of the JSON this was read from or will be written as.
    pub format_version: u32,
    /// The caller's name for the volume (unique within a selection).
    pub id: String,
    /// L2-normalised mean of the tile features, `[F]`.
    pub embedding: Vec<f32>,
    /// Mean over feature channels of KL(N(mu_i, var_i) || N(mu_s, var_s)), in nats.
    pub gap_kl: f64,
    /// min_k ||z_i - a_k||^2 over the source anchors.
    pub gap_anchor: f64,
    /// Mean of H over the foreground voxels with H > `asd_threshold` (0 when there are none).
    pub asd: f64,
    /// The threshold tau used for `asd` (a histogram bin edge; 0 for [`ThresholdMethod::None`]).
    pub asd_threshold: f64,
    /// Mean over the (dilated) foreground of max_c p_c; 0 when nothing is predicted foreground.
    pub confidence: f64,
    /// Voxels whose argmax is not background, over all voxels (before dilation).
    pub foreground_fraction: f64,
    /// Histogram of H over the dilated foreground, `options.histogram_bins` bins on [0, 1] (bin j
    /// holds (j/B, (j+1)/B], bin 0 also H = 0).
    pub entropy_histogram: Vec<u32>,
    /// Voxels in the volume.
    pub voxels: u64,
    /// Voxels in the dilated foreground F (the voxels the histogram, ASD and confidence are over).
    pub foreground_voxels: u64,
    /// The options the score was computed with.
    pub options: ScoreOptions,
}

impl Score {
    /// Compact one-line JSON (so a set of scores can be kept as JSON lines). Every value reads
    /// back bit-exactly with [`Score::from_json`] (serde_json's `float_roundtrip` parser).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a Score always serialises")
    }

    /// Reads a score written by [`Score::to_json`]. An unknown `format_version` is
    /// [`ErrorKind::Unsupported`]; malformed or inconsistent JSON is [`ErrorKind::Format`].
    pub fn from_json(text: &str) -> Result<Score> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::format(format!("score JSON is malformed: {e}")))?;
        let version = value
            .get("format_version")
            .ok_or_else(|| Error::format("score JSON has no format_version"))?
            .as_u64()
            .ok_or_else(|| Error::format("score JSON format_version is not a non-negative integer"))?;
        if version != u64::from(SCORE_FORMAT_VERSION) {
            return Err(Error::unsupported(format!(
                "score JSON has format_version {version}; this build of asfda reads version {SCORE_FORMAT_VERSION}"
            )));
        }
        let score: Score =
            serde_json::from_value(value).map_err(|e| Error::format(format!("score JSON is malformed: {e}")))?;
        score.check().map_err(|e| Error::format(format!("score JSON of '{}' is inconsistent: {}", score.id, e)))?;
        Ok(score)
    }

    /// Internal consistency of a score read from elsewhere.
    fn check(&self) -> std::result::Result<(), String> {
        self.options.validate().map_err(|e| e.message().to_string())?;
        if self.entropy_histogram.len() != self.options.histogram_bins {
            return Err(format!(
                "entropy_histogram has {} bins, options.histogram_bins is {}",
                self.entropy_histogram.len(),
                self.options.histogram_bins
            ));
        }
        let total: u64 = self.entropy_histogram.iter().map(|&c| u64::from(c)).sum();
        if total != self.foreground_voxels {
            return Err(format!(
                "entropy_histogram holds {total} voxels, foreground_voxels is {}",
                self.foreground_voxels
            ));
        }
        if self.foreground_voxels > self.voxels {
            return Err(format!("foreground_voxels {} exceeds voxels {}", self.foreground_voxels, self.voxels));
        }
        if self.embedding.is_empty() {
            return Err("embedding is empty".into());
        }
        Ok(())
    }
}

/// Normalised entropy H = -sum_c p_c ln p_c / ln C of every voxel of probabilities [C, Z, Y, X],
/// in [0, 1] (0 ln 0 = 0). Inputs are not validated here (NaN in, NaN out); with C < 2 every H is
/// 0. Uses the same arithmetic as the scores, so its values match their histogram bit for bit.
pub fn entropy_map(probs: ArrayView4<f32>) -> Array3<f32> {
    let (c, z, y, x) = probs.dim();
    if c < 2 {
        return Array3::zeros((z, y, x));
    }
    let inv_ln_c = 1.0 / (c as f32).ln();
    let probs = probs.as_standard_layout();
    let data = probs.as_slice().expect("standard layout is contiguous");
    let stride = z * y * x;
    let out: Vec<f32> = (0..stride).map(|i| entropy_of((0..c).map(|k| data[k * stride + i]), inv_ln_c)).collect();
    Array3::from_shape_vec((z, y, x), out).expect("shape matches")
}

/// The dilated predicted foreground F of probabilities [C, Z, Y, X]: voxels whose argmax is not
/// class 0 (ties go to the lower class, so an exact tie with background is background), dilated by
/// a (2r+1)^3 cube, clipped at the border. Validates like [`score_volume`].
pub fn foreground_region(probs: ArrayView4<f32>, dilation: usize) -> Result<Array3<bool>> {
    let (c, z, y, x) = probs.dim();
    let options = ScoreOptions { foreground_dilation: dilation, ..ScoreOptions::default() };
    let mut stats = VolumeStats::new(c, [z, y, x], &options)?;
    let mut region = Vec::with_capacity(z * y * x);
    stats.add_slab_with(probs, &mut |_, mask: &[u8]| region.extend(mask.iter().map(|&m| m != 0)))?;
    Ok(Array3::from_shape_vec((z, y, x), region).expect("shape matches"))
}

/// Embedding and knowledge gap of one volume from its tile features [T, F] (one row per
/// sliding-window tile, the model's `features` output) and the source statistics:
/// returns (z = L2-normalised mean feature, gap_kl, gap_anchor).
///
/// - mu_i, var_i: per-channel mean and population variance over the T tiles (as the source
///   statistics are computed, `unbiased=False`); var_i is floored at
///   `options.variance_floor * var_s` (T = 1 gives var_i = 0), var_s at
///   [`SOURCE_VARIANCE_EPSILON`].
/// - gap_kl: mean over channels of KL(N(mu_i, var_i) || N(mu_s, var_s)) =
///   ln(s_s/s_i) + (var_i + (mu_i - mu_s)^2) / (2 var_s) - 1/2.
/// - gap_anchor: min over anchors a_k (k-means centres of normalised source embeddings, used as
///   stored) of ||z_raw - a_k||^2, with z_raw the L2-normalised mean feature (the anchors' space,
///   whatever [`ScoreOptions::embedding`] is).
///
/// Errors: no tiles or no channels, or a width that differs from the source's
/// ([`ErrorKind::InvalidArgument`], naming both sizes); NaN/Inf features or source statistics, or
/// an all-zero mean feature that cannot be normalised ([`ErrorKind::InvalidData`]).
pub fn feature_gap(
    tile_features: ArrayView2<f32>,
    source: &SourceKnowledge,
    options: &ScoreOptions,
) -> Result<(Vec<f32>, f64, f64)> {
    options.validate()?;
    let (tiles, width) = tile_features.dim();
    if tiles == 0 || width == 0 {
        return Err(Error::invalid_argument(format!(
            "tile features are [{tiles}, {width}]; need at least one tile and one channel"
        )));
    }
    let anchors = check_source(source, width)?;
    if let Some(((t, f), v)) = tile_features.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(Error::invalid_data(format!("tile features: {v} at tile {t}, channel {f}")));
    }

    let mut mean = vec![0f64; width];
    for row in tile_features.rows() {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += f64::from(v);
        }
    }
    mean.iter_mut().for_each(|m| *m /= tiles as f64);
    let mut var = vec![0f64; width];
    for row in tile_features.rows() {
        for ((s, &v), m) in var.iter_mut().zip(row).zip(&mean) {
            *s += (f64::from(v) - m).powi(2);
        }
    }
    var.iter_mut().for_each(|s| *s /= tiles as f64);

    let direction: Vec<f64> = match options.embedding {
        EmbeddingKind::Raw => mean.clone(),
        EmbeddingKind::SourceStandardized => (0..width)
            .map(|f| {
                let sd_s = f64::from(source.var[f]).max(SOURCE_VARIANCE_EPSILON).sqrt();
                (mean[f] - f64::from(source.mean[f])) / sd_s
            })
            .collect(),
    };
    // A volume exactly at the source mean has no direction of departure: it keeps its raw one.
    let standardized_norm = direction.iter().map(|m| m * m).sum::<f64>().sqrt();
    let (direction, norm) = if standardized_norm > 0.0 {
        (direction, standardized_norm)
    } else {
        (mean.clone(), mean.iter().map(|m| m * m).sum::<f64>().sqrt())
    };
    if norm == 0.0 {
        return Err(Error::invalid_data(
            "tile features: the mean feature vector is all zero, so the volume has no embedding",
        ));
    }
    let embedding: Vec<f32> = direction.iter().map(|m| (m / norm) as f32).collect();

    let mut kl = 0f64;
    for f in 0..width {
        let var_s = f64::from(source.var[f]).max(SOURCE_VARIANCE_EPSILON);
        let var_i = var[f].max(options.variance_floor * var_s);
        let d = mean[f] - f64::from(source.mean[f]);
        kl += 0.5 * ((var_s / var_i).ln() + (var_i + d * d) / var_s - 1.0);
    }
    let gap_kl = kl / width as f64;

    // The anchors are normalised raw source embeddings, so the anchor gap is always taken in
    // that space, whatever the embedding kind.
    let raw_norm = mean.iter().map(|m| m * m).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
    let gap_anchor = anchors
        .rows()
        .into_iter()
        .map(|a| a.iter().zip(&mean).map(|(&a, &m)| (m / raw_norm - f64::from(a)).powi(2)).sum::<f64>())
        .fold(f64::INFINITY, f64::min);
    Ok((embedding, gap_kl, gap_anchor))
}

/// Validates the source statistics against a feature width and returns the anchors as [K, F].
fn check_source(source: &SourceKnowledge, width: usize) -> Result<ndarray::ArrayView2<'_, f32>> {
    for (name, len) in [("mean", source.mean.len()), ("variance", source.var.len())] {
        if len != width {
            return Err(Error::invalid_argument(format!(
                "tile features have {width} channels but the source feature {name} has {len}"
            )));
        }
    }
    let anchors = source.anchors.view().into_dimensionality::<ndarray::Ix2>().map_err(|_| {
        Error::invalid_argument(format!(
            "source anchors have shape {:?}, expected [K, {width}]",
            source.anchors.shape()
        ))
    })?;
    if anchors.ncols() != width {
        return Err(Error::invalid_argument(format!(
            "tile features have {width} channels but the source anchors have {}",
            anchors.ncols()
        )));
    }
    if anchors.nrows() == 0 {
        return Err(Error::invalid_data("source knowledge has no anchors"));
    }
    let bad = |what: &str, i: usize, v: f32| Error::invalid_data(format!("source feature {what}: {v} at {i}"));
    if let Some((i, &v)) = source.mean.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(bad("mean", i, v));
    }
    if let Some((i, &v)) = source.var.iter().enumerate().find(|(_, v)| !(v.is_finite() && **v >= 0.0)) {
        return Err(bad("variance", i, v));
    }
    if let Some(((k, f), v)) = anchors.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(Error::invalid_data(format!("source anchors: {v} at anchor {k}, channel {f}")));
    }
    Ok(anchors)
}

/// Scores one volume from its blended softmax probabilities [C, Z, Y, X] and its tile features
/// [T, F]. Equivalent to feeding `probs` to a [`VolumeStats`] and calling
/// [`VolumeStats::into_score`].
///
/// Errors: C < 2, an empty volume, an empty `id` or bad options ([`ErrorKind::InvalidArgument`]);
/// probabilities that are NaN/Inf, outside [0, 1] or do not sum to 1 within
/// [`PROBABILITY_TOLERANCE`] ([`ErrorKind::InvalidData`], naming the class and voxel); and the
/// errors of [`feature_gap`].
pub fn score_volume(
    id: &str,
    probs: ArrayView4<f32>,
    tile_features: ArrayView2<f32>,
    source: &SourceKnowledge,
    options: &ScoreOptions,
) -> Result<Score> {
    let (c, z, y, x) = probs.dim();
    let mut stats = VolumeStats::new(c, [z, y, x], options)?;
    stats.add_slab(probs)?;
    stats.into_score(id, tile_features, source)
}

/// The voxel-wise part of a [`Score`].
#[derive(Clone, Debug, PartialEq)]
pub struct VoxelSummary {
    /// As [`Score::asd`].
    pub asd: f64,
    /// As [`Score::asd_threshold`].
    pub asd_threshold: f64,
    /// As [`Score::confidence`].
    pub confidence: f64,
    /// As [`Score::foreground_fraction`].
    pub foreground_fraction: f64,
    /// As [`Score::entropy_histogram`].
    pub entropy_histogram: Vec<u32>,
    /// Voxels in the volume.
    pub voxels: u64,
    /// Voxels predicted foreground (argmax != 0), before dilation.
    pub predicted_foreground_voxels: u64,
    /// Voxels in the dilated foreground F.
    pub foreground_voxels: u64,
}

/// Accumulates the voxel-wise part of a score (entropy histogram, ASD, confidence, foreground
/// fraction) from softmax probabilities, so the whole probability volume never needs to exist at
/// once: create it with the volume's class count and shape, call [`VolumeStats::add_slab`] with
/// [C, dz, Y, X] slabs of consecutive z ranges (any thickness, from z = 0 up), then
/// [`VolumeStats::finish`] or [`VolumeStats::into_score`]. Passing the whole volume as one slab
/// is fine; the result is bit-identical however the volume is cut.
///
/// The dilation needs r slices beyond each slice, so up to r slices of probabilities are kept
/// (copied) between calls; memory is O(r * C * Y * X). After an error the accumulator refuses
/// further use.
pub struct VolumeStats {
    options: ScoreOptions,
    classes: usize,
    shape: [usize; 3],
    inv_ln_c: f32,
    /// Next slice add_slab expects.
    next_z: usize,
    /// Slices < done_z are in the accumulators.
    done_z: usize,
    /// In-plane dilated foreground masks of slices mask_z0..next_z.
    masks: VecDeque<Vec<u8>>,
    mask_z0: usize,
    free_masks: Vec<Vec<u8>>,
    /// Probabilities [C][Y*X] of slices done_z..next_z that arrived in an earlier slab.
    pending: VecDeque<Vec<f32>>,
    predicted_foreground: u64,
    acc: Accumulator,
    scratch: Scratch,
    failed: bool,
}

struct Scratch {
    fg_max: Vec<f32>,
    sum: Vec<f32>,
    mask: Vec<u8>,
    row_dilated: Vec<u8>,
    region: Vec<u8>,
}

/// Per foreground class (index c-1) and histogram bin: voxel count and sum of H.
struct Accumulator {
    bins: usize,
    counts: Vec<u64>,
    sums: Vec<f64>,
    /// Per foreground class: voxels with H exactly 0 (in bin 0, but never above a threshold).
    zeros: Vec<u64>,
    confidence_sum: f64,
    voxels: u64,
}

/// One slice of probabilities: its C planes of Y * X values each.
struct SliceRef<'a> {
    planes: Vec<&'a [f32]>,
}

impl SliceRef<'_> {
    fn plane(&self, c: usize) -> &[f32] {
        self.planes[c]
    }
}

/// Plane (c, z) of a [C, Z, Y, X] view, if it is contiguous in standard order.
fn plane_of<'a>(view: ArrayView4<'a, f32>, c: usize, z: usize) -> Option<&'a [f32]> {
    view.index_axis_move(Axis(0), c).index_axis_move(Axis(0), z).to_slice()
}

impl VolumeStats {
    /// An empty accumulator for a volume of `classes` classes (background = class 0) and spatial
    /// shape [Z, Y, X]. Errors: C < 2, an empty shape or bad options (InvalidArgument).
    pub fn new(classes: usize, shape: [usize; 3], options: &ScoreOptions) -> Result<VolumeStats> {
        options.validate()?;
        if classes < 2 {
            return Err(Error::invalid_argument(format!(
                "probabilities have {classes} class(es); scoring needs background and at least one foreground class"
            )));
        }
        if shape.contains(&0) {
            return Err(Error::invalid_argument(format!("the volume shape {shape:?} (z, y, x) has no voxels")));
        }
        let plane = shape[1] * shape[2];
        let fg = classes - 1;
        Ok(VolumeStats {
            options: options.clone(),
            classes,
            shape,
            inv_ln_c: 1.0 / (classes as f32).ln(),
            next_z: 0,
            done_z: 0,
            masks: VecDeque::new(),
            mask_z0: 0,
            free_masks: Vec::new(),
            pending: VecDeque::new(),
            predicted_foreground: 0,
            acc: Accumulator {
                bins: options.histogram_bins,
                counts: vec![0; fg * options.histogram_bins],
                sums: vec![0.0; fg * options.histogram_bins],
                zeros: vec![0; fg],
                confidence_sum: 0.0,
                voxels: 0,
            },
            scratch: Scratch {
                fg_max: vec![0.0; plane],
                sum: vec![0.0; plane],
                mask: vec![0; plane],
                row_dilated: vec![0; plane],
                region: vec![0; plane],
            },
            failed: false,
        })
    }

    /// Slices given so far.
    pub fn slices_added(&self) -> usize {
        self.next_z
    }

    /// Adds the probabilities [C, dz, Y, X] of slices `slices_added()..slices_added() + dz`.
    /// Errors: a slab of the wrong class count or in-plane size, or past the end of the volume
    /// (InvalidArgument); invalid probabilities (InvalidData, naming class and voxel).
    pub fn add_slab(&mut self, slab: ArrayView4<f32>) -> Result<()> {
        self.add_slab_with(slab, &mut |_, _| {})
    }

    /// add_slab, calling `visit(z, region)` with the dilated foreground of each finalised slice.
    fn add_slab_with(&mut self, slab: ArrayView4<f32>, visit: &mut dyn FnMut(usize, &[u8])) -> Result<()> {
        if self.failed {
            return Err(Error::invalid_argument("this VolumeStats failed earlier and cannot be used further"));
        }
        let result = self.add_slab_inner(slab, visit);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn add_slab_inner(&mut self, slab: ArrayView4<f32>, visit: &mut dyn FnMut(usize, &[u8])) -> Result<()> {
        let (c, dz, y, x) = slab.dim();
        let [zs, ys, xs] = self.shape;
        if c != self.classes || y != ys || x != xs {
            return Err(Error::invalid_argument(format!(
                "probability slab is [{c}, {dz}, {y}, {x}] (C, Z, Y, X); the volume has {} classes and in-plane size \
                 [{ys}, {xs}]",
                self.classes
            )));
        }
        if self.next_z + dz > zs {
            return Err(Error::invalid_argument(format!(
                "probability slab of {dz} slices starting at z = {} runs past the volume's {zs} slices",
                self.next_z
            )));
        }
        if dz == 0 {
            return Ok(());
        }
        // Planes of a slab cut from a standard [C, Z, Y, X] array are contiguous even though the
        // slab is not; anything else (reversed or permuted axes) is copied once.
        let standard;
        let slab = if plane_of(slab, 0, 0).is_some() {
            slab
        } else {
            standard = slab.as_standard_layout().into_owned();
            standard.view()
        };
        let plane = y * x;
        let z0 = self.next_z;
        let slab_slice = |z: usize| SliceRef {
            planes: (0..c).map(|k| plane_of(slab, k, z - z0).expect("planes share their strides")).collect(),
        };
        let r = self.options.foreground_dilation;
        for z in z0..z0 + dz {
            self.predicted_foreground += self.foreground_mask(z, &slab_slice(z))?;
            let mut mask = self.free_masks.pop().unwrap_or_else(|| vec![0; plane]);
            dilate_plane(&self.scratch.mask, &mut self.scratch.row_dilated, &mut mask, y, x, r);
            self.masks.push_back(mask);
            self.next_z = z + 1;
            while self.done_z < self.next_z && (self.done_z + r < self.next_z || self.next_z == zs) {
                let zf = self.done_z;
                let owned;
                let probs = if zf < z0 {
                    owned = self.pending.pop_front().expect("pending holds every unfinished earlier slice");
                    SliceRef { planes: owned.chunks_exact(plane).collect() }
                } else {
                    slab_slice(zf)
                };
                self.finalise(zf, &probs);
                visit(zf, &self.scratch.region);
                self.done_z += 1;
            }
            // Recycle the masks no unfinished slice needs any more.
            while self.mask_z0 + r < self.done_z {
                let m = self.masks.pop_front().expect("masks cover mask_z0..next_z");
                self.free_masks.push(m);
                self.mask_z0 += 1;
            }
        }
        // Keep copies of the slices still waiting for context.
        for z in self.done_z.max(z0)..self.next_z {
            let s = slab_slice(z);
            let mut copy = Vec::with_capacity(c * plane);
            for k in 0..c {
                copy.extend_from_slice(s.plane(k));
            }
            self.pending.push_back(copy);
        }
        Ok(())
    }

    /// Validates slice z and writes its undilated foreground mask to scratch.mask; returns its
    /// foreground count.
    fn foreground_mask(&mut self, z: usize, probs: &SliceRef) -> Result<u64> {
        let max_p = 1.0 + PROBABILITY_TOLERANCE;
        let mut bad = false;
        let Scratch { fg_max, sum, mask, .. } = &mut self.scratch;
        let p0 = probs.plane(0);
        for c in 0..self.classes {
            let pc = probs.plane(c);
            bad |= pc.iter().fold(false, |b, &v| b | !(v >= 0.0 && v <= max_p));
            match c {
                0 => sum.copy_from_slice(pc),
                1 => {
                    fg_max.copy_from_slice(pc);
                    sum.iter_mut().zip(pc).for_each(|(s, &v)| *s += v);
                }
                _ => {
                    fg_max.iter_mut().zip(pc).for_each(|(m, &v)| *m = m.max(v));
                    sum.iter_mut().zip(pc).for_each(|(s, &v)| *s += v);
                }
            }
        }
        bad |= sum.iter().fold(false, |b, &s| b | not_normalised(s));
        if bad {
            return Err(self.locate_bad(z, probs));
        }
        let mut count = 0u64;
        for ((m, &f), &b) in mask.iter_mut().zip(fg_max.iter()).zip(p0) {
            *m = u8::from(f > b);
            count += u64::from(*m);
        }
        Ok(count)
    }

    fn locate_bad(&self, z: usize, probs: &SliceRef) -> Error {
        let plane = self.shape[1] * self.shape[2];
        let at = |i: usize| format!("(z, y, x) = ({z}, {}, {})", i / self.shape[2], i % self.shape[2]);
        for c in 0..self.classes {
            if let Some((i, v)) = probs.plane(c).iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Error::invalid_data(format!("probabilities: {v} at class {c}, voxel {}", at(i)));
            }
        }
        for c in 0..self.classes {
            let max_p = 1.0 + PROBABILITY_TOLERANCE;
            if let Some((i, v)) = probs.plane(c).iter().enumerate().find(|(_, &v)| !(v >= 0.0 && v <= max_p)) {
                return Error::invalid_data(format!(
                    "probabilities: {v} at class {c}, voxel {} is outside [0, 1]; pass softmax probabilities, not \
                     logits",
                    at(i)
                ));
            }
        }
        for i in 0..plane {
            let s: f32 = (0..self.classes).map(|c| probs.plane(c)[i]).sum();
            if not_normalised(s) {
                return Error::invalid_data(format!(
                    "probabilities: the classes sum to {s} at voxel {}, not 1; pass softmax probabilities laid out \
                     [C, Z, Y, X]",
                    at(i)
                ));
            }
        }
        Error::internal("invalid probabilities not located")
    }

    /// Adds slice z (whose in-plane masks z-r..=z+r are present) to the accumulators; leaves its
    /// dilated foreground in scratch.region.
    fn finalise(&mut self, z: usize, probs: &SliceRef) {
        let r = self.options.foreground_dilation;
        let lo = z.saturating_sub(r);
        let hi = (z + r).min(self.next_z - 1);
        let region = &mut self.scratch.region;
        region.copy_from_slice(&self.masks[lo - self.mask_z0]);
        for zz in lo + 1..=hi {
            region.iter_mut().zip(&self.masks[zz - self.mask_z0]).for_each(|(a, &b)| *a |= b);
        }
        let classes = self.classes;
        let inv_ln_c = self.inv_ln_c;
        let acc = &mut self.acc;
        let bins = acc.bins;
        for (i, _) in region.iter().enumerate().filter(|(_, &m)| m != 0) {
            let at = |c: usize| probs.planes[c][i];
            let h = entropy_of((0..classes).map(at), inv_ln_c);
            let (mut best_c, mut best_p) = (1, at(1));
            for c in 2..classes {
                let p = at(c);
                if p > best_p {
                    best_p = p;
                    best_c = c;
                }
            }
            let max_p = at(0).max(best_p);
            let k = (best_c - 1) * bins + bin_of(h, bins);
            acc.counts[k] += 1;
            acc.sums[k] += f64::from(h);
            if h == 0.0 {
                acc.zeros[best_c - 1] += 1;
            }
            acc.confidence_sum += f64::from(max_p);
            acc.voxels += 1;
        }
    }

    /// The voxel-wise summary. Errors if not every slice was added (InvalidArgument).
    pub fn finish(self) -> Result<VoxelSummary> {
        if self.failed {
            return Err(Error::invalid_argument("this VolumeStats failed earlier and cannot be used further"));
        }
        let [zs, ys, xs] = self.shape;
        if self.next_z != zs {
            return Err(Error::invalid_argument(format!(
                "only {} of the volume's {zs} slices were added to its VolumeStats",
                self.next_z
            )));
        }
        let acc = &self.acc;
        let bins = acc.bins;
        let fg = self.classes - 1;
        let histogram: Vec<u64> = (0..bins).map(|b| (0..fg).map(|c| acc.counts[c * bins + b]).sum()).collect();
        let (first_bin, skip_zeros) = match self.options.threshold {
            ThresholdMethod::None => (0, false),
            ThresholdMethod::FirstPeak => (first_peak_bin(&histogram, self.options.peak_smoothing), true),
            ThresholdMethod::Otsu => (otsu_bin(&histogram), true),
        };
        // Per class: (count, sum of H) over the voxels above the threshold.
        let above: Vec<(u64, f64)> = (0..fg)
            .map(|c| {
                let range = c * bins + first_bin..(c + 1) * bins;
                let mut n: u64 = acc.counts[range.clone()].iter().sum();
                if skip_zeros && first_bin == 0 {
                    n -= acc.zeros[c];
                }
                (n, acc.sums[range].iter().sum())
            })
            .collect();
        let asd = if self.options.class_balanced {
            let means: Vec<f64> = above.iter().filter(|(n, _)| *n > 0).map(|(n, s)| s / *n as f64).collect();
            if means.is_empty() {
                0.0
            } else {
                means.iter().sum::<f64>() / means.len() as f64
            }
        } else {
            let n: u64 = above.iter().map(|a| a.0).sum();
            let s: f64 = above.iter().map(|a| a.1).sum();
            if n == 0 {
                0.0
            } else {
                s / n as f64
            }
        };
        let voxels = (zs * ys * xs) as u64;
        let entropy_histogram = histogram
            .iter()
            .map(|&n| {
                u32::try_from(n).map_err(|_| {
                    Error::new(ErrorKind::TooLarge, format!("{n} voxels in one entropy bin exceed the score format"))
                })
            })
            .collect::<Result<Vec<u32>>>()?;
        Ok(VoxelSummary {
            asd,
            asd_threshold: first_bin as f64 / bins as f64,
            confidence: if acc.voxels == 0 { 0.0 } else { acc.confidence_sum / acc.voxels as f64 },
            foreground_fraction: self.predicted_foreground as f64 / voxels as f64,
            entropy_histogram,
            voxels,
            predicted_foreground_voxels: self.predicted_foreground,
            foreground_voxels: acc.voxels,
        })
    }

    /// Finishes the voxel-wise part and combines it with the embedding and knowledge gap of the
    /// volume's tile features [T, F] (see [`feature_gap`]) into a [`Score`].
    pub fn into_score(self, id: &str, tile_features: ArrayView2<f32>, source: &SourceKnowledge) -> Result<Score> {
        if id.is_empty() {
            return Err(Error::invalid_argument("a score needs a non-empty volume id"));
        }
        let options = self.options.clone();
        let (embedding, gap_kl, gap_anchor) = feature_gap(tile_features, source, &options)?;
        let v = self.finish()?;
        Ok(Score {
            format_version: SCORE_FORMAT_VERSION,
            id: id.to_string(),
            embedding,
            gap_kl,
            gap_anchor,
            asd: v.asd,
            asd_threshold: v.asd_threshold,
            confidence: v.confidence,
            foreground_fraction: v.foreground_fraction,
            entropy_histogram: v.entropy_histogram,
            voxels: v.voxels,
            foreground_voxels: v.foreground_voxels,
            options,
        })
    }
}

/// Whether a voxel's class probabilities, summing to `sum`, are not a distribution.
#[inline]
fn not_normalised(sum: f32) -> bool {
    let off = (sum - 1.0).abs();
    off.is_nan() || off > PROBABILITY_TOLERANCE
}

/// Normalised entropy of one voxel's probabilities (0 ln 0 = 0), clamped to [0, 1].
#[inline]
fn entropy_of(probs: impl Iterator<Item = f32>, inv_ln_c: f32) -> f32 {
    let mut h = 0f32;
    for p in probs {
        if p > 0.0 {
            h -= p * p.ln();
        }
    }
    (h * inv_ln_c).clamp(0.0, 1.0)
}

/// The bin of H in a `bins`-bin histogram on [0, 1] with bins (j/B, (j+1)/B] and H = 0 in bin 0.
#[inline]
fn bin_of(h: f32, bins: usize) -> usize {
    ((h * bins as f32).ceil() as usize).saturating_sub(1).min(bins - 1)
}

/// Dilates a [Y, X] 0/1 mask by r voxels along x, then y (the in-plane part of the cube).
fn dilate_plane(mask: &[u8], tmp: &mut [u8], out: &mut [u8], y: usize, x: usize, r: usize) {
    for (src, dst) in mask.chunks_exact(x).zip(tmp.chunks_exact_mut(x)) {
        dst.copy_from_slice(src);
        for k in 1..=r.min(x - 1) {
            dst[..x - k].iter_mut().zip(&src[k..]).for_each(|(d, &s)| *d |= s);
            dst[k..].iter_mut().zip(&src[..x - k]).for_each(|(d, &s)| *d |= s);
        }
    }
    out.copy_from_slice(tmp);
    let n = tmp.len();
    for k in 1..=r.min(y.saturating_sub(1)) {
        let shift = k * x;
        out[..n - shift].iter_mut().zip(&tmp[shift..]).for_each(|(d, &s)| *d |= s);
        out[shift..].iter_mut().zip(&tmp[..n - shift]).for_each(|(d, &s)| *d |= s);
    }
}

/// Centred moving average of width `window` (odd), truncated at the ends.
fn smooth(histogram: &[u64], window: usize) -> Vec<f64> {
    let half = window / 2;
    let n = histogram.len();
    (0..n)
        .map(|i| {
            let (lo, hi) = (i.saturating_sub(half), (i + half).min(n - 1));
            histogram[lo..=hi].iter().map(|&c| c as f64).sum::<f64>() / (hi - lo + 1) as f64
        })
        .collect()
}

/// The bin where the first peak of the smoothed histogram begins (0 when there is none).
fn first_peak_bin(histogram: &[u64], smoothing: usize) -> usize {
    let s = smooth(histogram, smoothing.max(1));
    let n = s.len();
    let mut i = 1;
    let peak = loop {
        if i >= n {
            return 0;
        }
        if s[i] > s[i - 1] {
            let mut j = i;
            while j + 1 < n && s[j + 1] == s[j] {
                j += 1;
            }
            if j + 1 == n || s[j + 1] < s[j] {
                break i;
            }
            i = j + 1;
        } else {
            i += 1;
        }
    };
    // Walk down the peak's left flank to the minimum before it; the peak begins after that bin.
    let mut valley = peak - 1;
    while valley > 0 && s[valley - 1] < s[valley] {
        valley -= 1;
    }
    valley + 1
}

/// The FirstPeak threshold (UGTST \[RECON\]) of an entropy histogram on [0, 1], as a bin edge.
///
/// The histogram is smoothed with a centred moving average of `smoothing` bins (truncated at the
/// ends). The first peak is the first bin j >= 1 where the smoothed count rises (`s[j] > s[j-1]`)
/// and then falls or the histogram ends (after a plateau, if any). Bin 0 never counts as a peak:
/// it holds the confidently predicted voxels (H ~ 0), and a "first peak" there would make the
/// threshold 0 for nearly every volume. The left edge of the peak is where its left flank starts
/// rising: walking left from the peak while the smoothed count keeps decreasing reaches a minimum
/// bin m (the valley before the peak, or bin 0), and tau = (m + 1) / B, the lower edge of the first
/// rising bin, so ASD counts the whole peak and what lies above it. Without any peak (e.g. a
/// histogram that only decreases) tau = 0.
///
/// Caveat: when the confident voxels' own mode lies above bin 0 (say at H ~ 0.02), that mode is
/// the first peak and tau is ~0, i.e. ASD is then close to the unthresholded mean. Which peak
/// UGTST means is not known beyond "left edge of the first peak"; [`ThresholdMethod::Otsu`] is
/// the alternative that always splits.
pub fn first_peak_threshold(histogram: &[u64], smoothing: usize) -> f64 {
    if histogram.is_empty() {
        return 0.0;
    }
    first_peak_bin(histogram, smoothing) as f64 / histogram.len() as f64
}

/// The first bin above Otsu's threshold (0 when no split separates two non-empty classes).
fn otsu_bin(histogram: &[u64]) -> usize {
    let n = histogram.len();
    let total: f64 = histogram.iter().map(|&c| c as f64).sum();
    if total == 0.0 {
        return 0;
    }
    let centre = |j: usize| (j as f64 + 0.5) / n as f64;
    let sum_all: f64 = histogram.iter().enumerate().map(|(j, &c)| c as f64 * centre(j)).sum();
    let (mut w0, mut sum0) = (0f64, 0f64);
    let (mut best, mut best_var) = (None, 0f64);
    for (j, &c) in histogram.iter().enumerate().take(n - 1) {
        w0 += c as f64;
        sum0 += c as f64 * centre(j);
        let w1 = total - w0;
        if w0 == 0.0 || w1 == 0.0 {
            continue;
        }
        let d = sum0 / w0 - (sum_all - sum0) / w1;
        let between = w0 * w1 * d * d;
        if between > best_var {
            best_var = between;
            best = Some(j);
        }
    }
    best.map_or(0, |j| j + 1)
}

/// Otsu's threshold of an entropy histogram on [0, 1], as a bin edge: the split between bins k
/// and k+1 (bin centres as values) that maximises the between-class variance w0 w1 (mu0 - mu1)^2,
/// the first such split on ties; tau = (k + 1) / B. 0 when no split has voxels on both sides.
pub fn otsu_threshold(histogram: &[u64]) -> f64 {
    if histogram.is_empty() {
        return 0.0;
    }
    otsu_bin(histogram) as f64 / histogram.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_are_right_closed() {
        assert_eq!(bin_of(0.0, 100), 0);
        assert_eq!(bin_of(0.005, 100), 0);
        assert_eq!(bin_of(0.015, 100), 1);
        assert_eq!(bin_of(1.0, 100), 99);
        // A value on an inner edge belongs to the bin below it (so "H > tau" is "bin >= j").
        assert_eq!(bin_of(0.5, 100), 49);
        assert_eq!(bin_of(0.25, 4), 0);
    }

    #[test]
    fn smoothing_keeps_a_decreasing_histogram_decreasing() {
        let s = smooth(&[1000, 500, 100, 10, 0, 0], 5);
        assert!(s.windows(2).all(|w| w[0] >= w[1]), "{s:?}");
        assert_eq!(first_peak_bin(&[1000, 500, 100, 10, 0, 0], 5), 0);
    }

    #[test]
    fn f64_values_read_back_bit_exactly() {
        // Needs serde_json's float_roundtrip feature: without it about 11% of these come back an
        // ulp off, and scores merged from several machines would not compare equal.
        let mut s = 0x9e3779b97f4a7c15u64;
        for _ in 0..2000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let x = (s >> 11) as f64 / (1u64 << 53) as f64 * 7.3;
            let back: f64 =
                serde_json::from_value(serde_json::from_str(&serde_json::to_string(&x).unwrap()).unwrap()).unwrap();
            assert_eq!(back, x);
        }
    }

    #[test]
    fn dilate_plane_is_a_clipped_square() {
        let (y, x) = (5, 6);
        let mut mask = vec![0u8; y * x];
        mask[2 * x + 2] = 1;
        mask[0] = 1;
        let (mut tmp, mut out) = (vec![0; y * x], vec![0; y * x]);
        dilate_plane(&mask, &mut tmp, &mut out, y, x, 1);
        for yy in 0..y {
            for xx in 0..x {
                let near = |cy: usize, cx: usize| yy.abs_diff(cy) <= 1 && xx.abs_diff(cx) <= 1;
                assert_eq!(out[yy * x + xx] == 1, near(2, 2) || near(0, 0), "({yy}, {xx})");
            }
        }
    }
}
