"""V-JEPA 2 data on real (demo) videos: a clip length per index file (data.dataset_fpcs), fps-based
frame steps, image rows repeated to the clip length, V2's weighted sampler (with replacement,
seeded per pass), and multi-length batches through the source and the mask collator."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vjepa_fast.config import PretrainConfig
from vjepa_fast.data import MultiLengthBatch, VideoClipSource
from vjepa_fast.decoders import open_video
from vjepa_fast.demo_data import make_demo_data
from vjepa_fast.masks import MultiSeqMaskCollator
from vjepa_fast.video_dataset import DistributedWeightedSampler, VideoDataset, _item_rng, sample_clip_indices

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "pretrain" / "tiny_cpu.yaml"
SMALL = ["model.embed_dim=48", "model.depth=2", "model.pred_depth=1", "model.pred_embed_dim=24"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """8 demo MP4s (32 px, 24 frames at 8 fps) split into two index files whose labels are the line
    number (0-3 and 10-13), and two image files listed in a third."""
    from PIL import Image

    root = tmp_path_factory.mktemp("v2data")
    make_demo_data(str(root), n_train=8, n_val=1, frames=24, size=32)
    paths = [line.split()[0] for line in open(root / "train_digit.csv")]
    a, b = root / "a.csv", root / "b.csv"
    a.write_text("".join(f"{p} {i}\n" for i, p in enumerate(paths[:4])))
    b.write_text("".join(f"{p} {10 + i}\n" for i, p in enumerate(paths[4:])))
    rng = np.random.default_rng(0)
    imgs = root / "imgs.csv"
    lines = []
    for i, ext in enumerate(("png", "JPG")):
        arr = rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / f"img{i}.{ext}", quality=100 if ext == "JPG" else None)
        lines.append(f"{root / f'img{i}.{ext}'} {20 + i}\n")
    imgs.write_text("".join(lines))
    return root, a, b, imgs


def v2_cfg(tmp, datasets, fpcs, *extra):
    return PretrainConfig.from_yaml(TINY, [
        f"logging.folder={tmp}", "data.synthetic=false", f"data.datasets=[{','.join(map(str, datasets))}]",
        f"data.dataset_fpcs=[{','.join(map(str, fpcs))}]", "data.batch_size=4", "data.num_workers=0",
        "data.fps=4", "model.use_rope=true", *SMALL, *extra])


def test_each_index_file_has_its_clip_length_and_fps_sets_the_step(demo):
    root, a, b, _ = demo
    ds = VideoDataset([a, b], dataset_fpcs=[8, 4], fps=4, seed=3)
    assert [ds.clip_length(i) for i in range(8)] == [8] * 4 + [4] * 4
    for i in (0, 5):
        clips, label, idx = ds[i]
        fpc = ds.clip_length(i)
        assert len(clips) == 1 and clips[0].shape == (fpc, 32, 32, 3) and label == (i if i < 4 else 6 + i)
        with open_video(ds.samples[i], ds.decoder) as r:
            n, rate = len(r), r.fps
        step = math.ceil(rate) // 4  # official V2: ceil(avg fps) // fps
        assert step == 2
        want = sample_clip_indices(n, fpc, step, 1, True, False, _item_rng(3, 0, i))
        assert [x.tolist() for x in idx] == [x.tolist() for x in want]
    with pytest.raises(ValueError, match="dataset_fpcs"):
        VideoDataset([a, b], dataset_fpcs=[8])
    with pytest.raises(ValueError, match="fps"):
        VideoDataset([a], fps=4, duration=2.0)


def test_a_video_slower_than_fps_is_skipped(demo):
    _, a, _, _ = demo
    ds = VideoDataset([a], frames_per_clip=4, fps=9, max_retries=2)  # 8 fps videos: step 0
    with pytest.warns(UserWarning, match="slower than fps=9"), pytest.raises(RuntimeError, match="frame step 0"):
        ds[0]


def test_image_rows_are_repeated_to_the_clip_length(demo):
    from PIL import Image

    root, _, _, imgs = demo
    ds = VideoDataset([imgs], dataset_fpcs=[6], fps=4)
    for i, name in enumerate(("img0.png", "img1.JPG")):
        clips, label, idx = ds[i]
        want = np.asarray(Image.open(root / name).convert("RGB"))
        assert label == 20 + i and clips[0].shape == (6, 20, 28, 3) and clips[0].dtype == np.uint8
        assert all(np.array_equal(frame, want) for frame in clips[0])
        assert [x.tolist() for x in idx] == [list(range(6))]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_weighted_sampler_with_replacement_is_v2s_draw(world):
    """V2's DistributedWeightedSampler: numpy default_rng(seed + epoch).choice over all samples, the
    padded total size, p = weights / sum, with replacement; rank r takes every world-th from r."""
    counts, dataset_weights = [5, 3, 9], [0.335, 0.100, 0.565]
    weights = [w / n for w, n in zip(dataset_weights, counts) for _ in range(n)]
    n = len(weights)
    total = math.ceil(n / world) * world
    for epoch in (0, 3):
        rng = np.random.default_rng(7 + epoch)
        official = rng.choice(range(0, n), size=total, p=np.array(weights) / np.sum(weights), replace=True).tolist()
        for r in range(world):
            s = DistributedWeightedSampler(weights, num_replicas=world, rank=r, replacement=True, seed=7)
            s.set_epoch(epoch)
            assert list(s) == official[r:total:world] and len(s) == total // world


def test_source_gives_multi_length_batches_that_the_collator_groups(tmp_path, demo):
    _, a, b, _ = demo
    cfg = v2_cfg(tmp_path, [a, b], [8, 4], "data.datasets_weights=[0.5,0.5]")
    src = VideoClipSource(cfg, "cpu")
    assert src.multi_length and src.sampler.base.replacement
    col = MultiSeqMaskCollator(cfg.mask_dicts(), cfg.data.dataset_fpcs, crop_size=64)
    seen_two = False
    for step in range(4):
        batch = src(step)
        assert isinstance(batch, MultiLengthBatch) and batch.batch_size == 4
        labels = src.last_labels.tolist()
        assert batch.fpcs == [8 if lab < 10 else 4 for lab in labels]  # each sample: its file's length
        groups = col.sample_groups(batch.fpcs, step)
        for g in groups:
            x = batch.clips[g.fpc]
            assert x.shape == (len(g.rows), 3, g.fpc, 64, 64) and x.dtype == torch.float32
            T = g.fpc // 2
            assert all(int(m.max()) < T * 16 for m in g.masks_enc + g.masks_pred)
        seen_two |= len(groups) == 2
    assert seen_two


def test_one_length_batches_are_transformed_exactly_as_v1s(tmp_path, demo):
    """With one clip length, the grouped transform gives the V1 transform's tensor bit for bit (same
    crop boxes, flips and erasing per batch position)."""
    _, a, b, _ = demo
    cfg = v2_cfg(tmp_path, [a, b], [8, 8], "data_aug.reprob=0.5")
    src = VideoClipSource(cfg, "cpu")
    clips, _ = src.next_batch()
    grouped = src.transform_groups(clips[0], step=5)
    assert grouped.fpcs == [8] * 4 and torch.equal(grouped.clips[8], src.transform(clips[0], step=5))
