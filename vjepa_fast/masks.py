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

V-JEPA 2 (:class:`MultiSeqMaskCollator`, vjepa2 ``src/masks/multiseq_multiblock3d.py``) groups the
samples of a batch by clip length and draws one set of multiblock masks per group on that length's
grid, with the V2 options ``full_complement``, ``pred_full_complement`` and ``inv_block``.

``position_generator`` (both multiblock collators, Python API only) draws block positions the
official way instead: one ``torch.randint`` per block coordinate (top, left, start), sample by
sample, from the given torch generator. With ``torch.default_generator`` seeded as the official run
seeds it, the masks are the official collator's, draw for draw (tests/test_mask_stats.py reproduces
the official V2 statistics exactly that way).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import default_collate, get_worker_info

__all__ = [
    "MultiBlock3DMaskCollator",
    "MultiSeqMaskCollator",
    "MaskGroup",
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
# V2 configs carry these collator options inside each mask entry. The V1 collator has no such
# options (off is its behaviour), so a truthy value there is refused rather than ignored; the V2
# collator (MultiSeqMaskCollator) implements them.
V2_MASK_FLAGS = ("full_complement", "pred_full_complement", "inv_block")
_V2_FLAGS_OFF_ONLY = V2_MASK_FLAGS

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


def _check_mask_configs(cfgs_mask) -> None:
    """The collators' ``cfgs_mask``: a non-empty list (not a single mapping); ValueError otherwise."""
    if isinstance(cfgs_mask, Mapping) or not isinstance(cfgs_mask, Sequence) or len(cfgs_mask) == 0:
        raise ValueError(f"cfgs_mask={cfgs_mask!r} must be a non-empty list of mask configs")


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
                    f"mask config {idx}: {flag}={cfg[flag]!r} is an option of the V-JEPA 2 collator "
                    "(MultiSeqMaskCollator; in a config: set data.dataset_fpcs), not of the V1 one"
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

    ``position_generator``: a ``torch.Generator`` to draw block positions from the official way
    (per sample, per block ``torch.randint`` for top, left and start, in that order, a sample redrawn
    at once when its context is empty), instead of the keyed numpy streams. Each call then consumes
    that generator, so the masks depend on the call order, not only on ``(seed, rank, step)``.
    ``stream_key`` (ints) is appended to the keys of the numpy streams; the V2 collator gives each
    clip length but the first its own, so groups drawn at one step are independent.
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
        position_generator: torch.Generator | None = None,
        stream_key: Sequence[int] = (),
    ):
        _check_mask_configs(cfgs_mask)
        self.grid = _grid(crop_size, num_frames, patch_size, tubelet_size)
        self.num_tokens = int(np.prod(self.grid))
        self.specs = [_BlockSpec(i, cfg, self.grid) for i, cfg in enumerate(cfgs_mask)]
        self.truncation = _check_truncation(truncation)
        self.seed = _check_seed("seed", seed)
        self.rank = _check_seed("rank", rank)
        if position_generator is not None and not isinstance(position_generator, torch.Generator):
            raise ValueError(
                f"position_generator must be a torch.Generator or None, got {position_generator!r}")
        self.position_generator = position_generator
        self.stream_key = tuple(_check_seed("stream_key entry", k) for k in stream_key)
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
        if self.position_generator is not None:
            return self._draw_official(spec, B, t, h, w)
        rng = _rng(self.seed, _STREAM_POS, step, g, self.rank, *self.stream_key)
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
        # Same start ranges as the official randint(0, dim - size + 1) per block.
        starts = rng.integers(0, (T - t + 1, H - h + 1, W - w + 1), size=(B, spec.num_blocks, 3))
        return self._context_from_starts(spec, starts, t, h, w)

    def _draw_official(self, spec: _BlockSpec, B: int, t: int, h: int, w: int) -> np.ndarray:
        """The official placement loop: per sample, per block, ``randint`` top, left, start (in that
        order) from ``position_generator``; a sample whose context came out empty is redrawn before
        the next sample's draws, as the official ``while empty_context`` does."""
        T, H, W = self.grid
        gen = self.position_generator
        ranges = (H - h + 1, W - w + 1, T - t + 1)
        out = np.empty((B, self.num_tokens), dtype=bool)
        for b in range(B):
            for _ in range(_MAX_RESAMPLE_ROUNDS):
                starts = np.empty((1, spec.num_blocks, 3), dtype=np.int64)
                for k in range(spec.num_blocks):
                    top, left, start = (int(torch.randint(0, r, (1,), generator=gen)) for r in ranges)
                    starts[0, k] = (start, top, left)
                ctx = self._context_from_starts(spec, starts, t, h, w)
                if ctx.any():
                    out[b] = ctx[0]
                    break
            else:
                raise RuntimeError(
                    f"context still empty after {_MAX_RESAMPLE_ROUNDS} redraws (block {t}x{h}x{w})")
        return out

    def _context_from_starts(self, spec: _BlockSpec, starts: np.ndarray, t: int, h: int,
                             w: int) -> np.ndarray:
        """Bool ``[B, N]`` context (True) of blocks of size ``(t, h, w)`` at ``starts`` ``[B, nb, 3]``
        (each row ``(t0, y0, x0)``): the complement of their union, minus the frames past
        ``max_context_duration``."""
        T, H, W = self.grid
        B, nb = starts.shape[:2]
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

        A pure function of ``(seed, rank, step, batch_size)`` (without ``position_generator``).
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
                rng = _rng(self.seed, _STREAM_TRUNCATE, int(step), g, self.rank, *self.stream_key)
                masks_enc.append(_to_long(_random_k(ctx, kc, rng)))
                masks_pred.append(_to_long(_random_k(tgt, kt, rng)))
        return masks_enc, masks_pred


def _complement(idx: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Per row, the sorted token ids of ``range(num_tokens)`` not in ``idx`` ``[B, K]`` (distinct ids):
    int64 ``[B, num_tokens - K]``."""
    B, K = idx.shape
    keep = np.ones((B, num_tokens), dtype=bool)
    keep[np.arange(B)[:, None], idx.numpy()] = False
    return _to_long(np.nonzero(keep)[1].reshape(B, num_tokens - K))


@dataclass
class MaskGroup:
    """The masks of one clip-length group of a V2 batch: ``fpc`` frames per clip, ``rows`` the
    positions in the batch of the group's samples (ascending), and per mask config int64
    ``masks_enc[i]`` ``[B_g, Kc]`` / ``masks_pred[i]`` ``[B_g, Kt]`` token ids on the group's grid."""

    fpc: int
    rows: list[int]
    masks_enc: list[torch.Tensor]
    masks_pred: list[torch.Tensor]


class MultiSeqMaskCollator(_StepCounterMixin):
    """V-JEPA 2 multi-length masking (vjepa2 ``src/masks/multiseq_multiblock3d.py``).

    The samples of a batch are grouped by clip length; groups come in the order of the distinct
    lengths of ``dataset_fpcs`` (first occurrence: ``[16, 64, 16]`` gives 16 then 64), lengths absent
    from the batch are skipped, and each present group gets one set of multiblock-3D masks (one per
    mask config) drawn on its own grid ``(fpc // tubelet, H', W')`` and truncated to the group's
    minimum, as :class:`MultiBlock3DMaskCollator` (``truncation`` as there). Then, per mask config,
    the V2 options: ``full_complement`` (targets = every token not in the truncated context, so
    ``N - Kc`` of them), else ``pred_full_complement`` (context = every token not in the truncated
    targets), and ``inv_block`` (context and targets swapped: predict the rest from the blocks).

    Seeding: block sizes of every group at step ``s`` come from the step, as in V1 (and as the
    official per-group counter for a batch with one clip length, which is every official config:
    ``[16, 16, 16]``, ``[64, 64, 64]``). With several lengths the official counter of a length
    counts only the batches that held it; here every group uses the step, so the sizes drawn are
    other ones from the same distribution. Positions: keyed numpy streams per ``(seed, rank, step,
    mask config)``, plus the length's index among the distinct lengths for all but the first, so a
    batch with one length gets exactly the masks of :class:`MultiBlock3DMaskCollator` at that
    length; or the official draws from ``position_generator`` (see there).

    ``sample_groups(fpcs, step)`` takes the clip length of each sample of the batch, in batch order;
    as a ``collate_fn`` (``__call__``), the official interface: samples ``(clips, label,
    clip_indices)`` grouped by ``len(clip_indices[-1])``, and per present group
    ``(default_collate(group), masks_enc, masks_pred)``.
    """

    def __init__(
        self,
        cfgs_mask: Sequence[Mapping],
        dataset_fpcs: Sequence[int],
        crop_size=224,
        patch_size: int = 16,
        tubelet_size: int = 2,
        seed: int = 0,
        rank: int = 0,
        truncation: str = "earliest",
        position_generator: torch.Generator | None = None,
    ):
        _check_mask_configs(cfgs_mask)
        if (isinstance(dataset_fpcs, (str, Mapping)) or not isinstance(dataset_fpcs, Sequence)
                or not dataset_fpcs):
            raise ValueError(
                f"dataset_fpcs={dataset_fpcs!r} must be a non-empty list of clip lengths (frames)")
        for f in dataset_fpcs:
            if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or f < 1:
                raise ValueError(
                    f"dataset_fpcs={list(dataset_fpcs)!r}: every clip length must be an int >= 1")
        self.fpcs = list(dict.fromkeys(int(f) for f in dataset_fpcs))
        self.flags: list[dict[str, bool]] = []
        plain = []
        for i, cfg in enumerate(cfgs_mask):
            if not isinstance(cfg, Mapping):
                raise ValueError(f"mask config {i} must be a mapping, got {type(cfg).__name__}")
            flags = {}
            for name in V2_MASK_FLAGS:
                v = cfg.get(name, False)
                if not isinstance(v, (bool, np.bool_)):
                    raise ValueError(f"mask config {i}: {name}={v!r} must be true or false")
                flags[name] = bool(v)
            self.flags.append(flags)
            plain.append({k: v for k, v in cfg.items() if k not in V2_MASK_FLAGS})
        self.collators = {
            fpc: MultiBlock3DMaskCollator(
                plain, crop_size=crop_size, num_frames=fpc, patch_size=patch_size, tubelet_size=tubelet_size,
                seed=seed, rank=rank, truncation=truncation, position_generator=position_generator,
                stream_key=(gid,) if gid else (),
            )
            for gid, fpc in enumerate(self.fpcs)
        }
        self.truncation = truncation
        self.seed, self.rank = int(seed), int(rank)
        self._step = 0
        self._worker_calls = 0

    def grid(self, fpc: int) -> tuple[int, int, int]:
        """The token grid ``(T', H', W')`` of clips of ``fpc`` frames."""
        return self._collator(fpc).grid

    def _collator(self, fpc: int) -> MultiBlock3DMaskCollator:
        if fpc not in self.collators:
            raise ValueError(f"a clip of {fpc} frames, but dataset_fpcs has only {self.fpcs}")
        return self.collators[fpc]

    def group_rows(self, fpcs: Sequence[int]) -> list[tuple[int, list[int]]]:
        """``[(fpc, rows), ...]``: the batch positions of each clip length present in ``fpcs`` (the
        length of each sample), in ``dataset_fpcs`` order."""
        rows: dict[int, list[int]] = {f: [] for f in self.fpcs}
        for b, f in enumerate(fpcs):
            self._collator(int(f))
            rows[int(f)].append(b)
        return [(f, r) for f, r in rows.items() if r]

    def sample_groups(self, fpcs: Sequence[int], step: int) -> list[MaskGroup]:
        """The masks of one batch whose sample b has ``fpcs[b]`` frames: one :class:`MaskGroup` per
        clip length present, in ``dataset_fpcs`` order (see the class docstring)."""
        if isinstance(fpcs, (str, Mapping)) or not isinstance(fpcs, Sequence) or len(fpcs) == 0:
            raise ValueError(f"fpcs={fpcs!r} must list the clip length of every sample of the batch")
        step = _check_seed("step", step)
        out = []
        for fpc, rows in self.group_rows(fpcs):
            col = self.collators[fpc]
            enc, pred = col.sample(len(rows), step)
            for i, flags in enumerate(self.flags):
                if flags["full_complement"]:
                    pred[i] = _complement(enc[i], col.num_tokens)
                elif flags["pred_full_complement"]:
                    enc[i] = _complement(pred[i], col.num_tokens)
                if flags["inv_block"]:
                    enc[i], pred[i] = pred[i], enc[i]
            out.append(MaskGroup(fpc, rows, enc, pred))
        return out

    def __call__(self, batch):
        fpcs = [len(sample[-1][-1]) for sample in batch]
        groups = self.sample_groups(fpcs, self._call_step())
        return [(default_collate([batch[b] for b in g.rows]), g.masks_enc, g.masks_pred) for g in groups]


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


def build_mask_collator(mask_type: str = "multiblock3d", cfgs_mask: Sequence[Mapping] | None = None,
                        dataset_fpcs: Sequence[int] | None = None, **kw):
    """Pick the collator the way the official trainer does from ``mask_type``.

    ``random_tube`` takes its ``ratio`` from ``kw`` (default 0.9); ``cfgs_mask`` is ignored for it,
    as the official code ignores it too. With ``dataset_fpcs`` (V-JEPA 2): the
    :class:`MultiSeqMaskCollator` (``kw`` without ``num_frames``: each group has its own length);
    V2 has no random-tube collator.
    """
    if mask_type not in MASK_COLLATORS:
        raise ValueError(f"unknown mask_type={mask_type!r}; expected one of {', '.join(map(repr, MASK_COLLATORS))}")
    if dataset_fpcs is not None:
        if mask_type != "multiblock3d":
            raise ValueError(f"mask_type={mask_type!r} with dataset_fpcs: V-JEPA 2 multi-length batches only "
                             "have the multiblock3d collator")
        if cfgs_mask is None:
            raise ValueError("the V-JEPA 2 collator needs cfgs_mask (the YAML `mask` list)")
        kw.pop("num_frames", None)
        return MultiSeqMaskCollator(cfgs_mask, dataset_fpcs, **kw)
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
