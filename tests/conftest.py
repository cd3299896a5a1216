"""Shared pytest setup.

Without CUDA, run the Triton kernels in the Triton interpreter. ``triton.jit`` reads
``TRITON_INTERPRET`` when it decorates a kernel, i.e. when ``vjepa_fast.kernels`` is first imported,
so this must happen here, before any test module imports triton or the kernels.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=["torch", "triton"])
def kernel_setting(request, monkeypatch):
    """Runs a test once per kernel setting the package offers (``VJEPA_FAST_KERNELS``: the PyTorch
    ops, the Triton kernels); the official-parity tests check both."""
    monkeypatch.setenv("VJEPA_FAST_KERNELS", request.param)
    return request.param


@pytest.fixture(scope="module")
def one_thread():
    """torch on one intra-op thread while a module's tests run (``pytestmark =
    pytest.mark.usefixtures("one_thread")``): for tiny models more threads only add synchronisation,
    many times slower on a shared host."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """A small moving-digits demo dataset (``make_demo_data``: 16 train / 8 val clips of 8 frames at
    32 px, with its CSV label files), made once per test module that asks for it."""
    from vjepa_fast.demo_data import make_demo_data

    d = tmp_path_factory.mktemp("demo")
    make_demo_data(str(d), n_train=16, n_val=8, frames=8, size=32)
    return d
