"""Factory-simulator throughput: rendering, and rendering + PNG encoding, in images/s.

Measures one process (OpenCV single-threaded) and a pool of ``--workers`` processes, for each
site at 512x512, and writes ``benchmarks/results/simulator.json``.

    .venv/bin/python benchmarks/bench_simulator.py [--n 400] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2

from defectloop.factory_sim import SIMULATOR_VERSION, SITES, encode_png, render

RESULTS = Path(__file__).parent / "results" / "simulator.json"


def _init() -> None:
    cv2.setNumThreads(1)


def _run(site: str, start: int, stop: int, encode: bool) -> int:
    profile = SITES[site]
    for index in range(start, stop):
        pixels = render(profile, index, 1).pixels
        if encode:
            encode_png(pixels)
    return stop - start


def _rate(pool: ProcessPoolExecutor | None, site: str, n: int, encode: bool, workers: int) -> float:
    _run(site, 10_000, 10_004, encode)  # build the per-site texture tiles outside the timing
    started = time.perf_counter()
    if pool is None:
        done = _run(site, 0, n, encode)
    else:
        chunk = max(1, n // (workers * 8))
        jobs = [pool.submit(_run, site, i, min(i + chunk, n), encode) for i in range(0, n, chunk)]
        done = sum(job.result() for job in jobs)
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="images per measurement")
    parser.add_argument("--workers", type=int, default=2, help="processes in the pool run")
    args = parser.parse_args()
    _init()
    load_before = os.getloadavg()[0]

    rows: list[dict[str, Any]] = []
    with ProcessPoolExecutor(args.workers, initializer=_init) as pool:
        # Warm every worker (imports, tiles) before timing.
        warm = [s for s in SITES for _ in range(args.workers)]
        k = len(warm)
        list(pool.map(_run, warm, [10_000] * k, [10_002] * k, [True] * k))
        for site in SITES:
            row = {
                "site": site,
                "size": f"{SITES[site].width}x{SITES[site].height}",
                "render_1proc": _rate(None, site, args.n, False, 1),
                "render_png_1proc": _rate(None, site, args.n, True, 1),
                f"render_{args.workers}proc": _rate(pool, site, args.n, False, args.workers),
                f"render_png_{args.workers}proc": _rate(pool, site, args.n, True, args.workers),
            }
            rows.append(row)
            print(
                " ".join(
                    f"{k}={v:.0f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                )
            )

    result = {
        "benchmark": "factory-sim rendering",
        "unit": "images/s",
        "simulator_version": SIMULATOR_VERSION,
        "n_per_measurement": args.n,
        "workers": args.workers,
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        # Other work on the machine skews the numbers; the 1-minute load average tells how much.
        "loadavg_1min_before_after": [load_before, os.getloadavg()[0]],
        "machine": platform.machine(),
        "python": platform.python_version(),
        "opencv": cv2.__version__,
        "results": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
