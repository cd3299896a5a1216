"""Mask sampling cost per batch at the official ViT-L/16 setting (batch 24, 16 x 224, two configs).

Masks are drawn on the CPU for every step, inside DataLoader workers or the training loop, so the
number that matters is single-core latency. Run with ``--benchmark-enable``.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from vjepa_fast.masks import MultiBlock3DMaskCollator, RandomTubeMaskCollator

# configs/pretrain/vitl16.yaml, `mask` section.
VITL16_MASKS = [
    {"spatial_scale": (0.15, 0.15), "temporal_scale": (1.0, 1.0), "aspect_ratio": (0.75, 1.5),
     "num_blocks": 8, "max_temporal_keep": 1.0, "max_keep": None},
    {"spatial_scale": (0.7, 0.7), "temporal_scale": (1.0, 1.0), "aspect_ratio": (0.75, 1.5),
     "num_blocks": 2, "max_temporal_keep": 1.0, "max_keep": None},
]


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_bench_multiblock3d_vitl16_b24(benchmark, one_thread):
    col = MultiBlock3DMaskCollator(VITL16_MASKS, crop_size=224, num_frames=16, seed=0)
    steps = itertools.count()  # a new step each round: sizes and positions change like in training
    enc, pred = benchmark(lambda: col.sample(24, next(steps)))
    assert [m.shape[0] for m in enc + pred] == [24] * 4


def test_bench_random_tube_b24(benchmark, one_thread):
    col = RandomTubeMaskCollator(0.9, crop_size=224, num_frames=16, seed=0)
    steps = itertools.count()
    enc, _ = benchmark(lambda: col.sample(24, next(steps)))
    assert enc[0].shape == (24, 19 * 8)
