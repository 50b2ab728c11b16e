from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

CODE = """
import importlib, pkgutil, sys
import defectloop.vision as pkg
names = [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
for name in names:
    importlib.import_module(name)
print(len(names), "torch" in sys.modules)
"""


def test_importing_every_vision_module_leaves_torch_out() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, check=True, timeout=120
    )
    n_modules, torch_loaded = result.stdout.split()
    assert int(n_modules) >= 6
    assert torch_loaded == "False"
