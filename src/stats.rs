//! The crate's small descriptive statistics, one implementation each: quantiles (two
//! interpolation conventions, kept apart because their callers' numbers must not change) and the
//! population mean and variance.
//!
//! - [`quantile`]: numpy's default linear interpolation ("type 7"), `q` in [0, 1], on f64
//!   (selection's reliable-set thresholds);
//! - [`percentiles`]: the same convention with `p` in percent on f32 data, two at once by
//!   selection on one copy (percentile normalisation). Its index `h = (n - 1) p / 100` is rounded
//!   differently from [`quantile`]'s `h = q (n - 1)`, so the two are not interchangeable bit for bit;
//! - [`quantile_nearest_rank`]: the nearest order statistic of the finite values, no
//!   interpolation (display windowing of the report);
//! - [`mean_variance`]: mean and population variance (numpy's default, `ddof = 0`) in f64, two
//!   passes.

/// Quantile `q` in [0, 1] of `values` by linear interpolation between order statistics (numpy's
/// default, "type 7": `h = q (n - 1)`). `values` must not be empty nor hold NaN.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let h = q * (v.len() - 1) as f64;
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    v[lo] + (h - lo as f64) * (v[hi] - v[lo])
}

/// The `lower` and `upper` percentiles (in percent, 0..=100) of `x` with numpy's default linear
/// interpolation (`h = (n - 1) p / 100`), by selection on one copy; interpolated in f64, returned
/// as f32. `x` must not be empty.
pub fn percentiles(x: &[f32], lower: f64, upper: f64) -> (f32, f32) {
    let mut sorted = x.to_vec();
    let mut at = |p: f64| {
        let h = (sorted.len() - 1) as f64 * p / 100.0;
        let i = (h.floor() as usize).min(sorted.len() - 1);
        let (_, &mut a, rest) = sorted.select_nth_unstable_by(i, f32::total_cmp);
        let b = rest.iter().copied().reduce(f32::min).unwrap_or(a);
        (a as f64 + (h - i as f64) * (b as f64 - a as f64)) as f32
    };
    (at(lower), at(upper))
}

/// The `q`-quantile (0..=1, clamped) of the finite values of `data` by nearest rank (order
/// statistic `round((n - 1) q)`, no interpolation); 0 if no value is finite.
pub fn quantile_nearest_rank(data: &[f32], q: f64) -> f32 {
    let mut v: Vec<f32> = data.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    let k = ((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    *v.select_nth_unstable_by(k, f32::total_cmp).1
}

/// Mean and population variance (numpy's default, `ddof = 0`) of `values`, accumulated in f64 in
/// two passes, in iteration order; (0, 0) when there are none.
pub fn mean_variance(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let (sum, count) = values.clone().fold((0.0f64, 0usize), |(s, n), v| (s + v, n + 1));
    if count == 0 {
        return (0.0, 0.0);
    }
    let mean = sum / count as f64;
    let var = values.map(|v| (v - mean).powi(2)).sum::<f64>() / count as f64;
    (mean, var)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_like_numpy() {
        assert_eq!(quantile(&[3.0, 1.0, 2.0, 4.0], 0.5), 2.5);
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), 2.0);
        assert_eq!(quantile(&[3.0, 1.0, 2.0, 4.0], 0.0), 1.0);
        assert_eq!(quantile(&[3.0, 1.0, 2.0, 4.0], 1.0), 4.0);
        assert!((quantile(&[0.0, 10.0], 0.25) - 2.5).abs() < 1e-12);
    }

    #[test]
    fn percentiles_match_numpy() {
        // numpy.percentile([4, 1, 3, 2, 5], [10, 95]) == [1.4, 4.8]
        let (lo, hi) = percentiles(&[4.0, 1.0, 3.0, 2.0, 5.0], 10.0, 95.0);
        assert!((lo - 1.4).abs() < 1e-6 && (hi - 4.8).abs() < 1e-6, "{lo} {hi}");
        assert_eq!(percentiles(&[7.0], 0.0, 100.0), (7.0, 7.0));
    }

    #[test]
    fn nearest_rank_ignores_nonfinite_values() {
        let mut data: Vec<f32> = (0..100).map(|i| i as f32).collect();
        data.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
        assert_eq!(quantile_nearest_rank(&data, 0.01), 1.0);
        assert_eq!(quantile_nearest_rank(&data, 0.99), 98.0);
        assert_eq!(quantile_nearest_rank(&[], 0.5), 0.0);
    }

    #[test]
    fn mean_variance_is_the_population_variance() {
        let (m, v) = mean_variance([1.0, 2.0, 3.0, 4.0].into_iter());
        assert_eq!((m, v), (2.5, 1.25));
        assert_eq!(mean_variance(std::iter::empty()), (0.0, 0.0));
    }
}
