"""Signed model bundles: an ed25519 project key signs a bundle's manifest at registration.

What is signed is the exact bytes of the bundle's manifest (``model.json``), which records the
sha256 of ``model.onnx``: one signature covers the weights (through the digest) and everything
that decides how they are used (preprocessing, labels, decoding thresholds). The signature lives
next to them in ``signature.json``; a verifier reads the manifest bytes once, checks the
signature against its trusted public keys, and only then parses them (see
``defectloop.inference.bundles``).

Keys: the project's private key is generated on first use at :func:`default_key_path`
(``$DEFECTLOOP_SIGNING_KEY``, else ``signing/ed25519.pem`` in the user's defectloop config dir
or ``$DEFECTLOOP_CONFIG``), its public key beside it (``ed25519.pub.pem``). The trainer holds the
private key; inference needs only the public one (``DEFECTLOOP_INFERENCE_SIGNING_PUBLIC_KEY``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import platformdirs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from defectloop.common.errors import ConfigError, IntegrityMismatchError, NotFoundError

KEY_ENV = "DEFECTLOOP_SIGNING_KEY"
CONFIG_ENV = "DEFECTLOOP_CONFIG"
SIGNED_FILE = "model.json"
"""The file a bundle signature covers: the manifest (bundle contract, docs/model-bundle.md)."""
SIGNATURE_FILE = "signature.json"


def config_home() -> Path:
    """The user's defectloop config dir (``$DEFECTLOOP_CONFIG`` overrides it)."""
    base = os.environ.get(CONFIG_ENV)
    return (Path(base) if base else platformdirs.user_config_path("defectloop")).resolve()


def default_key_path() -> Path:
    """Where the project's private signing key is (or will be created)."""
    override = os.environ.get(KEY_ENV)
    return Path(override).resolve() if override else config_home() / "signing" / "ed25519.pem"


def public_key_path(private_key: Path) -> Path:
    """The public key file written beside ``private_key``."""
    return private_key.with_name(private_key.name.removesuffix(".pem") + ".pub.pem")


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable name for a key: the first 16 hex digits of its raw bytes' sha256."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _write_new(path: Path, data: bytes, mode: int) -> bool:
    """Write ``data`` to ``path`` only if it does not exist yet; False if another writer won.

    A temp file then a hard link: the link fails if the name exists, so two processes creating
    the key at once end up sharing one key instead of overwriting each other's.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise ConfigError(f"no signing key at {path}", hint=f"set {KEY_ENV}") from exc
    except ValueError as exc:
        raise ConfigError(
            f"{path} is not a PEM private key: {exc}", hint=f"set {KEY_ENV} to an ed25519 key"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an ed25519 key", hint="bundles are signed with ed25519")
    return key


def project_key(path: Path | None = None) -> Ed25519PrivateKey:
    """The project's private key at ``path`` (default :func:`default_key_path`), created on first
    use (mode 0600) with its public key beside it."""
    path = path or default_key_path()
    if not path.exists():
        fresh = Ed25519PrivateKey.generate()
        pem = fresh.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_new(path, pem, 0o600)  # a concurrent creator may have won: read what is there
    key = load_private_key(path)
    pub = public_key_path(path)
    if not pub.exists():
        _write_new(pub, public_pem(key.public_key()), 0o644)
    return key


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError as exc:
        raise ConfigError(
            f"no trusted public key at {path}",
            reason="signing_key_missing",
            hint="point DEFECTLOOP_INFERENCE_SIGNING_PUBLIC_KEY at the trainer's ed25519.pub.pem",
        ) from exc
    except ValueError as exc:
        raise ConfigError(f"{path} is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an ed25519 public key")
    return key


class BundleSignature(BaseModel):
    """The content of ``signature.json``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    algorithm: Literal["ed25519"] = "ed25519"
    key_id: str = Field(description="Which key signed (see key_id()).")
    signed_file: str = Field(SIGNED_FILE, description="The bundle file whose bytes are signed.")
    signed_sha256: str = Field(description="sha256 of the signed bytes (for humans and audits).")
    signature: str = Field(description="base64 of the ed25519 signature over the signed bytes.")
    signed_at: datetime


def sign_bytes(data: bytes, key: Ed25519PrivateKey) -> BundleSignature:
    return BundleSignature(
        key_id=key_id(key.public_key()),
        signed_sha256=hashlib.sha256(data).hexdigest(),
        signature=base64.b64encode(key.sign(data)).decode(),
        signed_at=datetime.now(UTC),
    )


def sign_bundle(directory: Path, key: Ed25519PrivateKey | None = None) -> BundleSignature:
    """Sign ``directory``'s manifest with ``key`` (default: the project key) and write
    ``signature.json`` atomically; return the signature."""
    key = key if key is not None else project_key()
    data = (directory / SIGNED_FILE).read_bytes()
    signature = sign_bytes(data, key)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".sig-")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(signature.model_dump_json(indent=2) + "\n")
        os.replace(tmp, directory / SIGNATURE_FILE)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return signature


def read_signature(directory: Path) -> BundleSignature | None:
    """The bundle's signature, or None when it has none; a malformed one is refused."""
    path = directory / SIGNATURE_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return BundleSignature.model_validate_json(raw)
    except ValidationError as exc:
        raise IntegrityMismatchError(
            f"{path} is not a valid bundle signature ({exc.error_count()} error(s))",
            reason="signature_invalid",
            hint="re-register the bundle with the trainer to sign it again",
        ) from exc


class TrustedKeys:
    """The public keys whose signatures a verifier accepts, by key id."""

    def __init__(self, keys: list[Ed25519PublicKey]) -> None:
        self._keys = {key_id(k): k for k in keys}

    @classmethod
    def from_files(cls, paths: list[Path]) -> TrustedKeys:
        return cls([load_public_key(p) for p in paths])

    @property
    def ids(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, data: bytes, signature: BundleSignature | None, *, what: str) -> None:
        """Accept ``data`` only if ``signature`` is a valid signature over it by a trusted key.

        Raises :class:`IntegrityMismatchError` whose ``reason`` says why not: ``bundle_unsigned``,
        ``signing_key_untrusted`` or ``signature_invalid``.
        """
        if signature is None:
            raise IntegrityMismatchError(
                f"{what} is not signed (no {SIGNATURE_FILE})",
                reason="bundle_unsigned",
                hint="register the bundle with the trainer (it signs at registration)",
            )
        public = self._keys.get(signature.key_id)
        if public is None:
            raise IntegrityMismatchError(
                f"{what} is signed by key {signature.key_id}, not by a trusted key "
                f"({', '.join(self.ids) or 'none configured'})",
                reason="signing_key_untrusted",
                hint="deploy bundles registered by this project's trainer, or trust its key",
            )
        try:
            public.verify(base64.b64decode(signature.signature, validate=True), data)
        except (InvalidSignature, ValueError) as exc:
            raise IntegrityMismatchError(
                f"{what}: the signature does not match {signature.signed_file} "
                "(it was changed after signing)",
                reason="signature_invalid",
                hint="the bundle was tampered with after registration; re-deploy a registered one",
            ) from exc


def verify_signed_file(directory: Path, trusted: TrustedKeys) -> bytes:
    """Read the signed file of bundle ``directory`` once, verify it, return the verified bytes."""
    try:
        data = (directory / SIGNED_FILE).read_bytes()
    except FileNotFoundError as exc:
        raise NotFoundError(
            f"no model bundle at {directory} ({SIGNED_FILE} missing)",
            hint="a bundle is model.onnx + model.json + signature.json in one directory",
        ) from exc
    trusted.verify(data, read_signature(directory), what=f"bundle {directory}")
    return data
