"""Training benchmark: train time and held-out map50 per preset, ONNX CPU inference throughput.

    .venv/bin/python benchmarks/bench_training.py                 # quick + default
    .venv/bin/python benchmarks/bench_training.py --presets quick  # one preset

Data: the factory simulator's site A — ``--n-train`` images (seed 1) to train on and
``--n-eval`` held-out images rendered with another seed (2) to evaluate with
``defectloop.vision.evaluate.evaluate_bundle`` (what `defectloop eval` runs). Throughput is the
serving runtime (``defectloop.vision.runtime.Detector``: ONNX Runtime CPU + decoding) on
pre-formed batches of 1 and 8. Writes ``benchmarks/results/training.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "training.json"


def _dataset(cache: Path, site: str, n: int, seed: int) -> Path:
    from defectloop.factory_sim.dataset import generate_dataset, is_complete

    out = cache / f"{site}-n{n}-seed{seed}"
    if not is_complete(out):
        generate_dataset(site, n, seed, out, workers=os.cpu_count() or 1)
    return out


def _throughput(bundle: Path, images: list[Any], batch: int, seconds: float) -> float:
    from defectloop.vision.runtime import Detector

    detector = Detector.from_bundle(bundle, providers="cpu")
    pre = detector.preprocess(images[:batch])
    detector.predict_batch(pre)  # warm-up: ORT allocates its arenas on the first run
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        detector.predict_batch(pre)
        done += batch
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["quick", "default"])
    parser.add_argument("--site", default="A")
    parser.add_argument("--n-train", type=int, default=500)
    parser.add_argument("--n-eval", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=ROOT / ".defectloop" / "bench-data")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--throughput-seconds", type=float, default=10.0)
    args = parser.parse_args()

    import cv2

    from defectloop.trainer.config import resolve_config
    from defectloop.trainer.train import train
    from defectloop.vision.evaluate import evaluate_bundle

    train_dir = _dataset(args.cache, args.site, args.n_train, seed=1)
    eval_dir = _dataset(args.cache, args.site, args.n_eval, seed=2)
    eval_images = [
        cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted((eval_dir / "images").glob("*.png"))[:8]
    ]
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "data": {"site": args.site, "train": str(train_dir), "eval": str(eval_dir),
                 "n_train": args.n_train, "n_eval": args.n_eval},
        "presets": {},
    }
    if args.out.exists():  # keep presets measured in an earlier run
        previous = json.loads(args.out.read_text())
        results["presets"].update(previous.get("presets", {}))
    for preset in args.presets:
        cfg = resolve_config(preset, site=args.site)
        bundle = args.cache / f"bundle-{preset}"
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = train([train_dir], cfg, seed=args.seed, out_dir=bundle, site=args.site)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        report = evaluate_bundle(bundle, eval_dir, providers="cpu")
        row = {
            "input_size": list(cfg.model.input_size),
            "epochs": cfg.train.epochs,
            "train_loop_seconds": round(result.train_seconds, 1),
            "train_total_seconds": round(wall, 1),
            "train_cpu_seconds": round(cpu, 1),
            "map50_heldout": round(report.map50, 4),
            "per_class_ap50": report.per_class_ap,
            "image_precision": round(report.precision, 4),
            "image_recall": round(report.recall, 4),
            "val_map50": round(result.manifest.metrics.get("val_map50", float("nan")), 4),
            "onnx_sha256": result.manifest.sha256,
            "ort_cpu_images_per_s_batch1": round(
                _throughput(bundle, eval_images, 1, args.throughput_seconds), 1
            ),
            "ort_cpu_images_per_s_batch8": round(
                _throughput(bundle, eval_images, 8, args.throughput_seconds), 1
            ),
        }
        results["presets"][preset] = row
        print(preset, json.dumps(row))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
