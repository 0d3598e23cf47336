"""The Python packages the engine needs inside 3D Slicer, installed on the first Apply (never at import), after asking.

PyTorch comes through the PyTorch extension (``PyTorchUtils``), which matches it to the computer's GPU and CUDA, with
the version requirement of the MONAI series pinned in ``Resources/requirements.txt``; the other packages come from
PyPI, with torch pinned to the installed version so that pip never replaces it. One confirmation covers both. Slicer's
own numpy, SimpleITK and VTK are never replaced, and torch is never imported into Slicer's process to test for it.
"""

from __future__ import annotations

import re
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

from ..errors import TMBRBError

MODULE_DIR = Path(__file__).resolve().parents[2]  # TMBRBModule/
REQUIREMENTS_FILE = MODULE_DIR / "Resources" / "requirements.txt"
# the torch that each tested MONAI series needs (its own Requires-Dist): passed to PyTorchUtils' installTorch as
# torchVersionRequirement, so the PyTorch extension picks a torch that MONAI accepts and pip never replaces it
MONAI_TORCH = {"1.5": ">=2.4.1", "1.6": ">=2.8"}
TORCH_REQUIREMENT = ">=2.4.1"  # the lowest of MONAI_TORCH (no MONAI line applies: this is passed)
PROTECTED_PACKAGES = {"numpy", "simpleitk", "vtk", "torch", "torchvision", "torchaudio"}

Confirm = Optional[Callable[[str], bool]]


class TMBRBDependencyError(TMBRBError):
    """A Python package the engine needs is missing and was not installed."""


def _(text: str) -> str:
    """Slicer's translation function where it exists (inside the application), else the text itself."""
    try:
        from slicer.i18n import tr
    except ImportError:
        return text
    return tr(text)


def requirementName(req: str) -> str:
    """The distribution name of a requirement line (``monai>=1.3`` -> ``monai``)."""
    return re.split(r"[<>=!~;\[ ]", req, 1)[0].strip()


def appliesHere(req: str, environment: Optional[Dict[str, str]] = None) -> bool:
    """Whether a requirement line's environment marker (``; python_version < "3.10"``) holds for this Python (or
    for ``environment``, e.g. {"python_version": "3.9"}). Lines without a marker always apply."""
    if ";" not in req:
        return True
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - Slicer and pip ship 'packaging'
        return True
    marker = Requirement(req).marker
    return marker is None or marker.evaluate(environment)


def readRequirements(path: Optional[Path] = None, environment: Optional[Dict[str, str]] = None) -> List[str]:
    """Requirement lines of Resources/requirements.txt that apply to this Python, without Slicer's own packages
    (never replaced) and torch (installed through the PyTorch extension)."""
    reqs = []
    for line in Path(path or REQUIREMENTS_FILE).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and requirementName(line).lower() not in PROTECTED_PACKAGES and appliesHere(line, environment):
            reqs.append(line)
    return reqs


def torchRequirement(requirements: Sequence[str]) -> str:
    """The torch version requirement for PyTorchUtils that matches the MONAI line among ``requirements``: the torch
    that MONAI series needs (:data:`MONAI_TORCH`). Raises TMBRBDependencyError for a MONAI series not listed there
    (untested: its torch requirement is unknown)."""
    for req in requirements:
        if requirementName(req).lower() == "monai":
            m = re.search(r">=\s*(\d+)\.(\d+)", req.split(";", 1)[0])
            series = f"{m.group(1)}.{m.group(2)}" if m else None
            if series not in MONAI_TORCH:
                raise TMBRBDependencyError(f"The requirement '{req}' names a MONAI series whose torch requirement "
                                           "is not known (dependencies.MONAI_TORCH).")
            return MONAI_TORCH[series]
    return TORCH_REQUIREMENT


def installedVersion(name: str) -> Optional[str]:
    """The installed version of a distribution (from its metadata: nothing is imported), or None."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def satisfies(version: Optional[str], req: str) -> bool:
    """Whether an installed version meets a requirement line (or a bare specifier such as '>=2.8'); a missing
    package never does. Without 'packaging', presence is enough."""
    if version is None:
        return False
    try:
        from packaging.requirements import Requirement
        from packaging.specifiers import SpecifierSet

        spec = SpecifierSet(req) if req[:1] in "<>=!~" else Requirement(req).specifier
        return not spec or spec.contains(version.split("+", 1)[0], prereleases=True)
    except Exception:  # noqa: BLE001 - no 'packaging': presence is enough
        return True


def missingRequirements(requirements: Sequence[str], version: Callable[[str], Optional[str]] = None) -> List[str]:
    """The requirements that are not installed (or not in the required range)."""
    version = version or installedVersion
    return [req for req in requirements if not satisfies(version(requirementName(req)), req)]


def torchAvailable() -> bool:
    """Whether PyTorch is installed (found, not imported: importing it into Slicer's process takes seconds and
    memory; the engine runs in its own process)."""
    from importlib.util import find_spec

    return find_spec("torch") is not None


@dataclass
class InstallPlan:
    """What has to be installed before the engine can run, decided without installing or importing anything.

    ``torch``: the torchVersionRequirement for PyTorchUtils when torch is missing or outside it, else None.
    ``pip``: the requirement lines for pip (plus, when they are not empty, ``torch==<installed>`` so that pip keeps
    the torch the PyTorch extension chose). ``torchInstalled``: the torch version found (None: not installed).
    """

    torch: Optional[str]
    pip: List[str]
    torchInstalled: Optional[str] = None

    @property
    def empty(self) -> bool:
        return self.torch is None and not self.pip

    def pipArguments(self, torchVersion: Optional[str]) -> List[str]:
        """The pip requirement lines, with torch pinned to ``torchVersion`` (the one installed when pip runs)."""
        return list(self.pip) + ([f"torch=={torchVersion}"] if self.pip and torchVersion else [])

    def message(self) -> str:
        """The one question asked before installing."""
        parts = []
        if self.torch is not None:
            what = "PyTorch" if self.torchInstalled is None else f"a newer PyTorch (found {self.torchInstalled})"
            parts.append(_("{what} (torch{req}) through the PyTorch extension, matched to this computer's GPU "
                           "(a large download)").format(what=what, req=self.torch))
        if self.pip:
            parts.append(_("these Python packages from PyPI: {packages} (Slicer's own numpy and SimpleITK, and "
                           "the installed PyTorch, are left as they are)").format(packages=", ".join(self.pip)))
        return _("TMBRB needs {things}. Install now?").format(things="; and ".join(parts))


def installPlan(requirementsFile: Optional[Path] = None, version: Callable[[str], Optional[str]] = None,
                environment: Optional[Dict[str, str]] = None) -> InstallPlan:
    """What :func:`ensureDependencies` would install, for this Python (or ``environment``) and the installed
    versions (``version(name)``, default from the packages' metadata).

    Examples
    --------
    >>> plan = installPlan(version=lambda name: None, environment={"python_version": "3.9"})
    >>> plan.torch, [r.split(";")[0] for r in plan.pip if r.startswith("monai")]
    ('>=2.4.1', ['monai>=1.5,<1.6'])
    """
    version = version or installedVersion
    reqs = readRequirements(requirementsFile, environment)
    torchReq = torchRequirement(reqs)
    torchVersion = version("torch")
    return InstallPlan(torch=None if satisfies(torchVersion, torchReq) else torchReq,
                       pip=missingRequirements(reqs, version), torchInstalled=torchVersion)


def pipInstall(requirements: Sequence[str]) -> None:
    """Install requirement lines with Slicer's pip (``slicer.packaging.pip_ensure`` from Slicer 5.12 on)."""
    import slicer

    packaging = getattr(slicer, "packaging", None)
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        packaging.pip_ensure(list(requirements))
    else:
        slicer.util.pip_install(" ".join(f'"{r}"' for r in requirements))


def installTorch(torchVersionRequirement: str) -> None:
    """Install PyTorch through the PyTorch extension (no question: :func:`ensureDependencies` asked already)."""
    try:
        import PyTorchUtils  # the PyTorch extension
    except ImportError:
        raise TMBRBDependencyError(
            "PyTorch is not installed (or too old) and the PyTorch extension is missing. Install the 'PyTorch' "
            "extension from the Extensions Manager, restart Slicer and run again.") from None
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=torchVersionRequirement) is None:
        raise TMBRBDependencyError("Installing PyTorch failed; see the PyTorch Util module.")


def ensureDependencies(confirm: Confirm = None, pipInstall: Callable[[Sequence[str]], None] = pipInstall,
                       requirementsFile: Optional[Path] = None,
                       installTorch: Callable[[str], None] = installTorch) -> None:
    """Install what the engine needs after one confirmation. Raises TMBRBDependencyError when missing and declined.

    ``confirm(message) -> bool`` asks the user; None means 'do not install' (batch: a clear exception instead).
    torch comes first, through the PyTorch extension with the torch requirement of the MONAI series in
    requirements.txt; then pip, with torch pinned to the version now installed."""
    plan = installPlan(requirementsFile)
    if plan.empty:
        return
    if confirm is None or not confirm(plan.message()):
        missing = ([f"torch{plan.torch} (through the PyTorch extension)"] if plan.torch else []) + plan.pip
        raise TMBRBDependencyError(
            "Missing Python packages: " + ", ".join(missing) + ". Install them (Apply asks to do it; from the "
            "Python console: slicer.util.pip_install('" + " ".join(plan.pip) + "')) and run again.")
    if plan.torch is not None:
        installTorch(plan.torch)
        import importlib

        importlib.invalidate_caches()
    torchVersion = installedVersion("torch")
    if plan.torch is not None and not satisfies(torchVersion, plan.torch):
        raise TMBRBDependencyError(f"PyTorch torch{plan.torch} is needed, found {torchVersion}; install it in the "
                                   "PyTorch Util module and run again.")
    if plan.pip:
        pipInstall(plan.pipArguments(torchVersion))
        still = missingRequirements(plan.pip)
        if still:
            raise TMBRBDependencyError("Installing " + ", ".join(still) + " failed; see the Python console log.")
