"""The module's install plan (TMBRBLib/slicer/dependencies.py), decided without installing or importing anything:
MONAI pinned per Python, the matching torch requirement for the PyTorch extension, torch pinned for pip, one
question."""

from __future__ import annotations

import sys

import pytest

from TMBRBLib.slicer import dependencies as dep

INSTALLED_MONAI_TORCH = {"monai": "1.6.1", "safetensors": "0.4.5", "tqdm": "4.66.0", "psutil": "7.2.2",
                         "highdicom": "0.28.2"}


def versions(**found):
    return lambda name: found.get(name.replace("-", "_"))


def test_monai_is_pinned_per_python_and_torch_requirement_matches_it():
    py39 = dep.readRequirements(environment={"python_version": "3.9"})
    py311 = dep.readRequirements(environment={"python_version": "3.11"})
    monai39 = [r for r in py39 if dep.requirementName(r) == "monai"]
    monai311 = [r for r in py311 if dep.requirementName(r) == "monai"]
    assert len(monai39) == len(monai311) == 1, "exactly one MONAI line applies to each Python"
    assert "<1.6" in monai39[0] and "<1.7" in monai311[0]  # an upper bound: never an untested MONAI
    assert dep.torchRequirement(py39) == ">=2.4.1" and dep.torchRequirement(py311) == ">=2.8"
    assert "psutil>=5.9" in py39 and not any(dep.requirementName(r).lower() == "torch" for r in py39)


def test_highdicom_is_installed_for_the_dicom_export_where_the_tested_series_runs():
    """highdicom 0.28 (the tested series) needs Python >= 3.10: listed there, within its series; not on Slicer 5.8's
    Python 3.9, where the DICOM export says why instead (tests/engine/test_dicom_out.py)."""
    py39 = dep.readRequirements(environment={"python_version": "3.9"})
    py312 = dep.readRequirements(environment={"python_version": "3.12"})
    assert not [r for r in py39 if dep.requirementName(r) == "highdicom"]
    (line,) = [r for r in py312 if dep.requirementName(r) == "highdicom"]
    assert dep.satisfies("0.28.2", line) and not dep.satisfies("0.29.0", line) and not dep.satisfies("0.22.0", line)
    plan = dep.installPlan(version=versions(torch="2.9.0", **dict(INSTALLED_MONAI_TORCH, highdicom=None)),
                           environment={"python_version": "3.12"})
    assert [dep.requirementName(r) for r in plan.pip] == ["highdicom"] and "highdicom" in plan.message()


def test_an_unknown_monai_series_is_refused_rather_than_guessed(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("monai>=1.9\n")
    with pytest.raises(dep.TMBRBDependencyError, match="1.9"):
        dep.installPlan(req, versions())


def test_nothing_installed_gives_one_plan_for_torch_and_pip():
    plan = dep.installPlan(version=versions(), environment={"python_version": "3.11"})
    assert plan.torch == ">=2.8" and plan.torchInstalled is None
    assert {dep.requirementName(r) for r in plan.pip} == {"monai", "safetensors", "tqdm", "psutil", "highdicom"}
    text = plan.message()
    assert "torch>=2.8" in text and "monai" in text and text.count("Install now?") == 1
    # pip runs with torch pinned to what the PyTorch extension installed: MONAI never replaces it
    assert plan.pipArguments("2.9.1+cu128")[-1] == "torch==2.9.1+cu128"


def test_a_torch_too_old_for_monai_goes_through_the_pytorch_extension():
    plan = dep.installPlan(version=versions(torch="2.3.1+cu121", **INSTALLED_MONAI_TORCH),
                           environment={"python_version": "3.11"})
    assert plan.torch == ">=2.8" and plan.pip == [] and "found 2.3.1+cu121" in plan.message()


def test_everything_installed_gives_an_empty_plan():
    plan = dep.installPlan(version=versions(torch="2.13.0+cpu", **INSTALLED_MONAI_TORCH),
                           environment={"python_version": "3.11"})
    assert plan.empty and plan.pipArguments("2.13.0") == []


def test_one_question_then_torch_first_then_pip_with_torch_pinned(monkeypatch, tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text('monai>=1.6,<1.7\ntmbrb-no-such-package-xyz>=1.0\n')
    installed = {"monai": None, "torch": None}
    monkeypatch.setattr(dep, "installedVersion", lambda name: installed.get(name))
    calls, asked = [], []

    def installTorch(requirement):
        calls.append(("torch", requirement))
        installed["torch"] = "2.9.0+cu126"

    with pytest.raises(dep.TMBRBDependencyError, match="tmbrb-no-such-package-xyz"):  # pip 'installed' nothing
        dep.ensureDependencies(lambda m: asked.append(m) or True,
                               pipInstall=lambda reqs: calls.append(("pip", list(reqs))), requirementsFile=req,
                               installTorch=installTorch)
    assert len(asked) == 1, "one confirmation for torch and the pip packages together"
    assert calls == [("torch", ">=2.8"),
                     ("pip", ["monai>=1.6,<1.7", "tmbrb-no-such-package-xyz>=1.0", "torch==2.9.0+cu126"])]


def test_declined_or_no_question_installs_nothing(monkeypatch, tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("monai>=1.6,<1.7\n")
    monkeypatch.setattr(dep, "installedVersion", lambda name: None)
    calls = []
    for confirm in (lambda m: False, None):
        with pytest.raises(dep.TMBRBDependencyError, match=r"torch>=2\.8 \(through the PyTorch extension\)"):
            dep.ensureDependencies(confirm, pipInstall=calls.append, requirementsFile=req, installTorch=calls.append)
    assert calls == []


def test_presence_of_torch_is_found_without_importing_it():
    before = "torch" in sys.modules
    dep.torchAvailable()
    dep.installPlan()
    assert ("torch" in sys.modules) == before
