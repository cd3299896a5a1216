"""The official V-JEPA 2 training step, structure for structure, over vjepa-fast's modules.

The V2 baseline of ``benchmarks/train_step.py --arch v2`` (``--impl reference``) and its loss check
(``--check-loss``). It runs on the parameters of a :class:`vjepa_fast.VJEPA` built with
``use_rope=True`` but none of its fused code: every forward below follows the official V2 sources
(facebookresearch/vjepa2 ``app/vjepa/train.py``, ``src/models/vision_transformer.py``,
``src/models/predictor.py``, ``src/models/utils/modules.py``, ``src/utils/wrappers.py``; see
``shared/reference/official_vjepa.md`` §8 and the fixtures README's V-JEPA 2 sections), written
here with the module's sub-modules (``patch_embed``, ``blocks``, ``norm``, ``predictor_embed``,
``mask_tokens``, ``predictor_blocks``, ``predictor_norm``, ``predictor_proj``) and plain PyTorch ops:

* ``MultiSeqWrapper``: per clip-length group, one full encoder pass per mask config, each
  recomputing the patch embedding of the group's whole clip; the target encoder once per group;
* ``apply_masks``: ``torch.gather`` with the index expanded by ``m.unsqueeze(-1).repeat(1, 1, D)``;
* RoPE as ``RoPEAttention`` computes it in every block: positions split from the token ids, the
  ids repeated over the heads (``mask.unsqueeze(1).repeat(1, heads, 1)``), one
  ``rotate_queries_or_keys`` per axis for q and for k (frequencies ``arange`` in q's dtype, angles
  by ``einsum`` with the int64 positions, ``sin``/``cos`` ``repeat``-ed, the pair swap by
  ``unflatten``/``unbind``/``stack``), then ``cat`` with the unrotated channels;
* attention: ``F.scaled_dot_product_attention`` with PyTorch's backend choice;
* ``PredictorMultiSeqWrapper``: per group and mask config, ``mask_index`` = the group's index; the
  predictor's mask tokens ``repeat``-ed to the built grid's N and gathered, ``cat``, then the
  official per-row ``torch.stack([x[i, row] for ...])`` sort by token id and its inverse;
* activation checkpointing of every encoder and predictor block
  (``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``; on in every V2 train config);
* target: full ``F.layer_norm`` of each group's target output, then one gather per mask config;
  loss: ``mean(|z - h| ** loss_exp) / loss_exp`` averaged over all (group, mask config) pairs;
* ``GradScaler`` whenever autocast is on (the official code makes one even for bf16); AdamW with
  PyTorch's default (foreach) implementation over the four official groups; no clipping (V2);
* the EMA as ``torch._foreach_mul_`` / ``torch._foreach_add_`` over the parameter lists;
* per step ``float(loss)`` and, on CUDA, the ``gpu_timer`` (CUDA events + ``synchronize``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# The frame of the step (OfficialStep: optimizer, scaler, backward, gpu_timer, phase hook) and apply_masks
# (V2 unchanged) are V1's, from benchmarks/reference_step.py (benchmarks/ is on sys.path).
from reference_step import OfficialStep, apply_masks


# -- RoPE attention as RoPEAttention computes it ------------------------------------------------


def rotate(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Official ``rotate_queries_or_keys``: ``x`` [B, heads, N, D] (D even) by positions ``pos``
    ([B, heads, N], or [N] for the full clip), the angles in x's dtype."""
    half = x.size(-1) // 2
    omega = torch.arange(half, dtype=x.dtype, device=x.device)
    omega /= x.size(-1) / 2.0
    omega = 1.0 / 10000**omega
    freq = torch.einsum("..., f -> ... f", pos, omega)
    emb_sin = freq.sin().squeeze(-1).repeat(1, 1, 1, 2)
    emb_cos = freq.cos().squeeze(-1).repeat(1, 1, 1, 2)
    y = x.unflatten(-1, (-1, 2))
    y1, y2 = y.unbind(dim=-1)
    y = torch.stack((-y2, y1), dim=-1).flatten(-2)
    return (x * emb_cos) + (y * emb_sin)


def separate_positions(ids: torch.Tensor, h_patches: int, w_patches: int):
    """Official ``RoPEAttention.separate_positions``: token ids -> (frame, height, width) ids."""
    tokens_per_frame = int(h_patches * w_patches)
    frame_ids = ids // tokens_per_frame
    rest = ids - tokens_per_frame * frame_ids
    height_ids = rest // w_patches
    width_ids = rest - w_patches * height_ids
    return frame_ids, height_ids, width_ids


def rope_attention_forward(attn, x: torch.Tensor, ids: torch.Tensor | None, grid: tuple[int, int, int]):
    """Official ``RoPEAttention.forward`` (use_sdpa, no attn_mask, dropout 0): ``ids`` [B, N] token
    ids of the kept tokens (None: the whole clip of ``grid`` = (T', H', W'))."""
    B, N, C = x.size()
    heads = attn.num_heads
    head_dim = C // heads
    d = 2 * ((head_dim // 3) // 2)
    qkv = attn.qkv(x).unflatten(-1, (3, heads, -1)).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    if ids is not None:
        ids = ids.unsqueeze(1).repeat(1, heads, 1)
    else:
        ids = torch.arange(grid[0] * grid[1] * grid[2], device=x.device)
    pos = separate_positions(ids, grid[1], grid[2])
    q_parts, k_parts, s = [], [], 0
    for axis_pos in pos:  # depth (frames), height, width
        q_parts.append(rotate(q[..., s:s + d], axis_pos))
        k_parts.append(rotate(k[..., s:s + d], axis_pos))
        s += d
    if s < head_dim:
        q_parts.append(q[..., s:])
        k_parts.append(k[..., s:])
    q, k = torch.cat(q_parts, dim=-1), torch.cat(k_parts, dim=-1)
    x = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0)
    x = x.transpose(1, 2).reshape(B, N, C)
    return attn.proj(x)


def block_forward(blk, x: torch.Tensor, ids: torch.Tensor | None, grid: tuple[int, int, int]) -> torch.Tensor:
    """Official V2 ``Block.forward`` (drop path 0 in every config; the block's own MLP, GELU or SwiGLU)."""
    x = x + rope_attention_forward(blk.attn, blk.norm1(x), ids, grid)
    return x + blk.mlp(blk.norm2(x))


def run_blocks(blocks, x: torch.Tensor, ids: torch.Tensor | None, grid: tuple[int, int, int]) -> torch.Tensor:
    """Every block under non-reentrant activation checkpointing (``use_activation_checkpointing``)."""
    for blk in blocks:
        x = checkpoint(block_forward, blk, x, ids, grid, use_reentrant=False)
    return x


# -- encoder and predictor ---------------------------------------------------------------------


def encoder_forward(enc, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
    """Official V2 ``VisionTransformer.forward`` with RoPE: patch-embed the whole clip, gather the
    kept tokens, positions split with the input's grid (``handle_nonsquare_inputs``)."""
    _, _, T, H, W = x.shape
    grid = (T // enc.tubelet_size, H // enc.patch_size, W // enc.patch_size)
    x = enc.patch_embed(x)
    ids = None
    if masks is not None:
        x = apply_masks(x, [masks])
        ids = masks
    return enc.norm(run_blocks(enc.blocks, x, ids, grid))


def predictor_forward(pred, ctxt: torch.Tensor, masks_ctxt: torch.Tensor, masks_tgt: torch.Tensor,
                      mask_index: int) -> torch.Tensor:  # fmt: skip
    """Official V2 ``VisionTransformerPredictor.forward`` with RoPE (no position tables): the mask
    token of ``mask_index``, the sequence sorted by token id, positions on the built grid."""
    B = ctxt.size(0)
    x = pred.predictor_embed(ctxt)
    n_ctxt = x.size(1)
    pred_tokens = pred.mask_tokens[mask_index % pred.num_mask_tokens]
    pred_tokens = pred_tokens.repeat(B, pred.num_patches, 1)
    pred_tokens = apply_masks(pred_tokens, [masks_tgt])
    x = torch.cat([x, pred_tokens], dim=1)
    masks = torch.cat([masks_ctxt, masks_tgt], dim=1)
    argsort = torch.argsort(masks, dim=1)
    masks = torch.stack([masks[i, row] for i, row in enumerate(argsort)], dim=0)
    x = torch.stack([x[i, row, :] for i, row in enumerate(argsort)], dim=0)
    grid = (0, pred.grid_size, pred.grid_size)  # the predictor splits ids with its built grid
    x = pred.predictor_norm(run_blocks(pred.predictor_blocks, x, masks, grid))
    reverse_argsort = torch.argsort(argsort, dim=1)
    x = torch.stack([x[i, row, :] for i, row in enumerate(reverse_argsort)], dim=0)
    return pred.predictor_proj(x[:, n_ctxt:])


def multiseq_encoder(enc, clips, masks):
    """Official ``MultiSeqWrapper``: per group, one encoder pass per mask config."""
    return [[encoder_forward(enc, c, m) for m in mg] for c, mg in zip(clips, masks)]


def multiseq_predictor(pred, ctxt, masks_ctxt, masks_tgt):
    """Official ``PredictorMultiSeqWrapper``: every mask config of group i uses mask token i."""
    return [[predictor_forward(pred, z, mc, mt, mask_index=i) for z, mc, mt in zip(zg, mcg, mtg)]
            for i, (zg, mcg, mtg) in enumerate(zip(ctxt, masks_ctxt, masks_tgt))]


# -- the step ----------------------------------------------------------------------------------


class ReferenceStepV2(OfficialStep):
    """One official V-JEPA 2 iteration per call on ``model`` (a :class:`vjepa_fast.VJEPA` with RoPE).

    ``__call__(clips, masks_enc, masks_pred, phase=None)``: ``clips`` a list over clip-length groups
    of ``[B_g, C, T_g, H, W]``, ``masks_enc[g][i]`` / ``masks_pred[g][i]`` int64 ``[B_g, K]`` (the V2
    collator's layout). Returns the loss as a Python float (the official step does). ``phase(name)``
    marks ``target_fwd``, ``ctx_pred_fwd_bwd``, ``optimizer``, ``ema``, ``host_sync`` and ``None``.
    """

    def __init__(self, model, schedules, dtype: torch.dtype = torch.float32,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):  # fmt: skip
        if not model.encoder.use_rope:
            raise ValueError("ReferenceStepV2 runs V-JEPA 2 models (use_rope=True); V1 models: reference_step.py")
        super().__init__(model, schedules, dtype, betas, eps)

    def _train_step(self, clips, masks_enc, masks_pred, phase) -> float:
        encoder, predictor, target_encoder = self.encoder, self.predictor, self.target_encoder
        optimizer = self.optimizer
        phase("target_fwd")
        self.schedules.step(optimizer)  # official: lr / wd schedulers step before the forward

        def forward_target(c):
            with torch.no_grad():
                h = [encoder_forward(target_encoder, ci) for ci in c]
                return [F.layer_norm(hi, (hi.size(-1),)) for hi in h]

        def forward_context(c):
            z = multiseq_encoder(encoder, c, masks_enc)
            return multiseq_predictor(predictor, z, masks_enc, masks_pred)

        def loss_fn(z, h):
            h = [apply_masks(hi, mi, concat=False) for hi, mi in zip(h, masks_pred)]
            loss, n = 0.0, 0
            for zi, hi in zip(z, h):
                for zij, hij in zip(zi, hi):
                    loss += torch.mean(torch.abs(zij - hij) ** self.loss_exp) / self.loss_exp
                    n += 1
            return loss / n

        with self.autocast():
            h = forward_target(clips)
            phase("ctx_pred_fwd_bwd")
            z = forward_context(clips)
            loss = loss_fn(z, h)
        self._backward(loss)
        phase("optimizer")
        self._optimizer_step()
        optimizer.zero_grad()

        phase("ema")
        m = self.schedules.momentum()
        with torch.no_grad():
            params_k = list(target_encoder.parameters())
            params_q = list(encoder.parameters())
            torch._foreach_mul_(params_k, m)
            torch._foreach_add_(params_k, params_q, alpha=1 - m)
        phase("host_sync")
        return float(loss.detach())  # official: float(loss) (a host sync)
