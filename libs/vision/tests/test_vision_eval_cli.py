from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import typer
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from typer.testing import CliRunner

from defectloop.cli import evaluation

from .conftest import DEFAULT_BOXES_ORIGINAL, BundleFactory, DatasetFactory

pytestmark = pytest.mark.unit


def cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """Keeps `eval` a subcommand."""

    evaluation.register(app)
    return app


def test_eval_writes_report_and_loadable_coco_predictions(
    make_bundle: BundleFactory, make_dataset: DatasetFactory, tmp_path: Path
) -> None:
    dataset = make_dataset([DEFAULT_BOXES_ORIGINAL, DEFAULT_BOXES_ORIGINAL, {}])
    report, preds = tmp_path / "out" / "r.json", tmp_path / "out" / "p.json"
    args = ["eval", str(make_bundle()), "--dataset", str(dataset), "--report", str(report)]
    args += ["--predictions-out", str(preds), "--batch-size", "2", "--providers", "cpu"]

    result = CliRunner().invoke(cli(), args)

    assert result.exit_code == 0, result.output
    assert "mAP@0.5" in result.output
    body = json.loads(report.read_text())
    assert {"map50", "per_class_ap", "precision", "recall", "f1", "decision_threshold"} <= set(body)
    assert body["n_images"] == 3
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(dataset / "annotations.json"))
        loaded = gt.loadRes(str(preds))
        evaluator = COCOeval(gt, loaded, "bbox")
        evaluator.params.iouThrs = np.array([0.5])
        evaluator.params.maxDets = [50]
        evaluator.evaluate()
        evaluator.accumulate()
    assert len(loaded.getAnnIds()) == 6  # two boxes on each of the three images
    precision = evaluator.eval["precision"][0, :, :, 0, 0]
    assert body["map50"] == pytest.approx(float(precision[precision > -1].mean()), abs=1e-9)
