"""Hugging Face V-JEPA 2 checkpoints (vjepa_fast.hf_vjepa2) against outputs transformers computed
(tests/fixtures/README.md, "Hugging Face V-JEPA 2"; key_map.md).

Every directory listed in VJEPA_HF_VJEPA2_CASES (os.pathsep-separated; default the bundled
``hf_vjepa2``) must hold ``case.pt``, ``model/`` and ``classifier/``; a missing one fails. Outputs must
match to 5e-6 relative (the fixture README's limit; transformers' own float32 variations stay under
1e-6). Saving goes back to the same format: the saved files carry Hugging Face's names and shapes
and reload to the same outputs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from vjepa_fast import AttentiveClassifierV2, build_vjepa, load_vjepa2_checkpoint
from vjepa_fast.checkpoint import CheckpointError
from vjepa_fast.hf_vjepa2 import (
    encoder_to_hf, hf_predict, hf_to_encoder, hf_to_predictor, hf_to_probe, hf_video_to_clip, load_hf_vjepa2,
    predictor_to_hf, probe_to_hf, read_hf_weights, save_hf_vjepa2,
)
from helpers import rel

FIXTURES = Path(__file__).parent / "fixtures"
CASES = [Path(p) for p in os.environ.get("VJEPA_HF_VJEPA2_CASES", str(FIXTURES / "hf_vjepa2")).split(os.pathsep) if p]
TOL = 5e-6


@pytest.fixture(params=CASES, ids=lambda p: p.name)
def case_dir(request) -> Path:
    return request.param


def load_case(case_dir: Path) -> dict:
    assert (case_dir / "case.pt").is_file(), f"HF V-JEPA 2 case {case_dir} has no case.pt"
    for sub in ("model", "classifier"):
        assert (case_dir / sub / "config.json").is_file(), f"HF V-JEPA 2 case {case_dir} has no {sub}/config.json"
    return torch.load(case_dir / "case.pt", map_location="cpu", weights_only=True)


def video_of(case: dict, key: str = "video_int8", where: dict | None = None) -> torch.Tensor:
    return (where or case)[key].float() * case["video_scale"]


def check_base_outputs(m, case: dict) -> None:
    video = video_of(case)
    masked = hf_predict(m.encoder, m.predictor, video, case["context_mask"], case["target_mask"])
    for key in ("encoder_out", "masked_hidden_state", "target_hidden_state", "pred_out"):
        assert masked[key].shape == case[key].shape, key
        r = rel(masked[key], case[key])
        assert r <= TOL, f"{key}: {r:.3g}"
    full = hf_predict(m.encoder, m.predictor, video)
    r = rel(full["pred_out"], case["pred_out_full"])
    assert r <= TOL, f"pred_out_full: {r:.3g}"
    clip = hf_video_to_clip(video, m.encoder.tubelet_size)
    with torch.no_grad():
        # official training semantics: the context tokens alone through the encoder
        ctx = m.encoder(clip, masks=case["context_mask"])
        r = rel(ctx, case["context_encoder_out"])
        assert r <= TOL, f"context_encoder_out: {r:.3g}"
        pred = m.predictor(ctx, case["context_mask"], case["target_mask"], mask_index=1)
        r = rel(pred, case["pred_out_from_context_encoder"])
        assert r <= TOL, f"pred_out_from_context_encoder: {r:.3g}"
        # hidden_states[0] = patch embeddings (no position table with RoPE), [1] = after layer 0
        x = m.encoder.patch_embed(clip)
        assert rel(x, case["encoder_hidden_states"][0]) <= TOL, "hidden_states[0]"
        grid = m.encoder._grid_of(clip)
        x = m.encoder.blocks[0](x, None, m.encoder.rope_for(None, grid, x.device))
        r = rel(x, case["encoder_hidden_states"][1])
        assert r <= TOL, f"hidden_states[1]: {r:.3g}"


def test_case_files_present(case_dir):
    case = load_case(case_dir)
    assert case["meta"]["predictor_mask_token_index"] == 1


def test_base_model_outputs(case_dir):
    case = load_case(case_dir)
    check_base_outputs(load_hf_vjepa2(case_dir / "model"), case)


def test_rope_grid_at_another_resolution(case_dir):
    """Official semantics (the input's grid) by default; Hugging Face's (the config's crop_size grid)
    on request. At the config's own size the two agree (tested above)."""
    case = load_case(case_dir)
    clip = hf_video_to_clip(video_of(case, where=case["alt"]), case["config"]["tubelet_size"])
    official = load_hf_vjepa2(case_dir / "model")
    hf = load_hf_vjepa2(case_dir / "model", rope_grid="config")
    with torch.no_grad():
        r = rel(official.encoder(clip), case["alt_encoder_out_native_grid"])
        assert r <= TOL, f"input grid at 96 px: {r:.3g}"
        r = rel(hf.encoder(clip), case["alt_encoder_out_hf"])
        assert r <= TOL, f"config grid at 96 px: {r:.3g}"
    assert rel(case["alt_encoder_out_hf"], case["alt_encoder_out_native_grid"]) > 1e-2  # the setting matters


def test_classifier_outputs(case_dir):
    case = load_case(case_dir)
    m = load_hf_vjepa2(case_dir / "classifier")
    assert m.probe is not None and m.probe.linear.out_features == case["config"]["num_labels"]
    clip = hf_video_to_clip(video_of(case), m.encoder.tubelet_size)
    with torch.no_grad():
        tokens = m.encoder(clip)
        r = rel(m.probe.pooler(tokens)[:, 0], case["pooler_output"])
        assert r <= TOL, f"pooler_output: {r:.3g}"
        r = rel(m.probe(tokens), case["logits"])
        assert r <= TOL, f"logits: {r:.3g}"
        # The official probe's eps (1e-5) gives other logits than Hugging Face's 1e-6.
        official_eps = load_hf_vjepa2(case_dir / "classifier", probe_norm_eps=1e-5)
        assert rel(official_eps.probe(tokens), case["logits"]) > TOL
    # The classifier folder carries the same base model.
    base = load_hf_vjepa2(case_dir / "model")
    for a, b in ((m.encoder, base.encoder), (m.predictor, base.predictor)):
        for (name, t), (_, u) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(t, u), name


@pytest.mark.parametrize("kind", ["model", "classifier"])
def test_save_round_trip(case_dir, kind, tmp_path):
    case = load_case(case_dir)
    m = load_hf_vjepa2(case_dir / kind)
    out = save_hf_vjepa2(tmp_path / kind, m.encoder, m.predictor, m.probe)
    # Hugging Face's names and shapes, tensor for tensor
    ref = read_hf_weights(case_dir / kind)
    saved = read_hf_weights(out)
    assert set(saved) == set(ref)
    for k, v in ref.items():
        assert saved[k].shape == v.shape and saved[k].dtype == v.dtype, k
        assert torch.equal(saved[k], v), k
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}  # transformers refuses safetensors without it
    cfg = json.loads((out / "config.json").read_text())
    want = json.loads((case_dir / kind / "config.json").read_text())
    want.pop("transformers_version")  # informational; we do not claim a transformers version
    if kind == "model":
        # Only the classifier reads num_pooler_layers; a base model is written with the default 3.
        assert cfg.pop("num_pooler_layers") == 3
        want.pop("num_pooler_layers")
    assert cfg == want
    reloaded = load_hf_vjepa2(out)
    check_base_outputs(reloaded, case)
    if kind == "classifier":
        clip = hf_video_to_clip(video_of(case), reloaded.encoder.tubelet_size)
        with torch.no_grad():
            assert rel(reloaded.probe(reloaded.encoder(clip)), case["logits"]) <= TOL


def test_official_checkpoint_to_hf_and_back():
    """The official V2 parity checkpoint converted to Hugging Face names and back is unchanged, and
    the converted probe of the official parity case gives its logits."""
    ckpt = torch.load(FIXTURES / "official_v2_parity" / "checkpoint.pth.tar", weights_only=True)
    enc = {k.removeprefix("module.backbone."): v for k, v in ckpt["encoder"].items()}
    pred = {k.removeprefix("module.backbone."): v for k, v in ckpt["predictor"].items()}
    hf = {**encoder_to_hf(enc), **predictor_to_hf(pred)}
    assert hf["predictor.embeddings.mask_tokens"].shape == (6, 1, 1, 48)
    assert hf["encoder.layer.0.attention.key.weight"].shape == (96, 96)
    for a, b in ((hf_to_encoder(hf), enc), (hf_to_predictor(hf), pred)):
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in b)
    probe = torch.load(FIXTURES / "official_v2_parity" / "case.pt", weights_only=True)["probe"]
    back = hf_to_probe(probe_to_hf(probe["state_dict"]))
    assert set(back) == set(probe["state_dict"]) and all(torch.equal(back[k], v) for k, v in probe["state_dict"].items())


def test_save_refuses_what_the_format_cannot_hold(tmp_path):
    ckpt = FIXTURES / "official_v2_parity" / "checkpoint.pth.tar"
    kw = dict(crop_size=64, num_frames=8, embed_dim=96, depth=3, num_heads=3, pred_depth=2, pred_embed_dim=48,
              pred_num_heads=3, num_mask_tokens=6, use_rope=True)
    model = build_vjepa("vit_tiny", **kw)
    load_vjepa2_checkpoint(model, ckpt)
    official_probe = AttentiveClassifierV2(embed_dim=96, num_heads=3, depth=4, num_classes=5)  # eps 1e-5
    with pytest.raises(CheckpointError, match="allow_probe_eps_change"):
        save_hf_vjepa2(tmp_path / "a", model.encoder, model.predictor, official_probe)
    save_hf_vjepa2(tmp_path / "b", model.encoder, model.predictor, official_probe, allow_probe_eps_change=True)
    with pytest.raises(CheckpointError, match="probe has 4 heads, the encoder 3"):
        save_hf_vjepa2(tmp_path / "c", model.encoder, model.predictor,
                       AttentiveClassifierV2(embed_dim=96, num_heads=4, depth=2, num_classes=5, norm_eps=1e-6))
    with pytest.raises(CheckpointError, match="SwiGLU"):
        swiglu = build_vjepa("vit_tiny", use_silu=True, **kw)
        save_hf_vjepa2(tmp_path / "d", swiglu.encoder, swiglu.predictor)
    with pytest.raises(CheckpointError, match="needs RoPE"):
        v1 = build_vjepa("vit_tiny", **{**kw, "use_rope": False})
        save_hf_vjepa2(tmp_path / "e", v1.encoder, v1.predictor)
