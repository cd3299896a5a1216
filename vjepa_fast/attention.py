"""One switch for the attention backend used by every block in the package.

``VJEPA_FAST_ATTN`` (or :func:`set_attention_backend`) picks ``auto`` (PyTorch's own choice),
``math``, ``flash``, ``efficient`` or ``cudnn``. The choice is read once into a module global, so
no context manager wraps the call unless a backend was forced, and then it is the non-deprecated
``torch.nn.attention.sdpa_kernel``, which torch.compile understands.
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {
    "auto": None,
    "math": SDPBackend.MATH,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}

_backend: str = "auto"


def set_attention_backend(name: str) -> None:
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {sorted(BACKENDS)}")
    _backend = name


def get_attention_backend() -> str:
    return _backend


@contextlib.contextmanager
def attention_backend(name: str):
    """Temporarily switch the backend (tests, benchmarks)."""
    previous = _backend
    set_attention_backend(name)
    try:
        yield
    finally:
        set_attention_backend(previous)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Non-causal, unmasked scaled-dot-product attention on [B, heads, L, head_dim] tensors."""
    forced = BACKENDS[_backend]
    if forced is None:
        return F.scaled_dot_product_attention(q, k, v)
    with sdpa_kernel([forced]):
        return F.scaled_dot_product_attention(q, k, v)


set_attention_backend(os.environ.get("VJEPA_FAST_ATTN", "auto"))
