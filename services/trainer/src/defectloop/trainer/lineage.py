"""Lineage: dataset version, code version, environment — what a model version was made from."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from defectloop.trainer.data import Dataset

MANIFEST_SCHEMA = 1


def dataset_manifest(ds: Dataset, *, site: str | None = None) -> dict[str, Any]:
    """Canonical listing of what a run trained and validated on.

    Holds content only (image sha256s, annotation ids and a digest of their boxes/labels, split
    membership): moving or renaming a dataset dir does not change its version; changing one pixel,
    one box or the split does.
    """
    val = set(ds.val)
    images = [
        {
            "sha256": s.sha256,
            "file_name": s.file_name,
            "annotation_ids": list(s.annotation_ids),
            "annotations_sha256": s.annotations_sha256,
            "split": "val" if i in val else "train",
        }
        for i, s in enumerate(ds.samples)
    ]
    images.sort(key=lambda r: (r["sha256"], r["file_name"]))
    return {
        "schema": MANIFEST_SCHEMA,
        "site": site,
        "num_images": len(images),
        "num_train": len(ds.train),
        "num_val": len(ds.val),
        "images": images,
    }


def verified_dataset(
    dirs: Sequence[Path],
    labels: Sequence[str],
    *,
    site: str | None,
    val_fraction: float,
    expected: str,
    what: str,
    reason: str,
    hint: str,
) -> Dataset:
    """``dirs`` loaded as training loads them, refused unless they hash to ``expected``."""
    from defectloop.common.errors import IntegrityMismatchError
    from defectloop.trainer.data import load_datasets

    ds = load_datasets(list(dirs), labels, site=site, val_fraction=val_fraction)
    found = dataset_version(dataset_manifest(ds, site=site))
    if found != expected:
        raise IntegrityMismatchError(
            f"{what}: it hashes to {found[:12]}…, recorded {expected[:12]}…",
            reason=reason,
            hint=hint,
        )
    return ds


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def dataset_version(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(manifest).encode()).hexdigest()


def repo_root(start: Path | None = None) -> Path | None:
    """The nearest ancestor holding ``uv.lock`` (the workspace root), else None."""
    here = (start or Path(__file__)).resolve()
    for parent in (here, *here.parents):
        if (parent / "uv.lock").is_file():
            return parent
    return None


def git_commit(cwd: Path | None = None) -> str:
    """``git rev-parse HEAD`` of the code, or "unknown" outside a git checkout."""
    root = cwd or repo_root() or Path.cwd()
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else "unknown"


def git_dirty(cwd: Path | None = None) -> bool | None:
    """Whether tracked files differ from ``HEAD`` (the commit alone does not name the code then);
    None outside a git checkout."""
    root = cwd or repo_root() or Path.cwd()
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def lockfile_sha256(root: Path | None = None) -> str:
    """sha256 of the workspace's ``uv.lock`` (the environment's identity), or "unknown"."""
    root = root or repo_root()
    if root is None or not (root / "uv.lock").is_file():
        return "unknown"
    return hashlib.sha256((root / "uv.lock").read_bytes()).hexdigest()
