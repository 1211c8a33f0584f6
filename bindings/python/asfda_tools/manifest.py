"""The bundle manifest's schema, checked without torch: the same rules as the library's reader
(``src/bundle/manifest.rs`` for types, ``src/bundle/validate.rs`` for values), with problems
named by the same field paths (``input.orientation``, ``training.optimizer.lr``, ...).

Every field is described in ``docs/manifest.md``. The golden-manifest tests
(``tests/golden_manifest.rs`` and ``bindings/python/tests/test_manifest.py``) feed the same
manifests to both readers so the two cannot drift.
"""
from __future__ import annotations

import copy
import hashlib
import math
import unicodedata
from pathlib import Path

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"

ORIENTATIONS = ("RAS",)
LAYOUTS = ("NCZYX",)
LOSS_KINDS = ("dice_ce",)
OPTIMIZER_KINDS = ("adamw",)
ZSCORE_MASKS = ("nonzero", "all")
# Keys each normalisation kind needs besides "kind" ("mask" of zscore is optional).
# Upper bounds of numbers that size allocations (src/bundle/validate.rs has the same).
MAX_PATCH = 1024
MAX_CHANNELS = 1024
MAX_FEATURE_CHANNELS = 65536
MAX_ANCHORS = 65536
MAX_CLASSES = 65536
# The plausible voxel spacing in mm (crate::volume::PLAUSIBLE_SPACING_MM).
PLAUSIBLE_SPACING_MM = (1e-3, 1e3)
NORMALIZATION_KEYS = {"zscore": set(), "ct_window": {"lower", "upper", "mean", "std"},
                      "percentile": {"lower", "upper"}}


class ManifestError(ValueError):
    """A manifest the library would refuse; ``problems`` lists each as ``field.path: ...``."""

    def __init__(self, problems):
        super().__init__("; ".join(problems))
        self.problems = list(problems)


def is_plain_relative(name):
    """Whether a bundle file name is a plain relative path inside the bundle folder: not empty,
    no leading ``/``, no ``.``/``..``/empty segments, no backslash or NUL (the library's rule)."""
    return (isinstance(name, str) and name != "" and "\\" not in name and "\0" not in name
            and all(seg not in ("", ".", "..") for seg in name.split("/")))


def is_sha256_hex(v):
    """Whether ``v`` is a SHA-256 written as 64 lowercase hex digits."""
    return isinstance(v, str) and len(v) == 64 and all(ch in "0123456789abcdef" for ch in v)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class _Checker:
    def __init__(self):
        self.problems = []

    def bad(self, path, what):
        self.problems.append(f"{path}: {what}")

    def field(self, obj, path, key, check, optional=False):
        """obj[key] checked by ``check(value, path)``; a missing key is a problem unless optional."""
        full = f"{path}.{key}" if path else key
        if not isinstance(obj, dict) or key not in obj or (optional and obj[key] is None):
            if not optional:
                self.bad(full, "missing (required)")
            return None
        return check(obj[key], full)

    # Types ---------------------------------------------------------------------------------
    def obj(self, v, path):
        if not isinstance(v, dict):
            self.bad(path, f"invalid type: expected an object, got {v!r}")
            return None
        return v

    def string(self, v, path):
        if not isinstance(v, str):
            self.bad(path, f"invalid type: expected a string, got {v!r}")
            return None
        return v

    def uint(self, v, path):
        if not _is_int(v) or v < 0:
            self.bad(path, f"invalid type: expected a non-negative integer, got {v!r}")
            return None
        return v

    def int(self, v, path):
        if not _is_int(v):
            self.bad(path, f"invalid type: expected an integer, got {v!r}")
            return None
        return v

    def num(self, v, path):
        if not _is_num(v):
            self.bad(path, f"invalid type: expected a number, got {v!r}")
            return None
        return float(v)

    def boolean(self, v, path):
        if not isinstance(v, bool):
            self.bad(path, f"invalid type: expected a boolean, got {v!r}")
            return None
        return v

    def list_of(self, item, length=None):
        def check(v, path):
            if not isinstance(v, list) or (length is not None and len(v) != length):
                n = f" of length {length}" if length is not None else ""
                self.bad(path, f"invalid type: expected an array{n}, got {v!r}")
                return None
            out = [item(x, path) for x in v]
            return None if any(x is None for x in out) else out
        return check

    def enum(self, allowed):
        def check(v, path):
            if v not in allowed:
                self.bad(path, f"unknown variant {v!r}, expected one of {', '.join(map(repr, allowed))}")
                return None
            return v
        return check


def input_problems(spec, path="input"):
    """Problems of an ``input`` spec (channels, patch, spacing, orientation, normalisation)."""
    c = _Checker()
    _input(c, spec, path)
    return c.problems


def _input(c, spec, path):
    if c.obj(spec, path) is None:
        return
    channels = c.field(spec, path, "channels", c.uint)
    patch = c.field(spec, path, "patch_size", c.list_of(c.uint, 3))
    div = c.field(spec, path, "size_divisible_by", c.uint)
    spacing = c.field(spec, path, "spacing_mm", c.list_of(c.num, 3))
    c.field(spec, path, "orientation", c.enum(ORIENTATIONS))
    norm = c.field(spec, path, "normalization", c.obj)
    if channels == 0:
        c.bad(f"{path}.channels", "must be at least 1, got 0")
    if div == 0:
        c.bad(f"{path}.size_divisible_by", "must be at least 1, got 0")
    if patch is not None and div is not None and any(s == 0 or s % max(div, 1) for s in patch):
        c.bad(f"{path}.patch_size", f"{patch} is not a positive multiple of size_divisible_by {div}")
    if channels is not None and channels > MAX_CHANNELS:
        c.bad(f"{path}.channels", f"must be at most {MAX_CHANNELS}, got {channels}")
    if patch is not None and any(s > MAX_PATCH for s in patch):
        c.bad(f"{path}.patch_size", f"{patch} must each be at most {MAX_PATCH}")
    lo, hi = PLAUSIBLE_SPACING_MM
    if spacing is not None and not all(math.isfinite(s) and s > 0 for s in spacing):
        c.bad(f"{path}.spacing_mm", f"{spacing} must be finite and positive")
    elif spacing is not None and not all(lo <= s <= hi for s in spacing):
        c.bad(f"{path}.spacing_mm", f"{spacing} is implausible (each must be in {lo}..={hi} mm)")
    if norm is not None:
        _normalization(c, norm, f"{path}.normalization")


def _normalization(c, norm, path):
    kind = c.field(norm, path, "kind", c.enum(tuple(NORMALIZATION_KEYS)))
    if kind is None:
        return
    v = {k: c.field(norm, path, k, c.num) for k in sorted(NORMALIZATION_KEYS[kind])}
    if kind == "zscore":
        c.field(norm, path, "mask", c.enum(ZSCORE_MASKS), optional=True)
    if any(x is None for x in v.values()):
        return
    if kind == "ct_window":
        for k in ("lower", "upper", "mean", "std"):
            if not math.isfinite(v[k]):
                c.bad(f"{path}.{k}", f"must be finite, got {v[k]}")
        if v["lower"] > v["upper"]:
            c.bad(f"{path}.upper", f"{v['upper']} is below lower {v['lower']} (ct_window)")
        if math.isfinite(v["std"]) and v["std"] <= 0:
            c.bad(f"{path}.std", f"must be > 0, got {v['std']} (ct_window)")
    elif kind == "percentile":
        for k in ("lower", "upper"):
            if not 0 <= v[k] <= 100:
                c.bad(f"{path}.{k}", f"must be a percentile in [0, 100], got {v[k]}")
        if v["lower"] > v["upper"]:
            c.bad(f"{path}.upper", f"{v['upper']} is below lower {v['lower']} (percentile)")


def manifest_problems(m):
    """Every problem of a manifest (a dict, as read from ``manifest.json``), each
    ``field.path: ...``; empty when the library's reader accepts it (files not checked)."""
    c = _Checker()
    if c.obj(m, "manifest") is None:
        return c.problems
    version = c.field(m, "", "format_version", c.uint)
    name = c.field(m, "", "name", c.string)
    classes = c.field(m, "", "classes", lambda v, p: _classes(c, v, p))
    fg = c.field(m, "", "foreground_classes", c.list_of(c.uint))
    spec = c.field(m, "", "input", c.obj)
    if spec is not None:
        _input(c, spec, "input")
    inf = c.field(m, "", "inference", c.obj)
    if inf is not None:
        for k in ("file", "input", "logits", "features"):
            c.field(inf, "inference", k, c.string)
        fc = c.field(inf, "inference", "feature_channels", c.uint)
        if fc == 0:
            c.bad("inference.feature_channels", "must be at least 1, got 0")
        if fc is not None and fc > MAX_FEATURE_CHANNELS:
            c.bad("inference.feature_channels", f"must be at most {MAX_FEATURE_CHANNELS}, got {fc}")
        c.field(inf, "inference", "layout", c.enum(LAYOUTS))
    training = c.field(m, "", "training", c.obj, optional=True)
    if training is not None:
        _training(c, training, classes)
    knowledge = c.field(m, "", "source_knowledge", c.obj, optional=True)
    if knowledge is not None:
        p = "source_knowledge"
        c.field(knowledge, p, "file", c.string)
        tensors = c.field(knowledge, p, "tensors", c.obj)
        if tensors is not None:
            for k in ("mean", "var", "anchors"):
                c.field(tensors, f"{p}.tensors", k, c.string)
        k = c.field(knowledge, p, "k", c.uint)
        if k == 0:
            c.bad(f"{p}.k", "must be at least 1, got 0")
        if k is not None and k > MAX_ANCHORS:
            c.bad(f"{p}.k", f"must be at most {MAX_ANCHORS}, got {k}")
        for k in ("tiles", "volumes"):
            c.field(knowledge, p, k, c.uint, optional=True)

    if version is not None and version != FORMAT_VERSION:
        c.bad("format_version", f"{version} is not supported (this asfda reads {FORMAT_VERSION})")
    if name == "":
        c.bad("name", "must not be empty")
    files = named_files(m)
    for field, name in files:
        if isinstance(name, str) and not is_plain_relative(name):
            c.bad(field, f"{name!r} must be a plain relative path inside the bundle folder "
                         "(not empty, not absolute, no '..')")
    digests = c.field(m, "", "sha256", c.obj, optional=True)
    if digests is not None:
        names = {name for _, name in files}
        for field, name in files:
            if isinstance(name, str) and name not in digests:
                c.bad("sha256", f"has no digest of {name!r} ({field})")
        for name, digest in digests.items():
            if name not in names:
                c.bad(f"sha256.{name}", f"{name!r} is not a file the manifest names")
            elif not is_sha256_hex(digest):
                c.bad(f"sha256.{name}", f"{digest!r} is not a SHA-256 (64 lowercase hex digits)")
    if classes is not None and len(classes) > MAX_CLASSES:
        c.bad("classes", f"must be at most {MAX_CLASSES}, got {len(classes)}")
    if classes is not None and len(classes) < 2:
        c.bad("classes", f"need background and at least one class, got {classes}")
    if fg is not None and classes is not None and (not fg or any(i == 0 or i >= len(classes) for i in fg)):
        c.bad("foreground_classes", f"{fg} must be class indices in 1..{len(classes)}")
    return c.problems


def named_files(m):
    """Every file the manifest ``m`` names, as (field, name), in the library's order
    (``inference.file``, ``training.train_step``, ``training.checkpoint``,
    ``source_knowledge.file``); names that are not strings are left out."""
    out = []

    def add(section, key):
        obj = m.get(section) if isinstance(m, dict) else None
        if isinstance(obj, dict) and isinstance(obj.get(key), str):
            out.append((f"{section}.{key}", obj[key]))
    add("inference", "file")
    add("training", "train_step")
    add("training", "checkpoint")
    add("source_knowledge", "file")
    return out


def sha256_file(path):
    """The SHA-256 of the file at ``path`` as 64 lowercase hex digits (read in a stream)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digests(bundle_dir, m):
    """The manifest's ``sha256`` field for the bundle at ``bundle_dir``: the digest of every file
    ``m`` names (the library verifies each at load)."""
    return {name: sha256_file(Path(bundle_dir) / name) for _, name in named_files(m)}


def _classes(c, v, path):
    """The ``classes`` array: each entry a name, or an object {name, color, code} (see
    ``src/bundle/classes.rs``); returns the names, or None when the array is unusable."""
    if not isinstance(v, list):
        c.bad(path, f"invalid type: expected an array, got {v!r}")
        return None
    names = [_class(c, item, f"{path}.{i}") for i, item in enumerate(v)]
    for i, name in enumerate(names):
        if name is not None and name in names[:i]:
            c.bad(f"{path}.{i}.name", f"'{name}' is the name of an earlier class too")
    return None if any(n is None for n in names) else names


def _class(c, v, path):
    if isinstance(v, str):
        name = v
    elif isinstance(v, dict):
        name = c.field(v, path, "name", c.string)
        c.field(v, path, "color", c.list_of(_byte(c), 3), optional=True)
        code = c.field(v, path, "code", c.obj, optional=True)
        if code is not None:
            for kind in ("category", "type"):
                concept = c.field(code, f"{path}.code", kind, c.obj)
                if concept is not None:
                    _concept(c, concept, f"{path}.code.{kind}")
    else:
        c.bad(path, f"must be a class name or an object {{\"name\", \"color\", \"code\"}}, got {v!r}")
        return None
    if name is not None and not name.strip():
        c.bad(f"{path}.name", "must not be empty")
    if name is not None and _has_control(name):
        c.bad(f"{path}.name", f"must not contain control characters, got {name!r}")
    return name


def _byte(c):
    def check(v, path):
        if not _is_int(v) or not 0 <= v <= 255:
            c.bad(path, f"invalid value: expected an integer 0..255, got {v!r}")
            return None
        return v
    return check


def _concept(c, concept, path):
    # The lengths of DICOM's SH (scheme) and LO (value, meaning) value representations.
    for key, most in (("scheme", 16), ("value", 64), ("meaning", 64)):
        text = c.field(concept, path, key, c.string)
        if text is not None and (not text.strip() or len(text) > most or _has_control(text)):
            c.bad(f"{path}.{key}", f"must be 1 to {most} characters, none a control character, got {text!r}")


def _has_control(text):
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def _training(c, t, classes):
    p = "training"
    for k in ("train_step", "checkpoint"):
        c.field(t, p, k, c.string)

    def parameter(v, path):
        if c.obj(v, path) is None:
            return None
        for k in ("name", "initializer"):
            c.field(v, path, k, c.string)
        c.field(v, path, "shape", c.list_of(c.uint))
        c.field(v, path, "trainable", c.boolean)
        return v

    c.field(t, p, "parameters", c.list_of(parameter))
    c.field(t, p, "frozen", c.list_of(c.string))
    loss = c.field(t, p, "loss", c.obj)
    if loss is not None:
        c.field(loss, f"{p}.loss", "kind", c.enum(LOSS_KINDS))
        ignore = c.field(loss, f"{p}.loss", "ignore_label", c.int)
        smooth = c.field(loss, f"{p}.loss", "dice_smooth", c.num)
        if ignore is not None and classes is not None and 0 <= ignore < len(classes):
            c.bad(f"{p}.loss.ignore_label", f"{ignore} is a class index")
        if smooth is not None and not (math.isfinite(smooth) and smooth >= 0):
            c.bad(f"{p}.loss.dice_smooth", f"must be finite and >= 0, got {smooth}")
    opt = c.field(t, p, "optimizer", c.obj)
    if opt is not None:
        q = f"{p}.optimizer"
        c.field(opt, q, "kind", c.enum(OPTIMIZER_KINDS))
        lr = c.field(opt, q, "lr", c.num)
        betas = c.field(opt, q, "betas", c.list_of(c.num, 2))
        eps = c.field(opt, q, "eps", c.num)
        wd = c.field(opt, q, "weight_decay", c.num)
        if lr is not None and not (math.isfinite(lr) and lr > 0):
            c.bad(f"{q}.lr", f"must be finite and > 0, got {lr}")
        if betas is not None and not all(0 <= b < 1 for b in betas):
            c.bad(f"{q}.betas", f"{betas} must each be in [0, 1)")
        if eps is not None and not (math.isfinite(eps) and eps > 0):
            c.bad(f"{q}.eps", f"must be finite and > 0, got {eps}")
        if wd is not None and not (math.isfinite(wd) and wd >= 0):
            c.bad(f"{q}.weight_decay", f"must be finite and >= 0, got {wd}")
    io = c.field(t, p, "io", c.obj)
    if io is not None:
        for k in ("image", "labels", "loss_weight", "lr", "step", "weight_decay", "loss", "loss_ce",
                  "loss_dice", "param_prefix", "m_prefix", "v_prefix", "new_prefix",
                  "step_checkpoint_key"):
            c.field(io, f"{p}.io", k, c.string)
        for k in ("inputs", "outputs"):
            c.field(io, f"{p}.io", k, c.list_of(c.string))


def validate_manifest(m):
    """Raise :class:`ManifestError` (a ``ValueError``) naming every problem of ``m``."""
    problems = manifest_problems(m)
    if problems:
        raise ManifestError(problems)
    return m


def edited_manifest(manifest, case):
    """A copy of ``manifest`` with a case of ``tests/data/golden_manifest_cases.json`` applied:
    ``set`` and ``remove`` name fields by dotted paths (list items by index: ``outputs.0.name``).
    The golden-manifest test and the fuzz seed script build their variants with it."""
    m = copy.deepcopy(manifest)
    for path, value in case.get("set", {}).items():
        parent, key = _parent(m, path)
        parent[key] = value
    for path in case.get("remove", []):
        parent, key = _parent(m, path)
        del parent[key]
    return m


def _parent(m, path):
    *head, key = path.split(".")
    for seg in head:
        m = m[int(seg)] if isinstance(m, list) else m[seg]
    return m, (int(key) if isinstance(m, list) else key)
