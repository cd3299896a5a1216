"""One switch for the attention implementation used by every block in the package.

``VJEPA_FAST_ATTN`` (or :func:`set_attention_backend`) picks:

* ``auto``: PyTorch SDPA with its own backend choice;
* ``math``, ``flash``, ``efficient``, ``cudnn``: one SDPA backend, forced;
* ``flash_attn``: the flash-attn package (``flash_attn_func``; CUDA, fp16/bf16), when installed;
* ``xformers``: ``xformers.ops.memory_efficient_attention``, when installed.

The choice is read once into a module global, so no context manager wraps the call unless an SDPA
backend is forced, and then it is the non-deprecated ``torch.nn.attention.sdpa_kernel``, which
torch.compile understands. V1 attention is never masked and never causal.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SDPA_BACKENDS = {
    "auto": None,
    "math": SDPBackend.MATH,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}
EXTERNAL_BACKENDS = {"flash_attn": "flash_attn", "xformers": "xformers"}  # name -> package
BACKENDS = {**SDPA_BACKENDS, **{name: None for name in EXTERNAL_BACKENDS}}

_backend: str = "auto"


def backend_installed(name: str) -> bool:
    package = EXTERNAL_BACKENDS.get(name)
    return package is None or importlib.util.find_spec(package) is not None


def set_attention_backend(name: str) -> None:
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {sorted(BACKENDS)}")
    if not backend_installed(name):
        raise ValueError(f"attention backend {name!r} needs the {EXTERNAL_BACKENDS[name]!r} package, which is not installed")
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


def _external(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # Both packages take [B, L, heads, head_dim]; ours is [B, heads, L, head_dim].
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if name == "flash_attn":
        from flash_attn import flash_attn_func  # noqa: PLC0415

        out = flash_attn_func(q, k, v)
    else:
        from xformers.ops import memory_efficient_attention  # noqa: PLC0415

        out = memory_efficient_attention(q, k, v)
    return out.transpose(1, 2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """Non-causal, unmasked scaled-dot-product attention on [B, heads, L, head_dim] tensors, with
    the default 1/sqrt(head_dim) scale. ``backend`` overrides the global switch for one call."""
    name = backend or _backend
    if name in EXTERNAL_BACKENDS:
        return _external(name, q, k, v)
    forced = SDPA_BACKENDS[name]
    if forced is None:
        return F.scaled_dot_product_attention(q, k, v)
    with sdpa_kernel([forced]):
        return F.scaled_dot_product_attention(q, k, v)


def available_backends(device: torch.device | str) -> list[str]:
    """Backends that can run on ``device`` here (tests and benchmarks iterate over these)."""
    device = torch.device(device)
    if device.type != "cuda":
        return ["auto", "math", "flash"]  # PyTorch's CPU SDPA has a math and a flash kernel
    names = ["auto", "math", "flash", "efficient", "cudnn"]
    return names + [n for n in EXTERNAL_BACKENDS if backend_installed(n)]


set_attention_backend(os.environ.get("VJEPA_FAST_ATTN", "auto"))
