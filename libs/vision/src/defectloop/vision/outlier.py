"""Outlier scoring on the model's global embedding: how far an input is from the training data.

Score = mean over the D dimensions of the squared z-score ``((e - mean) / std) ** 2`` against
per-dimension statistics of the training embeddings (a diagonal Mahalanobis distance divided by
D). An in-distribution input scores about 1; the flag threshold is the ``quantile`` (0.99) of the
training inputs' own scores, so about 1% of training-like inputs are flagged.

``std`` is floored at ``max(1e-6, 0.01 * median(std))`` so that near-constant dimensions (e.g. a
channel that is always 0 after ReLU) cannot blow the score up on a tiny numerical change.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from defectloop.common.errors import InvalidInputError
from defectloop.vision.manifest import ReferenceStats

__all__ = ["ReferenceStats", "fit_reference", "outlier_flags", "outlier_scores"]


def _as_2d(embeddings: npt.ArrayLike) -> npt.NDArray[np.float64]:
    array = np.asarray(embeddings, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidInputError(f"expected embeddings of shape [N, D], got {array.shape}")
    return array


def fit_reference(embeddings: npt.ArrayLike, quantile: float = 0.99) -> ReferenceStats:
    """Fit per-dimension mean/std on training embeddings ``[N, D]`` and the flag threshold."""
    array = _as_2d(embeddings)
    if not 0.0 < quantile <= 1.0:
        raise InvalidInputError(f"quantile must be in (0, 1], got {quantile}")
    mean = array.mean(axis=0)
    std = array.std(axis=0)
    std = np.maximum(std, max(1e-6, 0.01 * float(np.median(std))))
    scores = np.mean(((array - mean) / std) ** 2, axis=1)
    return ReferenceStats(
        mean=mean.tolist(),
        std=std.tolist(),
        threshold=float(np.quantile(scores, quantile)),
        quantile=quantile,
        n_samples=int(array.shape[0]),
    )


def outlier_scores(embeddings: npt.ArrayLike, ref: ReferenceStats) -> npt.NDArray[np.float64]:
    """Mean squared z-score of each embedding ``[N, D]`` → ``[N]``."""
    array = _as_2d(embeddings)
    mean = np.asarray(ref.mean, dtype=np.float64)
    std = np.asarray(ref.std, dtype=np.float64)
    if array.shape[1] != mean.shape[0]:
        raise InvalidInputError(
            f"embedding dimension {array.shape[1]} does not match reference stats {mean.shape[0]}"
        )
    result: npt.NDArray[np.float64] = np.mean(((array - mean) / std) ** 2, axis=1)
    return result


def outlier_flags(scores: npt.NDArray[np.float64], ref: ReferenceStats) -> npt.NDArray[np.bool_]:
    """``score > ref.threshold``."""
    return np.asarray(scores > ref.threshold, dtype=bool)
