from __future__ import annotations

import numpy as np
import pytest

from defectloop.vision.outlier import fit_reference, outlier_flags, outlier_scores

pytestmark = pytest.mark.unit


def test_shifted_embeddings_score_higher_than_in_distribution_ones() -> None:
    rng = np.random.default_rng(42)
    train = rng.normal(0.0, 1.0, size=(500, 16))
    ref = fit_reference(train)
    inside = outlier_scores(rng.normal(0.0, 1.0, size=(100, 16)), ref)
    shifted = outlier_scores(rng.normal(3.0, 1.0, size=(100, 16)), ref)
    assert shifted.min() > inside.max()
    assert outlier_flags(shifted, ref).all()


def test_threshold_flags_about_the_fitted_quantile_of_training_data() -> None:
    train = np.random.default_rng(1).normal(size=(1000, 8))
    ref = fit_reference(train, quantile=0.99)
    assert outlier_flags(outlier_scores(train, ref), ref).sum() == 10


def test_constant_dimension_does_not_explode_the_score() -> None:
    rng = np.random.default_rng(2)
    train = np.concatenate([rng.normal(size=(200, 4)), np.zeros((200, 1))], axis=1)
    ref = fit_reference(train)
    probe = np.array([[0.0, 0.0, 0.0, 0.0, 1e-6]])
    assert outlier_scores(probe, ref)[0] < 1.0
