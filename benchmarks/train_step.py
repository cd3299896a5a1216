"""Training-step throughput: the official V-JEPA step structure against vjepa-fast, same process.

Builds one V-JEPA model (same seed, so the same initial weights for every implementation), draws
the official multiblock-3D masks (the ViT-L/16 mask config, a new batch of masks every step, one
fixed sequence of steps shared by both implementations) and synthetic on-device clips, then times

* ``--impl reference``: ``benchmarks/reference_step.py``, the official step structure (a full
  encoder pass and patch embedding per mask config, gathers with repeated indices, the predictor's
  repeat + gather + cat, full-length target LayerNorm, GradScaler even for bf16, default AdamW,
  Python EMA loop, ``float(loss)`` and ``torch.cuda.synchronize()`` every step);
* ``--impl fast``: vjepa-fast, the Trainer's own step (``vjepa_fast.train.TrainStep``: the fused
  kernels per ``VJEPA_FAST_KERNELS``, bf16 autocast without GradScaler, AdamW + EMA in one fused
  pass on CUDA with Triton (else torch's fused AdamW and the fused EMA), a bf16 working copy of the
  target's weights under bf16, cuDNN attention when it works here, no host sync per step, optional
  ``--compile``);
* ``--impl both`` (default): both, one after the other, plus a ratio line.

``--arch v2``: V-JEPA 2 (RoPE, depth rescale, predictor 12 x 384 with 12 heads, six mask tokens,
the V2 multi-length collator and schedules; defaults ViT-L/16 16 x 256, batch 24, ``--fpcs`` 3 x 16:
one clip-length group as in every V2 pretrain config), the reference being
``benchmarks/reference_step_v2.py`` (the official V2 structure: per-group and per-mask loops with a
full patch embedding each, RoPE tables per head and block, per-row sort in the predictor, every
block activation-checkpointed, GradScaler even for bf16, foreach AdamW, ``_foreach`` EMA, a host sync
per step). The fast path checkpoints the leading N blocks of its encoder and predictor given by
``--activation-checkpointing`` (default 0; a comma list such as ``0,12,all`` times the fast path
once per setting after one reference run, each row with its peak memory). FLOP counts
(``flops_step_counted``) include the recomputed forward of checkpointed blocks
(``flops_recomputed_step0``); ``flops_step`` and the MFU count each forward once.

Attention shapes: cuDNN attention builds an execution graph the first time it meets a sequence
length (measured on an H200: ~150-170 ms for one forward + backward, against 1-2 ms once built),
and the student's lengths change with every batch of masks; a long run has met all of them early
(the official ViT-L masks: ~120 distinct student lengths in 2,000 steps), a 20-step benchmark meets
new ones in most steps. ``--shapes steady`` (default) measures the long run: the warm-up also runs
every measured step's masks once, untimed. ``--shapes cold`` measures the run's first steps, one
implementation per process (the graph cache is process-wide: the second implementation of a
``--impl both`` run would find the first one's lengths built, which made an early measurement of this
benchmark favour the fast path).

Timing: warm-up steps first, then the median (and p20 / p80) of ``--steps`` steps; on CUDA each
step is bracketed by CUDA events recorded without synchronising (the fast path keeps its CPU
run-ahead), on CPU by ``time.perf_counter``. Per-phase times come from a separate pass (events at
the phase boundaries would otherwise sit in the timed steps). FLOPs per step are counted by
``torch.utils.flop_counter.FlopCounterMode`` over one whole step (forward and backward) and by the
analytic formula in ``benchmarks/flops.py`` (``flops_step_counted`` is the count for the first
step's masks; ``flops_step``, used for the MFU, carries it over to the timed steps' mean mask
lengths with the formula's ratio); MFU is against a matmul measured in the same run
(bf16 8192³ on a GPU; on a CPU a 512³ matmul in the run dtype, labelled as such).

One JSON object per line on stdout (``--out FILE`` appends them too). Sizes: a preset
(``--model vit_large``) with ``--embed-dim/--depth/--heads`` overrides for tiny CPU runs, or a
pretraining YAML (``--config``). On CPU it runs and reports, and asserts nothing about speed.

    python benchmarks/train_step.py                                  # ViT-L/16, 16x224, batch 24, both
    python benchmarks/train_step.py --model vit_huge --impl fast --compile
    python benchmarks/train_step.py --check-loss 50                  # loss parity, 50 steps
    python benchmarks/train_step.py --arch v2 --activation-checkpointing 0,all   # V2 ViT-L/16 16x256
    python benchmarks/train_step.py --arch v2 --model vit_giant_xformers --impl fast
    python benchmarks/train_step.py --device cpu --model vit_tiny --embed-dim 64 --depth 2 --heads 2 \\
        --pred-dim 32 --pred-depth 1 --frames 8 --crop 64 --batch 2 --steps 3 --warmup 1

``--check-loss N`` runs both implementations N steps from the same initialisation, masks and clips
and reports the per-step relative loss difference (fp32 on CPU: ~1e-6; bf16: noise) and the largest
parameter difference at the end; it exits with status 1 when the tolerance is exceeded.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (str(REPO), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch  # noqa: E402

from envinfo import git_commit  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from flops import StepFlops, count_flops, model_step_flops, vit_layer_flops  # noqa: E402
from reference_step import ReferenceStep  # noqa: E402
from reference_step_v2 import ReferenceStepV2  # noqa: E402
from vjepa_fast import kernels  # noqa: E402
from vjepa_fast.attention import get_attention_backend, load_attention_table, set_attention_backend  # noqa: E402
from vjepa_fast.jepa import build_vjepa  # noqa: E402
from vjepa_fast.masks import MultiSeqMaskCollator, build_mask_collator  # noqa: E402
from vjepa_fast.schedules import Schedules  # noqa: E402
from vjepa_fast.train import TrainStep, build_step_state  # noqa: E402
from vjepa_fast.vision_transformer import VIT_PRESETS  # noqa: E402

# configs/pretrain/vitl16.yaml, `mask` section (the same two generators in every V1 config).
VITL16_MASKS = [
    {"aspect_ratio": (0.75, 1.5), "num_blocks": 8, "spatial_scale": (0.15, 0.15),
     "temporal_scale": (1.0, 1.0), "max_temporal_keep": 1.0, "max_keep": None},
    {"aspect_ratio": (0.75, 1.5), "num_blocks": 2, "spatial_scale": (0.7, 0.7),
     "temporal_scale": (1.0, 1.0), "max_temporal_keep": 1.0, "max_keep": None},
]  # fmt: skip
# configs/pretrain/vitl16.yaml, `optimization` section (schedules only; clipping is off until
# epoch 41 in the official run, so a benchmark at the start of training does not clip).
VITL16_SCHEDULES = dict(ipe=300, epochs=300, ipe_scale=1.25, warmup=40, start_lr=2e-4, lr=6.25e-4,
                        final_lr=1e-6, weight_decay=0.04, final_weight_decay=0.4, ema=(0.998, 1.0))
# configs/train/vitl16/pretrain-256px-16f.yaml (V-JEPA 2): the same two mask generators
# (full_complement false), three datasets of 16-frame clips, warmup 1e-4 -> 5.25e-4 over 40 epochs
# then constant, weight decay 0.04 and EMA 0.99925 constant, no clipping; ViT-g's 800 epochs (the
# L/H files say 10, a placeholder: nothing in the first steps depends on it).
V2_MASKS = [{**m, "full_complement": False} for m in VITL16_MASKS]
V2_SCHEDULES = dict(ipe=300, epochs=800, ipe_scale=1.25, warmup=40, start_lr=1e-4, lr=5.25e-4, final_lr=5.25e-4,
                    weight_decay=0.04, final_weight_decay=0.04, ema=(0.99925, 0.99925))
V2_DATASETS = 3  # K710, SSv2, HowTo100M: dataset_fpcs [16, 16, 16] in every V2 pretrain config
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
          "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


# ----------------------------------------------------------------------------------------------
# environment
# ----------------------------------------------------------------------------------------------


def environment(device: torch.device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
    return {"device": device.type, "device_name": name, "torch": torch.__version__, "triton": triton_version,
            "commit": git_commit(), "timestamp": _dt.datetime.now().isoformat(timespec="seconds")}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_tflops(device: torch.device, dtype: torch.dtype, n: int | None = None,
                          reps: int | None = None) -> tuple[float, str]:
    """Achieved TFLOP/s of an n³ matmul in ``dtype`` (the MFU denominator) and its label."""
    if device.type == "cuda":
        n, reps = n or 8192, reps or 20
    else:
        n, reps = n or 512, reps or 5
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            a @ b
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e) / 1e3)
        else:
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
    tflops = 2 * n**3 / statistics.median(times) / 1e12
    return tflops, f"measured {DTYPE_NAMES.get(dtype, str(dtype))} matmul {n}^3 on {device.type}"


# ----------------------------------------------------------------------------------------------
# setup: model, masks, clips, schedules
# ----------------------------------------------------------------------------------------------


@dataclass
class BenchSetup:
    device: torch.device
    dtype: torch.dtype
    batch: int
    frames: int
    crop: int
    patch: int
    tubelet: int
    seed: int
    describe: dict
    build_model_cpu: Callable[[], torch.nn.Module]
    collator: object
    schedule_kw: dict
    clip_grad: Optional[float] = None
    official_loggers: bool = False
    attn_from_config: Optional[str] = None
    head_dims: tuple = ()
    #: fast impl: meta.fused_optimizer / meta.target_working_copy (None = auto)
    fused_optimizer: Optional[bool] = None
    target_working_copy: Optional[bool] = None
    #: > 0: step i uses the masks of step i mod mask_cycle (--mask-cycle)
    mask_cycle: int = 0
    #: "v1" (one clip tensor, V1 collator) or "v2" (multi-length batches: ``fpcs`` holds the clip
    #: length of every sample, ``collator`` is a MultiSeqMaskCollator)
    arch: str = "v1"
    fpcs: tuple = ()
    #: fast impl: leading blocks of the encoder and of the predictor under activation checkpointing
    #: (one item of --activation-checkpointing: a count or "all"; the V2 reference checkpoints
    #: every block, as official)
    activation_checkpointing: object = 0
    _masks: dict = field(default_factory=dict)

    def build_model(self):
        """The model on the device, initialised from ``seed`` on the CPU (same weights everywhere)."""
        torch.manual_seed(self.seed)
        return self.build_model_cpu().to(self.device)

    def schedules(self) -> Schedules:
        return Schedules(**self.schedule_kw)

    def masks(self, step: int):
        """(masks_enc, masks_pred) of ``step`` on the device (cached); with ``mask_cycle`` those of
        ``step % mask_cycle``."""
        if self.mask_cycle > 0:
            step %= self.mask_cycle
        if step not in self._masks:
            if self.arch == "v2":  # lists over clip-length groups, each a list over mask configs
                groups = self.collator.sample_groups(list(self.fpcs), step)
                self._masks[step] = ([[m.to(self.device) for m in g.masks_enc] for g in groups],
                                     [[m.to(self.device) for m in g.masks_pred] for g in groups])
            else:
                enc, pred = self.collator.sample(self.batch, step)
                self._masks[step] = ([m.to(self.device) for m in enc], [m.to(self.device) for m in pred])
        return self._masks[step]

    def groups(self) -> list[tuple[int, int]]:
        """V2: ``(frames, clips)`` of every clip-length group of a batch, in the collator's order
        (one group ``(frames, batch)`` for V1)."""
        if self.arch != "v2":
            return [(self.frames, self.batch)]
        return [(fpc, len(rows)) for fpc, rows in self.collator.group_rows(list(self.fpcs))]

    def clips(self, step: int):
        """Synthetic normalised clips of ``step`` (deterministic; generated on the device): a tensor
        [B, 3, T, H, W] (V1) or a list with one [B_g, 3, T_g, H, W] per clip-length group (V2)."""
        g = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + step)
        out = [torch.randn((b, 3, t, self.crop, self.crop), generator=g, device=self.device)
               for t, b in self.groups()]
        return out if self.arch == "v2" else out[0]

    def mask_pairs(self, step: int) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """``(group, masks_enc, masks_pred)`` of every mask config of every group at ``step``."""
        enc, pred = self.masks(step)
        if self.arch != "v2":
            return [(0, e, p) for e, p in zip(enc, pred)]
        return [(g, e, p) for g, (eg, pg) in enumerate(zip(enc, pred)) for e, p in zip(eg, pg)]

    def attention_shapes(self, step: int) -> set[tuple[str, int]]:
        """The (role, length) of the fast path's student attention calls at ``step``: the context
        encoder on Kc_i tokens, the predictor on Kc_i + Kt_i, per mask config. cuDNN's attention
        builds an execution graph for every new shape (forward and backward; the target's one
        length is built once), so new ones per step tell what a short run pays that a long one,
        whose finite set of mask lengths has been seen, does not."""
        pairs = self.mask_pairs(step)
        return ({("context", g, e.shape[0], e.shape[1]) for g, e, _ in pairs}
                | {("predictor", g, e.shape[0], e.shape[1] + p.shape[1]) for g, e, p in pairs})

    def mask_lengths(self, steps) -> list[tuple[int, int]]:
        """Mean (Kc, Kt) per mask config (V2: per group and mask config, groups first) over ``steps``."""
        out = []
        for j in range(len(self.mask_pairs(steps[0]))):
            kc = statistics.mean(self.mask_pairs(s)[j][1].shape[1] for s in steps)
            kt = statistics.mean(self.mask_pairs(s)[j][2].shape[1] for s in steps)
            out.append((kc, kt))
        return out

    def analytic_flops(self, model, steps, impl: str, recompute: tuple = (0, 0)) -> StepFlops:
        """:func:`flops.model_step_flops` at the mean mask lengths of ``steps``, summed over the
        clip-length groups; the reference embeds the whole clip once per mask config, the fast
        path once per group. ``recompute``: blocks of the encoder / predictor under activation
        checkpointing, whose forward runs again in the backward (added to the student's FLOPs)."""
        lengths = self.mask_lengths(steps)
        pairs = self.mask_pairs(steps[0])
        total = StepFlops(0.0, 0.0, 0.0)
        for g, (frames, b) in enumerate(self.groups()):
            mine = [kk for kk, (gg, _, _) in zip(lengths, pairs) if gg == g]
            embeds = len(mine) if impl == "reference" else 1
            f = model_step_flops(model, b, frames, self.crop, mine, embeds)
            enc, pred = model.encoder, model.predictor
            hidden, p_hidden = enc.blocks[0].mlp.fc1.out_features, pred.predictor_blocks[0].mlp.fc1.out_features
            ctx_extra = sum(recompute[0] * vit_layer_flops(kc, enc.embed_dim, hidden) for kc, _ in mine)
            pred_extra = sum(recompute[1] * vit_layer_flops(kc + kt, pred.predictor_embed_dim, p_hidden)
                             for kc, kt in mine)  # fmt: skip
            total = StepFlops(total.target_fwd + f.target_fwd, total.context_fwd_bwd + f.context_fwd_bwd + b * ctx_extra,
                              total.predictor_fwd_bwd + f.predictor_fwd_bwd + b * pred_extra)
        return total


def add_size_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and input size (defaults: official ViT-L/16, 16x224, batch 24; "
                             "--arch v2: V-JEPA 2 ViT-L/16, 16x256, batch 24)")
    g.add_argument("--arch", default="v1", choices=["v1", "v2"],
                   help="v1: V-JEPA (sin-cos positions, reference_step.py); v2: V-JEPA 2 (RoPE, multi-length "
                   "batches, depth rescale, predictor heads 12, 6 mask tokens; reference_step_v2.py)")
    g.add_argument("--fpcs", default=None,
                   help="v2: clip length of each dataset, comma-separated (default: 3 x --frames, one group as "
                   "in every V2 pretrain config); sample b of a batch has fpcs[b %% len] frames")
    g.add_argument("--activation-checkpointing", default=None, metavar="N[,N...]",
                   help="fast impl: leading blocks of the encoder and of the predictor checkpointed (0 = none, "
                   "'all'; default 0, or --config's model.use_activation_checkpointing); a comma list runs "
                   "the fast impl once per setting (peak memory of each). The v2 reference checkpoints every "
                   "block, as official")
    g.add_argument("--config", default=None,
                   help="pretraining YAML; sizes, dtype, masks and schedules from it")
    g.add_argument("overrides", nargs="*", help="dotted overrides for --config, e.g. data.batch_size=8")
    g.add_argument("--model", default=None, choices=sorted(VIT_PRESETS), help="encoder preset (vit_large)")
    g.add_argument("--embed-dim", type=int, default=None, help="override the preset width")
    g.add_argument("--depth", type=int, default=None, help="override the preset depth")
    g.add_argument("--heads", type=int, default=None, help="override the preset head count")
    g.add_argument("--pred-dim", type=int, default=None, help="predictor width (384)")
    g.add_argument("--pred-depth", type=int, default=None, help="predictor depth (12)")
    g.add_argument("--pred-heads", type=int, default=None, help="predictor heads (= encoder heads)")
    g.add_argument("--batch", type=int, default=None, help="clips per step (24)")
    g.add_argument("--frames", type=int, default=None, help="frames per clip (16)")
    g.add_argument("--crop", type=int, default=None, help="crop size in pixels (224)")
    g.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"],
                   help="autocast dtype (bf16 on CUDA, fp32 on CPU)")
    g.add_argument("--device", default=None, help="cuda / cpu (cuda when available)")
    g.add_argument("--seed", type=int, default=None,
                   help="model init, mask and clip seed (0; --config: meta.seed)")
    g.add_argument("--clip", action="store_true",
                   help="clip gradients at 10 in both impls (official clipping starts after epoch 40)")
    g.add_argument("--official-loggers", action="store_true",
                   help="reference impl: add the official per-step grad_logger / adamw_logger host syncs")
    g.add_argument("--attn", default=None, choices=["auto", "math", "flash", "efficient", "cudnn", "tuned"],
                   help="fast impl attention backend (default: VJEPA_FAST_ATTN, else cudnn on CUDA "
                   "if it works)")
    g.add_argument("--compile", action="store_true",
                   help="fast impl: vjepa_fast.compile.compile_vjepa (static target, dynamic-length student)")
    g.add_argument("--cuda-graphs", action="store_true",
                   help="fast impl with --compile on CUDA: the target forward as a CUDA graph (reduce-overhead)")
    g.add_argument("--fused-optimizer", default="auto", choices=["auto", "on", "off"],
                   help="fast impl: AdamW + EMA in one fused pass (auto: CUDA with triton kernels; "
                   "--config: meta.fused_optimizer)")
    g.add_argument("--attn-table", default=None,
                   help="fast impl: attention table from benchmarks/bench_attention.py --out (for --attn tuned)")
    g.add_argument("--pack-context", action="store_true",
                   help="fast impl: one context-encoder and predictor pass over all masks (vjepa_fast/packed.py)")
    g.add_argument("--sparse-embed", action="store_true",
                   help="fast impl: patch-embed only the context tubelets")
    g.add_argument("--target-copy", default="auto", choices=["auto", "on", "off"],
                   help="fast impl: bf16/fp16 working copy of the target encoder's weights (auto: on "
                   "under bf16/fp16; --config: meta.target_working_copy)")


def make_setup(args) -> BenchSetup:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.config:
        return _setup_from_config(args, device)
    if getattr(args, "arch", "v1") == "v2":
        return _setup_v2(args, device)
    name = args.model or "vit_large"
    given = (("embed_dim", args.embed_dim), ("depth", args.depth), ("num_heads", args.heads))
    enc_kw = {k: v for k, v in given if v is not None}
    batch, frames, crop = args.batch or 24, args.frames or 16, args.crop or 224
    pred_dim, pred_depth = args.pred_dim or 384, args.pred_depth or 12
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    seed = args.seed if args.seed is not None else 0

    def build():
        return build_vjepa(name, crop_size=crop, patch_size=16, num_frames=frames, tubelet_size=2,
                           uniform_power=True, pred_depth=pred_depth, pred_embed_dim=pred_dim,
                           pred_num_heads=args.pred_heads, num_mask_tokens=len(VITL16_MASKS), **enc_kw)

    collator = build_mask_collator("multiblock3d", VITL16_MASKS, crop_size=crop, num_frames=frames,
                                   patch_size=16, tubelet_size=2, seed=seed)
    describe = {"model": name, "config": None}
    preset = {**VIT_PRESETS[name], **enc_kw}
    heads = preset["num_heads"]
    setup = BenchSetup(device, dtype, batch, frames, crop, 16, 2, seed, describe, build, collator,
                       VITL16_SCHEDULES, 10.0 if args.clip else None, args.official_loggers)
    setup.head_dims = (preset["embed_dim"] // heads, pred_dim // (args.pred_heads or heads))
    _set_fast_options(setup, args)
    return setup


def _setup_v2(args, device: torch.device) -> BenchSetup:
    """V-JEPA 2 as configs/train/*/pretrain-256px-16f.yaml builds it (RoPE, depth rescale, predictor
    12 x 384 with 12 heads, len(mask) x len(dataset_fpcs) mask tokens) at the given sizes, the V2
    multi-length collator and the V2 schedules."""
    name = args.model or "vit_large"
    given = (("embed_dim", args.embed_dim), ("depth", args.depth), ("num_heads", args.heads))
    enc_kw = {k: v for k, v in given if v is not None}
    batch, frames, crop = args.batch or 24, args.frames or 16, args.crop or 256
    pred_dim, pred_depth, pred_heads = args.pred_dim or 384, args.pred_depth or 12, args.pred_heads or 12
    dataset_fpcs = [int(f) for f in args.fpcs.split(",")] if args.fpcs else [frames] * V2_DATASETS
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    seed = args.seed if args.seed is not None else 0

    def build():
        # Built for the longest clip, as official (the predictor's grid and mask-token count).
        return build_vjepa(name, crop_size=crop, patch_size=16, num_frames=max(dataset_fpcs), tubelet_size=2,
                           uniform_power=True, pred_depth=pred_depth, pred_embed_dim=pred_dim,
                           pred_num_heads=pred_heads, num_mask_tokens=len(V2_MASKS) * len(dataset_fpcs),
                           use_rope=True, depth_rescale=True, **enc_kw)

    collator = MultiSeqMaskCollator(V2_MASKS, dataset_fpcs, crop_size=crop, patch_size=16, tubelet_size=2,
                                    seed=seed)
    describe = {"model": name, "config": None, "arch": "v2", "dataset_fpcs": dataset_fpcs}
    preset = {**VIT_PRESETS[name], **enc_kw}
    setup = BenchSetup(device, dtype, batch, max(dataset_fpcs), crop, 16, 2, seed, describe, build, collator,
                       V2_SCHEDULES, None, False)
    setup.arch = "v2"
    setup.fpcs = tuple(dataset_fpcs[b % len(dataset_fpcs)] for b in range(batch))
    setup.head_dims = (preset["embed_dim"] // preset["num_heads"], pred_dim // pred_heads)
    _set_fast_options(setup, args)
    return setup


def checkpoint_settings(value: str, depth: int, pred_depth: int) -> list[tuple[int, int]]:
    """``--activation-checkpointing`` -> [(encoder blocks, predictor blocks), ...]: each item an int
    (that many leading blocks of each, capped at the depth) or ``all``."""
    out = []
    for item in str(value).split(","):
        item = item.strip().lower()
        if item == "all":
            out.append((depth, pred_depth))
        elif item.isdigit():
            out.append((min(int(item), depth), min(int(item), pred_depth)))
        else:
            raise ValueError(f"--activation-checkpointing: {item!r} is not a block count or 'all'")
    return out


def _flag(value: str | None, default: Optional[bool] = None) -> Optional[bool]:
    """--fused-optimizer / --target-copy: auto -> ``default`` (a config's value, else None = auto)."""
    return {"on": True, "off": False}.get(value or "auto", default)


def _set_fast_options(setup: BenchSetup, args, meta=None) -> None:
    setup.pack_context = bool(getattr(args, "pack_context", False) or (meta is not None and meta.pack_context))
    setup.cuda_graphs = bool(getattr(args, "cuda_graphs", False) or (meta is not None and meta.cuda_graphs))
    setup.sparse_embed = bool(getattr(args, "sparse_embed", False) or (meta is not None and meta.sparse_patch_embed))
    setup.fused_optimizer = _flag(getattr(args, "fused_optimizer", None),
                                  meta.fused_optimizer if meta is not None else None)
    setup.target_working_copy = _flag(getattr(args, "target_copy", None),
                                      meta.target_working_copy if meta is not None else None)
    setup.mask_cycle = int(getattr(args, "mask_cycle", 0) or 0)


def _setup_from_config(args, device: torch.device) -> BenchSetup:
    from vjepa_fast.config import PretrainConfig
    from vjepa_fast.train import apply_runtime_settings, build_model_from_config

    overrides = list(args.overrides or [])
    for flag, key in (("batch", "data.batch_size"), ("frames", "data.num_frames"), ("crop", "data.crop_size"),
                      ("model", "model.model_name"), ("pred_dim", "model.pred_embed_dim"),
                      ("pred_depth", "model.pred_depth"), ("pred_heads", "model.pred_num_heads"),
                      ("embed_dim", "model.embed_dim"), ("depth", "model.depth")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    if args.dtype:
        long_name = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[args.dtype]
        overrides.append(f"meta.dtype={long_name}")
    if args.heads is not None:
        print("train_step: --heads is ignored with --config (the preset sets the heads)", file=sys.stderr)
    cfg = PretrainConfig.from_yaml(args.config, overrides)
    apply_runtime_settings(cfg)
    d, m, o = cfg.data, cfg.model, cfg.optimization
    try:
        ipe = cfg.iterations_per_epoch()
    except ValueError:
        ipe = 300
    schedule_kw = dict(ipe=ipe, epochs=o.epochs, ipe_scale=o.ipe_scale, warmup=o.warmup, start_lr=o.start_lr,
                       lr=o.lr, final_lr=o.final_lr, weight_decay=o.weight_decay,
                       final_weight_decay=o.final_weight_decay, ema=tuple(o.ema))
    seed = args.seed if args.seed is not None else cfg.meta.seed
    if cfg.is_v2:
        collator = build_mask_collator(d.mask_type, cfg.mask_dicts(), crop_size=d.crop_size, patch_size=d.patch_size,
                                       tubelet_size=d.tubelet_size, seed=seed, dataset_fpcs=d.dataset_fpcs)
    else:
        collator = build_mask_collator(d.mask_type, cfg.mask_dicts(), crop_size=d.crop_size,
                                       num_frames=d.num_frames, patch_size=d.patch_size,
                                       tubelet_size=d.tubelet_size, seed=seed)
    describe = {"model": m.model_name, "config": str(args.config)}
    dtype = DTYPES[cfg.meta.dtype]
    if args.device is None and cfg.meta.device != "auto":
        device = torch.device(cfg.meta.device)
    setup = BenchSetup(device, dtype, d.batch_size, d.num_frames, d.crop_size, d.patch_size, d.tubelet_size,
                       seed, describe, lambda: build_model_from_config(cfg), collator, schedule_kw,
                       10.0 if args.clip else None, args.official_loggers)
    setup.attn_from_config = cfg.meta.attn_backend if cfg.meta.attn_backend != "auto" else None
    if cfg.is_v2:
        setup.arch = "v2"
        setup.describe.update(arch="v2", dataset_fpcs=list(d.dataset_fpcs))
        setup.fpcs = tuple(d.dataset_fpcs[b % len(d.dataset_fpcs)] for b in range(d.batch_size))
    ac = m.use_activation_checkpointing
    setup.activation_checkpointing = "all" if ac is True else int(ac)  # the config's, unless the flag is given
    embed_dim = m.embed_dim or VIT_PRESETS[m.model_name]["embed_dim"]
    setup.head_dims = (embed_dim // m.encoder_num_heads, m.pred_embed_dim // m.predictor_num_heads)
    _set_fast_options(setup, args, cfg.meta)
    return setup


def model_desc(model) -> dict:
    """Sizes of the model actually built (encoder and predictor)."""
    enc, pred = model.encoder, model.predictor

    def millions(m):
        return round(sum(p.numel() for p in m.parameters() if p.requires_grad) / 1e6, 3)

    return {"embed_dim": enc.embed_dim, "depth": len(enc.blocks), "heads": enc.num_heads,
            "pred_dim": pred.predictor_embed_dim, "pred_depth": len(pred.predictor_blocks),
            "pred_heads": pred.predictor_blocks[0].attn.num_heads,
            "params_encoder_m": millions(enc), "params_predictor_m": millions(pred)}


# ----------------------------------------------------------------------------------------------
# the fast step
# ----------------------------------------------------------------------------------------------


class FastStep:
    """One vjepa-fast iteration per call: :class:`vjepa_fast.train.TrainStep`, the Trainer's own step
    (schedules → target forward → student forward → backward → optional clipping → AdamW → EMA),
    without the Trainer's bookkeeping. Fused AdamW + EMA and the target working copy follow the
    Trainer's defaults unless ``fused_optimizer`` / ``target_copy`` say otherwise. Returns the loss
    as a device tensor: no host sync."""

    impl = "fast"

    def __init__(self, model, schedules, dtype=torch.float32, clip_grad=None, compile=False,
                 fused_optimizer: Optional[bool] = None, target_copy: Optional[bool] = None,
                 cuda_graphs: bool = False):
        self.model, self.cuda_graphs = model, cuda_graphs
        self.device = next(model.parameters()).device
        self.schedules, self.dtype, self.clip_grad = schedules, dtype, clip_grad
        self.optimizer, self.fused, self.target_copy, _ = build_step_state(
            model, self.device, dtype, fused_optimizer, target_copy)
        # bf16 needs no loss scaling (fp32 exponent range); fp16 does.
        self.scaler = torch.amp.GradScaler(self.device.type) if dtype == torch.float16 else None
        self.step_fn = TrainStep(model, self.optimizer, schedules, dtype=dtype, scaler=self.scaler,
                                 fused=self.fused, target_copy=self.target_copy)
        self.compile_status = "off"
        if compile:
            self.enable_compile()

    def enable_compile(self) -> str:
        """Route the forward through ``vjepa_fast.compile.compile_vjepa`` when that module exists
        (the step picks up the compiled target forward and student, working copy included)."""
        from vjepa_fast.compile import compile_vjepa

        graphs = self.cuda_graphs and self.device.type == "cuda"
        compile_vjepa(self.model, target_mode="reduce-overhead" if graphs else None)
        self.compile_status = "on, target CUDA graph" if graphs else "on"
        return self.compile_status

    def __call__(self, clips, masks_enc, masks_pred, phase=None):
        metrics = self.step_fn([(clips, masks_enc, masks_pred)], clip_grad=self.clip_grad, phase=phase)
        return metrics["loss"]


def make_step(impl: str, model, setup: BenchSetup, compile: bool = False):
    if impl == "reference":
        if setup.arch == "v2":
            return ReferenceStepV2(model, setup.schedules(), setup.dtype)
        return ReferenceStep(model, setup.schedules(), setup.dtype, setup.clip_grad, setup.official_loggers)
    if impl == "fast":
        # Plain attributes read per forward: the reference impl builds its own model and never sees them.
        model.pack_context = bool(getattr(setup, "pack_context", False))
        model.sparse_patch_embed = bool(getattr(setup, "sparse_embed", False))
        (model.encoder.activation_checkpointing, model.predictor.activation_checkpointing), = checkpoint_settings(
            setup.activation_checkpointing, len(model.encoder.blocks), len(model.predictor.predictor_blocks))
        return FastStep(model, setup.schedules(), setup.dtype, setup.clip_grad, compile=compile,
                        fused_optimizer=setup.fused_optimizer, target_copy=setup.target_working_copy,
                        cuda_graphs=bool(getattr(setup, "cuda_graphs", False)))
    raise ValueError(f"unknown impl {impl!r}")


def choose_attention(args, setup: BenchSetup) -> str:
    """The fast path's attention backend: --attn, else VJEPA_FAST_ATTN, else cuDNN on CUDA when a
    forward+backward at this run's head dims works, else PyTorch's choice."""
    if getattr(args, "attn_table", None):
        load_attention_table(args.attn_table)
    if args.attn:
        set_attention_backend(args.attn)
        return args.attn
    if os.environ.get("VJEPA_FAST_ATTN") or setup.attn_from_config:
        return get_attention_backend()  # already applied (import time / apply_runtime_settings)
    backend = "auto"
    if setup.device.type == "cuda" and setup.dtype != torch.float32:
        if all(_cudnn_attention_works(setup.device, setup.dtype, hd) for hd in set(setup.head_dims)):
            backend = "cudnn"
    set_attention_backend(backend)
    return backend


def _cudnn_attention_works(device, dtype, head_dim: int) -> bool:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    try:
        q = torch.randn(2, 2, 128, head_dim, device=device, dtype=dtype, requires_grad=True)
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            F.scaled_dot_product_attention(q, q, q).sum().backward()
        torch.cuda.synchronize(device)
        return True
    except RuntimeError:
        return False


# ----------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------


class PhaseTimer:
    """``phase(name)`` hook: stamps a phase boundary (CUDA event or perf_counter) and, for
    profiling, opens ``record_function`` / NVTX ranges named after the phase."""

    def __init__(self, device: torch.device, ranges: bool = False):
        self.cuda = device.type == "cuda"
        self.ranges = ranges
        self.steps: list[list] = []
        self._current: list | None = None
        self._open = None

    def _stamp(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def __call__(self, name: str | None) -> None:
        if self._open is not None:
            self._open.__exit__(None, None, None)
            if self.cuda:
                torch.cuda.nvtx.range_pop()
            self._open = None
        if self._current is None:
            self._current = []
            self.steps.append(self._current)
        self._current.append((name, self._stamp()))
        if name is None:
            self._current = None
        elif self.ranges:
            self._open = torch.profiler.record_function(f"phase/{name}")
            self._open.__enter__()
            if self.cuda:
                torch.cuda.nvtx.range_push(f"phase/{name}")

    def summary(self) -> dict:
        """Median ms of each phase over the recorded steps (synchronises first)."""
        if self.cuda:
            torch.cuda.synchronize()
        per: dict[str, list[float]] = {}
        totals = []
        for marks in self.steps:
            for (name, a), (_, b) in zip(marks, marks[1:]):
                per.setdefault(name, []).append(a.elapsed_time(b) if self.cuda else (b - a) * 1e3)
            first, last = marks[0][1], marks[-1][1]
            totals.append(first.elapsed_time(last) if self.cuda else (last - first) * 1e3)
        out = {f"{name}_ms": round(statistics.median(v), 4) for name, v in per.items()}
        if totals:
            out["total_ms"] = round(statistics.median(totals), 4)
        return out


def timed_steps(step, setup: BenchSetup, indices,
                clips_pool) -> tuple[list[float], float, object, list[float]]:
    """Per-step ms over ``indices`` (events without sync on CUDA), the wall time, the last loss and
    the host's ms per step call (on CUDA: the time to queue the step, which reaches the step time
    when the host, not the GPU, is the bottleneck; on CPU the step itself)."""
    device = setup.device
    loss = None
    host = []
    sync(device)
    if device.type == "cuda":
        events = [torch.cuda.Event(enable_timing=True) for _ in range(len(indices) + 1)]
        t0 = time.perf_counter()
        events[0].record()
        for j, i in enumerate(indices):
            me, mp = setup.masks(i)
            t = time.perf_counter()
            loss = step(clips_pool[i % len(clips_pool)], me, mp)
            host.append((time.perf_counter() - t) * 1e3)
            events[j + 1].record()
        torch.cuda.synchronize(device)
        wall = time.perf_counter() - t0
        ms = [events[j].elapsed_time(events[j + 1]) for j in range(len(indices))]
    else:
        ms = []
        t0 = time.perf_counter()
        for i in indices:
            me, mp = setup.masks(i)
            t = time.perf_counter()
            loss = step(clips_pool[i % len(clips_pool)], me, mp)
            ms.append((time.perf_counter() - t) * 1e3)
        wall = time.perf_counter() - t0
        host = list(ms)
    return ms, wall, loss, host


def _quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------
# diagnostics (what a slow step spends its time on; all optional except the cheap counters)
# ----------------------------------------------------------------------------------------------


class CudaGraphCounter:
    """Counts what torch.compile's CUDA-graph trees do (the target with ``--cuda-graphs``):
    ``recordings`` (graph captures; 1 after warm-up is the expectation, more are re-recordings,
    e.g. when an input the graph treats as static moved), ``warmup_runs`` (eager runs before a
    capture) and inductor's ``cudagraph_skips`` counter (a graph that fell back to no CUDA graph).
    It wraps two methods of ``torch._inductor.cudagraph_trees.CUDAGraphTreeManager`` for the
    life of the object (benchmark instrumentation, not for training code); ``available`` is False
    when this torch lacks them."""

    def __init__(self):
        self.recordings = self.warmup_runs = 0
        self._restore = None
        try:
            from torch._inductor import cudagraph_trees
        except ImportError:
            return
        mgr = getattr(cudagraph_trees, "CUDAGraphTreeManager", None)
        record, warm = getattr(mgr, "record_function", None), getattr(mgr, "run_eager", None)
        if record is None or warm is None:
            return
        counter = self

        def record_function(manager, *a, **kw):
            counter.recordings += 1
            return record(manager, *a, **kw)

        def run_eager(manager, *a, **kw):
            counter.warmup_runs += 1
            return warm(manager, *a, **kw)

        mgr.record_function, mgr.run_eager = record_function, run_eager

        def restore():
            mgr.record_function, mgr.run_eager = record, warm

        self._restore = restore

    @property
    def available(self) -> bool:
        return self._restore is not None

    def snapshot(self) -> dict | None:
        if not self.available:
            return None
        from torch._dynamo.utils import counters

        return {"recordings": self.recordings, "warmup_runs": self.warmup_runs,
                "skips": int(counters["inductor"].get("cudagraph_skips", 0))}

    def close(self) -> None:
        if self._restore is not None:
            self._restore()
            self._restore = None


def _compiled_attention_ops() -> list[dict] | None:
    """Per compiled graph, the SDPA ops (and bmm: the math backend) inductor's code calls."""
    try:
        from vjepa_fast.compile import compiled_attention_ops
    except ImportError:
        return None
    return list(compiled_attention_ops().values())


_ATTENTION_KERNEL = ("attention", "attn", "fmha", "flash", "sdpa", "cudnn")


def profile_steps(step, setup: BenchSetup, indices, clips_pool, top: int = 10) -> dict:
    """``len(indices)`` steps under ``torch.profiler``, reduced to per-step figures:

    * ``wall_ms`` (synchronised) against ``gpu_busy_ms`` (sum of GPU kernel durations): a gap
      means the GPU waited (for the host, a graph capture, a cuDNN graph build, ...);
    * ``attention_kernels_ms`` and the top kernels (name, ms and calls per step): which attention
      kernels ran (cuDNN, flash, or gemm + softmax from the math backend) and where GPU time goes;
    * ``attention_ops``: every CPU-side op whose name mentions attention, with its host ms per
      step and its slowest single call (a cuDNN execution-graph build for a new shape shows as a
      call of many ms where a cached one takes tens of microseconds);
    * ``top_cpu_ops``: ops by self CPU time per step; ``cuda_graph_launches`` per step.
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = setup.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    n = len(indices)
    sync(setup.device)
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        for i in indices:
            me, mp = setup.masks(i)
            step(clips_pool[i % len(clips_pool)], me, mp)
        sync(setup.device)
    wall = (time.perf_counter() - t0) * 1e3 / n
    kernels: dict[str, list[float]] = {}
    attn_ops: dict[str, list[float]] = {}
    graph_launches = 0
    for evt in prof.events():
        if evt.device_type == torch.autograd.DeviceType.CUDA:
            kernels.setdefault(evt.name, []).append(evt.device_time_total / 1e3)
        else:
            if any(w in evt.name.lower() for w in ("attention", "sdpa")):
                attn_ops.setdefault(evt.name, []).append(evt.cpu_time_total / 1e3)
            graph_launches += evt.name == "cudaGraphLaunch"
    busy = sum(sum(v) for v in kernels.values()) / n
    attn_ms = sum(sum(v) for k, v in kernels.items() if any(w in k.lower() for w in _ATTENTION_KERNEL)) / n
    by_total = sorted(kernels.items(), key=lambda kv: -sum(kv[1]))[:top]
    cpu = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:top]
    return {
        "steps": n, "wall_ms": round(wall, 3), "gpu_busy_ms": round(busy, 3) if cuda else None,
        "attention_kernels_ms": round(attn_ms, 3) if cuda else None,
        "top_kernels": [{"kernel": k[:120], "ms": round(sum(v) / n, 3), "calls": round(len(v) / n, 2)}
                        for k, v in by_total],
        "attention_ops": {k: {"calls": round(len(v) / n, 2), "cpu_ms": round(sum(v) / n, 3),
                              "max_call_ms": round(max(v), 3)} for k, v in sorted(attn_ops.items())},
        "top_cpu_ops": [{"op": e.key[:80], "self_cpu_ms": round(e.self_cpu_time_total / 1e3 / n, 3),
                         "calls": round(e.count / n, 2)} for e in cpu],
        "cuda_graph_launches": round(graph_launches / n, 2),
    }


def attention_shape_cost(model, setup: BenchSetup, reps: int = 3) -> dict:
    """Wall ms (synchronised) of one attention forward + backward at a length this process has not
    run before, then of the same call again, at the student's two shapes (context encoder on Kc,
    predictor on Kc + Kt of the first mask config), for the run's backend and for flash: the price
    of a new mask length (cuDNN builds an execution graph per new shape and caches it; flash has
    nothing to build). Lengths are ``Kc + 8j + 1``: the official masks' lengths are multiples of 8,
    so none of these was seen in the run. q, k, v are laid out as the blocks' qkv projection
    leaves them."""
    from vjepa_fast.attention import attention

    enc_heads, pred_attn = model.encoder.num_heads, model.predictor.predictor_blocks[0].attn
    enc_dim = model.encoder.embed_dim // enc_heads
    pred_heads = pred_attn.num_heads
    pred_dim = model.predictor.predictor_embed_dim // pred_heads
    (kc, kt), *_ = setup.mask_lengths([1])
    roles = {"context": (enc_heads, enc_dim, int(kc)), "predictor": (pred_heads, pred_dim, int(kc + kt))}
    out: dict[str, dict] = {}
    for role, (heads, head_dim, length) in roles.items():
        out[role] = {}
        for name in dict.fromkeys([get_attention_backend(), "flash"]):
            times: dict[str, list[float]] = {"new": [], "again": []}
            try:
                for j in range(reps):
                    n = length + 8 * j + 1
                    qkv = torch.randn(setup.batch, n, 3, heads, head_dim, device=setup.device,
                                      dtype=setup.dtype, requires_grad=True)
                    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
                    grad = torch.randn_like(q)
                    for which in ("new", "again"):
                        sync(setup.device)
                        t = time.perf_counter()
                        attention(q, k, v, backend=name).backward(grad)
                        sync(setup.device)
                        times[which].append((time.perf_counter() - t) * 1e3)
                out[role][name] = {"length": length, "new_ms": round(statistics.median(times["new"]), 3),
                                   "again_ms": round(statistics.median(times["again"]), 3)}
            except Exception as e:  # noqa: BLE001 - a backend that cannot run here is reported, not fatal
                out[role][name] = {"error": f"{type(e).__name__}: {str(e).strip()[:200]}"}
    return out


def new_attention_shapes(setup: BenchSetup, before, indices) -> list[int]:
    """For each step of ``indices``, how many of its student attention shapes
    (:meth:`BenchSetup.attention_shapes`) no earlier step of the run (``before``, then the earlier
    ``indices``) had."""
    seen: set = set()
    for i in before:
        seen |= setup.attention_shapes(i)
    counts = []
    for i in indices:
        shapes = setup.attention_shapes(i)
        counts.append(len(shapes - seen))
        seen |= shapes
    return counts


def bench_impl(impl: str, setup: BenchSetup, args, clips_pool, peak: tuple[float, str] | None) -> dict:
    device = setup.device
    model = setup.build_model()
    step = make_step(impl, model, setup, compile=False)
    # Step 0: the FLOP count (also the first warm-up step), always on the eager module.
    me, mp = setup.masks(0)
    if args.no_flops:
        flops, flop_error = None, "skipped"
    else:
        flops, flop_error = count_flops(lambda: step(clips_pool[0], me, mp))
    compile_status = "off"
    graphs = None
    if impl == "fast" and args.compile:
        if getattr(step, "cuda_graphs", False) and device.type == "cuda":
            graphs = CudaGraphCounter()
        compile_status = step.enable_compile()
    warm = list(range(1, 1 + args.warmup))
    timed = list(range(1 + args.warmup, 1 + args.warmup + args.steps))
    after = timed[-1] + 1 if timed else 1 + args.warmup
    phase_idx = list(range(after, after + args.phase_steps))
    profile_idx = list(range(after + args.phase_steps, after + args.phase_steps + args.profile_steps))
    if args.shapes == "steady":
        # Every later step's masks once more, untimed: cuDNN then has built the graph of each of their
        # attention lengths (measured on an H200: ~150-170 ms per new length, forward + backward),
        # as it has in a long run whose set of lengths is finite, and no implementation inherits
        # another's builds from the process-wide cache.
        warm += timed + phase_idx + profile_idx
    t_warm = time.perf_counter()
    for i in warm:
        me, mp = setup.masks(i)
        step(clips_pool[i % len(clips_pool)], me, mp)
    sync(device)
    warmup_s = time.perf_counter() - t_warm  # includes compilation when --compile
    graphs_warm = graphs.snapshot() if graphs is not None else None
    stats_warm = _compile_stats() if compile_status != "off" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    official_timer = getattr(step, "gpu_timer_ms", None)
    if official_timer is not None:
        official_timer.clear()
    ms, wall, loss, host_ms = timed_steps(step, setup, timed, clips_pool)
    official_ms = statistics.median(official_timer) if official_timer else None
    peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    graphs_timed = graphs.snapshot() if graphs is not None else None
    stats_timed = _compile_stats() if compile_status != "off" else None
    phases = {}
    if phase_idx:
        timer = PhaseTimer(device)
        for i in phase_idx:
            me, mp = setup.masks(i)
            step(clips_pool[i % len(clips_pool)], me, mp, phase=timer)
        phases = timer.summary()
    profiled = None
    if profile_idx:
        try:
            profiled = profile_steps(step, setup, profile_idx, clips_pool)
        except Exception as e:  # noqa: BLE001 - the timing above stands without the profile
            profiled = {"error": f"{type(e).__name__}: {str(e).strip()[:300]}"}
    if graphs is not None:
        graphs.close()
    shape_cost = attention_shape_cost(model, setup) if args.attn_shape_cost and impl == "fast" else None
    before = ([0] if not args.no_flops else []) + warm
    new_shapes = new_attention_shapes(setup, before, timed)
    mask_lengths = setup.mask_lengths(timed or [0])
    recompute = ckpt_blocks(impl, model, setup)
    analytic = setup.analytic_flops(model, timed or [0], impl)
    analytic0 = setup.analytic_flops(model, [0], impl)
    # FlopCounterMode counts what ran, activation checkpointing's second forward included; the
    # formula with the same recompute is what the count is checked against.
    analytic0_run = setup.analytic_flops(model, [0], impl, recompute)
    # The count is exact for step 0's masks; the timed steps have other mask lengths, so the
    # count is carried over to their mean lengths with the analytic formula's ratio (and without
    # the recomputed forward: the MFU counts the model's FLOPs once).
    flops_step = flops * analytic.total / analytic0_run.total if flops is not None else analytic.total
    med = statistics.median(ms)
    row = {
        "bench": "train_step", "impl": impl, **environment(device), "arch": setup.arch, **setup.describe,
        **model_desc(model), "activation_checkpointing": list(recompute),
        "batch": setup.batch, "frames": setup.frames, "crop": setup.crop,
        "tokens": (setup.frames // setup.tubelet) * (setup.crop // setup.patch) ** 2,
        "dtype": DTYPE_NAMES[setup.dtype],
        "attn_backend": get_attention_backend() if impl == "fast" else "sdpa-default",
        "kernels": kernels.kernel_backend(device) if impl == "fast" else "none",
        "compile": compile_status, "compile_stats": stats_timed,
        # Compilations during the timed steps (0 expected: anything else is a recompile per step).
        "compiled_in_timed_steps": ({k: stats_timed[k] - stats_warm[k] for k in stats_timed}
                                    if stats_timed and stats_warm else None),
        "compiled_attention_ops": _compiled_attention_ops() if compile_status != "off" else None,
        "cuda_graph_trees": {"after_warmup": graphs_warm, "after_timed": graphs_timed} if graphs else None,
        "fused_optimizer": getattr(step, "fused", None) is not None if impl == "fast" else None,
        "target_working_copy": getattr(step, "target_copy", None) is not None if impl == "fast" else None,
        "pack_context": bool(getattr(step.model, "pack_context", False)) if impl == "fast" else None,
        "sparse_patch_embed": bool(getattr(step.model, "sparse_patch_embed", False)) if impl == "fast" else None,
        "grad_scaler": getattr(step, "scaler", None) is not None,
        "clip_grad": setup.clip_grad,
        "official_loggers": setup.official_loggers if impl == "reference" else None,
        "steps": len(ms), "warmup": args.warmup, "warmup_steps": len(warm), "warmup_s": round(warmup_s, 2),
        "mask_cycle": setup.mask_cycle or None, "shapes": args.shapes,
        # Student attention shapes first seen in a timed step (cuDNN builds a graph for each, forward
        # and backward): mean per timed step.
        "attn_new_shapes_per_step": round(statistics.mean(new_shapes), 3) if new_shapes else None,
        "ms_host_step": round(statistics.median(host_ms), 4) if host_ms else None,
        "ms_step": round(med, 4), "ms_step_p20": round(_quantile(ms, 0.2), 4),
        "ms_step_p80": round(_quantile(ms, 0.8), 4), "ms_step_wall_mean": round(wall * 1e3 / len(ms), 4),
        "clips_s": round(setup.batch * 1e3 / med, 3),
        "ms_step_official_gpu_timer": round(official_ms, 4) if official_ms is not None else None,
        "flops_step": int(flops_step), "flops_step_counted": flops,
        "flops_step_analytic": int(analytic.total), "flops_step_analytic_step0": int(analytic0_run.total),
        "flops_recomputed_step0": int(analytic0_run.total - analytic0.total),
        "flops_analytic_split": {k: int(v) for k, v in analytic.as_dict().items()},
        "tflops_s": round(flops_step / (med / 1e3) / 1e12, 4),
        "mfu": round(flops_step / (med / 1e3) / (peak[0] * 1e12), 5) if peak else None,
        "peak_tflops": round(peak[0], 3) if peak else None, "peak_source": peak[1] if peak else None,
        "peak_mem_gib": round(peak_mem, 3) if peak_mem is not None else None,
        "phases": phases, "mask_lengths_mean": [[round(kc, 1), round(kt, 1)] for kc, kt in mask_lengths],
        "profile": profiled, "attn_shape_cost": shape_cost,
        "loss_last": float(loss) if loss is not None else None,
    }
    if flop_error and flop_error != "skipped":
        row["flops_error"] = flop_error
    del step, model
    _free(device)
    return row


def ckpt_blocks(impl: str, model, setup: BenchSetup) -> tuple[int, int]:
    """(encoder, predictor) blocks whose forward runs again in the backward: every block in the V2
    reference (official), the fast model's own setting otherwise."""
    if impl == "reference":
        if setup.arch == "v2":
            return len(model.encoder.blocks), len(model.predictor.predictor_blocks)
        return 0, 0
    return int(model.encoder.activation_checkpointing), int(model.predictor.activation_checkpointing)


def _compile_stats():
    try:
        from vjepa_fast.compile import compile_stats
    except ImportError:
        return None
    return compile_stats()


def ratio_row(ref: dict, fast: dict) -> dict:
    phases = {}
    for k, v in fast["phases"].items():
        if ref["phases"].get(k):
            phases[k] = round(v / ref["phases"][k], 4)
    return {
        "bench": "train_step", "impl": "ratio", "arch": ref["arch"], "model": ref["model"], "batch": ref["batch"],
        "device_name": ref["device_name"], "dtype": ref["dtype"],
        "activation_checkpointing_fast": fast["activation_checkpointing"],
        "activation_checkpointing_reference": ref["activation_checkpointing"],
        "ms_ratio_fast_over_reference": round(fast["ms_step"] / ref["ms_step"], 4),
        "speedup_fast_vs_reference": round(ref["ms_step"] / fast["ms_step"], 4),
        "clips_s_reference": ref["clips_s"], "clips_s_fast": fast["clips_s"],
        "phases_ratio_fast_over_reference": phases,
    }


# ----------------------------------------------------------------------------------------------
# loss parity
# ----------------------------------------------------------------------------------------------


def default_tolerance(setup: BenchSetup) -> float:
    if setup.dtype == torch.float32:
        return 1e-5 if setup.device.type == "cpu" else 1e-4
    return 2e-2


def check_loss(setup: BenchSetup, args) -> dict:
    """Both impls, ``args.check_loss`` steps each from the same init, masks and clips."""
    n = args.check_loss
    losses, params = {}, {}
    for impl in ("reference", "fast"):
        model = setup.build_model()
        step = make_step(impl, model, setup, compile=args.compile)
        out = []
        for i in range(n):
            me, mp = setup.masks(i)
            out.append(step(setup.clips(i), me, mp))
        losses[impl] = [float(v) for v in out]
        params[impl] = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
        desc = model_desc(model)
        del step, model
        _free(setup.device)
    ref, fast = losses["reference"], losses["fast"]
    rel = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(ref, fast)]
    worst_name, worst = None, 0.0
    for k, a in params["reference"].items():
        d = (a - params["fast"][k]).abs().max().item() if a.numel() else 0.0
        if d > worst or worst_name is None:
            worst_name, worst = k, d
    tol = args.tol if args.tol is not None else default_tolerance(setup)
    max_rel = max(rel) if rel else 0.0
    return {
        "bench": "train_step", "mode": "check_loss", **environment(setup.device), "arch": setup.arch,
        **setup.describe, **desc, "activation_checkpointing_fast": setup.activation_checkpointing,
        "batch": setup.batch, "frames": setup.frames, "crop": setup.crop, "dtype": DTYPE_NAMES[setup.dtype],
        "attn_backend": get_attention_backend(), "kernels": kernels.kernel_backend(setup.device),
        "steps": n, "losses_reference": ref, "losses_fast": fast, "rel_diff": rel,
        "max_rel_diff": max_rel, "param_max_abs_diff": worst, "param_max_abs_diff_name": worst_name,
        "tolerance": tol, "pass": bool(max_rel <= tol and math.isfinite(max_rel)),
    }


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_step.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--impl", default="both", choices=["reference", "fast", "both"])
    p.add_argument("--steps", type=int, default=20, help="timed steps (median over them)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (after the FLOP-count step)")
    p.add_argument("--phase-steps", type=int, default=5,
                   help="steps of the separate per-phase pass (0: skip)")
    p.add_argument("--no-flops", action="store_true", help="skip the FlopCounterMode step")
    p.add_argument("--profile-steps", type=int, default=0, metavar="N",
                   help="N more steps under torch.profiler, reported as per-step figures: wall vs GPU-busy "
                   "ms, attention kernels and ops (host ms, slowest call), top kernels and CPU ops")
    p.add_argument("--attn-shape-cost", action="store_true",
                   help="fast impl: time one attention fwd+bwd at a new length and again at the same "
                   "length, at the context and predictor shapes, for the run's backend and flash")
    p.add_argument("--mask-cycle", type=int, default=0, metavar="N",
                   help="step i uses the masks of step i mod N (both impls): with --warmup >= N the timed "
                   "steps see no new mask length, as a long run (finite set of lengths) eventually does")
    p.add_argument("--shapes", default="steady", choices=["steady", "cold"],
                   help="steady (default): the warm-up also runs every later step's masks once, so no "
                   "measured step meets an attention length for the first time, as in a long run; cold: "
                   "new masks in the measured steps (what the first thousands of steps of a run pay with "
                   "cuDNN, which builds a graph per new length); one --impl per process, since cuDNN's "
                   "graph cache is shared by everything in the process")
    p.add_argument("--no-mfu", action="store_true", help="skip the matmul peak measurement")
    p.add_argument("--peak-tflops", type=float, default=None, help="use this peak instead of measuring one")
    p.add_argument("--check-loss", type=int, default=0, metavar="N",
                   help="loss parity mode: both impls N steps from the same init / masks / clips")
    p.add_argument("--tol", type=float, default=None,
                   help="--check-loss tolerance on the relative loss difference (fp32 CPU 1e-5, bf16 2e-2)")
    p.add_argument("--out", default=None, help="append the JSON lines to this file as well")
    add_size_args(p)
    return p


def emit(row: dict, out: str | None) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a") as f:
            f.write(line + "\n")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    if args.config is None and args.overrides:
        build_parser().error(f"dotted overrides {args.overrides} need --config")
    if args.steps < 1 and not args.check_loss:
        build_parser().error("--steps must be >= 1")
    if args.shapes == "cold" and args.impl == "both" and not args.check_loss:
        build_parser().error(
            "--shapes cold times one implementation per process (--impl reference, then --impl fast): "
            "cuDNN caches one built graph per attention shape for the whole process, so the second "
            "implementation would find the first one's lengths already built")
    setup = make_setup(args)
    if setup.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the official main does
    choose_attention(args, setup)
    ac_given = args.activation_checkpointing
    settings = [setup.activation_checkpointing] if ac_given is None else [v.strip() for v in ac_given.split(",")]
    try:
        for v in settings:
            checkpoint_settings(v, 1, 1)
    except ValueError as e:
        build_parser().error(str(e))
    setup.activation_checkpointing = settings[0]
    if args.check_loss:
        row = check_loss(setup, args)
        emit(row, args.out)
        return 0 if row["pass"] else 1
    peak = None
    if args.peak_tflops:
        peak = (args.peak_tflops, "given (--peak-tflops)")
    elif not args.no_mfu:
        peak = measure_matmul_tflops(setup.device, setup.dtype)
    clips_pool = [setup.clips(0), setup.clips(1)]
    ref = None
    if args.impl in ("reference", "both"):
        ref = bench_impl("reference", setup, args, clips_pool, peak)
        emit(ref, args.out)
    rc = 0
    if args.impl in ("fast", "both"):
        for value in settings:  # one fast row per activation-checkpointing setting
            setup.activation_checkpointing = value
            oom = None
            try:
                fast = bench_impl("fast", setup, args, clips_pool, peak)
            except torch.OutOfMemoryError as e:
                oom = str(e).strip()[:300]
            if oom is not None:
                # Too little checkpointing for this GPU is a result too: say so, try the next setting
                # (freed outside the except clause, whose traceback holds the failed step's tensors).
                _free(setup.device)
                emit({"bench": "train_step", "impl": "fast", **environment(setup.device), "arch": setup.arch,
                      **setup.describe, "activation_checkpointing": value, "error": f"out of memory: {oom}"},
                     args.out)  # fmt: skip
                rc = 1
                continue
            emit(fast, args.out)
            if ref is not None:
                emit(ratio_row(ref, fast), args.out)
    return rc


if __name__ == "__main__":
    sys.exit(main())
