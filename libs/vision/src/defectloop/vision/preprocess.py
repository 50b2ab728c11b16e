"""Original uint8 grayscale images (any size) → the normalised ``image`` input batch.

The trainer uses these same functions, so training and serving see identical tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from defectloop.common.errors import InvalidInputError
from defectloop.vision.manifest import Preprocessing

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class PreprocessedBatch:
    """A network-ready batch plus what is needed to map boxes back to each original image."""

    tensor: FloatArray
    """float32 ``[N, 1, H_in, W_in]``, normalised."""
    scales: FloatArray
    """float32 ``[N, 2]``: (orig_w / W_in, orig_h / H_in) per image."""
    sizes: npt.NDArray[np.int64]
    """int64 ``[N, 2]``: (orig_w, orig_h) per image."""

    def __len__(self) -> int:
        return int(self.tensor.shape[0])


def as_gray_u8(image: npt.NDArray[np.generic]) -> npt.NDArray[np.uint8]:
    """Check an image is uint8 grayscale (``HxW`` or ``HxWx1``) and return it as ``HxW``."""
    if not isinstance(image, np.ndarray):
        raise InvalidInputError(f"expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InvalidInputError(
            f"expected a uint8 image, got dtype {image.dtype}",
            hint="decode PNGs as 8-bit grayscale (cv2.IMREAD_GRAYSCALE)",
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim != 2 or min(image.shape) == 0:
        raise InvalidInputError(
            f"expected a non-empty HxW grayscale image, got shape {image.shape}",
            hint="decode PNGs as 8-bit grayscale (cv2.IMREAD_GRAYSCALE)",
        )
    gray: npt.NDArray[np.uint8] = image.view(np.uint8)
    return gray


def preprocess_into(
    image: npt.NDArray[np.generic], pre: Preprocessing, out: FloatArray
) -> tuple[float, float]:
    """Resize + normalise one image into ``out`` (``[H_in, W_in]`` float32); return its scale."""
    gray = as_gray_u8(image)
    h_in, w_in = pre.input_size
    h, w = gray.shape
    resized = (
        gray
        if (h, w) == (h_in, w_in)
        else cv2.resize(gray, (w_in, h_in), interpolation=cv2.INTER_AREA)
    )
    np.divide(resized, np.float32(255.0), out=out, dtype=np.float32)
    out -= np.float32(pre.mean)
    out /= np.float32(pre.std)
    return w / w_in, h / h_in


def preprocess_batch(
    images: Sequence[npt.NDArray[np.generic]], pre: Preprocessing
) -> PreprocessedBatch:
    """Preprocess images of any sizes into one ``[N, 1, H_in, W_in]`` batch."""
    if len(images) == 0:
        raise InvalidInputError("cannot preprocess an empty batch")
    h_in, w_in = pre.input_size
    tensor = np.empty((len(images), 1, h_in, w_in), dtype=np.float32)
    scales = np.empty((len(images), 2), dtype=np.float32)
    sizes = np.empty((len(images), 2), dtype=np.int64)
    for i, image in enumerate(images):
        scales[i] = preprocess_into(image, pre, tensor[i, 0])
        sizes[i] = (image.shape[1], image.shape[0])
    return PreprocessedBatch(tensor=tensor, scales=scales, sizes=sizes)
