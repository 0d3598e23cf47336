"""Static checks of the module that can fail: UI names, parameter bindings, Python 3.9 syntax, packaging."""

from __future__ import annotations

import ast
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "TMBRBModule"
TMBRB_PY = MODULE / "TMBRB.py"
SLICER_PKG = MODULE / "TMBRBLib" / "slicer"
PARAMETERS_PY = SLICER_PKG / "parameters.py"
UI = MODULE / "Resources" / "UI" / "TMBRB.ui"

# widget classes parameterNodeWrapper can bind, per parameter type
BINDABLE = {
    "node": {"qMRMLNodeComboBox", "qMRMLSubjectHierarchyComboBox"},
    "bool": {"QCheckBox", "QPushButton"},
    "int": {"QSpinBox", "QSlider", "QComboBox"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget", "ctkDoubleSpinBox"},
    "str": {"QLineEdit", "QComboBox", "QTextEdit"},
}


def ui_widgets():
    root = ET.parse(UI).getroot()
    widgets = {w.get("name"): w for w in root.iter("widget")}
    return root, widgets


def parameter_types():
    """{name: kind} from the annotations of TMBRBParameterNode (parsed, not imported)."""
    tree = ast.parse(PARAMETERS_PY.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TMBRBParameterNode")
    out = {}
    for st in cls.body:
        if isinstance(st, ast.AnnAssign):
            ann = ast.unparse(st.annotation)
            base = re.sub(r"^Annotated\[([^,\]]+).*$", r"\1", ann).strip()
            out[st.target.id] = "node" if base.startswith("vtkMRML") else base
    return out


def test_every_ui_name_used_in_code_exists():
    _, widgets = ui_widgets()
    used = set(re.findall(r"self\.ui\.([A-Za-z_][A-Za-z0-9_]*)", TMBRB_PY.read_text()))
    assert used, "the widget uses no self.ui.<name>: the check would be empty"
    missing = sorted(used - set(widgets))
    assert not missing, f"TMBRB.py uses widgets that are not in {UI.name}: {missing}"


def test_every_parameter_has_a_bound_widget_of_a_fitting_class():
    _, widgets = ui_widgets()
    bound = {}
    for name, w in widgets.items():
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound.setdefault(prop.find("string").text, []).append((name, w.get("class")))
    params = parameter_types()
    assert len(params) >= 11
    for p, kind in params.items():
        assert p in bound, f"parameter '{p}' has no widget with SlicerParameterName='{p}' in the .ui"
        assert len(bound[p]) == 1, f"parameter '{p}' is bound to several widgets: {bound[p]}"
        widget, klass = bound[p][0]
        assert klass in BINDABLE[kind], f"'{p}' ({kind}) is bound to {widget} ({klass}), which cannot represent it"
    stray = set(bound) - set(params)
    assert not stray, f"widgets bound to parameters that do not exist: {stray}"


def test_node_selectors_accept_the_parameter_node_class():
    _, widgets = ui_widgets()
    tree = ast.parse(PARAMETERS_PY.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TMBRBParameterNode")
    node_types = {st.target.id: ast.unparse(st.annotation) for st in cls.body
                  if isinstance(st, ast.AnnAssign) and ast.unparse(st.annotation).startswith("vtkMRML")}
    for w in widgets.values():
        props = {p.get("name"): p for p in w.findall("property")}
        if "SlicerParameterName" not in props:
            continue
        pname = props["SlicerParameterName"].find("string").text
        if pname in node_types:
            types = [s.text for s in props["nodeTypes"].find("stringlist").findall("string")]
            assert types == [node_types[pname]], f"{w.get('name')} lists {types}, parameter is {node_types[pname]}"


def test_mrml_widgets_get_the_scene():
    root, widgets = ui_widgets()
    receivers = {c.find("receiver").text for c in root.iter("connection")
                 if c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)"}
    mrml = {n for n, w in widgets.items() if w.get("class", "").startswith("qMRML") and n != "TMBRB"}
    assert mrml - receivers == set(), f"MRML widgets without setMRMLScene connection: {mrml - receivers}"


@pytest.mark.parametrize("path", [TMBRB_PY] + sorted(SLICER_PKG.glob("*.py")), ids=lambda p: p.name)
def test_python39_syntax(path):
    src = path.read_text()
    tree = ast.parse(src, feature_version=(3, 9))  # fails on match statements, parenthesised context managers...
    # annotations are evaluated by parameterNodeWrapper (get_type_hints) -> no PEP 604 unions in them on 3.9
    for node in ast.walk(tree):
        ann = getattr(node, "annotation", None) if isinstance(node, (ast.AnnAssign, ast.arg)) else None
        if ann is not None and path.name in ("TMBRB.py", "parameters.py"):
            assert not any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(ann)), \
                f"{path.name}:{node.lineno}: 'X | Y' annotation fails at runtime on Python 3.9"
    assert "from __future__ import annotations" in src
    compile(src, str(path), "exec")


def test_core_library_files_import_slicer_only_lazily():
    for name in ("mrml.py", "runner.py"):
        tree = ast.parse((SLICER_PKG / name).read_text())
        for node in tree.body:  # module level only
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(m.split(".")[0] in ("slicer", "vtk", "qt", "ctk", "vtkmodules") for m in mods), \
                    f"{name} imports {mods} at module level"
    tree = ast.parse((SLICER_PKG / "runner.py").read_text())
    assert "slicer" not in {n.names[0].name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)}


@pytest.mark.parametrize("path", [TMBRB_PY] + sorted(SLICER_PKG.glob("*.py")), ids=lambda p: p.name)
def test_module_imports_no_torch_at_import_time(path):
    """Dependencies are installed on first Apply: the module and its MRML side must not import torch/monai at
    module level."""
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not any(m.split(".")[0] in ("torch", "monai", "safetensors") for m in mods), mods
            assert not any(m.split(".")[-1] in ("pipeline", "bundle", "model", "cam") for m in mods), mods


def test_cmake_lists_existing_files_and_tests():
    text = (MODULE / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in text and "WITH_GENERIC_TESTS" in text
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    assert "Resources/models/*" in text  # the bundle is installed with the module
    for res in ("Resources/Icons/${MODULE_NAME}.png", "Resources/UI/${MODULE_NAME}.ui", "Resources/requirements.txt"):
        assert res in text
        assert (MODULE / res.replace("${MODULE_NAME}", "TMBRB")).is_file(), res
    top = (REPO / "CMakeLists.txt").read_text()
    assert re.search(r'set\(EXTENSION_DEPENDS\s+"?PyTorch"?\)', top)
    assert "add_subdirectory(TMBRBModule)" in top


def test_extension_descriptions_agree():
    s4ext = dict(line.split(" ", 1) for line in (REPO / "TMBRB.s4ext").read_text().splitlines()
                 if line.strip() and not line.startswith("#") and " " in line)
    catalog = json.loads((REPO / "TMBRB.json").read_text())
    top = (REPO / "CMakeLists.txt").read_text()
    category = re.search(r'set\(EXTENSION_CATEGORY "([^"]+)"\)', top).group(1)
    assert s4ext["category"].strip() == catalog["category"] == category
    assert s4ext["depends"].strip() == "PyTorch" and catalog["build_dependencies"] == ["PyTorch"]
    assert s4ext["scmurl"].strip() == catalog["scm_url"]
    # the repository is one setting: CMake's TMBRB_REPOSITORY_URL, repeated in the two files the index reads as is
    repository = re.search(r'set\(TMBRB_REPOSITORY_URL "([^"]+)"', top).group(1)
    assert catalog["scm_url"] == repository + ".git" and s4ext["homepage"].strip() == repository + "#readme"
    assert s4ext["iconurl"].strip() == repository + "/raw/main/Resources/Icons/TMBRB.png"
    assert '"${TMBRB_RAW_URL}/Resources/Icons/TMBRB.png"' in top
    cmake_shots = re.search(r'set\(EXTENSION_SCREENSHOTURLS "([^"]*)"\)', top).group(1).split()
    assert [u.replace("${TMBRB_RAW_URL}", repository + "/raw/main") for u in cmake_shots] == s4ext["screenshoturls"].split()
    # the catalog schema forbids fields that live only in CMake
    assert set(catalog) <= {"$schema", "build_dependencies", "build_subdirectory", "category", "enabled",
                            "scm_revision", "scm_type", "scm_url", "tier"}


def catalogue_files():
    """The repository files the catalogue's icon and screenshot URLs name (the part after <repository>/raw/main/)."""
    top = (REPO / "CMakeLists.txt").read_text()
    urls = [re.search(r'set\(EXTENSION_ICONURL "([^"]+)"\)', top).group(1)]
    urls += re.search(r'set\(EXTENSION_SCREENSHOTURLS "([^"]*)"\)', top).group(1).split()
    assert all(u.startswith("${TMBRB_RAW_URL}/") for u in urls), urls
    return [REPO / u[len("${TMBRB_RAW_URL}/"):] for u in urls]


def test_catalogue_icon_and_screenshots_are_real_pngs_of_plausible_size():
    import numpy as np
    from PIL import Image

    icon, *shots = catalogue_files()
    assert icon.parent == REPO / "Resources" / "Icons" and len(shots) >= 2, (icon, shots)
    for path in [icon] + shots:
        assert path.is_file(), f"{path} is listed in CMakeLists.txt but missing"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
        assert 2_000 < path.stat().st_size < 300_000, (path, path.stat().st_size)
        with Image.open(path) as img:
            img.load()  # a truncated or corrupt file fails here
            size, pixels = img.size, np.asarray(img.convert("RGB")).reshape(-1, 3)
        colours = len(np.unique(pixels, axis=0))
        assert colours > 50, f"{path} is nearly blank ({colours} colours)"
        if path == icon:
            assert size == (128, 128), size  # the Extensions Index's icon size
        else:
            assert 300 <= size[0] <= 1600 and 200 <= size[1] <= 1200, (path, size)


def test_requirements_never_replace_slicers_own_packages():
    import TMBRB  # noqa: F401 - imported via conftest's sys.path

    lines = [l.split("#")[0].strip() for l in (MODULE / "Resources" / "requirements.txt").read_text().splitlines()]
    names = {re.split(r"[<>=!~ ]", l)[0].lower() for l in lines if l}
    assert names and not names & {"numpy", "simpleitk", "vtk", "torch"}
    assert "monai" in names


def test_help_text_has_citation_and_research_use_notice():
    src = TMBRB_PY.read_text()
    assert "10.1136/jitc-2020-000550" in src
    assert "Research use only" in src


@pytest.mark.parametrize("path", [TMBRB_PY] + sorted(SLICER_PKG.glob("*.py")), ids=lambda p: p.name)
def test_no_undefined_or_unused_names(path):
    """The widget and the self-test run only inside the 3D Slicer application, which these machines cannot run:
    pyflakes catches what running them would (an undefined name such as a missing `import qt`)."""
    pyflakes_api = pytest.importorskip("pyflakes.api")
    from pyflakes.reporter import Reporter
    import io

    out, err = io.StringIO(), io.StringIO()
    count = pyflakes_api.check(path.read_text(encoding="utf-8"), str(path), Reporter(out, err))
    assert count == 0, out.getvalue() + err.getvalue()


# ----------------------------------------------------------------------------------------------------------------------
# no dialog while the polling timer runs (issue 12): a modal dialog runs a nested event loop in which the QTimer fires
# again, so one failed run would stack a dialog on every tick

DIALOG_CALLS = re.compile(r"^(slicer\.util\.(errorDisplay|warningDisplay|infoDisplay|messageBox|confirm\w*|"
                          r"tryWithErrorDisplay|delayDisplay)|qt\.(QMessageBox|QInputDialog|QFileDialog|QDialog)\b.*|"
                          r"ctk\.ctkMessageBox.*)$")


def _widget_methods(tree: ast.Module) -> dict:
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TMBRBWidget")
    return {f.name: f for f in cls.body if isinstance(f, ast.FunctionDef)}


def _polling_entries(methods: dict) -> dict:
    """{method: the timer that calls it}: methods connected to a QTimer's timeout(), and the JobWatcher callbacks
    (on*=self.method keyword arguments; the JobWatcher is driven by the job timer, self._timer)."""
    entries = {}
    for f in methods.values():
        for node in ast.walk(f):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            if name.endswith(".connect") and node.args and ast.unparse(node.args[0]) == "'timeout()'":
                entries[ast.unparse(node.args[1]).replace("self.", "")] = name[:-len(".connect")]
            if name == "JobWatcher":
                entries.update({ast.unparse(k.value).replace("self.", ""): "self._timer" for k in node.keywords
                                if k.arg and k.arg.startswith("on") and ast.unparse(k.value).startswith("self.")})
    return entries


def _events(f: ast.FunctionDef, timer: str):
    """(line, col, kind, name) of the stops of `timer`, the dialog calls and the self.method calls of a function, in
    source order (a stop counts for everything after it in the function, whatever block it is in: the code stops
    the timer at the top of a handler)."""
    out = []
    for node in ast.walk(f):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            kind = ("stop" if name == f"{timer}.stop" else "dialog" if DIALOG_CALLS.match(name)
                    else "call" if name.startswith("self.") and name.count(".") == 1 else None)
            if kind:
                out.append((node.lineno, node.col_offset, kind, name))
    return sorted(out)


def _stops_first(methods: dict, name: str, timer: str, seen=()) -> bool:
    """Whether calling method `name` stops the timer before anything else it calls."""
    if name not in methods or name in seen:
        return False
    for _l, _c, kind, callee in _events(methods[name], timer):
        if kind == "stop":
            return True
        if kind == "call" and _stops_first(methods, callee[5:], timer, seen + (name,)):
            return True
        if kind == "dialog":
            return False
    return False


def dialogs_while_polling(source: str):
    """[(method, line, dialog call)] for every dialog reachable from a polling timer before that timer is stopped;
    the polling entry points found ({method: timer}); the methods visited."""
    methods = _widget_methods(ast.parse(source))
    entries = _polling_entries(methods)
    bad, visited = [], set()

    def walk(name, timer, seen):
        if (name, timer) in seen or name not in methods:
            return
        seen.add((name, timer))
        visited.add(name)
        for line, _c, kind, callee in _events(methods[name], timer):
            if kind == "stop" or (kind == "call" and _stops_first(methods, callee[5:], timer)):
                return  # everything after this runs with the timer stopped
            if kind == "dialog":
                bad.append((name, line, callee))
            elif kind == "call":
                walk(callee[5:], timer, seen)

    for entry, timer in sorted(entries.items()):
        walk(entry, timer, set())
    return bad, entries, visited


def test_no_dialog_is_reachable_from_the_polling_timer_before_it_is_stopped():
    bad, entries, visited = dialogs_while_polling(TMBRB_PY.read_text())
    assert {"onPollJob", "onJobProgress", "onJobResult", "onJobError", "onJobCancelled"} <= set(entries)
    assert entries["onPollJob"] == "self._timer" and entries["onPollDevice"] == "self._deviceTimer"
    assert {"onPollJob", "onJobProgress", "onJobError", "onPollDevice"} <= visited
    assert bad == [], f"dialogs reachable from the polling timer while it runs: {bad}"


@pytest.mark.parametrize("breakage", ["dialog-before-stop", "dialog-in-progress", "dialog-in-helper"])
def test_the_dialog_check_catches_a_broken_widget(breakage):
    src = TMBRB_PY.read_text()
    if breakage == "dialog-before-stop":  # the old bug: the dialog first, then the timer stopped
        broken = src.replace("    def onJobError(self, error: Exception) -> None:\n",
                             "    def onJobError(self, error: Exception) -> None:\n"
                             "        slicer.util.errorDisplay(str(error))\n", 1)
    elif breakage == "dialog-in-progress":
        broken = src.replace("    def onJobProgress(self, fraction: float, message: str) -> None:\n",
                             "    def onJobProgress(self, fraction: float, message: str) -> None:\n"
                             "        qt.QMessageBox.warning(None, 'TMBRB', message)\n", 1)
    else:  # a helper called before the stop opens a dialog
        broken = src.replace("    def onPollDevice(self) -> None:\n",
                             "    def onPollDevice(self) -> None:\n        self._ask()\n", 1)
        broken = broken.replace("    def updateDevice(self) -> None:\n",
                                "    def _ask(self):\n        slicer.util.confirmYesNoDisplay('?')\n\n"
                                "    def updateDevice(self) -> None:\n", 1)
    assert broken != src, "the breakage did not apply: update the test to the widget's code"
    bad, _entries, _visited = dialogs_while_polling(broken)
    assert bad, f"the check missed a dialog in the polling path ({breakage})"


def test_cleanup_stops_every_timer_and_the_module_declares_its_dependencies():
    tree = ast.parse(TMBRB_PY.read_text())
    methods = _widget_methods(tree)
    timers = {ast.unparse(n.targets[0]) for n in ast.walk(methods["setup"])
              if isinstance(n, ast.Assign) and ast.unparse(n.value) == "qt.QTimer()"}
    assert {"self._timer", "self._deviceTimer"} <= timers
    cleanup = ast.unparse(methods["cleanup"])
    for timer in timers:  # stopped by name or in a loop over the timers
        assert f"{timer}.stop()" in cleanup or (timer in cleanup and "timer.stop()" in cleanup), timer
    module = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TMBRB")
    deps = next(n.value for n in ast.walk(module) if isinstance(n, ast.Assign)
                and ast.unparse(n.targets[0]) == "self.parent.dependencies")
    assert set(ast.literal_eval(deps)) == {"Markups", "Segmentations", "VolumeRendering", "Colors"}
