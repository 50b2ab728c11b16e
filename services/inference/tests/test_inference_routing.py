"""The model table: verification before loading, latest deployment wins, atomic swaps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest

from defectloop.common.errors import IntegrityMismatchError
from defectloop.common.events import ModelRole
from defectloop.inference.bundles import bundle_dir, load_deployed
from defectloop.inference.router import ModelRouter

pytestmark = pytest.mark.unit

CHAMPION = ModelRole.CHAMPION


@pytest.fixture
async def router() -> AsyncIterator[ModelRouter]:
    pool = ThreadPoolExecutor(2)
    r = ModelRouter(partial(load_deployed, providers="cpu", intra_op_threads=1), pool)
    yield r
    await r.aclose()
    pool.shutdown()


def test_inference_loads_a_bundle_whose_digests_all_agree(make_bundle) -> None:
    bundle = make_bundle("v1")
    detector = load_deployed(bundle.deployed("s"), providers="cpu")
    assert detector.manifest.version == "v1"


def test_inference_refuses_a_deployment_whose_sha256_is_not_the_bundles(make_bundle) -> None:
    event = make_bundle("v1").deployed("s", sha256="a" * 64)
    with pytest.raises(IntegrityMismatchError) as exc:
        load_deployed(event, providers="cpu")
    assert exc.value.reason == "integrity_mismatch"


def test_inference_refuses_a_bundle_whose_model_file_was_altered(make_bundle) -> None:
    bundle = make_bundle("v1")
    (bundle.path / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(IntegrityMismatchError) as exc:
        load_deployed(bundle.deployed("s"), providers="cpu")
    assert exc.value.reason == "integrity_mismatch"


def test_inference_accepts_paths_and_file_uris_as_artifact_uri(make_bundle) -> None:
    bundle = make_bundle("v1")
    assert bundle_dir(bundle.path.as_uri()) == bundle.path
    assert bundle_dir(str(bundle.path)) == bundle.path


async def test_inference_router_serves_a_deployed_model_after_loading(
    router: ModelRouter, make_bundle
) -> None:
    router.apply(make_bundle("v1").deployed("s"))
    await router.wait_idle()
    assert [m.version for m in router.snapshot().models_for("s")] == ["v1"]


async def test_inference_router_keeps_the_old_model_when_a_new_one_is_rejected(
    router: ModelRouter, make_bundle
) -> None:
    router.apply(make_bundle("v1").deployed("s"))
    await router.wait_idle()
    router.apply(make_bundle("v2").deployed("s", sha256="b" * 64))
    await router.wait_for(lambda r: r.rejected_version("s", CHAMPION) == "v2")
    assert router.serving_version("s", CHAMPION) == "v1"
    row = router.describe()["models"][0]
    assert row["last_rejected"]["reason"] == "integrity_mismatch"


async def test_inference_router_latest_deployment_wins_over_an_older_one_in_flight(
    router: ModelRouter, make_bundle
) -> None:
    router.apply(make_bundle("v1").deployed("s"))
    router.apply(make_bundle("v2").deployed("s"))
    await router.wait_idle()
    assert router.serving_version("s", CHAMPION) == "v2"


async def test_inference_router_snapshot_does_not_change_when_a_model_switches(
    router: ModelRouter, make_bundle
) -> None:
    router.apply(make_bundle("v1").deployed("s"))
    await router.wait_idle()
    before = router.snapshot()
    router.apply(make_bundle("v2").deployed("s"))
    await router.wait_idle()
    assert before.models_for("s")[0].version == "v1"
    assert router.snapshot().models_for("s")[0].version == "v2"


async def test_inference_router_retires_a_role_on_inactive(
    router: ModelRouter, make_bundle
) -> None:
    bundle = make_bundle("v1")
    router.apply(bundle.deployed("s"))
    router.apply(bundle.deployed("s", role=ModelRole.SHADOW))
    await router.wait_idle()
    router.apply(bundle.deployed("s", role=ModelRole.SHADOW, active=False))
    assert [m.role for m in router.snapshot().models_for("s")] == [CHAMPION]


async def test_inference_router_has_no_models_for_a_site_with_only_a_shadow(
    router: ModelRouter, make_bundle
) -> None:
    router.apply(make_bundle("v1").deployed("s", role=ModelRole.SHADOW))
    await router.wait_idle()
    assert router.snapshot().models_for("s") == ()
