"""Data side of the frozen evaluations: train/eval transforms, datasets, loaders, collation.

Video (official ``evals/video_classification_frozen``):

* train transform (:class:`ProbeVideoTrainTransform`, ``data.train_augmentation``):
  ``official``: RandAugment ``rand-m7-n4-mstd0.5-inc1`` on the uint8 frames (PIL, bicubic, one set of
  op parameters for every frame of the clip) -> random-resized-crop, scale (0.08, 1), aspect (3/4, 4/3),
  one box for all frames, bilinear -> **no flip** -> normalise -> random erasing p=0.25, pixel mode,
  one box for every frame of the clip (the official ``RandomErasing(cube=True)`` default);
  ``crop``: the crop alone; ``none``: the deterministic single centre view of the eval transform.
* eval transform: :func:`vjepa_fast.transforms.eval_video_views` (3 spatial views, or the
  256/224 resize + centre crop for a single view).
* clips: ``VideoDataset(num_clips=S, allow_clip_overlap=True)``; training uses S segments only when
  ``attend_across_segments`` (else 1; the V2 protocol always attends across them) and always one view.

V-JEPA 2's frozen evals (facebookresearch/vjepa2 ``evals/video_classification_frozen/utils.py`` and
the image eval's transforms) use the same transforms, sampling and parameters as V1 (the files
differ only in formatting and V1's FrameAggregation), so both protocols share this module; V2 reads
the frame step from ``data.frame_step``, as we do for both.

Images (official ``evals/image_classification_frozen``): torchvision-free ImageFolder; train =
random-resized-crop (scale (0.08, 1), ratio (3/4, 4/3), bicubic) + horizontal flip p=0.5 + random
erasing p=0.25 (timm's AutoAugment ``original`` policy is **not** implemented); val = resize the short
side to ``int(res * 256 / 224)`` (bilinear) + centre crop.

Collated batches: video ``x`` is float32 ``[B, S, V, 3, T, H, W]``; images ``[B, 3, H, W]``.

Randomness: every transform draws from its own numpy generator, re-seeded from
``(seed, epoch, worker id)`` (:meth:`set_epoch` before the loader iterator is created), so a run and a
resumed run see the same augmentations. The official code draws from the global ``random`` /
``numpy`` state: same distributions, different streams.
"""
from __future__ import annotations

import math
import os
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .transforms import IMAGENET_MEAN, IMAGENET_STD, apply_video_transform, eval_video_views

__all__ = [
    "RandAugmentVideo",
    "random_erase_",
    "ProbeVideoTrainTransform",
    "ProbeVideoEvalTransform",
    "ImageTrainTransform",
    "ImageEvalTransform",
    "collate_video",
    "collate_images",
    "EpochShuffleSampler",
    "make_probe_loader",
]

_FILL = (128, 128, 128)


# ----------------------------------------------------------------------------------------------------
# seeded randomness that follows (seed, epoch, worker)
# ----------------------------------------------------------------------------------------------------
class _Seeded:
    """Mixin: ``self.rng`` is a numpy Generator derived from ``(seed, epoch, worker id)``."""

    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._rng_key = None

    @property
    def rng(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        key = (self.seed, self.epoch, -1 if info is None else info.id, os.getpid())
        if getattr(self, "_rng_key", None) != key:
            self._rng = np.random.default_rng(np.random.SeedSequence([self.seed & 0xFFFFFFFF, self.epoch, key[2] + 1]))
            self._rng_key = key
        return self._rng


# ----------------------------------------------------------------------------------------------------
# RandAugment (official video variant, rand-m7-n4-mstd0.5-inc1)
# ----------------------------------------------------------------------------------------------------
_OPS: dict | None = None


def _ops() -> dict:
    """The op table (built once per process; instances keep only op names, so they pickle)."""
    global _OPS
    if _OPS is None:
        _OPS = _make_ops()
    return _OPS


def _make_ops() -> dict:
    from PIL import Image, ImageEnhance, ImageOps  # noqa: PLC0415

    def affine(img, matrix, resample):
        return img.transform(img.size, Image.AFFINE, matrix, resample=resample, fillcolor=_FILL)

    def solarize_add(img, add, thresh=128):
        lut = [min(255, i + add) if i < thresh else i for i in range(256)]
        return img.point(lut * len(img.getbands())) if img.mode in ("L", "RGB") else img

    def posterize(img, bits):
        return img if bits >= 8 else ImageOps.posterize(img, bits)

    # name -> (op(img, arg, resample), level_to_arg(magnitude, rng) or None)
    def signed(v, rng):
        return -v if rng.random() > 0.5 else v

    return {
        "AutoContrast": (lambda img, a, r: ImageOps.autocontrast(img), None),
        "Equalize": (lambda img, a, r: ImageOps.equalize(img), None),
        "Invert": (lambda img, a, r: ImageOps.invert(img), None),
        "Rotate": (lambda img, a, r: img.rotate(a, resample=r, fillcolor=_FILL), lambda m, g: signed(m / 10 * 30.0, g)),
        "PosterizeIncreasing": (lambda img, a, r: posterize(img, a), lambda m, g: 4 - int(m / 10 * 4)),
        "SolarizeIncreasing": (lambda img, a, r: ImageOps.solarize(img, a), lambda m, g: 256 - int(m / 10 * 256)),
        "SolarizeAdd": (lambda img, a, r: solarize_add(img, a), lambda m, g: int(m / 10 * 110)),
        "ColorIncreasing": (lambda img, a, r: ImageEnhance.Color(img).enhance(a), lambda m, g: 1.0 + signed(m / 10 * 0.9, g)),
        "ContrastIncreasing": (lambda img, a, r: ImageEnhance.Contrast(img).enhance(a), lambda m, g: 1.0 + signed(m / 10 * 0.9, g)),
        "BrightnessIncreasing": (lambda img, a, r: ImageEnhance.Brightness(img).enhance(a), lambda m, g: 1.0 + signed(m / 10 * 0.9, g)),
        "SharpnessIncreasing": (lambda img, a, r: ImageEnhance.Sharpness(img).enhance(a), lambda m, g: 1.0 + signed(m / 10 * 0.9, g)),
        "ShearX": (lambda img, a, r: affine(img, (1, a, 0, 0, 1, 0), r), lambda m, g: signed(m / 10 * 0.3, g)),
        "ShearY": (lambda img, a, r: affine(img, (1, 0, 0, a, 1, 0), r), lambda m, g: signed(m / 10 * 0.3, g)),
        "TranslateXRel": (lambda img, a, r: affine(img, (1, 0, a * img.size[0], 0, 1, 0), r), lambda m, g: signed(m / 10 * 0.45, g)),
        "TranslateYRel": (lambda img, a, r: affine(img, (1, 0, 0, 0, 1, a * img.size[1]), r), lambda m, g: signed(m / 10 * 0.45, g)),
    }


class RandAugmentVideo:
    """RandAugment as the official video eval configures it (``rand-m7-n4-mstd0.5-inc1``, bicubic):
    ``num_ops`` ops drawn uniformly with replacement from the 15 "increasing" ops; each op runs with
    probability 0.5, with magnitude ``N(7, 0.5)`` clipped to [0, 10]; the op, its magnitude and its sign
    are drawn once per clip and applied to every frame. Geometric ops fill with grey (128)."""

    def __init__(self, magnitude: float = 7.0, num_ops: int = 4, magnitude_std: float = 0.5, prob: float = 0.5):
        from PIL import Image  # noqa: PLC0415

        self.magnitude, self.num_ops, self.magnitude_std, self.prob = magnitude, num_ops, magnitude_std, prob
        self.resample = Image.BICUBIC
        self.names = list(_ops())

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """uint8 ``[T, H, W, 3]`` -> uint8 ``[T, H, W, 3]``."""
        from PIL import Image  # noqa: PLC0415

        chosen = [self.names[i] for i in rng.integers(0, len(self.names), self.num_ops)]
        plan = []
        for name in chosen:
            if self.prob < 1.0 and rng.random() > self.prob:
                continue
            m = self.magnitude
            if self.magnitude_std > 0:
                m = rng.normal(m, self.magnitude_std)
            m = min(10.0, max(0.0, float(m)))
            op, level = _ops()[name]
            plan.append((op, level(m, rng) if level is not None else None))
        if not plan:
            return frames
        out = np.empty_like(frames)
        for t in range(frames.shape[0]):
            img = Image.fromarray(np.ascontiguousarray(frames[t]))
            for op, arg in plan:
                img = op(img, arg, self.resample)
            out[t] = np.asarray(img.convert("RGB"))
        return out


# ----------------------------------------------------------------------------------------------------
# random erasing (timm / official RandomErasing, pixel mode, max_count 1)
# ----------------------------------------------------------------------------------------------------
def random_erase_(
    x: torch.Tensor,
    prob: float,
    rng: np.random.Generator,
    min_area: float = 0.02,
    max_area: float = 1 / 3,
    min_aspect: float = 0.3,
    attempts: int | None = None,
) -> torch.Tensor:
    """In place, on a normalised ``[C, H, W]`` image or ``[C, T, H, W]`` clip. With probability
    ``prob`` one box (area ``U(min_area, max_area)``, log-uniform aspect in ``[min_aspect, 1/min_aspect]``)
    is filled with per-pixel N(0, 1) noise; for a clip the same box is used in every frame, with fresh
    noise per frame (the official ``cube=True`` default). ``attempts``: 10 (image) / 100 (clip)."""
    if prob <= 0 or rng.random() > prob:
        return x
    H, W = x.shape[-2:]
    attempts = attempts or (100 if x.dim() == 4 else 10)
    log_r = (math.log(min_aspect), math.log(1 / min_aspect))
    for _ in range(attempts):
        target = rng.uniform(min_area, max_area) * H * W
        ar = math.exp(rng.uniform(*log_r))
        h = int(round(math.sqrt(target * ar)))
        w = int(round(math.sqrt(target / ar)))
        if w < W and h < H:
            top = int(rng.integers(0, H - h + 1))
            left = int(rng.integers(0, W - w + 1))
            noise = torch.from_numpy(rng.standard_normal(x[..., top:top + h, left:left + w].shape).astype(np.float32))
            x[..., top:top + h, left:left + w] = noise.to(x.dtype)
            break
    return x


def _crop_box(H: int, W: int, scale, ratio, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Random-resized-crop box (torchvision / official rules: 10 tries, then a ratio-clamped centre crop)."""
    area = H * W
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        ar = math.exp(rng.uniform(*log_r))
        w = int(round(math.sqrt(target * ar)))
        h = int(round(math.sqrt(target / ar)))
        if 0 < w <= W and 0 < h <= H:
            return int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1)), h, w
    in_ratio = W / H
    if in_ratio < min(ratio):
        w, h = W, int(round(W / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = H, int(round(H * max(ratio)))
    else:
        w, h = W, H
    return (H - h) // 2, (W - w) // 2, h, w


# ----------------------------------------------------------------------------------------------------
# video transforms
# ----------------------------------------------------------------------------------------------------
class ProbeVideoTrainTransform(_Seeded):
    """Train-time transform of the frozen video eval; uint8 ``[T, H, W, 3]`` -> ``[view]`` with one
    float32 ``[3, T, res, res]`` view (see the module docstring for ``augmentation``)."""

    def __init__(self, resolution: int, augmentation: str = "official", seed: int = 0,
                 scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), reprob: float = 0.25,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        if augmentation not in ("official", "crop", "none"):
            raise ValueError(f"augmentation must be official, crop or none, not {augmentation!r}")
        self.resolution, self.augmentation, self.seed = int(resolution), augmentation, int(seed)
        self.scale, self.ratio, self.reprob, self.mean, self.std = tuple(scale), tuple(ratio), reprob, mean, std
        self.randaugment = RandAugmentVideo() if augmentation == "official" else None
        self.epoch = 0

    def __call__(self, clip) -> list[torch.Tensor]:
        clip = np.asarray(clip)
        if self.augmentation == "none":
            return eval_video_views(clip, self.resolution, 1, self.mean, self.std)
        rng = self.rng
        if self.randaugment is not None:
            clip = self.randaugment(clip, rng)
        T, H, W, _ = clip.shape
        box = _crop_box(H, W, self.scale, self.ratio, rng)
        x = apply_video_transform([clip], [box], [False], self.resolution, self.mean, self.std,
                                  device="cpu", method="loop")[0]
        if self.augmentation == "official":
            random_erase_(x, self.reprob, rng)
        return [x]


class ProbeVideoEvalTransform:
    """Eval-time views (:func:`eval_video_views`): uint8 clip -> list of ``num_views`` float32 views."""

    def __init__(self, resolution: int, num_views: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.resolution, self.num_views, self.mean, self.std = int(resolution), int(num_views), mean, std

    def set_epoch(self, epoch: int) -> None:  # deterministic
        pass

    def __call__(self, clip) -> list[torch.Tensor]:
        return eval_video_views(np.asarray(clip), self.resolution, self.num_views, self.mean, self.std)


# ----------------------------------------------------------------------------------------------------
# image transforms (PIL)
# ----------------------------------------------------------------------------------------------------
def _pil_to_normalized(img, mean, std) -> torch.Tensor:
    a = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).to(torch.float32) / 255.0
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return ((a - m) / s).contiguous()


class ImageTrainTransform(_Seeded):
    """uint8 ``[H, W, 3]`` -> float32 ``[3, res, res]``: ``official``/``crop``: random-resized-crop
    (bicubic) + flip p=0.5 (+ erasing p=0.25 for ``official``; AutoAugment is not implemented);
    ``none``: the eval transform."""

    def __init__(self, resolution: int, augmentation: str = "official", seed: int = 0, reprob: float = 0.25,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.resolution, self.augmentation, self.seed, self.reprob = int(resolution), augmentation, int(seed), reprob
        self.mean, self.std, self.epoch = mean, std, 0
        self._eval = ImageEvalTransform(resolution, mean, std)

    def __call__(self, image) -> torch.Tensor:
        from PIL import Image  # noqa: PLC0415

        if self.augmentation == "none":
            return self._eval(image)
        rng = self.rng
        img = Image.fromarray(np.asarray(image, dtype=np.uint8))
        W, H = img.size
        top, left, h, w = _crop_box(H, W, (0.08, 1.0), (3 / 4, 4 / 3), rng)
        img = img.resize((self.resolution, self.resolution), Image.BICUBIC, box=(left, top, left + w, top + h))
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        x = _pil_to_normalized(img, self.mean, self.std)
        if self.augmentation == "official":
            random_erase_(x, self.reprob, rng)
        return x


class ImageEvalTransform:
    """Resize the short side to ``int(res * 256 / 224)`` (bilinear), centre crop ``res``, normalise."""

    def __init__(self, resolution: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.resolution, self.mean, self.std = int(resolution), mean, std

    def set_epoch(self, epoch: int) -> None:
        pass

    def __call__(self, image) -> torch.Tensor:
        from PIL import Image  # noqa: PLC0415

        img = Image.fromarray(np.asarray(image, dtype=np.uint8))
        W, H = img.size
        size = int(self.resolution * 256 / 224)
        if W <= H:
            ow, oh = size, int(size * H / W)
        else:
            oh, ow = size, int(size * W / H)
        if (ow, oh) != (W, H):
            img = img.resize((ow, oh), Image.BILINEAR)
        r = self.resolution
        top, left = int(round((oh - r) / 2.0)), int(round((ow - r) / 2.0))
        img = img.crop((left, top, left + r, top + r))
        return _pil_to_normalized(img, self.mean, self.std)


# ----------------------------------------------------------------------------------------------------
# collation, sampling, loaders
# ----------------------------------------------------------------------------------------------------
def collate_video(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(clips [S][V], label, clip_indices)`` items -> ``x [B, S, V, 3, T, H, W]``, ``labels [B]``."""
    x = torch.stack([torch.stack([torch.stack(list(views)) for views in clips]) for clips, _, _ in batch])
    y = torch.tensor([int(label) for _, label, _ in batch], dtype=torch.int64)
    return x, y


def collate_images(batch) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.stack([img for img, _ in batch])
    y = torch.tensor([int(label) for _, label in batch], dtype=torch.int64)
    return x, y


class EpochShuffleSampler(Sampler[int]):
    """Shuffled (or sequential) indices, a pure function of ``(seed, epoch)``: resumable."""

    def __init__(self, n: int, shuffle: bool, seed: int = 0):
        self.n, self.shuffle, self.seed, self.epoch = int(n), bool(shuffle), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) & 0x7FFFFFFFFFFF)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class _EpochLoader:
    """A DataLoader re-created per epoch after the dataset, transform and sampler were told the epoch
    (so DataLoader workers, which copy them, see it)."""

    def __init__(self, dataset: Dataset, transform, batch_size: int, shuffle: bool, seed: int,
                 num_workers: int, pin_memory: bool, collate: Callable):
        self.dataset, self.transform = dataset, transform
        self.sampler = EpochShuffleSampler(len(dataset), shuffle, seed)
        self.batch_size, self.num_workers, self.pin_memory, self.collate = batch_size, num_workers, pin_memory, collate

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)  # drop_last=False (official)

    def epoch(self, epoch: int, sequential: bool = False) -> DataLoader:
        """The DataLoader of ``epoch`` (``sequential``: dataset order, e.g. to fill a feature cache)."""
        self.sampler.set_epoch(epoch)
        sampler = EpochShuffleSampler(len(self.dataset), False) if sequential else self.sampler
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        if hasattr(self.transform, "set_epoch"):
            self.transform.set_epoch(epoch)
        return DataLoader(self.dataset, batch_size=self.batch_size, sampler=sampler,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          collate_fn=self.collate, drop_last=False, persistent_workers=False)


def make_probe_loader(dataset: Dataset, transform, *, batch_size: int, shuffle: bool, seed: int,
                      num_workers: int, pin_memory: bool, video: bool) -> _EpochLoader:
    """Loader factory: ``loader.epoch(e)`` returns the DataLoader of epoch ``e``; ``len(loader)`` is
    the number of batches per epoch (the official ``ipe``, ``drop_last=False``)."""
    return _EpochLoader(dataset, transform, batch_size, shuffle, seed, num_workers, pin_memory,
                        collate_video if video else collate_images)
