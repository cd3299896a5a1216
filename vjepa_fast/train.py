"""V-JEPA pretraining loop with the official step semantics.

One step (:class:`TrainStep`, shared with ``benchmarks/train_step.py``): schedules advance (lr,
wd) → target forward (no grad) → context encoder + predictor → L1 loss → backward → separate
encoder/predictor clipping once ``epoch > warmup`` → AdamW → EMA of the target. bf16 runs under
autocast without a GradScaler (it has the fp32 exponent range); fp16 uses one; fp32 runs plain.

Optimizer and EMA (``meta.fused_optimizer``): either torch's AdamW (its fused kernel on CUDA)
followed by the multi-tensor EMA kernel, or :class:`~vjepa_fast.optim.FusedAdamWEMA`, which does
both in one pass (each encoder tensor is read once: updated, then averaged into its target while
still in registers) over the same AdamW state, so checkpoints keep torch's AdamW state layout.
Default: fused on CUDA when the kernels resolve to Triton.

Target working copy (``meta.target_working_copy``): under bf16/fp16 autocast the target forward
runs on a low-precision copy of its Linear/Conv weights (:class:`TargetWorkingCopy`), refreshed
after each EMA update; the fp32 target parameters stay the masters that the EMA updates and the
checkpoints hold. Bit-identical to autocast over the fp32 weights.

The hot path never waits for the device: per-step metrics stay on the device and are read back
once every ``logging.log_every`` steps (and at epoch ends), where the progress line, the CSV log,
TensorBoard and the NaN check happen. Under torchrun the metrics are averaged over ranks at that
point only; rank 0 logs and writes checkpoints.

Data: decoded videos (:class:`vjepa_fast.data.VideoClipSource`: uint8 decode in DataLoader workers,
augmentation batched on the device) or synthetic on-device clips (``data.synthetic``). Masks are
drawn in the main process with ``collator.sample(B, step)``. Checkpoints carry everything needed for
an exact resume: model, optimizer, schedules, mask-collator step, data position (pass + batches
consumed) and RNG states.

V-JEPA 2 (``data.dataset_fpcs``; vjepa2 ``app/vjepa/train.py``): a batch is a
:class:`~vjepa_fast.data.MultiLengthBatch`; the masks come per clip length from
:class:`~vjepa_fast.masks.MultiSeqMaskCollator` (``sample_groups``); the step gets lists over the
groups present (:class:`TrainStep`: the target per group, the student
:meth:`~vjepa_fast.jepa.VJEPA.forward_student_groups`, where every mask config of group g uses mask
token g and the loss is the mean over (group, mask config) pairs); no clipping unless
``optimization.clip_grad`` is set. The models keep V2's initialisation (depth rescale) and have
``len(mask) * len(dataset_fpcs)`` mask tokens. A cooldown (``optimization.is_anneal``) starts from
``optimization.anneal_ckpt``: its weights and AdamW moments (the official ``load_checkpoint`` with
``is_anneal``), at step 0 under the linear-decay lr. Checkpoints of V2 runs are ours (official layout +
``vjepa_fast`` extras); official V2 training checkpoints and released files load through
:mod:`vjepa_fast.checkpoint_v2` (resume, ``meta.init_from``, ``anneal_ckpt``).
"""
from __future__ import annotations

import contextlib
import copy
import csv
import gc
import itertools
import math
import os
import re
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import yaml

from .attention import load_attention_table, set_attention_backend
from .checkpoint import (
    CheckpointError,
    atomic_save,
    checkpoint_step,
    load_vjepa_checkpoint,
    not_pretraining_checkpoint,
    read_checkpoint,
    vjepa_checkpoint,
)
from .checkpoint_v2 import load_vjepa2_checkpoint
from .config import PretrainConfig
from .data import MultiLengthBatch, repeat_masks
from .distributed import (
    DistInfo,
    StudentModule,
    all_reduce_mean,
    cleanup_distributed,
    init_distributed,
    is_distributed,
    local_tensors,
    wrap_student,
)
from .jepa import build_vjepa, check_groups, is_grouped_batch, mark_group_batches_dynamic
from .masks import build_mask_collator
from .optim import FusedAdamWEMA, build_optimizer, clip_gradients, clipping_active
from .preflight import PreflightError, config_changes, plan_pretrain_start, pretrain_problems
from . import kernels
from .schedules import Schedules

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GC_EVERY = 50  # meta.sync_gc: steps between collections (official GARBAGE_COLLECT_ITR_FREQ)
CSV_COLUMNS = ["epoch", "itr", "loss", "loss-jepa", "reg-loss", "enc-grad-norm", "pred-grad-norm", "lr", "wd",
               "wall-time(ms)", "data-time(ms)", "clips/s"]
REPO = Path(__file__).resolve().parents[1]
DEMO_DIGITS_CONFIG = REPO / "configs" / "pretrain" / "demo_digits.yaml"


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class SyntheticClips:
    """Random normalised clips generated on the device, reproducible per (seed, rank, step).
    Used by the benchmarks and tests, where decoding must not be what is measured."""

    def __init__(self, batch_size: int, num_frames: int, crop_size: int, device, seed: int = 0, rank: int = 0,
                 channels: int = 3):
        self.shape = (batch_size, channels, num_frames, crop_size, crop_size)
        self.device, self.seed, self.rank = torch.device(device), seed, rank

    def __call__(self, step: int) -> torch.Tensor:
        g = torch.Generator(device=self.device).manual_seed(hash((self.seed, self.rank, step)) & 0x7FFFFFFF)
        return torch.randn(self.shape, generator=g, device=self.device)


class SyntheticMultiLengthClips:
    """V-JEPA 2 synthetic batches: sample b has ``dataset_fpcs[b % len(dataset_fpcs)]`` frames (every
    length of the list takes part once the batch is that long), random normalised clips per length,
    reproducible per (seed, rank, step). Returns a :class:`~vjepa_fast.data.MultiLengthBatch`."""

    def __init__(self, batch_size: int, dataset_fpcs, crop_size: int, device, seed: int = 0, rank: int = 0,
                 channels: int = 3):
        self.fpcs = [int(dataset_fpcs[b % len(dataset_fpcs)]) for b in range(batch_size)]
        self.crop_size, self.channels = crop_size, channels
        self.device, self.seed, self.rank = torch.device(device), seed, rank

    def __call__(self, step: int) -> MultiLengthBatch:
        g = torch.Generator(device=self.device).manual_seed(hash((self.seed, self.rank, step)) & 0x7FFFFFFF)
        clips = {fpc: torch.randn((self.fpcs.count(fpc), self.channels, fpc, self.crop_size, self.crop_size),
                                  generator=g, device=self.device)
                 for fpc in dict.fromkeys(self.fpcs)}
        return MultiLengthBatch(list(self.fpcs), clips)


def apply_runtime_settings(cfg: PretrainConfig) -> None:
    """meta.attn_backend and meta.kernels are process-wide switches (see attention.py and
    kernels/dispatch.py); 'auto' leaves the environment's choice alone."""
    set_attention_backend(cfg.meta.attn_backend if cfg.meta.attn_backend != "auto" else os.environ.get("VJEPA_FAST_ATTN", "auto"))
    if cfg.meta.kernels != "auto":
        os.environ["VJEPA_FAST_KERNELS"] = cfg.meta.kernels
    if cfg.meta.attn_table is not None:
        load_attention_table(cfg.meta.attn_table)


def build_model_from_config(cfg: PretrainConfig):
    d, m = cfg.data, cfg.model
    overrides = {}
    if m.embed_dim is not None:
        overrides["embed_dim"] = m.embed_dim
    if m.depth is not None:
        overrides["depth"] = m.depth
    if m.in_chans != 3:
        overrides["in_chans"] = m.in_chans
    # V-JEPA 2 options; each stays at build_vjepa's V1 default unless set, so V1 models are built
    # exactly as before.
    if m.use_rope:
        overrides["use_rope"] = True
    if m.use_activation_checkpointing:
        overrides["activation_checkpointing"] = m.use_activation_checkpointing
    if m.use_silu or m.use_pred_silu:
        overrides.update(use_silu=m.use_silu, use_pred_silu=m.use_pred_silu, wide_silu=m.wide_silu)
    if cfg.is_v2:
        overrides["depth_rescale"] = True  # V2's init_video_model keeps the blocks' depth rescale
    return build_vjepa(
        m.model_name, crop_size=d.crop_size, patch_size=d.patch_size, num_frames=d.num_frames,
        tubelet_size=d.tubelet_size, uniform_power=m.uniform_power, pred_depth=m.pred_depth,
        pred_embed_dim=m.pred_embed_dim, pred_num_heads=m.pred_num_heads, num_mask_tokens=cfg.num_mask_tokens,
        zero_init_mask_tokens=m.zero_init_mask_tokens, loss_exp=cfg.loss.loss_exp, reg_coeff=cfg.loss.reg_coeff,
        pack_context=cfg.meta.pack_context, sparse_patch_embed=cfg.meta.sparse_patch_embed, **overrides,
    )


# ------------------------------------------------------------------------------------------------
# FLOPs and peak throughput (for the MFU in the progress line)
# ------------------------------------------------------------------------------------------------
def _block_flops(tokens: int, dim: int, hidden: int, depth: int) -> float:
    """Forward matmul + attention FLOPs of ``depth`` pre-norm blocks over one sequence."""
    linear = 2 * tokens * (4 * dim * dim + 2 * dim * hidden)
    attn = 4 * tokens * tokens * dim  # QK^T and AV
    return float(depth * (linear + attn))


@dataclass(frozen=True)
class FlopModel:
    """Dimensions needed by :meth:`step_flops` (read from the built model)."""
    enc_dim: int
    enc_hidden: int
    enc_depth: int
    patch_in: int  # C * tubelet * patch * patch
    num_tokens: int
    pred_dim: int
    pred_hidden: int
    pred_depth: int

    @classmethod
    def of(cls, model) -> "FlopModel":
        e, p = model.encoder, model.predictor
        w = e.patch_embed.proj.weight
        return cls(e.embed_dim, e.blocks[0].mlp.fc1.out_features, len(e.blocks), int(w[0].numel()), e.num_patches,
                   p.predictor_embed_dim, p.predictor_blocks[0].mlp.fc1.out_features, len(p.predictor_blocks))

    def step_flops(self, batch: int, ctx_lens: Sequence[int], tgt_lens: Sequence[int],
                   num_tokens: int | None = None) -> float:
        """Analytic FLOPs of one training step (backward = 2x forward; the target forward has no
        backward). ``ctx_lens``/``tgt_lens``: kept context / target tokens per mask config;
        ``num_tokens``: tokens per clip (default the model's; a V2 group of shorter clips has fewer)."""
        N, D = self.num_tokens if num_tokens is None else num_tokens, self.enc_dim
        embed = 2.0 * N * self.patch_in * D
        target = embed + _block_flops(N, D, self.enc_hidden, self.enc_depth)
        student = embed * 3
        for kc, kt in zip(ctx_lens, tgt_lens):
            student += 3 * _block_flops(kc, D, self.enc_hidden, self.enc_depth)
            pred = 2.0 * kc * D * self.pred_dim + _block_flops(kc + kt, self.pred_dim, self.pred_hidden, self.pred_depth)
            pred += 2.0 * kt * self.pred_dim * D
            student += 3 * pred
        return batch * (target + student)


#: Dense bf16/fp16 tensor-core peaks (TFLOP/s) of common GPUs, matched against the device name.
PEAK_TFLOPS_16BIT = [
    ("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0), ("B200", 2250.0),
    ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0), ("A6000", 155.0), ("A10", 125.0),
    ("L4", 121.0), ("V100", 125.0), ("4090", 165.0), ("3090", 71.0),
]


def measure_matmul_tflops(device: torch.device, dtype: torch.dtype, n: int = 4096, reps: int = 10) -> float:
    """Achieved TFLOP/s of an ``n x n`` matmul (a practical peak when the GPU is not in the table)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    torch.cuda.synchronize(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


def peak_tflops(device: torch.device, dtype: torch.dtype, override: float | None = None) -> float | None:
    """Peak used for MFU: ``meta.peak_tflops``, else ``$VJEPA_FAST_PEAK_TFLOPS``, else the table
    (16-bit dtypes), else a measured matmul. ``None`` on the CPU (no MFU shown)."""
    if override:
        return float(override)
    env = os.environ.get("VJEPA_FAST_PEAK_TFLOPS")
    if env:
        return float(env)
    if device.type != "cuda":
        return None
    if dtype in (torch.bfloat16, torch.float16):
        name = torch.cuda.get_device_name(device)
        for key, value in PEAK_TFLOPS_16BIT:
            if key in name:
                return value
    return measure_matmul_tflops(device, dtype)


# ------------------------------------------------------------------------------------------------
# The training step (shared by Trainer and benchmarks/train_step.py)
# ------------------------------------------------------------------------------------------------
Phase = Callable[[Optional[str]], None]

#: Layers whose weights and biases autocast casts to its low-precision dtype (and which are all the
#: target encoder's matmul weights); everything else (LayerNorm, pos_embed) autocast uses in fp32.
_AUTOCAST_LOWP_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _no_phase(name: str | None) -> None:
    return None


def resolve_fused_optimizer(setting: bool | None, device: torch.device | str,
                            parallel: str = "none") -> tuple[bool, str | None]:
    """``meta.fused_optimizer`` -> (use it, a note to print or None).

    ``None`` (auto): on when the device is CUDA and the kernels resolve to Triton. Elsewhere the
    fused op would run its PyTorch reference, a per-tensor loop doing what torch's AdamW + the EMA
    already do, so nothing is gained. Never under FSDP (the parameters are DTensor shards and the
    optimizer state is sharded with them)."""
    device = torch.device(device)
    if parallel == "fsdp":
        note = ("meta.fused_optimizer: not supported with meta.parallel=fsdp; using torch AdamW + fused EMA"
                if setting else None)
        return False, note
    if setting is None:
        return device.type == "cuda" and kernels.kernel_backend(device) == "triton", None
    return bool(setting), None


def resolve_target_working_copy(setting: bool | None, dtype: torch.dtype,
                                parallel: str = "none") -> tuple[bool, str | None]:
    """``meta.target_working_copy`` -> (use it, a note to print or None). ``None`` (auto): on under
    bf16/fp16 autocast, off in fp32 (nothing is cast) and under FSDP (its mixed-precision policy
    already casts each sharded block once per forward, and the target's parameters are DTensors)."""
    if dtype == torch.float32:
        return False, ("meta.target_working_copy: float32 has no autocast casts to save; ignored"
                       if setting else None)
    if parallel == "fsdp":
        return False, ("meta.target_working_copy: not supported with meta.parallel=fsdp; ignored"
                       if setting else None)
    return (True if setting is None else bool(setting)), None


class TargetWorkingCopy:
    """A bf16/fp16 working copy of the EMA target encoder, for its forward under autocast.

    Autocast caches its casts only for leaf tensors that require grad, so the frozen target's fp32
    Linear/Conv weights are cast again, one kernel and one allocation per tensor, in every target
    forward. Here those weights and biases are kept once more in ``dtype`` and refreshed from the
    fp32 masters with one multi-tensor copy (:meth:`refresh`, right after each EMA update). Autocast
    leaves a tensor already in its dtype as it is, and rounds fp32 to bf16/fp16 the way the copy
    does (to nearest even), so the forward is bit-identical to autocast over the fp32 weights.
    LayerNorm weights and ``pos_embed`` are not copied: the module shares the masters (autocast
    runs layer_norm in fp32, and the position add is no autocast op).

    ``module`` is a shallow structural copy of the target (same parameter objects except the
    low-precision ones); it is not registered anywhere, so ``state_dict``, the EMA and the
    checkpoints see only the fp32 target. Call :meth:`refresh` after changing the target's weights
    outside the training step (e.g. after loading a checkpoint). A ``forward`` replaced on the
    target instance (``vjepa_fast.compile``) is rebound to the copy, before or after construction.
    """

    def __init__(self, target: nn.Module, dtype: torch.dtype):
        if any(hasattr(p, "to_local") for p in target.parameters()):
            raise NotImplementedError("TargetWorkingCopy does not support FSDP (DTensor) parameters")
        self.target, self.dtype = target, dtype
        # deepcopy with every tensor pre-mapped to itself: a new module tree, no tensor copied.
        memo = {id(t): t for t in itertools.chain(target.parameters(), target.buffers())}
        self.module = copy.deepcopy(target, memo)
        self.masters: list[torch.Tensor] = []
        self.copies: list[torch.Tensor] = []
        for mod in self.module.modules():
            if not isinstance(mod, _AUTOCAST_LOWP_LAYERS):
                continue
            for name, master in list(mod._parameters.items()):
                if master is None or not master.is_floating_point():
                    continue
                low = nn.Parameter(torch.empty_like(master, dtype=dtype), requires_grad=False)
                mod._parameters[name] = low
                self.masters.append(master)
                self.copies.append(low)
        self._follow_compiled_forward()
        self.refresh()

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy the fp32 masters into the working copy: one multi-tensor launch on CUDA."""
        if self.copies:
            torch._foreach_copy_(self.copies, self.masters)

    def _follow_compiled_forward(self) -> None:
        # A compiled callable bound to the target itself would silently run the fp32 target, so
        # only a method of the encoder class (compile_vjepa's form) is rebound to the copy.
        if getattr(self.target, "_compiled_call_impl", None) is not None:
            raise NotImplementedError(
                "target_encoder was compiled with nn.Module.compile(), which the working copy cannot "
                "run on its own weights; use vjepa_fast.compile.compile_vjepa, or set "
                "meta.target_working_copy: false")
        fwd = self.target.__dict__.get("forward")
        own = self.module.__dict__.get("forward")
        if fwd is None:
            if own is not None:
                del self.module.forward
            return
        if not isinstance(fwd, types.MethodType) or fwd.__self__ is not self.target:
            raise NotImplementedError(
                f"target_encoder.forward was replaced by {fwd!r}, not a method bound to the encoder; "
                "the working copy cannot run it on its own weights (set meta.target_working_copy: false)")
        if getattr(own, "__func__", None) is not fwd.__func__:
            self.module.forward = types.MethodType(fwd.__func__, self.module)

    @torch.no_grad()
    def __call__(self, clips: torch.Tensor) -> torch.Tensor:
        self._follow_compiled_forward()
        return self.module(clips)


def build_step_state(model, device: torch.device, dtype: torch.dtype, fused_optimizer: bool | None,
                     target_working_copy: bool | None, parallel: str = "none",
                     betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
    """``(optimizer, fused or None, target copy or None, notes)`` for :class:`TrainStep`, from the
    ``meta.fused_optimizer`` / ``meta.target_working_copy`` settings (None = auto); ``notes`` say why
    an option asked for is off. ``betas`` / ``eps``: AdamW's (``optimization.betas`` / ``eps``)."""
    use_fused, note_fused = resolve_fused_optimizer(fused_optimizer, device, parallel)
    use_copy, note_copy = resolve_target_working_copy(target_working_copy, dtype, parallel)
    # The torch AdamW is the state the checkpoints hold in both modes; the fused pass keeps
    # torch's non-fused layout (step on the CPU), so torch's own fused kernel stays off there.
    optimizer = build_optimizer(model.encoder, model.predictor, betas=betas, eps=eps,
                                fused=False if use_fused else None)
    fused = None
    if use_fused:
        fused = FusedAdamWEMA(optimizer, model.target_encoder.parameters(), model.encoder.parameters())
    copy_ = TargetWorkingCopy(model.target_encoder, dtype) if use_copy else None
    return optimizer, fused, copy_, [n for n in (note_fused, note_copy) if n]


class TrainStep:
    """One official V-JEPA iteration, the hot path of :class:`Trainer` and of the benchmark's fast
    step (``benchmarks/train_step.py``), which both call it. A micro-batch is V1's
    ``(clips [B, C, T, H, W], masks_enc, masks_pred)`` or V2's multi-length batch
    ``(clips [G] of [B_g, C, T_g, H, W], masks_enc [G][mask configs], masks_pred [G][...])``: the
    target runs per group and the student is ``VJEPA.forward_student_groups`` (the V2 loss, no
    regulariser; V2 never clips, so pass no ``clip_grad``).

    schedules.step (lr, wd) → per micro-batch: target forward (no grad; the working copy when
    given) → student forward (context encoder + predictor + loss) → backward of loss / n → clipping
    of encoder and predictor separately (when ``clip_grad`` is passed) → AdamW (``fused``: the
    fused AdamW + EMA pass; else ``optimizer.step``) → EMA (else the multi-tensor EMA kernel) →
    working-copy refresh. Returns device tensors only: no host sync (except inside an enabled
    GradScaler's step, which must read its inf check, as the official loop does).

    ``phase(name)`` is called at the phase boundaries ``target_fwd``, ``ctx_pred_fwd_bwd``,
    ``optimizer``, ``ema`` and ``None`` (end of step) for per-phase timing and profiler ranges;
    with the fused optimizer the ``ema`` phase holds only the working-copy refresh.
    """

    def __init__(self, model, optimizer: torch.optim.Optimizer, schedules: Schedules, *,
                 dtype: torch.dtype = torch.float32, student: nn.Module | None = None,
                 scaler: torch.amp.GradScaler | None = None, fused: FusedAdamWEMA | None = None,
                 target_copy: TargetWorkingCopy | None = None, fsdp: bool = False):
        self.model, self.optimizer, self.schedules, self.dtype = model, optimizer, schedules, dtype
        self.student = student if student is not None else StudentModule(model)
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None
        self.fused, self.target_copy, self.fsdp = fused, target_copy, fsdp
        # What the scaler unscales and steps: the same object both times (it keys its state by id).
        self.stepper = fused if fused is not None else optimizer
        self.device = next(model.encoder.parameters()).device
        self._ema_target = list(model.target_encoder.parameters())
        self._ema_source = list(model.encoder.parameters())

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def forward_target(self, clips):
        """Raw target features [B, N, D] (call under :meth:`autocast`); for a V2 multi-length batch
        (a list of clip groups) a list with one [B_g, N_g, D] per group."""
        if is_grouped_batch(clips):
            return [self._target_group(c) for c in clips]
        if self.target_copy is not None:
            return self.target_copy(clips)
        h = self.model.forward_target(clips)
        if self.fsdp:
            # FSDP2 keeps a root module's parameters unsharded after forward (expecting a backward);
            # the target has none, and its stale unsharded copy would hide the EMA update from the
            # next forward.
            self.model.target_encoder.reshard()
        return h

    @torch.no_grad()
    def _target_group(self, clips: torch.Tensor) -> torch.Tensor:
        # A V2 group may have another frame count than the model was built with (RoPE): no
        # geometry check against the model here (check_groups checks the batch's structure).
        if self.target_copy is not None:
            return self.target_copy(clips)
        h = self.model.target_encoder(clips)
        if self.fsdp:
            self.model.target_encoder.reshard()
        return h

    @torch.no_grad()
    def ema(self, m: float) -> None:
        if self.fsdp:
            kernels.fused_ema_(local_tensors(self._ema_target), local_tensors(self._ema_source), m)
        else:
            kernels.fused_ema_(self._ema_target, self._ema_source, m)

    def __call__(self, micro: Sequence[tuple], *, clip_grad: float | None = None,
                 phase: Phase | None = None) -> dict[str, torch.Tensor]:
        """``micro``: ``[(clips, masks_enc, masks_pred), ...]``, whose gradients are averaged (the mean
        of their losses: what DDP computes over ranks). ``clip_grad``: clip this step (the caller
        applies the official ``epoch > warmup`` rule)."""
        phase = phase or _no_phase
        opt, model = self.optimizer, self.model
        n = len(micro)
        if getattr(model, "target_cuda_graph", False):
            # The CUDA-graphed target (meta.cuda_graphs) reuses its output buffers: tell the graph
            # trees that the previous step's outputs are dead.
            torch.compiler.cudagraph_mark_step_begin()
        phase("target_fwd")
        self.schedules.step(opt)
        sums = None
        for i, (clips, masks_enc, masks_pred) in enumerate(micro):
            if i:
                phase("target_fwd")
            if is_grouped_batch(clips):
                check_groups(clips, masks_enc, masks_pred)
                mark_group_batches_dynamic(clips, masks_enc, masks_pred)
            sync_ctx = contextlib.nullcontext()
            if n > 1 and i < n - 1 and hasattr(self.student, "no_sync"):
                sync_ctx = self.student.no_sync()
            with sync_ctx:
                with self.autocast():
                    h = self.forward_target(clips)
                    phase("ctx_pred_fwd_bwd")
                    loss, loss_jepa, loss_reg, _, _ = self.student(clips, masks_enc, masks_pred, h)
                scaled = loss / n if n > 1 else loss
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            parts = torch.stack([loss.detach(), loss_jepa.detach(), loss_reg.detach()]).float()
            sums = parts if sums is None else sums + parts
        if n > 1:
            sums = sums / n
        zero = sums.new_zeros(())
        norms = (zero, zero)
        if clip_grad:
            if self.scaler is not None:
                self.scaler.unscale_(self.stepper)
            norms = tuple(_full(t) for t in clip_gradients(model.encoder, model.predictor, clip_grad))
        phase("optimizer")
        m = self.schedules.momentum()
        if self.fused is not None:
            self.fused.stepped = False
            if self.scaler is not None:
                self.scaler.step(self.fused, momentum=m)
                self.scaler.update()
            else:
                self.fused.step(m)
            opt.zero_grad(set_to_none=True)
            phase("ema")
            if not self.fused.stepped:
                self.fused.ema_only(m)  # the scaler skipped an inf/NaN step; the official EMA still runs
        else:
            if self.scaler is not None:
                self.scaler.step(opt)
                self.scaler.update()
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)
            phase("ema")
            self.ema(m)
        if self.target_copy is not None:
            self.target_copy.refresh()
        phase(None)
        return {"loss": sums[0], "loss-jepa": sums[1], "reg-loss": sums[2],
                "enc-grad-norm": norms[0].detach().float(), "pred-grad-norm": norms[1].detach().float()}


# ------------------------------------------------------------------------------------------------
@dataclass
class FitResult:
    """What :meth:`Trainer.fit` did. ``checkpoint``: the file this run wrote (None if it wrote none,
    e.g. on ranks other than 0); ``log``: its CSV log."""
    steps: int
    final_loss: float
    first_loss: float
    checkpoint: str | None
    log: str
    seconds: float
    clips_per_second: float = math.nan


def _format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"


def _bar(done: int, total: int, width: int = 20) -> str:
    k = int(width * done / max(total, 1))
    return "[" + "#" * k + "-" * (width - k) + "]"


class Trainer:
    """Builds model, optimizer, schedules, masks and data from a :class:`PretrainConfig`.

    ``dist``: a :class:`~vjepa_fast.distributed.DistInfo` from :func:`init_distributed` (rank,
    world size, device); without it ``rank``/``world_size``/``device`` (defaults: 0, 1,
    ``meta.device``). ``source``: a callable ``step -> clips`` on the device; default: decoded videos
    (:class:`~vjepa_fast.data.VideoClipSource`), or synthetic clips when ``data.synthetic``.

    Before anything is built, :func:`~vjepa_fast.preflight.pretrain_problems` checks the device, the
    index files and how the run starts (resume, ``meta.init_from``, an existing run in
    ``logging.folder``); a :class:`~vjepa_fast.preflight.PreflightError` lists every problem.
    ``preflight=False`` skips that (callers that checked already, or build a trainer to inspect it).
    """

    def __init__(self, cfg: PretrainConfig, *, rank: int | None = None, world_size: int | None = None,
                 loader_len: int | None = None, out: Callable[[str], None] | None = None,
                 dist: DistInfo | None = None, device: torch.device | str | None = None, source=None,
                 preflight: bool = True):
        self.cfg = cfg
        self.rank = dist.rank if dist is not None else (rank or 0)
        self.world_size = dist.world_size if dist is not None else (world_size or 1)
        if device is not None:
            self.device = torch.device(device)
        elif dist is not None:
            self.device = dist.device
        else:
            self.device = resolve_device(cfg.meta.device)
        self.out = out or (lambda s: print(s, flush=True))
        self.is_main = self.rank == 0
        if preflight:
            if is_distributed():
                # Every rank checks the same files: none may look before the previous run's rank 0
                # has written its checkpoint (several runs in one launch share the process group).
                torch.distributed.barrier()
            problems = pretrain_problems(cfg, world_size=self.world_size, own_source=source is None)
            if problems:
                raise PreflightError(problems, f"pretraining ({cfg.logging.folder})")
        apply_runtime_settings(cfg)
        torch.manual_seed(cfg.meta.seed)
        self.dtype = DTYPES[cfg.meta.dtype]
        d = cfg.data

        # -- data (first: with ipe null the loader length sets the schedules) --------------------
        self.owns_source = source is None
        if source is None:
            if d.synthetic and cfg.is_v2:
                source = SyntheticMultiLengthClips(d.batch_size, d.dataset_fpcs, d.crop_size, self.device,
                                                   cfg.meta.seed, self.rank, channels=cfg.model.in_chans)
            elif d.synthetic:
                source = SyntheticClips(d.batch_size, d.num_frames, d.crop_size, self.device, cfg.meta.seed, self.rank,
                                        channels=cfg.model.in_chans)
            else:
                from .data import VideoClipSource  # noqa: PLC0415

                source = VideoClipSource(cfg, self.device, self.rank, self.world_size)
        self.source = source
        if loader_len is None:
            loader_len = getattr(source, "batches_per_pass", None)
        self.num_clips = getattr(source, "num_clips", 1)

        # -- model -------------------------------------------------------------------------------
        self.model = build_model_from_config(cfg).to(self.device)
        self.flop_model = FlopModel.of(self.model)
        if cfg.meta.compile:
            self._compile()
        self.parallel = cfg.meta.parallel if is_distributed() else "none"
        mp = self.dtype if (self.parallel == "fsdp" and self.dtype != torch.float32) else None
        # V2: the mask tokens of clip lengths absent from a batch get no gradient (official DDP:
        # find_unused_parameters=True), and AdamW leaves them untouched.
        self.student = wrap_student(self.model, cfg.meta.parallel, self.device, mp,
                                    find_unused_parameters=cfg.is_v2)
        # The target copy is built after compile_vjepa (above), though it also follows a compiled
        # forward set later.
        self.optimizer, self.fused_optimizer, self.target_copy, notes = build_step_state(
            self.model, self.device, self.dtype, cfg.meta.fused_optimizer, cfg.meta.target_working_copy,
            self.parallel, betas=tuple(cfg.optimization.betas), eps=cfg.optimization.eps)
        for note in notes:
            if self.is_main:
                self.out(f"note: {note}")
        self.ipe = cfg.iterations_per_epoch(loader_len)
        self.schedules = Schedules.from_config(cfg.optimization, ipe=self.ipe)
        self.masks = build_mask_collator(
            d.mask_type, cfg.mask_dicts(), crop_size=d.crop_size, num_frames=d.num_frames,
            patch_size=d.patch_size, tubelet_size=d.tubelet_size, seed=cfg.meta.seed, rank=self.rank,
            truncation=d.mask_truncation, dataset_fpcs=d.dataset_fpcs if cfg.is_v2 else None,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.step_fn = TrainStep(self.model, self.optimizer, self.schedules, dtype=self.dtype,
                                 student=self.student, scaler=self.scaler, fused=self.fused_optimizer,
                                 target_copy=self.target_copy, fsdp=self.parallel == "fsdp")
        self.step = 0
        self._peak = None  # resolved lazily (a measured matmul costs a moment)
        # The record of what the weights were trained with: one entry per stretch of steps run under
        # one config (a resume with other settings adds one), and the checkpoint a run started from.
        self.config_history: list[dict] = []
        self.init_info: dict | None = None
        self._start_step = 0

    # -- compile hook ----------------------------------------------------------------------------
    def _compile(self) -> None:
        """The one place where ``meta.compile`` takes effect (before DDP/FSDP wrapping)."""
        from .compile import compile_vjepa  # noqa: PLC0415

        graphs = self.cfg.meta.cuda_graphs and self.device.type == "cuda"
        if self.cfg.meta.cuda_graphs and not graphs:
            self.out(f"note: meta.cuda_graphs needs a CUDA device (this run: {self.device}); not used")
        compile_vjepa(self.model, target_mode="reduce-overhead" if graphs else None)

    # -- one optimisation step -------------------------------------------------------------------
    def autocast(self):
        return self.step_fn.autocast()

    def train_step(self, clips: torch.Tensor, masks_enc, masks_pred) -> dict[str, torch.Tensor]:
        """One official V-JEPA iteration. Returns device tensors only (no host sync)."""
        return self.train_step_accum([(clips, masks_enc, masks_pred)])

    def train_step_accum(self, micro: Sequence[tuple], phase: Phase | None = None) -> dict[str, torch.Tensor]:
        """One iteration over several micro-batches ``[(clips, masks_enc, masks_pred), ...]`` whose
        gradients are averaged (the mean of their losses), i.e. what DDP computes over ranks."""
        o = self.cfg.optimization
        clip = o.clip_grad if clipping_active(self.step // self.ipe, o.warmup, o.clip_grad) else None
        metrics = self.step_fn(micro, clip_grad=clip, phase=phase)
        self.step += 1
        return metrics

    # -- checkpoints -----------------------------------------------------------------------------
    def _extra(self) -> dict:
        extra = {
            "step": self.step, "schedules": self.schedules.state_dict(), "masks": self.masks.state_dict(),
            "config": self.cfg.to_dict(), "torch_rng": torch.get_rng_state(), "world_size": self.world_size,
            "config_history": self._history(),
        }
        if self.init_info is not None:
            extra["init_from"] = self.init_info
        if hasattr(self.source, "state_dict"):
            extra["data"] = self.source.state_dict()
        if self.device.type == "cuda":
            extra["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return extra

    def state(self, loss: float) -> dict | None:
        """The checkpoint dict (official layout + ``vjepa_fast`` extras). Collective under FSDP (call
        on every rank); ``None`` on ranks other than 0 there."""
        common = dict(epoch=self.step // self.ipe, loss=loss, batch_size=self.cfg.data.batch_size,
                      world_size=self.world_size, lr=self.schedules.lr(max(self.schedules.iteration, 1)))
        if self.parallel != "fsdp":
            return vjepa_checkpoint(self.model, self.optimizer, extra=self._extra(), **common)
        from torch.distributed.checkpoint.state_dict import (  # noqa: PLC0415
            StateDictOptions, get_model_state_dict, get_optimizer_state_dict)
        from .checkpoint import NEUTRAL_SCALER_STATE, PREFIX  # noqa: PLC0415

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        sds = {k: get_model_state_dict(getattr(self.model, k), options=opts)
               for k in ("encoder", "predictor", "target_encoder")}
        opt_sd = get_optimizer_state_dict(self.student, self.optimizer, options=opts)
        if not self.is_main:
            return None
        ckpt = {k: {PREFIX + n: v for n, v in sd.items()} for k, sd in sds.items()}
        ckpt.update(opt=opt_sd, scaler=dict(NEUTRAL_SCALER_STATE), epoch=int(common["epoch"]),
                    loss=float(loss), batch_size=int(common["batch_size"]), world_size=self.world_size,
                    lr=float(common["lr"]), vjepa_fast={**self._extra(), "opt_format": "fsdp_fqn"})
        return ckpt

    def save(self, path: str | os.PathLike, loss: float) -> None:
        """Atomic save by rank 0 (every rank must call it: gathering is collective under FSDP)."""
        if self.parallel != "fsdp" and not self.is_main:
            return
        state = self.state(loss)
        if self.is_main:
            atomic_save(state, path)

    def _history(self) -> list[dict]:
        """:attr:`config_history` with this run's config appended when it differs from the last entry."""
        now = self.cfg.to_dict()
        if self.config_history and self.config_history[-1]["config"] == now:
            return self.config_history
        return [*self.config_history, {"from_step": self._start_step, "config": now}]

    def resume(self, path: str | os.PathLike, ckpt: dict | None = None) -> None:
        """Continue from ``path`` (``ckpt``: its contents, if already read): weights, optimizer,
        schedules, masks, data position, RNG states and step. Refuses a file without a pretraining
        model, and one whose stored geometry, model or masks differ from the config (unless
        ``meta.allow_resume_changes``)."""
        ckpt = read_checkpoint(path) if ckpt is None else ckpt
        bad = not_pretraining_checkpoint(ckpt, str(path), "meta.load_checkpoint")
        if bad:
            raise CheckpointError(bad)
        extra = ckpt.get("vjepa_fast")
        allow = self.cfg.meta.allow_resume_changes
        saved = (extra or {}).get("config")
        if saved is not None and not allow:
            changes = config_changes(saved, self.cfg.to_dict())
            if changes:
                raise CheckpointError(f"{path} was trained with other settings: {'; '.join(changes)} "
                                      "(meta.allow_resume_changes=true accepts them)")
        if self.parallel == "fsdp":
            self._load_fsdp(ckpt)
        else:
            # A pos_embed of another size is a geometry change: refused unless accepted.
            self._load_weights(ckpt, path, keep_resized_pos_embed=allow)
            if ckpt.get("opt"):
                if extra and extra.get("opt_format") == "fsdp_fqn":
                    raise ValueError(f"{path}: optimizer state was written by an FSDP run; resume with meta.parallel=fsdp")
                (self.fused_optimizer or self.optimizer).load_state_dict(ckpt["opt"])
        if self.target_copy is not None:
            self.target_copy.refresh()  # the target was loaded in place, behind the copy's back
        if extra:
            self.step = int(extra["step"])
            history = extra.get("config_history")
            if history is None and saved is not None:  # written before histories were kept
                history = [{"from_step": 0, "config": saved}]
            self.config_history = list(history or [])
            self.init_info = extra.get("init_from")
            self.schedules.load_state_dict(extra["schedules"])
            self.masks.load_state_dict(extra["masks"])
            torch.set_rng_state(extra["torch_rng"])
            if "cuda_rng" in extra and self.device.type == "cuda":
                torch.cuda.set_rng_state(extra["cuda_rng"], self.device)
            if "data" in extra and hasattr(self.source, "load_state_dict"):
                saved_world = int(extra.get("world_size", self.world_size))
                if saved_world == self.world_size:
                    self.source.load_state_dict(extra["data"])
                else:
                    self.out(f"note: checkpoint written with world size {saved_world}, now {self.world_size}: "
                             "data order restarts at the next pass")
                    self.source.load_state_dict({"pass": int(extra["data"]["pass"]) + 1, "consumed": 0})
        else:
            # An official file: fast-forward schedules and masks by whole epochs, as the
            # official resume does.
            self.step = int(ckpt["epoch"]) * self.ipe
            self.schedules.load_state_dict({"iteration": self.step})
            self.masks.load_state_dict({"step": self.step})
        self._start_step = self.step

    def init_from(self, path: str | os.PathLike, ckpt: dict | None = None) -> None:
        """Start from the encoder, predictor and target weights of the pretraining checkpoint ``path``
        (``ckpt``: its contents, if already read), at step 0: optimizer, schedules, masks and data
        order stay fresh. The clip size and frame count may differ from the checkpoint's (the model
        keeps the sin-cos positions of its own size); every other shape must match."""
        ckpt = read_checkpoint(path) if ckpt is None else ckpt
        bad = not_pretraining_checkpoint(ckpt, str(path), "meta.init_from")
        if bad:
            raise CheckpointError(bad)
        if self.parallel == "fsdp":
            self._load_fsdp({k: ckpt[k] for k in ("encoder", "predictor", "target_encoder")})
        else:
            try:
                self._load_weights(ckpt, path)
            except CheckpointError as e:
                raise CheckpointError(f"meta.init_from: {e}") from None
        if self.target_copy is not None:
            self.target_copy.refresh()
        self.init_info = self._start_record(path, ckpt, "init")

    def anneal_from(self, path: str | os.PathLike, ckpt: dict | None = None) -> None:
        """Start a V-JEPA 2 cooldown (``optimization.is_anneal``) from the pretraining checkpoint ``path``
        (``ckpt``: its contents, if already read): encoder, predictor and target weights and the AdamW
        state (moments and their step counts, as the official ``load_checkpoint`` with ``is_anneal``
        loads them), at step 0: the linear-decay lr schedule, masks and data order start fresh."""
        ckpt = read_checkpoint(path) if ckpt is None else ckpt
        bad = not_pretraining_checkpoint(ckpt, str(path), "optimization.anneal_ckpt")
        if bad:
            raise CheckpointError(bad)
        if not ckpt.get("opt"):
            raise CheckpointError(f"optimization.anneal_ckpt: {path} has no optimizer state ('opt')")
        if self.parallel == "fsdp":
            self._load_fsdp(ckpt)
        else:
            try:
                self._load_weights(ckpt, path)
            except CheckpointError as e:
                raise CheckpointError(f"optimization.anneal_ckpt: {e}") from None
            (self.fused_optimizer or self.optimizer).load_state_dict(ckpt["opt"])
        if self.target_copy is not None:
            self.target_copy.refresh()
        self.init_info = self._start_record(path, ckpt, "anneal")

    @staticmethod
    def _start_record(path, ckpt: dict, kind: str) -> dict:
        """What ``init_from`` / ``anneal_from`` record in this run's checkpoints
        (``vjepa_fast.init_from``)."""
        extra = ckpt.get("vjepa_fast") or {}
        return {"path": str(path), "kind": kind, "step": checkpoint_step(ckpt, None),
                "epoch": int(ckpt["epoch"]) if "epoch" in ckpt else None,
                "config_history": extra.get("config_history")
                or ([{"from_step": 0, "config": extra["config"]}] if "config" in extra else [])}

    def _load_weights(self, ckpt: dict, path, keep_resized_pos_embed: bool = True) -> None:
        """Encoder, predictor and target of ``ckpt`` (read from ``path``) into the model: V2 runs through
        :func:`~vjepa_fast.checkpoint_v2.load_vjepa2_checkpoint` (official V2 training checkpoints and
        released files: position tables a RoPE model lacks dropped, surplus mask tokens left out; what
        it did is printed), V1 runs as before."""
        if not self.cfg.is_v2:
            load_vjepa_checkpoint(self.model, ckpt, source=str(path),
                                  keep_resized_pos_embed=keep_resized_pos_embed)
            return
        try:
            report = load_vjepa2_checkpoint(self.model, ckpt)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
        def changed(r) -> bool:
            t = r.mask_tokens
            return bool(r.dropped) or (t is not None and bool(t.not_loaded or t.kept_init))

        dropped = {k: r for k, r in report.modules.items() if changed(r)}
        if dropped and self.is_main:
            self.out(f"note: {path}: " + "; ".join(str(r) for r in dropped.values()))

    def _load_fsdp(self, ckpt: dict) -> None:
        from torch.distributed.checkpoint.state_dict import (  # noqa: PLC0415
            StateDictOptions, set_model_state_dict, set_optimizer_state_dict)
        from .checkpoint import clean_state_dict  # noqa: PLC0415

        opts = StateDictOptions(full_state_dict=True)
        for k in ("encoder", "predictor", "target_encoder"):
            set_model_state_dict(getattr(self.model, k), clean_state_dict(ckpt[k]), options=opts)
        extra = ckpt.get("vjepa_fast") or {}
        if ckpt.get("opt") and extra.get("opt_format") == "fsdp_fqn":
            set_optimizer_state_dict(self.student, self.optimizer, ckpt["opt"], options=opts)

    def _periodic_checkpoint(self, folder: Path, loss: float) -> None:
        """Official ``save_every_freq``: after 0-based epoch e with ``e % freq == 0`` also write
        ``{tag}-e{e}.pth.tar``; keep the newest ``logging.keep_last`` of them (0 = keep all)."""
        freq, tag = self.cfg.meta.save_every_freq, self.cfg.logging.write_tag
        epoch = self.step // self.ipe - 1
        if freq <= 0 or epoch % freq != 0:
            return
        self.save(folder / f"{tag}-e{epoch}.pth.tar", loss)
        keep = self.cfg.logging.keep_last
        if self.is_main and keep > 0:
            pat = re.compile(rf"^{re.escape(tag)}-e(\d+)\.pth\.tar$")
            found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := pat.match(p.name)))
            for _, p in found[:-keep]:
                p.unlink(missing_ok=True)

    # -- the loop --------------------------------------------------------------------------------
    def fit(self, clips_for_step: Callable[[int], torch.Tensor] | None = None) -> FitResult:
        """Train until ``total_steps``. ``clips_for_step(step)`` supplies [B*num_clips, 3, T, H, W]
        clips on the device; by default the trainer's source (videos or synthetic)."""
        cfg, d = self.cfg, self.cfg.data
        folder = Path(cfg.logging.folder)
        latest = Path(cfg.latest_checkpoint_path)
        total = cfg.total_steps(self.ipe)
        # Checked again with the exact ipe (the start-up check estimates it from the index files).
        plan = plan_pretrain_start(cfg, self.ipe, total)
        if plan.problems:
            raise PreflightError(plan.problems, f"pretraining ({cfg.logging.folder})")
        if plan.kind == "resume":
            self.resume(plan.path, plan.ckpt)
            if self.is_main:
                self.out(f"resumed from {plan.path} at step {self.step}")
        elif plan.kind == "init":
            self.init_from(plan.path, plan.ckpt)
            if self.is_main:
                self.out(f"meta.init_from: encoder, predictor and target weights of {plan.path} "
                         f"(its step {self.init_info['step'] if self.init_info['step'] is not None else '?'}); "
                         "step 0 with a fresh optimizer, schedules, masks and data order")
        elif plan.kind == "anneal":
            self.anneal_from(plan.path, plan.ckpt)
            if self.is_main:
                step = self.init_info["step"]
                self.out(f"cooldown (optimization.is_anneal): weights and AdamW state of {plan.path} "
                         f"(its step {step if step is not None else '?'}); step 0, lr linear from "
                         f"{self.cfg.optimization.lr:g} to {self.cfg.optimization.final_lr:g} over "
                         f"{self.schedules.lr.T_max} steps, fresh masks and data order")
        if self.is_main:
            for note in plan.notes:
                self.out(f"note: {note}")
        if self.step >= total:  # the plan refuses this; here for callers that set the step themselves
            raise PreflightError([f"the run is at step {self.step} of {total}: nothing to train"], "pretraining")
        folder.mkdir(parents=True, exist_ok=True)
        source = clips_for_step if clips_for_step is not None else self.source
        # An image model (num_frames 1) takes [B, C, H, W]; the clip sources give one-frame clips.
        image_model = not self.model.encoder.is_video
        log_path = Path(cfg.log_path(self.rank))
        writer = log_file = tb = None
        wrote_checkpoint = False
        if self.is_main:
            self._save_params(folder)
            log_file = self._open_log(log_path)
            writer = csv.writer(log_file)
            tb = self._tensorboard(folder)
            self.out(self._banner(total))
        buffered: list[tuple] = []
        first_loss = last_loss = math.nan
        t0 = t_window = time.perf_counter()
        steps_at_start = self.step
        # Official V2 meta.sync_gc: no automatic collections (they stall every rank at random
        # moments); one every GC_EVERY steps instead, at the same step on every rank.
        sync_gc = cfg.meta.sync_gc and gc.isenabled()
        if sync_gc:
            gc.disable()
            gc.collect()
        flops_window = 0.0
        data_s_window = 0.0
        rate = math.nan
        try:
            while self.step < total:
                itr = self.step
                if sync_gc and itr % GC_EVERY == 0 and itr > steps_at_start:
                    gc.collect()
                t_data = time.perf_counter()
                clips = source(itr)
                if cfg.is_v2:
                    clips, masks_enc, masks_pred, flops, n_clips = self._v2_batch(clips, itr)
                    flops_window += flops
                else:
                    if image_model and clips.dim() == 5:
                        clips = clips[:, :, 0]
                    n_clips = clips.shape[0]
                    B = clips.shape[0] // self.num_clips
                    masks_enc, masks_pred = self.masks.sample(B, itr)
                    flops_window += self.flop_model.step_flops(
                        clips.shape[0], [m.shape[1] for m in masks_enc], [m.shape[1] for m in masks_pred])
                    masks_enc = [m.to(self.device, non_blocking=True)
                                 for m in repeat_masks(masks_enc, self.num_clips)]
                    masks_pred = [m.to(self.device, non_blocking=True)
                                  for m in repeat_masks(masks_pred, self.num_clips)]
                data_s = time.perf_counter() - t_data
                data_s_window += data_s
                metrics = self.train_step(clips, masks_enc, masks_pred)
                lr, wd = self.schedules.lr(self.schedules.iteration), self.schedules.wd(self.schedules.iteration)
                buffered.append((itr, lr, wd, data_s * 1000, metrics))
                epoch_done = self.step % self.ipe == 0
                if len(buffered) >= cfg.logging.log_every or self.step == total or epoch_done:
                    values = self._reduce(buffered)  # the only host sync
                    now = time.perf_counter()
                    n = len(buffered)
                    ms_per_step = (now - t_window) * 1000 / n
                    rate = n * n_clips * self.world_size / (now - t_window)
                    rows = [[itr_ // self.ipe, itr_, *vals, lr_, wd_, round(ms_per_step, 2), round(dms, 2), round(rate, 2)]
                            for (itr_, lr_, wd_, dms, _), vals in zip(buffered, values)]
                    if math.isnan(first_loss):
                        first_loss = rows[0][2]
                    last_loss = rows[-1][2]
                    if self.is_main:
                        for row in rows:
                            writer.writerow(row)
                        log_file.flush()
                        if tb is not None:
                            for row in rows:
                                for col in ("loss", "loss-jepa", "lr", "wd", "enc-grad-norm", "pred-grad-norm"):
                                    tb.add_scalar(f"train/{col}", row[CSV_COLUMNS.index(col)], row[1])
                            tb.add_scalar("perf/clips_per_s", rate, self.step)
                    bad = next((r for r in rows if not math.isfinite(r[2])), None)
                    if bad is not None:
                        debug = folder / f"{cfg.logging.write_tag}-nonfinite-step{bad[1]}.pth.tar"
                        self.save(debug, bad[2])
                        raise FloatingPointError(
                            f"loss became {bad[2]} at step {bad[1]} (epoch {bad[0]}); debug checkpoint: {debug}"
                        )
                    if self.is_main:
                        done = self.step - steps_at_start
                        eta = (total - self.step) * (now - t0) / max(done, 1)
                        self.out(self._progress(total, last_loss, lr, wd, rate, data_s_window / (now - t_window),
                                                eta, flops_window / (now - t_window)))
                        if tb is not None:
                            tb.flush()
                    buffered.clear()
                    t_window = now
                    flops_window = data_s_window = 0.0
                if epoch_done or self.step == total:
                    self.save(latest, last_loss)
                    wrote_checkpoint = self.is_main
                    if epoch_done:
                        self._periodic_checkpoint(folder, last_loss)
        finally:
            if sync_gc:
                gc.enable()
            if log_file is not None:
                log_file.close()
            if tb is not None:
                tb.close()
            if self.owns_source and hasattr(self.source, "close"):
                self.source.close()
        seconds = time.perf_counter() - t0
        return FitResult(self.step, last_loss, first_loss, str(latest) if wrote_checkpoint else None, str(log_path),
                         seconds, rate)

    def _v2_batch(self, batch, step: int):
        """A V-JEPA 2 batch for :class:`TrainStep`: ``(clips, masks_enc, masks_pred, flops, clips in the
        batch)`` with lists over the clip-length groups present (masks from
        :meth:`~vjepa_fast.masks.MultiSeqMaskCollator.sample_groups`, on the device). ``batch``: a
        :class:`~vjepa_fast.data.MultiLengthBatch`, or a ``[B, C, T, H, W]`` tensor from a source of
        one clip length."""
        if isinstance(batch, torch.Tensor):
            batch = MultiLengthBatch([int(batch.shape[2])] * batch.shape[0], {int(batch.shape[2]): batch})
        if not isinstance(batch, MultiLengthBatch):
            raise TypeError(f"a V-JEPA 2 run's source must give a MultiLengthBatch or a [B, C, T, H, W] "
                            f"tensor, got {type(batch).__name__}")
        groups = self.masks.sample_groups(batch.fpcs, step)
        clips = [batch.clips[g.fpc] for g in groups]
        flops = 0.0
        for g, c in zip(groups, clips):
            T, H, W = self.masks.grid(g.fpc)
            flops += self.flop_model.step_flops(c.shape[0], [m.shape[1] for m in g.masks_enc],
                                                [m.shape[1] for m in g.masks_pred], num_tokens=T * H * W)
        masks_enc = [[m.to(self.device, non_blocking=True) for m in g.masks_enc] for g in groups]
        masks_pred = [[m.to(self.device, non_blocking=True) for m in g.masks_pred] for g in groups]
        return clips, masks_enc, masks_pred, flops, batch.batch_size

    def _save_params(self, folder: Path) -> None:
        """Write ``params-pretrain.yaml``. On a resume whose config differs from the one there, that
        file is the record of what the checkpoint was trained with: it is kept, renamed
        ``params-pretrain.before-step{N}.yaml``, never overwritten."""
        path = folder / "params-pretrain.yaml"
        now = self.cfg.to_dict()
        if self.step > 0 and path.is_file():
            try:
                before = yaml.safe_load(path.read_text())
            except (OSError, yaml.YAMLError):
                before = None
            if before != now:
                keep = folder / f"params-pretrain.before-step{self.step}.yaml"
                n = 1
                while keep.exists():
                    keep = folder / f"params-pretrain.before-step{self.step}.{n}.yaml"
                    n += 1
                os.replace(path, keep)
                self.out(f"note: the config differs from the one this run was trained with so far; "
                         f"that one is kept as {keep}")
        self.cfg.save_yaml(path)

    # -- logging helpers -------------------------------------------------------------------------
    def _open_log(self, log_path: Path):
        """New CSV at step 0; on resume, keep only the rows before the resumed step (rows a crashed
        run logged after its last checkpoint are replayed) and append."""
        if self.step == 0 or not log_path.exists():
            f = open(log_path, "w", newline="")
            csv.writer(f).writerow(CSV_COLUMNS)
            return f
        with open(log_path, newline="") as f:
            rows = list(csv.reader(f))
        header, body = (rows[0], rows[1:]) if rows else (CSV_COLUMNS, [])
        body = [r for r in body if r and int(r[1]) < self.step]
        f = open(log_path, "w", newline="")
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(body)
        return f

    def _tensorboard(self, folder: Path):
        if not self.cfg.logging.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415
        except ImportError as e:
            raise ImportError("logging.tensorboard: true needs the tensorboard package (pip install tensorboard)") from e
        return SummaryWriter(log_dir=str(folder / "tensorboard"), purge_step=self.step or None)

    def _reduce(self, buffered) -> list[list[float]]:
        keys = ["loss", "loss-jepa", "reg-loss", "enc-grad-norm", "pred-grad-norm"]
        stacked = torch.stack([torch.stack([m[k].float() for k in keys]) for *_, m in buffered])
        return all_reduce_mean(stacked).tolist()

    def _banner(self, total: int) -> str:
        d, m = self.cfg.data, self.model
        n_enc = sum(p.numel() for p in m.encoder.parameters())
        n_pred = sum(p.numel() for p in m.predictor.parameters())
        synthetic = isinstance(self.source, (SyntheticClips, SyntheticMultiLengthClips))
        src = "synthetic clips" if synthetic else f"{type(self.source).__name__}"
        par = f", {self.parallel} x{self.world_size}" if self.world_size > 1 else ""
        opts = "".join([", fused AdamW+EMA" if self.fused_optimizer is not None else "",
                        f", {self.cfg.meta.dtype} target copy" if self.target_copy is not None else ""])
        frames = (f"V-JEPA 2, clip lengths {list(dict.fromkeys(d.dataset_fpcs))} frames at {d.crop_size}px"
                  if self.cfg.is_v2 else f"{d.num_frames}x{d.crop_size}px")
        return (f"pretraining {self.cfg.model.model_name} (encoder {n_enc / 1e6:.2f}M, predictor {n_pred / 1e6:.2f}M params) "
                f"on {src}: {total} steps, ipe {self.ipe}, batch {d.batch_size}x{self.world_size}, "
                f"{frames}, {self.cfg.meta.dtype} on {self.device}{par}{opts}")

    def _progress(self, total, loss, lr, wd, rate, data_frac, eta, flops_per_s) -> str:
        s = (f"{_bar(self.step, total)} {self.step}/{total} | ep {self.step // self.ipe} | loss {loss:.4f} | "
             f"lr {lr:.2e} | wd {wd:.3f} | {rate:.1f} clips/s | data {100 * min(data_frac, 1):.0f}% | "
             f"ETA {_format_eta(eta)}")
        if self.device.type == "cuda":
            if self._peak is None:
                self._peak = peak_tflops(self.device, self.dtype, self.cfg.meta.peak_tflops) or 0.0
            if self._peak:
                s += f" | MFU {100 * flops_per_s / (self._peak * 1e12):.1f}%"  # per-rank FLOPs / per-GPU peak
            s += f" | mem {torch.cuda.max_memory_allocated(self.device) / 2**30:.1f} GiB"
        return s


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


# ------------------------------------------------------------------------------------------------
# entry points
# ------------------------------------------------------------------------------------------------
def pretrain(cfg: PretrainConfig, out: Callable[[str], None] | None = None) -> FitResult:
    """Run a pretraining config: single process, or one process per GPU under ``torchrun``
    (DDP, or FSDP2 with ``meta.parallel: fsdp``). Returns the :class:`FitResult` (on every rank).
    Raises :class:`~vjepa_fast.preflight.PreflightError` before any work when the run cannot start."""
    from .preflight import device_problems  # noqa: PLC0415

    problems = device_problems(cfg.meta.device)  # before init_distributed binds the device
    if problems:
        raise PreflightError(problems, f"pretraining ({cfg.logging.folder})")
    info = init_distributed(cfg.meta.device)
    try:
        result = Trainer(cfg, dist=info, out=out).fit()
    except BaseException:
        cleanup_distributed(info, sync=False)
        raise
    cleanup_distributed(info)
    return result


def demo_digits_config(data_dir: str | os.PathLike, out_dir: str | os.PathLike,
                       overrides: Sequence[str] = ()) -> PretrainConfig:
    """``configs/pretrain/demo_digits.yaml`` pointed at ``data_dir/train_digit.csv`` and ``out_dir``."""
    index = Path(data_dir).resolve() / "train_digit.csv"
    return PretrainConfig.from_yaml(
        DEMO_DIGITS_CONFIG, [f"data.datasets=[{index}]", f"logging.folder={Path(out_dir).resolve()}", *overrides])


def run_demo_pretrain(data_dir: str | os.PathLike = "data/demo", out_dir: str | os.PathLike = "runs/demo_digits",
                      overrides: Sequence[str] = (), out: Callable[[str], None] | None = None,
                      plot_png: bool = True) -> FitResult:
    """Pretrain the tiny demo model on the moving-digits videos in ``data_dir`` (rendered there with
    :func:`vjepa_fast.demo_data.make_demo_data` if the index is missing), writing checkpoints, the
    CSV log and ``training.png`` to ``out_dir``. About 30 minutes on one thread of a 2-core machine (1850 s measured)."""
    from .demo_data import DEMO_DATA, demo_settings_differ, make_demo_data  # noqa: PLC0415

    say = out or print
    index = Path(data_dir) / "train_digit.csv"
    if not index.is_file():
        say(f"rendering the moving-digits demo videos into {data_dir} ...")
        make_demo_data(str(data_dir), **DEMO_DATA)
    else:
        stale = demo_settings_differ(str(data_dir))
        if stale:  # someone's own variant, or an older demo: use it, but say so (never overwrite data)
            say(f"note: {data_dir} was rendered with other settings than the bundled demo "
                f"({', '.join(f'{k}: {a} instead of {b}' for k, (a, b) in stale.items())}); using it as it is "
                f"(remove the folder to render the bundled demo data)")
    cfg = demo_digits_config(data_dir, out_dir, overrides)
    result = pretrain(cfg, out=out)
    if plot_png:
        from .plot import plot  # noqa: PLC0415

        plot(out_dir)
    return result
