"""Unit tests: conversion, sampling determinism, signed links, agreement."""

from __future__ import annotations

import itertools
import json
import math
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sklearn.metrics import cohen_kappa_score

from defectloop.annotation_sync import convert, signing
from defectloop.annotation_sync.progress import LowAgreement, agreement_figures
from defectloop.annotation_sync.sampling import (
    Quota,
    SamplingPolicy,
    SamplingReason,
    decide,
    unit_hash,
)
from defectloop.annotation_sync.settings import AnnotationSyncSettings
from defectloop.annotation_sync.store import AnnotationRecord
from defectloop.common.errors import ConfigError, InvalidInputError
from defectloop.common.events import (
    AnnotationStatus,
    Box,
    ModelRole,
    PredictionMade,
    ScoredBox,
    prediction_id_for,
)
from defectloop.vision.agreement import agreement, cohen_kappa, iou, match_boxes

pytestmark = pytest.mark.unit

OPEN = Quota(used_today=0, daily_budget=100, campaign_done=0, campaign_target=100)


def _prediction(
    i: int, *, score: float = 0.9, outlier: bool = False, role: ModelRole = ModelRole.CHAMPION
) -> PredictionMade:
    image_id = f"img-{i}"
    return PredictionMade(
        site_id="A",
        camera_id="cam-1",
        prediction_id=prediction_id_for(image_id, "v1", role.value),
        image_id=image_id,
        sha256="0" * 64,
        blob_uri="file:///x.png",
        width=640,
        height=480,
        boxes=(ScoredBox(label="scratch", x=10, y=20, w=30, h=40, score=score),),
        defective=score >= 0.5,
        decision_score=score,
        decision_threshold=0.5,
        model_name="m",
        model_version="v1",
        role=role,
        outlier_score=3.0 if outlier else 0.1,
        outlier=outlier,
        captured_at=datetime(2026, 1, 1, tzinfo=UTC),
        queue_latency_ms=1,
        inference_latency_ms=1,
    )


# --- conversion ----------------------------------------------------------------------------


def test_pixel_box_survives_a_percent_round_trip() -> None:
    box = Box(label="crack", x=13, y=7, w=101, h=33)
    back = convert.from_percent_result(
        convert.to_percent_result(box, 1000, 700, region_id="r"), 1, 1
    )
    for a, b in ((box.x, back.x), (box.y, back.y), (box.w, back.w), (box.h, back.h)):
        assert a == pytest.approx(b, abs=1e-9)
    assert back.label == "crack"


def test_percent_uses_original_size_of_the_result() -> None:
    result = {
        "type": "rectanglelabels",
        "original_width": 2000,
        "original_height": 1000,
        "value": {"x": 10, "y": 20, "width": 5, "height": 50, "rectanglelabels": ["spot"]},
    }
    assert convert.from_percent_result(result, 1, 1) == Box(
        label="spot", x=200, y=200, w=100, h=500
    )


def test_box_is_clamped_to_the_image() -> None:
    result = {
        "value": {"x": 95, "y": -5, "width": 10, "height": 10, "rectanglelabels": ["spot"]},
    }
    box = convert.from_percent_result(result, 100, 100)
    assert (box.x, box.y, box.w, box.h) == pytest.approx((95, 0, 5, 5))


def test_rotated_rectangle_becomes_its_hull() -> None:
    result = {
        "value": {
            "x": 50,
            "y": 50,
            "width": 10,
            "height": 0,
            "rotation": 90,
            "rectanglelabels": ["scratch"],
        },
    }
    box = convert.from_percent_result(result, 100, 100)
    assert (box.x, box.y, box.w, box.h) == pytest.approx((50, 50, 0, 10), abs=1e-9)


def test_malformed_rectangle_is_invalid_input() -> None:
    with pytest.raises(InvalidInputError):
        convert.from_percent_result({"value": {"x": 1}}, 10, 10)


def test_was_cancelled_is_a_skip_with_the_chosen_reason() -> None:
    ann = {
        "was_cancelled": True,
        "result": [
            {"type": "choices", "from_name": "cannot_annotate", "value": {"choices": ["blurry"]}}
        ],
    }
    c = convert.convert_annotation(ann, 10, 10)
    assert (c.status, c.skip_reason, c.boxes) == (AnnotationStatus.SKIPPED, "blurry", ())


def test_skip_without_reason_is_unspecified() -> None:
    c = convert.convert_annotation({"was_cancelled": True, "result": []}, 10, 10)
    assert c.skip_reason == "unspecified"


def test_submitted_with_a_reason_counts_as_could_not_annotate() -> None:
    ann = {
        "result": [
            {
                "type": "choices",
                "from_name": "cannot_annotate",
                "value": {"choices": ["obstructed"]},
            }
        ]
    }
    assert convert.convert_annotation(ann, 10, 10).status == AnnotationStatus.SKIPPED


def test_empty_result_is_a_completed_annotation_without_defects() -> None:
    c = convert.convert_annotation({"result": []}, 10, 10)
    assert (c.status, c.boxes) == (AnnotationStatus.COMPLETED, ())


def test_prediction_payload_is_in_percent_with_scores() -> None:
    p = convert.prediction_payload(
        [ScoredBox(label="spot", x=64, y=48, w=64, h=48, score=0.8)], 640, 480, "v3"
    )
    value = p["result"][0]["value"]
    assert (value["x"], value["y"], value["width"], value["height"]) == (10, 10, 10, 10)
    assert p["model_version"] == "defectloop:v3"
    assert p["score"] == 0.8


def test_annotation_versions_differ_by_update_time() -> None:
    t0 = convert.parse_time("2026-01-01T00:00:00.000001Z")
    t1 = convert.parse_time("2026-01-01T00:00:00.000002Z")
    assert convert.annotation_version_id(7, t0) != convert.annotation_version_id(7, t1)
    assert convert.annotation_version_id(7, t0) == convert.annotation_version_id(7, t0)


def test_completed_by_is_read_as_id_or_expanded_dict() -> None:
    users = {3: "ann@x"}
    assert convert.annotator_name(3, users) == "ann@x"
    assert convert.annotator_name({"id": 3, "email": "ann@x"}, {}) == "ann@x"
    with pytest.raises(InvalidInputError):
        convert.annotator_name(None, users)


def test_label_config_has_the_classes_and_a_skip_reason() -> None:
    cfg = convert.label_config()
    for c in ("scratch", "spot", "crack", "cannot_annotate", 'canRotate="false"'):
        assert c in cfg


# --- sampling ------------------------------------------------------------------------------


def test_sampling_is_deterministic_per_prediction() -> None:
    policy = SamplingPolicy(random_share=0.3, uncertainty_margin=0.0, overlap_share=0.5)
    first = [decide(_prediction(i), policy, OPEN) for i in range(300)]
    again = [decide(_prediction(i), policy, OPEN) for i in range(300)]
    assert first == again


def test_random_share_is_respected() -> None:
    policy = SamplingPolicy(random_share=0.2, uncertainty_margin=0.0)
    n = sum(decide(_prediction(i), policy, OPEN) is not None for i in range(2000))
    assert 300 < n < 500


def test_reasons_by_priority() -> None:
    policy = SamplingPolicy(random_share=0.0, uncertainty_margin=0.1)
    outlier = decide(_prediction(1, score=0.55, outlier=True), policy, OPEN)
    uncertain = decide(_prediction(2, score=0.55), policy, OPEN)
    assert outlier is not None
    assert outlier.reason == SamplingReason.OUTLIER
    assert uncertain is not None
    assert uncertain.reason == SamplingReason.UNCERTAIN
    assert decide(_prediction(3, score=0.95), policy, OPEN) is None


def test_random_stratum_is_drawn_before_targeted_reasons() -> None:
    # An outlier or near-threshold image whose hash falls in the random share stays random, so
    # the random stratum is a uniform sample of all images (the monitor's headline figures).
    policy = SamplingPolicy(random_share=0.3, uncertainty_margin=0.1)
    preds = [_prediction(i, score=0.55, outlier=True) for i in range(2000)]
    reasons = [d.reason for p in preds if (d := decide(p, policy, OPEN)) is not None]
    random_share = reasons.count(SamplingReason.RANDOM) / len(preds)
    assert 0.25 < random_share < 0.35
    assert set(reasons) == {SamplingReason.RANDOM, SamplingReason.OUTLIER}


def test_targeted_reasons_leave_room_for_the_random_stratum() -> None:
    policy = SamplingPolicy(random_share=0.5, uncertainty_margin=0.1)
    quota = Quota(
        used_today=50,
        daily_budget=100,
        campaign_done=0,
        campaign_target=1000,
        targeted_today=50,
        targeted_budget_share=0.5,
    )
    decisions = [decide(_prediction(i, outlier=True), policy, quota) for i in range(400)]
    kept = {d.reason for d in decisions if d is not None}
    assert kept == {SamplingReason.RANDOM}


def test_shadow_predictions_are_never_sampled() -> None:
    policy = SamplingPolicy(random_share=1.0)
    assert decide(_prediction(1, role=ModelRole.SHADOW), policy, OPEN) is None


def test_budget_and_campaign_target_close_sampling() -> None:
    policy = SamplingPolicy(random_share=1.0)
    spent = Quota(used_today=5, daily_budget=5, campaign_done=0, campaign_target=10)
    reached = Quota(used_today=0, daily_budget=5, campaign_done=10, campaign_target=10)
    assert decide(_prediction(1), policy, spent) is None
    assert decide(_prediction(1), policy, reached) is None


def test_overlap_share_sends_to_two_annotators() -> None:
    policy = SamplingPolicy(random_share=1.0, overlap_share=0.25)
    decisions = [decide(_prediction(i), policy, OPEN) for i in range(2000)]
    two = sum(d is not None and d.annotators == 2 for d in decisions)
    assert 400 < two < 600


def test_unit_hash_is_in_unit_interval_and_stable() -> None:
    assert unit_hash("a", "b") == unit_hash("a", "b")
    assert 0 <= unit_hash("x") < 1


# --- signing -------------------------------------------------------------------------------


def test_signed_link_verifies_until_expiry() -> None:
    sig = signing.sign("secret-key", "A", "img", 1000)
    assert signing.verify("secret-key", "A", "img", 1000, sig, now=999) is None
    assert signing.verify("secret-key", "A", "img", 1000, sig, now=1000) == "expired"


def test_link_is_bound_to_site_image_expiry_and_key() -> None:
    sig = signing.sign("secret-key", "A", "img", 1000)
    assert signing.verify("secret-key", "B", "img", 1000, sig, now=0) == "bad_signature"
    assert signing.verify("secret-key", "A", "img2", 1000, sig, now=0) == "bad_signature"
    assert signing.verify("secret-key", "A", "img", 2000, sig, now=0) == "bad_signature"
    assert signing.verify("other-key", "A", "img", 1000, sig, now=0) == "bad_signature"


def test_image_url_carries_site_expiry_and_signature() -> None:
    url = signing.image_url("http://h:1/", "secret-key", "A", "i/d", 5)
    assert url.startswith("http://h:1/v1/images/i%2Fd?site=A&exp=5&sig=")


# --- agreement -----------------------------------------------------------------------------


def test_kappa_matches_sklearn() -> None:
    a = [True, True, False, False, True, False, True, True]
    b = [True, False, False, False, True, True, True, True]
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))


def test_kappa_of_constant_identical_raters_is_one() -> None:
    assert cohen_kappa([True, True], [True, True]) == 1.0
    assert cohen_kappa([], []) is None


def test_iou_of_known_boxes() -> None:
    a = Box(label="s", x=0, y=0, w=10, h=10)
    b = Box(label="s", x=5, y=0, w=10, h=10)
    assert iou(a, b) == pytest.approx(50 / 150)
    assert iou(a, a) == 1.0


def _best_matching(a: list[Box], b: list[Box]) -> tuple[int, float]:
    """Exhaustive: most matches, then highest IoU sum (independent of scipy)."""
    best = (0, 0.0)
    small, big, swap = (a, b, False) if len(a) <= len(b) else (b, a, True)
    for perm in itertools.permutations(range(len(big)), len(small)):
        vals = []
        for i, j in enumerate(perm):
            x, y = (small[i], big[j]) if not swap else (big[j], small[i])
            v = iou(x, y) if x.label == y.label else 0.0
            vals.append(v if v >= 0.5 else 0.0)
        cand = (sum(v > 0 for v in vals), sum(vals))
        best = max(best, cand)
    return best


def test_box_matching_matches_exhaustive_search() -> None:
    a = [
        Box(label="s", x=0, y=0, w=10, h=10),
        Box(label="s", x=3, y=0, w=10, h=10),
        Box(label="c", x=50, y=50, w=10, h=10),
    ]
    b = [
        Box(label="s", x=2, y=0, w=10, h=10),
        Box(label="c", x=51, y=50, w=10, h=10),
        Box(label="s", x=90, y=90, w=5, h=5),
    ]
    m = match_boxes(a, b)
    n, s = _best_matching(a, b)
    assert (m.matched, m.iou_sum) == (n, pytest.approx(s))
    assert m.matched_share == pytest.approx(2 * n / 6)


def test_boxes_of_other_labels_never_match() -> None:
    m = match_boxes([Box(label="s", x=0, y=0, w=9, h=9)], [Box(label="c", x=0, y=0, w=9, h=9)])
    assert m.matched == 0
    assert m.mean_iou is None


def test_agreement_over_pairs() -> None:
    box = Box(label="s", x=0, y=0, w=10, h=10)
    pairs = [([box], [box]), ([], []), ([box], []), ([], [])]
    ag = agreement(pairs)
    assert ag.pairs == 4
    assert ag.kappa == pytest.approx(cohen_kappa_score([1, 0, 1, 0], [1, 0, 0, 0]))
    assert ag.box_matched_share == pytest.approx(2 / 3)
    assert ag.box_mean_iou == 1.0
    assert not math.isnan(ag.decision_agreement or math.nan)


# --- doors ---------------------------------------------------------------------------------


def test_label_studio_comes_only_from_the_service_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CLI's info file exists, but annotation-sync must not read it.
    for name in ("URL", "TOKEN", "INSTANCES"):
        monkeypatch.delenv(f"DEFECTLOOP_ANNOTATION_SYNC_LABEL_STUDIO_{name}", raising=False)
    monkeypatch.setenv("DEFECTLOOP_HOME", str(tmp_path))
    info = tmp_path / "labelstudio" / "info.json"
    info.parent.mkdir(parents=True)
    info.write_text(json.dumps({"url": "http://127.0.0.1:1", "token": "t" * 40}))
    with pytest.raises(ConfigError, match="no Label Studio configured"):
        AnnotationSyncSettings().instance_for("A")
    monkeypatch.setenv("DEFECTLOOP_ANNOTATION_SYNC_LABEL_STUDIO_URL", "http://ls:8080")
    monkeypatch.setenv("DEFECTLOOP_ANNOTATION_SYNC_LABEL_STUDIO_TOKEN", "k" * 40)
    monkeypatch.setenv(
        "DEFECTLOOP_ANNOTATION_SYNC_LABEL_STUDIO_INSTANCES",
        json.dumps({"B": {"url": "http://ls-b:8080", "token": "b" * 40}}),
    )
    settings = AnnotationSyncSettings()
    assert settings.instance_for("A").url == "http://ls:8080"
    assert settings.instance_for("B").url == "http://ls-b:8080"


def test_the_service_code_never_mentions_the_cli_files() -> None:
    src = Path(convert.__file__).parent
    assert [p.name for p in src.glob("*.py") if "info.json" in p.read_text()] == []


# --- agreement per annotator -----------------------------------------------------------------


def _record(image: str, annotator: str, boxes: list[Box]) -> AnnotationRecord:
    return AnnotationRecord(
        annotation_id=f"{image}-{annotator}",
        ls_annotation_id=1,
        site_id="A",
        image_id=image,
        task_id=1,
        annotator=annotator,
        status="completed",
        boxes_json=json.dumps([b.model_dump() for b in boxes]),
        day=datetime(2026, 1, 1, tzinfo=UTC).date(),
        updated_at=datetime(2026, 1, 1, tzinfo=UTC),
        event_json="{}",
    )


def test_each_annotator_is_scored_on_all_its_pairs_and_flagged_by_the_rule() -> None:
    box = Box(label="spot", x=0, y=0, w=10, h=10)
    records = []
    for i in range(6):  # a and b agree, half of the images defective
        truth = [box] if i % 2 else []
        records += [_record(f"ab{i}", "a", truth), _record(f"ab{i}", "b", truth)]
    for i in range(6):  # c sees defects where a sees none, and the reverse
        records += [_record(f"ac{i}", "a", [box] if i % 2 else []), _record(f"ac{i}", "c", [])]
        if i % 2 == 0:
            records[-1] = _record(f"ac{i}", "c", [box])
    figures = agreement_figures(records, LowAgreement(kappa=0.6, min_pairs=6))
    rows = {r["annotator"]: r for r in figures["by_annotator"]}
    a_pairs = [([box] if i % 2 else [], [box] if i % 2 else []) for i in range(6)] + [
        ([box] if i % 2 else [], [] if i % 2 else [box]) for i in range(6)
    ]
    assert rows["a"]["pairs"] == 12
    assert rows["a"]["kappa"] == pytest.approx(agreement(a_pairs).kappa)
    assert rows["c"]["kappa"] == pytest.approx(-1.0)
    assert [rows[n]["low_agreement"] for n in "abc"] == [True, False, True]
    few = agreement_figures(records, LowAgreement(kappa=0.6, min_pairs=7))
    assert [r["low_agreement"] for r in few["by_annotator"]] == [True, False, False]
