"""Signing keys and the bus's ACL table, without a broker (the real-broker tests are in
tests/integration/test_security_*.py)."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from defectloop.cli import kafka_acls
from defectloop.common import topics
from defectloop.common.errors import ConfigError, IntegrityMismatchError
from defectloop.common.signing import (
    SIGNATURE_FILE,
    TrustedKeys,
    key_id,
    project_key,
    public_key_path,
    sign_bundle,
    verify_signed_file,
)

pytestmark = pytest.mark.unit


def test_the_project_key_is_created_once_private_and_shared_by_concurrent_first_users(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keys" / "ed25519.pem"
    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: key_id(project_key(path).public_key()), range(8)))
    assert len(ids) == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public_key_path(path).is_file()


def _bundle(tmp_path: Path) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.json").write_text('{"sha256": "ab"}')
    return bundle


def test_a_malformed_or_garbled_signature_is_signature_invalid(tmp_path: Path) -> None:
    key = project_key(tmp_path / "k.pem")
    trusted = TrustedKeys([key.public_key()])
    bundle = _bundle(tmp_path)
    signature = sign_bundle(bundle, key)
    reasons = []
    for content in (
        "not json",
        signature.model_copy(update={"signature": "AAAA"}).model_dump_json(),
        signature.model_copy(update={"signature": "%%not base64%%"}).model_dump_json(),
    ):
        (bundle / SIGNATURE_FILE).write_text(content)
        with pytest.raises(IntegrityMismatchError) as refused:
            verify_signed_file(bundle, trusted)
        reasons.append(refused.value.reason)
    assert reasons == ["signature_invalid"] * 3


def test_no_trusted_key_file_is_a_config_error_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as missing:
        TrustedKeys.from_files([tmp_path / "absent.pub.pem"])
    assert missing.value.reason == "signing_key_missing"
    assert missing.value.hint


def _allowed(principal: kafka_acls.BusPrincipal, operation: str) -> set[str]:
    return {
        name if pattern is kafka_acls.PatternType.LITERAL else f"{name}*"
        for resource, name, pattern, op in principal.acls()
        if resource is kafka_acls.ResourceType.TOPIC and op.name == operation
    }


def test_only_the_router_writes_decisions_and_each_mes_reads_only_its_site() -> None:
    everyone = kafka_acls.principals(["A", "B"])
    writers = {
        p.name for p in everyone if any(t.startswith("decisions.") for t in _allowed(p, "WRITE"))
    }
    assert writers == {"decisions-router"}
    mes = {p.name: _allowed(p, "READ") for p in everyone if p.name.startswith("mes-")}
    assert mes == {"mes-A": {"decisions.A"}, "mes-B": {"decisions.B"}}
    assert all(not _allowed(p, "WRITE") for p in everyone if p.name.startswith("mes-"))


def test_model_deployed_is_written_by_the_trainer_only() -> None:
    writers = {
        p.name for p in kafka_acls.principals([]) if topics.MODEL_DEPLOYED in _allowed(p, "WRITE")
    }
    assert writers == {"trainer"}


def test_a_site_id_that_is_not_topic_safe_is_refused() -> None:
    with pytest.raises(ConfigError):
        kafka_acls.principals(["A", "b c"])
