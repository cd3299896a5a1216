"""vjepa-fast: a fast, faithful implementation of V-JEPA (Bardes et al. 2024).

Public API (see README.md for a tour):

- models: :class:`VisionTransformer`, :func:`build_encoder`, :data:`VIT_PRESETS`,
  :class:`VisionTransformerPredictor`, :class:`AttentiveClassifier`, :class:`AttentivePooler`,
  V-JEPA 2's :class:`AttentiveClassifierV2` / :class:`AttentivePoolerV2` (RoPE models: ``use_rope``)
- objective: :class:`VJEPA`, :func:`build_vjepa`, :func:`jepa_loss`, :func:`jepa_loss_groups` (V2)
- training pieces: :class:`Schedules`, :func:`build_optimizer`, :func:`clip_gradients`, :func:`ema_update_`
- checkpoints: :func:`load_vjepa_checkpoint`, :func:`load_encoder`, :func:`vjepa_checkpoint`, :func:`atomic_save`;
  V2: :func:`load_vjepa2_checkpoint` (:mod:`vjepa_fast.checkpoint_v2`); Hugging Face: :mod:`vjepa_fast.hf_vjepa2`
- attention backend: :func:`set_attention_backend` (or ``VJEPA_FAST_ATTN``)
"""
import os as _os

# setup.py installs ../kernels as vjepa_fast.kernels. In a source checkout that is not installed
# (a benchmark run from the repository on a bare GPU machine, say), find it there too, so that
# `vjepa_fast.kernels` imports without an install or a symlink shim.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(__path__[0], "kernels")) and _os.path.isfile(
    _os.path.join(_checkout, "kernels", "__init__.py")
):
    __path__.append(_checkout)

from .attention import attention_backend, get_attention_backend, set_attention_backend
from .attentive_probe import AttentiveClassifier, AttentiveClassifierV2, AttentivePooler, AttentivePoolerV2
from .checkpoint import CheckpointError, atomic_save, load_encoder, load_vjepa_checkpoint, read_checkpoint, vjepa_checkpoint
from .checkpoint_v2 import load_vjepa2_checkpoint
from .jepa import VJEPA, build_vjepa, jepa_loss, jepa_loss_groups, normalize_targets
from .optim import build_optimizer, clip_gradients, clipping_active, ema_update_, param_groups
from .predictor import VisionTransformerPredictor
from .schedules import Schedules
from .vision_transformer import VIT_PRESETS, VisionTransformer, build_encoder

__version__ = "0.1.0"
