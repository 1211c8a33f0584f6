//! C ABI for engines (a loaded bundle) and scores: `asfda_engine_new`, `asfda_score_volume`,
//! `asfda_segment_volume`, score accessors and JSON.

use std::ffi::{c_char, c_void, CString};

use super::runtime::{asfda_runtime_options_default, runtime_options_from, AsfdaRuntimeOptions};
use super::volume::{into_handle, AsfdaVolume};
use super::{c_path, c_str, check_out, free_handle, guard, non_null, string_out, write_out, AsfdaStatus};
use crate::bundle::{ClassInfo, CodedConcept};
use crate::cancel::CancelToken;
use crate::engine::{Engine, EngineOptions, SegmentOutputs, Segmentation};
use crate::error::{Error, Result};
use crate::score::Score;
use crate::window::WindowOptions;

/// A loaded model bundle ready to segment and score. Thread-safe: one engine may score volumes
/// from several threads at once (model runs are serialised; results equal serial ones).
pub struct AsfdaEngine(pub(crate) Engine, ClassStrings);

/// A coded concept as DICOM writes one (CodingSchemeDesignator, CodeValue, CodeMeaning), e.g.
/// "SCT", "389080008", "White Matter". NUL-terminated UTF-8.
#[repr(C)]
pub struct AsfdaCodedConcept {
    pub scheme: *const c_char,
    pub value: *const c_char,
    pub meaning: *const c_char,
}

/// One output class of the engine's model, from the bundle's manifest. The strings belong to the
/// engine and stay valid until asfda_engine_free().
#[repr(C)]
pub struct AsfdaClassInfo {
    /// The class name (index 0 is background).
    pub name: *const c_char,
    /// Whether `color` holds the manifest's display colour (else the host chooses one).
    pub has_color: bool,
    /// Display colour, sRGB 0-255.
    pub color: [u8; 3],
    /// Whether `category` and `kind` hold the class's coded meaning (DICOM SEG's segmented
    /// property category and type); their strings are NULL otherwise.
    pub has_code: bool,
    pub category: AsfdaCodedConcept,
    /// The manifest's `code.type`.
    pub kind: AsfdaCodedConcept,
}

/// NUL-terminated copies of the manifest's class strings, made once per engine so that
/// AsfdaClassInfo can point into them.
pub(crate) struct ClassStrings(Vec<(CString, Option<[[CString; 3]; 2]>)>);

impl ClassStrings {
    fn new(classes: &[ClassInfo]) -> Result<ClassStrings> {
        // The manifest check refuses control characters, so a NUL here is a bug, not input.
        let c = |s: &str| CString::new(s).map_err(|_| Error::internal(format!("class string {s:?} holds a NUL")));
        let concept = |k: &CodedConcept| Ok::<_, Error>([c(&k.scheme)?, c(&k.value)?, c(&k.meaning)?]);
        let entries = classes
            .iter()
            .map(|class| {
                let code = match &class.code {
                    Some(code) => Some([concept(&code.category)?, concept(&code.kind)?]),
                    None => None,
                };
                Ok((c(&class.name)?, code))
            })
            .collect::<Result<_>>()?;
        Ok(ClassStrings(entries))
    }
}

/// The scores of one volume (see method.md). Immutable.
pub struct AsfdaScore(pub(crate) Score);

/// Engine settings. Start from asfda_engine_options_default() and set what you need.
#[repr(C)]
pub struct AsfdaEngineOptions {
    /// Folder of the model bundle (holds manifest.json). Required.
    pub bundle_path: *const c_char,
    /// Where to find ONNX Runtime and where to run (asfda_runtime_options_default()).
    pub runtime: AsfdaRuntimeOptions,
    /// Fraction of a tile shared with its neighbour, in [0, 1). Default 0.5.
    pub tile_overlap: f64,
    /// Tiles per ONNX Runtime run. Default 2.
    pub tiles_per_batch: u32,
    /// Average 8 mirrored passes (8x slower). Default false.
    pub mirror: bool,
    /// Refuse calls whose estimated working memory passes this many bytes (0 = no limit): the
    /// peak of asfda's own buffers, the input volume and the outputs asked for included (ONNX
    /// Runtime's arena is not), checked before any allocation; ASFDA_STATUS_TOO_LARGE names it.
    pub memory_limit_bytes: u64,
}

/// Progress callback: `fraction` in [0, 1]; return false to cancel (the call then returns
/// ASFDA_STATUS_CANCELLED and the engine stays usable). Called on the calling thread after
/// every batch of tiles, so it stops a call between batches; to stop a model run in flight,
/// use an AsfdaCancelToken.
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
        runtime: asfda_runtime_options_default(),
        tile_overlap: window.overlap,
        tiles_per_batch: window.tiles_per_batch as u32,
        mirror: window.mirror,
        memory_limit_bytes: 0,
    }
}

fn engine_options(o: &AsfdaEngineOptions) -> Result<EngineOptions> {
    let runtime = runtime_options_from(&o.runtime, "options->runtime")?;
    let window = WindowOptions {
        overlap: o.tile_overlap,
        tiles_per_batch: o.tiles_per_batch as usize,
        mirror: o.mirror,
        ..Default::default()
    };
    Ok(EngineOptions { runtime, window, memory_limit_bytes: o.memory_limit_bytes, ..Default::default() })
}

/// Loads and validates a model bundle and creates its inference session.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_engine_new(
    options: *const AsfdaEngineOptions,
    out_engine: *mut *mut AsfdaEngine,
) -> AsfdaStatus {
    guard(|| {
        check_out(out_engine, "out_engine")?;
        let o = non_null(options, "options")?;
        let bundle = c_path(o.bundle_path, "options->bundle_path")?;
        let engine = Engine::new(&bundle, engine_options(o)?)?;
        let classes = ClassStrings::new(&engine.bundle().manifest().classes)?;
        write_out(out_engine, Box::into_raw(Box::new(AsfdaEngine(engine, classes))));
        Ok(())
    })
}

/// Frees an engine; NULL is a no-op.
#[no_mangle]
pub extern "C" fn asfda_engine_free(engine: *mut AsfdaEngine) {
    free_handle(engine);
}

/// The device inference runs on ("cpu", "openvino" or "cuda:N"), copied like asfda_runtime_info_json.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_engine_device(
    engine: *const AsfdaEngine,
    buf: *mut c_char,
    capacity: usize,
    out_needed: *mut usize,
) -> AsfdaStatus {
    guard(|| string_out(&non_null(engine, "engine")?.0.device().to_string(), buf, capacity, out_needed))
}

/// How many output classes the engine's model has (background included).
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_engine_class_count(engine: *const AsfdaEngine, out_count: *mut usize) -> AsfdaStatus {
    guard(|| {
        check_out(out_count, "out_count")?;
        write_out(out_count, non_null(engine, "engine")?.1 .0.len());
        Ok(())
    })
}

/// Class `index` (0 = background) of the engine's model: name, display colour and coded meaning,
/// as the bundle's manifest gives them. An index past the last class is
/// ASFDA_STATUS_INVALID_ARGUMENT.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_engine_class_info(
    engine: *const AsfdaEngine,
    index: usize,
    out_info: *mut AsfdaClassInfo,
) -> AsfdaStatus {
    guard(|| {
        check_out(out_info, "out_info")?;
        let engine = non_null(engine, "engine")?;
        let classes = &engine.0.bundle().manifest().classes;
        let (Some(class), Some((name, code))) = (classes.get(index), engine.1 .0.get(index)) else {
            return Err(Error::invalid_argument(format!(
                "class index {index} is out of range: the model has {} classes",
                classes.len()
            )));
        };
        let concept = |k: Option<&[CString; 3]>| AsfdaCodedConcept {
            scheme: k.map_or(std::ptr::null(), |k| k[0].as_ptr()),
            value: k.map_or(std::ptr::null(), |k| k[1].as_ptr()),
            meaning: k.map_or(std::ptr::null(), |k| k[2].as_ptr()),
        };
        let info = AsfdaClassInfo {
            name: name.as_ptr(),
            has_color: class.color.is_some(),
            color: class.color.unwrap_or_default(),
            has_code: code.is_some(),
            category: concept(code.as_ref().map(|c| &c[0])),
            kind: concept(code.as_ref().map(|c| &c[1])),
        };
        write_out(out_info, info);
        Ok(())
    })
}

/// Adapts a C callback to the engine's progress closure.
fn progress_closure(callback: AsfdaProgressFn, user_data: *mut c_void) -> impl FnMut(f64) -> bool {
    move |fraction| callback.is_none_or(|f| f(user_data, fraction))
}

/// A cancel token for score and segment calls. asfda_cancel_token_cancel() stops the calls
/// using it as soon as possible, including an ONNX Runtime run in flight; they return
/// ASFDA_STATUS_CANCELLED and the engine stays usable. Cancelling is thread-safe (call it from
/// any thread while a call runs) and idempotent. A token stays cancelled until
/// asfda_cancel_token_reset(). Needs no engine and no ONNX Runtime to create. Do not free a token
/// while a call uses it.
pub struct AsfdaCancelToken(CancelToken);

/// Creates a cancel token (not cancelled); free it with asfda_cancel_token_free().
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_cancel_token_new(out_token: *mut *mut AsfdaCancelToken) -> AsfdaStatus {
    guard(|| {
        check_out(out_token, "out_token")?;
        write_out(out_token, Box::into_raw(Box::new(AsfdaCancelToken(CancelToken::new()?))));
        Ok(())
    })
}

/// Cancels: every call using the token stops (also one whose model run is in flight) and
/// returns ASFDA_STATUS_CANCELLED; calls started later with it return ASFDA_STATUS_CANCELLED
/// before running the model. Thread-safe; cancelling twice is the same as once.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_cancel_token_cancel(token: *const AsfdaCancelToken) -> AsfdaStatus {
    guard(|| {
        non_null(token, "token")?.0.cancel();
        Ok(())
    })
}

/// Un-cancels the token so it can serve further calls. Call it only while no call uses the
/// token (a call in flight may or may not see the reset).
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_cancel_token_reset(token: *const AsfdaCancelToken) -> AsfdaStatus {
    guard(|| non_null(token, "token")?.0.reset())
}

/// Whether the token is cancelled.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_cancel_token_is_cancelled(
    token: *const AsfdaCancelToken,
    out_cancelled: *mut bool,
) -> AsfdaStatus {
    guard(|| {
        check_out(out_cancelled, "out_cancelled")?;
        let cancelled = non_null(token, "token")?.0.is_cancelled();
        write_out(out_cancelled, cancelled);
        Ok(())
    })
}

/// Frees a token; NULL is a no-op.
#[no_mangle]
pub extern "C" fn asfda_cancel_token_free(token: *mut AsfdaCancelToken) {
    free_handle(token);
}

/// The caller's token, or a private one when `cancel` is NULL.
fn token(cancel: *const AsfdaCancelToken, private: &mut Option<CancelToken>) -> Result<&CancelToken> {
    // SAFETY: a non-NULL token comes from asfda_cancel_token_new and outlives the call (contract).
    match unsafe { cancel.as_ref() } {
        Some(c) => Ok(&c.0),
        None => Ok(private.insert(CancelToken::new()?)),
    }
}

/// Scores one volume for how informative annotating it would be. `id` names it in the score
/// (e.g. a file name or series UID). `cancel` may be NULL (then only the progress callback can
/// stop the call); `progress` may be NULL; `user_data` is passed to `progress`. The argument
/// order is Rust's `Engine::score(id, volume, cancel, progress)`.
#[no_mangle]
#[must_use]
pub extern "C" fn asfda_score_volume(
    engine: *const AsfdaEngine,
    id: *const c_char,
    volume: *const AsfdaVolume,
    cancel: *const AsfdaCancelToken,
    progress: AsfdaProgressFn,
    user_data: *mut c_void,
    out_score: *mut *mut AsfdaScore,
) -> AsfdaStatus {
    guard(|| {
        check_out(out_score, "out_score")?;
        let engine = &non_null(engine, "engine")?.0;
        let volume = &non_null(volume, "volume")?.0;
        let id = c_str(id, "id")?;
        let mut private = None;
        let cancel = token(cancel, &mut private)?;
        let score = engine.score(id, volume, cancel, &mut progress_closure(progress, user_data))?;
        write_out(out_score, Box::into_raw(Box::new(AsfdaScore(score))));
        Ok(())
    })
}

/// Segments one volume; every output is on the volume's own grid (dims and affine).
///
/// - `out_labels` (required): the class index per voxel, one channel.
/// - `out_probabilities` (may be NULL = not computed): the per-class softmax probabilities, one
///   channel per class (channel c = class c); they sum to 1 per voxel. On a resampled grid they
///   are interpolated, so their argmax may differ from the (nearest-neighbour) labels at borders.
///   Asking for them holds a float map of (classes x volume voxels): check the memory limit.
/// - `out_entropy` (may be NULL = not computed): the normalised predictive entropy in [0, 1],
///   one channel.
///
/// `cancel` and `progress` may be NULL (argument order of Rust's `Engine::segment`). Free every volume returned with asfda_volume_free().
#[no_mangle]
#[must_use]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn asfda_segment_volume(
    engine: *const AsfdaEngine,
    volume: *const AsfdaVolume,
    cancel: *const AsfdaCancelToken,
    progress: AsfdaProgressFn,
    user_data: *mut c_void,
    out_labels: *mut *mut AsfdaVolume,
    out_probabilities: *mut *mut AsfdaVolume,
    out_entropy: *mut *mut AsfdaVolume,
) -> AsfdaStatus {
    guard(|| {
        check_out(out_labels, "out_labels")?;
        let engine = &non_null(engine, "engine")?.0;
        let volume = &non_null(volume, "volume")?.0;
        let mut private = None;
        let cancel = token(cancel, &mut private)?;
        let outputs = SegmentOutputs { probabilities: !out_probabilities.is_null(), entropy: !out_entropy.is_null() };
        let seg = engine.segment(volume, outputs, cancel, &mut progress_closure(progress, user_data))?;
        write_segmentation(seg, outputs, out_labels, out_probabilities, out_entropy)
    })
}

/// Scores and segments one volume from a single inference: the score of asfda_score_volume and
/// the maps of asfda_segment_volume (the same values, bit for bit), in about half the time of
/// the two calls. Arguments as those two: `id` names the volume in the score; `out_score` and
/// `out_labels` are required, `out_probabilities` and `out_entropy` may be NULL (not computed).
/// On failure nothing is written. Free the score with asfda_score_free() and every volume with
/// asfda_volume_free().
#[no_mangle]
#[must_use]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn asfda_score_and_segment_volume(
    engine: *const AsfdaEngine,
    id: *const c_char,
    volume: *const AsfdaVolume,
    cancel: *const AsfdaCancelToken,
    progress: AsfdaProgressFn,
    user_data: *mut c_void,
    out_score: *mut *mut AsfdaScore,
    out_labels: *mut *mut AsfdaVolume,
    out_probabilities: *mut *mut AsfdaVolume,
    out_entropy: *mut *mut AsfdaVolume,
) -> AsfdaStatus {
    guard(|| {
        check_out(out_score, "out_score")?;
        check_out(out_labels, "out_labels")?;
        let engine = &non_null(engine, "engine")?.0;
        let volume = &non_null(volume, "volume")?.0;
        let id = c_str(id, "id")?;
        let mut private = None;
        let cancel = token(cancel, &mut private)?;
        let outputs = SegmentOutputs { probabilities: !out_probabilities.is_null(), entropy: !out_entropy.is_null() };
        let (score, seg) =
            engine.score_and_segment(id, volume, outputs, cancel, &mut progress_closure(progress, user_data))?;
        write_segmentation(seg, outputs, out_labels, out_probabilities, out_entropy)?;
        write_out(out_score, Box::into_raw(Box::new(AsfdaScore(score))));
        Ok(())
    })
}

/// Hands the maps of `seg` to the caller's out-parameters (those `outputs` asked for).
fn write_segmentation(
    seg: Segmentation,
    outputs: SegmentOutputs,
    out_labels: *mut *mut AsfdaVolume,
    out_probabilities: *mut *mut AsfdaVolume,
    out_entropy: *mut *mut AsfdaVolume,
) -> Result<()> {
    if outputs.probabilities != seg.probabilities.is_some() || outputs.entropy != seg.entropy.is_some() {
        return Err(Error::internal("the engine did not return the maps asked for"));
    }
    write_out(out_labels, into_handle(seg.labels));
    if let Some(p) = seg.probabilities {
        write_out(out_probabilities, into_handle(p));
    }
    if let Some(h) = seg.entropy {
        write_out(out_entropy, into_handle(h));
    }
    Ok(())
}

/// Frees a score; NULL is a no-op.
#[no_mangle]
pub extern "C" fn asfda_score_free(score: *mut AsfdaScore) {
    free_handle(score);
}

/// The scalar scores.
#[no_mangle]
#[must_use]
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
#[must_use]
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
#[must_use]
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
#[must_use]
pub extern "C" fn asfda_score_from_json(json: *const c_char, out_score: *mut *mut AsfdaScore) -> AsfdaStatus {
    guard(|| {
        check_out(out_score, "out_score")?;
        let score = Score::from_json(c_str(json, "json")?)?;
        write_out(out_score, Box::into_raw(Box::new(AsfdaScore(score))));
        Ok(())
    })
}
