"""Pretraining augmentation (batched vs per-clip reference) and eval views."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vjepa_fast.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BatchVideoTransform,
    EvalVideoTransform,
    VideoTransform,
    apply_video_transform,
    eval_video_views,
    reference_video_transform,
    sample_batch_crop_params,
    sample_crop_params,
)

MEAN255 = torch.tensor(IMAGENET_MEAN) * 255
STD255 = torch.tensor(IMAGENET_STD) * 255


def _clips(shapes, T=5, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (T, h, w, 3), dtype=np.uint8) for h, w in shapes]


def _reference_batch(clips, boxes, flips, crop):
    return torch.stack([reference_video_transform(c, b, f, crop) for c, b, f in
                        zip(clips, boxes.tolist(), flips.tolist())])


# ------------------------------------------------------------------------------------------------
# batched == reference
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["gather", "loop"])
@pytest.mark.parametrize("crop", [16, 37, 96])
def test_batched_equals_reference_mixed_sizes(crop, method):
    shapes = [(144, 176), (90, 160), (64, 64), (50, 300), (300, 40), (33, 35)]
    clips = _clips(shapes)
    g = torch.Generator().manual_seed(crop)
    for _ in range(3):
        boxes, flips = sample_batch_crop_params(shapes, generator=g)
        out = apply_video_transform(clips, boxes, flips, crop, method=method)
        assert out.shape == (len(shapes), 3, 5, crop, crop) and out.dtype == torch.float32
        assert out.is_contiguous()
        ref = _reference_batch(clips, boxes, flips, crop)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", ["gather", "loop"])
def test_batched_equals_reference_tensor_input_and_forced_flips(method):
    clips = _clips([(72, 96)] * 4, T=3, seed=1)
    x = torch.from_numpy(np.stack(clips))
    boxes = torch.tensor([[0, 0, 72, 96], [5, 7, 30, 41], [10, 20, 62, 50], [71, 95, 1, 1]])
    for flips in (torch.tensor([True, False, True, False]), torch.tensor([False, True, False, True])):
        out = apply_video_transform(x, boxes, flips, 48, method=method)
        ref = _reference_batch(clips, boxes, flips, 48)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
        # the list path gives the same result as the tensor path
        torch.testing.assert_close(apply_video_transform(clips, boxes, flips, 48, method=method), out,
                                   rtol=0, atol=0)
    out16 = apply_video_transform(x, boxes, flips, 48, out_dtype=torch.bfloat16, method=method)
    assert out16.dtype == torch.bfloat16 and out16.shape == (4, 3, 3, 48, 48)


def test_identity_box_is_exact_normalisation_and_flip():
    (clip,) = _clips([(20, 20)], T=2, seed=2)
    ref = reference_video_transform(clip, (0, 0, 20, 20), False, 20)
    expect = (torch.from_numpy(clip).float().permute(3, 0, 1, 2) - MEAN255[:, None, None, None]) \
        / STD255[:, None, None, None]
    torch.testing.assert_close(ref, expect, rtol=0, atol=1e-6)
    for method in ("gather", "loop"):
        flipped = apply_video_transform([clip], [[0, 0, 20, 20]], [True], 20, method=method)[0]
        torch.testing.assert_close(flipped, expect.flip(-1), rtol=0, atol=1e-6)


def test_reference_is_official_order():
    """crop -> F.interpolate(bilinear, align_corners=False) on [C,T,h,w] -> flip -> normalise."""
    (clip,) = _clips([(40, 50)], T=3, seed=3)
    box = (3, 4, 30, 25)
    x = torch.tensor(clip, dtype=torch.float32).permute(3, 0, 1, 2)[:, :, 3:33, 4:29]
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False).flip(-1)
    x = (x - MEAN255[:, None, None, None]) / STD255[:, None, None, None]
    torch.testing.assert_close(reference_video_transform(clip, box, True, 16), x, rtol=0, atol=1e-6)


def test_apply_rejects_bad_boxes_and_mismatches():
    clips = _clips([(20, 20), (20, 20)], T=2)
    with pytest.raises(ValueError, match="outside"):
        apply_video_transform(clips, [[0, 0, 21, 5], [0, 0, 5, 5]], [False, False], 8)
    with pytest.raises(ValueError):
        apply_video_transform(clips, [[0, 0, 5, 5]], [False], 8)
    with pytest.raises(ValueError, match="common T"):
        apply_video_transform([clips[0], clips[1][:1]], [[0, 0, 5, 5]] * 2, [False] * 2, 8)
    with pytest.raises(TypeError):
        apply_video_transform([c.astype(np.float32) for c in clips], [[0, 0, 5, 5]] * 2, [False] * 2, 8)
    with pytest.raises(ValueError, match="method"):
        apply_video_transform(clips, [[0, 0, 5, 5]] * 2, [False] * 2, 8, method="fast")


# ------------------------------------------------------------------------------------------------
# crop parameters
# ------------------------------------------------------------------------------------------------
def test_crop_params_distribution():
    g = torch.Generator().manual_seed(0)
    H, W = 200, 200  # square: rejection of too-large boxes is symmetric in log-aspect
    n = 3000
    areas, log_ars, flips, tops_rel = [], [], [], []
    for _ in range(n):
        p = sample_crop_params(H, W, (0.3, 1.0), (0.75, 1.35), g)
        assert 0 <= p.top and p.top + p.h <= H and 0 <= p.left and p.left + p.w <= W
        areas.append(p.h * p.w / (H * W))
        log_ars.append(math.log(p.w / p.h))
        flips.append(p.flip)
        if p.h < H:
            tops_rel.append(p.top / (H - p.h))
    areas, log_ars = np.array(areas), np.array(log_ars)
    assert areas.min() > 0.28 and areas.max() <= 1.0
    assert abs(areas.mean() - 0.6) < 0.05  # U(0.3, 1) minus rejected large boxes
    assert log_ars.min() > math.log(0.75) - 0.05 and log_ars.max() < math.log(1.35) + 0.05
    assert abs(log_ars.mean() - (math.log(0.75) + math.log(1.35)) / 2) < 0.03
    assert abs(np.mean(flips) - 0.5) < 0.04
    assert abs(np.mean(tops_rel) - 0.5) < 0.04  # uniform position


def test_crop_params_fallback_and_no_flip():
    g = torch.Generator().manual_seed(0)
    # 10 x 1000: no sampled box with aspect <= 1.35 and h <= 10 can reach 30 % of the area
    for _ in range(20):
        p = sample_crop_params(10, 1000, (0.3, 1.0), (0.75, 1.35), g, hflip_prob=0.0)
        assert (p.top, p.left, p.h, p.w, p.flip) == (0, 493, 10, 14, False)  # w = round(10 * 1.35)
    p = sample_crop_params(1000, 10, (0.3, 1.0), (0.75, 1.35), g)
    assert (p.h, p.w) == (13, 10) and p.top == (1000 - 13) // 2  # h = round(10 / 0.75)


def test_crop_params_deterministic_with_generator():
    a = sample_batch_crop_params([(100, 120)] * 8, generator=torch.Generator().manual_seed(4))
    b = sample_batch_crop_params([(100, 120)] * 8, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (8, 4) and a[1].dtype == torch.bool


def test_unsupported_options_raise():
    with pytest.raises(NotImplementedError, match="RandAugment"):
        VideoTransform(auto_augment=True)
    with pytest.raises(NotImplementedError, match="reprob"):
        BatchVideoTransform(reprob=0.25)
    with pytest.raises(NotImplementedError, match="motion_shift"):
        VideoTransform(motion_shift=True)


def test_transform_objects():
    clips = _clips([(60, 80), (70, 50)], T=4, seed=5)
    vt = VideoTransform(crop_size=32, seed=0)
    out = vt(clips[0])
    assert out.shape == (3, 4, 32, 32) and out.dtype == torch.float32
    bt = BatchVideoTransform(crop_size=32, seed=0)
    o1 = bt(clips)
    o2 = BatchVideoTransform(crop_size=32, seed=0)(clips)
    assert o1.shape == (2, 3, 4, 32, 32) and torch.equal(o1, o2)
    # same generator stream -> same boxes as the per-clip reference transform
    g = torch.Generator().manual_seed(9)
    boxes, flips = sample_batch_crop_params([(60, 80), (70, 50)], generator=g)
    for method in ("gather", "loop"):
        bt = BatchVideoTransform(crop_size=32, seed=9, method=method)
        torch.testing.assert_close(bt(clips), _reference_batch(clips, boxes, flips, 32), rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# eval views
# ------------------------------------------------------------------------------------------------
def _norm01(x_uint8_thwc):
    x = torch.as_tensor(x_uint8_thwc).permute(3, 0, 1, 2).float() / 255.0
    m = torch.tensor(IMAGENET_MEAN)[:, None, None, None]
    return (x - m) / torch.tensor(IMAGENET_STD)[:, None, None, None]


def _resize(clip, oh, ow):
    x = torch.from_numpy(clip).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def test_eval_three_views_landscape_and_portrait():
    (clip,) = _clips([(90, 160)], T=3, seed=6)
    views = eval_video_views(clip, 64, 3)
    assert len(views) == 3 and all(v.shape == (3, 3, 64, 64) for v in views)
    r = _resize(clip, 64, int(64 * 160 / 90))  # 64 x 113
    step = (113 - 64) // 2
    for i, v in enumerate(views):
        torch.testing.assert_close(v, _norm01(r[:, :, i * step:i * step + 64]), rtol=0, atol=1e-6)
    (tall,) = _clips([(100, 40)], T=2, seed=7)
    views = eval_video_views(tall, 32, 3)
    r = _resize(tall, 80, 32)
    for i, v in enumerate(views):
        torch.testing.assert_close(v, _norm01(r[:, i * 24:i * 24 + 32]), rtol=0, atol=1e-6)


def test_eval_single_view_center_crop():
    (clip,) = _clips([(90, 160)], T=2, seed=8)
    (v,) = eval_video_views(clip, 64, 1)
    short = int(64 * 256 / 224)  # 73
    r = _resize(clip, short, int(short * 160 / 90))  # 73 x 129
    y0, x0 = round((73 - 64) / 2), round((129 - 64) / 2)
    torch.testing.assert_close(v, _norm01(r[:, y0:y0 + 64, x0:x0 + 64]), rtol=0, atol=1e-6)
    # constant clip -> the normalised constant, no resize needed when the short side already fits
    flat = np.full((2, 64, 64, 3), 200, np.uint8)
    (v,) = EvalVideoTransform(64, 1)(flat)
    exp = (200 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(v.mean(dim=(1, 2, 3)), exp, rtol=0, atol=1e-6)
    views = EvalVideoTransform(64, 3)(flat)  # square: all three views identical
    assert all(torch.equal(views[0], w) for w in views)
