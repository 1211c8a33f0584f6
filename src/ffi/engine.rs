//! C ABI for engines (a loaded bundle) and scores: `asfda_engine_new`, `asfda_score_volume`,
//! `asfda_segment_volume`, score accessors and JSON.

use std::ffi::{c_char, c_void};

use super::volume::{into_handle, AsfdaVolume};
use super::{c_path, c_str, check_out, free_handle, guard, non_null, string_out, write_out, AsfdaStatus};
use crate::engine::{Engine, EngineOptions, SegmentOutputs};
use crate::error::{Error, Result};
use crate::runtime::{Device, RuntimeOptions};
use crate::score::Score;
use crate::window::{Cancel, WindowOptions};

/// A loaded model bundle ready to segment and score. Thread-safe: one engine may score volumes
/// from several threads at once (model runs are serialised; results equal serial ones).
pub struct AsfdaEngine(pub(crate) Engine);

/// The scores of one volume (see method.md). Immutable.
pub struct AsfdaScore(pub(crate) Score);

/// Engine settings. Start from asfda_engine_options_default() and set what you need.
#[repr(C)]
pub struct AsfdaEngineOptions {
    /// Folder of the model bundle (holds manifest.json). Required.
    pub bundle_path: *const c_char,
    /// Full path of libonnxruntime.so; NULL follows the resolution order.
    pub library_path: *const c_char,
    /// "cpu" (when NULL), "auto", "cuda" or "cuda:<id>".
    pub device: *const c_char,
    /// Intra-op CPU threads; 0 lets ONNX Runtime choose.
    pub threads: u32,
    /// Fraction of a tile shared with its neighbour, in [0, 1). Default 0.5.
    pub tile_overlap: f64,
    /// Tiles per ONNX Runtime run. Default 2.
    pub tiles_per_batch: u32,
    /// Average 8 mirrored passes (8x slower). Default false.
    pub mirror: bool,
    /// Refuse volumes needing more working memory than this (bytes); 0 = no limit.
    pub memory_limit_bytes: u64,
}

/// Progress callback: `fraction` in [0, 1]; return false to cancel (the call then returns
/// ASFDA_STATUS_CANCELLED and the engine stays usable). Called on the calling thread after
/// every batch of tiles.
pub type AsfdaProgressFn = Option<extern "C" fn(user_data: *mut c_void, fraction: f64) -> bool>;

/// The scalar scores of a volume.
#[repr(C)]
pub struct AsfdaScoreValues {
    /// KL divergence of the volume's feature statistics from the source's (mean over channels).
    pub gap_kl: f64,
    /// Squared distance of the embedding to the nearest source anchor.
    pub gap_anchor: f64,
    /// Anatomical segmentation difficulty: mean foreground entropy above the adaptive threshold.
    pub asd: f64,
    pub asd_threshold: f64,
    /// Mean max-probability over the (dilated) foreground.
    pub confidence: f64,
    pub foreground_fraction: f64,
    /// Length of the embedding (read it with asfda_score_embedding).
    pub embedding_len: usize,
}

/// The default engine options (bundle_path NULL: set it).
#[no_mangle]
pub extern "C" fn asfda_engine_options_default() -> AsfdaEngineOptions {
    let window = WindowOptions::default();
    AsfdaEngineOptions {
        bundle_path: std::ptr::null(),
        library_path: std::ptr::null(),
        device: std::ptr::null(),
        threads: 0,
        tile_overlap: window.overlap,
        tiles_per_batch: window.tiles_per_batch as u32,
        mirror: window.mirror,
        memory_limit_bytes: 0,
    }
}

fn engine_options(o: &AsfdaEngineOptions) -> Result<EngineOptions> {
    let library_path =
        if o.library_path.is_null() { None } else { Some(c_path(o.library_path, "options->library_path")?) };
    let device = if o.device.is_null() { Device::Cpu } else { c_str(o.device, "options->device")?.parse()? };
    let window = WindowOptions {
        overlap: o.tile_overlap,
        tiles_per_batch: o.tiles_per_batch as usize,
        mirror: o.mirror,
        ..Default::default()
    };
    Ok(EngineOptions {
        runtime: RuntimeOptions { library_path, device, threads: o.threads as usize },
        window,
        memory_limit_bytes: o.memory_limit_bytes,
        ..Default::default()
    })
}

/// Loads and validates a model bundle and creates its inference session.
#[no_mangle]
pub extern "C" fn asfda_engine_new(
    options: *const AsfdaEngineOptions,
    out_engine: *mut *mut AsfdaEngine,
) -> AsfdaStatus {
    guard(|| {
        check_out(out_engine, "out_engine")?;
        let o = non_null(options, "options")?;
        let bundle = c_path(o.bundle_path, "options->bundle_path")?;
        let engine = Engine::new(&bundle, engine_options(o)?)?;
        write_out(out_engine, Box::into_raw(Box::new(AsfdaEngine(engine))));
        Ok(())
    })
}

/// Frees an engine; NULL is a no-op.
#[no_mangle]
pub extern "C" fn asfda_engine_free(engine: *mut AsfdaEngine) {
    free_handle(engine);
}

/// The device inference runs on ("cpu" or "cuda:<id>"), copied like asfda_runtime_info_json.
#[no_mangle]
pub extern "C" fn asfda_engine_device(
    engine: *const AsfdaEngine,
    buf: *mut c_char,
    capacity: usize,
    out_needed: *mut usize,
) -> AsfdaStatus {
    guard(|| string_out(&non_null(engine, "engine")?.0.device().to_string(), buf, capacity, out_needed))
}

/// Adapts a C callback to the engine's progress closure.
fn progress_closure(callback: AsfdaProgressFn, user_data: *mut c_void) -> impl FnMut(f64) -> bool {
    move |fraction| callback.is_none_or(|f| f(user_data, fraction))
}

/// Scores one volume for how informative annotating it would be. `id` names it in the score
/// (e.g. a file name or series UID). `progress` may be NULL.
#[no_mangle]
pub extern "C" fn asfda_score_volume(
    engine: *const AsfdaEngine,
    volume: *const AsfdaVolume,
    id: *const c_char,
    progress: AsfdaProgressFn,
    user_data: *mut c_void,
    out_score: *mut *mut AsfdaScore,
) -> AsfdaStatus {
    guard(|| {
        check_out(out_score, "out_score")?;
        let engine = &non_null(engine, "engine")?.0;
        let volume = &non_null(volume, "volume")?.0;
        let id = c_str(id, "id")?;
        let score = engine.score(id, volume, &Cancel::new()?, &mut progress_closure(progress, user_data))?;
        write_out(out_score, Box::into_raw(Box::new(AsfdaScore(score))));
        Ok(())
    })
}

/// Segments one volume; the label map (class index per voxel) is on the volume's own grid.
#[no_mangle]
pub extern "C" fn asfda_segment_volume(
    engine: *const AsfdaEngine,
    volume: *const AsfdaVolume,
    progress: AsfdaProgressFn,
    user_data: *mut c_void,
    out_labels: *mut *mut AsfdaVolume,
) -> AsfdaStatus {
    guard(|| {
        check_out(out_labels, "out_labels")?;
        let engine = &non_null(engine, "engine")?.0;
        let volume = &non_null(volume, "volume")?.0;
        let seg = engine.segment(
            volume,
            SegmentOutputs::default(),
            &Cancel::new()?,
            &mut progress_closure(progress, user_data),
        )?;
        write_out(out_labels, into_handle(seg.labels));
        Ok(())
    })
}

/// Frees a score; NULL is a no-op.
#[no_mangle]
pub extern "C" fn asfda_score_free(score: *mut AsfdaScore) {
    free_handle(score);
}

/// The scalar scores.
#[no_mangle]
pub extern "C" fn asfda_score_values(score: *const AsfdaScore, out_values: *mut AsfdaScoreValues) -> AsfdaStatus {
    guard(|| {
        check_out(out_values, "out_values")?;
        let s = &non_null(score, "score")?.0;
        write_out(
            out_values,
            AsfdaScoreValues {
                gap_kl: s.gap_kl,
                gap_anchor: s.gap_anchor,
                asd: s.asd,
                asd_threshold: s.asd_threshold,
                confidence: s.confidence,
                foreground_fraction: s.foreground_fraction,
                embedding_len: s.embedding.len(),
            },
        );
        Ok(())
    })
}

/// Copies the L2-normalised embedding into `buf`, which must hold exactly `len` floats
/// (embedding_len from asfda_score_values).
#[no_mangle]
pub extern "C" fn asfda_score_embedding(score: *const AsfdaScore, buf: *mut f32, len: usize) -> AsfdaStatus {
    guard(|| {
        let s = &non_null(score, "score")?.0;
        if buf.is_null() {
            return Err(Error::invalid_argument("argument 'buf' is NULL"));
        }
        if len != s.embedding.len() {
            return Err(Error::invalid_argument(format!(
                "buffer holds {len} floats; the embedding has {}",
                s.embedding.len()
            )));
        }
        // SAFETY: the caller provides `len` writable floats at `buf`.
        unsafe { std::ptr::copy_nonoverlapping(s.embedding.as_ptr(), buf, len) };
        Ok(())
    })
}

/// The score as JSON (versioned; exact round trip), copied like asfda_runtime_info_json. Scores
/// computed on several machines can be stored and merged before selection.
#[no_mangle]
pub extern "C" fn asfda_score_to_json(
    score: *const AsfdaScore,
    buf: *mut c_char,
    capacity: usize,
    out_needed: *mut usize,
) -> AsfdaStatus {
    guard(|| string_out(&non_null(score, "score")?.0.to_json(), buf, capacity, out_needed))
}

/// Reads a score from its JSON form.
#[no_mangle]
pub extern "C" fn asfda_score_from_json(json: *const c_char, out_score: *mut *mut AsfdaScore) -> AsfdaStatus {
    guard(|| {
        check_out(out_score, "out_score")?;
        let score = Score::from_json(c_str(json, "json")?)?;
        write_out(out_score, Box::into_raw(Box::new(AsfdaScore(score))));
        Ok(())
    })
}
