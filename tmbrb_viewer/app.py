"""The browser viewer: a trame-slicer app driving the 3D Slicer module's Logic (TMBRBLib.slicer.logic) on an MRML scene.

Everything the module computes is done by the scene logic (input checks, box proposal, the engine in a background
process watched by the same JobWatcher as Slicer's panel, the output nodes: CAM volume with heat colours and volume
rendering, tumour/ring segmentation, results table) and the MRML adapter (TMBRBLib.slicer.mrml); the result reads as
everywhere else (TMBRBLib.present). This file only builds the page and connects it to them.

Imports trame, trame-slicer and slicer-core; import it only to serve (tmbrb_viewer.cli does, lazily).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional

from TMBRBLib import RESEARCH_USE_NOTICE, __version__
from TMBRBLib.errors import TMBRBError, TMBRBInputError

log = logging.getLogger("tmbrb.viewer")

SLICE_TAGS = ("Red", "Green", "Yellow")  # axial, coronal, sagittal
THREED_TAG = "ThreeD"
VIEW_LABELS = {"Red": "Axial", "Green": "Coronal", "Yellow": "Sagittal", THREED_TAG: "3D"}
LAYOUT_COLUMNS = (("Red", "Green"), (THREED_TAG, "Yellow"))  # the page's views, column by column (and the snapshot's)
# CT window/level presets (window, level) in HU, as in 3D Slicer's volume display presets
WL_PRESETS = {"Lung": (1500.0, -600.0), "Mediastinum": (350.0, 50.0), "Soft tissue": (400.0, 40.0)}
BOX_HANDLE_SCALE = 1.5  # the box's handles in the slice views (3D Slicer's default is 3)
LABEL_STYLE = ("position:absolute; font-size:12px; color:#fff; background:rgba(0,0,0,0.6); padding:0 4px; "
               "border-radius:3px; text-shadow:0 0 2px #000, 1px 1px 1px #000; pointer-events:none; "
               "line-height:1.35; z-index:2;")
# the engine job's poll: a result is placed at most this long after the worker answers (a poll reads a pipe, no more)
POLL_S = 0.05
NO_SEED_MESSAGE = "Place the seed first: click on the tumour in a slice view (press 'Place seed' to place it again)."
NO_CT_MESSAGE = "Open a CT first (a file path, an upload, or a DICOM folder)."
STALE_MESSAGE = ("Outdated: the seed, box or ECOG changed since this result was computed. Press Apply to score the "
                 "case as it is now.")


def configure_rendering() -> None:
    """Offscreen VTK rendering without an X server: EGL (Mesa or a GPU) unless the user chose otherwise."""
    if not os.environ.get("DISPLAY") and "VTK_DEFAULT_OPENGL_WINDOW" not in os.environ:
        os.environ["VTK_DEFAULT_OPENGL_WINDOW"] = "vtkEGLRenderWindow"


def heat_legend_css(n: int = 11) -> str:
    """CSS gradient with the CAM colour table's colours (TMBRBLib.slicer.mrml's heat map) for the page legend."""
    from TMBRBLib.slicer import mrml as ma

    stops = []
    for i in range(n):
        t = i / (n - 1)
        r, g, b = ma.heat_rgb(t)
        stops.append(f"rgb({int(255 * r)},{int(255 * g)},{int(255 * b)}) {int(100 * t)}%")
    return "linear-gradient(to right, " + ", ".join(stops) + ")"


# JPEG quality of the views' images, interactive and still alike (trame-rca's still quality is 90)
VIEW_IMAGE_QUALITY = 90


def format_result(result: Dict) -> Dict:
    """The side panel's state from a result dict (result.json): the lines of TMBRBLib.present."""
    from TMBRBLib.present import MASK_UNCERTAIN, by_key, result_lines, select

    lines = result_lines(result)
    line = by_key(lines)
    combined = select(lines, ("os_ecog", "pfs_ecog"))
    ecog = line["ecog"]
    return {
        "r_score": line["score"].value,
        "r_spread": line["spread"].text,
        "r_os": line["os"].explained,  # the page labels them "OS:" and "PFS:"
        "r_pfs": line["pfs"].explained,
        "r_ecog": " ".join(f"{c.label}: {c.value} ({c.detail})." for c in combined) if combined else ecog.text,
        "r_att": line["attention"].value,
        "r_mask": line["mask"].text if "mask" in line else "",
        "r_mask_uncertain": "mask" in line and line["mask"].value == MASK_UNCERTAIN,
        # likeness to the model's training data (deep features; acquisition ranges), when the result has them
        "r_trust": [line[k].text for k in ("ood", "acquisition") if k in line],
        "r_model": line["model"].value,
        "r_demo": line["demo"].value == "yes",
        "r_notice": line["notice"].value,
        "r_warnings": [w.value for w in select(lines, ("warning",))],
    }


def style_box_display(roi_node, handle_scale: float = BOX_HANDLE_SCALE) -> None:
    """Draw the box (a markups ROI) as an outline with small handles: no fill over the tumour in the slice views or
    in 3D, so that the CT, the seed and the CAM inside the box stay readable.

    Parameters
    ----------
    roi_node : vtkMRMLMarkupsROINode or None
        The box; its display node is created when missing. None does nothing.
    handle_scale : float
        Size of the interaction handles (3D Slicer's default is 3).
    """
    if roi_node is None:
        return
    display = roi_node.GetDisplayNode()
    if display is None:
        roi_node.CreateDefaultDisplayNodes()
        display = roi_node.GetDisplayNode()
    if display is None:
        return
    display.SetFillVisibility(False)
    display.SetFillOpacity(0.0)
    display.SetOutlineVisibility(True)
    display.SetOutlineOpacity(1.0)
    display.SetInteractionHandleScale(float(handle_scale))


def direction_letter(vector) -> str:
    """The patient direction (R/L, A/P, S/I) a RAS vector points to most."""
    components = [float(c) for c in vector[:3]]
    axis = max(range(3), key=lambda i: abs(components[i]))
    return ("RAS" if components[axis] > 0 else "LPI")[axis]


def orientation_letters(slice_to_ras) -> Dict[str, str]:
    """The letters at a slice view's edges (l, r, t, b) from its slice node's SliceToRAS matrix (vtkMatrix4x4):
    the view's x axis points right, its y axis up."""
    x = [slice_to_ras.GetElement(i, 0) for i in range(3)]
    y = [slice_to_ras.GetElement(i, 1) for i in range(3)]
    return {"l": direction_letter([-c for c in x]), "r": direction_letter(x),
            "t": direction_letter(y), "b": direction_letter([-c for c in y])}


def slice_position_text(slice_to_ras) -> str:
    """The slice position as 3D Slicer writes it: the axis the slice normal follows and the RAS coordinate (mm)."""
    normal = [slice_to_ras.GetElement(i, 2) for i in range(3)]
    axis = max(range(3), key=lambda i: abs(normal[i]))
    return f"{'RAS'[axis]}: {slice_to_ras.GetElement(axis, 3):.1f} mm"


def label_tile(tile, text: str):
    """A copy of an RGB tile (numpy, h x w x 3) with `text` written in its top-left corner, white on a dark box."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray(np.ascontiguousarray(tile).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    size = max(12, min(img.size) // 22)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    left, top, right, bottom = draw.textbbox((6, 4), text, font=font)
    draw.rectangle((left - 4, top - 3, right + 4, bottom + 3), fill=(0, 0, 0))
    draw.text((6, 4), text, fill=(255, 255, 255), font=font)
    return np.asarray(img)


async def _session_config(request):
    """The trame client asks the launcher (POST <page>/paraview/) where its websocket is before connecting; without a
    launcher that request answers 405 on every page load. Answer it with the server's own websocket address."""
    from aiohttp import web

    prefix = request.path[: -len("paraview/")] if request.path.endswith("paraview/") else "/"
    scheme = "wss" if request.secure else "ws"
    return web.json_response({"sessionURL": f"{scheme}://USE_HOST{prefix}ws"})


class TMBRBViewer:
    """One viewer (one MRML scene, one browser session at a time)."""

    def __init__(self, server=None, bundle=None, device: str = "auto", shifts: Optional[int] = None,
                 out_dir: str = "tmbrb-viewer-output"):
        configure_rendering()
        from trame.app import get_server
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories
        from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

        from TMBRBLib.slicer.logic import SceneLogic

        self.server = server or get_server(None, client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        self.state, self.ctrl = self.server.state, self.server.controller
        self.slicer_app = SlicerApp()
        self.scene = self.slicer_app.scene
        self._use_app_volume_rendering()
        # every frame at the still quality: trame-rca renders a view twice per change when the interactive quality
        # differs (a fast frame, then the same scene again for the still one); on software GL (llvmpipe) the 3D
        # view's volume rendering is the largest part of the server's work on a result (benchmarks/bench_viewer.py)
        register_rca_factories(self.slicer_app.view_manager, self.server, interactive_quality=VIEW_IMAGE_QUALITY,
                               slice_view_ui_f=self._slice_view_ui, three_d_view_ui_f=self._threed_view_ui)
        self.layout_manager = LayoutManager(self.scene, self.slicer_app.view_manager, self.server)
        views = {"Red": ViewLayoutDefinition.axial_view(), "Green": ViewLayoutDefinition.coronal_view(),
                 "Yellow": ViewLayoutDefinition.sagittal_view(), THREED_TAG: ViewLayoutDefinition.threed_view(
                     name=THREED_TAG)}
        self.layout_manager.register_layout("TMBRB", Layout(LayoutDirection.Horizontal, [
            Layout(LayoutDirection.Vertical, [views[tag] for tag in column]) for column in LAYOUT_COLUMNS]))
        self.layout_manager.set_layout("TMBRB")

        self.logic = SceneLogic(self.scene)
        self.logic.bundle = bundle
        self.device = device
        self.shifts = None if shifts is None else int(shifts)  # None: the bundle's number
        self.out_dir = Path(out_dir)
        self.work = Path(tempfile.mkdtemp(prefix="tmbrb-viewer-"))
        self._baseline = self._node_ids()
        self.volume = self.seed = self.roi = None
        self.ct_name = ""
        self.watcher = None  # JobWatcher of the running background job
        self.last_result: Optional[Dict] = None
        self.last_out: Optional[Path] = None
        self.last_job = None  # the job of the result shown: Save asks the warm worker for its full outputs
        self.dicom_source: Optional[Path] = None  # the CT's DICOM series folder on the server (Save DICOM), if kept
        self._seed_tag = None
        self._roi_watched = None
        self._runs = 0
        self.timings: Dict[str, float] = {}
        self._apply_t0: Optional[float] = None  # when the last Apply was pressed
        self._map_views_pending: set = set()  # views that have not drawn a frame since the result was placed
        self._init_state()
        self._init_2d()
        self._build_ui()

    # state ----------------------------------------------------------------------------------------------------------
    def _init_state(self) -> None:
        s = self.state
        s.trame__title = "TMBRB viewer"
        s.update({
            "ct_path_input": "", "ct_name": "", "has_ct": False, "has_seed": False, "seed_text": "",
            "box_text": "", "running": False, "progress": 0, "progress_msg": "", "message": "",
            "message_type": "info", "has_result": False, "stale": False, "ecog": "not given", "cam_opacity": 0.5,
            "saved_text": "", "goto_ras": "", "placing": False, "r_score": "", "r_spread": "", "r_os": "",
            "r_pfs": "", "r_ecog": "", "r_att": "", "r_mask": "", "r_mask_uncertain": False, "r_trust": [], "r_model": "", "r_demo": False, "r_notice": "",
            "r_warnings": [], "legend_css": heat_legend_css(), "notice": RESEARCH_USE_NOTICE,
        })
        self._init_3d_state()
        s.change("cam_opacity")(self._on_cam_opacity)
        s.change("ecog")(self._on_inputs_changed)

    def _say(self, text: str, kind: str = "info") -> None:
        with self.state:
            self.state.message = text
            self.state.message_type = kind

    def _node_ids(self) -> set:
        return {self.scene.GetNthNode(i).GetID() for i in range(self.scene.GetNumberOfNodes())}

    # 2D reading view: window/level, orientation, slice position, CT value under the pointer ------------------------
    def _init_2d(self) -> None:
        s = self.state
        for tag in SLICE_TAGS:
            s[f"orient_{tag}"] = {"l": "", "r": "", "t": "", "b": ""}
            s[f"pos_{tag}"] = ""
            s[f"hu_{tag}"] = ""
        s.update({"wl_preset": "", "wl_drag": False, "wl_text": ""})
        self._wl_drag_start = None
        self._case_dir: Optional[Path] = None
        self.ctrl.on_server_bind.add(self._bind_routes)

    @staticmethod
    def _bind_routes(wslink_server) -> None:
        wslink_server.app.router.add_post("/paraview/", _session_config)

    def _build_window_level_panel(self, v3, html) -> None:
        html.Div("Window / level", classes="text-subtitle-2 mt-2")
        with html.Div(classes="d-flex align-center flex-wrap", style="gap: 4px;"):
            for name in WL_PRESETS:
                v3.VBtn(name, click=(self.set_window_level, f"['{name}']"), density="compact", size="small",
                        id=f"tmbrb-wl-{name.lower().replace(' ', '-')}",
                        color=(f"wl_preset === '{name}' ? 'primary' : undefined",))
            v3.VBtn("Drag W/L", click=self.toggle_window_level_drag, density="compact", size="small",
                    id="tmbrb-wl-drag", color=("wl_drag ? 'primary' : undefined",))
        html.Div("{{ wl_text }}{{ wl_drag ? ' - drag in a slice view: left/right = window, up/down = level' : '' }}",
                 classes="text-caption", id="tmbrb-wl-text")

    def set_window_level(self, name: str) -> None:
        """Apply a window/level preset (WL_PRESETS) to the CT in the slice views."""
        if self.volume is None:
            self._say(NO_CT_MESSAGE, "error")
            return
        if name not in WL_PRESETS:
            self._say(f"Unknown window/level preset '{name}'; use one of {', '.join(WL_PRESETS)}.", "error")
            return
        from trame_slicer.core import VolumeWindowLevel

        VolumeWindowLevel.set_volume_node_window_level(self.volume, *WL_PRESETS[name])
        with self.state:
            self.state.wl_preset = name
        self._render_all()

    def toggle_window_level_drag(self) -> None:
        """Left-drag in a slice view adjusts window/level (right = wider window, up = higher level) until pressed
        again; placing the seed stops it."""
        drag = not bool(self.state.wl_drag)
        if drag and self.state.placing:
            self.slicer_app.markups_logic.disable_place_mode()
        with self.state:
            self.state.wl_drag = drag
            if drag:
                self.state.placing = False

    def _on_wl_drag_event(self, view, iren, event: str, tag: int) -> None:
        """A left press/move/release in a slice view while W/L drag is on: W/L follows the pointer, and the event
        goes no further (no panning, no markups)."""
        if not self.state.wl_drag or self.volume is None or self.volume.GetDisplayNode() is None:
            self._wl_drag_start = None
            return
        x, y = iren.GetEventPosition()
        display = self.volume.GetDisplayNode()
        if event == "LeftButtonPressEvent":
            self._wl_drag_start = (x, y, display.GetWindow(), display.GetLevel())
        elif self._wl_drag_start is None:
            return  # a plain pointer move
        elif event == "LeftButtonReleaseEvent":
            self._wl_drag_start = None
        else:
            x0, y0, window, level = self._wl_drag_start
            lo, hi = self.volume.GetImageData().GetScalarRange()
            per_pixel = max(hi - lo, 1.0) / max(view.render_window().GetSize()[0], 1)
            display.SetAutoWindowLevel(False)
            display.SetWindowLevel(max(1.0, window + (x - x0) * per_pixel), level + (y - y0) * per_pixel)
            self._render_all()
        iren.GetCommand(tag).SetAbortFlag(1)

    def _show_ct_window(self) -> None:
        """The new CT in the lung window; the page follows its window/level (presets and drags)."""
        from vtkmodules.vtkCommonCore import vtkCommand

        self.set_window_level("Lung")
        display = self.volume.GetDisplayNode()
        if display is not None:
            display.AddObserver(vtkCommand.ModifiedEvent, self._on_ct_display_modified)
            self._on_ct_display_modified(display)

    def _on_ct_display_modified(self, display, event=None) -> None:
        window, level = display.GetWindow(), display.GetLevel()
        text = f"W {window:.0f} / L {level:.0f} HU"
        if text == self.state.wl_text:
            return
        preset = next((n for n, wl in WL_PRESETS.items() if abs(wl[0] - window) < 0.5 and abs(wl[1] - level) < 0.5),
                      "")
        with self.state:
            self.state.wl_text = text
            self.state.wl_preset = preset

    def _watch_slice_view(self, view) -> None:
        """Follow a slice view: its slice node (orientation letters, position) and the pointer (CT value)."""
        from vtkmodules.vtkCommonCore import vtkCommand

        tag = view.get_singleton_tag()
        node = view.get_view_node()
        node.AddObserver(vtkCommand.ModifiedEvent, lambda caller, event: self._update_slice_labels(tag, caller))
        # before the slice view's own interaction (priority): a pointer move is read, never consumed
        iren = view.interactor()
        iren.AddObserver(vtkCommand.MouseMoveEvent, lambda caller, event: self._update_pointer_value(view), 100.0)
        for name in ("LeftButtonPressEvent", "MouseMoveEvent", "LeftButtonReleaseEvent"):
            tags = []
            tags.append(iren.AddObserver(getattr(vtkCommand, name), lambda caller, event, tags=tags, name=name:
                                         self._on_wl_drag_event(view, caller, name, tags[0]), 90.0))
        self._update_slice_labels(tag, node)

    def _update_slice_labels(self, tag: str, node) -> None:
        m = node.GetSliceToRAS()
        letters, position = orientation_letters(m), slice_position_text(m)
        if self.state[f"orient_{tag}"] == letters and self.state[f"pos_{tag}"] == position:
            return
        with self.state:
            self.state[f"orient_{tag}"] = letters
            self.state[f"pos_{tag}"] = position

    def ct_value_at(self, view, x: float, y: float):
        """The CT value (HU) at pixel (x, y) of a slice view (VTK's display coordinates, origin bottom left) and the
        RAS point there; the value is None outside the CT or with no CT open."""
        from vtkmodules.vtkCommonMath import vtkMatrix4x4

        ras = view.get_view_node().GetXYToRAS().MultiplyPoint((float(x), float(y), 0.0, 1.0))[:3]
        image = self.volume.GetImageData() if self.volume is not None else None
        if image is None:
            return None, ras
        ras_to_ijk = vtkMatrix4x4()
        self.volume.GetRASToIJKMatrix(ras_to_ijk)
        ijk = [int(round(c)) for c in ras_to_ijk.MultiplyPoint((*ras, 1.0))[:3]]
        dims = image.GetDimensions()
        if any(i < 0 or i >= d for i, d in zip(ijk, dims)):
            return None, ras
        return image.GetScalarComponentAsDouble(ijk[0], ijk[1], ijk[2], 0), ras

    def _update_pointer_value(self, view) -> None:
        tag = view.get_singleton_tag()
        if self.volume is None:
            text = ""
        else:
            x, y = view.interactor().GetEventPosition()
            value, _ras = self.ct_value_at(view, x, y)
            text = "outside the CT" if value is None else f"{value:.0f} HU"
        if text != self.state[f"hu_{tag}"]:
            with self.state:
                self.state[f"hu_{tag}"] = text


    # UI -------------------------------------------------------------------------------------------------------------
    @staticmethod
    def _marker(tag: str) -> None:
        from trame.widgets import html

        # a hook for tests and people: the view's container is this element's parent
        html.Div(classes="tmbrb-view-marker", id=f"tmbrb-view-{tag}", style=LABEL_STYLE + "right:4px; top:2px;",
                 children=[VIEW_LABELS.get(tag, "3D")])

    @staticmethod
    def _slice_overlay(tag: str) -> None:
        """Orientation letters at the view's edges; slice position and the CT value under the pointer."""
        from trame.widgets import html

        where = {"l": "left:40px; top:50%;", "r": "right:4px; top:50%;", "t": "top:2px; left:50%;",
                 "b": "bottom:40px; left:50%;"}
        for edge, place in where.items():
            html.Div(f"{{{{ orient_{tag}.{edge} }}}}", classes="tmbrb-orient", id=f"tmbrb-orient-{tag}-{edge}",
                     style=LABEL_STYLE + place + "font-weight:bold;")
        with html.Div(classes="tmbrb-view-info", id=f"tmbrb-info-{tag}", style=LABEL_STYLE + "right:4px; top:24px;"):
            html.Div(f"{{{{ pos_{tag} }}}}", id=f"tmbrb-pos-{tag}")
            html.Div(f"{{{{ hu_{tag} }}}}", id=f"tmbrb-hu-{tag}")

    def _slice_view_ui(self, server, view_id, view) -> None:
        from trame_slicer.app.ui import create_vertical_slice_view_gutter_ui

        create_vertical_slice_view_gutter_ui(server, view_id, view)
        tag = view.get_singleton_tag()
        self._marker(tag)
        self._slice_overlay(tag)
        self._watch_slice_view(view)
        self._watch_frames(view)

    def _threed_view_ui(self, server, view_id, view) -> None:
        from trame_slicer.app.ui import create_vertical_view_gutter_ui

        create_vertical_view_gutter_ui(server, view_id, view)
        self._marker(view.get_singleton_tag())
        self._configure_threed_view(view)
        self._watch_frames(view)

    def _watch_frames(self, view) -> None:
        """Apply -> the map drawn: the time to each view's first finished frame after a result is placed, the last of
        them kept in timings["apply_to_map_drawn_s"] and logged (benchmarks/bench_viewer.py reads it)."""
        tag = view.get_singleton_tag()
        view.render_window().AddObserver("EndEvent", lambda *_: self._frame_done(tag))

    def _frame_done(self, tag: str) -> None:
        if tag not in self._map_views_pending:
            return
        self._map_views_pending.discard(tag)
        if not self._map_views_pending and self._apply_t0 is not None:
            elapsed = time.perf_counter() - self._apply_t0
            self.timings["apply_to_map_drawn_s"] = elapsed
            log.info("Apply -> the map drawn in every view: %.2f s", elapsed)

    # 3D -------------------------------------------------------------------------------------------------------------
    def _use_app_volume_rendering(self) -> None:
        """The module's display code renders volumes through trame-slicer's volume rendering logic (the one its 3D
        views' displayable manager and its volume property tools use), not one of its own."""
        from TMBRBLib.slicer import mrml as ma

        ma.set_volume_rendering_logic(self.scene, self.slicer_app.app_logic.GetModuleLogic("VolumeRendering"))

    @staticmethod
    def _configure_threed_view(view) -> None:
        """No depth peeling in the 3D view: with it, software OpenGL (llvmpipe, the usual server case) draws neither
        volume renderings nor translucent surfaces, so the CAM and the translucent tumour and ring would vanish."""
        renderer = view.renderer()
        renderer.SetUseDepthPeeling(False)
        renderer.SetUseDepthPeelingForVolumes(False)
        TMBRBViewer._thin_volume_rays_on_software_gl(view)

    @staticmethod
    def _thin_volume_rays_on_software_gl(view) -> None:
        """On software OpenGL, the map's volume rendering casts one ray per 3x3 pixels (ma.set_volume_image_sample_
        distance): set at the start of every 3D render, so that a map made after the view (each result's) gets it
        before its first frame. The renderer is asked once, at the first render, whether it is software."""
        from TMBRBLib.slicer import mrml as ma

        renderer, known = view.renderer(), []

        def before_render(*_):
            if not known:
                software = ma.software_gl(view.render_window())
                if software is None:
                    return  # no OpenGL context yet: ask again at the next render
                known.append(software)
            if known[0]:
                ma.set_volume_image_sample_distance(renderer, ma.SOFTWARE_GL_IMAGE_SAMPLE_DISTANCE)

        renderer.AddObserver("StartEvent", before_render)

    def _init_3d_state(self) -> None:
        from TMBRBLib.slicer import mrml as ma

        s = self.state
        s.update({"cam_threshold": ma.CAM_THRESHOLD, "cam_2d": True, "cam_3d": True, "tumour_3d": True,
                  "ring_3d": True, "slices_3d": True})
        s.change("cam_threshold", "cam_2d", "cam_3d", "tumour_3d", "ring_3d")(self._on_cam_display)
        s.change("slices_3d")(self._on_slices_3d)

    def _threed_view_node_ids(self) -> List[str]:
        return [v.get_view_node().GetID() for v in self.slicer_app.view_manager.get_threed_views()
                if v.get_view_node() is not None]

    def _box_outline_in_3d(self) -> None:
        """The box moves by its handles in the slice views only; in 3D it is an outline and a left-drag rotates."""
        from TMBRBLib.slicer import mrml as ma

        if self.roi is not None:
            ma.box_handles_in_slice_views_only(self.roi, self._threed_view_node_ids())

    def _apply_cam_display(self) -> None:
        """The panel's CAM and region settings on the result's nodes (after a result and on every change)."""
        from TMBRBLib.slicer import mrml as ma

        p = self.logic.getParameterNode()
        cam = p.camVolume if self.volume is not None else None
        s = self.state
        if cam is not None:
            ma.set_cam_threshold(cam, float(s.cam_threshold))
            ma.set_cam_opacity_3d(cam, float(s.cam_opacity))
            ma.set_cam_visibility(cam, in_2d=bool(s.cam_2d), in_3d=bool(s.cam_3d), opacity_2d=float(s.cam_opacity))
        regions = p.regionsSegmentation if self.volume is not None else None
        if regions is not None:
            ma.set_region_visibility_3d(regions, ma.TUMOUR_SEGMENT_NAME, bool(s.tumour_3d))
            ma.set_region_visibility_3d(regions, ma.RING_SEGMENT_NAME, bool(s.ring_3d))

    def _on_cam_display(self, **_) -> None:
        self._guarded(lambda: self._apply_cam_display() or True, "Could not change the map's display.")
        self._render_all()

    def _on_slices_3d(self, slices_3d, **_) -> None:
        for view in self.slicer_app.view_manager.get_slice_views():
            view.get_view_node().SetSliceVisible(bool(slices_3d))
        self._render_all()

    def _centre_on_result(self) -> None:
        """The slice views jump to the seed, the 3D view turns to the box's centre."""
        from TMBRBLib.slicer import mrml as ma

        if self.seed is not None and self._seed_placed():
            ma.centre_views_on_result(self.scene, ma.seed_ras(self.seed), self.roi)

    def _build_ui(self) -> None:
        from trame.ui.vuetify3 import VAppLayout
        from trame.widgets import html
        from trame.widgets import vuetify3 as v3
        from trame_slicer.app.ui import LoadVolumeUI
        from trame_slicer.app.ui.flex_container import FlexContainer

        with VAppLayout(self.server, full_height=True, theme="dark") as self.ui:
            with v3.VAppBar(density="compact"):
                v3.VAppBarTitle(f"TMBRB viewer {__version__}")
                html.Span("{{ notice }}", classes="text-caption text-warning mr-4", id="tmbrb-notice")
            with v3.VNavigationDrawer(permanent=True, location="left", width=390):
                with html.Div(classes="pa-3 d-flex flex-column", style="gap: 8px;"):
                    self._build_input_panel(v3, html, LoadVolumeUI)
                    self._build_window_level_panel(v3, html)
                    self._build_result_panel(v3, html)
            with v3.VMain():
                with FlexContainer(row=True, fill_height=True, style="height: calc(100vh - 48px);"):
                    self.layout_manager.initialize_layout_grid(self.ui)

    def _build_input_panel(self, v3, html, LoadVolumeUI) -> None:
        html.Div("1. CT", classes="text-subtitle-2")
        with html.Div(classes="d-flex align-center", style="gap: 4px;"):
            v3.VTextField(v_model=("ct_path_input",), label="CT file or DICOM folder on this computer",
                          density="compact", hide_details=True, id="tmbrb-ct-path")
            v3.VBtn("Open", click=self.open_ct_from_field, density="compact", id="tmbrb-open")
        with html.Div(classes="d-flex align-center", style="gap: 4px;"):
            html.Span("or upload a file / a DICOM folder:", classes="text-caption")
            uploads = LoadVolumeUI(id="tmbrb-upload")
            uploads.on_load_volume.connect(self.on_upload)
        html.Div("{{ ct_name }}", v_if=("has_ct",), classes="text-caption", id="tmbrb-ct-name")
        with html.Div(classes="d-flex align-center", style="gap: 4px;"):
            v3.VTextField(v_model=("goto_ras",), label="Go to point R,A,S (mm)", density="compact",
                          hide_details=True, id="tmbrb-goto")
            v3.VBtn("Go", click=self.goto_from_field, density="compact", id="tmbrb-goto-btn")
        html.Div("2. Seed and box", classes="text-subtitle-2 mt-2")
        with html.Div(classes="d-flex align-center", style="gap: 4px;"):
            v3.VBtn("Place seed", click=self.start_placing, density="compact", id="tmbrb-place-seed",
                    color=("placing ? 'primary' : undefined",))
            html.Span("{{ placing ? 'click on the tumour in a slice view' : seed_text }}", classes="text-caption",
                      id="tmbrb-seed-text")
        html.Div("{{ box_text }}", classes="text-caption", id="tmbrb-box-text")
        html.Div("3. ECOG performance status", classes="text-subtitle-2 mt-2")
        with v3.VBtnToggle(v_model=("ecog",), mandatory=True, density="compact", divided=True, id="tmbrb-ecog"):
            for value in ("not given", "0", "1", "2"):
                v3.VBtn(value, value=value, id=f"tmbrb-ecog-{value.replace(' ', '-')}", size="small")
        with html.Div(classes="d-flex align-center mt-2", style="gap: 4px;"):
            v3.VBtn("Apply", click=(self.apply, "[ecog]"), color="primary", disabled=("running",), id="tmbrb-apply")
            v3.VBtn("Cancel", click=self.cancel, disabled=("!running",), id="tmbrb-cancel", density="compact")
        with html.Div(v_if=("running",), id="tmbrb-progress"):
            v3.VProgressLinear(model_value=("progress",), color="primary", height=8)
            html.Div("{{ progress_msg }}", classes="text-caption")
        v3.VAlert(v_if=("message",), text=("message",), type=("message_type",), density="compact",
                  closable=True, click_close="message = ''", id="tmbrb-message")

    def _build_result_panel(self, v3, html) -> None:
        with v3.VCard(v_if=("has_result",), id="tmbrb-results", variant="outlined", classes="pa-2 mt-2",
                      style=("stale ? 'opacity: 0.5' : ''",)):
            v3.VAlert(v_if=("stale",), text=STALE_MESSAGE, type="warning", density="compact", id="tmbrb-stale")
            v3.VAlert(v_if=("r_demo",), text=("r_notice",), type="warning", density="compact",
                      id="tmbrb-demo-banner")
            with html.Div(classes="text-h5 mt-1"):
                html.Span("TMBRB score ")
                html.Span("{{ r_score }}", id="tmbrb-score")
            html.Div("P(High-TMB) for the box itself", classes="text-caption")
            html.Div("{{ r_spread }}", id="tmbrb-spread", classes="text-body-2")
            html.Div("OS: {{ r_os }}", id="tmbrb-os", classes="text-body-2")
            html.Div("PFS: {{ r_pfs }}", id="tmbrb-pfs", classes="text-body-2")
            html.Div("{{ r_ecog }}", id="tmbrb-ecog-combined", classes="text-body-2")
            html.Div("Attention (class activation map): {{ r_att }}", id="tmbrb-attention", classes="text-body-2")
            html.Div("{{ r_mask }}", v_if=("r_mask",), id="tmbrb-mask", classes=("r_mask_uncertain ? "
                     "'text-body-2 text-warning' : 'text-body-2'",))
            html.Div("{{ t }}", v_for="t in r_trust", classes="text-body-2 tmbrb-trust")
            html.Div("Model: {{ r_model }}", id="tmbrb-model", classes="text-body-2")
            html.Div("{{ w }}", v_for="w in r_warnings", classes="text-caption text-warning")
            self._build_cam_controls(v3, html)
            with html.Div(classes="d-flex mt-2", style="gap: 4px;"):
                v3.VBtn("Save results", click=self.on_save_results, density="compact", id="tmbrb-save-results")
                v3.VBtn("Save scene (.mrb)", click=self.on_save_scene, density="compact", id="tmbrb-save-scene")
                v3.VBtn("Save DICOM", click=self.on_save_dicom, density="compact", id="tmbrb-save-dicom")
            html.Div("{{ saved_text }}", classes="text-caption", id="tmbrb-saved", style="word-break: break-all;")
        v3.VCheckbox(v_model=("slices_3d",), label="Slice planes in 3D", density="compact", hide_details=True,
                     id="tmbrb-slices-3d", v_if=("has_ct",))

    @staticmethod
    def _build_cam_controls(v3, html) -> None:
        """The map's display: one opacity and one threshold for the slice views and 3D, where it shows, and the
        regions in 3D."""
        html.Div("CAM opacity", classes="text-caption mt-2")
        v3.VSlider(v_model=("cam_opacity",), min=0, max=1, step=0.05, density="compact", hide_details=True,
                   id="tmbrb-cam-opacity")
        html.Div("CAM threshold (transparent below it, 2D and 3D): {{ cam_threshold }}", classes="text-caption")
        v3.VSlider(v_model=("cam_threshold",), min=0, max=0.9, step=0.05, density="compact", hide_details=True,
                   id="tmbrb-cam-threshold")
        html.Div(id="tmbrb-legend", style=("{ background: legend_css, height: '12px', borderRadius: '2px' }",))
        with html.Div(classes="d-flex justify-space-between text-caption"):
            html.Span("0 (transparent below {{ cam_threshold }})")
            html.Span("CAM")
            html.Span("1")
        with html.Div(classes="d-flex flex-wrap", style="column-gap: 12px;"):
            for key, label in (("cam_2d", "CAM in slices"), ("cam_3d", "CAM in 3D"), ("tumour_3d", "Tumour in 3D"),
                               ("ring_3d", "Ring in 3D")):
                v3.VCheckbox(v_model=(key,), label=label, density="compact", hide_details=True,
                             id=f"tmbrb-{key.replace('_', '-')}")
        html.Div("Tumour yellow, peritumoral ring blue (outlines in the slices, translucent in 3D).",
                 classes="text-caption")

    # CT -------------------------------------------------------------------------------------------------------------
    def open_ct_from_field(self) -> None:
        """Open the typed path: only inside the data folder given with --data-dir (tmbrb_viewer.file_access)."""
        from .file_access import resolve_in_data_dir

        path = (self.state.ct_path_input or "").strip()
        if not path:
            self._say("Type the path of a CT file or DICOM folder in the viewer's data folder, or upload one.",
                      "error")
            return
        data_dir = getattr(self, "data_dir", None)
        self._guarded(lambda: self.open_ct(str(resolve_in_data_dir(path, data_dir)), name=Path(path).name,
                                           within=data_dir), "Could not open the CT.")

    def on_upload(self, files: List[dict]) -> None:
        """Write the uploaded files under generated names in this viewer's temporary folder, read them, remove them.

        The user's file names are shown, never used as paths; the total size is capped (--max-upload-mb)."""
        from . import file_access as fa

        def load():
            given = [f for f in (files or []) if f]
            if not given:
                raise TMBRBInputError("The upload held no file.", "Choose a CT file or a DICOM folder.")
            fa.check_upload_size(fa.upload_size(given), getattr(self, "max_upload_bytes",
                                                               fa.DEFAULT_MAX_UPLOAD_MB * 2**20))
            folder = Path(tempfile.mkdtemp(prefix="upload-", dir=self.work))
            try:
                written = []
                for i, f in enumerate(given):
                    content = f.get("content") or b""
                    target = folder / fa.upload_file_name(i, f.get("name", ""))
                    target.write_bytes(b"".join(content) if isinstance(content, (list, tuple)) else content)
                    written.append(target)
                shown = (fa.display_name(given[0].get("name", "")) if len(written) == 1
                         else f"{len(written)} uploaded DICOM files")
                try:
                    self.open_ct(str(written[0] if len(written) == 1 else folder), name=shown, within=folder,
                                 kept=False)
                except TMBRBInputError as e:  # name the user's file, not the server's temporary path
                    text = str(e).replace(str(written[0]), shown).replace(str(folder), "the uploaded folder")
                    text = text.replace(written[0].name, shown)  # ITK's reason names the file
                    raise TMBRBInputError(text) from None
            finally:
                shutil.rmtree(folder, ignore_errors=True)  # the CT is in memory now
        self._guarded(load, "Could not open the uploaded CT.")

    def _guarded(self, fn, what: str):
        """Run a UI action; bad input and failures become a message in the page (the server keeps serving)."""
        try:
            return fn()
        except TMBRBInputError as e:
            self._say(str(e), "error")
        except TMBRBError as e:
            self._say(f"{what} {e}", "error")
        except Exception as e:  # noqa: BLE001 - an unexpected failure must not stop the server
            log.error("%s\n%s", what, traceback.format_exc())
            self._say(f"{what} Unexpected error: {type(e).__name__}: {e}", "error")
        return None

    def open_ct(self, path: str, name: Optional[str] = None, within: Optional[Path] = None,
                kept: bool = True) -> None:
        """Read a CT and show it. `within`: the folder a detached header's data file must not leave (uploads and
        --data-dir paths; a header could otherwise name any server file as its voxels). `kept`: the files stay where
        they are (not an upload), so a DICOM series folder can be referenced by Save DICOM."""
        from TMBRBLib.io import dicom_series_files, read_ct

        t0 = time.perf_counter()
        ct, warnings = read_ct(path, within=within)  # raises TMBRBInputError with the problem and the fix
        self.show_ct(ct, name or Path(path).name, warnings)
        self.dicom_source = Path(path).resolve() if kept and dicom_series_files(path) else None
        self.timings["open_ct_s"] = time.perf_counter() - t0

    def _clear_case(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
            self.watcher = None
        if self.seed is not None and self._seed_tag is not None:
            self.seed.RemoveObserver(self._seed_tag)
        self._seed_tag = None
        self._roi_watched = None
        keep = self._baseline
        for i in range(self.scene.GetNumberOfNodes() - 1, -1, -1):
            n = self.scene.GetNthNode(i)
            if n is not None and n.GetID() not in keep and n.GetSingletonTag() is None:
                self.scene.RemoveNode(n)
        self.volume = self.seed = self.roi = None
        self.last_result = self.last_out = self.last_job = None
        self.dicom_source = None
        self._case_dir = None  # the next save starts this case's folder

    def show_ct(self, ct, name: str, warnings: Optional[List[str]] = None) -> None:
        from TMBRBLib.slicer import mrml as ma

        self._clear_case()
        self.volume = ma.add_volume_node_from_sitk(self.scene, ct, name or "CT")
        self._show_ct_window()
        p = self.logic.getParameterNode()
        p.inputVolume = self.volume
        self.slicer_app.display_manager.show_volume_in_slice_background(self.volume)
        self.slicer_app.display_manager.show_volume_in_slice_foreground(None)
        for view in self.slicer_app.view_manager.get_slice_views():
            view.reset_view()
            view.get_view_node().SetSliceVisible(bool(self.state.slices_3d))
        for view in self.slicer_app.view_manager.get_threed_views():
            view.reset_view()
        self.ct_name = name
        self._new_seed_node()
        with self.state:
            # a new case: nothing of the previous one stays on the page
            self.state.update({"has_ct": True, "ct_name": f"{name}: {ct.GetSize()[0]} x {ct.GetSize()[1]} x "
                               f"{ct.GetSize()[2]} voxels", "has_result": False, "stale": False, "saved_text": "",
                               "ecog": "not given", "seed_text": "", "box_text": "", "ct_path_input": ""})
        self._say("CT opened. " + " ".join(warnings or []) + " Click on the tumour in a slice view to place the seed.",
                  "warning" if warnings else "info")
        self.start_placing()

    def goto_from_field(self) -> None:
        def go():
            from TMBRBLib.geometry import parse_triplet

            ras = parse_triplet(self.state.goto_ras or "", "the point (R,A,S)")
            self.goto_ras(ras)
        self._guarded(go, "Could not go to the point.")

    def goto_ras(self, ras) -> None:
        """Centre the three slice views on a RAS point (3D Slicer's 'jump slices')."""
        import slicer

        if self.volume is None:
            raise TMBRBInputError("No CT is open.", NO_CT_MESSAGE)
        slicer.vtkMRMLSliceNode.JumpAllSlices(self.scene, float(ras[0]), float(ras[1]), float(ras[2]),
                                              slicer.vtkMRMLSliceNode.CenteredJumpSlice)
        self._render_all()

    # seed and box ---------------------------------------------------------------------------------------------------
    def _new_seed_node(self) -> None:
        import slicer

        self.seed = self.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "TMBRB seed")
        self.seed.SetMaximumNumberOfControlPoints(1)
        self.seed.CreateDefaultDisplayNodes()
        d = self.seed.GetDisplayNode()
        if d is not None:
            d.SetSelectedColor(0.2, 1.0, 0.2)
            d.SetGlyphScale(2.5)
        self._hide_label(self.seed)
        self._seed_tag = self.seed.AddObserver(slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent,
                                               self._on_seed_defined)
        p = self.logic.getParameterNode()
        p.seedPoint = self.seed

    @staticmethod
    def _hide_label(markups_node) -> None:
        d = markups_node.GetDisplayNode() if markups_node is not None else None
        if d is not None and hasattr(d, "SetPropertiesLabelVisibility"):
            d.SetPropertiesLabelVisibility(False)
            d.SetPointLabelsVisibility(False)

    def start_placing(self) -> None:
        if self.volume is None:
            self._say(NO_CT_MESSAGE, "error")
            return
        if self.seed is None:
            self._new_seed_node()
        self.seed.RemoveAllControlPoints()
        self.slicer_app.markups_logic.place_node(self.seed, False)
        with self.state:
            self.state.placing = True
            self.state.has_seed = False
            self.state.wl_drag = False  # a left click places the seed again

    def _on_seed_defined(self, caller=None, event=None) -> None:
        """A seed was clicked: check it and propose the box (TMBRBLogic.proposeBox); problems show in the page."""
        with self.state:
            self.state.placing = False
            self._guarded(self._propose_box, "Could not propose a box.")
            self._update_stale()
        self.state.flush()

    def _propose_box(self) -> None:
        from TMBRBLib.slicer import mrml as ma

        try:
            self.roi, warnings = self.logic.proposeBoxWithWarnings(self.volume, self.seed, self.roi)
        except TMBRBInputError:
            self.seed.RemoveAllControlPoints()  # a rejected seed is not kept (Apply then asks for one)
            self.state.has_seed = False
            self.slicer_app.markups_logic.place_node(self.seed, False)
            self.state.placing = True
            raise
        self.roi.SetName("TMBRB box")
        self._hide_label(self.roi)
        style_box_display(self.roi)
        self._box_outline_in_3d()
        self.logic.getParameterNode().boxRoi = self.roi
        ras = ma.seed_ras(self.seed)
        box = ma.box_from_roi(self.roi)
        rmin, rmax = box.ras_corners()
        self.state.has_seed = True
        self.state.seed_text = "seed RAS (" + ", ".join(f"{v:.1f}" for v in ras) + ") mm"
        self.state.box_text = ("box " + " x ".join(f"{abs(b - a):.0f}" for a, b in zip(rmin, rmax))
                               + " mm, proposed from the seed; drag its handles to change it")
        if warnings:  # e.g. a click outside the body (no lesion at the seed), or a tumour mask to review
            self.state.message = "Box proposed from the seed, with a warning: " + " ".join(warnings)
            self.state.message_type = "warning"
        else:
            self.state.message = "Box proposed around the tumour; drag its handles if needed, then Apply."
            self.state.message_type = "info"

    def open_demo(self) -> None:
        """The demo phantom with its seed and its annotator's box (as `tmbrb demo` scores it): the box delimits the
        lesion from the peritumoral haze the demo cohort carries, which a seed alone would take as ground glass."""
        from TMBRBLib.geometry import Box, lps_to_ras
        from TMBRBLib.phantom import make_demo_case
        from TMBRBLib.slicer import mrml as ma

        case = make_demo_case()
        self.show_ct(case.ct, "TMBRB demo phantom")
        self.place_seed_ras(lps_to_ras(case.seed_lps))
        if self.roi is not None:
            ma.set_roi_from_box(self.roi, Box(*case.box_lps))
            rmin, rmax = ma.box_from_roi(self.roi).ras_corners()
            self.state.box_text = ("box " + " x ".join(f"{abs(b - a):.0f}" for a, b in zip(rmin, rmax))
                                   + " mm, drawn by the demo's annotator; drag its handles to change it")
        self.goto_ras(lps_to_ras(case.seed_lps))
        self.state.message = "Demo phantom with the seed and its annotator's box: press Apply."
        self.state.message_type = "info"

    def place_seed_ras(self, ras) -> None:
        """Place the seed at a RAS point without a click (the --demo start)."""
        if self.seed is None:
            self._new_seed_node()
        self.slicer_app.markups_logic.disable_place_mode()
        self.seed.RemoveAllControlPoints()
        self.seed.AddControlPoint([float(v) for v in ras])  # fires PointPositionDefinedEvent -> box proposal

    # apply ----------------------------------------------------------------------------------------------------------
    def apply(self, ecog=None) -> None:
        """Score the case in a background engine process. `ecog` comes with the click (the page's value then, not a
        state update that may still be on its way); None -> the state's."""
        from TMBRBLib.slicer import mrml as ma
        from TMBRBLib.slicer.logic import JobWatcher

        if self.watcher is not None:
            return
        if self.volume is None:
            self._say(NO_CT_MESSAGE, "error")
            return
        if self.seed is None or not self._seed_placed():
            self._say(NO_SEED_MESSAGE, "error")
            return
        ecog = self.state.ecog if ecog is None else str(ecog)
        self._apply_t0 = time.perf_counter()

        def start():
            self._runs += 1
            # with the warm worker the volumes come back as regions of the CT's grid (no work folder kept, no
            # full-grid files written); Save asks the worker for the full outputs. A process per case keeps its
            # folder, which Save copies.
            work = None if self.logic.useWorker else str(self.work / f"run{self._runs}")
            job = self.logic.startBackground(self.volume, self.seed, self.roi if ma.roi_is_defined(self.roi)
                                             else None, None, ecog, self.shifts, self.device, workDir=work)
            self.watcher = JobWatcher(self.logic, job, onProgress=self._on_job_progress, onResult=self._on_job_result,
                                      onError=self._on_job_error, onCancelled=self._on_job_cancelled,
                                      onScores=self._on_job_scores, camOpacity=float(self.state.cam_opacity),
                                      parameterNode=self.logic.getParameterNode())
            return True

        if not self._guarded(start, "Could not start the model."):
            return
        with self.state:
            self.state.update({"running": True, "progress": 0, "progress_msg": "starting the model",
                               "message": "", "has_result": False, "saved_text": ""})
        from trame_server.utils.asynchronous import create_task

        create_task(self._watch_job(self.watcher))

    def _seed_placed(self) -> bool:
        from TMBRBLib.slicer import mrml as ma

        try:
            ma.seed_ras(self.seed)
            return True
        except TMBRBInputError:
            return False

    async def _watch_job(self, watcher) -> None:
        """The JobWatcher's steps on the server's event loop (3D Slicer's panel runs the same steps from a QTimer)."""
        import asyncio

        while watcher.step():
            await asyncio.sleep(POLL_S)

    def _on_job_progress(self, fraction: float, message: str) -> None:
        percent = int(round(100 * fraction))
        if (percent, message) == (self.state.progress, self.state.progress_msg):
            return  # called at every poll: nothing new to send to the page
        with self.state:
            self.state.progress = percent
            self.state.progress_msg = message

    def _job_ended(self) -> None:
        self.watcher = None
        with self.state:
            self.state.running = False

    def _on_job_scores(self, result: Dict) -> None:
        """The run is done: its score and risk groups go to the page now; the map is placed in the scene at the next
        poll, and its views render after that (llvmpipe takes a second or more for the 3D view)."""
        with self.state:
            self.state.update(format_result(result))
            self.state.update({"progress": 100, "progress_msg": "showing the map", "has_result": True,
                               "stale": False})

    def _on_job_result(self, result) -> None:
        job = self.watcher.job
        self._job_ended()
        with self.state:
            self.state.progress = 100
        self._guarded(lambda: self._show_result(result) or True, "TMBRB could not show the result.")
        self.last_job = job if job.ownsWorkDir else None
        self.timings["apply_s"] = job.elapsed

    def _on_job_error(self, error: Exception) -> None:
        self._job_ended()
        with self.state:
            self.state.has_result = False  # scores shown before the map could not be placed are taken back
        if isinstance(error, TMBRBInputError):
            self._say(str(error), "error")
        else:
            self._say(f"TMBRB could not score this case. {error}", "error")

    def _on_job_cancelled(self) -> None:
        self._job_ended()
        with self.state:
            self.state.has_result = False
        self._say("Cancelled; nothing was added to the scene.", "info")

    def cancel(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()  # -> _on_job_cancelled

    def _show_result(self, result) -> None:
        """Show a SceneResult (its nodes are in the scene already) in the side panel."""
        self.last_result, self.last_out = result.result, result.outputDir
        roi = result.nodes.get("roi")
        if roi is not None:
            self.roi = roi
        self._watch_roi()
        self._box_outline_in_3d()
        self._apply_cam_display()
        self._centre_on_result()
        self._map_views_pending = {view.get_singleton_tag() for view in self.slicer_app.view_manager.get_views()}
        with self.state:
            self.state.update(format_result(result.result))
            self.state.has_result = True
            self.state.stale = False
            self.state.message = "Done."
            self.state.message_type = "success"
        self._render_all()

    # outdated results ------------------------------------------------------------------------------------------------
    def _watch_roi(self) -> None:
        """Dragging the box's handles after a result makes the result outdated."""
        import slicer

        if self.roi is not None and self._roi_watched is not self.roi:
            style_box_display(self.roi)
            self.roi.AddObserver(slicer.vtkMRMLMarkupsNode.PointModifiedEvent, self._on_inputs_changed)
            self._roi_watched = self.roi

    def _on_inputs_changed(self, *args, **kwargs) -> None:
        with self.state:
            self._update_stale()

    def _update_stale(self) -> None:
        """Mark the shown result outdated when the seed, box or ECOG no longer are those it was computed for."""
        if not self.state.has_result or self.volume is None:
            return
        p = self.logic.getParameterNode()
        self.state.stale = not self.logic.isResultCurrent(p.resultTable, self.volume, self.seed, self.roi, None,
                                                          self.state.ecog)

    def _on_cam_opacity(self, cam_opacity, **_):
        from TMBRBLib.slicer import mrml as ma

        cam = self.logic.getParameterNode().camVolume if self.volume is not None else None
        if cam is not None:
            if self.state.cam_2d:
                ma.set_cam_opacity(self.scene, cam, float(cam_opacity))
            ma.set_cam_opacity_3d(cam, float(cam_opacity))
            self._render_all()

    def _render_all(self) -> None:
        for view in self.slicer_app.view_manager.get_views():
            view.schedule_render()

    # saving ---------------------------------------------------------------------------------------------------------
    def _case_folder(self) -> Path:
        """This case's output folder: made at the first save after a CT opens, then reused by every save (results
        and scene) until another CT opens."""
        if self._case_dir is not None and self._case_dir.is_dir():
            return self._case_dir
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in (self.ct_name or "case"))
        for suffix in (".nrrd", ".nii.gz", ".nii", ".mha", ".mhd"):
            if stem.endswith(suffix.replace(".", "_")) or stem.endswith(suffix):
                stem = stem[: -len(suffix)]
        folder = self.out_dir / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        n = 1
        while folder.exists():  # another case opened within the same second: never mix two cases
            n += 1
            folder = self.out_dir / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
        folder.mkdir(parents=True)
        self._case_dir = folder.resolve()
        return self._case_dir

    def _view_tiles(self) -> Dict:
        """Each view's current picture (RGB numpy array, top row first) by its tag."""
        import numpy as np
        from slicer import vtkMRMLLayerDisplayableManager
        from vtkmodules.util.numpy_support import vtk_to_numpy
        from vtkmodules.vtkCommonDataModel import vtkImageData

        tiles = {}
        for view in self.slicer_app.view_manager.get_views():
            rw = view.render_window()
            rw.Render()
            img = vtkImageData()
            vtkMRMLLayerDisplayableManager.RenderWindowBufferToImage(rw, img)
            w, h, _ = img.GetDimensions()
            arr = vtk_to_numpy(img.GetPointData().GetScalars()).reshape(h, w, -1)[::-1, :, :3]
            tiles[view.get_singleton_tag()] = np.ascontiguousarray(arr)
        return tiles

    def snapshot(self, path: Path) -> Path:
        """A PNG of the views laid out as in the page (LAYOUT_COLUMNS), each tile labelled (Axial, Coronal, ...)."""
        import numpy as np
        from PIL import Image

        tiles = self._view_tiles()
        cols = []
        for column in LAYOUT_COLUMNS:
            parts = [label_tile(tiles[t], VIEW_LABELS[t]) for t in column if t in tiles]
            if not parts:
                continue
            width = max(p.shape[1] for p in parts)
            parts = [np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0))) for p in parts]
            cols.append(np.concatenate(parts, axis=0))
        height = max(c.shape[0] for c in cols)
        cols = [np.pad(c, ((0, height - c.shape[0]), (0, 0), (0, 0))) for c in cols]
        Image.fromarray(np.ascontiguousarray(np.concatenate(cols, axis=1)).astype(np.uint8)).save(path)
        return path

    def on_save_results(self) -> None:
        """The page's Save results button (a click handler returns nothing: its result goes back to the browser)."""
        self.save_results()

    def on_save_scene(self) -> None:
        """The page's Save scene button."""
        self.save_scene()

    def on_save_dicom(self) -> None:
        """The page's Save DICOM button."""
        self.save_dicom()

    def _write_results(self) -> Path:
        """The case folder with the shown result's files (result.json, the full-grid volumes)."""
        if self.last_result is None:
            raise TMBRBInputError("There is no result to save yet.", "Press Apply first.")
        folder = self._case_folder()
        if self.last_job is not None:  # scored by the warm worker, which writes the full outputs now
            self.logic.saveWorkerResult(self.last_job, folder, pictures=False)
        else:
            for f in sorted(self.last_out.iterdir()):
                if f.is_file():
                    shutil.copy2(f, folder / f.name)
        return folder

    def save_dicom(self) -> Optional[Path]:
        """The result as DICOM objects (Segmentation, the map as a Parametric Map, the structured report) in the case
        folder's dicom/, referencing the CT's series: only for a series opened from its folder on the server (an
        upload's files are not kept)."""
        def save():
            self._require_no_job()
            if self.last_result is None:
                raise TMBRBInputError("There is no result to save yet.", "Press Apply first.")
            if self.dicom_source is None or not self.dicom_source.is_dir():
                raise TMBRBInputError("DICOM objects reference the CT's DICOM series, and this CT was not opened from a "
                                      "DICOM series folder that the viewer keeps (a file, or an upload, whose files "
                                      "are removed once read).", "Open the series by its folder (--ct, or a path in "
                                      "the data folder), press Apply, then Save DICOM.")
            from TMBRBLib.batch import DICOM_DIR
            from TMBRBLib.dicom_out import export_dicom

            folder = self._write_results()
            written = export_dicom(folder, self.dicom_source, folder / DICOM_DIR)
            with self.state:
                self.state.saved_text = (f"Saved the DICOM Segmentation, parametric map and report "
                                         f"({', '.join(p.name for p in written.values())}) in {folder / DICOM_DIR}")
            return folder / DICOM_DIR
        return self._guarded(save, "Could not save DICOM.")

    def _require_no_job(self) -> None:
        if self.watcher is not None:
            raise TMBRBInputError("A result is still being computed or placed in the views.",
                                  "Save once the map shows.")

    def save_results(self) -> Optional[Path]:
        def save():
            self._require_no_job()
            folder = self._write_results()
            self.snapshot(folder / "snapshot.png")
            with self.state:
                self.state.saved_text = (f"Saved result.json, NRRD volumes and PNG pictures (snapshot.png) in "
                                         f"{folder}")
            return folder
        return self._guarded(save, "Could not save the results.")

    def save_scene(self) -> Optional[Path]:
        def save():
            if self.volume is None:
                raise TMBRBInputError("There is nothing to save yet.", NO_CT_MESSAGE)
            folder = self._case_folder()
            path = folder / "scene.mrb"
            if not self.scene.WriteToMRB(str(path)):
                raise TMBRBError(f"Writing the scene to {path} failed (see the server console).")
            with self.state:
                self.state.saved_text = f"Saved the MRML scene {path} (opens in 3D Slicer: File > Add Data)."
            return path
        return self._guarded(save, "Could not save the scene.")


def _cap_upload_chunks(viewer, max_bytes: int) -> None:
    """Refuse an upload once its chunks pass `max_bytes`, before the rest is held in memory.

    trame-slicer's upload buttons gather every chunk, then call on_upload: the cap is checked there too, but a
    client could send far more before that. This wraps the buttons' chunk triggers (found by their method). Once an
    upload is refused, its remaining chunks are dropped up to the end-of-upload marker (an empty list), so no part of
    it is opened. Raises RuntimeError when no trigger is found (the cap would silently do nothing)."""
    from trame_slicer.app.ui.load_volume_ui import LoadVolumeButton

    from .file_access import check_upload_size, upload_size

    triggers = viewer.server.controller._triggers
    wrapped = 0
    for name, fn in list(triggers.items()):
        button = getattr(fn, "__self__", None)
        if not (isinstance(button, LoadVolumeButton) and getattr(fn, "__func__", None) is LoadVolumeButton.load_chunk):
            continue

        async def capped(files, _button=button, _fn=fn):
            if getattr(_button, "_tmbrb_refused", False):  # the rest of a refused upload
                if not files:
                    _button._tmbrb_refused = False  # its end: the next upload starts afresh
                return None
            if files and upload_size(_button.files) + upload_size(files) > max_bytes:
                total = upload_size(_button.files) + upload_size(files)
                _button.files = []
                _button._tmbrb_refused = True
                viewer._guarded(lambda: check_upload_size(total, max_bytes), "Could not open the uploaded CT.")
                return None
            return await _fn(files)
        triggers[name] = capped
        wrapped += 1
    if not wrapped:
        raise RuntimeError("The viewer found no upload button to cap (trame-slicer's LoadVolumeButton.load_chunk): "
                           "refusing to serve uploads without a size limit.")


def _origin_middleware():
    """aiohttp middleware: a websocket upgrade whose Origin is not the page's own gets 403 (file_access)."""
    from aiohttp import web

    from .file_access import origin_allowed

    @web.middleware
    async def check_origin(request, handler):
        if request.headers.get("Upgrade", "").lower() == "websocket" and not origin_allowed(
                request.headers.get("Origin"), request.headers.get("Host")):
            log.warning("refused a websocket from origin %r", request.headers.get("Origin"))
            raise web.HTTPForbidden(text="origin not allowed")
        return await handler(request)
    return check_origin


def run_viewer(ct: Optional[str] = None, seed_ras: Optional[str] = None, demo: bool = False, host: str = "127.0.0.1", port: int = 8080,
               model: Optional[str] = None, device: str = "auto", shifts: Optional[int] = None,
               out_dir: str = "tmbrb-viewer-output", open_browser: bool = False, debug: bool = False,
               data_dir: Optional[str] = None, max_upload_mb: float = 2048, secret: Optional[str] = None) -> int:
    """Build the viewer, open the CT (or the demo phantom) and serve until stopped (Ctrl+C / SIGTERM).

    Parameters
    ----------
    ct, seed_ras, demo, host, port, model, device, shifts, out_dir, open_browser, debug
        As the `viewer` command's options (tmbrb_viewer.cli); ``seed_ras`` is "x,y,z".
    data_dir : str, optional
        The folder whose files the page may open by path; None: the page may only upload.
    max_upload_mb : float
        The cap on one upload's total size.
    secret : str, optional
        The websocket secret (the `secret` URL parameter); a new random one when None.

    Returns
    -------
    int
        0 once the server stopped.
    """
    import webbrowser

    from .file_access import new_secret

    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("trame_client", "trame_server", "trame_rca", "wslink", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)
    from TMBRBLib.bundle import load_bundle

    bundle = load_bundle(model) if model else load_bundle(None)  # fail early with a clear message
    viewer = TMBRBViewer(bundle=bundle.path, device=device, shifts=shifts, out_dir=out_dir)
    viewer.data_dir = Path(data_dir).resolve() if data_dir else None
    viewer.max_upload_bytes = int(max_upload_mb * 2**20)
    secret = secret or new_secret()
    key_file = viewer.work / "secret"  # the framework reads the secret from a file: not in argv or the environment
    key_file.touch(mode=0o600)
    key_file.write_text(secret)
    os.environ["TRAME_ARGS"] = f"--server --authKeyFile {key_file}"  # our own options, not trame's argv parsing
    _cap_upload_chunks(viewer, viewer.max_upload_bytes)
    viewer.ctrl.on_server_bind.add(lambda wslink_server: wslink_server.app.middlewares.append(_origin_middleware()))
    if ct:
        viewer.open_ct(ct)
        viewer.state.ct_path_input = str(ct)
        if seed_ras:
            from TMBRBLib.geometry import parse_triplet

            ras = parse_triplet(seed_ras, "--seed-ras")
            viewer.place_seed_ras(ras)  # the box is proposed from it
            viewer.goto_ras(ras)
    elif demo:
        viewer.open_demo()
    viewer.logic.engineWorker().start()  # torch and MONAI load while the page opens: the first Apply is quicker

    def announce(**_state) -> None:
        # Printed once the socket is bound, with the port it got: with --port 0 the system picks a free one, and a
        # caller reads it from this line (no pick-then-release race between a probe socket and the server).
        bound = viewer.server.port or port
        url = f"http://{'[' + host + ']' if ':' in host else host}:{bound}/?secret={secret}"
        print(f"TMBRB viewer: {url}  (pid {os.getpid()}; open this address, the secret included; Ctrl+C stops it)",
              flush=True)
        if open_browser:
            webbrowser.open(url)

    viewer.ctrl.on_server_ready.add(announce)
    try:
        viewer.server.start(host=host, port=port, open_browser=False, show_connection_info=False)
    finally:
        viewer.logic.shutdown()  # the engine worker
        shutil.rmtree(viewer.work, ignore_errors=True)
    return 0
