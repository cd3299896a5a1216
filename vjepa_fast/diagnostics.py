"""Does the predictor use what the context encoder sees?

A falling JEPA loss can be learnt from position alone: the predictor gets each target's position
from its own positional embedding, and the per-position average of the target features already
predicts a lot. That solution sends the context encoder no signal about content, and the EMA
target drifts towards a purely positional representation (the loss keeps falling). This module
measures it on held-out clips by scoring the same targets three ways:

- ``own``: the predictor reading each clip's own context (the training objective);
- ``other``: the predictor reading another clip's context (the batch rolled by one);
- ``position``: no predictor at all, the per-position median of the normalised targets over the
  clips (computed on the scored clips themselves, which if anything flatters it).

``other - own`` is what the context's content is worth to the predictor. When it is about zero and
``position`` is as low as ``own``, the run has learnt position and nothing else.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch

from .jepa import VJEPA, jepa_loss, normalize_targets
from .tokens import gather_tokens

__all__ = ["ContextUse", "context_use", "checkpoint_context_use"]


@dataclass(frozen=True)
class ContextUse:
    own: float
    other: float
    position: float
    clips: int

    @property
    def gain(self) -> float:
        """Relative loss increase when the context comes from another clip."""
        return (self.other - self.own) / max(self.other, 1e-12)

    def uses_context(self, min_gain: float = 0.01) -> bool:
        """The own context beats another clip's by more than ``min_gain`` (relative) and the predictor
        beats the position-only baseline."""
        return self.gain > min_gain and self.own < self.position

    def to_dict(self) -> dict:
        return dict(asdict(self), gain=self.gain, uses_context=self.uses_context())

    def format(self) -> str:
        verdict = ("the predictor uses the context's content" if self.uses_context() else
                   "the predictor ignores the context's content (position-only learning)")
        return (f"JEPA loss on {self.clips} held-out clips: own context {self.own:.4f}, another clip's "
                f"context {self.other:.4f} ({100 * self.gain:+.1f} %), per-position median of the "
                f"targets {self.position:.4f}: {verdict}")


@torch.no_grad()
def context_use(
    model: VJEPA, clips: torch.Tensor, masks_enc: Sequence[torch.Tensor], masks_pred: Sequence[torch.Tensor],
) -> ContextUse:
    """Score one batch ``clips [B, C, T, H, W]`` (B >= 2) with its masks (the collator's index lists)."""
    if clips.dim() != 5 or clips.shape[0] < 2:
        raise ValueError(f"context_use needs a batch of at least 2 clips [B, C, T, H, W], got {tuple(clips.shape)}")
    h = model.forward_target(clips)
    own = jepa_loss(model.forward_context(clips, masks_enc, masks_pred)[1], h, masks_pred, model.loss_exp)
    other = jepa_loss(model.forward_context(clips.roll(1, 0), masks_enc, masks_pred)[1], h, masks_pred,
                      model.loss_exp)
    median = normalize_targets(h).median(dim=0).values.expand_as(h)
    position = jepa_loss([gather_tokens(median, m) for m in masks_pred], h, masks_pred, model.loss_exp)
    return ContextUse(float(own), float(other), float(position), int(clips.shape[0]))


def checkpoint_context_use(
    checkpoint: str | os.PathLike, index: str | os.PathLike, *, num_clips: int = 96, batch_size: int = 32,
    seed: int = 0, out: Callable[[str], None] | None = None,
) -> ContextUse:
    """:func:`context_use` of a pretraining checkpoint of ours (its config is inside) on the first
    ``num_clips`` clips of a video index, centre-cropped at the training resolution, with masks from
    the run's own mask generators (``seed`` picks the draw). Losses are averaged over batches of
    ``batch_size`` (the position median is taken within each batch)."""
    from .checkpoint import load_vjepa_checkpoint, not_pretraining_checkpoint, read_checkpoint  # noqa: PLC0415
    from .config import PretrainConfig  # noqa: PLC0415
    from .eval_data import ProbeVideoEvalTransform, collate_video  # noqa: PLC0415
    from .masks import build_mask_collator  # noqa: PLC0415
    from .train import build_model_from_config  # noqa: PLC0415
    from .video_dataset import VideoDataset  # noqa: PLC0415

    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (each clip borrows another clip's context), got {batch_size}")
    ckpt = read_checkpoint(checkpoint)
    bad = not_pretraining_checkpoint(ckpt, str(checkpoint), "context-use")
    if bad:
        raise ValueError(bad)
    saved = ckpt.get("vjepa_fast", {}).get("config")
    if saved is None:
        raise ValueError(f"{checkpoint} has no vjepa_fast.config (not one of our pretraining checkpoints); "
                         "build the model yourself and call context_use()")
    cfg = PretrainConfig.from_dict(saved, source=f"{checkpoint}:vjepa_fast.config")
    model = build_model_from_config(cfg)
    load_vjepa_checkpoint(model, ckpt, source=str(checkpoint))
    model.eval()
    d = cfg.data
    ds = VideoDataset(str(index), frames_per_clip=d.num_frames, frame_step=d.sampling_rate, num_clips=1,
                      allow_clip_overlap=True, transform=ProbeVideoEvalTransform(d.crop_size, 1), seed=seed)
    n = min(int(num_clips), len(ds))
    if n < 2:
        raise ValueError(f"{index} lists {len(ds)} clip(s); context_use needs at least 2")
    subset = torch.utils.data.Subset(ds, range(n))
    masks = build_mask_collator(d.mask_type, cfg.mask_dicts(), crop_size=d.crop_size, num_frames=d.num_frames,
                                patch_size=d.patch_size, tubelet_size=d.tubelet_size, seed=seed, rank=0,
                                truncation=d.mask_truncation)
    sums, count = torch.zeros(3, dtype=torch.float64), 0
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False, collate_fn=collate_video)
    for step, (x, _) in enumerate(loader):
        clips = x[:, 0, 0]  # one segment, one view
        if clips.shape[0] < 2:
            continue  # a last batch of one clip has no other clip to borrow a context from
        masks_enc, masks_pred = masks.sample(clips.shape[0], step)
        r = context_use(model, clips, masks_enc, masks_pred)
        sums += torch.tensor([r.own, r.other, r.position], dtype=torch.float64) * r.clips
        count += r.clips
    own, other, position = (sums / count).tolist()
    result = ContextUse(own, other, position, count)
    if out is not None:
        out(result.format())
    return result
