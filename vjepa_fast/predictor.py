"""The V-JEPA predictor: a narrow transformer that fills target positions with mask tokens and
predicts the target encoder's features there (official V1 semantics)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .packed import Packing
from .pos_embed import sincos_table
from .tokens import assemble_predictor_input
from .vision_transformer import Block, check_grid, check_heads, init_v1_, rescale_blocks_


class VisionTransformerPredictor(nn.Module):
    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        num_frames: int = 16,
        tubelet_size: int = 2,
        embed_dim: int = 768,
        predictor_embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        uniform_power: bool = False,
        num_mask_tokens: int = 2,
        zero_init_mask_tokens: bool = True,
        depth_rescale: bool = False,
    ):
        super().__init__()
        check_heads(predictor_embed_dim, num_heads, "predictor_embed_dim")
        if num_mask_tokens < 1:
            raise ValueError(f"num_mask_tokens must be >= 1, got {num_mask_tokens}")
        grid_size, grid_depth = check_grid(img_size, patch_size, num_frames, tubelet_size)
        self.num_patches = grid_depth * grid_size**2
        self.embed_dim, self.predictor_embed_dim = embed_dim, predictor_embed_dim
        self.num_mask_tokens = num_mask_tokens
        self.predictor_embed = nn.Linear(embed_dim, predictor_embed_dim)
        self.mask_tokens = nn.ParameterList(
            nn.Parameter(torch.zeros(1, 1, predictor_embed_dim)) for _ in range(num_mask_tokens)
        )
        self.predictor_pos_embed = nn.Parameter(
            sincos_table(predictor_embed_dim, grid_size, grid_depth if num_frames > 1 else 1, uniform_power),
            requires_grad=False,
        )
        self.predictor_blocks = nn.ModuleList(
            Block(predictor_embed_dim, num_heads, mlp_ratio, qkv_bias, norm_eps) for _ in range(depth)
        )
        self.predictor_norm = nn.LayerNorm(predictor_embed_dim, eps=norm_eps)
        self.predictor_proj = nn.Linear(predictor_embed_dim, embed_dim)
        init_v1_(self)
        if depth_rescale:
            rescale_blocks_(self.predictor_blocks)
        if not zero_init_mask_tokens:
            for tok in self.mask_tokens:
                nn.init.trunc_normal_(tok, std=0.02, a=-2.0, b=2.0)

    def assemble(self, ctx: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor, mask_index: int) -> torch.Tensor:
        """[embedded context + its positions, mask token + target positions] as [B, Kc+Kt, Dp]."""
        token = self.mask_tokens[mask_index % self.num_mask_tokens]
        return assemble_predictor_input(self.predictor_embed(ctx), ctx_idx, tgt_idx, self.predictor_pos_embed, token)

    def forward(self, ctx: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor, mask_index: int = 0) -> torch.Tensor:
        """ctx [B, Kc, D] (encoder output for ``ctx_idx``) → predictions [B, Kt, D] at ``tgt_idx``,
        using mask token ``mask_index`` (the mask generator's index, as in the official wrapper)."""
        self._check(ctx, ctx_idx, tgt_idx)
        Kc = ctx.shape[1]
        x = self.assemble(ctx, ctx_idx, tgt_idx, mask_index)
        for blk in self.predictor_blocks:
            x = blk(x)
        x = self.predictor_norm(x)
        return self.predictor_proj(x[:, Kc:])

    def _check(self, ctx: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor) -> None:
        if ctx.dim() != 3 or ctx.shape[-1] != self.embed_dim:
            raise ValueError(f"predictor expects context [B, K, {self.embed_dim}], got {tuple(ctx.shape)}")
        if ctx_idx.shape != ctx.shape[:2]:
            raise ValueError(f"context indices {tuple(ctx_idx.shape)} do not match context {tuple(ctx.shape[:2])}")
        if tgt_idx.dim() != 2 or tgt_idx.shape[0] != ctx.shape[0]:
            raise ValueError(f"target indices must be [B={ctx.shape[0]}, Kt], got {tuple(tgt_idx.shape)}")

    def forward_masks(
        self, ctxs: Sequence[torch.Tensor], masks_enc: Sequence[torch.Tensor], masks_pred: Sequence[torch.Tensor],
        *, packed: bool = False,
    ) -> list[torch.Tensor]:
        """The official ``PredictorMultiMaskWrapper``: mask generator i uses mask token i.

        ``packed``: the [context, targets] sequences of all masks run as one sequence through the
        blocks, attention kept within each mask's sequence (:mod:`vjepa_fast.packed`): the same
        numbers up to float rounding, one pass instead of one per mask.
        """
        if not packed:
            return [self(z, mc, mt, i) for i, (z, mc, mt) in enumerate(zip(ctxs, masks_enc, masks_pred))]
        if not (len(ctxs) == len(masks_enc) == len(masks_pred)):
            raise ValueError(
                f"{len(ctxs)} contexts, {len(masks_enc)} context masks, {len(masks_pred)} target masks"
            )
        for z, mc, mt in zip(ctxs, masks_enc, masks_pred):
            self._check(z, mc, mt)
        seqs = [self.assemble(z, mc, mt, i) for i, (z, mc, mt) in enumerate(zip(ctxs, masks_enc, masks_pred))]
        packing = Packing([s.shape[1] for s in seqs], device=seqs[0].device)
        x = torch.cat(seqs, dim=1)
        for blk in self.predictor_blocks:
            x = blk(x, packing)
        x = self.predictor_norm(x)
        preds, start = [], 0
        for z, mt in zip(ctxs, masks_pred):
            # The projection runs on each mask's target rows only, as in the per-mask path, and
            # gives each prediction its own contiguous tensor for the loss kernel.
            kc, kt = z.shape[1], mt.shape[1]
            preds.append(self.predictor_proj(x[:, start + kc:start + kc + kt]))
            start = start + kc + kt
        return preds
