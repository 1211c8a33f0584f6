"""Model bundles: files, manifest, inference graph and reference, checked with onnxruntime."""
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors.numpy import load_file

from asfda_tools.export import export_bundle, kmeans, load_checkpoint_params
from asfda_tools.manifest import named_files, sha256_file, validate_manifest
from asfda_tools.unet import UNet3D

FROZEN = ["encoder.0.0.conv.weight"]  # a frozen parameter, as when fine-tuning only deep layers
CLASSES = ["background", "left", "right"]


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def source_volumes():
    rng = np.random.default_rng(7)
    return [rng.standard_normal((t, 1, 16, 16, 16)).astype(np.float32) for t in (1, 2, 3, 2, 1)]


@pytest.fixture(scope="module")
def bundle(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle")
    manifest = export_bundle(
        model, out, classes=CLASSES, foreground_classes=[1, 2], patch_size=[32, 32, 32],
        spacing=[1.5, 1.0, 1.0], normalization={"kind": "zscore", "mask": "nonzero"},
        source_dataset_iterator=iter(source_volumes()), k=3, frozen=FROZEN,
        reference_patch_size=[16, 16, 24])
    return out, manifest


def test_files_and_manifest(bundle):
    out, manifest = bundle
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["format_version"] == 1
    assert manifest["input"]["size_divisible_by"] == 8
    assert manifest["inference"]["layout"] == "NCZYX"
    for f in [manifest["inference"]["file"], manifest["training"]["train_step"],
              manifest["training"]["checkpoint"], manifest["source_knowledge"]["file"],
              "reference.json", "reference_batch.safetensors"]:
        assert (out / f).is_file(), f
    assert manifest["training"]["frozen"] == FROZEN


def test_manifest_records_the_sha256_of_every_file(bundle):
    """The library verifies each named file against these digests at load."""
    out, manifest = bundle
    names = [name for _, name in named_files(manifest)]
    assert sorted(manifest["sha256"]) == sorted(names)
    for name in names:
        assert manifest["sha256"][name] == sha256_file(out / name)


def _shape(v):
    """The key structure of a JSON value (dict keys recursively, the first item of lists)."""
    if isinstance(v, dict):
        return {k: _shape(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_shape(v[0])] if v and isinstance(v[0], (dict, list)) else []
    return type(v).__name__ if isinstance(v, str) else "value"


def test_manifest_has_the_golden_manifests_fields(bundle):
    """Every field the generator writes is one the golden manifest has (which the library reads
    back completely, tests/golden_manifest.rs), and the other way round."""
    _, manifest = bundle
    golden = json.loads((Path(__file__).resolve().parents[3] / "tests/data/golden_manifest.json").read_text())
    assert _shape(manifest) == _shape(golden)
    assert validate_manifest(manifest) is manifest


def test_rejects_bad_arguments(model, tmp_path):
    good = dict(classes=CLASSES, foreground_classes=[1, 2], patch_size=[32, 32, 32],
                spacing=[1, 1, 1], normalization={"kind": "zscore"})
    for bad in [{"normalization": {"kind": "minmax"}}, {"normalization": {"kind": "ct_window"}},
                {"normalization": {"kind": "zscore", "mask": "brain"}}, {"ignore_label": 1},
                {"patch_size": [32, 32, 36]}, {"classes": CLASSES[:2]},
                {"foreground_classes": [3]}, {"foreground_classes": [0, 1]},
                {"normalization": {"kind": "ct_window", "lower": 0, "upper": 1, "mean": 0, "std": 0}},
                {"normalization": {"kind": "percentile", "lower": 1, "upper": 101}}]:
        with pytest.raises(ValueError):
            export_bundle(model, tmp_path, **{**good, **bad})


def test_inference_initializers_are_parameters(model, bundle):
    out, manifest = bundle
    g = onnx.load(str(out / "model.onnx"))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in g.graph.initializer}
    params = dict(model.named_parameters())
    assert set(inits) == set(params)
    for name, p in params.items():
        np.testing.assert_array_equal(inits[name], p.detach().numpy())
    assert [p["initializer"] for p in manifest["training"]["parameters"]] == list(params)
    assert [p["shape"] for p in manifest["training"]["parameters"]] == [
        list(p.shape) for p in params.values()]


def test_inference_matches_pytorch(model, bundle):
    out, manifest = bundle
    s = session(out / "model.onnx")
    inf = manifest["inference"]
    assert [i.name for i in s.get_inputs()] == [inf["input"]]
    assert [o.name for o in s.get_outputs()] == [inf["logits"], inf["features"]]
    for shape in [(1, 1, 16, 16, 16), (2, 1, 8, 24, 16)]:
        x = torch.randn(shape)
        logits, features = s.run(None, {"image": x.numpy()})
        with torch.no_grad():
            want = model(x)
        assert features.shape == (shape[0], inf["feature_channels"])
        np.testing.assert_allclose(logits, want[0].numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(features, want[1].numpy(), rtol=1e-4, atol=1e-5)


def test_manifest_lists_train_step_io(model, bundle):
    out, manifest = bundle
    io = manifest["training"]["io"]
    g = onnx.load(str(out / manifest["training"]["train_step"]))
    assert [i.name for i in g.graph.input] == io["inputs"]
    assert [o.name for o in g.graph.output] == io["outputs"]
    params = manifest["training"]["parameters"]
    trainable = [p["name"] for p in params if p["trainable"]]
    assert set(trainable) == set(dict(model.named_parameters())) - set(FROZEN)
    moments = [io[k] + n for k in ("m_prefix", "v_prefix") for n in trainable]
    state = [io["param_prefix"] + p["name"] for p in params] + moments
    updated = [io["param_prefix"] + n for n in trainable] + moments
    named = [io[k] for k in ("image", "labels", "loss_weight", "lr", "step", "weight_decay")]
    assert io["inputs"] == named + state
    assert io["outputs"] == ([io["loss"], io["loss_ce"], io["loss_dice"]]
                             + [io["new_prefix"] + n for n in updated])
    checkpoint = load_file(str(out / manifest["training"]["checkpoint"]))
    assert set(checkpoint) == set(state) | {io["step_checkpoint_key"]}
    assert checkpoint["step"] == 0
    assert all((checkpoint[n] == 0).all() for n in state if not n.startswith("param."))


def test_reference_reproduced_by_ort(model, bundle):
    """What the Rust trainer does: state from the checkpoint, outputs fed back as inputs."""
    out, manifest = bundle
    io = manifest["training"]["io"]
    ref = json.loads((out / "reference.json").read_text())
    feed = load_file(str(out / ref["batch_file"]))
    checkpoint = load_file(str(out / manifest["training"]["checkpoint"]))
    feed |= {k: v for k, v in checkpoint.items() if k != io["step_checkpoint_key"]}
    s = session(out / manifest["training"]["train_step"])
    losses = []
    for i in range(ref["steps"]):
        scalars = {"lr": ref["lr"], "weight_decay": ref["weight_decay"],
                   "step": checkpoint["step"] + ref["first_step"] + i}
        feed |= {k: np.array(v, dtype=np.float32) for k, v in scalars.items()}
        result = dict(zip(io["outputs"], s.run(io["outputs"], feed)))
        losses.append([float(result[k]) for k in ("loss", "loss_ce", "loss_dice")])
        feed |= {k[len(io["new_prefix"]):]: v for k, v in result.items()
                 if k.startswith(io["new_prefix"])}
    np.testing.assert_allclose(np.array(losses).T, [ref["loss"], ref["loss_ce"], ref["loss_dice"]],
                               rtol=1e-5)
    # The frozen parameter came through unchanged; the others moved.
    assert np.array_equal(feed["param." + FROZEN[0]], checkpoint["param." + FROZEN[0]])
    assert not np.array_equal(feed["param.head.weight"], checkpoint["param.head.weight"])


def test_finetuned_weights_inject_by_name(model, bundle):
    """Trained parameters go back into the unchanged inference graph by initializer name."""
    out, manifest = bundle
    gen = torch.Generator().manual_seed(5)
    new = {n: (p.detach() + 0.1 * torch.randn(p.shape, generator=gen)).numpy()
           for n, p in model.named_parameters()}
    options = ort.SessionOptions()
    values = {n: ort.OrtValue.ortvalue_from_numpy(v) for n, v in new.items()}
    for n, v in values.items():
        options.add_initializer(n, v)
    s = ort.InferenceSession(str(out / "model.onnx"), options, providers=["CPUExecutionProvider"])
    x = torch.randn(1, 1, 16, 16, 16, generator=gen)
    tuned = UNet3D(1, 3, base_channels=2, levels=4).eval()
    tuned.load_state_dict({n: torch.from_numpy(v) for n, v in new.items()})
    with torch.no_grad():
        want = tuned(x)[0].numpy()
    np.testing.assert_allclose(s.run(["logits"], {"image": x.numpy()})[0], want,
                               rtol=1e-4, atol=1e-5)


def test_source_knowledge(model, bundle):
    out, manifest = bundle
    sk = manifest["source_knowledge"]
    tensors = load_file(str(out / sk["file"]))
    feats, emb = [], []
    with torch.no_grad():
        for v in source_volumes():
            f = model(torch.from_numpy(v))[1].double()
            feats.append(f)
            emb.append(f.mean(0) / f.mean(0).norm())
    f = torch.cat(feats)
    assert (sk["tiles"], sk["volumes"], sk["k"]) == (9, 5, 3)
    np.testing.assert_allclose(tensors[sk["tensors"]["mean"]], f.mean(0), rtol=1e-5)
    np.testing.assert_allclose(tensors[sk["tensors"]["var"]], f.var(0, unbiased=False), rtol=1e-4)
    anchors = tensors[sk["tensors"]["anchors"]]
    assert anchors.shape == (3, manifest["inference"]["feature_channels"])
    # Every embedding's nearest anchor is the centre of its own cluster (a k-means fixed point).
    z = torch.stack(emb).numpy()
    assign = ((z[:, None] - anchors[None]) ** 2).sum(-1).argmin(1)
    for j in set(assign):
        np.testing.assert_allclose(anchors[j], z[assign == j].mean(0), rtol=1e-5, atol=1e-6)


def test_checkpoint_params_load_into_a_fresh_model(model, bundle):
    """The checkpoint's param.* tensors rebuild the exported model exactly (how the demo
    bundle's train step is regenerated without the original .pt)."""
    out, _ = bundle
    fresh = UNet3D(1, len(CLASSES), base_channels=2, levels=4)
    load_checkpoint_params(fresh, out / "checkpoint.safetensors")
    for (name, a), (_, b) in zip(fresh.named_parameters(), model.named_parameters()):
        assert torch.equal(a, b), name


def test_kmeans_finds_separated_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = np.concatenate([c + 0.1 * rng.standard_normal((20, 2)) for c in centres])
    found = kmeans(x, 3, seed=1)
    assert np.abs(np.sort(found, 0) - np.sort(centres, 0)).max() < 0.1
    np.testing.assert_array_equal(found, kmeans(x, 3, seed=1))
