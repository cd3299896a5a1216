"""The multiblock-3D collators reproduce the official mask-length statistics.

Each JSON file (list in ``VJEPA_MASK_STATS``, os.pathsep-separated) holds the statistics of the
official collator after its batch-minimum truncation, over ``n_batches`` consecutive steps. Our
block sizes are seeded like the official ones, so steps ``0..n_batches-1`` see the very same sizes
as the official run. Block positions are random in both; the file's numbers carry their own
position noise (about 1.5 % of the long-range context mean at 400 batches), so ours are pooled
over several position seeds to keep our side of the comparison tight.

V-JEPA 2 files (``VJEPA_V2_MASK_STATS``, default the project's copy of
``official_v2_mask_stats_b24_256_16f.json``) add ``dataset_fpcs`` and ``seed``; they are checked
through :class:`~vjepa_fast.masks.MultiSeqMaskCollator` with the same rule (our keyed positions), and
where the file records the seed torch was seeded with, once more with the official position draws
from a generator seeded with it: then every statistic must come out exactly as recorded.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import torch

from vjepa_fast.masks import MultiBlock3DMaskCollator, MultiSeqMaskCollator

REPO = Path(__file__).resolve().parent.parent
DEFAULT_STATS = REPO / "tests" / "fixtures" / "official_mask_stats_b24_224_16f.json"
DEFAULT_V2_STATS = REPO / "tests" / "fixtures" / "official_v2_mask_stats_b24_256_16f.json"
MEAN_RTOL = 0.03
STD_RTOL = 0.15
# Position seeds pooled per file; 5 x 400 batches of 24 at 224 px takes about 3 s.
POSITION_SEEDS = 5
PATCH, TUBELET = 16, 2


def _stats_files(var: str = "VJEPA_MASK_STATS", default: Path = DEFAULT_STATS) -> list[Path]:
    env = os.environ.get(var)
    if not env:
        return [default]
    return [Path(p) if Path(p).is_absolute() else REPO / p for p in env.split(os.pathsep) if p]


def _load(path: Path) -> dict:
    if not path.is_file():
        pytest.fail(f"mask statistics file listed but missing: {path}")
    return json.loads(path.read_text())


def measured_lengths(stats: dict, seeds=range(POSITION_SEEDS)) -> list[dict[str, np.ndarray]]:
    """Per mask config, the context and target lengths our collator gives over the file's steps."""
    cfgs = [m["cfg"] for m in stats["per_mask"]]
    lens = [{"context_len": [], "target_len": []} for _ in cfgs]
    for seed in seeds:
        col = MultiBlock3DMaskCollator(
            cfgs, crop_size=stats["crop"], num_frames=stats["frames"],
            patch_size=PATCH, tubelet_size=TUBELET, seed=seed,
        )
        if "tokens" in stats:
            assert col.num_tokens == stats["tokens"], "fixture grid does not match patch 16 / tubelet 2"
        for step in range(stats["n_batches"]):
            enc, pred = col.sample(stats["batch"], step)
            for g in range(len(cfgs)):
                lens[g]["context_len"].append(enc[g].shape[1])
                lens[g]["target_len"].append(pred[g].shape[1])
    return [{k: np.asarray(v, dtype=np.float64) for k, v in d.items()} for d in lens]


def compare(stats: dict, lens: list[dict[str, np.ndarray]]) -> list[str]:
    """Human-readable failures; empty when every mean and std is within tolerance."""
    failures = []
    for g, (ref, got) in enumerate(zip(stats["per_mask"], lens)):
        for key in ("context_len", "target_len"):
            mean, std = got[key].mean(), got[key].std()
            ref_mean, ref_std = ref[key]["mean"], ref[key]["std"]
            if abs(mean - ref_mean) > MEAN_RTOL * ref_mean:
                failures.append(f"mask {g} {key}: mean {mean:.2f} vs official {ref_mean:.2f}")
            if abs(std - ref_std) > STD_RTOL * ref_std:
                failures.append(f"mask {g} {key}: std {std:.2f} vs official {ref_std:.2f}")
    return failures


@pytest.mark.parametrize("path", _stats_files(), ids=lambda p: p.name)
def test_matches_official_mask_stats(path: Path):
    stats = _load(path)
    failures = compare(stats, measured_lengths(stats))
    assert not failures, f"{path.name}:\n" + "\n".join(failures)


def v2_lengths(stats: dict, seeds=range(POSITION_SEEDS), generator: torch.Generator | None = None):
    """Per mask config, the context and target lengths of the V2 collator over the file's steps (every
    sample of the file's length ``frames``; one group per batch, as with the file's dataset_fpcs)."""
    cfgs = [m["cfg"] for m in stats["per_mask"]]
    lens = [{"context_len": [], "target_len": []} for _ in cfgs]
    for seed in seeds:
        col = MultiSeqMaskCollator(cfgs, stats["dataset_fpcs"], crop_size=stats["crop"], patch_size=PATCH,
                                   tubelet_size=TUBELET, seed=seed, position_generator=generator)
        T, H, W = col.grid(stats["frames"])
        assert T * H * W == stats["tokens"], "fixture grid does not match patch 16 / tubelet 2"
        for step in range(stats["n_batches"]):
            (group,) = col.sample_groups([stats["frames"]] * stats["batch"], step)
            for g in range(len(cfgs)):
                lens[g]["context_len"].append(group.masks_enc[g].shape[1])
                lens[g]["target_len"].append(group.masks_pred[g].shape[1])
    return [{k: np.asarray(v, dtype=np.float64) for k, v in d.items()} for d in lens]


@pytest.mark.parametrize("path", _stats_files("VJEPA_V2_MASK_STATS", DEFAULT_V2_STATS), ids=lambda p: p.name)
def test_v2_collator_matches_official_mask_stats(path: Path):
    stats = _load(path)
    failures = compare(stats, v2_lengths(stats))
    assert not failures, f"{path.name}:\n" + "\n".join(failures)


@pytest.mark.parametrize("path", _stats_files("VJEPA_V2_MASK_STATS", DEFAULT_V2_STATS), ids=lambda p: p.name)
def test_v2_official_position_draws_reproduce_the_file_exactly(path: Path):
    """The file's run seeded torch with ``seed`` and called the official collator ``n_batches``
    times; the official position draws from a generator seeded the same way give its numbers."""
    stats = _load(path)
    if "seed" not in stats:
        pytest.fail(f"{path.name} records no 'seed': the exact check needs the seed the official run used")
    gen = torch.Generator().manual_seed(int(stats["seed"]))
    lens = v2_lengths(stats, seeds=[0], generator=gen)
    for g, (ref, got) in enumerate(zip(stats["per_mask"], lens)):
        for key in ("context_len", "target_len"):
            x = got[key]
            want = {"mean": x.mean(), "min": x.min(), "max": x.max(),
                    **{f"p{q:02d}": np.percentile(x, q) for q in (5, 50, 95)}}
            for name, value in want.items():
                assert value == ref[key][name], f"mask {g} {key} {name}: {value} vs official {ref[key][name]}"
            assert x.std() == pytest.approx(ref[key]["std"], rel=1e-12, abs=0)
