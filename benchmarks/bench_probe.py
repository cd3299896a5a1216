"""Frozen-eval throughput: our probe path against a reference eager path with the official structure.

Both paths run in the same process on the same synthetic clips (decoding is benchmarked in
bench_data.py), same encoder, same probe architecture:

* ``reference`` (official V1 ``run_one_epoch`` structure): float32 encoder under ``no_grad`` on the
  S x V clips of a batch concatenated along the batch (``ClipAggregation``), the probe called once
  per view in a Python loop, loss = mean of the per-view losses, prediction = mean of per-view
  softmaxes, ``float(top1)`` (a host sync) every step, lr/wd schedulers stepped in Python, grad clip
  1.0, AdamW. One probe per run: a grid of K probes costs K runs, i.e. K encoder passes.
* ``ours`` (:mod:`vjepa_fast.probe`): encoder under ``inference_mode`` (bf16 autocast on a GPU), all
  views of a batch through the probe in one call, K probes trained on one encoder pass, metrics
  accumulated on the device (no per-step sync), fused AdamW on CUDA; and ``ours+cache``: evaluation
  from features cached on the first epoch (what ``data.cache_eval_features`` does for every later
  epoch).

Reported: samples/s and clips/s (a sample = S segments x V views clips) for train steps and eval
steps, per probe-grid size K, and speedups. One JSON object per line.

    python benchmarks/bench_probe.py                # tiny, CPU, ~1 min
    python benchmarks/bench_probe.py --device cuda --model vit_large --resolution 224 --frames 16 \
        --segments 2 --views 3 --batch 4 --probes 1 4 --embed-dim 0 --depth 0
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vjepa_fast.attentive_probe import AttentiveClassifier  # noqa: E402
from vjepa_fast.probe import (  # noqa: E402
    FrozenEncoder,
    HeadSpec,
    ProbeHeads,
    encode_batch,
    probe_param_groups,
)
from vjepa_fast.schedules import CosineWD, WarmupCosineLR  # noqa: E402
from vjepa_fast.vision_transformer import build_encoder  # noqa: E402


def _emit(**kw):
    print(json.dumps(kw), flush=True)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------------
# reference (official structure)
# --------------------------------------------------------------------------------------------------
class ReferenceProbe:
    """One official probe run: classifier + AdamW + schedulers, the official step."""

    def __init__(self, vit, num_classes, ipe, epochs, device):
        self.vit = vit
        self.classifier = AttentiveClassifier(embed_dim=vit.embed_dim, num_heads=vit.num_heads, depth=1,
                                              num_classes=num_classes).to(device)
        self.opt = torch.optim.AdamW(probe_param_groups(self.classifier))
        self.lr = WarmupCosineLR(0, 1e-3, 1e-3, 0.0, int(epochs * ipe))
        self.wd = CosineWD(0.01, 1e-6, int(epochs * ipe))
        self.s = 0

    def _aggregate(self, x):
        """official ClipAggregation(attend_across_segments=True): list over views of [B, S*N, D]."""
        B, S, V = x.shape[:3]
        clips = [[x[:, s, v] for v in range(V)] for s in range(S)]
        flat = torch.cat([torch.cat(views, 0) for views in clips], 0)
        out = self.vit(flat)
        _, N, D = out.shape
        eff = B * V
        per_view = [[] for _ in range(V)]
        for i in range(S):
            o = out[i * eff:(i + 1) * eff]
            for j in range(V):
                per_view[j].append(o[j * B:(j + 1) * B])
        return [torch.cat(o, 1) for o in per_view]

    def step(self, x, labels, training: bool) -> float:
        self.classifier.train(training)
        if training:
            self.s += 1
            for g in self.opt.param_groups:
                g["lr"] = self.lr(self.s)
                if not g.get("WD_exclude"):
                    g["weight_decay"] = self.wd(self.s)
        with torch.no_grad():
            outputs = self._aggregate(x)
            if not training:
                outputs = [self.classifier(o) for o in outputs]
        if training:
            outputs = [self.classifier(o) for o in outputs]
        loss = sum(F.cross_entropy(o, labels) for o in outputs) / len(outputs)
        with torch.no_grad():
            probs = sum(F.softmax(o, dim=1) for o in outputs) / len(outputs)
            top1 = float(100.0 * probs.max(dim=1).indices.eq(labels).sum() / len(labels))  # host sync
        if training:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.classifier.parameters(), 1.0)
            self.opt.step()
            self.opt.zero_grad()
        return top1


# --------------------------------------------------------------------------------------------------
def _time(fn, steps: int, device) -> float:
    fn()  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="vit_tiny")
    p.add_argument("--embed-dim", type=int, default=96, help="override the preset width (0 = preset)")
    p.add_argument("--depth", type=int, default=4, help="override the preset depth (0 = preset)")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--segments", type=int, default=2)
    p.add_argument("--views", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--probes", type=int, nargs="+", default=[1, 4], help="probe-grid sizes K")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3, help="alternating repeats; the median is reported")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    amp = torch.bfloat16 if device.type == "cuda" else None
    torch.manual_seed(0)
    kw = dict(img_size=a.resolution, num_frames=a.frames, uniform_power=True)
    if a.embed_dim:
        kw["embed_dim"] = a.embed_dim
    if a.depth:
        kw["depth"] = a.depth
    vit = build_encoder(a.model, **kw).to(device).eval()
    for q in vit.parameters():
        q.requires_grad_(False)
    enc = FrozenEncoder(vit)
    B, S, V, C = a.batch, a.segments, a.views, a.classes
    g = torch.Generator(device="cpu").manual_seed(0)
    x_train = torch.randn(B, S, 1, 3, a.frames, a.resolution, a.resolution, generator=g).to(device)
    x_val = torch.randn(B, S, V, 3, a.frames, a.resolution, a.resolution, generator=g).to(device)
    y = torch.randint(0, C, (B,), generator=g).to(device)
    meta = dict(device=str(device), gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(), torch=torch.__version__,
                model=a.model, embed_dim=vit.embed_dim, depth=len(vit.blocks), resolution=a.resolution, frames=a.frames,
                segments=S, views=V, batch=B, classes=C, ours_dtype=str(amp or torch.float32), reference_dtype="float32")
    _emit(bench="probe_setup", **meta)

    for K in a.probes:
        refs = [ReferenceProbe(vit, C, 100, 10, device) for _ in range(K)]
        heads = ProbeHeads([HeadSpec(lr=1e-3 * (i + 1)) for i in range(K)], embed_dim=vit.embed_dim,
                           num_heads=vit.num_heads, num_classes=C, ipe=100, num_epochs=10, device=device, amp_dtype=amp)
        cached = encode_batch(enc, x_val, amp_dtype=amp)

        def ours_train():
            heads.train_step(encode_batch(enc, x_train, amp_dtype=amp), y)

        def ours_eval():
            heads.eval_step(encode_batch(enc, x_val, amp_dtype=amp), y)

        def ours_eval_cached():
            heads.eval_step(cached, y)

        def ref_train():  # K official runs = K encoder passes
            for r in refs:
                r.step(x_train, y, True)

        def ref_eval():
            for r in refs:
                r.step(x_val, y, False)

        times = {n: [] for n in ("ours_train", "ref_train", "ours_eval", "ref_eval", "ours_eval_cached")}
        fns = {"ours_train": ours_train, "ref_train": ref_train, "ours_eval": ours_eval, "ref_eval": ref_eval,
               "ours_eval_cached": ours_eval_cached}
        for _ in range(a.repeats):  # alternate so load changes hit both sides
            for n, fn in fns.items():
                times[n].append(_time(fn, a.steps, device))
        med = {n: statistics.median(v) for n, v in times.items()}
        for phase, clips_per_sample in (("train", S), ("eval", S * V)):
            for impl, key in (("reference", f"ref_{phase}"), ("ours", f"ours_{phase}")):
                _emit(bench=f"probe_{phase}", impl=impl, probes=K, samples_per_s=round(B / med[key], 2),
                      clips_per_s=round(B * clips_per_sample / med[key], 2), ms_per_step=round(1000 * med[key], 2))
            if phase == "eval":
                _emit(bench="probe_eval", impl="ours+cache", probes=K, samples_per_s=round(B / med["ours_eval_cached"], 2),
                      clips_per_s=round(B * S * V / med["ours_eval_cached"], 2),
                      ms_per_step=round(1000 * med["ours_eval_cached"], 2))
        _emit(bench="probe_speedup", probes=K, train=round(med["ref_train"] / med["ours_train"], 2),
              eval=round(med["ref_eval"] / med["ours_eval"], 2),
              eval_cached=round(med["ref_eval"] / med["ours_eval_cached"], 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
