"""Triton kernels for vjepa-fast (installed as vjepa_fast.kernels)."""
