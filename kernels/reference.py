"""Pure-PyTorch references of every kernel: the CPU path and the test oracle.

Each function computes what the official V-JEPA code computes (facebookresearch/jepa), written with
plain advanced indexing instead of ``repeat`` + ``torch.gather``. The semantics the Triton kernels
reproduce are fixed here:

* Position-embedding adds follow the official in-place ``x += pos``: the sum is computed in fp32 (or
  fp64) and rounded to the dtype of the token tensor; ``pos`` is a frozen table and gets no gradient.
* The loss is computed in fp32 (like the official code under bf16 autocast, where ``layer_norm`` runs
  in fp32) and returned as a 0-d fp32 tensor; ``target`` gets no gradient.
* Indices are unique within a row (they come from masks); with duplicates the references accumulate
  gradients while the kernels keep one of them.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

LN_EPS = 1e-5  # F.layer_norm default, used by the official loss


def _pos_table(pos: torch.Tensor, d: int) -> torch.Tensor:
    """[N,D] or [1,N,D] -> [N,D], detached (the position table is a constant)."""
    if pos.dim() == 3:
        if pos.shape[0] != 1:
            raise ValueError(f"pos must be [N,D] or [1,N,D], got {tuple(pos.shape)}")
        pos = pos[0]
    if pos.dim() != 2 or pos.shape[1] != d:
        raise ValueError(f"pos must be [N,{d}] or [1,N,{d}], got {tuple(pos.shape)}")
    return pos.detach()


def _rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x[b, idx[b, k]] for x [B,N,...] and idx [B,K]."""
    batch = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
    return x[batch, idx.long()]


def masked_gather(x: torch.Tensor, idx: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
    """``x[b, idx[b,k]] (+ pos[idx[b,k]])`` -> [B,K,D] in x's dtype (official ``x += pos; apply_masks``)."""
    out = _rows(x, idx)
    if pos is not None:
        out = (out + _pos_table(pos, x.shape[-1])[idx.long()]).to(x.dtype)
    return out


def assemble_predictor_input(
    ctx: torch.Tensor,
    ctx_idx: torch.Tensor,
    tgt_idx: torch.Tensor,
    pos: torch.Tensor,
    mask_token: torch.Tensor,
) -> torch.Tensor:
    """``cat([ctx + pos[ctx_idx], mask_token + pos[tgt_idx]], 1)`` -> [B, Kc+Kt, D].

    As in the official predictor (``x += pos``; ``pred_tokens += pos``), each half keeps its own
    dtype (ctx's, mask_token's) and ``cat`` promotes them.
    """
    d = ctx.shape[-1]
    table = _pos_table(pos, d)
    token = mask_token.reshape(1, 1, d)
    head = (ctx + table[ctx_idx.long()]).to(ctx.dtype)
    tail = (token + table[tgt_idx.long()]).to(mask_token.dtype)
    return torch.cat([head, tail], dim=1)


def assemble_sorted_predictor_input(
    z: torch.Tensor, order: torch.Tensor, mask_token: torch.Tensor
) -> torch.Tensor:
    """V2: ``cat([z, mask_token.expand(B, Kt, -1)], 1)`` rows gathered by ``order`` [B, L] -> [B, L, D].

    The official V2 predictor (no position table) concatenates the embedded context and the mask
    tokens and reorders the rows by the argsort of their token ids; ``cat`` promotes the two dtypes
    (fp32 for a bf16 ``z`` and the fp32 mask token under autocast). Autograd through ``cat`` +
    ``gather`` gives the gradients: ``z`` its rows back, the mask token the sum of its rows.
    """
    B, Kc, d = z.shape
    token = mask_token.reshape(1, 1, d).expand(B, order.shape[1] - Kc, d)
    x = torch.cat([z, token], dim=1)
    return x.gather(1, order.long().unsqueeze(-1).expand(-1, -1, d))


def masked_l1_loss(
    pred: torch.Tensor, target: torch.Tensor, idx: torch.Tensor, eps: float = LN_EPS
) -> torch.Tensor:
    """``mean(|pred - layer_norm(target)[idx]|)`` in fp32 (fp64 for fp64 inputs); target gets no grad."""
    acc = torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)
    rows = _rows(target.detach(), idx).to(acc)
    t_hat = F.layer_norm(rows, (rows.shape[-1],), eps=eps)
    return (pred.to(acc) - t_hat).abs().mean()


def ema_(targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor], momentum) -> None:
    """The official EMA: ``t.mul_(m).add_((1 - m) * s)`` for every pair."""
    with torch.no_grad():
        for t, s in zip(targets, sources):
            t.mul_(momentum).add_((1 - momentum) * s)


def adamw_ema_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    ema_params: Sequence[torch.Tensor] | None = None,
    *,
    lr,
    weight_decay,
    step,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    momentum=None,
    group_ids: Sequence[int] | None = None,
) -> None:
    """torch.optim.AdamW (single-tensor, non-capturable) step, then the official EMA.

    ``lr`` / ``weight_decay`` are one value or one per group (``group_ids[i]`` is param i's group);
    ``step`` is this update's 1-based step count (AdamW's ``state['step']`` after its increment).
    """
    beta1, beta2 = betas
    step = float(step.item() if isinstance(step, torch.Tensor) else step)
    n = len(params)
    group_ids = list(group_ids) if group_ids is not None else [0] * n
    lrs = _per_group(lr)
    wds = _per_group(weight_decay)
    bc1 = 1 - beta1**step
    bc2_sqrt = (1 - beta2**step) ** 0.5
    with torch.no_grad():
        for i in range(n):
            g = group_ids[i]
            lr_g = float(lrs[g] if len(lrs) > 1 else lrs[0])
            wd_g = float(wds[g] if len(wds) > 1 else wds[0])
            p, grad, m, v = params[i], grads[i], exp_avgs[i], exp_avg_sqs[i]
            p.mul_(1 - lr_g * wd_g)
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (v.sqrt() / bc2_sqrt).add_(eps)
            p.addcdiv_(m, denom, value=-(lr_g / bc1))
        if ema_params is not None and len(ema_params) > 0:
            ema_(ema_params, params, momentum)


def _per_group(value) -> list:
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        return [float(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [float(v.item() if isinstance(v, torch.Tensor) else v) for v in value]
    return [float(value.item() if isinstance(value, torch.Tensor) else value)]


def rope_rotate_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                   sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """V-JEPA 2 RoPE on q and k: ``vjepa_fast.rope.apply_rope`` (the official rotation, op for op)
    applied to each; ``cos``/``sin`` [1 or B, 1, L, R] from ``rope_tables``."""
    from ..rope import apply_rope  # noqa: PLC0415 - the package's own rotation is the reference

    return apply_rope(q, cos, sin), apply_rope(k, cos, sin)
