"""Typed configuration for vjepa-fast, loaded from YAML.

Two kinds of file are understood:

* **pretraining** files (:class:`PretrainConfig`), laid out like the official V-JEPA
  ``configs/pretrain/*.yaml`` (sections ``data``, ``data_aug``, ``logging``, ``loss``, ``mask``,
  ``meta``, ``model``, ``optimization``);
* **frozen-evaluation** files (:class:`EvalConfig`), laid out like the official
  ``configs/evals/*.yaml`` (top-level ``eval_name`` plus sections ``data``, ``optimization``,
  ``pretrain``).

:func:`load_config` picks the kind from the presence of the top-level ``eval_name`` key.
Every official file loads unchanged.

V-JEPA 2 (facebookresearch/vjepa2 ``configs/train/**`` and ``configs/eval/**``): a pretraining file
with ``data.dataset_fpcs`` runs the V2 trainer (:attr:`PretrainConfig.is_v2`); its top-level
``folder`` is the run folder (``logging.folder``). An eval file in the V2 layout (``experiment`` and
``model_kwargs`` sections) is translated into an :class:`EvalConfig` with ``protocol: v2``
(:func:`v2_eval_to_ours`, keys in :data:`V2_EVAL_KEYS`, those without effect in
:data:`V2_EVAL_IGNORED`). Two V2 files describe tasks this project does not implement and are
refused with one sentence saying so: ``app: vjepa_droid`` (V-JEPA 2-AC) and ``eval_name:
action_anticipation_frozen`` (EPIC-KITCHENS-100).

Rules
-----
* Every key is either honoured by this project or listed in :data:`ACCEPTED_AND_IGNORED` with
  the reason it has no effect (mostly: it has no effect in the official code either).
* An unknown key is reported naming the file, the full dotted key and the closest known key;
  wrong types and impossible values naming the key and the value.  Every problem of a file (and
  its overrides) goes into one :class:`ConfigError` (``.problems`` lists them), not one per run.
* Types are strict: an ``int`` field rejects ``"24"``, ``24.0`` and ``true``; a ``float`` field
  accepts ints, and also a string that parses as a number, because PyYAML reads ``1e-6``
  (no dot) as a string.  Two-element ranges (``ema``, ``aspect_ratio``, ...) must be lists of
  exactly two numbers.
* Defaults: where the official code reads a key with a default (``cfg.get(key, default)``) we
  use that default; where it has none (the key is mandatory there) we use the value of the
  official ViT-L/16 file.  Exceptions, chosen because the official fallback silently builds a
  model that does not match any V-JEPA checkpoint: ``pretrain.frames_per_clip`` (official 1,
  ours 16) and ``pretrain.uniform_power`` (official False, ours True) in eval files.  A few keys
  have no sensible default and are required: ``logging.folder`` (pretraining) and
  ``data.num_classes``, ``pretrain.model_name``, ``pretrain.folder``, ``pretrain.checkpoint``
  (evaluation).
* Keys marked "ours" below are project extensions; the official code does not know them.
"""
from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import difflib
import logging
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import yaml

from .attention import BACKENDS as ATTENTION_BACKENDS
from .decoders import DECODERS
from .masks import MASK_COLLATORS, TRUNCATIONS
from .vision_transformer import VIT_PRESETS

__all__ = [
    "ConfigError",
    "ACCEPTED_AND_IGNORED",
    "MODEL_NAMES",
    "VIT_NUM_HEADS",
    "DTYPES",
    "EVAL_NAMES",
    "MASK_TYPES",
    "DEVICE_CHOICES",
    "ATTN_BACKENDS",
    "KERNEL_CHOICES",
    "PARALLEL_CHOICES",
    "MaskConfig",
    "DataConfig",
    "DataAugConfig",
    "LoggingConfig",
    "LossConfig",
    "MetaConfig",
    "ModelConfig",
    "OptimizationConfig",
    "PretrainConfig",
    "EvalDataConfig",
    "EvalHeadConfig",
    "EvalClassifierConfig",
    "EvalOptimizationConfig",
    "EvalPretrainConfig",
    "EvalMetaConfig",
    "EvalConfig",
    "load_config",
    "parse_override",
    "apply_overrides",
    "known_keys",
    "find_ignored_keys",
]

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# Constants
# ----------------------------------------------------------------------------------------------

#: Encoder variants (official V1 ``vit_*`` factories) and their head counts, from the model
#: presets (the predictor defaults to the encoder's head count, as in V1).
MODEL_NAMES = tuple(VIT_PRESETS)
VIT_NUM_HEADS = {name: preset["num_heads"] for name, preset in VIT_PRESETS.items()}
#: ``meta.dtype`` values.  Official: bfloat16/float16 turn on autocast + GradScaler, anything
#: else silently runs float32; we reject anything else instead.
DTYPES = ("float32", "bfloat16", "float16")
EVAL_NAMES = ("video_classification_frozen", "image_classification_frozen")
#: ``protocol`` values of eval files (ours): the frozen evaluation of the V1 code
#: (facebookresearch/jepa) or of V-JEPA 2 (facebookresearch/vjepa2); see vjepa_fast.probe.
EVAL_PROTOCOLS = ("v1", "v2")
#: ``data.train_augmentation`` values of eval files (ours; see EvalDataConfig).
TRAIN_AUGMENTATIONS = ("official", "crop", "none")
#: ``data.mask_type`` values (official: anything other than ``multiblock3d`` selects the
#: random-tube collator, which no official config uses).
MASK_TYPES = tuple(MASK_COLLATORS)
#: ``data.mask_truncation`` values (ours; see DataConfig).
MASK_TRUNCATIONS = tuple(TRUNCATIONS)
#: ``meta.device``: 'auto' (cuda if available else cpu), or an explicit torch device string.
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:<index>", "mps")
ATTN_BACKENDS = tuple(ATTENTION_BACKENDS)
KERNEL_CHOICES = ("auto", "triton", "torch")
#: ``meta.parallel`` values (ours).
PARALLEL_CHOICES = ("ddp", "fsdp")

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")

#: Keys that are accepted (so official files load unchanged) but have no effect here, with the
#: reason.  Keys are dotted paths; the first group applies to both kinds of file.
ACCEPTED_AND_IGNORED: Dict[str, str] = {
    # -- both kinds ---------------------------------------------------------------------------
    "nodes": "SLURM/submitit launch setting; launch with torchrun or srun instead "
             "(the world size comes from the launcher, not the file)",
    "tasks_per_node": "SLURM/submitit launch setting (GPUs per node); launch with torchrun or srun "
                      "instead",
    "cpus_per_task": "SLURM/submitit launch setting (V-JEPA 2 files); give the job its CPUs through "
                     "your launcher",
    "mem_per_gpu": "SLURM/submitit launch setting (V-JEPA 2 files); give the job its memory through "
                   "your launcher",
    # -- pretraining --------------------------------------------------------------------------
    "meta.use_sdpa": "no effect in the official code either: V1 VisionTransformer swallows it in "
                     "**kwargs and always uses SDPA; so do we (see meta.attn_backend)",
    "meta.eval_freq": "never read by the official V1 training loop",
    "meta.skip_batches": "official fast-forward of the (random, never restored) data stream after a "
                         "resume; it changes no expected result, so we do not replay it",
    "data.decode_one_clip": "the official code passes it only to its webdataset loader, never to "
                            "VideoDataset (the only dataset_type supported here)",
    "data.log_resource_utilization": "official psutil resource logging of the data workers; "
                                     "diagnostics only, not implemented",
    # -- evaluation ---------------------------------------------------------------------------
    "pretrain.use_sdpa": "no effect in the official code either (swallowed by VisionTransformer "
                         "**kwargs); SDPA is always used",
    "pretrain.use_silu": "no effect in the official V1 code (swallowed by VisionTransformer "
                         "**kwargs; SwiGLU is a V2 option); V1 encoders use GELU",
    "pretrain.tight_silu": "no effect in the official V1 code (swallowed by VisionTransformer "
                           "**kwargs)",
}


#: Why ``app: vjepa_droid`` files (V-JEPA 2-AC) are refused.
VJEPA_DROID_REFUSAL = (
    "app: 'vjepa_droid' is the V-JEPA 2-AC (action-conditioned) training config "
    "(official app/vjepa_droid: a frozen V-JEPA 2 encoder, a block-causal action/state predictor, "
    "DROID robot trajectories); it is not implemented here. This project trains and evaluates V-JEPA and "
    "V-JEPA 2 (app: vjepa; e.g. configs/pretrain/v2_vitg16_pretrain_256px_16f.yaml)")
#: Why ``eval_name: action_anticipation_frozen`` files (V-JEPA 2's EK100 eval) are refused.
ANTICIPATION_REFUSAL = (
    "eval_name: 'action_anticipation_frozen' (V-JEPA 2's EPIC-KITCHENS-100 action anticipation with "
    "encoder + predictor features) is not implemented here; the frozen evaluations are "
    "video_classification_frozen and image_classification_frozen")


class ConfigError(ValueError):
    """Invalid configuration: unknown key, wrong type or impossible value.

    Attributes ``source`` (file name or ``"<dict>"``), ``key`` (full dotted key of the first
    problem, may be None) and ``problems`` (every problem found, each a ConfigError; a file with
    several bad keys reports them all in one error).
    """

    def __init__(self, message: str, *, source: Optional[str] = None, key: Optional[str] = None,
                 problems: Optional[List["ConfigError"]] = None):
        self.source = source
        self.key = key
        self.bare_message = message
        self.problems = list(problems) if problems else [self]
        super().__init__(f"{source}: {message}" if source else message)

    @classmethod
    def combine(cls, problems: List["ConfigError"], source: Optional[str] = None) -> "ConfigError":
        """One error for several problems (the message of the only one when there is one)."""
        if len(problems) == 1:
            p = problems[0]
            return cls(p.bare_message, source=source or p.source, key=p.key)
        lines = "".join(f"\n  - {p.bare_message}" for p in problems)
        return cls(f"{len(problems)} problems:{lines}", source=source, key=problems[0].key, problems=problems)


# While a config is built and validated, every problem is collected here instead of raised at
# once, so that one error lists them all.
_COLLECTING: contextvars.ContextVar[Optional[List[ConfigError]]] = contextvars.ContextVar(
    "vjepa_fast_config_problems", default=None)


def _report(error: ConfigError) -> None:
    """Raise ``error``, or record it when a caller collects every problem."""
    sink = _COLLECTING.get()
    if sink is None:
        raise error
    sink.append(error)


@contextlib.contextmanager
def _collecting(source: Optional[str] = None):
    """Collect the problems reported inside; raise them as one :class:`ConfigError` at the end.
    Nested uses add to the outermost collector."""
    if _COLLECTING.get() is not None:
        yield
        return
    sink: List[ConfigError] = []
    token = _COLLECTING.set(sink)
    try:
        yield
    except ConfigError as e:
        sink.extend(e.problems)
    except (TypeError, KeyError, ZeroDivisionError, AttributeError):
        # A check that ran on a value already reported as invalid; the report says what is wrong.
        if not sink:
            raise
    finally:
        _COLLECTING.reset(token)
    if sink:
        raise ConfigError.combine(sink, source) from None


def _err(key: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"invalid value for '{key}': {value!r} ({why})", key=key)


# ----------------------------------------------------------------------------------------------
# Generic typed (de)serialisation of nested dataclasses
# ----------------------------------------------------------------------------------------------

_NoneType = type(None)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) is Union or isinstance(tp, types.UnionType)


def _type_name(tp: Any) -> str:
    if _is_union(tp):
        args = [a for a in typing.get_args(tp) if a is not _NoneType]
        names = " or ".join(_type_name(a) for a in args)
        return "null or " + names if _NoneType in typing.get_args(tp) else names
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        return f"a list of {len(args)} {_type_name(args[0])}s"
    if origin is list:
        (arg,) = typing.get_args(tp)
        return "a list of mappings" if dataclasses.is_dataclass(arg) else f"a list of {_type_name(arg)}"
    return {int: "int", float: "float", bool: "bool", str: "str"}.get(tp, str(tp))


def _type_error(key: str, tp: Any, value: Any) -> ConfigError:
    return ConfigError(
        f"key '{key}' expects {_type_name(tp)}, got {type(value).__name__} {value!r}", key=key)


def _hints(cls) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def known_keys(cls) -> List[str]:
    """All dotted leaf keys of config class ``cls`` (list items shown as ``mask[].key``)."""
    out: List[str] = []

    def walk(c, prefix):
        for name, tp in _hints(c).items():
            if name.startswith("_"):
                continue
            key = _join(prefix, name)
            inner = _list_item_dataclass(tp)
            if dataclasses.is_dataclass(tp):
                walk(tp, key)
            elif inner is not None:
                walk(inner, key + "[]")
            else:
                out.append(key)
    walk(cls, "")
    return out


def _list_item_dataclass(tp: Any):
    if typing.get_origin(tp) is list:
        (arg,) = typing.get_args(tp)
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _generic(key: str) -> str:
    """'mask[1].num_blocks' -> 'mask[].num_blocks'."""
    return re.sub(r"\[\d+\]", "[]", key)


def _suggest(root_cls, section_cls, prefix: str, bad: str) -> Optional[str]:
    """Closest known key to ``prefix.bad``: first among the keys of the same section, then a
    key with the same name in another section, then any dotted key."""
    names = [n for n in _hints(section_cls) if not n.startswith("_")]
    close = difflib.get_close_matches(bad, names, n=1, cutoff=0.6)
    if close:
        return _join(prefix, close[0])
    all_keys = known_keys(root_cls)
    sections = sorted({k.split(".")[0].replace("[]", "") for k in all_keys})
    same_leaf = [k for k in all_keys if k.rsplit(".", 1)[-1] == bad]
    if same_leaf:
        return same_leaf[0]
    if not prefix:
        close = difflib.get_close_matches(bad, sections, n=1, cutoff=0.6)
        if close:
            return close[0]
    full = _generic(_join(prefix, bad))
    close = difflib.get_close_matches(full, all_keys, n=1, cutoff=0.75)
    return close[0] if close else None


def _coerce(root_cls, tp: Any, value: Any, key: str) -> Any:
    if _is_union(tp):
        if value is None:
            if _NoneType in typing.get_args(tp):
                return None
            raise _type_error(key, tp, value)
        args = [a for a in typing.get_args(tp) if a is not _NoneType]
        if len(args) == 1:
            return _coerce(root_cls, args[0], value, key)
        # Several types (e.g. ``bool or int``): the first that takes the value as it is.
        for arg in args:
            try:
                return _coerce(root_cls, arg, value, key)
            except ConfigError:
                continue
        raise _type_error(key, tp, value)
    if dataclasses.is_dataclass(tp):
        if value is None:  # an empty section (``data_aug:``) means "all defaults"
            value = {}
        return _build(root_cls, tp, value, key)
    if value is None:
        raise _type_error(key, tp, value)
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise _type_error(key, tp, value)
        return tuple(_coerce(root_cls, a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, tp, value)
        return [_coerce(root_cls, arg, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key, tp, value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(key, tp, value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise _type_error(key, tp, value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _type_error(key, tp, value)
    raise TypeError(f"unsupported config field type {tp!r} for '{key}'")  # programming error


def _build(root_cls, cls, data: Any, prefix: str):
    """``cls`` from the mapping ``data``. Unknown keys and wrong types are reported (see
    :func:`_report`); while collecting, such a key keeps its default so the rest can be checked."""
    if not isinstance(data, dict):
        where = f"'{prefix}'" if prefix else "the top level"
        _report(ConfigError(f"{where} must be a mapping, got {type(data).__name__} {data!r}",
                            key=prefix or None))
        data = {}
    hints = _hints(cls)
    kwargs = {}
    for k, v in data.items():
        if not isinstance(k, str) or k.startswith("_") or k not in hints:
            full = _join(prefix, str(k))
            msg = f"unknown key '{full}'"
            hint = _suggest(root_cls, cls, prefix, str(k))
            if hint:
                msg += f"; did you mean '{hint}'?"
            _report(ConfigError(msg, key=full))
            continue
        try:
            kwargs[k] = _coerce(root_cls, hints[k], v, _join(prefix, k))
        except ConfigError as e:
            _report(e)
    return cls(**kwargs)


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not f.name.startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------

# Each check reports a problem (raised, or collected: see _collecting) and returns whether the
# value passed, so that checks which need a valid value can be skipped after a failed one.
def _check(cond: bool, key: str, value: Any, why: str) -> bool:
    if not cond:
        _report(_err(key, value, why))
    return bool(cond)


def _check_range(key: str, rng: Tuple[float, float], lo: float = 0.0, hi: Optional[float] = None,
                 lo_open: bool = False) -> bool:
    a, b = rng
    return (_check(a <= b, key, list(rng), "first value must be <= second")
            and (_check(a > lo, key, list(rng), f"values must be > {lo}") if lo_open
                 else _check(a >= lo, key, list(rng), f"values must be >= {lo}"))
            and (hi is None or _check(b <= hi, key, list(rng), f"values must be <= {hi}")))


def _check_required(key: str, value: Any) -> bool:
    if value is None:
        _report(ConfigError(f"required key '{key}' is missing (or null)", key=key))
        return False
    return True


def _check_choice(key: str, value: str, choices: Iterable[str]) -> bool:
    choices = tuple(choices)
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        extra = f"; did you mean {close[0]!r}?" if close else ""
        _report(_err(key, value, f"expected one of {', '.join(choices)}{extra}"))
        return False
    return True


def _check_runtime(prefix: str, device: str, attn_backend: str, kernels: str) -> None:
    _check(bool(_DEVICE_RE.match(device)), f"{prefix}.device", device,
           f"expected one of {', '.join(DEVICE_CHOICES)}")
    _check_choice(f"{prefix}.attn_backend", attn_backend, ATTN_BACKENDS)
    _check_choice(f"{prefix}.kernels", kernels, KERNEL_CHOICES)


# ----------------------------------------------------------------------------------------------
# Pretraining config
# ----------------------------------------------------------------------------------------------

@dataclass
class MaskConfig:
    """One multiblock-3D mask generator (official ``_MaskGenerator``; defaults are its
    constructor defaults, used when a key is missing)."""
    aspect_ratio: Tuple[float, float] = (0.3, 3.0)
    num_blocks: int = 1
    spatial_scale: Tuple[float, float] = (0.2, 0.8)
    temporal_scale: Tuple[float, float] = (1.0, 1.0)
    max_temporal_keep: float = 1.0
    max_keep: Optional[int] = None
    #: V-JEPA 2 collator options (need data.dataset_fpcs; every V2 file sets full_complement: false):
    #: targets = every token not in the truncated context; context = every token not in the
    #: truncated targets; context and targets swapped.
    full_complement: bool = False
    pred_full_complement: bool = False
    inv_block: bool = False

    def validate(self, prefix: str = "mask[0]") -> None:
        _check_range(f"{prefix}.aspect_ratio", self.aspect_ratio, lo=0.0, lo_open=True)
        _check(self.num_blocks >= 1, f"{prefix}.num_blocks", self.num_blocks, "must be >= 1")
        _check_range(f"{prefix}.spatial_scale", self.spatial_scale, lo=0.0, hi=1.0, lo_open=True)
        _check_range(f"{prefix}.temporal_scale", self.temporal_scale, lo=0.0, hi=1.0, lo_open=True)
        _check(0.0 < self.max_temporal_keep <= 1.0, f"{prefix}.max_temporal_keep",
               self.max_temporal_keep, "must be in (0, 1]")
        if self.max_keep is not None:
            _check(self.max_keep >= 1, f"{prefix}.max_keep", self.max_keep, "must be >= 1 or null")

    def to_dict(self) -> Dict[str, Any]:
        """Official YAML keys (ranges as lists), as the official collator reads them; the V-JEPA 2
        options only when set (the V1 collator has none)."""
        d = _to_plain(self)
        for flag in ("full_complement", "pred_full_complement", "inv_block"):
            if not d[flag]:
                del d[flag]
        return d


def _official_masks() -> List[MaskConfig]:
    """The two mask generators of every official V1 pretraining file."""
    return [
        MaskConfig(aspect_ratio=(0.75, 1.5), num_blocks=8, spatial_scale=(0.15, 0.15),
                   temporal_scale=(1.0, 1.0), max_temporal_keep=1.0, max_keep=None),
        MaskConfig(aspect_ratio=(0.75, 1.5), num_blocks=2, spatial_scale=(0.7, 0.7),
                   temporal_scale=(1.0, 1.0), max_temporal_keep=1.0, max_keep=None),
    ]


@dataclass
class DataConfig:
    datasets: List[str] = field(default_factory=list)
    #: Per-dataset sampling weights (official: ``w_d / n_d`` per sample); null = uniform over samples.
    datasets_weights: Optional[List[float]] = None
    dataset_type: str = "VideoDataset"
    #: Read from the data section, as in the official training script.
    mask_type: str = "multiblock3d"
    #: ours: how the multiblock collator cuts every sample's context and target indices to the
    #: batch minimum. ``earliest`` (official, default): the first indices, which concentrates both in
    #: the first frames; ``random``: a uniformly random subset of each sample's indices, kept sorted
    #: (README: "Masks"). No effect on random_tube masks (every sample keeps the same count).
    mask_truncation: str = "earliest"
    decode_one_clip: Optional[bool] = None  # ignored, see ACCEPTED_AND_IGNORED
    log_resource_utilization: Optional[bool] = None  # ignored
    batch_size: int = 24  # per process
    num_clips: int = 1
    num_frames: int = 16
    tubelet_size: int = 2
    sampling_rate: int = 4  # frame step, in native frames
    #: pixels of the square training crop; a [height, width] pair is accepted when both are equal
    #: (the official trainers build square models and masks only)
    crop_size: Union[int, List[int]] = 224
    patch_size: int = 16
    pin_mem: bool = False
    num_workers: int = 1
    #: keep the DataLoader workers between passes (official V2 key, default true; V1 always kept them)
    persistent_workers: bool = True
    filter_short_videos: bool = False
    clip_duration: Optional[float] = None  # seconds; overrides sampling_rate when set
    #: V-JEPA 2: frames per clip of each entry of ``datasets`` (one per index file). Set, the run follows
    #: the V2 trainer (PretrainConfig.is_v2): batches mix clip lengths, one mask set per length, the model
    #: is built for max(dataset_fpcs) frames (``num_frames`` then defaults to it).
    dataset_fpcs: Optional[List[int]] = None
    #: V-JEPA 2: frames per second to sample at: frame step = ceil(video fps) // fps (official); excludes
    #: clip_duration; sampling_rate is then not used (the V2 trainer never reads a frame step).
    fps: Optional[float] = None
    #: ours: generate random clips on the device instead of decoding videos (demos, benchmarks).
    synthetic: bool = False
    #: ours: video decoder (vjepa_fast.decoders): auto = decord, else torchcodec, else PyAV.
    decoder: str = "auto"

    def validate(self, p: str = "data") -> None:
        positive = [_check(getattr(self, name) >= 1, f"{p}.{name}", getattr(self, name), "must be >= 1")
                    for name in ("batch_size", "num_clips", "num_frames", "tubelet_size", "sampling_rate",
                                 "crop_size", "patch_size")]
        if self.fps is not None:
            _check(self.fps > 0 and math.isfinite(self.fps), f"{p}.fps", self.fps, "must be > 0 or null")
            if self.clip_duration is not None:
                _check(False, f"{p}.fps", self.fps,
                       f"set either {p}.fps or {p}.clip_duration (the official loader takes exactly one way "
                       f"to the frame step), not both")
        if self.dataset_fpcs is not None and all(positive):
            fpcs = self.dataset_fpcs
            if _check(len(fpcs) >= 1, f"{p}.dataset_fpcs", fpcs, "must list one clip length per dataset"):
                _check(all(f >= self.tubelet_size and f % self.tubelet_size == 0 for f in fpcs),
                       f"{p}.dataset_fpcs", fpcs, f"every clip length must be a positive multiple of "
                       f"{p}.tubelet_size={self.tubelet_size}")
                if not self.synthetic:
                    _check(len(fpcs) == len(self.datasets), f"{p}.dataset_fpcs", fpcs,
                           f"need one clip length per entry of {p}.datasets ({len(self.datasets)})")
                _check(self.num_clips == 1, f"{p}.num_clips", self.num_clips,
                       "the V-JEPA 2 trainer (data.dataset_fpcs) uses one clip per sample")
                _check(self.mask_type == "multiblock3d", f"{p}.mask_type", self.mask_type,
                       "V-JEPA 2 multi-length batches (data.dataset_fpcs) have only the multiblock3d "
                       "collator")
        _check(self.num_workers >= 0, f"{p}.num_workers", self.num_workers, "must be >= 0")
        if all(positive):
            image = " (image pretraining: num_frames 1 with tubelet_size 1)" if self.num_frames == 1 else ""
            _check(self.num_frames % self.tubelet_size == 0, f"{p}.num_frames", self.num_frames,
                   f"must be divisible by {p}.tubelet_size={self.tubelet_size}{image}")
            _check(self.crop_size % self.patch_size == 0, f"{p}.crop_size", self.crop_size,
                   f"must be divisible by {p}.patch_size={self.patch_size}")
        if self.clip_duration is not None:
            _check(self.clip_duration > 0, f"{p}.clip_duration", self.clip_duration, "must be > 0 or null")
        if self.datasets_weights is not None:
            _check(len(self.datasets_weights) == len(self.datasets), f"{p}.datasets_weights",
                   self.datasets_weights,
                   f"need one weight per entry of {p}.datasets ({len(self.datasets)})")
            _check(all(w >= 0 for w in self.datasets_weights) and sum(self.datasets_weights) > 0,
                   f"{p}.datasets_weights", self.datasets_weights, "must be >= 0 with a positive sum")
        _check(self.dataset_type.lower() == "videodataset", f"{p}.dataset_type", self.dataset_type,
               "only VideoDataset is supported")
        _check_choice(f"{p}.mask_type", self.mask_type, MASK_TYPES)
        _check_choice(f"{p}.decoder", self.decoder, DECODERS)
        _check_choice(f"{p}.mask_truncation", self.mask_truncation, MASK_TRUNCATIONS)


@dataclass
class DataAugConfig:
    auto_augment: bool = False
    motion_shift: bool = False
    random_resize_aspect_ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    random_resize_scale: Tuple[float, float] = (0.3, 1.0)
    reprob: float = 0.0

    def validate(self, p: str = "data_aug") -> None:
        _check_range(f"{p}.random_resize_aspect_ratio", self.random_resize_aspect_ratio, lo_open=True)
        _check_range(f"{p}.random_resize_scale", self.random_resize_scale, hi=1.0, lo_open=True)
        _check(0.0 <= self.reprob <= 1.0, f"{p}.reprob", self.reprob, "must be in [0, 1]")


@dataclass
class LoggingConfig:
    folder: Optional[str] = None  # required
    write_tag: str = "jepa"
    #: ours: print/CSV-log every N steps (official: CSV every step, stdout every 10).
    log_every: int = 10
    #: ours: number of periodic checkpoints to keep besides ``{write_tag}-latest.pth.tar``.
    keep_last: int = 2
    #: ours: also write TensorBoard scalars (loss, lr, wd, throughput) to ``{folder}/tensorboard``
    #: (needs the ``tensorboard`` package).
    tensorboard: bool = False

    def validate(self, p: str = "logging") -> None:
        if _check_required(f"{p}.folder", self.folder):
            _check(bool(self.folder), f"{p}.folder", self.folder, "must be a non-empty path")
        _check(bool(self.write_tag), f"{p}.write_tag", self.write_tag, "must be non-empty")
        _check(self.log_every >= 1, f"{p}.log_every", self.log_every, "must be >= 1")
        _check(self.keep_last >= 0, f"{p}.keep_last", self.keep_last, "must be >= 0")


@dataclass
class LossConfig:
    loss_exp: float = 1.0
    reg_coeff: float = 0.0

    def validate(self, p: str = "loss") -> None:
        _check(self.loss_exp > 0, f"{p}.loss_exp", self.loss_exp, "must be > 0")
        _check(self.reg_coeff >= 0, f"{p}.reg_coeff", self.reg_coeff, "must be >= 0")


@dataclass
class MetaConfig:
    #: continue the run in logging.folder from its checkpoint (model, optimizer, schedules, masks,
    #: data position, step). With ``init_from`` also set, a folder without a checkpoint yet starts
    #: from ``init_from`` (so one config both starts and, after a restart, resumes such a run).
    load_checkpoint: bool = False
    read_checkpoint: Optional[str] = None  # file name inside logging.folder; null = latest
    #: ours: start a new run from the encoder, predictor and target weights of this pretraining
    #: checkpoint (a path), at step 0 with a fresh optimizer, schedules, masks and data order
    #: (fine-tuning, a cooldown). The clip size and frame count may differ from the checkpoint's
    #: (the sin-cos positions are rebuilt); the model and patch geometry must match.
    init_from: Optional[str] = None
    #: ours: on resume, accept a config whose geometry (data.crop_size, num_frames, patch_size,
    #: tubelet_size), model or masks differ from the checkpoint's. Off: such a resume is refused
    #: with every difference listed.
    allow_resume_changes: bool = False
    seed: int = 0
    #: save ``{write_tag}-e{epoch}.pth.tar`` every N epochs as well; <= 0 disables (official).
    save_every_freq: int = -1
    skip_batches: Optional[int] = None  # ignored
    eval_freq: Optional[int] = None  # ignored
    use_sdpa: Optional[bool] = None  # ignored
    dtype: str = "bfloat16"
    #: ours: 'auto' (cuda if available, else cpu) or a torch device string.
    device: str = "auto"
    #: ours: attention implementation ('auto' picks the fastest available SDPA backend).
    attn_backend: str = "auto"
    #: ours: fused kernels, 'auto' = triton on CUDA, torch elsewhere.
    kernels: str = "auto"
    #: ours: torch.compile the models.
    compile: bool = False
    #: ours: with ``compile`` on CUDA, replay the static target-encoder forward as a CUDA graph
    #: (torch.compile mode ``reduce-overhead`` for that region only; the student's lengths change).
    cuda_graphs: bool = False
    #: ours: multi-process data parallelism under torchrun: 'ddp' (DistributedDataParallel) or
    #: 'fsdp' (FSDP2 ``fully_shard`` of the encoder, predictor and target, for huge/giant models).
    #: Single-process runs ignore it.
    parallel: str = "ddp"
    #: ours: peak accelerator TFLOP/s used for the MFU in the progress line; null = the
    #: VJEPA_FAST_PEAK_TFLOPS env variable, else a table of known GPUs, else a measured matmul.
    peak_tflops: Optional[float] = None
    #: ours: AdamW step and EMA as one fused pass (``kernels.fused_adamw_ema_``) over the same
    #: torch AdamW state (checkpoints unchanged). null = on when the device is CUDA and the kernels
    #: resolve to triton, off otherwise; never under meta.parallel=fsdp.
    fused_optimizer: Optional[bool] = None
    #: ours: under bf16/fp16 autocast, run the target encoder's forward on a low-precision copy of
    #: its Linear/Conv weights, refreshed after each EMA update (bit-identical to autocast; the fp32
    #: target stays the master that checkpoints save). null = on under bf16/fp16 except with
    #: meta.parallel=fsdp; ignored in float32.
    target_working_copy: Optional[bool] = None
    #: ours: run the context encoder and the predictor once over all masks' tokens packed into one
    #: sequence (attention kept within each mask; ``vjepa_fast/packed.py``) instead of once per mask.
    #: Same math up to float rounding.
    pack_context: bool = False
    #: ours: patch-embed only the context tubelets (the conv as a linear on gathered raw patches)
    #: instead of the whole clip. Same math up to float rounding.
    sparse_patch_embed: bool = False
    #: ours: a JSON table from ``benchmarks/bench_attention.py --out`` to load for
    #: ``attn_backend: tuned`` (null = the VJEPA_FAST_ATTN_TABLE env variable, if set).
    attn_table: Optional[str] = None
    #: official V2 key: Python's garbage collector off during training, one collection every 50 steps
    sync_gc: bool = False

    def __post_init__(self):
        if isinstance(self.dtype, str):
            self.dtype = self.dtype.lower()  # the official code lower-cases it too

    def validate(self, p: str = "meta") -> None:
        _check_choice(f"{p}.dtype", self.dtype, DTYPES)
        _check_runtime(p, self.device, self.attn_backend, self.kernels)
        _check_choice(f"{p}.parallel", self.parallel, PARALLEL_CHOICES)
        if self.peak_tflops is not None:
            _check(self.peak_tflops > 0, f"{p}.peak_tflops", self.peak_tflops, "must be > 0 or null")
        if self.attn_table is not None:
            _check(os.path.isfile(self.attn_table), f"{p}.attn_table", self.attn_table, "file not found")
        if self.init_from is not None:
            _check(bool(self.init_from), f"{p}.init_from", self.init_from, "must be a checkpoint path or null")


@dataclass
class ModelConfig:
    model_name: str = "vit_large"
    pred_depth: int = 12
    pred_embed_dim: int = 384
    uniform_power: bool = True
    use_mask_tokens: bool = True
    zero_init_mask_tokens: bool = True
    #: ours: predictor heads; null = encoder heads (official V1 behaviour).
    pred_num_heads: Optional[int] = None
    #: ours: encoder width overriding the ``model_name`` preset (null = preset); must be divisible
    #: by the preset's head count. For small demo/test models only.
    embed_dim: Optional[int] = None
    #: ours: encoder depth (number of blocks) overriding the preset (null = preset).
    depth: Optional[int] = None
    #: ours: input channels of the clips (3 = RGB; e.g. 1 for grey or more for multispectral video).
    #: Decoded videos are RGB, so other values need data.synthetic or clips of your own (Python API:
    #: ``Trainer(cfg, source=...)``).
    in_chans: int = 3
    #: V-JEPA 2: 3D RoPE in every encoder and predictor block instead of sin-cos position tables.
    use_rope: bool = False
    #: V-JEPA 2: recompute block activations in the backward (less memory, about a third more
    #: compute). true: every block of the encoder and the predictor (official); an int N (ours): the
    #: first N blocks of each (0 = none).
    use_activation_checkpointing: Union[bool, int] = False
    #: V-JEPA 2: SwiGLU MLPs in the encoder / the predictor (``wide_silu``: 2/3 of the width, rounded up
    #: to a multiple of 8); off in every official file.
    use_silu: bool = False
    use_pred_silu: bool = False
    wide_silu: bool = True
    #: V-JEPA 2: compile the models (official ``nn.Module.compile``); here it turns meta.compile on.
    compile_model: bool = False

    def validate(self, p: str = "model") -> None:
        known_model = _check_choice(f"{p}.model_name", self.model_name, MODEL_NAMES)
        _check(self.in_chans >= 1, f"{p}.in_chans", self.in_chans, "must be >= 1")
        _check(self.pred_depth >= 1, f"{p}.pred_depth", self.pred_depth, "must be >= 1")
        _check(self.pred_embed_dim >= 1, f"{p}.pred_embed_dim", self.pred_embed_dim, "must be >= 1")
        _check(self.use_mask_tokens is True, f"{p}.use_mask_tokens", self.use_mask_tokens,
               "only true is supported: the official false path (noised target features) is unused "
               "by every official config and not implemented")
        heads_ok = self.pred_num_heads is None or _check(
            self.pred_num_heads >= 1, f"{p}.pred_num_heads", self.pred_num_heads, "must be >= 1 or null")
        if self.embed_dim is not None and known_model:
            _check(self.embed_dim >= 1 and self.embed_dim % self.encoder_num_heads == 0,
                   f"{p}.embed_dim", self.embed_dim,
                   f"must be a positive multiple of the {self.model_name} head count {self.encoder_num_heads}")
        if self.depth is not None:
            _check(self.depth >= 1, f"{p}.depth", self.depth, "must be >= 1 or null")
        ac = self.use_activation_checkpointing
        if not isinstance(ac, bool):
            _check(ac >= 0, f"{p}.use_activation_checkpointing", ac,
                   "must be true, false or a number of blocks >= 0")
        if heads_ok and (known_model or self.pred_num_heads is not None):
            heads = self.predictor_num_heads
            _check(self.pred_embed_dim % heads == 0, f"{p}.pred_embed_dim", self.pred_embed_dim,
                   f"must be divisible by the predictor head count {heads}")

    @property
    def encoder_num_heads(self) -> int:
        return VIT_NUM_HEADS[self.model_name]

    @property
    def predictor_num_heads(self) -> int:
        return self.pred_num_heads if self.pred_num_heads is not None else self.encoder_num_heads


@dataclass
class OptimizationConfig:
    #: iterations per "epoch"; null = batches per pass over the data (official fallback).
    ipe: Optional[int] = None
    ipe_scale: float = 1.0
    clip_grad: Optional[float] = None  # null/0 = no clipping; applied only when epoch > warmup
    weight_decay: float = 0.04
    final_weight_decay: float = 0.4
    epochs: int = 300
    warmup: float = 40.0  # epochs
    start_lr: float = 0.0002
    lr: float = 0.000625
    final_lr: float = 1.0e-06
    ema: Tuple[float, float] = (0.998, 1.0)
    #: ours: stop after this many optimizer steps (schedules keep their epochs*ipe shape);
    #: null = epochs * ipe.
    max_steps: Optional[int] = None
    #: AdamW betas and eps (official V2 keys; V1 used these values fixed).
    betas: Tuple[float, float] = (0.9, 0.999)
    eps: float = 1.0e-8
    #: V-JEPA 2 cooldown: lr decays linearly from ``lr`` to ``final_lr`` over
    #: ``int(ipe_scale*epochs*ipe)`` steps (no warmup), and the run starts from ``anneal_ckpt``:
    #: its encoder, predictor, target and AdamW moments, at step 0 (official ``is_anneal``).
    is_anneal: bool = False
    #: the pretraining checkpoint a cooldown starts from (ours, or the official V2 ``e{epoch}.pt``)
    anneal_ckpt: Optional[str] = None
    #: a cooldown whose logging.folder already holds its checkpoint continues it (with
    #: meta.load_checkpoint); false refuses to start over it (official: starts again from anneal_ckpt)
    resume_anneal: bool = False

    def validate(self, p: str = "optimization") -> None:
        if self.ipe is not None:
            _check(self.ipe >= 1, f"{p}.ipe", self.ipe, "must be >= 1 or null")
        _check(self.ipe_scale > 0, f"{p}.ipe_scale", self.ipe_scale, "must be > 0")
        if self.clip_grad is not None:
            _check(self.clip_grad >= 0, f"{p}.clip_grad", self.clip_grad, "must be >= 0 or null")
        for name in ("weight_decay", "final_weight_decay", "start_lr", "lr", "final_lr", "warmup"):
            v = getattr(self, name)
            _check(v >= 0 and math.isfinite(v), f"{p}.{name}", v, "must be a finite number >= 0")
        epochs_ok = _check(self.epochs >= 1, f"{p}.epochs", self.epochs, "must be >= 1")
        _check(all(0.0 <= m <= 1.0 for m in self.ema), f"{p}.ema", list(self.ema),
               "momenta must be in [0, 1]")
        _check(all(0.0 <= b < 1.0 for b in self.betas), f"{p}.betas", list(self.betas), "must be in [0, 1)")
        _check(self.eps > 0, f"{p}.eps", self.eps, "must be > 0")
        if self.is_anneal:
            _check(bool(self.anneal_ckpt), f"{p}.anneal_ckpt", self.anneal_ckpt,
                   f"{p}.is_anneal is true: name the pretraining checkpoint the cooldown starts from")
        if self.max_steps is not None:
            _check(self.max_steps >= 1, f"{p}.max_steps", self.max_steps, "must be >= 1 or null")
            if self.ipe is not None and self.ipe >= 1 and epochs_ok:
                _check(self.max_steps <= self.epochs * self.ipe, f"{p}.max_steps", self.max_steps,
                       f"must be <= epochs*ipe = {self.epochs * self.ipe}")


class _RootConfig:
    """Construction and serialisation shared by the two kinds of file."""

    _KIND = ""  # what this kind of file is called, and the other kind, for error messages
    _OTHER_KIND = ""

    @classmethod
    def from_dict(cls, d: Dict[str, Any], source: str = "<dict>"):
        """Build and validate from a plain (YAML-like) dict; errors name ``source``."""
        return _from_dict(cls, d, source)

    @classmethod
    def from_yaml(cls, path: Union[str, os.PathLike], overrides: Iterable[str] = ()):
        cfg = load_config(path, overrides)
        if not isinstance(cfg, cls):
            raise ConfigError(f"is {cls._OTHER_KIND}, not {cls._KIND}", source=str(path))
        return cfg

    def validate(self, source: Optional[str] = None):
        """Check every section (``_validate_fields``); one :class:`ConfigError` lists every problem
        and names ``source`` when given."""
        with _collecting(source):
            for name in ("nodes", "tasks_per_node"):
                v = getattr(self, name)
                if v is not None:
                    _check(v >= 1, name, v, "must be >= 1")
            self._validate_fields()
        return self

    def _validate_fields(self) -> None:
        raise NotImplementedError

    def to_dict(self) -> Dict[str, Any]:
        """Plain nested dict (official key names, ranges as lists); ``from_dict`` round-trips it."""
        return _to_plain(self)

    def save_yaml(self, path: Union[str, os.PathLike]) -> None:
        _save_yaml(self.to_dict(), path)


@dataclass
class PretrainConfig(_RootConfig):
    """A V-JEPA pretraining run (official ``configs/pretrain/*.yaml`` layout)."""
    _KIND = "a pretraining config"
    _OTHER_KIND = "an evaluation config (has 'eval_name')"

    app: str = "vjepa"
    nodes: Optional[int] = None  # ignored
    tasks_per_node: Optional[int] = None  # ignored
    cpus_per_task: Optional[int] = None  # ignored
    mem_per_gpu: Optional[str] = None  # ignored
    #: the run folder as V-JEPA 2 files give it (top level); the same as logging.folder
    folder: Optional[str] = None
    data: DataConfig = field(default_factory=DataConfig)
    data_aug: DataAugConfig = field(default_factory=DataAugConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    mask: List[MaskConfig] = field(default_factory=_official_masks)
    meta: MetaConfig = field(default_factory=MetaConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)

    def _normalise(self, raw: Dict[str, Any]) -> None:
        """Settings that another key of the file fixes (called once after building, with the raw file
        dict, so that a key written out can be told from a default): ``folder`` fills
        ``logging.folder``; ``data.dataset_fpcs`` sets ``data.num_frames`` to its maximum (what the
        official V2 trainer builds the model for); an equal-sided ``data.crop_size`` pair becomes an
        int; ``model.compile_model`` turns ``meta.compile`` on. A contradiction is reported."""
        data_raw = raw.get("data") if isinstance(raw.get("data"), dict) else {}
        if self.folder is not None:
            if self.logging.folder is None:
                self.logging.folder = self.folder
            else:
                _check(self.logging.folder == self.folder, "folder", self.folder,
                       f"differs from logging.folder={self.logging.folder!r}; give the run folder once")
        crop = self.data.crop_size
        if isinstance(crop, list):
            if _check(len(crop) == 2 and crop[0] == crop[1], "data.crop_size", crop,
                      "a [height, width] pair must have equal sides: pretraining builds square models and "
                      "masks (so does the official trainer); give one int"):
                self.data.crop_size = crop[0]
            else:
                self.data.crop_size = 224  # keeps the other checks meaningful; the problem is reported
        fpcs = self.data.dataset_fpcs
        if fpcs:
            if "num_frames" in data_raw and data_raw["num_frames"] != max(fpcs):
                _check(False, "data.num_frames", data_raw["num_frames"],
                       f"a V-JEPA 2 run builds its model for max(data.dataset_fpcs)={max(fpcs)} frames; "
                       "remove data.num_frames or make it equal")
            self.data.num_frames = max(fpcs)
        if self.model.compile_model:
            self.meta.compile = True

    @property
    def is_v2(self) -> bool:
        """Whether the run follows the V-JEPA 2 trainer (vjepa2 ``app/vjepa/train.py``): set by
        ``data.dataset_fpcs``. Then batches mix clip lengths (one mask set and one forward per length,
        the loss the mean over (length, mask config) pairs), the predictor has ``len(mask) *
        len(dataset_fpcs)`` mask tokens and the one of length group g is used, the models keep V2's
        initialisation (depth rescale), dataset weights are sampled with replacement, and a cooldown
        (``optimization.is_anneal``) is possible."""
        return self.data.dataset_fpcs is not None

    @property
    def num_mask_tokens(self) -> int:
        """V1: one per mask config; V2: ``len(mask) * len(dataset_fpcs)`` (official ``train.py``)."""
        return len(self.mask) * (len(self.data.dataset_fpcs) if self.is_v2 else 1)

    def _validate_fields(self) -> None:
        if self.app == "vjepa_droid":
            _report(ConfigError(VJEPA_DROID_REFUSAL, key="app"))
        else:
            _check(self.app == "vjepa", "app", self.app, "only 'vjepa' is supported")
        for section in (self.data, self.data_aug, self.logging, self.loss):
            _section(section.validate)
        _check(len(self.mask) >= 1, "mask", [], "need at least one mask generator")
        for i, m in enumerate(self.mask):
            _section(m.validate, f"mask[{i}]")
        for section in (self.meta, self.model, self.optimization):
            _section(section.validate)
        if self.data.synthetic:
            _check(self.optimization.ipe is not None, "optimization.ipe", None,
                   "must be set when data.synthetic is true (there is no dataset length)")
        _section(self._validate_v2)

    def _validate_v2(self) -> None:
        """Keys that only the V-JEPA 2 trainer (data.dataset_fpcs) honours."""
        if self.is_v2:
            _check(self.loss.reg_coeff == 0, "loss.reg_coeff", self.loss.reg_coeff,
                   "the V-JEPA 2 objective has no regulariser (data.dataset_fpcs is set)")
            if self.optimization.is_anneal and self.meta.init_from:
                _check(False, "meta.init_from", self.meta.init_from,
                       "a cooldown (optimization.is_anneal) starts from optimization.anneal_ckpt; remove one")
            return
        need = "set data.dataset_fpcs (one clip length per dataset) to run the V-JEPA 2 trainer"
        for i, m in enumerate(self.mask):
            for flag in ("full_complement", "pred_full_complement", "inv_block"):
                if getattr(m, flag):
                    _check(False, f"mask[{i}].{flag}", True,
                           f"is an option of the V-JEPA 2 mask collator: {need}")
        if self.optimization.is_anneal:
            _check(False, "optimization.is_anneal", True,
                   f"the cooldown is part of the V-JEPA 2 recipe: {need}")
        if self.data.fps is not None:
            _check(False, "data.fps", self.data.fps,
                   f"fps-based frame steps are the V-JEPA 2 loader's: {need}, or use data.sampling_rate / "
                   "data.clip_duration")

    # -- convenience -----------------------------------------------------------------------------
    def mask_dicts(self) -> List[Dict[str, Any]]:
        """The mask generator configs as dicts with the official keys."""
        return [m.to_dict() for m in self.mask]

    @property
    def grid_size(self) -> Tuple[int, int, int]:
        """Token grid (T', H', W') of one clip."""
        d = self.data
        return (d.num_frames // d.tubelet_size, d.crop_size // d.patch_size, d.crop_size // d.patch_size)

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid_size
        return t * h * w

    @property
    def mixed_precision(self) -> bool:
        """Official: bfloat16/float16 → autocast + GradScaler (the scaler even for bf16)."""
        return self.meta.dtype != "float32"

    def iterations_per_epoch(self, loader_len: Optional[int] = None) -> int:
        """``optimization.ipe``, or the data loader length when ipe is null (official)."""
        ipe = self.optimization.ipe if self.optimization.ipe is not None else loader_len
        if ipe is None:
            raise ConfigError("optimization.ipe is null: pass the data loader length", key="optimization.ipe")
        return ipe

    def total_steps(self, loader_len: Optional[int] = None) -> int:
        """Optimizer steps this run performs: ``max_steps`` if set, else ``epochs * ipe``."""
        o = self.optimization
        full = o.epochs * self.iterations_per_epoch(loader_len)
        return min(o.max_steps, full) if o.max_steps is not None else full

    def schedule_steps(self, loader_len: Optional[int] = None) -> int:
        """T_max of the lr/wd/EMA schedules: ``int(ipe_scale * epochs * ipe)`` (official)."""
        o = self.optimization
        return int(o.ipe_scale * o.epochs * self.iterations_per_epoch(loader_len))

    def warmup_steps(self, loader_len: Optional[int] = None) -> int:
        """``int(warmup * ipe)`` (official)."""
        return int(self.optimization.warmup * self.iterations_per_epoch(loader_len))

    @property
    def latest_checkpoint_path(self) -> str:
        return os.path.join(self.logging.folder, f"{self.logging.write_tag}-latest.pth.tar")

    def log_path(self, rank: int = 0) -> str:
        return os.path.join(self.logging.folder, f"{self.logging.write_tag}_r{rank}.csv")


# ----------------------------------------------------------------------------------------------
# Evaluation config
# ----------------------------------------------------------------------------------------------

@dataclass
class EvalDataConfig:
    # -- video evals
    dataset_train: Optional[str] = None
    dataset_val: Optional[str] = None
    dataset_type: str = "VideoDataset"
    num_classes: Optional[int] = None  # required
    frames_per_clip: int = 16
    num_segments: int = 1
    num_views_per_segment: int = 1
    #: frame step of the eval clips.  The official video eval reads ``pretrain.frame_step``
    #: (default 4) and ignores this key; both are 4 in every official file.  We read this key and
    #: reject a file where ``pretrain.frame_step`` is set to a different value.
    frame_step: int = 4
    # -- image evals
    root_path: Optional[str] = None
    image_folder: Optional[str] = None
    #: image evals only (video evals read optimization.resolution, as the official code does)
    resolution: Optional[int] = None
    dataset_name: Optional[str] = None
    #: ours: data-loader workers (the official eval hard-codes 12).
    num_workers: int = 12
    #: ours: probe training augmentation. ``official``: the official eval's train transform
    #: (video: RandAugment rand-m7-n4-mstd0.5-inc1, random-resized-crop scale (0.08, 1) aspect
    #: (3/4, 4/3), no flip, random erasing p=0.25; images: random-resized-crop + flip + erasing,
    #: without timm's AutoAugment); ``crop``: the crop only; ``none``: the deterministic single
    #: centre view of the eval transform (required by ``cache_train_features``).
    train_augmentation: str = "official"
    #: ours: encode the validation views once per run and keep the frozen features in memory
    #: (on the run's device, float32); later epochs only run the probes.  Costs
    #: ``samples x views x segments x tokens_per_segment x embed_dim x 4 bytes``; no disk cache.
    cache_eval_features: bool = False
    #: ours: same for the training clips (needs ``train_augmentation: none``; the clips of epoch 0
    #: are reused every epoch).
    cache_train_features: bool = False
    #: ours: refuse (at start-up, with the estimate) a feature cache larger than this.
    feature_cache_max_gb: float = 8.0
    #: ours: video decoder (vjepa_fast.decoders): auto = decord, else torchcodec, else PyAV.
    decoder: str = "auto"

    def validate(self, p: str = "data", video: bool = True) -> None:
        _check_choice(f"{p}.train_augmentation", self.train_augmentation, TRAIN_AUGMENTATIONS)
        _check_choice(f"{p}.decoder", self.decoder, DECODERS)
        if self.cache_train_features:
            _check(self.train_augmentation == "none", f"{p}.cache_train_features", True,
                   f"needs {p}.train_augmentation: none (augmented clips differ every epoch), "
                   f"got {self.train_augmentation!r}")
        _check(self.feature_cache_max_gb > 0, f"{p}.feature_cache_max_gb", self.feature_cache_max_gb,
               "must be > 0")
        if _check_required(f"{p}.num_classes", self.num_classes):
            _check(self.num_classes >= 1, f"{p}.num_classes", self.num_classes, "must be >= 1")
        for name in ("frames_per_clip", "num_segments", "num_views_per_segment", "frame_step"):
            v = getattr(self, name)
            _check(v >= 1, f"{p}.{name}", v, "must be >= 1")
        if self.resolution is not None:
            _check(self.resolution >= 1, f"{p}.resolution", self.resolution, "must be >= 1")
        _check(self.num_workers >= 0, f"{p}.num_workers", self.num_workers, "must be >= 0")
        if video:
            _check(self.dataset_type.lower() == "videodataset", f"{p}.dataset_type", self.dataset_type,
                   "only VideoDataset is supported")


@dataclass
class EvalHeadConfig:
    """ours: one probe of ``optimization.multihead``; null = the optimization section's value."""
    lr: Optional[float] = None
    start_lr: Optional[float] = None
    final_lr: Optional[float] = None
    weight_decay: Optional[float] = None
    final_weight_decay: Optional[float] = None
    #: epochs of linear warmup from start_lr to lr (the V2 grids set it per probe)
    warmup: Optional[float] = None

    def validate(self, p: str = "optimization.multihead[0]") -> None:
        for name in ("lr", "start_lr", "final_lr", "weight_decay", "final_weight_decay", "warmup"):
            v = getattr(self, name)
            if v is not None:
                _check(v >= 0 and math.isfinite(v), f"{p}.{name}", v, "must be a finite number >= 0")


@dataclass
class EvalOptimizationConfig:
    #: null = the protocol's: v1 false (the official V1 default), v2 true (V2's ClipAggregation
    #: always concatenates the segments; false is refused there)
    attend_across_segments: Optional[bool] = None
    num_epochs: int = 20
    #: video evals only (image evals read data.resolution, as the official code does)
    resolution: Optional[int] = None
    batch_size: int = 4  # per process
    weight_decay: float = 0.01  # cosine-decays to 1e-6 (official)
    lr: float = 0.001
    start_lr: float = 0.001
    final_lr: float = 0.0
    warmup: float = 0.0  # epochs
    #: official name; the official code then runs **float16** autocast + GradScaler.  We run the
    #: autocast dtype of ``meta.autocast_dtype`` (default bfloat16, no scaler) on accelerators and
    #: float32 on the CPU.
    use_bfloat16: bool = False
    #: ours: end value of the weight-decay cosine (the official eval never passes one, so its
    #: function default 1e-6 applies).
    final_weight_decay: float = 1e-6
    #: ours: several probes trained at once on one pass of the frozen encoder, e.g.
    #: ``[{lr: 1.0e-3, weight_decay: 0.01}, {lr: 3.0e-4, weight_decay: 0.1}]``; missing keys come
    #: from this section (start_lr / final_lr scaled by the head's lr / lr).  Empty = one probe.
    #: The official V2 files call it ``multihead_kwargs`` (every key given per probe).
    multihead: List[EvalHeadConfig] = field(default_factory=list)

    def validate(self, p: str = "optimization") -> None:
        for i, head in enumerate(self.multihead):
            head.validate(f"{p}.multihead[{i}]")
        _check(self.final_weight_decay >= 0 and math.isfinite(self.final_weight_decay),
               f"{p}.final_weight_decay", self.final_weight_decay, "must be a finite number >= 0")
        _check(self.num_epochs >= 1, f"{p}.num_epochs", self.num_epochs, "must be >= 1")
        _check(self.batch_size >= 1, f"{p}.batch_size", self.batch_size, "must be >= 1")
        if self.resolution is not None:
            _check(self.resolution >= 1, f"{p}.resolution", self.resolution, "must be >= 1")
        for name in ("weight_decay", "lr", "start_lr", "final_lr", "warmup"):
            v = getattr(self, name)
            _check(v >= 0 and math.isfinite(v), f"{p}.{name}", v, "must be a finite number >= 0")


@dataclass
class EvalPretrainConfig:
    model_name: Optional[str] = None  # required
    checkpoint_key: str = "target_encoder"  # falls back to 'encoder' when absent (official)
    clip_duration: Optional[float] = None  # eval clip duration in seconds (official reads it here)
    frames_per_clip: int = 16  # frames the encoder was built for (official default 1, see module doc)
    #: where the official video eval actually reads the frame step from; see data.frame_step.
    frame_step: Optional[int] = None
    tubelet_size: int = 2
    uniform_power: bool = True  # official default False, see module doc
    use_silu: Optional[bool] = None  # ignored
    tight_silu: Optional[bool] = None  # ignored
    use_sdpa: Optional[bool] = None  # ignored
    patch_size: int = 16
    #: V-JEPA 2 encoders: 3D RoPE in every block instead of a position table (any resolution and
    #: frame count without interpolation)
    use_rope: bool = False
    #: blocks whose (final-norm) outputs are the features, concatenated along the tokens (official V2
    #: ``wrapper_kwargs.out_layers``, e.g. [17, 19, 21, 23] for ViT-L); null = the last block
    out_layers: Optional[List[int]] = None
    folder: Optional[str] = None  # required
    #: required; inside folder: a checkpoint file (ours, official V1 or V2, a released V2 file) or
    #: a Hugging Face V-JEPA 2 folder (config.json + model.safetensors)
    checkpoint: Optional[str] = None
    write_tag: str = "jepa"  # name of the probe's csv log / checkpoint
    #: ours: override the width / depth / heads of the ``model_name`` preset (custom encoders,
    #: e.g. the tiny test models); null = the preset's value.
    embed_dim: Optional[int] = None
    depth: Optional[int] = None
    num_heads: Optional[int] = None

    def validate(self, p: str = "pretrain") -> None:
        known_model = (_check_required(f"{p}.model_name", self.model_name)
                       and _check_choice(f"{p}.model_name", self.model_name, MODEL_NAMES))
        sizes_ok = all([_check(getattr(self, name) >= 1, f"{p}.{name}", getattr(self, name), "must be >= 1 or null")
                        for name in ("embed_dim", "depth", "num_heads") if getattr(self, name) is not None])
        if known_model and sizes_ok:
            dim = self.embed_dim or VIT_PRESETS[self.model_name]["embed_dim"]
            heads = self.num_heads or VIT_PRESETS[self.model_name]["num_heads"]
            _check(dim % heads == 0, f"{p}.num_heads", heads, f"must divide embed_dim={dim}")
        _check_required(f"{p}.folder", self.folder)
        _check_required(f"{p}.checkpoint", self.checkpoint)
        positive = [_check(getattr(self, name) >= 1, f"{p}.{name}", getattr(self, name), "must be >= 1")
                    for name in ("frames_per_clip", "tubelet_size", "patch_size")]
        if all(positive):
            _check(self.frames_per_clip % self.tubelet_size == 0, f"{p}.frames_per_clip",
                   self.frames_per_clip, f"must be divisible by {p}.tubelet_size={self.tubelet_size}")
        if self.frame_step is not None:
            _check(self.frame_step >= 1, f"{p}.frame_step", self.frame_step, "must be >= 1 or null")
        if self.clip_duration is not None:
            _check(self.clip_duration > 0, f"{p}.clip_duration", self.clip_duration, "must be > 0 or null")
        if self.out_layers is not None:
            layers = self.out_layers
            ok = _check(len(layers) > 0, f"{p}.out_layers", layers, "must list at least one block or be null")
            ok = ok and _check(all(b > a for a, b in zip(layers, layers[1:])), f"{p}.out_layers", layers,
                               "must be strictly increasing (the outputs come in block order)")
            if ok and known_model and sizes_ok:
                depth = self.encoder_dims()[1]
                _check(0 <= layers[0] and layers[-1] < depth, f"{p}.out_layers", layers,
                       f"block indices must be in [0, {depth}) (the encoder's depth)")

    def encoder_dims(self) -> Tuple[int, int, int]:
        """(embed_dim, depth, num_heads) of the encoder described (preset, then overrides)."""
        preset = VIT_PRESETS[self.model_name]
        return (self.embed_dim or preset["embed_dim"], self.depth or preset["depth"],
                self.num_heads or preset["num_heads"])


@dataclass
class EvalClassifierConfig:
    """The attentive probe (the official V2 files' ``experiment.classifier``)."""
    #: official ``num_probe_blocks``: v1 probes run the extra self-attention blocks over the query
    #: after the cross-attention (V1 evals use 1), v2 probes run num_probe_blocks - 1 blocks over the
    #: tokens first (V2 evals use 4)
    num_probe_blocks: int = 1
    #: null = v1: the encoder's heads (what the V1 eval builds), v2: 16 (the official default)
    num_heads: Optional[int] = None
    #: v2 probes: recompute the self-attention blocks' activations in the backward (the official
    #: eval does, to save memory); off by default here (a third more probe compute)
    use_activation_checkpointing: bool = False

    def validate(self, p: str = "classifier") -> None:
        _check(self.num_probe_blocks >= 1, f"{p}.num_probe_blocks", self.num_probe_blocks, "must be >= 1")
        if self.num_heads is not None:
            _check(self.num_heads >= 1, f"{p}.num_heads", self.num_heads, "must be >= 1 or null")


@dataclass
class EvalMetaConfig:
    """ours: runtime settings of the probe evaluation (the official eval files have no such section)."""
    seed: int = 0  # official eval seeds with 0
    device: str = "auto"
    attn_backend: str = "auto"
    kernels: str = "auto"
    compile: bool = False
    log_every: int = 20  # official eval prints every 20 iterations
    #: ours: autocast dtype when ``optimization.use_bfloat16`` is true on an accelerator:
    #: ``bfloat16`` (default, no GradScaler) or ``float16`` (what the official eval really runs,
    #: with a GradScaler).  CPU runs are float32 either way.
    autocast_dtype: str = "bfloat16"

    def validate(self, p: str = "meta") -> None:
        _check_choice(f"{p}.autocast_dtype", self.autocast_dtype, ("bfloat16", "float16"))
        _check_runtime(p, self.device, self.attn_backend, self.kernels)
        _check(self.log_every >= 1, f"{p}.log_every", self.log_every, "must be >= 1")


@dataclass
class EvalConfig(_RootConfig):
    """A frozen-backbone attentive-probe evaluation (official ``configs/evals/*.yaml`` layout)."""
    _KIND = "an evaluation config"
    _OTHER_KIND = "a pretraining config (no 'eval_name')"

    eval_name: Optional[str] = None  # required: video_classification_frozen | image_classification_frozen
    nodes: Optional[int] = None  # ignored
    tasks_per_node: Optional[int] = None  # ignored
    cpus_per_task: Optional[int] = None  # ignored (V-JEPA 2 files)
    mem_per_gpu: Optional[str] = None  # ignored (V-JEPA 2 files)
    tag: Optional[str] = None  # output sub-folder
    resume_checkpoint: bool = False
    #: ours: v1 (facebookresearch/jepa) or v2 (facebookresearch/vjepa2) frozen evaluation: probe
    #: module, optimiser groups, clipping, segments (see vjepa_fast.probe)
    protocol: str = "v1"
    classifier: EvalClassifierConfig = field(default_factory=EvalClassifierConfig)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    optimization: EvalOptimizationConfig = field(default_factory=EvalOptimizationConfig)
    pretrain: EvalPretrainConfig = field(default_factory=EvalPretrainConfig)
    meta: EvalMetaConfig = field(default_factory=EvalMetaConfig)

    def _validate_fields(self) -> None:
        _check_required("eval_name", self.eval_name) and _check_choice("eval_name", self.eval_name, EVAL_NAMES)
        _check_choice("protocol", self.protocol, EVAL_PROTOCOLS)
        _section(self.data.validate, video=self.is_video)
        for section in (self.optimization, self.pretrain, self.meta, self.classifier):
            _section(section.validate)
        _section(self._validate_geometry)
        _section(self._validate_probe)

    def _validate_probe(self) -> None:
        if self.protocol == "v2" and self.optimization.attend_across_segments is False:
            _check(False, "optimization.attend_across_segments", False,
                   "protocol v2 always concatenates the segments of a view (V2's ClipAggregation); "
                   "remove the key or set it true")
        # v1's default (the encoder's own heads) is checked with the pretrain section
        explicit = self.classifier.num_heads is not None or self.protocol == "v2"
        if explicit and self.pretrain.model_name in VIT_PRESETS and self.probe_num_heads >= 1:
            dim = self.pretrain.encoder_dims()[0]
            _check(dim % self.probe_num_heads == 0, "classifier.num_heads", self.probe_num_heads,
                   f"must divide the encoder's embed_dim={dim}")

    @property
    def attend_across_segments(self) -> bool:
        """Whether the segments of a view are concatenated into one probe input (see the key)."""
        if self.protocol == "v2":
            return True
        return bool(self.optimization.attend_across_segments)

    @property
    def probe_num_heads(self) -> int:
        """Heads of the probe's attention: ``classifier.num_heads``, else v1 the encoder's, v2 16."""
        if self.classifier.num_heads is not None:
            return self.classifier.num_heads
        return 16 if self.protocol == "v2" else self.pretrain.encoder_dims()[2]

    def _validate_geometry(self) -> None:
        res = self.resolution
        _check(res % self.pretrain.patch_size == 0, self._resolution_key, res,
               f"must be divisible by pretrain.patch_size={self.pretrain.patch_size}")
        if self.is_video:
            _check(self.data.frames_per_clip % self.pretrain.tubelet_size == 0, "data.frames_per_clip",
                   self.data.frames_per_clip,
                   f"must be divisible by pretrain.tubelet_size={self.pretrain.tubelet_size}")
            # keys that the official video eval does not read: refuse a silent disagreement
            if self.data.resolution is not None:
                _check(self.data.resolution == res, "data.resolution", self.data.resolution,
                       f"video evals use optimization.resolution={res}; remove data.resolution "
                       "or make them equal")
            if self.pretrain.frame_step is not None:
                _check(self.pretrain.frame_step == self.data.frame_step, "pretrain.frame_step",
                       self.pretrain.frame_step,
                       f"differs from data.frame_step={self.data.frame_step}; the official eval "
                       "reads pretrain.frame_step, we read data.frame_step: make them equal")
        else:
            if self.optimization.resolution is not None:
                _check(self.optimization.resolution == res, "optimization.resolution",
                       self.optimization.resolution,
                       f"image evals use data.resolution={res}; remove optimization.resolution "
                       "or make them equal")

    # -- convenience -----------------------------------------------------------------------------
    @property
    def is_video(self) -> bool:
        return self.eval_name == "video_classification_frozen"

    @property
    def _resolution_key(self) -> str:
        return "optimization.resolution" if self.is_video else "data.resolution"

    @property
    def resolution(self) -> int:
        """Input resolution: ``optimization.resolution`` for video evals, ``data.resolution`` for
        image evals (as in the official code), default 224."""
        r = self.optimization.resolution if self.is_video else self.data.resolution
        return 224 if r is None else r

    @property
    def frame_step(self) -> int:
        return self.data.frame_step

    @property
    def pretrained_path(self) -> str:
        return os.path.join(self.pretrain.folder, self.pretrain.checkpoint)

    @property
    def output_folder(self) -> str:
        """``{pretrain.folder}/{eval_name}/{tag}`` (official layout)."""
        folder = os.path.join(self.pretrain.folder, self.eval_name)
        return os.path.join(folder, self.tag) if self.tag else folder

    @property
    def latest_checkpoint_path(self) -> str:
        return os.path.join(self.output_folder, f"{self.pretrain.write_tag}-latest.pth.tar")

    def log_path(self, rank: int = 0) -> str:
        return os.path.join(self.output_folder, f"{self.pretrain.write_tag}_r{rank}.csv")


# ----------------------------------------------------------------------------------------------
# Loading, overrides, saving
# ----------------------------------------------------------------------------------------------

# ----------------------------------------------------------------------------------------------
# V-JEPA 2 evaluation files (official configs/eval/**: ``experiment`` + ``model_kwargs`` layout)
# ----------------------------------------------------------------------------------------------

#: The encoder wrappers of the official V2 eval files (``model_kwargs.module_name``) that map onto
#: this project's frozen evaluation, and the kind of eval each belongs to.
V2_EVAL_MODULES = {
    f"evals.{kind}.modelcustom.{wrapper}": kind for kind, wrapper in (
        ("video_classification_frozen", "vit_encoder_multiclip"),
        ("video_classification_frozen", "vit_encoder_multiclip_multilevel"),
        ("image_classification_frozen", "vit_encoder"))
}

#: V2 eval-file key -> our key (dotted), or ``None`` with the reason it has no effect here
#: (``V2_EVAL_IGNORED``). ``experiment.data.resolution`` goes to ``optimization.resolution`` in
#: video evals (where ours reads it) and stays ``data.resolution`` in image evals.
V2_EVAL_KEYS: Dict[str, str] = {
    "eval_name": "eval_name", "tag": "tag", "resume_checkpoint": "resume_checkpoint", "nodes": "nodes",
    "tasks_per_node": "tasks_per_node", "cpus_per_task": "cpus_per_task", "mem_per_gpu": "mem_per_gpu",
    "folder": "pretrain.folder", "num_workers": "data.num_workers",
    "experiment.classifier.num_probe_blocks": "classifier.num_probe_blocks",
    "experiment.classifier.num_heads": "classifier.num_heads",
    **{f"experiment.data.{k}": f"data.{k}" for k in (
        "dataset_type", "dataset_train", "dataset_val", "num_classes", "frames_per_clip", "frame_step",
        "num_segments", "num_views_per_segment", "root_path", "image_folder", "dataset_name")},
    "experiment.data.clip_duration": "pretrain.clip_duration",
    "experiment.optimization.batch_size": "optimization.batch_size",
    "experiment.optimization.num_epochs": "optimization.num_epochs",
    "experiment.optimization.use_bfloat16": "optimization.use_bfloat16",
    "model_kwargs.checkpoint": "pretrain.checkpoint",
    **{f"model_kwargs.pretrain_kwargs.encoder.{k}": f"pretrain.{k}" for k in (
        "model_name", "checkpoint_key", "patch_size", "tubelet_size", "uniform_power", "use_rope")},
    "model_kwargs.wrapper_kwargs.out_layers": "pretrain.out_layers",
    "model_kwargs.wrapper_kwargs.img_as_video_nframes": "pretrain.frames_per_clip",
}
V2_EVAL_IGNORED: Dict[str, str] = {
    "max_workers": "read nowhere in the official V2 code (the vitl ssv2 file's; its eval then runs the "
                   "num_workers default, 12)",
    "model_kwargs.module_name": "selects the official encoder wrapper; its choices are what the other keys "
                                "set here (out_layers, image or video, segments concatenated)",
    "model_kwargs.wrapper_kwargs.max_frames": "frames of the position table that use_pos_embed would add in "
                                              "the official wrapper; unused with use_pos_embed false",
    "model_kwargs.wrapper_kwargs.use_pos_embed": "only false (every official file): the V2 encoders use RoPE",
    "experiment.optimization.use_pos_embed": "not read by the official eval; only false accepted",
    "model_kwargs.pretrain_kwargs.encoder.img_temporal_dim_size": "only null (every official file)",
}


def _is_v2_eval_layout(raw: Any) -> bool:
    return isinstance(raw, dict) and ("experiment" in raw or "model_kwargs" in raw)


def _flat_items(d: Any, prefix: str = "") -> List[Tuple[str, Any]]:
    out: List[Tuple[str, Any]] = []
    for k, v in d.items():
        key = _join(prefix, str(k))
        if isinstance(v, dict) and v and key != "experiment.optimization.multihead_kwargs":
            out += _flat_items(v, key)
        else:
            out.append((key, v))
    return out


def v2_eval_to_ours(raw: Dict[str, Any]) -> Dict[str, Any]:
    """An official V-JEPA 2 eval file (``experiment`` / ``model_kwargs`` layout) as this project's eval
    dict (``protocol: v2``): keys by :data:`V2_EVAL_KEYS`; ``multihead_kwargs`` becomes
    ``optimization.multihead``; the encoder is built for ``experiment.data.frames_per_clip`` frames
    (video) or ``img_as_video_nframes`` (image, each image repeated); ``folder`` is where the
    outputs go ({folder}/{eval_name}/{tag}, as official) and ``model_kwargs.checkpoint`` the file
    probed (a relative path is taken from the working directory, as the official code does). Keys
    of :data:`V2_EVAL_IGNORED` are checked for the one value they may have and dropped; any other
    key is reported (:func:`_report`) with its V2 name."""
    out: Dict[str, Any] = {"protocol": "v2"}
    eval_name = raw.get("eval_name")
    model_kwargs = raw.get("model_kwargs") if isinstance(raw.get("model_kwargs"), dict) else {}
    module = model_kwargs.get("module_name")
    mkey = "model_kwargs.module_name"
    if module is not None and module not in V2_EVAL_MODULES:
        _report(ConfigError(f"invalid value for '{mkey}': {module!r} (this project runs the encoder wrappers "
                            f"{', '.join(V2_EVAL_MODULES)})", key=mkey))
    elif module is not None and eval_name is not None and V2_EVAL_MODULES[module] != eval_name:
        _report(ConfigError(f"invalid value for '{mkey}': {module!r} is an encoder of "
                            f"{V2_EVAL_MODULES[module]}, but eval_name is {eval_name!r}", key=mkey))
    video = eval_name != "image_classification_frozen"

    def put(dotted: str, value: Any) -> None:
        node = out
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    for key, value in _flat_items(raw):
        if key == "experiment.optimization.multihead_kwargs":
            put("optimization.multihead", value)
        elif key == "experiment.data.resolution":
            put("optimization.resolution" if video else "data.resolution", value)
        elif key == "model_kwargs.checkpoint" and isinstance(value, str) and not os.path.isabs(value):
            put("pretrain.checkpoint", os.path.abspath(value))
        elif key in V2_EVAL_KEYS:
            if key == "model_kwargs.wrapper_kwargs.img_as_video_nframes" and video:
                _report(ConfigError(f"'{key}' belongs to image evals (eval_name: "
                                    "image_classification_frozen)", key=key))
                continue
            put(V2_EVAL_KEYS[key], value)
        elif key in V2_EVAL_IGNORED:
            if key.endswith("use_pos_embed") and value not in (False, None):
                _report(_err(key, value, "only false: V-JEPA 2 encoders use RoPE, not a position table"))
            if key.endswith("img_temporal_dim_size") and value is not None:
                _report(_err(key, value, "only null is supported"))
        else:
            known = list(V2_EVAL_KEYS) + list(V2_EVAL_IGNORED)
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            _report(ConfigError(f"unknown key '{key}' (V-JEPA 2 eval layout){hint}", key=key))
    experiment = raw.get("experiment") if isinstance(raw.get("experiment"), dict) else {}
    data = experiment.get("data") if isinstance(experiment.get("data"), dict) else {}
    frames = data.get("frames_per_clip")
    if video and isinstance(frames, int):
        put("pretrain.frames_per_clip", frames)
    return out


def _from_dict(cls, d: Any, source: str):
    # Unknown keys, wrong types and invalid values all go into one error.
    with _collecting(source):
        # Files of tasks not implemented here: their other keys (actions, cameras, anticipation
        # times) would only bury the reason.
        if cls is PretrainConfig and isinstance(d, dict) and d.get("app") == "vjepa_droid":
            raise ConfigError(VJEPA_DROID_REFUSAL, key="app")
        if cls is EvalConfig and isinstance(d, dict) and d.get("eval_name") == "action_anticipation_frozen":
            raise ConfigError(ANTICIPATION_REFUSAL, key="eval_name")
        if cls is EvalConfig and _is_v2_eval_layout(d):
            d = v2_eval_to_ours(d)
        cfg = _build(cls, cls, d, "")
        normalise = getattr(cfg, "_normalise", None)
        if normalise is not None and isinstance(d, dict):
            _section(normalise, d)
        cfg.validate(source)
    return cfg


def _section(check, *args, **kwargs) -> None:
    """Run one section's checks. A check that trips over a value already reported as invalid
    (e.g. a lookup by an unknown model name) stops only its own section."""
    sink = _COLLECTING.get()
    try:
        check(*args, **kwargs)
    except (TypeError, KeyError, ZeroDivisionError, AttributeError):
        if not sink:
            raise


def parse_override(text: str) -> Tuple[str, Any]:
    """``'optimization.lr=1e-3'`` -> ``('optimization.lr', <yaml.safe_load('1e-3')>)``."""
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key component")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})", key=key) from None
    return key, value


def apply_overrides(raw: Dict[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """Return a deep copy of ``raw`` with dotted overrides applied (``mask.0.num_blocks=4``
    indexes into lists).  Values are not checked here; building the config checks them."""
    out = copy.deepcopy(raw)
    for text in overrides:
        key, value = parse_override(text)
        parts = key.split(".")
        node: Any = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            here = ".".join(parts[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override {text!r}: '{here}' is not a valid index "
                                      f"(list has {len(node)} entries)", key=key)
                idx = int(part)
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    if node.get(part) is None:
                        node[part] = {}
                    node = node[part]
            else:
                raise ConfigError(f"override {text!r}: '{'.'.join(parts[:i])}' is not a section "
                                  f"(it holds {node!r})", key=key)
    return out


def _read_yaml(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    src = str(path)
    try:
        with open(path, "r", encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file: {e}", source=src) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML: {e}", source=src) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"the top level must be a mapping, got {type(raw).__name__}", source=src)
    return raw


def find_ignored_keys(raw: Dict[str, Any]) -> List[str]:
    """Dotted keys of ``raw`` that are listed in :data:`ACCEPTED_AND_IGNORED`."""
    found = []
    for key in ACCEPTED_AND_IGNORED:
        node: Any = raw
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            found.append(key)
    return found


def load_config(path: Union[str, os.PathLike],
                overrides: Iterable[str] = ()) -> Union[PretrainConfig, EvalConfig]:
    """Load a YAML config file.  Returns an :class:`EvalConfig` when the file has a top-level
    ``eval_name`` key (after overrides), else a :class:`PretrainConfig`.

    ``overrides``: ``"key.sub=value"`` strings; each value is parsed with ``yaml.safe_load`` and
    then type-checked like the file's own values.
    """
    src = str(path)
    raw = _read_yaml(path)
    overrides = list(overrides)
    if overrides:
        try:
            raw = apply_overrides(raw, overrides)
        except ConfigError as e:
            raise ConfigError(e.bare_message, source=src, key=e.key) from None
    cls = EvalConfig if "eval_name" in raw else PretrainConfig
    cfg = cls.from_dict(raw, source=src)
    ignored = find_ignored_keys(raw)
    if ignored:
        logger.info("%s: keys accepted but without effect: %s", src, ", ".join(ignored))
    return cfg


def _save_yaml(d: Dict[str, Any], path: Union[str, os.PathLike]) -> None:
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(d, f, sort_keys=False, default_flow_style=None)
