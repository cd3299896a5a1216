"""V-JEPA pretraining loop with the official step semantics.

One step: schedules advance (lr, wd) → target forward (no grad) → context encoder + predictor
→ L1 loss → backward → separate encoder/predictor clipping once ``epoch > warmup`` → AdamW →
EMA of the target. bf16 runs under autocast without a GradScaler (it has the fp32 exponent
range); fp16 uses one; fp32 runs plain.

The hot path never waits for the GPU: per-step metrics stay on the device and are read back
once every ``logging.log_every`` steps, where progress, the CSV log and the NaN check happen.
"""
from __future__ import annotations

import contextlib
import csv
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .attention import set_attention_backend
from .checkpoint import atomic_save, load_vjepa_checkpoint, read_checkpoint, vjepa_checkpoint
from .config import PretrainConfig
from .jepa import build_vjepa
from .masks import build_mask_collator
from .optim import build_optimizer, clip_gradients, clipping_active, ema_update_
from .schedules import Schedules

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CSV_COLUMNS = ["epoch", "itr", "loss", "loss-jepa", "reg-loss", "enc-grad-norm", "pred-grad-norm", "lr", "wd", "wall-time(ms)"]


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class SyntheticClips:
    """Random normalised clips generated on the device, reproducible per (seed, rank, step).
    Used by the demo and the benchmarks, where decoding must not be what is measured."""

    def __init__(self, batch_size: int, num_frames: int, crop_size: int, device, seed: int = 0, rank: int = 0):
        self.shape = (batch_size, 3, num_frames, crop_size, crop_size)
        self.device, self.seed, self.rank = torch.device(device), seed, rank

    def __call__(self, step: int) -> torch.Tensor:
        g = torch.Generator(device=self.device).manual_seed(hash((self.seed, self.rank, step)) & 0x7FFFFFFF)
        return torch.randn(self.shape, generator=g, device=self.device)


def apply_runtime_settings(cfg: PretrainConfig) -> None:
    """meta.attn_backend and meta.kernels are process-wide switches (see attention.py and
    kernels/dispatch.py); 'auto' leaves the environment's choice alone."""
    set_attention_backend(cfg.meta.attn_backend if cfg.meta.attn_backend != "auto" else os.environ.get("VJEPA_FAST_ATTN", "auto"))
    if cfg.meta.kernels != "auto":
        os.environ["VJEPA_FAST_KERNELS"] = cfg.meta.kernels


def build_model_from_config(cfg: PretrainConfig):
    d, m = cfg.data, cfg.model
    return build_vjepa(
        m.model_name, crop_size=d.crop_size, patch_size=d.patch_size, num_frames=d.num_frames,
        tubelet_size=d.tubelet_size, uniform_power=m.uniform_power, pred_depth=m.pred_depth,
        pred_embed_dim=m.pred_embed_dim, pred_num_heads=m.pred_num_heads, num_mask_tokens=len(cfg.mask),
        zero_init_mask_tokens=m.zero_init_mask_tokens, loss_exp=cfg.loss.loss_exp, reg_coeff=cfg.loss.reg_coeff,
    )


@dataclass
class FitResult:
    steps: int
    final_loss: float
    first_loss: float
    checkpoint: str
    log: str
    seconds: float


class Trainer:
    def __init__(self, cfg: PretrainConfig, *, rank: int = 0, world_size: int = 1, loader_len: int | None = None,
                 out: Callable[[str], None] | None = None):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.out = out or (lambda s: print(s, flush=True))
        self.device = resolve_device(cfg.meta.device)
        apply_runtime_settings(cfg)
        torch.manual_seed(cfg.meta.seed)
        self.model = build_model_from_config(cfg).to(self.device)
        self.optimizer = build_optimizer(self.model.encoder, self.model.predictor)
        self.ipe = cfg.iterations_per_epoch(loader_len)
        self.schedules = Schedules.from_config(cfg.optimization, ipe=self.ipe)
        d = cfg.data
        self.masks = build_mask_collator(
            d.mask_type, cfg.mask_dicts(), crop_size=d.crop_size, num_frames=d.num_frames,
            patch_size=d.patch_size, tubelet_size=d.tubelet_size, seed=cfg.meta.seed, rank=rank,
        )
        self.dtype = DTYPES[cfg.meta.dtype]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.step = 0

    # -- one optimisation step ---------------------------------------------------------------
    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def train_step(self, clips: torch.Tensor, masks_enc, masks_pred) -> dict[str, torch.Tensor]:
        """One official V-JEPA iteration. Returns device tensors only (no host sync)."""
        model, opt, o = self.model, self.optimizer, self.cfg.optimization
        epoch = self.step // self.ipe
        self.schedules.step(opt)
        with self.autocast():
            out = model(clips, masks_enc, masks_pred)
        self.scaler.scale(out.loss).backward()
        zero = out.loss.detach().new_zeros(())
        norms = (zero, zero)
        if clipping_active(epoch, o.warmup, o.clip_grad):
            self.scaler.unscale_(opt)
            norms = clip_gradients(model.encoder, model.predictor, o.clip_grad)
        self.scaler.step(opt)
        self.scaler.update()
        opt.zero_grad(set_to_none=True)
        ema_update_(model.target_encoder, model.encoder, self.schedules.momentum())
        self.step += 1
        return {"loss": out.loss.detach(), "loss-jepa": out.loss_jepa.detach(), "reg-loss": out.loss_reg.detach(),
                "enc-grad-norm": norms[0].detach(), "pred-grad-norm": norms[1].detach()}

    # -- checkpoints -------------------------------------------------------------------------
    def state(self, loss: float) -> dict:
        extra = {
            "step": self.step, "schedules": self.schedules.state_dict(), "masks": self.masks.state_dict(),
            "config": self.cfg.to_dict(), "torch_rng": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            extra["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return vjepa_checkpoint(
            self.model, self.optimizer, epoch=self.step // self.ipe, loss=loss,
            batch_size=self.cfg.data.batch_size, world_size=self.world_size,
            lr=self.schedules.lr(max(self.schedules.iteration, 1)), extra=extra,
        )

    def save(self, path: str | os.PathLike, loss: float) -> None:
        if self.rank == 0:
            atomic_save(self.state(loss), path)

    def resume(self, path: str | os.PathLike) -> None:
        ckpt = read_checkpoint(path)
        load_vjepa_checkpoint(self.model, ckpt)
        if ckpt.get("opt"):
            self.optimizer.load_state_dict(ckpt["opt"])
        extra = ckpt.get("vjepa_fast")
        if extra:
            self.step = int(extra["step"])
            self.schedules.load_state_dict(extra["schedules"])
            self.masks.load_state_dict(extra["masks"])
            torch.set_rng_state(extra["torch_rng"])
            if "cuda_rng" in extra and self.device.type == "cuda":
                torch.cuda.set_rng_state(extra["cuda_rng"], self.device)
        else:
            # An official file: fast-forward schedules and masks by whole epochs, as the
            # official resume does.
            self.step = int(ckpt["epoch"]) * self.ipe
            self.schedules.load_state_dict({"iteration": self.step})
            self.masks.load_state_dict({"step": self.step})

    # -- the loop ----------------------------------------------------------------------------
    def fit(self, clips_for_step: Callable[[int], torch.Tensor] | None = None) -> FitResult:
        """Train until ``total_steps``. ``clips_for_step(step)`` supplies [B, 3, T, H, W] clips on
        the device; by default synthetic clips."""
        cfg = self.cfg
        folder = Path(cfg.logging.folder)
        folder.mkdir(parents=True, exist_ok=True)
        latest = Path(cfg.latest_checkpoint_path)
        if cfg.meta.load_checkpoint:
            src = folder / cfg.meta.read_checkpoint if cfg.meta.read_checkpoint else latest
            self.resume(src)
            self.out(f"resumed from {src} at step {self.step}")
        d = cfg.data
        if clips_for_step is None:
            clips_for_step = SyntheticClips(d.batch_size, d.num_frames, d.crop_size, self.device, cfg.meta.seed, self.rank)
        total = cfg.total_steps()
        log_path = Path(cfg.log_path(self.rank))
        new_log = not log_path.exists() or self.step == 0
        log_file = open(log_path, "w" if new_log else "a", newline="")
        writer = csv.writer(log_file)
        if new_log:
            writer.writerow(CSV_COLUMNS)
        buffered: list[tuple[int, float, float, dict]] = []
        first_loss = last_loss = math.nan
        t0 = t_window = time.perf_counter()
        steps_at_start = self.step
        try:
            while self.step < total:
                masks_enc, masks_pred = self.masks.sample(d.batch_size, self.step)
                masks_enc = [m.to(self.device, non_blocking=True) for m in masks_enc]
                masks_pred = [m.to(self.device, non_blocking=True) for m in masks_pred]
                itr = self.step
                metrics = self.train_step(clips_for_step(itr), masks_enc, masks_pred)
                lr, wd = self.schedules.lr(self.schedules.iteration), self.schedules.wd(self.schedules.iteration)
                buffered.append((itr, lr, wd, metrics))
                epoch_done = self.step % self.ipe == 0
                if len(buffered) >= cfg.logging.log_every or self.step == total or epoch_done:
                    now = time.perf_counter()
                    rows = self._flush(writer, buffered, (now - t_window) * 1000 / len(buffered))
                    log_file.flush()
                    if math.isnan(first_loss):
                        first_loss = rows[0][2]
                    last_loss = rows[-1][2]
                    bad = next((r for r in rows if not math.isfinite(r[2])), None)
                    if bad is not None:
                        debug = folder / f"{cfg.logging.write_tag}-nonfinite-step{bad[1]}.pth.tar"
                        self.save(debug, bad[2])
                        raise FloatingPointError(
                            f"loss became {bad[2]} at step {bad[1]} (epoch {bad[0]}); debug checkpoint: {debug}"
                        )
                    done = self.step - steps_at_start
                    rate = done * d.batch_size * self.world_size / (now - t0)
                    eta = (total - self.step) * (now - t0) / max(done, 1)
                    self.out(
                        f"step {self.step:>6}/{total} | epoch {self.step // self.ipe} | loss {last_loss:.4f} | "
                        f"lr {lr:.3e} | wd {wd:.3f} | {rate:.1f} clips/s | ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}"
                        + self._memory()
                    )
                    buffered.clear()
                    t_window = now
                if epoch_done or self.step == total:
                    self.save(latest, last_loss)
        finally:
            log_file.close()
        return FitResult(self.step, last_loss, first_loss, str(latest), str(log_path), time.perf_counter() - t0)

    def _flush(self, writer, buffered, ms_per_step: float) -> list[list]:
        keys = ["loss", "loss-jepa", "reg-loss", "enc-grad-norm", "pred-grad-norm"]
        values = torch.stack([torch.stack([m[k].float() for k in keys]) for _, _, _, m in buffered]).tolist()
        rows = []
        for (itr, lr, wd, _), vals in zip(buffered, values):
            row = [itr // self.ipe, itr, *vals, lr, wd, round(ms_per_step, 2)]
            writer.writerow(row)
            rows.append(row)
        return rows

    def _memory(self) -> str:
        if self.device.type != "cuda":
            return ""
        return f" | mem {torch.cuda.max_memory_allocated(self.device) / 2**30:.1f} GiB"


def pretrain(cfg: PretrainConfig, out: Callable[[str], None] | None = None) -> FitResult:
    if not cfg.data.synthetic:
        raise NotImplementedError(
            "decoded-video pretraining is not wired into the trainer yet; set data.synthetic=true "
            "(the video dataset lands with the pretraining-pipeline work)"
        )
    return Trainer(cfg, out=out).fit()
