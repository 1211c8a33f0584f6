#!/usr/bin/env python3
"""Times one PyTorch-eager training step (forward + backward + AdamW) of the demo U-Net
architecture, the peer of `cargo run --release --example train_step_time`.

Usage: .venv-torch/bin/python scripts/train_step_time.py [N] [SIZE] [REPEATS]
"""
import ctypes
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bindings" / "python"))
from asfda_tools.trainstep import dice_ce  # noqa: E402
from asfda_tools.unet import UNet3D  # noqa: E402

n, size, repeats = (int(a) for a in (sys.argv[1:] + ["2", "64", "5"][len(sys.argv) - 1:])[:3])
torch.set_num_threads(2)
libc = ctypes.CDLL("libc.so.6")  # same allocator setting as the training script
libc.mallopt(-1, 2**30)
libc.mallopt(-3, 2**30)
model = UNet3D(1, 4, base_channels=16, levels=4, max_channels=64)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-2)
x = torch.randn(n, 1, size, size, size)
y = torch.randint(0, 4, (n, size, size, size))
times = []
for i in range(repeats + 1):
    t = time.perf_counter()
    loss, _, _ = dice_ce(model(x)[0], y, torch.ones(n), foreground_classes=[1, 2, 3], ignore_label=255)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if i:  # the first step is a warm-up
        times.append(time.perf_counter() - t)
times.sort()
print(f"PyTorch eager train step (2 threads): N={n} {size}^3 median {times[len(times) // 2]:.3f} s over {repeats}")
