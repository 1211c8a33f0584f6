"""The first real ONNX Runtime run: the committed tiny 3D conv model, run by asfda on a real MR
volume, must equal onnxruntime-from-Python's output on the same input."""
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

import asfda

# onnxruntime-from-Python runs in a child process: two ONNX Runtime copies (the wheel's and the
# one asfda loads) should never share one process.
REFERENCE = """
import sys, numpy as np, nibabel as nib, onnxruntime as ort
image, model, out = sys.argv[1:4]
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
img = nib.load(image)
refs = {}
for name, im in (("canonical", nib.as_closest_canonical(img)), ("native", img)):
    x = np.asarray(im.dataobj, dtype=np.float32)
    refs[name] = sess.run(None, {"image": x.T[None, None].copy()})[0]
np.savez(out, **refs)
"""


@pytest.fixture(scope="module")
def paths(root, tmp_path_factory):
    image = root / "data" / "anatomical.nii"
    model = root / "models" / "tiny_conv3d" / "tiny_conv3d.onnx"
    ref = tmp_path_factory.mktemp("ref") / "ref.npz"
    subprocess.run([sys.executable, "-c", REFERENCE, str(image), str(model), str(ref)], check=True)
    return image, model, dict(np.load(ref))


def test_runtime_info_reports_the_pinned_ort():
    info = asfda.runtime_info()
    assert info["ort_version"] == "1.31.1"
    assert "CPUExecutionProvider" in info["providers"]
    assert os.path.isabs(info["library_path"]) and info["library_path"].endswith("libonnxruntime.so.1.31.1")


def test_model_matches_onnxruntime_python(paths):
    image, model_path, refs = paths
    ref = refs["canonical"]  # [1, 2, Z, Y, X]
    model = asfda.Model(model_path, device="cpu")
    assert model.device == "cpu"
    out = model.run_volume(asfda.Volume.load(image).to_canonical())
    got = out.array()  # [X, Y, Z, 2]
    expected = ref[0].transpose(3, 2, 1, 0)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # The output is a real softmax, not a constant: both classes occur.
    assert 0.05 < (got[..., 1] > 0.5).mean() < 0.99


def test_cli_run_model_lands_on_input_grid(paths, tmp_path):
    image, model_path, refs = paths
    out = tmp_path / "probs.nii.gz"
    subprocess.run([os.environ["ASFDA_CLI"], "run-model", "--model", str(model_path), "--input", str(image),
                    "--output", str(out)], check=True)
    written = nib.load(out)
    src = nib.load(image)
    np.testing.assert_allclose(written.affine, src.affine, atol=1e-4)
    # run-model runs on the file's own voxel grid (LAS here, not reoriented).
    expected = refs["native"][0].transpose(3, 2, 1, 0)
    np.testing.assert_allclose(written.get_fdata(), expected, rtol=1e-5, atol=1e-6)


def test_cli_info_json():
    res = subprocess.run([os.environ["ASFDA_CLI"], "info", "--json"], check=True, capture_output=True, text=True)
    info = json.loads(res.stdout)
    assert info["ort_version"] == "1.31.1" and info["library_source"] in ("user_cache", "asfda_env", "ort_env")


def test_cuda_request_without_cuda_fails_clearly_and_auto_falls_back(paths):
    _, model_path, _ = paths
    if "CUDAExecutionProvider" in asfda.runtime_info()["providers"]:
        pytest.skip("this ONNX Runtime has CUDA; covered by `make test-gpu`")
    with pytest.raises(asfda.AsfdaError) as err:
        asfda.Model(model_path, device="cuda:0")
    assert err.value.status == "ASFDA_STATUS_DEVICE_UNAVAILABLE"
    assert "make ort-gpu" in err.value.message
    expected = "openvino" if asfda.runtime_info()["openvino"]["usable"] else "cpu"
    assert asfda.Model(model_path, device="auto").device == expected
