"""Loading a deployed bundle: where it lives (``artifact_uri``) and that it is the one deployed.

Verifying a bundle's files and building its ONNX Runtime session is
:meth:`defectloop.vision.runtime.Detector.from_bundle` (which also translates ONNX Runtime's
errors); here only the deployment's own promise is checked: the bundle's sha256 is the one
``model.deployed`` names.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from defectloop.common.errors import IntegrityMismatchError, InvalidInputError
from defectloop.common.events import ModelDeployed
from defectloop.vision.manifest import load_manifest
from defectloop.vision.runtime import Detector, ProviderChoice


def bundle_dir(artifact_uri: str) -> Path:
    """The local bundle directory of an ``artifact_uri`` (a path or a ``file://`` URI)."""
    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(artifact_uri)
    raise InvalidInputError(
        f"unsupported artifact URI {artifact_uri!r}",
        reason="unsupported_artifact_uri",
        hint="deploy bundles as a local directory path or a file:// URI",
    )


def load_deployed(
    event: ModelDeployed,
    *,
    providers: ProviderChoice = "auto",
    intra_op_threads: int | None = None,
    inter_op_threads: int = 1,
) -> Detector:
    """Verify the deployed bundle (event sha256 = manifest sha256 = file sha256) and load it.

    The ONNX session is built from the bytes that were verified, never re-read from disk.
    """
    directory = bundle_dir(event.artifact_uri)
    # The cheap check first: a bundle that is not the deployed one is never loaded.
    manifest = load_manifest(directory)
    if manifest.sha256 != event.sha256:
        raise IntegrityMismatchError(
            f"model.deployed says sha256 {event.sha256[:12]}…, the bundle at "
            f"{event.artifact_uri} is {manifest.sha256[:12]}…",
            hint="the bundle was replaced or tampered with after registration",
        )
    detector = Detector.from_bundle(
        directory,
        providers=providers,
        intra_op_threads=intra_op_threads,
        inter_op_threads=inter_op_threads,
    )
    if detector.manifest.sha256 != event.sha256:  # replaced between the two reads
        raise IntegrityMismatchError(
            f"the bundle at {event.artifact_uri} changed while it was loaded",
            hint="the bundle was replaced or tampered with after registration",
        )
    return detector
