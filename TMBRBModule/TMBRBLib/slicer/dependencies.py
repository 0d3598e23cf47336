"""The Python packages the engine needs inside 3D Slicer, installed on the first Apply (never at import), after asking.

PyTorch comes through the PyTorch extension (``PyTorchUtils``), which matches it to the computer's GPU and CUDA; the
other packages (``Resources/requirements.txt``) come from PyPI. Slicer's own numpy, SimpleITK and VTK are never
replaced.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from ..errors import TMBRBError

MODULE_DIR = Path(__file__).resolve().parents[2]  # TMBRBModule/
REQUIREMENTS_FILE = MODULE_DIR / "Resources" / "requirements.txt"
TORCH_REQUIREMENT = ">=2.1"  # as pyproject.toml; passed to PyTorchUtils' installTorch
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


def readRequirements(path: Optional[Path] = None) -> List[str]:
    """Requirement lines of Resources/requirements.txt, without Slicer's own packages (never replaced) and torch
    (installed through the PyTorch extension)."""
    reqs = []
    for line in Path(path or REQUIREMENTS_FILE).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and requirementName(line).lower() not in PROTECTED_PACKAGES:
            reqs.append(line)
    return reqs


def missingRequirements(requirements: Sequence[str]) -> List[str]:
    """The requirements that are not installed (or too old, when 'packaging' can tell)."""
    from importlib import metadata

    missing = []
    for req in requirements:
        try:
            installed = metadata.version(requirementName(req))
        except metadata.PackageNotFoundError:
            missing.append(req)
            continue
        try:
            from packaging.requirements import Requirement

            spec = Requirement(req).specifier
            if spec and not spec.contains(installed, prereleases=True):
                missing.append(req)
        except Exception:  # noqa: BLE001 - no 'packaging': presence is enough
            pass
    return missing


def torchAvailable() -> bool:
    """Whether PyTorch is installed (found, not imported: importing it takes seconds)."""
    from importlib.util import find_spec

    return find_spec("torch") is not None


def pipInstall(requirements: Sequence[str]) -> None:
    """Install requirement lines with Slicer's pip (``slicer.packaging.pip_ensure`` from Slicer 5.12 on)."""
    import slicer

    packaging = getattr(slicer, "packaging", None)
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        packaging.pip_ensure(list(requirements))
    else:
        slicer.util.pip_install(" ".join(f'"{r}"' for r in requirements))


def ensureTorch(confirm: Confirm) -> None:
    """Install PyTorch through the PyTorch extension, asking first. Raises TMBRBDependencyError when it cannot."""
    try:
        import PyTorchUtils  # the PyTorch extension
    except ImportError:
        raise TMBRBDependencyError(
            "PyTorch is not installed and the PyTorch extension is missing. Install the 'PyTorch' extension from "
            "the Extensions Manager, restart Slicer and run again.") from None
    message = _("TMBRB needs PyTorch, which is not installed. Install it now through the PyTorch extension? "
                "(a large download)")
    if confirm is None or not confirm(message):
        raise TMBRBDependencyError("PyTorch is not installed. Install it in the PyTorch Util module (or accept the "
                                   "installation when Apply asks) and run again.")
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT) is None:
        raise TMBRBDependencyError("Installing PyTorch failed; see the PyTorch Util module.")


def ensureDependencies(confirm: Confirm = None, pipInstall: Callable[[Sequence[str]], None] = pipInstall,
                       requirementsFile: Optional[Path] = None) -> None:
    """Install what the engine needs, asking first. Raises TMBRBDependencyError when missing and declined.

    ``confirm(message) -> bool`` asks the user; None means 'do not install' (batch: a clear exception instead)."""
    if not torchAvailable():
        ensureTorch(confirm)
    missing = missingRequirements(readRequirements(requirementsFile))
    if not missing:
        return
    message = (_("TMBRB needs these Python packages, which are not installed: {packages}. Install them now? "
                 "(downloads from PyPI; Slicer's own numpy and SimpleITK are left as they are)")
               .format(packages=", ".join(missing)))
    if confirm is None or not confirm(message):
        raise TMBRBDependencyError(
            "Missing Python packages: " + ", ".join(missing) + ". Install them (Apply asks to do it; from the "
            "Python console: slicer.util.pip_install('" + " ".join(missing) + "')) and run again.")
    pipInstall(missing)
    still = missingRequirements(missing)
    if still:
        raise TMBRBDependencyError("Installing " + ", ".join(still) + " failed; see the Python console log.")
