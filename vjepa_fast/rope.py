"""3D rotary position embedding (RoPE) of V-JEPA 2, as the official code computes it.

Semantics (facebookresearch/vjepa2 ``src/models/utils/modules.py``, ``RoPEAttention`` and
``rotate_queries_or_keys``; the same in Hugging Face's ``VJEPA2`` port; fixtures README, "RoPE"):

* A token id ``n`` (the index of the token in the full clip, ``n = t·Hp·Wp + h·Wp + w``, t counted in
  tubelets) is split into integer grid coordinates ``(t, h, w)`` with a grid ``(Hp, Wp)``: the
  encoder uses the input's grid, the predictor the grid it was built with (``crop // patch``).
* Each head's ``head_dim`` channels are cut into three chunks of ``d = 2·((head_dim // 3) // 2)``
  channels, rotated by t, h and w in that order; the remaining ``head_dim − 3d`` channels are left
  as they are (head_dim 64 → d = 20, 4 unrotated; 32 → 10 + 2; 16 → 4 + 4).
* Within a chunk, ``ω_i = 1 / 10000^(i / (d/2))`` for ``i < d/2`` and ``θ_i = pos · ω_i``. The cos and
  sin tables are the d/2 angles **concatenated twice** (``[θ_0 … θ_{d/2−1}, θ_0 … θ_{d/2−1}]``), not
  interleaved, while the rotation pairs **adjacent** channels: ``out = x·cos + r·sin`` with
  ``r[2i] = −x[2i+1]``, ``r[2i+1] = x[2i]``. The two channels of a pair thus see different angles;
  the official source calls this a known quirk kept because the released weights depend on it.
* Only q and k are rotated, in every encoder and predictor block; v is not.

Numerics. The official code creates ω with ``dtype=x.dtype`` (the dtype of q/k), and its positions
are int64, so ``pos·ω`` (an ``einsum`` of int64 and that dtype), the sin/cos and the rotation all run
in the **activation dtype**: in bfloat16 under bf16 autocast (checked on the CPU with torch 2.13:
``einsum(int64, bf16)`` returns bf16; not yet measured under CUDA autocast), where the angles of
positions 0–32 are off by up to 0.034 rad (head_dim 64) and 0.078 rad (head_dim 80) from float64.
This module does the same by default (``angle_dtype=None``), because the released weights were
trained with it; ``angle_dtype=torch.float32`` computes ω, the angles, sin/cos and the rotation in
float32 instead and rounds the rotated q/k once to their dtype. In float32 both are the same
numbers (and those of the official code, op for op).

:func:`apply_rope` is the whole rotation as one small pure function of ``(x, cos, sin)``, so a fused
kernel can replace it without touching the attention modules.
"""
from __future__ import annotations

import torch


def rope_dim(head_dim: int) -> int:
    """Channels rotated per axis: ``2·((head_dim // 3) // 2)`` (three axes use ``3·rope_dim``)."""
    return 2 * ((head_dim // 3) // 2)


def split_positions(ids: torch.Tensor, grid_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer token ids [..., N] → grid coordinates ``(t, h, w)``, each int64 [..., N], for a
    frame of ``grid_hw = (Hp, Wp)`` patches (``t`` in tubelets)."""
    hp, wp = int(grid_hw[0]), int(grid_hw[1])
    if hp < 1 or wp < 1:
        raise ValueError(f"RoPE grid must be positive, got (Hp, Wp) = {grid_hw}")
    per_frame = hp * wp
    t = ids // per_frame
    rest = ids - per_frame * t
    h = rest // wp
    return t, h, rest - wp * h


def _axis_angles(pos: torch.Tensor, d: int, dtype: torch.dtype) -> torch.Tensor:
    # The op sequence of the official table (arange in the dtype, divide by d/2, 1/10000**x), so the
    # frequencies round exactly as there in every dtype; pos [...] int64 → θ [..., d/2].
    omega = torch.arange(d // 2, dtype=dtype, device=pos.device)
    omega = omega / (d / 2.0)
    omega = 1.0 / 10000**omega
    return pos.to(dtype).unsqueeze(-1) * omega


def rope_tables(
    ids: torch.Tensor, grid_hw: tuple[int, int], head_dim: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The cos and sin tables for token ids ``ids`` [B, N] (or [N]) int64.

    Returns ``(cos, sin)``, each [B, 1, N, 3·rope_dim(head_dim)] (or [1, 1, N, …]) in ``dtype``: the
    t, h and w chunks side by side, each chunk its d/2 values twice (``repeat``, not interleave).
    The size-1 dim broadcasts over the heads. Raises ValueError for a head_dim below 6 (nothing to
    rotate would be silently no RoPE).
    """
    d = rope_dim(head_dim)
    if d == 0:
        raise ValueError(f"head_dim {head_dim} is too small for 3D RoPE (needs >= 6 channels per head)")
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2:
        raise ValueError(f"RoPE token ids must be [B, N] or [N], got {tuple(ids.shape)}")
    angles = torch.cat([_axis_angles(p, d, dtype) for p in split_positions(ids, grid_hw)], dim=-1)
    cos, sin = angles.cos(), angles.sin()
    # [θ_t, θ_h, θ_w] (each d/2) → [θ_t, θ_t, θ_h, θ_h, θ_w, θ_w] chunk by chunk (each d).
    half = d // 2
    cos = torch.cat([cos[..., i * half:(i + 1) * half].repeat(1, 1, 2) for i in range(3)], dim=-1)
    sin = torch.cat([sin[..., i * half:(i + 1) * half].repeat(1, 1, 2) for i in range(3)], dim=-1)
    return cos.unsqueeze(1), sin.unsqueeze(1)


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """Adjacent channel pairs ``(x[2i], x[2i+1]) → (−x[2i+1], x[2i])`` over the last dim (even)."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate q or k: ``x`` [B, heads, N, head_dim]; ``cos``/``sin`` [B or 1, 1, N, R] from
    :func:`rope_tables`, R = 3·rope_dim(head_dim) ≤ head_dim. The first R channels become
    ``x·cos + rotate_pairs(x)·sin``, the rest pass through. The result has x's dtype; with float32
    tables and a lower-precision x the rotation runs in float32 and is rounded once."""
    r = cos.shape[-1]
    rot = x[..., :r]
    out = rot * cos + rotate_pairs(rot) * sin
    if r == x.shape[-1]:
        return out.to(x.dtype)
    return torch.cat([out.to(x.dtype), x[..., r:]], dim=-1)


class RotaryPositions:
    """The token positions of one forward pass, shared by every block: token ids [B, N] (or [N])
    and the grid ``(Hp, Wp)`` that splits them. :meth:`tables` builds the cos/sin tables on first
    use for each (head_dim, dtype) and keeps them, so a 24-block encoder computes them once, not
    48 times as the official code does (the values are identical).

    ``angle_dtype``: None computes the tables in the dtype of q/k (the official behaviour, see the
    module docstring); a dtype forces it.
    """

    def __init__(self, ids: torch.Tensor, grid_hw: tuple[int, int], angle_dtype: torch.dtype | None = None):
        self.ids = ids
        self.grid_hw = (int(grid_hw[0]), int(grid_hw[1]))
        self.angle_dtype = angle_dtype
        self._cache: dict[tuple[int, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def tables(self, head_dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = self.angle_dtype or dtype
        key = (head_dim, dtype)
        if key not in self._cache:
            self._cache[key] = rope_tables(self.ids, self.grid_hw, head_dim, dtype)
        return self._cache[key]

    def rotate(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q, k [B, heads, N, head_dim] → both rotated (:func:`apply_rope`)."""
        if q.shape[-2] != self.ids.shape[-1]:
            raise ValueError(f"RoPE has positions for {self.ids.shape[-1]} tokens, attention got {q.shape[-2]}")
        cos, sin = self.tables(q.shape[-1], q.dtype)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin)


ANGLE_DTYPES = {"activation": None, "float32": torch.float32}


def angle_dtype_of(name: str | None) -> torch.dtype | None:
    """``"activation"`` (official: the dtype of q/k) → None; ``"float32"`` → torch.float32."""
    if name is None:
        return None
    if name not in ANGLE_DTYPES:
        raise ValueError(f"rope_angle_dtype must be one of {sorted(ANGLE_DTYPES)}, got {name!r}")
    return ANGLE_DTYPES[name]
