"""AdamW parameter groups, gradient clipping and the EMA target update, as in official V-JEPA."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn

from . import kernels


def _no_decay(name: str, p: torch.Tensor) -> bool:
    # Official rule: biases and every 1-D tensor (LayerNorm weights) skip weight decay. Mask
    # tokens are [1, 1, D], so they *are* decayed.
    return "bias" in name or p.dim() == 1


def param_groups(encoder: nn.Module, predictor: nn.Module) -> list[dict]:
    """The four official groups, in the official order: encoder decay, predictor decay, encoder
    no-decay, predictor no-decay. Frozen tensors (pos embeds) sit in the decay groups as in the
    official code; they never get a gradient, so AdamW leaves them alone."""
    enc, pred = list(encoder.named_parameters()), list(predictor.named_parameters())
    return [
        {"params": [p for n, p in enc if not _no_decay(n, p)]},
        {"params": [p for n, p in pred if not _no_decay(n, p)]},
        {"params": [p for n, p in enc if _no_decay(n, p)], "WD_exclude": True, "weight_decay": 0.0},
        {"params": [p for n, p in pred if _no_decay(n, p)], "WD_exclude": True, "weight_decay": 0.0},
    ]


def build_optimizer(
    encoder: nn.Module,
    predictor: nn.Module,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over the official groups. lr and wd are set by :class:`~vjepa_fast.schedules.Schedules`
    before every step. ``fused=None`` uses PyTorch's fused kernel when the parameters are on CUDA."""
    if fused is None:
        fused = next(encoder.parameters()).is_cuda
    return torch.optim.AdamW(param_groups(encoder, predictor), betas=betas, eps=eps, fused=fused or None)


def clip_gradients(encoder: nn.Module, predictor: nn.Module, max_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder and predictor are clipped separately, each to its own total norm (official rule).
    Returns the two pre-clip norms as tensors (no host sync)."""
    return (
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), max_norm),
        torch.nn.utils.clip_grad_norm_(predictor.parameters(), max_norm),
    )


def clipping_active(epoch: int, warmup: float, clip_grad: float | None) -> bool:
    """Official rule: clip only once ``epoch > warmup`` (0-based epoch), and only if set."""
    return bool(clip_grad) and epoch > warmup


@torch.no_grad()
def ema_update_(target: nn.Module | Iterable[torch.Tensor], source: nn.Module | Iterable[torch.Tensor], momentum) -> None:
    """target ← m·target + (1 − m)·source over all parameters, in one fused launch when possible."""
    t = list(target.parameters()) if isinstance(target, nn.Module) else list(target)
    s = list(source.parameters()) if isinstance(source, nn.Module) else list(source)
    if len(t) != len(s):
        raise ValueError(f"EMA target has {len(t)} tensors, source has {len(s)}")
    kernels.fused_ema_(t, s, momentum)
