"""The `defectloop` command line.

Each command group lives in its own module and exposes ``register(app)``; heavy imports (torch,
onnxruntime) happen inside the commands so that ``defectloop kafka status`` stays instant.
"""

from __future__ import annotations

import sys

import typer

from defectloop.cli import (
    bench,
    evaluation,
    gateway,
    governance_cmd,
    kafka_cmd,
    labelstudio,
    monitor_cmd,
    simulate,
    stack,
    trace_cmd,
    training,
    viewer_cmd,
)
from defectloop.cli.errors import run_cli


def build_cli() -> typer.Typer:
    app = typer.Typer(
        name="defectloop",
        help="Keep visual defect-detection models good, everywhere, over time.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    for module in (
        kafka_cmd,
        labelstudio,
        stack,
        simulate,
        training,
        governance_cmd,
        evaluation,
        gateway,
        bench,
        monitor_cmd,
        trace_cmd,
        viewer_cmd,
    ):
        module.register(app)
    return app


def main() -> None:
    sys.exit(run_cli(build_cli()))
