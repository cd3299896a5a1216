"""Model construction, shapes, input validation and pos-embed handling."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vjepa_fast import VIT_PRESETS, AttentiveClassifier, VisionTransformer, VisionTransformerPredictor, build_encoder, build_vjepa
from vjepa_fast.attention import attention, attention_backend, set_attention_backend
from vjepa_fast.pos_embed import interpolate_pos_embed, sincos_table

FIXTURES = Path(__file__).parent / "fixtures"


def tiny_encoder(**kw):
    args = dict(img_size=64, patch_size=16, num_frames=8, tubelet_size=2, embed_dim=96, depth=2, num_heads=3, uniform_power=True)
    return VisionTransformer(**{**args, **kw})


@pytest.mark.parametrize(
    "name, millions",
    [("vit_large", 303.9), ("vit_huge", 631.6), ("vit_giant", 1012.2), ("vit_giant_xformers", 1012.2),
     ("vit_large_rope", 303.9)],  # head count and RoPE change no trainable shape
)
def test_preset_parameter_counts(name, millions):
    # Official encoder sizes (reference §1.1), trainable parameters only (pos_embed is frozen).
    with torch.device("meta"):
        enc = build_encoder(name, img_size=224, num_frames=16, uniform_power=True)
    n = sum(p.numel() for p in enc.parameters() if p.requires_grad)
    assert round(n / 1e6, 1) == millions


def test_presets_cover_official_names():
    v1 = {"vit_tiny", "vit_small", "vit_base", "vit_large", "vit_huge", "vit_giant", "vit_gigantic"}
    v2 = {"vit_giant_xformers", "vit_gigantic_xformers", "vit_large_rope", "vit_huge_rope", "vit_giant_rope",
          "vit_giant_xformers_rope", "vit_synthetic"}
    assert set(VIT_PRESETS) == v1 | v2
    assert VIT_PRESETS["vit_huge"]["embed_dim"] // VIT_PRESETS["vit_huge"]["num_heads"] == 80
    # The released ViT-g: 1408 wide, 40 layers, 22 heads of 64 (reference §8.1), MLP 6144.
    g = VIT_PRESETS["vit_giant_xformers"]
    assert (g["embed_dim"], g["depth"], g["num_heads"], int(g["embed_dim"] * g["mlp_ratio"])) == (1408, 40, 22, 6144)
    assert all(VIT_PRESETS[n].get("use_rope") for n in v2 if n.endswith("_rope"))
    # V1 names come first: looking a preset up by width (probe.py) still finds the V1 model.
    assert list(VIT_PRESETS)[:7] == ["vit_tiny", "vit_small", "vit_base", "vit_large", "vit_huge", "vit_giant", "vit_gigantic"]


def test_sincos_tables_match_official_checkpoint():
    ck = torch.load(FIXTURES / "official_parity" / "checkpoint.pth.tar", weights_only=True)
    enc = tiny_encoder()
    pred = VisionTransformerPredictor(img_size=64, num_frames=8, embed_dim=96, predictor_embed_dim=48, depth=1, num_heads=3, uniform_power=True)
    assert torch.equal(enc.pos_embed, ck["encoder"]["module.backbone.pos_embed"])
    assert torch.equal(pred.predictor_pos_embed, ck["predictor"]["module.backbone.predictor_pos_embed"])


def test_uniform_power_truncation_widths():
    # D=1024: three parts of 2*ceil(1024/6)=342 → 1026 columns cut to 1024 (reference §1.4).
    t = sincos_table(1024, 14, 8, uniform_power=True)
    assert t.shape == (1, 1568, 1024)
    t_plain = sincos_table(1024, 14, 8, uniform_power=False)
    assert not torch.equal(t, t_plain)
    # token 0 is (t,h,w)=(0,0,0): every sine is 0 and every cosine 1 in each axis block.
    assert torch.equal(t[0, 0, :171], torch.zeros(171)) and torch.equal(t[0, 0, 171:342], torch.ones(171))


def test_token_order_is_t_h_w_row_major():
    enc = tiny_encoder()
    x = torch.zeros(1, 3, 8, 64, 64)
    x[:, :, 2:4, 16:32, 48:64] = 1.0  # tubelet t=1, h=1, w=3
    with torch.no_grad():
        tokens = enc.patch_embed(x) - enc.patch_embed(torch.zeros_like(x))
    changed = tokens.abs().sum(-1).nonzero()[:, 1].tolist()
    assert changed == [1 * 16 + 1 * 4 + 3]


def test_forward_masks_equals_official_per_mask_passes():
    torch.manual_seed(0)
    enc = tiny_encoder()
    x = torch.randn(2, 3, 8, 64, 64)
    masks = [torch.stack([torch.randperm(64)[:10].sort().values for _ in range(2)]),
             torch.stack([torch.randperm(64)[:5].sort().values for _ in range(2)])]
    fast = enc.forward_masks(x, masks)
    for m, f in zip(masks, fast):
        assert torch.allclose(f, enc(x, masks=m), atol=1e-6, rtol=0)
    # Backbone semantics with equal lengths: masks concatenated along the batch.
    both = enc(x, masks=[masks[0], masks[0]])
    assert both.shape == (4, 10, 96) and torch.allclose(both[:2], both[2:])


def test_full_forward_shapes_video_and_image():
    enc = tiny_encoder()
    assert enc(torch.randn(2, 3, 8, 64, 64)).shape == (2, 64, 96)
    img = VisionTransformer(img_size=64, patch_size=16, num_frames=1, embed_dim=96, depth=1, num_heads=3)
    assert img(torch.randn(2, 3, 64, 64)).shape == (2, 16, 96)


def test_pos_embed_interpolates_to_other_sizes():
    enc = tiny_encoder()
    with torch.no_grad():
        out = enc(torch.randn(1, 3, 16, 96, 96))
    assert out.shape == (1, 8 * 6 * 6, 96)
    resized = interpolate_pos_embed(enc.pos_embed, (4, 4, 4), (8, 6, 6))
    grid = enc.pos_embed.reshape(1, 4, 4, 4, 96).permute(0, 4, 1, 2, 3)
    expect = F.interpolate(grid, scale_factor=(2.0, 1.5, 1.5), mode="trilinear").permute(0, 2, 3, 4, 1).reshape(1, -1, 96)
    assert torch.equal(resized, expect)
    assert interpolate_pos_embed(enc.pos_embed, (4, 4, 4), (4, 4, 4)) is enc.pos_embed


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(img_size=70), "not divisible by patch_size 16"),
        (dict(num_frames=7), "num_frames 7 is not divisible by tubelet_size 2"),
        (dict(num_heads=5), "num_heads=5 does not divide embed_dim=96"),
    ],
)
def test_bad_geometry_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_encoder(**kwargs)


def test_bad_input_shapes_name_the_shape():
    enc = tiny_encoder()
    with pytest.raises(ValueError, match=r"\(2, 3, 7, 64, 64\)"):
        enc(torch.randn(2, 3, 7, 64, 64))
    with pytest.raises(ValueError, match=r"\[B, C=3, T, H, W\]"):
        enc(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match="mask indices"):
        enc(torch.randn(2, 3, 8, 64, 64), masks=torch.arange(5))
    pred = VisionTransformerPredictor(img_size=64, num_frames=8, embed_dim=96, predictor_embed_dim=48, depth=1, num_heads=3)
    with pytest.raises(ValueError, match="predictor expects context"):
        pred(torch.randn(2, 5, 32), torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="num_heads=5 does not divide predictor_embed_dim=48"):
        VisionTransformerPredictor(img_size=64, num_frames=8, embed_dim=96, predictor_embed_dim=48, num_heads=5)


def test_v1_init_has_no_depth_rescale_and_zero_mask_tokens():
    torch.manual_seed(0)
    m = build_vjepa("vit_small", crop_size=64, num_frames=8, depth=4, pred_depth=2, pred_embed_dim=96)
    stds = [blk.mlp.fc2.weight.std().item() for blk in m.encoder.blocks]
    assert all(abs(s - 0.02) < 0.002 for s in stds), stds  # V1 re-init undoes the rescale
    assert all(torch.equal(t, torch.zeros_like(t)) for t in m.predictor.mask_tokens)
    assert not m.target_encoder.pos_embed.requires_grad and not any(p.requires_grad for p in m.target_encoder.parameters())
    rescaled = VisionTransformer(img_size=64, num_frames=8, embed_dim=96, depth=4, num_heads=3, depth_rescale=True)
    assert rescaled.blocks[3].mlp.fc2.weight.std().item() < 0.02 / 2.5


def test_probe_keeps_unused_output_projection():
    clf = AttentiveClassifier(embed_dim=96, num_heads=3, depth=2, num_classes=5)
    assert "pooler.cross_attention_block.xattn.proj.weight" in clf.state_dict()
    x = torch.randn(2, 7, 96)
    before = clf(x)
    with torch.no_grad():
        clf.pooler.cross_attention_block.xattn.proj.weight.add_(1.0)
    assert torch.equal(before, clf(x))  # the official probe never applies it


def test_attention_backend_switch():
    q, k, v = (torch.randn(2, 3, 17, 8) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v)
    with attention_backend("math"):
        assert torch.allclose(attention(q, k, v), ref, atol=1e-6)
    with pytest.raises(ValueError, match="unknown attention backend 'fast'"):
        set_attention_backend("fast")


# ------------------------------------------------------------------------------------------------
# V-JEPA 2: RoPE, SwiGLU, drop path, activation checkpointing, the V2 predictor and probe
# ------------------------------------------------------------------------------------------------

from vjepa_fast import AttentiveClassifierV2, jepa_loss_groups  # noqa: E402
from vjepa_fast.rope import apply_rope, rope_dim, rope_tables, rotate_pairs, split_positions  # noqa: E402
from vjepa_fast.vision_transformer import SwiGLU, swiglu_hidden  # noqa: E402


def tiny_v2(**kw):
    args = dict(crop_size=64, num_frames=8, embed_dim=96, depth=2, num_heads=3, pred_depth=2, pred_embed_dim=48,
                pred_num_heads=3, num_mask_tokens=4, use_rope=True, depth_rescale=True)
    return build_vjepa("vit_tiny", **{**args, **kw})


def random_masks(B, N, k, gen):
    return torch.stack([torch.randperm(N, generator=gen)[:k].sort().values for _ in range(B)])


def test_rope_split_and_tables_follow_the_official_formula():
    # head_dim 64 -> 20 channels each for t, h, w, 4 unrotated; 80 -> 26 + 2; 32 -> 10 + 2 (reference §8.1)
    assert [rope_dim(h) for h in (64, 80, 32, 16, 88)] == [20, 26, 10, 4, 28]
    ids = torch.tensor([[0, 5, 17, 63]])
    t, h, w = split_positions(ids, (4, 4))
    assert (t.tolist(), h.tolist(), w.tolist()) == ([[0, 0, 1, 3]], [[0, 1, 0, 3]], [[0, 1, 1, 3]])
    t, h, w = split_positions(torch.tensor([79]), (2, 5))  # non-square: W = 5
    assert (t.item(), h.item(), w.item()) == (7, 1, 4)
    cos, sin = rope_tables(ids, (4, 4), 32, torch.float64)
    assert cos.shape == (1, 1, 4, 30)
    d, half = 10, 5
    for axis, pos in enumerate((torch.tensor([0, 0, 1, 3]), torch.tensor([0, 1, 0, 3]), torch.tensor([0, 1, 1, 3]))):
        omega = 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)
        theta = pos[:, None].double() * omega
        chunk = slice(axis * d, (axis + 1) * d)
        # the d/2 angles twice in a row ("repeat"), not each twice ("interleave")
        assert torch.allclose(cos[0, 0, :, chunk], torch.cat([theta.cos(), theta.cos()], -1), atol=1e-12)
        assert torch.allclose(sin[0, 0, :, chunk], torch.cat([theta.sin(), theta.sin()], -1), atol=1e-12)


def test_apply_rope_rotates_adjacent_pairs_and_passes_the_rest():
    x = torch.randn(2, 3, 4, 32, dtype=torch.float64)
    ids = torch.tensor([[0, 5, 17, 63], [1, 2, 3, 60]])
    cos, sin = rope_tables(ids, (4, 4), 32, torch.float64)
    out = apply_rope(x, cos, sin)
    assert torch.equal(out[..., 30:], x[..., 30:])  # head_dim - 3·d channels are not rotated
    r = rotate_pairs(x[..., :30])
    assert torch.equal(r[..., 0::2], -x[..., 1:30:2]) and torch.equal(r[..., 1::2], x[..., 0:30:2])
    assert torch.allclose(out[..., :30], x[..., :30] * cos + r * sin)
    # token id 0 sits at (0, 0, 0): every angle is 0, nothing moves
    assert torch.allclose(out[0, :, 0], x[0, :, 0])


def test_rope_angles_in_the_activation_dtype_unless_asked_for_float32():
    ids = torch.arange(64)
    cos16, _ = rope_tables(ids, (4, 4), 64, torch.bfloat16)
    assert cos16.dtype == torch.bfloat16
    enc = tiny_encoder(use_rope=True, embed_dim=192, num_heads=3)
    rope = enc.rope_for(None, (4, 4, 4), "cpu")
    assert rope.tables(64, torch.bfloat16)[0].dtype == torch.bfloat16  # official: q/k's dtype
    enc32 = tiny_encoder(use_rope=True, embed_dim=192, num_heads=3, rope_angle_dtype="float32")
    assert enc32.rope_for(None, (4, 4, 4), "cpu").tables(64, torch.bfloat16)[0].dtype == torch.float32
    q = torch.randn(1, 3, 64, 64).bfloat16()
    assert enc32.rope_for(None, (4, 4, 4), "cpu").rotate(q, q)[0].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="rope_angle_dtype"):
        tiny_encoder(use_rope=True, rope_angle_dtype="float16")


def test_rope_encoder_has_no_position_table_and_uses_the_input_grid():
    enc = tiny_encoder(use_rope=True)
    assert enc.pos_embed is None and "pos_embed" not in enc.state_dict()
    x = torch.randn(1, 3, 16, 32, 80)  # 8 x 2 x 5 tokens, non-square, another frame count
    with torch.no_grad():
        out = enc(x)
    assert out.shape == (1, 80, 96)
    # with the config's grid instead (Hugging Face's behaviour) the positions, hence the output, differ
    enc_cfg = tiny_encoder(use_rope=True, handle_nonsquare_inputs=False)
    enc_cfg.load_state_dict(enc.state_dict())
    with torch.no_grad():
        assert not torch.allclose(enc_cfg(x), out, atol=1e-4)
        same = torch.randn(1, 3, 8, 64, 64)
        assert torch.equal(enc_cfg(same), enc(same))
    img = VisionTransformer(img_size=64, patch_size=16, num_frames=1, embed_dim=96, depth=1, num_heads=3, use_rope=True)
    assert img(torch.randn(2, 3, 64, 64)).shape == (2, 16, 96)
    with pytest.raises(ValueError, match="head_dim >= 6"):
        VisionTransformer(img_size=64, num_frames=8, embed_dim=12, depth=1, num_heads=3, use_rope=True)


def test_swiglu_width_and_v2_init():
    assert swiglu_hidden(4096, True) == 2736 and swiglu_hidden(4096, False) == 4096
    blk_mlp = SwiGLU(96, 384)
    assert blk_mlp.fc1.out_features == 256 and blk_mlp.fc3.in_features == 256
    torch.manual_seed(0)
    m = tiny_v2(depth=4, use_silu=True, use_pred_silu=True)
    assert isinstance(m.encoder.blocks[0].mlp, SwiGLU) and isinstance(m.predictor.predictor_blocks[0].mlp, SwiGLU)
    # V2 keeps the depth rescale: block i's fc2 (SwiGLU: the gate's second input, as official) / sqrt(2i)
    stds = [blk.mlp.fc2.weight.std().item() for blk in m.encoder.blocks]
    assert all(abs(s * (2 * i) ** 0.5 - 0.02) < 0.003 for i, s in enumerate(stds, 1)), stds
    assert m.predictor.predictor_pos_embed is None and "predictor_pos_embed" not in m.predictor.state_dict()


def test_drop_path_and_activation_checkpointing():
    torch.manual_seed(0)
    enc = tiny_encoder(use_rope=True, depth=3, drop_path_rate=0.5)
    rates = [blk.drop_path.p if hasattr(blk.drop_path, "p") else 0.0 for blk in enc.blocks]
    assert rates == pytest.approx([0.0, 0.25, 0.5])
    x = torch.randn(8, 3, 8, 64, 64)
    enc.eval()
    with torch.no_grad():
        a, b = enc(x), enc(x)
    assert torch.equal(a, b)  # eval: identity
    enc.train()
    with torch.no_grad():
        assert not torch.equal(enc(x), a)
    # Checkpointing recomputes, it does not change a number: outputs and every gradient equal.
    plain, ckpt = tiny_v2(), tiny_v2(activation_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.encoder.activation_checkpointing == 2 and ckpt.predictor.activation_checkpointing == 2
    gen = torch.Generator().manual_seed(1)
    clip = torch.randn(2, 3, 8, 64, 64, generator=gen)
    me, mp = [random_masks(2, 64, 20, gen)], [random_masks(2, 64, 30, gen)]
    outs = [m.forward_groups([clip], [me], [mp]) for m in (plain, ckpt)]
    for o in outs:
        o.loss.backward()
    assert torch.equal(outs[0].loss, outs[1].loss)
    for (n, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        if p.grad is not None:
            assert torch.equal(p.grad, q.grad), n
    with pytest.raises(ValueError, match="activation_checkpointing"):
        tiny_encoder(activation_checkpointing=5)


def test_v2_packed_and_sparse_paths_match_per_mask_passes():
    torch.manual_seed(0)
    m = tiny_v2()
    gen = torch.Generator().manual_seed(2)
    clip = torch.randn(2, 3, 8, 64, 64, generator=gen)
    me = [random_masks(2, 64, 20, gen), random_masks(2, 64, 9, gen)]
    mp = [random_masks(2, 64, 30, gen), random_masks(2, 64, 40, gen)]
    with torch.no_grad():
        ref_ctx = m.encoder.forward_masks(clip, me)
        ref_pred = m.predictor.forward_masks(ref_ctx, me, mp, mask_indices=[0, 0])
        for kw in (dict(packed=True), dict(sparse_embed=True), dict(packed=True, sparse_embed=True)):
            for got, ref in zip(m.encoder.forward_masks(clip, me, **kw), ref_ctx):
                assert torch.allclose(got, ref, atol=1e-5), kw
        for got, ref in zip(m.predictor.forward_masks(ref_ctx, me, mp, packed=True, mask_indices=[0, 0]), ref_pred):
            assert torch.allclose(got, ref, atol=1e-5)
        # the per-mask V2 encoder is the official backbone call with masks (positions from the ids)
        for m_, got in zip(me, ref_ctx):
            assert torch.equal(got, m.encoder(clip, masks=m_))


def test_forward_groups_multi_length_batch():
    """Two clip-length groups (8 and 4 frames, model built for 8): group g uses mask token g for
    each of its mask configs, and the loss is the mean of the four (group, config) terms."""
    torch.manual_seed(0)
    m = tiny_v2()
    with torch.no_grad():
        for t in m.predictor.mask_tokens:
            t.normal_()
    gen = torch.Generator().manual_seed(3)
    clips = [torch.randn(2, 3, 8, 64, 64, generator=gen), torch.randn(3, 3, 4, 64, 64, generator=gen)]
    me = [[random_masks(2, 64, 20, gen), random_masks(2, 64, 10, gen)], [random_masks(3, 32, 10, gen), random_masks(3, 32, 6, gen)]]
    mp = [[random_masks(2, 64, 30, gen), random_masks(2, 64, 40, gen)], [random_masks(3, 32, 12, gen), random_masks(3, 32, 20, gen)]]
    out = m.forward_groups(clips, me, mp)
    assert [h.shape for h in out.targets] == [(2, 64, 96), (3, 32, 96)]
    terms = []
    with torch.no_grad():
        for g in range(2):
            for i in range(2):
                ctx = m.encoder(clips[g], masks=me[g][i])
                want = m.predictor(ctx, me[g][i], mp[g][i], mask_index=g)
                assert torch.equal(out.preds[g][i], want), (g, i)
                wrong = m.predictor(ctx, me[g][i], mp[g][i], mask_index=i if g == 0 else 0)
                if (i if g == 0 else 0) != g:
                    assert not torch.allclose(out.preds[g][i], wrong, atol=1e-3)
                t = F.layer_norm(out.targets[g], (96,)).gather(1, mp[g][i].unsqueeze(-1).expand(-1, -1, 96))
                terms.append((want - t).abs().mean())
    assert torch.allclose(out.loss, torch.stack(terms).mean(), atol=1e-6, rtol=0)
    assert torch.allclose(jepa_loss_groups(out.preds, out.targets, mp), out.loss)
    out.loss.backward()
    grads = [t.grad is not None for t in m.predictor.mask_tokens]
    assert grads == [True, True, False, False]  # tokens of the two groups only
    with pytest.raises(ValueError, match="clip-length group"):
        m.forward_groups(clips, me, mp[:1])


def test_v2_probe_order_init_and_no_output_projection():
    torch.manual_seed(0)
    clf = AttentiveClassifierV2(embed_dim=96, num_heads=3, depth=3, num_classes=5)
    sd = clf.state_dict()
    assert not any("xattn.proj" in k for k in sd) and "pooler.blocks.1.attn.qkv.weight" in sd
    assert all(m.eps == 1e-5 for m in clf.modules() if isinstance(m, torch.nn.LayerNorm))
    pooler = clf.pooler
    assert abs(pooler.blocks[1].mlp.fc2.weight.std().item() * 2 - 0.02) < 0.002  # / sqrt(2·2)
    assert abs(pooler.cross_attention_block.mlp.fc2.weight.std().item() * 2 - 0.02) < 0.002  # / sqrt(2·(1+1))
    x = torch.randn(2, 7, 96)
    with torch.no_grad():
        # the self-attention blocks run over the tokens first, then one query cross-attends
        tokens = x
        for blk in pooler.blocks:
            tokens = blk(tokens)
        q = pooler.cross_attention_block(pooler.query_tokens.expand(2, -1, -1), tokens)
        assert torch.equal(clf(x), clf.linear(q[:, 0]))
    assert AttentiveClassifierV2(embed_dim=96, num_heads=3, depth=2, num_classes=5, norm_eps=1e-6).pooler.blocks[0].norm1.eps == 1e-6
