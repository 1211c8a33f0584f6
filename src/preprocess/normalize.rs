//! Per-channel intensity normalisation ([`Normalization`]) and the per-voxel map it amounts to
//! ([`ChannelNorm`]).

use crate::bundle::{Normalization, ZscoreMask};
use crate::stats;

/// Floor for a standard deviation used as a divisor (nnU-Net's `max(std, 1e-8)`).
const MIN_STD: f64 = 1e-8;
/// Normalises one channel in place (parameters checked by `check_input_spec`).
pub(super) fn normalize(x: &mut [f32], normalization: &Normalization) {
    let n = channel_norm(x, normalization);
    for v in x.iter_mut() {
        *v = n.apply(*v);
    }
}

/// The per-voxel map a channel's normalisation amounts to once its statistics are known, so it
/// can be applied to voxels read elsewhere (tiles read from the caller's volume) with the same
/// arithmetic as the normalisation `prepare` applies.
#[derive(Clone, Copy, Debug)]
pub enum ChannelNorm {
    /// `((clamp(v) as f64 - mean) * inv) as f32`, clamp in f32 (percentile) or none (z-score).
    Standardize { clamp: Option<(f32, f32)>, mean: f64, inv: f64 },
    /// `((clamp(v as f64, lower, upper) - mean) / std) as f32` (CT window).
    Window { lower: f64, upper: f64, mean: f64, std: f64 },
}

impl ChannelNorm {
    #[inline]
    pub(super) fn apply(&self, v: f32) -> f32 {
        match *self {
            ChannelNorm::Standardize { clamp, mean, inv } => {
                let v = clamp.map_or(v, |(lo, hi)| v.clamp(lo, hi));
                ((v as f64 - mean) * inv) as f32
            }
            ChannelNorm::Window { lower, upper, mean, std } => (((v as f64).clamp(lower, upper) - mean) / std) as f32,
        }
    }
}

/// The statistics of one (unnormalised) channel under `normalization`.
pub(super) fn channel_norm(x: &[f32], normalization: &Normalization) -> ChannelNorm {
    let standardize = |clamp: Option<(f32, f32)>, (mean, std): (f64, f64)| ChannelNorm::Standardize {
        clamp,
        mean,
        inv: 1.0 / std.max(MIN_STD),
    };
    match *normalization {
        Normalization::Zscore { mask } => standardize(
            None,
            match mask {
                ZscoreMask::All => mean_std(x.iter().copied()),
                ZscoreMask::Nonzero if x.iter().any(|v| *v != 0.0) => mean_std(x.iter().copied().filter(|v| *v != 0.0)),
                // An all-zero channel has no foreground: it stays all zero.
                ZscoreMask::Nonzero => (0.0, 0.0),
            },
        ),
        Normalization::CtWindow { lower, upper, mean, std } => ChannelNorm::Window { lower, upper, mean, std },
        Normalization::Percentile { lower, upper } => {
            let (lo, hi) = stats::percentiles(x, lower, upper);
            standardize(Some((lo, hi)), mean_std(x.iter().map(|v| v.clamp(lo, hi))))
        }
    }
}

/// Mean and population standard deviation (numpy's default), accumulated in f64 in two passes.
fn mean_std(values: impl Iterator<Item = f32> + Clone) -> (f64, f64) {
    let (mean, var) = stats::mean_variance(values.map(f64::from));
    (mean, var.sqrt())
}
