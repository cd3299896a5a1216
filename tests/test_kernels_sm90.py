"""Every Triton kernel compiled for Hopper (sm_90) at the real V-JEPA shapes, without a GPU.

Runs ``benchmarks/kernels/sm90_report.py --json`` once in a subprocess (the compile needs the
compiled-mode kernels, and this test session imports them under ``TRITON_INTERPRET=1``) and asserts,
for every launch each kernel module plans at the V-JEPA shapes (its ``aot_plans()``):

* it compiles for sm_90a, with 0 bytes spilled and no stack frame (ptxas -v);
* hot global loads and stores of contiguous data are 128-bit (``ld/st.global.v4.b32``);
* no 64-bit integer division or remainder (an emulated routine per use on the GPU);
* plans that differ only in mask lengths share one JIT cache key, so training never compiles a new
  variant mid-run;
* the grid fills its last wave of resident programs to >= 80 % (or runs >= 8 waves, where a
  partial last wave costs little), persistent grids included; launches whose whole traffic moves in
  under 10 us at the H200's measured copy bandwidth are exempt (launch latency dominates them).

Skips only when triton is not installed (macOS, Windows).
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

pytest.importorskip("triton")

REPO = Path(__file__).resolve().parents[1]
MODULES = ("masked_gather", "predictor_input", "sorted_predictor_input", "masked_l1_loss", "ema", "rope")


@pytest.fixture(scope="module")
def report() -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "kernels" / "sm90_report.py"), "--json"],
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert rows, f"sm90_report printed no rows (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return rows


def _kernels_defined(module: str) -> set[str]:
    text = (REPO / "kernels" / f"{module}.py").read_text()
    return set(re.findall(r"@triton\.jit(?:\([^)]*\))?\s*\ndef (_\w+_kernel)\(", text))


def _fmt(rows: list[dict]) -> str:
    return "\n".join(f"  {r['kernel']} [{r['config']}]: " + ", ".join(f"{k}={r.get(k)}" for k in (
        "regs", "spill_bytes", "stack_bytes", "hot_load_bits", "hot_store_bits", "int64_div", "waves", "error"))
        for r in rows)  # fmt: skip


def test_every_kernel_is_planned_at_vjepa_shapes(report):
    planned = {r["kernel"] for r in report}
    for module in MODULES:
        defined = _kernels_defined(module)
        assert defined, f"no @triton.jit kernels found in kernels/{module}.py"
        missing = defined - planned
        assert not missing, f"kernels/{module}.py: no aot_plans() entry for {sorted(missing)}"


def test_every_plan_compiles_without_spills_or_stack(report):
    bad = [r for r in report if not r.get("compiled") or r["spill_bytes"] or r["stack_bytes"]]
    assert not bad, "failed to compile, spilled or used a stack frame on sm_90:\n" + _fmt(bad)


def test_hot_loads_and_stores_are_128_bit(report):
    bad = [r for r in report if r.get("compiled") and (
        (r["vector_loads"] and r["hot_load_bits"] != 128) or (r["vector_stores"] and r["hot_store_bits"] != 128))]
    assert not bad, "hot global accesses narrower than 128 bits:\n" + _fmt(bad)


def test_no_64_bit_integer_division(report):
    bad = [r for r in report if r.get("compiled") and r["int64_div"]]
    assert not bad, "64-bit integer division/remainder in the PTX:\n" + _fmt(bad)


def test_mask_lengths_do_not_change_the_compiled_variant(report):
    keys: dict[tuple, set] = defaultdict(set)
    labels: dict[tuple, list] = defaultdict(list)
    for r in report:
        if r.get("group"):
            keys[(r["kernel"], r["group"])].add(r.get("cache_key"))
            labels[(r["kernel"], r["group"])].append(r["config"])
    assert keys, "no plan declares a group of mask-length variants"
    assert any(len(v) > 1 for v in labels.values()), "no group holds more than one plan: nothing is compared"
    split = {k: labels[k] for k, v in keys.items() if len(v) > 1}
    assert not split, f"mask lengths compile separate variants: {split}"


def test_grids_fill_their_waves(report):
    def efficient(r):
        waves = r["waves"]
        tiny = r.get("us_at_copy_bw") is not None and r["us_at_copy_bw"] < 10
        return tiny or waves >= 8 or waves / math.ceil(waves) >= 0.8

    bad = [r for r in report if r.get("compiled") and not efficient(r)]
    assert not bad, "grid leaves most of a wave idle (waves / ceil(waves) < 0.8, under 8 waves):\n" + _fmt(bad)
