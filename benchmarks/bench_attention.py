"""Time every attention backend at the V-JEPA shapes of one model and build the ``tuned`` table.

For the chosen encoder the shapes are (``vjepa_fast.attention.vjepa_attention_shapes``): the target
encoder on all N tokens (forward only: it runs without grad), then per mask config the context
encoder on Kc tokens and the predictor on Kc + Kt (forward + backward), at the official ViT-L/16
16x224 mean lengths by default. The V1 predictor (384 wide) has as many heads as the encoder, so
head dim 24 for ViT-L/H; ``--pred-heads 12`` gives V2's 32.

Prints a table (ms and TFLOP/s per backend, the fastest marked, the skipped ones with why), then one
JSON line with the full report. Numbers are reported, never asserted. ``--out`` saves the table for
``VJEPA_FAST_ATTN=tuned VJEPA_FAST_ATTN_TABLE=<file>``.

    python benchmarks/bench_attention.py --model vit_large --batch 24 --out attn_vitl_h100.json
    python benchmarks/bench_attention.py --model tiny --device cpu          # seconds, CI smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for vjepa_fast
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/, for envinfo

from envinfo import git_commit  # noqa: E402
from vjepa_fast.attention import (  # noqa: E402
    VJEPA_MASK_LENGTHS,
    save_attention_table,
    tune_attention,
    vjepa_attention_shapes,
)

#: CPU smoke size: a 4x7x7 token grid, a 64-wide encoder with 2 heads, a 32-wide predictor with 2,
#: and mask lengths at the official fractions of N (23%/48% short-range, 7%/70% long-range).
TINY = dict(heads=2, head_dim=32, pred_dim=32, tokens=196, masks=((46, 93), (13, 138)), batch=2)


def _masks(text: str) -> tuple[tuple[int, int], ...]:
    try:
        masks = tuple(tuple(int(v) for v in pair.split(":")) for pair in text.split(","))
    except ValueError:
        masks = ((),)
    if not masks or any(len(m) != 2 or min(m) < 1 for m in masks):
        raise argparse.ArgumentTypeError(f"expected Kc:Kt[,Kc:Kt...] with positive ints, got {text!r}")
    return masks


def build_parser() -> argparse.ArgumentParser:
    from vjepa_fast.vision_transformer import VIT_PRESETS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default=None,
                   help="default: bfloat16 on CUDA (the autocast dtype), float32 elsewhere")
    p.add_argument("--model", default="vit_large", choices=["tiny", *VIT_PRESETS],
                   help="encoder preset (heads and head dim); 'tiny' is the CPU smoke size")
    p.add_argument("--batch", type=int, default=None, help="per-GPU batch (default 24; tiny 2)")
    p.add_argument("--tokens", type=int, default=None, help="N of the full clip (default 1568 = 8x14x14)")
    p.add_argument("--masks", type=_masks, default=None,
                   help="Kc:Kt per mask config (default: official ViT-L/16 16x224 means 364:746,103:1101)")
    p.add_argument("--pred-dim", type=int, default=None, help="predictor width (default 384)")
    p.add_argument("--pred-heads", type=int, default=None,
                   help="predictor heads (default: the encoder's, as V1; V2 uses 12)")
    p.add_argument("--backends", nargs="+", default=None, help="default: every backend available here")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=10, help="timed calls per backend and shape (median reported)")
    p.add_argument("--no-check", action="store_true", help="skip the parity check against float32 math")
    p.add_argument("--out", default=None, help="save the measured table here (JSON, load_attention_table)")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    return p


def _shapes(args) -> tuple[list, dict]:
    if args.model == "tiny":
        heads, head_dim, pred_dim = TINY["heads"], TINY["head_dim"], TINY["pred_dim"]
        tokens, masks, batch = TINY["tokens"], TINY["masks"], TINY["batch"]
    else:
        from vjepa_fast.vision_transformer import VIT_PRESETS

        preset = VIT_PRESETS[args.model]
        heads, head_dim = preset["num_heads"], preset["embed_dim"] // preset["num_heads"]
        pred_dim, tokens, masks, batch = 384, 1568, VJEPA_MASK_LENGTHS, 24
    pred_dim = args.pred_dim or pred_dim
    pred_heads = args.pred_heads or heads
    if pred_dim % pred_heads:
        raise SystemExit(f"bench_attention: --pred-heads {pred_heads} does not divide the predictor width "
                         f"{pred_dim}")  # fmt: skip
    tokens, masks, batch = args.tokens or tokens, args.masks or masks, args.batch or batch
    config = {"model": args.model, "batch": batch, "tokens": tokens, "mask_lengths": [list(m) for m in masks],
              "encoder_heads": heads, "encoder_head_dim": head_dim, "pred_heads": pred_heads,
              "pred_head_dim": pred_dim // pred_heads}  # fmt: skip
    shapes = vjepa_attention_shapes(heads, head_dim, pred_heads, pred_dim // pred_heads, batch, tokens, masks)
    return shapes, config


def _print_table(report: dict) -> None:
    names = report["backends"]
    print(f"attention backends on {report['device_name']} ({report['device']}), {report['dtype']}, "
          f"median of {report['reps']} after {report['warmup']} warm-up; ms (TFLOP/s), * = fastest")
    print(f"TFLOP/s: {report['flops']}")
    rows = []
    for r in report["shapes"]:
        cells = [f"{r['ms'][n]:.3f} ({r['tflops'][n]:.3g}){'*' if n == r['chosen'] else ' '}" if n in r["ms"]
                 else "skipped " for n in names]  # fmt: skip
        rows.append((r, cells))
    width = 2 + max(len(c) for cells in [names, *(cells for _, cells in rows)] for c in cells)
    head = f"{'role':<13}{'B':>4}{'heads':>6}{'L':>6}{'d':>5} {'mode':<8}"
    print(head + "".join(f"{n:>{width}}" for n in names) + "  chosen")
    for r, cells in rows:
        row = f"{r['role'] or '-':<13}{r['batch']:>4}{r['heads']:>6}{r['length']:>6}{r['head_dim']:>5}"
        print(row + f" {r['mode']:<8}" + "".join(f"{c:>{width}}" for c in cells) + f"  {r['chosen']}")
    for g in report["groups"]:
        totals = ", ".join(f"{n} {t:.3f}" for n, t in g["ms_total"].items())
        print(f"group default heads={g['heads']} head_dim={g['head_dim']} (unmeasured or symbolic lengths; "
              f"summed ms at {g['lengths']}: {totals}): {g['chosen']}")  # fmt: skip
    for r in report["shapes"]:
        for n, why in r["skipped"].items():
            print(f"skipped {n} at {r['role'] or '-'} L={r['length']} d={r['head_dim']}: {why}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_attention: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    shapes, config = _shapes(args)
    report = tune_attention(shapes, device, dtype, backends=args.backends, warmup=args.warmup, reps=args.reps,
                            check=not args.no_check)  # fmt: skip
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        save_attention_table(args.out)
    if not args.json:
        _print_table(report)
        if args.out:
            print(f"table saved: VJEPA_FAST_ATTN=tuned VJEPA_FAST_ATTN_TABLE={args.out} uses it")
    print(json.dumps({"bench": "attention", **config, "commit": git_commit(), "table": args.out, **report}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
