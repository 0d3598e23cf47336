"""What the TMBRB module does with a scene, without a GUI: the Logic of the 3D Slicer module.

:class:`SceneLogic` checks the scene's inputs (CT volume, seed point, box ROI, tumour segmentation, ECOG), proposes a
box from the seed, scores a case in this process (:meth:`SceneLogic.process`) or in a background engine process
(:meth:`SceneLogic.startBackground` + :class:`JobWatcher`), and shows the result as nodes: the class activation map
volume, the tumour and ring segmentation, the results table and, when it was proposed, the box. It scores many cases
from files too (:meth:`SceneLogic.processCases`).

It runs on any MRML scene: inside 3D Slicer (``TMBRB.TMBRBLogic`` adds Slicer's ``ScriptedLoadableModuleLogic``), on
the ``slicer-core`` wheel (tests, scripts) and in the browser viewer (trame-slicer). It imports no Qt.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import slicer

from ..errors import TMBRBCancelled, TMBRBError, TMBRBInputError
from . import dependencies, mrml
from .parameters import TMBRBParameterNode, getParameterNode
from .runner import EngineJob, EngineProcess, EngineWorker, JobInputs, engine_environment, score_command

MODULE_NAME = "TMBRB"
RESULTS_FOLDER = "TMBRB results"
INPUTS_KEY_ATTRIBUTE = "TMBRB.inputsKey"  # on the results table: the fingerprint of the inputs of its result
TUMOUR_KEY_ATTRIBUTE = "TMBRB.tumourKey"  # on the results table: the state of the Tumour segment its attention is of
SCENE_REGIONS_FOLDER = "scene-regions"  # in a kept work folder: the worker's regions for the scene, removed once read
OUTPUT_DIR_ATTRIBUTE = "TMBRB.outputDir"  # on the results table: the output folder its result.json lives in, if kept


@dataclass
class SceneResult:
    """A scored case in the scene: what :meth:`SceneLogic.process` and :meth:`SceneLogic.importBackgroundResult` give.

    ``result`` is the result as ``result.json`` holds it; ``nodes`` the nodes made or filled for it ('cam',
    'regions', 'table', 'roi'; 'volume' when the CT was loaded too); ``case`` the engine's in-memory result
    (in-process runs only); ``outputDir`` the engine's output folder (runs in the background or loaded from files).
    """

    result: Dict[str, Any]
    nodes: Dict[str, Any]
    case: Any = None
    outputDir: Optional[Path] = None

    @property
    def score(self) -> float:
        return float(self.result["score"])

    @property
    def risk(self) -> Dict[str, Any]:
        return self.result["risk"]

    @property
    def attention(self) -> Dict[str, Any]:
        return self.result.get("attention", {})

    @property
    def model(self) -> Dict[str, Any]:
        return self.result.get("model", {})

    @property
    def warnings(self) -> List[str]:
        return self.result.setdefault("warnings", [])

    def _image(self, caseAttribute: str, fileName: str):
        if self.case is not None:
            return getattr(self.case, caseAttribute)
        if self.outputDir is None:
            raise TMBRBError(f"This result keeps no {fileName}: it was neither computed here nor read from files.")
        if not (self.outputDir / fileName).is_file():
            raise TMBRBError(f"{fileName} is no longer in {self.outputDir} (a background run's temporary folder is "
                             "removed once its result is in the scene); use the nodes, or give the run a workDir.")
        import SimpleITK as sitk

        return sitk.ReadImage(str(self.outputDir / fileName))

    # the images on the CT's grid (the crop on the model's grid), as the engine gave them or read from its files
    cam = property(lambda self: self._image("cam", "cam.nrrd"), doc="The class activation map (SimpleITK image).")
    tumour_mask = property(lambda self: self._image("tumour_mask", "tumour.nrrd"), doc="The tumour mask.")
    ring_mask = property(lambda self: self._image("ring_mask", "ring.nrrd"), doc="The peritumoral ring mask.")
    crop = property(lambda self: self._image("crop", "crop.nrrd"), doc="The model's input region in HU.")


def ecogValue(ecog) -> Optional[int]:
    """None for 'not given'/None/'', else 0, 1 or 2 (TMBRBInputError otherwise)."""
    if ecog is None or (isinstance(ecog, str) and ecog.strip().lower() in ("", "not given", "none")):
        return None
    from ..risk import check_ecog

    return check_ecog(ecog)


def resultRows(result: Dict) -> List[Tuple[str, str, str]]:
    """(Quantity, Value, Note) rows for the results table, from a result dict (``CaseResult.to_dict()``,
    result.json): the lines of :func:`TMBRBLib.present.result_lines`, the score to 4 decimals (numbers are copied
    from tables)."""
    from ..present import result_lines

    return [(line.label, line.value, line.detail) for line in result_lines(result, digits=4)]


class SceneLogic:
    """Everything the module computes, usable without the GUI.

    ``SceneLogic(scene).process(volumeNode, seedNode, roiNode=None, segmentationNode=None, ecog=None)`` scores one
    case and creates the output nodes; ``processCases(manifestCsv, outputDir)`` scores many cases from files. Bad
    input raises TMBRBInputError (a ValueError with a clear message) before the scene is changed.
    """

    RESULTS_FOLDER = RESULTS_FOLDER

    def __init__(self, scene=None):
        self._scene = scene
        self.bundle = None  # Bundle | path | None (the bundled model)
        self.interactive = False  # dialogs allowed (set by the widget)
        self.useWorker = True  # background runs go to the warm engine worker; False: a new process per case
        self.caseTimeoutS: Optional[float] = 600.0  # a worker case running longer fails and the worker is killed
        # (None: the worker's own default)
        self._worker: Optional[EngineWorker] = None
        self._ownsWorker = False
        self._workerJobs: Dict[str, EngineJob] = {}  # results table id -> the warm worker's job (temporary folder)
        self._ctFiles: Dict[str, Tuple[Any, Path]] = {}  # volume node ID -> (its state when written, CT file)
        self._ctDir: Optional[Path] = None
        self.ctFilesWritten = 0
        self._ctImage: Optional[Tuple[Any, Any, List[str]]] = None  # (volume key, SimpleITK CT, its warnings)
        self.ctConversions = 0
        self.gpuIndex: Optional[int] = None  # the GPU the engine uses (CUDA_VISIBLE_DEVICES); None: as set up
        self.forceCpu = False  # the engine sees no GPU (CUDA_VISIBLE_DEVICES="")

    # scene and parameters -------------------------------------------------------------------------------------------
    @property
    def scene(self):
        if self._scene is None:
            self._scene = getattr(slicer, "mrmlScene", None)
        if self._scene is None:
            self._scene = mrml.create_scene()
        return self._scene

    def getParameterNode(self, scene=None) -> TMBRBParameterNode:
        return getParameterNode(scene or self.scene, MODULE_NAME)

    # dependencies ---------------------------------------------------------------------------------------------------
    _pipInstall = staticmethod(dependencies.pipInstall)

    def ensureDependencies(self, confirm: Optional[Callable[[str], bool]] = None) -> None:
        """Install what the engine needs, asking first. Raises TMBRBDependencyError when missing and declined.

        confirm(message) -> bool asks the user; None means 'do not install' (batch: a clear exception instead)."""
        dependencies.ensureDependencies(confirm, pipInstall=self._pipInstall)

    # inputs ---------------------------------------------------------------------------------------------------------
    ecogValue = staticmethod(ecogValue)

    def validateInputs(self, volumeNode, seedNode, roiNode=None, segmentationNode=None, ecog=None) -> Dict:
        """Check every input and convert it for the engine. Raises TMBRBInputError; changes nothing in the scene."""
        from ..geometry import require_point_inside

        mrml.check_ct_volume_node(volumeNode)
        ct, warnings = self._ctOf(volumeNode)
        seed = mrml.seed_lps(seedNode)
        require_point_inside(ct, seed, ct_name=volumeNode.GetName(),
                             hint="Place the seed on the tumour inside this CT (check that the right CT is selected).")
        box = None
        if roiNode is not None and mrml.roi_is_defined(roiNode):
            box = mrml.box_from_roi(roiNode)
            self._checkBox(ct, seed, box, roiNode.GetName(), volumeNode.GetName())
        mask = None
        if segmentationNode is not None:
            mask, w = mrml.segmentation_to_mask(segmentationNode, volumeNode)
            warnings += w
        return {"ct": ct, "seed_lps": seed, "box": box, "mask": mask, "ecog": ecogValue(ecog),
                "warnings": warnings}

    def _ctOf(self, volumeNode) -> Tuple[Any, List[str]]:
        """(SimpleITK CT, its checks' warnings) of a volume node: converted and checked once per volume state (node,
        name, voxels, world grid; :func:`mrml.volume_state`), then reused by the next Apply on the same CT. One CT
        is kept."""
        from ..io import validate_ct

        key = (volumeNode.GetID(), volumeNode.GetName(), mrml.volume_state(volumeNode))
        if self._ctImage is None or self._ctImage[0] != key:
            self._ctImage = None  # the old copy is freed before the new one is made
            ct = mrml.volume_node_to_sitk(volumeNode)
            self._ctImage = (key, ct, list(validate_ct(ct, name=f"CT '{volumeNode.GetName()}'")))
            self.ctConversions += 1
        return self._ctImage[1], list(self._ctImage[2])

    @staticmethod
    def _checkBox(ct, seed, box, boxName: str, ctName: str) -> None:
        """A box the engine would score without complaint but whose score would mean little is refused here, where a
        person can fix it: wholly or mostly outside the scan, or not holding the seed."""
        from ..geometry import check_box_in_scan

        check_box_in_scan(ct, box, boxName, ctName, "Drag the box onto the tumour inside the scan, or delete it to "
                          "get a box proposed from the seed.")
        if np.any(np.asarray(seed) < np.asarray(box.min)) or np.any(np.asarray(seed) > np.asarray(box.max)):
            raise TMBRBInputError(f"The seed lies outside the box '{boxName}'.",
                                  "Put the seed on the tumour inside the box, move the box over the seed, or delete "
                                  "the box to get one proposed from the seed.")

    def proposeBox(self, volumeNode, seedNode, roiNode=None):
        """Fit the ROI around the tumour at the seed (engine's proposal); creates the ROI node when None."""
        return self.proposeBoxWithWarnings(volumeNode, seedNode, roiNode)[0]

    def proposeBoxWithWarnings(self, volumeNode, seedNode, roiNode=None):
        """As proposeBox, and the proposal's warnings (e.g. no lesion at the seed) for the GUI to show."""
        from ..proposal import propose_box

        inputs = self.validateInputs(volumeNode, seedNode)
        box, warnings = propose_box(inputs["ct"], inputs["seed_lps"])
        scene = volumeNode.GetScene()
        if roiNode is None:
            roiNode = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", scene.GenerateUniqueName("TMBRB box"))
        mrml.set_roi_from_box(roiNode, box)
        return roiNode, list(warnings)

    # one case, in this process --------------------------------------------------------------------------------------
    def process(self, volumeNode, seedNode, roiNode=None, segmentationNode=None, ecog=None,
                numberOfShifts: Optional[int] = None, device: str = "auto", bundle=None, progress=None, cancel=None,
                showResult: bool = True, camOpacity: float = 0.5,
                parameterNode: Optional[TMBRBParameterNode] = None) -> SceneResult:
        """Score one case in this process and show it in the scene.

        Parameters
        ----------
        volumeNode : vtkMRMLScalarVolumeNode
            The chest CT, in HU.
        seedNode : vtkMRMLMarkupsFiducialNode
            One point in the centre of the tumour.
        roiNode : vtkMRMLMarkupsROINode, optional
            The box around the tumour. None (or an ROI not placed yet): the box is proposed from the seed and an
            ROI node is made for it (``nodes['roi']``).
        segmentationNode : vtkMRMLSegmentationNode, optional
            The tumour; else the tumour is grown from the seed inside the box.
        ecog : int or str, optional
            ECOG performance status 0, 1 or 2 ("not given" or None: no ECOG-combined hazard).
        numberOfShifts : int, optional
            Test-time box shifts (0 = the box only; None = the bundle's number).
        device : {"auto", "cpu", "cuda"}
            "auto" takes the GPU when there is one.
        bundle : Bundle or path, optional
            The model; default this logic's ``bundle``, else the bundled demo model.
        progress : callable(fraction, message), optional
        cancel : callable() -> bool, optional
            Polled between steps; True stops the run with TMBRBCancelled before the scene is changed.
        showResult : bool
            Show the map in the views (slice overlay, 3D rendering, colour legend).
        camOpacity : float
            Opacity of the map over the CT in the slice views.
        parameterNode : TMBRBParameterNode, optional
            Reuse its output nodes, and store the new ones in it.

        Returns
        -------
        SceneResult
            ``result`` (as result.json), ``nodes`` and the engine's ``case``.

        Raises
        ------
        TMBRBInputError
            Bad input (no CT, seed outside the CT, box outside the CT, empty segmentation...): nothing is added to
            the scene.
        TMBRBCancelled
            ``cancel()`` returned True.
        TMBRBBundleError
            The model bundle cannot be used.

        Examples
        --------
        >>> from TMBRBLib.geometry import lps_to_ras
        >>> from TMBRBLib.phantom import make_phantom
        >>> from TMBRBLib.slicer import mrml
        >>> from TMBRBLib.slicer.logic import SceneLogic
        >>> scene = mrml.create_scene()
        >>> case = make_phantom(7)  # a small synthetic chest CT with a tumour
        >>> ct = mrml.add_volume_node_from_sitk(scene, case.ct, "phantom CT")
        >>> seed = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "seed")
        >>> _ = seed.AddControlPoint(lps_to_ras(case.seed_lps))
        >>> result = SceneLogic(scene).process(ct, seed, ecog=1, numberOfShifts=0, device="cpu", showResult=False)
        >>> 0.0 <= result.score <= 1.0, sorted(result.nodes)
        (True, ['cam', 'regions', 'roi', 'table'])
        >>> result.nodes["regions"].GetSegmentation().GetNumberOfSegments()
        2
        >>> mrml.table_rows(result.nodes["table"])["Demo model"]
        'yes'
        """
        inputs = self.validateInputs(volumeNode, seedNode, roiNode, segmentationNode, ecog)
        from ..pipeline import score_case

        case = score_case(inputs["ct"], inputs["seed_lps"], inputs["box"], inputs["mask"], inputs["ecog"],
                          bundle=bundle if bundle is not None else self.bundle, n_shifts=numberOfShifts,
                          device=device, progress=progress, cancel=cancel)
        case.warnings[:0] = [w for w in inputs["warnings"] if w not in case.warnings]
        result = case.to_dict()
        nodes = self.createOutputNodes(volumeNode, roiNode, result, case.cam_region, case.tumour_region,
                                       case.ring_region, showResult=showResult, camOpacity=camOpacity,
                                       existing=self._existingOutputs(parameterNode))
        self._recordInputs(nodes, volumeNode, seedNode, segmentationNode, ecog)
        if parameterNode is not None:
            self._storeOutputs(parameterNode, nodes)
        return SceneResult(result, nodes, case=case)

    # is the shown result still the result of the inputs? ---------------------------------------------------------------
    @staticmethod
    def inputsKey(volumeNode, seedNode, roiNode=None, segmentationNode=None, ecog=None) -> str:
        """A fingerprint of what a result depends on in the scene: the CT (node, voxels' modification time,
        geometry), the seed and the box (positions to 0.01 mm), the tumour segmentation (node, and the modification
        time of each segment's label map: painting a segment changes that, not the segmentation's own time) and ECOG.
        Equal keys: the result shown is the result of these inputs."""
        import hashlib

        def node_state(node, data=None):
            if node is None:
                return None
            return [node.GetID(), int(data.GetMTime()) if data is not None else None]

        try:
            seed = [round(float(v), 2) for v in mrml.seed_ras(seedNode)]
        except TMBRBInputError:
            seed = None
        box = None
        if roiNode is not None and mrml.roi_is_defined(roiNode):
            b = mrml.box_from_roi(roiNode)
            box = [round(float(v), 2) for v in list(b.min) + list(b.max)]
        try:
            ecog = ecogValue(ecog)
        except TMBRBInputError:
            ecog = f"invalid {ecog!r}"
        volume = None
        if volumeNode is not None:
            volume = node_state(volumeNode, volumeNode.GetImageData()) + [
                [round(float(v), 6) for v in mrml.ijk_to_ras(volumeNode).ravel()]]
        segmentation = None
        if segmentationNode is not None:
            seg = segmentationNode.GetSegmentation()
            name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
            segments = []
            for i in range(seg.GetNumberOfSegments()):
                labelmap = seg.GetNthSegment(i).GetRepresentation(name)
                segments.append([seg.GetNthSegmentID(i), int(labelmap.GetMTime()) if labelmap is not None else None])
            segmentation = node_state(segmentationNode, seg) + [segments]
        state = {"volume": volume, "seed": seed, "box": box, "segmentation": segmentation, "ecog": ecog}
        return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()

    def _recordInputs(self, nodes: Dict, volumeNode, seedNode, segmentationNode, ecog) -> None:
        """Remember on the results table which inputs the result belongs to (the box as the result shows it)."""
        nodes["table"].SetAttribute(INPUTS_KEY_ATTRIBUTE, self.inputsKey(volumeNode, seedNode, nodes.get("roi"),
                                                                          segmentationNode, ecog))
        nodes["table"].SetAttribute(TUMOUR_KEY_ATTRIBUTE, self.tumourSegmentKey(nodes.get("regions")))
        nodes["table"].SetAttribute(OUTPUT_DIR_ATTRIBUTE, "")  # a reused table: not the previous result's folder

    def isResultCurrent(self, tableNode, volumeNode, seedNode, roiNode=None, segmentationNode=None,
                        ecog=None) -> bool:
        """False once the CT, seed, box, segmentation or ECOG changed since the result in ``tableNode`` was made:
        the front end then shows the result as outdated until Apply runs again."""
        if tableNode is None or not tableNode.GetAttribute(INPUTS_KEY_ATTRIBUTE):
            return False
        return tableNode.GetAttribute(INPUTS_KEY_ATTRIBUTE) == self.inputsKey(volumeNode, seedNode, roiNode,
                                                                              segmentationNode, ecog)

    def resultState(self, parameterNode: Optional[TMBRBParameterNode]) -> str:
        """'none' (no result in the parameter node), 'current', 'outdated' (the CT, seed, box, segmentation or
        ECOG changed since the result was made) or 'attention-outdated' (the inputs are those of the result, but
        the Tumour segment of its regions was edited since the attention was computed: the score still holds,
        the attention shares wait for :meth:`updateAttention`): what the panel shows over its result."""
        if parameterNode is None or parameterNode.resultTable is None:
            return "none"
        p = parameterNode
        if not self.isResultCurrent(p.resultTable, p.inputVolume, p.seedPoint, p.boxRoi, p.tumourSegmentation,
                                    p.ecog):
            return "outdated"
        return "current" if self.isAttentionCurrent(p.resultTable, p.regionsSegmentation) else "attention-outdated"

    # the attention of an edited tumour segment -----------------------------------------------------------------------
    @staticmethod
    def tumourSegmentKey(regionsNode) -> str:
        """The state of the Tumour segment of a result's regions segmentation (its node, segment and the
        modification time of its label map): it changes when the segment is edited (Segment Editor, scripts)."""
        if regionsNode is None:
            return ""
        segmentation = regionsNode.GetSegmentation()
        sid = segmentation.GetSegmentIdBySegmentName(mrml.TUMOUR_SEGMENT_NAME)
        segment = segmentation.GetSegment(sid) if sid else None
        if segment is None:
            return f"{regionsNode.GetID()}:no tumour segment"
        labelmap = segment.GetRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
        return f"{regionsNode.GetID()}:{sid}:{labelmap.GetMTime() if labelmap is not None else None}"

    def isAttentionCurrent(self, tableNode, regionsNode) -> bool:
        """False once the Tumour segment of ``regionsNode`` was edited after the attention in ``tableNode`` was
        computed (a result recorded without a tumour state counts as current)."""
        if tableNode is None:
            return False
        recorded = tableNode.GetAttribute(TUMOUR_KEY_ATTRIBUTE)
        return not recorded or recorded == self.tumourSegmentKey(regionsNode)

    def updateAttention(self, volumeNode, camNode, regionsNode, tableNode, outputDir=None,
                        showResult: bool = True) -> SceneResult:
        """Recompute the attention shares, the ring, the outlines and the results table from the (edited) Tumour
        segment of a result's regions segmentation, without running the model (the map does not depend on the mask).

        Parameters
        ----------
        volumeNode : vtkMRMLScalarVolumeNode
            The CT the result was computed on.
        camNode, regionsNode, tableNode
            The result's class activation map, regions segmentation (its 'Tumour' segment is read, its ring is
            rebuilt) and results table (its recorded result is updated).
        outputDir : path, optional
            The output folder whose result.json, tumour.nrrd, ring.nrrd (and pictures) are updated; default the one
            recorded on the table (a result loaded from a folder, or a background run with a kept work folder).
        showResult : bool
            Show the rebuilt segments in 3D.

        Returns
        -------
        SceneResult
            The updated result (``tumour_mask.source`` 'proposed_edited', or 'given' when it was given).

        Raises
        ------
        TMBRBInputError
            No result in the table, no Tumour segment, or an empty one: nothing is changed.
        """
        from ..attention import attention_from_mask, tumour_on_grid, updated_result, write_update

        text = tableNode.GetAttribute("TMBRB.result") if tableNode is not None else None
        if not text or camNode is None or regionsNode is None:
            raise TMBRBInputError("There is no TMBRB result to update.", "Apply first, then edit its Tumour segment.")
        sid = regionsNode.GetSegmentation().GetSegmentIdBySegmentName(mrml.TUMOUR_SEGMENT_NAME)
        if not sid:
            raise TMBRBInputError(f"The segmentation '{regionsNode.GetName()}' has no '{mrml.TUMOUR_SEGMENT_NAME}' "
                                  "segment.", "Keep the result's Tumour segment (edit it, do not delete or rename it).")
        mask, _w = mrml.segmentation_to_mask(regionsNode, volumeNode, sid)
        cam = mrml.volume_node_to_sitk(camNode)
        tumour, warnings = tumour_on_grid(mask, cam, "Tumour segment")
        result = json.loads(text)
        edited = attention_from_mask(cam, tumour, float(result.get("attention", {}).get("ring_width_mm", 10.0)))
        edited.warnings[:0] = warnings
        new = updated_result(result, edited, f"the '{mrml.TUMOUR_SEGMENT_NAME}' segment of '{regionsNode.GetName()}'")
        grid = mrml.node_geometry(volumeNode)
        tumour, ring = (mrml.region_on_grid(r, grid, nearest=True) for r in (edited.tumour_region, edited.ring_region))
        mrml.regions_segmentation(volumeNode.GetScene(), volumeNode, tumour, ring, node=regionsNode,
                                  show3d=showResult)
        mrml.fill_table(volumeNode.GetScene(), resultRows(new), name=tableNode.GetName(), node=tableNode)
        tableNode.SetAttribute("TMBRB.result", json.dumps(new))
        tableNode.SetAttribute(TUMOUR_KEY_ATTRIBUTE, self.tumourSegmentKey(regionsNode))
        folder = outputDir or tableNode.GetAttribute(OUTPUT_DIR_ATTRIBUTE)
        folder = Path(folder) if folder and (Path(folder) / "result.json").is_file() else None
        if folder is not None:
            write_update(folder, new, cam, edited)
        nodes = {"cam": camNode, "regions": regionsNode, "table": tableNode}
        return SceneResult(new, nodes, outputDir=folder)

    def updateAttentionOf(self, parameterNode: TMBRBParameterNode, outputDir=None) -> SceneResult:
        """:meth:`updateAttention` on the result held by the module's parameter node (what the panel's Update
        attention button runs)."""
        p = parameterNode
        return self.updateAttention(p.inputVolume, p.camVolume, p.regionsSegmentation, p.resultTable, outputDir)

    @staticmethod
    def _existingOutputs(parameterNode) -> Optional[Dict]:
        if parameterNode is None:
            return None
        return {"cam": parameterNode.camVolume, "regions": parameterNode.regionsSegmentation,
                "table": parameterNode.resultTable}

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
        the CT's study. On failure, the nodes created here are removed again.

        ``cam``, ``tumourMask`` and ``ringMask`` are SimpleITK images or regions of the CT's grid
        (:class:`TMBRBLib.volumes.RegionVolume`, as the engine gives them): a region on the CT's grid is placed as it
        is, anything else is resampled onto the grid."""
        scene = volumeNode.GetScene()
        existing = existing or {}
        before = set(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))
        try:
            grid = mrml.node_geometry(volumeNode)
            camRegion = mrml.region_on_grid(cam, grid)
            camRegion = dataclasses.replace(camRegion, data=camRegion.data.astype("float32", copy=False))
            tumour, ring = (mrml.region_on_grid(m, grid, nearest=True) for m in (tumourMask, ringMask))
            base = volumeNode.GetName()
            roiNode, outputs = self._resultRoi(scene, roiNode, result)
            camNode = mrml.add_map_on_grid(scene, volumeNode, camRegion, f"{base} TMBRB CAM", node=existing.get("cam"))
            camNode.SetAttribute("TMBRB.kind", "cam")
            regions = mrml.regions_segmentation(scene, volumeNode, tumour, ring, name=f"{base} TMBRB regions",
                                                node=existing.get("regions"), show3d=showResult)
            table = mrml.fill_table(scene, resultRows(result), name=f"{base} TMBRB results",
                                    node=existing.get("table"))
            table.SetAttribute("TMBRB.result", json.dumps(result))
            mrml.show_cam(camNode, opacity=camOpacity, background_node=volumeNode, legend=showResult)
            nodes = {"cam": camNode, "regions": regions, "table": table, "roi": roiNode}
            if showResult:  # in 3D over the tumour and its ring: cropped to the map's own region, not the box
                _vr, region = mrml.show_cam_in_3d(camNode)
                if region is not None:
                    nodes["camRegion"] = region
                    outputs.append(region)
            mrml.place_in_study(scene, volumeNode, outputs + [camNode, regions, table], self.RESULTS_FOLDER)
            return nodes
        except Exception:
            created = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes() - 1, -1, -1)]
            for n in created:
                if n is not None and n.GetID() not in before:
                    scene.RemoveNode(n)
            raise

    @staticmethod
    def _resultRoi(scene, roiNode, result: Dict):
        """The ROI that shows the result's box: the given one, or (box proposed) one set from the result, made when
        there is none (then filed with the results)."""
        from ..geometry import Box

        if roiNode is not None and mrml.roi_is_defined(roiNode):
            return roiNode, []
        outputs = []
        if roiNode is None:
            roiNode = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", scene.GenerateUniqueName("TMBRB box"))
            outputs.append(roiNode)
        mrml.set_roi_from_box(roiNode, Box(tuple(result["box"]["lps_min"]), tuple(result["box"]["lps_max"])))
        return roiNode, outputs

    resultRows = staticmethod(resultRows)

    # one case, in a background process ------------------------------------------------------------------------------
    def startBackground(self, volumeNode, seedNode, roiNode=None, segmentationNode=None, ecog=None,
                        numberOfShifts: Optional[int] = None, device: str = "auto", bundle=None,
                        workDir=None, useWorker: Optional[bool] = None) -> EngineJob:
        """Check the inputs, write them to a work folder and start the case in the background.

        Parameters
        ----------
        volumeNode, seedNode, roiNode, segmentationNode, ecog, numberOfShifts, device, bundle
            As for :meth:`process`.
        workDir : path, optional
            Where the inputs written for the run and its outputs (``out/``) go; default a temporary folder that
            the job removes when it is cleaned up.
        useWorker : bool, optional
            True: the warm engine worker (:meth:`engineWorker`; the model stays loaded between cases, the CT file
            is written once per volume state); False: a new engine process for this case. Default ``useWorker``.

        Returns
        -------
        EngineJob
            Drive it with a :class:`JobWatcher` (or poll it, then call importBackgroundResult(job) and
            job.cleanup()).

        Raises
        ------
        TMBRBInputError
            Bad input, before anything starts.
        """
        import shutil

        import SimpleITK as sitk

        inputs = self.validateInputs(volumeNode, seedNode, roiNode, segmentationNode, ecog)
        work = Path(workDir) if workDir else Path(tempfile.mkdtemp(prefix="TMBRB-"))
        work.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(work / SCENE_REGIONS_FOLDER, ignore_errors=True)  # an earlier run's regions are not this one's
        useWorker = self.useWorker if useWorker is None else useWorker
        ctPath = self._ctFile(volumeNode, inputs["ct"]) if useWorker else work / "ct.nrrd"
        if not useWorker:
            sitk.WriteImage(inputs["ct"], str(ctPath), useCompression=False)
        segPath = None
        if inputs["mask"] is not None:
            segPath = work / "tumour_input.nrrd"
            sitk.WriteImage(inputs["mask"], str(segPath), useCompression=True)
        bundle = bundle if bundle is not None else self.bundle
        model = getattr(bundle, "path", bundle)
        if useWorker:
            box = inputs["box"]
            process = self.engineWorker().submit({
                "ct": str(ctPath), "seed_lps": list(inputs["seed_lps"]), "out": str((work / "out").resolve()),
                "box_lps": None if box is None else [list(box.min), list(box.max)],
                "segmentation": None if segPath is None else str(segPath.resolve()), "ecog": inputs["ecog"],
                "shifts": numberOfShifts, "model": None if model is None else str(model), "device": device,
                # the scene reads the volumes as regions of the CT's grid: in the temporary folder alone, or beside
                # the full outputs of a folder that is kept
                "volumes": "full" if workDir else "regions",
                "regions_out": str((work / SCENE_REGIONS_FOLDER).resolve()) if workDir else None},
                timeout_s=self.caseTimeoutS)
        else:
            process = EngineProcess(score_command(ctPath, inputs["seed_lps"], work / "out", box_lps=inputs["box"],
                                                  segmentation_path=segPath, ecog=inputs["ecog"], model=model,
                                                  device=device, shifts=numberOfShifts),
                                    env=engine_environment(self.deviceEnvironment())).start()
        jobInputs = JobInputs(volume=volumeNode, seed=seedNode, roi=roiNode, segmentation=segmentationNode,
                              ecog=inputs["ecog"], numberOfShifts=numberOfShifts, device=device, bundle=bundle,
                              warnings=inputs["warnings"])
        return EngineJob(process, work, work / "out", jobInputs, ownsWorkDir=workDir is None)

    def saveWorkerResult(self, job: EngineJob, folder, pictures: bool = True, timeoutS: float = 300.0) -> Path:
        """Write the full outputs of a case the warm worker scored (``tmbrb score``'s files: result.json, the
        full-grid volumes and, unless ``pictures`` is False, the PNG pictures) into ``folder``; result.json's path.

        A job started with the worker and no ``workDir`` hands its volumes to the scene as regions of the CT's grid
        and writes no full-grid files: the worker keeps the last case it scored, and this asks it to write them now
        (the viewer's "Save results"). Blocks until they are written.

        Raises
        ------
        TMBRBInputError
            When the job did not run on this logic's worker, the worker has stopped since, or it has scored another
            case since (it keeps only the last): press Apply again. Also when the folder cannot be written.
        TMBRBError
            When the worker fails to write the files.
        """
        request = getattr(job, "process", None)
        worker = self._worker
        if worker is None or getattr(request, "worker", None) is not worker or not worker.alive \
                or request.proc is not worker.proc:
            raise TMBRBInputError("The engine that scored this case no longer holds its result (it was stopped or "
                                  "restarted, or the case ran in a process of its own).", "Press Apply again, then save.")
        run = worker.submit({"of": request.id, "out": str(Path(folder).resolve()), "pictures": bool(pictures)},
                            timeout_s=timeoutS, op="save")
        run.wait(timeoutS + 5.0)
        if run.outcome() == "done":
            return Path(run.result_path)
        message = run.failure_message()
        raise (TMBRBInputError(message) if run.outcome() == "input-error" else TMBRBError(message))

    # the warm engine ------------------------------------------------------------------------------------------------
    def engineWorker(self) -> EngineWorker:
        """The engine worker of this logic (made on first use; its process starts with the first case), with the
        device selection (:meth:`setDeviceSelection`) in its environment."""
        if self._worker is None:
            self._worker = EngineWorker(env=engine_environment(self.deviceEnvironment()), timeout_s=self.caseTimeoutS)
            self._ownsWorker = True
        return self._worker

    # the device -----------------------------------------------------------------------------------------------------
    def deviceEnvironment(self, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        """The environment variables that select the engine's device: ``CUDA_VISIBLE_DEVICES`` empty when
        ``forceCpu``, the chosen GPU when ``gpuIndex`` is set (counted among the GPUs this process may use: an
        existing CUDA_VISIBLE_DEVICES list is respected), else nothing.

        Parameters
        ----------
        base : dict, optional
            The environment it applies to (default this process's).
        """
        import os

        if self.forceCpu:
            return {"CUDA_VISIBLE_DEVICES": ""}
        if self.gpuIndex is None or int(self.gpuIndex) < 0:
            return {}
        outer = (os.environ if base is None else base).get("CUDA_VISIBLE_DEVICES")
        choices = [c.strip() for c in outer.split(",") if c.strip()] if outer else None
        if choices is not None and int(self.gpuIndex) >= len(choices):
            raise TMBRBInputError(f"GPU {self.gpuIndex} is not one of the {len(choices)} GPUs this Slicer may use "
                                  f"(CUDA_VISIBLE_DEVICES={outer}).", "Choose a lower GPU number or 'auto'.")
        return {"CUDA_VISIBLE_DEVICES": choices[int(self.gpuIndex)] if choices is not None else str(int(self.gpuIndex))}

    def setDeviceSelection(self, gpuIndex: Optional[int] = None, forceCpu: bool = False) -> bool:
        """Choose the engine's GPU (None or -1: the first one the engine sees) or force the CPU. The engine worker
        this logic owns is ended when its environment no longer matches (the next case starts it again). Returns
        True when the selection changed."""
        gpuIndex = None if gpuIndex is None or int(gpuIndex) < 0 else int(gpuIndex)
        if (gpuIndex, bool(forceCpu)) == (self.gpuIndex, self.forceCpu):
            return False
        self.gpuIndex, self.forceCpu = gpuIndex, bool(forceCpu)
        if self._worker is not None and self._ownsWorker:
            self._worker.shutdown()
            self._worker = None
        return True

    def requestDeviceInfo(self, timeout_s: Optional[float] = 300.0):
        """Ask the engine worker (which has torch; Slicer's process never imports it) what a case would run on.
        Returns the request: poll it from a timer, then :meth:`deviceInfoOf` (the widget), or use
        :meth:`deviceInfo` to wait."""
        return self.engineWorker().submit({"device": "cpu" if self.forceCpu else "auto"}, timeout_s=timeout_s,
                                          op="device")

    @staticmethod
    def deviceInfoOf(request) -> Optional[Dict[str, Any]]:
        """The device a finished :meth:`requestDeviceInfo` request reported (None while it runs). Raises
        TMBRBError when the worker could not tell."""
        request.poll()
        if not request.finished:
            return None
        if request.outcome() != "done":
            raise TMBRBError("The engine could not tell its device: " + request.failure_message())
        return dict(request.answer["device"])

    def deviceInfo(self, timeout_s: float = 300.0, processEvents: Optional[Callable[[], None]] = None
                   ) -> Dict[str, Any]:
        """What a case would run on, from the engine worker: device ('cuda:0' or 'cpu'), name (the GPU's, or
        'CPU'), reason (why the CPU), gpus. Blocks; ``processEvents`` (default ``slicer.app.processEvents`` when
        there is an application) is called while it waits."""
        request = self.requestDeviceInfo(timeout_s)
        hook = processEvents if processEvents is not None else _defaultProcessEvents()
        while True:
            info = self.deviceInfoOf(request)
            if info is not None:
                return info
            hook()
            time.sleep(0.02)

    @staticmethod
    def deviceText(info: Dict[str, Any]) -> str:
        """One line for the panel: 'GPU: <name>' or 'CPU: <why>'."""
        if str(info.get("device", "cpu")).startswith("cuda"):
            return f"GPU: {info.get('name') or info['device']}"
        return f"CPU: {info.get('reason') or 'no GPU'}"

    def useEngineWorker(self, worker: EngineWorker) -> None:
        """Send this logic's background cases to ``worker`` (e.g. one shared by several logics); :meth:`shutdown`
        then leaves it running: its owner ends it."""
        self._worker, self._ownsWorker = worker, False

    @staticmethod
    def _volumeState(volumeNode, ct) -> Tuple:
        """What the CT file written for a volume depends on: its voxels (image data modification time) and its
        physical grid in the world (parent transforms included)."""
        imageData = volumeNode.GetImageData()
        return (imageData.GetMTime() if imageData is not None else None, tuple(ct.GetOrigin()),
                tuple(ct.GetSpacing()), tuple(ct.GetDirection()), tuple(ct.GetSize()))

    def _ctFile(self, volumeNode, ct) -> Path:
        """The CT file of this volume for the worker: written once per volume state, then reused."""
        import SimpleITK as sitk

        key = volumeNode.GetID()
        state = self._volumeState(volumeNode, ct)
        known = self._ctFiles.get(key)
        if known is not None and known[0] == state and known[1].is_file():
            return known[1]
        if self._ctDir is None or not self._ctDir.is_dir():
            self._ctDir = Path(tempfile.mkdtemp(prefix="TMBRB-volumes-"))
        self.ctFilesWritten += 1
        path = self._ctDir / f"ct{self.ctFilesWritten}.nrrd"  # a new name and time: the worker reads it again
        sitk.WriteImage(ct, str(path), useCompression=False)
        if known is not None:
            try:
                known[1].unlink()
            except OSError:
                pass
        self._ctFiles[key] = (state, path)
        return path

    def shutdown(self) -> None:
        """End the engine worker and remove the CT files written for it (when the module or the viewer ends)."""
        import shutil

        if self._worker is not None and self._ownsWorker:
            self._worker.shutdown()
        if self._ctDir is not None:
            shutil.rmtree(self._ctDir, ignore_errors=True)
        self._ctDir, self._ctFiles = None, {}

    def restartOnCpu(self, job: EngineJob) -> EngineJob:
        """The same case again, on the CPU (after the GPU ran out of memory), in a new work folder."""
        i = job.inputs
        return self.startBackground(i.volume, i.seed, i.roi, i.segmentation, i.ecog, i.numberOfShifts, "cpu",
                                    i.bundle, workDir=None if job.ownsWorkDir else job.workDir / "cpu")

    def importBackgroundResult(self, job: EngineJob, showResult=True, camOpacity=0.5,
                               parameterNode=None) -> SceneResult:
        """Read a finished background run's outputs into the scene.

        Raises TMBRBCancelled, TMBRBInputError (the engine refused the input) or TMBRBError (it failed)."""
        state = job.poll()
        if state == "cancelled":
            raise TMBRBCancelled("Cancelled by the user; nothing was added to the scene.")
        if state == "input-error":
            raise TMBRBInputError(job.process.failure_message())
        if state != "done":
            raise TMBRBError(job.process.failure_message())
        out = job.resultPath.parent
        result = json.loads(job.resultPath.read_text(encoding="utf-8"))
        result["warnings"][:0] = [w for w in job.inputs.warnings if w not in result["warnings"]]
        cam, tumour, ring = self._resultVolumes(out, result, job.inputs.volume, job.workDir / SCENE_REGIONS_FOLDER,
                                                getattr(job.process, "id", None))
        nodes = self.createOutputNodes(job.inputs.volume, job.inputs.roi, result, cam, tumour, ring,
                                       showResult=showResult, camOpacity=camOpacity,
                                       existing=self._existingOutputs(parameterNode))
        i = job.inputs
        self._recordInputs(nodes, i.volume, i.seed, i.segmentation, i.ecog)
        if not job.ownsWorkDir:  # a work folder the caller keeps: Update attention updates its result.json too
            nodes["table"].SetAttribute(OUTPUT_DIR_ATTRIBUTE, str(out.resolve()))
        elif getattr(job.process, "worker", None) is not None:  # the worker holds it: exportDicom can ask for files
            self._workerJobs = {nodes["table"].GetID(): job}
        if parameterNode is not None:
            self._storeOutputs(parameterNode, nodes)
        return SceneResult(result, nodes, outputDir=out)

    @staticmethod
    def _resultVolumes(out: Path, result: Dict, volumeNode, regionsDir: Optional[Path] = None,
                       request: Optional[str] = None) -> Tuple:
        """(map, tumour, ring) of an engine output folder: regions of the CT's grid when the engine wrote them
        (result.json's ``region_index_lo`` in a temporary folder; ``regions.json`` in ``regionsDir`` beside a kept
        folder when it names this worker ``request``: removed once read, or when it is another run's), else the
        full-grid files."""
        import shutil

        import SimpleITK as sitk

        from ..volumes import Geometry, RegionVolume

        files = result.get("files") or {}
        lo = result.pop("region_index_lo", None)
        if lo is None and regionsDir is not None and (regionsDir / "regions.json").is_file():
            regions = json.loads((regionsDir / "regions.json").read_text(encoding="utf-8"))
            if request is not None and regions.get("request") == request:
                files, lo, out = regions["files"], regions["region_index_lo"], regionsDir
            else:  # left by another run (one that failed or was never read): not this result's volumes
                shutil.rmtree(regionsDir, ignore_errors=True)
        if lo is None:
            return tuple(sitk.ReadImage(str(out / name)) for name in ("cam.nrrd", "tumour.nrrd", "ring.nrrd"))
        ct = result.get("ct") or {}
        grid = Geometry(tuple(ct["size_xyz"]), tuple(ct["spacing_mm"]), tuple(ct["origin_lps"]),
                        tuple(ct["direction"])) if ct else mrml.node_geometry(volumeNode)
        volumes = tuple(RegionVolume(sitk.GetArrayFromImage(sitk.ReadImage(str(out / files[kind]))),
                                     tuple(int(v) for v in lo), grid) for kind in ("cam", "tumour", "ring"))
        if regionsDir is not None and out == regionsDir:
            shutil.rmtree(regionsDir, ignore_errors=True)
        return volumes

    @staticmethod
    def cleanupJob(job: Optional[EngineJob]) -> None:
        if job is not None:
            job.cleanup()

    # many cases -----------------------------------------------------------------------------------------------------
    def startCases(self, manifestCsv, outputDir, bundle=None, device: str = "auto", numberOfShifts=None,
                   pictures: bool = False, caseTimeoutS: Optional[float] = None,
                   onCase: Optional[Callable[[int, int, Dict], None]] = None,
                   onProgress: Optional[Callable[[float, str], None]] = None) -> "BatchJob":
        """Start scoring a manifest through the engine worker, one case at a time; drive the returned
        :class:`BatchJob` with ``step()`` from a timer (the GUI never waits), or use :meth:`processCases`.

        Parameters are those of :meth:`processCases`; ``onCase(number, total, row)`` after each case and
        ``onProgress(fraction, message)`` at each step.
        """
        bundle = bundle if bundle is not None else self.bundle
        return BatchJob(self, manifestCsv, outputDir, model=getattr(bundle, "path", bundle), device=device,
                        numberOfShifts=numberOfShifts, pictures=pictures,
                        caseTimeoutS=self.caseTimeoutS if caseTimeoutS is None else caseTimeoutS, onCase=onCase,
                        onProgress=onProgress)

    def processCases(self, manifestCsv, outputDir, bundle=None, device: str = "auto", numberOfShifts=None,
                     progress: Optional[Callable[[int, int, Dict], None]] = None, pictures: bool = False,
                     loadResults: bool = False, cancel: Optional[Callable[[], bool]] = None,
                     caseTimeoutS: Optional[float] = None,
                     processEvents: Optional[Callable[[], None]] = None) -> List[Dict]:
        """Score every case of a manifest CSV into ``outputDir/<case_id>/``, through the engine worker, and wait.

        The engine's resumable batch (``tmbrb batch``): a case whose result.json was written for the same inputs is
        skipped, a failed or timed-out case is recorded and does not stop the others. The cases run in the engine
        worker (a crash or an out-of-memory there cannot take Slicer down); while this waits it calls
        ``processEvents`` so the application stays alive.

        Parameters
        ----------
        manifestCsv : path
            The manifest (columns as for ``tmbrb batch``: ct, case_id, seed_ras or seed_lps, box, mask, ecog; paths
            relative to the manifest's folder).
        outputDir : path
            Where each case's folder and summary.csv go.
        bundle, device, numberOfShifts
            As for :meth:`process`.
        progress : callable(done, total, row), optional
            Called after each case (default: a log line).
        pictures : bool
            Also write the PNG overlays of each case.
        loadResults : bool
            Also load each scored case (CT, CAM, regions, table) into the scene.
        cancel : callable() -> bool, optional
            Polled while waiting; True stops the batch (the case running is stopped, finished cases are kept).
        caseTimeoutS : float, optional
            The most one case may take once the engine has started it (default ``caseTimeoutS`` of the logic);
            past it the case fails as timed out, the engine is stopped and the next case starts on a new one.
        processEvents : callable(), optional
            Called while waiting (default ``slicer.app.processEvents`` inside the application).

        Returns
        -------
        list of dict
            The rows of ``outputDir/summary.csv``: case_id, status ('ok', 'done-before' or 'failed'), score, error,
            output_dir, ... (after a cancel: the cases finished so far).

        Raises
        ------
        TMBRBInputError
            The manifest cannot be read or lacks the ct column (a bad *case* is recorded, not raised).

        Examples
        --------
        >>> import csv, tempfile
        >>> from pathlib import Path
        >>> from TMBRBLib.io import write_image
        >>> from TMBRBLib.phantom import make_phantom
        >>> from TMBRBLib.slicer.logic import SceneLogic
        >>> folder = Path(tempfile.mkdtemp())
        >>> case = make_phantom(7)  # a small synthetic chest CT with a tumour
        >>> _ = write_image(case.ct, folder / "ct.nrrd")
        >>> with open(folder / "manifest.csv", "w", newline="") as f:
        ...     w = csv.writer(f)
        ...     w.writerows([["case_id", "ct", "seed_lps"], ["demo", "ct.nrrd", ",".join(map(str, case.seed_lps))],
        ...                   ["outside", "ct.nrrd", "900,900,900"]])
        >>> logic = SceneLogic()
        >>> rows = logic.processCases(folder / "manifest.csv", folder / "out", device="cpu", numberOfShifts=0,
        ...                           progress=lambda done, total, row: None)
        >>> [(r["case_id"], r["status"]) for r in rows]
        [('demo', 'ok'), ('outside', 'failed')]
        >>> logic.shutdown()  # the engine worker
        """
        def onCase(number, total, row):
            logging.info(f"TMBRB batch {number}/{total}: {row.get('case_id')} {row.get('status')} "
                         f"{row.get('error') or ''}".rstrip())
            if progress is not None:
                progress(number, total, row)

        job = self.startCases(manifestCsv, outputDir, bundle=bundle, device=device, numberOfShifts=numberOfShifts,
                              pictures=pictures, caseTimeoutS=caseTimeoutS, onCase=onCase)
        rows = job.wait(cancel=cancel, processEvents=processEvents)
        if loadResults:
            ctPaths = self._manifestCtPaths(manifestCsv)
            for row in rows:
                if row["status"] in ("ok", "done-before") and row.get("output_dir"):
                    # output_dir is relative to the summary's folder (batch.summary_row)
                    self.loadCaseResult(Path(outputDir) / row["output_dir"], ctPaths.get(row["case_id"]))
        return rows

    @staticmethod
    def _manifestCtPaths(manifestCsv) -> Dict[str, str]:
        """{case_id: CT path} as the engine's batch reads the manifest."""
        from ..batch import read_manifest, row_to_case

        out = {}
        for number, row in enumerate(read_manifest(manifestCsv), 1):
            try:
                case = row_to_case(row, Path(manifestCsv).parent, number)
            except TMBRBError:
                continue
            out[case["case_id"]] = str(case["ct"])
        return out

    def loadCaseResult(self, caseDir, ctPath=None) -> SceneResult:
        """Load one engine output folder (result.json, cam/tumour/ring NRRD) and its CT (ctPath, or the path the
        result names) into the scene, with the same nodes as an interactive run ('volume': the CT's node)."""
        import SimpleITK as sitk

        from ..io import read_ct

        caseDir = Path(caseDir)
        result = json.loads((caseDir / "result.json").read_text(encoding="utf-8"))
        from ..outputs import recorded_path
        ctPath = ctPath or recorded_path(caseDir, result.get("inputs", {}).get("ct_path"))  # relative to caseDir
        if not ctPath:  # recorded by name and path sha256 (outputs.path_record): where it is is not recorded
            raise TMBRBInputError(f"The result in {caseDir} does not say where its CT is (it was more than one folder "
                                  "above the result).", "Give the CT's path (ctPath) to load it.")
        if not Path(ctPath).exists():
            raise TMBRBInputError(f"The CT of {caseDir} ('{ctPath}') is not available.", "Keep the CT files in place.")
        ct, _w = read_ct(ctPath)
        volumeNode = mrml.add_volume_node_from_sitk(self.scene, ct, caseDir.name)
        nodes = self.createOutputNodes(volumeNode, None, result, sitk.ReadImage(str(caseDir / "cam.nrrd")),
                                       sitk.ReadImage(str(caseDir / "tumour.nrrd")),
                                       sitk.ReadImage(str(caseDir / "ring.nrrd")), showResult=False)
        nodes["volume"] = volumeNode
        nodes["table"].SetAttribute(OUTPUT_DIR_ATTRIBUTE, str(caseDir.resolve()))
        nodes["table"].SetAttribute(TUMOUR_KEY_ATTRIBUTE, self.tumourSegmentKey(nodes["regions"]))
        return SceneResult(result, nodes, outputDir=caseDir)

    @staticmethod
    def dicomExportSource(tableNode) -> Tuple[Optional[Path], Optional[Path]]:
        """(result folder, DICOM series folder) of a result in the scene, as far as they are known: the folder kept
        for the result (a batch case, a run with an output folder), and the CT its result.json names when that is a
        DICOM series folder. None for what is not known."""
        from ..io import dicom_series_files
        from ..outputs import recorded_path

        folder = tableNode.GetAttribute(OUTPUT_DIR_ATTRIBUTE) if tableNode is not None else None
        if not folder or not (Path(folder) / "result.json").is_file():
            return None, None
        try:
            result = json.loads((Path(folder) / "result.json").read_text(encoding="utf-8"))
            ct = recorded_path(Path(folder), result.get("inputs", {}).get("ct_path"))
        except (OSError, ValueError):
            return Path(folder).resolve(), None
        return Path(folder).resolve(), (Path(ct).resolve() if ct and dicom_series_files(ct) else None)

    def exportDicom(self, tableNode, dicomFolder=None, outputDir=None) -> Dict[str, Path]:
        """The result's DICOM Segmentation, CAM parametric map and report (``dicom_out.export_dicom``), written from
        its kept result folder into ``outputDir`` (default: the result folder's ``dicom/``).

        Parameters
        ----------
        tableNode : vtkMRMLTableNode
            The results table of a result whose folder is kept (OUTPUT_DIR_ATTRIBUTE).
        dicomFolder : str or Path, optional
            The CT's DICOM series folder (default: the CT the result names, when it is one).
        outputDir : str or Path, optional
            Where the three files go. For a result of the warm worker scored into a temporary folder (a plain
            Apply) it is required: the worker writes the result's files there (:meth:`saveWorkerResult`) and the
            three objects go to its ``dicom/``.

        Returns
        -------
        dict
            What ``export_dicom`` returns (the written SEG, map and report by "seg", "pm", "sr").

        Raises
        ------
        TMBRBInputError
            No kept folder; a CT that is not a DICOM series and no folder given; or export_dicom's refusals.
        """
        from ..batch import DICOM_DIR
        from ..dicom_out import export_dicom

        caseDir, recordedDicom = self.dicomExportSource(tableNode)
        if caseDir is None:
            job = self._workerJobs.get(tableNode.GetID()) if tableNode is not None else None
            if job is None:
                raise TMBRBInputError("This result has no result folder to export from (it was scored into a "
                                      "temporary folder).", "Score it with an output folder, or load a batch case, "
                                      "then export.")
            if outputDir is None:
                raise TMBRBInputError("This result was scored into a temporary folder.",
                                      "Choose a folder for its results and DICOM objects.")
            # the warm worker writes the result's files there first (it holds the last case it scored)
            caseDir = self.saveWorkerResult(job, outputDir, pictures=False).parent
            outputDir = caseDir / DICOM_DIR
        dicomFolder = dicomFolder or recordedDicom
        if dicomFolder is None:
            raise TMBRBInputError("The CT of this result is not a DICOM series folder; DICOM objects reference the "
                                  "source series.", "Choose the folder of the CT's DICOM series.")
        return export_dicom(caseDir, dicomFolder, outputDir or caseDir / DICOM_DIR)


class BatchJob:
    """A manifest scored through the engine worker, one 'case' request per row, driven by :meth:`step`.

    Each row is planned here (``TMBRBLib.batch.plan_cases``: a row that cannot be read fails at once) and scored in
    the worker as ``tmbrb batch`` scores it (resume on the inputs key, the case folder replaced whole).
    ``outputDir/summary.csv`` is rewritten after every case. A case that runs longer than ``caseTimeoutS`` after the
    worker started it fails as timed out; the worker is stopped and the next case starts on a new one. ``state``:
    'running', 'done' or 'cancelled'; ``rows``: the summary rows so far.
    """

    def __init__(self, logic: SceneLogic, manifestCsv, outputDir, model=None, device: str = "auto",
                 numberOfShifts=None, pictures: bool = False, caseTimeoutS: Optional[float] = None,
                 onCase: Optional[Callable[[int, int, Dict], None]] = None,
                 onProgress: Optional[Callable[[float, str], None]] = None):
        from ..batch import plan_cases, read_manifest

        self.logic, self.manifest, self.outputDir = logic, Path(manifestCsv), Path(outputDir)
        self.manifestRows = read_manifest(self.manifest)  # one reading for the plan and the worker (utf-8-sig)
        self.plans = plan_cases(self.manifestRows, self.manifest.parent)
        self.outputDir.mkdir(parents=True, exist_ok=True)
        self.request = {"base": str(self.manifest.parent.resolve()), "out": str(self.outputDir.resolve()),
                        "model": None if model is None else str(model), "device": device, "shifts": numberOfShifts,
                        "pictures": bool(pictures)}
        self.caseTimeoutS, self.onCase, self.onProgress = caseTimeoutS, onCase, onProgress
        self.rows: List[Dict] = []
        self.index = 0  # the row being scored (0-based)
        self.current = None  # its worker request
        self._caseStartedAt: Optional[float] = None
        self.state = "running"

    @property
    def total(self) -> int:
        return len(self.plans)

    def step(self) -> bool:
        """Read the worker's answers, record a finished case, start the next one (never blocks). True while
        there is more to do."""
        if self.state != "running":
            return False
        if self.current is not None and not self._currentFinished():
            if self.onProgress is not None:
                self.onProgress((self.index + self.current.progress) / max(self.total, 1),
                                f"case {self.index + 1}/{self.total}: {self.plans[self.index][1]}")
            return True
        while self.current is None and self.index < self.total:
            case, caseId, error = self.plans[self.index]
            if case is None:
                from ..batch import failed_row

                self._record(failed_row(caseId, error, 0.0, self.outputDir))
                continue
            self.current = self.logic.engineWorker().submit(
                dict(self.request, row=self.manifestRows[self.index], number=self.index + 1),
                timeout_s=None if self.caseTimeoutS is None else self.caseTimeoutS + 600.0, op="case")
            self._caseStartedAt = None
        if self.current is None:
            self.state = "done"
            return False
        return True

    def _currentFinished(self) -> bool:
        """Poll the running case; record it when it ended (or ran past its time)."""
        request = self.current
        request.poll()
        if self._caseStartedAt is None and request.message == "scoring":
            self._caseStartedAt = time.time()  # the worker started the case (worker start-up does not count)
        timedOut = (self.caseTimeoutS is not None and self._caseStartedAt is not None and request.running
                    and time.time() - self._caseStartedAt > self.caseTimeoutS)
        if timedOut:
            self.logic.engineWorker().kill(f"the case did not finish within {self.caseTimeoutS:g} s")
            request.poll()
        if not request.finished:
            return False
        from ..batch import failed_row

        caseId = self.plans[self.index][1]
        seconds = time.time() - (self._caseStartedAt or request.started_at)
        if request.outcome() == "done":
            row = dict(request.answer["row"])
        elif timedOut:
            row = failed_row(caseId, f"timed out: the case did not finish within {self.caseTimeoutS:g} s (the "
                              "engine was stopped; the next case starts on a new one)", seconds, self.outputDir)
        else:
            row = failed_row(caseId, request.failure_message(), seconds, self.outputDir)
        self.current = None
        self._record(row)
        return True

    def _record(self, row: Dict) -> None:
        from ..batch import write_summary

        number = self.index + 1
        row = dict(row, row=number)
        self.rows.append(row)
        self.index += 1
        write_summary(self.outputDir / "summary.csv", self.rows)
        if self.onCase is not None:
            self.onCase(number, self.total, row)

    def cancel(self) -> None:
        """Stop the batch: the running case is stopped (the worker too when it does not stop within its grace
        time); the cases finished so far stay in summary.csv and their folders."""
        if self.state != "running":
            return
        self.state = "cancelled"
        if self.current is not None:
            self.current.cancel()
            self.current = None

    def wait(self, cancel: Optional[Callable[[], bool]] = None,
             processEvents: Optional[Callable[[], None]] = None, interval_s: float = 0.05) -> List[Dict]:
        """Drive the batch to its end (scripts); ``cancel()`` polled, ``processEvents()`` called while waiting
        (default ``slicer.app.processEvents`` inside the application). Returns the summary rows."""
        hook = processEvents if processEvents is not None else _defaultProcessEvents()
        while self.step():
            if cancel is not None and cancel():
                self.cancel()
                break
            hook()
            time.sleep(interval_s)
        return self.rows


def _defaultProcessEvents() -> Callable[[], None]:
    """``slicer.app.processEvents`` inside the application (the GUI stays alive while a script waits), else a
    no-op."""
    app = getattr(slicer, "app", None)
    hook = getattr(app, "processEvents", None)
    return hook if callable(hook) else (lambda: None)


class JobWatcher:
    """The one polling loop for a background job, driven by the caller's timer.

    3D Slicer's widget calls :meth:`step` from a QTimer, the browser viewer from its asyncio loop; each step reads
    what the engine printed and reports progress, and once the run has ended it finishes the job exactly once:

    - done: the outputs are read into the scene (``logic.importBackgroundResult``) and ``onResult(sceneResult)``
      is called. With ``onScores``, the step that sees the run done only calls ``onScores(result)`` with result.json's
      content, and the next step reads the outputs into the scene: a front end can show the score and risk groups
      before the map's views are rendered (the browser viewer does);
    - the GPU ran out of memory: the case is started again on the CPU (``onProgress`` says so) and watching goes on;
    - cancelled: ``onCancelled()``;
    - refused input or failure, or reading the outputs failed: ``onError(exception)``.

    The job's work folder is cleaned up when it finishes. ``step()`` returns True while there is more to watch.
    """

    def __init__(self, logic: SceneLogic, job: EngineJob, onProgress: Optional[Callable[[float, str], None]] = None,
                 onResult: Optional[Callable[[SceneResult], None]] = None,
                 onError: Optional[Callable[[Exception], None]] = None,
                 onCancelled: Optional[Callable[[], None]] = None,
                 onScores: Optional[Callable[[Dict], None]] = None, **importOptions):
        self.logic, self.job = logic, job
        self.onProgress, self.onResult, self.onError, self.onCancelled = onProgress, onResult, onError, onCancelled
        self.onScores = onScores
        self.importOptions = importOptions  # showResult, camOpacity, parameterNode
        self.finished = False
        self._scoresShown = False

    def step(self) -> bool:
        if self.finished:
            return False
        state = self.job.poll()
        if state == "running":
            if self.onProgress is not None:
                self.onProgress(self.job.progress, self.job.message or "computing")
            return True
        if state == "failed" and self._outOfMemoryOnGpu():
            self._restartOnCpu()
            return not self.finished
        if state == "done" and self.onScores is not None and not self._scoresShown:
            self._scoresShown = True
            if self._showScores():
                return True  # the outputs are read into the scene at the next step
        self._finish(state)
        return False

    def _showScores(self) -> bool:
        """``onScores(result.json's content)``; False when it cannot be read (``_finish`` then reports why)."""
        try:
            result = json.loads(self.job.resultPath.read_text(encoding="utf-8"))
            result["warnings"][:0] = [w for w in self.job.inputs.warnings if w not in result["warnings"]]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        self.onScores(result)
        return True

    def cancel(self) -> None:
        """Stop the run; ``onCancelled`` is called at once (nothing is added to the scene)."""
        if not self.finished:
            self.job.cancel()
            self._finish("cancelled")

    def _outOfMemoryOnGpu(self) -> bool:
        return self.job.inputs.device != "cpu" and "out of memory" in self.job.process.failure_message().lower()

    def _restartOnCpu(self) -> None:
        old = self.job
        try:
            self.job = self.logic.restartOnCpu(old)
        except Exception as e:  # noqa: BLE001 - reported to the caller, never lost
            self.finished = True
            if self.onError is not None:
                self.onError(e)
        finally:
            old.cleanup()
        if not self.finished and self.onProgress is not None:
            self.onProgress(0.0, "The GPU ran out of memory; running again on the CPU.")

    def _finish(self, state: str) -> None:
        self.finished = True
        try:
            if state == "cancelled":
                if self.onCancelled is not None:
                    self.onCancelled()
                return
            try:
                result = self.logic.importBackgroundResult(self.job, **self.importOptions)
            except Exception as e:  # noqa: BLE001 - reported to the caller, never lost
                if self.onError is None:
                    raise
                self.onError(e)
                return
            if self.onResult is not None:
                self.onResult(result)
        finally:
            self.job.cleanup()
