"""Loading a deployed bundle: where it lives (``artifact_uri``) and that it is the one deployed.

Before a bundle is loaded, three promises are checked, on bytes read once (what runs is exactly
what was checked):

1. its manifest (``model.json``) carries a valid ed25519 signature by a trusted key (the
   trainer signs at registration, :mod:`defectloop.common.signing`) — unless signature
   verification is explicitly switched off (``DEFECTLOOP_INFERENCE_VERIFY_SIGNATURES=false``,
   for development only);
2. the manifest's sha256 is the one ``model.deployed`` names;
3. ``model.onnx`` hashes to that sha256.

A refused bundle raises a :class:`~defectloop.common.errors.DefectloopError` whose ``reason``
the router logs (``model_rejected``) and shows in ``/v1/models`` while the previous model keeps
serving: ``bundle_unsigned``, ``signing_key_untrusted``, ``signature_invalid``,
``integrity_mismatch``, ``bundle_missing``.

``artifact_uri`` is a local path, a ``file://`` URI, or an ``s3://bucket/prefix`` holding the
bundle's files: those are fetched into a local cache first (:class:`BundleSource`) and verified
there like any local bundle.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pydantic import ValidationError

from defectloop.common.blobstore import S3BlobStore, s3_client, split_s3_uri
from defectloop.common.errors import IntegrityMismatchError, InvalidInputError, NotFoundError
from defectloop.common.events import ModelDeployed, sha256_hex
from defectloop.common.logging import get_logger
from defectloop.common.paths import cache_home
from defectloop.common.signing import (
    SIGNATURE_FILE,
    SIGNED_FILE,
    TrustedKeys,
    default_key_path,
    public_key_path,
    verify_signed_file,
)
from defectloop.inference.settings import InferenceSettings
from defectloop.vision.manifest import MODEL_FILE, BundleManifest, load_manifest
from defectloop.vision.runtime import Detector, ProviderChoice

log = get_logger(__name__)

BUNDLE_FILES = (SIGNED_FILE, MODEL_FILE, SIGNATURE_FILE)
"""What inference needs of a bundle (the trainer's checkpoint stays behind)."""


@dataclass(frozen=True)
class SignaturePolicy:
    """Whether bundle signatures are verified, and against which public keys.

    No key files named: the public key of the project key at its default place
    (:func:`defectloop.common.signing.default_key_path`), which is where the trainer creates it
    on one machine. Keys are read at each load, so a key created after start-up is found.
    """

    verify: bool = True
    public_keys: tuple[Path, ...] = ()

    @classmethod
    def from_settings(cls, settings: InferenceSettings) -> SignaturePolicy:
        keys = (settings.signing_public_key,) if settings.signing_public_key else ()
        return cls(verify=settings.verify_signatures, public_keys=keys)

    def trusted(self) -> TrustedKeys:
        return TrustedKeys.from_files(
            list(self.public_keys) or [public_key_path(default_key_path())]
        )


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
        hint="deploy bundles as a local directory path, a file:// URI or an s3:// prefix",
    )


@dataclass(frozen=True)
class BundleSource:
    """Where ``s3://`` bundles are fetched to: ``cache_dir`` (default: ``bundles/`` in the
    defectloop cache), with ``client`` (default: a boto3 client from the environment,
    ``DEFECTLOOP_S3_ENDPOINT`` and the usual ``AWS_*`` variables).

    A fetched bundle is an unverified copy: it is verified (signature, sha256) from the cache
    exactly as a local bundle is, at every load.
    """

    cache_dir: Path | None = None
    client: Any = None

    def local_dir(self, event: ModelDeployed) -> Path:
        """The local directory of the deployed bundle (fetched first if it is in S3)."""
        if urlparse(event.artifact_uri).scheme != "s3":
            return bundle_dir(event.artifact_uri)
        root = self.cache_dir or cache_home() / "bundles"
        # One copy per (location, deployed digest): a different bundle is never served from
        # another one's copy.
        name = sha256_hex(f"{event.artifact_uri}|{event.sha256}".encode())[:32]
        target = root / name
        if not target.is_dir():
            self._fetch(event.artifact_uri, target)
        return target

    def _fetch(self, uri: str, target: Path) -> None:
        bucket, prefix = split_s3_uri(uri)
        store = S3BlobStore(bucket, client=self.client if self.client is not None else s3_client())
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".fetch-"))
        try:
            for name in BUNDLE_FILES:
                try:
                    data = store.read_object(f"s3://{bucket}/{prefix.rstrip('/')}/{name}")
                except NotFoundError:
                    if name == SIGNATURE_FILE:
                        continue  # verification says "unsigned" (or skips, when it is off)
                    raise
                (staging / name).write_bytes(data)
            try:
                staging.rename(target)  # whole or not at all
            except OSError:
                if not target.is_dir():  # another loader fetched it meanwhile: use theirs
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("bundle_fetched", artifact_uri=uri, cache=str(target))


def _verified_manifest(directory: Path, policy: SignaturePolicy) -> BundleManifest:
    if not policy.verify:
        log.warning("bundle_signature_not_checked", bundle=str(directory))
        return load_manifest(directory)
    data = verify_signed_file(directory, policy.trusted())
    try:
        return BundleManifest.model_validate_json(data)
    except ValidationError as exc:  # signed, yet not a manifest: a bug upstream, not an attack
        raise InvalidInputError(
            f"invalid manifest in {directory}: {exc.error_count()} error(s)",
            reason="bundle_invalid",
            hint="the manifest must match defectloop.vision.manifest.BundleManifest",
        ) from exc


def _model_bytes(directory: Path, manifest: BundleManifest) -> bytes:
    try:
        data = (directory / MODEL_FILE).read_bytes()
    except FileNotFoundError as exc:
        raise NotFoundError(
            f"no {MODEL_FILE} in {directory}", hint="a bundle is model.onnx + model.json"
        ) from exc
    actual = sha256_hex(data)
    if actual != manifest.sha256:
        raise IntegrityMismatchError(
            f"{directory / MODEL_FILE} sha256 {actual[:12]}… does not match the manifest's "
            f"{manifest.sha256[:12]}…",
            hint="the model file is corrupted or was tampered with; re-fetch the bundle",
        )
    return data


def load_deployed(
    event: ModelDeployed,
    *,
    signatures: SignaturePolicy | None = None,
    source: BundleSource | None = None,
    providers: ProviderChoice = "auto",
    intra_op_threads: int | None = None,
    inter_op_threads: int = 1,
) -> Detector:
    """Verify the deployed bundle (signature, event sha256 = manifest sha256 = file sha256) and
    load it. ``signatures`` defaults to verifying against the project's public key; ``source``
    says where ``s3://`` bundles are fetched to."""
    policy = signatures if signatures is not None else SignaturePolicy()
    directory = (source or BundleSource()).local_dir(event)
    manifest = _verified_manifest(directory, policy)
    # The cheap check before reading the weights: a bundle that is not the deployed one is never
    # loaded.
    if manifest.sha256 != event.sha256:
        raise IntegrityMismatchError(
            f"model.deployed says sha256 {event.sha256[:12]}…, the bundle at "
            f"{event.artifact_uri} is {manifest.sha256[:12]}…",
            hint="the bundle was replaced or tampered with after registration",
        )
    detector = Detector.from_manifest(
        manifest,
        _model_bytes(directory, manifest),
        providers=providers,
        intra_op_threads=intra_op_threads,
        inter_op_threads=inter_op_threads,
        source=str(directory),
    )
    log.info(
        "bundle_verified",
        site_id=event.site_id,
        model_version=event.model_version,
        sha256=event.sha256,
        signature_checked=policy.verify,
    )
    return detector
