"""`defectloop models approve|promote|rollback|history` and `defectloop audit verify`.

Every command goes through the trainer's public governance module (imported inside the command):
the same rules and the same audit log as the trainer service. Refusals are one line and a hint.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from defectloop.trainer.api import AuditRecord, Governance

console = Console()

AsUser = Annotated[str, typer.Option("--as", help="Who does it (goes into the audit log).")]
Bootstrap = Annotated[str | None, typer.Option(help="Kafka bootstrap (default: the local broker).")]


def _open(bootstrap: str | None = None) -> AbstractContextManager[Governance]:
    """The trainer's governance over the default registry (one line + hint without the trainer)."""
    from defectloop.cli.errors import require_trainer

    require_trainer()
    from defectloop.trainer.api import open_governance

    return open_governance(bootstrap)


def _bootstrap(value: str | None) -> str:
    from defectloop.cli import kafka_local

    return value or kafka_local.default_layout().bootstrap


def models_approve(
    version: Annotated[str, typer.Argument(help="Model version to approve.")],
    user: AsUser,
    reason: Annotated[str, typer.Option(help="Why (goes into the audit log).")] = "",
) -> None:
    """Approve a version as its site's next champion (the approver must not be its author)."""
    with _open() as gov:
        row = gov.approve(version, user, reason=reason)
    console.print(f"approved model {version} for site {row.site} by {user}")


def models_promote(
    version: Annotated[str, typer.Argument(help="Model version to promote.")],
    user: AsUser,
    reason: Annotated[str, typer.Option(help="Why (goes into the audit log).")] = "",
    bootstrap: Bootstrap = None,
) -> None:
    """Make a version its site's champion (auto policy, or after an approval by a non-author)."""
    with _open(_bootstrap(bootstrap)) as gov:
        event = gov.promote(version, user, reason=reason)
    console.print(
        f"promoted model {version} to champion of site {event.site_id} "
        f"(approved by {event.approved_by}); the previous champion is retired and kept for rollback"
    )


def models_rollback(
    site: Annotated[str, typer.Option(help="Site whose champion to roll back.")],
    user: AsUser,
    reason: Annotated[str, typer.Option(help="Why (required; goes into the audit log).")],
    bootstrap: Bootstrap = None,
) -> None:
    """Re-deploy the previous champion of a site."""
    with _open(_bootstrap(bootstrap)) as gov:
        event = gov.rollback(site, user, reason)
    console.print(f"rolled back site {site}: model {event.model_version} is champion again")


def _record_dict(record: AuditRecord) -> dict[str, object]:
    data: dict[str, object] = record.model_dump(exclude={"evidence_json"})
    data["evidence"] = record.evidence
    return data


def models_history(
    version: Annotated[str | None, typer.Argument(help="Only this model version.")] = None,
    site: Annotated[str | None, typer.Option(help="Only this site.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (with the evidence).")
    ] = False,
) -> None:
    """The audit trail of a site and/or a version, oldest first."""
    with _open() as gov:
        records = gov.history(site=site, version=version)
    if as_json:
        console.print_json(json.dumps([_record_dict(r) for r in records], default=str))
        return
    table = Table(title="model history")
    for col in ("#", "when", "action", "version", "site", "by", "why"):
        table.add_column(col, no_wrap=col in ("version", "when"))
    for r in records:
        table.add_row(
            str(r.seq),
            f"{r.at:%Y-%m-%d %H:%M:%S}",
            r.action,
            r.model_version or "-",
            r.site or "-",
            r.actor,
            r.reason,
        )
    console.print(table)


def audit_verify() -> None:
    """Recompute the audit log's hash chain; exit 1 at the first broken record."""
    from defectloop.common.errors import IntegrityMismatchError

    with _open() as gov:
        verdict = gov.verify_audit()
    if not verdict.intact:
        raise IntegrityMismatchError(
            f"audit chain broken: {verdict.problem}",
            reason="audit_chain_broken",
            hint="the trainer database was modified outside defectloop; restore it from a backup",
        )
    console.print(f"{verdict.count} records, chain intact")


def add_models_commands(models: typer.Typer) -> None:
    """The governance commands of the `models` group."""
    models.command("approve")(models_approve)
    models.command("promote")(models_promote)
    models.command("rollback")(models_rollback)
    models.command("history")(models_history)


def register(app: typer.Typer) -> None:
    """Add the `audit` group to the CLI."""
    audit = typer.Typer(help="The audit log of model transitions.", no_args_is_help=True)
    audit.command("verify")(audit_verify)
    app.add_typer(audit, name="audit")
