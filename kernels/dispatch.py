"""Backend selection for vjepa_fast.kernels: one switch, ``VJEPA_FAST_KERNELS``.

Rule (read on every call, so tests can flip it and torch.compile guards on it):

* ``VJEPA_FAST_KERNELS=torch``  -> the pure-PyTorch references in ``kernels/reference.py``.
* ``VJEPA_FAST_KERNELS=triton`` -> the Triton kernels. Raises a clear ``RuntimeError`` when triton
  cannot be imported, or when the tensors are not on CUDA and the Triton interpreter is off.
* unset / ``auto`` / empty      -> Triton when the input lives on CUDA and triton imports, else torch.

The Triton interpreter (``TRITON_INTERPRET=1``, numpy simulation of every program on the CPU) counts
as an available Triton backend for CPU tensors, so ``VJEPA_FAST_KERNELS=triton TRITON_INTERPRET=1``
runs the real kernels on CPU tensors. ``triton.jit`` reads ``TRITON_INTERPRET`` when it *decorates* a
kernel, i.e. when ``vjepa_fast.kernels`` is first imported; setting it later has no effect. The test
suite therefore sets it in ``tests/conftest.py`` before anything imports triton. ``INTERPRET`` below is
captured at import for the same reason.

When triton is not installed (macOS, Windows), ``triton`` / ``tl`` here are stand-ins that let the
kernel modules define their ``@triton.jit`` functions; launching one raises.
"""
from __future__ import annotations

import os

import torch

ENV_VAR = "VJEPA_FAST_KERNELS"
_CHOICES = ("auto", "triton", "torch")

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
    _TRITON_IMPORT_ERROR: BaseException | None = None
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    HAS_TRITON = False
    _TRITON_IMPORT_ERROR = exc

    class _MissingKernel:
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            raise RuntimeError(
                f"Triton kernel {self.fn.__name__} cannot run: triton is not installed "
                f"({_TRITON_IMPORT_ERROR})"
            )

    class _MissingTriton:
        """Stand-in for ``triton`` and ``triton.language`` so kernel modules import without triton."""

        constexpr = object  # lets `BLOCK: tl.constexpr` annotations evaluate

        @staticmethod
        def jit(fn=None, **kwargs):
            return _MissingKernel(fn) if fn is not None else _MissingKernel

    triton = tl = _MissingTriton()


def _interpreter_on() -> bool:
    if not HAS_TRITON:
        return False
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


# Captured once: triton.jit decided at import time whether our kernels are interpreted.
INTERPRET: bool = _interpreter_on()


def requested_backend() -> str:
    """The value of ``VJEPA_FAST_KERNELS`` normalised to one of ``auto``, ``triton``, ``torch``."""
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in _CHOICES:
        raise ValueError(f"{ENV_VAR}={value!r}: expected one of {', '.join(_CHOICES)}")
    return value


def _device_of(where) -> torch.device:
    if where is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(where, torch.Tensor):
        return where.device
    return torch.device(where)


def kernel_backend(where: torch.Tensor | torch.device | str | None = None) -> str:
    """Return ``"triton"`` or ``"torch"``: the implementation the functional APIs use for ``where``.

    ``where`` is a tensor, a device, or None (the default device: CUDA when available).
    """
    choice = requested_backend()
    if choice == "torch":
        return "torch"
    device = _device_of(where)
    if choice == "triton":
        if not HAS_TRITON:
            raise RuntimeError(
                f"{ENV_VAR}=triton but triton cannot be imported ({_TRITON_IMPORT_ERROR}); "
                f"install triton or set {ENV_VAR}=torch"
            )
        if device.type != "cuda" and not INTERPRET:
            raise RuntimeError(
                f"{ENV_VAR}=triton needs CUDA tensors (got {device.type}); on CPU set TRITON_INTERPRET=1 "
                "before importing vjepa_fast.kernels to run the kernels in the Triton interpreter"
            )
        return "triton"
    return "triton" if (HAS_TRITON and device.type == "cuda") else "torch"


def use_triton(x: torch.Tensor) -> bool:
    return kernel_backend(x) == "triton"
