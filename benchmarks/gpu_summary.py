"""The summary table that ``gpu_measure.sh`` prints last: stage outcomes, ceilings, train steps.

Reads the stage list (``name<TAB>result<TAB>seconds<TAB>exit``), the JSON lines the stages wrote
(``gpu_env.py``, ``train_step.py``) and the kernel-test log, and prints plain-text tables. It
reports only what is in those files; a figure a stage did not produce is shown as ``-``.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


def _rows(path: Path) -> list[dict]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _fmt(v, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _masks(row: dict) -> list[str]:
    """How the row's masks were drawn: reused from N steps (masks/N), new lengths timed (cold)."""
    out = [f"masks/{row['mask_cycle']}"] if row.get("mask_cycle") else []
    return out + (["cold"] if row.get("shapes") == "cold" else [])


def _options(row: dict) -> str:
    opts = []
    if row.get("compile") not in (None, "off"):
        opts.append("compile" + ("+graph" if "graph" in str(row["compile"]) else ""))
    for key, name in (("pack_context", "pack"), ("sparse_patch_embed", "sparse"),
                      ("fused_optimizer", "fusedAdamW+EMA"), ("target_working_copy", "bf16copy")):
        if row.get(key):
            opts.append(name)
    if row.get("attn_backend"):
        opts.append(f"attn={row['attn_backend']}")
    opts += _masks(row)
    ac = row.get("activation_checkpointing")
    if ac and any(ac):
        opts.append(f"ckpt={'/'.join(map(str, ac))}")
    return ",".join(opts) or "-"


def summary(stages_path: Path, results_path: Path, logs: Path | None) -> str:
    out = []
    stages = [line.split("\t") for line in stages_path.read_text().splitlines() if line.strip()]
    out.append(_table(["stage", "result", "seconds", "exit"], [s + ["-"] * (4 - len(s)) for s in stages]))
    rows = _rows(results_path)
    env = next((r for r in rows if r.get("kind") == "environment"), None)
    if env:
        out.append("")
        out.append(
            f"device: {env.get('device_name')}  SMs {_fmt(env.get('sm_count'))}  torch {env.get('torch')}  "
            f"cuda {env.get('cuda')}  cudnn {env.get('cudnn')}  triton {env.get('triton')}  commit {env.get('commit')}"
        )
        out.append(f"ceilings: matmul {_fmt(env.get('matmul_tflops'))} TFLOP/s ({env.get('matmul')}), "
                   f"copy {_fmt(env.get('copy_gbps'))} GB/s ({env.get('copy')})")
    if logs is not None and (logs / "kernels.log").exists():
        tail = [ln for ln in (logs / "kernels.log").read_text().splitlines() if re.search(r"passed|failed|error", ln)]
        if tail:
            out.append(f"kernel tests: {tail[-1].strip()}")
    steps = [r for r in rows if r.get("bench") == "train_step" and r.get("impl") in ("reference", "fast")]
    if steps:
        body = []
        for r in steps:
            cs = r.get("compile_stats") or {}
            cs = cs if isinstance(cs, dict) else {}
            prof = r.get("profile") or {}
            body.append([
                str(r.get("model")) + (" V2" if r.get("arch") == "v2" else ""), r["impl"],
                _options(r) if r["impl"] == "fast" else ",".join(["official structure"] + _masks(r)),
                _fmt(r.get("ms_step")), _fmt(r.get("clips_s")),
                _fmt(100 * r["mfu"] if r.get("mfu") is not None else None),
                _fmt(r.get("peak_mem_gib")), _fmt(r.get("warmup_s")),
                _fmt(r.get("ms_host_step")), _fmt(r.get("attn_new_shapes_per_step"), 2),
                f"{_fmt(prof.get('gpu_busy_ms'))}/{_fmt(prof.get('wall_ms'))}" if prof else "-",
                "/".join(_fmt(cs.get(k)) for k in ("target", "student", "recompiles", "graph_breaks")),
            ])
        out.append("")
        out.append(_table(["model", "impl", "options", "ms/step", "clips/s", "MFU %", "peak GiB",
                           "warmup s", "host ms", "new attn/step", "GPU busy/wall ms",
                           "compiled target/student/recompiles/breaks"], body))
    for r in steps:
        cost = r.get("attn_shape_cost") or {}
        for role, per_backend in cost.items():
            for backend, c in per_backend.items():
                if "error" in c:
                    out.append(f"new attention shape, {role} {backend}: {c['error']}")
                else:
                    out.append(f"new attention shape, {role} L={c['length']} {backend}: first call "
                               f"{c['new_ms']} ms, again {c['again_ms']} ms")
    ratios = [r for r in rows if r.get("impl") == "ratio"]
    for r in ratios:
        out.append(f"{r.get('model')}: fast is {_fmt(r.get('speedup_fast_vs_reference'), 3)}x the reference "
                   f"({_fmt(r.get('clips_s_fast'))} vs {_fmt(r.get('clips_s_reference'))} clips/s, same run)")
    for r in rows:
        if r.get("mode") == "check_loss":
            out.append(f"loss check {r.get('model')} {r.get('steps')} steps: max rel diff "
                       f"{r.get('max_rel_diff'):.3g} (tol {r.get('tolerance')}) -> {'PASS' if r.get('pass') else 'FAIL'}; "
                       f"largest param diff {r.get('param_max_abs_diff'):.3g} ({r.get('param_max_abs_diff_name')})")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stages", required=True, type=Path)
    p.add_argument("--results", required=True, type=Path)
    p.add_argument("--logs", default=None, type=Path)
    args = p.parse_args(argv)
    print(summary(args.stages, args.results, args.logs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
