"""TMBRB: a CT radiomic biomarker of tumour mutational burden (He et al., J Immunother Cancer 2020) in 3D Slicer.

Research use only - not a medical device.

The Logic (TMBRBLogic) needs no GUI: it runs inside 3D Slicer, in the Python console, and on the ``slicer-core`` wheel
(tests, batch). Qt/CTK and the Slicer application are only touched by the widget and the self-test.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import sys
import tempfile
import typing
import unittest
from pathlib import Path
from typing import Annotated, Callable, Dict, List, Optional, Sequence, Tuple

import vtk

import slicer
from slicer import (
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)

try:  # GUI toolkits exist only inside the 3D Slicer application
    import ctk
    import qt
except ImportError:  # slicer-core wheel, plain Python
    ctk = qt = None

try:
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )
    from slicer.i18n import tr as _
    IN_SLICER_APP = hasattr(slicer, "app")
except ImportError:  # outside the application: small stand-ins so the Logic stays importable
    IN_SLICER_APP = False

    def _(text):
        return text

    class ScriptedLoadableModule:  # noqa: D101 - stand-in
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleLogic:  # noqa: D101 - stand-in
        def __init__(self, parent=None):
            self.moduleName = "TMBRB"

    class ScriptedLoadableModuleWidget:  # noqa: D101 - stand-in
        def __init__(self, parent=None):
            self.parent = parent

    class ScriptedLoadableModuleTest(unittest.TestCase):  # noqa: D101 - stand-in
        def delayDisplay(self, message, msec=0):
            logging.info(message)

from slicer.util import VTKObservationMixin

MODULE_DIR = Path(__file__).resolve().parent
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

from TMBRBLib import RESEARCH_USE_NOTICE  # noqa: E402 - light: no torch/monai
from TMBRBLib.errors import TMBRBCancelled, TMBRBError, TMBRBInputError  # noqa: E402

# ----------------------------------------------------------------------------------------------------------------------
# Parameter node: 3D Slicer's parameterNodeWrapper, or (outside the application) a minimal wrapper that stores the
# values in exactly the same way (numbers as str(), bools as "True"/"False", nodes as node references), so a scene
# saved by either opens in the other with the same module state.

ECOG_CHOICES = ("not given", "0", "1", "2")

try:
    from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
    CORE_PARAMETER_WRAPPER = False
except ImportError:
    CORE_PARAMETER_WRAPPER = True

    class WithinRange:
        def __init__(self, minimum, maximum):
            self.minimum, self.maximum = minimum, maximum

        def validate(self, value):
            if not (self.minimum <= value <= self.maximum):
                raise ValueError(f"Value {value} is not within [{self.minimum}, {self.maximum}]")

    class Choice:
        def __init__(self, choices):
            self.choices = tuple(choices)

        def validate(self, value):
            if value not in self.choices:
                raise ValueError(f"Value {value!r} is not one of {self.choices}")

    def _split(hint):
        if typing.get_origin(hint) is Annotated:
            return hint.__origin__, list(hint.__metadata__)
        return hint, []

    def parameterNodeWrapper(cls):
        hints = typing.get_type_hints(cls, include_extras=True)
        params = {}
        for name, hint in hints.items():
            base, annotations = _split(hint)
            if hasattr(cls, name):
                default = getattr(cls, name)
            elif isinstance(base, type) and issubclass(base, slicer.vtkMRMLNode):
                default = None
            else:
                default = {int: 0, float: 0.0, bool: False, str: ""}[base]
            params[name] = (base, annotations, default)

        def is_node(base):
            return isinstance(base, type) and issubclass(base, slicer.vtkMRMLNode)

        def write(self, name, value):
            base, annotations, _default = params[name]
            if is_node(base):
                if value is not None and not isinstance(value, base):
                    raise TypeError(f"{name} must be a {base.__name__}, not {type(value).__name__}")
                self.parameterNode.SetParameter(name, "")
                self.parameterNode.SetNodeReferenceID(name, value.GetID() if value is not None else None)
                return
            if base is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, base):
                raise TypeError(f"{name} must be {base.__name__}, not {type(value).__name__}")
            for a in annotations:
                if hasattr(a, "validate"):
                    a.validate(value)
            if base is bool:
                self.parameterNode.SetParameter(name, "True" if value else "False")
            else:
                self.parameterNode.SetParameter(name, str(value))

        def read(self, name):
            base, _annotations, default = params[name]
            if not self.parameterNode.HasParameter(name):
                write(self, name, default)
            if is_node(base):
                return self.parameterNode.GetNodeReference(name)
            text = self.parameterNode.GetParameter(name)
            if base is bool:
                return text == "True"
            return base(text)

        def __init__(self, parameterNode):
            self.parameterNode = parameterNode
            for n, (_b, _a, d) in params.items():
                if not parameterNode.HasParameter(n):
                    write(self, n, d)

        for n in params:
            setattr(cls, n, property(lambda self, n=n: read(self, n), lambda self, v, n=n: write(self, n, v)))
        cls.__init__ = __init__
        cls.allParameters = params
        cls.getValue = lambda self, n: read(self, n)
        cls.setValue = lambda self, n, v: write(self, n, v)
        cls.StartModify = lambda self: self.parameterNode.StartModify()
        cls.EndModify = lambda self, was: self.parameterNode.EndModify(was)
        cls.AddObserver = lambda self, e, cb, p=0.0: self.parameterNode.AddObserver(e, cb, p)
        cls.RemoveObserver = lambda self, tag: self.parameterNode.RemoveObserver(tag)
        cls.Modified = lambda self: self.parameterNode.Modified()
        return cls


@parameterNodeWrapper
class TMBRBParameterNode:
    """The module's state, saved with the scene.

    inputVolume - the chest CT (scalar volume in HU).
    seedPoint - one markups point in the centre of the tumour.
    boxRoi - markups ROI around the tumour (proposed from the seed; can be dragged).
    tumourSegmentation - optional tumour segmentation (else the tumour is grown from the seed).
    ecog - ECOG performance status ("not given", "0", "1", "2").
    forceCpu - compute on the CPU even when a GPU is available.
    numberOfShifts - test-time box shifts (0 = the box only).
    camOpacity - opacity of the CAM overlay in the slice views.
    camVolume, regionsSegmentation, resultTable - outputs.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    seedPoint: vtkMRMLMarkupsFiducialNode
    boxRoi: vtkMRMLMarkupsROINode
    tumourSegmentation: vtkMRMLSegmentationNode
    ecog: Annotated[str, Choice(ECOG_CHOICES)] = "not given"
    forceCpu: bool = False
    numberOfShifts: Annotated[int, WithinRange(0, 26)] = 8
    camOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    camVolume: vtkMRMLScalarVolumeNode
    regionsSegmentation: vtkMRMLSegmentationNode
    resultTable: vtkMRMLTableNode


# ----------------------------------------------------------------------------------------------------------------------
# Module


CITATION = ("He B, Dong D, She Y, et al. Predicting response to immunotherapy in advanced non-small-cell lung cancer "
            "using tumor mutational burden radiomic biomarker. J Immunother Cancer 2020;8:e000550. "
            "doi:10.1136/jitc-2020-000550")


class TMBRB(ScriptedLoadableModule):
    """Module metadata."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("TMBRB")
        self.parent.categories = [_("Quantification")]
        self.parent.dependencies = []
        self.parent.contributors = ["TMBRB contributors"]
        self.parent.helpText = _(
            "<p><b>Research use only - not a medical device; do not use it to guide patient care.</b></p>"
            "<p>TMBRB estimates a CT radiomic biomarker of tumour mutational burden (the probability of High-TMB, "
            "&ge; 10 mut/Mb) for a lung tumour, with overall- and progression-free-survival risk groups (also combined "
            "with the ECOG performance status) and the model's class activation map (Grad-CAM based; the model bundle names the method).</p>"
            "<ol><li>Select the CT.</li><li>Place the seed: one click in the centre of the tumour. A box is proposed "
            "around the tumour; drag it if needed.</li><li>Optionally pick a tumour segmentation and the ECOG "
            "status.</li><li>Apply.</li></ol>"
            "<p>Batch from the Python console: <code>slicer.util.getModuleLogic('TMBRB').processCases(csv, outDir)"
            "</code>.</p>"
            f"<p>Method: {CITATION}</p>")
        self.parent.acknowledgementText = _(
            "Implements the method of He et al., J Immunother Cancer 2020 (doi:10.1136/jitc-2020-000550). "
            "Uses MONAI, PyTorch and SimpleITK.")


# ----------------------------------------------------------------------------------------------------------------------
# Dependencies


class TMBRBDependencyError(TMBRBError):
    """A Python package the engine needs is missing and was not installed."""


PROTECTED_PACKAGES = {"numpy", "simpleitk", "vtk", "torch", "torchvision", "torchaudio"}


def readRequirements(path: Optional[Path] = None) -> List[str]:
    """Requirement lines of Resources/requirements.txt, without Slicer's own packages (never replaced) and torch
    (installed through the PyTorch extension)."""
    path = path or MODULE_DIR / "Resources" / "requirements.txt"
    reqs = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if _requirementName(line).lower() in PROTECTED_PACKAGES:
            continue
        reqs.append(line)
    return reqs


def _requirementName(req: str) -> str:
    import re

    return re.split(r"[<>=!~;\[ ]", req, 1)[0].strip()


def missingRequirements(requirements: Sequence[str]) -> List[str]:
    """The requirements that are not installed (or too old, when 'packaging' can tell)."""
    from importlib import metadata

    missing = []
    for req in requirements:
        name = _requirementName(req)
        try:
            installed = metadata.version(name)
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
    try:
        import torch  # noqa: F401
        return True
    except ImportError:
        return False


# ----------------------------------------------------------------------------------------------------------------------
# Logic


class TMBRBLogic(ScriptedLoadableModuleLogic):
    """Everything the module computes, usable without the GUI:

    ``TMBRBLogic().process(volumeNode, seedNode, roiNode=None, segmentationNode=None, ecog=None)`` scores one case and
    creates the output nodes; ``TMBRBLogic().processCases(manifestCsv, outputDir)`` scores many cases from files.
    Bad input raises TMBRBInputError (a ValueError with a clear message) before the scene is changed.
    """

    RESULTS_FOLDER = "TMBRB results"

    def __init__(self, scene=None):
        ScriptedLoadableModuleLogic.__init__(self)
        self._scene = scene
        self.bundle = None  # Bundle | path | None (the bundled model)
        self.interactive = False  # dialogs allowed (set by the widget)

    # scene and parameters -------------------------------------------------------------------------------------------
    @property
    def scene(self):
        if self._scene is None:
            self._scene = getattr(slicer, "mrmlScene", None)
        if self._scene is None:
            from TMBRBLib import mrml_adapter

            self._scene = mrml_adapter.create_scene()
        return self._scene

    def getParameterNode(self, scene=None) -> TMBRBParameterNode:
        scene = scene or self.scene
        node = scene.GetSingletonNode("TMBRB", "vtkMRMLScriptedModuleNode")
        if node is None:
            node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag("TMBRB")
            node.SetName(scene.GenerateUniqueName("TMBRB"))
            node.SetAttribute("ModuleName", "TMBRB")
            node = scene.AddNode(node)
        return TMBRBParameterNode(node)

    # dependencies ---------------------------------------------------------------------------------------------------
    def ensureDependencies(self, confirm: Optional[Callable[[str], bool]] = None) -> None:
        """Install what the engine needs, asking first. Raises TMBRBDependencyError when missing and declined.

        confirm(message) -> bool asks the user; None means 'do not install' (batch: a clear exception instead)."""
        if not torchAvailable():
            self._ensureTorch(confirm)
        missing = missingRequirements(readRequirements())
        if not missing:
            return
        message = (_("TMBRB needs these Python packages, which are not installed: {packages}. Install them now? "
                     "(downloads from PyPI; Slicer's own numpy and SimpleITK are left as they are)")
                   .format(packages=", ".join(missing)))
        if confirm is None or not confirm(message):
            raise TMBRBDependencyError(
                "Missing Python packages: " + ", ".join(missing) + ". Install them (Apply asks to do it; from the "
                "Python console: slicer.util.pip_install('" + " ".join(missing) + "')) and run again.")
        self._pipInstall(missing)
        still = missingRequirements(missing)
        if still:
            raise TMBRBDependencyError("Installing " + ", ".join(still) + " failed; see the Python console log.")

    def _ensureTorch(self, confirm) -> None:
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
        if torchLogic.installTorch(askConfirmation=False) is None:
            raise TMBRBDependencyError("Installing PyTorch failed; see the PyTorch Util module.")

    @staticmethod
    def _pipInstall(requirements: Sequence[str]) -> None:
        packaging = getattr(slicer, "packaging", None)
        if packaging is not None and hasattr(packaging, "pip_ensure"):  # Slicer >= 5.12
            packaging.pip_ensure(list(requirements))
        else:
            slicer.util.pip_install(" ".join(f'"{r}"' for r in requirements))

    # inputs ---------------------------------------------------------------------------------------------------------
    @staticmethod
    def ecogValue(ecog) -> Optional[int]:
        """None for 'not given'/None/'', else 0, 1 or 2 (TMBRBInputError otherwise)."""
        if ecog is None or (isinstance(ecog, str) and ecog.strip().lower() in ("", "not given", "none")):
            return None
        from TMBRBLib.risk import check_ecog

        return check_ecog(ecog)

    def validateInputs(self, volumeNode, seedNode, roiNode=None, segmentationNode=None, ecog=None) -> Dict:
        """Check every input and convert it for the engine. Raises TMBRBInputError; changes nothing in the scene."""
        from TMBRBLib import mrml_adapter as ma
        from TMBRBLib.geometry import box_overlap_fraction, lps_to_ras, physical_to_continuous_index, point_inside
        from TMBRBLib.io import validate_ct

        ma.check_ct_volume_node(volumeNode)
        ct = ma.volume_node_to_sitk(volumeNode)
        warnings = list(validate_ct(ct, name=f"CT '{volumeNode.GetName()}'"))
        seed = ma.seed_lps(seedNode)
        if not point_inside(ct, seed):
            ci = physical_to_continuous_index(ct, seed)
            raise TMBRBInputError(
                f"The seed (RAS {tuple(round(v, 1) for v in lps_to_ras(seed))} mm, voxel "
                f"{tuple(round(float(v), 1) for v in ci)}) lies outside the CT '{volumeNode.GetName()}' "
                f"(size {ct.GetSize()}).",
                "Place the seed on the tumour inside this CT (check that the right CT is selected).")
        box = None
        if roiNode is not None and ma.roi_is_defined(roiNode):
            box = ma.box_from_roi(roiNode)
            if box_overlap_fraction(ct, box) <= 0:
                raise TMBRBInputError(
                    f"The box '{roiNode.GetName()}' lies wholly outside the CT '{volumeNode.GetName()}'.",
                    "Drag the box onto the tumour, or delete it to get a box proposed from the seed.")
        mask = None
        if segmentationNode is not None:
            mask, w = ma.segmentation_to_mask(segmentationNode, volumeNode)
            warnings += w
        return {"ct": ct, "seed_lps": seed, "box": box, "mask": mask, "ecog": self.ecogValue(ecog),
                "warnings": warnings}

    def proposeBox(self, volumeNode, seedNode, roiNode=None):
        """Fit the ROI around the tumour at the seed (engine's proposal); creates the ROI node when None."""
        return self.proposeBoxWithWarnings(volumeNode, seedNode, roiNode)[0]

    def proposeBoxWithWarnings(self, volumeNode, seedNode, roiNode=None):
        """As proposeBox, and the proposal's warnings (e.g. no lesion at the seed) for the GUI to show."""
        from TMBRBLib import mrml_adapter as ma
        from TMBRBLib.proposal import propose_box

        inputs = self.validateInputs(volumeNode, seedNode)
        box, warnings = propose_box(inputs["ct"], inputs["seed_lps"])
        scene = volumeNode.GetScene()
        if roiNode is None:
            roiNode = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", scene.GenerateUniqueName("TMBRB box"))
        ma.set_roi_from_box(roiNode, box)
        return roiNode, list(warnings)

    # one case, in this process --------------------------------------------------------------------------------------
    def process(self, volumeNode, seedNode, roiNode=None, segmentationNode=None, ecog=None, numberOfShifts: int = 8,
                device: str = "auto", bundle=None, progress=None, cancel=None, showResult: bool = True,
                camOpacity: float = 0.5, parameterNode: Optional[TMBRBParameterNode] = None):
        """Score one case and create the output nodes. Returns the engine's CaseResult, with `.nodes` (dict).

        ROI None (or not placed): the box is proposed from the seed and a ROI node is created for it."""
        inputs = self.validateInputs(volumeNode, seedNode, roiNode, segmentationNode, ecog)
        from TMBRBLib.pipeline import score_case

        result = score_case(inputs["ct"], inputs["seed_lps"], inputs["box"], inputs["mask"], inputs["ecog"],
                            bundle=bundle if bundle is not None else self.bundle, n_shifts=numberOfShifts,
                            device=device, progress=progress, cancel=cancel)
        result.warnings[:0] = [w for w in inputs["warnings"] if w not in result.warnings]
        existing = None
        if parameterNode is not None:
            existing = {"cam": parameterNode.camVolume, "regions": parameterNode.regionsSegmentation,
                        "table": parameterNode.resultTable}
        result.nodes = self.createOutputNodes(volumeNode, roiNode, result.to_dict(), result.cam, result.tumour_mask,
                                              result.ring_mask, showResult=showResult, camOpacity=camOpacity,
                                              existing=existing)
        if parameterNode is not None:
            self._storeOutputs(parameterNode, result.nodes)
        return result

    @staticmethod
    def _storeOutputs(parameterNode, nodes: Dict) -> None:
        was = parameterNode.StartModify()
        try:
            parameterNode.camVolume = nodes["cam"]
            parameterNode.regionsSegmentation = nodes["regions"]
            parameterNode.resultTable = nodes["table"]
            if parameterNode.boxRoi is None and nodes.get("roi") is not None:
                parameterNode.boxRoi = nodes["roi"]
        finally:
            parameterNode.EndModify(was)

    # output nodes ---------------------------------------------------------------------------------------------------
    def createOutputNodes(self, volumeNode, roiNode, result: Dict, cam, tumourMask, ringMask, showResult=True,
                          camOpacity=0.5, existing: Optional[Dict] = None) -> Dict:
        """CAM volume, tumour/ring segmentation, results table (and the ROI when the box was proposed), filed under
        the CT's study. On failure, the nodes created here are removed again."""
        from TMBRBLib import mrml_adapter as ma
        from TMBRBLib.geometry import Box

        scene = volumeNode.GetScene()
        existing = existing or {}
        created: List = []
        before = set(scene.GetNodes().GetItemAsObject(i).GetID() for i in range(scene.GetNumberOfNodes()))
        try:
            ref = ma.volume_node_to_sitk(volumeNode)
            camArr = ma.image_on_reference_grid(cam, ref).astype("float32")
            tumArr = ma.image_on_reference_grid(tumourMask, ref, nearest=True).astype("uint8")
            ringArr = ma.image_on_reference_grid(ringMask, ref, nearest=True).astype("uint8")
            base = volumeNode.GetName()
            outputs = []
            if roiNode is None or not ma.roi_is_defined(roiNode):
                box = Box(tuple(result["box"]["lps_min"]), tuple(result["box"]["lps_max"]))
                if roiNode is None:
                    roiNode = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", scene.GenerateUniqueName("TMBRB box"))
                    outputs.append(roiNode)  # a box the module made is filed with the results
                ma.set_roi_from_box(roiNode, box)
            camNode = ma.add_volume_on_grid(scene, volumeNode, camArr, f"{base} TMBRB CAM", node=existing.get("cam"))
            camNode.SetAttribute("TMBRB.kind", "cam")
            regions = ma.regions_segmentation(scene, volumeNode, tumArr, ringArr, name=f"{base} TMBRB regions",
                                              node=existing.get("regions"), show3d=showResult)
            table = ma.fill_table(scene, self.resultRows(result), name=f"{base} TMBRB results",
                                  node=existing.get("table"))
            table.SetAttribute("TMBRB.result", json.dumps(result))
            ma.show_cam(camNode, opacity=camOpacity, background_node=volumeNode, legend=showResult)
            if showResult:
                ma.volume_render_cam(camNode, roiNode)
            ma.place_in_study(scene, volumeNode, outputs + [camNode, regions, table], self.RESULTS_FOLDER)
            return {"cam": camNode, "regions": regions, "table": table, "roi": roiNode}
        except Exception:
            for i in range(scene.GetNumberOfNodes() - 1, -1, -1):
                n = scene.GetNthNode(i)
                if n is not None and n.GetID() not in before:
                    created.append(n)
            for n in created:
                scene.RemoveNode(n)
            raise

    @staticmethod
    def resultRows(result: Dict) -> List[Tuple[str, str]]:
        """(Quantity, Value) rows for the results table, from a result dict (CaseResult.to_dict() / result.json)."""
        model = result.get("model", {})
        risk = result.get("risk", {})
        tta = result.get("tta", {})
        att = result.get("attention", {})
        rows = [("TMBRB score", f"{result['score']:.4f}"),
                ("TTA mean", f"{tta.get('mean', float('nan')):.4f}"),
                ("TTA std", f"{tta.get('std', float('nan')):.4f}"),
                ("TTA n", str(tta.get("n", ""))),
                ("OS risk group", f"{risk['os']['group']} ({risk['os'].get('rule', '')})"),
                ("PFS risk group", f"{risk['pfs']['group']} ({risk['pfs'].get('rule', '')})"),
                ("ECOG", "not given" if risk.get("ecog") is None else str(risk.get("ecog")))]
        combined = risk.get("ecog_combined") or {}
        for ep in ("os", "pfs"):
            c = combined.get(ep)
            if c:
                rows.append((f"{ep.upper()} ECOG-combined group", str(c.get("group", ""))))
                rows.append((f"{ep.upper()} relative hazard", f"{c['relative_hazard']:.3f} vs {c.get('reference', '')}"))
        for k in ("tumour", "ring", "elsewhere"):
            v = att.get(k)
            rows.append((f"Attention {k}", "n/a" if v is None else f"{100 * float(v):.1f}%"))
        box = result.get("box", {})
        rows += [("Box", ("proposed from the seed" if box.get("proposed") else "given")
                  + f"; RAS {_fmtTriplet(box.get('ras_min'))} to {_fmtTriplet(box.get('ras_max'))} mm"),
                 ("Model", f"{model.get('name', '')} {model.get('version', '')}".strip()),
                 ("Model sha256", str(model.get("sha256", ""))),
                 ("Demo model", "yes" if model.get("demo") else "no"),
                 ("Device", str(result.get("device", ""))),
                 ("Notice", str(model.get("notice") or RESEARCH_USE_NOTICE))]
        for i, w in enumerate(result.get("warnings", []), 1):
            rows.append((f"Warning {i}", w))
        return rows

    # one case, in a background process ------------------------------------------------------------------------------
    def startBackground(self, volumeNode, seedNode, roiNode=None, segmentationNode=None, ecog=None,
                        numberOfShifts: int = 8, device: str = "auto", bundle=None, workDir=None):
        """Validate, write the inputs to a work folder and start the engine process. Returns a job dict with
        'process' (slicer_runner.EngineProcess); poll it, then call importBackgroundResult(job) or cleanupJob(job)."""
        import SimpleITK as sitk

        from TMBRBLib import slicer_runner

        inputs = self.validateInputs(volumeNode, seedNode, roiNode, segmentationNode, ecog)
        work = Path(workDir) if workDir else Path(tempfile.mkdtemp(prefix="TMBRB-"))
        work.mkdir(parents=True, exist_ok=True)
        ctPath = work / "ct.nrrd"
        sitk.WriteImage(inputs["ct"], str(ctPath), useCompression=False)
        segPath = None
        if inputs["mask"] is not None:
            segPath = work / "tumour_input.nrrd"
            sitk.WriteImage(inputs["mask"], str(segPath), useCompression=True)
        bundle = bundle if bundle is not None else self.bundle
        bundlePath = getattr(bundle, "path", bundle)
        cmd = slicer_runner.score_command(ctPath, inputs["seed_lps"], work / "out", box_lps=inputs["box"],
                                          segmentation_path=segPath, ecog=inputs["ecog"], model=bundlePath,
                                          device=device, shifts=numberOfShifts)
        proc = slicer_runner.EngineProcess(cmd).start()
        return {"process": proc, "work": work, "volume": volumeNode, "roi": roiNode, "device": device,
                "warnings": inputs["warnings"], "ownsWork": workDir is None}

    def importBackgroundResult(self, job, showResult=True, camOpacity=0.5, parameterNode=None) -> Dict:
        """Read a finished background run's outputs into the scene. Returns the result dict with 'nodes'."""
        import SimpleITK as sitk

        proc = job["process"]
        outcome = proc.outcome()
        if outcome == "cancelled":
            raise TMBRBCancelled("Cancelled by the user; nothing was added to the scene.")
        if outcome == "input-error":
            raise TMBRBInputError(proc.failure_message())
        if outcome != "done":
            raise TMBRBError(proc.failure_message())
        out = Path(proc.result_path).parent
        result = json.loads(Path(proc.result_path).read_text(encoding="utf-8"))
        result["warnings"][:0] = [w for w in job.get("warnings", []) if w not in result["warnings"]]
        existing = None
        if parameterNode is not None:
            existing = {"cam": parameterNode.camVolume, "regions": parameterNode.regionsSegmentation,
                        "table": parameterNode.resultTable}
        nodes = self.createOutputNodes(job["volume"], job["roi"], result, sitk.ReadImage(str(out / "cam.nrrd")),
                                       sitk.ReadImage(str(out / "tumour.nrrd")), sitk.ReadImage(str(out / "ring.nrrd")),
                                       showResult=showResult, camOpacity=camOpacity, existing=existing)
        if parameterNode is not None:
            self._storeOutputs(parameterNode, nodes)
        result["nodes"] = nodes
        return result

    @staticmethod
    def cleanupJob(job) -> None:
        proc = job.get("process")
        if proc is not None and proc.running:
            proc.cancel()
        if job.get("ownsWork"):
            shutil.rmtree(job["work"], ignore_errors=True)

    # many cases -----------------------------------------------------------------------------------------------------
    def processCases(self, manifestCsv, outputDir, bundle=None, device: str = "auto", numberOfShifts=None,
                     progress: Optional[Callable[[int, int, Dict], None]] = None, pictures: bool = False,
                     loadResults: bool = False) -> List[Dict]:
        """Score every case of a manifest CSV into outputDir/<case_id>/ (the engine's resumable batch: finished cases
        are skipped, failures are recorded and do not stop the others). Returns the rows of outputDir/summary.csv.

        progress(done, total, row) is called after each case (default: a log line). loadResults=True also loads each
        scored case (CT, CAM, regions, table) into the scene."""
        from TMBRBLib.batch import run_batch

        def onCase(number, total, row):
            logging.info(f"TMBRB batch {number}/{total}: {row.get('case_id')} {row.get('status')} "
                         f"{row.get('error') or ''}".rstrip())
            if progress is not None:
                progress(number, total, row)

        summary = run_batch(manifestCsv, outputDir, bundle=bundle if bundle is not None else self.bundle,
                            device=device, n_shifts=numberOfShifts, pictures=pictures, progress_bar=False,
                            on_case=onCase)
        with open(summary, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if loadResults:
            ctPaths = self._manifestCtPaths(manifestCsv)
            for row in rows:
                if row["status"] in ("ok", "done-before") and row.get("output_dir"):
                    self.loadCaseResult(row["output_dir"], ctPaths.get(row["case_id"]))
        return rows

    @staticmethod
    def _manifestCtPaths(manifestCsv) -> Dict[str, str]:
        """{case_id: CT path} as the engine's batch reads the manifest."""
        from TMBRBLib.batch import row_to_case

        out = {}
        with open(manifestCsv, newline="", encoding="utf-8") as f:
            for number, row in enumerate(csv.DictReader(f), 1):
                try:
                    case = row_to_case(row, Path(manifestCsv).parent, number)
                except TMBRBError:
                    continue
                out[case["case_id"]] = str(case["ct"])
        return out

    def loadCaseResult(self, caseDir, ctPath=None) -> Dict:
        """Load one engine output folder (result.json, cam/tumour/ring NRRD) and its CT (ctPath, or the path the
        result names) into the scene, with the same nodes as an interactive run."""
        import SimpleITK as sitk

        from TMBRBLib import mrml_adapter as ma

        caseDir = Path(caseDir)
        result = json.loads((caseDir / "result.json").read_text(encoding="utf-8"))
        ctPath = ctPath or result.get("inputs", {}).get("ct_path")
        if not ctPath or not Path(ctPath).exists():
            raise TMBRBInputError(f"The CT of {caseDir} ('{ctPath}') is not available.", "Keep the CT files in place.")
        from TMBRBLib.io import read_ct

        ct, _w = read_ct(ctPath)
        volumeNode = ma.add_volume_node_from_sitk(self.scene, ct, caseDir.name)
        nodes = self.createOutputNodes(volumeNode, None, result, sitk.ReadImage(str(caseDir / "cam.nrrd")),
                                       sitk.ReadImage(str(caseDir / "tumour.nrrd")),
                                       sitk.ReadImage(str(caseDir / "ring.nrrd")), showResult=False)
        nodes["volume"] = volumeNode
        result["nodes"] = nodes
        return result


def _fmtTriplet(v) -> str:
    if not v:
        return "?"
    return "(" + ", ".join(f"{float(x):.1f}" for x in v) + ")"


# ----------------------------------------------------------------------------------------------------------------------
# Widget


class TMBRBWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel. Inference runs in a background process polled by a QTimer."""

    POLL_MS = 200

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._timer = None
        self._observedSeed = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/TMBRB.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = TMBRBLogic()
        self.logic.interactive = True

        self.ui.seedPlaceWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.seedPlaceWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup
        self.ui.seedPlaceWidget.buttonsVisible = False
        self.ui.seedPlaceWidget.placeButton().show()
        self.ui.resultsCollapsibleButton.collapsed = True
        self.ui.demoBannerLabel.visible = False
        self.ui.progressBar.visible = False
        self.ui.cancelButton.enabled = False

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.proposeBoxButton.connect("clicked(bool)", self.onProposeBoxButton)
        self.ui.seedSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSeedNodeChanged)
        self.ui.camOpacitySlider.connect("valueChanged(double)", self.onCamOpacityChanged)

        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_MS)
        self._timer.connect("timeout()", self.onPollJob)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        if self._job is not None:
            TMBRBLogic.cleanupJob(self._job)
            self._job = None

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.onCancelButton()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()
            self.showResultTable(self._parameterNode.resultTable)

    def _checkCanApply(self, caller=None, event=None) -> None:
        p = self._parameterNode
        running = self._job is not None
        if p and p.inputVolume and p.seedPoint and not running:
            self.ui.applyButton.toolTip = _("Score the tumour")
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.toolTip = _("Select the CT and place the seed") if not running else _("Running...")
            self.ui.applyButton.enabled = False
        self.ui.proposeBoxButton.enabled = bool(p and p.inputVolume and p.seedPoint and not running)
        if p and p.seedPoint is not self._observedSeed:
            self.onSeedNodeChanged(p.seedPoint)

    # seed -> proposed box -------------------------------------------------------------------------------------------
    def onSeedNodeChanged(self, node) -> None:
        if self._observedSeed is not None:
            self.removeObserver(self._observedSeed, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent,
                                self.onSeedPlaced)
        self._observedSeed = node
        self.ui.seedPlaceWidget.setCurrentNode(node)
        if node is not None:
            self.addObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onSeedPlaced)

    def onSeedPlaced(self, caller=None, event=None) -> None:
        """A seed was clicked: propose the box around the tumour (quietly; problems show in the status line)."""
        p = self._parameterNode
        if not p or not p.inputVolume:
            return
        try:
            p.boxRoi, warnings = self.logic.proposeBoxWithWarnings(p.inputVolume, p.seedPoint, p.boxRoi)
            self.ui.statusLabel.text = " ".join(warnings) if warnings else _(
                "Box proposed around the tumour; drag its handles if needed, then Apply.")
        except TMBRBInputError as e:
            self.ui.statusLabel.text = str(e)

    def onProposeBoxButton(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Could not propose a box."), waitCursor=True):
            p.boxRoi = self.logic.proposeBox(p.inputVolume, p.seedPoint, p.boxRoi)

    # run ------------------------------------------------------------------------------------------------------------
    def onApplyButton(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("TMBRB could not score this case."), waitCursor=True):
            self.logic.ensureDependencies(confirm=lambda message: slicer.util.confirmOkCancelDisplay(message))
            device = "cpu" if p.forceCpu else "auto"
            self._job = self.logic.startBackground(p.inputVolume, p.seedPoint, p.boxRoi, p.tumourSegmentation,
                                                   p.ecog, p.numberOfShifts, device)
            self.ui.progressBar.visible = True
            self.ui.progressBar.value = 0
            self.ui.cancelButton.enabled = True
            self.ui.statusLabel.text = _("Starting the model...")
            self._checkCanApply()
            self._timer.start()

    def onCancelButton(self) -> None:
        if self._job is None:
            return
        self._job["process"].cancel()
        self.ui.statusLabel.text = _("Cancelled; nothing was added to the scene.")
        self._finishJob()

    def onPollJob(self) -> None:
        job = self._job
        if job is None:
            self._timer.stop()
            return
        proc = job["process"]
        proc.poll()
        self.ui.progressBar.value = int(round(100 * proc.progress))
        if proc.message:
            self.ui.statusLabel.text = proc.message
        if not proc.finished:
            return
        outcome = proc.outcome()
        if outcome == "failed" and job["device"] != "cpu" and "out of memory" in proc.failure_message().lower():
            slicer.util.warningDisplay(_("The GPU ran out of memory; running again on the CPU."))
            p = self._parameterNode
            TMBRBLogic.cleanupJob(job)
            self._job = self.logic.startBackground(p.inputVolume, p.seedPoint, p.boxRoi, p.tumourSegmentation,
                                                   p.ecog, p.numberOfShifts, "cpu")
            return
        try:
            if outcome == "cancelled":
                self.ui.statusLabel.text = _("Cancelled; nothing was added to the scene.")
                return
            with slicer.util.tryWithErrorDisplay(_("TMBRB could not score this case."), waitCursor=True):
                p = self._parameterNode
                result = self.logic.importBackgroundResult(job, camOpacity=p.camOpacity, parameterNode=p)
                self.showResult(result)
                self.ui.statusLabel.text = _("Done.")
        finally:
            self._finishJob()

    def _finishJob(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        if self._job is not None:
            TMBRBLogic.cleanupJob(self._job)
        self._job = None
        self.ui.progressBar.visible = False
        self.ui.cancelButton.enabled = False
        self._checkCanApply()

    # results --------------------------------------------------------------------------------------------------------
    def showResult(self, result: Dict) -> None:
        model = result.get("model", {})
        risk = result["risk"]
        tta = result["tta"]
        self.ui.resultsCollapsibleButton.collapsed = False
        self.ui.demoBannerLabel.visible = bool(model.get("demo"))
        self.ui.demoBannerLabel.text = model.get("notice", "")
        self.ui.scoreLabel.text = f"{result['score']:.3f}  (TTA {tta['mean']:.3f} \u00b1 {tta['std']:.3f}, n={tta['n']})"
        self.ui.osGroupLabel.text = f"{risk['os']['group']} risk"
        self.ui.pfsGroupLabel.text = f"{risk['pfs']['group']} risk"
        combined = risk.get("ecog_combined")
        if combined:
            self.ui.ecogCombinedLabel.text = "; ".join(
                f"{ep.upper()}: {c['group']}, HR {c['relative_hazard']:.2f} vs {c.get('reference', '')}"
                for ep, c in combined.items() if isinstance(c, dict) and "relative_hazard" in c)
        else:
            self.ui.ecogCombinedLabel.text = _("ECOG not given")
        att = result.get("attention", {})
        self.ui.attentionLabel.text = ", ".join(
            f"{k} {100 * float(att[k]):.0f}%" if att.get(k) is not None else f"{k} n/a"
            for k in ("tumour", "ring", "elsewhere"))
        self.ui.modelLabel.text = f"{model.get('name', '')} {model.get('version', '')}"
        self.ui.warningsLabel.text = "\n".join(result.get("warnings", []))
        self.showResultTable(result.get("nodes", {}).get("table"))

    def showResultTable(self, tableNode) -> None:
        self.ui.resultTableView.setMRMLTableNode(tableNode)

    def onCamOpacityChanged(self, value) -> None:
        p = self._parameterNode
        if p and p.camVolume:
            from TMBRBLib import mrml_adapter

            mrml_adapter.set_cam_opacity(slicer.mrmlScene, p.camVolume, value)


# ----------------------------------------------------------------------------------------------------------------------
# Self-test (inside 3D Slicer: Reload and Test)


class TMBRBTest(ScriptedLoadableModuleTest):
    """Loads the demo phantom, runs the Logic and checks the outputs."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_TMBRB_phantom()
        self.test_TMBRB_bad_input()

    def _phantomScene(self):
        from TMBRBLib import mrml_adapter as ma
        from TMBRBLib.geometry import lps_to_ras
        from TMBRBLib.phantom import make_demo_case

        case = make_demo_case()
        ct = ma.add_volume_node_from_sitk(slicer.mrmlScene, case.ct, "TMBRB phantom CT")
        seed = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "seed")
        seed.AddControlPoint(lps_to_ras(case.seed_lps))
        return case, ct, seed

    def test_TMBRB_phantom(self):
        import numpy as np

        from TMBRBLib import mrml_adapter as ma

        self.delayDisplay("Scoring the demo phantom")
        case, ct, seed = self._phantomScene()
        logic = TMBRBLogic()
        logic.ensureDependencies(confirm=lambda m: slicer.util.confirmOkCancelDisplay(m))
        result = logic.process(ct, seed, ecog=1, numberOfShifts=2, device="cpu")
        self.assertTrue(0.0 <= result.score <= 1.0)
        nodes = result.nodes
        self.assertTrue(np.allclose(ma.ijk_to_ras(nodes["cam"]), ma.ijk_to_ras(ct)))
        self.assertEqual(nodes["regions"].GetSegmentation().GetNumberOfSegments(), 2)
        self.assertAlmostEqual(float(ma.table_rows(nodes["table"])["TMBRB score"]), result.score, places=4)
        self.delayDisplay("Test passed")

    def test_TMBRB_bad_input(self):
        logic = TMBRBLogic()
        with self.assertRaises(TMBRBInputError):
            logic.process(None, None)
        self.delayDisplay("Bad input test passed")
