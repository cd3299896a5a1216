"""``vjepa-fast embed``: frozen-encoder features for every sliding window of a folder of videos.

For each video of an index file (official ``<path> <label>`` lines, or a ``.npy`` list), windows of
``frames_per_clip`` frames taken every ``frame_step`` frames start at ``0, stride, 2*stride, ...``; when
the last of those ends before the video does, one more window ending on the last frame is added, so
the whole video is covered; a video shorter than one window gives one window, its indices clipped to
the last frame (the official loader's padding). Frame indices of window ``w`` starting at ``s``:
``min(s + k * frame_step, num_frames - 1)`` for ``k < frames_per_clip``.

Each window goes through the frozen-eval single-view transform (short side resized to
``int(res * 256 / 224)``, centre crop ``res``, ImageNet normalisation: :func:`eval_video_views`) and
the encoder (``target_encoder`` by default) under ``torch.inference_mode``, bf16 autocast on CUDA, fp32
on the CPU. Pooling ``mean``: the token mean of the final normed output (or of each of ``layers``, the
official intermediate outputs, each normed); ``tokens``: all tokens as well.

Output folder (``--out``):

* ``windows-NNNNN.safetensors`` (or ``.npz`` with ``--format npy``), each with ``video`` int64 [R]
  (row of the index), ``window`` int64 [R], ``start`` int64 [R] (first frame), ``features`` float32
  [R, D] (or [R, L, D] with ``layers``) and, for ``tokens``, ``tokens`` float32 [R, N, D] (or
  [R, L, N, D]); rows of one video are in window order, a video's rows can span shards;
* ``videos.safetensors`` / ``videos.npz`` when the run is complete: ``features`` [V, D] (or [V, L, D]),
  the mean of each video's window features, ``num_windows`` int64 [V] and ``ok`` uint8 [V] (0 for a
  skipped video, whose features are zeros);
* ``manifest.json``: the settings, every video's path, label, frame count, fps, windows and status
  (``skipped`` with the reason), the shards, and ``complete``. The safetensors files carry the settings
  in their metadata too.

Resuming: the same command continues a killed run. Shards and the manifest are written to a temporary
name and renamed (the manifest after its shard), so a kill leaves either the old or the new state; a
shard the manifest does not list is deleted; each video restarts at its first window not yet in a
listed shard. Nothing written is computed again, and no window is lost or written twice. A
different setting (or index) in the same folder is an error naming what differs.

Memory: a window is decoded, transformed and encoded on its own (the reader never holds the video);
the rows waiting for the next shard are capped at ``shard_windows`` (default: about 256 MB of rows),
so peak memory depends on batch, clip and shard size, not on video length (README: embed).
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .decoders import DecodeError, open_video, resolve_decoder
from .video_dataset import SkippedVideoWarning, read_index_files

logger = logging.getLogger(__name__)

__all__ = ["EmbedSettings", "EmbedResult", "window_starts", "window_indices", "embed_videos", "load_encoder_for_embed",
           "read_windows", "main"]

MANIFEST = "manifest.json"
SHARD_BYTES = 256 * 2**20


# ----------------------------------------------------------------------------------------------------
# windows
# ----------------------------------------------------------------------------------------------------
def window_starts(num_frames: int, frames_per_clip: int, frame_step: int, stride: int) -> list[int]:
    """First frames of the sliding windows over a video of ``num_frames`` frames (module docstring)."""
    if min(num_frames, frames_per_clip, frame_step, stride) < 1:
        raise ValueError(f"num_frames={num_frames}, frames_per_clip={frames_per_clip}, frame_step={frame_step}, "
                         f"stride={stride} must all be >= 1")
    span = (frames_per_clip - 1) * frame_step + 1
    if num_frames <= span:
        return [0]
    starts = list(range(0, num_frames - span + 1, stride))
    if starts[-1] + span < num_frames:
        starts.append(num_frames - span)
    return starts


def window_indices(start: int, num_frames: int, frames_per_clip: int, frame_step: int) -> list[int]:
    return [min(start + k * frame_step, num_frames - 1) for k in range(frames_per_clip)]


# ----------------------------------------------------------------------------------------------------
# settings, encoder
# ----------------------------------------------------------------------------------------------------
@dataclass
class EmbedSettings:
    """What determines the numbers written; a resumed run must match them exactly."""
    checkpoint: str
    key: str = "target_encoder"
    frames_per_clip: int | None = None  # None: the encoder's num_frames
    frame_step: int = 4
    stride: int | None = None  # frames between window starts; None: frames_per_clip * frame_step
    resolution: int | None = None  # None: the encoder's img_size
    pooling: str = "mean"
    layers: list[int] | None = None
    format: str = "safetensors"
    dtype: str = "float32"  # compute dtype: float32 on the CPU, bfloat16 autocast on CUDA
    index: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.pooling not in ("mean", "tokens"):
            raise ValueError(f"--pooling must be mean or tokens, not {self.pooling!r}")
        if self.format not in ("safetensors", "npy"):
            raise ValueError(f"--format must be safetensors or npy, not {self.format!r}")
        for name in ("frames_per_clip", "frame_step", "stride", "resolution"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {v}")


def load_encoder_for_embed(checkpoint: str, key: str, layers: Sequence[int] | None):
    """(encoder in eval mode, spec) from any checkpoint :func:`vjepa_fast.probe.infer_encoder_spec`
    understands; ``layers`` (negative counts from the last block) become the encoder's ``out_layers``."""
    from .checkpoint import load_encoder, read_checkpoint  # noqa: PLC0415
    from .probe import infer_encoder_spec  # noqa: PLC0415
    from .vision_transformer import VisionTransformer  # noqa: PLC0415

    ckpt = read_checkpoint(checkpoint)
    spec = infer_encoder_spec(ckpt, key=key, source=str(checkpoint))
    depth = spec["depth"]
    out_layers = None
    if layers:
        out_layers = [i + depth if i < 0 else i for i in layers]
        bad = [i for i, j in zip(layers, out_layers) if not 0 <= j < depth]
        if bad:
            raise ValueError(f"--layers {bad} outside the encoder's {depth} blocks (0..{depth - 1} or -{depth}..-1)")
    vit = VisionTransformer(img_size=spec["img_size"], patch_size=spec["patch_size"], num_frames=spec["num_frames"],
                            tubelet_size=spec["tubelet_size"], embed_dim=spec["embed_dim"], depth=depth,
                            num_heads=spec["num_heads"], mlp_ratio=spec.get("mlp_ratio", 4.0),
                            uniform_power=spec.get("uniform_power", True), out_layers=out_layers)
    load_encoder(vit, ckpt, key=key, source=str(checkpoint))
    for p in vit.parameters():
        p.requires_grad_(False)
    return vit.eval(), spec


def _pool(out, pooling: str, multi: bool) -> dict[str, torch.Tensor]:
    """Encoder output (``[B, N, D]`` or a list of them) -> float32 rows on the CPU."""
    outs = out if isinstance(out, list) else [out]
    feats = torch.stack([o.float().mean(dim=1) for o in outs], dim=1)  # [B, L, D]
    rows = {"features": feats if multi else feats[:, 0]}
    if pooling == "tokens":
        toks = torch.stack([o.float() for o in outs], dim=1)  # [B, L, N, D]
        rows["tokens"] = toks if multi else toks[:, 0]
    return {k: v.cpu() for k, v in rows.items()}


# ----------------------------------------------------------------------------------------------------
# data: one worker item per window
# ----------------------------------------------------------------------------------------------------
def fix_mmap_threshold(_worker_id: int | None = None) -> None:
    """Keep clip-sized buffers out of glibc's heap, so a process's memory does not grow with video length.

    glibc raises its mmap threshold every time a large block is freed; clip buffers then come from the
    heap and the freed memory stays with the process. Measured in a decoding worker of this module
    (`benchmarks/bench_embed.py --memory`, 160 px frames, 16-frame windows): peak RSS 247 MB for a
    128-frame video and 802 MB for a 6,000-frame one. ``mallopt(M_MMAP_THRESHOLD, 128 KiB)`` fixes the
    threshold (every block of 128 KiB or more is mapped on its own and returned when freed). No effect
    where the C library is not glibc. Usable as a DataLoader ``worker_init_fn``.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl): nothing to tune
        return
    if hasattr(libc, "mallopt"):
        libc.mallopt(-3, 128 * 1024)  # -3 = M_MMAP_THRESHOLD


class _WindowStream(torch.utils.data.IterableDataset):
    """Yields ``("info", v, num_frames, fps, n_windows)``, then ``("clip", v, w, start, x [3,T,res,res])`` for
    the windows still to do of each video (videos split round-robin over workers), or ``("skip", v, reason)``.
    """

    def __init__(self, paths: Sequence[str], todo: Sequence[tuple[int, int]], fpc: int, step: int, stride: int,
                 res: int, decoder: str):
        self.paths, self.todo = list(paths), list(todo)
        self.fpc, self.step, self.stride, self.res, self.decoder = fpc, step, stride, res, decoder

    def __iter__(self) -> Iterator[tuple]:
        from .transforms import eval_video_views  # noqa: PLC0415

        info = torch.utils.data.get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        for k, (v, first) in enumerate(self.todo):
            if k % nw != wid:
                continue
            path = self.paths[v]
            if not os.path.isfile(path):
                yield ("skip", v, "file not found")
                continue
            try:
                reader = open_video(path, self.decoder)
            except DecodeError as e:
                yield ("skip", v, f"cannot open ({e})")
                continue
            with reader:
                n = len(reader)
                starts = window_starts(n, self.fpc, self.step, self.stride)
                yield ("info", v, n, reader.fps, len(starts))
                for w in range(first, len(starts)):
                    try:
                        clip = reader.get_batch(window_indices(starts[w], n, self.fpc, self.step))
                    except DecodeError as e:
                        yield ("skip", v, f"window {w} (start frame {starts[w]}): {e}")
                        break
                    yield ("clip", v, w, starts[w], eval_video_views(clip, self.res, 1)[0])


# ----------------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------------
def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(str(tmp))
    os.replace(tmp, path)


def _save_arrays(path: Path, arrays: dict[str, torch.Tensor], fmt: str, metadata: dict[str, str]) -> None:
    if fmt == "safetensors":
        from safetensors.torch import save_file  # noqa: PLC0415

        _atomic_write(path, lambda p: save_file({k: v.contiguous() for k, v in arrays.items()}, p, metadata=metadata))
    else:
        def write(p):
            with open(p, "wb") as f:  # a file object: np.savez would append .npz to the temporary name
                np.savez(f, **{k: v.numpy() for k, v in arrays.items()})
        _atomic_write(path, write)


def _load_arrays(path: Path, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open  # noqa: PLC0415

        with safe_open(str(path), framework="np") as f:
            return {k: f.get_tensor(k) for k in (names or f.keys())}
    with np.load(path) as z:
        return {k: z[k] for k in (names or z.files)}


def read_windows(out_dir: str | os.PathLike, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """All window rows of an embed output folder, shards concatenated in manifest order (a helper for
    small outputs and tests; large ones are meant to be read shard by shard)."""
    out_dir = Path(out_dir)
    man = json.loads((out_dir / MANIFEST).read_text())
    parts = [_load_arrays(out_dir / s["file"], names) for s in man["shards"]]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}


def _write_manifest(out_dir: Path, man: dict) -> None:
    _atomic_write(out_dir / MANIFEST, lambda p: Path(p).write_text(json.dumps(man, indent=1) + "\n"))


@dataclass
class EmbedResult:
    out_dir: str
    videos: int
    skipped: dict[str, str]
    windows: int
    seconds: float
    resumed_from: int  # windows already on disk when this run started


class _Progress:
    """One status line on stderr (rewritten in place on a terminal, else every 10 s)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.t0, self.last = total, enabled, time.perf_counter(), 0.0
        self.tty = enabled and sys.stderr.isatty()

    def update(self, videos: int, windows: int, skipped: int, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not final and now - self.last < (0.5 if self.tty else 10.0):
            return
        self.last = now
        dt = max(now - self.t0, 1e-9)
        line = (f"embed: {videos}/{self.total} videos, {videos / dt:.2f} videos/s, {windows / dt:.1f} windows/s"
                + (f", {skipped} skipped" if skipped else ""))
        sys.stderr.write(("\r" + line + ("\n" if final else "")) if self.tty else line + "\n")
        sys.stderr.flush()


def embed_videos(
    checkpoint: str, index: str | Sequence[str], out_dir: str | os.PathLike, *, key: str = "target_encoder",
    frames_per_clip: int | None = None, frame_step: int = 4, stride: int | None = None,
    resolution: int | None = None, pooling: str = "mean", layers: Sequence[int] | None = None,
    fmt: str = "safetensors", batch_size: int = 8, num_workers: int = 2, decoder: str = "auto",
    device: str = "auto", shard_windows: int | None = None, progress: bool = True,
) -> EmbedResult:
    """Embed every window of every video in ``index`` into ``out_dir`` (module docstring); resumes a
    killed run in the same folder. Raises ``ValueError`` when ``out_dir`` holds a run with other
    settings or another video list, and for invalid options."""
    t0 = time.perf_counter()
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    index_files = [index] if isinstance(index, (str, os.PathLike)) else list(index)
    settings = EmbedSettings(checkpoint=os.path.abspath(checkpoint), key=key, frames_per_clip=frames_per_clip,
                             frame_step=frame_step, stride=stride, resolution=resolution, pooling=pooling,
                             layers=list(layers) if layers else None, format=fmt,
                             dtype="bfloat16" if dev.type == "cuda" else "float32",
                             index=[os.path.abspath(p) for p in index_files])
    settings.validate()
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"--batch-size must be >= 1 and --workers >= 0, got {batch_size}, {num_workers}")
    decoder = resolve_decoder(decoder, key="--decoder")
    vit, spec = load_encoder_for_embed(checkpoint, key, settings.layers)
    fpc = frames_per_clip or spec["num_frames"]
    res = resolution or spec["img_size"]
    stride_ = stride or fpc * frame_step
    paths, labels, _ = read_index_files(index_files)
    ext = "safetensors" if fmt == "safetensors" else "npz"

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    man_path = out_dir / MANIFEST
    new_settings = asdict(settings)
    if man_path.is_file():
        man = json.loads(man_path.read_text())
        diff = {k: (man["settings"].get(k), v) for k, v in new_settings.items() if man["settings"].get(k) != v}
        if diff:
            raise ValueError(f"{out_dir} holds an embed run with other settings ("
                             + "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
                             + "): use another --out or remove the folder")
        if [v["path"] for v in man["videos"]] != paths:
            raise ValueError(f"{out_dir} holds an embed run of another video list than {index_files}")
    else:
        man = {"settings": new_settings, "encoder": spec, "windows": {"frames_per_clip": fpc, "frame_step": frame_step,
                                                                       "stride": stride_, "resolution": res},
               "videos": [{"path": p, "label": int(lab), "done": 0} for p, lab in zip(paths, labels)],
               "shards": [], "complete": False}
    listed = {s["file"] for s in man["shards"]}
    for stale in out_dir.glob(f"windows-*.{ext}*"):
        if stale.name not in listed:  # written by a run killed before its manifest listed it
            stale.unlink()
    resumed_from = sum(s["rows"] for s in man["shards"])
    videos = man["videos"]
    todo = [(v, rec["done"]) for v, rec in enumerate(videos)
            if not rec.get("skipped") and not (rec.get("windows") is not None and rec["done"] >= rec["windows"])]

    vit = vit.to(dev)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else None
    multi = settings.layers is not None
    meta = {"settings": json.dumps(new_settings), "windows": json.dumps(man["windows"])}
    D, N = spec["embed_dim"], (fpc // spec["tubelet_size"]) * (res // spec["patch_size"]) ** 2
    row_bytes = 4 * D * (len(settings.layers) if multi else 1) * (N + 1 if pooling == "tokens" else 1)
    shard_rows = shard_windows or max(1, min(4096, SHARD_BYTES // row_bytes))

    stream = _WindowStream(paths, todo, fpc, frame_step, stride_, res, decoder)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers,
                                         pin_memory=dev.type == "cuda", worker_init_fn=fix_mmap_threshold)
    bar = _Progress(len(videos), progress)
    pending: list[tuple[int, int, int, torch.Tensor]] = []
    rows: dict[str, list[torch.Tensor]] = {}
    row_ids: list[tuple[int, int, int]] = []
    written, skipped = 0, {}

    def finished(v: int) -> bool:
        rec = videos[v]
        return bool(rec.get("skipped")) or (rec.get("windows") is not None and rec["done"] >= rec["windows"])

    n_finished = len(videos) - len(todo)  # kept up to date below (a scan per item would be O(videos))

    def encode() -> None:
        if not pending:
            return
        x = torch.stack([c for *_, c in pending]).to(dev, non_blocking=True)
        with torch.inference_mode():
            if autocast is not None:
                with autocast:
                    out = vit(x)
            else:
                out = vit(x)
        for k, t in _pool(out, pooling, multi).items():
            rows.setdefault(k, []).append(t)
        row_ids.extend((v, w, s) for v, w, s, _ in pending)
        pending.clear()

    def flush() -> None:
        nonlocal written, n_finished
        if row_ids:
            ids = torch.tensor(row_ids, dtype=torch.int64)
            arrays = {"video": ids[:, 0], "window": ids[:, 1], "start": ids[:, 2],
                      **{k: torch.cat(v) for k, v in rows.items()}}
            name = f"windows-{len(man['shards']):05d}.{ext}"
            _save_arrays(out_dir / name, arrays, fmt, meta)
            man["shards"].append({"file": name, "rows": len(row_ids)})
            for v, w, _ in row_ids:  # one video's windows arrive in order: done stays a prefix
                videos[v]["done"] = w + 1
            n_finished += sum(finished(v) for v in {v for v, _, _ in row_ids} if not videos[v].get("skipped"))
            written += len(row_ids)
            rows.clear()
            row_ids.clear()
        _write_manifest(out_dir, man)

    for item in loader:
        kind, v = item[0], int(item[1])
        if kind == "info":
            videos[v].update(num_frames=int(item[2]), fps=float(item[3]), windows=int(item[4]))
        elif kind == "skip":
            reason = item[2]
            videos[v]["skipped"] = reason
            skipped[paths[v]] = reason
            n_finished += 1
            msg = f"skipping video {paths[v]}: {reason}"
            logger.warning(msg)
            warnings.warn(msg, SkippedVideoWarning, stacklevel=2)
        else:
            pending.append((v, int(item[2]), int(item[3]), item[4]))
            if len(pending) >= batch_size:
                encode()
            if len(row_ids) >= shard_rows:
                flush()
        bar.update(n_finished, written + len(row_ids) + len(pending), len(skipped))
    encode()
    flush()
    _finalize(out_dir, man, fmt, ext, meta, multi)
    bar.update(len(videos), written, len(skipped), final=True)
    return EmbedResult(str(out_dir), len(videos), skipped, written, time.perf_counter() - t0, resumed_from)


def _finalize(out_dir: Path, man: dict, fmt: str, ext: str, meta: dict, multi: bool) -> None:
    """Video-level means from the shards (one shard in memory at a time), then ``complete``."""
    videos = man["videos"]
    incomplete = [r["path"] for r in videos if not r.get("skipped") and r["done"] < (r.get("windows") or 1)]
    if incomplete:
        raise RuntimeError(f"embed: {len(incomplete)} videos have missing windows after the run "
                           f"(first: {incomplete[0]}); rerun the same command to resume")
    sums, counts = None, np.zeros(len(videos), dtype=np.int64)
    for s in man["shards"]:
        a = _load_arrays(out_dir / s["file"], ["video", "features"])
        if sums is None:
            sums = np.zeros((len(videos), *a["features"].shape[1:]), dtype=np.float64)
        np.add.at(sums, a["video"], a["features"].astype(np.float64))
        counts += np.bincount(a["video"], minlength=len(videos))
    if sums is None:  # every video skipped: no feature size to report
        sums = np.zeros((len(videos), 0), dtype=np.float64)
    ok = np.array([not r.get("skipped") for r in videos], dtype=np.uint8)
    feats = sums / np.maximum(counts, 1).reshape(-1, *([1] * (sums.ndim - 1)))
    feats[ok == 0] = 0.0
    arrays = {"features": torch.from_numpy(feats.astype(np.float32)), "num_windows": torch.from_numpy(counts),
              "ok": torch.from_numpy(ok)}
    _save_arrays(out_dir / f"videos.{ext}", arrays, fmt, {**meta, "paths": json.dumps([r["path"] for r in videos])})
    man["complete"] = True
    _write_manifest(out_dir, man)


# ----------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("--checkpoint", required=True, help="a checkpoint the package loads (pretraining or official)")
    p.add_argument("--index", required=True, nargs="+", help="video index file(s): '<path> <label>' per line")
    p.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    p.add_argument("--key", default="target_encoder", help="encoder in the checkpoint (default target_encoder)")
    p.add_argument("--frames-per-clip", type=int, default=None, help="frames per window (default: the encoder's)")
    p.add_argument("--frame-step", type=int, default=4, help="frames between a window's frames (default 4)")
    p.add_argument("--stride", type=int, default=None,
                   help="frames between window starts (default frames-per-clip x frame-step: adjacent windows)")
    p.add_argument("--resolution", type=int, default=None, help="crop size (default: the encoder's)")
    p.add_argument("--pooling", choices=("mean", "tokens"), default="mean")
    p.add_argument("--layers", default=None, help="comma-separated block indices (e.g. 5,11 or -1): the "
                   "official intermediate outputs, each normed (default: the final output)")
    p.add_argument("--format", choices=("safetensors", "npy"), default="safetensors", help="npy writes .npz")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2, help="decoding DataLoader workers")
    p.add_argument("--decoder", default="auto", help="auto | decord | pyav | torchcodec")
    p.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda | cuda:N")
    p.add_argument("--shard-windows", type=int, default=None, help="rows per output shard (default ~256 MB)")
    p.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    fix_mmap_threshold()  # the command owns its process: with --workers 0 it decodes in it too
    layers = [int(s) for s in args.layers.split(",")] if args.layers else None
    r = embed_videos(args.checkpoint, args.index, args.out, key=args.key, frames_per_clip=args.frames_per_clip,
                     frame_step=args.frame_step, stride=args.stride, resolution=args.resolution, pooling=args.pooling,
                     layers=layers, fmt=args.format, batch_size=args.batch_size, num_workers=args.workers,
                     decoder=args.decoder, device=args.device, shard_windows=args.shard_windows,
                     progress=not args.no_progress)
    print(f"embedded {r.videos - len(r.skipped)} videos ({r.windows} windows this run"
          + (f", {r.resumed_from} before" if r.resumed_from else "") + f") in {r.seconds:.1f} s -> {r.out_dir}"
          + (f"; skipped {len(r.skipped)}: " + ", ".join(r.skipped) if r.skipped else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    import argparse  # noqa: PLC0415

    p = argparse.ArgumentParser(prog="vjepa-fast embed", description=__doc__.split("\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
