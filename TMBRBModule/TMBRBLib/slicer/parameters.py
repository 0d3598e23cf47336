"""The TMBRB module's parameter node: its state, saved with the scene.

Inside 3D Slicer this is Slicer's own ``parameterNodeWrapper``. Where that is missing (the ``slicer-core`` wheel, the
browser viewer) a minimal stand-in stores the values in exactly the same way (numbers as ``str()``, bools as
"True"/"False", nodes as node references), so a scene saved by either opens in the other with the same module state.
"""

from __future__ import annotations

import typing
from typing import Annotated

import slicer
from slicer import (
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)

from ..crop import DEFAULT_N_SHIFTS, MAX_SHIFTS

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
    forceCpu - compute on the CPU even when a GPU is available (the engine gets CUDA_VISIBLE_DEVICES="").
    gpuIndex - the GPU the engine uses (-1: the first it sees), through CUDA_VISIBLE_DEVICES.
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
    gpuIndex: Annotated[int, WithinRange(-1, 15)] = -1
    numberOfShifts: Annotated[int, WithinRange(0, MAX_SHIFTS)] = DEFAULT_N_SHIFTS
    camOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    camVolume: vtkMRMLScalarVolumeNode
    regionsSegmentation: vtkMRMLSegmentationNode
    resultTable: vtkMRMLTableNode


def getParameterNode(scene, moduleName: str = "TMBRB") -> TMBRBParameterNode:
    """The module's singleton parameter node in ``scene`` (created when missing), wrapped."""
    node = scene.GetSingletonNode(moduleName, "vtkMRMLScriptedModuleNode")
    if node is None:
        node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag(moduleName)
        node.SetName(scene.GenerateUniqueName(moduleName))
        node.SetAttribute("ModuleName", moduleName)
        node = scene.AddNode(node)
    return TMBRBParameterNode(node)
