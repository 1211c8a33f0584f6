#!/usr/bin/env python3
"""Times PyTorch-eager training steps (forward + DiceCE + backward + AdamW) of a bundle's U-Net,
the peer of `cargo run --release --example train_step_time`: same weights (the bundle's
checkpoint), same synthetic batch, same loss and optimiser settings, so the per-step losses of
the two must agree. Prints one `RESULT` line: median step time, peak RSS, every step's loss
(the warm-up's first). Run by scripts/bench_train_step.sh.

Usage: .venv-torch/bin/python scripts/train_step_time.py [BUNDLE] [N] [SIZE] [REPEATS] [THREADS]
"""
import ctypes
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bindings" / "python"))
from asfda_tools.export import load_checkpoint_params  # noqa: E402
from asfda_tools.trainstep import dice_ce  # noqa: E402
from asfda_tools.unet import UNet3D  # noqa: E402

LR, WEIGHT_DECAY = 1e-4, 1e-2  # as examples/train_step_time.rs


def peak_rss_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def unet_from_checkpoint(bundle, manifest):
    """The UNet3D whose parameter shapes the checkpoint has, with the checkpoint's values."""
    shapes = {p["name"]: p["shape"] for p in manifest["training"]["parameters"]}
    levels = len({n.split(".")[1] for n in shapes if n.startswith("encoder.")})
    model = UNet3D(manifest["input"]["channels"], len(manifest["classes"]),
                   base_channels=shapes["encoder.0.0.conv.weight"][0], levels=levels,
                   max_channels=shapes[f"encoder.{levels - 1}.0.conv.weight"][0])
    return load_checkpoint_params(model, bundle / manifest["training"]["checkpoint"]).eval()


def synthetic_batch(n, size, classes):
    """The batch examples/train_step_time.rs builds, index formula for index formula."""
    b = torch.arange(n).view(-1, 1, 1, 1)
    z, y, x = (torch.arange(size).view(shape)
               for shape in [(1, -1, 1, 1), (1, 1, -1, 1), (1, 1, 1, -1)])
    image = ((b * 5 + z * 7 + y * 3 + x) % 17).float() / 17.0 - 0.5
    labels = ((z // 8 + y // 8 + x // 8) % classes).expand(n, size, size, size).contiguous()
    return image.unsqueeze(1).contiguous(), labels.long()


def main():
    argv = sys.argv[1:]
    bundle = Path(argv[0]) if argv else ROOT / "models" / "demo_brain_unet"
    defaults = ["2", "64", "5", "2"]  # N, SIZE, REPEATS, THREADS
    n, size, repeats, threads = (int(a) for a in (argv[1:] + defaults[len(argv[1:]):])[:4])
    torch.set_num_threads(threads)
    libc = ctypes.CDLL("libc.so.6")  # keep freed memory, as scripts/train_demo_model.py does
    libc.mallopt(-1, 2**30)
    libc.mallopt(-3, 2**30)
    manifest = json.loads((bundle / "manifest.json").read_text())
    training = manifest["training"]
    model = unet_from_checkpoint(bundle, manifest)
    for name, p in model.named_parameters():
        p.requires_grad_(name not in training["frozen"])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR,
                            betas=tuple(training["optimizer"]["betas"]),
                            eps=training["optimizer"]["eps"], weight_decay=WEIGHT_DECAY)
    image, labels = synthetic_batch(n, size, len(manifest["classes"]))
    weight = torch.ones(n)
    losses, times = [], []
    for i in range(repeats + 1):
        t = time.perf_counter()
        opt.zero_grad()
        loss, _, _ = dice_ce(model(image)[0], labels, weight,
                             foreground_classes=manifest["foreground_classes"],
                             ignore_label=training["loss"]["ignore_label"],
                             smooth=training["loss"]["dice_smooth"])
        loss.backward()
        opt.step()
        if i:  # the first step is a warm-up
            times.append(time.perf_counter() - t)
        losses.append(loss.item())
    times.sort()
    print(f"RESULT impl=pytorch-eager threads={threads} n={n} size={size} repeats={repeats} "
          f"median_s={times[len(times) // 2]:.4f} peak_rss_mib={peak_rss_mib():.0f} "
          f"losses={','.join(f'{v:.7f}' for v in losses)}")


if __name__ == "__main__":
    main()
