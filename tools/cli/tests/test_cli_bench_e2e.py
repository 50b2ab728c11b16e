"""`defectloop bench e2e` end to end on a real broker: real ingest and inference processes, a tiny
model deployed at three procedural sites, a handful of frames; the report has the whole path, the
fleet and the naive baseline."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from defectloop.cli import e2e_bench
from defectloop.testing.bundles import BundleBuilder

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_bench_e2e_measures_the_whole_path_and_the_naive_baseline(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    bundle = BundleBuilder(tmp_path / "bundles")()
    cfg = e2e_bench.E2EConfig(
        bundle=bundle.path,
        rate=4.0,
        seconds=3.0,
        image_size=256,
        site="e2e" + uuid.uuid4().hex[:10],
        sites=3,  # procedural factories S01-S03, the tiny model deployed at each
        bootstrap=kafka_bootstrap,
    )
    messages: list[str] = []
    report = e2e_bench.run(cfg, messages.append, tmp_path / "work")

    whole, naive = report["whole_path"], report["naive_baseline"]
    assert whole["http_statuses"] == {"202": 12}
    assert whole["predicted"] == 12
    assert 0 < whole["p50_ms"] <= whole["p99_ms"]
    assert set(whole["cpu_seconds_per_image"]) == {"ingest", "inference"}
    assert all(mb > 0 for mb in whole["peak_rss_mb"].values())
    assert report["fleet"]["sites"] == 3
    assert report["fleet"]["inference_peak_rss_mb_after_warmup"] > 0
    assert naive["images"] == 15  # a warm-up frame per site and the twelve
    assert naive["images_per_s"] > 0
    table = e2e_bench.markdown(report)
    assert "naive baseline" in table
    assert any(m.startswith("naive:") for m in messages)
