"""Small real-video demo data: "moving digits" MP4 clips with two independent label sets.

Every clip shows one real handwritten digit (scikit-learn's ``load_digits``: 1797 8x8 scans, upscaled
bilinearly to ``digit_size``) moving at a constant speed in one of 4 (or 8) directions across a black
``size x size`` canvas that wraps around (a torus), so a single frame shows the digit at a uniformly
random place whatever the direction: the direction is only visible over time. Two label sets:

* ``*_digit.csv``: digit class 0-9 (an appearance cue);
* ``*_motion.csv``: motion direction (a motion cue; names in ``DIRECTION_NAMES``).

Within each split the (digit, direction) pairs are balanced over all combinations and shuffled, so the
two labels are independent. The digit scans are split per class into disjoint train and val pools, so
val clips show handwriting the train clips never show. Clips are real H.264 MP4 files (``libx264``
through PyAV, ``mpeg4`` when libx264 is missing) that decord reads; index files are in the official
``<abs_path> <label>`` format. Everything is a deterministic function of the arguments.

CLI: ``python -m vjepa_fast.demo_data --out data/demo``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Sequence

import numpy as np

__all__ = ["make_demo_data", "render_clip", "compose_canvas", "smooth_texture", "demo_settings_differ", "DEMO_DATA",
           "DIRECTIONS", "DIRECTION_NAMES", "main"]

# (dy, dx) unit steps; index = motion label
DIRECTIONS = [
    (0, 1), (0, -1), (1, 0), (-1, 0),  # right, left, down, up
    (1, 1), (1, -1), (-1, 1), (-1, -1),  # down-right, down-left, up-right, up-left
]
DIRECTION_NAMES = ["right", "left", "down", "up", "down-right", "down-left", "up-right", "up-left"]
MIN_FILE_BYTES = 1024  # VideoDataset skips smaller files (official rule)
#: The bundled demo dataset (``make demo``, ``vjepa-fast make-demo-data`` defaults): four scans of the
#: clip's class on a moving textured canvas, 8 slow directions. On a black canvas with one digit most
#: target tokens are pure background, whose L1-optimal prediction ignores the digits, and a random
#: encoder reads 4 fast directions at ~100 %, leaving a probe no headroom. 400 held-out clips (not 200)
#: halve the binomial noise of the probes' val top-1; the 400 training clips are the same either way.
DEMO_DATA = dict(digits_per_clip=4, background=120.0, num_directions=8, max_speed=1.0, n_val=400)
VAL_FRACTION = 1.0 / 3.0


def _load_digits():
    try:
        from sklearn.datasets import load_digits  # noqa: PLC0415
    except ImportError as e:  # pragma: no cover
        raise ImportError("demo data needs scikit-learn: pip install scikit-learn") from e
    d = load_digits()
    return np.asarray(d.images, dtype=np.float32), np.asarray(d.target, dtype=np.int64)


def _upscale(img8: np.ndarray, digit_size: int) -> np.ndarray:
    """8x8 scan with values 0..16 -> uint8 ``digit_size x digit_size`` (bilinear, align_corners=False)."""
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415

    x = torch.from_numpy(img8 * (255.0 / 16.0))[None, None]
    x = F.interpolate(x, size=(digit_size, digit_size), mode="bilinear", align_corners=False)
    return x[0, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def compose_canvas(digits: Sequence[np.ndarray], offsets: Sequence[tuple[int, int]], size: int) -> np.ndarray:
    """uint8 ``size x size`` torus canvas with each (uint8 square) digit pasted at its ``(y, x)`` offset;
    where digits overlap the brighter pixel wins."""
    base = np.zeros((size, size), dtype=np.uint8)
    for digit, (oy, ox) in zip(digits, offsets):
        ds = digit.shape[0]
        layer = np.zeros((size, size), dtype=np.uint8)
        layer[:ds, :ds] = digit
        np.maximum(base, np.roll(layer, (int(oy), int(ox)), axis=(0, 1)), out=base)
    return base


def _spread_offsets(k: int, size: int, digit_size: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``k`` paste positions in distinct cells of a ceil(sqrt(k))^2 grid (random cells, random jitter inside
    the cell), so several digits on one canvas rarely overlap."""
    g = math.ceil(math.sqrt(k))
    cell = size // g
    cells = rng.permutation(g * g)[:k]
    slack = max(0, cell - digit_size)
    return [(int(c // g) * cell + int(rng.integers(0, slack + 1)), int(c % g) * cell + int(rng.integers(0, slack + 1)))
            for c in cells]


def smooth_texture(size: int, amplitude: float, rng: np.random.Generator, blur: float = 3.0) -> np.ndarray:
    """uint8 ``size x size`` torus texture: white noise low-passed in the Fourier domain (Gaussian, ``blur``
    px; periodic, so it wraps like the canvas), scaled to span 0..``amplitude`` grey levels."""
    f = np.fft.fft2(rng.standard_normal((size, size)))
    k = np.fft.fftfreq(size)
    g = np.exp(-2 * (np.pi * blur) ** 2 * (k[:, None] ** 2 + k[None, :] ** 2))
    t = np.real(np.fft.ifft2(f * g))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-12)
    return np.round(t * amplitude).astype(np.uint8)


def render_clip(
    digit: np.ndarray, direction: int, speed: float, start: tuple[float, float], frames: int, size: int,
    noise: float = 0.0, noise_seed: int = 0, hold: int = 1,
) -> np.ndarray:
    """uint8 ``[frames, size, size, 3]``: ``digit`` (uint8 square, or a whole ``size x size`` canvas from
    :func:`compose_canvas`) pasted at ``start + t * speed * dir`` (rounded to whole pixels) on a black
    torus canvas."""
    dy, dx = DIRECTIONS[direction]
    norm = math.hypot(dy, dx)
    base = compose_canvas([digit], [(0, 0)], size) if digit.shape[0] != size else digit
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for t in range(frames):
        tm = (t // hold) * hold  # hold > 1: the canvas moves in jumps every `hold` frames
        y = int(np.rint(start[0] + tm * speed * dy / norm)) % size
        x = int(np.rint(start[1] + tm * speed * dx / norm)) % size
        out[t] = np.roll(base, (y, x), axis=(0, 1))[:, :, None]
    if noise > 0:  # fresh grey-level noise every frame (unpredictable detail)
        g = np.random.default_rng(int(noise_seed)).normal(0.0, float(noise), (frames, size, size, 1))
        out = np.clip(out.astype(np.float32) + g, 0, 255).round().astype(np.uint8)
    return out


def _pick_codec() -> str:
    import av  # noqa: PLC0415

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _write_mp4(path: str, frames: np.ndarray, fps: int, codec: str) -> None:
    import av  # noqa: PLC0415

    T, H, W, _ = frames.shape
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = W, H
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "12", "preset": "veryfast", "threads": "1"}
        else:
            stream.options = {"qscale": "2", "threads": "1"}
            stream.bit_rate = 2_000_000
        for t in range(T):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frames[t], format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    nbytes = os.path.getsize(path)
    if nbytes < MIN_FILE_BYTES:
        raise RuntimeError(
            f"{path} is only {nbytes} bytes; VideoDataset skips files under 1 KB. "
            "Use more frames or a larger size."
        )


def _balanced_pairs(n: int, n_dirs: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    combos = [(d, m) for d in range(10) for m in range(n_dirs)]
    out: list[tuple[int, int]] = []
    while len(out) < n:
        order = rng.permutation(len(combos))
        take = min(len(combos), n - len(out))
        out += [combos[i] for i in order[:take]]
    perm = rng.permutation(n)
    return [out[i] for i in perm]


def make_demo_data(
    out_dir: str,
    n_train: int = 400,
    n_val: int = 200,
    frames: int = 16,
    size: int = 64,
    seed: int = 0,
    num_directions: int = 4,
    digit_size: int | None = None,
    fps: int = 8,
    max_speed: float | None = None,
    noise: float = 0.0,
    digits_per_clip: int = 1,
    background: float = 0.0,
    hold: int = 1,
    verbose: bool = False,
) -> dict:
    """Write the demo clips, index files and README into ``out_dir``; returns a summary dict.

    Layout::

        out_dir/videos/{train,val}/{split}_{i:05d}.mp4
        out_dir/{train,val}_digit.csv      # "<abs path> <digit 0-9>"
        out_dir/{train,val}_motion.csv     # "<abs path> <direction 0..num_directions-1>"
        out_dir/metadata.json              # per clip: path, split, digit, motion, image_index, speed, start
        out_dir/README.txt

    ``max_speed``: top speed in px/frame (speeds are uniform in [max_speed / 2, max_speed]; default
    min(3, 0.75 * size / (frames - 1)), at least 1). ``noise``: std of fresh per-frame Gaussian grey-level
    noise (0 = none; the noise-free output is unchanged by this option).
    """
    if num_directions not in (4, 8):
        raise ValueError("num_directions must be 4 or 8")
    if size % 2 or size < 16:
        raise ValueError("size must be even and >= 16 (yuv420p needs even sides)")
    if frames < 2:
        raise ValueError("frames must be >= 2")
    if n_train < 1 or n_val < 1:
        raise ValueError("n_train and n_val must be >= 1")
    digit_size = int(digit_size) if digit_size is not None else max(8, int(round(size * 3 / 8)))
    if not 8 <= digit_size <= size:
        raise ValueError(f"digit_size {digit_size} must be in [8, size]")
    t0 = time.time()
    out_dir = os.path.abspath(out_dir)
    codec = _pick_codec()
    images, targets = _load_digits()

    # disjoint train / val pools of scans, per class
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 20240417]))
    pools: dict[str, dict[int, np.ndarray]] = {"train": {}, "val": {}}
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(targets == c))
        n_val_c = int(round(len(idx) * VAL_FRACTION))
        pools["val"][c] = idx[:n_val_c]
        pools["train"][c] = idx[n_val_c:]

    # speeds (pixels / frame) large enough to see, small enough not to alias on the torus
    if max_speed is None:
        max_speed = max(1.0, min(3.0, 0.75 * size / (frames - 1)))
    max_speed = float(max_speed)
    min_speed = max_speed / 2

    metadata = []
    counts = {}
    for split, n in (("train", n_train), ("val", n_val)):
        vdir = os.path.join(out_dir, "videos", split)
        os.makedirs(vdir, exist_ok=True)
        pairs = _balanced_pairs(n, num_directions, rng)
        cursor = {c: 0 for c in range(10)}
        order = {c: rng.permutation(pools[split][c]) for c in range(10)}
        digit_rows, motion_rows = [], []
        for i, (digit, motion) in enumerate(pairs):
            pool = order[digit]
            image_index = int(pool[cursor[digit] % len(pool)])  # cycle through the class pool
            cursor[digit] += 1
            speed = float(rng.uniform(min_speed, max_speed))
            start = (float(rng.uniform(0, size)), float(rng.uniform(0, size)))
            noise_seed = int(rng.integers(2**31)) if noise > 0 else 0  # no draw: noise-free data unchanged
            sprite = _upscale(images[image_index], digit_size)
            extra = []
            if digits_per_clip > 1:  # more scans of the same class, placed anywhere; they move together
                for _ in range(digits_per_clip - 1):
                    extra.append(int(pool[cursor[digit] % len(pool)]))
                    cursor[digit] += 1
                offsets = _spread_offsets(digits_per_clip, size, digit_size, rng)
                sprite = compose_canvas([sprite] + [_upscale(images[j], digit_size) for j in extra], offsets, size)
            if background > 0:  # a textured canvas that moves with the digits: content in every patch
                canvas = compose_canvas([sprite], [(0, 0)], size) if sprite.shape[0] != size else sprite
                sprite = np.maximum(canvas, smooth_texture(size, background, rng))
            clip = render_clip(sprite, motion, speed, start, frames, size, noise=noise, noise_seed=noise_seed,
                               hold=hold)
            path = os.path.join(vdir, f"{split}_{i:05d}.mp4")
            _write_mp4(path, clip, fps, codec)
            digit_rows.append(f"{path} {digit}\n")
            motion_rows.append(f"{path} {motion}\n")
            metadata.append(dict(path=path, split=split, digit=int(digit), motion=int(motion),
                                 image_index=image_index, speed=speed, start=list(start),
                                 noise_seed=noise_seed, **(dict(extra_image_indices=extra, offsets=offsets)
                                                          if extra else {})))
        with open(os.path.join(out_dir, f"{split}_digit.csv"), "w") as f:
            f.writelines(digit_rows)
        with open(os.path.join(out_dir, f"{split}_motion.csv"), "w") as f:
            f.writelines(motion_rows)
        counts[split] = n

    settings = dict(n_train=n_train, n_val=n_val, frames=frames, size=size, seed=seed,
                    num_directions=num_directions, digit_size=digit_size, fps=fps, codec=codec,
                    min_speed=min_speed, max_speed=max_speed, noise=float(noise), digits_per_clip=int(digits_per_clip),
                    background=float(background), hold=int(hold))
    with open(os.path.join(out_dir, "metadata.json"), "w") as f:
        json.dump(dict(settings=settings, clips=metadata), f, indent=1)
    _write_readme(out_dir, settings)
    summary = dict(out_dir=out_dir, seconds=round(time.time() - t0, 2), **settings,
                   index_files={k: os.path.join(out_dir, f"{k}.csv")
                                for k in ("train_digit", "val_digit", "train_motion", "val_motion")})
    if verbose:
        print(json.dumps(summary))
    return summary


def _write_readme(out_dir: str, s: dict) -> None:
    dirs = ", ".join(f"{i}={DIRECTION_NAMES[i]}" for i in range(s["num_directions"]))
    text = f"""vjepa-fast demo data: moving handwritten digits
=================================================

Generated by vjepa_fast.demo_data (seed {s['seed']}). {s['n_train']} train and {s['n_val']} val clips,
{s['frames']} frames of {s['size']}x{s['size']} RGB at {s['fps']} fps, encoded as MP4 ({s['codec']}, yuv420p).

Each clip shows one real handwritten digit from scikit-learn's load_digits (UCI optical digits,
8x8 scans upscaled to {s['digit_size']}x{s['digit_size']}) moving at a constant speed of
{s['min_speed']:.2f}-{s['max_speed']:.2f} px/frame on a black canvas that wraps around at the borders,
so a single frame does not reveal the direction.

Index files (official V-JEPA format, "<absolute path> <integer label>" per line):
  train_digit.csv, val_digit.csv    label = digit class 0-9 (appearance)
  train_motion.csv, val_motion.csv  label = motion direction ({dirs})
Both label sets list the same clips in the same order. Digit class and direction are balanced over all
combinations and independent, so each label is only learnable from its own cue. Val clips use digit
scans that never appear in train clips.

metadata.json holds the generation settings and, per clip, the scan index, speed and start position.
"""
    with open(os.path.join(out_dir, "README.txt"), "w") as f:
        f.write(text)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vjepa-fast make-demo-data", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="data/demo", help="output folder (default data/demo)")
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-val", type=int, default=DEMO_DATA["n_val"])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--directions", type=int, default=DEMO_DATA["num_directions"], choices=(4, 8))
    p.add_argument("--digit-size", type=int, default=None)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--digits-per-clip", type=int, default=DEMO_DATA["digits_per_clip"],
                   help="scans of the clip's class on one canvas (1 = the original single digit)")
    p.add_argument("--background", type=float, default=DEMO_DATA["background"],
                   help="grey-level amplitude of the moving texture behind the digits (0 = black)")
    p.add_argument("--max-speed", type=float, default=DEMO_DATA["max_speed"],
                   help="top speed in px/frame (speeds are uniform in [max/2, max])")
    p.add_argument("--hold", type=int, default=1, help="move in jumps every HOLD frames (1 = smoothly)")
    a = p.parse_args(argv)
    make_demo_data(a.out, n_train=a.n_train, n_val=a.n_val, frames=a.frames, size=a.size, seed=a.seed,
                   num_directions=a.directions, digit_size=a.digit_size, fps=a.fps, max_speed=a.max_speed,
                   digits_per_clip=a.digits_per_clip, background=a.background, hold=a.hold, verbose=True)
    return 0


def demo_settings_differ(out_dir: str) -> dict:
    """``{setting: (found, expected)}`` for every :data:`DEMO_DATA` setting that the data in ``out_dir``
    (its ``metadata.json``) was rendered without; empty when it is the bundled demo dataset."""
    try:
        with open(os.path.join(out_dir, "metadata.json")) as f:
            settings = json.load(f)["settings"]
    except (OSError, ValueError, KeyError):
        return {"metadata.json": ("missing or unreadable", "present")}
    return {k: (settings.get(k), v) for k, v in DEMO_DATA.items() if settings.get(k) != v}


if __name__ == "__main__":
    sys.exit(main())
