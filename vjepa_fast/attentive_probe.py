"""Attentive probes: official V1 ``AttentivePooler`` / ``AttentiveClassifier`` and the V-JEPA 2 ones.

V1 (facebookresearch/jepa ``src/models/attentive_pooler.py``). Kept quirks, so released probes load
and give the same logits: the query is not normalised, the cross-attention output projection
``xattn.proj`` exists but is never applied, extra self-attention blocks (depth > 1) run over the
query tokens after the cross-attention, and the LayerNorms use PyTorch's default eps 1e-5.

V2 (facebookresearch/vjepa2 ``src/models/attentive_pooler.py``, :class:`AttentiveClassifierV2`): the
``depth − 1`` self-attention blocks run over all the input tokens *first*, then one cross-attention
block with the query; that block normalises the tokens (not the query) and has no output projection
at all (no ``xattn.proj`` key). Init: block i's ``attn.proj``/``mlp.fc2`` divided by sqrt(2(i+1)) and
the cross block's ``mlp.fc2`` by sqrt(2(last + 1)); the linear head keeps torch's default init. The
LayerNorm eps is torch's default 1e-5 officially; Hugging Face's port (``VJEPA2ForVideoClassification``)
uses its ``layer_norm_eps`` 1e-6: ``norm_eps`` sets it (1.03e-5 relative on the HF fixture's logits).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .attention import attention
from .vision_transformer import MLP, Block, check_heads, checkpoint_count, run_block


class CrossAttention(nn.Module):
    """``with_proj``: V1 defines an output projection it never applies (kept so V1 files load);
    V2 has none."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, with_proj: bool = True):
        super().__init__()
        check_heads(dim, num_heads)
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        if with_proj:
            self.proj = nn.Linear(dim, dim)  # unused on purpose (official quirk, see module docstring)

    def forward(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        B, n, C = q.shape
        h = self.num_heads
        q = self.q(q).reshape(B, n, h, C // h).transpose(1, 2)
        kv = self.kv(x).reshape(B, x.shape[1], 2, h, C // h).permute(2, 0, 3, 1, 4)
        out = attention(q, kv[0], kv[1])
        return out.transpose(1, 2).reshape(B, n, C)


class CrossAttentionBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, norm_eps: float = 1e-5,
                 with_proj: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.xattn = CrossAttention(dim, num_heads, qkv_bias, with_proj)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, q, x):
        q = q + self.xattn(q, self.norm1(x))
        return q + self.mlp(self.norm2(q))


def _self_attention_blocks(embed_dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, norm_eps: float,
                           depth: int) -> nn.ModuleList | None:  # fmt: skip
    """The pooler's ``depth - 1`` self-attention blocks (None for depth 1: no ``blocks`` keys)."""
    if depth <= 1:
        return None
    return nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias, norm_eps) for _ in range(depth - 1))


def _init_pooler(pooler: nn.Module, std: float) -> None:
    """The init V1 and V2 poolers share: truncated-normal queries and Linear weights (``std``, cut at
    ±2), zero biases, unit LayerNorms. Each pooler then rescales its residual projections its own way."""
    nn.init.trunc_normal_(pooler.query_tokens, std=std, a=-2.0, b=2.0)
    for m in pooler.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std, a=-2.0, b=2.0)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _LinearProbe(nn.Module):
    """``linear(pooler(tokens)[:, 0])``, the classifier of both probe versions (subclasses build
    ``pooler`` and ``linear``). Input: tokens [B, L, D]; output: logits [B, num_classes]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.linear.in_features:
            raise ValueError(f"probe expects tokens [B, L, {self.linear.in_features}], got {tuple(x.shape)}")
        return self.linear(self.pooler(x)[:, 0])


class AttentivePooler(nn.Module):
    def __init__(
        self,
        num_queries: int = 1,
        embed_dim: int = 768,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        depth: int = 1,
        qkv_bias: bool = True,
        norm_eps: float = 1e-5,
        init_std: float = 0.02,
    ):
        super().__init__()
        self.query_tokens = nn.Parameter(torch.zeros(1, num_queries, embed_dim))
        self.cross_attention_block = CrossAttentionBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, norm_eps)
        self.blocks = _self_attention_blocks(embed_dim, num_heads, mlp_ratio, qkv_bias, norm_eps, depth)
        self._init(init_std)

    def _init(self, std: float) -> None:
        _init_pooler(self, std)
        with torch.no_grad():
            xb = self.cross_attention_block
            xb.xattn.proj.weight.div_(math.sqrt(2.0))
            xb.mlp.fc2.weight.div_(math.sqrt(2.0))
            for layer_id, blk in enumerate(self.blocks or [], 1):
                blk.attn.proj.weight.div_(math.sqrt(2.0 * (layer_id + 1)))
                blk.mlp.fc2.weight.div_(math.sqrt(2.0 * (layer_id + 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.query_tokens.expand(x.shape[0], -1, -1)
        q = self.cross_attention_block(q, x)
        for blk in self.blocks or []:
            q = blk(q)
        return q


class AttentiveClassifier(_LinearProbe):
    """Pooled query → linear head. Input: frozen encoder tokens [B, L, D]; output: logits."""

    def __init__(
        self,
        embed_dim: int = 768,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        depth: int = 1,
        qkv_bias: bool = True,
        num_classes: int = 1000,
        norm_eps: float = 1e-5,
        init_std: float = 0.02,
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.pooler = AttentivePooler(1, embed_dim, num_heads, mlp_ratio, depth, qkv_bias, norm_eps, init_std)
        self.linear = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.linear.weight, std=init_std, a=-2.0, b=2.0)
        nn.init.zeros_(self.linear.bias)


class AttentivePoolerV2(nn.Module):
    """V-JEPA 2 pooler: ``depth − 1`` self-attention blocks over the tokens [B, L, D], then the
    cross-attention block with ``num_queries`` learned queries → [B, num_queries, D].
    ``activation_checkpointing``: number of self-attention blocks to checkpoint (True = all, as the
    official eval builds it)."""

    def __init__(
        self,
        num_queries: int = 1,
        embed_dim: int = 768,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        depth: int = 1,
        qkv_bias: bool = True,
        norm_eps: float = 1e-5,
        init_std: float = 0.02,
        activation_checkpointing: int | bool = 0,
    ):
        super().__init__()
        if depth < 1:
            raise ValueError(f"probe depth must be >= 1, got {depth}")
        self.query_tokens = nn.Parameter(torch.zeros(1, num_queries, embed_dim))
        self.cross_attention_block = CrossAttentionBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, norm_eps,
                                                         with_proj=False)
        self.blocks = _self_attention_blocks(embed_dim, num_heads, mlp_ratio, qkv_bias, norm_eps, depth)
        self.activation_checkpointing = checkpoint_count(activation_checkpointing, depth - 1)
        self._init(init_std)

    def _init(self, std: float) -> None:
        _init_pooler(self, std)
        with torch.no_grad():
            last = 0
            for last, blk in enumerate(self.blocks or []):
                blk.attn.proj.weight.div_(math.sqrt(2.0 * (last + 1)))
                blk.mlp.fc2.weight.div_(math.sqrt(2.0 * (last + 1)))
            self.cross_attention_block.mlp.fc2.weight.div_(math.sqrt(2.0 * (last + 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, blk in enumerate(self.blocks or []):
            x = run_block(blk, x, None, None, i < self.activation_checkpointing)
        q = self.query_tokens.expand(x.shape[0], -1, -1)
        return self.cross_attention_block(q, x)


class AttentiveClassifierV2(_LinearProbe):
    """The V-JEPA 2 probe: :class:`AttentivePoolerV2` (one query) → linear head. Input: frozen
    encoder tokens [B, L, D]; output: logits [B, num_classes]. ``depth`` counts the cross-attention
    block (official ``num_probe_blocks``; Hugging Face's ``num_pooler_layers`` = depth − 1);
    ``norm_eps`` 1e-5 official, 1e-6 for Hugging Face checkpoints."""

    def __init__(
        self,
        embed_dim: int = 768,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        depth: int = 4,
        qkv_bias: bool = True,
        num_classes: int = 1000,
        norm_eps: float = 1e-5,
        init_std: float = 0.02,
        activation_checkpointing: int | bool = 0,
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.pooler = AttentivePoolerV2(1, embed_dim, num_heads, mlp_ratio, depth, qkv_bias, norm_eps, init_std,
                                        activation_checkpointing)
        self.linear = nn.Linear(embed_dim, num_classes)  # torch's default init, as the official head
