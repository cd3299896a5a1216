"""Parity with the official V-JEPA 2 code (facebookresearch/vjepa2), on cases it produced
(tests/fixtures/README.md, "V-JEPA 2").

Every directory listed in VJEPA_V2_PARITY_CASES (os.pathsep-separated; default: the bundled
``official_v2_parity`` case) must hold ``case.pt`` and ``checkpoint.pth.tar``; a missing file fails.
The models are built from the case's ``config`` through the public API and loaded from its
checkpoint; batches are lists over clip-length groups, and every check loops over them. The forward,
gradient and step checks run for every kernel setting.

Tolerances are the fixture README's: outputs, loss, probe logits and the other-resolution output
1e-5 relative; gradients 1e-5 per tensor, except elements whose exact gradient is 0 (|ref| <= 1e-9:
float32 noise of at most 4e-11 there), which get an absolute limit; after-states 1e-5 relative to
the weights, and the encoder / predictor updates themselves 1e-3 (absolute 1 % of lr on the
exact-zero-gradient elements, whose first AdamW move is noise).

Masks: the case's come from the official collator after torch was seeded and used to build the
models, a state the case does not record (only ``seed``), and a 2-sample batch carries too few bits
to find it by search (a scan of the first 3e8 draws after ``manual_seed(7)`` gave only chance
matches). So the forward checks use the case's masks, and our collator
(:class:`~vjepa_fast.masks.MultiSeqMaskCollator`) is checked against what the case does fix: the
grouping of the batch, the mask shapes, and that the case's masks are explained by the block sizes
our collator draws at the case's step (the official counter's first value): every target kept is
covered, and every context token kept is avoided, by ``num_blocks`` blocks of exactly that size.
(The official collator's draws are reproduced exactly in tests/test_mask_stats.py.)
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch

from vjepa_fast import (
    AttentiveClassifierV2, Schedules, build_optimizer, build_vjepa, ema_update_, jepa_loss_groups, load_vjepa2_checkpoint,
    vjepa_checkpoint,
)
from vjepa_fast.checkpoint import CheckpointError, clean_key, read_checkpoint
from vjepa_fast.jepa import normalize_targets
from vjepa_fast.masks import MultiSeqMaskCollator
from vjepa_fast.optim import FusedAdamWEMA
from helpers import load_parity_case, rel

FIXTURES = Path(__file__).parent / "fixtures"
CASES = [Path(p) for p in os.environ.get("VJEPA_V2_PARITY_CASES", str(FIXTURES / "official_v2_parity")).split(os.pathsep) if p]
load_case = functools.partial(load_parity_case, what="V2 parity case")

OUT_TOL, GRAD_TOL, STEP_TOL, UPDATE_TOL, SCHED_TOL = 1e-5, 1e-5, 1e-5, 1e-3, 1e-12
ZERO_GRAD = 1e-9  # |official grad| at or below this: an exact zero holding float32 noise


def build_case_model(case: dict, case_dir: Path):
    cfg = case["config"]
    assert cfg["num_mask_tokens"] == len(cfg["mask"]) * len(cfg["dataset_fpcs"])  # the V2 rule, train.py:204
    model = build_vjepa(
        "vit_tiny",  # preset overridden below by the case's exact sizes
        crop_size=cfg["crop"], patch_size=cfg["patch"], num_frames=cfg["frames"], tubelet_size=cfg["tubelet"],
        uniform_power=cfg["uniform_power"], pred_depth=cfg["pred_depth"], pred_embed_dim=cfg["pred_dim"],
        pred_num_heads=cfg["pred_num_heads"], num_mask_tokens=cfg["num_mask_tokens"],
        zero_init_mask_tokens=cfg["zero_init_mask_tokens"], loss_exp=cfg["loss_exp"],
        embed_dim=cfg["embed_dim"], depth=cfg["depth"], num_heads=cfg["num_heads"],
        use_rope=cfg["use_rope"], depth_rescale=True, use_silu=cfg["use_silu"], use_pred_silu=cfg["use_pred_silu"],
        wide_silu=cfg["wide_silu"], activation_checkpointing=cfg["use_activation_checkpointing"],
    )
    report = load_vjepa2_checkpoint(model, case_dir / "checkpoint.pth.tar")
    assert not report.modules["predictor"].mask_tokens.not_loaded
    return model


def schedules_for(case: dict, key: str = "schedules") -> Schedules:
    s = case[key]
    return Schedules(
        ipe=s["ipe"], epochs=s["epochs"], ipe_scale=s["ipe_scale"], warmup=s.get("warmup_epochs", 0),
        start_lr=s.get("start_lr", 0.0), lr=s["ref_lr"], final_lr=s["final_lr"], weight_decay=s["wd"],
        final_weight_decay=s["final_wd"], ema=tuple(s["ema"]), anneal=key == "schedules_anneal",
    )


def named_params(model) -> dict[str, torch.nn.Parameter]:
    params = {f"encoder.backbone.{n}": p for n, p in model.encoder.named_parameters()}
    return params | {f"predictor.backbone.{n}": p for n, p in model.predictor.named_parameters()}


def grad_error(got: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(relative error over the elements with a real gradient, max absolute error on the exact-zero ones)."""
    zero = ref.abs() <= ZERO_GRAD
    r = rel(got[~zero], ref[~zero]) if (~zero).any() else 0.0
    a = (got[zero] - ref[zero]).abs().max().item() if zero.any() else 0.0
    return r, a


@pytest.fixture(params=CASES, ids=lambda p: p.name)
def case_dir(request) -> Path:
    return request.param


def test_case_files_present(case_dir):
    case = load_case(case_dir)
    assert len(case["clips"]) == len(case["masks_enc"]) == len(case["masks_pred"]) == len(case["group_fpcs"]) >= 1


def case_collator(case: dict) -> MultiSeqMaskCollator:
    cfg = case["config"]
    return MultiSeqMaskCollator(cfg["mask"], cfg["dataset_fpcs"], crop_size=cfg["crop"], patch_size=cfg["patch"],
                                tubelet_size=cfg["tubelet"])


def test_collator_groups_the_case_batch(case_dir):
    """The loader batch (samples of ``sample_fpcs`` frames, label = position) goes through our collate
    function: the same groups, labels, clip shapes and mask counts as the case's."""
    case = load_case(case_dir)
    cfg = case["config"]
    batch = [([torch.zeros(3, f, cfg["crop"], cfg["crop"])], b, [torch.arange(f)]) for b, f in enumerate(cfg["sample_fpcs"])]
    out = case_collator(case)(batch)
    assert len(out) == len(case["group_fpcs"])
    for g, ((clips, labels, _), enc, pred) in enumerate(out):
        assert torch.equal(labels, case["group_labels"][g])
        assert clips[0].shape == case["clips"][g].shape
        assert len(enc) == len(pred) == len(case["masks_enc"][g]) == len(cfg["mask"])
        for i, (e, p) in enumerate(zip(enc, pred)):
            assert e.shape[0] == p.shape[0] == case["masks_enc"][g][i].shape[0]


def _placements(grid, size) -> list[frozenset]:
    T, H, W = grid
    t, h, w = size
    return [frozenset((t0 + a) * H * W + (y0 + b) * W + x0 + c for a in range(t) for b in range(h) for c in range(w))
            for t0 in range(T - t + 1) for y0 in range(H - h + 1) for x0 in range(W - w + 1)]


def explained_by(enc: list[int], pred: list[int], grid, size, num_blocks: int, max_context_duration: int) -> bool:
    """Whether some ``num_blocks`` blocks of ``size`` give a sample whose truncated (first-k) context
    and targets are ``enc`` and ``pred``: every index below the last kept context index that is not
    kept is covered, every index below the last kept target that is not kept is not, the kept
    targets are covered and the kept context is not. Depth-first over the blocks that can cover the
    first uncovered cell."""
    T, H, W = grid
    past = set(range(max_context_duration * H * W, T * H * W))  # never context (max_temporal_keep)
    must = (set(pred) | {i for i in range(max(enc)) if i not in set(enc)}) - past
    avoid = set(enc) | {i for i in range(max(pred)) if i not in set(pred)}
    if must & avoid:
        return False
    allowed = [b for b in _placements(grid, size) if not b & avoid]

    def cover(todo: frozenset, left: int) -> bool:
        if not todo:
            return True
        if left == 0:
            return False
        cell = min(todo)
        return any(cover(todo - b, left - 1) for b in allowed if cell in b)

    return cover(frozenset(must), num_blocks)


def test_case_masks_are_explained_by_the_collators_block_sizes(case_dir):
    case = load_case(case_dir)
    col = case_collator(case)
    for g, fpc in enumerate(case["group_fpcs"]):
        inner = col.collators[fpc]
        sizes = inner.block_sizes(0)  # the case is the first batch: the official counters are at 0
        for i, spec in enumerate(inner.specs):
            enc, pred = case["masks_enc"][g][i], case["masks_pred"][g][i]
            for b in range(enc.shape[0]):
                args = (enc[b].tolist(), pred[b].tolist(), inner.grid)
                assert explained_by(*args, sizes[i], spec.num_blocks, spec.max_context_duration), (
                    f"group {g}, mask {i}, sample {b}: not made of {spec.num_blocks} blocks of {sizes[i]}")
            # Not vacuous: some block size one row or column off does not explain them.
            t, h, w = sizes[i]
            others = [(t, h + a, w + c) for a, c in ((1, 0), (0, 1), (-1, 0), (0, -1))
                      if 1 <= h + a <= inner.grid[1] and 1 <= w + c <= inner.grid[2]]
            rejected = [o for o in others if not all(
                explained_by(enc[b].tolist(), pred[b].tolist(), inner.grid, o, spec.num_blocks, spec.max_context_duration)
                for b in range(enc.shape[0]))]
            assert rejected, f"group {g}, mask {i}: every neighbouring size {others} explains the masks too"


def test_forward_loss_and_gradients(case_dir, kernel_setting):
    case = load_case(case_dir)
    model = build_case_model(case, case_dir)
    out = model.forward_groups(case["clips"], case["masks_enc"], case["masks_pred"])

    assert len(out.targets) == len(case["target_features"])
    terms = []
    for g, (h, ref) in enumerate(zip(out.targets, case["target_features"])):
        r = rel(normalize_targets(h), ref)
        assert r <= OUT_TOL, f"target features, group {g}: {r:.3g}"
        assert len(out.context[g]) == len(case["context_out"][g]) == len(out.preds[g]) == len(case["pred_out"][g])
        for i, (got, want) in enumerate(zip(out.context[g], case["context_out"][g])):
            assert got.shape == want.shape, f"context output, group {g}, mask {i}: shape {tuple(got.shape)}"
            r = rel(got, want)
            assert r <= OUT_TOL, f"context output, group {g}, mask {i}: {r:.3g}"
        for i, (got, want) in enumerate(zip(out.preds[g], case["pred_out"][g])):
            assert got.shape == want.shape, f"predictor output, group {g}, mask {i}: shape {tuple(got.shape)}"
            r = rel(got, want)
            assert r <= OUT_TOL, f"predictor output, group {g}, mask {i}: {r:.3g}"
            terms.append(jepa_loss_groups([[got]], [h], [[case["masks_pred"][g][i]]]).item())
    assert len(terms) == len(case["loss_terms"])
    for t, ref in zip(terms, case["loss_terms"]):
        assert abs(t - ref) <= OUT_TOL * abs(ref), f"loss term {t} vs {ref}"
    assert abs(out.loss.item() - case["loss"]) <= OUT_TOL * abs(case["loss"]), f"loss {out.loss.item()} vs {case['loss']}"

    out.loss.backward()
    params = named_params(model)
    trainable = {n for n, p in params.items() if p.requires_grad}
    assert trainable == set(case["grads"]) | set(case["no_grad_params"]), "trainable parameters differ from the official ones"
    for name in case["no_grad_params"]:
        # Mask tokens of groups that did not occur take no part: no gradient at all (official: None).
        assert params[name].grad is None, f"{name} must get no gradient"
    for name, ref in case["grads"].items():
        assert params[name].grad is not None, f"no gradient for {name}"
        r, a = grad_error(params[name].grad, ref)
        assert r <= GRAD_TOL, f"gradient of {name}: {r:.3g} relative"
        assert a <= ZERO_GRAD, f"gradient of {name} on its exact-zero elements: {a:.3g} absolute"


def test_predictor_sorts_by_position_and_picks_the_groups_mask_token(case_dir):
    """The V2 predictor's block input is the [context, targets] sequence argsorted by token id, with
    RoPE positions sorted alike; group g's mask token fills the target slots (fixture README,
    "Predictor order" and "Which mask token")."""
    case = load_case(case_dir)
    model = build_case_model(case, case_dir)
    seen = []

    def capture(module, args):
        x, _packing, rope = args
        seen.append((x.detach().clone(), rope.ids.clone()))

    handle = model.predictor.predictor_blocks[0].register_forward_pre_hook(capture)
    try:
        with torch.no_grad():
            model.forward_groups(case["clips"], case["masks_enc"], case["masks_pred"])
    finally:
        handle.remove()
    pairs = [(g, i) for g in range(len(case["clips"])) for i in range(len(case["masks_enc"][g]))]
    assert len(seen) == len(pairs)
    for (g, i), (x, ids) in zip(pairs, seen):
        mc, mt = case["masks_enc"][g][i], case["masks_pred"][g][i]
        assert torch.equal(ids, torch.cat([mc, mt], 1).sort(1).values), f"group {g}, mask {i}: positions not sorted"
        # per row: the sorted slots that hold target ids (context and target ids are disjoint here)
        is_target = torch.stack([torch.isin(ids[b], mt[b]) & ~torch.isin(ids[b], mc[b]) for b in range(ids.shape[0])])
        assert int(is_target.sum()) == mt.numel()
        token = model.predictor.mask_tokens[g % model.predictor.num_mask_tokens].reshape(-1)
        assert torch.equal(x[is_target], token.expand(int(is_target.sum()), -1)), f"group {g}: wrong mask token"
        assert not (x[~is_target] == token).all(-1).any()


@pytest.mark.parametrize("fused", [False, True], ids=["adamw", "fused_adamw_ema"])
def test_optimizer_and_ema_step(case_dir, kernel_setting, fused):
    case = load_case(case_dir)
    step = case["step"]
    assert step["clip_grad"] is None  # V2 never clips
    model = build_case_model(case, case_dir)
    before = {k: {n: t.clone() for n, t in getattr(model, k).state_dict().items()} for k in ("encoder", "predictor", "target_encoder")}
    opt = build_optimizer(model.encoder, model.predictor, betas=tuple(step["betas"]), eps=step["eps"])
    names = {id(p): n for n, p in named_params(model).items()}
    for group, ref in zip(opt.param_groups, step["param_groups"]):
        assert [names[id(p)] for p in group["params"]] == ref["names"]
        assert bool(group.get("WD_exclude", False)) == bool(ref["WD_exclude"])
    sched = schedules_for(case)
    lr, wd = sched.step(opt)
    assert abs(lr - step["lr"]) <= SCHED_TOL and abs(wd - step["wd"]) <= SCHED_TOL
    assert abs(sched.momentum() - step["ema_momentum"]) <= SCHED_TOL
    for group, ref in zip(opt.param_groups, step["param_groups"]):
        assert group["weight_decay"] == ref["weight_decay"] and abs(group["lr"] - ref["lr"]) <= SCHED_TOL

    model.forward_groups(case["clips"], case["masks_enc"], case["masks_pred"]).loss.backward()
    if fused:
        FusedAdamWEMA(opt, model.target_encoder.parameters(), model.encoder.parameters()).step(sched.momentum())
    else:
        opt.step()
        ema_update_(model.target_encoder, model.encoder, sched.momentum())

    grads = {clean_key(k.split(".", 1)[1]): v for k, v in case["grads"].items() if k.startswith("encoder.")}
    pred_grads = {clean_key(k.split(".", 1)[1]): v for k, v in case["grads"].items() if k.startswith("predictor.")}
    for key, ref_key, key_grads in (("encoder", "encoder_after", grads), ("predictor", "predictor_after", pred_grads),
                                    ("target_encoder", "target_after", None)):
        got = getattr(model, key).state_dict()
        ref = {clean_key(k): v for k, v in step[ref_key].items()}
        assert set(got) == set(ref), key
        for name, r in ref.items():
            e = rel(got[name], r)
            assert e <= STEP_TOL, f"{key}.{name} after the step: {e:.3g}"
            if key_grads is None:
                continue  # the EMA move is ~1e-5 of the weights: float32 quantises it (README)
            delta, delta_ref = got[name] - before[key][name], r - before[key][name]
            if name not in key_grads:
                assert torch.equal(got[name], before[key][name]), f"{key}.{name} had no gradient and must not change"
                continue
            zero = key_grads[name].abs() <= ZERO_GRAD
            e = rel(delta[~zero], delta_ref[~zero])
            assert e <= UPDATE_TOL, f"{key}.{name} update: {e:.3g}"
            if zero.any():
                assert (delta[zero] - delta_ref[zero]).abs().max() <= 0.01 * step["lr"], f"{key}.{name} update (zero grads)"


def trainer_for_case(case: dict, folder: Path):
    """A :class:`~vjepa_fast.train.Trainer` built from a pretraining config that describes the case (the
    V2 keys a user writes: dataset_fpcs, use_rope, pred_num_heads, the V2 schedules and AdamW)."""
    from vjepa_fast.config import PretrainConfig  # noqa: PLC0415
    from vjepa_fast.train import Trainer  # noqa: PLC0415

    c, o = case["config"], case["config"]["optimization"]
    raw = {
        "data": {"synthetic": True, "dataset_fpcs": c["dataset_fpcs"], "batch_size": c["batch"], "crop_size": c["crop"],
                 "patch_size": c["patch"], "tubelet_size": c["tubelet"], "num_workers": 0},
        "mask": c["mask"],
        "model": {"model_name": "vit_tiny", "embed_dim": c["embed_dim"], "depth": c["depth"], "pred_depth": c["pred_depth"],
                  "pred_embed_dim": c["pred_dim"], "pred_num_heads": c["pred_num_heads"], "use_rope": c["use_rope"],
                  "uniform_power": c["uniform_power"], "zero_init_mask_tokens": c["zero_init_mask_tokens"],
                  "use_activation_checkpointing": c["use_activation_checkpointing"], "use_silu": c["use_silu"],
                  "use_pred_silu": c["use_pred_silu"], "wide_silu": c["wide_silu"]},
        "loss": {"loss_exp": c["loss_exp"]},
        "meta": {"dtype": "float32", "device": "cpu", "seed": c["seed"]},
        "optimization": {k: o[k] for k in ("ipe", "epochs", "ipe_scale", "warmup", "start_lr", "lr", "final_lr",
                                           "weight_decay", "final_weight_decay", "ema", "betas", "eps")},
        "logging": {"folder": str(folder)},
    }
    cfg = PretrainConfig.from_dict(raw)
    assert cfg.is_v2 and cfg.model.encoder_num_heads == c["num_heads"] and cfg.num_mask_tokens == c["num_mask_tokens"]
    return Trainer(cfg, preflight=False, out=lambda s: None)


def test_trainer_step_from_a_config_is_the_official_step(case_dir, kernel_setting, tmp_path):
    """The whole trainer path of a V2 config (model from the config, official checkpoint loaded through
    the V2 loader, optimizer, schedules, the grouped step, EMA): one step gives the case's loss and
    after-states."""
    case = load_case(case_dir)
    trainer = trainer_for_case(case, tmp_path)
    trainer._load_weights(read_checkpoint(case_dir / "checkpoint.pth.tar"), case_dir / "checkpoint.pth.tar")
    metrics = trainer.train_step(case["clips"], case["masks_enc"], case["masks_pred"])
    assert abs(float(metrics["loss"]) - case["loss"]) <= OUT_TOL * abs(case["loss"])
    assert float(metrics["enc-grad-norm"]) == 0.0  # no clipping
    step = case["step"]
    assert abs(trainer.schedules.lr(1) - step["lr"]) <= SCHED_TOL and trainer.schedules.momentum() == step["ema_momentum"]
    for key, ref_key in (("encoder", "encoder_after"), ("predictor", "predictor_after"), ("target_encoder", "target_after")):
        got = getattr(trainer.model, key).state_dict()
        ref = {clean_key(k): v for k, v in step[ref_key].items()}
        assert set(got) == set(ref), key
        for name, r in ref.items():
            e = rel(got[name], r)
            assert e <= STEP_TOL, f"{key}.{name} after the trainer's step: {e:.3g}"
    for name in case["no_grad_params"]:  # the mask tokens of the absent groups: exactly unchanged
        key = name.split(".backbone.", 1)[1]
        assert torch.equal(trainer.model.predictor.state_dict()[key],
                           read_checkpoint(case_dir / "checkpoint.pth.tar")["predictor"]["module.backbone." + key])


def test_trainer_resumes_the_official_training_checkpoint(case_dir, tmp_path):
    """``meta.load_checkpoint`` with the official file as the run's latest: weights, AdamW state and
    the official fast-forward of schedules and masks by ``epoch * ipe``."""
    import shutil  # noqa: PLC0415

    case = load_case(case_dir)
    trainer = trainer_for_case(case, tmp_path)
    shutil.copy(case_dir / "checkpoint.pth.tar", tmp_path / "jepa-latest.pth.tar")
    trainer.resume(tmp_path / "jepa-latest.pth.tar")
    ipe = case["config"]["optimization"]["ipe"]
    epoch = read_checkpoint(case_dir / "checkpoint.pth.tar")["epoch"]
    assert trainer.step == trainer.schedules.iteration == trainer.masks.step_count == epoch * ipe
    fresh = build_case_model(case, case_dir)
    for key in ("encoder", "predictor", "target_encoder"):
        for (name, a), b in zip(getattr(fresh, key).state_dict().items(), getattr(trainer.model, key).state_dict().values()):
            assert torch.equal(a, b), f"{key}.{name}"


def test_schedules_pretrain(case_dir):
    case = load_case(case_dir)
    s = case["schedules"]
    sched = schedules_for(case)
    values = [sched.step() for _ in range(len(s["lr"]))]
    assert max(abs(lr - r) for (lr, _), r in zip(values, s["lr"])) <= SCHED_TOL
    assert max(abs(wd - r) for (_, wd), r in zip(values, s["wd_values"])) <= SCHED_TOL
    assert max(abs(sched.ema(i) - r) for i, r in enumerate(s["momentum"])) <= SCHED_TOL
    assert sched.lr.T_max == s["T_max"] and sched.lr.warmup_steps == s["warmup_steps"]


def test_schedules_anneal(case_dir):
    case = load_case(case_dir)
    s = case["schedules_anneal"]
    sched = schedules_for(case, "schedules_anneal")
    assert sched.lr.T_max == s["T_max"]
    values = [sched.step() for _ in range(len(s["lr"]))]
    assert max(abs(lr - r) for (lr, _), r in zip(values, s["lr"])) <= SCHED_TOL
    # weight decay and EMA stay constant through the cooldown
    assert all(wd == s["wd"] for _, wd in values)
    assert all(sched.ema(i) == s["ema"][0] for i in range(0, len(s["lr"]), 997))


def test_probe_logits(case_dir):
    probe = load_case(case_dir)["probe"]
    clf = AttentiveClassifierV2(
        embed_dim=probe["embed_dim"], num_heads=probe["num_heads"], depth=probe["depth"],
        num_classes=probe["num_classes"], activation_checkpointing=True,
    )
    clf.load_state_dict(probe["state_dict"], strict=True)
    with torch.no_grad():
        logits = clf(probe["features"])
    r = rel(logits, probe["logits"])
    assert r <= OUT_TOL, f"probe logits: {r:.3g}"


def test_other_resolution(case_dir):
    """The encoder's RoPE uses the input's grid: 16 frames at 32x80 px (8x2x5, non-square) with a
    model built for 8 frames at 64 px."""
    case = load_case(case_dir)
    model = build_case_model(case, case_dir)
    other = case["other_res"]
    with torch.no_grad():
        r = rel(model.encoder(other["clip"]), other["encoder_out"])
        assert r <= OUT_TOL, f"encoder at another resolution: {r:.3g}"
        r = rel(model.target_encoder(other["clip"]), other["target_encoder_out"])
        assert r <= OUT_TOL, f"target encoder at another resolution: {r:.3g}"


def test_checkpoint_layout_round_trip(case_dir):
    """Our V2 checkpoint has the official keys and shapes (``module.backbone.``, no position tables,
    every mask token) and the official optimizer state loads into our optimizer."""
    case = load_case(case_dir)
    official = read_checkpoint(case_dir / "checkpoint.pth.tar")
    model = build_case_model(case, case_dir)
    opt = build_optimizer(model.encoder, model.predictor)
    opt.load_state_dict(official["opt"])
    ours = vjepa_checkpoint(model, opt)
    for key in ("encoder", "predictor", "target_encoder"):
        assert list(ours[key]) == list(official[key]), key
        for name, t in official[key].items():
            assert torch.equal(ours[key][name], t), f"{key}: {name}"
    assert [len(g["params"]) for g in ours["opt"]["param_groups"]] == [len(g["params"]) for g in official["opt"]["param_groups"]]


def released_format(official: dict, num_mask_tokens: int = 10) -> dict:
    """The layout of a released V2 file (key_map.md, reference §8.4): the training checkpoint's
    state dicts plus the unused sin-cos position tables and 10 predictor mask tokens. The extra tokens
    are zero (never trained), the tables random: a RoPE model must not use them."""
    gen = torch.Generator().manual_seed(0)
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in official.items()}
    for key in ("encoder", "target_encoder"):
        D = out[key]["module.backbone.norm.weight"].shape[0]
        out[key]["module.backbone.pos_embed"] = torch.randn(1, 64, D, generator=gen)
    pred = out["predictor"]
    Dp = pred["module.backbone.predictor_norm.weight"].shape[0]
    pred["module.backbone.predictor_pos_embed"] = torch.randn(1, 64, Dp, generator=gen)
    have = sum(1 for k in pred if ".mask_tokens." in k)
    for j in range(have, num_mask_tokens):
        pred[f"module.backbone.mask_tokens.{j}"] = torch.zeros(1, 1, Dp)
    return out


def test_released_file_with_ten_mask_tokens(case_dir):
    case = load_case(case_dir)
    official = read_checkpoint(case_dir / "checkpoint.pth.tar")
    released = released_format(official)
    model = build_case_model(case, case_dir)
    with torch.no_grad():
        want = model.forward_groups(case["clips"], case["masks_enc"], case["masks_pred"]).preds
    report = load_vjepa2_checkpoint(model, released)
    enc, pred = report.modules["encoder"], report.modules["predictor"]
    assert enc.dropped == ["pos_embed"] and pred.dropped == ["predictor_pos_embed"]
    n = case["config"]["num_mask_tokens"]
    mt = pred.mask_tokens
    assert (mt.file_count, mt.model_count) == (10, n)
    assert mt.loaded == list(range(n)) and mt.not_loaded == list(range(n, 10))
    assert mt.zero_in_file == list(range(n, 10))  # the fixture's own tokens are non-zero
    assert "not loaded (beyond the model's 6) [6, 7, 8, 9]" in str(report) or n != 6
    with torch.no_grad():
        got = model.forward_groups(case["clips"], case["masks_enc"], case["masks_pred"]).preds
    for gw, gg in zip(want, got):
        for w, g in zip(gw, gg):
            assert torch.equal(w, g)
    # A predictor built as the hub builds it (10 tokens) takes all of them.
    ten = build_vjepa("vit_tiny", crop_size=64, num_frames=8, embed_dim=96, depth=3, num_heads=3, pred_depth=2,
                      pred_embed_dim=48, pred_num_heads=3, num_mask_tokens=10, use_rope=True)
    assert load_vjepa2_checkpoint(ten, released).modules["predictor"].mask_tokens.loaded == list(range(10))
    # More tokens than the file: an error naming the count, or (non-strict) kept as initialised.
    twelve = build_vjepa("vit_tiny", crop_size=64, num_frames=8, embed_dim=96, depth=3, num_heads=3, pred_depth=2,
                         pred_embed_dim=48, pred_num_heads=3, num_mask_tokens=12, use_rope=True)
    with pytest.raises(CheckpointError, match="10 mask tokens but the predictor has 12"):
        load_vjepa2_checkpoint(twelve, released)
    assert load_vjepa2_checkpoint(twelve, released, strict=False).modules["predictor"].mask_tokens.kept_init == [10, 11]


def test_encoder_and_probe_files(case_dir):
    """One encoder from a released-format file (``target_encoder``, as the evals load it; the unused
    position table dropped) and an official frozen-eval probe file (``classifiers`` is a list of
    DDP-prefixed probes, one per grid-search setting)."""
    from vjepa_fast.checkpoint_v2 import load_vjepa2_encoder, load_vjepa2_probe

    case = load_case(case_dir)
    released = released_format(read_checkpoint(case_dir / "checkpoint.pth.tar"))
    model = build_case_model(case, case_dir)
    report = load_vjepa2_encoder(model.encoder, released)  # the context encoder now holds the target's weights
    assert report.what == "target_encoder" and report.dropped == ["pos_embed"]
    other = case["other_res"]
    with torch.no_grad():
        assert rel(model.encoder(other["clip"]), other["target_encoder_out"]) <= OUT_TOL
    probe = case["probe"]
    other_probe = {k: torch.zeros_like(v) for k, v in probe["state_dict"].items()}
    eval_file = {"classifiers": [{"module." + k: v for k, v in other_probe.items()},
                                 {"module." + k: v for k, v in probe["state_dict"].items()}],
                 "opt": [], "scaler": None, "epoch": 20}
    clf = AttentiveClassifierV2(embed_dim=probe["embed_dim"], num_heads=probe["num_heads"], depth=probe["depth"],
                                num_classes=probe["num_classes"])
    load_vjepa2_probe(clf, eval_file, index=1)
    with torch.no_grad():
        assert rel(clf(probe["features"]), probe["logits"]) <= OUT_TOL
    with pytest.raises(CheckpointError, match="index 2 is out of range"):
        load_vjepa2_probe(clf, eval_file, index=2)
