"""Every attention backend that can run here against the math backend, at V-JEPA shapes.

On the CPU that is PyTorch's math and flash kernels; on a GPU the same test also covers the
memory-efficient and cuDNN SDPA backends and flash-attn / xformers when they are installed
(bf16 there, with the flash-attention tolerance rule: error ≤ 2× the math backend's own bf16 error
against float32, plus noise).
"""
from __future__ import annotations

import pytest
import torch

from vjepa_fast.attention import attention, available_backends

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# (tokens, head_dim): full clip 1568 with ViT-L (64) and ViT-H (80) heads, the predictor's 24 at the
# official mean short/long mask sizes (context + target: 364 + 746, 103 + 1101), and the mean
# context lengths alone.
SHAPES = [(1568, 64), (1568, 80), (364 + 746, 24), (103 + 1101, 24), (364, 64), (103, 80)]


@pytest.mark.parametrize("backend", available_backends(DEVICE))
@pytest.mark.parametrize("tokens, head_dim", SHAPES)
def test_backend_matches_math(backend, tokens, head_dim):
    g = torch.Generator(device="cpu").manual_seed(tokens * 131 + head_dim)
    q, k, v = (torch.randn(1, 2, tokens, head_dim, generator=g).to(DEVICE) for _ in range(3))
    ref = attention(q, k, v, backend="math")  # float32 reference
    if DEVICE.type == "cuda":
        dtype = torch.bfloat16
        lo = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        out = attention(*lo, backend=backend).float()
        base = attention(*(t.detach() for t in lo), backend="math").float()
        noise = 2 * (ref + 0.3 - 0.3 - ref).abs().max()
        assert (out - ref).abs().max() <= 2 * (base - ref).abs().max() + noise
    else:
        qs = [t.clone().requires_grad_() for t in (q, k, v)]
        out = attention(*qs, backend=backend)
        assert torch.allclose(out, ref, atol=2e-5, rtol=1e-4), (out - ref).abs().max()
        out.sum().backward()
        refs = [t.clone().requires_grad_() for t in (q, k, v)]
        attention(*refs, backend="math").sum().backward()
        for a, b in zip(qs, refs):
            assert torch.allclose(a.grad, b.grad, atol=2e-5, rtol=1e-4)


def test_unavailable_backend_is_refused():
    from vjepa_fast.attention import backend_installed, set_attention_backend

    for name in ("flash_attn", "xformers"):
        if not backend_installed(name):
            with pytest.raises(ValueError, match="package, which is not installed"):
                set_attention_backend(name)
