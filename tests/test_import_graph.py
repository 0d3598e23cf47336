"""Data flows one way: the core library never reaches for 3D Slicer, Qt, training or the browser viewer.

- Nothing under TMBRBLib/ outside TMBRBLib/slicer/ imports slicer, VTK/MRML, qt, ctk or trame, at module level or
  inside a function.
- Nothing under TMBRBLib/ (slicer/ included) imports training/ or tmbrb_viewer/.
- Importing every core module in a fresh interpreter loads none of those packages.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "TMBRBModule" / "TMBRBLib"
SLICER_PKG = LIB / "slicer"
GUI_OR_MRML = {"slicer", "qt", "ctk", "vtk", "vtkmodules", "mrml", "trame", "trame_slicer", "PythonQt"}
FRONT_DOORS_AND_TRAINING = {"training", "tmbrb_viewer"}


def module_name(path: Path) -> str:
    rel = path.relative_to(LIB.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path):
    """(line, absolute module name) of every import in the file, relative ones resolved, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base)
                targets = [f"{prefix}.{node.module}"] if node.module else [f"{prefix}.{a.name}" for a in node.names]
            else:
                targets = [node.module]
            for t in targets:
                yield node.lineno, t


def core_files():
    return sorted(p for p in LIB.rglob("*.py") if SLICER_PKG not in p.parents)


def test_the_check_sees_the_imports_it_must_judge():
    """The parser resolves relative imports as Python does (a check that finds nothing would pass by itself)."""
    mods = {m for _, m in imported_modules(SLICER_PKG / "logic.py")}
    assert {"slicer", "TMBRBLib.errors", "TMBRBLib.slicer.mrml", "TMBRBLib.slicer.parameters"} <= mods
    assert "TMBRBLib.pipeline" in {m for _, m in imported_modules(LIB / "cli.py")}
    assert len(core_files()) > 30


@pytest.mark.parametrize("path", core_files(), ids=lambda p: str(p.relative_to(LIB)))
def test_core_imports_no_slicer_gui_training_or_viewer(path):
    bad = []
    for line, mod in imported_modules(path):
        top = mod.split(".")[0]
        if top in GUI_OR_MRML | FRONT_DOORS_AND_TRAINING or mod.startswith("TMBRBLib.slicer"):
            bad.append(f"line {line}: {mod}")
    assert not bad, f"{path.relative_to(REPO)} imports what the core must not: {bad}"


@pytest.mark.parametrize("path", sorted(SLICER_PKG.rglob("*.py")), ids=lambda p: p.name)
def test_mrml_side_imports_no_gui_training_or_viewer(path):
    bad = [f"line {line}: {mod}" for line, mod in imported_modules(path)
           if mod.split(".")[0] in {"qt", "ctk", "PythonQt"} | FRONT_DOORS_AND_TRAINING]
    assert not bad, f"{path.relative_to(REPO)} imports Qt/CTK, training or the viewer: {bad}"


def test_importing_every_core_module_loads_no_slicer_training_or_viewer():
    names = [module_name(p) for p in core_files() if p.name != "__main__.py"]  # __main__ runs the command line
    code = (
        "import importlib, json, sys\n"
        f"for n in {names!r}:\n"
        "    importlib.import_module(n)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(GUI_OR_MRML | FRONT_DOORS_AND_TRAINING)!r}"
        " or m.startswith('TMBRBLib.slicer'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=str(REPO / "TMBRBModule"))
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing the core loaded {loaded}"
