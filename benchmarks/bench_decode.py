"""PNG decoders for big gray8 camera frames: decode, and decode + downscale to the model input.

For 512x512, 1 MP (1024x1024) and 5 MP (2592x1944) gray8 PNGs (a simulated site-A frame scaled up
plus seeded sensor noise, encoded as the factory simulator encodes), each decoder available here
is timed on one thread (CPU time of the thread, median of ``--n`` runs, so other load on the
machine moves it little) for:

- ``decode``: bytes -> ``HxW`` uint8 (every decoder must return the very pixels OpenCV returns);
- ``decode+resize``: the same then ``cv2.resize(INTER_AREA)`` to the model's 320x320 uint8, the
  inference service's path (the float conversion touches only the 320x320 result);
- ingest's stages on the same frame: its whole validation (``defectloop.ingest.png.decode``:
  chunk walk, capped inflate of the image data, then the OpenCV decode), ``quality.measure`` and
  the near-duplicate ``quality.fingerprint``; and the resize alone.

OpenCV is always there; Pillow, pyspng (libspng) and imagecodecs (libpng and libspng) are measured
when installed, without adding them to the project::

    uv run --no-sync --with pillow --with pyspng --with imagecodecs \\
        python benchmarks/bench_decode.py [--n 15]

Writes ``benchmarks/results/decode.json``.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from defectloop.factory_sim import SITES, encode_png, render

RESULTS = Path(__file__).parent / "results" / "decode.json"
SIZES = {"512x512": (512, 512), "1 MP": (1024, 1024), "5 MP": (1944, 2592)}
MODEL_INPUT = (320, 320)
Gray = npt.NDArray[np.uint8]
Decoder = Callable[[bytes], Gray]


def _opencv(data: bytes) -> Gray:
    return np.asarray(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE), np.uint8)


def decoders() -> dict[str, tuple[str, Decoder]]:
    """name -> (version, bytes -> gray8) for every decoder importable here."""
    found: dict[str, tuple[str, Decoder]] = {"opencv": (cv2.__version__, _opencv)}
    try:
        from PIL import Image

        def pillow(data: bytes) -> Gray:
            with Image.open(io.BytesIO(data)) as img:
                return np.asarray(img)  # decode, then one copy out of Pillow's buffer

        found["pillow"] = (Image.__version__, pillow)
    except ImportError:
        pass
    try:
        import pyspng

        found["pyspng"] = (pyspng.__version__, lambda data: pyspng.load(data))
    except ImportError:
        pass
    try:
        import imagecodecs

        found["imagecodecs.png"] = (
            imagecodecs.png_version(),
            lambda data: imagecodecs.png_decode(data),
        )
        found["imagecodecs.spng"] = (
            imagecodecs.spng_version(),
            lambda data: imagecodecs.spng_decode(data),
        )
    except ImportError:
        pass
    return found


def frames(height: int, width: int, count: int) -> list[bytes]:
    """``count`` unique gray8 PNGs of the size: a site-A frame scaled up, plus sensor noise."""
    out = []
    for index in range(count):
        base = render(SITES["A"], index, 1).pixels
        big = cv2.resize(base, (width, height), interpolation=cv2.INTER_CUBIC)
        noise = np.random.default_rng(index).normal(0, 3, size=big.shape)
        out.append(encode_png(np.clip(big + noise, 0, 255).astype(np.uint8)))
    return out


def _cpu_ms(work: Callable[[], object], n: int) -> dict[str, float]:
    work()  # warm-up: first-call allocations, lazy imports
    samples = []
    for _ in range(n):
        began = time.thread_time()
        work()
        samples.append((time.thread_time() - began) * 1000)
    samples.sort()
    return {
        "median_ms": round(statistics.median(samples), 2),
        "p90_ms": round(samples[int(0.9 * (len(samples) - 1))], 2),
    }


def _cycle(decode: Decoder, bodies: list[bytes], counter: Iterator[int]) -> Gray:
    """Decode the next of ``bodies`` (unique frames in turn, as a stream would bring them)."""
    return decode(bodies[next(counter) % len(bodies)])


def _decode_resize(one: Callable[[], Gray]) -> Gray:
    return _downscale(one())


def _downscale(gray: Gray) -> Gray:
    return np.asarray(cv2.resize(gray, MODEL_INPUT[::-1], interpolation=cv2.INTER_AREA), np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=15, help="timed runs per decoder and size")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # one decode per thread, as in the services' pools
    from defectloop.ingest import png, quality  # the bench runs in the workspace venv

    limits = png.PngLimits()
    found = decoders()
    load_before = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    for size_name, (height, width) in SIZES.items():
        bodies = frames(height, width, 3)
        reference = [_opencv(body) for body in bodies]
        for name, (version, decode) in found.items():
            for body, expected in zip(bodies, reference, strict=True):
                got = decode(body)
                if got.dtype != np.uint8 or not np.array_equal(got, expected):
                    raise SystemExit(f"{name} decodes {size_name} differently from OpenCV")
            one = partial(_cycle, decode, bodies, itertools.count())

            row = {
                "size": size_name,
                "decoder": name,
                "version": version,
                "png_bytes": len(bodies[0]),
                "decode": _cpu_ms(one, args.n),
                "decode_resize": _cpu_ms(partial(_decode_resize, one), args.n),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        gray = reference[0]
        stages = {
            "ingest validation + opencv decode": lambda b=bodies[0]: png.decode(b, limits),
            "ingest quality.measure": lambda g=gray: quality.measure(g),
            "ingest quality.fingerprint": lambda g=gray: quality.fingerprint(g),
            "resize only (INTER_AREA)": lambda g=gray: _downscale(g),
        }
        for stage, work in stages.items():
            rows.append({"size": size_name, "stage": stage, "cpu": _cpu_ms(work, args.n)})
            print(json.dumps(rows[-1]), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": {
                    "cpu_count": os.cpu_count(),
                    "processor": platform.processor() or platform.machine(),
                    "loadavg_before": round(load_before, 2),
                    "loadavg_after": round(os.getloadavg()[0], 2),
                },
                "n": args.n,
                "model_input": MODEL_INPUT,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
