"""The library's layers: core < measure < train < report < the public surface (cli, trl, testing).

A module may import its own layer and the layers below it, never one above: so training never
depends on the report's wording, and measurement never on training. Checked on the source (every
import statement, at module level or inside a function), so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "relbudget"
RANK = {"core": 0, "measure": 1, "train": 2, "report": 3}
TOP = 4  # relbudget/*.py: the CLI, the TRL plug-in, test fixtures


def layer_of(module: str) -> int | None:
    """The rank of a relbudget module by dotted name (None outside relbudget)."""
    parts = module.split(".")
    if parts[0] != "relbudget":
        return None
    if len(parts) == 1:
        return TOP
    return RANK.get(parts[1], TOP)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every relbudget import in a source file, relative ones resolved."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # `from relbudget.report import plots` imports relbudget.report.plots
            out += [(node.lineno, f"{base}.{a.name}" if layer_of(f"{base}.{a.name}") is not None
                     and (PKG / Path(*f"{base}.{a.name}".split(".")[1:])).with_suffix(".py").exists()
                     else base) for a in node.names]
    return [(line, m) for line, m in out if layer_of(m) is not None]


def upward_imports(path: Path) -> list[str]:
    own = layer_of(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return [f"{path.relative_to(ROOT)}:{line} imports {m}" for line, m in imports_of(path)
            if layer_of(m) > own]


MODULES = sorted(PKG.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(ROOT)) for p in MODULES])
def test_no_layer_imports_a_higher_one(path):
    bad = upward_imports(path)
    assert not bad, "a lower layer imports a higher one:\n" + "\n".join(bad)


def test_every_module_lives_in_a_layer_or_is_public_surface():
    flat = sorted(p.name for p in PKG.glob("*.py"))
    assert flat == ["__init__.py", "cli.py", "cli_measure.py", "testing.py", "trl.py"], flat
    assert sorted(p.name for p in PKG.iterdir() if p.is_dir() and p.name != "__pycache__") == \
        sorted(RANK)


def test_the_check_catches_an_upward_import(tmp_path):
    """The checker itself: a core module importing the report layer is reported, by line."""
    fake = PKG / "core" / "_layer_probe.py"
    fake.write_text("import math\n\ndef f():\n    from relbudget.report import plots\n")
    try:
        assert upward_imports(fake) == [
            "relbudget/core/_layer_probe.py:4 imports relbudget.report.plots"]
    finally:
        fake.unlink()
