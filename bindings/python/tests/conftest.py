"""Fixtures shared by the bundle-generator tests. torch is imported inside the fixture: the data
generator's tests (test_synth.py) run in the torch-free test virtualenv."""
import pytest


def pytest_configure(config):
    # The experimental GEMM weight-gradient export takes many minutes to trace; it is not used by
    # the shipped bundle, so `make test` deselects it and `make test-slow` runs it.
    config.addinivalue_line("markers", "slow: export tests of experimental options (make test-slow)")


@pytest.fixture(scope="module")
def model():
    """A tiny 4-level U-Net (2 base channels, 3 classes) in eval mode, seeded."""
    import torch

    from asfda_tools.unet import UNet3D

    torch.manual_seed(0)
    torch.set_num_threads(2)
    return UNet3D(1, 3, base_channels=2, levels=4).eval()
