"""Governance: approvals, gates on record, promotion, retirement, rollback, the audit trail.

The refusals are checked on SQLite with a publisher that records what it was asked to send
(nothing must be); the publish paths run on the real broker (``kafka_bootstrap``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from defectloop.common import topics
from defectloop.common.errors import ConflictError, ForbiddenError, NotFoundError
from defectloop.common.events import ModelDeployed, ModelRole
from defectloop.testing.kafka import read_to_end
from defectloop.trainer.gates import GateConfig, GateReport, Latency, SiteEval, evaluate_gates
from defectloop.trainer.governance import AUTO_APPROVER, Governance, PromotionPolicy
from defectloop.trainer.registry import DatasetVersion, Deployment, ModelVersion, Registry


class Sent:
    """The publisher's side of the refusals: it must never be called."""

    def __init__(self) -> None:
        self.events: list[ModelDeployed] = []

    def __call__(self, events: Sequence[ModelDeployed]) -> None:
        self.events.extend(events)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    reg = Registry(f"sqlite:///{tmp_path / 'trainer.db'}")
    reg.upsert_dataset(
        DatasetVersion(version="d" * 64, num_images=1, num_train=1, num_val=0, manifest_json="{}")
    )
    return reg


def _model(reg: Registry, version: str, site: str, author: str, tmp_path: Path) -> ModelVersion:
    bundle = tmp_path / "bundles" / version
    bundle.mkdir(parents=True)
    return reg.add_model(
        ModelVersion(
            version=version,
            name="det",
            dataset_version="d" * 64,
            site=site,
            git_commit="abc",
            lockfile_sha256="l" * 64,
            config_sha256="c" * 64,
            seed=0,
            sha256=f"{abs(hash(version)):064x}"[-64:],
            bundle_path=str(bundle),
            metrics_json=json.dumps({"val_map50": 0.9}),
            author=author,
        )
    )


def _gate(candidate: str, champion: str, site: str, *, passed: bool) -> GateReport:
    rng = np.random.default_rng(0)
    truth = (rng.random(200) < 0.4).tolist()
    champ = [t and i % 2 == 0 for i, t in enumerate(truth)]  # finds half the defects
    cand = list(truth) if passed else list(champ)
    return evaluate_gates(
        candidate_version=candidate,
        champion_version=champion,
        degraded=SiteEval(
            site=site,
            truth=truth,
            champion=champ,
            candidate=cand,
            champion_map50=0.5,
            candidate_map50=0.9 if passed else 0.5,
        ),
        others=[],
        parity={"heatmap": 1e-6},
        latency=Latency(champion_ms=5.0, candidate_ms=5.0),
        config=GateConfig(n_resamples=200),
    )


def _actions(gov: Governance, **kw: str) -> list[tuple[str, str | None]]:
    return [(r.action, r.model_version) for r in gov.history(**kw)]


@pytest.mark.unit
def test_the_author_cannot_approve_and_the_refusal_is_recorded(
    registry: Registry, tmp_path: Path
) -> None:
    _model(registry, "v2", "B", "alice", tmp_path)
    sent = Sent()
    gov = Governance(registry, publish=sent)
    with pytest.raises(ForbiddenError, match="alice is the author of model v2") as info:
        gov.approve("v2", "alice")
    assert info.value.reason == "approval_by_author"
    assert info.value.hint is not None
    assert _actions(gov, version="v2") == [("registered", "v2"), ("approval_refused", "v2")]
    assert registry.deployments("B") == []
    assert sent.events == []


@pytest.mark.unit
def test_promotion_needs_an_approval_where_the_policy_says_so(
    registry: Registry, tmp_path: Path
) -> None:
    _model(registry, "v1", "B", "alice", tmp_path)
    sent = Sent()
    gov = Governance(registry, publish=sent, policy=PromotionPolicy(sites={"A": "auto"}))
    with pytest.raises(ForbiddenError, match="has no approval and site B requires one"):
        gov.promote("v1", "alice")
    assert sent.events == []
    gov.approve("v1", "bob")
    event = gov.promote("v1", "alice")
    assert (event.role, event.model_version, event.approved_by) == (ModelRole.CHAMPION, "v1", "bob")
    [deployment] = registry.deployments("B")
    assert (deployment.status, deployment.approver, deployment.requested_by) == (
        "active",
        "bob",
        "bob",
    )


@pytest.mark.unit
def test_a_failed_gate_deploys_nothing_and_records_why(registry: Registry, tmp_path: Path) -> None:
    _model(registry, "v1", "B", "alice", tmp_path)
    _model(registry, "v2", "B", "alice", tmp_path)
    sent = Sent()
    gov = Governance(registry, publish=sent, policy=PromotionPolicy(default="auto"))
    gov.promote("v1", "ops")
    sent.events.clear()

    report = _gate("v2", "v1", "B", passed=False)
    assert not report.passed
    gov.record_gate(report, by="trainer")
    with pytest.raises(ConflictError, match="failed its gates: site B: not better"):
        gov.shadow("v2", "trainer")
    with pytest.raises(ConflictError, match="failed its gates: site B: not better"):
        gov.promote("v2", "trainer")
    with pytest.raises(ConflictError, match="cannot be approved"):
        gov.approve("v2", "bob")
    assert sent.events == []
    assert [d.model_version for d in registry.deployments("B")] == ["v1"]
    failed = next(r for r in gov.history(version="v2") if r.action == "gate_failed")
    assert failed.evidence["improvement"]["p_value"] == report.improvement.p_value
    assert failed.evidence["passed"] is False
    assert "not better" in failed.reason
    stored = gov.latest_gate("v2")
    assert stored is not None
    assert stored.report == report
    assert _actions(gov, version="v2")[-1] == ("approval_refused", "v2")


@pytest.mark.unit
def test_a_candidate_without_gates_is_not_deployed_over_a_champion(
    registry: Registry, tmp_path: Path
) -> None:
    _model(registry, "v1", "B", "alice", tmp_path)
    _model(registry, "v2", "B", "alice", tmp_path)
    sent = Sent()
    gov = Governance(registry, publish=sent, policy=PromotionPolicy(default="auto"))
    gov.promote("v1", "ops")  # the first model has nothing to be compared with
    with pytest.raises(ConflictError, match="no gate report against the champion of site B"):
        gov.shadow("v2", "trainer")
    assert [e.model_version for e in sent.events] == ["v1"]


@pytest.mark.unit
def test_rollback_needs_a_previous_champion(registry: Registry, tmp_path: Path) -> None:
    _model(registry, "v1", "B", "alice", tmp_path)
    gov = Governance(registry, publish=Sent(), policy=PromotionPolicy(default="auto"))
    gov.promote("v1", "ops")
    with pytest.raises(NotFoundError, match="no previous champion"):
        gov.rollback("B", "ops", "bad recall")


@pytest.mark.integration
def test_shadow_approve_promote_rollback_on_the_broker(
    registry: Registry, tmp_path: Path, kafka_bootstrap: str
) -> None:
    site = f"gov-{uuid.uuid4().hex[:8]}"
    _model(registry, "v1", site, "alice", tmp_path)
    _model(registry, "v2", site, "alice", tmp_path)
    gov = Governance(
        registry, bootstrap=kafka_bootstrap, policy=PromotionPolicy(default="approval")
    )
    auto = Governance(registry, bootstrap=kafka_bootstrap, policy=PromotionPolicy(default="auto"))

    first = auto.promote("v1", "ops")
    assert first.approved_by == AUTO_APPROVER
    gov.record_gate(_gate("v2", "v1", site, passed=True), by="trainer")
    gov.shadow("v2", "trainer")
    with pytest.raises(ForbiddenError):
        gov.approve("v2", "alice")
    gov.approve("v2", "bob")
    promoted = gov.promote("v2", "carol", reason="shadow scorecard better")
    rolled = gov.rollback(site, "carol", "recall fell after promotion")

    events = asyncio.run(
        read_to_end(
            kafka_bootstrap,
            topics.MODEL_DEPLOYED,
            model=ModelDeployed,
            where=lambda e: e.site_id == site,
        )
    )
    by_key: dict[str, list[tuple[str, bool, str | None]]] = {}
    for e in events:
        by_key.setdefault(e.role.value, []).append((e.model_version, e.active, e.approved_by))
    assert by_key == {
        "champion": [("v1", True, AUTO_APPROVER), ("v2", True, "bob"), ("v1", True, "carol")],
        "shadow": [("v2", True, None), ("v2", False, None)],
    }
    assert (promoted.approved_by, rolled.model_version) == ("bob", "v1")

    status = [(d.role, d.model_version, d.status) for d in registry.deployments(site)]
    assert sorted(status) == sorted(
        [
            ("champion", "v1", "retired"),
            ("shadow", "v2", "retired"),
            ("champion", "v2", "rolled_back"),
            ("champion", "v1", "active"),
        ]
    )
    current = gov.champion(site)
    assert current is not None
    assert current.model_version == "v1"
    assert gov.rollback_target(site) is None  # a rolled-back version is never a target again
    assert _actions(gov, site=site) == [
        ("registered", "v1"),
        ("registered", "v2"),
        ("promoted", "v1"),
        ("gate_passed", "v2"),
        ("shadow", "v2"),
        ("approval_refused", "v2"),
        ("approved", "v2"),
        ("promoted", "v2"),
        ("retired", "v1"),
        ("retired", "v2"),
        ("rolled_back", "v1"),
        ("retired", "v2"),
    ]
    promoted_record = [r for r in gov.history(site=site) if r.action == "promoted"][-1]
    assert promoted_record.evidence["approved_by"] == "bob"
    assert promoted_record.evidence["author"] == "alice"
    assert promoted_record.evidence["replaces"] == ["v1"]
    assert promoted_record.evidence["gate_passed"] is True
    assert gov.verify_audit().intact


@pytest.mark.unit
def test_deployment_rows_keep_the_previous_champion_as_rollback_target(
    registry: Registry, tmp_path: Path
) -> None:
    _model(registry, "v1", "B", "alice", tmp_path)
    _model(registry, "v2", "B", "alice", tmp_path)
    gov = Governance(registry, publish=Sent(), policy=PromotionPolicy(default="auto"))
    gov.promote("v1", "ops")
    gov.record_gate(_gate("v2", "v1", "B", passed=True), by="trainer")
    gov.promote("v2", "ops")
    target = gov.rollback_target("B")
    assert isinstance(target, Deployment)
    assert (target.model_version, target.status) == ("v1", "retired")
    assert target.retired_at is not None


# -- the CLI (`defectloop models approve|promote|rollback|history`, `audit verify`) ------------


def _cli(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    cli_app = pytest.importorskip("defectloop.cli.app")
    from defectloop.cli.errors import run_cli

    monkeypatch.setattr("sys.argv", ["defectloop", *argv])
    return run_cli(cli_app.build_cli())


@pytest.fixture
def home_registry(tmp_path: Path) -> Registry:
    """The registry the CLI opens (``$DEFECTLOOP_HOME`` is the test's, see conftest)."""
    reg = Registry()
    reg.upsert_dataset(
        DatasetVersion(version="d" * 64, num_images=1, num_train=1, num_val=0, manifest_json="{}")
    )
    return reg


@pytest.mark.unit
def test_cli_refuses_an_approval_by_the_author_in_one_line(
    home_registry: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _model(home_registry, "v7", "B", "alice", tmp_path)
    assert _cli(["models", "approve", "v7", "--as", "alice"], monkeypatch) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == (
        "error: alice is the author of model v7: an approval must come from someone else"
    )
    assert "hint: ask another approver" in err
    assert "Traceback" not in err
    assert _cli(["models", "history", "v7", "--json"], monkeypatch) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["action"] for r in records] == ["registered", "approval_refused"]
    assert records[1]["actor"] == "alice"


@pytest.mark.unit
def test_cli_audit_verify_reports_the_first_broken_record(
    home_registry: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for version in ("v1", "v2", "v3"):
        _model(home_registry, version, "B", "alice", tmp_path)
    assert _cli(["models", "approve", "v2", "--as", "bob"], monkeypatch) == 0
    assert _cli(["audit", "verify"], monkeypatch) == 0
    assert capsys.readouterr().out.strip().endswith("4 records, chain intact")

    with home_registry.engine.begin() as conn:  # someone edits the database file directly
        conn.exec_driver_sql("DROP TRIGGER audit_records_no_update")
        conn.exec_driver_sql("UPDATE audit_records SET actor = 'mallory' WHERE action = 'approved'")
    [approved] = [r for r in Governance(home_registry).history() if r.action == "approved"]
    assert _cli(["audit", "verify"], monkeypatch) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == (
        f"error: audit chain broken: record {approved.seq} (approved) does not match its hash "
        "(its content was changed)"
    )
    assert "Traceback" not in err


@pytest.mark.integration
def test_cli_approve_promote_rollback_on_the_broker(
    home_registry: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    kafka_bootstrap: str,
) -> None:
    site = f"cli-{uuid.uuid4().hex[:8]}"
    _model(home_registry, "c1", site, "alice", tmp_path)
    _model(home_registry, "c2", site, "alice", tmp_path)
    gov = Governance(home_registry, bootstrap=kafka_bootstrap)
    gov.approve("c1", "bob")
    gov.promote("c1", "bob")
    gov.record_gate(_gate("c2", "c1", site, passed=True), by="trainer")
    bus = ["--bootstrap", kafka_bootstrap]

    assert _cli(["models", "promote", "c2", "--as", "carol", *bus], monkeypatch) == 1
    assert "has no approval" in capsys.readouterr().err
    assert _cli(["models", "approve", "c2", "--as", "bob"], monkeypatch) == 0
    assert _cli(["models", "promote", "c2", "--as", "carol", *bus], monkeypatch) == 0
    assert "promoted model c2 to champion" in capsys.readouterr().out
    assert _cli(["models", "rollback", "--site", site, "--as", "carol", *bus], monkeypatch) == 2
    assert "Missing option '--reason'" in capsys.readouterr().err
    rollback = ["models", "rollback", "--site", site, "--as", "carol", "--reason", "recall fell"]
    assert _cli([*rollback, *bus], monkeypatch) == 0
    assert f"rolled back site {site}: model c1 is champion again" in capsys.readouterr().out

    champions = asyncio.run(
        read_to_end(
            kafka_bootstrap,
            topics.MODEL_DEPLOYED,
            model=ModelDeployed,
            where=lambda e: e.site_id == site and e.role is ModelRole.CHAMPION,
        )
    )
    assert [(e.model_version, e.approved_by) for e in champions] == [
        ("c1", "bob"),
        ("c2", "bob"),
        ("c1", "carol"),
    ]
    assert _cli(["models", "history", "--site", site, "--json"], monkeypatch) == 0
    [rolled] = [r for r in json.loads(capsys.readouterr().out) if r["action"] == "rolled_back"]
    assert (rolled["model_version"], rolled["actor"], rolled["reason"]) == (
        "c1",
        "carol",
        "recall fell",
    )
    assert rolled["evidence"]["rolled_back_from"] == "c2"
    assert _cli(["audit", "verify"], monkeypatch) == 0


@pytest.mark.integration
def test_deploy_bundle_records_a_real_approver_or_refuses(
    registry: Registry, tmp_path: Path, kafka_bootstrap: str
) -> None:
    from defectloop.testing.bundles import BundleBuilder
    from defectloop.trainer.deploy import deploy_bundle
    from defectloop.trainer.governance import FIRST_MODEL_APPROVER

    site = f"dep-{uuid.uuid4().hex[:8]}"
    make = BundleBuilder(tmp_path)
    first, second = make("d1"), make("d2")
    args: dict[str, Any] = {
        "site": site,
        "registry": registry,
        "bootstrap": kafka_bootstrap,
        "requested_by": "alice",
    }

    champion = deploy_bundle(first.path, role=ModelRole.CHAMPION, **args)
    assert champion.approved_by == FIRST_MODEL_APPROVER
    shadow = deploy_bundle(second.path, role=ModelRole.SHADOW, **args)
    assert shadow.approved_by is None
    with pytest.raises(ForbiddenError, match=f"site {site} has a champion"):
        deploy_bundle(second.path, role=ModelRole.CHAMPION, **args)
    with pytest.raises(ForbiddenError, match="alice is the author of model d2"):
        deploy_bundle(second.path, role=ModelRole.CHAMPION, approved_by="alice", **args)

    events = asyncio.run(
        read_to_end(
            kafka_bootstrap,
            topics.MODEL_DEPLOYED,
            model=ModelDeployed,
            where=lambda e: e.site_id == site,
        )
    )
    assert sorted((e.role.value, e.model_version, e.approved_by) for e in events) == [
        ("champion", "d1", FIRST_MODEL_APPROVER),
        ("shadow", "d2", None),
    ]
    gov = Governance(registry)
    assert [(r.action, r.model_version) for r in gov.history(site=site)] == [
        ("registered", "d1"),
        ("promoted", "d1"),
        ("registered", "d2"),
        ("shadow", "d2"),
    ]
    assert [d.approver for d in registry.deployments(site)] == [FIRST_MODEL_APPROVER, None]


@pytest.mark.unit
def test_the_public_governance_module_does_not_load_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, defectloop.trainer.governance, defectloop.trainer.gates; "
        "print(sorted(m for m in ('torch', 'cv2') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.unit
def test_two_writers_racing_for_the_chain_keep_it_whole(registry: Registry, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    versions = [f"r{i}" for i in range(16)]
    for version in versions:
        _model(registry, version, "B", "alice", tmp_path)
    # Two processes' worth of writers: each has its own engine on the same file.
    writers = [Governance(Registry(registry.url)) for _ in range(2)]

    def approve(i: int) -> None:
        # Half approvals, half refusals (a refusal writes the audit record alone).
        user = "alice" if i % 4 < 2 else f"approver{i % 2}"
        with contextlib.suppress(ForbiddenError):
            writers[i % 2].approve(versions[i], user)

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(approve, range(len(versions))))
    actions = [r.action for r in Governance(registry).history() if r.action != "registered"]
    assert sorted(actions) == sorted(["approved", "approval_refused"] * (len(versions) // 2))
    verdict = Governance(registry).verify_audit()
    assert verdict.intact
    assert verdict.count == 2 * len(versions)  # registered + one decision each
