"""Checkpoint I/O in the official V-JEPA format.

Official files hold ``encoder``, ``predictor`` and ``target_encoder`` state dicts whose keys carry
the ``module.backbone.`` prefixes of DDP + the multi-mask wrappers, plus ``opt``, ``scaler``,
``epoch``, ``loss``, ``batch_size``, ``world_size`` and ``lr``. We read those (and released
checkpoints, and eval/probe files) with ``weights_only=True`` and write the same layout, so the
official loader can resume from our files; state only this project needs goes under ``vjepa_fast``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

MODEL_KEYS = ("encoder", "predictor", "target_encoder")
PREFIX = "module.backbone."
# A plausible GradScaler state: the official loader calls GradScaler.load_state_dict, which
# rejects the empty dict a disabled scaler would save. We never use a scaler with bf16/fp32.
NEUTRAL_SCALER_STATE = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 0}


class CheckpointError(ValueError):
    pass


def clean_key(key: str) -> str:
    """Strip any leading ``module.`` / ``backbone.`` wrappers (DDP, MultiMaskWrapper, probes)."""
    while True:
        for p in ("module.", "backbone."):
            if key.startswith(p):
                key = key[len(p):]
                break
        else:
            return key


def clean_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {clean_key(k): v for k, v in sd.items()}


def read_checkpoint(path: str | os.PathLike, *, mmap: bool = False) -> dict:
    """torch.load(weights_only=True) with errors that name the file and say what is wrong.
    ``mmap``: map the tensors instead of reading them (for checks that only look at keys, shapes and
    scalars: cheap even for multi-GB files)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # truncated zip, pickle with unsafe globals, random bytes...
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated, corrupt or not a checkpoint): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


def load_module_state(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    what: str = "model",
    source: str = "",
    keep_resized_pos_embed: bool = True,
) -> None:
    """Load a (prefix-cleaned) state dict, failing with one message that lists every missing
    key, unexpected key and shape mismatch. ``pos_embed`` tables of another resolution are not an
    error when ``keep_resized_pos_embed``: the module keeps its own table built for its size (the
    official eval does the same)."""
    state = clean_state_dict(state)
    problems, to_load = state_problems(module.state_dict(), state, strict=strict,
                                       keep_resized_pos_embed=keep_resized_pos_embed)
    if problems:
        where = f" from {source}" if source else ""
        raise CheckpointError(f"cannot load {what}{where}:\n  " + "\n  ".join(problems))
    module.load_state_dict(to_load, strict=False)


def state_problems(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], *, strict: bool = True,
                   keep_resized_pos_embed: bool = True) -> tuple[list[str], dict[str, torch.Tensor]]:
    """What stops the (prefix-cleaned) ``state`` from loading into a module whose state dict is
    ``own`` (tensors or meta tensors: only names and shapes are read): lines for missing keys,
    unexpected keys (both only when ``strict``) and shape mismatches (always; a ``pos_embed`` of
    another size is not one when ``keep_resized_pos_embed``). Returns ``(problems, loadable)``."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched, to_load = [], {}
    for k, v in state.items():
        if k not in own:
            continue
        if tuple(v.shape) != tuple(own[k].shape):
            if keep_resized_pos_embed and k.endswith("pos_embed"):
                continue
            mismatched.append(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}")
        else:
            to_load[k] = v
    problems = []
    if strict and missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched)}")
    return problems, to_load


def not_pretraining_checkpoint(ckpt: Mapping, source: str, key: str) -> str | None:
    """A sentence for a command-line user when ``ckpt`` (read from ``source``, named by config key
    ``key``) lacks the encoder, predictor or target encoder a pretraining run needs; None if it has them."""
    absent = [k for k in MODEL_KEYS if k not in ckpt]
    if not absent:
        return None
    kind = (" (a probe checkpoint)" if "classifier" in ckpt
            else " (an encoder-only file)" if "encoder" in ckpt or "target_encoder" in ckpt else "")
    return (f"{key}: {source} has no {', '.join(absent)}{kind}; keys: {', '.join(map(str, ckpt))}. "
            "It needs a checkpoint written by `vjepa-fast pretrain` or the official pretraining "
            "(encoder, predictor and target_encoder)")


def checkpoint_step(ckpt: Mapping, ipe: int | None) -> int | None:
    """Optimizer steps a pretraining checkpoint has taken: ours record it; an official file records
    whole epochs (``epoch * ipe``; None when ``ipe`` is unknown)."""
    extra = ckpt.get("vjepa_fast")
    if isinstance(extra, Mapping) and "step" in extra:
        return int(extra["step"])
    if "epoch" in ckpt and ipe is not None:
        return int(ckpt["epoch"]) * int(ipe)
    return None


def load_vjepa_checkpoint(model, checkpoint: str | os.PathLike | Mapping, *, strict: bool = True,
                          source: str | None = None, keep_resized_pos_embed: bool = True) -> dict:
    """Load encoder, predictor and target encoder of a :class:`~vjepa_fast.jepa.VJEPA` from an
    official or vjepa-fast checkpoint. Returns the checkpoint dict (for optimizer/scalars).
    ``source``: the file name for messages when ``checkpoint`` is an already read dict.
    ``keep_resized_pos_embed``: see :func:`load_module_state`."""
    if source is None:
        source = str(checkpoint) if not isinstance(checkpoint, Mapping) else "checkpoint dict"
    ckpt = read_checkpoint(checkpoint) if not isinstance(checkpoint, Mapping) else dict(checkpoint)
    absent = [k for k in MODEL_KEYS if k not in ckpt]
    if absent:
        raise CheckpointError(
            f"{source} has no {', '.join(absent)} (keys: {', '.join(map(str, ckpt))}); "
            "is it a probe or encoder-only file? Use load_encoder for those."
        )
    for key in MODEL_KEYS:
        load_module_state(getattr(model, key), ckpt[key], strict=strict, what=key, source=source,
                          keep_resized_pos_embed=keep_resized_pos_embed)
    return ckpt


def load_encoder(
    encoder: nn.Module,
    checkpoint: str | os.PathLike | Mapping,
    *,
    key: str = "target_encoder",
    strict: bool = True,
    source: str | None = None,
) -> str:
    """Load one encoder (default: the EMA target, as the official eval does). Falls back from
    ``target_encoder`` to ``encoder``; a file with neither is an error naming the keys it has.
    ``source``: the file name for messages when ``checkpoint`` is an already read dict. Returns the
    key it loaded."""
    if source is None:
        source = str(checkpoint) if not isinstance(checkpoint, Mapping) else "checkpoint dict"
    ckpt = read_checkpoint(checkpoint) if not isinstance(checkpoint, Mapping) else dict(checkpoint)
    chosen = key if key in ckpt else ("encoder" if key == "target_encoder" and "encoder" in ckpt else None)
    if chosen is None:
        hint = " (this looks like a probe checkpoint)" if "classifier" in ckpt else ""
        raise CheckpointError(f"{source} has no {key!r}{hint}; keys: {', '.join(map(str, ckpt))}")
    load_module_state(encoder, ckpt[chosen], strict=strict, what=chosen, source=source)
    return chosen


def prefixed(module: nn.Module) -> dict[str, torch.Tensor]:
    return {PREFIX + k: v.detach().cpu() for k, v in module.state_dict().items()}


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """Write to a temporary file in the same directory, fsync, then rename: a kill mid-save
    leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def vjepa_checkpoint(
    model,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    epoch: int = 0,
    loss: float = 0.0,
    batch_size: int = 0,
    world_size: int = 1,
    lr: float = 0.0,
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """A dict in the official layout (plus ``vjepa_fast`` extras) ready for :func:`atomic_save`."""
    ckpt = {k: prefixed(getattr(model, k)) for k in MODEL_KEYS}
    ckpt.update(
        opt=optimizer.state_dict() if optimizer is not None else None,
        scaler=dict(NEUTRAL_SCALER_STATE),
        epoch=int(epoch), loss=float(loss), batch_size=int(batch_size), world_size=int(world_size), lr=float(lr),
    )
    if extra:
        ckpt["vjepa_fast"] = dict(extra)
    return ckpt
