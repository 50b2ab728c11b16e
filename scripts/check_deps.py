"""Each workspace member declares exactly what it imports (`make lint`).

Third-party packages: deptry, run in each member with the member's ``[tool.deptry]`` config.
Workspace members: checked here, because every member ships a part of the one ``defectloop``
namespace package and deptry resolves imports to top-level names only
(https://github.com/osprey-oss/deptry/issues/1528), so it cannot tell ``defectloop.common`` from
``defectloop.vision``. For each member, every ``defectloop.<pkg>`` it imports (lazy imports
included) must belong to itself or to a declared member, every declared member must be imported,
and the ``defectloop.common`` modules that need an extra must be imported with that extra declared.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MEMBER_DIRS = ("libs", "services", "tools")
# defectloop.common modules whose third-party imports live in an optional extra.
COMMON_MODULE_EXTRAS = {
    "service": "http",
    "http_errors": "http",
    "http_log_context": "http",
    "db": "db",
}
_REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)(?:\[(?P<extras>[^\]]*)\])?")


@dataclass(frozen=True)
class Member:
    path: Path
    name: str
    packages: frozenset[str]  # "common", "vision", ... (directories under src/defectloop)
    required: dict[str, frozenset[str]]  # member distribution -> extras, from [project] deps
    optional: frozenset[str]  # member distributions reachable only through an extra


def _workspace_requirements(specs: list[str]) -> dict[str, frozenset[str]]:
    found: dict[str, frozenset[str]] = {}
    for spec in specs:
        match = _REQUIREMENT.match(spec.strip())
        if match and match["name"].startswith("defectloop-"):
            extras = frozenset(e.strip() for e in (match["extras"] or "").split(",") if e.strip())
            found[match["name"]] = found.get(match["name"], frozenset()) | extras
    return found


def load_members(root: Path = ROOT) -> list[Member]:
    members = []
    for pyproject in sorted(p for d in MEMBER_DIRS for p in (root / d).glob("*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text())["project"]
        src = pyproject.parent / "src" / "defectloop"
        optional = {
            name
            for specs in project.get("optional-dependencies", {}).values()
            for name in _workspace_requirements(specs)
        }
        members.append(
            Member(
                path=pyproject.parent,
                name=project["name"],
                packages=frozenset(p.name for p in src.iterdir() if p.is_dir() and p.name != "__pycache__"),
                required=_workspace_requirements(project.get("dependencies", [])),
                optional=frozenset(optional - {project["name"]}),
            )
        )
    return members


def imported_modules(src: Path) -> set[tuple[str, str]]:
    """(package, module) pairs of every ``defectloop.<package>[.<module>]`` imported under src."""
    found: set[tuple[str, str]] = set()
    for file in src.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "defectloop" and len(parts) > 1:
                    found.add((parts[1], parts[2] if len(parts) > 2 else ""))
    return found


def workspace_problems(members: list[Member]) -> list[str]:
    owner = {package: m.name for m in members for package in m.packages}
    problems = []
    for member in members:
        imports = imported_modules(member.path / "src")
        used = {owner[p] for p, _ in imports if p in owner} - {member.name}
        unknown = sorted({p for p, _ in imports if p not in owner})
        rel = member.path.relative_to(member.path.parents[1])
        for package in unknown:
            problems.append(f"{rel}: imports defectloop.{package}, which no workspace member ships")
        for name in sorted(used - member.required.keys() - member.optional):
            problems.append(f"{rel}: imports {name} without declaring it in pyproject.toml")
        for name in sorted(member.required.keys() - used):
            problems.append(f"{rel}: declares {name} but never imports it")
        if member.name == "defectloop-common":
            continue
        declared_extras = member.required.get("defectloop-common", frozenset())
        for package, module in sorted(imports):
            extra = COMMON_MODULE_EXTRAS.get(module) if package == "common" else None
            if extra and extra not in declared_extras and not (
                extra == "db" and "postgres" in declared_extras
            ):
                problems.append(
                    f"{rel}: imports defectloop.common.{module}, which needs "
                    f"defectloop-common[{extra}]"
                )
    return problems


def deptry_args(member: Member) -> list[str]:
    """deptry's options for a member: ``defectloop`` is first-party (checked above), and the
    member's own ``[tool.deptry.per_rule_ignores]`` (each with its reason) stay in force."""
    config = tomllib.loads((member.path / "pyproject.toml").read_text())
    ignores: dict[str, list[str]] = {
        rule: list(names)
        for rule, names in config.get("tool", {}).get("deptry", {}).get("per_rule_ignores", {}).items()
    }
    # The workspace members (checked above) and a self-reference from one extra to another.
    ignores.setdefault("DEP002", []).extend(sorted({*member.required, *member.optional, member.name}))
    mapping = ",".join(f"{rule}={'|'.join(names)}" for rule, names in ignores.items() if names)
    args = ["src", "--no-ansi", "--known-first-party", "defectloop"]
    return [*args, "--per-rule-ignores", mapping] if mapping else args


def deptry_problems(members: list[Member]) -> list[str]:
    deptry = Path(sys.executable).parent / "deptry"
    problems = []
    for member in members:
        run = subprocess.run(
            [str(deptry), *deptry_args(member)],
            cwd=member.path,
            capture_output=True,
            text=True,
            check=False,
        )
        if run.returncode != 0:
            rel = member.path.relative_to(member.path.parents[1])
            output = (run.stdout + run.stderr).splitlines()
            lines = [ln for ln in output if re.search(r"DEP\d{3}", ln)]
            problems += [f"{rel}/{ln}" for ln in lines] or [f"{rel}: deptry failed: {run.stderr}"]
    return problems


def main() -> int:
    members = load_members()
    problems = workspace_problems(members) + deptry_problems(members)
    for problem in problems:
        print(problem)
    print(f"dependency check: {len(members)} members, {len(problems)} problems", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
