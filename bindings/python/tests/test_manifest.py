"""The golden manifest (tests/data/golden_manifest.json) and its variants
(golden_manifest_cases.json) must be accepted or refused by the generator's check
(asfda_tools.manifest) exactly as by the library's reader (tests/golden_manifest.rs reads the
same files), with the same field named, so the two schemas cannot drift. Torch-free."""
import json
from pathlib import Path

import pytest

from asfda_tools.manifest import (ManifestError, edited_manifest, file_digests, is_plain_relative, manifest_problems,
                                  sha256_file, validate_manifest)

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / "tests" / "data"
GOLDEN = json.loads((DATA / "golden_manifest.json").read_text())
CASES = json.loads((DATA / "golden_manifest_cases.json").read_text())


def edited(case):
    return edited_manifest(GOLDEN, case)


def names_field(problems, field):
    return any(p.startswith(field) and p[len(field)] in ":." for p in problems)


def test_the_golden_manifest_passes():
    assert manifest_problems(GOLDEN) == []
    assert validate_manifest(GOLDEN) is GOLDEN


def test_the_shipped_demo_manifest_passes():
    demo = json.loads((ROOT / "models" / "demo_brain_unet" / "manifest.json").read_text())
    assert manifest_problems(demo) == []


@pytest.mark.parametrize("case", CASES["valid"], ids=lambda c: c["name"])
def test_valid_variants_are_accepted(case):
    assert manifest_problems(edited(case)) == []


@pytest.mark.parametrize("case", CASES["invalid"], ids=lambda c: c["name"])
def test_invalid_variants_are_refused_naming_the_field(case):
    with pytest.raises(ManifestError) as err:
        validate_manifest(edited(case))
    assert names_field(err.value.problems, case["field"]), err.value.problems


@pytest.mark.parametrize("name", ["model.onnx", "sub/model.onnx", "a.b/c"])
def test_plain_relative_names_are_accepted(name):
    assert is_plain_relative(name)


@pytest.mark.parametrize("name", ["", "/etc/passwd", "../x.onnx", "a/../../x", "./x", "a//b", "a/",
                                  "a\\b", "x\0y"])
def test_other_names_are_refused(name):
    assert not is_plain_relative(name)


def test_file_digests_are_the_sha256_of_each_named_file(tmp_path):
    import hashlib
    m = edited({})
    for _, name in [("f", "model.onnx"), ("f", "train_step.onnx"), ("f", "checkpoint.safetensors"),
                    ("f", "source_knowledge.safetensors")]:
        (tmp_path / name).write_bytes(name.encode() * 1000)
    digests = file_digests(tmp_path, m)
    assert digests == {n: hashlib.sha256(n.encode() * 1000).hexdigest() for n in digests}
    assert sorted(digests) == sorted(GOLDEN["sha256"])
    assert sha256_file(tmp_path / "model.onnx") == digests["model.onnx"]
    m["sha256"] = digests
    assert manifest_problems(m) == []


def test_the_shipped_demo_manifest_digests_match_its_files():
    d = ROOT / "models" / "demo_brain_unet"
    demo = json.loads((d / "manifest.json").read_text())
    assert demo["sha256"] == file_digests(d, demo)
