"""`vjepa-fast embed` throughput against a plain eager loop, and its peak memory against video length.

Throughput (one run, same encoder, videos, windows and decoder): the *reference* is what one writes by
hand: for each video, for each window, decode it, apply the eval transform, run the encoder on that one
clip (batch 1, fp32 on the CPU, bf16 autocast on CUDA) and take the token mean, all in the main process.
*embed* is ``embed_videos`` (DataLoader workers decode, batches of ``--batch-size``). Both features are
compared (max abs difference) so the speed-up is for the same numbers.

Memory (``--memory``): ``embed`` runs in a fresh process on one short and one long video (same frame
size, synthetic H.264 / MPEG-4 written frame by frame), and reports the peak RSS of the main process and
of its decoding worker (``ru_maxrss``), and the worker's largest RSS in each quarter of the run (sampled
every 0.25 s: flat when memory does not grow with the video), as the ``vjepa-fast embed`` command runs it.
One JSON object per line.

    python benchmarks/bench_embed.py [--videos 8] [--frames 128] [--size 160] [--memory --long-frames 6000]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vjepa_fast.decoders import open_video, resolve_decoder  # noqa: E402
from vjepa_fast.embed import embed_videos, load_encoder_for_embed, read_windows, window_indices, window_starts  # noqa: E402
from vjepa_fast.transforms import eval_video_views  # noqa: E402
from vjepa_fast.vision_transformer import VisionTransformer  # noqa: E402


def _emit(**kw):
    print(json.dumps(kw), flush=True)


def write_video(path: str, frames: int, size: int, seed: int) -> None:
    """A textured canvas drifting by one pixel a frame, encoded frame by frame (never all in memory)."""
    import av

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(path, "w") as c:
        s = c.add_stream(codec, rate=25)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        s.options = {"threads": "1"}
        for t in range(frames):
            frame = av.VideoFrame.from_ndarray(np.roll(base, (t, 2 * t), axis=(0, 1)), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def write_checkpoint(path: str, depth: int, frames: int, res: int) -> None:
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=res, patch_size=16, num_frames=frames, tubelet_size=2, embed_dim=192,
                            depth=depth, num_heads=3, uniform_power=True)
    torch.save({"target_encoder": vit.state_dict(),
                "vjepa_fast": {"config": {"model": {"model_name": "vit_tiny", "uniform_power": True},
                                          "data": {"crop_size": res, "num_frames": frames}}}}, path)


def reference(ckpt: str, paths: list[str], frame_step: int, decoder: str, device: torch.device) -> np.ndarray:
    vit, spec = load_encoder_for_embed(ckpt, "target_encoder", None)
    vit = vit.to(device)
    fpc, res = spec["num_frames"], spec["img_size"]
    feats = []
    with torch.inference_mode():
        for path in paths:
            with open_video(path, decoder) as r:
                n = len(r)
                for s in window_starts(n, fpc, frame_step, fpc * frame_step):
                    x = eval_video_views(r.get_batch(window_indices(s, n, fpc, frame_step)), res, 1)[0][None]
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                        out = vit(x.to(device))
                    feats.append(out.float().mean(1).cpu())
    return torch.cat(feats).numpy()


_CHILD = """
import json, os, resource, sys, threading, time
from vjepa_fast.embed import embed_videos, fix_mmap_threshold
fix_mmap_threshold()  # as the vjepa-fast embed command does
samples = []  # (seconds, RSS MB of this process's children = the decoding worker)

def sample():
    t0 = time.perf_counter()
    while True:
        for pid in os.listdir("/proc"):
            try:
                st = open(f"/proc/{pid}/status").read()
            except (OSError, ValueError):
                continue
            if f"PPid:\\t{os.getpid()}\\n" in st and "VmRSS:" in st:
                samples.append((time.perf_counter() - t0, int(st.split("VmRSS:")[1].split()[0]) / 1024))
        time.sleep(0.25)

threading.Thread(target=sample, daemon=True).start()
r = embed_videos(sys.argv[1], sys.argv[2], sys.argv[3], frame_step=int(sys.argv[4]), batch_size=int(sys.argv[5]),
                 num_workers=1, progress=False)
span = max(t for t, _ in samples) if samples else 0
quarters = [round(max([m for t, m in samples if q * span / 4 <= t <= (q + 1) * span / 4] or [0]), 1) for q in range(4)]
print(json.dumps({"windows": r.windows, "seconds": round(r.seconds, 2),
                  "main_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "worker_rss_mb_max_per_quarter_of_run": quarters}))
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--frames", type=int, default=128, help="frames per video (throughput)")
    p.add_argument("--size", type=int, default=160, help="frame size of the synthetic videos (px)")
    p.add_argument("--depth", type=int, default=6, help="blocks of the 192-d encoder")
    p.add_argument("--clip-frames", type=int, default=16)
    p.add_argument("--resolution", type=int, default=112)
    p.add_argument("--frame-step", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--decoder", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--memory", action="store_true", help="also measure peak memory for a short and a long video")
    p.add_argument("--long-frames", type=int, default=6000)
    a = p.parse_args(argv)
    from envinfo import git_commit  # noqa: PLC0415  (benchmarks/ is on sys.path when run as a script)

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device)
    decoder = resolve_decoder(a.decoder, key="--decoder")
    _emit(bench="env", python=platform.python_version(), torch=torch.__version__, device=str(device),
          decoder=decoder, cores=os.cpu_count(), threads=torch.get_num_threads(), commit=git_commit(),
          date=time.strftime("%Y-%m-%d"))
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = os.path.join(tmp, "enc.pt")
        write_checkpoint(ckpt, a.depth, a.clip_frames, a.resolution)
        paths = [os.path.join(tmp, f"v{i}.mp4") for i in range(a.videos)]
        for i, path in enumerate(paths):
            write_video(path, a.frames, a.size, i)
        index = os.path.join(tmp, "index.csv")
        with open(index, "w") as f:
            f.writelines(f"{path} 0\n" for path in paths)
        common = dict(encoder=f"192-d x {a.depth} blocks, {a.clip_frames} frames at {a.resolution} px, patch 16",
                      videos=a.videos, frames=a.frames, src_res=f"{a.size}x{a.size}", frame_step=a.frame_step)

        t0 = time.perf_counter()
        ref = reference(ckpt, paths, a.frame_step, decoder, device)
        t_ref = time.perf_counter() - t0
        _emit(bench="embed", impl="reference", windows=len(ref), seconds=round(t_ref, 2),
              windows_per_s=round(len(ref) / t_ref, 2), videos_per_s=round(a.videos / t_ref, 3), batch=1, **common)
        r = embed_videos(ckpt, index, os.path.join(tmp, "out"), frame_step=a.frame_step, batch_size=a.batch_size,
                         num_workers=a.workers, decoder=decoder, device=str(device), progress=False)
        rows = read_windows(os.path.join(tmp, "out"), ["video", "window", "features"])
        got = rows["features"][np.lexsort((rows["window"], rows["video"]))]
        _emit(bench="embed", impl="embed", windows=r.windows, seconds=round(r.seconds, 2),
              windows_per_s=round(r.windows / r.seconds, 2), videos_per_s=round(a.videos / r.seconds, 3),
              batch=a.batch_size, workers=a.workers, speedup=round(t_ref / r.seconds, 2),
              max_abs_diff_vs_reference=float(np.abs(got - ref).max()), **common)

        if a.memory:
            for name, frames in (("short", 4 * a.clip_frames * a.frame_step), ("long", a.long_frames)):
                path = os.path.join(tmp, f"{name}.mp4")
                write_video(path, frames, a.size, 0)
                idx = os.path.join(tmp, f"{name}.csv")
                with open(idx, "w") as f:
                    f.write(f"{path} 0\n")
                env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
                out = subprocess.run([sys.executable, "-c", _CHILD, ckpt, idx, os.path.join(tmp, f"mem_{name}"),
                                      str(a.frame_step), str(a.batch_size)], env=env, capture_output=True, text=True,
                                     check=True).stdout.strip().splitlines()[-1]
                _emit(bench="embed_memory", video=name, frames=frames, src_res=f"{a.size}x{a.size}",
                      batch=a.batch_size, **json.loads(out))


if __name__ == "__main__":
    main()
