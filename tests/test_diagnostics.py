"""context_use: the three losses are what they claim to be, against direct computations."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vjepa_fast.diagnostics import ContextUse, context_use
from vjepa_fast.jepa import build_vjepa
from vjepa_fast.masks import MultiBlock3DMaskCollator

MASKS = [
    {"spatial_scale": (0.15, 0.15), "temporal_scale": (1.0, 1.0), "aspect_ratio": (0.75, 1.5), "num_blocks": 8},
    {"spatial_scale": (0.7, 0.7), "temporal_scale": (1.0, 1.0), "aspect_ratio": (0.75, 1.5), "num_blocks": 2},
]
B, FRAMES, CROP, PATCH = 5, 4, 48, 8  # odd batch, 6 x 6 x 2 tokens


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = build_vjepa("vit_tiny", crop_size=CROP, num_frames=FRAMES, patch_size=PATCH, embed_dim=48, depth=2,
                        num_heads=2, pred_embed_dim=24, pred_depth=1, num_mask_tokens=2).eval()
    clips = torch.randn(B, 3, FRAMES, CROP, CROP, generator=torch.Generator().manual_seed(1))
    masks_enc, masks_pred = MultiBlock3DMaskCollator(MASKS, crop_size=CROP, num_frames=FRAMES, patch_size=PATCH,
                                                     tubelet_size=2).sample(B, 0)
    return model, clips, masks_enc, masks_pred


def direct_l1(preds, h, masks_pred):
    t = F.layer_norm(h, h.shape[-1:])
    per_gen = [(p - torch.stack([t[b, m[b]] for b in range(len(m))])).abs().mean() for p, m in zip(preds, masks_pred)]
    return float(sum(per_gen) / len(per_gen))


def test_losses_match_direct_computation(setup):
    model, clips, masks_enc, masks_pred = setup
    r = context_use(model, clips, masks_enc, masks_pred)
    with torch.no_grad():
        h = model.target_encoder(clips)
        own = direct_l1(model.forward_context(clips, masks_enc, masks_pred)[1], h, masks_pred)
        # another clip's context: clip b reads clip b-1's
        other = direct_l1(model.forward_context(clips[[B - 1, *range(B - 1)]], masks_enc, masks_pred)[1], h,
                          masks_pred)
        med = F.layer_norm(h, h.shape[-1:]).median(dim=0).values
        position = direct_l1([torch.stack([med[m[b]] for b in range(B)]) for m in masks_pred], h, masks_pred)
    assert r.own == pytest.approx(own, rel=1e-5)
    assert r.other == pytest.approx(other, rel=1e-5)
    assert r.position == pytest.approx(position, rel=1e-5)
    assert r.clips == B
    assert r.own != r.other  # a random predictor does read its context


def test_a_predictor_blind_to_content_scores_the_same_on_any_context(setup):
    model, clips, masks_enc, masks_pred = setup
    with torch.no_grad():  # the context enters the predictor only through predictor_embed
        model.predictor.predictor_embed.weight.zero_()
        model.predictor.predictor_embed.bias.zero_()
    r = context_use(model, clips, masks_enc, masks_pred)
    assert r.own == r.other and r.gain == 0.0
    assert not r.uses_context()
    assert "ignores the context" in r.format()


def test_verdict():
    assert ContextUse(own=0.3, other=0.6, position=0.5, clips=8).uses_context()
    assert not ContextUse(own=0.3, other=0.6, position=0.25, clips=8).uses_context()  # position alone is better
    assert not ContextUse(own=0.3, other=0.301, position=0.5, clips=8).uses_context()  # 0.3 % gain
    d = ContextUse(own=0.3, other=0.6, position=0.5, clips=8).to_dict()
    assert d["gain"] == pytest.approx(0.5) and d["uses_context"] is True


def test_needs_two_clips(setup):
    model, clips, masks_enc, masks_pred = setup
    with pytest.raises(ValueError, match=r"at least 2 clips.*\(1, 3, 4, 48, 48\)"):
        context_use(model, clips[:1], [m[:1] for m in masks_enc], [m[:1] for m in masks_pred])


def test_checkpoint_without_our_config_is_a_clear_error(setup, tmp_path):
    from vjepa_fast.checkpoint import prefixed
    from vjepa_fast.diagnostics import checkpoint_context_use

    model = setup[0]
    path = tmp_path / "official.pth.tar"
    torch.save({"encoder": prefixed(model.encoder), "predictor": prefixed(model.predictor),
                "target_encoder": prefixed(model.target_encoder), "epoch": 1}, path)
    with pytest.raises(ValueError, match=r"official.pth.tar has no vjepa_fast.config"):
        checkpoint_context_use(path, tmp_path / "unused.csv")
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        checkpoint_context_use(path, tmp_path / "unused.csv", batch_size=1)
