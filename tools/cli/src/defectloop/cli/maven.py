"""Fetching one jar from Maven Central with Maven (``mvn dependency:copy``), once, atomically."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from defectloop.common.errors import ComponentError


def fetch_jar(coordinates: str, target: Path, *, what: str) -> Path:
    """The jar ``coordinates`` (``group:artifact:version[:jar:classifier]``) at ``target``,
    fetched by Maven on first use; ``what`` names it in errors."""
    if target.is_file():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ComponentError(
            f"Maven (mvn) is needed once to fetch {what}",
            hint="install it: apt-get install -y maven (Java 17 is needed too)",
        )
    staging = target.parent / f".{target.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        proc = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "dependency:copy",
                f"-Dartifact={coordinates}",
                f"-DoutputDirectory={staging}",
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd=staging,  # no project here: Maven resolves the artifact alone
        )
        fetched = [p for p in staging.glob("*.jar")]
        if proc.returncode != 0 or len(fetched) != 1:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
            raise ComponentError(
                f"Maven could not fetch {what} ({coordinates}): {' / '.join(tail)}",
                hint="check that Maven Central is reachable and the version exists",
            )
        fetched[0].rename(target)  # atomic: a half-fetched jar is never mistaken for a full one
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
