"""Packed context (all masks' tokens in one sequence, attention kept within each mask) and the
sparse patch embed (only kept tubelets embedded): the same outputs and every gradient as the
per-mask path, eager and compiled.

The model is tiny but has the real structure: video tubelets, two mask generators with their own
mask tokens, a multi-head predictor. Every trainable parameter is perturbed away from its V1 init
(zero mask tokens and zero biases would hide a mask token used for the wrong mask, or a bias
applied twice).
"""
from __future__ import annotations

import copy
import math

import pytest
import torch

from vjepa_fast import packed
from vjepa_fast.compile import compile_stats, compile_vjepa, reset_compile_stats
from vjepa_fast.jepa import build_vjepa
from vjepa_fast.masks import MultiBlock3DMaskCollator
from vjepa_fast.packed import Packing, block_diagonal_mask, document_attention, segment_ids
from vjepa_fast.vision_transformer import PatchEmbed, VisionTransformer
from helpers import rel

SHORT = {"spatial_scale": (0.15, 0.15), "temporal_scale": (1.0, 1.0), "aspect_ratio": (0.75, 1.5),
         "num_blocks": 8, "max_temporal_keep": 1.0, "max_keep": None}
LONG = {"spatial_scale": (0.7, 0.7), "temporal_scale": (1.0, 1.0), "aspect_ratio": (0.75, 1.5),
        "num_blocks": 2, "max_temporal_keep": 1.0, "max_keep": None}
B, FRAMES, CROP, PATCH = 2, 8, 64, 8  # a 4 x 8 x 8 token grid
N = (FRAMES // 2) * (CROP // PATCH) ** 2
# Relative (norm) tolerances. The packed outputs come out bit-identical on CPU; gradients differ by
# float rounding only (~5e-7): parameter gradients sum over more tokens per matmul in one pass.
OUT_TOL, GRAD_TOL = 1e-6, 3e-6
VARIANTS = {"packed": (True, False), "sparse_embed": (False, True), "packed+sparse_embed": (True, True)}
ONE_EACH = {"target": 1, "student": 1, "other": 0, "recompiles": 0, "graph_breaks": 0}
# Eager flex_attention on CPU is PyTorch's unfused reference, which says so once per process.
EAGER_FLEX = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


@pytest.fixture(autouse=True)
def _one_thread_default_impl():
    # Tiny models on a shared 2-core machine: OpenMP's spinning threads only slow them down.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    impl = packed.get_packed_attention()
    yield
    packed.set_packed_attention(impl)
    torch.set_num_threads(threads)


def tiny_vjepa(crop: int = CROP, patch: int = PATCH, **kw):
    torch.manual_seed(0)
    model = build_vjepa(
        "vit_tiny", crop_size=crop, num_frames=FRAMES, patch_size=patch, tubelet_size=2, embed_dim=64,
        depth=2, num_heads=4, pred_embed_dim=32, pred_depth=2, pred_num_heads=4, **kw,
    )
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
    return model


def official_masks(crop: int = CROP, patch: int = PATCH):
    return MultiBlock3DMaskCollator(
        [SHORT, LONG], crop_size=crop, num_frames=FRAMES, patch_size=patch, tubelet_size=2
    )


def random_masks(lengths, n: int = N, batch: int = B) -> list[torch.Tensor]:
    return [torch.stack([torch.randperm(n)[:k].sort().values for _ in range(batch)]) for k in lengths]


def student_step(model, clips, masks_enc, masks_pred, *, pack: bool, sparse: bool):
    """forward_student + backward on ``model`` with the given flags; outputs and every gradient
    (parameters and the clip)."""
    model.pack_context, model.sparse_patch_embed = pack, sparse
    model.zero_grad(set_to_none=True)
    clips = clips.clone().requires_grad_(True)
    h = model.forward_target(clips.detach())
    loss, _, _, preds, ctx = model.forward_student(clips, masks_enc, masks_pred, h)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    grads["clips"] = clips.grad.clone()
    return {"loss": loss.detach(), "preds": [z.detach() for z in preds], "ctx": [z.detach() for z in ctx],
            "grads": grads}


def assert_same_step(got: dict, want: dict, out_tol: float = OUT_TOL, grad_tol: float = GRAD_TOL) -> None:
    assert rel(got["loss"], want["loss"]) <= out_tol, (got["loss"], want["loss"])
    for what in ("preds", "ctx"):
        assert len(got[what]) == len(want[what])
        for i, (a, b) in enumerate(zip(got[what], want[what])):
            assert a.shape == b.shape and a.dtype == b.dtype, (what, i, a.shape, b.shape, a.dtype, b.dtype)
            assert rel(a, b) <= out_tol, f"{what}[{i}]: {rel(a, b):.2e}"
    assert set(got["grads"]) == set(want["grads"])
    # Every trainable parameter of the student gets a gradient (mask tokens included).
    assert len(want["grads"]) > 40
    for name, b in want["grads"].items():
        assert b.norm() > 0, name
        assert rel(got["grads"][name], b) <= grad_tol, f"grad {name}: {rel(got['grads'][name], b):.2e}"


# ---------------------------------------------------------------------------------------------------
# The attention itself


def naive_document_attention(q, k, v, lengths):
    """softmax(q k^T / sqrt(d)) v per document, in float64, concatenated."""
    outs, start = [], 0
    for n in lengths:
        qi, ki, vi = (t[:, :, start:start + n].double() for t in (q, k, v))
        w = torch.softmax(qi @ ki.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        outs.append(w @ vi)
        start += n
    return torch.cat(outs, dim=2)


@pytest.mark.parametrize("lengths", [(1, 7, 30, 2), (37,), (5, 1), (130, 3)])
@pytest.mark.parametrize("impl", ["split", "mask"])
def test_document_attention_matches_naive_per_segment(impl, lengths):
    L = sum(lengths)
    q, k, v = (torch.randn(2, 3, L, 16, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = document_attention(q, k, v, Packing(lengths, impl=impl))
    ref = naive_document_attention(q, k, v, lengths)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(out, (q, k, v), g)
    want = torch.autograd.grad(ref, (q, k, v), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@EAGER_FLEX
@pytest.mark.parametrize("lengths", [(1, 7, 30, 2), (130, 3), (200,)])
def test_flex_document_attention_forward(lengths):
    """flex_attention with the document BlockMask (including a boundary inside a 128-token block).
    Forward only: PyTorch has no flex backward on CPU."""
    L = sum(lengths)
    q, k, v = (torch.randn(2, 3, L, 16) for _ in range(3))
    out = document_attention(q, k, v, Packing(lengths, impl="flex"))
    ref = naive_document_attention(q, k, v, lengths)
    assert rel(out, ref) <= 1e-6


@EAGER_FLEX
def test_flex_block_mask_is_built_on_the_tensors_device(monkeypatch):
    """create_block_mask(device=None) takes the current accelerator (CUDA in any CUDA build of
    torch 2.11+): a Packing without a device must still build its BlockMask where its segment ids
    live. The accelerator is faked as "meta" here, which a CPU-only build has not got."""
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda *a, **k: torch.device("meta"))
    lengths = (1, 7, 30, 2)
    packing = Packing(lengths, impl="flex")
    assert packing.block_mask.kv_num_blocks.device == torch.device("cpu")
    q, k, v = (torch.randn(2, 3, sum(lengths), 16) for _ in range(3))
    assert rel(document_attention(q, k, v, packing), naive_document_attention(q, k, v, lengths)) <= 1e-6


def _packed_qkv(lengths, heads=4, head_dim=8, batch=2):
    """q, k, v laid out as a block's qkv projection leaves them: [B, L, 3, heads, head_dim] permuted."""
    qkv = torch.randn(batch, sum(lengths), 3, heads, head_dim)
    return qkv.permute(2, 0, 3, 1, 4).unbind(0)


def test_split_documents_have_strides_of_their_own_length(monkeypatch):
    """cuDNN keys its attention-graph cache on the q/k/v shapes *and strides* and builds a graph
    on every miss; its backward graph also bakes in the output gradient's strides, which torch
    2.11's key does not hold. A document's q, k, v and output gradient must therefore look the
    same whatever the other documents' lengths: slices of the packed tensors would carry the
    packed total in their batch stride, making every new total (every training step) a new key,
    and a gradient with another total would be read through a cached graph's stale strides."""
    seen, grads = [], []

    def recording_attention(q, k, v, backend=None):
        seen.append(tuple((tuple(t.shape), t.stride()) for t in (q, k, v)))
        out = real(q, k, v, backend)
        out.register_hook(lambda g: grads.append((tuple(g.shape), g.stride())))
        return out

    real = packed.attention
    monkeypatch.setattr(packed, "attention", recording_attention)
    first = {}
    for lengths in [(5, 7), (5, 9, 3)]:
        seen.clear()
        grads.clear()
        q, k, v = (t.detach().requires_grad_() for t in _packed_qkv(lengths))
        out = document_attention(q, k, v, Packing(lengths, impl="split"))
        assert rel(out, naive_document_attention(q, k, v, lengths)) <= 1e-6
        out.backward(torch.randn_like(out))
        # Hooks run in backward order: the first document's gradient arrives last.
        first[lengths] = (seen[0], grads[-1])
    assert first[(5, 7)] == first[(5, 9, 3)]
    # Both in the token-major layout a projection writes ([B, n, heads, head_dim] storage).
    heads, head_dim = 4, 8
    token_major = (5 * heads * head_dim, head_dim, heads * head_dim, 1)
    (q_layout, *_), grad_layout = first[(5, 7)]
    assert q_layout[1] == token_major and grad_layout[1] == token_major


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex backward needs CUDA")
def test_flex_document_attention_backward_cuda():
    lengths = (364, 103, 1)
    q, k, v = (torch.randn(2, 4, sum(lengths), 64, device="cuda", requires_grad=True) for _ in range(3))
    out = document_attention(q, k, v, Packing(lengths, device="cuda", impl="flex"))
    ref = naive_document_attention(q, k, v, lengths)
    assert rel(out, ref) <= 1e-5
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g.double())):
        assert rel(a, b) <= 1e-4


def test_segment_ids_and_mask():
    assert segment_ids((2, 1, 3)).tolist() == [0, 0, 1, 2, 2, 2]
    m = block_diagonal_mask((2, 1))
    assert m.tolist() == [[True, True, False], [True, True, False], [False, False, True]]


def test_packing_errors():
    q = torch.randn(1, 1, 5, 4)
    with pytest.raises(ValueError, match="packed length 5"):
        document_attention(q, q, q, Packing((2, 2)))
    with pytest.raises(ValueError, match="unknown packed attention"):
        packed.set_packed_attention("nope")
    with pytest.raises(ValueError, match="at least one"):
        Packing(())
    assert Packing((3, 4)).impl == "split"  # what "auto" picks


# ---------------------------------------------------------------------------------------------------
# The sparse patch embed


@pytest.mark.parametrize("video, size", [(True, 64), (True, 80), (False, 64)])
def test_sparse_patch_embed_equals_conv_then_gather(video, size):
    """Forward and every gradient (weight, bias, input), at the model's input size and at another
    (80 px: interpolated positions), for tubelets (Conv3d) and image patches (Conv2d)."""
    torch.manual_seed(0)
    frames = FRAMES if video else 1
    enc = VisionTransformer(img_size=64, patch_size=PATCH, num_frames=frames, embed_dim=64, depth=1,
                            num_heads=4)
    shape = (B, 3, frames, size, size) if video else (B, 3, size, size)
    x = torch.randn(shape, requires_grad=True)
    n = (frames // 2 if video else 1) * (size // PATCH) ** 2
    idx = random_masks([n // 3], n=n)[0]
    idx[0, :2] = torch.tensor([0, n - 1])  # first and last token: the index arithmetic's corners

    tokens, pos = enc.embed(x)
    ref = tokens.gather(1, idx[..., None].expand(-1, -1, 64)) + pos[0][idx]
    got = enc.embed_tokens(x, idx)
    assert rel(got, ref) <= OUT_TOL
    g = torch.randn_like(ref)
    params = (x, enc.patch_embed.proj.weight, enc.patch_embed.proj.bias)
    got_grads, ref_grads = torch.autograd.grad(got, params, g), torch.autograd.grad(ref, params, g)
    for name, a, b in zip(("x", "weight", "bias"), got_grads, ref_grads):
        assert rel(a, b) <= OUT_TOL, name


def test_sparse_patch_embed_keeps_the_gather_dtype_under_autocast():
    enc = VisionTransformer(img_size=64, patch_size=PATCH, num_frames=FRAMES, embed_dim=64, depth=1,
                            num_heads=4)
    x = torch.randn(B, 3, FRAMES, 64, 64)
    idx = random_masks([20])[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = enc.embed_tokens(x, idx)
        tokens, pos = enc.embed(x)
    assert got.dtype == tokens.dtype == torch.bfloat16


def test_patch_embed_forward_tokens_is_conv_order():
    """The flattened weight order (c, t, h, w) is the one the strided clip is read in."""
    pe = PatchEmbed(4, 2, 3, 8, video=True)
    x = torch.randn(1, 3, 4, 8, 8)
    idx = torch.arange(2 * 2 * 2)[None]
    torch.testing.assert_close(pe.forward_tokens(x, idx, (2, 2, 2)), pe(x), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# The whole student: packed / sparse vs per-mask


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_student_matches_per_mask_official_masks(variant, kernels, monkeypatch):
    monkeypatch.setenv("VJEPA_FAST_KERNELS", kernels)
    steps = 3
    if kernels == "triton":
        from vjepa_fast.kernels.testing import kernel_test_device

        if kernel_test_device() is None:
            pytest.skip("needs CUDA or TRITON_INTERPRET=1")
        steps = 1  # the Triton interpreter is slow
    pack, sparse = VARIANTS[variant]
    model, collator, gen = tiny_vjepa(), official_masks(), torch.Generator().manual_seed(1)
    seen = set()
    for step in range(steps):
        clips = torch.randn(B, 3, FRAMES, CROP, CROP, generator=gen)
        masks_enc, masks_pred = collator.sample(B, step)
        seen.add(tuple(m.shape[1] for m in (*masks_enc, *masks_pred)))
        want = student_step(model, clips, masks_enc, masks_pred, pack=False, sparse=False)
        got = student_step(model, clips, masks_enc, masks_pred, pack=pack, sparse=sparse)
        assert_same_step(got, want)
    assert len(seen) == steps


@pytest.mark.parametrize(
    "kc, kt",
    [((1, 40), (60, 5)), ((13, 1, 40), (30, 5, 64)), ((50,), (7,))],
    ids=["one-context-token", "three-masks-unequal", "one-mask"],
)
@pytest.mark.parametrize("variant", ["packed", "packed+sparse_embed"])
def test_student_matches_per_mask_odd_lengths(kc, kt, variant):
    pack, sparse = VARIANTS[variant]
    model = tiny_vjepa(num_mask_tokens=len(kc))
    clips = torch.randn(B, 3, FRAMES, CROP, CROP)
    masks_enc, masks_pred = random_masks(kc), random_masks(kt)
    want = student_step(model, clips, masks_enc, masks_pred, pack=False, sparse=False)
    got = student_step(model, clips, masks_enc, masks_pred, pack=pack, sparse=sparse)
    assert_same_step(got, want)


def test_student_packed_with_dense_mask_attention():
    packed.set_packed_attention("mask")
    model = tiny_vjepa()
    clips = torch.randn(B, 3, FRAMES, CROP, CROP)
    masks_enc, masks_pred = official_masks().sample(B, 0)
    want = student_step(model, clips, masks_enc, masks_pred, pack=False, sparse=False)
    got = student_step(model, clips, masks_enc, masks_pred, pack=True, sparse=True)
    # A masked softmax over L keys sums in another order than one over each mask's own keys.
    assert_same_step(got, want, out_tol=3e-6)


@EAGER_FLEX
def test_student_packed_flex_forward():
    packed.set_packed_attention("flex")
    model = tiny_vjepa()
    clips = torch.randn(B, 3, FRAMES, CROP, CROP)
    masks_enc, masks_pred = official_masks().sample(B, 0)
    with torch.no_grad():
        h = model.forward_target(clips)
        want = model.forward_student(clips, masks_enc, masks_pred, h)
        model.pack_context = model.sparse_patch_embed = True
        got = model.forward_student(clips, masks_enc, masks_pred, h)
    for a, b in zip([*got[3], *got[4]], [*want[3], *want[4]]):
        assert rel(a, b) <= 3e-6


def test_packed_under_bf16_autocast_keeps_dtypes():
    model = tiny_vjepa()
    clips = torch.randn(B, 3, FRAMES, CROP, CROP)
    masks_enc, masks_pred = official_masks().sample(B, 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = student_step(model, clips, masks_enc, masks_pred, pack=False, sparse=False)
        got = student_step(model, clips, masks_enc, masks_pred, pack=True, sparse=True)
    for a, b in zip([*got["preds"], *got["ctx"]], [*want["preds"], *want["ctx"]]):
        assert a.dtype == b.dtype == torch.bfloat16
        assert rel(a, b) <= 1e-2  # bf16 rounding of differently blocked matmuls (~1e-3 seen)


def test_default_is_per_mask_and_out_layers_refuse_packing():
    model = build_vjepa("vit_tiny", crop_size=CROP, num_frames=FRAMES, patch_size=PATCH, embed_dim=64,
                        depth=1, num_heads=4, pred_embed_dim=32, pred_depth=1)
    assert model.pack_context is False and model.sparse_patch_embed is False
    enc = VisionTransformer(img_size=CROP, patch_size=PATCH, num_frames=FRAMES, embed_dim=64, depth=2,
                            num_heads=4, out_layers=[0, 1])
    with pytest.raises(ValueError, match="out_layers"):
        enc.forward_masks(torch.randn(B, 3, FRAMES, CROP, CROP), random_masks([5, 6]), packed=True)


# ---------------------------------------------------------------------------------------------------
# torch.compile: one student graph for every mask length


@pytest.fixture
def _fresh_dynamo():
    torch._dynamo.reset()
    reset_compile_stats()
    yield
    torch._dynamo.reset()


def compile_case():
    """test_compile.py's geometry (96 px, patch 16), so inductor sees the sizes it sees there."""
    return tiny_vjepa(crop=96, patch=16, pack_context=True, sparse_patch_embed=True), official_masks(96, 16)


def train_losses(model, collator, steps: int, grad: bool = True) -> tuple[list[torch.Tensor], set]:
    gen, losses, seen = torch.Generator().manual_seed(1), [], set()
    for step in range(steps):
        clips = torch.randn(B, 3, FRAMES, 96, 96, generator=gen)
        masks_enc, masks_pred = collator.sample(B, step)
        seen.add(tuple(m.shape[1] for m in (*masks_enc, *masks_pred)))
        with torch.set_grad_enabled(grad):
            out = model(clips, masks_enc, masks_pred)
            if grad:
                out.loss.backward()
        losses.append(out.loss.detach())
    return losses, seen


def test_packed_student_compiles_once(_fresh_dynamo):
    """aot_eager (dynamo + AOT autograd): packed context, sparse embed and split attention trace
    with symbolic mask lengths; the compiled step equals the eager one bit for bit."""
    eager, collator = compile_case()
    compiled = compile_vjepa(copy.deepcopy(eager), backend="aot_eager")
    got, seen = train_losses(compiled, collator, 8)
    assert len(seen) > 4
    assert compile_stats() == ONE_EACH
    want, _ = train_losses(eager, collator, 8)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    # Parameter gradients accumulated over the 8 steps, compiled vs eager.
    for (name, p), q in zip(compiled.named_parameters(), eager.parameters()):
        if q.grad is not None:
            assert rel(p.grad, q.grad) <= 1e-6, name


def test_packed_flex_student_traces_once_forward_only(_fresh_dynamo):
    """flex_attention and its BlockMask built from symbolic lengths trace into the one student
    graph (forward only: no flex backward on CPU, and inductor's CPU flex template does not
    compile with symbolic lengths, so aot_eager)."""
    packed.set_packed_attention("flex")
    eager, collator = compile_case()
    compiled = compile_vjepa(copy.deepcopy(eager), backend="aot_eager")
    got, seen = train_losses(compiled, collator, 5, grad=False)
    assert len(seen) > 2
    assert compile_stats() == ONE_EACH
    packed.set_packed_attention("split")
    want, _ = train_losses(eager, collator, 5, grad=False)
    for a, b in zip(got, want):
        assert rel(a, b) <= 1e-6


@pytest.mark.slow
def test_packed_inductor_training_smoke(_fresh_dynamo):
    """The real backend, short (~60 s of CPU on a cold cache): 1 + 1 graphs, losses as eager."""
    eager, collator = compile_case()
    compiled = compile_vjepa(copy.deepcopy(eager), backend="inductor")
    with torch._inductor.config.patch({"cpp.vec_isa_ok": False, "compile_threads": 1}):
        got, seen = train_losses(compiled, collator, 4)
    assert len(seen) > 2
    assert compile_stats() == ONE_EACH
    want, _ = train_losses(eager, collator, 4)
    for a, b in zip(got, want):
        assert rel(a, b) <= 1e-5
