"""Helpers several test modules share (pytest puts ``tests/`` on ``sys.path``: ``from helpers import ...``).

Fixtures live in ``conftest.py``; this module holds plain functions.
"""
from __future__ import annotations

from pathlib import Path

import torch


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error ``||a - b|| / ||b||`` in float64 (``||b||`` floored at 1e-30, so two zero
    tensors give 0)."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def load_parity_case(case_dir: Path, what: str = "parity case") -> dict:
    """``case.pt`` of an official parity case folder (which must also hold the official
    ``checkpoint.pth.tar``), loaded on the CPU. ``what`` names the kind of case in the failures."""
    case_file = case_dir / "case.pt"
    assert case_file.is_file(), f"{what} {case_dir} has no case.pt"
    assert (case_dir / "checkpoint.pth.tar").is_file(), f"{what} {case_dir} has no checkpoint.pth.tar"
    return torch.load(case_file, map_location="cpu", weights_only=True)
