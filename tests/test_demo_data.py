"""Demo data: real MP4s that the installed decoders read, correct and independent labels, determinism."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("sklearn")

from vjepa_fast.decoders import open_video  # noqa: E402
from vjepa_fast.demo_data import DIRECTIONS, _upscale, main, make_demo_data, render_clip  # noqa: E402
from vjepa_fast.video_dataset import VideoDataset, read_index_files  # noqa: E402

N_TRAIN, N_VAL, FRAMES, SIZE = 80, 40, 16, 64


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    summary = make_demo_data(str(out), n_train=N_TRAIN, n_val=N_VAL, frames=FRAMES, size=SIZE, seed=0)
    meta = json.load(open(os.path.join(out, "metadata.json")))
    return str(out), summary, meta


def _decode(path):
    with open_video(path) as reader:  # data.decoder=auto: whichever decoder is installed
        return reader.get_batch(list(range(len(reader))))


def test_layout_and_index_files(demo):
    out, summary, _ = demo
    for name in ("train_digit.csv", "val_digit.csv", "train_motion.csv", "val_motion.csv", "README.txt"):
        assert os.path.isfile(os.path.join(out, name)), name
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        pd, ld, _ = read_index_files(os.path.join(out, f"{split}_digit.csv"))
        pm, lm, _ = read_index_files(os.path.join(out, f"{split}_motion.csv"))
        assert pd == pm and len(pd) == n  # same clips, same order
        assert len(set(pd)) == n and all(os.path.isabs(p) and os.path.isfile(p) for p in pd)
        assert set(ld) == set(range(10)) and set(lm) == set(range(4))
    assert summary["codec"] in ("libx264", "mpeg4")


def test_files_decode(demo):
    out, _, meta = demo
    for c in meta["clips"]:
        assert os.path.getsize(c["path"]) >= 1024  # VideoDataset would skip smaller files
        x = _decode(c["path"])
        assert x.shape == (FRAMES, SIZE, SIZE, 3) and x.dtype == np.uint8


def test_labels_independent_and_balanced(demo):
    out, _, _ = demo
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        _, digits, _ = read_index_files(os.path.join(out, f"{split}_digit.csv"))
        _, motions, _ = read_index_files(os.path.join(out, f"{split}_motion.csv"))
        table = np.zeros((10, 4), int)
        for d, m in zip(digits, motions):
            table[d, m] += 1
        assert (table == n // 40).all(), table  # every (digit, direction) pair equally often


def test_val_uses_unseen_digit_scans(demo):
    _, _, meta = demo
    train = {c["image_index"] for c in meta["clips"] if c["split"] == "train"}
    val = {c["image_index"] for c in meta["clips"] if c["split"] == "val"}
    assert train and val and not (train & val)
    from sklearn.datasets import load_digits

    target = load_digits().target
    assert all(target[c["image_index"]] == c["digit"] for c in meta["clips"])


def _shift(a, b):
    """Circular shift (dy, dx) taking frame a to frame b (phase correlation on the torus)."""
    fa, fb = np.fft.fft2(a), np.fft.fft2(b)
    r = fb * np.conj(fa)
    corr = np.fft.ifft2(r / (np.abs(r) + 1e-6)).real
    dy, dx = np.unravel_index(np.argmax(corr), corr.shape)
    n = a.shape[0]
    return (dy + n // 2) % n - n // 2, (dx + n // 2) % n - n // 2


def test_motion_label_is_what_the_video_shows(demo):
    out, _, meta = demo
    for c in meta["clips"]:
        x = _decode(c["path"]).astype(np.float32).mean(-1)
        # frame-to-frame shifts (a few px, unambiguous on the torus), summed over the clip
        steps = np.array([_shift(x[t], x[t + 1]) for t in range(FRAMES - 1)])
        dy, dx = steps.sum(0)
        ey, ex = DIRECTIONS[c["motion"]]
        assert np.sign(dy) == ey and np.sign(dx) == ex, (c, dy, dx)
        travel = c["speed"] * (FRAMES - 1)
        assert abs(np.hypot(dy, dx) - travel) <= 1.5


def test_digit_is_the_scan(demo):
    _, summary, meta = demo
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32)
    for c in meta["clips"][::7]:
        ref = render_clip(_upscale(images[c["image_index"]], summary["digit_size"]), c["motion"], c["speed"],
                          tuple(c["start"]), FRAMES, SIZE)
        err = np.abs(_decode(c["path"]).astype(np.int16) - ref.astype(np.int16))
        assert err.mean() < 1.0 and err.max() <= 24, (c["path"], err.mean(), err.max())


def test_deterministic_and_seed_dependent(demo, tmp_path):
    out, _, meta = demo
    again = tmp_path / "again"
    make_demo_data(str(again), n_train=N_TRAIN, n_val=N_VAL, frames=FRAMES, size=SIZE, seed=0)
    meta2 = json.load(open(again / "metadata.json"))
    for a, b in zip(meta["clips"], meta2["clips"]):
        assert {k: v for k, v in a.items() if k != "path"} == {k: v for k, v in b.items() if k != "path"}
    for a, b in list(zip(meta["clips"], meta2["clips"]))[::10]:
        np.testing.assert_array_equal(_decode(a["path"]), _decode(b["path"]))
    other = tmp_path / "other"
    make_demo_data(str(other), n_train=40, n_val=40, frames=FRAMES, size=SIZE, seed=1)
    meta3 = json.load(open(other / "metadata.json"))
    assert [c["image_index"] for c in meta3["clips"][:40]] != [c["image_index"] for c in meta["clips"][:40]]


def test_video_dataset_reads_demo(demo):
    out, _, _ = demo
    ds = VideoDataset([os.path.join(out, "val_motion.csv")], frames_per_clip=16, frame_step=1)
    for i in range(0, len(ds), 9):
        clips, label, idx = ds[i]
        assert clips[0].shape == (16, SIZE, SIZE, 3) and 0 <= label < 4
        assert idx[0].tolist() == list(range(16))  # 16 frames, step 1: every frame once
    assert not ds.skipped


def test_cli(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "cli"), "--n-train", "40", "--n-val", "40", "--frames", "8",
                 "--size", "32", "--directions", "8"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["num_directions"] == 8 and summary["frames"] == 8
    _, motions, _ = read_index_files(str(tmp_path / "cli" / "train_motion.csv"))
    assert max(motions) < 8
    with pytest.raises(ValueError):
        make_demo_data(str(tmp_path / "bad"), size=33)


def test_several_digits_and_textured_background(tmp_path):
    """``digits_per_clip`` scans of the clip's class on a ``background`` texture, all moving together:
    the clip is the metadata re-rendered, every scan is of the labelled class, train and val scans
    stay disjoint."""
    from sklearn.datasets import load_digits

    from vjepa_fast.demo_data import compose_canvas, smooth_texture

    out = tmp_path / "multi"
    summary = make_demo_data(str(out), n_train=20, n_val=10, frames=8, size=SIZE, seed=0, digits_per_clip=4,
                             background=100)
    assert summary["digits_per_clip"] == 4 and summary["background"] == 100
    meta = json.load(open(out / "metadata.json"))
    digits = load_digits()
    images, targets = digits.images.astype(np.float32), digits.target
    scans = {"train": set(), "val": set()}
    for c in meta["clips"]:
        idx = [c["image_index"], *c["extra_image_indices"]]
        assert len(set(idx)) == 4 and all(targets[i] == c["digit"] for i in idx)
        scans[c["split"]].update(idx)
        x = _decode(c["path"])
        lo = x.astype(np.float32).min(axis=(1, 2, 3))
        assert (lo < 20).all()  # the texture spans 0..100: its dark valleys stay dark
        assert x.mean() > 40  # ... and it fills the canvas between the digits
        sprites = [_upscale(images[i], summary["digit_size"]) for i in idx]
        canvas = compose_canvas(sprites, [tuple(o) for o in c["offsets"]], SIZE)
        ref = render_clip(canvas, c["motion"], c["speed"], tuple(c["start"]), 8, SIZE)
        # The texture is not stored, so only the digit strokes (where the canvas is bright) must match.
        bright = ref > 200
        err = np.abs(x.astype(np.int16) - ref.astype(np.int16))[bright]
        assert err.mean() < 8, (c["path"], err.mean())
    assert not scans["train"] & scans["val"]
    t = smooth_texture(32, 90, np.random.default_rng(0))
    assert t.dtype == np.uint8 and t.min() == 0 and t.max() == 90
    np.testing.assert_array_equal(t, smooth_texture(32, 90, np.random.default_rng(0)))


def test_cli_defaults_are_the_bundled_demo_and_stale_data_is_detected(tmp_path, capsys):
    from vjepa_fast.demo_data import DEMO_DATA, demo_settings_differ

    out = tmp_path / "cli_default"
    assert main(["--out", str(out), "--n-train", "20", "--frames", "8", "--size", "32"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {k: summary[k] for k in DEMO_DATA} == DEMO_DATA
    assert demo_settings_differ(str(out)) == {}
    old = tmp_path / "old"
    make_demo_data(str(old), n_train=10, n_val=10, frames=8, size=32)  # the original single-digit data
    stale = demo_settings_differ(str(old))
    assert stale["digits_per_clip"] == (1, DEMO_DATA["digits_per_clip"]) and "background" in stale
    assert "metadata.json" in demo_settings_differ(str(tmp_path / "nothing"))
