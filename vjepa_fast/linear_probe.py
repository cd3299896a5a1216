"""Linear probe on pooled frozen features: the classic frozen evaluation, next to the attentive probe.

An attentive probe learns where to look among a clip's tokens, so it can read a good deal from the
token features of a *randomly initialised* encoder (each token still carries a random projection of
its own patch). A linear classifier on the features averaged over all tokens cannot: what survives
the averaging is what the encoder itself made of the clip. That makes it the sharper test of whether
pretraining taught the encoder something (the demo's issue 16).

Protocol (ours; the official V-JEPA evals have only attentive probes): features ``[N, L, D]`` ->
mean over the ``L`` tokens -> standardised (``StandardScaler``) -> multinomial logistic regression
(scikit-learn ``LogisticRegression``, L-BFGS). The inverse L2 strength ``C`` is chosen by stratified
5-fold cross-validation (``GridSearchCV``) **on the train clips only**, with the scaler refitted inside
each fold; then scaler and classifier are refit on all train clips. No choice is made on val.
Deterministic: no shuffling, and BLAS is held to one thread while it fits and predicts, so the same
features give the same figures on any core count.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

#: The grid of inverse regularisation strengths ``C`` searched by cross-validation.
LINEAR_PROBE_CS = tuple(float(c) for c in np.logspace(-3, 4, 15))  # 1e-3 .. 1e4, half decades
LINEAR_PROBE_FOLDS = 5


@dataclass
class LinearProbeResult:
    top1: float        # val top-1, %
    train_top1: float  # top-1 on the train clips it was fitted on, %
    C: float           # chosen inverse L2 strength
    cv_top1: float     # mean cross-validated top-1 at that C, % (train clips only; NaN: no CV)

    def to_dict(self) -> dict:
        return asdict(self)


def pooled_features(feats: torch.Tensor) -> np.ndarray:
    """``[N, L, D]`` or ``[N, V, L, D]`` (views are averaged too) -> float64 ``[N, D]`` mean over tokens."""
    if feats.dim() not in (3, 4):
        raise ValueError(f"expected features [N, L, D] or [N, V, L, D], got shape {tuple(feats.shape)}")
    dims = (1,) if feats.dim() == 3 else (1, 2)
    return feats.detach().to("cpu", torch.float64).mean(dim=dims).numpy()


def linear_probe(train_feats: torch.Tensor, train_labels: torch.Tensor, val_feats: torch.Tensor,
                 val_labels: torch.Tensor, *, Cs=LINEAR_PROBE_CS, folds: int = LINEAR_PROBE_FOLDS) -> LinearProbeResult:
    """Fit a linear probe on mean-pooled ``train_feats`` and score it on ``val_feats`` (module docstring).

    ``*_feats``: ``[N, L, D]`` (or ``[N, V, L, D]``) float features of a frozen encoder; ``*_labels``:
    int64 ``[N]`` class indices. ``folds`` is lowered to the smallest class's train count (below 2: no
    search, ``C = 1``, ``cv_top1`` NaN). Raises ValueError when features and labels disagree in count or
    the feature widths differ. Needs scikit-learn (the demo's extra).
    """
    try:
        from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
        from sklearn.model_selection import GridSearchCV, StratifiedKFold  # noqa: PLC0415
        from sklearn.pipeline import make_pipeline  # noqa: PLC0415
        from sklearn.preprocessing import StandardScaler  # noqa: PLC0415
        from threadpoolctl import threadpool_limits  # noqa: PLC0415
    except ImportError as e:  # pragma: no cover
        raise ImportError("the linear probe needs scikit-learn: pip install scikit-learn "
                          "(or pip install 'vjepa-fast[demo]')") from e
    xtr, xva = pooled_features(train_feats), pooled_features(val_feats)
    ytr = train_labels.detach().cpu().numpy().astype(np.int64)
    yva = val_labels.detach().cpu().numpy().astype(np.int64)
    if len(xtr) != len(ytr) or len(xva) != len(yva):
        raise ValueError(f"linear probe: {len(xtr)} train features for {len(ytr)} labels, "
                         f"{len(xva)} val features for {len(yva)} labels")
    if xtr.shape[1] != xva.shape[1]:
        raise ValueError(f"linear probe: train features are {xtr.shape[1]}-d, val features {xva.shape[1]}-d")
    counts = np.bincount(ytr)
    smallest = int(counts[counts > 0].min()) if len(ytr) else 0
    folds = min(folds, smallest)  # stratified folds need every class in each; tiny smoke runs have few clips
    # The standardisation is part of the model, fitted inside each fold: a fold's held-out clips do not
    # shape the scaling that the C it helps choose is trained with.
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    with threadpool_limits(limits=1):
        if folds >= 2:
            search = GridSearchCV(model, {"logisticregression__C": list(Cs)}, cv=StratifiedKFold(folds), refit=True)
            search.fit(xtr, ytr)
            clf, cv = search.best_estimator_, float(search.best_score_)
            c = float(search.best_params_["logisticregression__C"])
        else:  # a class with one train clip: no cross-validation possible, sklearn's default C
            clf, c, cv = model.fit(xtr, ytr), 1.0, float("nan")
        # predicting is a BLAS product too: kept on one thread so a near-tie cannot flip with the core count
        top1, train_top1 = (100.0 * float((clf.predict(x) == y).mean()) for x, y in ((xva, yva), (xtr, ytr)))
    return LinearProbeResult(top1=top1, train_top1=train_top1, C=c, cv_top1=100.0 * cv)
