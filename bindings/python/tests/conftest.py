"""Fixtures shared by the bundle-generator tests. torch is imported inside the fixture: the data
generator's tests (test_synth.py) run in the torch-free test virtualenv."""
import pytest


@pytest.fixture(scope="module")
def model():
    """A tiny 4-level U-Net (2 base channels, 3 classes) in eval mode, seeded."""
    import torch

    from asfda_tools.unet import UNet3D

    torch.manual_seed(0)
    torch.set_num_threads(2)
    return UNet3D(1, 3, base_channels=2, levels=4).eval()
