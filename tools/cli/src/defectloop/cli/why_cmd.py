"""`defectloop models why VERSION` and `defectloop models jobs [--site S]`.

``why`` prints, in one screen, the chain behind a model version: incident -> labels -> dataset ->
run -> gates -> approval -> shadow -> metrics after promotion. The trainer's public
``defectloop.trainer.explain`` assembles it (imported inside the command: it needs the trainer);
the monitor adds what only it knows when it is reachable. ``jobs`` shows the trainer's retraining
jobs from its HTTP API, or from its database when the service is not running.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from defectloop.cli.errors import require_trainer
from defectloop.cli.monitor_cmd import DEFAULT_URL as DEFAULT_MONITOR_URL
from defectloop.common.errors import TransientError

if TYPE_CHECKING:
    from defectloop.trainer.explain import Explanation, Link

console = Console()
DEFAULT_TRAINER_URL = "http://127.0.0.1:8085"
NONE = "—"
_TITLES = {
    "incident": "incident",
    "labels": "labels",
    "dataset": "dataset",
    "run": "run",
    "gates": "gates",
    "approval": "approval",
    "shadow": "shadow period",
    "after_promotion": "after promotion",
}
_STATE_STYLE = {
    "waiting_for_labels": "yellow",
    "training": "cyan",
    "gating": "cyan",
    "shadow": "magenta",
    "awaiting_approval": "magenta",
    "deployed": "green",
    "gate_failed": "red",
    "rejected": "red",
    "failed": "red",
    "timed_out": "red",
    "ignored": "dim",
}


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return NONE
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _short(value: Any, n: int = 12) -> str:
    return NONE if value is None else str(value)[:n]


def _when(value: Any) -> str:
    return NONE if not value else str(value)[:19].replace("T", " ")


def _figure(fig: Any) -> str:
    """A monitor figure ``{value, ci_low, ci_high, n}`` as ``0.912 [0.85, 0.95] n=40``."""
    if not isinstance(fig, dict) or fig.get("value") is None:
        return NONE
    return f"{fig['value']:.3f} [{fig['ci_low']:.2f}, {fig['ci_high']:.2f}] n={fig['n']}"


def _incident(f: dict[str, Any]) -> list[str]:
    ci = (
        f" [{f['ci_low']:.2f}, {f['ci_high']:.2f}]"
        if f.get("ci_low") is not None and f.get("ci_high") is not None
        else ""
    )
    n_pos = f" ({f['n_positive']} defective)" if f.get("n_positive") is not None else ""
    return [
        f"{f['kind']} {f['metric']} {_num(f['value'])}{ci} vs baseline {_num(f['baseline'])} "
        f"(threshold {_num(f['threshold'])}), n={_num(f['n'])}{n_pos}",
        f"window {_when(f['window_start'])} → {_when(f['window_end'])}, "
        f"change point {_when(f['change_point_at'])}",
        f"champion then {f['champion_then'] or NONE}; incident {', '.join(f['incident_ids'])}",
    ]


def _labels(f: dict[str, Any]) -> list[str]:
    who = ", ".join(f"{name} {n}" for name, n in f.get("annotators", {}).items()) or NONE
    lines = [f"{f['fresh']} fresh ({f['fresh_defective']} defective), from: {who}"]
    agreement = f.get("agreement")
    if agreement:
        lines.append(
            f"agreement: kappa {_num(agreement.get('kappa'))}, decisions "
            f"{_num(agreement.get('decision_agreement'))}, box IoU "
            f"{_num(agreement.get('box_mean_iou'))} on {agreement.get('pairs')} overlap pairs"
        )
    return lines


def _dataset(f: dict[str, Any]) -> list[str]:
    if "snapshot_sha256" not in f:
        return [f"{f['note']}; dataset version {_short(f['dataset_version'])}"]
    lines = [
        f"train: {_num(f['train_fresh'])} fresh + {_num(f['train_replay'])} replay; "
        f"eval {_num(f['eval'])}; excluded labels {_num(f['excluded'])}",
        f"snapshot {_short(f['snapshot_sha256'])} (trained dataset {_short(f['dataset_version'])})",
    ]
    if f.get("eval_sets"):
        sets = ", ".join(f"{site} {n}" for site, n in f["eval_sets"].items())
        lines.append(f"frozen eval sets: {sets}")
    return lines


def _run(f: dict[str, Any]) -> list[str]:
    dirty = {True: " (dirty tree)", False: " (clean)", None: " (dirty: unknown)"}[f["git_dirty"]]
    lines = [
        f"config {_short(f['config_sha256'])}, seed {f['seed']}, preset "
        f"{f.get('preset') or NONE}, {_num(f.get('train_seconds'), 0)} s",
        f"commit {_short(f['git_commit'])}{dirty}, lockfile {_short(f['lockfile_sha256'])}, "
        f"MLflow run {f.get('mlflow_run_id') or NONE}",
    ]
    if f.get("parent_version"):
        lines.append(
            f"parent {f['parent_version']} (onnx {_short(f.get('parent_sha256'))}, "
            f"checkpoint {_short(f.get('parent_checkpoint_sha256'))})"
        )
    else:
        lines.append("parent: none (trained from scratch)")
    return lines


def _gates(f: dict[str, Any]) -> list[str]:
    d = f["degraded_site"]
    verdict = "[green]passed[/]" if f["passed"] else "[red]failed[/]"
    lines = [
        f"{verdict} vs {f['champion_version']}; site {d['site']}: recall "
        f"{_num(d['champion_recall'])} → {_num(d['candidate_recall'])} on {d['n_defective']} "
        f"defective (McNemar p={d['p_value']:.2g}), mAP50 {_num(d['champion_map50'])} → "
        f"{_num(d['candidate_map50'])}"
    ]
    for row in f["other_sites"]:
        mark = "ok" if row["passed"] else "[red]FAIL[/]"
        if not row.get("binding", True):  # a site with its own model: for the record
            mark = f"{'ok' if row['passed'] else 'lower'}, own model: not binding"
        lines.append(
            f"  {row['site']}: Δrecall {row['delta_recall']:+.3f} "
            f"(lower {row['recall_lower_holm']:+.3f}, precision lower "
            f"{row['precision_lower_holm']:+.3f}, n={row['n_images']}) {mark}"
        )
    lat = f["latency_ms"]
    lines.append(
        f"parity max |Δ| {_num(f['parity_max_abs_diff'], 6)}; latency {lat['champion']:.2f} → "
        f"{lat['candidate']:.2f} ms"
    )
    lines += [f"[red]{escape(r)}[/]" for r in f["reasons"]]
    return lines


def _approval(f: dict[str, Any]) -> list[str]:
    lines = []
    if f.get("approved_by"):
        lines.append(
            f"approved by {f['approved_by']}"
            + (f" at {_when(f['approved_at'])}" if f.get("approved_at") else "")
            + (
                f", promoted by {f['promoted_by']} at {_when(f['promoted_at'])}"
                if f.get("promoted_by")
                else ""
            )
        )
    for r in f.get("refused", []):
        lines.append(f"[red]refused[/]: {r['by']} at {_when(r['at'])}: {escape(r['why'])}")
    return lines


def _shadow(f: dict[str, Any]) -> list[str]:
    lines = [
        f"{_when(f['since'])} → {_when(f.get('until'))}"
        + (f" ({escape(f['ended_by'])})" if f.get("ended_by") else " (still in shadow)")
    ]
    card = f.get("scorecard")
    if card:
        recall = card.get("recall") or {}
        lines.append(
            f"scorecard {card.get('verdict')} on {card.get('n_pairs')} paired labels "
            f"({card.get('n_positive')} defective): recall {_num(recall.get('champion'))} → "
            f"{_num(recall.get('candidate'))}, McNemar p={_num(card.get('mcnemar_p'))}"
        )
    return lines


def _after(f: dict[str, Any]) -> list[str]:
    lines = [
        f"promoted {_when(f['promoted_at'])}"
        + (
            f", retired {_when(f['retired_at'])} ({escape(f['retired_why'])})"
            if f.get("retired_at")
            else ""
        )
    ]
    if "recall" in f:
        lines.append(
            f"as {f['role']}: recall {_figure(f['recall'])}, precision "
            f"{_figure(f['precision'])} over {f['n_images']} labelled images"
        )
    return lines


_FORMAT = {
    "incident": _incident,
    "labels": _labels,
    "dataset": _dataset,
    "run": _run,
    "gates": _gates,
    "approval": _approval,
    "shadow": _shadow,
    "after_promotion": _after,
}


def link_lines(link: Link) -> list[str]:
    """What one link says, as rich markup lines; a missing link is "—" and why."""
    if link.missing is not None:
        lines = [f"[dim]{NONE} {escape(link.missing)}[/dim]"]
        if link.facts.get("refused"):
            lines += _approval(link.facts)
    else:
        lines = _FORMAT[link.name](link.facts)
    lines += [f"[dim]{NONE} {escape(note)}[/dim]" for note in link.notes]
    return lines


def render_explanation(explanation: Explanation) -> None:
    e = explanation
    title = (
        f"why model {e.version} (site {e.site or NONE}, by {e.author}, {_when(e.created_at)}"
        + (f", job {e.job_id[:12]}" if e.job_id else "")
        + ")"
    )
    table = Table(title=title, show_header=False, expand=True)
    table.add_column("link", style="bold", no_wrap=True)
    table.add_column("what")
    for link in e.links:
        table.add_row(_TITLES[link.name], "\n".join(link_lines(link)))
    console.print(table)


def models_why(
    version: Annotated[str, typer.Argument(help="Model version to explain.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the chain as JSON.")] = False,
    monitor_url: Annotated[
        str | None,
        typer.Option(help="Monitor URL (default: DEFECTLOOP_MONITOR_URL or the local one)."),
    ] = None,
) -> None:
    """Why did this model change? Incident, labels, dataset, run, gates, approval, shadow, after."""
    require_trainer()
    from defectloop.trainer.explain import explain_version

    url = monitor_url or os.environ.get("DEFECTLOOP_MONITOR_URL", DEFAULT_MONITOR_URL)
    explanation = explain_version(version, monitor_url=url)
    if as_json:
        console.print_json(explanation.model_dump_json())
        return
    render_explanation(explanation)


def fetch_jobs(url: str, site: str | None, *, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """``GET /v1/jobs`` of the trainer at ``url``."""
    try:
        resp = httpx.get(
            url.rstrip("/") + "/v1/jobs", params={"site": site} if site else None, timeout=timeout_s
        )
    except httpx.HTTPError as exc:
        raise TransientError(
            f"the trainer at {url} is unreachable ({type(exc).__name__})",
            hint="start the stack with `defectloop up`, or pass --url / DEFECTLOOP_TRAINER_URL",
        ) from exc
    if resp.status_code >= 400:
        raise TransientError(f"the trainer answered {resp.status_code}: {resp.text[:200]}")
    body: list[dict[str, Any]] = resp.json()
    return body


def _progress(job: dict[str, Any]) -> str:
    if job["state"] == "waiting_for_labels":
        return f"{job['fresh_labels']} labels ({job['fresh_defective']} defective)"
    if job.get("candidate_version"):
        return str(job["candidate_version"])
    return NONE


def render_jobs(jobs: list[dict[str, Any]], source: str) -> None:
    if not jobs:
        console.print(f"no retraining jobs ({source})")
        return
    table = Table(title=f"retraining jobs ({source}), oldest first")
    for column in ("job", "site", "kind", "state", "progress", "why", "opened", "updated"):
        table.add_column(column, no_wrap=column in ("job", "opened", "updated"))
    for j in jobs:
        style = _STATE_STYLE.get(j["state"], "white")
        table.add_row(
            j["job_id"][:12],
            j["site_id"],
            j["kind"],
            f"[{style}]{j['state']}[/]",
            _progress(j),
            escape(j["reason"]),
            _when(j["opened_at"]),
            _when(j["updated_at"]),
        )
    console.print(table)


def models_jobs(
    site: Annotated[str | None, typer.Option(help="Only this site's jobs.")] = None,
    url: Annotated[
        str | None,
        typer.Option(help="Trainer URL (default: DEFECTLOOP_TRAINER_URL or the local one)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The trainer's retraining jobs and their states (its API, else its database)."""
    base = url or os.environ.get("DEFECTLOOP_TRAINER_URL", DEFAULT_TRAINER_URL)
    try:
        jobs, source = fetch_jobs(base, site), f"trainer {base}"
    except TransientError:
        if url is not None:  # asked for that trainer: say it is away
            raise
        require_trainer()
        from defectloop.trainer.explain import job_views

        jobs, source = job_views(site), "trainer database; the service is not running"
    if as_json:
        console.print_json(json.dumps(jobs))
        return
    render_jobs(jobs, source)


def add_models_commands(models: typer.Typer) -> None:
    """The `why` and `jobs` commands of the `models` group."""
    models.command("why")(models_why)
    models.command("jobs")(models_jobs)
