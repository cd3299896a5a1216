"""V-JEPA 2 checkpoints in the official formats: training checkpoints and the released files.

Both are the dict that facebookresearch/vjepa2 ``app/vjepa/train.py:save_checkpoint`` writes:
``encoder``, ``predictor``, ``target_encoder`` state dicts with ``module.backbone.`` prefixes (DDP +
``MultiSeqWrapper`` / ``PredictorMultiSeqWrapper``), plus ``opt``, ``scaler``, ``epoch``, ``loss``,
``batch_size``, ``world_size`` and ``lr``. The parameter names are those of our modules once the
prefixes are stripped, so the plain loader of :mod:`vjepa_fast.checkpoint` does the work; this module
adds what is particular to V2 files and says what it did:

* A training checkpoint of a RoPE model has no position tables and ``len(mask)·len(dataset_fpcs)``
  mask tokens (6 in the V2 configs); it loads as it is.
* The released files (``vitl.pt``, ``vith.pt``, ``vitg.pt``, ``vitg-384.pt``; key_map.md, reference
  §8.4) also hold ``pos_embed`` / ``predictor_pos_embed`` tables, which a RoPE model does not use,
  and the predictor carries **10** mask tokens (the official hub builds its predictor with
  ``num_mask_tokens=10``). Position tables are dropped for a RoPE model; mask token j of the file
  goes into slot j of the model for j < the model's count, the others are reported as not loaded;
  a model with more tokens than the file is an error (``strict``) or keeps its own for the rest.
  The report also lists the file's mask tokens that are exactly zero: with zero init, a token that
  no batch used never received a gradient or weight decay (reference §8.4b), so it was never trained
  (in official pretraining only the tokens of clip-length groups that occurred are used: with
  ``dataset_fpcs: [16, 16, 16]`` only ``mask_tokens.0``; Hugging Face's port always uses index 1).

Our own V2 checkpoints are written by :func:`vjepa_fast.checkpoint.vjepa_checkpoint` (the layout above;
the official ``load_checkpoint`` reads them). Hugging Face files: :mod:`vjepa_fast.hf_vjepa2`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn as nn

from .checkpoint import MODEL_KEYS, CheckpointError, clean_state_dict, load_module_state, read_checkpoint

POS_TABLES = ("pos_embed", "predictor_pos_embed")


@dataclass
class MaskTokenReport:
    """What happened to a predictor's mask tokens: ``file_count`` in the file, ``model_count`` in
    the module; ``loaded`` the indices copied (file j → model j), ``not_loaded`` the file's indices
    beyond the model, ``kept_init`` the model's indices the file lacks (non-strict only),
    ``zero_in_file`` the file's tokens that are exactly zero (never trained)."""

    file_count: int
    model_count: int
    loaded: list[int] = field(default_factory=list)
    not_loaded: list[int] = field(default_factory=list)
    kept_init: list[int] = field(default_factory=list)
    zero_in_file: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"mask tokens: file {self.file_count}, model {self.model_count}; loaded {self.loaded}"]
        if self.not_loaded:
            parts.append(f"not loaded (beyond the model's {self.model_count}) {self.not_loaded}")
        if self.kept_init:
            parts.append(f"not in the file, kept as initialised {self.kept_init}")
        if self.zero_in_file:
            parts.append(f"exactly zero in the file (never trained) {self.zero_in_file}")
        return "; ".join(parts)


@dataclass
class ModuleLoadReport:
    """One state dict loaded into one module: ``loaded`` and ``dropped`` (unused position tables)
    key names, ``mask_tokens`` for a predictor."""

    what: str
    loaded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    mask_tokens: MaskTokenReport | None = None

    def __str__(self) -> str:
        s = f"{self.what}: {len(self.loaded)} tensors loaded"
        if self.dropped:
            s += f"; dropped (unused with RoPE): {', '.join(self.dropped)}"
        if self.mask_tokens is not None:
            s += f"; {self.mask_tokens}"
        return s


@dataclass
class V2LoadReport:
    """Per model key (``encoder``, ``predictor``, ``target_encoder``) what was loaded and what not."""

    source: str
    modules: dict[str, ModuleLoadReport] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.source}:\n  " + "\n  ".join(str(r) for r in self.modules.values())


def _mask_token_indices(state: Mapping[str, torch.Tensor]) -> list[int]:
    return sorted(int(k.split(".")[1]) for k in state if k.startswith("mask_tokens.") and k.count(".") == 1)


def adapt_state_dict(
    module: nn.Module, state: Mapping[str, torch.Tensor], *, what: str, strict: bool = True, source: str = "",
) -> tuple[dict[str, torch.Tensor], ModuleLoadReport]:
    """``state`` (official names, any ``module.``/``backbone.`` prefixes) made to fit ``module``: position
    tables dropped when the module has none (RoPE), surplus mask tokens left out, missing ones kept from
    the module when not ``strict``. Returns the state dict to load and the report. Raises
    :class:`~vjepa_fast.checkpoint.CheckpointError` naming the file and keys when the file has fewer
    mask tokens than the module (strict)."""
    state = clean_state_dict(state)
    own = module.state_dict()
    report = ModuleLoadReport(what)
    out = {}
    for k, v in state.items():
        if k in POS_TABLES and k not in own:
            report.dropped.append(k)
            continue
        out[k] = v
    file_tokens = _mask_token_indices(state)
    model_tokens = _mask_token_indices(own)
    if file_tokens or model_tokens:
        mt = MaskTokenReport(len(file_tokens), len(model_tokens))
        for j in file_tokens:
            if j in model_tokens:
                mt.loaded.append(j)
            else:
                mt.not_loaded.append(j)
                del out[f"mask_tokens.{j}"]
            if not torch.any(state[f"mask_tokens.{j}"]):
                mt.zero_in_file.append(j)
        missing = [j for j in model_tokens if j not in file_tokens]
        if missing:
            if strict:
                where = f" in {source}" if source else ""
                raise CheckpointError(
                    f"{what}{where} has {len(file_tokens)} mask tokens but the predictor has {len(model_tokens)} "
                    f"(missing mask_tokens.{missing[0]}...); build it with num_mask_tokens={len(file_tokens)} "
                    "or load with strict=False to keep the extra ones as initialised")
            mt.kept_init = missing
            for j in missing:
                out[f"mask_tokens.{j}"] = own[f"mask_tokens.{j}"]
        report.mask_tokens = mt
    report.loaded = [k for k in out if k in own]
    return out, report


def _read(checkpoint: str | os.PathLike | Mapping) -> tuple[dict, str]:
    if isinstance(checkpoint, Mapping):
        return dict(checkpoint), "checkpoint dict"
    return read_checkpoint(checkpoint), str(checkpoint)


def load_vjepa2_checkpoint(model, checkpoint: str | os.PathLike | Mapping, *, strict: bool = True) -> V2LoadReport:
    """Load ``encoder``, ``predictor`` and ``target_encoder`` of a :class:`~vjepa_fast.jepa.VJEPA`
    from an official V2 training checkpoint or released file (module docstring). Returns the report
    of what was loaded, dropped and left out (``str(report)`` reads as a summary). Every other key
    (``opt``, ``epoch`` …) stays in the file for the caller: :func:`read_checkpoint` it."""
    ckpt, source = _read(checkpoint)
    absent = [k for k in MODEL_KEYS if k not in ckpt]
    if absent:
        raise CheckpointError(f"{source} has no {', '.join(absent)} (keys: {', '.join(map(str, ckpt))}); "
                              "for an encoder-only file use load_vjepa2_encoder")  # fmt: skip
    report = V2LoadReport(source)
    for key in MODEL_KEYS:
        module = getattr(model, key)
        state, report.modules[key] = adapt_state_dict(module, ckpt[key], what=key, strict=strict, source=source)
        load_module_state(module, state, strict=strict, what=key, source=source)
    return report


def load_vjepa2_encoder(
    encoder: nn.Module, checkpoint: str | os.PathLike | Mapping, *, key: str = "target_encoder", strict: bool = True,
) -> ModuleLoadReport:
    """One encoder from a V2 file: ``key`` ``target_encoder`` (what the official evals load; falls
    back to ``encoder`` when absent) or ``encoder`` (what the torch.hub loaders read)."""
    ckpt, source = _read(checkpoint)
    chosen = key if key in ckpt else ("encoder" if key == "target_encoder" and "encoder" in ckpt else None)
    if chosen is None:
        raise CheckpointError(f"{source} has no {key!r}; keys: {', '.join(map(str, ckpt))}")
    state, report = adapt_state_dict(encoder, ckpt[chosen], what=chosen, strict=strict, source=source)
    load_module_state(encoder, state, strict=strict, what=chosen, source=source)
    return report


def load_vjepa2_predictor(
    predictor: nn.Module, checkpoint: str | os.PathLike | Mapping, *, strict: bool = True,
) -> ModuleLoadReport:
    """The ``predictor`` of a V2 file (a released one carries 10 mask tokens: see the report)."""
    ckpt, source = _read(checkpoint)
    if "predictor" not in ckpt:
        raise CheckpointError(f"{source} has no 'predictor'; keys: {', '.join(map(str, ckpt))}")
    state, report = adapt_state_dict(predictor, ckpt["predictor"], what="predictor", strict=strict, source=source)
    load_module_state(predictor, state, strict=strict, what="predictor", source=source)
    return report


def load_vjepa2_probe(probe: nn.Module, checkpoint: str | os.PathLike | Mapping, *, index: int = 0) -> None:
    """An official V2 frozen-eval probe into an :class:`~vjepa_fast.attentive_probe.AttentiveClassifierV2`.
    The eval checkpoint's ``classifiers`` is a **list** (one probe per lr / wd setting of the grid
    search); ``index`` picks one (Hugging Face converted index 0). A bare probe state dict, or a dict
    with ``classifier``, also loads."""
    ckpt, source = _read(checkpoint)
    if "classifiers" in ckpt:
        probes = ckpt["classifiers"]
        if not isinstance(probes, (list, tuple)) or not 0 <= index < len(probes):
            raise CheckpointError(f"{source}: 'classifiers' holds {len(probes)} probes; index {index} is out of range")
        state = probes[index]
    elif "classifier" in ckpt:
        state = ckpt["classifier"]
    else:
        state = ckpt
    load_module_state(probe, state, strict=True, what="probe", source=source)
