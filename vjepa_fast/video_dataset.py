"""Video clip dataset with the official V-JEPA index format and clip-sampling rules.

Index files (spec §5.1): plain text, one ``<path> <int_label>`` per line, separated by whitespace, no
header; a ``.npy`` file holding a list of paths is also accepted (labels are then 0). Several index
files are concatenated in order. With ``datasets_weights`` every sample of dataset ``d`` gets the weight
``w_d / n_d`` (``dataset.sample_weights``), for :class:`DistributedWeightedSampler`.

Clip sampling follows the official rules exactly (see :func:`sample_clip_indices`); the randomness
comes from a per-item generator derived from ``(seed, epoch, index)``, so an item is reproducible
whatever worker loads it.

V-JEPA 2 (vjepa2 ``src/datasets/video_dataset.py``): ``dataset_fpcs`` gives each index file its own clip
length (a sample's clips have the length of the file that lists it); ``fps`` sets the frame step from
the video's rate, ``ceil(average fps) // fps``; a row whose path ends in ``.jpg``, ``.jpeg`` or ``.png``
(any case) is an image, repeated to the clip length (clip indices ``0..fpc-1``); and
:class:`DistributedWeightedSampler` with ``replacement=True`` draws as V2's weighted sampler does.

Differences from the official loader, all about bad input:

* a file that cannot be used is skipped *with a warning* (:class:`SkippedVideoWarning`) and recorded in
  ``dataset.skipped`` (path -> reason) of the process that hit it (each DataLoader worker has its own
  copy); the replacement index is drawn from the same per-item generator;
* the official loop retries forever; here more than ``max_retries`` failures in one ``__getitem__``
  raise :class:`RuntimeError` listing every file that failed and why;
* the reader (decord, PyAV or torchcodec: :mod:`vjepa_fast.decoders`, one interface and one
  :class:`~vjepa_fast.decoders.DecodeError` for all) is opened inside ``__getitem__`` and closed before it
  returns, so the dataset pickles to worker processes (one decoding thread per reader: parallelism comes
  from the workers);
* with ``fps``, a video whose rate is below ``fps`` (frame step 0; the official loader fails an
  assertion there) or unknown is skipped like a broken file;
* an image row returns ``num_clips`` copies of its clip (the official one clip; V2 trains with one).
"""
from __future__ import annotations

import bisect
import logging
import math
import os
import warnings
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .decoders import DecodeError, open_video, resolve_decoder

logger = logging.getLogger(__name__)

__all__ = [
    "VideoDataset",
    "DistributedWeightedSampler",
    "EpochTaggedSampler",
    "SkippedVideoWarning",
    "read_index_files",
    "sample_clip_indices",
    "MIN_FILE_BYTES",
]

MIN_FILE_BYTES = 1024  # official: files under 1 KB are treated as broken
#: V-JEPA 2: index rows whose path ends in one of these (any case) are images, repeated to the clip length
IMAGE_ROW_EXTENSIONS = (".jpg", ".jpeg", ".png")


class SkippedVideoWarning(UserWarning):
    """A video (or image) was skipped because it was missing, too small/large, short or undecodable."""


class _SkipSample(Exception):
    """Internal: the current file cannot be used; ``reason`` says why."""


# ----------------------------------------------------------------------------------------------------
# index files
# ----------------------------------------------------------------------------------------------------
def _parse_text_index(path: str) -> tuple[list[str], list[int]]:
    paths: list[str] = []
    labels: list[int] = []
    with open(path, "r", encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue  # blank lines are ignored (as a CSV reader would)
            fields = line.split()
            if len(fields) != 2:
                raise ValueError(
                    f"{path}:{lineno}: malformed index line {line!r}: expected '<path> <int_label>' "
                    f"(2 whitespace-separated fields), got {len(fields)}"
                )
            try:
                label = int(fields[1])
            except ValueError:
                raise ValueError(
                    f"{path}:{lineno}: malformed index line {line!r}: label {fields[1]!r} is not an integer"
                ) from None
            paths.append(fields[0])
            labels.append(label)
    return paths, labels


def read_index_files(
    data_paths: str | Sequence[str],
) -> tuple[list[str], list[int], list[int]]:
    """Read one or several index files; returns ``(paths, labels, num_samples_per_dataset)``."""
    if isinstance(data_paths, (str, os.PathLike)):
        data_paths = [data_paths]
    all_paths: list[str] = []
    all_labels: list[int] = []
    counts: list[int] = []
    for dp in data_paths:
        dp = os.fspath(dp)
        if not os.path.isfile(dp):
            raise FileNotFoundError(f"index file not found: {dp}")
        if dp.endswith(".npy"):
            arr = np.load(dp, allow_pickle=True)
            paths = [os.fspath(p) for p in np.asarray(arr).reshape(-1).tolist()]
            labels = [0] * len(paths)
        else:
            paths, labels = _parse_text_index(dp)
        all_paths += paths
        all_labels += labels
        counts.append(len(paths))
    return all_paths, all_labels, counts


# ----------------------------------------------------------------------------------------------------
# clip sampling (official §5.1 rules)
# ----------------------------------------------------------------------------------------------------
def sample_clip_indices(
    num_frames: int,
    frames_per_clip: int,
    frame_step: int,
    num_clips: int = 1,
    random_clip_sampling: bool = True,
    allow_clip_overlap: bool = False,
    rng: np.random.Generator | None = None,
) -> list[np.ndarray]:
    """Frame indices of ``num_clips`` clips of a video with ``num_frames`` frames (official rules).

    ``clip_len = frames_per_clip * frame_step``, ``partition_len = num_frames // num_clips``; for clip i:

    * ``partition_len > clip_len``: ``end`` is drawn from ``[clip_len, partition_len)`` (numpy
      ``randint`` semantics, high excluded; ``end = clip_len`` without random sampling),
      ``start = end - clip_len``, indices ``= clip(linspace(start, end, fpc), start, end-1)`` as int64,
      then ``+ i * partition_len``;
    * otherwise, without overlap: ``linspace(0, partition_len, partition_len // frame_step)`` padded with
      ``partition_len`` up to ``fpc``, clipped to ``[0, partition_len-1]``, ``+ i * partition_len``;
    * otherwise, with overlap: ``sample_len = min(clip_len, num_frames) - 1``,
      ``linspace(0, sample_len, sample_len // frame_step)`` padded with ``sample_len``, clipped to
      ``[0, sample_len-1]``, shifted by ``i * ((num_frames - clip_len) // (num_clips - 1))`` when
      ``num_frames > clip_len`` (else no shift).
    """
    fpc = int(frames_per_clip)
    fstp = int(frame_step)
    if fpc < 1 or fstp < 1 or num_clips < 1:
        raise ValueError(f"frames_per_clip={fpc}, frame_step={fstp}, num_clips={num_clips} must be >= 1")
    if num_frames < 1:
        raise ValueError(f"video has {num_frames} frames")
    clip_len = fpc * fstp
    partition_len = num_frames // num_clips
    if partition_len < 1:
        raise ValueError(f"video has {num_frames} frames, fewer than num_clips={num_clips}")
    if rng is None:
        rng = np.random.default_rng()
    out: list[np.ndarray] = []
    for i in range(num_clips):
        if partition_len > clip_len:
            end = clip_len
            if random_clip_sampling:
                end = int(rng.integers(clip_len, partition_len))  # high excluded, as np.random.randint
            start = end - clip_len
            idx = np.linspace(start, end, num=fpc)
            idx = np.clip(idx, start, end - 1).astype(np.int64)
            idx = idx + i * partition_len
        elif not allow_clip_overlap:
            n = partition_len // fstp
            idx = np.linspace(0, partition_len, num=n)
            idx = np.concatenate((idx, np.full(fpc - n, float(partition_len))))
            idx = np.clip(idx, 0, partition_len - 1).astype(np.int64)
            idx = idx + i * partition_len
        else:
            sample_len = min(clip_len, num_frames) - 1
            n = sample_len // fstp
            idx = np.linspace(0, sample_len, num=n)
            idx = np.concatenate((idx, np.full(fpc - n, float(sample_len))))
            idx = np.clip(idx, 0, sample_len - 1).astype(np.int64)
            clip_step = 0
            if num_frames > clip_len:
                clip_step = (num_frames - clip_len) // (num_clips - 1)
            idx = idx + i * clip_step
        out.append(idx)
    return out


# ----------------------------------------------------------------------------------------------------
# dataset
# ----------------------------------------------------------------------------------------------------
def _item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)]))


def split_index(index, default_epoch: int, size: int) -> tuple[int, int]:
    """``index`` or ``(index, epoch)`` (what the samplers yield) -> (index, epoch), range-checked."""
    if isinstance(index, (tuple, list)):
        index, epoch = int(index[0]), int(index[1])
    else:
        index, epoch = int(index), default_epoch
    if not 0 <= index < size:
        raise IndexError(f"index {index} out of range for {size} samples")
    return index, epoch


def load_with_retries(dataset, kind: str, index: int, rng: np.random.Generator, path_of: Callable[[int], str],
                      load: Callable[[str], object]) -> tuple[int, object]:
    """``(i, load(path_of(i)))`` for the first usable sample from ``index`` on: a file whose ``load`` raises
    ``_SkipSample`` is recorded in ``dataset.skipped`` / ``num_skipped``, warned about, and replaced by a
    random index (the official rule); ``dataset.max_retries`` failures in a row stop with all of them listed."""
    failures: list[tuple[str, str]] = []
    cur = index
    while True:
        path = path_of(cur)
        try:
            return cur, load(path)
        except _SkipSample as e:
            reason = str(e)
        failures.append((path, reason))
        dataset.skipped[path] = reason
        dataset.num_skipped += 1
        msg = f"skipping {kind} {path}: {reason}"
        logger.warning(msg)
        warnings.warn(msg, SkippedVideoWarning, stacklevel=3)
        if len(failures) >= dataset.max_retries:
            listing = "\n".join(f"  {p}: {r}" for p, r in failures)
            raise RuntimeError(
                f"{type(dataset).__name__}: {len(failures)} consecutive files failed while loading index {index} "
                f"(max_retries={dataset.max_retries}):\n{listing}"
            ) from None
        cur = int(rng.integers(len(dataset.samples)))


class VideoDataset(Dataset):
    """Clips decoded from official-format index files, with ``decoder`` (``auto``, ``decord``, ``pyav``
    or ``torchcodec``: :mod:`vjepa_fast.decoders`; ``auto`` resolves at construction).

    ``__getitem__(i)`` (or ``__getitem__((i, epoch))``) returns ``(clips, label, clip_indices)``: a list of
    ``num_clips`` clips, each uint8 ``[T, H, W, 3]`` at source resolution (or whatever ``transform``
    returns), the label of the sample actually loaded, and the list of frame-index arrays.

    V-JEPA 2 options: ``dataset_fpcs`` (one clip length per index file; default ``frames_per_clip``
    for all), ``fps`` (frame step ``ceil(video fps) // fps``; exclusive with ``duration``), image rows
    (module docstring). ``clip_length(i)`` is the clip length of sample ``i``.
    """

    def __init__(
        self,
        data_paths: str | Sequence[str],
        datasets_weights: Sequence[float] | None = None,
        frames_per_clip: int = 16,
        frame_step: int = 4,
        num_clips: int = 1,
        duration: float | None = None,
        random_clip_sampling: bool = True,
        allow_clip_overlap: bool = False,
        filter_short_videos: bool = False,
        filter_long_videos: int = int(1e9),
        transform: Callable | None = None,
        shared_transform: Callable | None = None,
        seed: int = 0,
        max_retries: int = 10,
        decoder: str = "auto",
        dataset_fpcs: Sequence[int] | None = None,
        fps: float | None = None,
    ):
        if isinstance(data_paths, (str, os.PathLike)):
            data_paths = [data_paths]
        self.data_paths = [os.fspath(p) for p in data_paths]
        self.frames_per_clip = int(frames_per_clip)
        self.frame_step = int(frame_step)
        self.num_clips = int(num_clips)
        self.duration = duration
        self.random_clip_sampling = bool(random_clip_sampling)
        self.allow_clip_overlap = bool(allow_clip_overlap)
        self.filter_short_videos = bool(filter_short_videos)
        self.filter_long_videos = int(filter_long_videos)
        self.transform = transform
        self.shared_transform = shared_transform
        self.seed = int(seed)
        self.max_retries = int(max_retries)
        #: the decoder this dataset reads with, resolved here so an unusable choice fails at construction
        #: (workers re-import the same library in the same environment)
        self.decoder = resolve_decoder(decoder)
        self.epoch = 0
        if self.frames_per_clip < 1 or self.frame_step < 1 or self.num_clips < 1:
            raise ValueError("frames_per_clip, frame_step and num_clips must be >= 1")
        if self.max_retries < 1:
            raise ValueError("max_retries must be >= 1")

        if fps is not None and (not fps > 0 or duration is not None):
            raise ValueError(
                f"fps={fps!r} must be > 0 and excludes duration={duration!r} (one way to the frame step)")
        self.fps = None if fps is None else float(fps)
        paths, labels, counts = read_index_files(self.data_paths)
        if not paths:
            raise ValueError(f"no samples in index files {self.data_paths}")
        if dataset_fpcs is None:
            dataset_fpcs = [self.frames_per_clip] * len(counts)
        if len(dataset_fpcs) != len(counts) or any(int(f) < 1 for f in dataset_fpcs):
            raise ValueError(f"dataset_fpcs={list(dataset_fpcs)!r} must give a clip length >= 1 for each of "
                             f"the {len(counts)} index files {self.data_paths}")
        self.dataset_fpcs = [int(f) for f in dataset_fpcs]
        self._ends = np.cumsum(counts).tolist()  # sample i belongs to index file bisect_right(ends, i)
        self.samples: list[str] = paths
        self.labels: np.ndarray = np.asarray(labels, dtype=np.int64)
        self.num_samples_per_dataset: list[int] = counts

        self.sample_weights: np.ndarray | None = None
        if datasets_weights is not None:
            if len(datasets_weights) != len(counts):
                raise ValueError(
                    f"{len(datasets_weights)} datasets_weights for {len(counts)} index files "
                    f"{self.data_paths}"
                )
            w = []
            for wd, nd in zip(datasets_weights, counts):
                if float(wd) < 0:
                    raise ValueError(f"negative dataset weight {wd}")
                w += [float(wd) / nd] * nd
            self.sample_weights = np.asarray(w, dtype=np.float64)

        # per-process bookkeeping of skipped files
        self.skipped: dict[str, str] = {}
        self.num_skipped = 0

    # -- epoch handling --------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Changes the per-item randomness. With persistent DataLoader workers use
        :class:`EpochTaggedSampler` instead (workers keep their own copy of the dataset)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    # -- loading -------------------------------------------------------------------------------------
    def _check_file(self, path: str) -> None:
        if not os.path.exists(path):
            raise _SkipSample("file not found")
        size = os.path.getsize(path)
        if size < MIN_FILE_BYTES:
            raise _SkipSample(f"file smaller than 1 KB ({size} bytes)")
        if size > self.filter_long_videos:
            raise _SkipSample(
                f"file larger than filter_long_videos ({size} > {self.filter_long_videos} bytes)"
            )

    def clip_length(self, index: int) -> int:
        """Frames per clip of sample ``index``: its index file's entry of ``dataset_fpcs``."""
        return self.dataset_fpcs[bisect.bisect_right(self._ends, int(index))]

    def load_video(self, path: str, rng: np.random.Generator,
                   fpc: int | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """Decode the ``fpc``-frame clips (default ``frames_per_clip``) of one file; raises ``_SkipSample``
        when the file cannot be used."""
        fpc = self.frames_per_clip if fpc is None else int(fpc)
        self._check_file(path)
        try:
            reader = open_video(path, self.decoder, threads=1)
        except DecodeError as e:
            raise _SkipSample(f"cannot open ({e})") from None
        with reader:
            n = len(reader)
            fstp = self.frame_step
            if self.duration is not None:
                fps = reader.fps
                fstp = int(self.duration * fps / fpc)
                if fstp < 1:
                    raise _SkipSample(f"duration={self.duration}s at {fps:.3g} fps gives frame_step 0")
            elif self.fps is not None:
                rate = reader.fps
                # Official V2: the rate rounded up to an int, then floor-divided by the target rate.
                fstp = int(math.ceil(rate) // self.fps) if rate and math.isfinite(rate) else 0
                if fstp < 1:
                    raise _SkipSample(f"video at {rate:.3g} fps, slower than fps={self.fps:g} (frame step 0)")
            clip_len = fpc * fstp
            if self.filter_short_videos and n < clip_len:
                raise _SkipSample(f"video shorter than a clip ({n} < {clip_len} frames)")
            if n // self.num_clips < 1:
                raise _SkipSample(f"video has {n} frames, fewer than num_clips={self.num_clips}")
            clip_indices = sample_clip_indices(
                n, fpc, fstp, self.num_clips,
                self.random_clip_sampling, self.allow_clip_overlap, rng,
            )
            try:
                buffer = reader.get_batch(np.concatenate(clip_indices).tolist())
            except DecodeError as e:
                raise _SkipSample(f"decoding frames failed ({e})") from None
        return buffer, clip_indices

    def load_image_clip(self, path: str, fpc: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """An image row: the RGB image repeated ``fpc`` times as uint8 ``[num_clips * fpc, H, W, 3]``
        (each clip the same), clip indices ``0..fpc-1``; raises ``_SkipSample`` when it cannot be read."""
        from .image_dataset import ImageFolderDataset  # noqa: PLC0415

        if not os.path.exists(path):
            raise _SkipSample("file not found")
        try:
            img = ImageFolderDataset.load_image(path)
        except Exception as e:  # PIL raises OSError / UnidentifiedImageError / ValueError ...
            raise _SkipSample(f"cannot read image ({type(e).__name__}: {str(e).strip()[:200]})") from None
        buffer = np.broadcast_to(img, (self.num_clips * fpc, *img.shape)).copy()
        return buffer, [np.arange(fpc, dtype=np.int64) for _ in range(self.num_clips)]

    def _load(self, path: str, rng: np.random.Generator, fpc: int):
        if path.lower().endswith(IMAGE_ROW_EXTENSIONS):
            return self.load_image_clip(path, fpc)
        return self.load_video(path, rng, fpc)

    def __getitem__(self, index):
        index, epoch = split_index(index, self.epoch, len(self.samples))
        rng = _item_rng(self.seed, epoch, index)
        # A replacement drawn for a bad file keeps the length of the sample it stands in for: the
        # sampler's batch composition (and so its masks) is fixed before anything is decoded.
        fpc = self.clip_length(index)
        cur, (buffer, clip_indices) = load_with_retries(
            self, "video", index, rng, self.samples.__getitem__, lambda path: self._load(path, rng, fpc))

        label = int(self.labels[cur])
        if self.shared_transform is not None:
            buffer = self.shared_transform(buffer)
        clips = [buffer[i * fpc:(i + 1) * fpc] for i in range(self.num_clips)]
        if self.transform is not None:
            clips = [self.transform(c) for c in clips]
        return clips, label, clip_indices


# ----------------------------------------------------------------------------------------------------
# samplers
# ----------------------------------------------------------------------------------------------------
def _dist_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class DistributedWeightedSampler(Sampler[int]):
    """Weighted sampling split across ranks (one draw per epoch, shared by all ranks through the seed).

    Every epoch all ranks draw the same ``num_samples`` indices (default ``len(weights)``) with
    probability proportional to ``weights``; rank r keeps positions ``r, r+W, r+2W, ...`` of that
    list (padded by wrapping so every rank gets the same count). Without replacement (the official
    V1 default: ``np.random.choice(replace=False)``) the draw is an exact weighted sample without
    replacement (Efraimidis-Spirakis keys). With replacement it is V-JEPA 2's sampler (vjepa2
    ``src/datasets/utils/weighted_sampler.py``) draw for draw: ``np.random.default_rng(seed +
    epoch).choice(n, size=ceil(num_samples / W) * W, p=weights / sum(weights), replace=True)``, then
    every W-th from r (V2 passes no seed, so 0 there). Call :meth:`set_epoch` every epoch.
    """

    def __init__(
        self,
        weights: Sequence[float] | np.ndarray | torch.Tensor,
        num_replicas: int | None = None,
        rank: int | None = None,
        num_samples: int | None = None,
        replacement: bool = False,
        seed: int = 0,
    ):
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64), dtype=torch.float64)
        if w.ndim != 1 or len(w) == 0:
            raise ValueError("weights must be a non-empty 1-D sequence")
        if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError("weights must be finite, >= 0, and not all zero")
        world, r = _dist_world()
        self.num_replicas = world if num_replicas is None else int(num_replicas)
        self.rank = r if rank is None else int(rank)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} not in [0, {self.num_replicas})")
        self.weights = w
        self.total = len(w) if num_samples is None else int(num_samples)
        self.replacement = bool(replacement)
        if not self.replacement and self.total > int((w > 0).sum()):
            raise ValueError(
                f"cannot draw {self.total} samples without replacement from "
                f"{int((w > 0).sum())} non-zero weights"
            )
        self.seed = int(seed)
        self.epoch = 0
        self.num_samples = math.ceil(self.total / self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _draw(self) -> torch.Tensor:
        if self.replacement:
            w = self.weights.numpy()
            rng = np.random.default_rng(self.seed + self.epoch)
            size = self.num_samples * self.num_replicas  # the official total_size: no padding needed
            return torch.from_numpy(rng.choice(len(w), size=size, p=w / np.sum(w), replace=True))
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        u = torch.rand(len(self.weights), generator=g, dtype=torch.float64).clamp_min(1e-300)
        keys = torch.log(u) / self.weights  # -inf for zero weights: never picked before positives
        return torch.argsort(keys, descending=True, stable=True)[: self.total]

    def __iter__(self) -> Iterator[int]:
        idx = self._draw().tolist()
        padded = self.num_samples * self.num_replicas
        if padded > len(idx):
            idx = idx + (idx * math.ceil((padded - len(idx)) / len(idx)))[: padded - len(idx)]
        return iter(idx[self.rank:padded:self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


class EpochTaggedSampler(Sampler):
    """Wraps a sampler so it yields ``(index, epoch)``; :class:`VideoDataset` then derives the item's
    randomness from that epoch even inside persistent DataLoader workers. ``set_epoch`` is forwarded."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        e = self.epoch
        return ((int(i), e) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)
