"""MRML <-> engine adapter: volumes, markups, segmentations, tables and display nodes to and from the engine's images.

``slicer`` and ``vtk`` are imported lazily inside the functions, so importing this module needs neither. It works on
any ``vtkMRMLScene`` (inside 3D Slicer, in the ``slicer-core`` wheel, in trame-slicer): the scene is always taken
from the nodes passed in, never from ``slicer.mrmlScene``.

Frames: MRML nodes are in RAS (world), the engine is in LPS (SimpleITK). A volume's IJK-to-RAS matrix maps to an ITK
direction/origin/spacing with the RAS->LPS flip diag(-1, -1, 1). A CT under a *linear* parent transform is read in
world coordinates; outputs are put on the CT's own (local) grid under the same parent transform, so they overlay it.
"""

from __future__ import annotations

import logging
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..errors import TMBRBInputError
from ..geometry import Box, lps_to_ras, ras_to_lps

_FLIP = np.diag([-1.0, -1.0, 1.0])

CAM_COLOR_NODE_NAME = "TMBRB CAM heat"
TUMOUR_SEGMENT_NAME = "Tumour"
RING_SEGMENT_NAME = "Peritumoral ring"
TUMOUR_COLOR = (0.95, 0.85, 0.15)
RING_COLOR = (0.15, 0.75, 1.0)
TUMOUR_OPACITY_3D = 0.3
CAM_THRESHOLD = 0.1  # the CAM below this is transparent, in the slice views and in 3D alike
CAM_REGION_ROI_NAME = "TMBRB CAM region"
RING_OPACITY_3D = 0.15
_TUMOUR_NAME_RE = re.compile(r"tumou?r|lesion|nodule|mass|gtv|cancer", re.IGNORECASE)


# ----------------------------------------------------------------------------------------------------------------------
# small helpers


def _numpy_support():
    from vtkmodules.util import numpy_support

    return numpy_support


def _matrix_to_numpy(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def _numpy_to_matrix(arr: np.ndarray):
    import vtk

    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(arr[r, c]))
    return m


def _node_label(node) -> str:
    return f"'{node.GetName()}'" if node is not None and node.GetName() else "the selected node"


def parent_transform_to_world(node) -> Optional[np.ndarray]:
    """4x4 matrix of the node's parent transform to world, None when untransformed.

    Raises TMBRBInputError for a non-linear (warping) transform, which cannot be represented on a voxel grid."""
    t = node.GetParentTransformNode() if hasattr(node, "GetParentTransformNode") else None
    if t is None:
        return None
    if not t.IsTransformToWorldLinear():
        raise TMBRBInputError(
            f"{_node_label(node)} is under a non-linear transform '{t.GetName()}'.",
            "Harden the transform (Data module: right-click > Harden transform) and run again.")
    import vtk

    m = vtk.vtkMatrix4x4()
    t.GetMatrixTransformToWorld(m)
    return _matrix_to_numpy(m)


def ijk_to_ras(volume_node, world: bool = True) -> np.ndarray:
    """The volume's IJK-to-RAS 4x4 matrix (including a linear parent transform when world=True)."""
    import vtk

    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    a = _matrix_to_numpy(m)
    if world:
        t = parent_transform_to_world(volume_node)
        if t is not None:
            a = t @ a
    return a


def ijk_to_ras_from_sitk(image: sitk.Image) -> np.ndarray:
    """IJK-to-RAS 4x4 of a SimpleITK image (LPS) - the inverse of what volume_node_to_sitk does."""
    d = np.array(image.GetDirection(), float).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = _FLIP @ d @ np.diag(image.GetSpacing())
    m[:3, 3] = _FLIP @ np.array(image.GetOrigin(), float)
    return m


def _sitk_geometry_from_ijk_to_ras(m: np.ndarray) -> Tuple[Tuple[float, ...], Tuple[float, ...], Tuple[float, ...]]:
    """(spacing, origin_lps, direction_lps row-major) from an IJK-to-RAS matrix."""
    lin = m[:3, :3]
    spacing = np.linalg.norm(lin, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise TMBRBInputError(f"The volume has an invalid voxel spacing {tuple(np.round(spacing, 4))}.",
                              "Fix the volume's spacing in the Volumes module (Volume Information).")
    direction = _FLIP @ (lin / spacing)
    origin = _FLIP @ m[:3, 3]
    return tuple(map(float, spacing)), tuple(map(float, origin)), tuple(map(float, direction.ravel()))


# ----------------------------------------------------------------------------------------------------------------------
# scene without the 3D Slicer application (slicer-core wheel, batch, tests)

_SCENE_LOGICS: Dict[str, list] = {}

_MODULE_LOGIC_CLASSES = (
    ("Colors", "vtkSlicerColorLogic"), ("Volumes", "vtkSlicerVolumesLogic"), ("Markups", "vtkSlicerMarkupsLogic"),
    ("Segmentations", "vtkSlicerSegmentationsModuleLogic"), ("VolumeRendering", "vtkSlicerVolumeRenderingLogic"),
    ("SubjectHierarchy", "vtkSlicerSubjectHierarchyModuleLogic"), ("Tables", "vtkSlicerTablesLogic"),
)


def create_scene():
    """A vtkMRMLScene with the module logics that register the node classes TMBRB uses (markups, segmentations,
    volume rendering, colour legends, tables, subject hierarchy), as 3D Slicer's application sets up its own scene.
    Inside 3D Slicer use slicer.mrmlScene instead."""
    import slicer
    from vtkmodules.vtkCommonCore import vtkCollection

    import tempfile

    scene = slicer.vtkMRMLScene()
    # reading a scene bundle (.mrb) needs a data I/O manager with a cache directory, as 3D Slicer's application has
    cache = slicer.vtkCacheManager()
    cache.SetRemoteCacheDirectory(tempfile.mkdtemp(prefix="tmbrb-mrml-cache-"))
    io_manager = slicer.vtkDataIOManager()
    io_manager.SetCacheManager(cache)
    scene.SetCacheManager(cache)
    scene.SetDataIOManager(io_manager)
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    app_logic.SetSliceLogics(vtkCollection())
    app_logic.SetViewLogics(vtkCollection())
    keep = [app_logic, cache, io_manager]
    for name, cls in _MODULE_LOGIC_CLASSES:
        klass = getattr(slicer, cls, None)
        if klass is None:
            continue
        logic = klass()
        logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(name, logic)
        keep.append(logic)
        if name == "VolumeRendering":
            _VR_LOGICS[scene.GetAddressAsString("")] = logic
    ensure_segmentation_converters()
    _SCENE_LOGICS[scene.GetAddressAsString("")] = keep  # keep the logics alive as long as the process
    return scene


def release_scene(scene) -> None:
    """Drop the logics create_scene() attached to a scene (call before deleting it in long batch runs)."""
    key = scene.GetAddressAsString("")
    _VR_LOGICS.pop(key, None)
    scene.Clear(True)
    for obj in _SCENE_LOGICS.pop(key, []):
        if hasattr(obj, "SetMRMLScene"):
            obj.SetMRMLScene(None)


# ----------------------------------------------------------------------------------------------------------------------
# volumes


def check_ct_volume_node(volume_node) -> None:
    """Raise TMBRBInputError unless the node can be a CT: a scalar (not label map) 3D volume with image data."""
    if volume_node is None:
        raise TMBRBInputError("No CT volume is selected.", "Load a chest CT and select it as 'CT volume'.")
    if volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise TMBRBInputError(
            f"{_node_label(volume_node)} is a label map (segmentation), not a CT.",
            "Select the CT image itself as 'CT volume'; give a tumour label as 'Tumour segmentation' instead.")
    if not volume_node.IsA("vtkMRMLScalarVolumeNode") or volume_node.IsA("vtkMRMLVectorVolumeNode") \
            or volume_node.IsA("vtkMRMLDiffusionWeightedVolumeNode") or volume_node.IsA("vtkMRMLTensorVolumeNode"):
        raise TMBRBInputError(f"{_node_label(volume_node)} ({volume_node.GetClassName()}) is not a scalar CT volume.",
                              "Select a CT (a grey-scale scalar volume in Hounsfield units).")
    image = volume_node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise TMBRBInputError(f"{_node_label(volume_node)} holds no image data.", "Load the CT again.")
    if image.GetNumberOfScalarComponents() != 1:
        raise TMBRBInputError(f"{_node_label(volume_node)} has {image.GetNumberOfScalarComponents()} components "
                              "per voxel; a CT has one.", "Select the CT itself, not a colour image.")
    dims = image.GetDimensions()
    if min(dims) < 2:
        raise TMBRBInputError(
            f"{_node_label(volume_node)} is a 2D image (size {dims[0]} x {dims[1]} x {dims[2]}); TMBRB needs a 3D CT.",
            "Load the whole CT series (all slices), not a single image.")


def volume_array(volume_node) -> np.ndarray:
    """The node's voxels as a numpy array indexed [k, j, i] (a copy)."""
    image = volume_node.GetImageData()
    dims = image.GetDimensions()
    arr = _numpy_support().vtk_to_numpy(image.GetPointData().GetScalars())
    return np.array(arr).reshape(dims[2], dims[1], dims[0])


def volume_node_to_sitk(volume_node, world: bool = True) -> sitk.Image:
    """A SimpleITK image (LPS) with the node's voxels and geometry (world frame when world=True)."""
    image = sitk.GetImageFromArray(volume_array(volume_node))
    spacing, origin, direction = _sitk_geometry_from_ijk_to_ras(ijk_to_ras(volume_node, world=world))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def _image_data_from_array(arr_kji: np.ndarray):
    import vtk

    arr_kji = np.ascontiguousarray(arr_kji)
    image = vtk.vtkImageData()
    image.SetDimensions(arr_kji.shape[2], arr_kji.shape[1], arr_kji.shape[0])
    scalars = _numpy_support().numpy_to_vtk(arr_kji.ravel(), deep=True)
    image.GetPointData().SetScalars(scalars)
    return image


def set_volume_from_array(volume_node, arr_kji: np.ndarray, ijk_to_ras_matrix: np.ndarray) -> None:
    """Replace a volume node's voxels and geometry."""
    volume_node.SetIJKToRASMatrix(_numpy_to_matrix(ijk_to_ras_matrix))
    volume_node.SetAndObserveImageData(_image_data_from_array(arr_kji))


def add_volume_node_from_sitk(scene, image: sitk.Image, name: str, node_class: str = "vtkMRMLScalarVolumeNode",
                              node=None):
    """Create (or update, when node is given) a volume node holding a SimpleITK image (LPS -> RAS)."""
    if node is None:
        node = scene.AddNewNodeByClass(node_class, name)
    set_volume_from_array(node, sitk.GetArrayFromImage(image), ijk_to_ras_from_sitk(image))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def add_volume_on_grid(scene, reference_node, arr_kji: np.ndarray, name: str,
                       node_class: str = "vtkMRMLScalarVolumeNode", node=None):
    """A volume node on exactly the reference volume's grid (local IJK-to-RAS, same parent transform)."""
    ref_dims = reference_node.GetImageData().GetDimensions()
    if tuple(arr_kji.shape) != (ref_dims[2], ref_dims[1], ref_dims[0]):
        raise ValueError(f"array shape {arr_kji.shape} does not match the reference grid {ref_dims[::-1]}")
    if node is None:
        node = scene.AddNewNodeByClass(node_class, name)
    set_volume_from_array(node, arr_kji, ijk_to_ras(reference_node, world=False))
    parent = reference_node.GetParentTransformNode()
    node.SetAndObserveTransformNodeID(parent.GetID() if parent is not None else None)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def image_on_reference_grid(image: sitk.Image, reference: sitk.Image, nearest: bool = False) -> np.ndarray:
    """Voxels of image resampled onto reference (both SimpleITK, LPS), as a [k, j, i] array."""
    same = (image.GetSize() == reference.GetSize()
            and np.allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-4)
            and np.allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-3)
            and np.allclose(image.GetDirection(), reference.GetDirection(), atol=1e-5))
    if not same:
        interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
        image = sitk.Resample(image, reference, sitk.Transform(), interp, 0.0, image.GetPixelID())
    return sitk.GetArrayFromImage(image)


# ----------------------------------------------------------------------------------------------------------------------
# markups


def seed_ras(fiducial_node) -> Tuple[float, float, float]:
    """World RAS position of the seed: the last defined control point of a markups point list (each click in
    single-place mode adds a point; the last one is where the user put the seed)."""
    if fiducial_node is None:
        raise TMBRBInputError("No seed point is placed.",
                              "Click 'Place seed' and click once in the centre of the tumour in a slice view.")
    for i in reversed(range(fiducial_node.GetNumberOfControlPoints())):
        if fiducial_node.GetNthControlPointPositionStatus(i) == fiducial_node.PositionDefined:
            p = [0.0, 0.0, 0.0]
            fiducial_node.GetNthControlPointPositionWorld(i, p)
            return (float(p[0]), float(p[1]), float(p[2]))
    raise TMBRBInputError(f"The seed point list {_node_label(fiducial_node)} has no placed point.",
                          "Click 'Place seed' and click once in the centre of the tumour in a slice view.")


def keep_last_seed_point(fiducial_node) -> bool:
    """Remove every defined control point of the seed list but the last one (the seed list keeps one point; a point
    being placed, not defined yet, is left to the placement). Returns True when points were removed."""
    if fiducial_node is None:
        return False
    defined = [i for i in range(fiducial_node.GetNumberOfControlPoints())
               if fiducial_node.GetNthControlPointPositionStatus(i) == fiducial_node.PositionDefined]
    for i in reversed(defined[:-1]):
        fiducial_node.RemoveNthControlPoint(i)
    return len(defined) > 1


def seed_lps(fiducial_node) -> Tuple[float, float, float]:
    return ras_to_lps(seed_ras(fiducial_node))


def roi_is_defined(roi_node) -> bool:
    if roi_node is None:
        return False
    if roi_node.GetNumberOfControlPoints() < 1:
        return False
    return roi_node.GetNthControlPointPositionStatus(0) == roi_node.PositionDefined and \
        all(s > 0 for s in roi_node.GetSize())


def box_from_roi(roi_node) -> Box:
    """The ROI's axis-aligned world bounding box, as an engine Box (LPS mm)."""
    if not roi_is_defined(roi_node):
        raise TMBRBInputError(f"The box {_node_label(roi_node)} is not placed or has zero size.",
                              "Place the seed to get a proposed box, or draw a box (ROI) around the tumour.")
    b = [0.0] * 6
    roi_node.GetRASBounds(b)  # world, axis-aligned (rotated boxes are enclosed)
    return Box.from_ras_corners((b[0], b[2], b[4]), (b[1], b[3], b[5]))


def set_roi_from_box(roi_node, box) -> None:
    """Make the ROI an axis-aligned box equal to an engine box (Box, or ((min),(max)) LPS)."""
    if not isinstance(box, Box):
        box = Box.from_corners(box[0], box[1])
    import vtk

    rmin, rmax = box.ras_corners()
    centre = [(a + b) / 2 for a, b in zip(rmin, rmax)]
    size = [b - a for a, b in zip(rmin, rmax)]
    was = roi_node.StartModify()
    try:
        roi_node.SetAndObserveTransformNodeID(None)
        roi_node.GetObjectToNodeMatrix().DeepCopy(vtk.vtkMatrix4x4())  # axis-aligned
        roi_node.SetCenter(centre)
        roi_node.SetSize(size)
    finally:
        roi_node.EndModify(was)


# ----------------------------------------------------------------------------------------------------------------------
# segmentations


def ensure_segmentation_converters() -> None:
    """Register the labelmap <-> closed-surface rules (3D Slicer's Segmentations module does it at start-up)."""
    import slicer

    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    names = {type(r).__name__ for r in factory.GetConverterRules()}
    if "vtkBinaryLabelmapToClosedSurfaceConversionRule" not in names:
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    if "vtkClosedSurfaceToBinaryLabelmapConversionRule" not in names:
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


def choose_tumour_segment(segmentation_node) -> Tuple[str, Optional[str]]:
    """(segment id, warning or None): the segment named like a tumour, else the only/first one."""
    seg = segmentation_node.GetSegmentation()
    ids = [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]
    if not ids:
        raise TMBRBInputError(f"The segmentation {_node_label(segmentation_node)} has no segment.",
                              "Paint the tumour in Segment Editor, or choose no segmentation (it is then grown from the seed).")
    named = [i for i in ids if _TUMOUR_NAME_RE.search(seg.GetSegment(i).GetName() or "")]
    chosen = named[0] if named else ids[0]
    warning = None
    if len(ids) > 1:
        warning = (f"The segmentation has {len(ids)} segments; used '{seg.GetSegment(chosen).GetName()}' as the tumour. "
                   "Name the tumour segment 'Tumour' or keep one segment to choose.")
    return chosen, warning


def segmentation_to_mask(segmentation_node, reference_volume_node, segment_id: Optional[str] = None
                         ) -> Tuple[sitk.Image, List[str]]:
    """The tumour segment as a uint8 SimpleITK mask on the reference CT's grid (world LPS). Returns (mask, warnings)."""

    warnings: List[str] = []
    if segment_id is None:
        segment_id, w = choose_tumour_segment(segmentation_node)
        if w:
            warnings.append(w)
    elif segmentation_node.GetSegmentation().GetSegment(segment_id) is None:
        raise TMBRBInputError(f"The segmentation has no segment with id '{segment_id}'.", "Choose an existing segment.")
    arr = _export_segment(segmentation_node, segment_id, reference_volume_node)
    if arr is None:
        raise TMBRBInputError(f"Could not turn the segmentation {_node_label(segmentation_node)} into a mask on the CT grid.",
                              "Check that the segmentation belongs to this CT (Segment Editor > source volume).")
    if not arr.any():
        raise TMBRBInputError(f"The tumour segment of {_node_label(segmentation_node)} is empty where it overlaps the CT.",
                              "Paint the tumour on this CT, or choose no segmentation (it is then grown from the seed).")
    mask = sitk.GetImageFromArray(arr)
    # the exported labelmap is on the reference grid; give it the reference's world geometry
    spacing, origin, direction = _sitk_geometry_from_ijk_to_ras(ijk_to_ras(reference_volume_node, world=True))
    mask.SetSpacing(spacing)
    mask.SetOrigin(origin)
    mask.SetDirection(direction)
    return mask, warnings


def _oriented_image(arr_kji: np.ndarray, ijk_to_ras_matrix: np.ndarray):
    import slicer

    oi = slicer.vtkOrientedImageData()
    oi.ShallowCopy(_image_data_from_array(arr_kji.astype(np.uint8)))
    oi.SetImageToWorldMatrix(_numpy_to_matrix(ijk_to_ras_matrix))
    return oi


def regions_segmentation(scene, reference_volume_node, tumour_kji: np.ndarray, ring_kji: np.ndarray,
                         name: str = "TMBRB regions", node=None, show3d: bool = True):
    """A segmentation node with the 'Tumour' and 'Peritumoral ring' segments on the CT's grid.

    2D: outlines only (the CAM stays visible); 3D: closed surfaces, the ring translucent."""
    ensure_segmentation_converters()
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    else:
        node.GetSegmentation().RemoveAllSegments()
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    parent = reference_volume_node.GetParentTransformNode()
    node.SetAndObserveTransformNodeID(parent.GetID() if parent is not None else None)
    m = ijk_to_ras(reference_volume_node, world=False)
    node.CreateDefaultDisplayNodes()
    for seg_name, arr, color in ((TUMOUR_SEGMENT_NAME, tumour_kji, TUMOUR_COLOR), (RING_SEGMENT_NAME, ring_kji, RING_COLOR)):
        node.AddSegmentFromBinaryLabelmapRepresentation(_oriented_image(arr, m), seg_name, color)
    display = node.GetDisplayNode()
    if display is not None:
        display.SetVisibility2DFill(False)
        display.SetVisibility2DOutline(True)
        # translucent in 3D, so the map inside the tumour and over the ring stays visible
        for seg_name, opacity in ((TUMOUR_SEGMENT_NAME, TUMOUR_OPACITY_3D), (RING_SEGMENT_NAME, RING_OPACITY_3D)):
            seg_id = node.GetSegmentation().GetSegmentIdBySegmentName(seg_name)
            if seg_id:
                display.SetSegmentOpacity3D(seg_id, opacity)
    if show3d:
        node.CreateClosedSurfaceRepresentation()
    return node


def segment_array(segmentation_node, segment_name: str, reference_volume_node) -> np.ndarray:
    """A named segment as a [k, j, i] 0/1 array on the reference volume's grid."""

    sid = segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(segment_name)
    if not sid:
        raise KeyError(segment_name)
    arr = _export_segment(segmentation_node, sid, reference_volume_node)
    if arr is None:
        raise RuntimeError(f"could not export segment {segment_name}")
    return arr


def _export_segment(segmentation_node, segment_id: str, reference_volume_node) -> Optional[np.ndarray]:
    """One segment as a 0/1 [k, j, i] array on the reference grid, through a temporary label map node that is
    removed again (the scene is left as it was)."""
    import slicer
    import vtk

    scene = segmentation_node.GetScene()
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    labelmap = slicer.vtkMRMLLabelMapVolumeNode()
    labelmap.SetHideFromEditors(True)
    labelmap.SetSaveWithScene(False)
    scene.AddNode(labelmap)
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, ids, labelmap, reference_volume_node)
        if not ok or labelmap.GetImageData() is None:
            return None
        return (volume_array(labelmap) != 0).astype(np.uint8)
    finally:  # remove the label map and whatever the export added (display, colour table, storage nodes)
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for n in reversed(added):
            if n is not None and n.GetID() not in before:
                scene.RemoveNode(n)


# ----------------------------------------------------------------------------------------------------------------------
# CAM display


def _heat_rgb(t: float) -> Tuple[float, float, float]:
    """A 'hot' heat map: dark red -> red -> orange -> yellow -> white."""
    r = min(1.0, 0.35 + 1.3 * t)
    g = min(1.0, max(0.0, 2.0 * t - 0.45))
    b = min(1.0, max(0.0, 3.0 * t - 2.0))
    return r, g, b


def cam_color_node(scene, n: int = 256):
    """The CAM colour table (a heat map; alpha rises from 0 so low attention is see-through). Reused if present."""
    existing = scene.GetFirstNodeByName(CAM_COLOR_NODE_NAME)
    if existing is not None and existing.IsA("vtkMRMLColorTableNode"):
        return existing
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", CAM_COLOR_NODE_NAME)
    node.SetTypeToUser()
    node.SetNumberOfColors(n)
    for i in range(n):
        t = i / (n - 1)
        r, g, b = _heat_rgb(t)
        node.SetColor(i, f"{t:.2f}", r, g, b, min(1.0, t * 2.5))
    node.GetLookupTable().SetRange(0.0, 1.0)
    node.SetAttribute("Category", "TMBRB")
    return node


def show_cam(cam_node, opacity: float = 0.5, threshold: float = CAM_THRESHOLD, background_node=None,
             legend: bool = True):
    """Heat colours, values below `threshold` transparent; foreground in every slice view at `opacity`."""
    scene = cam_node.GetScene()
    if cam_node.GetDisplayNode() is None:
        cam_node.CreateDefaultDisplayNodes()
    display = cam_node.GetDisplayNode()
    display.SetAndObserveColorNodeID(cam_color_node(scene).GetID())
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.SetApplyThreshold(True)
    display.SetAutoThreshold(False)
    display.SetLowerThreshold(float(threshold))
    display.SetUpperThreshold(1.0e6)
    display.SetInterpolate(True)
    set_cam_opacity(scene, cam_node, opacity, background_node=background_node)
    if legend:
        add_color_legend(cam_node, title="TMBRB attention (class activation map)")
    return display


def set_cam_opacity(scene, cam_node, opacity: float, background_node=None) -> int:
    """Put the CAM as foreground of every slice view at the given opacity. Returns the number of views set."""
    n = 0
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for i in range(composites.GetNumberOfItems()):
        comp = composites.GetItemAsObject(i)
        if background_node is not None:
            comp.SetBackgroundVolumeID(background_node.GetID())
        comp.SetForegroundVolumeID(cam_node.GetID())
        comp.SetForegroundOpacity(float(opacity))
        n += 1
    return n


_LEGEND_FAILURE_LOGGED: List[bool] = []


def add_color_legend(displayable_node, title: str = ""):
    """A colour legend for the node in every view (slice and 3D), or None (logged once) where the scene cannot."""
    import slicer

    try:
        legend = slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(displayable_node)
    except Exception as e:  # colour legend classes not registered in this scene
        if not _LEGEND_FAILURE_LOGGED:
            _LEGEND_FAILURE_LOGGED.append(True)
            logging.getLogger("tmbrb").warning("No colour legend for the class activation map: this scene cannot "
                                               "create colour legend nodes (%s). Said once.", e)
        return None
    if legend is not None:
        legend.SetTitleText(title)
        legend.SetLabelFormat("%.1f")
        legend.SetVisibility(True)
    return legend


def _volume_rendering_logic(scene):
    import slicer

    modules = getattr(slicer, "modules", None)
    if modules is not None and hasattr(modules, "volumerendering"):
        return modules.volumerendering.logic()
    key = scene.GetAddressAsString("")
    logic = _VR_LOGICS.get(key)
    if logic is None or logic.GetMRMLScene() is not scene:
        logic = slicer.vtkSlicerVolumeRenderingLogic()
        logic.SetMRMLScene(scene)  # registers the volume rendering node classes with this scene
        _VR_LOGICS[key] = logic
    return logic


_VR_LOGICS: Dict[str, object] = {}


def set_cam_transfer_functions(prop_node, threshold: float = CAM_THRESHOLD, opacity: float = 0.6) -> None:
    """Heat colours of the 2D overlay, transparent below ``threshold``, through the MRML volume property node's own
    API (SetColor/SetScalarOpacity), so the node is modified and every 3D view showing it renders again."""
    import vtk

    color = vtk.vtkColorTransferFunction()
    for t in np.linspace(0.0, 1.0, 11):
        color.AddRGBPoint(float(t), *_heat_rgb(float(t)))
    scalar_opacity = vtk.vtkPiecewiseFunction()
    scalar_opacity.AddPoint(0.0, 0.0)
    scalar_opacity.AddPoint(float(threshold), 0.0)
    scalar_opacity.AddPoint(1.0, float(opacity))
    prop_node.SetColor(color)
    prop_node.SetScalarOpacity(scalar_opacity)
    prop = prop_node.GetVolumeProperty()
    prop.ShadeOff()
    prop.SetInterpolationTypeToLinear()


def cam_region_roi(cam_node, node=None, margin_vox: int = 1):
    """A hidden ROI around the CAM's non-zero voxels (the map over the tumour AND its peritumoral ring), for cropping
    its 3D rendering; None when the map is empty. Reuses ``node``."""
    arr = volume_array(cam_node)
    nz = np.argwhere(arr > 0)
    if not len(nz):
        return None
    lo = np.maximum(nz.min(0) - margin_vox, 0) - 0.5
    hi = np.minimum(nz.max(0) + margin_vox, np.array(arr.shape) - 1) + 0.5
    m = ijk_to_ras(cam_node)
    corners = np.array([[i, j, k, 1.0] for k in (lo[0], hi[0]) for j in (lo[1], hi[1]) for i in (lo[2], hi[2])])
    lps = (corners @ m.T)[:, :3] * np.array([-1.0, -1.0, 1.0])
    scene = cam_node.GetScene()
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", CAM_REGION_ROI_NAME)
    set_roi_from_box(node, Box(tuple(lps.min(0)), tuple(lps.max(0))))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    node.GetDisplayNode().SetVisibility(False)
    node.SetAttribute("TMBRB.kind", "cam-region")
    return node


def volume_render_cam(cam_node, roi_node=None, opacity: float = 0.6, threshold: float = CAM_THRESHOLD):
    """Volume-render the CAM in 3D with the heat colours, cropped to ``roi_node`` (give the CAM's own region,
    :func:`cam_region_roi`, never the bare box: the ring lies outside it). Returns the VR display node."""
    scene = cam_node.GetScene()
    logic = _volume_rendering_logic(scene)
    vr = logic.GetFirstVolumeRenderingDisplayNode(cam_node)
    if vr is None:
        vr = logic.CreateDefaultVolumeRenderingNodes(cam_node)
    if vr is None:
        return None
    prop_node = vr.GetVolumePropertyNode()
    if prop_node is not None:
        set_cam_transfer_functions(prop_node, threshold, opacity)
    if roi_node is not None:
        vr.SetAndObserveROINodeID(roi_node.GetID())
        vr.SetCroppingEnabled(True)
    else:
        vr.SetCroppingEnabled(False)
    vr.SetVisibility(True)
    return vr


def show_cam_in_3d(cam_node, opacity: float = 0.6, threshold: float = CAM_THRESHOLD):
    """The CAM volume-rendered in 3D over the tumour and its ring, cropped to its own non-zero region (an ROI that is
    reused on the next run). Returns (volume rendering display node, region ROI)."""
    logic = _volume_rendering_logic(cam_node.GetScene())
    vr = logic.GetFirstVolumeRenderingDisplayNode(cam_node)
    old = vr.GetROINode() if vr is not None else None
    region = cam_region_roi(cam_node, node=old if old is not None and old.GetAttribute("TMBRB.kind") == "cam-region"
                            else None)
    return volume_render_cam(cam_node, region, opacity=opacity, threshold=threshold), region


# ----------------------------------------------------------------------------------------------------------------------
# tables and subject hierarchy


def fill_table(scene, rows: Sequence[Sequence[str]], name: str = "TMBRB results", node=None,
               columns: Sequence[str] = ("Quantity", "Value", "Note")):
    """A string table node with the given columns (Quantity, Value, Note): one row per item of ``rows``."""
    import vtk

    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = vtk.vtkTable()
    arrays = []
    for title in columns:
        a = vtk.vtkStringArray()
        a.SetName(title)
        arrays.append(a)
    for row in rows:
        for i, a in enumerate(arrays):
            a.InsertNextValue(str(row[i]) if i < len(row) else "")
    for a in arrays:
        table.AddColumn(a)
    node.SetAndObserveTable(table)
    node.SetLocked(True)
    return node


def table_rows(table_node) -> Dict[str, str]:
    """{Quantity: Value} of a results table node."""
    t = table_node.GetTable()
    out = {}
    for r in range(t.GetNumberOfRows()):
        out[str(t.GetValue(r, 0).ToString())] = str(t.GetValue(r, 1).ToString())
    return out


def study_item(scene, node) -> int:
    """The subject-hierarchy item of the node's study (or its nearest parent folder / the scene)."""
    import slicer

    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = sh.GetItemByDataNode(node)
    if not item:  # outside 3D Slicer's application items are not created automatically
        item = sh.CreateItem(sh.GetSceneItemID(), node)
    parent = sh.GetItemParent(item)
    return parent or sh.GetSceneItemID()


def place_in_study(scene, reference_node, nodes: Iterable, folder_name: str) -> int:
    """Put nodes in a folder under the reference node's study (subject hierarchy). Returns the folder item id."""
    import slicer

    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    parent = study_item(scene, reference_node)
    folder = None
    for child in _sh_children(sh, parent):
        if sh.GetItemName(child) == folder_name and sh.GetItemLevel(child) == "Folder":
            folder = child
            break
    if folder is None:
        folder = sh.CreateFolderItem(parent, folder_name)
    for n in nodes:
        if n is None:
            continue
        item = sh.GetItemByDataNode(n)
        if not item:
            item = sh.CreateItem(folder, n)
        else:
            sh.SetItemParent(item, folder)
    return folder


def _sh_children(sh, parent) -> List[int]:
    import vtk

    ids = vtk.vtkIdList()
    sh.GetItemChildren(parent, ids)
    return [ids.GetId(i) for i in range(ids.GetNumberOfIds())]


def lps_box_to_ras_corners(box) -> Tuple[Tuple[float, float, float], Tuple[float, float, float]]:
    if not isinstance(box, Box):
        box = Box.from_corners(box[0], box[1])
    return box.ras_corners()


__all__ = [
    "check_ct_volume_node", "volume_node_to_sitk", "volume_array", "add_volume_node_from_sitk", "add_volume_on_grid",
    "image_on_reference_grid", "ijk_to_ras", "ijk_to_ras_from_sitk", "seed_ras", "seed_lps", "roi_is_defined",
    "box_from_roi", "set_roi_from_box", "segmentation_to_mask", "regions_segmentation", "segment_array",
    "cam_color_node", "show_cam", "set_cam_opacity", "volume_render_cam", "fill_table", "table_rows",
    "place_in_study", "study_item", "ensure_segmentation_converters", "lps_to_ras", "ras_to_lps",
]
