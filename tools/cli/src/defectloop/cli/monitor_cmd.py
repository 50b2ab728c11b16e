"""`defectloop monitor status [--site S]`: each site's state, models, figures and incidents.

It reads the monitor's HTTP API (``GET /v1/sites`` or ``/v1/sites/{site}``), so it shows what the
dashboard shows, from any machine that reaches the monitor.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from defectloop.common.errors import NotFoundError, TransientError

console = Console()
DEFAULT_URL = "http://127.0.0.1:8084"
_STATE_STYLE = {"ok": "green", "pending": "yellow", "recovering": "cyan", "degraded": "red"}


def fetch_status(url: str, site: str | None, *, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """The site summaries from the monitor at ``url`` (one site, or all of them)."""
    path = f"/v1/sites/{site}" if site else "/v1/sites"
    try:
        resp = httpx.get(url.rstrip("/") + path, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise TransientError(
            f"the monitor at {url} is unreachable ({type(exc).__name__})",
            hint="start the stack with `defectloop up`, or pass --url / DEFECTLOOP_MONITOR_URL",
        ) from exc
    if resp.status_code == 404 and site:
        raise NotFoundError(
            f"the monitor has no data for site {site!r}",
            hint="`defectloop monitor status` without --site lists the sites it knows",
        )
    if resp.status_code >= 400:
        raise TransientError(f"the monitor answered {resp.status_code}: {resp.text[:200]}")
    body: dict[str, Any] = resp.json()
    return [body] if site else list(body["sites"])


def _figure(headline: dict[str, Any] | None, name: str) -> str:
    if not headline:
        return "-"
    f = headline[name]
    if f["value"] is None:
        return f"- (n={f['n']})"
    return f"{f['value']:.3f} [{f['ci_low']:.2f}, {f['ci_high']:.2f}] n={f['n']}"


def _models(summary: dict[str, Any]) -> str:
    return ", ".join(f"{role} {m['model_version']}" for role, m in summary["models"].items())


def render(summaries: list[dict[str, Any]]) -> None:
    if not summaries:
        console.print("the monitor has no data yet (no site has sent an event)")
        return
    table = Table(title="sites (headline: random-stratum labels, 95 % Wilson intervals)")
    for column in ("site", "state", "models", "recall", "precision", "labels", "open incidents"):
        table.add_column(column)
    for s in summaries:
        state = s["state"]
        counts = s["annotations"]
        table.add_row(
            s["site_id"],
            f"[{_STATE_STYLE.get(state, 'white')}]{state}[/]",
            _models(s) or "-",
            _figure(s["headline"], "recall"),
            _figure(s["headline"], "precision"),
            f"{counts['completed']} (+{counts['skipped']} skipped)",
            str(len(s["open_incidents"])),
        )
    console.print(table)
    for s in summaries:
        for inc in s["open_incidents"]:
            d = inc["degraded"]
            where = f" camera {inc['camera_id']}" if inc["camera_id"] else ""
            console.print(
                f"[red]●[/red] {s['site_id']}{where}: {inc['kind']} {inc['metric']} "
                f"{d['value']:.3f} (threshold {d['threshold']:.3f}, baseline {d['baseline']:.3f}, "
                f"n={d['sample_size']}) since {inc['opened_at']} [dim]{inc['incident_id']}[/dim]"
            )


def register(app: typer.Typer) -> None:
    monitor = typer.Typer(help="What the monitor measures: performance, drift, incidents.")

    @monitor.command("status")
    def status(
        site: Annotated[str | None, typer.Option(help="Only this site.")] = None,
        url: Annotated[
            str | None,
            typer.Option(help="Monitor URL (default: DEFECTLOOP_MONITOR_URL or the local one)."),
        ] = None,
    ) -> None:
        """Each site's state, models, headline recall/precision with n, and open incidents."""
        base = url or os.environ.get("DEFECTLOOP_MONITOR_URL", DEFAULT_URL)
        render(fetch_status(base, site))

    app.add_typer(monitor, name="monitor")
