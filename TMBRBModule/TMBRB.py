"""TMBRB: a CT radiomic biomarker of tumour mutational burden (He et al., J Immunother Cancer 2020) in 3D Slicer.

Research use only - not a medical device.

This file holds what only the Slicer application has: the module (TMBRB), its panel (TMBRBWidget), the self-test
(TMBRBTest) and TMBRBLogic, a thin layer over the scene logic in TMBRBLib/slicer/logic.py. That logic needs no GUI:
it runs in 3D Slicer, in its Python console, on the ``slicer-core`` wheel (tests, batch) and in the browser viewer.
"""

from __future__ import annotations

import logging
import unittest

import vtk

import slicer

try:  # Qt exists only inside the 3D Slicer application (the widget's timer)
    import qt
except ImportError:  # slicer-core wheel, plain Python: the Logic works without it
    qt = None

try:
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )
    from slicer.i18n import tr as _
except ImportError:  # outside the application (slicer-core wheel): small stand-ins so the Logic stays importable

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

from TMBRBLib.errors import TMBRBError, TMBRBInputError
from TMBRBLib.slicer import mrml
from TMBRBLib.slicer.dependencies import TMBRBDependencyError, installPlan
from TMBRBLib.slicer.logic import JobWatcher, SceneLogic, SceneResult
from TMBRBLib.slicer.parameters import TMBRBParameterNode

# what scripts using the module find here (errors and the parameter node are the library's, re-exported)
__all__ = ["TMBRB", "TMBRBWidget", "TMBRBLogic", "TMBRBTest", "TMBRBParameterNode", "SceneResult", "TMBRBError",
           "TMBRBInputError", "TMBRBDependencyError"]

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
        self.parent.dependencies = ["Markups", "Segmentations", "VolumeRendering", "Colors"]
        self.parent.contributors = ["TMBRB contributors"]
        self.parent.helpText = _(
            "<p><b>Research use only - not a medical device; do not use it to guide patient care.</b></p>"
            "<p>TMBRB estimates a CT radiomic biomarker of tumour mutational burden (the probability of High-TMB, "
            "&ge; 10 mut/Mb) for a lung tumour, with overall- and progression-free-survival risk groups (also combined "
            "with the ECOG performance status) and the model's class activation map (Grad-CAM based; the model bundle names the method).</p>"
            "<ol><li>Select the CT.</li><li>Place the seed: one click in the centre of the tumour. A box is proposed "
            "around the tumour; drag it if needed.</li><li>Optionally pick a tumour segmentation and the ECOG "
            "status.</li><li>Apply.</li></ol>"
            "<p>To try it: Sample Data, TMBRB, TMBRBPhantom (the demo phantom, made on this computer) loads a CT with "
            "its seed and box; then Apply.</p>"
            "<p>Batch from the Python console: <code>slicer.util.getModuleLogic('TMBRB').processCases(csv, outDir)"
            "</code>.</p>"
            f"<p>Method: {CITATION}</p>")
        self.parent.acknowledgementText = _(
            "Implements the method of He et al., J Immunother Cancer 2020 (doi:10.1136/jitc-2020-000550). "
            "Uses MONAI, PyTorch and SimpleITK.")
        try:  # the demo phantom in Sample Data, once the application has started (no application: slicer-core)
            slicer.app.connect("startupCompleted()", registerSampleData)
        except AttributeError:
            pass


def registerSampleData() -> bool:
    """The demo phantom as Sample Data (category TMBRB), generated on first use: TMBRBLib.slicer.sampledata."""
    from pathlib import Path

    from TMBRBLib.slicer.sampledata import registerSampleData as register

    return register(thumbnail=Path(__file__).resolve().parent / "Resources" / "Icons" / "TMBRB.png")


# ----------------------------------------------------------------------------------------------------------------------
# Logic


class TMBRBLogic(SceneLogic, ScriptedLoadableModuleLogic):
    """The module's Logic: :class:`TMBRBLib.slicer.logic.SceneLogic` (everything it computes, usable without the GUI)
    as a Slicer scripted-module logic.

    ``TMBRBLogic().process(volumeNode, seedNode, roiNode=None, segmentationNode=None, ecog=None)`` scores one case and
    creates the output nodes; ``TMBRBLogic().processCases(manifestCsv, outputDir)`` scores many cases from files.
    """

    def __init__(self, scene=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        SceneLogic.__init__(self, scene)


# ----------------------------------------------------------------------------------------------------------------------
# Widget


class TMBRBWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel. Inference runs in the engine worker, polled by a QTimer.

    The timer's path (onPollJob and the JobWatcher callbacks) opens no dialog while the timer runs: a modal dialog
    runs a nested event loop in which the timer would fire again (tests/slicer/test_slicer_static.py checks it);
    engine errors go to the status line and the log.
    """

    POLL_MS = 50  # a result is placed at most this long after the worker answers (a poll reads a pipe, no more)
    # the input nodes' events after which a shown result may be outdated
    INPUT_EVENTS = {"inputVolume": ("ImageDataModifiedEvent", "TransformModifiedEvent"),
                    "seedPoint": ("PointModifiedEvent", "PointPositionDefinedEvent", "PointRemovedEvent"),
                    "boxRoi": ("PointModifiedEvent", "ModifiedEvent"),
                    "tumourSegmentation": ("ModifiedEvent", "vtkSegmentation.SegmentModified"),
                    # the result's own Tumour segment, edited in Segment Editor: the attention waits for an update
                    "regionsSegmentation": ("vtkSegmentation.SegmentModified",)}

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._watcher = None  # JobWatcher of the background run, if one runs
        self._timer = None
        self._observedSeed = None
        self._deviceTimer = None  # polls the engine worker's answer about its device
        self._deviceRequest = None
        self._deviceShown = False  # the engine has told its device once
        self._observedInputs = []  # (node, event name) observed for the outdated-result mark

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
        self.ui.editTumourButton.connect("clicked(bool)", self.onEditTumourButton)
        self.ui.updateAttentionButton.connect("clicked(bool)", self.onUpdateAttentionButton)
        self.ui.exportDicomButton.connect("clicked(bool)", self.onExportDicomButton)

        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_MS)
        self._timer.connect("timeout()", self.onPollJob)
        self._deviceTimer = qt.QTimer()
        self._deviceTimer.setInterval(self.POLL_MS)
        self._deviceTimer.connect("timeout()", self.onPollDevice)
        self.ui.outdatedLabel.visible = False

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        for timer in (self._timer, self._deviceTimer):
            if timer is not None:
                timer.stop()
        self._deviceRequest = None
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        if self.logic is not None:
            self.logic.shutdown()  # the engine worker

    def enter(self) -> None:
        self.initializeParameterNode()
        if not self._deviceShown:
            self.updateDevice()  # starts the engine worker when the dependencies are there

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.onCancelButton()
        self.setParameterNode(None)
        self._observeInputs()  # no parameter node: stop observing the old scene's input nodes

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
        running = self._watcher is not None
        if p and p.inputVolume and p.seedPoint and not running:
            self.ui.applyButton.toolTip = _("Score the tumour")
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.toolTip = _("Select the CT and place the seed") if not running else _("Running...")
            self.ui.applyButton.enabled = False
        self.ui.proposeBoxButton.enabled = bool(p and p.inputVolume and p.seedPoint and not running)
        if p and p.seedPoint is not self._observedSeed:
            self.onSeedNodeChanged(p.seedPoint)
        if p and not running and self.logic.setDeviceSelection(p.gpuIndex, p.forceCpu):
            self._deviceShown = False
            self.updateDevice()
        self._observeInputs()
        self.updateResultState()

    # a shown result is marked outdated once its inputs change --------------------------------------------------------
    def _observeInputs(self) -> None:
        """Observe the nodes the shown result depends on (CT, seed, box, segmentation); ECOG is in the parameter
        node, which is observed already."""
        p = self._parameterNode
        wanted = []
        if p:
            for name, events in self.INPUT_EVENTS.items():
                node = getattr(p, name)
                if node is not None:
                    wanted += [(node, e) for e in events if self._eventId(node, e) is not None]
        if [(n.GetID(), e) for n, e in wanted] == [(n.GetID(), e) for n, e in self._observedInputs]:
            return
        for node, event in self._observedInputs:
            self.removeObserver(node, self._eventId(node, event), self.updateResultState)
        for node, event in wanted:
            self.addObserver(node, self._eventId(node, event), self.updateResultState)
        self._observedInputs = wanted

    @staticmethod
    def _eventId(node, name: str):
        """The event ID of 'EventName' (the node's class) or 'vtkClass.EventName' (forwarded by the node)."""
        owner, _dot, event = name.rpartition(".")
        return getattr(getattr(slicer, owner, None) if owner else node, event, None)

    def updateResultState(self, caller=None, event=None) -> None:
        """Grey the shown result and say so when it no longer belongs to the inputs (SceneLogic.resultState)."""
        state = self.logic.resultState(self._parameterNode) if self._watcher is None else "none"
        outdated = state == "outdated"
        self.ui.outdatedLabel.visible = state in ("outdated", "attention-outdated")
        self.ui.resultsCollapsibleButton.enabled = not outdated
        self.ui.updateAttentionButton.enabled = state == "attention-outdated"
        self.ui.editTumourButton.enabled = state in ("current", "attention-outdated")
        self.ui.exportDicomButton.enabled = state == "current"  # the folder's result.json is the shown result
        if outdated:
            self.ui.outdatedLabel.text = _("Outdated: the CT, seed, box, segmentation or ECOG changed after this "
                                           "result. Apply again to score the case as it is now.")
        elif state == "attention-outdated":
            self.ui.outdatedLabel.text = _("The Tumour segment was edited: the score still holds, the attention "
                                           "shares do not. Click Update attention.")

    # the device the engine computes on -------------------------------------------------------------------------------
    def updateDevice(self) -> None:
        """Ask the engine worker what it computes on (it has PyTorch; this process never imports it) and show it
        when it answers (onPollDevice)."""
        if self._deviceTimer is None or self._watcher is not None:
            return
        try:
            missing = not installPlan().empty  # from the packages' metadata: nothing is imported
        except TMBRBError:
            missing = True
        if missing:
            self.ui.deviceLabel.text = _("Device: not known yet (PyTorch/MONAI are installed on the first Apply).")
            return
        try:
            self._deviceRequest = self.logic.requestDeviceInfo()
        except TMBRBError as e:
            self.ui.deviceLabel.text = _("Device: {error}").format(error=str(e))
            return
        self.ui.deviceLabel.text = _("Device: asking the engine...")
        self._deviceTimer.start()

    def onPollDevice(self) -> None:
        if self._deviceRequest is None:
            self._deviceTimer.stop()
            return
        try:
            info = self.logic.deviceInfoOf(self._deviceRequest)
        except TMBRBError as e:
            self._deviceTimer.stop()
            self._deviceRequest = None
            self.ui.deviceLabel.text = _("Device: unknown ({error})").format(error=str(e).splitlines()[0])
            return
        if info is None:
            return
        self._deviceTimer.stop()
        self._deviceRequest = None
        self._deviceShown = True
        self.ui.deviceLabel.text = _("Device: {device}").format(device=self.logic.deviceText(info))
        self.ui.deviceLabel.toolTip = _("GPUs the engine sees: {gpus}").format(gpus=", ".join(info["gpus"]) or "none")

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
        mrml.keep_last_seed_point(p.seedPoint)  # single-place mode adds a point per click: keep the last one
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
        self._deviceTimer.stop()  # no timer runs while Apply may ask (dialogs) or install
        with slicer.util.tryWithErrorDisplay(_("TMBRB could not score this case."), waitCursor=True):
            self.logic.ensureDependencies(confirm=lambda message: slicer.util.confirmOkCancelDisplay(message))
            self.logic.setDeviceSelection(p.gpuIndex, p.forceCpu)
            device = "cpu" if p.forceCpu else "auto"
            job = self.logic.startBackground(p.inputVolume, p.seedPoint, p.boxRoi, p.tumourSegmentation,
                                             p.ecog, p.numberOfShifts, device)
            self._watcher = JobWatcher(self.logic, job, onProgress=self.onJobProgress, onResult=self.onJobResult,
                                       onError=self.onJobError, onCancelled=self.onJobCancelled,
                                       camOpacity=p.camOpacity, parameterNode=p)
            self.ui.progressBar.visible = True
            self.ui.progressBar.value = 0
            self.ui.cancelButton.enabled = True
            self.ui.statusLabel.text = _("Starting the model...")
            self.ui.statusLabel.styleSheet = ""
            self._checkCanApply()
            self._timer.start()

    def onCancelButton(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()  # calls onJobCancelled

    def onPollJob(self) -> None:
        if self._watcher is None or not self._watcher.step():
            self._finishJob()

    def onJobProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message

    def onJobResult(self, result: SceneResult) -> None:
        self._finishJob()  # timer stopped before anything else is shown
        self.showResult(result)
        self.centreViews(result)
        self.ui.statusLabel.text = _("Done.")

    def centreViews(self, result: SceneResult) -> None:
        """The slice views jump to the seed and the 3D views turn to the box (as the browser viewer does)."""
        seed = self._parameterNode.seedPoint if self._parameterNode else None
        try:
            mrml.centre_views_on_result(slicer.mrmlScene, mrml.seed_ras(seed), result.nodes.get("roi"))
        except (TMBRBError, ValueError) as e:  # no seed point left: the views stay where they are
            logging.info("TMBRB: views not centred on the result: %s", e)

    def onJobCancelled(self) -> None:
        self._finishJob()
        self.ui.statusLabel.text = _("Cancelled; nothing was added to the scene.")

    def onJobError(self, error: Exception) -> None:
        """Shown in the panel's status line (red) and the log, not in a modal dialog (the panel stays usable)."""
        self._finishJob()
        self.ui.statusLabel.text = _("TMBRB could not score this case.") + "\n" + str(error)
        self.ui.statusLabel.styleSheet = "color: #b00020;"
        logging.error("TMBRB could not score this case: %s", error)

    def _finishJob(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        if self._watcher is not None and not self._watcher.finished:
            self._watcher.cancel()
        self._watcher = None
        self.ui.progressBar.visible = False
        self.ui.cancelButton.enabled = False
        self._checkCanApply()
        if not self._deviceShown:
            self.updateDevice()

    # results --------------------------------------------------------------------------------------------------------
    def showResult(self, result: SceneResult) -> None:
        """The panel's labels from the result's lines (TMBRBLib.present), the table below them."""
        from TMBRBLib.present import by_key, result_lines, select

        lines = result_lines(result.result)
        line = by_key(lines)
        self.ui.resultsCollapsibleButton.collapsed = False
        self.ui.demoBannerLabel.visible = line["demo"].value == "yes"
        self.ui.demoBannerLabel.text = line["notice"].value
        self.ui.scoreLabel.text = f"{line['score'].value}  ({line['spread'].value})"
        # likeness to the training data (a flagged check is also among the warnings below, and every line in the table)
        self.ui.scoreLabel.toolTip = "\n".join(line[k].text for k in ("calibrated", "ood", "acquisition") if k in line)
        self.ui.osGroupLabel.text = line["os"].value
        self.ui.osGroupLabel.toolTip = line["os"].detail
        self.ui.pfsGroupLabel.text = line["pfs"].value
        self.ui.pfsGroupLabel.toolTip = line["pfs"].detail
        combined = select(lines, ("os_ecog", "pfs_ecog"))
        self.ui.ecogCombinedLabel.text = "\n".join(f"{c.label}: {c.value}" for c in combined) or _("ECOG not given")
        self.ui.ecogCombinedLabel.toolTip = "\n".join(c.detail for c in combined)
        # the tumour mask's source and confidence next to the attention figures that depend on it
        mask = line.get("mask")
        self.ui.attentionLabel.text = line["attention"].value + (f"\n{mask.text}" if mask is not None else "")
        self.ui.attentionLabel.toolTip = mask.detail if mask is not None else ""
        self.ui.modelLabel.text = line["model"].value
        self.ui.warningsLabel.text = "\n".join(w.value for w in select(lines, ("warning",)))
        self.showResultTable(result.nodes.get("table"))

    def onEditTumourButton(self) -> None:
        """Open Segment Editor on the result's regions segmentation (its Tumour segment), over the CT."""
        p = self._parameterNode
        if not (p and p.regionsSegmentation and p.inputVolume):
            return
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(p.regionsSegmentation)
        editor.setSourceVolumeNode(p.inputVolume)
        sid = p.regionsSegmentation.GetSegmentation().GetSegmentIdBySegmentName(mrml.TUMOUR_SEGMENT_NAME)
        if sid:
            editor.setCurrentSegmentID(sid)

    def onUpdateAttentionButton(self) -> None:
        """Attention shares, ring, outlines and table from the edited Tumour segment (SceneLogic.updateAttention)."""
        try:
            result = self.logic.updateAttentionOf(self._parameterNode)
        except TMBRBError as e:
            self.ui.statusLabel.text = str(e)
            return
        self.showResult(result)
        self.ui.statusLabel.text = _("Attention updated from the edited tumour (the model was not run again).")
        self.updateResultState()

    def onExportDicomButton(self) -> None:
        """The result as DICOM objects in its result folder's dicom/ (SceneLogic.exportDicom); asks for the DICOM
        series folder when the result's CT is not one, and for an output folder when the result has none (a plain
        Apply: the engine worker writes the result's files there first)."""
        p = self._parameterNode
        table = p.resultTable if p else None
        caseDir, dicomFolder = self.logic.dicomExportSource(table)
        outputDir = None
        if caseDir is None:  # a plain Apply (temporary folder): the engine writes the result's files where asked
            outputDir = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(),
                                                            _("Folder for the result and its DICOM objects"))
            if not outputDir:
                return
        if dicomFolder is None:
            chosen = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("The CT's DICOM series folder"))
            if not chosen:
                return
            dicomFolder = chosen
        try:
            written = self.logic.exportDicom(table, dicomFolder, outputDir)
        except TMBRBError as e:
            self.ui.statusLabel.text = str(e)
            return
        self.ui.statusLabel.text = _("DICOM written in {folder}: {files}").format(
            folder=written["seg"].parent, files=", ".join(f.name for f in written.values()))

    def showResultTable(self, tableNode) -> None:
        self.ui.resultTableView.setMRMLTableNode(tableNode)

    def onCamOpacityChanged(self, value) -> None:
        p = self._parameterNode
        if p and p.camVolume:
            mrml.set_cam_opacity(slicer.mrmlScene, p.camVolume, value)


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
        """The demo phantom as Sample Data loads it (generated on first use): CT, seed and the annotator's box, as
        `tmbrb demo` scores it (the box delimits the lesion from the cohort's peritumoral haze)."""
        from TMBRBLib.slicer.sampledata import loadPhantom

        nodes = loadPhantom(slicer.mrmlScene)
        return nodes["ct"], nodes["seed"], nodes["roi"]

    def test_TMBRB_phantom(self):
        import numpy as np

        from TMBRBLib.slicer import mrml as ma

        self.delayDisplay("Scoring the demo phantom")
        ct, seed, roi = self._phantomScene()
        logic = TMBRBLogic()
        logic.ensureDependencies(confirm=lambda m: slicer.util.confirmOkCancelDisplay(m))
        result = logic.process(ct, seed, roi, ecog=1, numberOfShifts=2, device="cpu")
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
