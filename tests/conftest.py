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
