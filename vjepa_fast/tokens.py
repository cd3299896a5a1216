"""Token bookkeeping shared by the encoder, predictor and loss: gathers by kept-token index.

These route through :mod:`vjepa_fast.kernels`, which picks the Triton kernels or their PyTorch
references (``VJEPA_FAST_KERNELS``).
"""
from __future__ import annotations

import torch


def gather_tokens(x: torch.Tensor, idx: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
    """x [B, N, D], idx [B, K] → x[b, idx[b]] (+ pos[idx[b]]) as [B, K, D]."""
    if idx.dim() != 2 or idx.shape[0] != x.shape[0]:
        raise ValueError(f"mask indices must be [B, K] with B={x.shape[0]}, got {tuple(idx.shape)}")
    out = torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    if pos is not None:
        out = out + pos.reshape(-1, pos.shape[-1])[idx]
    return out
