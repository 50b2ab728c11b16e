"""`defectloop bench pipeline` (raw versus Kafka-pipeline throughput and latency) and `bench e2e`
(the whole path, camera POST to decision, against the naive baseline)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from defectloop.common.errors import InvalidInputError

console = Console()
C = TypeVar("C")

# Options both benchmarks take.
Report = Annotated[Path, typer.Option(help="Write the JSON report here.")]
Bundle = Annotated[
    Path | None,
    typer.Option(help="Model bundle (default: the bootstrap model of site A, trained if missing)."),
]
Bootstrap = Annotated[
    str | None,
    typer.Option(help="Use this Kafka instead of an isolated broker started for the run."),
]
Workdir = Annotated[Path | None, typer.Option(help="Keep blobs, broker and logs here.")]


def register(app: typer.Typer) -> None:
    bench = typer.Typer(help="Benchmarks (results as JSON; see docs/benchmarks.md).")

    @bench.command("pipeline")
    def pipeline(
        report: Report,
        bundle: Bundle = None,
        duration: float = typer.Option(60.0, min=10.0, help="Approximate total seconds."),
        max_batch: int = typer.Option(16, min=1, help="Micro-batch size (raw and service)."),
        max_wait_ms: int = typer.Option(10, min=0, help="Service: max wait for a batch."),
        decode_workers: int = typer.Option(1, min=1, help="PNG decode threads (raw and service)."),
        intra_op_threads: int = typer.Option(1, min=1, help="ONNX Runtime intra-op threads."),
        providers: str = typer.Option("cpu", help="auto|cpu|cuda|tensorrt"),
        image_size: int = typer.Option(512, min=64, help="Side of the square test images."),
        bootstrap: Bootstrap = None,
        workdir: Workdir = None,
    ) -> None:
        """Measure raw images/s, pipeline images/s, efficiency, p50/p99 at 50%/90% load."""
        from defectloop.cli import pipeline_bench

        config = partial(
            pipeline_bench.BenchConfig,
            duration_s=duration,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            decode_workers=decode_workers,
            intra_op_threads=intra_op_threads,
            providers=providers,
            image_size=image_size,
            bootstrap=bootstrap,
        )
        _measure(config, pipeline_bench.run, pipeline_bench.markdown, bundle, workdir, report)

    @bench.command("e2e")
    def e2e(
        report: Report,
        bundle: Bundle = None,
        rate: float = typer.Option(4.0, min=0.1, help="Frames per second offered (open loop)."),
        seconds: float = typer.Option(20.0, min=2.0, help="Seconds of offered load."),
        image_size: int = typer.Option(512, min=64, help="Side of the square gray8 frames."),
        clients: int = typer.Option(8, min=1, help="Concurrent HTTP connections (gateways)."),
        sites: int = typer.Option(
            1, min=1, max=999, help="Sites, a model each (>1: procedural factories S01...)."
        ),
        bootstrap: Bootstrap = None,
        workdir: Workdir = None,
    ) -> None:
        """Whole path: POST -> prediction.made latency, CPU and RSS per service; naive baseline."""
        from defectloop.cli import e2e_bench

        config = partial(
            e2e_bench.E2EConfig,
            rate=rate,
            seconds=seconds,
            image_size=image_size,
            clients=clients,
            sites=sites,
            bootstrap=bootstrap,
        )
        _measure(config, e2e_bench.run, e2e_bench.markdown, bundle, workdir, report)

    from defectloop.cli import faults

    faults.register(bench)  # `bench faults`: the stack under a fault schedule (issue 12)
    app.add_typer(bench, name="bench")


def _measure(
    config: Callable[[Path], C],
    run: Callable[[C, Callable[[str], None], Path | None], dict[str, Any]],
    markdown: Callable[[dict[str, Any]], str],
    bundle: Path | None,
    workdir: Path | None,
    report: Path,
) -> None:
    """Run the benchmark ``config(bundle)`` (the bootstrap model without ``bundle``) with a
    status line, write its JSON report and print its table."""
    from defectloop.cli.pipeline_bench import write_report

    cfg = config(_bundle_or_bootstrap(bundle))
    with console.status("benchmarking...") as status:
        result = run(cfg, lambda msg: status.update(msg), workdir)
    write_report(result, report)
    console.print(markdown(result))
    console.print(f"report: {report}")


def _bundle_or_bootstrap(bundle: Path | None) -> Path:
    """``bundle``, or site A's bootstrap model; refused with a hint if it holds no model."""
    if bundle is None:
        from defectloop.cli.bootstrap import bootstrap_bundle

        bundle = bootstrap_bundle("A", say=console.print)
    if not (bundle / "model.onnx").is_file():
        raise InvalidInputError(
            f"no model bundle at {bundle}",
            hint="pass --bundle DIR (a directory with model.onnx)",
        )
    return bundle
