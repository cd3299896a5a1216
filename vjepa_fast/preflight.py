"""Checks that run before the first step: of a pretraining run, of a probe run, and all of them at
once in ``vjepa-fast check-config``.

Each check returns the problems it finds as sentences that name the file, the config key and the
value, so that a run can refuse to start with every problem in one :class:`PreflightError` and
``check-config`` can print them all. Nothing here writes a file; checkpoints are read with
``mmap`` (keys, shapes and scalars only), so checking a multi-GB checkpoint is cheap.

What a pretraining run checks (:func:`pretrain_problems`): the device, attention backend and kernels
exist here (:func:`runtime_problems`); the index files exist
and every line parses; the data give at least one full batch; ``model.in_chans`` fits decoded
(RGB) videos; and how the run starts (:func:`plan_pretrain_start`): a resume checkpoint is a
pretraining checkpoint, its geometry, model and masks match the config (or
``meta.allow_resume_changes``), and it has steps left to train; a ``meta.init_from`` checkpoint
fits the model; a V-JEPA 2 cooldown's ``optimization.anneal_ckpt`` is a pretraining checkpoint with
optimizer state that fits the model (or, with ``optimization.resume_anneal``, the cooldown's own
checkpoint is resumed); a new run does not overwrite another run's checkpoint. A probe run
(:func:`probe_problems`): the device, the index files and their labels, the pretrained checkpoint
and its encoder's shapes, and the resume / results state (:func:`plan_probe_start`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .checkpoint import (
    CheckpointError,
    checkpoint_step,
    clean_state_dict,
    not_pretraining_checkpoint,
    read_checkpoint,
    state_problems,
)
from .config import EvalConfig, MaskConfig, PretrainConfig

__all__ = [
    "PreflightError",
    "StartPlan",
    "RESUME_CHECKED_KEYS",
    "config_changes",
    "device_problems",
    "runtime_problems",
    "index_problems",
    "mask_problems",
    "plan_pretrain_start",
    "pretrain_problems",
    "plan_probe_start",
    "probe_problems",
    "finished_results",
]

#: Keys whose change on resume is refused unless ``meta.allow_resume_changes``: the clip geometry,
#: the model, the mask generators and how their masks are cut (dotted prefixes of the config dict).
RESUME_CHECKED_KEYS = ("data.crop_size", "data.num_frames", "data.patch_size", "data.tubelet_size",
                       "data.mask_type", "data.mask_truncation", "data.dataset_fpcs", "model.", "mask")
#: Keys under RESUME_CHECKED_KEYS that change how a step is computed, not what: free on resume.
RESUME_FREE_KEYS = ("model.use_activation_checkpointing", "model.compile_model")


class PreflightError(ValueError):
    """A run that cannot start: ``problems`` lists every reason (each names file, key and value)."""

    def __init__(self, problems: Sequence[str], what: str = "the run"):
        self.problems = list(problems)
        if len(self.problems) == 1:
            msg = f"{what} cannot start: {self.problems[0]}"
        else:
            msg = f"{what} cannot start ({len(self.problems)} problems):" + "".join(
                f"\n  - {p}" for p in self.problems)
        super().__init__(msg)


# ----------------------------------------------------------------------------------------------------
# devices, index files
# ----------------------------------------------------------------------------------------------------
def device_problems(device: str, key: str = "meta.device") -> list[str]:
    """A device string that names hardware this machine does not have."""
    if device in ("auto", "cpu"):
        return []
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return [f"{key}={device!r} but no CUDA device is visible (torch.cuda.is_available() is false, "
                    f"torch {torch.__version__}); use {key}=auto or cpu"]
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            return [f"{key}={device!r} but this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})"]
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        return [f"{key}={device!r} but MPS is not available here; use {key}=auto or cpu"]
    return []


def runtime_problems(meta, prefix: str = "meta") -> list[str]:
    """``meta.device``, ``meta.attn_backend`` and ``meta.kernels`` name things this machine has: the
    device exists, the attention backend runs on it (and its package is installed), Triton kernels
    have a CUDA device or the interpreter. Otherwise the first attention call or kernel launch fails."""
    from . import kernels  # noqa: PLC0415
    from .attention import EXTERNAL_BACKENDS, TUNED, available_backends, backend_installed  # noqa: PLC0415

    problems = device_problems(meta.device, f"{prefix}.device")
    if problems:
        return problems
    device = torch.device("cuda" if meta.device == "auto" and torch.cuda.is_available()
                          else "cpu" if meta.device == "auto" else meta.device)
    backend = meta.attn_backend
    if backend not in ("auto", TUNED):
        if backend in EXTERNAL_BACKENDS and not backend_installed(backend):
            problems.append(f"{prefix}.attn_backend={backend!r} needs the {EXTERNAL_BACKENDS[backend]!r} package, "
                            "which is not installed")
        elif backend not in available_backends(device):
            problems.append(f"{prefix}.attn_backend={backend!r} does not run on {device.type} "
                            f"(there: {', '.join(available_backends(device))})")
    if meta.kernels == "triton":
        if not kernels.HAS_TRITON:
            problems.append(f"{prefix}.kernels='triton' but triton cannot be imported; use {prefix}.kernels=auto")
        elif device.type != "cuda" and not kernels.INTERPRET:
            problems.append(f"{prefix}.kernels='triton' needs a CUDA device (this run: {device}); use "
                            f"{prefix}.kernels=auto, or TRITON_INTERPRET=1 to run them in the interpreter")
    return problems


def index_problems(paths: Sequence[str], key: str, num_classes: int | None = None) -> tuple[list[str], int]:
    """Every index file of ``key`` exists and every line parses (and, with ``num_classes``, every label
    is in ``[0, num_classes)``). Returns ``(problems, number of samples listed)``."""
    from .video_dataset import read_index_files  # noqa: PLC0415

    problems, total = [], 0
    for path in paths:
        try:
            _, labels, counts = read_index_files(str(path))
        except (FileNotFoundError, ValueError, OSError) as e:
            problems.append(f"{key}: {e}")
            continue
        total += sum(counts)
        if not labels:
            problems.append(f"{key}: {path} lists no videos")
        elif num_classes is not None:
            lo, hi = min(labels), max(labels)
            if lo < 0 or hi >= num_classes:
                bad = lo if lo < 0 else hi
                problems.append(f"{key}: {path}: label {bad} is outside [0, data.num_classes={num_classes}) "
                                f"(labels span {lo}..{hi}); fix data.num_classes or the index file")
    return problems, total


def mask_problems(cfg: PretrainConfig) -> list[str]:
    """Mask generators whose blocks can come out empty on the config's token grid: block sizes shrink
    with the spatial-scale and aspect-ratio draws, so the smallest scale with either extreme aspect
    ratio is the smallest block. An empty block gives empty targets (a NaN loss) at the steps that
    draw it."""
    from .masks import V2_MASK_FLAGS, MultiBlock3DMaskCollator  # noqa: PLC0415

    d = cfg.data
    if d.mask_type != "multiblock3d":
        return []
    # The spatial grid decides the block sizes; a V2 run's clip lengths change only T.
    cfgs = [{k: v for k, v in m.items() if k not in V2_MASK_FLAGS} for m in cfg.mask_dicts()]
    col = MultiBlock3DMaskCollator(cfgs, crop_size=d.crop_size, num_frames=d.num_frames,
                                   patch_size=d.patch_size, tubelet_size=d.tubelet_size)
    T, H, W = col.grid
    problems = []
    for i, spec in enumerate(col.specs):
        for u_a in (0.0, 1.0):
            t, h, w = spec.block_size(0.0, 0.0, u_a)
            if h * w == 0:
                problems.append(
                    f"mask[{i}]: spatial_scale {list(spec.spatial_scale)} with aspect_ratio {list(spec.aspect_ratio)} "
                    f"draws blocks of {h}x{w} tokens on this {H}x{W} token grid (data.crop_size {d.crop_size} / "
                    f"data.patch_size {d.patch_size}): steps that draw them have no target. Raise the "
                    "spatial_scale, narrow the aspect_ratio, or use more tokens")
                break
    return problems


# ----------------------------------------------------------------------------------------------------
# config differences
# ----------------------------------------------------------------------------------------------------
def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, Mapping):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(d, (list, tuple)) and d and all(isinstance(v, Mapping) for v in d):
        out[f"{prefix}#len"] = len(d)
        for i, v in enumerate(d):
            out.update(_flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = list(d) if isinstance(d, tuple) else d
    return out


def config_changes(old: Mapping, new: Mapping, keys: Sequence[str] = RESUME_CHECKED_KEYS) -> list[str]:
    """``'key: old -> new'`` for every key under ``keys`` (dotted prefixes) that differs between two
    pretraining config dicts. A key the older config lacks counts as its default (configs written
    before the key existed)."""
    # Plain keys have their default; a mask generator's keys their MaskConfig default (keys added to
    # the mask entries later, e.g. the V-JEPA 2 options, are missing from older checkpoints' configs).
    defaults = {k: v for k, v in _flatten(PretrainConfig().to_dict()).items() if "[" not in k and "#" not in k}
    mask_defaults = _flatten(dataclasses.asdict(MaskConfig()))
    a, b = _flatten(old), _flatten(new)
    def generators(d: Mapping) -> set[str]:
        return {k.split(".", 1)[0] for k in d if k.startswith("mask[") and "." in k}

    both = generators(a) & generators(b)  # a generator one side lacks entirely has no defaults
    for k in set(a) | set(b):
        if k.split(".", 1)[0] in both:
            defaults.setdefault(k, mask_defaults.get(k.split(".", 1)[1]))

    def checked(k: str) -> bool:
        if k in RESUME_FREE_KEYS:
            return False
        return any(k == p or k.startswith(p if p.endswith(".") else p + ".") or k.startswith(p + "[")
                   or k == p + "#len" for p in keys)

    out = []
    for k in sorted(set(a) | set(b), key=lambda k: (k.split(".")[0], k)):
        if not checked(k):
            continue
        va, vb = a.get(k, defaults.get(k)), b.get(k, defaults.get(k))
        if va != vb:
            name = k.replace("#len", "") + (" (number of generators)" if k.endswith("#len") else "")
            out.append(f"{name}: {va!r} -> {vb!r}")
    return out


# ----------------------------------------------------------------------------------------------------
# pretraining
# ----------------------------------------------------------------------------------------------------
@dataclass
class StartPlan:
    """How a pretraining run starts: ``kind`` is ``fresh``, ``resume`` (continue ``path``), ``init``
    (weights of ``path``, step 0) or ``anneal`` (a V-JEPA 2 cooldown: weights and AdamW moments of
    ``path``, step 0). ``ckpt``: the checkpoint read (mmap'ed when planned by a check), ``step``: the
    step the run starts at, ``notes``: things to print, ``problems``: reasons not to start."""

    kind: str = "fresh"
    path: Path | None = None
    ckpt: dict | None = None
    step: int = 0
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _total_text(cfg: PretrainConfig, ipe: int, total: int) -> str:
    o = cfg.optimization
    text = f"optimization.epochs={o.epochs} x ipe {ipe} = {o.epochs * ipe}"
    if o.max_steps is not None and o.max_steps < o.epochs * ipe:
        text += f", stopped at optimization.max_steps={o.max_steps}"
    return f"{total} ({text})"


def _read(path: Path, key: str, problems: list[str], mmap: bool) -> dict | None:
    try:
        return read_checkpoint(path, mmap=mmap)
    except (FileNotFoundError, CheckpointError) as e:
        problems.append(f"{key}: {e}")
        return None


def _read_pretraining(path: Path, key: str, problems: list[str], mmap: bool) -> dict | None:
    """The checkpoint ``key`` names at ``path`` when it reads and is a pretraining checkpoint; else
    None, with the reason added to ``problems``."""
    ckpt = _read(path, key, problems, mmap)
    if ckpt is None:
        return None
    bad = not_pretraining_checkpoint(ckpt, str(path), key)
    if bad:
        problems.append(bad)
        return None
    return ckpt


def _saved_config(ckpt: Mapping) -> dict | None:
    """The config a vjepa-fast run recorded in its checkpoint (None for other files)."""
    return (ckpt.get("vjepa_fast") or {}).get("config")


def fit_problems(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                 v2: bool) -> tuple[list[str], list[str]]:
    """``(problems, notes)`` of loading the (prefix-cleaned) ``state`` into a module whose state dict is
    ``own``. ``v2``: as :func:`vjepa_fast.checkpoint_v2.load_vjepa2_checkpoint` loads it: position
    tables the module lacks (RoPE) are dropped, and mask tokens beyond the module's are left out (a
    note); a module with more mask tokens than the file is a problem."""
    state = dict(state)
    notes = []
    if v2:
        from .checkpoint_v2 import POS_TABLES  # noqa: PLC0415

        for k in POS_TABLES:
            if k in state and k not in own:
                del state[k]
        extra = sorted(k for k in state if k.startswith("mask_tokens.") and k not in own)
        if extra:
            notes.append(f"{len(extra)} mask tokens of the file are beyond the model's and not loaded "
                         f"({', '.join(extra)})")
            for k in extra:
                del state[k]
    problems, _ = state_problems(own, state)
    return problems, notes


def _check_start_weights(plan: StartPlan, cfg: PretrainConfig, key: str, path: Path,
                         model_state: Mapping[str, Mapping[str, torch.Tensor]] | None,
                         mmap: bool) -> dict | None:
    """Read the checkpoint that ``key`` (meta.init_from or optimization.anneal_ckpt) names, check it is
    a pretraining checkpoint whose encoder, predictor and target fit the model; notes for the config
    changes. Returns the checkpoint (None after a problem)."""
    ckpt = _read_pretraining(path, key, plan.problems, mmap)
    if ckpt is None:
        return None
    saved = _saved_config(ckpt)
    if saved is not None:
        changes = config_changes(saved, cfg.to_dict())
        if changes:
            plan.notes.append(f"{key}: this run changes {'; '.join(changes)}")
    if model_state is not None:
        for name in ("encoder", "predictor", "target_encoder"):
            problems, notes = fit_problems(model_state[name], clean_state_dict(ckpt[name]), cfg.is_v2)
            plan.notes += [f"{key}: {path}: its {name}: {n}" for n in notes]
            if problems:
                plan.problems.append(f"{key}: {path}: its {name} does not fit the model this config "
                                     "builds:\n    " + "\n    ".join(problems))
    return ckpt


def plan_pretrain_start(cfg: PretrainConfig, ipe: int | None, total: int | None, *, mmap: bool = False,
                        model_state: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> StartPlan:
    """Decide how ``cfg`` starts and check it (see the module docstring). ``ipe`` / ``total``: the
    run's iterations per epoch and total steps (None when unknown: the step check is skipped).
    ``model_state``: ``{"encoder": state_dict, ...}`` of the model the run builds (meta tensors do);
    when given, an ``init_from`` or ``anneal_ckpt`` checkpoint's shapes are checked against it.

    A V-JEPA 2 cooldown (``optimization.is_anneal``) starts from ``optimization.anneal_ckpt`` whether or
    not ``meta.load_checkpoint`` is set (the official cooldown configs set it); once its folder holds
    its own checkpoint, ``meta.load_checkpoint`` with ``optimization.resume_anneal`` continues it, and
    without ``resume_anneal`` it is refused (the official trainer would start the cooldown over it)."""
    m, o = cfg.meta, cfg.optimization
    folder = Path(cfg.logging.folder)
    latest = Path(cfg.latest_checkpoint_path)
    plan = StartPlan()
    own = folder / m.read_checkpoint if m.read_checkpoint else latest
    if o.is_anneal and m.load_checkpoint and own.is_file() and not o.resume_anneal:
        plan.problems.append(
            f"{own} holds this cooldown's own checkpoint, and optimization.resume_anneal is false: starting "
            f"again from optimization.anneal_ckpt would overwrite it (the official trainer does). Set "
            "optimization.resume_anneal=true to continue it, or choose another logging.folder")
        return plan
    if m.load_checkpoint and own.is_file():
        plan.kind, plan.path = "resume", own
        key = "meta.read_checkpoint" if m.read_checkpoint else "meta.load_checkpoint"
        plan.ckpt = ckpt = _read_pretraining(own, key, plan.problems, mmap)
        if ckpt is None:
            return plan
        saved = _saved_config(ckpt)
        if saved is not None:
            changes = config_changes(saved, cfg.to_dict())
            if changes and not m.allow_resume_changes:
                plan.problems.append(
                    f"{own} was trained with another geometry, model or masks than this config sets:\n"
                    + "".join(f"      {c}\n" for c in changes)
                    + "    resuming would continue it under settings it was not trained with. Restore them, "
                      "or set meta.allow_resume_changes=true to accept these changes on purpose (the "
                      "earlier config stays recorded in the checkpoint and as params-pretrain.before-step*.yaml); "
                      "to start a new run from these weights, use meta.init_from and another logging.folder")
            elif changes:
                plan.notes.append(f"resuming {own} with changed settings (meta.allow_resume_changes): "
                                  + "; ".join(changes))
        step = checkpoint_step(ckpt, ipe)
        plan.step = step or 0
        if step is not None and total is not None and step >= total:
            epoch = f" (epoch {int(ckpt['epoch'])})" if "epoch" in ckpt else ""
            plan.problems.append(
                f"{own} has already trained {step} steps{epoch}, and this run's total is "
                f"{_total_text(cfg, ipe, total)}: there is nothing left to train. To train further, raise "
                f"optimization.epochs (the lr/wd/EMA schedules stretch to the new length) or "
                f"optimization.max_steps above {step}; to train these weights anew with fresh optimizer and "
                f"schedules, use meta.init_from={own} with another logging.folder")
        return plan
    if m.load_checkpoint and not m.init_from and not o.is_anneal:
        where = (f"meta.read_checkpoint={m.read_checkpoint!r} in logging.folder={cfg.logging.folder!r}"
                 if m.read_checkpoint else f"logging.folder={cfg.logging.folder!r}")
        plan.problems.append(f"meta.load_checkpoint is true but there is no checkpoint to resume: {own} "
                             f"does not exist ({where}); set meta.load_checkpoint=false to start a new run")
        return plan
    if not m.load_checkpoint and latest.is_file():
        ckpt = _read(latest, "logging.folder", [], mmap=True)
        step = checkpoint_step(ckpt, ipe) if ckpt is not None else None
        what = f"the checkpoint of a run at step {step}" if step is not None else "a checkpoint"
        plan.problems.append(
            f"logging.folder={cfg.logging.folder!r} already holds {what} ({latest}); a new run there would "
            "overwrite it and its log. Continue that run with meta.load_checkpoint=true, start a new run "
            f"from its weights with meta.init_from={latest} and another logging.folder, or choose another "
            "logging.folder")
    if o.is_anneal:
        path = Path(o.anneal_ckpt)
        plan.kind, plan.path = "anneal", path
        plan.ckpt = ckpt = _check_start_weights(plan, cfg, "optimization.anneal_ckpt", path, model_state,
                                                mmap)
        if ckpt is not None and not ckpt.get("opt"):
            plan.problems.append(
                f"optimization.anneal_ckpt: {path} has no optimizer state ('opt'), and a cooldown continues "
                "the pretraining's AdamW moments (official is_anneal). To start from its weights alone, use "
                "meta.init_from with optimization.is_anneal=false (a fresh optimizer)")
        elif (ckpt is not None and (ckpt.get("vjepa_fast") or {}).get("opt_format") == "fsdp_fqn"
              and m.parallel != "fsdp"):
            plan.problems.append(f"optimization.anneal_ckpt: {path}: its optimizer state was written by an "
                                 "FSDP run; run the cooldown with meta.parallel=fsdp")
    elif m.init_from:
        path = Path(m.init_from)
        plan.kind, plan.path = "init", path
        if m.load_checkpoint:
            plan.notes.append(f"meta.load_checkpoint: no checkpoint in {folder} yet; starting from meta.init_from")
        plan.ckpt = _check_start_weights(plan, cfg, "meta.init_from", path, model_state, mmap)
    return plan


def _meta_model_state(cfg: PretrainConfig) -> dict[str, dict[str, torch.Tensor]]:
    """Names and shapes of the model ``cfg`` builds, as meta tensors (no memory, no init cost)."""
    from .train import build_model_from_config  # noqa: PLC0415

    with torch.device("meta"):
        model = build_model_from_config(cfg)
    return {k: getattr(model, k).state_dict() for k in ("encoder", "predictor", "target_encoder")}


def estimated_ipe(cfg: PretrainConfig, samples: int, world_size: int) -> int:
    """Batches per data pass from the number of videos the index files list (videos skipped at run
    time can only lower it)."""
    return math.ceil(samples / world_size) // cfg.data.batch_size


def pretrain_problems(cfg: PretrainConfig, *, world_size: int = 1, own_source: bool = True,
                      plan: bool = True) -> list[str]:
    """Every problem that would stop ``cfg`` before or at its first step (see the module docstring).
    ``own_source``: the run decodes the configured videos (not clips passed in by the caller);
    ``plan``: also check the start (resume / init_from / folder)."""
    d = cfg.data
    problems = runtime_problems(cfg.meta) + mask_problems(cfg)
    ipe = cfg.optimization.ipe
    if own_source and not d.synthetic:
        if cfg.model.in_chans != 3:
            problems.append(f"model.in_chans={cfg.model.in_chans}, but decoded videos have 3 channels (RGB); "
                            "use data.synthetic=true or pass clips of your own (Python: Trainer(cfg, source=...))")
        if not d.datasets:
            problems.append("data.datasets is empty: list the index files ('<path> <label>' per line), "
                            "or set data.synthetic=true")
        else:
            found, samples = index_problems(d.datasets, "data.datasets")
            problems += found
            if not found:
                per_pass = estimated_ipe(cfg, samples, world_size)
                if per_pass < 1:
                    problems.append(f"data.datasets list {samples} videos, {math.ceil(samples / world_size)} per "
                                    f"rank over {world_size} rank(s): fewer than data.batch_size={d.batch_size}, "
                                    "so not one full batch")
                elif ipe is None:
                    ipe = per_pass
    if plan:
        total = cfg.total_steps(ipe) if ipe else None
        try:
            state = _meta_model_state(cfg) if cfg.meta.init_from or cfg.optimization.is_anneal else None
        except (ValueError, RuntimeError) as e:
            state = None
            problems.append(f"model: {e}")
        start = plan_pretrain_start(cfg, ipe, total, mmap=True, model_state=state)
        problems += start.problems
    return problems


# ----------------------------------------------------------------------------------------------------
# probes
# ----------------------------------------------------------------------------------------------------
def finished_results(path: Path) -> dict | None:
    """The results JSON at ``path`` if it records a finished probe run (all its epochs), else None."""
    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(res, dict) or not res.get("epochs"):
        return None
    planned = res.get("num_epochs")
    return res if planned is None or int(res["epochs"]) >= int(planned) else None


def plan_probe_start(cfg: EvalConfig, specs: Sequence | None = None) -> tuple[list[str], list[str]]:
    """``(problems, notes)`` of the probe run's start: a resume checkpoint that has no epoch left or
    other probes (``specs``: the config's :class:`~vjepa_fast.probe.HeadSpec` list), and a finished
    run's results that a new run would overwrite."""
    problems, notes = [], []
    folder = Path(cfg.output_folder)
    ckpt_path = Path(cfg.latest_checkpoint_path)
    results = folder / f"{cfg.pretrain.write_tag}-results.json"
    resuming = cfg.resume_checkpoint and ckpt_path.is_file()
    if resuming:
        ckpt = _read(ckpt_path, "resume_checkpoint", problems, mmap=True)
        if ckpt is not None:
            epoch = int(ckpt.get("epoch", 0))
            total = cfg.optimization.num_epochs
            if epoch >= total:
                problems.append(
                    f"resume_checkpoint: {ckpt_path} has already trained {epoch} epochs and "
                    f"optimization.num_epochs={total}: there is nothing left to train. Raise "
                    f"optimization.num_epochs above {epoch} to train further, or use another tag "
                    f"(tag={cfg.tag!r}) for a new run")
            extra = ckpt.get("vjepa_fast") or {}
            if specs is not None and "probes" in extra:
                saved = [type(specs[0])(**s) for s in extra["probes"]["specs"]] if specs else []
                if saved != list(specs):
                    problems.append(
                        f"resume_checkpoint: the probes of {ckpt_path} ({', '.join(s.name for s in saved)}) differ "
                        f"from the config's ({', '.join(s.name for s in specs)}; optimization.lr, weight_decay, "
                        "multihead); use another tag or resume_checkpoint: false")
    else:
        done = finished_results(results)
        if done is not None:
            top1 = done.get("top1")
            problems.append(
                f"{results} holds the results of a finished probe run (tag={cfg.tag!r}, {done['epochs']} epochs"
                + (f", val top-1 {top1:.2f}" if isinstance(top1, (int, float)) else "")
                + "); a new run would overwrite them. Use another tag, or move that folder away "
                  f"({folder})")
        elif results.is_file():
            notes.append(f"{results}: results of an unfinished run (no resume); this run replaces them")
    return problems, notes


def probe_problems(cfg: EvalConfig) -> list[str]:
    """Every problem that would stop the probe run ``cfg`` before its first epoch."""
    from .probe import head_specs, pretrained_problems  # noqa: PLC0415

    d = cfg.data
    problems = runtime_problems(cfg.meta)
    if cfg.is_video:
        for key in ("dataset_train", "dataset_val"):
            path = getattr(d, key)
            if path is None:
                problems.append(f"data.{key} is required for video evals")
            else:
                problems += index_problems([path], f"data.{key}", d.num_classes)[0]
    else:
        root = os.path.join(d.root_path or "", d.image_folder or "")
        if d.root_path is None:
            problems.append("data.root_path is required for image evals")
        else:
            for split in ("train", "val"):
                if not os.path.isdir(os.path.join(root, split)):
                    problems.append(f"data.root_path / data.image_folder: no {split}/ folder in {root}")
    problems += pretrained_problems(cfg)  # file or Hugging Face folder, V1 or V2 (RoPE) encoder
    problems += plan_probe_start(cfg, head_specs(cfg.optimization))[0]
    return problems
