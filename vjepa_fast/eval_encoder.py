"""The frozen encoder of the probe evaluations: built from an eval config, loaded, and its features.

Where the weights come from (``pretrain.folder`` / ``pretrain.checkpoint``):

* **a checkpoint file**: ours, the official V1 or V2 training checkpoints, or the released V2 files
  (``vitl.pt``, ``vith.pt``, ``vitg.pt``, ``vitg-384.pt``). The key is ``pretrain.checkpoint_key``
  (default ``target_encoder``, falling back to ``encoder`` when absent, as the official evals do).
  V1 encoders keep their own sin-cos table when the file's is of another size (official eval);
  RoPE encoders (``pretrain.use_rope``) load through
  :func:`vjepa_fast.checkpoint_v2.load_vjepa2_encoder`, which drops the position table the released
  files carry and a RoPE model does not use (the load report, in the results, says so).
* **a Hugging Face V-JEPA 2 folder** (``config.json`` + ``model.safetensors``, e.g. a download of
  ``facebook/vjepa2-vitl-fpc64-256``): :func:`vjepa_fast.hf_vjepa2.load_hf_vjepa2` with the official
  RoPE grid (the input's). Its encoder must be the one the ``pretrain`` section describes (width,
  depth, heads, patch, tubelet): a mismatch is an error listing each. A classifier folder's probe
  is not used (the run trains its own).

Features (:class:`FrozenEncoder`): ``pretrain.out_layers`` makes the encoder return the final-norm
output of each listed block; they are concatenated along the tokens, ``[M, len(out_layers)·N, D]``,
in block order, as V2's ``vit_encoder_multiclip_multilevel`` does (``torch.cat(outputs, dim=1)`` on
the list the encoder returns), before the segments of a view are concatenated
(:func:`vjepa_fast.probe.encode_batch`): one view's tokens are segment 0's layers, then segment 1's,
and so on. Images are repeated ``pretrain.frames_per_clip`` times along time for a video encoder (the
official forward pre-hook; V2's image eval calls that count ``img_as_video_nframes``).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoint import CheckpointError, clean_state_dict, load_encoder, read_checkpoint, state_problems
from .config import EvalConfig
from .vision_transformer import VisionTransformer, build_encoder

__all__ = [
    "FrozenEncoder",
    "encoder_kwargs",
    "build_frozen_encoder",
    "pretrained_problems",
    "is_hf_folder",
]

#: settings of an encoder that must agree between a Hugging Face folder and the pretrain section
_HF_FIELDS = (
    ("embed_dim", "hidden_size"), ("depth", "num_hidden_layers"), ("num_heads", "num_attention_heads"),
    ("patch_size", "patch_size"), ("tubelet_size", "tubelet_size"),
)


class FrozenEncoder(nn.Module):
    """A frozen ViT with the official evals' input handling. Output ``[M, L, D]``:

    * video clips ``[M, C, T, H, W]`` → the encoder's tokens; with ``vit.out_layers`` the listed
      blocks' outputs concatenated along the tokens (``L = len(out_layers)·N``);
    * video encoder + images ``[M, C, H, W]``: each image repeated ``image_frames`` times along time
      (default the encoder's ``num_frames``; the official forward pre-hook);
    * image encoder + clips ``[M, C, T, H, W]``: every frame encoded on its own, tokens concatenated
      in time order (official V1 ``FrameAggregation``) → ``[M, T·L, D]``.
    """

    def __init__(self, vit: VisionTransformer, image_frames: int | None = None):
        super().__init__()
        self.vit = vit.eval()
        for p in self.vit.parameters():
            p.requires_grad_(False)
        self.embed_dim, self.num_heads = vit.embed_dim, vit.num_heads
        self.image_frames = int(image_frames) if image_frames is not None else vit.num_frames
        if vit.is_video and (self.image_frames < vit.tubelet_size or self.image_frames % vit.tubelet_size):
            raise ValueError(f"images are repeated {self.image_frames} times along time, which must be a "
                             f"multiple of the encoder's tubelet_size {vit.tubelet_size} "
                             "(pretrain.frames_per_clip)")
        self.eval()

    def train(self, mode: bool = True):  # always frozen in eval mode
        return super().train(False)

    @property
    def num_levels(self) -> int:
        """How many blocks' outputs each input contributes (``len(out_layers)``, else 1)."""
        return len(self.vit.out_layers) if self.vit.out_layers is not None else 1

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        out = self.vit(x)
        # several levels: along the tokens, in block order (official multilevel wrapper)
        return torch.cat(out, dim=1) if isinstance(out, list) else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vit = self.vit
        if vit.is_video and x.dim() == 4:
            x = x.unsqueeze(2).repeat(1, 1, self.image_frames, 1, 1)
        elif not vit.is_video and x.dim() == 5:
            M, C, T, H, W = x.shape
            tok = self._tokens(x.transpose(1, 2).reshape(M * T, C, H, W))
            return tok.reshape(M, T * tok.shape[1], tok.shape[2])
        return self._tokens(x)

    def tokens_per_input(self, frames: int | None, resolution: int) -> int:
        """Tokens of one encoder input: a clip of ``frames`` frames, or an image (``frames=None``)."""
        vit = self.vit
        spatial = (resolution // vit.patch_size) ** 2
        if vit.is_video:
            t = self.image_frames if frames is None else frames
            return (t // vit.tubelet_size) * spatial * self.num_levels
        return spatial * (1 if frames is None else frames) * self.num_levels


def encoder_kwargs(cfg: EvalConfig) -> dict:
    """Keyword arguments of :func:`build_encoder` for the encoder the ``pretrain`` section describes,
    built for the probe resolution."""
    pre = cfg.pretrain
    kw = dict(img_size=cfg.resolution, patch_size=pre.patch_size, num_frames=pre.frames_per_clip,
              tubelet_size=pre.tubelet_size, uniform_power=pre.uniform_power, use_rope=pre.use_rope,
              out_layers=pre.out_layers)
    for name in ("embed_dim", "depth", "num_heads"):
        if getattr(pre, name) is not None:
            kw[name] = getattr(pre, name)
    return kw


def is_hf_folder(path: str | os.PathLike) -> bool:
    return Path(path).is_dir()


def _hf_mismatches(cfg: EvalConfig, hf_cfg: dict) -> list[str]:
    pre = cfg.pretrain
    ours = dict(zip(("embed_dim", "depth", "num_heads"), pre.encoder_dims()),
                patch_size=pre.patch_size, tubelet_size=pre.tubelet_size)
    out = [f"pretrain.{k}={ours[k]} but {hf_key}={hf_cfg.get(hf_key)!r} in config.json"
           for k, hf_key in _HF_FIELDS if hf_cfg.get(hf_key) != ours[k]]
    if not pre.use_rope:
        out.append("pretrain.use_rope=false but Hugging Face V-JEPA 2 encoders use RoPE")
    return out


def _pos_embed_hint(state: dict, own: dict, use_rope: bool) -> str:
    if not use_rope and "pos_embed" in own and "pos_embed" not in state:
        return " (the file has no position table: a V-JEPA 2 RoPE encoder? set pretrain.use_rope: true)"
    return ""


def pretrained_problems(cfg: EvalConfig) -> list[str]:
    """What stops the pretrained encoder of ``cfg`` from loading, without loading it: the path, the
    checkpoint key, and every tensor name / shape that does not fit the encoder the ``pretrain``
    section describes (checkpoint files are memory-mapped; a Hugging Face folder's config.json is read)."""
    pre = cfg.pretrain
    path = Path(cfg.pretrained_path)
    where = f"(pretrain.folder={pre.folder!r} + pretrain.checkpoint={pre.checkpoint!r})"
    if path.is_dir():
        from .hf_vjepa2 import WEIGHTS, WEIGHTS_INDEX, read_hf_config  # noqa: PLC0415

        try:
            hf_cfg = read_hf_config(path)
        except (FileNotFoundError, CheckpointError, ValueError) as e:
            return [f"pretrain.checkpoint: {path} is a folder but not a Hugging Face V-JEPA 2 one: {e}"]
        problems = []
        if not (path / WEIGHTS).is_file() and not (path / WEIGHTS_INDEX).is_file():
            problems.append(f"pretrain.checkpoint: no {WEIGHTS} or {WEIGHTS_INDEX} in {path}")
        found = _hf_mismatches(cfg, hf_cfg)
        if found:
            problems.append(f"pretrain: the Hugging Face encoder in {path} is not the one the pretrain "
                            "section describes:\n    " + "\n    ".join(found))
        return problems
    if not path.is_file():
        return [f"pretrained checkpoint not found: {path} {where}"]
    try:
        ckpt = read_checkpoint(path, mmap=True)
    except (FileNotFoundError, CheckpointError) as e:
        return [f"pretrain.checkpoint: {e}"]
    key = pre.checkpoint_key
    chosen = key if key in ckpt else ("encoder" if key == "target_encoder" and "encoder" in ckpt else None)
    if chosen is None:
        hint = " (a probe checkpoint?)" if "classifier" in ckpt or "classifiers" in ckpt else ""
        keys = ", ".join(map(str, ckpt))
        return [f"pretrain.checkpoint_key={key!r}: {path} has no {key!r}{hint}; keys: {keys}"]
    with torch.device("meta"):
        enc = build_encoder(pre.model_name, **encoder_kwargs(cfg))
    own = enc.state_dict()
    state = clean_state_dict(ckpt[chosen])
    if pre.use_rope:  # the released files' position tables are dropped for a RoPE encoder
        state = {k: v for k, v in state.items() if k in own or k not in ("pos_embed", "predictor_pos_embed")}
    found, _ = state_problems(own, state)
    if found:
        return [f"pretrain: the {chosen} of {path} does not fit the encoder the pretrain section describes "
                "(model_name, embed_dim, depth, patch_size, tubelet_size, frames_per_clip, use_rope)"
                f"{_pos_embed_hint(state, own, pre.use_rope)}:\n    " + "\n    ".join(found)]
    return []


def _load_hf_encoder(cfg: EvalConfig, folder: Path) -> tuple[VisionTransformer, dict]:
    from .hf_vjepa2 import load_hf_vjepa2, read_hf_config  # noqa: PLC0415

    found = _hf_mismatches(cfg, read_hf_config(folder))
    if found:
        raise CheckpointError(f"{folder}: the Hugging Face encoder is not the one the pretrain section "
                              "describes: " + "; ".join(found))
    vit = load_hf_vjepa2(folder).encoder
    # the folder's encoder is built as Hugging Face describes it; the eval picks its feature blocks
    vit.out_layers = list(cfg.pretrain.out_layers) if cfg.pretrain.out_layers is not None else None
    return vit, {"checkpoint": str(folder), "key": "hugging_face",
                 "report": "Hugging Face folder: encoder loaded"}


def build_frozen_encoder(cfg: EvalConfig, device: torch.device | str = "cpu", *,
                         checkpoint: str | os.PathLike | dict | None = None) -> FrozenEncoder:
    """Build the encoder of ``cfg``'s ``pretrain`` section for the probe resolution and load it from
    ``checkpoint`` (default ``pretrain.folder/pretrain.checkpoint``: a file, a read checkpoint dict or
    a Hugging Face folder; module docstring). ``.loaded_from`` on the result records the source, the
    key read and the load report. Raises FileNotFoundError (path named with its keys) or
    :class:`~vjepa_fast.checkpoint.CheckpointError` (tensors that do not fit, each named)."""
    pre = cfg.pretrain
    path = cfg.pretrained_path if checkpoint is None else checkpoint
    if not isinstance(path, dict) and not os.path.exists(path):
        raise FileNotFoundError(
            f"pretrained checkpoint not found: {path} (pretrain.folder={pre.folder!r} + "
            f"pretrain.checkpoint={pre.checkpoint!r})")
    if not isinstance(path, dict) and is_hf_folder(path):
        vit, loaded = _load_hf_encoder(cfg, Path(path))
    else:
        vit = build_encoder(pre.model_name, **encoder_kwargs(cfg))
        source = "checkpoint dict" if isinstance(path, dict) else str(path)
        if pre.use_rope:
            from .checkpoint_v2 import load_vjepa2_encoder  # noqa: PLC0415

            report = load_vjepa2_encoder(vit, path, key=pre.checkpoint_key)
            loaded = {"key": report.what, "report": str(report)}
        else:
            ckpt = path if isinstance(path, dict) else read_checkpoint(path)
            try:
                key = load_encoder(vit, ckpt, key=pre.checkpoint_key, source=source)
            except CheckpointError as e:
                chosen = pre.checkpoint_key if pre.checkpoint_key in ckpt else "encoder"
                hint = (_pos_embed_hint(clean_state_dict(ckpt[chosen]), vit.state_dict(), False)
                        if isinstance(ckpt.get(chosen), dict) else "")
                raise CheckpointError(f"{e}{hint}") from None
            loaded = {"key": key, "report": f"{key}: {len(vit.state_dict())} tensors loaded"}
        loaded["checkpoint"] = None if isinstance(path, dict) else str(path)
    frozen = FrozenEncoder(vit, image_frames=pre.frames_per_clip).to(device)
    #: where the weights came from, for the results record
    frozen.loaded_from = loaded
    return frozen
