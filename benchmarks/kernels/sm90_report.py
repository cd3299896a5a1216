"""Every Triton kernel of vjepa-fast compiled for Hopper (sm_90) at the real V-JEPA shapes, on any machine.

No GPU needed: each kernel module's ``aot_plans()`` gives the launches a GPU would run (planned with
132 SMs), ``kernels/aot.py`` compiles them as Triton's JIT would specialise them and runs the ptxas
bundled with Triton. One row per launch: grid, warps, registers, spills, stack, shared memory,
occupancy, waves on 132 SMs, the width of the hot global loads / stores (128 = ``ld.global.v4.b32``),
64-bit integer division, the specialisation group and its JIT cache key.

    python benchmarks/kernels/sm90_report.py            # table
    python benchmarks/kernels/sm90_report.py --json     # one JSON object per line
    python benchmarks/kernels/sm90_report.py --kernel ema

``TRITON_INTERPRET`` must be unset (the interpreter replaces the compiled kernels); the script
removes it from its own environment before importing the kernels and refuses if they were imported
already.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)
REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: Device-to-device copy bandwidth measured on an H200 (benchmarks/results/gpu_measure/, 2026-11-30):
#: the time a launch's minimal traffic would take at the memory ceiling.
H200_COPY_BYTES_PER_S = 4.19e12

COLUMNS = [
    ("kernel", 28), ("config", 44), ("grid", 12), ("warps", 5), ("regs", 4), ("spill", 5), ("stack", 5),
    ("smem", 6), ("occ", 5), ("waves", 6), ("us@bw", 7), ("ld", 3), ("st", 3), ("div64", 5), ("group", 30),
]  # fmt: skip


def rows(kernel_filter: str | None = None) -> list[dict]:
    from vjepa_fast.kernels import aot

    out = []
    for plan in aot.all_plans():
        name = plan.kernel.__name__
        if kernel_filter and kernel_filter not in name and kernel_filter not in plan.label:
            continue
        t0 = time.perf_counter()
        try:
            row = aot.compile_plan(plan).row()
        except Exception as exc:  # report the failure as a row: the test asserts on "compiled"
            row = {"kernel": name, "config": plan.label, "compiled": False, "error": f"{type(exc).__name__}: {exc}"}
        row.update(group=plan.group, vector_loads=plan.vector_loads, vector_stores=plan.vector_stores,
                   bytes_moved=plan.bytes_moved,
                   us_at_copy_bw=round(plan.bytes_moved / H200_COPY_BYTES_PER_S * 1e6, 2) if plan.bytes_moved else None)
        row["compile_s"] = round(time.perf_counter() - t0, 3)
        out.append(row)
    return out


def _cell(row: dict, key: str) -> str:
    if not row.get("compiled", False):
        return {"kernel": row["kernel"], "config": row["config"]}.get(key, "FAILED" if key == "grid" else "")
    value = {
        "grid": "x".join(map(str, row["grid"])), "spill": row["spill_bytes"], "stack": row["stack_bytes"],
        "smem": row["smem_bytes"], "occ": row["occupancy"], "ld": row["hot_load_bits"],
        "st": row["hot_store_bits"], "div64": "yes" if row["int64_div"] else "no",
        "us@bw": row.get("us_at_copy_bw") or "-",
    }.get(key, row.get(key, ""))  # fmt: skip
    return str(value)


def table(data: list[dict]) -> str:
    lines = ["  ".join(name.ljust(w) for name, w in COLUMNS)]
    for r in data:
        lines.append("  ".join(_cell(r, name)[: max(w, 1) if name in ("config", "group") else 99].ljust(w)
                               for name, w in COLUMNS))  # fmt: skip
    for r in data:
        if not r.get("compiled", False):
            lines.append(f"FAILED {r['kernel']} [{r['config']}]: {r.get('error')}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of the table")
    p.add_argument("--kernel", default=None, help="only kernels / configs whose name contains this")
    args = p.parse_args(argv)
    if "vjepa_fast.kernels" in sys.modules and os.environ.get("TRITON_INTERPRET"):
        print("sm90_report: vjepa_fast.kernels was imported under TRITON_INTERPRET; run it as a script", file=sys.stderr)
        return 2
    data = rows(args.kernel)
    if args.json:
        for r in data:
            print(json.dumps(r))
    else:
        print("vjepa-fast Triton kernels compiled for sm_90a (132 SMs), real V-JEPA shapes; ld/st: hot access bits;"
              " us@bw: minimal traffic at the H200's measured 4.19 TB/s copy")
        print(table(data))
    return 0 if all(r.get("compiled") for r in data) else 1


if __name__ == "__main__":
    sys.exit(main())
