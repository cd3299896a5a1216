"""Mask collators for V-JEPA pretraining: multiblock-3D (the one every official config uses) and
random tube.

Both follow the official algorithms (block sizes, placement ranges, union-of-blocks target,
batch-minimum truncation that keeps the earliest indices) but work on the whole batch at once
instead of looping over samples and blocks, and draw from local generators keyed by the step
instead of a process-shared counter plus the global RNG. Every batch of masks is therefore a pure
function of ``(seed, rank, step)``: resume is exact, and the masks come out the same whether they
are drawn in the main process, in a DataLoader worker, or on demand in the training loop.

Block *sizes* are seeded exactly as in the official code (from the step alone), so they equal the
official ones step for step and are shared by the whole batch and by every rank.

Deviation from the official code, on purpose: the official collator draws block *positions* from
the global torch RNG of each DataLoader worker, and every rank seeds torch identically, so ranks
very likely see identical masks at the same step. Here positions come from a local generator keyed
by ``(seed, rank, step, generator index)``, so ranks see different masks and any batch can be
regenerated from its step.

Token indices are flat indices into the ``(T', H', W')`` token grid in row-major order, with
``T' = num_frames // tubelet_size`` and ``H' = W' = crop_size // patch_size``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import default_collate, get_worker_info

__all__ = [
    "MultiBlock3DMaskCollator",
    "RandomTubeMaskCollator",
    "build_mask_collator",
    "time_step_shares",
    "MASK_CFG_DEFAULTS",
    "TRUNCATIONS",
]

# Values the official `_MaskGenerator` falls back to when a YAML key is absent. None of the
# official configs relies on them, but user configs do.
MASK_CFG_DEFAULTS: dict = {
    "spatial_scale": (0.2, 0.8),
    "temporal_scale": (1.0, 1.0),
    "aspect_ratio": (0.3, 3.0),
    "num_blocks": 1,
    "max_temporal_keep": 1.0,
    "max_keep": None,
}
# V2 configs carry these collator options inside each mask entry; only their official V1
# behaviour (off) is implemented, so a truthy value must be refused rather than ignored.
_V2_FLAGS_OFF_ONLY = ("full_complement", "pred_full_complement", "inv_block")

# Separate RNG streams per use, so adding one never shifts the draws of another.
_STREAM_POS = 1
_STREAM_TUBE = 2
_STREAM_TRUNCATE = 3

#: How a generator's rows are cut to the batch minimum: ``earliest`` keeps each sample's first
#: indices (official; context and targets then crowd into the first frames), ``random`` keeps a
#: uniformly random subset of each sample's indices, in ascending order (ours, opt-in).
TRUNCATIONS = ("earliest", "random")
# A sample whose blocks cover every context token is redrawn. Only a block as large as the grid
# can fail every time, and that is refused before drawing, so hitting this bound means a bug.
_MAX_RESAMPLE_ROUNDS = 10_000


def _rng(seed: int, *key: int) -> np.random.Generator:
    # SeedSequence hashes the whole key, so neighbouring steps/ranks get unrelated streams
    # (unlike seed + step arithmetic, where (seed=1, step=0) would equal (seed=0, step=1)).
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def _grid(crop_size, num_frames: int, patch_size: int, tubelet_size: int) -> tuple[int, int, int]:
    if isinstance(crop_size, Sequence):
        if len(crop_size) != 2:
            raise ValueError(f"crop_size={crop_size!r} must be an int or a (height, width) pair")
        crop_h, crop_w = (int(c) for c in crop_size)
    else:
        crop_h = crop_w = int(crop_size)
    for name, val in (("patch_size", patch_size), ("tubelet_size", tubelet_size)):
        if int(val) < 1:
            raise ValueError(f"{name}={val!r} must be >= 1")
    for side in (crop_h, crop_w):
        if side < patch_size or side % patch_size:
            raise ValueError(
                f"crop_size={crop_size!r} must be a positive multiple of patch_size={patch_size}"
            )
    if num_frames < tubelet_size or num_frames % tubelet_size:
        raise ValueError(
            f"num_frames={num_frames!r} must be a positive multiple of tubelet_size={tubelet_size}"
        )
    return num_frames // tubelet_size, crop_h // patch_size, crop_w // patch_size


def _check_seed(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name}={value!r} must be a non-negative int")
    return int(value)


def _first_k(mask: np.ndarray, k: int) -> np.ndarray:
    """Flat indices of the first ``k`` True entries of each row, ascending, as ``[B, k]``.

    Every row holds at least ``k`` True entries. A cumulative count marks the prefix, and nonzero
    walks the array in row-major order, so the result comes out sorted with no per-row loop.
    """
    keep = mask & (np.cumsum(mask, axis=1, dtype=np.int32) <= k)
    return np.nonzero(keep)[1].reshape(mask.shape[0], k)


def _random_k(mask: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Flat indices of ``k`` True entries of each row chosen uniformly at random, ascending, ``[B, k]``.

    Every True entry gets a uniform key and every False entry a key above all of them; the ``k``
    smallest keys of a row are then a uniform random ``k``-subset of its True entries.
    """
    B, N = mask.shape
    if k == 0:
        return np.zeros((B, 0), dtype=np.int64)
    keys = np.where(mask, rng.random((B, N)), 2.0)
    return np.sort(np.argpartition(keys, k - 1, axis=1)[:, :k], axis=1)


def _check_truncation(truncation) -> str:
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation={truncation!r} must be one of {', '.join(map(repr, TRUNCATIONS))}")
    return truncation


def _to_long(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))


class _StepCounterMixin:
    """Step bookkeeping shared by the collators.

    ``sample(batch_size, step)`` is the pure function; the counter only decides which step a
    ``collate_fn`` call uses. Inside a DataLoader worker the object is a private copy, so a plain
    counter would make every worker replay the same steps. Workers therefore number their calls
    ``base + k * num_workers + worker_id``: the DataLoader hands batch ``i`` of an iterator to
    worker ``i % num_workers``, so this is exactly ``base + i``, and it never repeats a step even
    where that dispatch order does not hold. The main-process counter cannot see worker calls;
    with ``num_workers > 0`` the training loop calls ``step()`` once per consumed batch so that
    ``state_dict()`` (and the ``base`` of the next iterator) stays exact.
    """

    _step: int
    _worker_calls: int

    def sample(self, batch_size: int, step: int):  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def _call_step(self) -> int:
        info = get_worker_info()
        if info is None:
            step = self._step
            self._step += 1
            return step
        k = self._worker_calls
        self._worker_calls += 1
        return self._step + k * info.num_workers + info.id

    def __call__(self, batch):
        collated = default_collate(batch)
        masks_enc, masks_pred = self.sample(len(batch), self._call_step())
        return collated, masks_enc, masks_pred

    def step(self) -> None:
        """Skip one batch without drawing it (the official resume fast-forward)."""
        self._step += 1

    @property
    def step_count(self) -> int:
        """The step the next ``collate_fn`` call in this process will use."""
        return self._step

    def state_dict(self) -> dict:
        return {"step": self._step}

    def load_state_dict(self, state: Mapping) -> None:
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"state_dict step={step!r} must be a non-negative int")
        self._step = int(step)
        self._worker_calls = 0


def _pair(idx: int, key: str, value, upper: float | None) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"mask config {idx}: {key}={value!r} must be a (min, max) pair") from None
    bound = f"0 < min <= max <= {upper:g}" if upper is not None else "0 < min <= max"
    if not (0.0 < lo <= hi) or (upper is not None and hi > upper):
        raise ValueError(f"mask config {idx}: {key}={value!r} must satisfy {bound}")
    return lo, hi


class _BlockSpec:
    """One validated mask-config entry (the official `_MaskGenerator`, minus its state)."""

    def __init__(self, idx: int, cfg: Mapping, grid: tuple[int, int, int]):
        if not isinstance(cfg, Mapping):
            raise ValueError(f"mask config {idx} must be a mapping, got {type(cfg).__name__}")
        known = set(MASK_CFG_DEFAULTS) | set(_V2_FLAGS_OFF_ONLY)
        unknown = sorted(set(cfg) - known)
        if unknown:
            # A misspelt key would otherwise silently fall back to a default.
            raise ValueError(f"mask config {idx}: unknown key(s) {unknown}; known keys: {sorted(known)}")
        for flag in _V2_FLAGS_OFF_ONLY:
            if cfg.get(flag):
                raise ValueError(
                    f"mask config {idx}: {flag}={cfg[flag]!r} is not supported (V1 semantics only)"
                )
        c = {**MASK_CFG_DEFAULTS, **{k: v for k, v in cfg.items() if k in MASK_CFG_DEFAULTS}}

        self.spatial_scale = _pair(idx, "spatial_scale", c["spatial_scale"], 1.0)
        self.temporal_scale = _pair(idx, "temporal_scale", c["temporal_scale"], 1.0)
        self.aspect_ratio = _pair(idx, "aspect_ratio", c["aspect_ratio"], None)

        nb = c["num_blocks"]
        if isinstance(nb, bool) or not isinstance(nb, (int, np.integer)) or nb < 1:
            raise ValueError(f"mask config {idx}: num_blocks={nb!r} must be an int >= 1")
        self.num_blocks = int(nb)

        mtk = c["max_temporal_keep"]
        if isinstance(mtk, bool) or not isinstance(mtk, (int, float, np.floating)) or not 0.0 < mtk <= 1.0:
            raise ValueError(f"mask config {idx}: max_temporal_keep={mtk!r} must be in (0, 1]")
        mk = c["max_keep"]
        if mk is not None and (isinstance(mk, bool) or not isinstance(mk, (int, np.integer)) or mk < 1):
            raise ValueError(f"mask config {idx}: max_keep={mk!r} must be null or an int >= 1")
        self.max_keep = None if mk is None else int(mk)

        self.T, self.H, self.W = grid
        self.max_context_duration = max(1, int(self.T * mtk))

    def block_size(self, u_t: float, u_s: float, u_a: float) -> tuple[int, int, int]:
        # Same draw order and integer arithmetic as the official `_sample_block_size`; the aspect
        # ratio is uniform, not log-uniform.
        t_lo, t_hi = self.temporal_scale
        t = max(1, int(self.T * (t_lo + u_t * (t_hi - t_lo))))
        s_lo, s_hi = self.spatial_scale
        keep = int(self.H * self.W * (s_lo + u_s * (s_hi - s_lo)))
        a_lo, a_hi = self.aspect_ratio
        a = a_lo + u_a * (a_hi - a_lo)
        h = min(int(round(math.sqrt(keep * a))), self.H)
        w = min(int(round(math.sqrt(keep / a))), self.W)
        return t, h, w


class MultiBlock3DMaskCollator(_StepCounterMixin):
    """Official multiblock-3D masking (V1 ``src/masks/multiblock3d.py``), vectorised.

    Per generator and batch: one block size, ``num_blocks`` independently placed blocks per
    sample (overlaps allowed), target = their union (plus every frame past
    ``max_context_duration``), context = the rest. Rows are then cut to the batch minimum, which
    keeps the earliest tokens; this truncation is what sets the effective masking ratio (see the
    reference, Appendix A), so it is kept even though it looks like a bug (jepa#50).

    ``truncation="random"`` (opt-in) cuts each row to the same lengths by keeping a uniformly random
    subset of the sample's indices instead (ascending order kept), drawn from its own stream keyed by
    ``(seed, rank, step, generator)``: the lengths, block sizes and positions are those of the
    default; only which indices survive the cut changes. The default draws nothing more and is
    bit-identical to the collator without the option.
    """

    def __init__(
        self,
        cfgs_mask: Sequence[Mapping],
        crop_size=224,
        num_frames: int = 16,
        patch_size: int = 16,
        tubelet_size: int = 2,
        seed: int = 0,
        rank: int = 0,
        truncation: str = "earliest",
    ):
        if isinstance(cfgs_mask, Mapping) or not isinstance(cfgs_mask, Sequence) or len(cfgs_mask) == 0:
            raise ValueError(f"cfgs_mask={cfgs_mask!r} must be a non-empty list of mask configs")
        self.grid = _grid(crop_size, num_frames, patch_size, tubelet_size)
        self.num_tokens = int(np.prod(self.grid))
        self.specs = [_BlockSpec(i, cfg, self.grid) for i, cfg in enumerate(cfgs_mask)]
        self.truncation = _check_truncation(truncation)
        self.seed = _check_seed("seed", seed)
        self.rank = _check_seed("rank", rank)
        self._step = 0
        self._worker_calls = 0

    def block_sizes(self, step: int) -> list[tuple[int, int, int]]:
        """The (t, h, w) block size of each generator at ``step``; the same on every rank."""
        step = _check_seed("step", step)
        return [self._block_size(g, step) for g in range(len(self.specs))]

    def _block_size(self, g: int, step: int) -> tuple[int, int, int]:
        # Seeded exactly as the official collator seeds it (a fresh torch generator seeded with
        # the step counter, three scalar draws), so block sizes match the official run step for
        # step. The official statistics depend on that particular sequence of sizes: its 400
        # aspect ratios move the long-range context mean by ~3 % from its infinite-sample value.
        gen = torch.Generator().manual_seed(step)
        u = [torch.rand(1, generator=gen).item() for _ in range(3)]
        return self.specs[g].block_size(*u)

    def context_grids(self, batch_size: int, step: int) -> list[np.ndarray]:
        """Untruncated masks: per generator a bool ``[B, N]`` array, True where a token is context.

        Target tokens are exactly the False entries. ``sample`` is the batch-minimum truncation
        of these rows.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be an int >= 1")
        step = _check_seed("step", step)
        return [self._context_grid(g, int(batch_size), step) for g in range(len(self.specs))]

    def _context_grid(self, g: int, B: int, step: int) -> np.ndarray:
        spec = self.specs[g]
        T, H, W = self.grid
        t, h, w = self._block_size(g, step)
        if (t, h, w) == (T, H, W):
            # Every placement covers the whole grid, so the official resample loop would never end.
            raise ValueError(
                f"mask config {g}: the block drawn at step {step} ({t}x{h}x{w}) covers the whole grid, "
                "so no context can remain; lower spatial_scale/temporal_scale"
            )
        rng = _rng(self.seed, _STREAM_POS, step, g, self.rank)
        ctx = self._draw(rng, spec, B, t, h, w)
        # Redraw only the samples whose blocks swallowed every context token, as the official
        # per-sample `while empty_context` loop does; the common path never enters this loop.
        for _ in range(_MAX_RESAMPLE_ROUNDS):
            empty = ~ctx.any(axis=1)
            if not empty.any():
                return ctx
            ctx[empty] = self._draw(rng, spec, int(empty.sum()), t, h, w)
        raise RuntimeError(
            f"mask config {g}: context still empty after {_MAX_RESAMPLE_ROUNDS} redraws (block {t}x{h}x{w})"
        )

    def _draw(self, rng: np.random.Generator, spec: _BlockSpec, B: int, t: int, h: int, w: int) -> np.ndarray:
        T, H, W = self.grid
        nb = spec.num_blocks
        # Same start ranges as the official randint(0, dim - size + 1) per block.
        starts = rng.integers(0, (T - t + 1, H - h + 1, W - w + 1), size=(B, nb, 3))
        t0, y0, x0 = (starts[..., i, None] for i in range(3))  # each [B, nb, 1]
        in_t = (np.arange(T) >= t0) & (np.arange(T) < t0 + t)  # [B, nb, T]
        in_y = (np.arange(H) >= y0) & (np.arange(H) < y0 + h)  # [B, nb, H]
        in_x = (np.arange(W) >= x0) & (np.arange(W) < x0 + w)  # [B, nb, W]
        # Union over blocks as a count: (T*H) x nb times nb x W per sample is one small batched
        # matmul, far cheaper than materialising [B, nb, T, H, W] and reducing over nb.
        ty = (in_t[:, :, :, None] & in_y[:, :, None, :]).reshape(B, nb, T * H).astype(np.float32)
        covered = np.matmul(ty.transpose(0, 2, 1), in_x.astype(np.float32))  # [B, T*H, W]
        ctx = (covered == 0).reshape(B, T, H * W)
        if spec.max_context_duration < T:
            ctx[:, spec.max_context_duration:] = False
        return ctx.reshape(B, T * H * W)

    def sample(self, batch_size: int, step: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Masks for one batch: per generator int64 ``[B, Kc]`` context and ``[B, Kt]`` target indices.

        A pure function of ``(seed, rank, step, batch_size)``.
        """
        masks_enc, masks_pred = [], []
        for g, (spec, ctx) in enumerate(zip(self.specs, self.context_grids(batch_size, step))):
            kc = int(ctx.sum(axis=1).min())
            if spec.max_keep is not None:
                kc = min(kc, spec.max_keep)
            tgt = ~ctx
            kt = int(tgt.sum(axis=1).min())
            if self.truncation == "earliest":
                masks_enc.append(_to_long(_first_k(ctx, kc)))
                masks_pred.append(_to_long(_first_k(tgt, kt)))
            else:
                rng = _rng(self.seed, _STREAM_TRUNCATE, int(step), g, self.rank)
                masks_enc.append(_to_long(_random_k(ctx, kc, rng)))
                masks_pred.append(_to_long(_random_k(tgt, kt, rng)))
        return masks_enc, masks_pred


class RandomTubeMaskCollator(_StepCounterMixin):
    """Official random-tube masking (V1 ``src/masks/random_tube.py``), vectorised.

    Each sample keeps a random ``int(H'W' * (1 - ratio))`` spatial positions as context across
    every time step. All samples keep the same count, so no truncation happens (``truncation`` is
    accepted for a uniform interface and changes nothing). One generator, so ``sample`` returns
    one-element lists, matching the multiblock interface.
    """

    def __init__(
        self,
        ratio: float = 0.9,
        crop_size=224,
        num_frames: int = 16,
        patch_size: int = 16,
        tubelet_size: int = 2,
        seed: int = 0,
        rank: int = 0,
        truncation: str = "earliest",
    ):
        self.grid = _grid(crop_size, num_frames, patch_size, tubelet_size)
        self.num_tokens = int(np.prod(self.grid))
        self.truncation = _check_truncation(truncation)
        T, H, W = self.grid
        is_number = isinstance(ratio, (int, float, np.floating)) and not isinstance(ratio, bool)
        if not is_number or not 0.0 < ratio < 1.0:
            raise ValueError(f"ratio={ratio!r} must be in (0, 1)")
        self.ratio = float(ratio)
        # Same float expression as the official code, so the count matches it exactly
        # (e.g. 196 * (1 - 0.9) = 19.59... -> 19).
        self.num_keep = int(H * W * (1.0 - self.ratio))
        if not 0 < self.num_keep < H * W:
            raise ValueError(
                f"ratio={ratio!r} keeps {self.num_keep} of {H * W} spatial positions; "
                "need at least one context and one target position"
            )
        self.seed = _check_seed("seed", seed)
        self.rank = _check_seed("rank", rank)
        self._step = 0
        self._worker_calls = 0

    def context_grids(self, batch_size: int, step: int) -> list[np.ndarray]:
        """Per generator (one here) a bool ``[B, N]`` array, True where a token is context."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be an int >= 1")
        step = _check_seed("step", step)
        T, H, W = self.grid
        rng = _rng(self.seed, _STREAM_TUBE, step, 0, self.rank)
        # The rank of a uniform draw within its row is a uniform random permutation per row.
        order = np.argsort(rng.random((int(batch_size), H * W)), axis=1)
        keep = order < self.num_keep
        return [np.tile(keep, (1, T))]

    def sample(self, batch_size: int, step: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        (ctx,) = self.context_grids(batch_size, step)
        T = self.grid[0]
        enc = _first_k(ctx, self.num_keep * T)
        pred = _first_k(~ctx, self.num_tokens - self.num_keep * T)
        return [_to_long(enc)], [_to_long(pred)]


#: ``data.mask_type`` → collator class (official: anything but multiblock3d means random tube; we
#: refuse unknown names instead).
MASK_COLLATORS = {"multiblock3d": MultiBlock3DMaskCollator, "random_tube": RandomTubeMaskCollator}


def build_mask_collator(mask_type: str = "multiblock3d", cfgs_mask: Sequence[Mapping] | None = None, **kw):
    """Pick the collator the way the official trainer does from ``mask_type``.

    ``random_tube`` takes its ``ratio`` from ``kw`` (default 0.9); ``cfgs_mask`` is ignored for it,
    as the official code ignores it too.
    """
    if mask_type not in MASK_COLLATORS:
        raise ValueError(f"unknown mask_type={mask_type!r}; expected one of {', '.join(map(repr, MASK_COLLATORS))}")
    if mask_type == "multiblock3d":
        if cfgs_mask is None:
            raise ValueError("mask_type='multiblock3d' needs cfgs_mask (the YAML `mask` list)")
        return MultiBlock3DMaskCollator(cfgs_mask, **kw)
    return RandomTubeMaskCollator(**kw)


def time_step_shares(masks: Sequence[torch.Tensor], grid: tuple[int, int, int]) -> np.ndarray:
    """Share of each generator's kept indices that fall in each time step, averaged over samples.

    ``masks``: per generator an int64 ``[B, K]`` tensor of flat token indices (a collator's context
    or target masks); ``grid``: ``(T', H', W')``. Returns float64 ``[len(masks), T']``, rows summing
    to 1 (rows of an empty mask are 0). Uniform spread over time gives ``1 / T'`` everywhere.
    """
    T, H, W = grid
    out = np.zeros((len(masks), T))
    for g, m in enumerate(masks):
        idx = np.asarray(m, dtype=np.int64)
        if idx.ndim != 2:
            raise ValueError(f"mask {g}: expected [B, K] indices, got shape {idx.shape}")
        if idx.shape[1] == 0:
            continue
        t = idx // (H * W)
        counts = np.stack([(t == s).sum(axis=1) for s in range(T)], axis=1)  # [B, T]
        out[g] = (counts / idx.shape[1]).mean(axis=0)
    return out
