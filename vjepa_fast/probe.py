"""Frozen-backbone attentive-probe evaluation: the official V1 (facebookresearch/jepa) and V-JEPA 2
(facebookresearch/vjepa2) ``evals/{video,image}_classification_frozen`` protocols (``protocol: v1|v2``).

``main_probe(cfg)`` trains and evaluates attentive probes on a frozen encoder, as the official evals:

* **encoder** (:mod:`vjepa_fast.eval_encoder`): built for the probe's resolution
  (``optimization.resolution`` for video, ``data.resolution`` for images) with
  ``pretrain.frames_per_clip`` frames, loaded from ``pretrain.folder/pretrain.checkpoint``: our or the
  official V1/V2 checkpoints, the released V2 files, a Hugging Face V-JEPA 2 folder
  (``pretrain.checkpoint_key``, default ``target_encoder``, falling back to ``encoder``). A V1
  ``pos_embed`` of another size is not loaded: the encoder keeps the sin-cos table of its own size,
  as the official loader does; RoPE encoders (``pretrain.use_rope``) need none. ``pretrain.out_layers``:
  the features are the listed blocks' normed outputs concatenated along the tokens (V2's multilevel
  wrapper). Frozen: ``eval()``, no grads, run under ``torch.inference_mode``.
* **video protocol** (``F x S x V``): every sample gives S segments x V spatial views; all clips go
  through the encoder in one batch; with ``attend_across_segments`` (v2: always) the S segments' tokens
  of a view are concatenated (``[B, S*N, D]``) and each view gets one probe forward, else each (view,
  segment) does; prediction = mean of the per-view softmaxes. Training uses 1 view (and S segments
  only when attending across segments). An image encoder (``pretrain.frames_per_clip: 1``) encodes
  every frame and concatenates all tokens of a view (official V1 ``FrameAggregation``).
* **image protocol**: images are repeated ``pretrain.frames_per_clip`` times along time for a video
  encoder (the official forward pre-hook; V2 files call it ``img_as_video_nframes``); fed as they are
  to an image encoder.
* **probes** (:class:`ProbeHeads`), one per ``optimization.multihead`` entry (or one), all trained on
  the same encoder pass, each with its own AdamW, warmup-cosine lr and cosine wd stepped before every
  iteration, and GradScaler under float16:

  - ``v1``: :class:`~vjepa_fast.attentive_probe.AttentiveClassifier` (``classifier.num_probe_blocks``,
    default 1; heads default the encoder's); groups decay / bias + 1-D without decay; wd cosine to
    ``final_weight_decay`` (1e-6, the official function default); grad-norm clip 1.0; loss = mean CE;
  - ``v2``: :class:`~vjepa_fast.attentive_probe.AttentiveClassifierV2` (the V2 files use 4 blocks and
    16 heads; heads default 16); one group, weight decay on every parameter; no clipping; loss = the
    sum of the per-view mean CEs (V2 back-propagates each view's loss). The official V2 grids
    (``multihead_kwargs``) are 20 probes of lr x wd (3 for Diving48 / Jester, 21 with warmups for IN1K).

  Every probe is reported each epoch (CSV, results JSON); the reported figure is the best probe's
  (highest val top-1 at the last epoch; the official V2 log prints the max over the probes each epoch).
* **outputs** in ``pretrain.folder/{eval_name}/{tag}``: ``{write_tag}_r0.csv`` (one row per epoch and
  probe), ``{write_tag}-results.json``, ``{write_tag}-latest.pth.tar`` and ``{write_tag}-confusion.png``
  (<= 20 classes). The checkpoint has the official keys: v1 ``classifier, opt, scaler, epoch,
  batch_size, world_size, lr`` for the best probe; v2 ``classifiers, opt, scaler`` lists of every
  probe plus ``epoch, batch_size, world_size`` (what V2's eval resumes from and
  :func:`vjepa_fast.checkpoint_v2.load_vjepa2_probe` reads); every probe's state for an exact resume
  under ``vjepa_fast``. An official V2 eval checkpoint resumes too.

Speed: the encoder runs once per batch for all probes, under ``inference_mode`` and bf16 autocast on
accelerators; per-step metrics stay on the device (one read-back per ``meta.log_every`` steps and
per epoch); ``data.cache_eval_features`` / ``cache_train_features`` encode the clips once per run.

Deviations from the official eval (see also :mod:`vjepa_fast.eval_data`):

* ``use_bfloat16: true`` runs **bfloat16** autocast without a GradScaler (``meta.autocast_dtype:
  float16`` restores the official float16 + GradScaler); the CPU always runs float32;
* accuracies are exact sample-weighted means (official: mean of per-batch percentages, averaged
  over ranks); single process (no DDP); the val clips are sampled with the epoch-0 randomness
  every epoch;
* the image train transform lacks timm's AutoAugment ``original`` policy;
* the CSV has our columns (the official one writes train/val accuracy under the headers
  ``loss``/``acc``);
* a missing resume checkpoint starts from scratch with a message (official: silently); a
  corrupt one, one whose probes differ from the config, or one with no epoch left to train is an
  error, and so is a new run whose tag holds a finished run's results (official: overwritten).
  The results JSON records the protocol, resolution, frames per clip, frame step, segments x views,
  feature blocks, the probe's blocks and heads, the pretrained checkpoint, key and load report, and
  the whole config;
* v2: the probes' self-attention blocks are not activation-checkpointed unless
  ``classifier.use_activation_checkpointing`` (official: always; the same numbers, less memory);
* V2's action-anticipation protocol (EK100: encoder + predictor) is not implemented.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .attentive_probe import AttentiveClassifier, AttentiveClassifierV2
from .checkpoint import (CheckpointError, atomic_save, clean_state_dict, load_encoder, load_module_state,
                         read_checkpoint)
from .config import EvalConfig
from .eval_encoder import FrozenEncoder, build_frozen_encoder, encoder_kwargs, pretrained_problems
from .preflight import PreflightError, plan_probe_start, runtime_problems
from .schedules import CosineWD, WarmupCosineLR
from .vision_transformer import VIT_PRESETS, VisionTransformer

__all__ = [
    "HeadSpec",
    "head_specs",
    "best_head",
    "probe_param_groups",
    "build_probe",
    "ProbeHeads",
    "FrozenEncoder",
    "build_frozen_encoder",
    "encoder_kwargs",
    "pretrained_problems",
    "encode_batch",
    "EpochMetrics",
    "train_epoch",
    "evaluate",
    "feature_batches",
    "format_result",
    "save_confusion_png",
    "ProbeResult",
    "ProbeEvaluation",
    "main_probe",
    "infer_encoder_spec",
    "run_demo_probes",
    "DEMO_GRID",
]

CONFUSION_MAX_CLASSES = 20


def _print(s: str) -> None:
    print(s, flush=True)


# ====================================================================================================
# probes, optimizers, schedules
# ====================================================================================================
PROTOCOLS = ("v1", "v2")


@dataclass(frozen=True)
class HeadSpec:
    """Optimisation settings of one probe: peak ``lr`` reached from ``start_lr`` by a linear warmup of
    ``warmup`` epochs, then a cosine to ``final_lr``; weight decay along a half cosine from
    ``weight_decay`` to ``final_weight_decay`` (official ``WarmupCosineSchedule`` / ``CosineWDSchedule``,
    the same formulas in V1 and in V2's multi-head eval)."""

    lr: float = 1e-3
    start_lr: float = 1e-3
    final_lr: float = 0.0
    weight_decay: float = 0.01
    final_weight_decay: float = 1e-6
    warmup: float = 0.0

    @property
    def name(self) -> str:
        # the V2 image grid has probes that differ only in their warmup (and start lr)
        warmup = f",warmup={self.warmup:g}" if self.warmup else ""
        return f"lr={self.lr:g},wd={self.weight_decay:g}{warmup}"


def head_specs(opt) -> list[HeadSpec]:
    """Probe settings from an ``optimization`` section: one probe, or one per ``multihead`` entry
    (missing keys from the section; start_lr / final_lr scaled by ``head.lr / lr``)."""
    base = HeadSpec(opt.lr, opt.start_lr, opt.final_lr, opt.weight_decay, opt.final_weight_decay, opt.warmup)
    if not opt.multihead:
        return [base]
    out = []
    for h in opt.multihead:
        lr = base.lr if h.lr is None else h.lr
        ratio = lr / base.lr if base.lr > 0 else 1.0
        out.append(HeadSpec(
            lr=lr,
            start_lr=base.start_lr * ratio if h.start_lr is None else h.start_lr,
            final_lr=base.final_lr * ratio if h.final_lr is None else h.final_lr,
            weight_decay=base.weight_decay if h.weight_decay is None else h.weight_decay,
            final_weight_decay=base.final_weight_decay if h.final_weight_decay is None else h.final_weight_decay,
            warmup=base.warmup if h.warmup is None else h.warmup,
        ))
    return out


def best_head(val_top1: Sequence[float]) -> int:
    """Index of the reported probe of a grid: the highest val top-1, the first on a tie (NaN, an
    empty val set, never wins)."""
    scores = [v if v == v else -math.inf for v in val_top1]
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def probe_param_groups(classifier: nn.Module, protocol: str = "v1") -> list[dict]:
    """AdamW groups of one probe. ``v1`` (official V1 eval): weights with decay; biases and 1-D
    tensors without (``WD_exclude``). ``v2`` (V2 eval ``init_opt``): one group, weight decay on every
    parameter, biases and LayerNorms included."""
    named = list(classifier.named_parameters())
    if protocol == "v2":
        return [{"params": [p for _, p in named]}]
    return [
        {"params": [p for n, p in named if "bias" not in n and p.dim() != 1]},
        {"params": [p for n, p in named if "bias" in n or p.dim() == 1], "WD_exclude": True, "weight_decay": 0.0},
    ]


def build_probe(protocol: str, *, embed_dim: int, num_heads: int, depth: int, num_classes: int,
                activation_checkpointing: bool = False) -> nn.Module:
    """One attentive probe of ``protocol``: V1 :class:`AttentiveClassifier` or V2
    :class:`AttentiveClassifierV2` (official eval settings otherwise: MLP ratio 4, qkv bias,
    LayerNorm eps 1e-5)."""
    if protocol == "v2":
        return AttentiveClassifierV2(embed_dim=embed_dim, num_heads=num_heads, depth=depth,
                                     num_classes=num_classes,
                                     activation_checkpointing=activation_checkpointing)
    if protocol != "v1":
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    return AttentiveClassifier(embed_dim=embed_dim, num_heads=num_heads, depth=depth, num_classes=num_classes)


class ProbeHeads(nn.Module):
    """``K`` attentive probes trained together on the same frozen features, each on its own.

    Each probe has its own AdamW, warmup-cosine lr and cosine wd (from its :class:`HeadSpec`,
    stepped before every training iteration, as both official evals do) and, under float16, its own
    GradScaler; one probe's loss, gradients and steps never touch another's. ``protocol``:

    * ``v1`` (official V1 eval): :class:`AttentiveClassifier`; groups decay / no decay; gradient norm
      clipped to ``clip_grad`` (1.0); loss = mean cross-entropy over the ``B·V'`` probe inputs;
    * ``v2`` (official V2 eval): :class:`AttentiveClassifierV2`; one group with weight decay on every
      parameter; no clipping; loss = sum over the V' inputs of a sample of their mean cross-entropies
      (V2 back-propagates each view's loss; training has one view, where both rules agree).

    Features are ``[B, V', L, D]`` (``V'`` probe inputs per sample, e.g. spatial views); a probe sees
    all ``B·V'`` inputs in one call; prediction = mean of the per-input softmaxes. ``warmup``: when
    given, the warmup (epochs) of every probe instead of each spec's own. ``train_step`` /
    ``eval_step`` return device tensors only (no host sync).
    """

    def __init__(
        self,
        specs: Sequence[HeadSpec],
        *,
        embed_dim: int,
        num_heads: int,
        num_classes: int,
        ipe: int,
        num_epochs: int,
        warmup: float | None = None,
        device: torch.device | str = "cpu",
        amp_dtype: torch.dtype | None = None,
        clip_grad: float | None = 1.0,
        depth: int = 1,
        protocol: str = "v1",
        activation_checkpointing: bool = False,
    ):
        super().__init__()
        if not specs:
            raise ValueError("at least one probe spec is needed")
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        if warmup is not None:
            specs = [replace(s, warmup=warmup) for s in specs]
        self.specs = list(specs)
        self.protocol = protocol
        self.num_classes = int(num_classes)
        self.device = torch.device(device)
        self.amp_dtype = amp_dtype
        self.clip_grad = clip_grad if protocol == "v1" else None  # V2 never clips
        self.heads = nn.ModuleList(
            build_probe(protocol, embed_dim=embed_dim, num_heads=num_heads, depth=depth,
                        num_classes=num_classes, activation_checkpointing=activation_checkpointing)
            for _ in self.specs
        ).to(self.device)
        fused = True if self.device.type == "cuda" else None
        self.optimizers = [torch.optim.AdamW(probe_param_groups(h, protocol), fused=fused)
                           for h in self.heads]
        t_max = int(num_epochs * ipe)
        self.lr_fns = [WarmupCosineLR(int(s.warmup * ipe), s.start_lr, s.lr, s.final_lr, t_max)
                       for s in self.specs]
        self.wd_fns = [CosineWD(s.weight_decay, s.final_weight_decay, t_max) for s in self.specs]
        use_scaler = amp_dtype == torch.float16
        self.scalers = [torch.amp.GradScaler(self.device.type, enabled=use_scaler) for _ in self.specs]
        self.iteration = 0

    def __len__(self) -> int:
        return len(self.heads)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def current_lr_wd(self) -> list[tuple[float, float]]:
        s = max(self.iteration, 1)
        return [(lr(s), wd(s)) for lr, wd in zip(self.lr_fns, self.wd_fns)]

    def _schedule_step(self) -> None:
        # official: scheduler.step() / wd_scheduler.step() at the start of every training iteration
        self.iteration += 1
        for opt, lr_fn, wd_fn in zip(self.optimizers, self.lr_fns, self.wd_fns):
            lr, wd = lr_fn(self.iteration), wd_fn(self.iteration)
            for g in opt.param_groups:
                g["lr"] = lr
                if not g.get("WD_exclude", False):
                    g["weight_decay"] = wd

    def _metrics(self, logits: torch.Tensor, labels: torch.Tensor, B: int, V: int):
        """Per-view softmax averaged over the V' inputs of a sample -> (correct top-1, top-5, preds)."""
        probs = F.softmax(logits.float(), dim=-1).view(B, V, -1).mean(1)
        pred = probs.argmax(-1)
        c1 = (pred == labels).sum()
        if self.num_classes > 5:
            c5 = (probs.topk(5, dim=-1).indices == labels[:, None]).any(-1).sum()
        else:
            c5 = c1.new_zeros(())
        return c1, c5, pred

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor, B: int, V: int) -> torch.Tensor:
        """Training loss of one probe from its logits ``[B·V', C]`` (sample-major), see the class doc."""
        y = labels.repeat_interleave(V)
        if self.protocol == "v2" and V > 1:
            per_view = F.cross_entropy(logits.float(), y, reduction="none").view(B, V).mean(0)
            return per_view.sum()
        # mean over B*V' == mean over views of the per-view mean CE (official V1)
        return F.cross_entropy(logits.float(), y)

    @torch.no_grad()
    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Every probe's logits (eval mode, no grad) for features ``[B, V', L, D]``: ``[K, B, V', C]``."""
        B, V = feats.shape[:2]
        x = feats.flatten(0, 1)
        out = []
        for head in self.heads:
            head.eval()
            with self.autocast():
                out.append(head(x).float().view(B, V, -1))
        return torch.stack(out)

    def train_step(self, feats: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        B, V = feats.shape[:2]
        x = feats.flatten(0, 1)
        self._schedule_step()
        losses, c1s, c5s = [], [], []
        for head, opt, scaler in zip(self.heads, self.optimizers, self.scalers):
            head.train()
            with self.autocast():
                logits = head(x)
            loss = self._loss(logits, labels, B, V)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            if self.clip_grad:
                torch.nn.utils.clip_grad_norm_(head.parameters(), self.clip_grad)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                c1, c5, _ = self._metrics(logits.detach(), labels, B, V)
            losses.append(loss.detach())
            c1s.append(c1)
            c5s.append(c5)
        return {"loss": torch.stack(losses), "correct1": torch.stack(c1s), "correct5": torch.stack(c5s)}

    @torch.no_grad()
    def eval_step(self, feats: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        B, V = feats.shape[:2]
        y = labels.repeat_interleave(V)
        losses, c1s, c5s, preds = [], [], [], []
        for logits in self.logits(feats):
            logits = logits.flatten(0, 1)
            losses.append(F.cross_entropy(logits, y))
            c1, c5, pred = self._metrics(logits, labels, B, V)
            c1s.append(c1)
            c5s.append(c5)
            preds.append(pred)
        return {"loss": torch.stack(losses), "correct1": torch.stack(c1s), "correct5": torch.stack(c5s),
                "pred": torch.stack(preds)}

    # -- state -------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "specs": [asdict(s) for s in self.specs],
            "classifiers": [{f"module.{k}": v.detach().cpu() for k, v in h.state_dict().items()} for h in self.heads],
            "opts": [o.state_dict() for o in self.optimizers],
            "scalers": [s.state_dict() if s.is_enabled() else None for s in self.scalers],
            "iteration": self.iteration,
            "protocol": self.protocol,
        }

    def load_state(self, state: dict, source: str = "checkpoint") -> None:
        saved = state.get("protocol", "v1")
        if saved != self.protocol:
            raise CheckpointError(f"{source}: its probes were trained with protocol {saved}, the config says "
                                  f"{self.protocol}; use another tag or resume_checkpoint: false")
        specs = [HeadSpec(**s) for s in state["specs"]]
        if specs != self.specs:
            raise CheckpointError(
                f"{source}: its probes ({', '.join(s.name for s in specs)}) differ from the config's "
                f"({', '.join(s.name for s in self.specs)}); use another tag or resume_checkpoint: false")
        for h, sd in zip(self.heads, state["classifiers"]):
            h.load_state_dict(clean_state_dict(sd))
        for o, sd in zip(self.optimizers, state["opts"]):
            o.load_state_dict(sd)
        for s, sd in zip(self.scalers, state.get("scalers") or [None] * len(self.scalers)):
            if sd is not None and s.is_enabled():
                s.load_state_dict(sd)
        self.iteration = int(state["iteration"])

    def load_official_v2(self, ckpt: dict, source: str = "checkpoint") -> None:
        """The probes and optimizers of an official V2 eval checkpoint (``classifiers``, ``opt``,
        ``scaler`` lists, one entry per probe of the grid, in the config's order)."""
        probes = ckpt["classifiers"]
        if self.protocol != "v2" or len(probes) != len(self.heads):
            raise CheckpointError(f"{source} holds {len(probes)} official V2 probes; the config trains "
                                  f"{len(self.heads)} {self.protocol} probe(s)")
        for h, sd in zip(self.heads, probes):
            load_module_state(h, sd, what="probe", source=source)
        for o, sd in zip(self.optimizers, ckpt.get("opt") or []):
            o.load_state_dict(sd)
        for s, sd in zip(self.scalers, ckpt.get("scaler") or []):
            if sd is not None and s.is_enabled():
                s.load_state_dict(sd)


# ====================================================================================================
# frozen features
# ====================================================================================================
def encode_batch(encoder: nn.Module, x: torch.Tensor, *, attend_across_segments: bool = True,
                 amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Frozen features of one batch, shaped for the probes: ``[B, V', L, D]``.

    ``x``: video ``[B, S, V, 3, T, H, W]`` -> all ``B*S*V`` clips in one encoder call; with
    ``attend_across_segments`` (or an image encoder, official FrameAggregation) ``V' = V`` and
    ``L = S*N`` (segment tokens concatenated in order), else ``V' = V*S`` (view-major) and ``L = N``.
    Images ``[B, 3, H, W]`` -> ``V' = 1``.
    """
    ctx = torch.autocast(x.device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    with torch.inference_mode(), ctx:
        if x.dim() == 7:
            B, S, V = x.shape[:3]
            tok = encoder(x.flatten(0, 2))
            N, D = tok.shape[1:]
            tok = tok.view(B, S, V, N, D).transpose(1, 2)  # [B, V, S, N, D]
            image_encoder = isinstance(encoder, FrozenEncoder) and not encoder.vit.is_video
            if attend_across_segments or image_encoder:
                tok = tok.reshape(B, V, S * N, D)
            else:
                tok = tok.reshape(B, V * S, N, D)
        elif x.dim() == 4:
            tok = encoder(x).unsqueeze(1)
        else:
            raise ValueError(f"expected video [B,S,V,3,T,H,W] or images [B,3,H,W], got {tuple(x.shape)}")
    # inference tensors cannot be saved for the probes' backward: one copy to a normal tensor
    return tok.clone()


# ====================================================================================================
# epochs
# ====================================================================================================
class EpochMetrics:
    """Device-side sums over an epoch; ``summary()`` reads them back once."""

    def __init__(self, num_heads: int, num_classes: int, device, confusion: bool = False):
        self.K, self.C = num_heads, num_classes
        z = torch.zeros(num_heads, device=device)
        self.loss, self.c1, self.c5 = z.clone(), z.clone(), z.clone()
        self.n = 0
        self.confusion = torch.zeros(num_heads * num_classes * num_classes, dtype=torch.int64, device=device) \
            if confusion else None

    def add(self, stats: dict, labels: torch.Tensor) -> None:
        B = labels.shape[0]
        self.loss += stats["loss"].float() * B
        self.c1 += stats["correct1"].float()
        self.c5 += stats["correct5"].float()
        self.n += B
        if self.confusion is not None and "pred" in stats:
            C = self.C
            off = torch.arange(self.K, device=labels.device)[:, None] * C * C
            idx = off + labels[None, :] * C + stats["pred"]
            self.confusion += torch.bincount(idx.flatten(), minlength=self.K * C * C)

    def summary(self) -> list[dict]:
        if self.n == 0:
            return [{"loss": math.nan, "top1": math.nan, "top5": None} for _ in range(self.K)]
        vals = torch.stack([self.loss, self.c1, self.c5]).cpu().tolist()
        out = []
        for k in range(self.K):
            out.append({
                "loss": vals[0][k] / self.n,
                "top1": 100.0 * vals[1][k] / self.n,
                "top5": 100.0 * vals[2][k] / self.n if self.C > 5 else None,
            })
        return out

    def confusion_matrices(self) -> np.ndarray | None:
        if self.confusion is None:
            return None
        return self.confusion.view(self.K, self.C, self.C).cpu().numpy()


def train_epoch(heads: ProbeHeads, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
                log: Callable[[int, EpochMetrics], None] | None = None, log_every: int = 20) -> EpochMetrics:
    m = EpochMetrics(len(heads), heads.num_classes, heads.device)
    for itr, (feats, labels) in enumerate(batches):
        m.add(heads.train_step(feats, labels), labels)
        if log is not None and itr % log_every == 0:
            log(itr, m)
    return m


def evaluate(heads: ProbeHeads, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             confusion: bool = False) -> EpochMetrics:
    m = EpochMetrics(len(heads), heads.num_classes, heads.device, confusion=confusion)
    for feats, labels in batches:
        m.add(heads.eval_step(feats, labels), labels)
    return m


def feature_batches(feats: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shuffle: bool,
                    seed: int = 0, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of cached features, shuffled as a pure function of ``(seed, epoch)``."""
    n = feats.shape[0]
    if shuffle:
        g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) & 0x7FFFFFFFFFFF)
        order = torch.randperm(n, generator=g).to(feats.device)
    else:
        order = torch.arange(n, device=feats.device)
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        yield feats.index_select(0, idx), labels.index_select(0, idx)


# ====================================================================================================
# the evaluation run
# ====================================================================================================
@dataclass
class ProbeResult:
    """What :func:`main_probe` returns (also written to ``{write_tag}-results.json``)."""

    best_head: int
    top1: float  # best probe, final epoch, val
    top5: float | None
    heads: list[dict]  # per probe: spec + final train/val metrics
    epochs: int
    history: list[dict] = field(default_factory=list)  # one row per (epoch, probe)
    output_folder: str = ""
    checkpoint: str = ""
    log: str = ""
    results_json: str = ""
    confusion_png: str | None = None
    seconds: float = 0.0
    #: what the results were made with: the planned epochs, the input (resolution, frames per clip
    #: and frame step for video evals, segments x views), the pretrained checkpoint and the key read
    #: from it, and the whole config
    num_epochs: int = 0
    resolution: int | None = None
    frames_per_clip: int | None = None
    frame_step: int | None = None
    segments_x_views: list[int] | None = None
    pretrained_checkpoint: str | None = None
    checkpoint_key: str | None = None
    #: the protocol (v1 / v2), the encoder blocks the features come from (null: the last), the
    #: probe's blocks and heads, and what loading the encoder reported (e.g. dropped position tables)
    protocol: str = "v1"
    out_layers: list[int] | None = None
    probe_blocks: int | None = None
    probe_heads: int | None = None
    encoder_load_report: str | None = None
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _amp_dtype(cfg: EvalConfig, device: torch.device) -> torch.dtype | None:
    if not cfg.optimization.use_bfloat16 or device.type == "cpu":
        return None
    return torch.bfloat16 if cfg.meta.autocast_dtype == "bfloat16" else torch.float16


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _apply_runtime(cfg: EvalConfig) -> None:
    from .attention import set_attention_backend

    set_attention_backend(cfg.meta.attn_backend if cfg.meta.attn_backend != "auto"
                          else os.environ.get("VJEPA_FAST_ATTN", "auto"))
    if cfg.meta.kernels != "auto":
        os.environ["VJEPA_FAST_KERNELS"] = cfg.meta.kernels


def _check_labels(labels: Sequence[int], num_classes: int, source: str) -> None:
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        raise ValueError(f"{source}: no samples")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"{source}: label {bad} is outside [0, data.num_classes={num_classes}) "
            f"(labels span {lo}..{hi}); fix data.num_classes or the index file")


class ProbeEvaluation:
    """One frozen evaluation run (see the module docstring). ``run()`` -> :class:`ProbeResult`.

    ``encoder``: an already loaded :class:`FrozenEncoder` (skips building/loading from the config).
    """

    def __init__(self, cfg: EvalConfig, *, encoder: FrozenEncoder | None = None,
                 out: Callable[[str], None] | None = None):
        self.cfg, self.out = cfg, out or _print
        # Before anything is built: a finished run's results are never overwritten, a resume with
        # nothing left to train is refused, the device exists.
        problems, self.start_notes = plan_probe_start(cfg, head_specs(cfg.optimization))
        problems = runtime_problems(cfg.meta) + problems
        if problems:
            raise PreflightError(problems, f"probe run ({cfg.output_folder})")
        self.device = _resolve_device(cfg.meta.device)
        _apply_runtime(cfg)
        self.amp = _amp_dtype(cfg, self.device)
        if cfg.optimization.use_bfloat16 and self.amp is None:
            self.out("note: optimization.use_bfloat16 is ignored on the CPU (float32)")
        torch.manual_seed(cfg.meta.seed)
        np.random.seed(cfg.meta.seed)
        self._build_data()  # first: cheap config/data errors before loading a large checkpoint
        self.encoder = encoder.to(self.device) if encoder is not None else build_frozen_encoder(cfg, self.device)
        if cfg.meta.compile:
            self.encoder = torch.compile(self.encoder)
        enc = self.encoder if isinstance(self.encoder, FrozenEncoder) else self.encoder._orig_mod
        self.frozen: FrozenEncoder = enc
        self.specs = head_specs(cfg.optimization)
        self.ipe = len(self.train_loader)
        # v1 probes default to the loaded encoder's heads (what the V1 eval builds), v2 to 16
        self.probe_heads = cfg.classifier.num_heads or (16 if cfg.protocol == "v2" else enc.num_heads)
        self.heads = ProbeHeads(
            self.specs, embed_dim=enc.embed_dim, num_heads=self.probe_heads, num_classes=cfg.data.num_classes,
            ipe=self.ipe, num_epochs=cfg.optimization.num_epochs, device=self.device, amp_dtype=self.amp,
            depth=cfg.classifier.num_probe_blocks, protocol=cfg.protocol,
            activation_checkpointing=cfg.classifier.use_activation_checkpointing)
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = {"train": None, "val": None}
        self._check_cache_size()

    # -- data ----------------------------------------------------------------------------------------
    def _build_data(self) -> None:
        from .eval_data import (ImageEvalTransform, ImageTrainTransform, ProbeVideoEvalTransform,
                                ProbeVideoTrainTransform, make_probe_loader)

        cfg, d, o = self.cfg, self.cfg.data, self.cfg.optimization
        res, seed = cfg.resolution, cfg.meta.seed
        pin = self.device.type == "cuda"
        if cfg.is_video:
            from .video_dataset import VideoDataset

            for key in ("dataset_train", "dataset_val"):
                path = getattr(d, key)
                if path is None:
                    raise ValueError(f"data.{key} is required for video evals")
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"data.{key}: index file not found: {path}")
            S = d.num_segments
            self.train_segments = S if cfg.attend_across_segments else 1
            common = dict(frames_per_clip=d.frames_per_clip, frame_step=d.frame_step,
                          duration=cfg.pretrain.clip_duration, random_clip_sampling=True,
                          allow_clip_overlap=True, seed=seed, decoder=d.decoder)
            train_tf = ProbeVideoTrainTransform(res, d.train_augmentation, seed=seed)
            val_tf = ProbeVideoEvalTransform(res, d.num_views_per_segment)
            train_ds = VideoDataset(d.dataset_train, num_clips=self.train_segments, transform=train_tf, **common)
            val_ds = VideoDataset(d.dataset_val, num_clips=S, transform=val_tf, **common)
            _check_labels(train_ds.labels, d.num_classes, f"data.dataset_train ({d.dataset_train})")
            _check_labels(val_ds.labels, d.num_classes, f"data.dataset_val ({d.dataset_val})")
        else:
            from .image_dataset import ImageFolderDataset

            if d.root_path is None:
                raise ValueError("data.root_path is required for image evals")
            root = os.path.join(d.root_path, d.image_folder or "")
            train_tf = ImageTrainTransform(res, d.train_augmentation, seed=seed)
            val_tf = ImageEvalTransform(res)
            train_ds = ImageFolderDataset(root, "train", transform=train_tf, seed=seed)
            val_ds = ImageFolderDataset(root, "val", transform=val_tf, seed=seed)
            for name, ds in (("train", train_ds), ("val", val_ds)):
                if len(ds.classes) > d.num_classes:
                    raise ValueError(
                        f"{os.path.join(root, name)} has {len(ds.classes)} class folders but "
                        f"data.num_classes={d.num_classes}")
        self.train_loader = make_probe_loader(train_ds, train_tf, batch_size=o.batch_size, shuffle=True, seed=seed,
                                              num_workers=d.num_workers, pin_memory=pin, video=cfg.is_video)
        self.val_loader = make_probe_loader(val_ds, val_tf, batch_size=o.batch_size, shuffle=False, seed=seed,
                                            num_workers=d.num_workers, pin_memory=pin, video=cfg.is_video)

    def _inputs_per_sample(self, train: bool) -> tuple[int, int]:
        """(V', L) of one sample's features."""
        cfg, d = self.cfg, self.cfg.data
        enc = self.frozen
        if not cfg.is_video:
            return 1, enc.tokens_per_input(None, cfg.resolution)
        S = self.train_segments if train else d.num_segments
        V = 1 if train else d.num_views_per_segment
        N = enc.tokens_per_input(d.frames_per_clip, cfg.resolution)
        if cfg.attend_across_segments or not enc.vit.is_video:
            return V, S * N
        return V * S, N

    def _check_cache_size(self) -> None:
        d = self.cfg.data
        total = 0.0
        for split, on in (("train", d.cache_train_features), ("val", d.cache_eval_features)):
            if on:
                n = len((self.train_loader if split == "train" else self.val_loader).dataset)
                v, L = self._inputs_per_sample(split == "train")
                total += n * v * L * self.frozen.embed_dim * 4 / 2**30
        if total > d.feature_cache_max_gb:
            raise ValueError(
                f"the feature cache would take {total:.1f} GiB (float32 samples x views x tokens x dim) "
                f"> data.feature_cache_max_gb={d.feature_cache_max_gb}; turn off data.cache_eval_features / "
                f"data.cache_train_features or raise the limit")
        self.cache_gib = total

    def _encoded(self, loader, epoch: int, sequential: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in loader.epoch(epoch, sequential=sequential):
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            yield encode_batch(self.encoder, x, attend_across_segments=self.cfg.attend_across_segments,
                               amp_dtype=self.amp), y

    def _build_cache(self, split: str) -> None:
        loader = self.train_loader if split == "train" else self.val_loader
        t0 = time.perf_counter()
        feats, labels = [], []
        for f, y in self._encoded(loader, 0, sequential=True):  # dataset order, epoch-0 clips
            feats.append(f)
            labels.append(y)
        f, y = torch.cat(feats), torch.cat(labels)
        self.cache[split] = (f, y)
        self.out(f"cached {split} features: {tuple(f.shape)} float32 "
                 f"({f.numel() * 4 / 2**20:.1f} MiB, {time.perf_counter() - t0:.1f} s)")

    def train_batches(self, epoch: int):
        c = self.cache["train"]
        if c is not None:
            return feature_batches(c[0], c[1], self.cfg.optimization.batch_size, shuffle=True,
                                   seed=self.cfg.meta.seed, epoch=epoch)
        return self._encoded(self.train_loader, epoch)

    def val_batches(self):
        c = self.cache["val"]
        if c is not None:
            return feature_batches(c[0], c[1], self.cfg.optimization.batch_size, shuffle=False)
        return self._encoded(self.val_loader, 0)

    # -- checkpoints ---------------------------------------------------------------------------------
    def _checkpoint(self, epoch: int, best: int, history: list[dict]) -> dict:
        st = self.heads.state()
        extra = {"probes": st, "best_head": best, "history": history, "config": self.cfg.to_dict(),
                 "num_classes": self.cfg.data.num_classes}
        if self.cfg.protocol == "v2":  # the official V2 eval's latest.pt keys: every probe of the grid
            return {
                "classifiers": st["classifiers"],
                "opt": st["opts"],
                "scaler": st["scalers"] if self.heads.scalers[0].is_enabled() else None,
                "epoch": int(epoch),
                "batch_size": self.cfg.optimization.batch_size,
                "world_size": 1,
                "vjepa_fast": extra,
            }
        return {
            "classifier": st["classifiers"][best],
            "opt": st["opts"][best],
            "scaler": st["scalers"][best],
            "epoch": int(epoch),
            "batch_size": self.cfg.optimization.batch_size,
            "world_size": 1,
            "lr": self.specs[best].lr,
            "vjepa_fast": extra,
        }

    def _resume(self, path: Path) -> tuple[int, list[dict]]:
        if not path.is_file():
            self.out(f"resume_checkpoint: no checkpoint at {path}; starting from epoch 0")
            return 0, []
        ckpt = read_checkpoint(path)
        extra = ckpt.get("vjepa_fast")
        if extra and "probes" in extra:
            self.heads.load_state(extra["probes"], source=str(path))
            history = list(extra.get("history", []))
        elif "classifiers" in ckpt:  # an official V2 eval checkpoint: every probe of the grid
            self.heads.load_official_v2(ckpt, source=str(path))
            history = []
        else:  # an official V1 probe checkpoint: one classifier + its optimizer
            if len(self.heads) != 1:
                raise CheckpointError(f"{path} holds one official probe; the config trains {len(self.heads)}")
            if "classifier" not in ckpt:
                raise CheckpointError(f"{path} has no 'classifier'; keys: {', '.join(map(str, ckpt))}")
            self.heads.heads[0].load_state_dict(clean_state_dict(ckpt["classifier"]))
            if ckpt.get("opt"):
                self.heads.optimizers[0].load_state_dict(ckpt["opt"])
            history = []
        epoch = int(ckpt["epoch"])
        self.heads.iteration = epoch * self.ipe  # official: fast-forward the schedules epoch * ipe steps
        self.out(f"resumed {len(self.heads)} probe(s) from {path} at epoch {epoch}")
        return epoch, history

    # -- outputs -------------------------------------------------------------------------------------
    def _result(self, history, epoch, best, paths, confusion_png, seconds) -> ProbeResult:
        last = {h["head"]: h for h in history if h["epoch"] == epoch}
        heads = []
        for k, s in enumerate(self.specs):
            row = last.get(k, {})
            heads.append({"head": k, "name": s.name, **asdict(s),
                          **{m: row.get(m) for m in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5")}})
        b = heads[best]
        cfg, d = self.cfg, self.cfg.data
        loaded = getattr(self.frozen, "loaded_from", None) or {}
        # images: how often each is repeated along time for a video encoder
        frames = d.frames_per_clip if cfg.is_video else (
            self.frozen.image_frames if self.frozen.vit.is_video else None)
        return ProbeResult(best_head=best, top1=b["val_top1"], top5=b["val_top5"], heads=heads, epochs=epoch,
                           history=history, output_folder=paths["folder"], checkpoint=paths["ckpt"],
                           log=paths["csv"], results_json=paths["json"], confusion_png=confusion_png,
                           seconds=seconds, num_epochs=cfg.optimization.num_epochs, resolution=cfg.resolution,
                           frames_per_clip=frames,
                           frame_step=d.frame_step if cfg.is_video else None,
                           segments_x_views=[d.num_segments, d.num_views_per_segment] if cfg.is_video else None,
                           pretrained_checkpoint=loaded.get("checkpoint"), checkpoint_key=loaded.get("key"),
                           protocol=cfg.protocol, out_layers=self.frozen.vit.out_layers,
                           probe_blocks=cfg.classifier.num_probe_blocks, probe_heads=self.probe_heads,
                           encoder_load_report=loaded.get("report"), config=cfg.to_dict())

    def run(self) -> ProbeResult:
        cfg, o = self.cfg, self.cfg.optimization
        folder = Path(cfg.output_folder)
        folder.mkdir(parents=True, exist_ok=True)
        tag = cfg.pretrain.write_tag
        paths = {"folder": str(folder), "ckpt": cfg.latest_checkpoint_path, "csv": cfg.log_path(0),
                 "json": str(folder / f"{tag}-results.json")}
        start_epoch, history = (self._resume(Path(paths["ckpt"])) if cfg.resume_checkpoint else (0, []))
        K, C = len(self.heads), cfg.data.num_classes
        for note in self.start_notes:
            self.out(f"note: {note}")
        t_start = time.perf_counter()
        enc_name = f"{cfg.pretrain.model_name} ({self.frozen.embed_dim}-d, {len(self.frozen.vit.blocks)} blocks)"
        levels = self.frozen.vit.out_layers
        feats = f", features of blocks {levels}" if levels is not None else ""
        report = (getattr(self.frozen, "loaded_from", None) or {}).get("report")
        if report:
            self.out(f"encoder: {report}")
        self.out(f"probe eval {cfg.eval_name} ({cfg.protocol} protocol, probes of "
                 f"{cfg.classifier.num_probe_blocks} block(s) x {self.probe_heads} heads) | "
                 f"encoder {enc_name}{feats} @ {cfg.resolution}px | {K} probe(s): "
                 f"{', '.join(s.name for s in self.specs)} | {len(self.train_loader.dataset)} train / "
                 f"{len(self.val_loader.dataset)} val samples | ipe {self.ipe} | {o.num_epochs} epochs | "
                 f"device {self.device} {self.amp or torch.float32}")
        if cfg.data.cache_train_features and start_epoch < o.num_epochs:
            self._build_cache("train")
        if cfg.data.cache_eval_features and start_epoch < o.num_epochs:
            self._build_cache("val")
        best = 0
        confusion = None
        columns = ("epoch", "head", "lr", "weight_decay", "train_loss", "train_top1", "val_loss", "val_top1",
                   "val_top5", "seconds")
        # the CSV is rewritten from the checkpoint's history on a resume (no duplicated epochs)
        with open(paths["csv"], "w", newline="") as fcsv:
            writer = csv.writer(fcsv)
            writer.writerow(columns)
            for row in history:
                writer.writerow([row[c] if row[c] is not None else "" for c in columns])
            for epoch in range(start_epoch, o.num_epochs):
                t0 = time.perf_counter()

                def log(itr, m, epoch=epoch, t0=t0):
                    s = m.summary()
                    k = max(range(K), key=lambda i: s[i]["top1"])
                    rate = m.n / max(time.perf_counter() - t0, 1e-9)
                    self.out(f"[epoch {epoch + 1} itr {itr:>5}/{self.ipe}] train top-1 {s[k]['top1']:.2f}% "
                             f"(loss {s[k]['loss']:.3f}, {self.specs[k].name}) | {rate:.1f} samples/s")

                tr = train_epoch(self.heads, self.train_batches(epoch), log=log, log_every=cfg.meta.log_every)
                want_conf = C <= CONFUSION_MAX_CLASSES
                va = evaluate(self.heads, self.val_batches(), confusion=want_conf)
                trs, vas = tr.summary(), va.summary()
                confusion = va.confusion_matrices()
                dt = time.perf_counter() - t0
                lrwd = self.heads.current_lr_wd()
                for k in range(K):
                    row = {"epoch": epoch + 1, "head": k, "lr": lrwd[k][0], "weight_decay": lrwd[k][1],
                           "train_loss": trs[k]["loss"], "train_top1": trs[k]["top1"], "val_loss": vas[k]["loss"],
                           "val_top1": vas[k]["top1"], "val_top5": vas[k]["top5"], "seconds": round(dt, 3)}
                    history.append(row)
                    writer.writerow([row[c] if row[c] is not None else "" for c in columns])
                fcsv.flush()
                best = best_head([v["top1"] for v in vas])
                atomic_save(self._checkpoint(epoch + 1, best, history), paths["ckpt"])
                partial = self._result(history, epoch + 1, best, paths, None, time.perf_counter() - t_start)
                _write_json(paths["json"], partial.to_dict())
                top5 = f" top-5 {vas[best]['top5']:.2f}%" if vas[best]["top5"] is not None else ""
                self.out(f"[epoch {epoch + 1:>3}/{o.num_epochs}] train {trs[best]['top1']:.2f}% | "
                         f"val top-1 {vas[best]['top1']:.2f}%{top5} (best of {K}: {self.specs[best].name}) | {dt:.1f} s")
        final_epoch = history[-1]["epoch"] if history else start_epoch
        if history:
            last = [h for h in history if h["epoch"] == final_epoch]
            best = best_head([h["val_top1"] for h in last]) if last else 0
        png = None
        if confusion is not None:
            png = str(folder / f"{tag}-confusion.png")
            save_confusion_png(confusion[best], png, title=f"{cfg.tag or cfg.eval_name}: {self.specs[best].name}")
        result = self._result(history, final_epoch, best, paths, png, time.perf_counter() - t_start)
        _write_json(paths["json"], result.to_dict())
        self.out(format_result(result))
        return result


def _write_json(path: str, obj: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=float)
    os.replace(tmp, path)


def format_result(r: ProbeResult) -> str:
    lines = [f"final (epoch {r.epochs}):", f"  {'probe':<24} {'train top-1':>11} {'val top-1':>10} {'val top-5':>10}"]
    for h in r.heads:
        t5 = f"{h['val_top5']:.2f}" if h.get("val_top5") is not None else "-"
        tr = f"{h['train_top1']:.2f}" if h.get("train_top1") is not None else "-"
        v1 = f"{h['val_top1']:.2f}" if h.get("val_top1") is not None else "-"
        mark = "  <- best" if h["head"] == r.best_head else ""
        lines.append(f"  {h['name']:<24} {tr:>11} {v1:>10} {t5:>10}{mark}")
    top1 = "-" if r.top1 is None else f"{r.top1:.2f}%"
    lines.append(f"best val top-1: {top1}" + (f", top-5 {r.top5:.2f}%" if r.top5 is not None else ""))
    lines.append(f"outputs: {r.output_folder} (csv {os.path.basename(r.log)}, "
                 f"checkpoint {os.path.basename(r.checkpoint)}, results {os.path.basename(r.results_json)}"
                 + (f", confusion {os.path.basename(r.confusion_png)}" if r.confusion_png else "") + ")")
    return "\n".join(lines)


def save_confusion_png(matrix: np.ndarray, path: str, title: str = "", class_names: Sequence[str] | None = None) -> None:
    """Row-normalised confusion matrix (rows = true class) with counts, as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    m = np.asarray(matrix, dtype=np.float64)
    C = m.shape[0]
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 + 0.45 * C), max(3.6, 1.2 + 0.45 * C)), dpi=100)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    names = list(class_names) if class_names is not None else [str(i) for i in range(C)]
    ax.set_xticks(range(C), names, rotation=90 if max(map(len, names)) > 2 else 0, fontsize=8)
    ax.set_yticks(range(C), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if C <= CONFUSION_MAX_CLASSES:
        for i in range(C):
            for j in range(C):
                if m[i, j]:
                    ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    acc = 100.0 * np.trace(m) / max(m.sum(), 1)
    ax.set_title(f"{title}\ntop-1 {acc:.1f}%", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main_probe(cfg: EvalConfig, out: Callable[[str], None] | None = None) -> ProbeResult:
    """Entry point for ``vjepa-fast probe --config X``: train + evaluate the probe(s) of ``cfg``."""
    if not isinstance(cfg, EvalConfig):
        raise TypeError(f"main_probe needs an EvalConfig, got {type(cfg).__name__}")
    return ProbeEvaluation(cfg, out=out).run()


# ====================================================================================================
# demo: pretrained vs random encoder, appearance vs motion
# ====================================================================================================
#: probes trained by :func:`run_demo_probes` for every (encoder, task): 2 lr x 1 wd
# 15 epochs at lr 1e-3 / 3e-3 left the probes under-trained (train top-1 ~58 % and val still rising at
# the last epoch, for both encoders); 30 epochs at 3e-3 / 1e-2 fit the train clips.
DEMO_GRID = (HeadSpec(lr=3e-3, start_lr=3e-3), HeadSpec(lr=1e-2, start_lr=1e-2))


def infer_encoder_spec(ckpt: dict, key: str = "target_encoder", source: str = "checkpoint") -> dict:
    """Architecture of the encoder in a checkpoint (read from ``source``, named in errors): from the
    pretraining config our checkpoints carry (``vjepa_fast.config``), else from the tensor shapes
    (heads from the matching preset)."""
    cfg = (ckpt.get("vjepa_fast") or {}).get("config") if isinstance(ckpt.get("vjepa_fast"), dict) else None
    sd = ckpt.get(key) or ckpt.get("encoder")
    if sd is None:
        hint = " (a probe checkpoint?)" if "classifier" in ckpt else ""
        raise CheckpointError(f"{source} has no {key!r} or 'encoder'{hint}; keys: {', '.join(map(str, ckpt))}")
    sd = clean_state_dict(sd)
    w = sd["patch_embed.proj.weight"]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    dim = w.shape[0]
    spec = dict(embed_dim=dim, depth=depth, patch_size=int(w.shape[-1]),
                tubelet_size=int(w.shape[2]) if w.dim() == 5 else 1)
    if cfg and "model" in cfg and "data" in cfg:
        m, d = cfg["model"], cfg["data"]
        name = m["model_name"]
        spec.update(model_name=name, num_heads=VIT_PRESETS[name]["num_heads"], img_size=int(d["crop_size"]),
                    num_frames=int(d["num_frames"]), uniform_power=bool(m.get("uniform_power", True)),
                    mlp_ratio=VIT_PRESETS[name]["mlp_ratio"])
        return spec
    match = [n for n, p in VIT_PRESETS.items() if p["embed_dim"] == dim]
    if not match:
        raise CheckpointError(
            f"{source}: cannot tell the head count of a {dim}-d encoder without the pretraining config "
            "(the file has no vjepa_fast.config)")
    name = match[0]
    n_tok = sd["pos_embed"].shape[1] if "pos_embed" in sd else None
    spec.update(model_name=name, num_heads=VIT_PRESETS[name]["num_heads"], mlp_ratio=VIT_PRESETS[name]["mlp_ratio"],
                uniform_power=True)
    # pos_embed = grid_depth * grid^2 tokens; assume the official 16 frames if that fits, else 8
    for frames in (16, 8, 32, 4, 2):
        t = frames // spec["tubelet_size"] if w.dim() == 5 else 1
        g = math.isqrt(max(n_tok // max(t, 1), 0)) if n_tok else 0
        if n_tok and t * g * g == n_tok:
            spec.update(num_frames=frames if w.dim() == 5 else 1, img_size=g * spec["patch_size"])
            return spec
    raise CheckpointError(f"{source}: cannot infer the clip geometry of the encoder from its pos_embed")


def _build_from_spec(spec: dict) -> VisionTransformer:
    return VisionTransformer(img_size=spec["img_size"], patch_size=spec["patch_size"], num_frames=spec["num_frames"],
                             tubelet_size=spec["tubelet_size"], embed_dim=spec["embed_dim"], depth=spec["depth"],
                             num_heads=spec["num_heads"], mlp_ratio=spec.get("mlp_ratio", 4.0),
                             uniform_power=spec.get("uniform_power", True))


def _video_frames(path: str) -> int:
    from .decoders import open_video

    with open_video(path) as reader:
        return len(reader)


def run_demo_probes(
    checkpoint_path: str | os.PathLike,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    epochs: int = 30,
    batch_size: int = 16,
    grid: Sequence[HeadSpec] = DEMO_GRID,
    seed: int = 0,
    device: str = "cpu",
    max_train: int | None = None,
    max_val: int | None = None,
    threads: int | None = 1,
    random_init: bool = True,
    out: Callable[[str], None] | None = None,
) -> dict:
    """Probe a pretrained encoder AND a randomly initialised one of the same architecture for digit
    class (appearance) and motion direction (motion) on the moving-digits data of
    :func:`vjepa_fast.demo_data.make_demo_data` (held-out val clips). Returns (and prints) the tables.

    Choices for speed (about 4.5 min on one CPU thread with the random-init encoder, 3 min without:
    ``vjepa-fast demo-spread``'s probe jobs on 400 / 400 clips, two at a time on 2 cores): the clips are
    decoded once (one centre view, the eval transform) and both encoders run once over them; as the
    encoders are frozen their features are cached and the probes (the official AttentiveClassifier,
    optimiser and schedules; ``grid`` lr x wd settings, the best final val top-1 reported, as the V2
    multi-probe eval) train for ``epochs`` epochs on those cached train features **without augmentation**.
    The same cached features also go to the linear probe on mean-pooled features
    (:func:`vjepa_fast.linear_probe.linear_probe`; ``linear_top1`` next to the attentive ``top1``).
    Both label sets use the same clips, so both tasks share the features. ``threads``: torch CPU threads
    while this runs (default 1: these models are tiny, and on a busy 2-core host two threads made the
    probe steps ~18x slower than one; ``None`` leaves the setting alone). ``random_init=False`` probes the
    pretrained encoder only (the random one's figures depend on ``seed`` alone: ``vjepa-fast demo-spread``
    takes them once per probe seed).
    """
    if threads is None or _is_cuda(device):
        return _run_demo_probes(checkpoint_path, data_dir, out_dir, epochs=epochs, batch_size=batch_size, grid=grid,
                                seed=seed, device=device, max_train=max_train, max_val=max_val,
                                random_init=random_init, out=out)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run_demo_probes(checkpoint_path, data_dir, out_dir, epochs=epochs, batch_size=batch_size, grid=grid,
                                seed=seed, device=device, max_train=max_train, max_val=max_val,
                                random_init=random_init, out=out)
    finally:
        torch.set_num_threads(previous)


def _is_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


def _run_demo_probes(checkpoint_path, data_dir, out_dir, *, epochs, batch_size, grid, seed, device, max_train,
                     max_val, random_init, out) -> dict:
    from .eval_data import ProbeVideoEvalTransform, collate_video
    from .video_dataset import VideoDataset, read_index_files

    out = out or _print
    t_start = time.perf_counter()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    ckpt = read_checkpoint(checkpoint_path)
    spec = infer_encoder_spec(ckpt, source=str(checkpoint_path))
    pretrained = _build_from_spec(spec)
    load_encoder(pretrained, ckpt, key="target_encoder", source=str(checkpoint_path))
    torch.manual_seed(seed)
    encoders = {"pretrained": FrozenEncoder(pretrained).to(dev)}
    if random_init:  # the official V1 init (trunc-normal 0.02, no rescale)
        encoders["random"] = FrozenEncoder(_build_from_spec(spec)).to(dev)

    tasks = {"digit": "appearance: digit class 0-9", "motion": "motion: direction"}
    index = {}
    for split in ("train", "val"):
        paths = {}
        for task in tasks:
            f = data_dir / f"{split}_{task}.csv"
            if not f.is_file():
                raise FileNotFoundError(f"demo index file not found: {f} (make it with `vjepa-fast make-demo-data`)")
            p, labels, _ = read_index_files(str(f))
            paths[task] = (p, labels)
        if paths["digit"][0] != paths["motion"][0]:
            raise ValueError(f"{data_dir}: {split}_digit.csv and {split}_motion.csv list different clips")
        index[split] = paths
    fpc = spec["num_frames"]
    n_video = _video_frames(index["train"]["digit"][0][0])
    fstep = max(1, n_video // fpc)
    res = spec["img_size"]
    out(f"demo probes: encoder {spec['model_name']}-like {spec['embed_dim']}-d x {spec['depth']} blocks, "
        f"{fpc} frames (step {fstep}) at {res}px; pretrained = {checkpoint_path}; random = same architecture, "
        f"official init (seed {seed})")

    feats: dict[str, dict[str, torch.Tensor]] = {name: {} for name in encoders}
    labels: dict[str, dict[str, torch.Tensor]] = {}
    for split, limit in (("train", max_train), ("val", max_val)):
        ds = VideoDataset(str(data_dir / f"{split}_digit.csv"), frames_per_clip=fpc, frame_step=fstep, num_clips=1,
                          allow_clip_overlap=True, transform=ProbeVideoEvalTransform(res, 1), seed=seed)
        n = len(ds) if limit is None else min(limit, len(ds))
        sub = torch.utils.data.Subset(ds, range(n))
        loader = torch.utils.data.DataLoader(sub, batch_size=32, shuffle=False, collate_fn=collate_video)
        t0 = time.perf_counter()
        acc = {name: [] for name in encoders}
        for x, _ in loader:
            x = x.to(dev)
            for name, enc in encoders.items():
                acc[name].append(encode_batch(enc, x, attend_across_segments=True))
        for name in encoders:
            feats[name][split] = torch.cat(acc[name])
        labels[split] = {t: torch.tensor(index[split][t][1][:n], dtype=torch.int64, device=dev) for t in tasks}
        out(f"  encoded {n} {split} clips with both encoders in {time.perf_counter() - t0:.1f} s")

    results: dict = {"top1": {}, "chance": {}, "details": {}}
    num_classes = {t: int(max(index["train"][t][1] + index["val"][t][1])) + 1 for t in tasks}
    for name, enc in encoders.items():
        results["top1"][name] = {}
        for task in tasks:
            C = num_classes[task]
            torch.manual_seed(seed)
            ipe = math.ceil(feats[name]["train"].shape[0] / batch_size)
            heads = ProbeHeads(list(grid), embed_dim=enc.embed_dim, num_heads=enc.num_heads, num_classes=C,
                               ipe=ipe, num_epochs=epochs, device=dev)
            t0 = time.perf_counter()
            curve = []
            va = None
            for epoch in range(epochs):
                tr = train_epoch(heads, feature_batches(feats[name]["train"], labels["train"][task], batch_size,
                                                        shuffle=True, seed=seed, epoch=epoch))
                va = evaluate(heads, feature_batches(feats[name]["val"], labels["val"][task], 256, shuffle=False),
                              confusion=True)
                curve.append({"epoch": epoch + 1, "train_top1": [s["top1"] for s in tr.summary()],
                              "val_top1": [s["top1"] for s in va.summary()]})
            final = va.summary()
            best = best_head([f["top1"] for f in final])
            results["top1"][name][task] = final[best]["top1"]
            results["details"][f"{name}/{task}"] = {
                "best_probe": grid[best].name, "per_probe_val_top1": {g.name: s["top1"] for g, s in zip(grid, final)},
                "train_top1": curve[-1]["train_top1"][best], "curve": curve, "seconds": round(time.perf_counter() - t0, 2),
                "num_classes": C,
            }
            conf = va.confusion_matrices()[best]
            png = out_dir / f"confusion_{name}_{task}.png"
            from .demo_data import DIRECTION_NAMES

            names = DIRECTION_NAMES[:C] if task == "motion" else None
            save_confusion_png(conf, str(png), title=f"{name} encoder, {task}\n(probe {grid[best].name})",
                               class_names=names)
            out(f"  probe {name:<10} {task:<6}: val top-1 {final[best]['top1']:5.1f}% "
                f"(train {curve[-1]['train_top1'][best]:5.1f}%, {grid[best].name}, {time.perf_counter() - t0:.1f} s)")
    # The classic frozen evaluation next to the attentive probe: a linear classifier on the features
    # averaged over all tokens (vjepa_fast.linear_probe). It cannot pick tokens, so a random encoder's
    # per-patch detail helps it far less than it helps the attentive probe.
    from .linear_probe import linear_probe  # noqa: PLC0415

    results["linear_top1"] = {}
    for name in encoders:
        results["linear_top1"][name] = {}
        for task in tasks:
            t0 = time.perf_counter()
            lin = linear_probe(feats[name]["train"], labels["train"][task], feats[name]["val"], labels["val"][task])
            results["linear_top1"][name][task] = lin.top1
            results["details"][f"{name}/{task}/linear"] = {**lin.to_dict(), "seconds": round(time.perf_counter() - t0, 2)}
            out(f"  linear {name:<10} {task:<6}: val top-1 {lin.top1:5.1f}% (train {lin.train_top1:5.1f}%, "
                f"C {lin.C:.3g} by 5-fold CV on train: {lin.cv_top1:.1f}%, {time.perf_counter() - t0:.1f} s)")
    results["chance"] = {t: 100.0 / num_classes[t] for t in tasks}
    results["settings"] = {"epochs": epochs, "batch_size": batch_size, "grid": [asdict(g) for g in grid],
                           "train_clips": int(feats["pretrained"]["train"].shape[0]),
                           "val_clips": int(feats["pretrained"]["val"].shape[0]), "encoder": spec,
                           "frames_per_clip": fpc, "frame_step": fstep, "checkpoint": str(checkpoint_path),
                           "augmentation": "none (cached features)", "torch_threads": torch.get_num_threads()}
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    table = format_demo_table(results)
    results["table"] = table
    _write_json(str(out_dir / "demo_probe_results.json"), results)
    (out_dir / "demo_probe_results.md").write_text(table + "\n")
    out(table)
    return results


_DEMO_ROWS = (("pretrained", "V-JEPA pretrained"), ("random", "random init"))


def format_demo_table(results: dict) -> str:
    """The demo's probe table: per encoder in ``results["top1"]``, val top-1 of the attentive probe
    (``results["top1"]``) and of the linear probe on mean-pooled features (``results["linear_top1"]``)
    for each task, then chance."""
    top1, ch, s = results["top1"], results["chance"], results.get("settings", {})
    # (column title, figures, task); a column is as wide as its title
    cols = [(f"{task}, {kind}", figures, task) for task in ("digit", "motion")
            for kind, figures in (("attentive", top1), ("linear", results["linear_top1"]))]
    lines = [f"Frozen probes on held-out moving-digit clips (val top-1 %, "
             f"{s.get('train_clips', '?')} train / {s.get('val_clips', '?')} val clips; attentive = the official "
             f"attentive probe, linear = logistic regression on the mean of the tokens)",
             f"| {'encoder':<17} | " + " | ".join(title for title, _, _ in cols) + " |",
             "|" + "-" * 19 + "|" + "|".join("-" * (len(title) + 2) for title, _, _ in cols) + "|"]
    for name, label in _DEMO_ROWS:
        if name in top1:
            lines.append(f"| {label:<17} | " + " | ".join(f"{figures[name][task]:>{len(title)}.1f}"
                                                          for title, figures, task in cols) + " |")
    lines.append(f"| {'chance':<17} | " + " | ".join(f"{ch[task]:>{len(title)}.1f}" for title, _, task in cols) + " |")
    return "\n".join(lines)
    lines += ["| encoder           | digit, attentive | digit, linear | motion, attentive | motion, linear |",
              "|-------------------|------------------|---------------|-------------------|----------------|"]
    for name, label in _DEMO_ROWS:
        if name not in t:
            continue
        lines.append(f"| {label:<17} | {t[name]['digit']:>16.1f} | {lin[name]['digit']:>13.1f} "
                     f"| {t[name]['motion']:>17.1f} | {lin[name]['motion']:>14.1f} |")
    lines.append(f"| {'chance':<17} | {ch['digit']:>16.1f} | {ch['digit']:>13.1f} "
                 f"| {ch['motion']:>17.1f} | {ch['motion']:>14.1f} |")
    return "\n".join(lines)
