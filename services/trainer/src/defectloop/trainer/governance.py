"""Model governance: gates on record, shadow, approve, promote, retire, roll back, audit.

PUBLIC trainer module: the trainer service uses it, and ``defectloop.trainer.api`` (the door the
CLI imports, lazily, inside commands) re-exports it. It must stay free of torch: it touches only
the registry, the audit log and Kafka (a test checks that importing it loads neither torch nor cv2).

Rules (brief §8, closed-loop R10-R12):

* every transition is an audit record (:mod:`defectloop.trainer.audit`) written in the same
  transaction as the registry change it describes;
* a version whose latest gate report failed is never deployed; one with no gate report is
  deployed only where there is no champion to compare it with (or the policy waives gates);
* a champion needs an approver who is not the model's author, unless the site's policy is
  ``auto`` (then ``approved_by`` says so); a refused approval is itself recorded;
* promoting retires the previous champion, which stays the rollback target: the compacted
  ``model.deployed`` key ``site/champion`` is simply replaced, so no inactive event is needed for it;
  a promoted shadow leaves its ``site/shadow`` slot (inactive event) so inference stops scoring it
  twice;
* ``model.deployed`` is published (and acknowledged) before the registry records the change: a
  crash in between leaves the event without its record, and repeating the command republishes the
  same key idempotently.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Column, Text
from sqlmodel import Field as SQLField
from sqlmodel import Session, SQLModel, col, select

from defectloop.common.errors import (
    ConflictError,
    DefectloopError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    TransientError,
)
from defectloop.common.events import ModelDeployed, ModelRole
from defectloop.common.logging import get_logger
from defectloop.trainer.audit import (
    AuditAction,
    AuditRecord,
    ChainVerdict,
    append_record,
    chain_records,
    select_records,
    verify_chain,
)
from defectloop.trainer.gates import GateReport
from defectloop.trainer.registry import Deployment, ModelVersion, Registry

__all__ = [
    "AUTO_APPROVER",
    "FIRST_MODEL_APPROVER",
    "AuditRecord",
    "ChainVerdict",
    "GateEvidence",
    "GateReport",
    "Governance",
    "PromotionPolicy",
    "deployed_event",
    "kafka_publisher",
    "open_governance",
]

log = get_logger(__name__)

PolicyName = Literal["auto", "approval"]
AUTO_APPROVER = "policy:auto"
FIRST_MODEL_APPROVER = "policy:first-model"

Publisher = Callable[[Sequence[ModelDeployed]], None]
T = TypeVar("T")


class PromotionPolicy(BaseModel):
    """Per-site promotion policy (from the trainer settings)."""

    model_config = ConfigDict(frozen=True)

    default: PolicyName = Field("approval", description="Policy of sites not listed.")
    sites: dict[str, PolicyName] = Field(default_factory=dict, description="site -> policy")
    require_gates: bool = Field(
        True, description="A version needs a passed gate report when the site has a champion."
    )

    def for_site(self, site: str) -> PolicyName:
        return self.sites.get(site, self.default)

    @classmethod
    def from_settings(cls, settings: Any) -> PromotionPolicy:
        return cls(
            default=settings.default_promotion_policy,
            sites=dict(settings.promotion_policy),
            require_gates=settings.require_gates,
        )


class GateEvidence(SQLModel, table=True):
    """A gate report stored on the candidate version (the audit record repeats it)."""

    __tablename__ = "gate_reports"

    id: int | None = SQLField(default=None, primary_key=True)
    model_version: str = SQLField(foreign_key="model_versions.version", index=True)
    champion_version: str
    site: str = SQLField(index=True)
    passed: bool
    report_json: str = SQLField(sa_column=Column(Text, nullable=False))
    recorded_by: str
    recorded_at: datetime = SQLField(default_factory=lambda: datetime.now(UTC))

    @property
    def report(self) -> GateReport:
        return GateReport.model_validate_json(self.report_json)


@contextmanager
def open_governance(bootstrap: str | None = None) -> Iterator[Governance]:
    """Governance over the default registry, with the promotion policy of the trainer settings.

    ``bootstrap`` is needed only by the transitions that publish (shadow, promote, rollback).
    """
    from defectloop.trainer.settings import TrainerSettings

    registry = Registry()
    try:
        policy = PromotionPolicy.from_settings(TrainerSettings())
        yield Governance(registry, bootstrap=bootstrap, policy=policy)
    finally:
        registry.dispose()


def kafka_publisher(bootstrap: str) -> Publisher:
    """Publish deployment events on ``bootstrap`` and wait for the broker's acknowledgement."""

    def publish(events: Sequence[ModelDeployed]) -> None:
        from defectloop.trainer.deploy import publish_deployment

        asyncio.run(publish_deployment(bootstrap, *events))

    return publish


def _now() -> datetime:
    return datetime.now(UTC)


def deployed_event(
    model: ModelVersion, site: str, role: ModelRole, *, approved_by: str | None, active: bool = True
) -> ModelDeployed:
    from pathlib import Path

    return ModelDeployed(
        site_id=site,
        role=role,
        model_name=model.name,
        model_version=model.version,
        artifact_uri=str(Path(model.bundle_path).resolve()),
        sha256=model.sha256,
        baseline_metrics={k: float(v) for k, v in model.metrics.items()},
        approved_by=approved_by,
        active=active,
    )


def _active(session: Session, site: str, role: ModelRole) -> list[Deployment]:
    query = (
        select(Deployment)
        .where(Deployment.site == site, Deployment.role == role.value)
        .where(Deployment.status == "active")
        .order_by(col(Deployment.requested_at))
    )
    return list(session.exec(query).all())


class Governance:
    """The governed transitions of model versions; every one is published, recorded and audited."""

    def __init__(
        self,
        registry: Registry,
        *,
        publish: Publisher | None = None,
        bootstrap: str | None = None,
        policy: PromotionPolicy | None = None,
    ) -> None:
        self.registry = registry
        self.policy = policy or PromotionPolicy()
        if publish is None and bootstrap is not None:
            publish = kafka_publisher(bootstrap)
        self._publish = publish
        SQLModel.metadata.create_all(
            registry.engine,
            tables=[GateEvidence.__table__],  # type: ignore[attr-defined]
        )

    # -- queries ---------------------------------------------------------------------------

    def champion(self, site: str) -> Deployment | None:
        """The site's active champion deployment, if any."""
        with self.registry.session() as s:
            rows = _active(s, site, ModelRole.CHAMPION)
        return rows[-1] if rows else None

    def rollback_target(self, site: str) -> Deployment | None:
        """The most recently retired champion that is not the current one (never a rolled-back one)."""
        current = self.champion(site)
        with self.registry.session() as s:
            query = (
                select(Deployment)
                .where(Deployment.site == site, Deployment.role == ModelRole.CHAMPION.value)
                .where(Deployment.status == "retired")
                .order_by(col(Deployment.retired_at).desc())
            )
            for row in s.exec(query):
                if current is None or row.model_version != current.model_version:
                    return row
        return None

    def latest_gate(self, version: str) -> GateEvidence | None:
        with self.registry.session() as s:
            query = (
                select(GateEvidence)
                .where(GateEvidence.model_version == version)
                .order_by(col(GateEvidence.id).desc())
            )
            return s.exec(query).first()

    def history(self, *, site: str | None = None, version: str | None = None) -> list[AuditRecord]:
        """Audit records, oldest first, of a site and/or a version (all when neither is given)."""
        with self.registry.session() as s:
            return list(select_records(s, site=site, model_version=version))

    def verify_audit(self) -> ChainVerdict:
        with self.registry.session() as s:
            return verify_chain(chain_records(s))

    # -- transitions ----------------------------------------------------------------------

    def record_gate(self, report: GateReport, *, by: str) -> GateEvidence:
        """Store the gate report on the candidate and audit ``gate_passed`` / ``gate_failed``."""
        model = self.registry.get_model(report.candidate_version)
        evidence = report.model_dump(mode="json")

        def work(s: Session) -> GateEvidence:
            row = GateEvidence(
                model_version=model.version,
                champion_version=report.champion_version,
                site=report.degraded_site,
                passed=report.passed,
                report_json=json.dumps(evidence, sort_keys=True),
                recorded_by=by,
            )
            s.add(row)
            append_record(
                s,
                action=AuditAction.GATE_PASSED if report.passed else AuditAction.GATE_FAILED,
                actor=by,
                model_version=model.version,
                site=report.degraded_site,
                reason="; ".join(report.reasons) or "all gates passed",
                evidence=evidence,
            )
            return row

        row = self._transaction(work)
        log.info(
            "gate_recorded", version=model.version, site=report.degraded_site, passed=report.passed
        )
        return row

    def approve(self, version: str, user: str, *, reason: str = "") -> Deployment:
        """Approve ``version`` as its site's next champion; refused (and recorded) for its author."""
        model = self.registry.get_model(version)
        site = self._site_of(model)
        refusal: DefectloopError | None = None
        if user == model.author:
            refusal = ForbiddenError(
                f"{user} is the author of model {version}: an approval must come from someone else",
                reason="approval_by_author",
                hint=f"ask another approver: defectloop models approve {version} --as USER",
            )
        else:
            gate = self.latest_gate(version)
            if gate is not None and not gate.passed:
                refusal = ConflictError(
                    f"model {version} failed its gates and cannot be approved: "
                    + "; ".join(gate.report.reasons),
                    reason="gate_failed",
                    hint=f"see the evidence: defectloop models history {version}",
                )

        def work(s: Session) -> Deployment | None:
            if refusal is not None:
                append_record(
                    s,
                    action=AuditAction.APPROVAL_REFUSED,
                    actor=user,
                    model_version=version,
                    site=site,
                    reason=str(refusal),
                    evidence={"author": model.author, "refusal": refusal.reason},
                )
                return None
            now = _now()
            row = Deployment(
                site=site,
                role=ModelRole.CHAMPION.value,
                model_version=version,
                status="approved",
                requested_by=user,
                approver=user,
                reason=reason or "approved for promotion",
                requested_at=now,
                approved_at=now,
            )
            s.add(row)
            append_record(
                s,
                action=AuditAction.APPROVED,
                actor=user,
                model_version=version,
                site=site,
                reason=reason,
                evidence={"author": model.author},
            )
            return row

        row = self._transaction(work)
        if refusal is not None:
            log.warning("approval_refused", version=version, user=user, why=refusal.reason)
            raise refusal
        assert row is not None  # work returns None only with a refusal
        log.info("model_approved", version=version, site=site, approver=user)
        return row

    def shadow(
        self, version: str, by: str, *, reason: str = "candidate in shadow"
    ) -> ModelDeployed:
        """Deploy ``version`` as its site's shadow (observes on 100 % of traffic, decides nothing)."""
        model = self.registry.get_model(version)
        site = self._site_of(model)
        self.check_gate(model, site)
        return self.activate(model, site, ModelRole.SHADOW, by=by, approved_by=None, reason=reason)

    def promote(self, version: str, by: str, *, reason: str = "") -> ModelDeployed:
        """Make ``version`` its site's champion: needs the site's auto policy or a prior approval."""
        model = self.registry.get_model(version)
        site = self._site_of(model)
        current = self.champion(site)
        if current is not None and current.model_version == version:
            raise ConflictError(
                f"model {version} is already the champion of site {site}",
                hint=f"see defectloop models history --site {site}",
            )
        self.check_gate(model, site)
        approved_by: str | None = None
        if self.policy.for_site(site) == "auto":
            approved_by = AUTO_APPROVER
        else:
            approval = self._approval(version)
            if approval is None:
                raise ForbiddenError(
                    f"model {version} has no approval and site {site} requires one",
                    reason="approval_required",
                    hint=f"someone other than its author ({model.author}) runs "
                    f"defectloop models approve {version} --as USER",
                )
            approved_by = approval.approver
        return self.activate(
            model,
            site,
            ModelRole.CHAMPION,
            by=by,
            approved_by=approved_by,
            reason=reason or "promoted",
        )

    def rollback(self, site: str, by: str, reason: str) -> ModelDeployed:
        """Re-deploy the previous champion of ``site``; the current one is marked rolled back."""
        if not reason.strip():
            raise InvalidInputError(
                "a rollback needs a reason", hint="pass --reason TEXT (it goes into the audit log)"
            )
        current = self.champion(site)
        target = self.rollback_target(site)
        if target is None:
            raise NotFoundError(
                f"site {site} has no previous champion to roll back to",
                hint=f"see defectloop models history --site {site}",
            )
        model = self.registry.get_model(target.model_version)
        return self.activate(
            model,
            site,
            ModelRole.CHAMPION,
            by=by,
            approved_by=by,
            reason=reason,
            rolled_back_from=current.model_version if current is not None else None,
        )

    def retire_shadow(
        self, version: str, by: str, reason: str, *, evidence: dict[str, Any] | None = None
    ) -> ModelDeployed | None:
        """Take ``version`` out of its site's shadow slot (inactive event), audited as retired.

        ``None`` when it is not the active shadow (already retired: a repeated call is a no-op).
        """
        model = self.registry.get_model(version)
        site = self._site_of(model)
        with self.registry.session() as s:
            if not [d for d in _active(s, site, ModelRole.SHADOW) if d.model_version == version]:
                return None
        event = deployed_event(model, site, ModelRole.SHADOW, approved_by=None, active=False)
        self._send([event])

        def work(s: Session) -> None:
            for row in _active(s, site, ModelRole.SHADOW):
                if row.model_version == version:
                    row.status = "retired"
                    row.retired_at = _now()
                    row.reason = reason
                    s.add(row)
            append_record(
                s,
                action=AuditAction.RETIRED,
                actor=by,
                model_version=version,
                site=site,
                reason=reason,
                evidence={
                    "role": ModelRole.SHADOW.value,
                    "event_id": event.event_id,
                    **(evidence or {}),
                },
            )

        self._transaction(work)
        log.info("shadow_retired", version=version, site=site, reason=reason)
        return event

    def activate(
        self,
        model: ModelVersion,
        site: str,
        role: ModelRole,
        *,
        by: str,
        approved_by: str | None,
        reason: str,
        rolled_back_from: str | None = None,
    ) -> ModelDeployed:
        """Publish ``model`` in ``role`` at ``site``, retire what held that role, audit it all.

        The one place a deployment becomes active: promote, rollback, shadow and
        :func:`defectloop.trainer.deploy.deploy_bundle` all end here.
        """
        if role is ModelRole.CHAMPION and approved_by is None:
            raise ForbiddenError(
                f"a champion deployment of model {model.version} needs an approver",
                reason="approval_required",
                hint=f"defectloop models approve {model.version} --as USER, then models promote",
            )
        event = deployed_event(model, site, role, approved_by=approved_by)
        events = [event]
        with self.registry.session() as s:
            leaving_shadow = [
                d for d in _active(s, site, ModelRole.SHADOW) if d.model_version == model.version
            ]
        if role is ModelRole.CHAMPION and leaving_shadow:
            events.append(
                deployed_event(model, site, ModelRole.SHADOW, approved_by=None, active=False)
            )
        self._send(events)
        gate = self.latest_gate(model.version)
        now = _now()

        def work(s: Session) -> tuple[AuditAction, list[Deployment]]:
            retired = _active(s, site, role)
            if role is ModelRole.CHAMPION:
                retired += [
                    d
                    for d in _active(s, site, ModelRole.SHADOW)
                    if d.model_version == model.version
                ]
            for old in retired:
                rolled_back = role is ModelRole.CHAMPION and old.model_version == rolled_back_from
                old.status = "rolled_back" if rolled_back else "retired"
                old.retired_at = now
                s.add(old)
            approval = self._approval(model.version, s) if role is ModelRole.CHAMPION else None
            if approval is not None and approved_by == approval.approver:
                row = approval  # the approval becomes the active deployment
            else:
                row = Deployment(
                    site=site,
                    role=role.value,
                    model_version=model.version,
                    requested_by=by,
                    approver=approved_by,
                    requested_at=now,
                    approved_at=now if approved_by is not None else None,
                )
            row.status = "active"
            row.reason = reason
            row.activated_at = now
            s.add(row)
            action = {
                ModelRole.CHAMPION: AuditAction.PROMOTED,
                ModelRole.SHADOW: AuditAction.SHADOW,
                ModelRole.CHALLENGER: AuditAction.SHADOW,
            }[role]
            if rolled_back_from is not None:
                action = AuditAction.ROLLED_BACK
            append_record(
                s,
                action=action,
                actor=by,
                model_version=model.version,
                site=site,
                reason=reason,
                evidence={
                    "role": role.value,
                    "approved_by": approved_by,
                    "author": model.author,
                    "event_id": event.event_id,
                    "sha256": model.sha256,
                    "replaces": [d.model_version for d in retired if d.role == role.value],
                    "rolled_back_from": rolled_back_from,
                    "gate_report_id": gate.id if gate is not None else None,
                    "gate_passed": gate.passed if gate is not None else None,
                },
            )
            for old in retired:
                if old.model_version == model.version and old.role == role.value:
                    continue  # re-activating the same version is not a retirement
                append_record(
                    s,
                    action=AuditAction.RETIRED,
                    actor=by,
                    model_version=old.model_version,
                    site=site,
                    reason=f"{old.role} replaced by {model.version} ({role.value})",
                    evidence={
                        "role": old.role,
                        "status": old.status,
                        "replaced_by": model.version,
                        "rollback_target": old.status == "retired" and old.role == "champion",
                    },
                )
            return action, retired

        action, retired = self._transaction(work)
        log.info(
            "model_activated",
            version=model.version,
            site=site,
            role=role.value,
            approved_by=approved_by,
            action=action.value,
            retired=[d.model_version for d in retired],
        )
        return event

    # -- helpers --------------------------------------------------------------------------

    def _transaction(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in one transaction and commit; again on a lost race for the chain's head.

        Two writers (the trainer service and a CLI) may both read the same newest audit record:
        the unique ``prev_hash`` refuses the second insert (a conflict), SQLite may refuse its
        stale snapshot (transient). Either way the whole unit re-reads the state and retries.
        """
        from tenacity import (
            Retrying,
            retry_if_exception_type,
            stop_after_attempt,
            wait_exponential_jitter,
        )

        for attempt in Retrying(
            retry=retry_if_exception_type((ConflictError, TransientError)),
            stop=stop_after_attempt(8),
            wait=wait_exponential_jitter(initial=0.02, max=1.0),
            reraise=True,
        ):
            with attempt, self.registry.session() as s:
                result = work(s)
                s.commit()
                return result
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _send(self, events: Sequence[ModelDeployed]) -> None:
        if self._publish is None:
            raise ConflictError(
                "no Kafka publisher configured for deployments",
                hint="construct Governance with bootstrap=... or publish=...",
            )
        self._publish(events)

    def _site_of(self, model: ModelVersion) -> str:
        if model.site is None:
            raise ConflictError(
                f"model {model.version} belongs to no site",
                hint="train it with --site, or deploy its bundle with defectloop models deploy",
            )
        return model.site

    def _approval(self, version: str, session: Session | None = None) -> Deployment | None:
        def find(s: Session) -> Deployment | None:
            query = (
                select(Deployment)
                .where(Deployment.model_version == version)
                .where(Deployment.role == ModelRole.CHAMPION.value)
                .where(Deployment.status == "approved")
                .order_by(col(Deployment.approved_at).desc())
            )
            return s.exec(query).first()

        if session is not None:
            return find(session)
        with self.registry.session() as s:
            return find(s)

    def check_gate(self, model: ModelVersion, site: str) -> None:
        gate = self.latest_gate(model.version)
        if gate is not None and not gate.passed:
            raise ConflictError(
                f"model {model.version} failed its gates: {'; '.join(gate.report.reasons)}",
                reason="gate_failed",
                hint=f"nothing is deployed; see defectloop models history {model.version}",
            )
        if gate is None and self.policy.require_gates and self.champion(site) is not None:
            raise ConflictError(
                f"model {model.version} has no gate report against the champion of site {site}",
                reason="gate_missing",
                hint="the trainer gates every candidate before it is deployed (an operator may "
                "waive gates with DEFECTLOOP_TRAINER_REQUIRE_GATES=false)",
            )
