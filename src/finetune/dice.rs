//! Per-class Dice of a segmentation against its reference, shared by evaluation
//! ([`super::FineTuner::evaluate`]) and the pseudo-label check
//! ([`super::FineTuner::check_pseudo_labels`]).

/// Overlap counts of one volume's prediction against its reference, per class.
pub(crate) struct Overlap {
    inter: Vec<usize>,
    pred: Vec<usize>,
    truth: Vec<usize>,
}

impl Overlap {
    pub(crate) fn new(classes: usize) -> Overlap {
        Overlap { inter: vec![0; classes], pred: vec![0; classes], truth: vec![0; classes] }
    }

    /// Counts one voxel predicted as `pred` whose reference class is `truth`.
    pub(crate) fn add(&mut self, pred: usize, truth: usize) {
        self.pred[pred] += 1;
        self.truth[truth] += 1;
        if pred == truth {
            self.inter[pred] += 1;
        }
    }

    /// Dice per class; a class absent from both the prediction and the reference scores 1
    /// (nothing to find, nothing wrongly found).
    pub(crate) fn dice(&self) -> Vec<f64> {
        (0..self.inter.len())
            .map(|c| {
                let denom = self.pred[c] + self.truth[c];
                if denom == 0 {
                    1.0
                } else {
                    2.0 * self.inter[c] as f64 / denom as f64
                }
            })
            .collect()
    }
}

/// The per-class mean of per-volume Dice vectors (`classes` zeros for no volume).
pub(crate) fn mean_per_class(volumes: &[Vec<f64>], classes: usize) -> Vec<f64> {
    let mut sum = vec![0.0; classes];
    for d in volumes {
        sum.iter_mut().zip(d).for_each(|(s, v)| *s += v);
    }
    sum.into_iter().map(|s| s / volumes.len().max(1) as f64).collect()
}

/// Mean Dice over `classes` (e.g. the foreground ones); NaN for an empty list.
pub(crate) fn mean_over(dice: &[f64], classes: &[usize]) -> f64 {
    classes.iter().map(|&c| dice[c]).sum::<f64>() / classes.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dice_counts_overlap_and_scores_absent_classes_one() {
        let mut o = Overlap::new(3);
        // class 1: predicted on 3 voxels, true on 2, overlapping on 2 -> 2*2/5
        for (p, t) in [(1, 1), (1, 1), (1, 0), (0, 0)] {
            o.add(p, t);
        }
        let d = o.dice();
        assert!((d[1] - 0.8).abs() < 1e-12, "{d:?}");
        assert!((d[0] - 2.0 / 3.0).abs() < 1e-12, "{d:?}");
        assert_eq!(d[2], 1.0, "class 2 absent from both");
    }

    #[test]
    fn means_average_volumes_and_chosen_classes() {
        let m = mean_per_class(&[vec![1.0, 0.2, 0.4], vec![0.0, 0.6, 0.8]], 3);
        for (got, want) in m.iter().zip([0.5, 0.4, 0.6]) {
            assert!((got - want).abs() < 1e-12, "{m:?}");
        }
        assert!((mean_over(&m, &[1, 2]) - 0.5).abs() < 1e-12);
    }
}
