"""The test suite's own structure: a test module never imports another test module (nor
conftest.py); what several modules share lives in tests/helpers.py (tiny sizes, params files,
a pre-trained policy, process helpers) or tests/synth.py (synthetic rollout tables), and the tiny
sizes are defined there once each.

Importing a test module runs its module-level code and, under pytest, can collect its tests a
second time; a shared value defined in one test module drifts from its copies in others.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
MODULES = sorted(TESTS.glob("*.py"))
TEST_MODULE = re.compile(r"^(tests\.)?(test_\w+|conftest)$")


def imported_test_modules(source: str) -> list[str]:
    """`line: module` for each import of a test module or conftest in a source text (at module
    level or inside a function; `from tests import test_x` included)."""
    out = []
    for node in sorted((n for n in ast.walk(ast.parse(source)) if hasattr(n, "lineno")),
                       key=lambda n: n.lineno):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            base = node.module or ""
            names = [base] + ([f"{base}.{a.name}" for a in node.names] if base == "tests" else [])
        elif isinstance(node, ast.ImportFrom):  # relative: `from . import test_x`, `from .test_x`
            names = [node.module or ""] + [a.name for a in node.names]
        else:
            continue
        out += [f"{node.lineno}: {n}" for n in names if TEST_MODULE.match(n)]
    return out


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_no_module_imports_a_test_module(path):
    bad = imported_test_modules(path.read_text())
    assert not bad, (f"tests/{path.name} imports a test module (move what it needs to "
                     f"tests/helpers.py, or make it a conftest.py fixture): {', '.join(bad)}")


def test_the_tiny_sizes_are_defined_once_in_helpers():
    """TINY_PARAMS, TINY_FLOW_PARAMS, TINY_TRAIN: module-level names starting with TINY are
    assigned in tests/helpers.py only."""
    where = {}
    for path in MODULES:
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, ast.AnnAssign) else [])
            for t in targets:
                if isinstance(t, ast.Name) and t.id.startswith("TINY"):
                    where.setdefault(t.id, []).append(path.name)
    assert where and all(files == ["helpers.py"] for files in where.values()), where


def test_the_check_catches_each_form_of_import():
    source = ("import tests.test_flow\n"
              "from tests.test_train import TINY\n"
              "from tests import test_flow, helpers\n"
              "from tests.conftest import ROOT\n"
              "def f():\n    from test_train import x\n"
              "from .test_cli import y\n"
              "from tests.helpers import TINY_TRAIN\n"
              "from tests.synth import make_rollouts\n")
    assert imported_test_modules(source) == [
        "1: tests.test_flow", "2: tests.test_train", "3: tests.test_flow", "4: tests.conftest",
        "6: test_train", "7: test_cli"]
