"""Hugging Face V-JEPA 2 checkpoints, both ways, without ``transformers``.

A ``VJEPA2Model`` folder (``facebook/vjepa2-vit{l,h,g}-fpc64-{256,384}``) holds ``config.json`` and
``model.safetensors`` (or shards listed in ``model.safetensors.index.json``) with the encoder under
``encoder.*`` and the predictor under ``predictor.*``; a ``VJEPA2ForVideoClassification`` folder holds
the same under ``vjepa2.*`` plus the attentive probe under ``pooler.*`` and ``classifier.*``. The name
map, the splits of the fused qkv / kv projections and the stacked mask tokens follow
``tests/fixtures/hf_vjepa2/key_map.md`` (checked there by converting both ways and running the
official modules bit for bit). The ``safetensors`` package reads and writes the weights.

What differs from the official code (key_map.md, "Differences"), and what this module does:

* **RoPE grid at another resolution.** Hugging Face splits token ids with the grid of the config's
  ``crop_size``; the official encoder uses the input's grid. :func:`load_hf_vjepa2` builds the
  official behaviour by default (``rope_grid="input"``); ``rope_grid="config"`` reproduces
  Hugging Face's numbers at sizes other than ``crop_size``. At ``crop_size`` they are identical.
* **Predictor mask token.** Hugging Face always uses ``mask_tokens[1]``: :func:`hf_predict` passes
  ``mask_index=1``. Official pretraining uses the clip-length group's token (0 with one group).
* **Context.** ``VJEPA2Model`` runs the encoder on the whole clip and gathers the context rows
  (:func:`hf_predict`); official training encodes the context tokens alone
  (``encoder(clip, masks=ctx)``), which gives other numbers.
* **Probe LayerNorm eps.** Hugging Face uses ``layer_norm_eps`` (1e-6) in the pooler, the official
  probe torch's default 1e-5; the probe is built with Hugging Face's unless ``probe_norm_eps`` says
  otherwise. Pooler heads: Hugging Face uses ``num_attention_heads`` (the official V2 probes have 16,
  which differs for ViT-g's 22), so a probe with other heads cannot be saved in this format.
* **Video layout.** ``pixel_values_videos`` is ``[B, T, C, H, W]``; :func:`hf_video_to_clip` makes
  the official ``[B, C, T, H, W]`` (and repeats a clip shorter than a tubelet, as Hugging Face does).
"""
from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn

from .attentive_probe import AttentiveClassifierV2
from .checkpoint import CheckpointError, load_module_state
from .predictor import VisionTransformerPredictor
from .vision_transformer import MLP, VisionTransformer

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
HF_MASK_INDEX = 1  # Hugging Face's predictor always uses mask_tokens[1 % M]
HF_POOLER_MLP_RATIO = 4.0

# Block-internal renames shared by encoder and predictor blocks (official → Hugging Face).
_BLOCK_COPY = (
    (r"attn\.proj\.(weight|bias)", r"attention.proj.\1"),
    (r"(norm1|norm2|mlp\.fc1|mlp\.fc2)\.(weight|bias)", r"\1.\2"),
)
_QKV = ("query", "key", "value")

# Keys outside the blocks, (official, Hugging Face) prefixes of ``.weight`` / ``.bias``: one table
# serves both directions (Hugging Face names relative to ``encoder.`` / ``predictor.``).
_ENCODER_NAMES = (("patch_embed.proj.", "embeddings.patch_embeddings.proj."), ("norm.", "layernorm."))
_PREDICTOR_NAMES = (("predictor_embed.", "embeddings.predictor_embeddings."), ("predictor_norm.", "layernorm."),
                    ("predictor_proj.", "proj."))  # fmt: skip

# The probe, (official, Hugging Face) name templates: ``{i}`` a block index, ``{n}`` a digit, ``{p}``
# weight or bias. One table serves both directions.
_PROBE_NAMES = (
    ("pooler.query_tokens", "pooler.query_tokens"),
    ("pooler.blocks.{i}.attn.proj.{p}", "pooler.self_attention_layers.{i}.self_attn.out_proj.{p}"),
    ("pooler.blocks.{i}.norm{n}.{p}", "pooler.self_attention_layers.{i}.layer_norm{n}.{p}"),
    ("pooler.blocks.{i}.mlp.fc{n}.{p}", "pooler.self_attention_layers.{i}.mlp.fc{n}.{p}"),
    ("pooler.cross_attention_block.norm{n}.{p}", "pooler.cross_attention_layer.layer_norm{n}.{p}"),
    ("pooler.cross_attention_block.xattn.q.{p}", "pooler.cross_attention_layer.cross_attn.q_proj.{p}"),
    ("pooler.cross_attention_block.mlp.fc{n}.{p}", "pooler.cross_attention_layer.mlp.fc{n}.{p}"),
    ("linear.{p}", "classifier.{p}"),
)
# Fused official projections split by rows into one Hugging Face tensor per part ``{c}``, in order.
_PROBE_FUSED = (
    ("pooler.blocks.{i}.attn.qkv.{p}", "pooler.self_attention_layers.{i}.self_attn.{c}_proj.{p}", "qkv"),
    ("pooler.cross_attention_block.xattn.kv.{p}", "pooler.cross_attention_layer.cross_attn.{c}_proj.{p}", "kv"),
)
_FIELDS = {"i": r"(?P<i>\d+)", "n": r"(?P<n>\d)", "p": r"(?P<p>weight|bias)"}


@functools.cache
def _pattern(template: str, parts: str = "") -> re.Pattern:
    """A name template as a regex: its fields become named groups (``{c}``: one of ``parts``)."""
    fields = {**_FIELDS, "c": f"(?P<c>[{parts}])"}
    pieces = re.split(r"\{(\w)\}", template)
    return re.compile("".join(re.escape(x) if j % 2 == 0 else fields[x] for j, x in enumerate(pieces)))


def _match(key: str, template: str, parts: str = "") -> dict | None:
    """The fields of ``key`` when it fits ``template`` (whole key), else None."""
    m = _pattern(template, parts).fullmatch(key)
    return None if m is None else m.groupdict()


def _renamed(key: str, names, src: int) -> str | None:
    """``key`` through the first (official, Hugging Face) prefix pair of ``names`` whose side ``src``
    (0 official, 1 Hugging Face) it starts with; None when none does."""
    for pair in names:
        if key.startswith(pair[src]):
            return pair[1 - src] + key.rsplit(".", 1)[1]
    return None


def _safetensors():
    try:
        import safetensors.torch as st  # noqa: PLC0415
    except ImportError as e:  # pragma: no cover - the package is a dependency of this module
        raise ImportError("reading or writing Hugging Face checkpoints needs the 'safetensors' package "
                          "(pip install safetensors)") from e  # fmt: skip
    return st


# ------------------------------------------------------------------------------------------------
# Names: official (our module state dicts) ↔ Hugging Face
# ------------------------------------------------------------------------------------------------

def _blocks_to_hf(sd: Mapping[str, torch.Tensor], ours: str, hf: str, out: dict) -> set[str]:
    """Blocks ``{ours}.{i}.*`` → ``{hf}.{i}.*`` (qkv split in three by rows). Returns the keys used."""
    used = set()
    for k, v in sd.items():
        m = re.fullmatch(rf"{re.escape(ours)}\.(\d+)\.(.+)", k)
        if not m:
            continue
        i, rest = m.groups()
        qkv = re.fullmatch(r"attn\.qkv\.(weight|bias)", rest)
        if qkv:
            for name, part in zip(_QKV, v.chunk(3, dim=0)):
                out[f"{hf}.{i}.attention.{name}.{qkv.group(1)}"] = part
        else:
            for pattern, repl in _BLOCK_COPY:
                if re.fullmatch(pattern, rest):
                    out[f"{hf}.{i}.{re.sub(pattern, repl, rest)}"] = v
                    break
            else:
                raise CheckpointError(f"no Hugging Face name for {k!r} (SwiGLU or other non-HF parts?)")
        used.add(k)
    return used


def _blocks_from_hf(hf_sd: Mapping[str, torch.Tensor], hf: str, ours: str, out: dict) -> set[str]:
    used = set()
    qkv_parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for k, v in hf_sd.items():
        m = re.fullmatch(rf"{re.escape(hf)}\.(\d+)\.(.+)", k)
        if not m:
            continue
        i, rest = m.groups()
        q = re.fullmatch(r"attention\.(query|key|value)\.(weight|bias)", rest)
        if q:
            qkv_parts.setdefault((i, q.group(2)), {})[q.group(1)] = v
        elif rest.startswith("attention.proj."):
            out[f"{ours}.{i}.attn.proj.{rest.rsplit('.', 1)[1]}"] = v
        elif re.fullmatch(r"(norm1|norm2|mlp\.fc1|mlp\.fc2)\.(weight|bias)", rest):
            out[f"{ours}.{i}.{rest}"] = v
        else:
            raise CheckpointError(f"unknown Hugging Face key {k!r}")
        used.add(k)
    for (i, kind), parts in qkv_parts.items():
        if set(parts) != set(_QKV):
            raise CheckpointError(f"{hf}.{i}.attention: {kind} of {sorted(parts)} only; need query, key and value")
        out[f"{ours}.{i}.attn.qkv.{kind}"] = torch.cat([parts[n] for n in _QKV], dim=0)
    return used


def encoder_to_hf(sd: Mapping[str, torch.Tensor], prefix: str = "encoder.") -> dict[str, torch.Tensor]:
    """Our encoder state dict (official names) → Hugging Face names (``pos_embed`` has none: dropped)."""
    out: dict[str, torch.Tensor] = {}
    used = _blocks_to_hf(sd, "blocks", prefix + "layer", out)
    for k, v in sd.items():
        if k in used or k == "pos_embed":
            continue
        name = _renamed(k, _ENCODER_NAMES, 0)
        if name is None:
            raise CheckpointError(f"no Hugging Face name for encoder key {k!r}")
        out[prefix + name] = v
    return out


def predictor_to_hf(sd: Mapping[str, torch.Tensor], prefix: str = "predictor.") -> dict[str, torch.Tensor]:
    """Our predictor state dict → Hugging Face names; the mask tokens ``[1, 1, Dp]`` each are stacked
    into one ``[M, 1, 1, Dp]`` tensor (HF index j = official ``mask_tokens.{j}``)."""
    out: dict[str, torch.Tensor] = {}
    used = _blocks_to_hf(sd, "predictor_blocks", prefix + "layer", out)
    tokens = {}
    for k, v in sd.items():
        if k in used or k == "predictor_pos_embed":
            continue
        m = re.fullmatch(r"mask_tokens\.(\d+)", k)
        if m:
            tokens[int(m.group(1))] = v
        elif (name := _renamed(k, _PREDICTOR_NAMES, 0)) is not None:
            out[prefix + name] = v
        else:
            raise CheckpointError(f"no Hugging Face name for predictor key {k!r}")
    if sorted(tokens) != list(range(len(tokens))) or not tokens:
        raise CheckpointError(f"predictor mask tokens must be mask_tokens.0 … .M-1, got {sorted(tokens)}")
    out[prefix + "embeddings.mask_tokens"] = torch.stack([tokens[j] for j in range(len(tokens))], dim=0)
    return out


def probe_to_hf(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An :class:`AttentiveClassifierV2` state dict → Hugging Face's ``pooler.*`` / ``classifier.*``."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        for ours, hf, parts in _PROBE_FUSED:
            if (f := _match(k, ours)) is not None:
                for c, part in zip(parts, v.chunk(len(parts), dim=0)):
                    out[hf.format(**f, c=c)] = part
                break
        else:
            for ours, hf in _PROBE_NAMES:
                if (f := _match(k, ours)) is not None:
                    out[hf.format(**f)] = v
                    break
            else:
                raise CheckpointError(f"no Hugging Face name for probe key {k!r}")
    return out


def _strip(hf_sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in hf_sd.items() if k.startswith(prefix)}


def hf_to_encoder(hf_sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``encoder.*`` tensors of a Hugging Face state dict (``vjepa2.`` already stripped; other keys
    are ignored) → our encoder state dict (the query/key/value rows concatenated into ``qkv``)."""
    sd = _strip(hf_sd, "encoder.")
    out: dict[str, torch.Tensor] = {}
    used = _blocks_from_hf(sd, "layer", "blocks", out)
    for k, v in sd.items():
        if k in used:
            continue
        name = _renamed(k, _ENCODER_NAMES, 1)
        if name is None:
            raise CheckpointError(f"unknown Hugging Face encoder key 'encoder.{k}'")
        out[name] = v
    return out


def hf_to_predictor(hf_sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``predictor.*`` tensors of a Hugging Face state dict → our predictor state dict (the stacked
    mask tokens unstacked into ``mask_tokens.{j}``)."""
    sd = _strip(hf_sd, "predictor.")
    out: dict[str, torch.Tensor] = {}
    used = _blocks_from_hf(sd, "layer", "predictor_blocks", out)
    for k, v in sd.items():
        if k in used:
            continue
        if k == "embeddings.mask_tokens":
            if v.dim() != 4 or v.shape[1:3] != (1, 1):
                raise CheckpointError(f"predictor.embeddings.mask_tokens must be [M, 1, 1, Dp], got {tuple(v.shape)}")
            for j in range(v.shape[0]):
                out[f"mask_tokens.{j}"] = v[j].clone()
        elif (name := _renamed(k, _PREDICTOR_NAMES, 1)) is not None:
            out[name] = v
        else:
            raise CheckpointError(f"unknown Hugging Face predictor key 'predictor.{k}'")
    return out


def hf_to_probe(hf_sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face ``pooler.*`` / ``classifier.*`` → an :class:`AttentiveClassifierV2` state dict."""
    out: dict[str, torch.Tensor] = {}
    groups: dict[str, tuple[dict[str, torch.Tensor], str]] = {}
    for k, v in hf_sd.items():
        if not k.startswith(("pooler.", "classifier.")):
            continue
        for ours, hf, parts in _PROBE_FUSED:
            if (f := _match(k, hf, parts)) is not None:
                c = f.pop("c")
                groups.setdefault(ours.format(**f), ({}, parts))[0][c] = v
                break
        else:
            for ours, hf in _PROBE_NAMES:
                if (f := _match(k, hf)) is not None:
                    out[ours.format(**f)] = v
                    break
            else:
                raise CheckpointError(f"unknown Hugging Face probe key {k!r}")
    for name, (found, order) in groups.items():
        if set(found) != set(order):
            raise CheckpointError(f"{name}: Hugging Face parts {sorted(found)}; need {list(order)}")
        out[name] = torch.cat([found[c] for c in order], dim=0)
    return out


# ------------------------------------------------------------------------------------------------
# Folders
# ------------------------------------------------------------------------------------------------

def read_hf_config(folder: str | os.PathLike) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in {folder}")
    cfg = json.loads(path.read_text())
    if cfg.get("model_type") != "vjepa2":
        raise CheckpointError(f"{path}: model_type {cfg.get('model_type')!r}, expected 'vjepa2'")
    return cfg


def read_hf_weights(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of ``model.safetensors`` (or of the shards its index lists)."""
    st = _safetensors()
    folder = Path(folder)
    if (folder / WEIGHTS).is_file():
        return st.load_file(folder / WEIGHTS)
    index = folder / WEIGHTS_INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        out: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            out.update(st.load_file(folder / shard))
        missing = sorted(set(weight_map) - set(out))
        if missing:
            raise CheckpointError(f"{index} lists tensors its shards lack: {', '.join(missing[:5])}")
        return out
    raise FileNotFoundError(f"no {WEIGHTS} or {WEIGHTS_INDEX} in {folder}")


@dataclass
class HFVJEPA2:
    """A loaded Hugging Face V-JEPA 2 folder: our encoder and predictor, the probe for a classifier
    folder (else None), and the config it came from."""

    encoder: VisionTransformer
    predictor: VisionTransformerPredictor
    probe: AttentiveClassifierV2 | None
    config: dict


def _check_cfg(cfg: dict, source: str) -> None:
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{source}: hidden_act {cfg['hidden_act']!r}; only 'gelu' is supported "
                              "(the V-JEPA 2 releases use it)")  # fmt: skip


def build_from_hf_config(
    cfg: dict, *, rope_grid: str = "input", probe_norm_eps: float | None = None, source: str = "config",
) -> tuple[VisionTransformer, VisionTransformerPredictor, AttentiveClassifierV2 | None]:
    """Our modules for a ``VJEPA2Config`` dict (random init). ``rope_grid``: ``"input"`` (official) or
    ``"config"`` (Hugging Face: the grid of ``crop_size`` at every input size). The probe exists when
    the config has labels (``id2label``)."""
    if rope_grid not in ("input", "config"):
        raise ValueError(f"rope_grid must be 'input' (official) or 'config' (Hugging Face), got {rope_grid!r}")
    _check_cfg(cfg, source)
    eps = float(cfg.get("layer_norm_eps", 1e-6))
    geometry = dict(img_size=int(cfg["crop_size"]), patch_size=int(cfg["patch_size"]),
                    num_frames=int(cfg["frames_per_clip"]), tubelet_size=int(cfg["tubelet_size"]))
    encoder = VisionTransformer(
        **geometry, in_chans=int(cfg.get("in_chans", 3)), embed_dim=int(cfg["hidden_size"]),
        depth=int(cfg["num_hidden_layers"]), num_heads=int(cfg["num_attention_heads"]),
        mlp_ratio=float(cfg["mlp_ratio"]), qkv_bias=bool(cfg.get("qkv_bias", True)), norm_eps=eps, use_rope=True,
        handle_nonsquare_inputs=rope_grid == "input", drop_path_rate=float(cfg.get("drop_path_rate", 0.0)),
    )
    predictor = VisionTransformerPredictor(
        **geometry, embed_dim=int(cfg["hidden_size"]), predictor_embed_dim=int(cfg["pred_hidden_size"]),
        depth=int(cfg["pred_num_hidden_layers"]), num_heads=int(cfg["pred_num_attention_heads"]),
        mlp_ratio=float(cfg["pred_mlp_ratio"]), qkv_bias=bool(cfg.get("qkv_bias", True)), norm_eps=eps,
        num_mask_tokens=int(cfg["pred_num_mask_tokens"]), use_rope=True,
    )
    probe = None
    if cfg.get("id2label"):
        probe = AttentiveClassifierV2(
            embed_dim=int(cfg["hidden_size"]), num_heads=int(cfg["num_attention_heads"]),
            mlp_ratio=HF_POOLER_MLP_RATIO, depth=int(cfg.get("num_pooler_layers", 3)) + 1,
            num_classes=len(cfg["id2label"]), norm_eps=eps if probe_norm_eps is None else probe_norm_eps,
        )
    return encoder, predictor, probe


def load_hf_vjepa2(
    folder: str | os.PathLike, *, rope_grid: str = "input", probe_norm_eps: float | None = None,
) -> HFVJEPA2:
    """Load a ``VJEPA2Model`` or ``VJEPA2ForVideoClassification`` folder into our modules (every
    tensor must map: a missing or unknown key is an error naming it). ``rope_grid`` and
    ``probe_norm_eps``: see :func:`build_from_hf_config` and the module docstring."""
    folder = Path(folder)
    cfg = read_hf_config(folder)
    hf_sd = read_hf_weights(folder)
    encoder, predictor, probe = build_from_hf_config(cfg, rope_grid=rope_grid, probe_norm_eps=probe_norm_eps,
                                                     source=str(folder))
    base = _strip(hf_sd, "vjepa2.") if any(k.startswith("vjepa2.") for k in hf_sd) else hf_sd
    source = str(folder)
    load_module_state(encoder, hf_to_encoder(base), what="encoder", source=source)
    load_module_state(predictor, hf_to_predictor(base), what="predictor", source=source)
    if probe is not None:
        load_module_state(probe, hf_to_probe(hf_sd), what="probe", source=source)
    elif any(k.startswith(("pooler.", "classifier.")) for k in hf_sd):
        raise CheckpointError(f"{folder}: the weights hold a probe but config.json has no id2label")
    return HFVJEPA2(encoder.eval(), predictor.eval(), probe.eval() if probe is not None else None, cfg)


def _mlp_ratio(module_blocks, dim: int, what: str) -> float:
    mlp = module_blocks[0].mlp
    if not isinstance(mlp, MLP):
        raise CheckpointError(f"{what} uses a SwiGLU MLP; the Hugging Face format has GELU MLPs only")
    hidden = mlp.fc1.out_features
    ratio = hidden / dim
    if int(dim * ratio) != hidden:
        raise CheckpointError(f"{what}: MLP width {hidden} is not int({dim} * mlp_ratio) for any representable ratio")
    return ratio


def hf_config_for(
    encoder: VisionTransformer, predictor: VisionTransformerPredictor, probe: AttentiveClassifierV2 | None = None,
    *, labels: list[str] | None = None,
) -> dict:
    """The ``config.json`` dict that describes our modules in Hugging Face's ``VJEPA2Config`` fields
    (the fields the fixture's transformers 5.24.0 writes). Raises CheckpointError for what the format
    cannot express: no RoPE, SwiGLU, a predictor of another grid or LayerNorm eps than the encoder, a
    probe whose heads differ from the encoder's or whose MLP ratio is not 4."""
    if not encoder.use_rope or not predictor.use_rope:
        raise CheckpointError("the Hugging Face V-JEPA 2 format needs RoPE models (use_rope=True)")
    if not encoder.is_video:
        raise CheckpointError("the Hugging Face V-JEPA 2 format holds video encoders (num_frames > 1)")
    eps = encoder.norm.eps
    if predictor.predictor_norm.eps != eps:
        raise CheckpointError(f"encoder LayerNorm eps {eps} and predictor's {predictor.predictor_norm.eps} differ; "
                              "Hugging Face has one layer_norm_eps")  # fmt: skip
    if predictor.grid_size != encoder.grid_size or predictor.num_patches != encoder.num_patches:
        raise CheckpointError("predictor and encoder are built for different crop sizes or frame counts")
    qkv_bias = encoder.blocks[0].attn.qkv.bias is not None
    if (predictor.predictor_blocks[0].attn.qkv.bias is not None) != qkv_bias:
        raise CheckpointError("encoder and predictor differ in qkv_bias; Hugging Face has one qkv_bias")
    enc_drop = encoder.blocks[-1].drop_path
    cfg = {
        "architectures": ["VJEPA2ForVideoClassification" if probe is not None else "VJEPA2Model"],
        "attention_dropout": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "crop_size": encoder.img_size,
        "drop_path_rate": float(getattr(enc_drop, "p", 0.0)),
        "dtype": str(next(encoder.parameters()).dtype).removeprefix("torch."),
        "frames_per_clip": encoder.num_frames,
        "hidden_act": "gelu",
        "hidden_size": encoder.embed_dim,
        "in_chans": encoder.patch_embed.proj.in_channels,
        "initializer_range": 0.02,
        "layer_norm_eps": eps,
        "mlp_ratio": _mlp_ratio(encoder.blocks, encoder.embed_dim, "encoder"),
        "model_type": "vjepa2",
        "num_attention_heads": encoder.num_heads,
        "num_hidden_layers": len(encoder.blocks),
        "num_pooler_layers": 3,  # Hugging Face's default; it only matters for a classifier
        "patch_size": encoder.patch_size,
        "pred_hidden_size": predictor.predictor_embed_dim,
        "pred_mlp_ratio": _mlp_ratio(predictor.predictor_blocks, predictor.predictor_embed_dim, "predictor"),
        "pred_num_attention_heads": predictor.predictor_blocks[0].attn.num_heads,
        "pred_num_hidden_layers": len(predictor.predictor_blocks),
        "pred_num_mask_tokens": predictor.num_mask_tokens,
        "pred_zero_init_mask_tokens": True,
        "qkv_bias": qkv_bias,
        "tubelet_size": encoder.tubelet_size,
    }
    if probe is not None:
        pooler = probe.pooler
        blocks = list(pooler.blocks or [])
        heads = pooler.cross_attention_block.xattn.num_heads
        if heads != encoder.num_heads or any(b.attn.num_heads != heads for b in blocks):
            raise CheckpointError(f"probe has {heads} heads, the encoder {encoder.num_heads}: Hugging Face's pooler "
                                  "uses num_attention_heads, so it would compute another attention")  # fmt: skip
        if pooler.query_tokens.shape[1] != 1:
            raise CheckpointError("Hugging Face's pooler has one query token")
        hidden = pooler.cross_attention_block.mlp.fc1.out_features
        if hidden != int(encoder.embed_dim * HF_POOLER_MLP_RATIO):
            raise CheckpointError(f"probe MLP width {hidden}; Hugging Face's pooler MLP is 4·D")
        n = probe.linear.out_features
        names = list(labels) if labels is not None else [f"LABEL_{i}" for i in range(n)]
        if len(names) != n:
            raise CheckpointError(f"{len(names)} labels for a probe with {n} classes")
        cfg["num_pooler_layers"] = len(blocks)
        cfg["id2label"] = {str(i): name for i, name in enumerate(names)}
        cfg["label2id"] = {name: i for i, name in enumerate(names)}
    return dict(sorted(cfg.items()))


def save_hf_vjepa2(
    folder: str | os.PathLike, encoder: VisionTransformer, predictor: VisionTransformerPredictor,
    probe: AttentiveClassifierV2 | None = None, *, labels: list[str] | None = None,
    allow_probe_eps_change: bool = False,
) -> Path:
    """Write our modules as a Hugging Face folder (``config.json`` + ``model.safetensors``):
    ``VJEPA2Model`` without a probe, ``VJEPA2ForVideoClassification`` with one (the base model under
    ``vjepa2.``). Hugging Face runs its pooler with ``layer_norm_eps``; a probe with another eps (the
    official 1e-5) would give slightly other logits there (1.03e-5 relative on the fixture), so it
    is an error unless ``allow_probe_eps_change``. Returns the folder."""
    st = _safetensors()
    cfg = hf_config_for(encoder, predictor, probe, labels=labels)
    if probe is not None:
        norms = [m.eps for m in probe.modules() if isinstance(m, nn.LayerNorm)]
        if any(e != cfg["layer_norm_eps"] for e in norms) and not allow_probe_eps_change:
            raise CheckpointError(f"probe LayerNorm eps {norms[0]} differs from the model's layer_norm_eps "
                                  f"{cfg['layer_norm_eps']}, which Hugging Face's pooler uses; pass "
                                  "allow_probe_eps_change=True to save it anyway")  # fmt: skip
    tensors = {**encoder_to_hf(encoder.state_dict()), **predictor_to_hf(predictor.state_dict())}
    if probe is not None:
        tensors = {"vjepa2." + k: v for k, v in tensors.items()} | probe_to_hf(probe.state_dict())
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # safetensors refuses tensors that share storage (the qkv splits are views): one copy each.
    st.save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, folder / WEIGHTS,
                 metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return folder


# ------------------------------------------------------------------------------------------------
# Hugging Face's forward semantics on our modules
# ------------------------------------------------------------------------------------------------

def hf_video_to_clip(video: torch.Tensor, tubelet_size: int) -> torch.Tensor:
    """``pixel_values_videos`` [B, T, C, H, W] → the official [B, C, T, H, W]; a clip with fewer
    frames than a tubelet is repeated ``tubelet_size`` times along T, as Hugging Face does."""
    if video.dim() != 5:
        raise ValueError(f"Hugging Face video input is [B, T, C, H, W], got {tuple(video.shape)}")
    clip = video.permute(0, 2, 1, 3, 4)
    if clip.shape[2] < tubelet_size:
        clip = clip.repeat(1, 1, tubelet_size, 1, 1)
    return clip


@torch.no_grad()
def hf_predict(
    encoder: VisionTransformer, predictor: VisionTransformerPredictor, video: torch.Tensor,
    context_mask: torch.Tensor | None = None, target_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """What ``VJEPA2Model(video, context_mask=[ctx], target_mask=[tgt])`` returns, on our modules:
    ``encoder_out`` (the full clip), ``masked_hidden_state`` (its context rows: a gather, not a pass
    over the context alone), ``target_hidden_state`` and ``pred_out`` (mask token 1, rows in
    ``target_mask`` order). Both masks None means ``arange(N)`` for each, as there."""
    clip = hf_video_to_clip(video, encoder.tubelet_size)
    out = encoder(clip)
    if (context_mask is None) != (target_mask is None):
        raise ValueError("pass both context_mask and target_mask, or neither (Hugging Face's rule)")
    if context_mask is None:
        B, N = out.shape[:2]
        context_mask = target_mask = torch.arange(N, device=out.device).expand(B, N)
    rows = lambda m: out.gather(1, m.unsqueeze(-1).expand(-1, -1, out.shape[-1]))  # noqa: E731
    ctx = rows(context_mask)
    return {
        "encoder_out": out,
        "masked_hidden_state": ctx,
        "target_hidden_state": rows(target_mask),
        "pred_out": predictor(ctx, context_mask, target_mask, mask_index=HF_MASK_INDEX),
    }
