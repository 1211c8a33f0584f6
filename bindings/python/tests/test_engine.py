"""Engine.score / Engine.segment through the C ABI on the demo bundle and the synthetic sites:
values against facts the library guarantees, JSON and JSON-lines round trips, segmentation Dice,
progress, cancellation, exceptions from callbacks, error classes, and the GIL being released."""
import ctypes as C
import os
import signal
import sys
import threading
import time

import nibabel as nib
import numpy as np
import pytest

import asfda
from asfda import _lib
from synthetic_data import BUNDLE, dice, image, label


@pytest.fixture(scope="module")
def engine():
    return asfda.Engine(BUNDLE, threads=2)


@pytest.fixture(scope="module")
def t1():
    return asfda.Volume.load(image("t1", "test", 0))


@pytest.fixture(scope="module")
def t1_scored(engine, t1):
    fractions = []
    score = engine.score("t1_test_000", t1, progress=fractions.append)
    return score, fractions


@pytest.fixture(scope="module")
def small(t1):
    """A 128x64x64 crop (2 mm voxels): 3 tiles of 64^3, so a few progress reports, quickly."""
    a = t1.view()[:128, 26:90, 16:80]
    assert a.shape[0] >= 96
    a = np.ascontiguousarray(np.pad(a, ((0, 128 - a.shape[0]), (0, 0), (0, 0))))
    return asfda.Volume.from_array(a, t1.affine)


@pytest.fixture(scope="module")
def small_engine():
    """One tile per ORT run: one progress report per tile."""
    return asfda.Engine(BUNDLE, threads=2, tiles_per_batch=1)


# ---- scores -------------------------------------------------------------------------------------

def test_score_values_agree_with_the_json_and_the_definitions(t1_scored, t1):
    s, _ = t1_scored
    d = s.to_dict()
    assert s.id == "t1_test_000" and s.format_version == 1
    for name in asfda.score.VALUES:  # C accessor == exact JSON value
        assert getattr(s, name) == d[name], name
    emb = s.embedding
    assert emb.dtype == np.float32 and emb.shape == (len(d["embedding"]),)
    np.testing.assert_array_equal(emb, np.asarray(d["embedding"], dtype=np.float32))
    assert abs(np.linalg.norm(emb.astype(np.float64)) - 1.0) < 1e-4  # L2-normalised
    assert s.voxels == int(np.prod(t1.dims))
    assert int(s.entropy_histogram.sum()) == s.foreground_voxels <= s.voxels
    assert len(s.entropy_histogram) == s.options["histogram_bins"]
    assert 0.0 <= s.asd_threshold <= s.asd <= 1.0
    # A source-site volume: the model is confident and finds the brain.
    assert 0.9 < s.confidence <= 1.0
    assert 0.05 < s.foreground_fraction < 0.6
    assert s.summary() == {"id": s.id, **{k: d[k] for k in asfda.score.VALUES}}


def test_score_json_round_trip_is_exact(t1_scored):
    s, _ = t1_scored
    back = asfda.Score.from_json(s.to_json())
    assert back == s and back.to_json() == s.to_json()
    np.testing.assert_array_equal(back.embedding, s.embedding)
    assert asfda.Score.from_dict(s.to_dict()) == s
    assert all(getattr(back, k) == getattr(s, k) for k in asfda.score.VALUES)


def test_score_lists_save_load_and_merge(t1_scored, tmp_path):
    s, _ = t1_scored
    other_d = s.to_dict()
    other_d["id"] = "other"
    other = asfda.Score.from_dict(other_d)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    asfda.save_scores(a, [s])
    asfda.save_scores(b, [other, s])  # the same score again on another machine
    assert a.read_text().count("\n") == 1
    merged = asfda.load_scores(a, b)
    assert [m.id for m in merged] == ["t1_test_000", "other"]
    assert merged[0] == s and merged[1] == other
    # Concatenated files read the same (the list form is just lines).
    cat = tmp_path / "cat.jsonl"
    cat.write_text(a.read_text() + "\n" + b.read_text())
    assert asfda.load_scores(cat) == merged
    # The same id with different values is refused, not silently dropped.
    clash_d = s.to_dict()
    clash_d["asd"] = s.asd + 0.125
    with pytest.raises(ValueError, match="t1_test_000"):
        asfda.merge_scores([s], [asfda.Score.from_dict(clash_d)])
    # A bad line: the library's FormatError, with file and line.
    bad = tmp_path / "bad.jsonl"
    bad.write_text(s.to_json() + "\n{not json\n")
    with pytest.raises(asfda.FormatError, match=r"bad\.jsonl:2"):
        asfda.load_scores(bad)


def test_bad_score_json_raises_format_and_unsupported(t1_scored):
    s, _ = t1_scored
    with pytest.raises(asfda.FormatError) as err:
        asfda.Score.from_json("{}")
    assert err.value.status == "ASFDA_STATUS_FORMAT" and err.value.code == 3
    d = s.to_dict()
    d["format_version"] = 99
    with pytest.raises(asfda.UnsupportedError, match="99"):
        asfda.Score.from_dict(d)
    d = s.to_dict()
    d["foreground_voxels"] += 1  # no longer the histogram's total
    with pytest.raises(asfda.FormatError, match="foreground_voxels"):
        asfda.Score.from_dict(d)


def test_target_site_scores_a_larger_knowledge_gap(engine, t1_scored):
    s_src, _ = t1_scored
    s_pd = engine.score(None, image("pd", "pool", 0))  # a path: id is its file name
    assert s_pd.id == "pd_pool_000_image.nii.gz"
    assert s_pd.gap_kl > s_src.gap_kl and s_pd.gap_anchor > s_src.gap_anchor


# ---- segmentation -------------------------------------------------------------------------------

def test_segmentation_of_a_source_test_volume(engine, t1, tmp_path):
    labels = engine.segment(t1)
    truth = asfda.Volume.load(label("t1", "test", 0))
    assert labels.same_grid(t1) and labels.channels == 1
    got = labels.view()
    assert set(np.unique(got)) <= {0.0, 1.0, 2.0, 3.0}
    d = dice(got, truth.view())
    assert min(d) > 0.9, d
    # Written as u8 NIfTI, nibabel reads the same labels on the same grid.
    out = tmp_path / "labels.nii.gz"
    labels.save(out, "u8")
    img = nib.load(out)
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(img.dataobj), got.astype(np.uint8))
    np.testing.assert_allclose(img.affine, t1.affine, atol=1e-4)


# ---- progress and cancellation ------------------------------------------------------------------

def test_progress_fractions_increase_to_one(t1_scored):
    _, fractions = t1_scored
    assert len(fractions) >= 3
    assert all(0.0 < f <= 1.0 for f in fractions)
    assert all(a < b for a, b in zip(fractions, fractions[1:])), fractions
    assert fractions[-1] == 1.0


def test_returning_false_cancels(small_engine, small):
    calls = []

    def stop_at_second(f):
        calls.append(f)
        return len(calls) < 2

    with pytest.raises(asfda.CancelledError) as err:
        small_engine.score("x", small, progress=stop_at_second)
    assert err.value.status == "ASFDA_STATUS_CANCELLED"
    assert len(calls) == 2  # not called again after cancelling
    with pytest.raises(asfda.CancelledError):
        small_engine.segment(small, progress=lambda f: False)


def test_exception_in_callback_cancels_and_is_reraised(small_engine, small):
    calls = []

    class Stop(Exception):
        pass

    def boom(f):
        calls.append(f)
        raise Stop("from the callback")

    with pytest.raises(Stop, match="from the callback") as err:
        small_engine.score("x", small, progress=boom)
    assert len(calls) == 1
    assert isinstance(err.value.__context__, asfda.CancelledError)
    with pytest.raises(Stop):
        small_engine.segment(small, progress=boom)
    assert len(calls) == 2


def test_ctrl_c_during_a_call_cancels_it(small_engine, small):
    # SIGINT's Python handler runs at the next bytecode, i.e. in the next progress report, which
    # turns it into a cancellation and re-raises KeyboardInterrupt after the C call.
    calls = []

    def interrupt_once(f):
        calls.append(f)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        small_engine.score("x", small, progress=interrupt_once)
    assert len(calls) == 1


def test_engine_is_usable_after_cancelling(small_engine, small):
    with pytest.raises(asfda.CancelledError):
        small_engine.score("x", small, progress=lambda f: False)
    fractions = []
    s = small_engine.score("x", small, progress=fractions.append)
    assert fractions[-1] == 1.0 and len(fractions) == 3  # 3 tiles, one per run
    assert s.voxels == int(np.prod(small.dims))
    # The same volume scored without a callback gives the same score (callbacks change nothing).
    assert small_engine.score("x", small) == s


def test_one_engine_from_several_threads(small_engine, small):
    serial = small_engine.score("x", small)
    results, errors = [None, None], []

    def work(i):
        try:
            results[i] = small_engine.score("x", small)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    # Meanwhile this thread gets a thread-local error of its own, untouched by the others.
    with pytest.raises(asfda.FormatError, match="malformed"):
        asfda.Score.from_json("[")
    for t in threads:
        t.join()
    assert not errors and results == [serial, serial]


# ---- the GIL ------------------------------------------------------------------------------------

def _count_between_reports(call) -> list[int]:
    """Runs `call(progress)` while another Python thread counts; returns how far the counter
    moved between consecutive progress reports (i.e. while the C call was working).

    The switch interval is raised above the call's length, so the interpreter never forces a
    GIL hand-over: the counting thread (which sleeps 1 ms per step, releasing the GIL) can only
    run while the calling thread has released the GIL itself. A call holding the GIL therefore
    gives exactly 0 counts between reports; a call releasing it gives counts."""
    counter = [0]
    stop = threading.Event()

    def count():
        while not stop.is_set():
            counter[0] += 1
            time.sleep(0.001)

    seen = []
    old = sys.getswitchinterval()
    sys.setswitchinterval(300.0)
    t = threading.Thread(target=count, daemon=True)
    t.start()
    try:
        call(lambda f: seen.append(counter[0]))
    finally:
        stop.set()
        sys.setswitchinterval(old)
        t.join()
    assert len(seen) >= 2
    return [b - a for a, b in zip(seen, seen[1:])]


def test_long_calls_release_the_gil(small_engine, small):
    moved = _count_between_reports(lambda cb: small_engine.score("x", small, progress=cb))
    assert sum(moved) > 0, moved


def test_gil_check_detects_a_call_holding_the_gil(small_engine, small):
    # The same C function through ctypes.PyDLL, which keeps the GIL during the call: the check
    # above must see no progress at all, or it would not be testing anything.
    pylib = C.PyDLL(str(_lib.path))
    fn = pylib.asfda_score_volume
    fn.argtypes, fn.restype = _lib.score_volume.argtypes, C.c_int32

    def call(cb):
        c_cb = _lib.PROGRESS_FN(lambda _u, f: (cb(f), True)[1])
        out = _lib.P()
        assert fn(small_engine._h, b"x", small._h, None, c_cb, None, C.byref(out)) == 0
        asfda.Score(out.value)  # frees it

    assert _count_between_reports(call) == [0, 0]


def test_cancel_token_from_another_thread_stops_the_call(small_engine, small):
    cancel = asfda.CancelToken()
    assert not cancel.is_cancelled()
    reports = []

    def progress(fraction):
        reports.append(fraction)
        if len(reports) == 1:  # cancel from another thread while the next tile runs
            threading.Thread(target=cancel.cancel).start()
            time.sleep(0.05)
        return True

    with pytest.raises(asfda.CancelledError):
        small_engine.score("x", small, progress=progress, cancel=cancel)
    assert cancel.is_cancelled() and reports[-1] < 1.0
    cancel.reset()
    assert not cancel.is_cancelled()
    assert small_engine.score("x", small, cancel=cancel).id == "x"  # usable again, token reused


def test_segment_maps_are_consistent(small_engine, small):
    seg = small_engine.segment_maps(small, probabilities=True, entropy=True)
    probs, ent, labels = seg.probabilities.view(), seg.entropy.view(), seg.labels.view()
    assert probs.shape == (*labels.shape, 4) and ent.shape[:3] == labels.shape
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-4)
    assert ent.min() >= 0.0 and ent.max() <= 1.0 + 1e-6
    # The volume is RAS at the model spacing: argmax of the probabilities is the label map.
    assert (np.argmax(probs, axis=-1) == labels).mean() > 0.999
    plain = small_engine.segment_maps(small)
    assert plain.probabilities is None and plain.entropy is None
    np.testing.assert_array_equal(plain.labels.view(), labels)


# ---- errors -------------------------------------------------------------------------------------

def test_every_status_has_its_exception_class():
    for code, cls in asfda.errors.BY_CODE.items():
        name = _lib.status_name(code).decode()
        assert cls.code == code and issubclass(cls, asfda.Error)
        # ASFDA_STATUS_GEOMETRY_MISMATCH <-> GeometryMismatchError, etc.
        assert name.removeprefix("ASFDA_STATUS_").replace("_", "").lower() + "error" == cls.__name__.lower()
    assert len(set(asfda.errors.BY_CODE.values())) == 12
    assert asfda.AsfdaError is asfda.Error


def test_engine_errors_carry_their_status(engine, t1, tmp_path):
    with pytest.raises(asfda.IoError):
        asfda.Engine(tmp_path / "no_such_bundle")
    two_channels = asfda.Volume.from_array(np.zeros((70, 70, 70, 2), np.float32), t1.affine)
    with pytest.raises(asfda.InvalidArgumentError) as err:
        engine.score("x", two_channels)
    assert isinstance(err.value, ValueError) and "channel" in err.value.message
    nan = t1.array()
    nan[40, 50, 40] = np.nan  # buffers may hold NaN; scoring refuses them
    with pytest.raises(asfda.InvalidDataError):
        engine.score("nan", asfda.Volume.from_array(nan, t1.affine))
    with pytest.raises(asfda.TooLargeError, match="memory limit"):
        asfda.Engine(BUNDLE, memory_limit_bytes=1024).segment(t1)
    with pytest.raises(ValueError, match="NUL"):  # would be cut short silently in C
        engine.score("a\0b", t1)
    with pytest.raises(TypeError, match="id is required"):
        engine.score(None, t1)
    with pytest.raises(TypeError, match="Volume.from_array"):
        engine.segment(np.zeros((8, 8, 8), np.float32))


def test_cuda_request_without_cuda_is_device_unavailable():
    if "CUDAExecutionProvider" in asfda.runtime_info()["providers"]:
        pytest.skip("this ONNX Runtime has CUDA")
    with pytest.raises(asfda.DeviceUnavailableError):
        asfda.Engine(BUNDLE, device="cuda:0")
    # Without CUDA, "auto" runs on OpenVINO where its plugin offers a device, else on the CPU.
    expected = "openvino" if asfda.runtime_info()["openvino"]["usable"] else "cpu"
    assert asfda.Engine(BUNDLE, device="auto").device == expected


def test_classes_come_from_the_manifest(engine):
    import json
    manifest = json.loads(open(os.path.join(BUNDLE, "manifest.json")).read())
    classes = engine.classes
    assert [c.name for c in classes] == [c if isinstance(c, str) else c["name"] for c in manifest["classes"]]
    assert classes[0] == asfda.ClassInfo("background", None, None)
    wm = classes[3]
    assert wm.color == tuple(manifest["classes"][3]["color"])
    assert wm.code.kind == asfda.CodedConcept("SCT", "389080008", "White Matter")
    assert wm.code.category.meaning == "Anatomical Structure"


def test_score_and_segment_in_one_pass_equals_the_two_calls(engine, small):
    fractions = []
    score, seg = engine.score_and_segment("small", small, entropy=True, progress=fractions.append)
    assert fractions and fractions[-1] == 1.0
    assert score.to_json() == engine.score("small", small).to_json()
    alone = engine.segment_maps(small, entropy=True)
    assert np.array_equal(seg.labels.array(), alone.labels.array())
    assert np.array_equal(seg.entropy.array(), alone.entropy.array()) and seg.probabilities is None
