"""Image-folder dataset for the frozen image evaluations (spec §5.3), without torchvision.

``ImageFolderDataset(root, split)`` reads ``root/split/<class>/**/<image>`` the way torchvision's
``ImageFolder`` does: classes are the sorted sub-folder names of ``root/split`` (index = position),
files are found by walking each class folder in sorted order (following links) and kept when their
extension is a known image extension. Items are ``(uint8 [H, W, 3] RGB array, class index)`` (or
whatever ``transform`` returns for the array).

A file that cannot be read (missing, empty, truncated, not an image) is skipped with a
:class:`~vjepa_fast.video_dataset.SkippedVideoWarning` and recorded in ``dataset.skipped``; a
replacement index is drawn from a per-item generator; ``max_retries`` failures in one ``__getitem__``
raise ``RuntimeError`` listing the files.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np
from torch.utils.data import Dataset

from .video_dataset import _item_rng, _SkipSample, load_with_retries, split_index

__all__ = ["ImageFolderDataset", "IMG_EXTENSIONS", "find_classes"]

# torchvision's IMG_EXTENSIONS
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def find_classes(directory: str) -> tuple[list[str], dict[str, int]]:
    """Sorted class folder names of ``directory`` and their indices (as torchvision)."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"image folder not found: {directory}")
    classes = sorted(e.name for e in os.scandir(directory) if e.is_dir())
    if not classes:
        raise FileNotFoundError(f"no class folders in {directory}")
    return classes, {c: i for i, c in enumerate(classes)}


def _make_samples(directory: str, class_to_idx: dict[str, int], extensions: tuple[str, ...]):
    samples: list[tuple[str, int]] = []
    empty: list[str] = []
    for cls in sorted(class_to_idx):
        cdir = os.path.join(directory, cls)
        n0 = len(samples)
        for root, _, fnames in sorted(os.walk(cdir, followlinks=True)):
            for fname in sorted(fnames):
                if fname.lower().endswith(extensions):
                    samples.append((os.path.join(root, fname), class_to_idx[cls]))
        if len(samples) == n0:
            empty.append(cls)
    if empty:
        raise FileNotFoundError(
            f"found no valid image file for classes {', '.join(empty)} in {directory} "
            f"(extensions: {', '.join(extensions)})"
        )
    return samples


class ImageFolderDataset(Dataset):
    def __init__(
        self,
        root: str,
        split: str = "train",
        transform: Callable | None = None,
        extensions: tuple[str, ...] = IMG_EXTENSIONS,
        seed: int = 0,
        max_retries: int = 10,
    ):
        self.root = os.fspath(root)
        self.split = split
        self.directory = os.path.join(self.root, split)
        self.classes, self.class_to_idx = find_classes(self.directory)
        self.samples = _make_samples(self.directory, self.class_to_idx, tuple(e.lower() for e in extensions))
        self.targets = [t for _, t in self.samples]
        self.transform = transform
        self.seed = int(seed)
        self.max_retries = int(max_retries)
        self.epoch = 0
        self.skipped: dict[str, str] = {}
        self.num_skipped = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    @staticmethod
    def load_image(path: str) -> np.ndarray:
        from PIL import Image  # noqa: PLC0415

        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()  # decode now: truncated / broken files raise here
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()

    def _load_or_skip(self, path: str) -> np.ndarray:
        try:
            if not os.path.exists(path):
                raise OSError("file not found")
            if os.path.getsize(path) == 0:
                raise OSError("empty file")
            return self.load_image(path)
        except Exception as e:  # PIL raises OSError / UnidentifiedImageError / ValueError ...
            raise _SkipSample(f"cannot read image ({type(e).__name__}: {str(e).strip()[:200]})") from None

    def __getitem__(self, index):
        index, epoch = split_index(index, self.epoch, len(self.samples))
        rng = _item_rng(self.seed, epoch, index)
        cur, img = load_with_retries(self, "image", index, rng, lambda i: self.samples[i][0], self._load_or_skip)
        target = self.samples[cur][1]
        if self.transform is not None:
            img = self.transform(img)
        return img, target
