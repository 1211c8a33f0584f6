"""Finding and loading libasfda.so, the ctypes declarations of the C API, and status -> exception.

Library discovery, first hit wins:

1. ``$ASFDA_LIBRARY`` (full path of libasfda.so; an error if set but not a file),
2. ``libasfda.so`` inside the installed package (package data: a wheel bundles it there),
3. the source tree's ``target/release`` then ``target/debug`` (only when this package sits in
   the asfda repository, i.e. is imported from ``bindings/python``).

ctypes.CDLL releases the GIL around every foreign call, so long calls (scoring, segmentation,
model runs, fine-tuning steps) let other Python threads run; CFUNCTYPE callbacks take the GIL back before running
Python code.
"""
from __future__ import annotations

import ctypes as C
import os
from pathlib import Path

from . import errors

#: The C ABI these declarations are written against (major, minor). Until 1.0 any minor version
#: may change the ABI (see include/asfda.h), so the library's version must match it; a test
#: checks it against Cargo.toml.
ABI_VERSION = (0, 1)

LIBRARY_NAME = "libasfda.so"
PACKAGE_DIR = Path(__file__).resolve().parent
# bindings/python/asfda -> the repository root (only meaningful when imported from the repo).
_REPO_ROOT = PACKAGE_DIR.parents[2]


def candidates() -> list[tuple[str, Path]]:
    """Where the library is looked for, in order, as (how, path) pairs."""
    found = []
    env = os.environ.get("ASFDA_LIBRARY")
    if env:
        found.append(("$ASFDA_LIBRARY", Path(env)))
    found.append(("package data", PACKAGE_DIR / LIBRARY_NAME))
    if (_REPO_ROOT / "Cargo.toml").is_file():
        for profile in ("release", "debug"):
            found.append((f"source tree target/{profile}", _REPO_ROOT / "target" / profile / LIBRARY_NAME))
    return found


def _load() -> tuple[C.CDLL, Path]:
    tried = []
    for how, path in candidates():
        if not path.is_file():
            if how == "$ASFDA_LIBRARY":
                # An explicit choice that is wrong must not silently fall back to another build.
                raise errors.LibraryNotFoundError(f"ASFDA_LIBRARY is set to {path}, which is not a file")
            tried.append(f"  {how}: {path} (not there)")
            continue
        try:
            return C.CDLL(str(path)), path
        except OSError as e:
            tried.append(f"  {how}: {path} (could not be loaded: {e})")
            if how == "$ASFDA_LIBRARY":
                raise errors.LibraryNotFoundError("\n".join(["libasfda.so could not be loaded:"] + tried)) from e
    raise errors.LibraryNotFoundError(
        "\n".join(["libasfda.so not found. Looked in:"] + tried
                  + ["Set ASFDA_LIBRARY to its full path, or run `cargo build --release` in the asfda repository."])
    )


lib, path = _load()

#: Whether libasfda.so came from this package's own data (an installed wheel), not a source tree
#: or $ASFDA_LIBRARY.
FROM_WHEEL = path == PACKAGE_DIR / LIBRARY_NAME


def default_ort_library():
    """ONNX Runtime for an installed wheel: the ``onnxruntime`` package's own library
    (``onnxruntime/capi/libonnxruntime.so.*``; the wheel depends on that package), unless the
    library came from elsewhere or ``$ASFDA_ORT_LIBRARY`` / ``$ORT_DYLIB_PATH`` choose one. None
    leaves the choice to the library's own resolution order (beside it, the user cache)."""
    if not FROM_WHEEL or os.environ.get("ASFDA_ORT_LIBRARY") or os.environ.get("ORT_DYLIB_PATH"):
        return None
    import importlib.util
    spec = importlib.util.find_spec("onnxruntime")  # found without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    capi = Path(list(spec.submodule_search_locations)[0]) / "capi"
    libs = sorted(capi.glob("libonnxruntime.so*"))
    return os.fspath(libs[-1]) if libs else None


def default_openvino_plugin():
    """The OpenVINO plugin for an installed wheel with the ``openvino`` extra
    (``pip install asfda[openvino]``): the ``onnxruntime_ep_openvino`` package's
    ``libonnxruntime_providers_openvino_plugin.so``, unless the library came from elsewhere or
    ``$ASFDA_OPENVINO_LIBRARY`` names one. None leaves the choice to the library's own resolution
    order (beside it, the user cache of ``make ort-openvino``)."""
    if not FROM_WHEEL or os.environ.get("ASFDA_OPENVINO_LIBRARY"):
        return None
    import importlib.util
    spec = importlib.util.find_spec("onnxruntime_ep_openvino")  # found without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    plugin = Path(list(spec.submodule_search_locations)[0]) / "libonnxruntime_providers_openvino_plugin.so"
    return os.fspath(plugin) if plugin.is_file() else None


# The library reads $ASFDA_OPENVINO_LIBRARY when device "openvino" or "auto" first needs the plugin.
_openvino = default_openvino_plugin()
if _openvino is not None:
    os.environ["ASFDA_OPENVINO_LIBRARY"] = _openvino


def ort_library_option(library_path):
    """The runtime options' library_path: the caller's, else :func:`default_ort_library`."""
    if library_path is None:
        library_path = default_ort_library()
    return None if library_path is None else fspath(library_path)

# ---- C types ---------------------------------------------------------------------------------

P = C.c_void_p
SIZE_P = C.POINTER(C.c_size_t)
DOUBLE_P = C.POINTER(C.c_double)

#: AsfdaProgressFn: bool (*)(void *user_data, double fraction).
PROGRESS_FN = C.CFUNCTYPE(C.c_bool, C.c_void_p, C.c_double)


class RuntimeOptions(C.Structure):
    _fields_ = [("library_path", C.c_char_p), ("device", C.c_char_p), ("threads", C.c_uint32)]


class ReadOptions(C.Structure):
    _fields_ = [
        ("max_voxels", C.c_uint64),
        ("nonfinite", C.c_int32),
        ("replace_value", C.c_float),
        ("max_bytes", C.c_uint64),
    ]


class EngineOptions(C.Structure):
    _fields_ = [
        ("bundle_path", C.c_char_p),
        ("runtime", RuntimeOptions),
        ("tile_overlap", C.c_double),
        ("tiles_per_batch", C.c_uint32),
        ("mirror", C.c_bool),
        ("memory_limit_bytes", C.c_uint64),
    ]


class CodedConcept(C.Structure):
    _fields_ = [("scheme", C.c_char_p), ("value", C.c_char_p), ("meaning", C.c_char_p)]


class ClassInfo(C.Structure):
    _fields_ = [
        ("name", C.c_char_p),
        ("has_color", C.c_bool),
        ("color", C.c_uint8 * 3),
        ("has_code", C.c_bool),
        ("category", CodedConcept),
        ("kind", CodedConcept),
    ]


class ScoreValues(C.Structure):
    _fields_ = [
        ("gap_kl", C.c_double),
        ("gap_anchor", C.c_double),
        ("asd", C.c_double),
        ("asd_threshold", C.c_double),
        ("confidence", C.c_double),
        ("foreground_fraction", C.c_double),
        ("embedding_len", C.c_size_t),
    ]


class SelectOptions(C.Structure):
    _fields_ = [
        ("method", C.c_int32),
        ("budget", C.c_size_t),
        ("seed", C.c_uint64),
        ("w_dkd", C.c_double),
        ("w_asd", C.c_double),
        ("gap", C.c_int32),
        ("duplicate_fraction", C.c_double),
        ("reliable_confidence_quantile", C.c_double),
        ("reliable_distance_quantile", C.c_double),
    ]


class Pick(C.Structure):
    _fields_ = [
        ("index", C.c_size_t),
        ("order", C.c_size_t),
        ("gap", C.c_double),
        ("gap_rank", C.c_double),
        ("diversity", C.c_double),
        ("dkd", C.c_double),
        ("dkd_rank", C.c_double),
        ("asd", C.c_double),
        ("asd_rank", C.c_double),
        ("combined", C.c_double),
    ]


class FineTuneOptions(C.Structure):
    _fields_ = [
        ("patch_size", C.c_size_t * 3),
        ("batch_size", C.c_size_t),
        ("total_steps", C.c_uint64),
        ("lr", C.c_double),
        ("weight_decay", C.c_double),
        ("poly_exponent", C.c_double),
        ("foreground_fraction", C.c_double),
        ("labeled_fraction", C.c_double),
        ("pseudo_label_threshold", C.c_double),
        ("ramp_fraction", C.c_double),
        ("pseudo_label_refresh_every", C.c_uint64),
        ("pseudo_label_min_dice", C.c_double),
        ("seed", C.c_uint64),
    ]


class StepReport(C.Structure):
    _fields_ = [
        ("loss", C.c_double),
        ("loss_ce", C.c_double),
        ("loss_dice", C.c_double),
        ("lr", C.c_double),
        ("lambda_", C.c_double),  # `lambda` is a Python keyword; the C field is `lambda`
        ("step", C.c_uint64),
        ("labeled_in_batch", C.c_size_t),
        ("pseudo_in_batch", C.c_size_t),
    ]


def _declare(name, argtypes, restype=C.c_int32):
    fn = getattr(lib, name)
    fn.argtypes, fn.restype = argtypes, restype
    return fn


STRING_OUT = [C.c_char_p, C.c_size_t, SIZE_P]

version = _declare("asfda_version", [], C.c_char_p)
last_error = _declare("asfda_last_error_message", [], C.c_char_p)
status_name = _declare("asfda_status_name", [C.c_int32], C.c_char_p)

runtime_load = _declare("asfda_runtime_load", [C.c_char_p])
runtime_info_json = _declare("asfda_runtime_info_json", STRING_OUT)

read_options_default = _declare("asfda_read_options_default", [], ReadOptions)
volume_load = _declare("asfda_volume_load", [C.c_char_p, C.POINTER(ReadOptions), C.POINTER(P)])
volume_from_buffer = _declare(
    "asfda_volume_from_buffer",
    [P, C.c_size_t, C.c_int32, SIZE_P, C.c_size_t, DOUBLE_P, DOUBLE_P, C.c_int32, C.POINTER(ReadOptions), C.POINTER(P)],
)
volume_read_dicom = _declare(
    "asfda_volume_read_dicom",
    [C.POINTER(C.c_char_p), C.c_size_t, C.c_char_p, C.POINTER(ReadOptions), C.POINTER(P)],
)
volume_from_slices = _declare(
    "asfda_volume_from_slices",
    [C.POINTER(C.POINTER(C.c_float)), C.c_size_t, C.c_size_t, C.c_size_t, DOUBLE_P, DOUBLE_P, DOUBLE_P,
     C.POINTER(ReadOptions), C.POINTER(P)],
)
volume_save = _declare("asfda_volume_save", [P, C.c_char_p, C.c_int32])
volume_write_dicom_seg = _declare(
    "asfda_volume_write_dicom_seg", [P, P, C.POINTER(C.c_char_p), C.c_size_t, C.c_char_p]
)
volume_free = _declare("asfda_volume_free", [P], None)
volume_dims = _declare("asfda_volume_dims", [P, SIZE_P, SIZE_P])
volume_spacing = _declare("asfda_volume_spacing", [P, DOUBLE_P])
volume_affine = _declare("asfda_volume_affine", [P, C.c_int32, DOUBLE_P])
volume_data = _declare("asfda_volume_data", [P, C.POINTER(C.POINTER(C.c_float)), SIZE_P])
volume_to_canonical = _declare("asfda_volume_to_canonical", [P, C.POINTER(P)])
volume_check_same_grid = _declare("asfda_volume_check_same_grid", [P, P])

model_load = _declare("asfda_model_load", [C.c_char_p, C.POINTER(RuntimeOptions), C.POINTER(P)])
model_free = _declare("asfda_model_free", [P], None)
model_device = _declare("asfda_model_device", [P] + STRING_OUT)
model_run_volume = _declare("asfda_model_run_volume", [P, P, C.POINTER(P)])

engine_options_default = _declare("asfda_engine_options_default", [], EngineOptions)
runtime_options_default = _declare("asfda_runtime_options_default", [], RuntimeOptions)
engine_new = _declare("asfda_engine_new", [C.POINTER(EngineOptions), C.POINTER(P)])
engine_free = _declare("asfda_engine_free", [P], None)
engine_device = _declare("asfda_engine_device", [P] + STRING_OUT)
engine_class_count = _declare("asfda_engine_class_count", [P, SIZE_P])
engine_class_info = _declare("asfda_engine_class_info", [P, C.c_size_t, C.POINTER(ClassInfo)])
score_volume = _declare("asfda_score_volume", [P, C.c_char_p, P, P, PROGRESS_FN, P, C.POINTER(P)])
segment_volume = _declare(
    "asfda_segment_volume", [P, P, P, PROGRESS_FN, P, C.POINTER(P), C.POINTER(P), C.POINTER(P)]
)
score_and_segment_volume = _declare(
    "asfda_score_and_segment_volume",
    [P, C.c_char_p, P, P, PROGRESS_FN, P, C.POINTER(P), C.POINTER(P), C.POINTER(P), C.POINTER(P)],
)
cancel_token_new = _declare("asfda_cancel_token_new", [C.POINTER(P)])
cancel_token_free = _declare("asfda_cancel_token_free", [P], None)
cancel_token_cancel = _declare("asfda_cancel_token_cancel", [P])
cancel_token_reset = _declare("asfda_cancel_token_reset", [P])
cancel_token_is_cancelled = _declare("asfda_cancel_token_is_cancelled", [P, C.POINTER(C.c_bool)])
score_free = _declare("asfda_score_free", [P], None)
score_values = _declare("asfda_score_values", [P, C.POINTER(ScoreValues)])
score_embedding = _declare("asfda_score_embedding", [P, C.POINTER(C.c_float), C.c_size_t])
score_to_json = _declare("asfda_score_to_json", [P] + STRING_OUT)
score_from_json = _declare("asfda_score_from_json", [C.c_char_p, C.POINTER(P)])

select_options_default = _declare("asfda_select_options_default", [], SelectOptions)
select_method_from_name = _declare("asfda_select_method_from_name", [C.c_char_p, C.POINTER(C.c_int32)])
gap_kind_from_name = _declare("asfda_gap_kind_from_name", [C.c_char_p, C.POINTER(C.c_int32)])
select = _declare(
    "asfda_select",
    [C.POINTER(P), C.c_size_t, C.POINTER(C.c_char_p), C.c_size_t, C.POINTER(SelectOptions), C.POINTER(P)],
)
selection_free = _declare("asfda_selection_free", [P], None)
selection_count = _declare("asfda_selection_count", [P], C.c_size_t)
selection_pick = _declare("asfda_selection_pick", [P, C.c_size_t, C.POINTER(Pick)])
# Borrowed strings (valid while the selection lives): c_char_p copies them into bytes at once.
selection_pick_id = _declare("asfda_selection_pick_id", [P, C.c_size_t], C.c_char_p)
selection_reliable_count = _declare("asfda_selection_reliable_count", [P], C.c_size_t)
selection_reliable_id = _declare("asfda_selection_reliable_id", [P, C.c_size_t], C.c_char_p)
selection_from_json = _declare("asfda_selection_from_json", [C.c_char_p, C.POINTER(P)])
selection_to_json = _declare("asfda_selection_to_json", [P] + STRING_OUT)

finetune_options_default = _declare("asfda_finetune_options_default", [], FineTuneOptions)
finetuner_new = _declare("asfda_finetuner_new", [P, C.POINTER(FineTuneOptions), C.POINTER(P)])
finetuner_resume = _declare("asfda_finetuner_resume", [P, C.c_char_p, C.POINTER(FineTuneOptions), C.POINTER(P)])
finetuner_free = _declare("asfda_finetuner_free", [P], None)
finetuner_add_labeled = _declare("asfda_finetuner_add_labeled", [P, C.c_char_p, P, P])
finetuner_add_unlabeled = _declare("asfda_finetuner_add_unlabeled", [P, C.c_char_p, P, DOUBLE_P])
finetune_step = _declare("asfda_finetune_step", [P, C.POINTER(StepReport)])
finetuner_classes = _declare("asfda_finetuner_classes", [P, SIZE_P])
finetuner_steps_done = _declare("asfda_finetuner_steps_done", [P, C.POINTER(C.c_uint64)])
finetuner_evaluate = _declare(
    "asfda_finetuner_evaluate", [P, C.POINTER(P), C.POINTER(P), C.c_size_t, DOUBLE_P, C.c_size_t]
)
finetuner_check_pseudo_labels = _declare(
    "asfda_finetuner_check_pseudo_labels", [P, DOUBLE_P, C.c_size_t, DOUBLE_P, C.POINTER(C.c_bool)]
)
finetuner_save_checkpoint = _declare("asfda_finetuner_save_checkpoint", [P, C.c_char_p])
finetuner_export_bundle = _declare("asfda_finetuner_export_bundle", [P, C.c_char_p])
finetuner_apply_to = _declare("asfda_finetuner_apply_to", [P, P])

# ---- log callback (asfda.log) -----------------------------------------------------------------
# Kept as one block: the declarations of include/asfda.h's log section (AsfdaLogLevel is a C
# enum, i.e. an int).

#: AsfdaLogCallback: void (*)(void *user_data, AsfdaLogLevel level, const char *message).
LOG_CALLBACK = C.CFUNCTYPE(None, C.c_void_p, C.c_int, C.c_char_p)
set_log_callback = _declare("asfda_set_log_callback", [LOG_CALLBACK, P, C.c_int32])
# ---- end of the log callback block ------------------------------------------------------------


def library_version() -> str:
    return version().decode()


def _check_abi() -> None:
    parts = library_version().split(".")
    got = (int(parts[0]), int(parts[1]))
    if got != ABI_VERSION:
        raise errors.LibraryNotFoundError(
            f"{path} is asfda {library_version()}, but these Python bindings are written for the "
            f"{ABI_VERSION[0]}.{ABI_VERSION[1]} C ABI: install the matching asfda Python package"
        )


_check_abi()


# ---- status -> exception ---------------------------------------------------------------------

def error_for(status: int) -> errors.Error:
    """The exception for a non-OK status, with this thread's last error message.

    Must be called on the thread that made the failing call, before any other asfda call
    (the message is thread-local and replaced by the next call)."""
    name = status_name(status).decode()
    message = (last_error() or b"").decode(errors="replace")
    cls = errors.BY_CODE.get(status, errors.Error)
    return cls(name, message, status)


def check(status: int) -> None:
    if status != 0:
        raise error_for(status)


def read_string(fn, *args) -> str:
    """Calls a C function with the (buf, capacity, out_needed) string convention."""
    needed = C.c_size_t()
    check(fn(*args, None, 0, C.byref(needed)))
    buf = C.create_string_buffer(needed.value)
    check(fn(*args, buf, needed.value, C.byref(needed)))
    return buf.value.decode()


def fspath(path) -> bytes:
    return c_string(os.fsencode(os.fspath(path)), "path")


def path_array(paths, empty_message: str):
    """One path or a list of them (str, bytes, os.PathLike) as a C array of C strings and its
    length; ``ValueError(empty_message)`` for an empty list."""
    if isinstance(paths, (str, bytes, os.PathLike)):
        paths = [paths]
    encoded = [fspath(p) for p in paths]
    if not encoded:
        raise ValueError(empty_message)
    return (C.c_char_p * len(encoded))(*encoded), len(encoded)


def c_string(value, what: str) -> bytes:
    """UTF-8 bytes for a C string; an embedded NUL would silently cut it short, so refuse it."""
    b = value.encode() if isinstance(value, str) else bytes(value)
    if b"\0" in b:
        raise ValueError(f"{what} contains a NUL character: {value!r}")
    return b
