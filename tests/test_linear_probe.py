"""The linear probe on pooled features (vjepa_fast.linear_probe): what it reads, what it cannot, and that
it is deterministic (issue 16: the demo's second, stricter probe)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from vjepa_fast.linear_probe import linear_probe, pooled_features

N, L, D, C = 200, 64, 32, 10


def _labels(n):
    return torch.arange(n) % C


def _noise(seed, n=N):
    return torch.randn(n, L, D, generator=torch.Generator().manual_seed(seed))


def _with_class_signal(x, y, amplitude, tokens=slice(None)):
    """Add ``amplitude`` along feature ``y`` (one direction per class) on the chosen tokens."""
    x = x.clone()
    x[torch.arange(len(y))[:, None], tokens, y[:, None]] += amplitude
    return x


def test_reads_a_class_signal_that_survives_pooling():
    y = _labels(N)
    res = linear_probe(_with_class_signal(_noise(0), y, 0.5), y, _with_class_signal(_noise(1), y, 0.5), y)
    assert res.top1 >= 95.0 and res.train_top1 >= 95.0 and res.cv_top1 >= 90.0


def test_noise_scores_near_chance():
    y = _labels(N)
    res = linear_probe(_noise(0), y, _noise(1), y)
    assert res.top1 < 25.0  # chance 10 %; 200 val clips


def test_cannot_read_a_signal_that_cancels_in_the_mean():
    """+a on the first half of the tokens, -a on the second: every token carries the class, the mean does
    not. This is what separates it from the attentive probe (which can pick tokens)."""
    y = _labels(N)

    def cancelling(x):
        x = _with_class_signal(x, y, 2.0, slice(0, L // 2))
        return _with_class_signal(x, y, -2.0, slice(L // 2, L))

    xtr, xva = cancelling(_noise(0)), cancelling(_noise(1))
    assert linear_probe(xtr, y, xva, y).top1 < 25.0
    # the same signal on one half only is read
    assert linear_probe(_with_class_signal(_noise(0), y, 2.0, slice(0, L // 2)), y,
                        _with_class_signal(_noise(1), y, 2.0, slice(0, L // 2)), y).top1 >= 95.0


def test_deterministic_and_independent_of_torch_threads():
    y = _labels(N)
    xtr, xva = _with_class_signal(_noise(0), y, 0.1), _with_class_signal(_noise(1), y, 0.1)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = linear_probe(xtr, y, xva, y)
        torch.set_num_threads(2)
        b = linear_probe(xtr, y, xva, y)
    finally:
        torch.set_num_threads(before)
    assert a == b
    assert 10.0 < a.top1 < 100.0  # a weak signal: the comparison above is not of two trivial answers


def test_pooling_averages_tokens_and_views():
    x = torch.randn(3, 2, 5, 4, dtype=torch.float32)
    np.testing.assert_allclose(pooled_features(x), x.double().mean(dim=(1, 2)).numpy())
    np.testing.assert_allclose(pooled_features(x[:, 0]), x[:, 0].double().mean(dim=1).numpy())
    with pytest.raises(ValueError, match=r"\[N, L, D\].*got shape \(3, 4\)"):
        pooled_features(torch.zeros(3, 4))


def test_few_clips_per_class_fall_back_without_cross_validation():
    y = torch.arange(10)  # one clip per class: no stratified fold possible
    res = linear_probe(_noise(0, 10), y, _noise(1, 10), y)
    assert res.C == 1.0 and math.isnan(res.cv_top1) and 0.0 <= res.top1 <= 100.0
    y3 = torch.arange(30) % 10  # three per class: 3 folds
    assert not math.isnan(linear_probe(_noise(0, 30), y3, _noise(1, 30), y3).cv_top1)


def test_errors_name_the_mismatch():
    y = _labels(N)
    with pytest.raises(ValueError, match="200 train features for 199 labels"):
        linear_probe(_noise(0), y[:-1], _noise(1), y)
    with pytest.raises(ValueError, match="train features are 32-d, val features 16-d"):
        linear_probe(_noise(0), y, _noise(1)[..., :16], y)
