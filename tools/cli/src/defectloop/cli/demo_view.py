"""The closed-loop demo's live terminal view: one row per site, from the monitor's and the
trainer's HTTP APIs (what :class:`defectloop.cli.closed_loop.SiteTrack` saw of them)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from defectloop.cli.closed_loop import DemoConfig, SiteTrack

STYLE = {
    "OK": "green",
    "recovered": "bold green",
    "degraded": "bold red",
    "data-quality alert": "bold yellow",
    "waiting for labels": "cyan",
    "training": "magenta",
    "gating": "magenta",
    "shadow": "blue",
}


def render(config: DemoConfig, tracks: list[SiteTrack], began: float, phase: str) -> Group:
    from defectloop.cli.closed_loop import site_status

    now = time.time()
    table = Table(
        title=f"defectloop demo ({config.name}) · {now - began:4.0f} s · {phase}",
        title_justify="left",
        expand=True,
    )
    for col in ("site", "drift", "state", "progress", "champion", "labels", "recall (labels)"):
        table.add_column(col, overflow="fold")
    needs = (config.min_fresh_labels, config.min_fresh_defective)
    for t in tracks:
        state, progress = site_status(t, needs)
        drift = ", ".join(
            f"{d.kind} {d.severity:g}" + (f" {d.camera}" if d.camera else "") for d in t.drifts
        )
        if t.drifts and t.drift_at is None:
            due = config.baseline_s + min(d.start_s for d in t.drifts) - (now - began)
            drift += f" (in {due:.0f} s)" if due > 0 else " (due)"
        recall = "—" if t.headline_recall is None else f"{t.headline_recall:.2f}"
        table.add_row(
            t.site,
            drift or "—",
            Text(state, style=STYLE.get(state, "")),
            progress,
            t.champion or "—",
            str(t.n_labels),
            recall,
        )
    last = sorted((e for t in tracks for e in t.events), key=lambda e: e["at"])[-6:]
    lines = [Text(f"{e['at'][11:19]}  {e['kind']}  " + _facts(e), style="dim") for e in last]
    return Group(table, *lines)


def _facts(event: dict[str, object]) -> str:
    keep = ("degradation", "metric", "camera_id", "reason", "candidate_version", "kind")
    return " ".join(f"{k}={event[k]}" for k in keep[:-1] if event.get(k) is not None)


class LiveView:
    """A rich Live that the scenario updates on each observation."""

    def __init__(self, config: DemoConfig) -> None:
        self.config = config
        self.live = Live(refresh_per_second=2, transient=False)

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)

    def __call__(self, tracks: list[SiteTrack], began: float, phase: str) -> None:
        self.live.update(render(self.config, tracks, began, phase))
