"""Model bundles: everything the library needs to run, score with and fine-tune a model.

A bundle folder holds ``manifest.json`` (the single description of the model, checked by
``asfda_tools.manifest`` with the library's rules and described in docs/manifest.md), ``model.onnx``
(inference: ``image`` -> ``logits``, ``features``), ``train_step.onnx`` (see trainstep.py),
``checkpoint.safetensors`` (the train step's state: ``param.*``, ``m.*``, ``v.*`` and ``step``),
optionally ``source_knowledge.safetensors`` (feature statistics of the source data), and
``reference.json`` + ``reference_batch.safetensors`` (losses of a few PyTorch steps, so a
consumer can check that it reproduces training).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save

from .manifest import (FORMAT_VERSION, MANIFEST_FILE, NORMALIZATION_KEYS,  # noqa: F401
                       file_digests, input_problems, validate_manifest)
from .trainstep import TrainStepConfig, dice_ce, export_train_step, parameter_names, save_onnx

SOURCE_TENSORS = {"mean": "feature_mean", "var": "feature_var", "anchors": "anchors"}


def _save_tensors(tensors, path: Path):
    # Through bytes so the file gets the usual umask permissions (save_file makes it 0600).
    path.write_bytes(save(tensors))


def _conv3d(input, weight, bias=None, stride=(1, 1, 1), padding=(0, 0, 0), dilation=(1, 1, 1),
            groups=1):
    return torch.ops.aten.convolution(input, weight, bias, stride, padding, dilation, False,
                                      [0, 0, 0], groups)


def export_inference(model, path):
    """Inference ONNX with dynamic batch and spatial sizes whose parameter initializers keep the
    PyTorch names (optimize=False: the optimiser merges identical initializers, trap 4), so
    fine-tuned weights can be injected by name."""
    model = model.eval()
    div = getattr(model, "size_divisible_by", 1)
    x = torch.randn(2, model.in_channels, *(div * k for k in (3, 4, 5)))
    batch = torch.export.Dim("batch", min=1)
    z, y, w = (div * torch.export.Dim(f"{a}_div{div}", min=1) for a in "zyx")
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: batch, 2: z, 3: y, 4: w},))
    # onnxscript 0.7.2 translates a bias-less aten.conv3d with a [C, 2] zero bias that ORT
    # rejects (microsoft/onnxscript#2931); aten.convolution is translated correctly.
    ep = ep.run_decompositions({torch.ops.aten.conv3d.default: _conv3d})
    save_onnx(torch.onnx.export(ep, (), dynamo=True, optimize=False, verbose=False,
                                input_names=["image"], output_names=["logits", "features"]), path)


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 100) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding; returns [k, D] centres."""
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d2 = ((x[:, None] - np.asarray(centres)[None]) ** 2).sum(-1).min(1)
        centres.append(x[rng.choice(len(x), p=d2 / d2.sum())] if d2.sum() > 0
                       else x[rng.integers(len(x))])
    centres = np.asarray(centres)
    for _ in range(iters):
        assign = ((x[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        new = np.stack([x[assign == j].mean(0) if (assign == j).any() else centres[j]
                        for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return centres


def source_knowledge(model, volumes, k: int = 8, seed: int = 0):
    """Feature statistics of source data. ``volumes`` yields, per source volume, its tiles as an
    array [T, C, Z, Y, X] (or one tile [C, Z, Y, X]), normalised as the model expects.
    Returns tensors: per-channel mean and variance of the tile features, and k-means anchors
    of the volume embeddings (L2-normalised mean of a volume's tile features), plus counts."""
    feats, embeddings = [], []
    model = model.eval()
    with torch.no_grad():
        for tiles in volumes:
            t = torch.as_tensor(np.asarray(tiles), dtype=torch.float32)
            f = model(t[None] if t.dim() == 4 else t)[1].double()
            feats.append(f)
            e = f.mean(0)
            embeddings.append(e / e.norm().clamp_min(1e-12))
    if not feats:
        raise ValueError("the source dataset is empty")
    f = torch.cat(feats)
    z = torch.stack(embeddings).numpy()
    tensors = {SOURCE_TENSORS["mean"]: f.mean(0).float().numpy(),
               SOURCE_TENSORS["var"]: f.var(0, unbiased=False).float().numpy(),
               SOURCE_TENSORS["anchors"]: kmeans(z, min(k, len(z)), seed).astype(np.float32)}
    return tensors, {"tiles": len(f), "volumes": len(z)}


def reference_batch(model, shape, ignore_label: int, seed: int = 0):
    """A seeded synthetic batch: noise images, labels with a few ignored voxels, and one
    down-weighted sample, so the reference exercises every part of the loss."""
    n, spatial = shape[0], tuple(shape[1:])
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(n, model.in_channels, *spatial, generator=gen)
    labels = torch.randint(0, model.num_classes, (n, *spatial), generator=gen)
    labels[:, : max(1, spatial[0] // 4)] = ignore_label
    weight = torch.ones(n)
    weight[-1] = 0.5
    return image, labels, weight


def reference_losses(model, batch, config: TrainStepConfig, *, steps, lr, weight_decay):
    """Losses of ``steps`` consecutive PyTorch-eager steps with torch.optim.AdamW, each the
    loss before that step's update (what the train step's ``loss`` output reports)."""
    model = copy.deepcopy(model).eval()
    for name, p in model.named_parameters():
        p.requires_grad_(name not in config.frozen)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                            betas=config.betas, eps=config.eps, weight_decay=weight_decay)
    image, labels, weight = batch
    out = {"loss": [], "loss_ce": [], "loss_dice": []}
    for _ in range(steps):
        opt.zero_grad()
        loss, ce, dice = dice_ce(model(image)[0], labels, weight,
                                 foreground_classes=config.foreground_classes,
                                 ignore_label=config.ignore_label, smooth=config.dice_smooth)
        loss.backward()
        opt.step()
        for key, v in zip(out, (loss, ce, dice)):
            out[key].append(v.detach().item())
    return out


def load_checkpoint_params(model, path):
    """Load a bundle checkpoint's ``param.<name>`` tensors into ``model`` (all must be there)."""
    from safetensors.numpy import load_file
    tensors = load_file(str(path))
    state = {n: torch.from_numpy(tensors[f"param.{n}"].copy()) for n, _ in model.named_parameters()}
    model.load_state_dict(state, strict=True)
    return model


def rewrite_train_step(model, bundle_dir, weight_grad="conv"):
    """Regenerate only ``train_step.onnx`` of an existing bundle for ``model`` (whose parameters
    should be the checkpoint's, see load_checkpoint_params), leaving every other file as it is.
    The new graph must have exactly the manifest's inputs and outputs, or nothing is replaced."""
    out = Path(bundle_dir)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    training = manifest["training"]
    config = TrainStepConfig(foreground_classes=list(manifest["foreground_classes"]),
                             ignore_label=training["loss"]["ignore_label"],
                             betas=tuple(training["optimizer"]["betas"]),
                             eps=training["optimizer"]["eps"],
                             dice_smooth=training["loss"]["dice_smooth"],
                             frozen=list(training["frozen"]))
    target = out / training["train_step"]
    tmp = target.with_name(target.name + ".partial")
    inputs, outputs = export_train_step(model.eval(), tmp, config, weight_grad=weight_grad)
    if (inputs, outputs) != (training["io"]["inputs"], training["io"]["outputs"]):
        tmp.unlink()
        raise ValueError("the regenerated train step's inputs/outputs differ from the manifest's")
    tmp.replace(target)
    # The manifest records the new graph's digest (the library verifies it at load).
    manifest["sha256"] = file_digests(out, manifest)
    validate_manifest(manifest)
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return inputs, outputs


def export_bundle(model, out_dir, *, classes, foreground_classes, patch_size, spacing,
                  normalization, source_dataset_iterator=None, name=None, k=8,
                  ignore_label=255, lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                  dice_smooth=1e-5, frozen=(), reference_steps=5, reference_batch_size=2,
                  reference_patch_size=None, reference_lr=1e-3, seed=0):
    """Write a bundle for ``model`` (an ``nn.Module`` with ``in_channels``, ``num_classes``,
    ``size_divisible_by``, ``feature_channels`` and ``forward(x) -> (logits, features)``, e.g.
    UNet3D) to ``out_dir``.
    Returns the manifest (a dict)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    if len(classes) != model.num_classes:
        raise ValueError(f"{len(classes)} class names for a model with {model.num_classes} outputs")
    if not foreground_classes or not all(1 <= c < len(classes) for c in foreground_classes):
        raise ValueError(f"foreground_classes must be class indices in 1..{len(classes)}, "
                         f"got {foreground_classes}")
    if 0 <= ignore_label < len(classes):
        raise ValueError("ignore_label must not be a class index")
    div = getattr(model, "size_divisible_by", 1)
    # The input spec is checked before the (slow) exports; the whole manifest before it is written.
    input_spec = {"channels": model.in_channels, "patch_size": list(patch_size),
                  "size_divisible_by": div, "spacing_mm": list(spacing), "orientation": "RAS",
                  "normalization": dict(normalization)}
    problems = input_problems(input_spec)
    if problems:
        raise ValueError("; ".join(problems))

    config = TrainStepConfig(foreground_classes=list(foreground_classes), ignore_label=ignore_label,
                             betas=tuple(betas), eps=eps, dice_smooth=dice_smooth,
                             frozen=list(frozen))
    names, train = parameter_names(model, config)
    params = {n: p.detach().float().contiguous() for n, p in model.named_parameters()}

    export_inference(model, out / "model.onnx")
    step_inputs, step_outputs = export_train_step(model, out / "train_step.onnx", config)

    checkpoint = {f"param.{n}": params[n].numpy() for n in names}
    checkpoint |= {f"{kind}.{n}": np.zeros_like(params[n].numpy()) for kind in "mv" for n in train}
    checkpoint["step"] = np.array(0, dtype=np.int64)
    _save_tensors(checkpoint, out / "checkpoint.safetensors")

    knowledge = None
    if source_dataset_iterator is not None:
        tensors, counts = source_knowledge(model, source_dataset_iterator, k, seed)
        _save_tensors(tensors, out / "source_knowledge.safetensors")
        knowledge = {"file": "source_knowledge.safetensors", "tensors": dict(SOURCE_TENSORS),
                     "k": int(len(tensors[SOURCE_TENSORS["anchors"]])), **counts}

    # Half the patch by default: any valid size checks the same graph, and the batch ships.
    ref_patch = list(reference_patch_size or [max(div, s // 2 // div * div) for s in patch_size])
    batch = reference_batch(model, [reference_batch_size, *ref_patch], ignore_label, seed)
    _save_tensors({"image": batch[0].numpy(), "labels": batch[1].numpy(),
                   "loss_weight": batch[2].numpy()}, out / "reference_batch.safetensors")
    losses = reference_losses(model, batch, config, steps=reference_steps, lr=reference_lr,
                              weight_decay=weight_decay)
    reference = {"batch_file": "reference_batch.safetensors", "steps": reference_steps,
                 "lr": reference_lr, "weight_decay": weight_decay, "first_step": 1, **losses}
    (out / "reference.json").write_text(json.dumps(reference, indent=2) + "\n")

    manifest = {
        "format_version": FORMAT_VERSION,
        "name": name or out.name,
        "classes": list(classes),
        "foreground_classes": list(foreground_classes),
        "input": input_spec,
        "inference": {"file": "model.onnx", "input": "image", "logits": "logits",
                      "features": "features", "feature_channels": model.feature_channels,
                      "layout": "NCZYX"},
        "training": {
            "train_step": "train_step.onnx",
            "checkpoint": "checkpoint.safetensors",
            "parameters": [{"name": n, "initializer": n, "shape": list(params[n].shape),
                            "trainable": n in train} for n in names],
            "frozen": [n for n in names if n not in train],
            "loss": {"kind": "dice_ce", "ignore_label": ignore_label, "dice_smooth": dice_smooth},
            "optimizer": {"kind": "adamw", "lr": lr, "betas": list(betas), "eps": eps,
                          "weight_decay": weight_decay},
            "io": {"image": "image", "labels": "labels", "loss_weight": "loss_weight",
                   "lr": "lr", "step": "step", "weight_decay": "weight_decay",
                   "loss": "loss", "loss_ce": "loss_ce", "loss_dice": "loss_dice",
                   "param_prefix": "param.", "m_prefix": "m.", "v_prefix": "v.",
                   "new_prefix": "new.", "step_checkpoint_key": "step",
                   "inputs": step_inputs, "outputs": step_outputs},
        },
        "source_knowledge": knowledge,
    }
    # Paths are checked before anything is hashed; the digests of every named file then go in.
    validate_manifest(manifest)
    manifest["sha256"] = file_digests(out, manifest)
    validate_manifest(manifest)
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
