"""Seeded augmentations for factory images, boxes transformed consistently.

What varies on a production line: lighting (brightness/contrast), part position (small shifts,
flips for symmetric parts), focus (blur) and sensor noise. Every random draw comes from the
``numpy.random.Generator`` passed in, so a run is a pure function of its seed.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from defectloop.trainer.config import AugmentConfig

FloatImage = npt.NDArray[np.float32]
Boxes = npt.NDArray[np.float32]  # [K, 4] as x, y, w, h in input pixels

# A box mostly pushed out of frame teaches nothing but noise: keep it only if this much remains.
_MIN_VISIBLE = 0.4


def augment(
    image: npt.NDArray[np.uint8],
    boxes: Boxes,
    labels: npt.NDArray[np.int64],
    cfg: AugmentConfig,
    rng: np.random.Generator,
) -> tuple[FloatImage, Boxes, npt.NDArray[np.int64]]:
    """Return an augmented float32 image in gray levels [0, 255] and its boxes/labels."""
    img = image.astype(np.float32)
    h, w = img.shape
    boxes = boxes.copy()

    if cfg.hflip and rng.random() < 0.5:
        img = img[:, ::-1]
        boxes[:, 0] = w - boxes[:, 0] - boxes[:, 2]
    if cfg.vflip and rng.random() < 0.5:
        img = img[::-1, :]
        boxes[:, 1] = h - boxes[:, 1] - boxes[:, 3]
    img = np.ascontiguousarray(img)

    if cfg.shift > 0:
        dx = round(rng.uniform(-cfg.shift, cfg.shift) * w)
        dy = round(rng.uniform(-cfg.shift, cfg.shift) * h)
        if dx or dy:
            matrix = np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float32)
            # Replicating the border (not reflecting) never mirrors a defect into an unlabeled copy.
            shifted = cv2.warpAffine(
                img, matrix, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE
            )
            img = np.asarray(shifted, np.float32)
            boxes, labels = _shift_boxes(boxes, labels, dx, dy, w, h)

    # Draw every random number even when a branch is off, so toggling one augmentation does not
    # reshuffle the others' draws.
    contrast = 1.0 + rng.uniform(-cfg.contrast, cfg.contrast)
    brightness = rng.uniform(-cfg.brightness, cfg.brightness) * 255.0
    do_blur, sigma = rng.random() < cfg.blur_prob, rng.uniform(0.3, max(cfg.blur_max_sigma, 0.3))
    do_noise, noise_std = rng.random() < cfg.noise_prob, rng.uniform(0.0, cfg.noise_max_std)
    noise_seed = int(rng.integers(0, 2**31 - 1))

    mean = float(img.mean())
    img = (img - mean) * contrast + mean + brightness
    if do_blur and cfg.blur_max_sigma > 0:
        img = np.asarray(cv2.GaussianBlur(img, (0, 0), sigmaX=sigma), np.float32)
    if do_noise and noise_std > 0:
        noise = np.random.default_rng(noise_seed).standard_normal(img.shape, dtype=np.float32)
        img = img + noise * np.float32(noise_std)
    np.clip(img, 0.0, 255.0, out=img)
    return img.astype(np.float32, copy=False), boxes, labels


def _shift_boxes(
    boxes: Boxes, labels: npt.NDArray[np.int64], dx: int, dy: int, w: int, h: int
) -> tuple[Boxes, npt.NDArray[np.int64]]:
    if len(boxes) == 0:
        return boxes, labels
    x0 = np.clip(boxes[:, 0] + dx, 0, w)
    y0 = np.clip(boxes[:, 1] + dy, 0, h)
    x1 = np.clip(boxes[:, 0] + boxes[:, 2] + dx, 0, w)
    y1 = np.clip(boxes[:, 1] + boxes[:, 3] + dy, 0, h)
    area = (x1 - x0) * (y1 - y0)
    keep = area >= _MIN_VISIBLE * boxes[:, 2] * boxes[:, 3]
    out = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1).astype(np.float32)
    return out[keep], labels[keep]


def random_crop(
    image: FloatImage,
    boxes: Boxes,
    labels: npt.NDArray[np.int64],
    crop: tuple[int, int],
    on_object: float,
    rng: np.random.Generator,
) -> tuple[FloatImage, Boxes, npt.NDArray[np.int64]]:
    """A ``crop`` window, centred near a random defect with probability ``on_object``.

    Object-centred crops keep the share of positive cells high (an empty crop teaches only
    background), while the rest keep the background's false-positive pressure.
    """
    h, w = image.shape
    ch, cw = crop
    pick = rng.random() < on_object
    jitter = rng.uniform(-0.35, 0.35, 2)
    k = int(rng.integers(0, max(1, len(boxes))))
    if pick and len(boxes):
        bx, by, bw, bh = (float(v) for v in boxes[k])
        cx, cy = bx + bw / 2 + jitter[0] * cw, by + bh / 2 + jitter[1] * ch
        x0, y0 = round(cx - cw / 2), round(cy - ch / 2)
    else:
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    x0, y0 = min(max(x0, 0), w - cw), min(max(y0, 0), h - ch)
    out = np.ascontiguousarray(image[y0 : y0 + ch, x0 : x0 + cw])
    shifted, kept = _shift_boxes(boxes, labels, -x0, -y0, cw, ch)
    return out, shifted, kept
