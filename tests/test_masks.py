"""Properties of the mask collators that the length statistics alone cannot see."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch.utils.data import DataLoader

from vjepa_fast.masks import (
    MASK_CFG_DEFAULTS,
    MultiBlock3DMaskCollator,
    MultiSeqMaskCollator,
    RandomTubeMaskCollator,
    build_mask_collator,
)

SHORT = {"spatial_scale": (0.15, 0.15), "temporal_scale": (1.0, 1.0), "aspect_ratio": (0.75, 1.5),
         "num_blocks": 8, "max_temporal_keep": 1.0, "max_keep": None}
LONG = {"spatial_scale": (0.7, 0.7), "temporal_scale": (1.0, 1.0), "aspect_ratio": (0.75, 1.5),
        "num_blocks": 2, "max_temporal_keep": 1.0, "max_keep": None}
OFFICIAL = [SHORT, LONG]
# Partial temporal extent and a wide scale range, so t, h, w all vary between steps.
VARIED = {"spatial_scale": (0.1, 0.5), "temporal_scale": (0.3, 0.8), "aspect_ratio": (0.5, 2.0),
          "num_blocks": 3}
EARLY_CONTEXT = {"spatial_scale": (0.2, 0.3), "num_blocks": 2, "max_temporal_keep": 0.5}

# (crop, frames, patch, tubelet, batch): the official grid, then odd, non-square-in-time and tiny ones.
GRIDS = [
    (224, 16, 16, 2, 24),
    (112, 10, 16, 2, 3),   # 5 x 7 x 7
    (80, 6, 16, 2, 5),     # 3 x 5 x 5
    (144, 4, 16, 4, 1),    # 1 x 9 x 9, single sample: truncation must be a no-op
]
CFG_SETS = [OFFICIAL, [VARIED, EARLY_CONTEXT], [{}]]


def _collator(cfgs, crop=224, frames=16, patch=16, tubelet=2, **kw):
    return MultiBlock3DMaskCollator(cfgs, crop_size=crop, num_frames=frames, patch_size=patch,
                                    tubelet_size=tubelet, **kw)


def _rows_sorted_unique_in_range(m: torch.Tensor, n: int):
    assert m.dtype == torch.int64 and m.dim() == 2
    if m.shape[1]:
        assert bool((m[:, 1:] > m[:, :-1]).all()), "indices must be strictly increasing per row"
        assert int(m.min()) >= 0 and int(m.max()) < n


def _union_of_boxes(target: np.ndarray, size: tuple[int, int, int]) -> bool:
    """Whether a [T,H,W] target is exactly a union of grid-aligned boxes of ``size``."""
    full = sliding_window_view(target, size).all(axis=(3, 4, 5))
    cover = np.zeros_like(target)
    t, h, w = size
    for t0, y0, x0 in np.argwhere(full):
        cover[t0:t0 + t, y0:y0 + h, x0:x0 + w] = True
    return bool((cover == target).all())


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: "x".join(map(str, g)))
@pytest.mark.parametrize("cfgs", CFG_SETS, ids=["official", "varied", "defaults"])
def test_masks_are_batch_min_prefixes_of_disjoint_sets(grid, cfgs):
    crop, frames, patch, tubelet, batch = grid
    col = _collator(cfgs, crop, frames, patch, tubelet, seed=3)
    n = col.num_tokens
    for step in range(4):
        grids = col.context_grids(batch, step)
        enc, pred = col.sample(batch, step)
        assert len(enc) == len(pred) == len(grids) == len(cfgs)
        for ctx, e, p in zip(grids, enc, pred):
            assert ctx.shape == (batch, n)
            assert ctx.any(axis=1).all(), "every sample needs some context"
            _rows_sorted_unique_in_range(e, n)
            _rows_sorted_unique_in_range(p, n)
            assert e.shape == (batch, ctx.sum(axis=1).min())
            assert p.shape == (batch, (~ctx).sum(axis=1).min())
            for b in range(batch):
                full_ctx = np.flatnonzero(ctx[b])
                full_tgt = np.flatnonzero(~ctx[b])
                # Truncation keeps the earliest indices: each row is a prefix of its full set.
                assert np.array_equal(e[b].numpy(), full_ctx[: e.shape[1]])
                assert np.array_equal(p[b].numpy(), full_tgt[: p.shape[1]])
                assert not set(e[b].tolist()) & set(p[b].tolist())


@pytest.mark.parametrize("grid", GRIDS[:3], ids=lambda g: "x".join(map(str, g)))
def test_target_is_union_of_blocks_of_one_shared_size(grid):
    crop, frames, patch, tubelet, batch = grid
    col = _collator([VARIED, dict(VARIED, num_blocks=1)], crop, frames, patch, tubelet, seed=1)
    T, H, W = col.grid
    seen_sizes = set()
    for step in range(6):
        sizes = col.block_sizes(step)
        seen_sizes.add(sizes[0])
        multi, single = col.context_grids(batch, step)
        for b in range(batch):
            assert _union_of_boxes(~multi[b].reshape(T, H, W), sizes[0])
            # One block: the target is a single box of exactly the batch's size.
            box = np.argwhere(~single[b].reshape(T, H, W))
            assert tuple(box.max(0) - box.min(0) + 1) == sizes[1] and len(box) == math.prod(sizes[1])
    assert len(seen_sizes) > 1, "block size should change between steps"


def test_block_positions_are_per_sample_and_cover_every_start():
    cfg = {"spatial_scale": (0.3, 0.3), "temporal_scale": (0.5, 0.5), "aspect_ratio": (1.0, 1.0)}
    col = _collator([cfg], 112, 10, seed=11)
    T, H, W = col.grid
    ((t, h, w),) = col.block_sizes(0)
    (ctx,) = col.context_grids(2000, 0)
    starts = set()
    for row in ctx:
        box = np.argwhere(~row.reshape(T, H, W))
        starts.add(tuple(box.min(0)))
    # Official starts are randint(0, dim - size + 1): every placement, both edges included.
    assert starts == {(a, b, c) for a in range(T - t + 1) for b in range(H - h + 1) for c in range(W - w + 1)}


def _expected_block_size(cfg, grid, step):
    # Written independently from the spec: three uniform draws (temporal, spatial, aspect) from a
    # torch generator seeded with the step; aspect is uniform; h, w rounded then clipped.
    T, H, W = grid
    gen = torch.Generator().manual_seed(step)
    ut, us, ua = (torch.rand(1, generator=gen).item() for _ in range(3))
    (tl, th), (sl, sh), (al, ah) = cfg["temporal_scale"], cfg["spatial_scale"], cfg["aspect_ratio"]
    t = max(1, int(T * (tl + ut * (th - tl))))
    keep = int(H * W * (sl + us * (sh - sl)))
    ar = al + ua * (ah - al)
    return t, min(round((keep * ar) ** 0.5), H), min(round((keep / ar) ** 0.5), W)


def test_block_size_formula_matches_official():
    col = _collator([SHORT, LONG, VARIED], seed=5, rank=2)
    filled = [dict(MASK_CFG_DEFAULTS, **c) for c in (SHORT, LONG, VARIED)]
    for step in range(200):
        assert col.block_sizes(step) == [_expected_block_size(c, col.grid, step) for c in filled]
    # Sizes do not depend on seed or rank (shared by every rank, as officially).
    other = _collator([SHORT, LONG, VARIED], seed=9, rank=0)
    assert all(col.block_sizes(s) == other.block_sizes(s) for s in range(20))


def test_official_long_range_block_sizes():
    # keep = int(196 * 0.7) = 137; aspect in [0.75, 1.5] gives h in 10..14 and w in 10..14.
    col = _collator(OFFICIAL)
    for step in range(100):
        (ts, hs, ws), (tl, hl, wl) = col.block_sizes(step)
        assert ts == tl == 8
        assert 10 <= hl <= 14 and 10 <= wl <= 14 and abs(hl * wl - 137) <= 20
        assert 4 <= hs <= 7 and 4 <= ws <= 7


def test_determinism_and_rank_step_seed_dependence():
    def masks(seed=0, rank=0, step=7):
        return _collator(OFFICIAL, seed=seed, rank=rank).sample(24, step)

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a[0] + a[1], b[0] + b[1])) and \
            [x.shape for x in a[0] + a[1]] == [x.shape for x in b[0] + b[1]]

    ref = masks()
    assert same(ref, masks())
    torch.manual_seed(123)
    np.random.seed(123)  # the global RNGs must play no part
    assert same(ref, masks())
    assert not same(ref, masks(rank=1))
    assert not same(ref, masks(step=8))
    assert not same(ref, masks(seed=1))


def test_collate_fn_counter_step_and_resume():
    cfgs = [VARIED, SHORT]
    batch = [(torch.full((2,), float(i)), i) for i in range(4)]
    col = _collator(cfgs, 112, 10, seed=4)
    expected = [col.sample(4, s) for s in range(8)]

    def check(out, step):
        (x, y), enc, pred = out
        assert torch.equal(y, torch.arange(4)) and x.shape == (4, 2)
        for got, want in zip(enc + pred, expected[step][0] + expected[step][1]):
            assert torch.equal(got, want)

    check(col(batch), 0)
    check(col(batch), 1)
    col.step()  # fast-forward without sampling
    check(col(batch), 3)
    state = col.state_dict()
    assert state == {"step": 4} and col.step_count == 4
    resumed = _collator(cfgs, 112, 10, seed=4)
    resumed.load_state_dict(state)
    for s in range(4, 8):
        check(resumed(batch), s)
    with pytest.raises(ValueError, match="step=-1"):
        resumed.load_state_dict({"step": -1})


class _Range(torch.utils.data.Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        return torch.tensor(i)


def test_dataloader_workers_draw_distinct_steps_in_batch_order():
    col = _collator([SHORT], 80, 6, seed=2)
    col.step()
    col.step()  # as if resumed at step 2
    loader = DataLoader(_Range(), batch_size=2, num_workers=2, collate_fn=col)
    for i, (x, enc, pred) in enumerate(loader):
        want_enc, want_pred = col.sample(2, 2 + i)
        assert torch.equal(x, torch.tensor([2 * i, 2 * i + 1]))
        assert torch.equal(enc[0], want_enc[0]) and torch.equal(pred[0], want_pred[0])
    assert col.step_count == 2, "worker copies must not move the main-process counter"


def test_max_keep_caps_context():
    capped = _collator([dict(SHORT, max_keep=100), dict(LONG, max_keep=10_000)], seed=6)
    free = _collator([SHORT, LONG], seed=6)
    for step in range(5):
        (ec_s, ec_l), _ = capped.sample(8, step)
        (ef_s, ef_l), _ = free.sample(8, step)
        assert ec_s.shape[1] == min(100, ef_s.shape[1])
        assert torch.equal(ec_s, ef_s[:, : ec_s.shape[1]])
        assert torch.equal(ec_l, ef_l), "a cap above the batch minimum changes nothing"


@pytest.mark.parametrize("mtk, mcd", [(0.5, 4), (0.3, 2), (0.01, 1)])
def test_max_temporal_keep_limits_context_to_early_frames(mtk, mcd):
    col = _collator([dict(VARIED, max_temporal_keep=mtk)], seed=7)
    T, H, W = col.grid
    assert col.specs[0].max_context_duration == mcd
    for step in range(5):
        (ctx,) = col.context_grids(6, step)
        ctx = ctx.reshape(6, T, H * W)
        assert not ctx[:, mcd:].any(), "no context after max_context_duration"
        assert ctx[:, :mcd].any(axis=(1, 2)).all()
        enc, pred = col.sample(6, step)
        assert int(enc[0].max()) < mcd * H * W
        # The dropped late frames join the target (official: target = where mask == 0).
        assert (~ctx[:, mcd:]).all()


def test_empty_context_samples_are_redrawn():
    # 3x3 grid, 4 blocks of 3x2 (keep 7, aspect >= 1.3): a draw leaves no context unless all four
    # blocks sit in the same column pair, so 7 in 8 first draws must be redrawn.
    cfg = {"spatial_scale": (0.8, 0.8), "aspect_ratio": (1.3, 1.5), "num_blocks": 4}
    col = _collator([cfg], crop=48, frames=2, tubelet=2, seed=8)
    assert col.grid == (1, 3, 3)
    assert all(col.block_sizes(s) == [(1, 3, 2)] for s in range(30))
    for step in range(30):
        (ctx,) = col.context_grids(32, step)
        assert ctx.any(axis=1).all()
        enc, _ = col.sample(32, step)
        assert enc[0].shape[1] >= 1


def test_block_covering_whole_grid_is_an_error():
    cfg = {"spatial_scale": (1.0, 1.0), "aspect_ratio": (1.0, 1.0)}
    col = _collator([cfg], crop=48, frames=2, tubelet=2)
    with pytest.raises(ValueError, match="covers the whole grid"):
        col.sample(2, 0)


def test_missing_keys_take_official_defaults():
    spec = _collator([{}]).specs[0]
    assert spec.spatial_scale == (0.2, 0.8) and spec.temporal_scale == (1.0, 1.0)
    assert spec.aspect_ratio == (0.3, 3.0) and spec.num_blocks == 1
    assert spec.max_context_duration == 8 and spec.max_keep is None


@pytest.mark.parametrize("grid", [(224, 16, 16, 2), (112, 10, 16, 2), (80, 6, 16, 2)])
@pytest.mark.parametrize("ratio", [0.9, 0.5, 0.75])
def test_random_tube(grid, ratio):
    crop, frames, patch, tubelet = grid
    col = RandomTubeMaskCollator(ratio, crop, frames, patch, tubelet, seed=1)
    T, H, W = col.grid
    keep = int(H * W * (1.0 - ratio))
    assert col.num_keep == keep
    (enc,), (pred,) = col.sample(6, 3)
    assert enc.shape == (6, keep * T) and pred.shape == (6, (H * W - keep) * T)
    _rows_sorted_unique_in_range(enc, T * H * W)
    _rows_sorted_unique_in_range(pred, T * H * W)
    for b in range(6):
        assert sorted(enc[b].tolist() + pred[b].tolist()) == list(range(T * H * W))
        spatial = (enc[b] % (H * W)).view(T, keep)
        assert (spatial == spatial[0]).all(), "context must be the same positions in every frame"
    assert len({tuple(enc[b].tolist()) for b in range(6)}) > 1, "samples need their own permutation"
    (enc2,), _ = col.sample(6, 3)
    assert torch.equal(enc, enc2)
    (enc_r,), _ = RandomTubeMaskCollator(ratio, crop, frames, patch, tubelet, seed=1, rank=1).sample(6, 3)
    assert not torch.equal(enc, enc_r)


def test_random_tube_collate_and_resume():
    col = RandomTubeMaskCollator(0.9, 80, 6, seed=2)
    col(list(torch.zeros(3, 2)))
    col.step()
    _, (enc,), _ = col(list(torch.zeros(3, 2)))
    assert torch.equal(enc, col.sample(3, 2)[0][0])
    assert col.state_dict() == {"step": 3}


def test_build_mask_collator():
    assert isinstance(build_mask_collator("multiblock3d", OFFICIAL), MultiBlock3DMaskCollator)
    assert isinstance(build_mask_collator(cfgs_mask=OFFICIAL), MultiBlock3DMaskCollator)
    tube = build_mask_collator("random_tube", OFFICIAL, ratio=0.5, crop_size=112)
    assert isinstance(tube, RandomTubeMaskCollator) and tube.ratio == 0.5
    with pytest.raises(ValueError, match="'bogus'"):
        build_mask_collator("bogus", OFFICIAL)


@pytest.mark.parametrize("kwargs, cfg, match", [
    ({"crop": 225}, SHORT, "crop_size=225"),
    ({"frames": 15}, SHORT, "num_frames=15"),
    ({}, dict(SHORT, spatial_scale=(0.0, 0.5)), r"spatial_scale=\(0.0, 0.5\)"),
    ({}, dict(SHORT, spatial_scale=(0.5, 1.2)), r"spatial_scale=\(0.5, 1.2\)"),
    ({}, dict(SHORT, temporal_scale=(0.8, 0.4)), r"temporal_scale=\(0.8, 0.4\)"),
    ({}, dict(SHORT, aspect_ratio=(-1, 2)), "aspect_ratio"),
    ({}, dict(SHORT, num_blocks=0), "num_blocks=0"),
    ({}, dict(SHORT, max_keep=0), "max_keep=0"),
    ({}, dict(SHORT, max_temporal_keep=0.0), "max_temporal_keep=0.0"),
    ({}, dict(SHORT, num_block=3), "num_block"),
    ({}, dict(SHORT, full_complement=True), "full_complement"),
    ({"seed": -1}, SHORT, "seed=-1"),
])
def test_errors_name_key_and_value(kwargs, cfg, match):
    with pytest.raises(ValueError, match=match):
        _collator([cfg], **kwargs)


def test_tube_and_sample_errors():
    with pytest.raises(ValueError, match="ratio=1.0"):
        RandomTubeMaskCollator(1.0)
    with pytest.raises(ValueError, match="crop_size=100"):
        RandomTubeMaskCollator(0.9, crop_size=100)
    with pytest.raises(ValueError, match="batch_size=0"):
        _collator(OFFICIAL).sample(0, 0)
    with pytest.raises(ValueError, match="cfgs_mask"):
        _collator([])


# ------------------------------------------------------------------------------------------------
# opt-in random truncation (data.mask_truncation: random)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: "x".join(map(str, g)))
def test_random_truncation_keeps_lengths_and_draws_sorted_subsets(grid):
    crop, frames, patch, tubelet, batch = grid
    kw = dict(crop=crop, frames=frames, patch=patch, tubelet=tubelet, seed=3)
    earliest, rand = _collator(OFFICIAL, **kw), _collator(OFFICIAL, **kw, truncation="random")
    for step in range(4):
        grids = rand.context_grids(batch, step)
        (e_enc, e_pred), (r_enc, r_pred) = earliest.sample(batch, step), rand.sample(batch, step)
        for ctx, ee, ep, re_, rp in zip(grids, e_enc, e_pred, r_enc, r_pred):
            assert re_.shape == ee.shape and rp.shape == ep.shape and re_.dtype == torch.int64
            for idx, allowed in ((re_, ctx), (rp, ~ctx)):
                a = idx.numpy()
                assert (np.diff(a, axis=1) > 0).all()  # ascending, no repeats
                assert allowed[np.arange(a.shape[0])[:, None], a].all()  # from the sample's own set
        # a pure function of (seed, rank, step), like the default
        again = rand.sample(batch, step)
        assert all(torch.equal(a, b) for a, b in zip(again[0] + again[1], r_enc + r_pred))


def test_random_truncation_picks_every_kept_index_equally_often():
    """One sample, a fixed context set of 40 tokens cut to 10: over many steps each of the 40 is kept
    with probability 10/40 (binomial bounds at ~5 sigma)."""
    from vjepa_fast.masks import _random_k, _rng

    mask = np.zeros((1, 128), dtype=bool)
    mask[0, np.arange(0, 120, 3)] = True
    hits = np.zeros(128)
    n = 4000
    for step in range(n):
        hits[_random_k(mask, 10, _rng(0, 3, step))[0]] += 1
    p = 10 / 40
    sigma = math.sqrt(n * p * (1 - p))
    assert hits[~mask[0]].sum() == 0
    assert np.abs(hits[mask[0]] - n * p).max() < 5 * sigma


def test_random_truncation_spreads_context_over_time_like_the_untruncated_masks():
    """The official cut keeps the earliest indices, so the kept context crowds into the first time
    steps; the random cut keeps, per time step, the share the untruncated masks have there."""
    from vjepa_fast.masks import time_step_shares

    earliest, rand = _collator(OFFICIAL), _collator(OFFICIAL, truncation="random")
    T, H, W = rand.grid
    steps, batch = 40, 24
    got = {"earliest": np.zeros((2, T)), "random": np.zeros((2, T))}
    untruncated = np.zeros((2, T))
    for step in range(steps):
        got["earliest"] += time_step_shares(earliest.sample(batch, step)[0], earliest.grid) / steps
        got["random"] += time_step_shares(rand.sample(batch, step)[0], rand.grid) / steps
        for g, ctx in enumerate(rand.context_grids(batch, step)):
            per_t = ctx.reshape(batch, T, H * W).sum(axis=2)
            untruncated[g] += (per_t / per_t.sum(axis=1, keepdims=True)).mean(axis=0) / steps
    np.testing.assert_allclose(got["random"], untruncated, atol=0.01)
    assert (got["earliest"][:, 0] > untruncated[:, 0] + 0.05).all()  # the official bias, both generators
    assert (got["earliest"][:, -1] < untruncated[:, -1] / 3).all()


def test_truncation_switch_is_validated_and_tube_masks_ignore_it():
    with pytest.raises(ValueError, match="truncation='latest'"):
        _collator(OFFICIAL, truncation="latest")
    a = RandomTubeMaskCollator(0.9, crop_size=64, num_frames=8, truncation="random").sample(4, 2)
    b = RandomTubeMaskCollator(0.9, crop_size=64, num_frames=8).sample(4, 2)
    assert all(torch.equal(x, y) for x, y in zip(a[0] + a[1], b[0] + b[1]))
    col = build_mask_collator("multiblock3d", OFFICIAL, crop_size=64, num_frames=8, truncation="random")
    assert col.truncation == "random"


# ------------------------------------------------------------------------------------------------
# V-JEPA 2: multi-length batches (MultiSeqMaskCollator)
# ------------------------------------------------------------------------------------------------
def _v2(cfgs=OFFICIAL, fpcs=(16, 16, 16), crop=112, **kw):
    return MultiSeqMaskCollator(cfgs, list(fpcs), crop_size=crop, patch_size=16, tubelet_size=2, **kw)


def test_v2_single_length_batch_gets_the_v1_collators_masks():
    v2, v1 = _v2(seed=5, rank=1), _collator(OFFICIAL, crop=112, frames=16, seed=5, rank=1)
    for step in (0, 3, 17):
        (group,) = v2.sample_groups([16] * 6, step)
        enc, pred = v1.sample(6, step)
        assert group.fpc == 16 and group.rows == list(range(6))
        for a, b in zip(group.masks_enc + group.masks_pred, enc + pred):
            assert torch.equal(a, b)


def test_v2_groups_follow_dataset_fpcs_order_and_skip_absent_lengths():
    col = _v2(fpcs=(16, 8, 16, 4), seed=2)
    assert col.fpcs == [16, 8, 4]
    groups = col.sample_groups([8, 16, 8, 16, 16], step=4)
    assert [(g.fpc, g.rows) for g in groups] == [(16, [1, 3, 4]), (8, [0, 2])]
    for g in groups:
        T, H, W = col.grid(g.fpc)
        assert (T, H, W) == (g.fpc // 2, 7, 7)
        for e, p in zip(g.masks_enc, g.masks_pred):
            assert e.shape[0] == p.shape[0] == len(g.rows)
            _rows_sorted_unique_in_range(e, T * H * W)
            _rows_sorted_unique_in_range(p, T * H * W)
    # The first length's masks are the V1 collator's; a later length's use a stream of its own.
    v1_16 = _collator(OFFICIAL, crop=112, frames=16, seed=2).sample(3, 4)
    v1_8 = _collator(OFFICIAL, crop=112, frames=8, seed=2).sample(2, 4)
    own_8 = _collator(OFFICIAL, crop=112, frames=8, seed=2, stream_key=(1,)).sample(2, 4)
    assert all(torch.equal(a, b) for a, b in zip(groups[0].masks_enc, v1_16[0]))
    assert all(torch.equal(a, b) for a, b in zip(groups[1].masks_enc, own_8[0]))
    assert not all(torch.equal(a, b) for a, b in zip(groups[1].masks_enc, v1_8[0]))
    with pytest.raises(ValueError, match="32 frames.*dataset_fpcs has only"):
        col.sample_groups([16, 32], 0)


def test_v2_collate_fn_groups_samples_by_clip_length():
    col = _v2(fpcs=(4, 8))
    batch = [([torch.full((f, 2), float(b))], b, [np.arange(f)]) for b, f in enumerate([8, 4, 8, 4, 4])]
    out = col(batch)
    assert [len(o) for o in out] == [3, 3]
    (clips4, labels4, _), enc4, pred4 = out[0]
    (clips8, labels8, _), enc8, pred8 = out[1]
    assert labels4.tolist() == [1, 3, 4] and labels8.tolist() == [0, 2]
    assert clips4[0].shape == (3, 4, 2) and clips8[0].shape == (2, 8, 2)
    assert len(enc4) == len(pred4) == len(OFFICIAL) and enc8[0].shape[0] == 2
    assert col.step_count == 1


@pytest.mark.parametrize("flag", ["full_complement", "pred_full_complement"])
def test_v2_full_complement_options(flag):
    plain, opt = _v2(seed=4), _v2([dict(SHORT, **{flag: True}), LONG], seed=4)
    n = plain.grid(16)[0] * 49
    for step in range(3):
        (g0,), (g1,) = plain.sample_groups([16] * 5, step), opt.sample_groups([16] * 5, step)
        kept, other = (g1.masks_enc[0], g1.masks_pred[0]) if flag == "full_complement" else (g1.masks_pred[0], g1.masks_enc[0])
        assert torch.equal(kept, g0.masks_enc[0] if flag == "full_complement" else g0.masks_pred[0])
        assert other.shape == (5, n - kept.shape[1])
        _rows_sorted_unique_in_range(other, n)
        for b in range(5):
            assert sorted(set(kept[b].tolist()) | set(other[b].tolist())) == list(range(n))
        for a, b in zip(g0.masks_enc[1:] + g0.masks_pred[1:], g1.masks_enc[1:] + g1.masks_pred[1:]):
            assert torch.equal(a, b)  # the other mask config is untouched


def test_v2_inv_block_swaps_context_and_targets():
    plain, inv = _v2(seed=1), _v2([SHORT, dict(LONG, inv_block=True)], seed=1)
    (a,), (b,) = plain.sample_groups([16] * 3, 2), inv.sample_groups([16] * 3, 2)
    assert torch.equal(b.masks_enc[1], a.masks_pred[1]) and torch.equal(b.masks_pred[1], a.masks_enc[1])
    assert torch.equal(b.masks_enc[0], a.masks_enc[0])


def test_v2_random_truncation_applies_per_group():
    earliest, rand = _v2(fpcs=(8, 16), seed=3), _v2(fpcs=(8, 16), seed=3, truncation="random")
    for ge, gr in zip(earliest.sample_groups([8, 16, 16, 8, 16], 1), rand.sample_groups([8, 16, 16, 8, 16], 1)):
        for e, r in zip(ge.masks_enc + ge.masks_pred, gr.masks_enc + gr.masks_pred):
            assert e.shape == r.shape
        assert not all(torch.equal(e, r) for e, r in zip(ge.masks_enc, gr.masks_enc))


def _official_reference(cfg, B, grid, size, gen):
    """The official per-sample placement loop written out (vjepa2 _MaskGenerator.__call__ order)."""
    T, H, W = grid
    t, h, w = size
    ctxs = []
    for _ in range(B):
        while True:
            m = torch.ones((T, H, W), dtype=torch.int32)
            for _ in range(cfg["num_blocks"]):
                top = torch.randint(0, H - h + 1, (1,), generator=gen)
                left = torch.randint(0, W - w + 1, (1,), generator=gen)
                start = torch.randint(0, T - t + 1, (1,), generator=gen)
                m[start:start + t, top:top + h, left:left + w] = 0
            if m.sum() > 0:
                ctxs.append(torch.nonzero(m.flatten()).squeeze(1))
                break
    k = min(len(c) for c in ctxs)
    return torch.stack([c[:k] for c in ctxs])


def test_v2_official_position_draws_follow_the_official_loop():
    ours = _v2(fpcs=(8,), crop=80, position_generator=torch.Generator().manual_seed(11))
    gen = torch.Generator().manual_seed(11)
    for step in range(3):
        (g,) = ours.sample_groups([8] * 4, step)
        sizes = ours.collators[8].block_sizes(step)
        for i, cfg in enumerate(OFFICIAL):  # mask configs in order, as the official collator calls them
            ref = _official_reference(cfg, 4, ours.grid(8), sizes[i], gen)
            assert torch.equal(g.masks_enc[i], ref)


def test_v2_errors_name_the_value():
    with pytest.raises(ValueError, match="dataset_fpcs"):
        _v2(fpcs=())
    with pytest.raises(ValueError, match="dataset_fpcs"):
        _v2(fpcs=(16, 0))
    with pytest.raises(ValueError, match="full_complement='yes'"):
        _v2([dict(SHORT, full_complement="yes")])
    with pytest.raises(ValueError, match="fpcs"):
        _v2().sample_groups([], 0)
    assert isinstance(build_mask_collator("multiblock3d", OFFICIAL, dataset_fpcs=[16], num_frames=16,
                                          crop_size=112), MultiSeqMaskCollator)
    with pytest.raises(ValueError, match="random_tube"):
        build_mask_collator("random_tube", OFFICIAL, dataset_fpcs=[16])
