"""Every exception class defectloop defines sits under the one root, ``DefectloopError``.

A source scan (no imports: torch and friends stay unloaded): a class whose base is a built-in
exception type is allowed only for the root itself. Subclassing a foreign library's exception is
caught the same way when that base is named like a built-in (``Exception``, ``ValueError``...).
"""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
BUILTIN_EXCEPTIONS = frozenset(
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
)


def _sources() -> list[Path]:
    return [
        path
        for group in ("libs", "services", "tools")
        for path in sorted((ROOT / group).glob("*/src/defectloop/**/*.py"))
    ]


def _base_names(node: ast.ClassDef) -> set[str]:
    return {
        base.id if isinstance(base, ast.Name) else base.attr
        for base in node.bases
        if isinstance(base, ast.Name | ast.Attribute)
    }


def test_the_scan_sees_the_workspace() -> None:
    assert ROOT / "libs/common/src/defectloop/common/errors.py" in _sources()


def test_no_exception_class_bypasses_the_root() -> None:
    outside = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"
        for path in _sources()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
        if isinstance(node, ast.ClassDef)
        and _base_names(node) & BUILTIN_EXCEPTIONS
        and node.name != "DefectloopError"
    ]
    assert outside == []
