"""compile_vjepa: varying mask lengths must not recompile, and compiled training must equal eager.

The model is tiny, but the masks are the official two-generator multiblock config, so the context
and target lengths of both generators change from step to step. 96 px (a 4 x 6 x 6 token grid)
keeps ``B * Kt * D`` above 4096 at every step: inductor's CPU code generator guards on that size
(its accumulator choice), real configs are far above it, and the test should see what they see.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from vjepa_fast.compile import compile_stats, compile_vjepa, is_compiled, reset_compile_stats
from vjepa_fast.jepa import build_vjepa
from vjepa_fast.masks import MultiBlock3DMaskCollator
from vjepa_fast.optim import build_optimizer, ema_update_

SHORT = {"spatial_scale": (0.15, 0.15), "temporal_scale": (1.0, 1.0), "aspect_ratio": (0.75, 1.5),
         "num_blocks": 8, "max_temporal_keep": 1.0, "max_keep": None}
LONG = {"spatial_scale": (0.7, 0.7), "temporal_scale": (1.0, 1.0), "aspect_ratio": (0.75, 1.5),
        "num_blocks": 2, "max_temporal_keep": 1.0, "max_keep": None}
B, FRAMES, CROP = 2, 8, 96
ONE_EACH = {"target": 1, "student": 1, "other": 0, "recompiles": 0, "graph_breaks": 0}
LOSS_RTOL = 1e-5


@pytest.fixture(autouse=True)
def _fresh_dynamo_one_thread():
    # One intra-op thread: these models are tiny, and on a busy 2-core machine OpenMP's spinning
    # threads make each eager step ~100x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch._dynamo.reset()
    reset_compile_stats()
    yield
    torch._dynamo.reset()
    torch.set_num_threads(threads)


def tiny_vjepa(depth: int = 2):
    torch.manual_seed(0)
    return build_vjepa(
        "vit_tiny", crop_size=CROP, num_frames=FRAMES, patch_size=16, tubelet_size=2,
        embed_dim=64, depth=depth, num_heads=2, pred_embed_dim=32, pred_depth=1,
    )


def official_masks(cfgs=(SHORT, LONG)):
    return MultiBlock3DMaskCollator(
        list(cfgs), crop_size=CROP, num_frames=FRAMES, patch_size=16, tubelet_size=2
    )


def lengths(masks_enc, masks_pred) -> tuple[int, ...]:
    return tuple(m.shape[1] for m in (*masks_enc, *masks_pred))


def run_steps(model, steps: int, forward) -> tuple[list[float], set]:
    """The trainer's step in fp32 ``steps`` times: ``forward(step)`` -> (model output, the mask
    lengths it used), backward, AdamW (fixed values for what the schedules would set), EMA. Returns
    per-step losses and the mask lengths seen."""
    opt = build_optimizer(model.encoder, model.predictor)
    for g in opt.param_groups:
        g["lr"], g["weight_decay"] = 1e-3, 0.0 if g.get("WD_exclude") else 0.04
    losses, seen = [], set()
    for step in range(steps):
        out, mask_lengths = forward(step)
        seen.add(mask_lengths)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema_update_(model.target_encoder, model.encoder, 0.99)
        losses.append(out.loss.item())
    return losses, seen


def train(model, steps: int, collator=None) -> tuple[list[float], set]:
    """:func:`run_steps` on random clips and the collator's masks."""
    collator, gen = collator or official_masks(), torch.Generator().manual_seed(1)

    def forward(step):
        clips = torch.randn(B, 3, FRAMES, CROP, CROP, generator=gen)
        masks_enc, masks_pred = collator.sample(B, step)
        return model(clips, masks_enc, masks_pred), lengths(masks_enc, masks_pred)

    return run_steps(model, steps, forward)


def assert_same_runs(compiled, eager, run, steps: int, *, same_params: bool):
    """``run(model)`` -> (losses, mask lengths seen) on both models: the masks vary, the losses agree
    and, with ``same_params``, so do the weights bit for bit."""
    got, seen = run(compiled)
    want, _ = run(eager)
    assert len(seen) > steps // 2, f"mask lengths barely vary ({len(seen)} distinct in {steps} steps)"
    for step, (a, b) in enumerate(zip(got, want)):
        assert abs(a - b) <= LOSS_RTOL * abs(b), f"step {step}: compiled loss {a} vs eager {b}"
    if same_params:
        # Only where the compiled arithmetic is eager's: the key bias has a zero true gradient,
        # so AdamW turns any rounding difference in it into a full-size step.
        for (name, p), q in zip(compiled.named_parameters(), eager.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=0, msg=lambda m: f"{name}: {m}")


def assert_same_training(compiled, eager, steps: int, *, same_params: bool, collator=None):
    assert_same_runs(compiled, eager, lambda m: train(m, steps, collator), steps, same_params=same_params)


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_varying_masks_compile_once_and_match_eager(kernels, monkeypatch):
    """aot_eager: dynamo + AOT autograd with the masks' token dims symbolic; 20 steps, 2 graphs."""
    monkeypatch.setenv("VJEPA_FAST_KERNELS", kernels)
    if kernels == "triton":
        from vjepa_fast.kernels.testing import kernel_test_device

        if kernel_test_device() is None:
            pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    steps = 20 if kernels == "torch" else 3  # the Triton interpreter is slow
    eager = tiny_vjepa()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = compile_vjepa(copy.deepcopy(eager), backend=counter)
    assert_same_training(compiled, eager, steps, same_params=True)
    assert compile_stats() == ONE_EACH
    assert counter.frame_count == 2
    code = "\n".join(g.code for g in counter.graphs)
    for op in ("masked_gather", "assemble_predictor_input", "masked_l1_loss"):
        assert (f"torch.ops.vjepa_fast.{op}.default" in code) == (kernels == "triton"), op


@pytest.mark.slow
def test_inductor_training_smoke():
    """The real backend, short: inductor may add guards of its own on symbolic sizes. One mask
    generator, scalar CPU code and one compile thread keep the cold-cache compile to ~30 s of CPU."""
    eager = tiny_vjepa(depth=1)
    compiled = compile_vjepa(copy.deepcopy(eager), backend="inductor")
    with torch._inductor.config.patch({"cpp.vec_isa_ok": False, "compile_threads": 1}):
        assert_same_training(compiled, eager, steps=4, same_params=False, collator=official_masks([LONG]))
    assert compile_stats() == ONE_EACH


def test_static_baseline_recompiles_per_length():
    """The counter can fail: without dynamic token dims every new length tuple is a new graph."""
    model = compile_vjepa(tiny_vjepa(depth=1), backend="eager", dynamic_context=False)
    _, seen = train(model, 3)
    stats = compile_stats()
    assert stats["student"] == len(seen) == 3 and stats["recompiles"] == 2


def test_equal_lengths_in_the_first_step_do_not_specialise():
    """Duck shaping would give equal lengths one symbol and recompile when they differ."""
    model = compile_vjepa(tiny_vjepa(depth=1), backend="eager")
    collator = official_masks()
    clips = torch.randn(B, 3, FRAMES, CROP, CROP)
    masks_enc, masks_pred = collator.sample(B, 0)
    kc, kt = min(m.shape[1] for m in masks_enc), min(m.shape[1] for m in masks_pred)
    model(clips, [m[:, :kc] for m in masks_enc], [m[:, :kt] for m in masks_pred]).loss.backward()
    for step in (1, 2):
        masks_enc, masks_pred = collator.sample(B, step)
        assert len(set(lengths(masks_enc, masks_pred))) == 4
        model(clips, masks_enc, masks_pred).loss.backward()
    assert compile_stats() == ONE_EACH


def test_parameters_state_dict_and_deepcopy_are_the_eager_ones():
    eager = tiny_vjepa(depth=1)
    params = {n: p for n, p in eager.named_parameters()}
    keys = list(eager.state_dict())
    model = compile_vjepa(eager, backend="eager")
    assert model is eager and is_compiled(model)
    assert list(model.state_dict()) == keys and not any("_orig_mod" in k for k in keys)
    assert all(p is params[n] for n, p in model.named_parameters())

    clips = torch.randn(B, 3, FRAMES, CROP, CROP)
    masks_enc, masks_pred = official_masks().sample(B, 0)
    clone = copy.deepcopy(model)
    assert is_compiled(clone)
    with torch.no_grad():
        for p in clone.target_encoder.parameters():
            p.mul_(0.5)
        for p in clone.encoder.parameters():
            p.mul_(0.5)
        out, out_clone = model(clips, masks_enc, masks_pred), clone(clips, masks_enc, masks_pred)
        plain = copy.deepcopy(clone)
        plain.compiled_student = None
        del plain.target_encoder.forward
        ref = plain(clips, masks_enc, masks_pred)
    # The copy runs on its own parameters (a compiled function bound to the original would not).
    assert not torch.allclose(out.targets, out_clone.targets)
    torch.testing.assert_close(out_clone.targets, ref.targets)
    torch.testing.assert_close(out_clone.loss, ref.loss)


def test_refuses_cuda_graph_modes_with_dynamic_context():
    for mode in ("reduce-overhead", "max-autotune"):
        with pytest.raises(ValueError, match="CUDA graphs"):
            compile_vjepa(tiny_vjepa(depth=1), mode=mode)
    model = compile_vjepa(tiny_vjepa(depth=1), backend="eager")
    with pytest.raises(ValueError, match="already compiled"):
        compile_vjepa(model)


# -- V-JEPA 2: forward_groups (RoPE, per-group mask tokens, the group loss) ------------------------

V2_FRAMES = 8  # the model is built for max(dataset_fpcs); groups of 4 and 8 frames


def tiny_v2(depth: int = 2, activation_checkpointing: int = 0):
    torch.manual_seed(0)
    return build_vjepa(
        "vit_tiny", crop_size=CROP, num_frames=V2_FRAMES, patch_size=16, tubelet_size=2, embed_dim=64,
        depth=depth, num_heads=2, pred_embed_dim=32, pred_depth=1, pred_num_heads=2, num_mask_tokens=4,
        use_rope=True, depth_rescale=True, activation_checkpointing=activation_checkpointing,
    )


def v2_batches(splits, frames=(4, 8), cfgs=(SHORT, LONG)):
    """``step -> (clips, masks_enc, masks_pred)`` of a V2 multi-length batch: group g holds
    ``splits[step % len(splits)][g]`` clips of ``frames[g]`` frames, masks from the official
    collator (two generators by default) at that clip length (the V2 collator keys its
    generators by clip length)."""
    collators = {t: MultiBlock3DMaskCollator(list(cfgs), crop_size=CROP, num_frames=t, patch_size=16,
                                             tubelet_size=2) for t in frames}  # fmt: skip

    def batch(step):
        gen = torch.Generator().manual_seed(100 + step)
        sizes = splits[step % len(splits)]
        clips, me, mp = [], [], []
        for b, t in zip(sizes, frames):
            clips.append(torch.randn(b, 3, t, CROP, CROP, generator=gen))
            enc, pred = collators[t].sample(b, step)
            me.append(enc)
            mp.append(pred)
        return clips, me, mp

    return batch


def train_groups(model, steps: int, batch) -> tuple[list[float], set]:
    """:func:`run_steps` of the V2 step through forward_groups on ``batch(step)``."""

    def forward(step):
        clips, me, mp = batch(step)
        return model.forward_groups(clips, me, mp), tuple(m.shape[1] for ms in (*me, *mp) for m in ms)

    return run_steps(model, steps, forward)


def assert_same_group_training(compiled, eager, steps, batch):
    assert_same_runs(compiled, eager, lambda m: train_groups(m, steps, batch), steps, same_params=True)


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_v2_groups_compile_once_over_changing_masks(kernels, monkeypatch):
    """One clip-length group (every official V2 config): 1 target + 1 student graph over steps of
    new mask lengths, and the compiled training equals eager (aot_eager: bit-identical); with the
    encoder's and predictor's one block activation-checkpointed (traced as dynamo's checkpoint op)."""
    monkeypatch.setenv("VJEPA_FAST_KERNELS", kernels)
    if kernels == "triton":
        from vjepa_fast.kernels.testing import kernel_test_device

        if kernel_test_device() is None:
            pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    steps = 12 if kernels == "torch" else 3  # the Triton interpreter is slow
    eager = tiny_v2(depth=1, activation_checkpointing=1)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = compile_vjepa(copy.deepcopy(eager), backend=counter)
    batch = v2_batches([(B,)], frames=(8,))
    assert_same_group_training(compiled, eager, steps, batch)
    assert compile_stats() == ONE_EACH
    code = "\n".join(g.code for g in counter.graphs)
    for op in ("masked_gather", "rope_rotate_qk", "sorted_predictor_input", "masked_l1_loss"):
        assert (f"torch.ops.vjepa_fast.{op}.default" in code) == (kernels == "triton"), op


@pytest.mark.slow
def test_v2_two_groups_one_student_graph_whatever_the_split():
    """Two clip lengths whose share of the batch changes every step: the batch dims are dynamic, so
    one student graph serves every split; the target compiles once per clip length (its batch dim
    is dynamic too). A one-group batch is another structure: one more student graph. One mask
    generator keeps the (symbolic-shape heavy) trace short."""
    eager = tiny_v2(depth=1)
    compiled = compile_vjepa(copy.deepcopy(eager), backend="aot_eager")
    splits = [(2, 4), (3, 3), (4, 2), (5, 2)]
    assert_same_group_training(compiled, eager, 4, v2_batches(splits, cfgs=[LONG]))
    assert compile_stats() == {**ONE_EACH, "target": 2, "recompiles": 1}
    train_groups(compiled, 2, v2_batches([(4,)], frames=(8,), cfgs=[LONG]))
    assert compile_stats() == {**ONE_EACH, "target": 2, "student": 2, "recompiles": 2}
