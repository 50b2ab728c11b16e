"""Campaign progress and agreement figures from the annotations we emitted (pure functions)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from defectloop.annotation_sync.store import AnnotationRecord, Campaign
from defectloop.common.events import AnnotationStatus, Box
from defectloop.vision.agreement import agreement


def _boxes(record: AnnotationRecord) -> list[Box]:
    return [Box.model_validate(b) for b in json.loads(record.boxes_json)]


def annotator_pairs(
    records: Sequence[AnnotationRecord],
) -> dict[tuple[str, str], list[tuple[list[Box], list[Box]]]]:
    """Images annotated (not skipped) by two or more annotators, grouped by annotator pair.

    Each image contributes every pair of its annotators (names sorted), with their boxes in that
    order; an annotator's latest version counts once per image.
    """
    by_image: dict[str, dict[str, AnnotationRecord]] = defaultdict(dict)
    for r in records:
        if r.status != AnnotationStatus.COMPLETED.value:
            continue
        prev = by_image[r.image_id].get(r.annotator)
        if prev is None or r.updated_at > prev.updated_at:
            by_image[r.image_id][r.annotator] = r
    pairs: dict[tuple[str, str], list[tuple[list[Box], list[Box]]]] = defaultdict(list)
    for image_id in sorted(by_image):
        names = sorted(by_image[image_id])
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                ra, rb = by_image[image_id][a], by_image[image_id][b]
                pairs[(a, b)].append((_boxes(ra), _boxes(rb)))
    return dict(pairs)


def _agreement_dict(pairs: Sequence[tuple[list[Box], list[Box]]]) -> dict[str, Any]:
    a = agreement(pairs)
    return {
        "pairs": a.pairs,
        "kappa": a.kappa,
        "decision_agreement": a.decision_agreement,
        "box_matched_share": a.box_matched_share,
        "box_mean_iou": a.box_mean_iou,
    }


@dataclass(frozen=True)
class LowAgreement:
    """When an annotator's labels are flagged: kappa against the others below ``kappa`` over at
    least ``min_pairs`` overlap images (fewer pairs: not enough evidence to flag anyone)."""

    kappa: float = 0.6
    min_pairs: int = 20


def agreement_figures(
    records: Sequence[AnnotationRecord], low: LowAgreement | None = None
) -> dict[str, Any]:
    """Agreement over every overlap image, per annotator pair, and per annotator (each one's
    pooled pairs with everyone else, own boxes first), with the low-agreement flag."""
    low = low or LowAgreement()
    grouped = annotator_pairs(records)
    everything = [p for ps in grouped.values() for p in ps]
    per_annotator: dict[str, list[tuple[list[Box], list[Box]]]] = defaultdict(list)
    for (a, b), pairs in grouped.items():
        per_annotator[a] += pairs
        per_annotator[b] += [(y, x) for x, y in pairs]
    by_annotator = []
    for name in sorted(per_annotator):
        figures = _agreement_dict(per_annotator[name])
        flagged = (
            figures["pairs"] >= low.min_pairs
            and figures["kappa"] is not None
            and figures["kappa"] < low.kappa
        )
        by_annotator.append({"annotator": name, **figures, "low_agreement": flagged})
    return {
        **_agreement_dict(everything),
        "by_pair": [
            {"annotators": list(k), **_agreement_dict(v)} for k, v in sorted(grouped.items())
        ],
        "by_annotator": by_annotator,
        "low_agreement_rule": {"kappa_below": low.kappa, "min_pairs": low.min_pairs},
    }


def progress(
    site: str,
    records: Sequence[AnnotationRecord],
    campaign: Campaign,
    *,
    sampled_in_campaign: int,
    campaign_start: datetime,
    low: LowAgreement | None = None,
) -> dict[str, Any]:
    """Per annotator per day, per day, campaign total vs target, agreement."""
    per: Counter[tuple[str, str, str]] = Counter()
    for r in records:
        per[(r.annotator, r.day.isoformat(), r.status)] += 1
    keys = sorted({(a, d) for a, d, _ in per})
    by_annotator_day: list[dict[str, Any]] = [
        {
            "annotator": a,
            "day": d,
            "annotated": per[(a, d, AnnotationStatus.COMPLETED.value)],
            "skipped": per[(a, d, AnnotationStatus.SKIPPED.value)],
        }
        for a, d in keys
    ]
    days: dict[str, dict[str, int]] = {}
    for row in by_annotator_day:
        tot = days.setdefault(str(row["day"]), {"annotated": 0, "skipped": 0})
        tot["annotated"] += int(row["annotated"])
        tot["skipped"] += int(row["skipped"])
    in_campaign = [
        r
        for r in records
        if r.updated_at.replace(tzinfo=None) >= campaign_start.replace(tzinfo=None)
    ]
    annotated_images = {r.image_id for r in in_campaign if r.status == "completed"}
    skipped_images = {r.image_id for r in in_campaign if r.status == "skipped"} - annotated_images
    return {
        "site": site,
        "by_annotator_day": by_annotator_day,
        "by_day": [{"day": d, **v} for d, v in sorted(days.items())],
        "campaign": {
            "name": campaign.name,
            "target": campaign.target,
            "started_at": campaign_start.isoformat(),
            "sampled": sampled_in_campaign,
            "annotated_images": len(annotated_images),
            "skipped_images": len(skipped_images),
            "remaining": max(0, campaign.target - len(annotated_images)),
        },
        "agreement": agreement_figures(records, low),
    }
