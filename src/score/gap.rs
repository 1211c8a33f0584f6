//! The embedding and knowledge gap of a volume from its tile features and the source statistics
//! shipped with the model.

use ndarray::ArrayView2;

use super::{EmbeddingKind, ScoreOptions};
use crate::bundle::SourceKnowledge;
#[cfg(doc)]
use crate::error::ErrorKind;
use crate::error::{Error, Result};
use crate::stats;

/// Source variances are floored at this before use, so a channel that is constant on the source
/// (a dead ReLU) gives a finite KL: 0 when the target matches it, very large when the target
/// activates it (an extreme shift, ranked as such).
pub const SOURCE_VARIANCE_EPSILON: f64 = 1e-12;

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

    let (mean, var): (Vec<f64>, Vec<f64>) = tile_features
        .columns()
        .into_iter()
        .map(|column| stats::mean_variance(column.iter().map(|&v| f64::from(v))))
        .unzip();

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
