"""Attention from an edited tumour mask, without running the model again (issue 13).

The class activation map does not depend on the tumour mask: only the ring and the tumour/ring shares do. After a
person edits the proposed (or given) tumour, :func:`attention_from_mask` rebuilds the ring and the shares with the
pipeline's own function (``regions.ring_and_shares``), :func:`updated_result` records them in the result (the score is
left as it is) and :func:`update_attention_folder` does both for an output folder of ``tmbrb score`` (what
``tmbrb attention`` runs). The 3D Slicer module's ``SceneLogic.updateAttention`` uses the first two on the scene's
nodes.
"""

from __future__ import annotations

import datetime
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .errors import TMBRBInputError
from .io import same_grid
from .proposal import UNCERTAIN
from .regions import ring_and_shares
from .volumes import Geometry, RegionVolume

EDIT_NOTE = ("The tumour mask was edited after scoring; the attention shares, ring and outlines were recomputed from "
             "it (the score does not depend on the mask and was not recomputed).")


@dataclass
class EditedAttention:
    """What :func:`attention_from_mask` gives: the tumour and ring on a region of the CAM's grid, the shares (as
    result.json's ``attention``), the tumour's volume and warnings."""

    tumour_region: RegionVolume
    ring_region: RegionVolume
    shares: Dict[str, float]
    volume_ml: float
    warnings: List[str] = field(default_factory=list)


def _working_region(cam: np.ndarray, tumour: np.ndarray, spacing, width_mm: float) -> Tuple[np.ndarray, np.ndarray]:
    """Index region [lo, hi) (x, y, z) holding the map's support and the tumour, padded by the ring's width: the ring
    and the shares computed there equal those computed on the whole grid."""
    support = (cam > 0) | (tumour > 0)
    idx = [np.flatnonzero(support.any(axis=tuple(a for a in range(3) if a != ax))) for ax in (2, 1, 0)]
    pad = np.array([int(math.ceil(width_mm / float(s))) + 1 for s in spacing])
    size = np.array(cam.shape[::-1])
    lo = np.maximum(np.array([i[0] for i in idx]) - pad, 0)
    hi = np.minimum(np.array([i[-1] + 1 for i in idx]) + pad, size)
    return lo, hi


def attention_from_mask(cam: sitk.Image, tumour: sitk.Image, width_mm: float) -> EditedAttention:
    """The ring and the attention shares for a (possibly edited) tumour mask and an existing class activation map.

    Parameters
    ----------
    cam : SimpleITK.Image
        The map on the CT's grid, as ``cam.nrrd`` holds it (scaled to max 1, zero outside its region).
    tumour : SimpleITK.Image
        The tumour mask on the same grid (any non-zero voxel is tumour); ``tumour_on_grid`` puts a mask there.
    width_mm : float
        The peritumoral ring's width.

    Returns
    -------
    EditedAttention
        Tumour and ring (``RegionVolume`` on the CAM's grid), shares from ``regions.ring_and_shares`` (the
        pipeline's function), volume in mL.

    Raises
    ------
    TMBRBInputError
        An empty mask, a mask on another grid, or a ring width that is not positive.

    Examples
    --------
    >>> cam = sitk.GetImageFromArray(np.pad(np.ones((4, 4, 4), np.float32), 8))   # a 4-voxel cube of attention
    >>> tum = sitk.GetImageFromArray(np.pad(np.ones((2, 4, 4), np.uint8), ((8, 10), (8, 8), (8, 8))))
    >>> a = attention_from_mask(cam, tum, 1.0)
    >>> round(a.shares["tumour"], 3), round(a.shares["ring"], 3), a.volume_ml
    (0.5, 0.25, 0.032)
    """
    if not (math.isfinite(width_mm) and width_mm > 0):
        raise TMBRBInputError(f"The ring width {width_mm} mm must be positive.", "Give e.g. 10.")
    if not same_grid(cam, tumour):
        raise TMBRBInputError("The tumour mask is not on the map's grid.", "Put it there first (tumour_on_grid).")
    cam_arr = sitk.GetArrayViewFromImage(cam)
    tum_arr = sitk.GetArrayViewFromImage(tumour) != 0
    if not tum_arr.any():
        raise TMBRBInputError("The edited tumour mask is empty.",
                              "Paint the tumour (at least one voxel), or score again to get the proposed one.")
    warnings: List[str] = []  # a map that is zero everywhere was reported when the case was scored
    lo, hi = _working_region(cam_arr, tum_arr, cam.GetSpacing(), width_mm)
    size, start = [int(v) for v in hi - lo], [int(v) for v in lo]
    tumour_sub = sitk.Cast(sitk.RegionOfInterest(sitk.NotEqual(tumour, 0), size, start), sitk.sitkUInt8)
    cam_sub = sitk.GetArrayFromImage(sitk.RegionOfInterest(cam, size, start))
    ring_sub, shares = ring_and_shares(cam_sub, tumour_sub, width_mm)
    grid = Geometry.of(cam)
    lo3 = tuple(start)
    tumour_data = sitk.GetArrayFromImage(tumour_sub)
    volume_ml = float(tumour_data.sum()) * float(np.prod(cam.GetSpacing())) / 1000.0
    return EditedAttention(RegionVolume(tumour_data, lo3, grid), RegionVolume(sitk.GetArrayFromImage(ring_sub), lo3,
                                                                               grid),
                           shares, round(volume_ml, 3), warnings)


def tumour_on_grid(mask: sitk.Image, cam: sitk.Image, name: str = "edited segmentation") -> Tuple[sitk.Image, List[str]]:
    """The mask on the map's grid: as it is when it shares the grid, else resampled (nearest neighbour, with a
    warning). Returns (uint8 mask, warnings); TMBRBInputError when it is not 3D or empty where it overlaps."""
    from .io import mask_on_ct_grid

    warnings = []
    if mask.GetDimension() == 3 and not same_grid(mask, cam):
        warnings.append(f"The {name} is on another grid than the CT (size {list(mask.GetSize())}, spacing "
                        f"{[round(v, 3) for v in mask.GetSpacing()]}); it was resampled onto the CT's grid (nearest "
                        "neighbour).")
    return mask_on_ct_grid(mask, cam, name), warnings


def edited_mask_info(old: Optional[Dict], volume_ml: float) -> Dict:
    """result.json's ``tumour_mask`` after an edit: a proposed mask becomes ``proposed_edited`` (a given one stays
    ``given``); the person who edited it reviewed it, so it is no longer flagged uncertain; the reasons it was
    flagged are kept under ``reasons_before_edit``."""
    old = dict(old or {})
    source = "given" if old.get("source") == "given" else "proposed_edited"
    info = {**old, "source": source, "uncertain": False, "reviewed": True, "reasons": [], "volume_ml": volume_ml}
    if old.get("reasons") or "reasons_before_edit" in old:
        info["reasons_before_edit"] = list(old.get("reasons_before_edit") or old.get("reasons") or [])
    return info


def updated_result(result: Dict, edited: EditedAttention, what: str) -> Dict:
    """A copy of a result (result.json's content) with the attention of an edited mask: ``attention``,
    ``tumour_mask`` (:func:`edited_mask_info`), the warnings (the proposal's 'uncertain' warning dropped, the
    edit's note added) and ``attention_update`` (when, from what). The score and everything else stay."""
    out = json.loads(json.dumps(result))
    out["attention"] = dict(edited.shares)
    out["tumour_mask"] = edited_mask_info(result.get("tumour_mask"), edited.volume_ml)
    kept = [w for w in out.get("warnings", []) if not str(w).startswith(UNCERTAIN) and w != EDIT_NOTE]
    out["warnings"] = kept + [w for w in edited.warnings if w not in kept] + [EDIT_NOTE]
    out["attention_update"] = {"from": what, "model_run": False,
                               "time": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    return out


UPDATED_NAMES = ("result.json", "result.json.part", "tumour.nrrd", "ring.nrrd", "summary.png",
                 "overlay_axial.png", "overlay_coronal.png", "overlay_sagittal.png")


def _read_folder(out: Path) -> Tuple[Dict, sitk.Image]:
    """result.json and cam.nrrd of an output folder, with clear errors when they are missing."""
    if not out.is_dir():
        raise TMBRBInputError(f"--result '{out}' is not a folder.", "Give the output folder of `tmbrb score`.")
    if not (out / "result.json").is_file():
        raise TMBRBInputError(f"There is no result.json in '{out}'.", "Give the output folder of `tmbrb score`.")
    try:
        result = json.loads((out / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TMBRBInputError(f"'{out / 'result.json'}' cannot be read ({e}).", "Score the case again.") from None
    if not (out / "cam.nrrd").is_file():
        raise TMBRBInputError(f"There is no cam.nrrd in '{out}': the attention cannot be recomputed without the map.",
                              "Score the case again (`tmbrb score`) to write it.")
    from .io import read_image

    cam, _ = read_image(out / "cam.nrrd", "class activation map")
    return result, sitk.Cast(cam, sitk.sitkFloat32)


class _Shown:
    """What ``outputs.render_overlays`` reads of a result, rebuilt from result.json and the updated regions."""

    def __init__(self, result: Dict, cam: sitk.Image, edited: EditedAttention):
        from .crop import CropGrid
        from .geometry import Box

        g = result["crop_grid"]
        self._result = result
        self.seed_lps = tuple(result["seed"]["lps"])
        self.crop_grid = CropGrid(tuple(g["origin_lps"]), tuple(g["spacing_mm"]), tuple(g["size_xyz"]))
        self.box = Box(tuple(result["box"]["lps_min"]), tuple(result["box"]["lps_max"]))
        self.model = result.get("model", {})
        self.cam_region = RegionVolume(sitk.GetArrayFromImage(cam), (0, 0, 0), Geometry.of(cam))
        self.tumour_region, self.ring_region = edited.tumour_region, edited.ring_region

    def to_dict(self) -> Dict:
        return self._result


def _redraw_pictures(out: Path, result: Dict, cam: sitk.Image, edited: EditedAttention,
                     draw: bool = True, ct: Union[str, Path, None] = None) -> Dict[str, Path]:
    """Draw the PNG overlays again with the new outlines when the folder had them, ``draw`` and the CT (``ct``, else
    the one result.json records) can be read; else remove the old ones (they show the mask before the edit) and say
    so."""
    old = [out / n for n in UPDATED_NAMES if n.endswith(".png") and (out / n).is_file()]
    if not old:
        return {}
    from .outputs import recorded_path, relative_path, render_overlays

    ct_path = ct or recorded_path(out, result.get("inputs", {}).get("ct_path"))  # recorded relative to the folder
    if not draw:
        _remove_pictures(old, result, "not drawn again (--no-pictures)")
        return {}
    if ct_path and Path(ct_path).exists():
        from .io import read_ct

        try:
            ct, _ = read_ct(ct_path)
            return render_overlays(_Shown(result, cam, edited), ct, out)
        except TMBRBInputError:
            pass
    why = (f"the CT '{relative_path(ct_path, out)}' could not be read to draw them again" if ct_path else
           "result.json does not say where the CT is (it was more than one folder away): give --ct to draw them again")
    _remove_pictures(old, result, why)
    return {}


def _remove_pictures(old, result: Dict, why: str) -> None:
    """Remove PNG overlays that show the mask before the edit, and their entries in result.json, saying why."""
    for p in old:
        p.unlink()
    result["files"] = {k: v for k, v in result.get("files", {}).items() if not str(v).endswith(".png")}
    result["warnings"].append(f"The PNG overlays showed the mask before the edit and were removed ({why}).")


def update_attention_folder(result_dir: Union[str, Path], segmentation: Union[str, Path],
                            ring_width_mm: Optional[float] = None, pictures: bool = True,
                            ct: Union[str, Path, None] = None) -> Tuple[Dict, Dict]:
    """Recompute the attention of a scored case from an edited tumour mask, in its output folder (``tmbrb
    attention``); the model is not run.

    Parameters
    ----------
    result_dir : str or Path
        The output folder of ``tmbrb score`` (result.json, cam.nrrd): result.json, tumour.nrrd, ring.nrrd and the PNG
        overlays there are replaced.
    segmentation : str or Path
        The edited tumour label map (any non-zero voxel is tumour); on another grid it is resampled with a warning.
        It must not be one of the files rewritten here (edit a copy).
    ring_width_mm : float, optional
        The ring's width; default the one the result was computed with.
    pictures : bool
        Draw the PNG overlays again (when the folder has them).
    ct : str or Path, optional
        The CT to draw them on; default the one result.json records (when it records where it is).

    Returns
    -------
    (dict, dict)
        The updated result as result.json records it (``attention_update.from``: the segmentation's file name) and
        the files written.

    Raises
    ------
    TMBRBInputError
        No result.json or cam.nrrd in the folder, a segmentation that cannot be read, is empty where it overlaps the
        CT or is one of the files that would be rewritten; a ``ct`` that does not exist.
    """
    from .io import read_image
    from .outputs import check_out_dir

    out = Path(result_dir)
    result, cam = _read_folder(out)
    if ct is not None and not Path(ct).exists():
        raise TMBRBInputError(f"The CT '{ct}' (--ct) does not exist.", "Give the CT the case was scored on.")
    check_out_dir(out, [segmentation, ct], names=UPDATED_NAMES, option="--result")
    mask, _ = read_image(segmentation, "segmentation")
    tumour, warnings = tumour_on_grid(mask, cam)
    width = float(ring_width_mm if ring_width_mm is not None
                  else result.get("attention", {}).get("ring_width_mm", 10.0))
    edited = attention_from_mask(cam, tumour, width)
    edited.warnings[:0] = warnings
    new = updated_result(result, edited, Path(segmentation).name)  # by name: no folder (a patient's?) recorded
    written = write_update(out, new, cam, edited, pictures, ct=ct)
    return json.loads(written["result"].read_text(encoding="utf-8")), written


def write_update(out: Union[str, Path], result: Dict, cam: sitk.Image, edited: EditedAttention,
                 pictures: bool = True, ct: Union[str, Path, None] = None) -> Dict[str, Path]:
    """Write an updated result into its output folder: tumour.nrrd, ring.nrrd, the PNG overlays (drawn again when
    the folder has them and ``pictures``) and result.json last, as ``outputs.result_record`` records it.

    Parameters
    ----------
    out : str or Path
        The output folder of the scored case.
    result : dict
        The result from :func:`updated_result`.
    cam : SimpleITK.Image
        The class activation map on the CT's grid.
    edited : EditedAttention
        From :func:`attention_from_mask`.
    pictures : bool
        Draw the overlays again; when False, overlays left from before the edit are removed (with a warning).
    ct : str or Path, optional
        The CT to draw them on; default the one result.json records.

    Returns
    -------
    dict
        The files written.
    """
    out = Path(out)
    written = {"tumour": edited.tumour_region.write_nrrd(out / "tumour.nrrd"),
               "ring": edited.ring_region.write_nrrd(out / "ring.nrrd")}
    written.update(_redraw_pictures(out, result, cam, edited, draw=pictures, ct=ct))
    from .outputs import result_record

    tmp = out / "result.json.part"
    tmp.write_text(json.dumps(result_record(result, out), indent=2) + "\n", encoding="utf-8")
    tmp.replace(out / "result.json")
    written["result"] = out / "result.json"
    return written
