//! Class labels from per-class probabilities (or logits): the one argmax of the crate, with one
//! tie rule: the first (lowest) class of the largest value wins, so an exact tie with background
//! is background.

use ndarray::{s, Array3, ArrayView4};

/// The most probable class among `values` (one value per class, in class order) and its value;
/// ties go to the lower class, NaNs never win. `(0, -inf)` when there are no values.
#[inline]
pub fn top_class(values: impl IntoIterator<Item = f32>) -> (usize, f32) {
    values.into_iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (c, p)| if p > best.1 { (c, p) } else { best })
}

/// The class map of probabilities [C, Z, Y, X]: [`top_class`] of every voxel, as u8.
pub fn argmax_classes(probabilities: ArrayView4<'_, f32>) -> Array3<u8> {
    let (_, z, y, x) = probabilities.dim();
    Array3::from_shape_fn((z, y, x), |(k, j, i)| {
        top_class(probabilities.slice(s![.., k, j, i]).iter().copied()).0 as u8
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_go_to_the_lower_class_and_nan_never_wins() {
        assert_eq!(top_class([0.2, 0.5, 0.3]), (1, 0.5));
        assert_eq!(top_class([0.5, 0.5]), (0, 0.5));
        assert_eq!(top_class([f32::NAN, 0.1]), (1, 0.1));
        assert_eq!(top_class(std::iter::empty()), (0, f32::NEG_INFINITY));
    }

    #[test]
    fn argmax_classes_maps_every_voxel() {
        let p = ndarray::Array4::from_shape_vec((2, 1, 1, 3), vec![0.9, 0.4, 0.5, 0.1, 0.6, 0.5]).unwrap();
        assert_eq!(argmax_classes(p.view()).into_raw_vec_and_offset().0, vec![0, 1, 0]);
    }
}
