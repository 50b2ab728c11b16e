"""Evaluate a model bundle on a COCO dataset directory.

The bundle is run exactly as deployed (its own decoding thresholds, top-k and decision threshold)
unless ``score_threshold`` is given, so the trainer's gate and the monitor measure the same thing.
Dataset categories are matched to model labels by name. mAP@0.5 averages the dataset categories
that have ground truth (a category the model does not know scores 0); image-level
precision/recall/F1 use the bundle's decision (ground truth: the image has >= 1 box).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from defectloop.vision.coco import CocoDataset, CocoResult, load_coco_dataset
from defectloop.vision.metrics import ImageBoxes, average_precision, decision_metrics
from defectloop.vision.runtime import Detector, ProviderChoice

Progress = Callable[[int, int], None]
"""Called with (images done, images in total) after each batch."""


class EvalReport(BaseModel):
    """Metrics of one bundle on one dataset."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    model_version: str
    dataset: str = Field(description="Dataset directory evaluated.")
    n_images: int
    n_annotations: int
    map50: float = Field(description="Mean over classes with ground truth of AP at IoU 0.5.")
    per_class_ap: dict[str, float | None] = Field(
        description="AP@0.5 per class name (None: no ground truth for that class)."
    )
    precision: float = Field(description="Image-level precision of the defective decision.")
    recall: float = Field(description="Image-level recall of the defective decision.")
    f1: float
    decision_threshold: float
    score_threshold: float
    confusion: dict[str, int] = Field(description="Image-level tp, fp, fn, tn.")
    predictions: list[CocoResult] = Field(
        default_factory=list, exclude=True, description="COCO results (not in the report JSON)."
    )

    def metrics(self) -> dict[str, float]:
        """Flat metrics for a bundle manifest / experiment tracker."""
        flat = {"map50": self.map50, "precision": self.precision, "recall": self.recall}
        flat["f1"] = self.f1
        flat.update({f"ap50/{k}": v for k, v in self.per_class_ap.items() if v is not None})
        return flat


def evaluate_detector(
    detector: Detector,
    dataset: CocoDataset,
    *,
    batch_size: int = 8,
    progress: Progress | None = None,
    score_threshold: float | None = None,
) -> EvalReport:
    """Run a loaded detector over a loaded dataset and compute the report."""
    labels = detector.labels
    names = [c.name for c in dataset.categories]
    classes = labels + [n for n in names if n not in labels]  # model labels first
    class_of_category = {c.id: classes.index(c.name) for c in dataset.categories}
    category_of_label = {c.name: c.id for c in dataset.categories}

    predictions: list[ImageBoxes] = []
    truths: list[ImageBoxes] = []
    decisions: list[bool] = []
    results: list[CocoResult] = []
    total = len(dataset.images)
    for start in range(0, total, batch_size):
        chunk = dataset.images[start : start + batch_size]
        outputs = detector.predict(
            [dataset.read_image(img) for img in chunk], score_threshold=score_threshold
        )
        for image, output in zip(chunk, outputs, strict=True):
            anns = dataset.annotations_of(image.id)
            truths.append(
                ImageBoxes.from_lists(
                    [a.bbox for a in anns], [class_of_category[a.category_id] for a in anns]
                )
            )
            dets = output.detections
            predictions.append(
                ImageBoxes.from_lists(
                    [d.bbox for d in dets],
                    [classes.index(d.label) for d in dets],
                    [d.score for d in dets],
                )
            )
            decisions.append(output.defective)
            results.extend(
                CocoResult(
                    image_id=image.id,
                    category_id=category_of_label[d.label],
                    bbox=d.bbox,
                    score=d.score,
                )
                for d in dets
                if d.label in category_of_label
            )
        if progress is not None:
            progress(min(start + batch_size, total), total)

    decoding = detector.manifest.decoding
    ap = average_precision(predictions, truths, num_classes=len(classes), max_dets=decoding.top_k)
    decision = decision_metrics(decisions, [len(t) > 0 for t in truths])
    per_class = dict(zip(classes, ap.per_class, strict=True))
    return EvalReport(
        model_name=detector.manifest.name,
        model_version=detector.manifest.version,
        dataset=str(dataset.root),
        n_images=total,
        n_annotations=len(dataset.annotations),
        map50=ap.mean_ap,
        per_class_ap=per_class,
        precision=decision.precision,
        recall=decision.recall,
        f1=decision.f1,
        decision_threshold=decoding.decision_threshold,
        score_threshold=decoding.score_threshold if score_threshold is None else score_threshold,
        confusion={"tp": decision.tp, "fp": decision.fp, "fn": decision.fn, "tn": decision.tn},
        predictions=results,
    )


def evaluate_bundle(
    bundle_dir: str | os.PathLike[str],
    dataset_dir: str | os.PathLike[str],
    *,
    batch_size: int = 8,
    progress: Progress | None = None,
    providers: ProviderChoice = "auto",
    score_threshold: float | None = None,
) -> EvalReport:
    """Verify and load a bundle, run it over a COCO dataset directory, return the metrics."""
    dataset = load_coco_dataset(dataset_dir)
    detector = Detector.from_bundle(bundle_dir, providers=providers)
    return evaluate_detector(
        detector,
        dataset,
        batch_size=max(1, batch_size),
        progress=progress,
        score_threshold=score_threshold,
    )
