"""Official V-JEPA schedules: warmup-cosine lr, cosine weight-decay *increase*, linear EMA momentum,
and V-JEPA 2's cooldown lr (linear decay).

All are pure functions of the iteration number, wrapped in one stateful object whose only state is
that number, so resuming is exact and fast-forwarding is free.

V-JEPA 2 (vjepa2 ``src/utils/schedulers.py``, ``configs/train/*``) uses the same classes: its
pretraining sets ``final_lr = lr`` (linear warmup, then constant), ``final_weight_decay =
weight_decay`` and ``ema: [m, m]`` (both constant); its cooldown (``is_anneal: true``) replaces the lr
schedule by :class:`LinearDecayLR` over ``T_max = int(ipe_scale·epochs·ipe)``, with constant wd and
EMA.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WarmupCosineLR:
    """lr at iteration s >= 1: linear from start_lr to ref_lr over ``warmup_steps``, then cosine
    toward ``final_lr`` over the remaining ``T_max - warmup_steps`` iterations."""

    warmup_steps: int
    start_lr: float
    ref_lr: float
    final_lr: float
    T_max: int

    def __call__(self, s: int) -> float:
        if s < self.warmup_steps:
            return self.start_lr + (s / max(1, self.warmup_steps)) * (self.ref_lr - self.start_lr)
        progress = (s - self.warmup_steps) / max(1, self.T_max - self.warmup_steps)
        cos = self.final_lr + (self.ref_lr - self.final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(self.final_lr, cos)


@dataclass(frozen=True)
class LinearDecayLR:
    """V2 cooldown lr at iteration s >= 1: ``ref_lr + (s / T_max)·(final_lr − ref_lr)``, no warmup
    and no clamp (official ``LinearDecaySchedule``; the released cooldowns stop at 0.8·T_max)."""

    ref_lr: float
    final_lr: float
    T_max: int

    def __call__(self, s: int) -> float:
        return self.ref_lr + (s / max(1, self.T_max)) * (self.final_lr - self.ref_lr)


@dataclass(frozen=True)
class CosineWD:
    """Weight decay at iteration s >= 1, moving ref_wd → final_wd along a half cosine (an increase in
    the V-JEPA configs), clamped so it never passes final_wd."""

    ref_wd: float
    final_wd: float
    T_max: int

    def __call__(self, s: int) -> float:
        progress = s / self.T_max
        wd = self.final_wd + (self.ref_wd - self.final_wd) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(self.final_wd, wd) if self.final_wd <= self.ref_wd else min(self.final_wd, wd)


@dataclass(frozen=True)
class LinearMomentum:
    """EMA momentum for the i-th update (i >= 0): ema0 + i·(ema1 − ema0)/total, held at ema1 after
    ``total`` updates (the official generator would stop there)."""

    ema0: float
    ema1: float
    total: float

    def __call__(self, i: int) -> float:
        i = min(i, int(self.total))
        return self.ema0 + i * (self.ema1 - self.ema0) / self.total


class Schedules:
    """The three schedules of one run plus the iteration counter.

    ``step(optimizer)`` advances the counter and writes lr (every group) and wd (groups without
    ``WD_exclude``) as the official loop does before each forward pass; ``momentum()`` is the value
    for the EMA update that follows that iteration's optimizer step.
    """

    def __init__(
        self,
        ipe: int,
        epochs: int,
        ipe_scale: float = 1.25,
        warmup: float = 40,
        start_lr: float = 2e-4,
        lr: float = 6.25e-4,
        final_lr: float = 1e-6,
        weight_decay: float = 0.04,
        final_weight_decay: float = 0.4,
        ema: tuple[float, float] = (0.998, 1.0),
        anneal: bool = False,
    ):
        """``anneal``: the V2 cooldown lr (:class:`LinearDecayLR` from ``lr`` to ``final_lr``;
        ``warmup`` and ``start_lr`` are then unused), as the official ``is_anneal``."""
        if ipe < 1 or epochs < 1:
            raise ValueError(f"ipe and epochs must be >= 1, got ipe={ipe}, epochs={epochs}")
        t_max = int(ipe_scale * epochs * ipe)
        self.lr = LinearDecayLR(lr, final_lr, t_max) if anneal else WarmupCosineLR(int(warmup * ipe), start_lr, lr, final_lr, t_max)
        self.wd = CosineWD(weight_decay, final_weight_decay, t_max)
        self.ema = LinearMomentum(ema[0], ema[1], ipe * epochs * ipe_scale)
        self.iteration = 0

    @classmethod
    def from_config(cls, opt, ipe: int | None = None) -> "Schedules":
        """From an ``optimization`` config section (official key names); ``ipe`` overrides
        ``opt.ipe`` (the official fallback when ipe is null is the loader length). A section with a
        true ``is_anneal`` (V2 cooldown) gets the linear-decay lr."""
        return cls(
            ipe=ipe if ipe is not None else opt.ipe, epochs=opt.epochs, ipe_scale=opt.ipe_scale, warmup=opt.warmup, start_lr=opt.start_lr,
            lr=opt.lr, final_lr=opt.final_lr, weight_decay=opt.weight_decay,
            final_weight_decay=opt.final_weight_decay, ema=tuple(opt.ema), anneal=bool(getattr(opt, "is_anneal", False)),
        )

    def step(self, optimizer: torch.optim.Optimizer | None = None) -> tuple[float, float]:
        self.iteration += 1
        lr, wd = self.lr(self.iteration), self.wd(self.iteration)
        if optimizer is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr
                if not group.get("WD_exclude", False):
                    group["weight_decay"] = wd
        return lr, wd

    def momentum(self) -> float:
        """Momentum of the EMA update after the current iteration (the first update uses i = 0)."""
        return self.ema(self.iteration - 1)

    def state_dict(self) -> dict:
        return {"iteration": self.iteration}

    def load_state_dict(self, state: dict) -> None:
        self.iteration = int(state["iteration"])
