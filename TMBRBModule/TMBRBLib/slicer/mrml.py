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
from ..volumes import Geometry, RegionVolume

_FLIP = np.diag([-1.0, -1.0, 1.0])

CAM_COLOR_NODE_NAME = "TMBRB CAM heat"
TUMOUR_SEGMENT_NAME = "Tumour"
RING_SEGMENT_NAME = "Peritumoral ring"
TUMOUR_COLOR = (0.95, 0.85, 0.15)
RING_COLOR = (0.15, 0.75, 1.0)
TUMOUR_OPACITY_3D = 0.3
CAM_THRESHOLD = 0.1  # default: the CAM below this is transparent, in the slice views and in 3D alike
CAM_THRESHOLD_ATTRIBUTE = "TMBRB.camThreshold"  # on the CAM node: its own threshold (set_cam_threshold)
CAM_OPACITY_3D = 0.6  # the most opaque the 3D rendering gets (at CAM 1)
CAM_OPACITY_3D_ATTRIBUTE = "TMBRB.camOpacity3D"
CAM_REGION_ROI_NAME = "TMBRB CAM region"
RING_OPACITY_3D = 0.15
BOX_OUTLINE_COLOR_3D = (0.85, 0.85, 0.85)
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
    image = volume_node.GetImageData()
    dims = image.GetDimensions()
    view = _numpy_support().vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
    image = sitk.GetImageFromArray(view)  # copies the voxels once
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


def volume_state(volume_node) -> Tuple:
    """What a volume's voxels and world grid depend on: its image data's modification time, dimensions and world
    IJK-to-RAS matrix (parent transforms included). Equal states: the same CT."""
    image = volume_node.GetImageData()
    return ((image.GetMTime(), tuple(image.GetDimensions())) if image is not None else None,
            tuple(np.round(ijk_to_ras(volume_node, world=True), 9).ravel()))


def node_geometry(volume_node, world: bool = True) -> Geometry:
    """The grid of a volume node as the engine sees it (size x, y, z; LPS spacing, origin, direction), without
    copying its voxels."""
    spacing, origin, direction = _sitk_geometry_from_ijk_to_ras(ijk_to_ras(volume_node, world=world))
    return Geometry(tuple(int(v) for v in volume_node.GetImageData().GetDimensions()), spacing, origin, direction)


def same_geometry(a: Geometry, b: Geometry) -> bool:
    """Whether two grids are the same (to 1e-4 mm spacing, 1e-3 mm origin, 1e-5 direction)."""
    return (tuple(a.size) == tuple(b.size) and np.allclose(a.spacing, b.spacing, atol=1e-4)
            and np.allclose(a.origin, b.origin, atol=1e-3) and np.allclose(a.direction, b.direction, atol=1e-5))


def region_on_grid(volume, geometry: Geometry, nearest: bool = False) -> RegionVolume:
    """A result volume (a :class:`TMBRBLib.volumes.RegionVolume` or a SimpleITK image) as a region of ``geometry``'s
    grid: as it is when it is on that grid already (no full-size copy), else resampled onto it (linear, or nearest
    neighbour for masks) as a whole."""
    if isinstance(volume, RegionVolume):
        if same_geometry(volume.grid, geometry):
            return volume
        volume = volume.full_image()
    if not same_geometry(Geometry.of(volume), geometry):
        interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
        volume = sitk.Resample(volume, [int(v) for v in geometry.size], sitk.Transform(), interp, geometry.origin,
                               geometry.spacing, geometry.direction, 0.0, volume.GetPixelID())
    return RegionVolume(sitk.GetArrayFromImage(volume), (0, 0, 0), geometry)


def _full_image_data(region: RegionVolume, dtype):
    """A vtkImageData of the region's whole grid, zero outside the region, filled in place (one full-size write)."""
    import vtk

    nx, ny, nz = (int(v) for v in region.grid.size)
    image = vtk.vtkImageData()
    image.SetDimensions(nx, ny, nz)
    image.AllocateScalars(_numpy_support().get_vtk_array_type(np.dtype(dtype)), 1)
    view = _numpy_support().vtk_to_numpy(image.GetPointData().GetScalars()).reshape(nz, ny, nx)
    view.fill(0)
    x0, y0, z0 = region.lo
    dz, dy, dx = region.data.shape
    view[z0:z0 + dz, y0:y0 + dy, x0:x0 + dx] = region.data
    return image


# The map's region written last (index bounds "x0,y0,z0,x1,y1,z1", exclusive ends): a new result for the same CT
# clears that region and writes its own instead of a new full-size image (on a 512x512x300 CT the full-size write
# is most of the time a result takes to place in the scene)
_MAP_REGION_ATTRIBUTE = "TMBRB.mapRegion"


def _region_bounds_text(region: RegionVolume) -> str:
    lo = [int(v) for v in region.lo]
    hi = [lo[i] + int(region.data.shape[2 - i]) for i in range(3)]
    return ",".join(str(v) for v in lo + hi)


def _written_map_region(node, dims) -> Optional[Tuple[Tuple[int, int, int], Tuple[int, int, int]]]:
    """((x0, y0, z0), (x1, y1, z1)) of the region :func:`add_map_on_grid` last wrote into the node (exclusive ends),
    when the node says so and the bounds fit its image of size ``dims``; else None."""
    try:
        x0, y0, z0, x1, y1, z1 = (int(v) for v in (node.GetAttribute(_MAP_REGION_ATTRIBUTE) or "").split(","))
    except ValueError:
        return None
    if not (0 <= x0 <= x1 <= dims[0] and 0 <= y0 <= y1 <= dims[1] and 0 <= z0 <= z1 <= dims[2]):
        return None
    return (x0, y0, z0), (x1, y1, z1)


def _rewrite_map_region(node, region: RegionVolume) -> bool:
    """Write ``region`` into the node's own image in place when that image is the full-size float map that
    :func:`add_map_on_grid` made (same size, the last region known): zero the last region, write the new one.
    False (nothing changed) when the node's image is anything else."""
    image = node.GetImageData()
    if image is None or image.GetScalarType() != 10 or image.GetNumberOfScalarComponents() != 1:
        return False  # 10: VTK_FLOAT
    if tuple(image.GetDimensions()) != tuple(int(v) for v in region.grid.size) or any(image.GetExtent()[::2]):
        return False
    written = _written_map_region(node, image.GetDimensions())
    if written is None:
        return False
    (x0, y0, z0), (x1, y1, z1) = written
    nx, ny, nz = image.GetDimensions()
    view = _numpy_support().vtk_to_numpy(image.GetPointData().GetScalars()).reshape(nz, ny, nx)
    view[z0:z1, y0:y1, x0:x1] = 0
    rx, ry, rz = region.lo
    dz, dy, dx = region.data.shape
    view[rz:rz + dz, ry:ry + dy, rx:rx + dx] = region.data
    image.GetPointData().GetScalars().Modified()
    image.Modified()
    node.Modified()
    return True


def add_map_on_grid(scene, reference_node, region: RegionVolume, name: str, node=None):
    """A float volume node (the class activation map) on exactly the reference volume's grid, from a region of that
    grid: zero outside it, its display's automatic window/level off (the map's range is 0-1; computing it on a
    full-size CT grid costs seconds). A node that holds the map of an earlier result on the same grid is updated in
    place: its last region cleared, the new one written (no new full-size image).

    Parameters
    ----------
    scene : vtkMRMLScene
    reference_node : vtkMRMLScalarVolumeNode
        The CT; the node gets its local IJK-to-RAS and its parent transform.
    region : RegionVolume
        The map on the CT's grid (:func:`region_on_grid`).
    name : str
    node : vtkMRMLScalarVolumeNode, optional
        The node to fill (made when None).

    Returns
    -------
    vtkMRMLScalarVolumeNode
    """
    ref_dims = reference_node.GetImageData().GetDimensions()
    if tuple(int(v) for v in region.grid.size) != tuple(ref_dims):
        raise ValueError(f"region grid {region.grid.size} does not match the reference grid {ref_dims}")
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    node.GetDisplayNode().SetAutoWindowLevel(False)
    node.GetDisplayNode().SetWindowLevelMinMax(0.0, 1.0)
    node.SetIJKToRASMatrix(_numpy_to_matrix(ijk_to_ras(reference_node, world=False)))
    if not _rewrite_map_region(node, region):
        node.SetAndObserveImageData(_full_image_data(region, np.float32))
    node.SetAttribute(_MAP_REGION_ATTRIBUTE, _region_bounds_text(region))
    parent = reference_node.GetParentTransformNode()
    node.SetAndObserveTransformNodeID(parent.GetID() if parent is not None else None)
    return node


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


def _oriented_image(arr_kji: np.ndarray, ijk_to_ras_matrix: np.ndarray, lo_xyz: Sequence[int] = (0, 0, 0)):
    """A labelmap whose voxels are ``arr_kji`` at index ``lo_xyz`` of the grid of ``ijk_to_ras_matrix`` (its extent
    is the region only)."""
    import slicer

    oi = slicer.vtkOrientedImageData()
    oi.ShallowCopy(_image_data_from_array(arr_kji.astype(np.uint8)))
    x0, y0, z0 = (int(v) for v in lo_xyz)
    dz, dy, dx = arr_kji.shape
    oi.SetExtent(x0, x0 + dx - 1, y0, y0 + dy - 1, z0, z0 + dz - 1)
    oi.SetImageToWorldMatrix(_numpy_to_matrix(ijk_to_ras_matrix))
    return oi


# The tumour's and ring's 3D surfaces by surface nets with their own smoothing (3D Slicer's "Surface nets" option,
# Slicer 5.6+; an older Slicer ignores the two settings): about 6x less CPU than the default flying edges with
# windowed-sinc smoothing (0.20 -> 0.03 s for a 48 mL tumour and its ring)
SURFACE_CONVERSION = {"Conversion method": "1", "SurfaceNets smoothing": "1"}


def regions_segmentation(scene, reference_volume_node, tumour_kji, ring_kji, name: str = "TMBRB regions", node=None,
                         show3d: bool = True):
    """A segmentation node with the 'Tumour' and 'Peritumoral ring' segments on the CT's grid.

    ``tumour_kji`` and ``ring_kji`` are [k, j, i] arrays on the CT's grid, or regions of it
    (:class:`TMBRBLib.volumes.RegionVolume` on the CT's grid, :func:`region_on_grid`; only the region is handed to
    the segmentation). 2D: outlines only (the CAM stays visible); 3D: closed surfaces, the ring translucent."""
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
        region = arr if isinstance(arr, RegionVolume) else RegionVolume(np.asarray(arr), (0, 0, 0), None)
        node.AddSegmentFromBinaryLabelmapRepresentation(_oriented_image(region.data, m, region.lo), seg_name, color)
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
        segmentation = node.GetSegmentation()
        for key, value in SURFACE_CONVERSION.items():
            segmentation.SetConversionParameter(key, value)
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


def heat_rgb(t: float) -> Tuple[float, float, float]:
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
        r, g, b = heat_rgb(t)
        node.SetColor(i, f"{t:.2f}", r, g, b, min(1.0, t * 2.5))
    node.GetLookupTable().SetRange(0.0, 1.0)
    node.SetAttribute("Category", "TMBRB")
    return node


def show_cam(cam_node, opacity: float = 0.5, threshold: Optional[float] = None, background_node=None,
             legend: bool = True):
    """Heat colours, values below the threshold transparent; foreground in every slice view at `opacity`.

    ``threshold`` None: the map's own setting (:func:`cam_threshold`), shared with its 3D rendering."""
    scene = cam_node.GetScene()
    if cam_node.GetDisplayNode() is None:
        cam_node.CreateDefaultDisplayNodes()
    display = cam_node.GetDisplayNode()
    display.SetAndObserveColorNodeID(cam_color_node(scene).GetID())
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.SetApplyThreshold(True)
    display.SetAutoThreshold(False)
    _remember_threshold(cam_node, threshold)
    display.SetLowerThreshold(cam_threshold(cam_node))
    display.SetUpperThreshold(1.0e6)
    display.SetInterpolate(True)
    set_cam_opacity(scene, cam_node, opacity, background_node=background_node)
    if legend:
        add_color_legend(cam_node, title=CAM_LEGEND_TITLE)
    return display


def cam_threshold(cam_node) -> float:
    """The map's threshold (below it the map is transparent, in the slice views and in 3D alike): the one set on the
    node (:func:`set_cam_threshold`, kept in the scene as the attribute ``TMBRB.camThreshold``), else
    :data:`CAM_THRESHOLD`."""
    value = cam_node.GetAttribute(CAM_THRESHOLD_ATTRIBUTE) if cam_node is not None else None
    try:
        return float(value) if value else float(CAM_THRESHOLD)
    except ValueError:
        return float(CAM_THRESHOLD)


def _remember_threshold(cam_node, threshold: Optional[float]) -> None:
    if threshold is not None:
        if not 0.0 <= float(threshold) < 1.0:
            raise TMBRBInputError(f"The map's threshold {threshold} is outside [0, 1).",
                                  "Choose a threshold from 0 (show all of the map) to 0.95.")
        cam_node.SetAttribute(CAM_THRESHOLD_ATTRIBUTE, f"{float(threshold):g}")


def set_cam_threshold(cam_node, threshold: float) -> None:
    """One threshold for the map in 2D and 3D: the slice overlay's lower threshold and the 3D rendering's transfer
    functions (its opacity kept) both change, through their MRML nodes, so every view updates."""
    _remember_threshold(cam_node, threshold)
    display = cam_node.GetDisplayNode()
    if display is not None and display.IsA("vtkMRMLScalarVolumeDisplayNode"):
        display.SetLowerThreshold(cam_threshold(cam_node))
    vr = cam_volume_rendering_node(cam_node)
    if vr is not None and vr.GetVolumePropertyNode() is not None:
        set_cam_transfer_functions(vr.GetVolumePropertyNode(), cam_threshold(cam_node), cam_opacity_3d(cam_node))


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
# The colour legend's title in the views. Short on purpose: the legend draws its title at the size of its labels, so
# a long one ("TMBRB attention (class activation map)") ran off the right edge of a slice view.
CAM_LEGEND_TITLE = "CAM"


def add_color_legend(displayable_node, title: str = ""):
    """A colour legend for the node in every view (slice and 3D), or None where the scene cannot make one (said once
    in the log, not on every result). The legend node class is registered with the scene when its application
    did not (trame-slicer's colour logic does not)."""
    import slicer

    scene = displayable_node.GetScene()
    legend, why = None, "the colour legend classes are missing"
    try:
        if scene is not None and not scene.IsNodeClassRegistered("vtkMRMLColorLegendDisplayNode"):
            scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
        legend = slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(displayable_node)
        why = "the scene made no colour legend node"
    except Exception as e:  # noqa: BLE001 - colour legend classes not available in this scene
        why = f"{type(e).__name__}: {e}"
    if legend is None:
        if not _LEGEND_FAILURE_LOGGED:
            _LEGEND_FAILURE_LOGGED.append(True)
            logging.getLogger("tmbrb").warning("No colour legend for the class activation map in the views (%s); the "
                                               "colours read as in the panel's legend. Said once.", why)
        return None
    legend.SetTitleText(title)
    legend.SetLabelFormat("%.1f")
    legend.SetVisibility(True)
    return legend


def set_volume_rendering_logic(scene, logic) -> None:
    """Render this scene's volumes with ``logic``: the vtkSlicerVolumeRenderingLogic that the 3D views' volume
    rendering displayable manager uses (the one registered as "VolumeRendering" in the application logic, e.g.
    trame-slicer's ``SlicerApp.volume_rendering``), so the rendering's nodes, method and presets are those of the
    logic the views and the application work with.
    Inside 3D Slicer nothing needs setting: ``slicer.modules.volumerendering.logic()`` is used."""
    _VR_LOGICS[scene.GetAddressAsString("")] = logic


def _application_vr_logic(scene):
    """The "VolumeRendering" logic of the application logic that the 3D views' displayable managers use, when it
    works on this scene; else None."""
    import slicer

    try:
        app_logic = slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance().GetMRMLApplicationLogic()
        logic = app_logic.GetModuleLogic("VolumeRendering") if app_logic is not None else None
    except (AttributeError, TypeError):
        return None
    if logic is not None and logic.IsA("vtkSlicerVolumeRenderingLogic") and logic.GetMRMLScene() is scene:
        return logic
    return None


def _volume_rendering_logic(scene):
    """The volume rendering logic the scene's 3D views draw through: 3D Slicer's module logic; else the one given
    to :func:`set_volume_rendering_logic` (or made by :func:`create_scene`); else the 3D views' application logic's;
    else (no 3D view: batch, tests) a logic of our own that registers the node classes."""
    import slicer

    modules = getattr(slicer, "modules", None)
    if modules is not None and hasattr(modules, "volumerendering"):
        return modules.volumerendering.logic()
    key = scene.GetAddressAsString("")
    logic = _VR_LOGICS.get(key)
    if logic is not None and logic.GetMRMLScene() is scene:
        return logic
    logic = _application_vr_logic(scene)
    if logic is None:
        logic = slicer.vtkSlicerVolumeRenderingLogic()
        logic.SetMRMLScene(scene)  # registers the volume rendering node classes with this scene
    _VR_LOGICS[key] = logic
    return logic


_VR_LOGICS: Dict[str, object] = {}


def set_cam_transfer_functions(prop_node, threshold: float = CAM_THRESHOLD, opacity: float = CAM_OPACITY_3D) -> None:
    """Heat colours of the 2D overlay, transparent below ``threshold``, through the MRML volume property node's own
    API (SetColor/SetScalarOpacity), so the node is modified and every 3D view showing it renders again."""
    import vtk

    color = vtk.vtkColorTransferFunction()
    for t in np.linspace(0.0, 1.0, 11):
        color.AddRGBPoint(float(t), *heat_rgb(float(t)))
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
    its 3D rendering; None when the map is empty. Reuses ``node``.

    A map that :func:`add_map_on_grid` wrote is zero outside the region it was given: only that region is searched.
    """
    image = cam_node.GetImageData()
    dims = image.GetDimensions()
    arr = _numpy_support().vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
    start = np.zeros(3, int)  # [k, j, i] of the searched block's first voxel
    written = _written_map_region(cam_node, dims)
    if written is not None:
        (x0, y0, z0), (x1, y1, z1) = written
        arr, start = arr[z0:z1, y0:y1, x0:x1], np.array([z0, y0, x0])
    on = arr > 0
    # the bounds axis by axis (not np.argwhere, which lists every non-zero voxel of a full-grid map)
    idx = [np.flatnonzero(on.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    if not idx[0].size:
        return None
    first = start + np.array([i[0] for i in idx])
    last = start + np.array([i[-1] for i in idx])
    lo = np.maximum(first - margin_vox, 0) - 0.5
    hi = np.minimum(last + margin_vox, np.array(dims[::-1]) - 1) + 0.5
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


def cam_volume_rendering_node(cam_node):
    """The map's volume rendering display node (through the logic its 3D views use), or None."""
    if cam_node is None or cam_node.GetScene() is None:
        return None
    return _volume_rendering_logic(cam_node.GetScene()).GetFirstVolumeRenderingDisplayNode(cam_node)


def cam_opacity_3d(cam_node) -> float:
    """The 3D rendering's opacity at CAM 1 (:func:`set_cam_opacity_3d`; default :data:`CAM_OPACITY_3D`)."""
    value = cam_node.GetAttribute(CAM_OPACITY_3D_ATTRIBUTE) if cam_node is not None else None
    try:
        return float(value) if value else float(CAM_OPACITY_3D)
    except ValueError:
        return float(CAM_OPACITY_3D)


def set_cam_opacity_3d(cam_node, opacity: float) -> None:
    """The 3D rendering's opacity at CAM 1 (0: invisible), its threshold kept; through the volume property node."""
    cam_node.SetAttribute(CAM_OPACITY_3D_ATTRIBUTE, f"{min(1.0, max(0.0, float(opacity))):g}")
    vr = cam_volume_rendering_node(cam_node)
    if vr is not None and vr.GetVolumePropertyNode() is not None:
        set_cam_transfer_functions(vr.GetVolumePropertyNode(), cam_threshold(cam_node), cam_opacity_3d(cam_node))


def set_cam_visibility(cam_node, in_2d: Optional[bool] = None, in_3d: Optional[bool] = None,
                       opacity_2d: float = 0.5) -> None:
    """Show or hide the map in the slice views (as their foreground at ``opacity_2d``, or none) and in 3D (its
    volume rendering); None leaves that side as it is."""
    scene = cam_node.GetScene()
    if in_2d is not None:
        if in_2d:
            set_cam_opacity(scene, cam_node, opacity_2d)
        else:
            composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
            for i in range(composites.GetNumberOfItems()):
                comp = composites.GetItemAsObject(i)
                if comp.GetForegroundVolumeID() == cam_node.GetID():
                    comp.SetForegroundVolumeID(None)
    if in_3d is not None:
        vr = cam_volume_rendering_node(cam_node)
        if vr is not None:
            vr.SetVisibility(bool(in_3d))


def set_region_visibility_3d(regions_node, segment_name: str, visible: bool) -> bool:
    """Show or hide one of the result's regions ('Tumour', 'Peritumoral ring') in 3D only (its 2D outline stays).
    Returns False when the segmentation has no such segment."""
    display = regions_node.GetDisplayNode() if regions_node is not None else None
    seg_id = regions_node.GetSegmentation().GetSegmentIdBySegmentName(segment_name) if display is not None else ""
    if not seg_id:
        return False
    display.SetSegmentVisibility3D(seg_id, bool(visible))
    return True


def volume_render_cam(cam_node, roi_node=None, opacity: Optional[float] = None, threshold: Optional[float] = None):
    """Volume-render the CAM in 3D with the heat colours, cropped to ``roi_node`` (give the CAM's own region,
    :func:`cam_region_roi`, never the bare box: the ring lies outside it). Returns the VR display node.

    ``opacity`` and ``threshold`` None: the map's own settings (:func:`cam_opacity_3d`, :func:`cam_threshold`)."""
    scene = cam_node.GetScene()
    logic = _volume_rendering_logic(scene)
    vr = logic.GetFirstVolumeRenderingDisplayNode(cam_node)
    if vr is None:
        vr = logic.CreateDefaultVolumeRenderingNodes(cam_node)
    if vr is None:
        return None
    _remember_threshold(cam_node, threshold)
    if opacity is not None:
        cam_node.SetAttribute(CAM_OPACITY_3D_ATTRIBUTE, f"{float(opacity):g}")
    prop_node = vr.GetVolumePropertyNode()
    if prop_node is not None:
        set_cam_transfer_functions(prop_node, cam_threshold(cam_node), cam_opacity_3d(cam_node))
    if roi_node is not None:
        vr.SetAndObserveROINodeID(roi_node.GetID())
        vr.SetCroppingEnabled(True)
    else:
        vr.SetCroppingEnabled(False)
    vr.SetVisibility(True)
    return vr


def _say_no_legend_in_3d() -> None:
    """The MRML colour legend is drawn for a volume in the slice views only (Slicer's colour legend displayable
    manager shows no volume's legend in 3D views), so the 3D rendering has none: said once in the log."""
    if not _LEGEND_3D_LOGGED:
        _LEGEND_3D_LOGGED.append(True)
        logging.getLogger("tmbrb").info("The class activation map's colour legend shows in the slice views, not in the "
                                        "3D view: 3D Slicer's colour legend is not drawn for volumes in 3D views. The "
                                        "3D rendering uses the same heat colours. Said once.")


_LEGEND_3D_LOGGED: List[bool] = []


def show_cam_in_3d(cam_node, opacity: Optional[float] = None, threshold: Optional[float] = None):
    """The CAM volume-rendered in 3D over the tumour and its ring, cropped to its own non-zero region (an ROI that is
    reused on the next run). Returns (volume rendering display node, region ROI)."""
    _say_no_legend_in_3d()
    vr = cam_volume_rendering_node(cam_node)
    old = vr.GetROINode() if vr is not None else None
    region = cam_region_roi(cam_node, node=old if old is not None and old.GetAttribute("TMBRB.kind") == "cam-region"
                            else None)
    return volume_render_cam(cam_node, region, opacity=opacity, threshold=threshold), region


# Software OpenGL (Mesa's llvmpipe, the usual case on a server without a GPU) casts the volume's rays on the CPU: one ray
# per pixel costs seconds per 3D frame, on the server's event loop. One ray per SOFTWARE_GL_IMAGE_SAMPLE_DISTANCE^2
# pixels, interpolated between, is 3-6x cheaper (benchmarks/bench_volume_render.py) and looks the same for the map,
# which is smooth over millimetres (a 16^3 map upsampled). Surfaces (tumour, ring, box) are drawn at full resolution.
SOFTWARE_GL_IMAGE_SAMPLE_DISTANCE = 3.0
_SOFTWARE_GL_NAMES = ("llvmpipe", "softpipe", "swrast", "swiftshader", "software rasterizer", "lavapipe")


def software_gl(render_window) -> Optional[bool]:
    """Whether ``render_window`` draws with a software OpenGL renderer (llvmpipe, softpipe, SwiftShader, ...); None
    while the window has no OpenGL context yet (before its first render) or says nothing of its renderer."""
    report = getattr(render_window, "ReportCapabilities", None)
    text = report() if report is not None else ""
    line = next((line for line in (text or "").splitlines() if "renderer string" in line.lower()), "")
    if not line:
        return None
    return any(name in line.lower() for name in _SOFTWARE_GL_NAMES)


def set_volume_image_sample_distance(renderer, distance: float) -> int:
    """Cast one ray per ``distance`` x ``distance`` pixels in every GPU ray-cast volume of ``renderer`` (1: one per
    pixel, VTK's default). Slicer's volume rendering displayable manager sets the sample distance along the ray,
    never this one, so it holds until the volume's pipeline is made again. Returns the number of mappers changed."""
    distance = float(distance)
    if not distance >= 1.0:
        raise ValueError(f"image sample distance must be at least 1 pixel, got {distance}")
    changed = 0
    volumes = renderer.GetVolumes()
    volumes.InitTraversal()
    for _ in range(volumes.GetNumberOfItems()):
        mapper = volumes.GetNextVolume().GetMapper()
        if mapper is None or not mapper.IsA("vtkGPUVolumeRayCastMapper"):
            continue
        if mapper.GetImageSampleDistance() != distance:
            mapper.SetMaximumImageSampleDistance(max(distance, mapper.GetMaximumImageSampleDistance()))
            mapper.SetMinimumImageSampleDistance(distance)
            mapper.SetImageSampleDistance(distance)
            changed += 1
    return changed


# ----------------------------------------------------------------------------------------------------------------------
# views: centring on a result, the box's handles


def centre_views_on_result(scene, seed_ras, roi_node=None, fit: float = 1.6) -> int:
    """After a result: the slice views jump to the seed (centred) and every 3D view's camera turns to the box's
    centre, at a distance that shows the box ``fit`` times over (its direction kept), through the MRML slice and
    camera nodes, so it works in 3D Slicer and in the viewer alike. Returns the number of cameras moved."""
    import slicer

    x, y, z = (float(v) for v in seed_ras)
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, x, y, z, slicer.vtkMRMLSliceNode.CenteredJumpSlice)
    if roi_node is not None and roi_is_defined(roi_node):
        b = [0.0] * 6
        roi_node.GetRASBounds(b)
        centre = np.array([(b[0] + b[1]) / 2, (b[2] + b[3]) / 2, (b[4] + b[5]) / 2])
        radius = 0.5 * float(np.linalg.norm([b[1] - b[0], b[3] - b[2], b[5] - b[4]]))
    else:
        centre, radius = np.array([x, y, z]), 30.0
    cameras = scene.GetNodesByClass("vtkMRMLCameraNode")
    for i in range(cameras.GetNumberOfItems()):
        camera = cameras.GetItemAsObject(i)
        direction = np.array(camera.GetPosition()) - np.array(camera.GetFocalPoint())
        norm = np.linalg.norm(direction)
        direction = direction / norm if norm > 0 else np.array([0.0, 1.0, 0.0])  # anterior
        angle = np.radians(max(1.0, camera.GetViewAngle()) / 2)
        distance = fit * max(radius, 1.0) / np.sin(angle)
        was = camera.StartModify()
        try:
            camera.SetFocalPoint(*centre)
            camera.SetPosition(*(centre + distance * direction))
            camera.SetParallelScale(fit * max(radius, 1.0))
        finally:
            camera.EndModify(was)
        camera.ResetClippingRange()
    return cameras.GetNumberOfItems()


def box_handles_in_slice_views_only(roi_node, threed_view_node_ids: Sequence[str]) -> None:
    """The box keeps its handles (drag to change it) in the slice views; in the given 3D views it is drawn as a plain
    outline whose handles do not react, so a left-drag there rotates the view instead of moving the box.

    Done with two display nodes of the ROI: its own, limited to the other views, and a non-interactive one (reused)
    for the 3D views."""
    scene = roi_node.GetScene()
    if roi_node.GetDisplayNode() is None:
        roi_node.CreateDefaultDisplayNodes()
    main = roi_node.GetDisplayNode()
    threed = set(threed_view_node_ids)
    others = [v.GetID() for v in _nodes(scene, "vtkMRMLAbstractViewNode") if v.GetID() not in threed]
    main.SetViewNodeIDs(others)
    outline = None
    for i in range(roi_node.GetNumberOfDisplayNodes()):
        d = roi_node.GetNthDisplayNode(i)
        if d is not None and d.GetAttribute("TMBRB.kind") == "box-3d-outline":
            outline = d
    if outline is None:
        outline = scene.AddNewNodeByClass(main.GetClassName())
        outline.Copy(main)
        outline.SetAttribute("TMBRB.kind", "box-3d-outline")
        roi_node.AddAndObserveDisplayNodeID(outline.GetID())
    outline.SetViewNodeIDs(list(threed))
    outline.SetHandlesInteractive(False)
    for set_color in (outline.SetColor, outline.SetSelectedColor):
        set_color(*BOX_OUTLINE_COLOR_3D)  # grey: never read as the map's heat colours
    outline.SetVisibility(True)


def _nodes(scene, class_name: str) -> List:
    coll = scene.GetNodesByClass(class_name)
    return [coll.GetItemAsObject(i) for i in range(coll.GetNumberOfItems())]


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
    "volume_state", "node_geometry", "same_geometry", "region_on_grid", "add_map_on_grid", "ijk_to_ras", "ijk_to_ras_from_sitk", "seed_ras", "seed_lps", "roi_is_defined",
    "box_from_roi", "set_roi_from_box", "segmentation_to_mask", "regions_segmentation", "segment_array",
    "cam_color_node", "show_cam", "set_cam_opacity", "volume_render_cam", "fill_table", "table_rows",
    "set_volume_rendering_logic", "cam_threshold", "set_cam_threshold", "cam_opacity_3d", "set_cam_opacity_3d",
    "set_cam_visibility", "set_region_visibility_3d", "cam_volume_rendering_node", "show_cam_in_3d",
    "centre_views_on_result", "box_handles_in_slice_views_only",
    "place_in_study", "study_item", "ensure_segmentation_converters", "lps_to_ras", "ras_to_lps",
]
