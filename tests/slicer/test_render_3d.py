"""The class activation map is VISIBLE in a rendered 3D view (issue 11), on the module's display code
(SceneLogic.process output), rendered offscreen by VTK (EGL): heat-coloured pixels inside the tumour's projection and
over the ring outside it; none at 3D opacity 0, with the 3D toggle off, or before the result.

Two scenes: the module's own (mrml.create_scene, a 3D view from Slicer's displayable manager factory) and an
application's whose volume rendering logic the module does not know in advance (trame-slicer's SlicerApp and
ThreeDView, as the browser viewer has them): the rendering is made through that logic. Depth peeling is off in
both views, as in the viewer: with it, software GL (llvmpipe) draws neither the volume nor the translucent surfaces."""

from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from _prereq import require  # noqa: E402
from conftest import REPO, add_ct, add_seed  # noqa: E402
from test_slicer_logic import oblique_ct  # noqa: E402

from TMBRBLib.geometry import lps_to_ras  # noqa: E402
from TMBRBLib.slicer import mrml as ma  # noqa: E402

SEED_LPS = (14.0, -16.0, 33.0)
ARTIFACTS = REPO / "test-artifacts" / "slicer"
SIZE = 320


def is_heat(img: np.ndarray) -> np.ndarray:
    """Pixels in the map's heat colours: red clearly above green above blue (the 3D background is blue-grey, the
    tumour yellow-grey and the ring blue)."""
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    return (r > 120) & (r - b > 70) & (r - g > 25) & (g >= b - 10)


def grab(render_window) -> np.ndarray:
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkRenderingCore import vtkWindowToImageFilter

    render_window.Render()
    f = vtkWindowToImageFilter()
    f.SetInput(render_window)
    f.ReadFrontBufferOff()
    f.Update()
    img = f.GetOutput()
    w, h, _ = img.GetDimensions()
    return vtk_to_numpy(img.GetPointData().GetScalars()).reshape(h, w, -1)[::-1, :, :3].astype(int)


def project(renderer, pts_ras: np.ndarray) -> np.ndarray:
    """Pixel (row, col) of world points in the renderer's picture."""
    out = []
    h = renderer.GetRenderWindow().GetSize()[1]
    for p in pts_ras:
        renderer.SetWorldPoint(float(p[0]), float(p[1]), float(p[2]), 1.0)
        renderer.WorldToDisplay()
        x, y, _ = renderer.GetDisplayPoint()
        out.append((int(round(h - 1 - y)), int(round(x))))
    return np.array(out, dtype=int).reshape(-1, 2)


def footprint(renderer, volume_node, mask_kji, shape) -> np.ndarray:
    """The projection of a mask's voxel centres onto the picture (dilated by one pixel)."""
    from scipy import ndimage

    kji = np.argwhere(mask_kji)
    pts = (np.c_[kji[:, ::-1], np.ones(len(kji))] @ ma.ijk_to_ras(volume_node).T)[:, :3]
    rc = project(renderer, pts)
    ok = (rc[:, 0] >= 0) & (rc[:, 0] < shape[0]) & (rc[:, 1] >= 0) & (rc[:, 1] < shape[1])
    out = np.zeros(shape[:2], bool)
    out[rc[ok, 0], rc[ok, 1]] = True
    return ndimage.binary_dilation(out, iterations=1)


class FactoryView:
    """A 3D view as 3D Slicer builds one: a renderer whose displayable managers come from Slicer's factory, on the
    scene's application logic."""

    MANAGERS = ("vtkMRMLVolumeRenderingDisplayableManager", "vtkMRMLCameraDisplayableManager",
                "vtkMRMLViewDisplayableManager", "vtkMRMLModelDisplayableManager",
                "vtkMRMLSegmentationsDisplayableManager3D", "vtkMRMLMarkupsDisplayableManager")

    def __init__(self, scene, app_logic):
        import slicer
        from vtkmodules.vtkRenderingCore import vtkRenderer, vtkRenderWindow, vtkRenderWindowInteractor

        factory = slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(app_logic)
        for m in self.MANAGERS:
            if not factory.IsDisplayableManagerRegistered(m):
                factory.RegisterDisplayableManager(m)
        self.renderer, self.window = vtkRenderer(), vtkRenderWindow()
        self.window.SetOffScreenRendering(1)
        self.window.AddRenderer(self.renderer)
        self.window.SetSize(SIZE, SIZE)
        self.renderer.SetUseDepthPeeling(False)
        self.renderer.SetUseDepthPeelingForVolumes(False)
        self.interactor = vtkRenderWindowInteractor()
        self.interactor.SetRenderWindow(self.window)
        self.interactor.Initialize()
        self.view_node = scene.AddNewNodeByClass("vtkMRMLViewNode", "View1")
        self.view_node.SetLayoutName("1")
        self.view_node.SetBoxVisible(False)
        self.view_node.SetAxisLabelsVisible(False)
        self.group = factory.InstantiateDisplayableManagers(self.renderer)
        self.group.SetMRMLDisplayableNode(self.view_node)


@pytest.fixture(scope="module")
def mapping_bundle(tmp_path_factory):
    """An untrained placeholder whose map on this CT covers the tumour and reaches into the ring (seed 0's does not)."""
    from TMBRBLib.bundle import make_placeholder_bundle

    return make_placeholder_bundle(tmp_path_factory.mktemp("bundle3d") / "placeholder", seed=6).path


def scored(scene, logic, bundle):
    """The module's display code on a scored case, the seed and the box hidden in 3D (their red glyphs are not the
    map)."""
    logic.bundle = bundle
    ct = add_ct(scene, oblique_ct()[0])
    seed = add_seed(scene, lps_to_ras(SEED_LPS))
    result = logic.process(ct, seed, numberOfShifts=0, device="cpu")
    for markups in (seed, result.nodes["roi"]):
        markups.GetDisplayNode().SetVisibility3D(False)
    return ct, result


def check_visible(renderer, window, ct, result, name: str) -> None:
    """Heat inside the tumour's projection and over the ring outside it; gone at opacity 0 and with the 3D toggle
    off; the pictures go to test-artifacts/slicer."""
    from PIL import Image

    nodes = result.nodes
    cam_node = nodes["cam"]
    cam = ma.volume_array(cam_node)
    assert cam.max() > 0.5, "the placeholder model's map is empty: nothing to render"
    tumour = ma.segment_array(nodes["regions"], "Tumour", ct) > 0
    ring = ma.segment_array(nodes["regions"], "Peritumoral ring", ct) > 0
    ma.set_cam_visibility(cam_node, in_3d=False)
    before = grab(window)  # the control: the same view without the map
    ma.set_cam_visibility(cam_node, in_3d=True)
    after = grab(window)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    Image.fromarray(before.astype(np.uint8)).save(ARTIFACTS / f"{name}_3d_before.png")
    Image.fromarray(after.astype(np.uint8)).save(ARTIFACTS / f"{name}_3d_after.png")
    in_tumour = footprint(renderer, ct, tumour, after.shape)
    in_ring = footprint(renderer, ct, ring & (cam > ma.cam_threshold(cam_node)), after.shape) & ~in_tumour
    assert not is_heat(before).any(), "heat colours in the control picture"
    for seg in ("Tumour", "Peritumoral ring"):  # each region toggles on its own in 3D
        ma.set_region_visibility_3d(nodes["regions"], seg, False)
        bare = grab(window)
        ma.set_region_visibility_3d(nodes["regions"], seg, True)
        drawn = in_tumour if seg == "Tumour" else in_ring
        assert np.abs(before[drawn] - bare[drawn]).sum(axis=1).mean() > 5, f"{seg} is not drawn in 3D"
    assert is_heat(after)[in_tumour].sum() > 30, "no heat colours inside the tumour's projection"
    assert is_heat(after)[in_ring].sum() > 10, "no heat colours over the ring outside the tumour"
    ma.set_cam_opacity_3d(cam_node, 0.0)
    assert not is_heat(grab(window)).any(), "heat colours at 3D opacity 0"
    ma.set_cam_opacity_3d(cam_node, ma.CAM_OPACITY_3D)
    assert is_heat(grab(window))[in_tumour].sum() > 30


def test_cam_is_visible_in_a_3d_view_of_the_module_scene(scene, logic, mapping_bundle):
    ct, result = scored(scene, logic, mapping_bundle)
    view = FactoryView(scene, ma._SCENE_LOGICS[scene.GetAddressAsString("")][0])
    for seg in ("Tumour", "Peritumoral ring"):
        assert ma.set_region_visibility_3d(result.nodes["regions"], seg, True)
    ma.centre_views_on_result(scene, ma.seed_ras(scene.GetFirstNodeByName("seed")), result.nodes["roi"])
    check_visible(view.renderer, view.window, ct, result, "module_scene")


def require_trame_slicer() -> None:
    if importlib.util.find_spec("trame_slicer") is None:
        require("chromium", 'trame-slicer is not installed (pip install "trame-slicer[standalone]")')


def trame_slicer_view():
    """trame-slicer's application and a 3D view of it as the viewer has them: depth peeling off, no box or labels."""
    require_trame_slicer()
    from trame_slicer.core import SlicerApp
    from trame_slicer.views import ThreeDView

    app = SlicerApp()
    view = ThreeDView(app.scene, app.app_logic, "ThreeD")
    view.renderer().SetUseDepthPeeling(False)
    view.renderer().SetUseDepthPeelingForVolumes(False)
    view.render_window().SetSize(SIZE, SIZE)
    view.render_window().SetMultiSamples(0)  # quicker on software GL; the picture is the same for these tests
    view.get_view_node().SetBoxVisible(False)
    view.get_view_node().SetAxisLabelsVisible(False)
    return app, view


def volume_mappers(renderer) -> list:
    volumes = renderer.GetVolumes()
    volumes.InitTraversal()
    return [volumes.GetNextVolume().GetMapper() for _ in range(volumes.GetNumberOfItems())]


def test_cam_is_visible_through_the_applications_volume_rendering_logic(mapping_bundle):
    """trame-slicer registers its own volume rendering logic; the module's display code renders through it (the
    factory's application logic is found without being told) and the map is visible in trame-slicer's 3D view.

    Then with thinner rays (set_volume_image_sample_distance: one per 3x3 pixels, the viewer's setting on software
    GL): the mapper takes it, Slicer's displayable manager does not reset it when the map's display changes, and the
    map is still drawn where it was (the same pixel checks)."""
    from TMBRBLib.slicer.logic import SceneLogic

    app, view = trame_slicer_view()
    logic = SceneLogic(app.scene)
    ct, result = scored(app.scene, logic, mapping_bundle)
    try:
        app_vr = app.app_logic.GetModuleLogic("VolumeRendering")
        assert ma._volume_rendering_logic(app.scene).GetAddressAsString("") == app_vr.GetAddressAsString("")
        vr = ma.cam_volume_rendering_node(result.nodes["cam"])
        assert vr is not None and app.volume_rendering.get_vr_display_node(result.nodes["cam"]) is vr
        ma.centre_views_on_result(app.scene, ma.seed_ras(app.scene.GetFirstNodeByName("seed")), result.nodes["roi"])
        check_visible(view.renderer(), view.render_window(), ct, result, "application_scene")

        full = grab(view.render_window())
        assert isinstance(ma.software_gl(view.render_window()), bool)
        (mapper,) = volume_mappers(view.renderer())
        assert mapper.GetImageSampleDistance() == 1.0
        with pytest.raises(ValueError, match="at least 1 pixel"):
            ma.set_volume_image_sample_distance(view.renderer(), 0.5)
        assert ma.set_volume_image_sample_distance(view.renderer(), 3.0) == 1
        assert ma.set_volume_image_sample_distance(view.renderer(), 3.0) == 0  # already so: nothing to change
        assert (mapper.GetImageSampleDistance(), mapper.GetMinimumImageSampleDistance()) == (3.0, 3.0)
        assert mapper.GetMaximumImageSampleDistance() >= 3.0
        thin = grab(view.render_window())
        heat_full, heat_thin = is_heat(full), is_heat(thin)
        assert heat_full.sum() > 100
        # the same picture but for the map's edges: nearly every heat pixel stays heat
        assert (heat_full & heat_thin).sum() >= 0.9 * heat_full.sum()
        assert (heat_full ^ heat_thin).sum() <= 0.15 * heat_full.sum()
        threshold = ma.cam_threshold(result.nodes["cam"])
        ma.set_cam_threshold(result.nodes["cam"], 0.4)  # the display node changes: the displayable manager updates
        grab(view.render_window())
        assert mapper.GetImageSampleDistance() == 3.0
        ma.set_cam_threshold(result.nodes["cam"], threshold)
        check_visible(view.renderer(), view.render_window(), ct, result, "application_scene_thin_rays")
    finally:
        logic.shutdown()


def test_no_opengl_renderer_is_guessed_before_a_context_exists():
    from vtkmodules.vtkRenderingCore import vtkRenderWindow

    window = vtkRenderWindow()
    window.SetOffScreenRendering(1)
    assert ma.software_gl(window) is None
    assert ma.software_gl(object()) is None  # not an OpenGL window at all


def test_viewer_thins_the_rays_at_each_3d_render_on_software_gl_only(monkeypatch):
    """The viewer's 3D view sets the thinner rays at the start of each render, on a map made after the view, when the
    renderer is software (llvmpipe here) and never otherwise (the renderer asked once)."""
    require_trame_slicer()
    from trame_slicer.core import SlicerApp
    from trame_slicer.views import ThreeDView

    from tmbrb_viewer.app import TMBRBViewer

    asked = []
    real = ma.software_gl

    def software_gl(window, answer=None):
        asked.append(real(window))
        return asked[-1] if answer is None else answer

    for answer in (None, False):  # the machine's own answer, then a hardware renderer's
        monkeypatch.setattr(ma, "software_gl", lambda w, a=answer: software_gl(w, a))
        asked.clear()
        app = SlicerApp()
        view = ThreeDView(app.scene, app.app_logic, "ThreeD")
        view.render_window().SetSize(SIZE, SIZE)
        view.render_window().SetMultiSamples(0)
        TMBRBViewer._configure_threed_view(view)
        view.render_window().Render()  # the first render: the renderer is asked once
        try:
            cam = ma.add_volume_node_from_sitk(app.scene, sitk_map(), "map")
            ma.volume_render_cam(cam)
            (mapper,) = volume_mappers(view.renderer())
            view.render_window().Render()
            view.render_window().Render()
            assert len(asked) == 1 and isinstance(asked[0], bool)
            software = asked[0] if answer is None else answer
            assert mapper.GetImageSampleDistance() == (ma.SOFTWARE_GL_IMAGE_SAMPLE_DISTANCE if software else 1.0)
        finally:
            ma.release_scene(app.scene)


def sitk_map():
    """A small smooth map (a Gaussian bump in [0, 1]) on a 1 mm grid."""
    import SimpleITK as sitk

    zz, yy, xx = np.indices((20, 20, 20))
    bump = np.exp(-((xx - 10) ** 2 + (yy - 10) ** 2 + (zz - 10) ** 2) / 30.0).astype(np.float32)
    return sitk.GetImageFromArray(bump)
