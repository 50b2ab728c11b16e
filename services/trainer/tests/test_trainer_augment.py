from __future__ import annotations

import numpy as np
import pytest

from defectloop.trainer.augment import augment, random_crop
from defectloop.trainer.config import resolve_config
from defectloop.trainer.data import make_targets

pytestmark = pytest.mark.unit


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = np.full((128, 128), 100, np.uint8)
    image[40:60, 70:100] = 250  # one bright defect, box x=70 y=40 w=30 h=20
    return image, np.array([[70, 40, 30, 20]], np.float32), np.array([1], np.int64)


def _bright_box(image: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(image > 200)
    return [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]


def test_geometric_augmentations_move_boxes_with_pixels() -> None:
    cfg = resolve_config(
        "quick",
        overrides={
            "augment": {"brightness": 0.0, "contrast": 0.0, "blur_prob": 0.0, "noise_prob": 0.0}
        },
    ).augment
    image, boxes, labels = _scene()
    for seed in range(20):
        out, moved, kept = augment(image, boxes, labels, cfg, np.random.default_rng(seed))
        if len(moved) == 1:
            assert kept.tolist() == [1]
            np.testing.assert_allclose(moved[0], _bright_box(out), atol=1)


def test_crop_keeps_boxes_consistent_with_pixels() -> None:
    image, boxes, labels = _scene()
    for seed in range(20):
        out, moved, _ = random_crop(
            image.astype(np.float32), boxes, labels, (64, 64), 1.0, np.random.default_rng(seed)
        )
        assert out.shape == (64, 64)
        if len(moved) == 1 and moved[0, 2] == 30 and moved[0, 3] == 20:
            np.testing.assert_allclose(moved[0], _bright_box(out), atol=1)


def test_augmentation_is_a_pure_function_of_the_seed() -> None:
    cfg = resolve_config("quick").augment
    image, boxes, labels = _scene()
    a = augment(image, boxes, labels, cfg, np.random.default_rng(5))
    b = augment(image, boxes, labels, cfg, np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_targets_put_a_peak_and_the_box_at_the_centre_cell() -> None:
    heat, size, offset, mask = make_targets(
        np.array([[70, 40, 30, 20]], np.float32), np.array([2]), 3, (128, 128)
    )
    # Centre (85, 50) px → cell (21, 12) with offset (0.25, 0.5).
    assert heat[2, 12, 21] == 1.0
    assert mask.sum() == 1
    np.testing.assert_allclose(size[:, 12, 21], [30, 20])
    np.testing.assert_allclose(offset[:, 12, 21], [0.25, 0.5])
    assert heat[0].max() == 0.0
