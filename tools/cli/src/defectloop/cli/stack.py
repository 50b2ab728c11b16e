"""`defectloop up|down|status|demo`: the whole local stack."""

from __future__ import annotations

import asyncio
import configparser
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import typer
from rich.console import Console
from rich.table import Table

from defectloop.cli import (
    kafka_acls,
    kafka_local,
    labelstudio_local,
    postgres_local,
    s3proxy_local,
    supervisor,
    zipkin_local,
)
from defectloop.cli.processes import pid_from_file
from defectloop.common.errors import ComponentError
from defectloop.common.kafka_admin import ensure_topics
from defectloop.common.kafka_auth import ENV_PASSWORD, ENV_USERNAME, ScramCredentials, logged_in_as
from defectloop.common.paths import state_home

console = Console()


DEFAULT_SITES = "A"


def stack_sites(sites: str | None = None) -> list[str]:
    """The sites the local stack serves: ``--sites``, else ``$DEFECTLOOP_SITES``, else A."""
    raw = sites or os.environ.get("DEFECTLOOP_SITES", DEFAULT_SITES)
    return [s.strip() for s in raw.split(",") if s.strip()]


def login_env(credentials: ScramCredentials | None) -> dict[str, str]:
    """The environment that makes a process log in as ``credentials`` (none: anonymous)."""
    if credentials is None:
        return {}
    return {ENV_USERNAME: credentials.username, ENV_PASSWORD: credentials.password}


def bus_logins(layout: kafka_local.KafkaLayout) -> dict[str, ScramCredentials]:
    """Each principal's login on a secured (production) broker; none on the local profile."""
    return kafka_local.credentials(layout) if layout.secured else {}


def ensure_decision_topics(layout: kafka_local.KafkaLayout, sites: list[str]) -> None:
    """``decisions.<site>`` for every site served (the router refuses to invent one)."""
    admin = bus_logins(layout).get(kafka_acls.ADMIN)
    asyncio.run(
        ensure_topics(
            layout.bootstrap, kafka_acls.site_topic_specs(sites, partitions=6), credentials=admin
        )
    )


def ensure_models(
    sites: list[str], bootstrap: str, *, login: ScramCredentials | None = None
) -> None:
    """A site with no champion gets its bootstrap model (trained once, cached) deployed
    (``login``: who publishes ``model.deployed`` on a secured broker, the trainer)."""
    from defectloop.cli.bootstrap import bootstrap_bundle, bootstrap_data
    from defectloop.cli.errors import require_trainer
    from defectloop.common.events import ModelRole

    require_trainer()
    from defectloop.trainer import api

    for site in sites:
        active = api.active_champion(site)
        if active is not None:
            console.print(f"[green]✓[/green] site {site}: model {active}")
            continue
        bundle = bootstrap_bundle(site, say=lambda msg: console.print(f"[dim]· {msg}[/dim]"))
        with logged_in_as(login):
            event = api.deploy(
                bundle,
                site=site,
                role=ModelRole.CHAMPION,
                bootstrap=bootstrap,
                reason="bootstrap model: the site had none",
                # Its simulated training images, kept so that a retrain replays them.
                training_data=[bootstrap_data(bundle)],
            )
        console.print(
            f"[green]✓[/green] site {site}: deployed bootstrap model {event.model_version}"
        )


Profile = Literal["local", "production"]
BUCKET = "defectloop"
"""The production profile's S3 bucket: images and training data under ``blobs/``, bundles
under ``blobs/bundles/<digest>/``."""


def production_env_file() -> Path:
    """Where ``up --profile production`` writes the stores' settings for later CLI calls
    (``defectloop simulate run``, ``gateway-token``): ``set -a; . <file>; set +a``."""
    return state_home() / "production.env"


def start_production_stores(
    specs: tuple[supervisor.ServiceSpec, ...], sites: list[str]
) -> dict[str, dict[str, str]]:
    """PostgreSQL (a schema per service) and S3Proxy (the bucket made), and the secured bus's
    settings in this process's environment; return each service's settings: its PostgreSQL
    URL, ``s3://`` blob URL and S3 credentials. This process gets them too (it deploys the
    bootstrap models into the trainer's registry), and they are written to
    :func:`production_env_file` (mode 0600: it holds the S3 secret)."""
    os.environ["DEFECTLOOP_KAFKA_PROFILE"] = "production"
    os.environ.setdefault("DEFECTLOOP_KAFKA_SITES", ",".join(sites))
    postgres = postgres_local.default_layout()
    with console.status("starting PostgreSQL..."):
        postgres_local.start(postgres)
    console.print(
        f"[green]✓[/green] postgresql 127.0.0.1:{postgres.port}/{postgres_local.DATABASE}"
    )
    with console.status("migrating each service's schema (Alembic)..."):
        migrate_schemas(postgres, specs)
    s3 = s3proxy_local.default_layout()
    with console.status("starting S3Proxy (first run fetches its jar)..."):
        s3proxy_local.start(s3)
    client = s3proxy_local.client(s3)
    if BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=BUCKET)
    console.print(f"[green]✓[/green] s3 {s3.endpoint}/{BUCKET}")
    shared = {**s3proxy_local.client_env(s3), "DEFECTLOOP_BLOB_URL": f"s3://{BUCKET}/blobs"}
    databases = {f"{spec.env_prefix}DATABASE_URL": postgres.url(spec.name) for spec in specs}
    everything = {**shared, **databases, "DEFECTLOOP_KAFKA_PROFILE": "production"}
    os.environ.update(everything)
    path = production_env_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text("".join(f"{k}={v}\n" for k, v in sorted(everything.items())))
    return {
        spec.name: {**shared, f"{spec.env_prefix}DATABASE_URL": postgres.url(spec.name)}
        for spec in specs
    }


def migrate_schemas(
    postgres: postgres_local.PostgresLayout, specs: tuple[supervisor.ServiceSpec, ...]
) -> None:
    """Each service's schema at its Alembic head (``migrations/alembic.ini``, a section per
    service with tables), before the services start: their ``create_all`` then finds every
    table made. Outside a checkout (no ``migrations/``) the services create their tables."""
    ini = Path(__file__).resolve().parents[5] / "migrations" / "alembic.ini"
    if not ini.is_file():
        console.print("[yellow]no migrations/ here: the services create their tables[/yellow]")
        return
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ini)
    for spec in specs:
        if not parser.has_section(spec.name):
            continue  # a service without tables (inference)
        url = postgres.url(spec.name)
        proc = subprocess.run(
            [
                *(sys.executable, "-m", "alembic", "-c", str(ini), "-n", spec.name),
                *("-x", f"url={url}", "upgrade", "head"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            tail = " / ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            raise ComponentError(
                f"migrating {spec.name}'s schema failed: {tail}",
                hint="`make setup` installs Alembic; see migrations/alembic.ini",
            )
    console.print("[green]✓[/green] schemas migrated (Alembic head)")


def stack_up(
    sites: list[str] | None = None,
    *,
    services: tuple[supervisor.ServiceSpec, ...] | None = None,
    service_env: Mapping[str, Mapping[str, str]] | None = None,
    decisions_router: bool | None = None,
    profile: Profile = "local",
) -> None:
    """Start Kafka, Label Studio and the services (``services``: other ports; ``service_env``:
    extra settings per service name, e.g. the demo's short windows), then deploy the models.

    On a secured broker (``DEFECTLOOP_KAFKA_PROFILE=production``) each service logs in as its
    own principal. ``decisions_router``: also run the decision router (default: when the
    services are on their default ports, i.e. ``defectloop up``). ``profile="production"``:
    PostgreSQL, S3 (S3Proxy) and the secured bus (docs/security.md)."""
    specs = services or supervisor.SERVICES
    site_list = sites or stack_sites()
    stores = start_production_stores(specs, site_list) if profile == "production" else {}
    layout = kafka_local.default_layout()
    with console.status("starting Kafka..."):
        kafka_local.start(layout)
    console.print(f"[green]✓[/green] kafka {layout.bootstrap}")
    logins = bus_logins(layout)
    with_router = services is None if decisions_router is None else decisions_router
    zipkin = zipkin_local.default_layout()
    with console.status("starting Zipkin (the trace UI; first run fetches its jar)..."):
        zipkin_local.start(zipkin)
    console.print(f"[green]✓[/green] zipkin {zipkin.url}")
    studio = labelstudio_local.default_layout()
    with console.status(
        "starting Label Studio (the very first start runs its migrations: ~2 min)..."
    ):
        labelstudio_local.start(studio)
    console.print(f"[green]✓[/green] label-studio {studio.url}")
    for spec in specs:
        # The broker's address travels with every service: DEFECTLOOP_KAFKA_PORT may move it.
        env = {"DEFECTLOOP_KAFKA_BOOTSTRAP": layout.bootstrap, **zipkin_local.services_env(zipkin)}
        env.update(login_env(logins.get(spec.name)))  # its own principal on a secured broker
        env.update(stores.get(spec.name, {}))  # production: its PostgreSQL schema, S3
        if spec.name == "annotation-sync":  # one Label Studio project per site, made at start
            env["DEFECTLOOP_ANNOTATION_SYNC_SITES"] = json.dumps(site_list)
            env.update(labelstudio_local.annotation_sync_env(studio, site_list))
        env.update((service_env or {}).get(spec.name, {}))
        supervisor.start_service(spec, env=env)
    for spec in specs:
        with console.status(f"waiting for {spec.name} to report healthy..."):
            supervisor.wait_healthy(spec)
        console.print(f"[green]✓[/green] {spec.name} http://127.0.0.1:{spec.port}/health")
    if with_router:
        start_decisions_router(layout, site_list, zipkin_env=zipkin_local.services_env(zipkin))
    ensure_models(site_list, layout.bootstrap, login=logins.get("trainer"))


def start_decisions_router(
    layout: kafka_local.KafkaLayout,
    sites: list[str],
    *,
    zipkin_env: Mapping[str, str] | None = None,
    home: Path | None = None,
    spec: supervisor.ServiceSpec = supervisor.DECISIONS_ROUTER,
) -> None:
    """The decision router as a supervised process, after each site's ``decisions.<site>``
    (``home``, ``spec``: another state home and port, for a test beside a running stack)."""
    ensure_decision_topics(layout, sites)
    env = {"DEFECTLOOP_KAFKA_BOOTSTRAP": layout.bootstrap, **(zipkin_env or {})}
    env.update(login_env(bus_logins(layout).get(kafka_acls.DECISIONS_ROUTER)))
    supervisor.start_service(spec, env=env, home=home)
    with console.status(f"waiting for {spec.name} to report healthy..."):
        supervisor.wait_healthy(spec, home=home)
    console.print(f"[green]✓[/green] {spec.name} http://127.0.0.1:{spec.port}/health")


def stack_down(services: tuple[supervisor.ServiceSpec, ...] | None = None) -> None:
    # The router runs with the default ports only (`defectloop up`); stopped only if it runs.
    if services is None and supervisor.stop_service(supervisor.DECISIONS_ROUTER):
        console.print(f"stopped {supervisor.DECISIONS_ROUTER.name}")
    for spec in reversed(services or supervisor.SERVICES):
        if supervisor.stop_service(spec):
            console.print(f"stopped {spec.name}")
    for pid in stop_training_runs(state_home() / "trainer-jobs" / "runs"):
        console.print(f"stopped training run {pid}")
    if labelstudio_local.stop(labelstudio_local.default_layout()):
        console.print("stopped label-studio")
    if zipkin_local.stop(zipkin_local.default_layout()):
        console.print("stopped zipkin")
    if kafka_local.stop(kafka_local.default_layout()):
        console.print("stopped kafka")
    # The production profile's stores (nothing to do on the local profile).
    if s3proxy_local.stop(s3proxy_local.default_layout()):
        console.print("stopped s3proxy")
    if postgres_local.stop(postgres_local.default_layout()):
        console.print("stopped postgresql")


def stop_training_runs(root: Path) -> list[int]:
    """SIGTERM the trainer's training runs still alive under ``root`` (``<run>/pid``).

    A run lives in its own session so that it outlives a killed trainer (the restarted trainer
    resumes it); stopping the stack must stop it too, or it keeps writing into a state directory
    that the next ``defectloop demo`` wipes.
    """
    stopped = []
    for pid_file in sorted(root.glob("*/*/pid")):
        try:
            pid = int(json.loads(pid_file.read_text())["pid"])
            os.killpg(pid, signal.SIGTERM)
        except (OSError, ValueError, KeyError):
            continue  # already gone, or not a run's pid file
        stopped.append(pid)
    return stopped


def status_table() -> tuple[Table, bool]:
    table = Table(title=f"defectloop stack ({state_home()})")
    for col in ("component", "pid", "address", "health"):
        table.add_column(col)
    layout = kafka_local.default_layout()
    kafka_up = kafka_local.is_running(layout)
    all_up = kafka_up
    table.add_row(
        "kafka",
        str(kafka_local.read_pid(layout) or "-"),
        layout.bootstrap,
        "up" if kafka_up else "down",
    )
    zipkin = zipkin_local.default_layout()
    zipkin_up = zipkin_local.is_running(zipkin)
    all_up = all_up and zipkin_up
    table.add_row(
        "zipkin",
        str(zipkin_local.read_pid(zipkin) or "-"),
        zipkin.url,
        "up" if zipkin_up else "down",
    )
    studio = labelstudio_local.default_layout()
    studio_up = labelstudio_local.is_running(studio)
    all_up = all_up and studio_up
    table.add_row(
        "label-studio",
        str(labelstudio_local.read_pid(studio) or "-"),
        studio.url,
        "up" if studio_up else "down",
    )
    # The production profile's stores: shown, not required (the local profile has none).
    postgres = postgres_local.default_layout()
    table.add_row(
        "postgresql",
        str(postgres_local.read_pid(postgres) or "-"),
        f"127.0.0.1:{postgres.port}",
        "up" if postgres_local.is_running(postgres) else "down",
    )
    s3 = s3proxy_local.default_layout()
    table.add_row(
        "s3proxy",
        str(pid_from_file(s3.pid_file) or "-"),
        s3.endpoint,
        "up" if s3proxy_local.is_running(s3) else "down",
    )
    for spec in (*supervisor.SERVICES, supervisor.DECISIONS_ROUTER):
        body = supervisor.health(spec)
        # The router is shown, not required: a stack started by the demo runs without it.
        if spec is not supervisor.DECISIONS_ROUTER:
            all_up = all_up and body is not None
        table.add_row(
            spec.name,
            str(supervisor.service_pid(spec) or "-"),
            f"http://127.0.0.1:{spec.port}",
            "healthy" if body else "down",
        )
    return table, all_up


def register(app: typer.Typer) -> None:
    @app.command("up")
    def up(
        sites: str | None = typer.Option(
            None, help="Sites to serve (default: $DEFECTLOOP_SITES or A)."
        ),
        profile: str = typer.Option(
            "local",
            help="local: SQLite files, blobs on disk, an open bus; production: PostgreSQL, "
            "S3 (S3Proxy) and Kafka with SASL/SCRAM + ACLs (README: production profile).",
        ),
    ) -> None:
        """Start Kafka, Label Studio and the five services in the background; deploy models."""
        if profile not in ("local", "production"):
            raise typer.BadParameter(f"unknown profile {profile!r}: use local or production")
        stack_up(stack_sites(sites), profile="production" if profile == "production" else "local")

    @app.command("down")
    def down() -> None:
        """Stop the services and Kafka by their process ids."""
        stack_down()

    @app.command("status")
    def status() -> None:
        """Show each component; exit 1 if any is down."""
        table, all_up = status_table()
        console.print(table)
        if not all_up:
            raise typer.Exit(1)

    @app.command("demo")
    def demo(
        quick: bool = typer.Option(
            False, "--quick", help="The short scenario (about 10 minutes with cached models)."
        ),
        drift: list[str] | None = typer.Option(
            None,
            metavar="SITE[/CAMERA]:KIND[:START[:SEV]]",
            help="Drift to inject, START in seconds after the baseline (repeatable; default: "
            "B:lighting::1.0, B:new-defect::0.5, C/cam-2:blur::0.8).",
        ),
        report: Path | None = typer.Option(
            None, help="Write the report here (JSON; the Markdown goes next to it)."
        ),
        keep: bool = typer.Option(False, help="Leave the stack running at the end."),
    ) -> None:
        """The closed loop: three sites drift, the stack detects, retrains, shadows, promotes."""
        from defectloop.cli import demo_driver

        config = demo_driver.scenario(quick=quick, drift=drift)  # bad --drift: fails here
        demo_driver.run_demo(config, report=report, keep=keep)
