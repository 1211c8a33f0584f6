"""An nnU-Net-style 3D U-Net whose forward returns segmentation logits and a feature embedding.

Layout [N, C, Z, Y, X]. Each spatial size must be divisible by ``size_divisible_by`` =
2 ** (levels - 1), so every stride-2 stage halves it exactly and the skips line up.
"""
from __future__ import annotations

import torch
from torch import nn


class ConvBlock(nn.Module):
    """Conv3d k3 -> InstanceNorm3d(affine) -> LeakyReLU(0.01)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        # No conv bias: the instance norm subtracts the per-channel mean, so a bias before it
        # has no effect on the output and an exactly-zero gradient that AdamW would only drift.
        self.conv = nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm = nn.InstanceNorm3d(cout, affine=True)
        self.act = nn.LeakyReLU(0.01)

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))


def _stage(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(ConvBlock(cin, cout, stride), ConvBlock(cout, cout))


class UNet3D(nn.Module):
    """``forward(x) -> (logits [N, classes, Z, Y, X], features [N, C_deep])``.

    ``features`` is the global average over space of the deepest encoder stage (the bottleneck),
    the embedding the library uses to score the domain gap.
    """

    def __init__(self, in_channels: int, num_classes: int, base_channels: int = 16,
                 levels: int = 4, max_channels: int = 320):
        super().__init__()
        if levels < 2:
            raise ValueError("a U-Net needs at least 2 resolution levels")
        ch = [min(base_channels * 2 ** i, max_channels) for i in range(levels)]
        self.in_channels, self.num_classes, self.levels = in_channels, num_classes, levels
        self.feature_channels = ch[-1]
        self.size_divisible_by = 2 ** (levels - 1)
        self.encoder = nn.ModuleList(
            [_stage(in_channels, ch[0], 1)]
            + [_stage(ch[i - 1], ch[i], 2) for i in range(1, levels)])
        # Decoder stage i (i = levels-2 .. 0) upsamples ch[i+1] -> ch[i] and fuses the skip.
        self.up = nn.ModuleList(
            [nn.ConvTranspose3d(ch[i + 1], ch[i], 2, stride=2) for i in range(levels - 1)])
        self.decoder = nn.ModuleList([_stage(2 * ch[i], ch[i], 1) for i in range(levels - 1)])
        self.head = nn.Conv3d(ch[0], num_classes, 1)

    def forward(self, x):
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        features = x.mean(dim=(2, 3, 4))
        for i in reversed(range(self.levels - 1)):
            x = self.decoder[i](torch.cat([self.up[i](x), skips[i]], dim=1))
        return self.head(x), features
