"""Fixtures shared by the bundle-generator tests."""
import pytest
import torch

from asfda_tools.unet import UNet3D


@pytest.fixture(scope="module")
def model():
    """A tiny 4-level U-Net (2 base channels, 3 classes) in eval mode, seeded."""
    torch.manual_seed(0)
    torch.set_num_threads(2)
    return UNet3D(1, 3, base_channels=2, levels=4).eval()
