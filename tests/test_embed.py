"""vjepa-fast embed: windows, output equal to the encoder run by hand, bad videos, resume after SIGKILL."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from vjepa_fast.decoders import available_decoders, open_video
from vjepa_fast.embed import embed_videos, read_windows, window_indices, window_starts
from vjepa_fast.transforms import eval_video_views
from vjepa_fast.video_dataset import SkippedVideoWarning
from vjepa_fast.vision_transformer import VisionTransformer

pytest.importorskip("av")
pytest.importorskip("sklearn")
pytest.importorskip("safetensors")
if not available_decoders():
    pytest.skip("no video decoder installed", allow_module_level=True)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a small encoder: vit_tiny width (192-d, 3 heads), 2 blocks, 4 frames of 32 px, 8 px patches -> 32 tokens
SPEC = dict(img_size=32, patch_size=8, num_frames=4, tubelet_size=2, embed_dim=192, depth=2, num_heads=3)


def test_window_starts_cover_the_video():
    # span (4-1)*2+1 = 7: starts 0, 8 (stride 8); 8+7 = 15 < 16, so one more window ends on frame 15
    assert window_starts(16, 4, 2, 8) == [0, 8, 9]
    assert window_starts(15, 4, 2, 8) == [0, 8]  # 8 + 7 = 15: the last window already ends on frame 14
    assert window_starts(16, 4, 2, 3) == [0, 3, 6, 9]
    assert window_starts(5, 4, 2, 8) == [0]  # shorter than a window: one, padded
    assert window_indices(0, 5, 4, 2) == [0, 2, 4, 4]
    assert window_indices(9, 16, 4, 2) == [9, 11, 13, 15]
    with pytest.raises(ValueError, match="stride=0"):
        window_starts(16, 4, 2, 0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from vjepa_fast.demo_data import make_demo_data

    root = tmp_path_factory.mktemp("embed")
    make_demo_data(str(root / "demo"), n_train=6, n_val=2, frames=16, size=64, seed=0)
    torch.manual_seed(0)
    vit = VisionTransformer(**SPEC, uniform_power=True)
    ckpt = {"target_encoder": vit.state_dict(), "encoder": VisionTransformer(**SPEC).state_dict(),
            "vjepa_fast": {"config": {"model": {"model_name": "vit_tiny", "uniform_power": True},
                                      "data": {"crop_size": 32, "num_frames": 4}}}}
    torch.save(ckpt, root / "enc.pt")
    paths = [line.split()[0] for line in open(root / "demo" / "train_digit.csv")]
    return root, str(root / "enc.pt"), vit.eval(), paths


def _write_index(path, paths):
    path.write_text("".join(f"{p} {i}\n" for i, p in enumerate(paths)))
    return str(path)


def _by_hand(vit, path, fpc, step, stride, res, layers=None):
    """Decode each window, transform, run the encoder on it alone: [W, N, D] per layer."""
    with open_video(path, "pyav") as r:
        n = len(r)
        starts = window_starts(n, fpc, step, stride)
        clips = [eval_video_views(r.get_batch(window_indices(s, n, fpc, step)), res, 1)[0] for s in starts]
    vit.out_layers = layers
    try:
        with torch.inference_mode():
            outs = [vit(c[None]) for c in clips]
    finally:
        vit.out_layers = None
    if layers is None:
        return starts, torch.cat(outs)[:, None]  # [W, 1, N, D]
    return starts, torch.stack([torch.cat(o) for o in outs])  # [W, L, N, D]


@pytest.mark.parametrize("fmt", ["safetensors", "npy"])
def test_output_equals_encoder_by_hand(setup, tmp_path, fmt):
    root, ckpt, vit, paths = setup
    index = _write_index(tmp_path / "i.csv", paths[:3])
    out = tmp_path / "out"
    r = embed_videos(ckpt, index, out, frame_step=2, stride=8, fmt=fmt, batch_size=2, num_workers=2, progress=False)
    assert r.windows == 9 and not r.skipped
    rows = read_windows(out)
    man = json.loads((out / "manifest.json").read_text())
    assert man["complete"] and man["windows"] == {"frames_per_clip": 4, "frame_step": 2, "stride": 8, "resolution": 32}
    ext = "safetensors" if fmt == "safetensors" else "npz"
    from vjepa_fast.embed import _load_arrays

    vids = _load_arrays(out / f"videos.{ext}")
    for v, p in enumerate(paths[:3]):
        starts, tok = _by_hand(vit, p, 4, 2, 8, 32)
        sel = rows["video"] == v
        assert rows["window"][sel].tolist() == list(range(len(starts))) and rows["start"][sel].tolist() == starts
        np.testing.assert_allclose(rows["features"][sel], tok[:, 0].mean(1).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(vids["features"][v], tok[:, 0].mean(1).mean(0).numpy(), rtol=1e-5, atol=1e-6)
        assert vids["num_windows"][v] == len(starts) and vids["ok"][v] == 1
        assert man["videos"][v] == {"path": p, "label": v, "done": 3, "num_frames": 16, "fps": man["videos"][v]["fps"],
                                    "windows": 3}
    if fmt == "safetensors":  # the settings travel in the file's metadata too
        from safetensors import safe_open

        with safe_open(str(out / "windows-00000.safetensors"), framework="np") as f:
            assert json.loads(f.metadata()["settings"])["pooling"] == "mean"


def test_tokens_of_chosen_layers(setup, tmp_path):
    root, ckpt, vit, paths = setup
    index = _write_index(tmp_path / "i.csv", paths[:2])
    out = tmp_path / "tok"
    embed_videos(ckpt, index, out, frame_step=2, stride=4, pooling="tokens", layers=[0, -1], batch_size=3,
                 num_workers=0, shard_windows=2, progress=False)
    rows = read_windows(out)
    assert rows["tokens"].shape[1:] == (2, 32, 192) and rows["features"].shape[1:] == (2, 192)
    for v, p in enumerate(paths[:2]):
        starts, tok = _by_hand(vit, p, 4, 2, 4, 32, layers=[0, 1])
        sel = rows["video"] == v
        assert rows["start"][sel].tolist() == starts
        np.testing.assert_allclose(rows["tokens"][sel], tok.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(rows["features"][sel], tok.mean(2).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"--layers \[5\] outside the encoder's 2 blocks"):
        embed_videos(ckpt, index, tmp_path / "bad", layers=[5], progress=False)


def test_bad_videos_are_skipped_and_named(setup, tmp_path):
    root, ckpt, vit, paths = setup
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    missing = str(tmp_path / "missing.mp4")
    index = _write_index(tmp_path / "i.csv", [paths[0], str(junk), missing, paths[1]])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        r = embed_videos(ckpt, index, tmp_path / "out", frame_step=2, num_workers=0, progress=False)
    assert set(r.skipped) == {str(junk), missing}
    assert "cannot open" in r.skipped[str(junk)] and r.skipped[missing] == "file not found"
    assert {str(junk), missing} <= {p for p in r.skipped if any(p in str(w.message) for w in rec
                                                                  if issubclass(w.category, SkippedVideoWarning))}
    from vjepa_fast.embed import _load_arrays

    vids = _load_arrays(tmp_path / "out" / "videos.safetensors")
    assert vids["ok"].tolist() == [1, 0, 0, 1] and vids["num_windows"].tolist() == [3, 0, 0, 3]
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert "cannot open" in man["videos"][1]["skipped"]


def test_other_settings_in_the_same_folder_is_an_error(setup, tmp_path):
    root, ckpt, vit, paths = setup
    index = _write_index(tmp_path / "i.csv", paths[:1])
    embed_videos(ckpt, index, tmp_path / "out", frame_step=2, num_workers=0, progress=False)
    with pytest.raises(ValueError, match=r"frame_step: 2 there, 1 now"):
        embed_videos(ckpt, index, tmp_path / "out", frame_step=1, num_workers=0, progress=False)


_KILLER = """
import os, signal, sys
import vjepa_fast.embed as E
when, after = sys.argv[1], int(sys.argv[2])
calls = {"n": 0}
orig_save, orig_manifest = E._save_arrays, E._write_manifest

def save(path, *a, **k):
    orig_save(path, *a, **k)
    if path.name.startswith("windows-"):
        calls["n"] += 1
        if when == "shard" and calls["n"] == after:
            os.kill(os.getpid(), signal.SIGKILL)  # the shard is on disk, the manifest does not list it yet

def manifest(*a, **k):
    orig_manifest(*a, **k)
    if when == "manifest" and calls["n"] == after:
        os.kill(os.getpid(), signal.SIGKILL)

E._save_arrays, E._write_manifest = save, manifest
sys.exit(E.main(sys.argv[3:]))
"""


@pytest.mark.parametrize("when", ["shard", "manifest"])
def test_resume_after_sigkill_loses_nothing(setup, tmp_path, when):
    root, ckpt, vit, paths = setup
    index = _write_index(tmp_path / "i.csv", paths[:4])
    args = ["--checkpoint", ckpt, "--index", index, "--frame-step", "2", "--stride", "4", "--batch-size", "3",
            "--shard-windows", "2", "--workers", "1", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": REPO}
    out = tmp_path / "killed"
    p = subprocess.run([sys.executable, "-c", _KILLER, when, "3", "--out", str(out), *args], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == -9, p.stderr  # killed, not finished
    man = json.loads((out / "manifest.json").read_text())
    assert not man["complete"] and len(man["shards"]) == (2 if when == "shard" else 3)
    before = sum(s["rows"] for s in man["shards"])
    p = subprocess.run([sys.executable, "-m", "vjepa_fast.cli", "embed", "--out", str(out), *args], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert f"{before} before" in p.stdout
    whole = tmp_path / "whole"
    embed_videos(ckpt, index, whole, frame_step=2, stride=4, batch_size=3, num_workers=0, progress=False)
    a, b = read_windows(out), read_windows(whole)
    key_a = list(zip(a["video"].tolist(), a["window"].tolist()))
    key_b = list(zip(b["video"].tolist(), b["window"].tolist()))
    assert len(set(key_a)) == len(key_a) == 16  # 4 videos x 4 windows, none twice
    assert sorted(key_a) == sorted(key_b)
    oa, ob = np.lexsort((a["window"], a["video"])), np.lexsort((b["window"], b["video"]))
    np.testing.assert_array_equal(a["start"][oa], b["start"][ob])
    np.testing.assert_allclose(a["features"][oa], b["features"][ob], rtol=1e-5, atol=1e-6)
    assert json.loads((out / "manifest.json").read_text())["complete"]
    assert sorted(f.name for f in out.iterdir()) == sorted(f.name for f in out.iterdir() if not f.name.endswith(".tmp"))


def test_bench_embed_smoke(capsys):
    """benchmarks/bench_embed.py at toy sizes: embed's features equal the eager reference's, and the
    memory rows are produced for a short and a long video."""
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    import bench_embed

    bench_embed.main(["--videos", "2", "--frames", "24", "--size", "32", "--depth", "1", "--resolution", "32",
                      "--clip-frames", "4", "--batch-size", "3", "--workers", "1", "--memory", "--long-frames", "64"])
    rows = [json.loads(s) for s in capsys.readouterr().out.splitlines() if s.startswith("{")]
    ref = [r for r in rows if r.get("impl") == "reference"][0]
    emb = [r for r in rows if r.get("impl") == "embed"][0]
    assert ref["windows"] == emb["windows"] == 2 * len(window_starts(24, 4, 2, 8))
    assert emb["max_abs_diff_vs_reference"] < 1e-5 and emb["speedup"] > 0
    mem = {r["video"]: r for r in rows if r.get("bench") == "embed_memory"}
    assert mem["long"]["windows"] == len(window_starts(64, 4, 2, 8)) and mem["short"]["main_peak_rss_mb"] > 0


def test_progress_line_counts_videos(setup, tmp_path, capsys):
    root, ckpt, vit, paths = setup
    index = _write_index(tmp_path / "i.csv", [paths[0], str(tmp_path / "missing.mp4"), paths[1]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedVideoWarning)
        embed_videos(ckpt, index, tmp_path / "out", frame_step=2, num_workers=0, progress=True)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("embed: 3/3 videos, ") and "videos/s" in last and "windows/s" in last, last
    assert last.endswith(", 1 skipped"), last
