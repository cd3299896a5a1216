"""AdamW parameter groups, gradient clipping and the EMA target update, as in official V-JEPA, plus
:class:`FusedAdamWEMA`: the AdamW step and the EMA in one fused pass over the same optimizer state."""
from __future__ import annotations

from collections import defaultdict
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


def _scalar_dtype() -> torch.dtype:
    # torch's AdamW keeps state['step'] in this dtype on the CPU (non-fused, non-capturable layout).
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class FusedAdamWEMA:
    """``torch.optim.AdamW`` step + official EMA in one pass (:func:`vjepa_fast.kernels.fused_adamw_ema_`).

    The wrapped AdamW stays the single source of truth: its ``param_groups`` carry lr / weight decay
    (written by :class:`~vjepa_fast.schedules.Schedules` before every step) and its ``state[p]``
    holds ``step`` / ``exp_avg`` / ``exp_avg_sq`` in the layout of torch's non-fused AdamW (``step``
    a 0-d CPU tensor). So ``state_dict()`` is a plain AdamW state dict: checkpoints keep the official
    format, and state written by torch's AdamW (official files, ``meta.fused_optimizer: false`` runs,
    ``fused=True`` runs) loads here and vice versa. The wrapped optimizer's own ``step()`` is never
    called.

    ``step(momentum)`` = AdamW over every parameter with a gradient (decoupled weight decay, bias
    corrections, per-group lr / wd, as ``_single_tensor_adamw``), then ``t = m*t + (1-m)*p`` for every
    (target, source) pair of the EMA. Encoder parameters are updated and averaged into their target in
    the same kernel; predictor parameters get AdamW only; EMA sources that had no gradient (the
    frozen ``pos_embed``) get the EMA alone, as the official loop averages every encoder tensor.

    Duck-types the parts of an optimizer that :class:`torch.amp.GradScaler` uses (``param_groups``,
    ``step(**kwargs)``): ``scaler.unscale_(f)`` / ``scaler.step(f, momentum=m)`` work, and ``stepped``
    says afterwards whether the scaler ran the step (it skips it on inf/NaN gradients; the caller
    then still owes the EMA: :meth:`ema_only`).

    Not supported (refused): amsgrad, maximize, per-group betas / eps, sparse or complex gradients,
    DTensor (FSDP) parameters.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, ema_targets: Iterable[torch.Tensor] = (),
                 ema_sources: Iterable[torch.Tensor] = ()):
        if not isinstance(optimizer, torch.optim.AdamW):
            raise TypeError(f"FusedAdamWEMA wraps a torch.optim.AdamW, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        targets, sources = list(ema_targets), list(ema_sources)
        if len(targets) != len(sources):
            raise ValueError(f"EMA target has {len(targets)} tensors, source has {len(sources)}")
        self._pairs = list(zip(targets, sources))
        self._target_of = {id(s): t for t, s in self._pairs}
        for group in optimizer.param_groups:
            for p in group["params"]:
                if hasattr(p, "to_local"):
                    raise NotImplementedError("FusedAdamWEMA does not support FSDP (DTensor) parameters")
        self.stepped = False
        self._steps_to_host()

    # -- the optimizer surface -----------------------------------------------------------------
    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.optimizer.load_state_dict(state_dict)
        self._steps_to_host()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def _steps_to_host(self) -> None:
        """Move ``state['step']`` to the CPU once (a fused/capturable torch AdamW, or a loaded state
        dict whose groups say fused, keeps it on the device), so reading it per step never syncs."""
        for st in self.optimizer.state.values():
            step = st.get("step")
            if isinstance(step, torch.Tensor) and step.device.type != "cpu":
                st["step"] = step.detach().to("cpu", _scalar_dtype())
            elif step is not None and not isinstance(step, torch.Tensor):
                st["step"] = torch.tensor(float(step), dtype=_scalar_dtype())

    # -- the fused step --------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, momentum) -> None:
        """One AdamW step of every parameter with a gradient, then the EMA with ``momentum``."""
        groups = self.optimizer.param_groups
        betas, eps = tuple(groups[0]["betas"]), groups[0]["eps"]
        for i, g in enumerate(groups):
            if g.get("amsgrad") or g.get("maximize"):
                raise NotImplementedError(f"param group {i}: amsgrad / maximize are not supported by the "
                                          "fused step")
            if tuple(g["betas"]) != betas or g["eps"] != eps:
                raise NotImplementedError("the fused step needs the same betas and eps in every param group")
        rows = []  # (group index, param, grad, state) of every tensor AdamW updates now
        for gi, g in enumerate(groups):
            for p in g["params"]:
                grad = p.grad
                if grad is None:  # torch's AdamW skips these too (no state, no weight decay)
                    continue
                if grad.is_sparse or torch.is_complex(p):
                    raise NotImplementedError("the fused step supports dense real parameters only")
                st = self.optimizer.state[p]
                if not st:
                    st["step"] = torch.zeros((), dtype=_scalar_dtype())
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                rows.append((gi, p, grad, st))
        step_values = []
        if rows:
            steps = [st["step"] for *_, st in rows]
            torch._foreach_add_(steps, 1)  # AdamW's step_t += 1, on CPU scalars
            step_values = torch.stack(steps).tolist()  # CPU tensors: no device sync
        # Bias corrections depend on the step count, so tensors are launched per (step, EMA or not):
        # two launches in practice (encoder with EMA, predictor without), more only if some
        # gradients were None in earlier steps.
        buckets: dict[tuple, list[tuple]] = defaultdict(list)
        for row, s in zip(rows, step_values):
            buckets[(s, id(row[1]) in self._target_of)].append(row)
        for (s, with_ema), bucket in buckets.items():
            used = sorted({gi for gi, *_ in bucket})  # the coefficient table has a row per group used
            row_of = {gi: k for k, gi in enumerate(used)}
            kernels.fused_adamw_ema_(
                [p for _, p, _, _ in bucket], [g for _, _, g, _ in bucket],
                [st["exp_avg"] for *_, st in bucket], [st["exp_avg_sq"] for *_, st in bucket],
                [self._target_of[id(p)] for _, p, _, _ in bucket] if with_ema else None,
                lr=[groups[gi]["lr"] for gi in used],
                weight_decay=[groups[gi]["weight_decay"] for gi in used],
                step=s, betas=betas, eps=eps, momentum=momentum if with_ema else None,
                group_ids=[row_of[gi] for gi, *_ in bucket],
            )
        updated = {id(p) for _, p, _, _ in rows}
        rest = [(t, src) for t, src in self._pairs if id(src) not in updated]
        if rest:
            kernels.fused_ema_([t for t, _ in rest], [src for _, src in rest], momentum)
        self.stepped = True

    @torch.no_grad()
    def ema_only(self, momentum) -> None:
        """The EMA alone (after a step the GradScaler skipped: the official loop still averages)."""
        if self._pairs:
            kernels.fused_ema_([t for t, _ in self._pairs], [s for _, s in self._pairs], momentum)
