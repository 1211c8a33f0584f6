//! Entropy-histogram thresholds for ASD: the left edge of the first peak (UGTST) and Otsu.

#[cfg(doc)]
use super::ThresholdMethod;

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
pub(super) fn first_peak_bin(histogram: &[u64], smoothing: usize) -> usize {
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
pub(super) fn otsu_bin(histogram: &[u64]) -> usize {
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
    fn smoothing_keeps_a_decreasing_histogram_decreasing() {
        let s = smooth(&[1000, 500, 100, 10, 0, 0], 5);
        assert!(s.windows(2).all(|w| w[0] >= w[1]), "{s:?}");
        assert_eq!(first_peak_bin(&[1000, 500, 100, 10, 0, 0], 5), 0);
    }
}
