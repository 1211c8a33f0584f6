//! C ABI for selection: `asfda_select` over a set of scores, and the accessors of the resulting
//! `AsfdaSelection` (picks with their score components, reliable set, JSON).

use std::ffi::{c_char, CString};

use super::engine::AsfdaScore;
use super::{c_str, check_out, free_handle, guard, non_null, string_out, write_out, AsfdaStatus};
use crate::error::{Error, Result};
use crate::score::Score;
use crate::select::{select, GapKind, Method, SelectOptions, Selection};

/// Selection method (the `method` field of AsfdaSelectOptions, an int32_t).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsfdaSelectMethod {
    /// ASFDA: rank of DKD (gap rank x diversity) fused with rank of ASD, greedy. The default.
    ASFDA_SELECT_ASFDA = 0,
    /// Uniform random (seeded).
    ASFDA_SELECT_RANDOM = 1,
    /// Random weighted by predicted foreground fraction (seeded); zero-foreground volumes last.
    ASFDA_SELECT_FOREGROUND_RANDOM = 2,
    /// Highest ASD (foreground entropy) first.
    ASFDA_SELECT_ENTROPY = 3,
    /// DKD only, greedy.
    ASFDA_SELECT_DKD = 4,
    /// Core-set: k-center greedy on the embeddings.
    ASFDA_SELECT_CORESET = 5,
}

/// Which knowledge gap feeds DKD (the `gap` field of AsfdaSelectOptions, an int32_t).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsfdaGapKind {
    /// KL divergence of the feature statistics from the source's. The default.
    ASFDA_GAP_KL = 0,
    /// Squared distance of the embedding to the nearest source anchor.
    ASFDA_GAP_ANCHOR = 1,
}

const METHODS: [(AsfdaSelectMethod, Method); 6] = [
    (AsfdaSelectMethod::ASFDA_SELECT_ASFDA, Method::Asfda),
    (AsfdaSelectMethod::ASFDA_SELECT_RANDOM, Method::Random),
    (AsfdaSelectMethod::ASFDA_SELECT_FOREGROUND_RANDOM, Method::ForegroundRandom),
    (AsfdaSelectMethod::ASFDA_SELECT_ENTROPY, Method::Entropy),
    (AsfdaSelectMethod::ASFDA_SELECT_DKD, Method::Dkd),
    (AsfdaSelectMethod::ASFDA_SELECT_CORESET, Method::Coreset),
];

const GAPS: [(AsfdaGapKind, GapKind); 2] =
    [(AsfdaGapKind::ASFDA_GAP_KL, GapKind::Kl), (AsfdaGapKind::ASFDA_GAP_ANCHOR, GapKind::Anchor)];

/// Selection settings. Start from asfda_select_options_default() and set what you need (at least
/// the budget).
#[repr(C)]
pub struct AsfdaSelectOptions {
    /// An AsfdaSelectMethod value. Default ASFDA_SELECT_ASFDA.
    pub method: i32,
    /// Volumes to pick, 1..=number of unlabeled scores. Default 1.
    pub budget: usize,
    /// Seed of the random methods (same seed, same picks on every platform). Default 0.
    pub seed: u64,
    /// Weight of the DKD rank in the ASFDA score; finite, >= 0. Default 1.
    pub w_dkd: f64,
    /// Weight of the ASD rank in the ASFDA score; finite, >= 0, not both 0. Default 1.
    pub w_asd: f64,
    /// An AsfdaGapKind value. Default ASFDA_GAP_KL.
    pub gap: i32,
    /// ASFDA passes over a candidate whose distance to labeled + picked is below this fraction of
    /// the largest such distance, while others remain (near-duplicates). In [0, 1]; 0 = off.
    /// Default 0.01.
    pub duplicate_fraction: f64,
    /// Reliable volumes have confidence >= this quantile (in [0, 1]) of the unpicked pool's.
    /// Default 0.5.
    pub reliable_confidence_quantile: f64,
    /// Reliable volumes have distance to labeled + picked <= this quantile (in [0, 1]) of the
    /// unpicked pool's. Default 0.5.
    pub reliable_distance_quantile: f64,
}

/// One pick and the score components when it was picked (ranks in [0, 1] over the candidates
/// remaining at that moment). Same definitions for every method; see the Rust docs of `Pick`.
#[repr(C)]
pub struct AsfdaPick {
    /// Index of the volume in the `scores` array given to asfda_select.
    pub index: usize,
    /// 0 for the first pick.
    pub order: usize,
    /// The raw knowledge gap (of the kind chosen in the options).
    pub gap: f64,
    /// Rank of the gap.
    pub gap_rank: f64,
    /// Min over labeled + earlier picks of 1 - cos of the embeddings (1 when there were none).
    pub diversity: f64,
    /// gap_rank * diversity.
    pub dkd: f64,
    /// Rank of dkd.
    pub dkd_rank: f64,
    /// The raw ASD.
    pub asd: f64,
    /// Rank of ASD.
    pub asd_rank: f64,
    /// w_dkd * dkd_rank + w_asd * asd_rank.
    pub combined: f64,
}

/// The result of asfda_select: ordered picks and the reliable set. Immutable.
pub struct AsfdaSelection {
    selection: Selection,
    /// NUL-terminated copies of the pick ids and reliable ids, borrowed by C callers.
    pick_ids: Vec<CString>,
    reliable_ids: Vec<CString>,
}

impl AsfdaSelection {
    fn new(selection: Selection) -> Self {
        // Ids come from C strings or JSON; an interior NUL (possible only from JSON) is replaced so
        // the C copy stays whole, as error messages do.
        let c = |s: &str| CString::new(s.replace('\0', " ")).unwrap_or_default();
        let pick_ids = selection.picks.iter().map(|p| c(&p.id)).collect();
        let reliable_ids = selection.reliable.iter().map(|r| c(r)).collect();
        AsfdaSelection { selection, pick_ids, reliable_ids }
    }
}

/// The default selection options (budget 1: set it).
#[no_mangle]
pub extern "C" fn asfda_select_options_default() -> AsfdaSelectOptions {
    let o = SelectOptions::default();
    AsfdaSelectOptions {
        method: METHODS.iter().find(|(_, m)| *m == o.method).map_or(0, |(c, _)| *c as i32),
        budget: o.budget,
        seed: o.seed,
        w_dkd: o.w_dkd,
        w_asd: o.w_asd,
        gap: GAPS.iter().find(|(_, g)| *g == o.gap).map_or(0, |(c, _)| *c as i32),
        duplicate_fraction: o.duplicate_fraction,
        reliable_confidence_quantile: o.reliable_confidence_quantile,
        reliable_distance_quantile: o.reliable_distance_quantile,
    }
}

fn select_options(o: &AsfdaSelectOptions) -> Result<SelectOptions> {
    let method = METHODS.iter().find(|(c, _)| *c as i32 == o.method).map(|(_, m)| *m).ok_or_else(|| {
        Error::invalid_argument(format!("options->method = {} is not an AsfdaSelectMethod value (0..=5)", o.method))
    })?;
    let gap = GAPS.iter().find(|(c, _)| *c as i32 == o.gap).map(|(_, g)| *g).ok_or_else(|| {
        Error::invalid_argument(format!("options->gap = {} is not ASFDA_GAP_KL (0) or ASFDA_GAP_ANCHOR (1)", o.gap))
    })?;
    Ok(SelectOptions {
        method,
        budget: o.budget,
        seed: o.seed,
        w_dkd: o.w_dkd,
        w_asd: o.w_asd,
        gap,
        duplicate_fraction: o.duplicate_fraction,
        reliable_confidence_quantile: o.reliable_confidence_quantile,
        reliable_distance_quantile: o.reliable_distance_quantile,
    })
}

/// The method named `name` ("asfda", "random", "foreground_random", "entropy", "dkd", "coreset"),
/// for hosts that read the method from a configuration file or command line.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_select_method_from_name(
    name: *const c_char,
    out_method: *mut AsfdaSelectMethod,
) -> AsfdaStatus {
    guard(|| {
        check_out(out_method, "out_method")?;
        let method: Method = c_str(name, "name")?.parse()?;
        let code = METHODS.iter().find(|(_, m)| *m == method).map(|(c, _)| *c).expect("every method has a code");
        write_out(out_method, code);
        Ok(())
    })
}

/// The gap kind named `name` ("kl" or "anchor").
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_gap_kind_from_name(name: *const c_char, out_gap: *mut AsfdaGapKind) -> AsfdaStatus {
    guard(|| {
        check_out(out_gap, "out_gap")?;
        let gap: GapKind = c_str(name, "name")?.parse()?;
        write_out(out_gap, GAPS.iter().find(|(_, g)| *g == gap).map(|(c, _)| *c).expect("every gap has a code"));
        Ok(())
    })
}

/// Picks `options->budget` volumes to annotate among the scores whose id is not in
/// `labeled_ids`, and the reliable set of the rest. `scores` holds `count` score handles (every
/// volume of the site, labeled ones included: their embeddings count for diversity);
/// `labeled_ids` holds `labeled_count` ids of already labeled volumes (may be NULL when
/// `labeled_count` is 0). Deterministic for a seed. Errors: empty pool or budget out of range,
/// duplicate or unknown ids (INVALID_ARGUMENT); embeddings of different sizes, NaN/Inf scores
/// (INVALID_DATA). Free the result with asfda_selection_free.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_select(
    scores: *const *const AsfdaScore,
    count: usize,
    labeled_ids: *const *const c_char,
    labeled_count: usize,
    options: *const AsfdaSelectOptions,
    out_selection: *mut *mut AsfdaSelection,
) -> AsfdaStatus {
    guard(|| {
        check_out(out_selection, "out_selection")?;
        let options = select_options(non_null(options, "options")?)?;
        if count == 0 {
            return Err(Error::invalid_argument("no scores given (count is 0): the pool is empty"));
        }
        let handles = slice(scores, count, "scores")?;
        let list: Vec<Score> = handles
            .iter()
            .enumerate()
            .map(|(k, &h)| non_null(h, &format!("scores[{k}]")).map(|s| s.0.clone()))
            .collect::<Result<_>>()?;
        let ids = if labeled_count == 0 { &[][..] } else { slice(labeled_ids, labeled_count, "labeled_ids")? };
        let labeled: Vec<&str> =
            ids.iter().enumerate().map(|(k, &p)| c_str(p, &format!("labeled_ids[{k}]"))).collect::<Result<_>>()?;
        let selection = select(&list, &labeled, &options)?;
        write_out(out_selection, Box::into_raw(Box::new(AsfdaSelection::new(selection))));
        Ok(())
    })
}

/// A C array of `len` pointers as a slice; NULL is rejected, naming it.
fn slice<'a, T>(ptr: *const *const T, len: usize, name: &str) -> Result<&'a [*const T]> {
    if ptr.is_null() {
        return Err(Error::invalid_argument(format!("argument '{name}' is NULL")));
    }
    // SAFETY: the caller provides `len` readable pointers at `ptr` (documented in the header).
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Frees a selection; NULL is a no-op. Ids borrowed from it become invalid.
#[no_mangle]
pub extern "C" fn asfda_selection_free(selection: *mut AsfdaSelection) {
    free_handle(selection);
}

/// Number of picks (0 when `selection` is NULL).
#[no_mangle]
pub extern "C" fn asfda_selection_count(selection: *const AsfdaSelection) -> usize {
    // SAFETY: a non-NULL selection comes from asfda_select (caller contract).
    unsafe { selection.as_ref() }.map_or(0, |s| s.selection.picks.len())
}

/// Pick `i` (0 = picked first) with its score components.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_selection_pick(
    selection: *const AsfdaSelection,
    i: usize,
    out_pick: *mut AsfdaPick,
) -> AsfdaStatus {
    guard(|| {
        check_out(out_pick, "out_pick")?;
        let picks = &non_null(selection, "selection")?.selection.picks;
        let p = picks.get(i).ok_or_else(|| {
            Error::invalid_argument(format!("pick index {i} is out of range; the selection has {} picks", picks.len()))
        })?;
        write_out(
            out_pick,
            AsfdaPick {
                index: p.index,
                order: p.order,
                gap: p.gap,
                gap_rank: p.gap_rank,
                diversity: p.diversity,
                dkd: p.dkd,
                dkd_rank: p.dkd_rank,
                asd: p.asd,
                asd_rank: p.asd_rank,
                combined: p.combined,
            },
        );
        Ok(())
    })
}

/// Borrowed id string of entry `i` of `ids`, or NULL with a last-error message.
fn borrowed_id(
    selection: *const AsfdaSelection,
    i: usize,
    what: &str,
    ids: fn(&AsfdaSelection) -> &[CString],
) -> *const c_char {
    let mut out = std::ptr::null();
    let status = guard(|| {
        let sel = non_null(selection, "selection")?;
        let list = ids(sel);
        let id = list.get(i).ok_or_else(|| {
            Error::invalid_argument(format!("{what} index {i} is out of range; the selection has {}", list.len()))
        })?;
        out = id.as_ptr();
        Ok(())
    });
    if status != AsfdaStatus::ASFDA_STATUS_OK {
        return std::ptr::null();
    }
    out
}

/// The id of pick `i`, borrowed: valid while `selection` lives; never free it. NULL when
/// `selection` is NULL or `i` is out of range (asfda_last_error_message() says which).
#[no_mangle]
pub extern "C" fn asfda_selection_pick_id(selection: *const AsfdaSelection, i: usize) -> *const c_char {
    borrowed_id(selection, i, "pick", |s| &s.pick_ids)
}

/// Number of reliable volumes for semi-supervised fine-tuning (0 when `selection` is NULL).
#[no_mangle]
pub extern "C" fn asfda_selection_reliable_count(selection: *const AsfdaSelection) -> usize {
    // SAFETY: a non-NULL selection comes from asfda_select (caller contract).
    unsafe { selection.as_ref() }.map_or(0, |s| s.selection.reliable.len())
}

/// The id of reliable volume `i` (ids sorted), borrowed like asfda_selection_pick_id.
#[no_mangle]
pub extern "C" fn asfda_selection_reliable_id(selection: *const AsfdaSelection, i: usize) -> *const c_char {
    borrowed_id(selection, i, "reliable", |s| &s.reliable_ids)
}

/// The selection as JSON (versioned: method, options, picks with components, reliable ids), copied
/// like asfda_score_to_json.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_selection_to_json(
    selection: *const AsfdaSelection,
    buf: *mut c_char,
    capacity: usize,
    out_needed: *mut usize,
) -> AsfdaStatus {
    guard(|| string_out(&non_null(selection, "selection")?.selection.to_json(), buf, capacity, out_needed))
}

/// Reads a selection from its JSON form (asfda_selection_to_json, or the CLI's `asfda select`
/// output): the inverse of asfda_selection_to_json. ASFDA_STATUS_UNSUPPORTED for another
/// format_version, ASFDA_STATUS_FORMAT for malformed or inconsistent JSON. Free the result with
/// asfda_selection_free.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_selection_from_json(
    json: *const c_char,
    out_selection: *mut *mut AsfdaSelection,
) -> AsfdaStatus {
    guard(|| {
        check_out(out_selection, "out_selection")?;
        let selection = Selection::from_json(c_str(json, "json")?)?;
        write_out(out_selection, Box::into_raw(Box::new(AsfdaSelection::new(selection))));
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn defaults_match_the_rust_defaults() {
        let c = asfda_select_options_default();
        assert_eq!(select_options(&c).unwrap(), SelectOptions::default());
    }

    #[test]
    fn every_enum_value_maps_and_others_are_rejected() {
        for (code, method) in METHODS {
            let o = AsfdaSelectOptions { method: code as i32, ..asfda_select_options_default() };
            assert_eq!(select_options(&o).unwrap().method, method);
            let name = CString::new(method.name()).unwrap();
            let mut out = AsfdaSelectMethod::ASFDA_SELECT_CORESET;
            assert_eq!(asfda_select_method_from_name(name.as_ptr(), &mut out), AsfdaStatus::ASFDA_STATUS_OK);
            assert_eq!(out, code);
        }
        assert_eq!(METHODS.len(), Method::ALL.len());
        let bad = AsfdaSelectOptions { method: 6, ..asfda_select_options_default() };
        assert!(select_options(&bad).unwrap_err().message().contains("options->method = 6"));
        let bad = AsfdaSelectOptions { gap: -1, ..asfda_select_options_default() };
        assert!(select_options(&bad).unwrap_err().message().contains("options->gap = -1"));
        let mut gap = AsfdaGapKind::ASFDA_GAP_KL;
        assert_eq!(asfda_gap_kind_from_name(c"anchor".as_ptr(), &mut gap), AsfdaStatus::ASFDA_STATUS_OK);
        assert_eq!(gap, AsfdaGapKind::ASFDA_GAP_ANCHOR);
        assert_eq!(asfda_gap_kind_from_name(c"l2".as_ptr(), &mut gap), AsfdaStatus::ASFDA_STATUS_INVALID_ARGUMENT);
        assert_eq!(gap, AsfdaGapKind::ASFDA_GAP_ANCHOR);
    }

    #[test]
    fn ids_are_borrowed_and_out_of_range_is_null_with_a_message() {
        let score = |id: &str, e: [f32; 2]| Score { id: id.into(), embedding: e.to_vec(), ..test_score() };
        let scores = [score("a", [1.0, 0.0]), score("b", [0.0, 1.0]), score("c", [0.6, 0.8])];
        let sel = select(&scores, &["a"], &SelectOptions { budget: 1, ..Default::default() }).unwrap();
        let handle = AsfdaSelection::new(sel.clone());
        assert_eq!(asfda_selection_count(&handle), 1);
        let id = asfda_selection_pick_id(&handle, 0);
        // SAFETY: a non-NULL pick id is NUL-terminated and lives as long as the handle.
        assert_eq!(unsafe { CStr::from_ptr(id) }.to_str().unwrap(), sel.picks[0].id);
        assert!(asfda_selection_pick_id(&handle, 1).is_null());
        // SAFETY: the last-error message is a NUL-terminated thread-local string.
        let msg = unsafe { CStr::from_ptr(super::super::asfda_last_error_message()) }.to_str().unwrap();
        assert!(msg.contains("pick index 1 is out of range"), "{msg}");
        assert!(asfda_selection_reliable_id(std::ptr::null(), 0).is_null());
        assert_eq!(asfda_selection_count(std::ptr::null()), 0);
    }

    fn test_score() -> Score {
        Score::from_json(
            r#"{"format_version":1,"id":"x","embedding":[1.0],"gap_kl":0.5,"gap_anchor":0.1,"asd":0.2,
            "asd_threshold":0.0,"confidence":0.9,"foreground_fraction":0.3,"entropy_histogram":[0,0],
            "voxels":10,"foreground_voxels":0,"options":{"foreground_dilation":2,"threshold":"first_peak",
            "histogram_bins":2,"peak_smoothing":5,"class_balanced":false,"variance_floor":0.01}}"#,
        )
        .unwrap()
    }
}
