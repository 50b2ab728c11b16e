"""`defectloop simulate`: generate factory-simulator datasets.

numpy/OpenCV are imported inside the commands so that `defectloop --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the ``simulate`` command group to the CLI."""
    sim = typer.Typer(
        name="simulate",
        help="Simulated factory: images with ground-truth defects, drift.",
        no_args_is_help=True,
    )
    sim.command("dataset")(dataset)
    sim.command("run")(run)
    app.add_typer(sim, name="simulate")


def dataset(
    site: Annotated[
        str,
        typer.Option(help="Site profile: A, B, C, or a procedural factory S01, S02, ..."),
    ] = "A",
    profile_seed: Annotated[
        int, typer.Option(help="Seed a procedural site is drawn from (A, B, C ignore it).")
    ] = 0,
    n: Annotated[int, typer.Option("--n", help="Number of images.")] = 500,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same bytes.")] = 1,
    out: Annotated[Path, typer.Option(help="Output directory (new or empty).")] = Path(
        "sim-dataset"
    ),
    drift: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KIND[:START[:SEVERITY]]",
            help="Drift from image START on (default 0), SEVERITY in (0, 1]; repeatable. "
            "Kinds: lighting, blur, camera-shift, new-defect, noise, obstruction, new-part.",
        ),
    ] = None,
    image_size: Annotated[
        int | None, typer.Option(help="Square image size in pixels (default: the site's).")
    ] = None,
    workers: Annotated[int, typer.Option(help="Rendering processes.")] = 1,
) -> None:
    """Write N simulated images of a site plus COCO annotations to OUT."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from defectloop.common.errors import InvalidInputError
    from defectloop.factory_sim import generate_dataset, get_site, parse_drift

    profile = get_site(site, profile_seed=profile_seed)
    if image_size is not None:
        profile = profile.with_size(image_size)
    drifts = [parse_drift(spec) for spec in drift or []]
    if workers < 1:
        raise InvalidInputError(f"--workers must be >= 1, got {workers}", hint="use 1 or more")

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task(f"site {profile.name}", total=n)
        summary = generate_dataset(
            profile,
            n,
            seed,
            out,
            drifts,
            progress=lambda done, _total: bar.update(task, completed=done),
            workers=workers,
        )
    classes = ", ".join(f"{k} {v}" for k, v in summary.per_class.items())
    Console().print(
        f"wrote {summary.images} images ({summary.empty_images} without defects), "
        f"{summary.annotations} boxes ({classes}) to {summary.out_dir} "
        f"in {summary.seconds:.1f} s"
    )


def _tokens(specs: list[str]) -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], str] = {}
    for spec in specs:
        key, sep, token = spec.partition("=")
        site, colon, camera = key.partition(":")
        if not sep or not colon or not token:
            raise typer.BadParameter(f"--token {spec!r}: expected SITE:CAMERA=TOKEN")
        out[(site, camera)] = token
    return out


def run(
    sites: Annotated[
        str, typer.Option(help="Comma-separated sites, e.g. A,B or S01,S02 (procedural).")
    ] = "A",
    rate: Annotated[float, typer.Option(help="Frames per second per camera.")] = 1.0,
    duration: Annotated[float, typer.Option(help="Seconds to run.")] = 60.0,
    cameras: Annotated[int, typer.Option(help="Cameras per site (cam-1, cam-2, ...).")] = 1,
    annotators: Annotated[int, typer.Option(help="Simulated annotators per site (0: none).")] = 3,
    annotation_rate: Annotated[
        float, typer.Option(help="Annotations per second per site (all annotators).")
    ] = 1.0,
    seed: Annotated[int, typer.Option(help="Random seed of the cameras.")] = 1,
    drift: Annotated[
        list[str] | None,
        typer.Option(metavar="KIND[:START[:SEVERITY]]", help="Drift for every camera; repeatable."),
    ] = None,
    ingest_url: Annotated[str, typer.Option(help="Ingest base URL.")] = "http://127.0.0.1:8081",
    token: Annotated[
        list[str] | None,
        typer.Option(
            metavar="SITE:CAMERA=TOKEN",
            help="Gateway token per camera; default: issued from the local ingest database.",
        ),
    ] = None,
    label_studio_url: Annotated[
        str | None, typer.Option(help="Label Studio URL (default: `defectloop labelstudio info`).")
    ] = None,
    label_studio_token: Annotated[str | None, typer.Option(help="Label Studio API token.")] = None,
    truth_file: Annotated[
        Path | None, typer.Option(help="Ground-truth log (default <state>/sim/truth.jsonl).")
    ] = None,
) -> None:
    """Run camera gateways (posting PNGs to ingest) and annotators (in Label Studio) together."""
    import asyncio

    from defectloop.common.errors import InvalidInputError
    from defectloop.common.paths import state_home
    from defectloop.factory_sim import parse_drift

    site_list = [s.strip() for s in sites.split(",") if s.strip()]
    if not site_list:
        raise InvalidInputError("--sites is empty", hint="e.g. --sites A,B")
    if rate <= 0 or duration <= 0 or annotation_rate <= 0 or cameras < 1:
        raise InvalidInputError(
            "--rate, --duration and --annotation-rate must be > 0, --cameras >= 1",
            hint="e.g. --rate 2 --duration 60",
        )
    drifts = tuple(parse_drift(d) for d in drift or [])
    tokens = _tokens(token or [])
    truth_path = truth_file or state_home() / "sim" / "truth.jsonl"
    asyncio.run(
        _run(
            site_list,
            rate,
            duration,
            cameras,
            annotators,
            annotation_rate,
            seed,
            drifts,
            ingest_url,
            tokens,
            label_studio_url,
            label_studio_token,
            truth_path,
        )
    )


async def _run(
    sites: list[str],
    rate: float,
    duration: float,
    n_cameras: int,
    n_annotators: int,
    annotation_rate: float,
    seed: int,
    drifts: tuple[object, ...],
    ingest_url: str,
    tokens: dict[tuple[str, str], str],
    ls_url: str | None,
    ls_token: str | None,
    truth_path: Path,
) -> None:
    import asyncio
    import time

    import httpx
    from rich.live import Live
    from rich.table import Table

    from defectloop.common.errors import ConfigError
    from defectloop.factory_sim.annotators import AnnotatorTeam, LabelStudioAPI, default_team
    from defectloop.factory_sim.cameras import (
        CameraSpec,
        CameraStats,
        TruthLog,
        gateway_token,
        run_camera,
    )

    truth = TruthLog(truth_path)
    specs = [
        CameraSpec(
            site,
            f"cam-{i + 1}",
            tokens.get((site, f"cam-{i + 1}")) or gateway_token(site, f"cam-{i + 1}"),
            seed,
            drifts,  # type: ignore[arg-type]
        )
        for site in sites
        for i in range(n_cameras)
    ]
    stats = {(s.site, s.camera): CameraStats() for s in specs}
    teams: dict[str, AnnotatorTeam] = {}
    api: LabelStudioAPI | None = None
    if n_annotators > 0:
        if ls_url is None or ls_token is None:
            from defectloop.cli import labelstudio_local

            layout = labelstudio_local.default_layout()
            if not layout.credentials_file.exists():
                raise ConfigError(
                    "no local Label Studio found", hint="run `defectloop labelstudio start`"
                )
            ls_url = ls_url or layout.url
            ls_token = ls_token or labelstudio_local.credentials(layout)["token"]
        api = LabelStudioAPI(ls_url, ls_token)
        teams = {s: AnnotatorTeam(s, api, truth, default_team(s, n_annotators)) for s in sites}

    stop = asyncio.Event()
    began = time.monotonic()

    def table() -> Table:
        t = Table(title=f"simulation: {time.monotonic() - began:.0f} / {duration:.0f} s")
        for col in ("site", "posted", "accepted", "refused", "errors", "annotated", "skipped"):
            t.add_column(col, justify="right" if col != "site" else "left")
        for site in sites:
            cams = [v for (s, _), v in stats.items() if s == site]
            team = teams.get(site)
            done = sum(a.done for a in team.members) if team else 0
            skipped = sum(a.skipped for a in team.members) if team else 0
            t.add_row(
                site,
                *(
                    str(sum(getattr(c, f) for c in cams))
                    for f in ("posted", "accepted", "rejected", "errors")
                ),
                str(done),
                str(skipped),
            )
        return t

    async with httpx.AsyncClient(timeout=30.0) as client:
        cam_tasks = [
            asyncio.create_task(
                run_camera(
                    client,
                    spec,
                    truth,
                    rate=rate,
                    duration_s=duration,
                    ingest_url=ingest_url,
                    stats=stats[(spec.site, spec.camera)],
                )
            )
            for spec in specs
        ]
        team_tasks = [
            asyncio.create_task(team.run(rate=annotation_rate, stop=stop))
            for team in teams.values()
        ]
        try:
            with Live(table(), refresh_per_second=2) as live:
                while not all(t.done() for t in cam_tasks):
                    await asyncio.wait(cam_tasks, timeout=0.5)
                    live.update(table())
                for t in cam_tasks:
                    t.result()  # surface a camera's failure
                stop.set()
                await asyncio.gather(*team_tasks)
                live.update(table())
        finally:
            stop.set()
            for task in [*cam_tasks, *team_tasks]:
                task.cancel()
            if api is not None:
                await api.aclose()
