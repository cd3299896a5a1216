"""Parity with the official V-JEPA code, on cases it produced (tests/fixtures/README.md).

Every directory listed in VJEPA_PARITY_CASES (os.pathsep-separated; default: the bundled
``official_parity`` case) must hold ``case.pt`` and ``checkpoint.pth.tar``; a missing file fails.
Each check runs for every kernel setting the package offers.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch

from vjepa_fast import AttentiveClassifier, Schedules, build_optimizer, build_vjepa, clip_gradients, ema_update_
from vjepa_fast.checkpoint import clean_key, load_vjepa_checkpoint
from vjepa_fast.jepa import normalize_targets
from helpers import load_parity_case, rel

FIXTURES = Path(__file__).parent / "fixtures"
CASES = [Path(p) for p in os.environ.get("VJEPA_PARITY_CASES", str(FIXTURES / "official_parity")).split(os.pathsep) if p]
load_case = functools.partial(load_parity_case, what="parity case")

OUT_TOL, GRAD_TOL, STEP_TOL, SCHED_TOL, PROBE_TOL = 1e-5, 1e-4, 1e-5, 1e-12, 1e-5


def build_case_model(case: dict, case_dir: Path):
    cfg = case["config"]
    model = build_vjepa(
        "vit_tiny",  # preset overridden below by the case's exact sizes
        crop_size=cfg["crop"], patch_size=cfg["patch"], num_frames=cfg["frames"], tubelet_size=cfg["tubelet"],
        uniform_power=cfg["uniform_power"], pred_depth=cfg["pred_depth"], pred_embed_dim=cfg["pred_dim"],
        num_mask_tokens=cfg["num_mask_tokens"], embed_dim=cfg["embed_dim"], depth=cfg["depth"], num_heads=cfg["num_heads"],
    )
    load_vjepa_checkpoint(model, case_dir / "checkpoint.pth.tar")
    return model


def schedules_for(case: dict) -> Schedules:
    s = case["schedules"]
    return Schedules(
        ipe=s["ipe"], epochs=s["epochs"], ipe_scale=s["ipe_scale"], warmup=s["warmup_epochs"], start_lr=s["start_lr"],
        lr=s["ref_lr"], final_lr=s["final_lr"], weight_decay=s["wd"], final_weight_decay=s["final_wd"], ema=tuple(s["ema"]),
    )


@pytest.fixture(params=CASES, ids=lambda p: p.name)
def case_dir(request) -> Path:
    return request.param


def test_case_files_present(case_dir):
    load_case(case_dir)


def test_forward_loss_and_gradients(case_dir, kernel_setting):
    case = load_case(case_dir)
    model = build_case_model(case, case_dir)
    out = model(case["clip"], case["masks_enc"], case["masks_pred"])

    assert rel(normalize_targets(out.targets), case["target_features"]) <= OUT_TOL
    assert len(out.context) == len(case["context_out"])
    for i, (got, ref) in enumerate(zip(out.context, case["context_out"])):
        assert got.shape == ref.shape, f"context {i}"
        assert rel(got, ref) <= OUT_TOL, f"context output {i}"
    for i, (got, ref) in enumerate(zip(out.preds, case["pred_out"])):
        assert got.shape == ref.shape, f"prediction {i}"
        assert rel(got, ref) <= OUT_TOL, f"predictor output {i}"
    assert abs(out.loss.item() - case["loss"]) <= OUT_TOL * abs(case["loss"])

    out.loss.backward()
    params = {f"encoder.backbone.{n}": p for n, p in model.encoder.named_parameters()}
    params |= {f"predictor.backbone.{n}": p for n, p in model.predictor.named_parameters()}
    trainable = {n for n, p in params.items() if p.requires_grad}
    assert trainable == set(case["grads"]), "trainable parameters differ from the official ones"
    for name, ref in case["grads"].items():
        assert params[name].grad is not None, f"no gradient for {name}"
        assert rel(params[name].grad, ref) <= GRAD_TOL, f"gradient of {name}"


def test_optimizer_clip_and_ema_step(case_dir, kernel_setting):
    case = load_case(case_dir)
    step = case["step"]
    model = build_case_model(case, case_dir)
    before = {k: {n: t.clone() for n, t in getattr(model, k).state_dict().items()} for k in ("encoder", "predictor", "target_encoder")}
    opt = build_optimizer(model.encoder, model.predictor)
    sched = schedules_for(case)
    lr, wd = sched.step(opt)
    assert abs(lr - step["lr"]) <= SCHED_TOL and abs(wd - step["wd"]) <= SCHED_TOL
    assert abs(sched.momentum() - step["ema_momentum"]) <= SCHED_TOL

    model(case["clip"], case["masks_enc"], case["masks_pred"]).loss.backward()
    clip_gradients(model.encoder, model.predictor, step["clip_grad"])
    opt.step()
    ema_update_(model.target_encoder, model.encoder, sched.momentum())

    for key, ref_key, src in (("encoder", "encoder_after", "encoder"), ("predictor", "predictor_after", "predictor"),
                              ("target_encoder", "target_after", "encoder")):
        got = getattr(model, key).state_dict()
        ref = {clean_key(k): v for k, v in step[ref_key].items()}
        assert set(got) == set(ref), key
        for name, r in ref.items():
            assert rel(got[name], r) <= STEP_TOL or torch.equal(got[name], r), f"{key}.{name} after the step"
            # The update itself is a much smaller number than the weights: compare it too, so
            # that a wrong weight-decay group or a skipped clip cannot hide in the tolerance.
            delta_ref = r - before[key][name]
            if delta_ref.abs().max() > 0:
                assert rel(got[name] - before[key][name], delta_ref) <= 1e-3, f"{key}.{name} update"
            else:
                assert torch.equal(got[name], before[key][name]), f"{key}.{name} must not change"


def test_schedules(case_dir):
    s = load_case(case_dir)["schedules"]
    sched = schedules_for(load_case(case_dir))
    values = [sched.step() for _ in range(len(s["lr"]))]
    assert max(abs(lr - r) for (lr, _), r in zip(values, s["lr"])) <= SCHED_TOL
    assert max(abs(wd - r) for (_, wd), r in zip(values, s["wd_values"])) <= SCHED_TOL
    assert max(abs(sched.ema(i) - r) for i, r in enumerate(s["momentum"])) <= SCHED_TOL


def test_probe_logits(case_dir):
    probe = load_case(case_dir)["probe"]
    sd = probe["state_dict"]
    clf = AttentiveClassifier(
        embed_dim=sd["linear.weight"].shape[1], num_heads=probe["num_heads"], depth=probe["depth"],
        num_classes=probe["num_classes"],
    )
    clf.load_state_dict(sd, strict=True)
    with torch.no_grad():
        logits = clf(probe["features"])
    assert rel(logits, probe["logits"]) <= PROBE_TOL
