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
    app.add_typer(sim, name="simulate")


def dataset(
    site: Annotated[str, typer.Option(help="Site profile: A, B or C.")] = "A",
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

    profile = get_site(site)
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
