"""The official V-JEPA training step, structure for structure, over vjepa-fast's modules.

This is the baseline the fast path is measured against (``benchmarks/train_step.py --impl
reference``) and checked against (``--check-loss``). It runs on the parameters of a
:class:`vjepa_fast.VJEPA` but none of its fused code: every forward below is re-written from the
official V1 sources (facebookresearch/jepa; see ``shared/reference/official_vjepa.md`` §1.6, 1.7,
2, 4) using only the module's sub-modules (``patch_embed``, ``pos_embed``, ``blocks``, ``norm``,
``predictor_embed``, ``mask_tokens``, ``predictor_pos_embed``, ``predictor_blocks``,
``predictor_norm``, ``predictor_proj``) and plain PyTorch ops:

* ``MultiMaskWrapper``: one full encoder pass per mask config, each recomputing the patch embedding
  of the whole clip and adding the position table *before* the gather;
* ``apply_masks``: ``torch.gather`` with the index expanded by ``m.unsqueeze(-1).repeat(1, 1, D)``;
* attention: ``F.scaled_dot_product_attention`` with PyTorch's own backend choice (the official
  ``torch.backends.cuda.sdp_kernel()`` context enables every backend; the deprecated context itself
  is left out);
* predictor: ``predictor_pos_embed.repeat(B, 1, 1)`` + gather for the context positions,
  ``mask_token.repeat(B, N, 1)`` + gather + position gather + ``cat`` for the targets;
* target: full ``F.layer_norm`` of the target-encoder output, then one gather per mask config;
* loss: ``mean(|z - h| ** loss_exp) / loss_exp`` per config, and the variance regulariser computed
  every step (weighted by ``reg_coeff``, 0 in every config);
* ``GradScaler`` whenever autocast is on (the official code makes one even for bf16);
* AdamW with PyTorch's default (foreach) implementation over the four official groups; clipping
  (separately for encoder and predictor) only when asked;
* the EMA as a Python loop of ``t.mul_(m).add_((1 - m) * s)``;
* per step ``float(loss)`` (the official ``train_step`` returns floats) and, on CUDA, the official
  ``gpu_timer``: CUDA events around the step and ``torch.cuda.synchronize()``.

``official_loggers=True`` adds the official per-step ``grad_logger`` (one ``float(norm)`` per weight
matrix) and ``adamw_logger`` (``optimizer.state_dict()`` and two ``float`` per state tensor). The
published H100 measurement (310.7 ms/step for ViT-L/16 16x224, batch 24) does not itemise them, so
they are off by default.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from vjepa_fast.optim import param_groups

Phase = Optional[Callable[[Optional[str]], None]]


def _no_phase(name: str | None) -> None:  # default hook: no phase marks
    return None


# -- official building blocks ------------------------------------------------------------------


def apply_masks(x: torch.Tensor, masks: Sequence[torch.Tensor], concat: bool = True):
    """Official ``src/masks/utils.py:apply_masks``: gather kept tokens with a repeated index."""
    all_x = []
    for m in masks:
        mask_keep = m.unsqueeze(-1).repeat(1, 1, x.size(-1))
        all_x += [torch.gather(x, dim=1, index=mask_keep)]
    if not concat:
        return all_x
    return torch.cat(all_x, dim=0)


def attention_forward(attn, x: torch.Tensor) -> torch.Tensor:
    """Official ``Attention.forward`` (use_sdpa=True, dropout 0)."""
    B, N, C = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, C // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    x = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0)
    x = x.transpose(1, 2).reshape(B, N, C)
    return attn.proj(x)


def block_forward(blk, x: torch.Tensor) -> torch.Tensor:
    """Official pre-norm ``Block.forward`` (drop-path and dropouts are 0 in every config)."""
    y = attention_forward(blk.attn, blk.norm1(x))
    x = x + y
    x = x + blk.mlp.fc2(blk.mlp.act(blk.mlp.fc1(blk.norm2(x))))
    return x


def encoder_forward(enc, x: torch.Tensor, masks: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """Official ``VisionTransformer.forward``: patch-embed the whole clip, add positions, then gather."""
    if masks is not None and not isinstance(masks, (list, tuple)):
        masks = [masks]
    x_tokens = enc.patch_embed(x)
    pos_embed = enc.pos_embed_for(_token_grid(enc, x))  # = enc.pos_embed at the training size
    x_tokens += pos_embed
    if masks is not None:
        x_tokens = apply_masks(x_tokens, masks)
    for blk in enc.blocks:
        x_tokens = block_forward(blk, x_tokens)
    return enc.norm(x_tokens)


def _token_grid(enc, x: torch.Tensor) -> tuple[int, int, int]:
    if enc.is_video:
        _, _, T, H, W = x.shape
        return T // enc.tubelet_size, H // enc.patch_size, W // enc.patch_size
    _, _, H, W = x.shape
    return 1, H // enc.patch_size, W // enc.patch_size


def predictor_forward(pred, ctxt: torch.Tensor, masks_ctxt, masks_tgt, mask_index: int = 1) -> torch.Tensor:
    """Official V1 ``VisionTransformerPredictor.forward`` (mask-token path, no sorting)."""
    if not isinstance(masks_ctxt, (list, tuple)):
        masks_ctxt = [masks_ctxt]
    if not isinstance(masks_tgt, (list, tuple)):
        masks_tgt = [masks_tgt]
    B = len(ctxt) // len(masks_ctxt)
    x = pred.predictor_embed(ctxt)
    _, N_ctxt, D = x.shape
    ctxt_pos_embed = pred.predictor_pos_embed.repeat(B, 1, 1)
    x += apply_masks(ctxt_pos_embed, masks_ctxt)
    mask_index = mask_index % pred.num_mask_tokens
    pred_tokens = pred.mask_tokens[mask_index]
    pred_tokens = pred_tokens.repeat(B, pred.num_patches, 1)
    pred_tokens = apply_masks(pred_tokens, masks_tgt)
    pos_embs = pred.predictor_pos_embed.repeat(B, 1, 1)
    pos_embs = apply_masks(pos_embs, masks_tgt)
    # repeat_interleave_batch(pos_embs, B, repeat=len(masks_ctxt)) is the identity for one mask.
    pred_tokens += pos_embs
    x = x.repeat(len(masks_tgt), 1, 1)
    x = torch.cat([x, pred_tokens], dim=1)
    for blk in pred.predictor_blocks:
        x = block_forward(blk, x)
    x = pred.predictor_norm(x)
    x = x[:, N_ctxt:]
    return pred.predictor_proj(x)


def multimask_encoder(enc, x: torch.Tensor, masks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Official ``MultiMaskWrapper``: a full encoder pass per mask config."""
    return [encoder_forward(enc, x, masks=m) for m in masks]


def multimask_predictor(pred, ctxt, tgt, masks_ctxt, masks_tgt) -> list[torch.Tensor]:
    """Official ``PredictorMultiMaskWrapper``: mask config i uses mask token i."""
    outs = []
    for i, (zi, _hi, mc, mt) in enumerate(zip(ctxt, tgt, masks_ctxt, masks_tgt)):
        outs.append(predictor_forward(pred, zi, [mc], [mt], mask_index=i))
    return outs


# -- official loggers (off by default) ---------------------------------------------------------


def grad_logger(named_params) -> list[float]:
    """Official ``src/utils/logging.py:grad_logger``: one host sync per weight matrix."""
    norms = []
    for n, p in named_params:
        if (p.grad is not None) and not (n.endswith(".bias") or len(p.shape) == 1):
            norms.append(float(torch.norm(p.grad.data)))
    return norms


def adamw_logger(optimizer) -> tuple[float, float]:
    """Official ``adamw_logger``: the optimizer state dict and two host syncs per state tensor."""
    state = optimizer.state_dict()["state"]
    m1 = m2 = 0.0
    for key in state:
        s = state[key]
        m1 += float(s["exp_avg"].abs().mean())
        m2 += float(s["exp_avg_sq"].abs().mean())
    return m1, m2


# -- the step ----------------------------------------------------------------------------------


class OfficialStep:
    """What the official V1 and V2 steps share (V2: ``reference_step_v2.py``): AdamW with PyTorch's
    default (foreach) implementation over the four official groups, a ``GradScaler`` whenever autocast
    is on (the official code makes one even for bf16), the scaled backward and optimizer step, and the
    official ``gpu_timer`` around each call. Subclasses define ``_train_step(clips, masks_enc,
    masks_pred, phase) -> float``."""

    impl = "reference"

    def __init__(self, model, schedules, dtype: torch.dtype = torch.float32,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):  # fmt: skip
        self.model = model
        self.encoder, self.predictor = model.encoder, model.predictor
        self.target_encoder = model.target_encoder
        self.device = next(model.parameters()).device
        self.schedules = schedules
        self.dtype = dtype
        self.mixed_precision = dtype in (torch.bfloat16, torch.float16)
        self.loss_exp = model.loss_exp
        # Official init_opt: AdamW over the four groups, default implementation (foreach on CUDA).
        self.optimizer = torch.optim.AdamW(param_groups(self.encoder, self.predictor), betas=betas, eps=eps)
        # Official: `GradScaler() if mixed_precision else None`, bf16 included.
        self.scaler = torch.amp.GradScaler(self.device.type) if self.mixed_precision else None
        #: ms of each step by the official ``gpu_timer`` (CUDA only): what the official CSV logs.
        self.gpu_timer_ms: list[float] = []

    def autocast(self):
        if not self.mixed_precision:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _backward(self, loss: torch.Tensor) -> None:
        """Official: the scaled loss's backward, then unscale (mixed precision); else plain backward."""
        if self.mixed_precision:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()

    def _optimizer_step(self) -> None:
        if self.mixed_precision:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    def _train_step(self, clips, masks_enc, masks_pred, phase) -> float:
        raise NotImplementedError

    def __call__(self, clips, masks_enc, masks_pred, phase: Phase = None) -> float:
        phase = phase or _no_phase
        if self.device.type == "cuda":  # official gpu_timer
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            loss = self._train_step(clips, masks_enc, masks_pred, phase)
            end.record()
            torch.cuda.synchronize()
            self.gpu_timer_ms.append(start.elapsed_time(end))
        else:
            loss = self._train_step(clips, masks_enc, masks_pred, phase)
        phase(None)
        return loss


class ReferenceStep(OfficialStep):
    """One official V-JEPA iteration per call on ``model`` (a :class:`vjepa_fast.VJEPA`).

    ``__call__(clips, masks_enc, masks_pred, phase=None)`` returns the loss as a Python float (the
    official step does). ``phase(name)`` is called when a phase starts (``target_fwd``,
    ``ctx_pred_fwd_bwd``, ``optimizer``, ``ema``, ``host_sync``) and with ``None`` at the end.
    """

    def __init__(
        self,
        model,
        schedules,
        dtype: torch.dtype = torch.float32,
        clip_grad: float | None = None,
        official_loggers: bool = False,
    ):
        super().__init__(model, schedules, dtype)
        self.clip_grad = clip_grad
        self.official_loggers = official_loggers
        self.reg_coeff = model.reg_coeff

    def _train_step(self, clips, masks_enc, masks_pred, phase) -> float:
        encoder, predictor, target_encoder = self.encoder, self.predictor, self.target_encoder
        optimizer = self.optimizer
        phase("target_fwd")
        self.schedules.step(optimizer)  # official: lr / wd schedulers step before the forward

        def forward_target(c):
            with torch.no_grad():
                h = encoder_forward(target_encoder, c)
                h = F.layer_norm(h, (h.size(-1),))
                return apply_masks(h, masks_pred, concat=False)

        def forward_context(c, h):
            z = multimask_encoder(encoder, c, masks_enc)
            return multimask_predictor(predictor, z, h, masks_enc, masks_pred)

        def loss_fn(z, h):
            loss = 0.0
            for zi, hi in zip(z, h):
                loss += torch.mean(torch.abs(zi - hi) ** self.loss_exp) / self.loss_exp
            loss /= len(masks_pred)
            return loss

        def reg_fn(z):
            return sum([torch.sqrt(zi.var(dim=1) + 0.0001) for zi in z]) / len(z)

        loss_reg = 0.0
        with self.autocast():
            h = forward_target(clips)
            phase("ctx_pred_fwd_bwd")
            z = forward_context(clips, h)
            loss_jepa = loss_fn(z, h)
            pstd_z = reg_fn(z)
            loss_reg += torch.mean(F.relu(1.0 - pstd_z))
            loss = loss_jepa + self.reg_coeff * loss_reg

        self._backward(loss)
        if self.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(encoder.parameters(), self.clip_grad)
            torch.nn.utils.clip_grad_norm_(predictor.parameters(), self.clip_grad)
        phase("optimizer")
        self._optimizer_step()
        if self.official_loggers:
            grad_logger(encoder.named_parameters())
            grad_logger(predictor.named_parameters())
        optimizer.zero_grad()
        if self.official_loggers:
            adamw_logger(optimizer)

        phase("ema")
        m = self.schedules.momentum()
        with torch.no_grad():
            for param_q, param_k in zip(encoder.parameters(), target_encoder.parameters()):
                param_k.data.mul_(m).add_((1.0 - m) * param_q.detach().data)
        phase("host_sync")
        return float(loss.detach())  # official: float(loss) (a host sync)
