"""The closed-loop demo's measurements and report (JSON + Markdown next to it).

Recall here is the **simulator's truth**: each site's model serving as champion at that moment,
run through ``defectloop eval``'s code path (:func:`defectloop.vision.evaluate.evaluate_bundle`)
on a large simulated held-out set of the site's conditions, independent of the sampled labels.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from defectloop.common.logging import get_logger

if TYPE_CHECKING:
    from defectloop.cli.closed_loop import DemoConfig, SiteTrack

log = get_logger(__name__)

HELDOUT_SEED = 770_000  # far from the cameras' seeds: held-out frames never reach the stack


def champion(site: str) -> str | None:
    """The version serving ``site`` as champion now (the trainer's registry, read-only)."""
    from defectloop.trainer import api

    return api.active_champion(site)


class HeldOut:
    """Simulated held-out sets per (site, conditions), rendered once, and recall measured on
    them per (model version, site, conditions), each measured once."""

    def __init__(self, root: Path, config: DemoConfig) -> None:
        self.root = root
        self.config = config
        self._lock = threading.Lock()
        self._results: dict[tuple[str, str, bool], dict[str, Any]] = {}

    def _conditions(self, track: SiteTrack, drifted: bool) -> list[Any]:
        from defectloop.factory_sim import Drift

        if not drifted:
            return []
        # A camera's drift: that camera's conditions (the other cameras keep the normal ones).
        return [Drift(d.kind, 0, d.severity) for d in track.drifts]

    def _dataset(self, track: SiteTrack, drifted: bool) -> Path:
        from defectloop.factory_sim import generate_dataset

        drifts = self._conditions(track, drifted)
        tag = "-".join(f"{d.kind}{d.severity:g}" for d in drifts) or "normal"
        out = self.root / f"{track.site}-{tag}-{self.config.heldout_images}"
        with self._lock:
            if not (out / "annotations.json").is_file():
                seed = HELDOUT_SEED + int(hashlib.sha256(track.site.encode()).hexdigest()[:4], 16)
                generate_dataset(track.site, self.config.heldout_images, seed, out, drifts)
        return out

    def prepare(self, tracks: list[SiteTrack]) -> None:
        for track in tracks:
            self._dataset(track, drifted=False)
            if track.drifts:
                self._dataset(track, drifted=True)

    def recall(
        self, version: str | None, track: SiteTrack, *, drifted: bool
    ) -> dict[str, Any] | None:
        """Recall, precision and mAP50 of ``version`` on the site's held-out set."""
        if version is None:
            return None
        key = (version, track.site, drifted)
        if key not in self._results:
            from defectloop.trainer import api
            from defectloop.vision.evaluate import evaluate_bundle

            bundle = Path(api.get_model(version).model.bundle_path)
            data = self._dataset(track, drifted)
            result = evaluate_bundle(bundle, data, batch_size=16, providers="cpu")
            self._results[key] = {
                "model_version": version,
                "conditions": "drifted" if drifted and track.drifts else "normal",
                "n_images": result.n_images,
                "recall": round(result.recall, 4),
                "precision": round(result.precision, 4),
                "map50": round(result.map50, 4),
            }
            log.info("demo_truth_recall", site_id=track.site, **self._results[key])
        return self._results[key]


def _seconds(later: float | None, earlier: float | None) -> float | None:
    if later is None or earlier is None:
        return None
    return round(later - earlier, 1)


def _models(site: str, monitor_url: str) -> list[dict[str, Any]]:
    """Each version registered for the site: role, lineage and gate evidence (`models why`)."""
    from defectloop.trainer import api
    from defectloop.trainer.explain import explain_version

    roles: dict[str, str] = {}
    with api.open_governance() as gov:
        for dep in gov.registry.deployments(site):
            roles[dep.model_version] = (
                dep.role if dep.status == "active" else f"{dep.role} ({dep.status})"
            )
    out: list[dict[str, Any]] = []
    for model in reversed(api.list_models(site)):
        chain = explain_version(model.version, monitor_url=monitor_url)
        run = chain.link("run")
        gates = chain.link("gates")
        out.append(
            {
                "version": model.version,
                "role": roles.get(model.version, "registered"),
                "parent": model.parent_version,
                "author": model.author,
                "lineage": run.facts or {"missing": run.missing},
                "gate_evidence": gates.facts or {"missing": gates.missing},
            }
        )
    return out


def build_report(
    config: DemoConfig, tracks: list[SiteTrack], began: float, ended: float, monitor_url: str
) -> dict[str, Any]:
    sites: dict[str, Any] = {}
    for t in tracks:
        truth_before = t.truth.get("before")
        truth_after = t.truth.get("after")
        truth_end = t.truth.get("end")
        drift = [d.to_dict() for d in t.drifts]
        sites[t.site] = {
            "drift": (drift[0] if len(drift) == 1 else drift) if drift else None,
            "drift_at": None if t.drift_at is None else _iso(t.drift_at),
            "events": t.events,
            "retrained": t.retrained,
            "models": _models(t.site, monitor_url),
            "champion_at_start": t.champion_at_start,
            "champion_at_end": t.champion,
            "recall_before_drift": truth_before["recall"] if truth_before else None,
            "recall_after_drift": truth_after["recall"] if truth_after else None,
            "recall_at_end": truth_end["recall"] if truth_end else None,
            # A drift can flood a line with false alarms instead of missing defects: precision
            # is where such a site's damage and recovery show.
            "precision_before_drift": truth_before["precision"] if truth_before else None,
            "precision_after_drift": truth_after["precision"] if truth_after else None,
            "precision_at_end": truth_end["precision"] if truth_end else None,
            "truth": t.truth,
            "time_to_detect_s": _seconds(t.detected_at, t.drift_at),
            "time_to_recover_s": _seconds(t.recovered_at, t.drift_at) if t.retrained else None,
        }
    return {
        "scenario": config.name,
        "started_at": _iso(began),
        "duration_s": round(ended - began, 1),
        "config": {
            "sites": list(config.sites),
            "cameras_per_site": config.cameras,
            "camera_rate_fps": config.camera_rate,
            "annotation_rate_per_site": config.annotation_rate,
            "baseline_s": config.baseline_s,
            "heldout_images": config.heldout_images,
            "min_fresh_labels": config.min_fresh_labels,
            "min_fresh_defective": config.min_fresh_defective,
            "train_preset": config.train_preset,
            "drifts": [d.spec for d in config.drifts],
        },
        "sites": sites,
    }


def _iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat()


def _fmt(value: Any, suffix: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.2f}{suffix}" if suffix else f"{value:.3f}"
    return f"{value}{suffix}"


def markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [
        f"# defectloop demo ({report['scenario']}): {report['started_at']}, "
        f"{report['duration_s']:.0f} s",
        "",
        f"Drifts: {', '.join(cfg['drifts']) or 'none'}; baseline {cfg['baseline_s']:.0f} s; "
        f"truth recall on {cfg['heldout_images']} simulated held-out images per condition.",
        "",
        "| site | drift | detected after | first incident | retrained | recovered after "
        "| recall before drift | right after | at end "
        "| precision before drift | right after | at end | champion at end |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for site, s in report["sites"].items():
        drifts = s["drift"] if isinstance(s["drift"], list) else [s["drift"]] if s["drift"] else []
        drift = ", ".join(
            f"{d['kind']} {d['severity']:g}" + (f" ({d['camera']})" if d.get("camera") else "")
            for d in drifts
        )
        first = next((e for e in s["events"] if e["kind"] == "metric.degraded"), None)
        first_txt = (
            f"{first['degradation']}"
            + (f" ({first['camera_id']})" if first.get("camera_id") else "")
            if first
            else "—"
        )
        lines.append(
            f"| {site} | {drift or '—'} | {_fmt(s['time_to_detect_s'], ' s')} | {first_txt} "
            f"| {'yes' if s['retrained'] else 'no'} | {_fmt(s['time_to_recover_s'], ' s')} "
            f"| {_fmt(s['recall_before_drift'])} | {_fmt(s['recall_after_drift'])} "
            f"| {_fmt(s['recall_at_end'])} | {_fmt(s.get('precision_before_drift'))} "
            f"| {_fmt(s.get('precision_after_drift'))} | {_fmt(s.get('precision_at_end'))} "
            f"| {s['champion_at_end'] or '—'} |"
        )
    lines += ["", "## Events", ""]
    for site, s in report["sites"].items():
        lines.append(f"**Site {site}**")
        lines.append("")
        for e in s["events"]:
            extra = ", ".join(
                f"{k}={v}"
                for k, v in e.items()
                if k not in ("kind", "at") and v is not None and k != "incident_id"
            )
            lines.append(f"- {e['at'][11:19]} `{e['kind']}` {extra}")
        if not s["events"]:
            lines.append("- (none)")
        lines.append("")
    lines += ["## Models", ""]
    lines.append("| site | version | role | parent | gates |")
    lines.append("|---|---|---|---|---|")
    for site, s in report["sites"].items():
        for m in s["models"]:
            gates = m["gate_evidence"]
            verdict = gates.get("passed", gates.get("verdict", gates.get("missing", "")))
            lines.append(
                f"| {site} | {m['version']} | {m['role']} | {m['parent'] or '—'} | {verdict} |"
            )
    return "\n".join(lines) + "\n"


def write_report(path: Path, report: dict[str, Any]) -> Path:
    """Write ``path`` (JSON) and the Markdown next to it; return the Markdown's path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md = path.with_suffix(".md")
    md.write_text(markdown(report))
    return md
