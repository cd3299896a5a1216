"""Pretraining data: decoded uint8 clips from CPU workers, augmentation batched on the device.

Pipeline (one rank)::

    index files --VideoDataset (data.decoder, in DataLoader workers)--> uint8 [T,H,W,3] per clip
      [--RandAugment (data_aug.auto_augment; workers, full-resolution uint8 frames, PIL)]
      --collate_uint8--> lists of uint8 tensors (pinned on CUDA)
      --VideoClipSource (main process)--> crop/resize/flip/normalise, batched on the device
      (vjepa_fast.transforms.apply_video_transform)
      [--random erasing (data_aug.reprob; on the device, per clip)] --> float [B*num_clips, 3, T, S, S]

This is the official order (spec §5.2): RandAugment before the random-resized-crop, random erasing
after normalisation. RandAugment is :class:`vjepa_fast.eval_data.RandAugmentVideo`
(``rand-m7-n4-mstd0.5-inc1``, bicubic, one set of op parameters for all frames of a clip); random
erasing is :func:`vjepa_fast.eval_data.random_erase_` (pixel mode, max_count 1, one box for every
frame of the clip, fresh N(0,1) noise per frame: the official ``RandomErasing(cube=True)``). The
official transform normalises in [0,1] units when RandAugment is on; normalising the [0,255] clip with
mean/std x 255 is the same affine map (equal up to float32 rounding).

Masks are not made here: the trainer draws them in the main process with
``collator.sample(B, step)`` (a pure function of ``(seed, rank, step)``).

Determinism and exact resume. Everything random is a function of a counter that is checkpointed:

* the sample order is the sampler's permutation for *data pass* ``p`` (``DistributedSampler``
  shuffled with ``seed + p``, or :class:`~vjepa_fast.video_dataset.DistributedWeightedSampler` when
  ``data.datasets_weights`` is set), split across ranks by the sampler;
* the clip position inside a video comes from ``(seed, p, index)`` (the dataset's per-item
  generator, passed ``p`` through :class:`~vjepa_fast.video_dataset.EpochTaggedSampler` so it also
  works in persistent workers);
* crop boxes and flips of training step ``s`` come from a generator keyed by ``(seed, rank, s)``;
* RandAugment of sample ``index`` in pass ``p`` draws from a numpy generator keyed by
  ``(seed, rank, p, index)`` (in the worker, so it does not depend on the number of workers);
* random erasing of clip ``b`` of step ``s`` draws from a numpy generator keyed by
  ``(seed, rank, s, b)``.

The source state is ``{"pass": p, "consumed": k}`` (batches of pass ``p`` already used). On resume
the sampler skips the first ``k * B`` indices *by index*, without decoding them.

``ipe`` semantics (official): the loader is re-created only when exhausted, independent of the
training "epoch"; each re-creation starts the next data pass (``set_epoch(pass)``). (The official
loop calls ``set_epoch(epoch)`` with the training epoch, which takes effect only at the next
re-creation; counting passes instead gives every pass its own order and a resumable state.)

V-JEPA 2 runs (``data.dataset_fpcs``): every index file has its clip length, so a batch mixes
lengths. ``source(step)`` then returns a :class:`MultiLengthBatch`: the length of each sample and, per
length, the clips of those samples in batch order, each length transformed on its own (crop boxes and
flips still drawn per sample over the whole batch, erasing keyed by the sample's batch position).
Dataset weights are drawn with replacement as V2's sampler does (``DistributedWeightedSampler``
with ``replacement=True``, seeded ``meta.seed + pass``; official: ``0 + epoch``), and ``data.fps``
sets the frame step from each video's rate.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .config import PretrainConfig
from .eval_data import RandAugmentVideo, random_erase_
from .transforms import IMAGENET_MEAN, IMAGENET_STD, _check_motion_shift, apply_video_transform, sample_batch_crop_params
from .video_dataset import DistributedWeightedSampler, VideoDataset

__all__ = [
    "build_video_dataset",
    "build_sampler",
    "ResumableSampler",
    "collate_uint8",
    "VideoClipSource",
    "MultiLengthBatch",
    "repeat_masks",
    "step_generator",
    "numpy_generator",
    "RandAugmentClips",
    "random_erase_batch_",
]


def step_generator(seed: int, rank: int, step: int, stream: str = "crop") -> torch.Generator:
    """A CPU generator that depends only on ``(seed, rank, step, stream)``."""
    key = hashlib.blake2b(f"{seed}/{rank}/{step}/{stream}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(key, "little") & 0x7FFF_FFFF_FFFF_FFFF)


def numpy_generator(seed: int, rank: int, step: int, stream: str, *extra: int) -> np.random.Generator:
    """A numpy generator that depends only on ``(seed, rank, step, stream, *extra)``."""
    key = hashlib.blake2b("/".join(str(v) for v in (seed, rank, step, stream, *extra)).encode(), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(key, "little"))


class RandAugmentClips(Dataset):
    """Wraps a :class:`VideoDataset` (indexed by ``index`` or ``(index, pass)``) and applies
    :class:`~vjepa_fast.eval_data.RandAugmentVideo` to every clip of the item, on the full-resolution
    uint8 frames, before anything else (official order). Clip ``c`` of sample ``index`` in pass ``p``
    on rank ``rank`` draws from ``numpy_generator(seed, rank, p, "randaugment", index)`` (clips of a
    sample in turn), so the result does not depend on which worker decodes it."""

    def __init__(self, base: Dataset, seed: int = 0, rank: int = 0, randaugment: RandAugmentVideo | None = None):
        self.base = base
        self.seed, self.rank = int(seed), int(rank)
        self.randaugment = randaugment if randaugment is not None else RandAugmentVideo()

    def __len__(self) -> int:
        return len(self.base)

    def augment(self, clips, data_pass: int, index: int) -> list[np.ndarray]:
        rng = numpy_generator(self.seed, self.rank, data_pass, "randaugment", index)
        return [self.randaugment(np.asarray(c), rng) for c in clips]

    def __getitem__(self, key):
        if isinstance(key, (tuple, list)):
            index, data_pass = int(key[0]), int(key[1])
        else:
            index, data_pass = int(key), int(getattr(self.base, "epoch", 0))
        clips, label, clip_indices = self.base[key]
        return self.augment(clips, data_pass, index), label, clip_indices


def random_erase_batch_(x: torch.Tensor, prob: float, seed: int, rank: int, step: int,
                        positions: Sequence[int] | None = None) -> torch.Tensor:
    """Random erasing, in place, of a batch of normalised clips ``[B, C, T, H, W]`` (any device and
    dtype): clip ``b`` goes through :func:`~vjepa_fast.eval_data.random_erase_` (probability ``prob``,
    pixel mode, one box for all frames, max_count 1) with ``numpy_generator(seed, rank, step, "erase",
    positions[b])`` (``positions``: the clips' places in the whole batch; default ``0..B-1``)."""
    if prob <= 0:
        return x
    positions = range(x.shape[0]) if positions is None else positions
    for b, pos in enumerate(positions):
        random_erase_(x[b], prob, numpy_generator(seed, rank, step, "erase", int(pos)))
    return x


@dataclass
class MultiLengthBatch:
    """One V-JEPA 2 batch whose samples may have different clip lengths: ``fpcs[b]`` frames for sample
    b (batch order), and ``clips[fpc]`` the float ``[B_fpc, C, fpc, S, S]`` clips of the samples of that
    length, in batch order (what :meth:`vjepa_fast.masks.MultiSeqMaskCollator.sample_groups` groups)."""

    fpcs: list[int]
    clips: dict[int, torch.Tensor]

    @property
    def batch_size(self) -> int:
        return len(self.fpcs)


def build_video_dataset(cfg: PretrainConfig) -> VideoDataset:
    """The official ``VideoDataset`` for ``cfg.data`` returning raw uint8 clips (no transform:
    augmentation happens batched on the device; RandAugment, when on, is added by
    :class:`VideoClipSource` as a :class:`RandAugmentClips` wrapper)."""
    d = cfg.data
    if not d.datasets:
        raise ValueError("data.datasets is empty: list the index files (official '<path> <label>' format)")
    _check_motion_shift(cfg.data_aug.motion_shift)
    return VideoDataset(
        d.datasets, datasets_weights=d.datasets_weights, frames_per_clip=d.num_frames,
        frame_step=d.sampling_rate, num_clips=d.num_clips, duration=d.clip_duration,
        random_clip_sampling=True, allow_clip_overlap=False, filter_short_videos=d.filter_short_videos,
        transform=None, seed=cfg.meta.seed, decoder=d.decoder, dataset_fpcs=d.dataset_fpcs, fps=d.fps,
    )


def build_sampler(dataset: VideoDataset, rank: int = 0, world_size: int = 1, seed: int = 0,
                  replacement: bool = False) -> Sampler:
    """Per-rank sampler: ``DistributedSampler(shuffle=True)`` (official), or the weighted one when
    the dataset has ``sample_weights`` (``data.datasets_weights``): without replacement as V1's,
    with ``replacement`` as V2's."""
    if dataset.sample_weights is not None:
        return DistributedWeightedSampler(dataset.sample_weights, num_replicas=world_size, rank=rank,
                                          seed=seed, replacement=replacement)
    return DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)


class ResumableSampler(Sampler):
    """Yields ``(index, pass)`` pairs of ``base`` for the current pass, starting at position
    ``start`` (skipped by index: nothing is decoded). ``set_epoch`` forwards to ``base``."""

    def __init__(self, base: Sampler):
        self.base = base
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(self.epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # Eager: the pass and start position are fixed when the DataLoader creates its iterator.
        e, s = self.epoch, self.start
        return ((int(i), e) for k, i in enumerate(iter(self.base)) if k >= s)

    def __len__(self) -> int:
        return max(0, len(self.base) - self.start)


def collate_uint8(batch):
    """``[(clips, label, clip_indices), ...]`` -> ``(clips, labels)`` with ``clips[c][b]`` the
    uint8 ``[T,H,W,3]`` tensor of clip ``c`` of sample ``b`` (sizes, and with ``data.dataset_fpcs``
    lengths, may differ between samples, so nothing is stacked) and ``labels`` int64 ``[B]``."""
    num_clips = len(batch[0][0])
    clips = [[torch.as_tensor(sample[0][c]) for sample in batch] for c in range(num_clips)]
    labels = torch.tensor([int(sample[1]) for sample in batch], dtype=torch.int64)
    return clips, labels


def repeat_masks(masks: Sequence[torch.Tensor], num_clips: int) -> list[torch.Tensor]:
    """Official ``repeat_interleave_batch`` for one batch: with ``num_clips`` clips per sample the
    clips are concatenated clip-major ([clip 0 of every sample, clip 1 of every sample, ...]) and
    every clip of a sample reuses that sample's masks."""
    if num_clips == 1:
        return list(masks)
    return [torch.cat([m] * num_clips, dim=0) for m in masks]


class VideoClipSource:
    """Training clips for step ``s`` on ``device``: ``source(s) -> [B*num_clips, 3, T, S, S]``.

    Owns the DataLoader (``drop_last``, ``num_workers``, ``pin_memory``, ``persistent_workers``)
    and re-creates its iterator when it is exhausted. ``state_dict``/``load_state_dict`` make the
    data order resumable (see the module docstring). Call ``close()`` when done.
    """

    def __init__(self, cfg: PretrainConfig, device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                 out_dtype: torch.dtype = torch.float32, dataset: VideoDataset | None = None):
        d, a = cfg.data, cfg.data_aug
        self.cfg = cfg
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.seed = cfg.meta.seed
        self.batch_size = d.batch_size
        self.num_clips = d.num_clips
        self.crop_size = d.crop_size
        self.scale = tuple(a.random_resize_scale)
        self.ratio = tuple(a.random_resize_aspect_ratio)
        self.out_dtype = out_dtype
        _check_motion_shift(a.motion_shift)
        self.auto_augment = bool(a.auto_augment)
        self.reprob = float(a.reprob)
        self.dataset = dataset if dataset is not None else build_video_dataset(cfg)
        #: V-JEPA 2 (data.dataset_fpcs): batches of mixed clip lengths, see :class:`MultiLengthBatch`
        self.multi_length = cfg.is_v2
        self.sampler = ResumableSampler(build_sampler(self.dataset, rank, world_size, self.seed,
                                                      replacement=cfg.is_v2))
        self.pin = bool(d.pin_mem) and self.device.type == "cuda"
        # RandAugment runs in the workers on the decoded uint8 frames (before the device crop).
        loader_dataset = RandAugmentClips(self.dataset, self.seed, rank) if self.auto_augment else self.dataset
        self.loader = DataLoader(
            loader_dataset, batch_size=d.batch_size, sampler=self.sampler, drop_last=True,
            num_workers=d.num_workers, pin_memory=self.pin,
            persistent_workers=d.persistent_workers and d.num_workers > 0,
            collate_fn=collate_uint8,
        )
        n = len(self.sampler.base) // d.batch_size
        if n < 1:
            raise ValueError(
                f"{len(self.dataset)} videos split over {world_size} rank(s) give {len(self.sampler.base)} "
                f"per rank, fewer than data.batch_size={d.batch_size}: not one full batch (drop_last)"
            )
        self.batches_per_pass = n
        self.data_pass = 0
        self.consumed = 0
        self._it = None
        self.last_labels: torch.Tensor | None = None

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"pass": self.data_pass, "consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.data_pass = int(state["pass"])
        self.consumed = int(state["consumed"])
        if not 0 <= self.consumed <= self.batches_per_pass:
            raise ValueError(f"data state {state} does not fit {self.batches_per_pass} batches per pass")
        self._it = None

    # -- iteration -------------------------------------------------------------------------------
    def _start_iterator(self) -> None:
        self.sampler.set_epoch(self.data_pass)
        self.sampler.start = self.consumed * self.batch_size
        self._it = iter(self.loader)

    def next_batch(self):
        """The next ``(clips, labels)`` of uint8 tensors (CPU), advancing the data state."""
        if self._it is None:
            self._start_iterator()
        try:
            batch = next(self._it)
        except StopIteration:
            self.data_pass += 1
            self.consumed = 0
            self._start_iterator()
            batch = next(self._it)
        self.consumed += 1
        if self.consumed >= self.batches_per_pass:
            # The pass is complete: the next call starts the next pass (the state says so too, so
            # a checkpoint taken now resumes at the start of pass + 1).
            self.data_pass += 1
            self.consumed = 0
            self._it = None
        return batch

    def transform(self, clips: Sequence[torch.Tensor], step: int) -> torch.Tensor:
        """Crop/resize/flip/normalise a list of uint8 clips for step ``step`` on ``self.device``,
        then random erasing (``data_aug.reprob``) of each normalised clip."""
        g = step_generator(self.seed, self.rank, step)
        sizes = [(int(c.shape[1]), int(c.shape[2])) for c in clips]
        boxes, flips = sample_batch_crop_params(sizes, self.scale, self.ratio, g, 0.5)
        out = apply_video_transform(clips, boxes, flips, self.crop_size, IMAGENET_MEAN, IMAGENET_STD,
                                    device=self.device, out_dtype=self.out_dtype)
        # Erasing in out_dtype == erasing in float32 then casting (the noise is cast the same way).
        return random_erase_batch_(out, self.reprob, self.seed, self.rank, step)

    def transform_groups(self, clips: Sequence[torch.Tensor], step: int) -> MultiLengthBatch:
        """:meth:`transform` for a batch of mixed clip lengths (one clip per sample): crop boxes and
        flips drawn per sample over the whole batch as there, then each length's clips transformed
        together, erasing keyed by the sample's batch position."""
        g = step_generator(self.seed, self.rank, step)
        sizes = [(int(c.shape[1]), int(c.shape[2])) for c in clips]
        boxes, flips = sample_batch_crop_params(sizes, self.scale, self.ratio, g, 0.5)
        boxes, flips = np.asarray(boxes), np.asarray(flips)
        fpcs = [int(c.shape[0]) for c in clips]
        out: dict[int, torch.Tensor] = {}
        for fpc in dict.fromkeys(fpcs):
            rows = [b for b, f in enumerate(fpcs) if f == fpc]
            x = apply_video_transform([clips[b] for b in rows], boxes[rows], flips[rows], self.crop_size,
                                      IMAGENET_MEAN, IMAGENET_STD, device=self.device,
                                      out_dtype=self.out_dtype)
            out[fpc] = random_erase_batch_(x, self.reprob, self.seed, self.rank, step, positions=rows)
        return MultiLengthBatch(fpcs, out)

    def __call__(self, step: int) -> torch.Tensor | MultiLengthBatch:
        clips, labels = self.next_batch()
        self.last_labels = labels
        if self.multi_length:
            return self.transform_groups(clips[0], step)  # V2: one clip per sample
        flat = [c for per_clip in clips for c in per_clip]  # clip-major, as the official torch.cat
        return self.transform(flat, step)

    def close(self) -> None:
        it, self._it = self._it, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        # drop persistent workers
        if getattr(self.loader, "_iterator", None) is not None:
            self.loader._iterator._shutdown_workers()
            self.loader._iterator = None
