"""Token bookkeeping shared by the encoder and predictor: gathers by kept-token index and the
predictor's input assembly. Both route through :mod:`vjepa_fast.kernels`, which picks the Triton
kernels or their PyTorch references (``VJEPA_FAST_KERNELS``)."""
from __future__ import annotations

import torch

from . import kernels


def gather_tokens(x: torch.Tensor, idx: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
    """x [B, N, D], idx [B, K] → x[b, idx[b]] (+ pos[idx[b]] from an un-repeated [N, D] table)."""
    if idx.dim() != 2 or idx.shape[0] != x.shape[0]:
        raise ValueError(f"mask indices must be [B, K] with B={x.shape[0]}, got {tuple(idx.shape)}")
    return kernels.masked_gather(x, idx, pos)


def assemble_predictor_input(
    ctx: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor, pos: torch.Tensor, mask_token: torch.Tensor
) -> torch.Tensor:
    """[ctx + pos[ctx_idx], mask_token + pos[tgt_idx]] along the token dim: [B, Kc + Kt, D]."""
    return kernels.assemble_predictor_input(ctx, ctx_idx, tgt_idx, pos, mask_token)
