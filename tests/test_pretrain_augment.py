"""Optional pretraining augmentation (data_aug.auto_augment, data_aug.reprob): RandAugment on the uint8
frames in the workers before the crop, random erasing on the normalised clips after the device
transform; motion_shift still raises."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vjepa_fast.config import PretrainConfig
from vjepa_fast.data import RandAugmentClips, VideoClipSource, build_video_dataset, random_erase_batch_
from vjepa_fast.demo_data import make_demo_data
from vjepa_fast.train import Trainer

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "pretrain" / "tiny_cpu.yaml"
SMALL = ["model.embed_dim=48", "model.depth=2", "model.pred_depth=1", "model.pred_embed_dim=24"]


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_aug")
    make_demo_data(str(root), n_train=6, n_val=1, frames=16, size=32)
    return root / "train_digit.csv"


def cfg_for(tmp, index, *extra):
    return PretrainConfig.from_yaml(TINY, [
        f"logging.folder={tmp}", "data.synthetic=false", f"data.datasets=[{index}]", "data.batch_size=3",
        "data.num_workers=0", "data.sampling_rate=2", "optimization.epochs=3", "optimization.warmup=1",
        "logging.log_every=1", *SMALL, *extra])


def first_batch(tmp, index, *extra):
    src = VideoClipSource(cfg_for(tmp, index, *extra), "cpu")
    try:
        clips, labels = src.next_batch()
    finally:
        src.close()
    return src, clips[0], labels


def test_auto_augment_changes_uint8_clips_deterministically(tmp_path, index):
    _, off, l_off = first_batch(tmp_path / "off", index)
    src, on, l_on = first_batch(tmp_path / "on", index, "data_aug.auto_augment=true")
    _, again, _ = first_batch(tmp_path / "again", index, "data_aug.auto_augment=true")
    _, other, _ = first_batch(tmp_path / "other", index, "data_aug.auto_augment=true", "meta.seed=1")
    assert isinstance(src.loader.dataset, RandAugmentClips)
    assert torch.equal(l_on, l_off)  # same samples, same clip positions
    assert len(on) == len(off) == 3
    for a, b, c in zip(on, off, again):
        assert a.shape == b.shape and a.dtype == b.dtype == torch.uint8
        assert torch.equal(a, c)  # deterministic for the same seed
    assert any(not torch.equal(a, b) for a, b in zip(on, off))
    assert any(not torch.equal(a, b) for a, b in zip(on, other))
    # the device transform still gives normalised float clips of the same shape
    out = src.transform(on, step=0)
    assert out.shape == (3, 3, 8, 64, 64) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_randaugment_uses_one_op_set_for_every_frame(tmp_path, index):
    ds = RandAugmentClips(build_video_dataset(cfg_for(tmp_path, index)), seed=0)
    rs = np.random.default_rng(0)
    frame = rs.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    static = np.repeat(frame[None], 8, axis=0)  # a static clip
    changed = 0
    for i in range(12):
        (out,) = ds.augment([static], data_pass=0, index=i)
        assert out.shape == static.shape and out.dtype == np.uint8
        # same op parameters for every frame: the frames of a static clip stay identical
        assert all(np.array_equal(out[t], out[0]) for t in range(8)), i
        changed += int(not np.array_equal(out, static))
        (again,) = ds.augment([static], data_pass=0, index=i)
        assert np.array_equal(out, again)
    assert changed >= 6


def test_random_erasing_one_box_per_clip(tmp_path, index):
    src0, clips, _ = first_batch(tmp_path / "r0", index)
    src1, _, _ = first_batch(tmp_path / "r1", index, "data_aug.reprob=1.0")
    a = src0.transform(clips, step=3)
    b = src1.transform(clips, step=3)
    assert b.shape == a.shape and b.dtype == a.dtype
    assert torch.equal(src1.transform(clips, step=3), b)  # deterministic
    for k in range(a.shape[0]):
        diff = a[k] != b[k]  # [C, T, H, W]
        box = diff.any(0).any(0)  # [H, W]
        rows = box.any(1).nonzero().flatten()
        cols = box.any(0).nonzero().flatten()
        assert rows.numel() > 0, k
        t, bt = int(rows[0]), int(rows[-1]) + 1
        l, r = int(cols[0]), int(cols[-1]) + 1
        # exactly one rectangle, the same in every frame and channel; nothing outside it changed
        assert diff[:, :, t:bt, l:r].all(), k
        assert int(diff.sum()) == 3 * a.shape[2] * (bt - t) * (r - l)
        # pixel mode: per-pixel N(0, 1) noise, different in every frame
        vals = b[k][:, :, t:bt, l:r]
        assert abs(float(vals.mean())) < 0.5 and 0.6 < float(vals.std()) < 1.4
        if a.shape[2] > 1:
            assert not torch.equal(vals[:, 0], vals[:, 1])
    # reprob = 0 changes nothing
    x = torch.randn(4, 3, 2, 8, 8)
    assert torch.equal(random_erase_batch_(x.clone(), 0.0, 0, 0, 5), x)


def test_motion_shift_still_raises(tmp_path, index):
    with pytest.raises(NotImplementedError, match="motion_shift"):
        build_video_dataset(cfg_for(tmp_path, index, "data_aug.motion_shift=true"))


def test_trainer_two_steps_with_auto_augment_and_erasing(tmp_path, index):
    cfg = cfg_for(tmp_path, index, "data_aug.auto_augment=true", "data_aug.reprob=0.5",
                  "optimization.max_steps=2", "optimization.ipe=2")
    tr = Trainer(cfg, out=lambda s: None)
    res = tr.fit()
    assert res.steps == 2 and np.isfinite(res.final_loss) and res.final_loss > 0
