"""Simulated annotators and cameras: deterministic noise from the truth, skips, the truth log."""

from __future__ import annotations

from pathlib import Path

import pytest

from defectloop.common.events import image_id_for, sha256_hex
from defectloop.factory_sim.annotators import PROFILES, annotate, default_team
from defectloop.factory_sim.cameras import Truth, TruthBox, TruthLog, frame
from defectloop.factory_sim.drift import Drift
from defectloop.factory_sim.sites import get_site

pytestmark = pytest.mark.unit


def _truth(drifts: dict[str, float] | None = None) -> Truth:
    return Truth(
        image_id="img-1",
        site="A",
        camera="cam-1",
        seed=1,
        index=0,
        width=200,
        height=100,
        boxes=(TruthBox("scratch", 10, 20, 30, 40), TruthBox("spot", 100, 50, 8, 9)),
        drifts=drifts or {},
    )


def _pixels(result: dict) -> tuple[str, float, float, float, float]:
    v, w, h = result["value"], result["original_width"], result["original_height"]
    return (
        v["rectanglelabels"][0],
        v["x"] * w / 100,
        v["y"] * h / 100,
        v["width"] * w / 100,
        v["height"] * h / 100,
    )


def test_perfect_annotator_reproduces_the_truth() -> None:
    work = annotate(_truth(), PROFILES["perfect"], "p")
    got = [_pixels(r) for r in work.result]
    assert [g[0] for g in got] == ["scratch", "spot"]
    assert [v for g in got for v in g[1:]] == pytest.approx([10, 20, 30, 40, 100, 50, 8, 9])
    assert work.skip_reason is None


def test_annotations_are_deterministic_per_annotator_and_image() -> None:
    a = annotate(_truth(), PROFILES["sloppy"], "s1")
    assert a == annotate(_truth(), PROFILES["sloppy"], "s1")


def test_sloppy_annotators_are_noisier_than_careful_ones() -> None:
    def error(profile: str) -> float:
        total = 0.0
        for i in range(50):
            work = annotate(_truth(), PROFILES[profile], f"{profile}-{i}")
            total += sum(
                abs(_pixels(r)[1] - 10)
                for r in work.result
                if _pixels(r)[0] != "spot" and _pixels(r)[1] < 60
            )
        return total

    assert error("sloppy") > error("careful") > 0


def test_careful_annotators_skip_blurry_images_with_a_reason() -> None:
    work = annotate(_truth({"blur": 0.8}), PROFILES["careful"], "c")
    assert work.skip_reason == "blurry"
    assert work.result[0]["from_name"] == "cannot_annotate"


def test_sloppy_annotators_annotate_blurry_images_anyway() -> None:
    assert annotate(_truth({"blur": 0.8}), PROFILES["sloppy"], "s").skip_reason is None


def test_default_team_mixes_profiles() -> None:
    team = default_team("A", 3)
    assert [a.profile.name for a in team] == ["careful", "sloppy", "careful"]
    assert len({a.email for a in team}) == 3


def test_camera_frame_truth_has_the_ingest_image_id() -> None:
    png, truth = frame(get_site("A").with_size(128), "cam-1", 1, 0)
    assert truth.image_id == image_id_for("A", "cam-1", sha256_hex(png))
    assert (truth.width, truth.height) == (128, 128)


def test_cameras_of_a_site_film_different_parts() -> None:
    site = get_site("A").with_size(128)
    assert frame(site, "cam-1", 1, 0)[0] != frame(site, "cam-2", 1, 0)[0]


def test_blur_drift_marks_the_truth_unreadable() -> None:
    _, truth = frame(get_site("A").with_size(128), "cam-1", 1, 3, [Drift("blur", 0, 1.0)])
    assert truth.unreadable_reason == "blurry"


def test_truth_log_round_trips_across_readers(tmp_path: Path) -> None:
    writer, reader = TruthLog(tmp_path / "t.jsonl"), TruthLog(tmp_path / "t.jsonl")
    assert reader.get("img-1") is None
    writer.append(_truth())
    assert reader.get("img-1") == _truth()
