//! Per-volume scores for active selection (docs/method.md, section 1), computed from the
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
//! Everything marked \[RECON\] in docs/method.md is a field of [`ScoreOptions`]; its `Default` is the
//! documented default, and the options used travel inside every [`Score`].
//!
//! The voxel-wise part is accumulated by [`VolumeStats`], which accepts the whole probability
//! volume at once or consecutive z-slabs (the sliding window can stream them), in one pass over
//! the probabilities; the result does not depend on how the volume was cut into slabs.
//!
//! A [`Score`] is small and serialisable ([`Score::to_json`], versioned), so scores made on several
//! machines can be merged before selection.
//!
//! One file per concept: the options (here), the [`Score`] record and its JSON (`record`), the
//! streaming voxel statistics (`voxel_stats`), the feature gap (`gap`) and the histogram
//! thresholds (`threshold`); everything public is re-exported here, so paths stay
//! `asfda::score::X`.

mod gap;
mod pool;
mod record;
mod threshold;
mod voxel_stats;

use ndarray::{ArrayView2, ArrayView4};
use serde::{Deserialize, Serialize};

use crate::bundle::SourceKnowledge;
#[cfg(doc)]
use crate::error::ErrorKind;
use crate::error::{Error, Result};

pub use gap::{feature_gap, SOURCE_VARIANCE_EPSILON};
pub use pool::{score_pool, PoolOrder};
pub use record::{Score, SCORE_FORMAT_VERSION};
pub use threshold::{first_peak_threshold, otsu_threshold};
pub use voxel_stats::{entropy_map, foreground_region, VolumeStats, VoxelSummary, PROBABILITY_TOLERANCE};

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
