"""Promotion of a shadowed candidate on the monitor's paired scorecard (closed-loop R11).

While a job is in ``shadow`` the retraining loop hands it to :class:`Promoter` on every tick; the
promoter asks the monitor (``GET /v1/sites/{site}/scorecards``, at most every ``poll_s``) how the
candidate does against the champion on the same random-stratum labels:

* ``better`` (or ``non_inferior`` where the site's retrain policy sets ``promote_non_inferior``):
  under the site's promotion policy ``auto``, ``Governance.promote`` by ``policy:auto`` and the job
  is ``deployed``; under ``approval`` the job is ``awaiting_approval`` until someone other than the
  author runs ``defectloop models approve VERSION --as USER`` and ``models promote VERSION``;
* ``worse``: the shadow is retired (audited with the scorecard as evidence), the job ``rejected``;
* ``not_enough_data``, or a monitor that is down: try again later;
* no verdict within the shadow period: the shadow is retired, the job ``rejected``.

Before acting, the promoter reads who holds the site now (the registry's deployments and the
``model.deployed`` table the trainer follows): a candidate that is already the champion (promoted
by hand, or by a previous process killed before it recorded the job) closes the job as
``deployed`` without a second deployment; a shadow retired by someone else ends it ``rejected``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from defectloop.common.errors import DefectloopError, NotFoundError, TransientError
from defectloop.common.events import ModelRole
from defectloop.common.logging import get_logger
from defectloop.common.translate import httpx_errors
from defectloop.trainer.governance import Governance
from defectloop.trainer.jobs import Job, JobState, JobStore, RetrainPolicy

log = get_logger(__name__)

PROMOTING_VERDICTS = frozenset({"better"})
WORSE = "worse"


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class ScorecardClient:
    """The monitor's scorecard endpoint over HTTP; its failures come out as defectloop errors."""

    def __init__(self, base_url: str, *, timeout_s: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def card(self, site_id: str, candidate_version: str) -> dict[str, Any] | None:
        """The candidate's scorecard at ``site_id``; ``None`` while the monitor has none for it.

        Raises :class:`TransientError` when the monitor cannot be reached or answers 5xx.
        """
        url = f"{self.base_url}/v1/sites/{site_id}/scorecards"
        try:
            with httpx_errors(f"monitor {url}"):
                response = httpx.get(url, timeout=self.timeout_s)
                response.raise_for_status()
                body: dict[str, Any] = response.json()
        except NotFoundError:  # the monitor has seen nothing of the site yet
            return None
        for card in body.get("scorecards", []):
            if card.get("candidate_version") == candidate_version:
                return dict(card)
        return None


def _card_summary(card: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "verdict",
        "champion_version",
        "candidate_version",
        "n_pairs",
        "n_positive",
        "mcnemar_p",
        "correct_mcnemar_p",
        "correct_counts",
        "recall",
        "precision",
    )
    return {k: card[k] for k in keys if k in card}


class Promoter:
    """Moves jobs in ``shadow`` / ``awaiting_approval`` on; one instance per trainer process."""

    def __init__(
        self,
        store: JobStore,
        governance: Governance,
        client: ScorecardClient,
        policy_for: Callable[[str], RetrainPolicy],
        *,
        poll_s: float = 10.0,
        actor: str = "trainer",
    ) -> None:
        self.store = store
        self.governance = governance
        self.client = client
        self.policy_for = policy_for
        self.poll_s = poll_s
        self.actor = actor
        self._last_poll: dict[str, float] = {}

    async def __call__(self, job: Job) -> None:
        try:
            await asyncio.to_thread(self.step, job)
        except TransientError as exc:  # Kafka or the database away: the next tick tries again
            log.warning("promotion_deferred", job_id=job.job_id, reason=exc.reason, error=str(exc))
        except DefectloopError as exc:
            # The job keeps its state (a shadow stays a shadow) and the other sites' jobs go on;
            # ops sees why in the log, and a repaired cause lets the next tick finish it.
            log.error("promotion_failed", job_id=job.job_id, reason=exc.reason, error=str(exc))

    def step(self, job: Job) -> Job:
        """Blocking: one look at a shadowed job (a worker thread)."""
        if job.job_state not in (JobState.SHADOW, JobState.AWAITING_APPROVAL):
            return job
        version = job.candidate_version
        if version is None:  # pragma: no cover - a job reaches shadow with its candidate
            raise NotFoundError(f"job {job.job_id} is in shadow without a candidate")
        site = job.site_id
        if self._is_champion(site, version):
            return self.store.update(
                job.job_id, to=JobState.DEPLOYED, reason=f"{version} is the champion of {site}"
            )
        shadow = self._active_shadow(site, version)
        if shadow is None:
            return self.store.update(
                job.job_id,
                to=JobState.REJECTED,
                reason=f"{version} is no longer in shadow at {site} (retired by someone else)",
            )
        policy = self.policy_for(site)
        started = _aware(shadow.activated_at or shadow.requested_at)
        if (datetime.now(UTC) - started).total_seconds() > policy.shadow_period_s:
            return self._reject(
                job,
                f"no promotion verdict within the shadow period ({policy.shadow_period_s:.0f} s)",
                evidence={"shadow_since": started.isoformat()},
            )
        if job.job_state == JobState.AWAITING_APPROVAL:
            return job  # a human decides: models approve, then models promote
        now = time.monotonic()
        if now - self._last_poll.get(job.job_id, -float("inf")) < self.poll_s:
            return job
        self._last_poll[job.job_id] = now
        try:
            card = self.client.card(site, version)
        except DefectloopError as exc:  # a monitor that is down just means "try later"
            log.warning(
                "scorecard_unavailable", job_id=job.job_id, reason=exc.reason, error=str(exc)
            )
            return job
        if card is None:
            return self._note(job, None, f"{version} in shadow; the monitor has no scorecard yet")
        verdict = str(card.get("verdict"))
        summary = _card_summary(card)
        if verdict == WORSE:
            return self._reject(job, f"shadow scorecard: {version} is worse", evidence=summary)
        promoting = verdict in PROMOTING_VERDICTS or (
            verdict == "non_inferior" and policy.promote_non_inferior
        )
        if not promoting:
            return self._note(
                job,
                summary,
                f"{version} in shadow; scorecard {verdict} on {card.get('n_pairs', 0)} "
                "paired labels",
            )
        job = self._note(job, summary, f"shadow scorecard: {version} is {verdict}")
        if self.governance.policy.for_site(site) != "auto":
            return self.store.update(
                job.job_id,
                to=JobState.AWAITING_APPROVAL,
                reason=f"shadow scorecard says {verdict}; site {site} needs an approval: "
                f"defectloop models approve {version} --as USER, then models promote {version}",
            )
        self.governance.promote(
            version,
            by=self.actor,
            reason=f"shadow scorecard {verdict} on {card.get('n_pairs', 0)} paired labels "
            f"(McNemar p: recall {card.get('mcnemar_p')}, decided right "
            f"{card.get('correct_mcnemar_p')})",
        )
        log.info("candidate_promoted", job_id=job.job_id, model_version=version, verdict=verdict)
        return self.store.update(
            job.job_id, to=JobState.DEPLOYED, reason=f"promoted by policy:auto ({verdict})"
        )

    # -- helpers --------------------------------------------------------------------------

    def _is_champion(self, site: str, version: str) -> bool:
        champion = self.governance.champion(site)
        followed = self.store.champion(site)  # model.deployed, e.g. a promote recorded elsewhere
        return (champion is not None and champion.model_version == version) or (
            followed is not None and followed.model_version == version
        )

    def _active_shadow(self, site: str, version: str) -> Any:
        for row in reversed(self.governance.registry.deployments(site)):
            if (row.model_version, row.role, row.status) == (
                version,
                ModelRole.SHADOW.value,
                "active",
            ):
                return row
        return None

    def _note(self, job: Job, card: dict[str, Any] | None, reason: str) -> Job:
        detail = {**job.detail, "scorecard": card}
        if reason == job.reason and detail == job.detail:
            return job
        return self.store.update(
            job.job_id, reason=reason, detail_json=json.dumps(detail, sort_keys=True)
        )

    def _reject(self, job: Job, reason: str, *, evidence: dict[str, Any]) -> Job:
        assert job.candidate_version is not None
        self.governance.retire_shadow(
            job.candidate_version, by=self.actor, reason=reason, evidence=evidence
        )
        log.info("candidate_rejected", job_id=job.job_id, model_version=job.candidate_version)
        detail = {**job.detail, "rejection": evidence}
        return self.store.update(
            job.job_id,
            to=JobState.REJECTED,
            reason=f"{reason}; shadow retired",
            detail_json=json.dumps(detail, sort_keys=True),
        )
