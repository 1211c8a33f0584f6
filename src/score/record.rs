//! The [`Score`] of one volume and its versioned JSON.

use serde::{Deserialize, Serialize};

use super::ScoreOptions;
#[cfg(doc)]
use super::ThresholdMethod;
#[cfg(doc)]
use crate::error::ErrorKind;
use crate::error::{Error, Result};

/// The [`Score`] JSON format this build writes and reads.
pub const SCORE_FORMAT_VERSION: u32 = 1;

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
        // A JSON number beyond f32's range reads as infinity, which would then be written as
        // null (found by fuzzing): refuse it here, naming the entry.
        if let Some(i) = self.embedding.iter().position(|v| !v.is_finite()) {
            return Err(format!("embedding[{i}] is not a finite f32 ({})", self.embedding[i]));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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
    fn an_embedding_beyond_f32_range_is_refused_naming_the_entry() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fuzz/regressions/score_json/embedding-beyond-f32-c87bf657"
        ))
        .unwrap();
        let err = super::Score::from_json(&text).unwrap_err().to_string();
        assert!(err.contains("embedding[2] is not a finite f32"), "{err}");
    }
}
