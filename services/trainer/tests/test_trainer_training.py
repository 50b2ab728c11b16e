"""Training end to end on a tiny config: determinism, reproduction, fine-tuning, the bundle.

One module-scoped training is shared by the tests that only read its outcome (a tiny run takes
seconds, but torch's first import and the ONNX export are not free on a 2-core machine).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from defectloop.common.errors import IntegrityMismatchError
from defectloop.trainer.config import resolve_config
from defectloop.trainer.pipeline import TrainOutcome, reproduce, train_and_register
from defectloop.trainer.registry import Registry, TrainingRun
from defectloop.trainer.train import train

pytestmark = pytest.mark.unit

SEED = 3


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("training")


@pytest.fixture(scope="module")
def dataset(workspace: Path, coco_factory: Callable[..., Path]) -> Path:
    return coco_factory(workspace / "ds", n=16, size=128, seed=1)


@pytest.fixture(scope="module")
def registry(workspace: Path) -> Registry:
    return Registry(f"sqlite:///{workspace / 'trainer.db'}")


@pytest.fixture(scope="module")
def trained(workspace: Path, dataset: Path, registry: Registry) -> TrainOutcome:
    return train_and_register(
        [dataset],
        preset="tiny",
        seed=SEED,
        out_dir=workspace / "bundle",
        registry=registry,
        track=False,
    )


def test_bundle_is_verified_by_the_serving_runtime(trained: TrainOutcome) -> None:
    import cv2

    from defectloop.vision.manifest import verify_bundle
    from defectloop.vision.runtime import Detector

    bundle = trained.result.bundle_dir
    verify_bundle(bundle)
    detector = Detector.from_bundle(bundle, providers="cpu")
    image = cv2.imread(str(sorted(Path(bundle).parent.glob("ds/images/*.png"))[0]), 0)
    [prediction] = detector.predict([image])
    assert prediction.outlier_score is not None  # reference stats were fitted
    assert (bundle / "checkpoint.pt").is_file()
    assert (bundle / "dataset.json").is_file()


def test_lineage_is_recorded_in_manifest_and_registry(
    trained: TrainOutcome, registry: Registry
) -> None:
    lineage = trained.result.manifest.lineage
    assert lineage.seed == SEED
    assert lineage.parent is None
    assert len(lineage.dataset_version) == 64
    assert len(lineage.config_sha256) == 64
    assert lineage.config == resolve_config("tiny").model_dump(mode="json")
    model = registry.get_model(trained.model.version)
    assert model.sha256 == trained.result.manifest.sha256
    assert model.dataset_version == lineage.dataset_version
    recorded = json.loads(registry.get_dataset(lineage.dataset_version).manifest_json)
    assert recorded["num_val"] >= 1


def test_the_run_records_the_state_of_the_code_tree(
    trained: TrainOutcome, registry: Registry
) -> None:
    from defectloop.trainer.lineage import git_dirty
    from defectloop.trainer.registry import RunProvenance

    with registry.session() as s:
        row = s.get(RunProvenance, trained.run.id)
    assert row is not None
    assert (row.git_dirty, row.job_id) == (git_dirty(), None)


def test_same_inputs_give_a_byte_identical_model(
    trained: TrainOutcome, dataset: Path, workspace: Path
) -> None:
    train([dataset], resolve_config("tiny"), seed=SEED, out_dir=workspace / "again")
    first = (trained.result.bundle_dir / "model.onnx").read_bytes()
    assert (workspace / "again" / "model.onnx").read_bytes() == first


def test_another_seed_gives_different_bytes(
    trained: TrainOutcome, dataset: Path, workspace: Path
) -> None:
    other = train([dataset], resolve_config("tiny"), seed=SEED + 1, out_dir=workspace / "seed")
    assert other.manifest.sha256 != trained.result.manifest.sha256


def test_reproduce_reports_identical(
    trained: TrainOutcome, registry: Registry, workspace: Path
) -> None:
    report = reproduce(trained.model.version, workspace / "repro", registry=registry)
    assert report.identical
    assert report.metrics_equal


def test_reproduce_refuses_a_changed_dataset(
    trained: TrainOutcome, registry: Registry, dataset: Path, workspace: Path
) -> None:
    changed = workspace / "changed"
    shutil.copytree(dataset, changed)
    image = sorted((changed / "images").glob("*.png"))[0]
    image.write_bytes(image.read_bytes()[:-8] + b"\0" * 8)
    with registry.session() as s:  # point the recorded run at the modified copy
        run = s.get(TrainingRun, trained.run.id)
        assert run is not None
        original = run.dataset_dirs_json
        run.dataset_dirs_json = json.dumps([str(changed)])
        s.add(run)
        s.commit()
    try:
        with pytest.raises(IntegrityMismatchError, match=r"dataset of .* changed"):
            reproduce(trained.model.version, workspace / "never", registry=registry)
    finally:
        with registry.session() as s:
            run = s.get(TrainingRun, trained.run.id)
            assert run is not None
            run.dataset_dirs_json = original
            s.add(run)
            s.commit()


def test_fine_tuning_records_the_parent(
    trained: TrainOutcome, registry: Registry, dataset: Path, workspace: Path
) -> None:
    child = train_and_register(
        [dataset],
        preset="tiny",
        seed=SEED,
        out_dir=workspace / "child",
        registry=registry,
        parent_bundle=trained.result.bundle_dir,
        track=False,
    )
    assert child.result.manifest.lineage.parent == trained.model.version
    assert registry.get_model(child.model.version).parent_version == trained.model.version
    assert child.result.manifest.sha256 != trained.result.manifest.sha256
