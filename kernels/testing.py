"""Numeric assertions shared by the kernel tests and benchmarks (no pytest dependency)."""
from __future__ import annotations

import torch

_INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
             torch.float64: torch.int64}  # fmt: skip


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Number of representable values between a and b, elementwise (same dtype; +0 == -0)."""
    if a.dtype != b.dtype:
        raise TypeError(f"dtype mismatch {a.dtype} vs {b.dtype}")
    int_dtype = _INT_VIEW[a.dtype]
    bits = torch.iinfo(int_dtype).bits
    magnitude = (1 << (bits - 1)) - 1

    def ordered(x: torch.Tensor) -> torch.Tensor:
        i = x.contiguous().view(int_dtype).to(torch.int64)
        return torch.where(i < 0, -(i & magnitude), i)

    return (ordered(a) - ordered(b)).abs()


def assert_max_ulp(actual: torch.Tensor, expected: torch.Tensor, max_ulp: int = 1, name: str = "") -> None:
    d = ulp_distance(actual, expected)
    worst = int(d.max()) if d.numel() else 0
    if worst > max_ulp:
        i = int(d.flatten().argmax())
        raise AssertionError(
            f"{name}: {worst} ulp > {max_ulp} at flat index {i}: {actual.flatten()[i].item()!r} vs "
            f"{expected.flatten()[i].item()!r} ({int((d > max_ulp).sum())} elements over)"
        )


_MANTISSA_BITS = {torch.float32: 23, torch.float16: 10, torch.bfloat16: 7, torch.float64: 52}


def ulp_of(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Spacing of ``dtype`` values at magnitude |x| (float64 result; subnormal floor included)."""
    _, exp = torch.frexp(x.double().abs())
    ulp = torch.ldexp(torch.ones_like(x, dtype=torch.float64), exp - 1 - _MANTISSA_BITS[dtype])
    tiny = torch.finfo(dtype).smallest_normal * 2.0 ** -_MANTISSA_BITS[dtype]
    return ulp.clamp_min(tiny)


def assert_ema_close(
    new: torch.Tensor, official: torch.Tensor, t_old: torch.Tensor, s: torch.Tensor, m
) -> None:
    """EMA ``t*m + (1-m)*s`` within 1 ulp of the official ``t.mul_(m).add_((1-m)*s)``.

    The official formula rounds ``t*m`` and ``(1-m)*s`` to the storage dtype before adding; where
    the two nearly cancel (|t_new| much smaller than |t|) its own error is up to an ulp of the
    operands, so the ulp is measured at max(|t_new|, |t*m|, |(1-m)*s|).
    """
    m64 = m.double() if isinstance(m, torch.Tensor) else float(m)
    scale = torch.maximum(official.double().abs(), (t_old.double() * m64).abs())
    scale = torch.maximum(scale, ((1 - m64) * s.double()).abs())
    diff = (new.double() - official.double()).abs()
    bad = (ulp_distance(new, official) > 1) & (diff > ulp_of(scale, new.dtype))
    if bad.any():
        i = int(bad.flatten().nonzero()[0])
        raise AssertionError(
            f"EMA off by more than 1 ulp at flat index {i}: {new.flatten()[i].item()!r} vs "
            f"{official.flatten()[i].item()!r} ({int(bad.sum())} elements)"
        )


def assert_within_torch_error(
    actual: torch.Tensor, exact: torch.Tensor, torch_out: torch.Tensor, rtol: float = 2.0, name: str = ""
) -> None:
    """flash-attention's rule: max|actual - exact| <= rtol * max|torch_out - exact| + noise.

    ``exact`` is the computation in float64 (or float32), ``torch_out`` the same PyTorch computation
    in the test dtype; noise is twice the error of merely rounding ``exact`` to the output dtype.
    """
    exact64 = exact.double()
    err = (actual.double() - exact64).abs().max().item() if actual.numel() else 0.0
    base = (torch_out.double() - exact64).abs().max().item() if actual.numel() else 0.0
    noise = 2 * (exact.to(actual.dtype).double() - exact64).abs().max().item() if actual.numel() else 0.0
    noise = max(noise, 1e-12)
    if err > rtol * base + noise:
        raise AssertionError(
            f"{name}: max error {err:.3e} > {rtol} x torch error {base:.3e} + noise {noise:.3e}"
        )


def kernel_test_device() -> torch.device | None:
    """Where the Triton kernels can run in tests: CUDA, the CPU interpreter, or None (skip)."""
    from .dispatch import HAS_TRITON, INTERPRET

    if not HAS_TRITON:
        return None
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu") if INTERPRET else None


def unique_indices(b: int, n: int, k: int, device, dtype=torch.int64, sort: bool = True) -> torch.Tensor:
    """[b, k] indices, unique within each row (like mask indices; sorted as the collator makes them)."""
    rows = [torch.randperm(n, device=device)[:k] for _ in range(b)]
    idx = torch.stack([r.sort().values if sort else r for r in rows])
    return idx.to(dtype)
