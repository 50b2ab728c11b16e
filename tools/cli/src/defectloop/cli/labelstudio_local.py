"""A real, headless Label Studio (open-source edition) from its own virtualenv.

``scripts/install-labelstudio.sh`` installs it once under ``<cache>/labelstudio-venv`` (its pins
clash with the workspace's). Each instance has its own data directory, port, admin user and API
token, under ``<state>/labelstudio[/<instance>]``; it is started and stopped by pid, and is ready
when ``GET /health`` answers on the port we asked for (Label Studio silently moves to another port
when its own is taken, so a busy port is refused up front).

Strict per-site segregation = one instance per site (``instance="A"``): the open-source edition
gives every account access to every project of its instance. See docs/annotation.md.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from defectloop.cli.processes import pid_from_file, port_open, stop_by_pid_file
from defectloop.common.errors import ComponentError
from defectloop.common.paths import cache_home, state_home

LABEL_STUDIO_VERSION = "1.23.2"
DEFAULT_PORT = 8080
ADMIN_EMAIL = "admin@defectloop.local"
PROJECT_TITLE_PREFIX = "defectloop site "

# Variables of the caller's shell that Label Studio would pick up unprefixed (PORT, HOST, CI, ...):
# the process gets a clean environment with only these passed through.
_PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ")


def venv_dir() -> Path:
    return cache_home() / "labelstudio-venv"


def executable() -> Path:
    return venv_dir() / "bin" / "label-studio"


def installed() -> bool:
    return executable().is_file() and os.access(executable(), os.X_OK)


@dataclass(frozen=True)
class LabelStudioLayout:
    """Where one Label Studio instance keeps its files, and its port."""

    home: Path
    port: int = DEFAULT_PORT
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def pid_file(self) -> Path:
        return self.home / "labelstudio.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "labelstudio.log"

    @property
    def credentials_file(self) -> Path:
        """Admin email, password and legacy API token (created once, mode 0600)."""
        return self.home / "credentials.json"

    @property
    def info_file(self) -> Path:
        """``{"url", "token", ...}`` of this instance, for the CLI itself (the stack passes them
        to annotation-sync as settings; services never read it)."""
        return self.home / "info.json"


def default_layout(instance: str | None = None, port: int | None = None) -> LabelStudioLayout:
    """The stack's instance (``instance=None``) or a per-site one (``instance="A"``)."""
    base = state_home() / "labelstudio"
    home = base / "sites" / instance if instance else base
    if port is None:
        port = int(os.environ.get("DEFECTLOOP_LABELSTUDIO_PORT", str(DEFAULT_PORT)))
    return LabelStudioLayout(home, port=port)


def credentials(layout: LabelStudioLayout) -> dict[str, str]:
    """The instance's admin credentials, created on first use (the token only applies then)."""
    path = layout.credentials_file
    if path.exists():
        data: dict[str, str] = json.loads(path.read_text())
        return data
    layout.home.mkdir(parents=True, exist_ok=True)
    data = {
        "email": ADMIN_EMAIL,
        "password": secrets.token_urlsafe(18),
        "token": secrets.token_hex(20),  # DRF Token.key is at most 40 characters
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    return data


def _env(layout: LabelStudioLayout) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _PASS_ENV}
    env.update(
        {
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
            "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
            "LABEL_STUDIO_SENTRY_DSN": "",
            "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
            "LABEL_STUDIO_CI": "false",
            "LABEL_STUDIO_DEBUG": "false",
            "LABEL_STUDIO_BASE_DATA_DIR": str(layout.data_dir),
            # annotation-sync's webhook receiver is on loopback in the local stack.
            "LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS": "false",
            # Keep the local-files auto-detection (./mydata) off whatever the cwd.
            "LOCAL_FILES_SERVING_ENABLED": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def read_pid(layout: LabelStudioLayout) -> int | None:
    return pid_from_file(layout.pid_file)


def healthy(layout: LabelStudioLayout, timeout: float = 2.0) -> bool:
    try:
        resp = httpx.get(f"{layout.url}/health", timeout=timeout)
    except httpx.HTTPError:
        return False
    return resp.status_code == 200


def is_running(layout: LabelStudioLayout) -> bool:
    return read_pid(layout) is not None and healthy(layout)


def start(layout: LabelStudioLayout, *, timeout_s: float = 300.0) -> bool:
    """Start the instance unless it runs; return True if this call started it.

    Returns once ``/health`` answers on the requested port and the admin token works. The first
    start of a data directory runs Label Studio's migrations (tens of seconds).
    """
    if is_running(layout):
        _write_info(layout)
        return False
    if not installed():
        raise ComponentError(
            f"Label Studio is not installed ({executable()} missing)",
            hint="run scripts/install-labelstudio.sh (make setup does it)",
        )
    if read_pid(layout) is None and port_open(layout.port, layout.host):
        raise ComponentError(
            f"port {layout.port} is taken by another process",
            hint="stop it, or pick another port (--port / DEFECTLOOP_LABELSTUDIO_PORT)",
        )
    creds = credentials(layout)
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(executable()),
        "start",
        "--no-browser",
        "--internal-host",
        layout.host,
        "--port",
        str(layout.port),
        "--data-dir",
        str(layout.data_dir),
        "--username",
        creds["email"],
        "--password",
        creds["password"],
        "--user-token",
        creds["token"],
        "--enable-legacy-api-token",
        "--log-level",
        "WARNING",
    ]
    log = layout.log_file.open("ab")
    proc = subprocess.Popen(
        cmd,
        env=_env(layout),
        cwd=layout.home,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # survives the CLI; stopped by pid
    )
    log.close()
    layout.pid_file.write_text(str(proc.pid))
    deadline = time.monotonic() + timeout_s
    while not healthy(layout):
        if proc.poll() is not None:
            layout.pid_file.unlink(missing_ok=True)
            raise ComponentError(
                f"Label Studio exited during start-up (code {proc.returncode})",
                hint=f"see {layout.log_file}",
            )
        if time.monotonic() > deadline:
            stop(layout)
            raise ComponentError(
                f"Label Studio did not answer /health within {timeout_s:.0f} s",
                hint=f"see {layout.log_file}",
            )
        time.sleep(0.5)  # polling readiness of a process, not synchronising test logic
    _check_token(layout, creds["token"])
    _write_info(layout)
    return True


def _check_token(layout: LabelStudioLayout, token: str) -> None:
    resp = httpx.get(
        f"{layout.url}/api/current-user/whoami",
        headers={"Authorization": f"Token {token}"},
        timeout=30.0,
    )
    if resp.status_code != 200:
        raise ComponentError(
            f"Label Studio rejected the admin token ({resp.status_code})",
            hint=f"the data dir {layout.data_dir} was created with other credentials: remove it",
        )


def _write_info(layout: LabelStudioLayout) -> None:
    creds = credentials(layout)
    info = {"url": layout.url, "token": creds["token"], "pid": read_pid(layout)}
    tmp = layout.info_file.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(info, fh)
    os.replace(tmp, layout.info_file)


ANNOTATION_SYNC_ENV = "DEFECTLOOP_ANNOTATION_SYNC_"


def _running_instance(layout: LabelStudioLayout) -> dict[str, str] | None:
    """``{"url", "token"}`` of a per-site instance started earlier, if it answers now."""
    try:
        info = json.loads(layout.info_file.read_text())
        url, token = str(info["url"]), str(info["token"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        up = httpx.get(f"{url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        up = False
    return {"url": url, "token": token} if up else None


def annotation_sync_env(shared: LabelStudioLayout, sites: list[str]) -> dict[str, str]:
    """The settings through which the stack hands annotation-sync its Label Studio: the shared
    instance, and each site's own one when it runs (``labelstudio start --site S``)."""
    env = {
        f"{ANNOTATION_SYNC_ENV}LABEL_STUDIO_URL": shared.url,
        f"{ANNOTATION_SYNC_ENV}LABEL_STUDIO_TOKEN": credentials(shared)["token"],
    }
    own = {s: inst for s in sites if (inst := _running_instance(default_layout(s)))}
    if own:
        env[f"{ANNOTATION_SYNC_ENV}LABEL_STUDIO_INSTANCES"] = json.dumps(own)
    return env


def projects(layout: LabelStudioLayout) -> dict[str, int]:
    """``{site: project id}`` of the defectloop projects of a running instance."""
    token = credentials(layout)["token"]
    found: dict[str, int] = {}
    url: str | None = f"{layout.url}/api/projects/?page_size=100"
    while url:
        resp = httpx.get(url, headers={"Authorization": f"Token {token}"}, timeout=30.0)
        resp.raise_for_status()
        body: Any = resp.json()
        rows = body.get("results", []) if isinstance(body, dict) else body
        for row in rows:
            title = str(row.get("title", ""))
            if title.startswith(PROJECT_TITLE_PREFIX):
                found[title.removeprefix(PROJECT_TITLE_PREFIX)] = int(row["id"])
        url = body.get("next") if isinstance(body, dict) else None
    return found


def info(layout: LabelStudioLayout) -> dict[str, Any]:
    """``{"url", "token", "running", "projects": {site: id}}``."""
    creds = credentials(layout) if layout.credentials_file.exists() else {}
    running = is_running(layout)
    return {
        "url": layout.url,
        "token": creds.get("token"),
        "running": running,
        "data_dir": str(layout.data_dir),
        "projects": projects(layout) if running else {},
    }


def stop(layout: LabelStudioLayout, *, timeout_s: float = 30.0) -> bool:
    """Stop the instance by its pid (SIGTERM, SIGKILL after ``timeout_s``)."""
    # its own session: the server and any child it spawned
    return stop_by_pid_file(layout.pid_file, timeout_s=timeout_s, group=True)
