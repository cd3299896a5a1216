"""Attention over packed sequences: several token sets ("documents") concatenated along the token
dim, each attending only within itself (a block-diagonal mask).

V-JEPA runs its context encoder and predictor once per mask generator, on short sequences (ViT-L
16x224: ~364 and ~103 context tokens). Packing the masks of a clip into one sequence
``[B, K1 + K2 + ..., D]`` lets every per-token op of a block (LayerNorms, qkv/proj/MLP matmuls,
residuals) run once on all of them; only attention must keep the documents apart. Since every op
but attention is per token, the packed pass is the per-mask math; only the blocking of the
matmuls (and so float rounding) differs.

``VJEPA_FAST_PACKED_ATTN`` (or :func:`set_packed_attention`) picks how that attention runs:

* ``split`` (what ``auto`` picks): one dense attention call per document through
  :func:`vjepa_fast.attention.attention`, so the global backend switch (cuDNN, flash,
  flash-attn, ...) applies: the same attention calls as the per-mask path, and it traces under
  ``torch.compile`` with symbolic document lengths. Each document's q, k and v are first copied
  into a tensor of their own (token-major, ``[B, n, heads, head_dim]`` storage), and so is the
  gradient of its output in the backward, so every tensor its attention sees has strides that
  depend on that document's length alone. A slice of the packed tensors would carry the packed
  total in its batch stride, and PyTorch's cuDNN attention (``aten/src/ATen/native/cudnn/MHA.cpp``)
  caches one execution graph per key of q/k/v shapes and strides, building a new one, forward
  and backward, on every miss: with the total in the key, the official ViT-L masks give 1,382
  distinct keys in 2,000 steps (seed 0, batch 24), still growing, against 121 with each
  document's own length, as in the per-mask path (``benchmarks/results/gpu_measure/README.md``).
  The gradient copy is needed for correctness, not speed: the backward graph is built with the
  output gradient's strides, which the key of torch 2.11's generation does not hold in full
  (PyTorch pull request 191576 added them, mid-2026), so a gradient laid out with another total
  would silently reuse a graph built for the first. The copies cost one read and write of q, k,
  v and of the output gradient per layer; the outputs are concatenated token-major, so the
  block's head merge is a view.
* ``mask``: one SDPA call with a boolean block-diagonal ``[L, L]`` mask. A dense mask rules out
  SDPA's flash kernel and does the masked-out work, so this is a reference, not a fast path.
* ``flex``: ``torch.nn.attention.flex_attention`` with a document ``BlockMask`` built once per
  packed pass. Fused only when compiled (eager calls go through a ``torch.compile``'d
  ``flex_attention`` on CUDA, and through PyTorch's unfused reference on CPU). Checked on CPU
  only, forward only: PyTorch has no flex backward on CPU, and inductor's CPU flex template fails
  to build with symbolic lengths (a C++ compile error in PyTorch 2.13), while ``aot_eager``
  traces the ``BlockMask`` from symbolic lengths into the one student graph. Its GPU kernels,
  backward and speed are unverified here, hence not the default.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.nn.functional as F

from .attention import attention

IMPLS = ("auto", "split", "mask", "flex")

_impl: str = "auto"
_compiled_flex = None


def set_packed_attention(name: str) -> None:
    global _impl
    if name not in IMPLS:
        raise ValueError(f"unknown packed attention {name!r}; choose one of {list(IMPLS)}")
    _impl = name


def get_packed_attention() -> str:
    return _impl


def resolve_impl(impl: str | None = None) -> str:
    name = impl or _impl
    if name not in IMPLS:
        raise ValueError(f"unknown packed attention {name!r}; choose one of {list(IMPLS)}")
    return "split" if name == "auto" else name


def segment_ids(lengths: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """[L] int32: the document of each packed token. Built from ``full`` pieces rather than
    ``repeat_interleave`` over a lengths tensor, whose output size would be data-dependent and
    would not trace with symbolic lengths."""
    return torch.cat([torch.full((n,), i, dtype=torch.int32, device=device) for i, n in enumerate(lengths)])


def block_diagonal_mask(lengths: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """[L, L] bool, True where query and key belong to the same document (SDPA's convention)."""
    ids = segment_ids(lengths, device)
    return ids[:, None] == ids[None, :]


def document_block_mask(lengths: Sequence[int], device: torch.device | str | None = None):
    """A flex-attention ``BlockMask`` for the documents, shared by every head and batch row, on
    ``device`` (None: torch's default device, as for :func:`segment_ids`)."""
    from torch.nn.attention.flex_attention import create_block_mask  # noqa: PLC0415

    ids = segment_ids(lengths, device)

    def same_document(b, h, q_idx, kv_idx):
        return ids[q_idx] == ids[kv_idx]

    L = ids.shape[0]
    # Always the ids' device: create_block_mask(device=None) picks the current accelerator, i.e.
    # CUDA in any CUDA build of torch, even for CPU tensors (torch 2.11 and later).
    return create_block_mask(same_document, None, None, L, L, device=ids.device)


class Packing:
    """The documents of one packed sequence and whatever their attention needs, built once per
    packed pass and shared by all blocks (a flex ``BlockMask`` or a dense mask would otherwise be
    rebuilt in every layer)."""

    def __init__(
        self, lengths: Sequence[int], device: torch.device | str | None = None, impl: str | None = None
    ):
        self.lengths = tuple(lengths)
        if not self.lengths:
            raise ValueError("a packing needs at least one document")
        self.impl = resolve_impl(impl)
        self.total = sum(self.lengths)
        self.dense_mask = block_diagonal_mask(self.lengths, device) if self.impl == "mask" else None
        self.block_mask = document_block_mask(self.lengths, device) if self.impl == "flex" else None

    def split(self, x: torch.Tensor, dim: int = 1) -> list[torch.Tensor]:
        """The documents of a packed tensor (views)."""
        return list(torch.split(x, self.lengths, dim=dim))


def _flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask) -> torch.Tensor:
    from torch.nn.attention.flex_attention import flex_attention  # noqa: PLC0415

    if q.is_cuda and not torch.compiler.is_compiling():
        # Uncompiled, flex_attention materialises the full score matrix; dynamic=True so that a new
        # packed length does not recompile.
        global _compiled_flex
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention, dynamic=True)
        return _compiled_flex(q, k, v, block_mask=block_mask)
    return flex_attention(q, k, v, block_mask=block_mask)


def _own_storage(t: torch.Tensor) -> torch.Tensor:
    """[B, heads, n, head_dim] -> the same values in storage of their own, token-major
    ([B, n, heads, head_dim] contiguous, as a projection writes them), so that the strides are
    functions of n alone (see the module docstring: cuDNN's graph cache keys on them)."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


class _GradInOwnStorage(torch.autograd.Function):
    """Identity; its backward hands on the gradient in storage of its own (:func:`_own_storage`).
    Applied to a document's attention output, whose gradient is otherwise a slice of the packed
    gradient (see the module docstring for why that must not reach cuDNN's backward)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _own_storage(grad)


def document_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing) -> torch.Tensor:
    """Non-causal attention on [B, heads, L, head_dim] where token i sees token j only if both lie in
    the same document of ``packing``; default 1/sqrt(head_dim) scale."""
    if q.shape[2] != packing.total:
        raise ValueError(f"packed length {q.shape[2]} does not match the documents' {packing.lengths}")
    if packing.impl == "split":
        if len(packing.lengths) == 1:
            return attention(q, k, v)
        outs = []
        for qi, ki, vi in zip(*(t.split(packing.lengths, dim=2) for t in (q, k, v))):
            out = attention(*(_own_storage(t) for t in (qi, ki, vi)))
            outs.append(_GradInOwnStorage.apply(out).transpose(1, 2))
        return torch.cat(outs, dim=1).transpose(1, 2)
    if packing.impl == "mask":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=packing.dense_mask)
    return _flex(q, k, v, packing.block_mask)


set_packed_attention(os.environ.get("VJEPA_FAST_PACKED_ATTN", "auto"))
