"""scripts/check_deps.py: the workspace-member half of the dependency check (deptry does the rest)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _check_deps() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_deps", ROOT / "scripts" / "check_deps.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_deps"] = module
    spec.loader.exec_module(module)
    return module


def _member(root: Path, where: str, name: str, deps: list[str], code: dict[str, str]) -> None:
    path = root / where
    (path / "src" / "defectloop").mkdir(parents=True)
    listed = ", ".join(f'"{d}"' for d in deps)
    (path / "pyproject.toml").write_text(
        f'[project]\nname = "{name}"\nversion = "0"\ndependencies = [{listed}]\n'
    )
    for module, text in code.items():
        file = path / "src" / "defectloop" / module
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    _member(tmp_path, "libs/common", "defectloop-common", [], {
        "common/service.py": "import fastapi\n",
        "common/events.py": "",
    })
    _member(tmp_path, "libs/vision", "defectloop-vision", ["defectloop-common"], {
        "vision/run.py": "from defectloop.common.events import x\n",
    })
    return tmp_path


def test_a_consistent_workspace_has_no_problems(workspace: Path) -> None:
    check = _check_deps()
    assert check.workspace_problems(check.load_members(workspace)) == []


def test_an_undeclared_member_import_is_reported_even_when_lazy(workspace: Path) -> None:
    _member(workspace, "tools/cli", "defectloop-cli", ["defectloop-common"], {
        "cli/app.py": "def main():\n    from defectloop.vision import run\n"
        "from defectloop.common import events\n",
    })
    check = _check_deps()
    assert check.workspace_problems(check.load_members(workspace)) == [
        "tools/cli: imports defectloop-vision without declaring it in pyproject.toml"
    ]


def test_a_declared_member_never_imported_is_reported(workspace: Path) -> None:
    _member(workspace, "tools/sim", "defectloop-sim", ["defectloop-common", "defectloop-vision"], {
        "sim/run.py": "from defectloop.vision import run\n",
    })
    check = _check_deps()
    assert check.workspace_problems(check.load_members(workspace)) == [
        "tools/sim: declares defectloop-common but never imports it"
    ]


def test_a_common_module_behind_an_extra_needs_the_extra(workspace: Path) -> None:
    _member(workspace, "services/a", "defectloop-a", ["defectloop-common"], {
        "a/main.py": "from defectloop.common.service import build_service_app\n",
    })
    _member(workspace, "services/b", "defectloop-b", ["defectloop-common[http]"], {
        "b/main.py": "from defectloop.common.service import build_service_app\n",
    })
    check = _check_deps()
    assert check.workspace_problems(check.load_members(workspace)) == [
        "services/a: imports defectloop.common.service, which needs defectloop-common[http]"
    ]


def test_the_repository_passes_its_own_check() -> None:
    check = _check_deps()
    assert check.workspace_problems(check.load_members(ROOT)) == []
