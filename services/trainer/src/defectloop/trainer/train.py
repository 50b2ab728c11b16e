"""Reproducible training: dataset dirs + config + seed (+ parent bundle) → a model bundle.

Determinism on CPU comes from: one seed for torch and for the numpy generator that drives
shuffling and augmentation; ``torch.use_deterministic_algorithms(True)``; a fixed number of torch
threads (a reduction split over a different number of threads sums in a different order); no
DataLoader workers; sorted file lists; a content-keyed split; and a deterministic ONNX export.
The same inputs on the same machine type therefore give a byte-identical ``model.onnx``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

from defectloop.common.errors import ConfigError, InvalidInputError, NotFoundError
from defectloop.trainer.checkpoints import read_verified
from defectloop.trainer.config import TrainerConfig, validate_config
from defectloop.trainer.data import (
    MEAN,
    STD,
    STRIDE,
    Dataset,
    Resized,
    iterate_batches,
    load_datasets,
    load_resized,
    normalise,
)
from defectloop.trainer.lineage import (
    dataset_manifest,
    dataset_version,
    git_commit,
    lockfile_sha256,
)
from defectloop.vision.manifest import (
    BundleManifest,
    Decoding,
    Lineage,
    Preprocessing,
    load_manifest,
    standard_io,
    write_bundle,
)

# Training machines are often shared (CI, a laptop running the whole stack). libgomp's default is
# to spin for a long time at every barrier: when another process steals one of our cores, the
# running thread spins while the descheduled one holds the barrier, and a 2-thread step can get
# 5x slower than a 1-thread one. Passive waiting avoids that but idles a core between the many
# small kernels (measured: ~1.3 of 2 cores busy). A bounded spin keeps both cores busy on an idle
# machine (~1.5x passive's throughput here) and yields soon enough on a busy one. It only takes
# effect if set before torch (libgomp) loads, hence at import time of this module, which imports
# torch lazily. Results do not depend on it (only scheduling does).
os.environ.setdefault("GOMP_SPINCOUNT", "100000")

CHECKPOINT_FILE = "checkpoint.pt"
DATASET_FILE = "dataset.json"
CONFIG_FILE = "config.yaml"


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    loss: float
    heatmap_loss: float
    size_loss: float
    offset_loss: float
    lr: float
    seconds: float


class ProgressSink:
    """Receives training progress; the CLI renders it with rich, tests ignore it."""

    def start(self, total_epochs: int, steps_per_epoch: int) -> None: ...

    def step(self, epoch: int, step: int, loss: float) -> None: ...

    def epoch_end(self, stats: EpochStats) -> None: ...

    def phase(self, name: str) -> None: ...


@dataclass
class TrainResult:
    bundle_dir: Path
    manifest: BundleManifest
    dataset_manifest: dict[str, Any]
    history: list[EpochStats] = field(default_factory=list)
    train_seconds: float = 0.0
    parity: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Parent:
    """A bundle fine-tuned from: its version and its torch checkpoint."""

    version: str
    checkpoint: Path
    config: dict[str, Any]


def load_parent(bundle_dir: Path) -> Parent:
    manifest = load_manifest(bundle_dir)
    ckpt = Path(bundle_dir) / CHECKPOINT_FILE
    if not ckpt.is_file():
        raise NotFoundError(
            f"bundle {bundle_dir} has no {CHECKPOINT_FILE} to fine-tune from",
            hint="fine-tune from a bundle written by `defectloop train`",
        )
    return Parent(version=manifest.version, checkpoint=ckpt, config=manifest.lineage.config)


def apply_parent_architecture(cfg: TrainerConfig, parent: Parent) -> TrainerConfig:
    """Fine-tuning keeps the parent's architecture and labels (its weights must fit)."""
    data = cfg.model_dump(mode="json")
    data["model"] = parent.config["model"]
    data["labels"] = parent.config["labels"]
    return validate_config(data, source="config (with the parent's architecture)")


def configure_determinism(seed: int, num_threads: int) -> None:
    import torch

    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(num_threads)


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up then cosine decay to 5% of the base rate."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(
    dataset_dirs: Sequence[Path],
    cfg: TrainerConfig,
    *,
    seed: int,
    out_dir: Path,
    site: str | None = None,
    parent_bundle: Path | None = None,
    progress: ProgressSink | None = None,
    version: str | None = None,
    parent_sha256: str | None = None,
) -> TrainResult:
    """Train, export, check parity, evaluate on the hold-out split and write the bundle.

    A parent's checkpoint must match ``parent_sha256`` (its registered digest: see
    :func:`defectloop.trainer.checkpoints.expected_parent_digest`).
    """
    import time

    import torch

    from defectloop.trainer.export import check_parity, export_onnx
    from defectloop.trainer.losses import focal_loss, masked_l1, size_l1
    from defectloop.trainer.model import build_model

    sink = progress or ProgressSink()
    parent = load_parent(parent_bundle) if parent_bundle is not None else None
    parent_blob: bytes | None = None
    if parent is not None:
        if parent_sha256 is None:
            raise ConfigError(
                "fine-tuning needs the parent checkpoint's registered sha256",
                hint="pass parent_sha256=expected_parent_digest(registry, parent_bundle)",
            )
        # Checked before any work, and torch loads exactly the bytes that were checked.
        parent_blob = read_verified(parent.checkpoint, parent_sha256)
        cfg = apply_parent_architecture(cfg, parent)
    tc = cfg.train
    configure_determinism(seed, tc.num_threads)

    sink.phase("loading data")
    ds = load_datasets(dataset_dirs, cfg.labels, site=site, val_fraction=tc.val_fraction)
    manifest_data = dataset_manifest(ds, site=site)
    data_version = dataset_version(manifest_data)
    data = load_resized(ds.samples, cfg.model.input_size)

    net = build_model(cfg.model, len(cfg.labels))
    if parent_blob is not None:
        import io

        state = torch.load(io.BytesIO(parent_blob), map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    optimizer = torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    rng = np.random.default_rng(seed)

    steps_per_epoch = math.ceil(len(ds.train) / tc.batch_size)
    total_steps = steps_per_epoch * tc.epochs
    warmup = tc.warmup_epochs * steps_per_epoch
    sink.start(tc.epochs, steps_per_epoch)
    history: list[EpochStats] = []
    started = time.perf_counter()
    step_no = 0
    for epoch in range(1, tc.epochs + 1):
        net.train()
        t0 = time.perf_counter()
        sums = np.zeros(4)
        n_batches = 0
        lr = tc.lr
        for batch_i, batch in enumerate(
            iterate_batches(
                data,
                ds.train,
                batch_size=tc.batch_size,
                num_classes=len(cfg.labels),
                augment_cfg=cfg.augment,
                rng=rng,
                shuffle=True,
                crop=tc.crop,
                crop_on_object=tc.crop_on_object,
            )
        ):
            lr = _lr_at(step_no, total_steps, warmup, tc.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            logits, size, offset, _ = net(torch.from_numpy(batch.image))
            mask = torch.from_numpy(batch.mask)
            hm = focal_loss(logits, torch.from_numpy(batch.heatmap))
            sz = size_l1(size, torch.from_numpy(batch.size), mask)
            off = masked_l1(offset, torch.from_numpy(batch.offset), mask)
            loss = hm + tc.size_weight * sz + tc.offset_weight * off
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
            # Clipping keeps the first steps from a fresh head (large focal gradients) stable.
            torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
            optimizer.step()
            sums += [loss.item(), hm.item(), sz.item(), off.item()]
            n_batches += 1
            step_no += 1
            sink.step(epoch, batch_i + 1, float(loss.item()))
        mean = sums / max(1, n_batches)
        loss_m, heatmap_m, size_m, offset_m = (float(v) for v in mean)
        stats = EpochStats(
            epoch, loss_m, heatmap_m, size_m, offset_m, lr=lr, seconds=time.perf_counter() - t0
        )
        history.append(stats)
        sink.epoch_end(stats)
    train_seconds = time.perf_counter() - started

    sink.phase("exporting ONNX")
    net.eval()
    onnx_bytes = export_onnx(net, cfg.model.input_size)
    probe_idx = (ds.val or ds.train)[:4]
    parity = check_parity(net, onnx_bytes, normalise(data.images[probe_idx])[:, None])

    sink.phase("fitting reference stats")
    embeddings = _embeddings(net, data, ds.train)
    from defectloop.vision.outlier import fit_reference

    reference = fit_reference(embeddings)

    out_dir = Path(out_dir)
    created = datetime.now(UTC)
    import hashlib

    onnx_sha = hashlib.sha256(onnx_bytes).hexdigest()
    version = version or f"{created:%Y%m%d-%H%M%S}-{onnx_sha[:8]}"
    inputs, outputs = standard_io(cfg.model.input_size, len(cfg.labels), net.embedding_dim, STRIDE)
    config_json = cfg.model_dump(mode="json")
    manifest = BundleManifest(
        name=cfg.name,
        version=version,
        created_at=created,
        inputs=inputs,
        outputs=outputs,
        preprocessing=Preprocessing(input_size=cfg.model.input_size, mean=MEAN, std=STD),
        labels=list(cfg.labels),
        decoding=Decoding(stride=STRIDE, **cfg.decoding.model_dump()),
        reference_stats=reference,
        lineage=Lineage(
            dataset_version=data_version,
            git_commit=git_commit(),
            config=config_json,
            config_sha256=cfg.sha256(),
            seed=seed,
            parent=parent.version if parent is not None else None,
            lockfile_sha256=lockfile_sha256(),
        ),
        metrics={},
    )

    sink.phase("evaluating on the hold-out split")
    metrics = {"train_seconds": round(train_seconds, 3), "final_loss": history[-1].loss}
    # On the record of the run: the trainer's gate reads parity from here (gating.parity_of).
    metrics.update({f"parity/{name}": diff for name, diff in parity.items()})
    if ds.val:
        metrics.update(evaluate_samples(onnx_bytes, manifest, ds, ds.val))
    manifest = manifest.model_copy(update={"metrics": metrics})

    sink.phase("writing the bundle")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out_dir / CHECKPOINT_FILE)
    (out_dir / DATASET_FILE).write_text(
        json.dumps(
            {
                "dataset_version": data_version,
                "sources": [str(Path(d).resolve()) for d in dataset_dirs],
                **manifest_data,
            },
            indent=1,
            sort_keys=True,
        )
        + "\n"
    )
    (out_dir / CONFIG_FILE).write_text(yaml.safe_dump(config_json, sort_keys=True))
    stored = write_bundle(out_dir, onnx_bytes, manifest)
    return TrainResult(
        bundle_dir=out_dir,
        manifest=stored,
        dataset_manifest=manifest_data,
        history=history,
        train_seconds=train_seconds,
        parity=parity,
    )


def _embeddings(net: Any, data: Resized, indices: Sequence[int]) -> npt.NDArray[np.float32]:
    import torch

    chunks = []
    with torch.no_grad():
        for start in range(0, len(indices), 32):
            idx = list(indices[start : start + 32])
            x = torch.from_numpy(normalise(data.images[idx])[:, None])
            chunks.append(net(x)[3].numpy())
    return np.concatenate(chunks).astype(np.float32)


def evaluate_samples(
    onnx_bytes: bytes, manifest: BundleManifest, ds: Dataset, indices: Sequence[int]
) -> dict[str, float]:
    """AP@0.5 and image-level decision metrics of the exported model on some samples.

    Runs the ONNX model through the serving runtime (decoding, NMS, AP all from
    ``defectloop.vision``) on the ORIGINAL images, so hold-out metrics are what serving would get.
    """
    import cv2

    from defectloop.vision.metrics import ImageBoxes, average_precision, decision_metrics
    from defectloop.vision.runtime import Detector

    detector = Detector.from_manifest(manifest, onnx_bytes, providers="cpu")
    preds: list[ImageBoxes] = []
    truths: list[ImageBoxes] = []
    decisions: list[bool] = []
    labels = list(manifest.labels)
    for start in range(0, len(indices), 16):
        chunk = [ds.samples[i] for i in indices[start : start + 16]]
        images = []
        for s in chunk:
            img = cv2.imread(str(s.path), cv2.IMREAD_GRAYSCALE)
            if img is None:
                raise InvalidInputError(f"cannot decode image {s.path}")
            images.append(img)
        for s, out in zip(chunk, detector.predict(images), strict=True):
            truths.append(ImageBoxes.from_lists(s.boxes.tolist(), s.labels.tolist()))
            preds.append(
                ImageBoxes.from_lists(
                    [d.bbox for d in out.detections],
                    [labels.index(d.label) for d in out.detections],
                    [d.score for d in out.detections],
                )
            )
            decisions.append(out.defective)
    ap = average_precision(preds, truths, num_classes=len(labels), max_dets=manifest.decoding.top_k)
    dec = decision_metrics(decisions, [len(t) > 0 for t in truths])
    metrics = {
        "val_map50": float(ap.mean_ap),
        "val_precision": float(dec.precision),
        "val_recall": float(dec.recall),
        "val_f1": float(dec.f1),
        "val_images": float(len(indices)),
    }
    for name, value in zip(labels, ap.per_class, strict=True):
        if value is not None:
            metrics[f"val_ap50_{name}"] = float(value)
    return metrics
