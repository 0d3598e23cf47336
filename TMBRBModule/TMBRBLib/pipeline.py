"""One case, end to end: CT + seed (+ box, mask, ECOG) -> crop -> model -> score, TTA, CAM, regions, risk."""

from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk
import torch

from . import __version__, RESEARCH_USE_NOTICE
from .bundle import Bundle, load_bundle
from .cam import ScoringGradCAM, cam_image, cam_to_reference, make_cam, normalise_cam
from .crop import CropGrid, crop_for_model, fraction_outside_scan, n_shifts_of, shift_offsets
from .errors import TMBRBBundleError, TMBRBCancelled, TMBRBInputError
from .geometry import Box, Point, check_box_in_scan, lps_to_ras, require_point_inside
from .io import mask_on_ct_grid, validate_ct
from .volumes import Geometry, RegionVolume
from .model import capture_deep_features, select_device
from .ood import case_trust, trust_warnings
from .proposal import DEFAULTS as PROPOSAL_DEFAULTS, SeedSegmentation, mask_extent_lps, segment_from_seed
from .regions import region_of_interest, ring_and_shares
from .risk import check_ecog, risk_groups

Progress = Optional[Callable[[float, str], None]]


@dataclass
class CaseResult:
    score: float
    tta_mean: float
    tta_std: float
    tta_scores: List[float]
    risk: Dict
    attention: Dict[str, float]
    seed_lps: tuple
    box: Box
    box_proposed: bool
    crop_grid: CropGrid
    cam_region: RegionVolume      # float32 in [0, 1], zero outside its region of the CT grid
    tumour_region: RegionVolume   # uint8
    ring_region: RegionVolume     # uint8
    crop: sitk.Image
    model: Dict
    warnings: List[str]
    timings: Dict[str, float]
    device_used: str
    ct_info: Dict
    inputs: Dict = field(default_factory=dict)
    tumour_mask_info: Dict = field(default_factory=dict)  # source (given/proposed/proposed_edited), uncertain, why
    trust: Dict = field(default_factory=dict)  # ood, acquisition, box_placement, calibration (ood.case_trust)

    @property
    def box_lps(self):
        return (self.box.min, self.box.max)

    # full-size images on the CT's grid, built on demand (a 512x512x300 float CAM is 300 MB)
    @property
    def cam(self) -> sitk.Image:
        return self.cam_region.full_image()

    @property
    def tumour_mask(self) -> sitk.Image:
        return self.tumour_region.full_image()

    @property
    def ring_mask(self) -> sitk.Image:
        return self.ring_region.full_image()

    def to_dict(self) -> Dict:
        return {
            "tmbrb_version": __version__,
            "notice": RESEARCH_USE_NOTICE,
            "model": self.model,
            "score": self.score,
            "score_definition": "TMBRB = model probability of High-TMB (>= 10 mut/Mb) for the box as given/proposed",
            "tta": {"mean": self.tta_mean, "std": self.tta_std, "n": len(self.tta_scores), "scores": self.tta_scores},
            **self.trust,
            "risk": self.risk,
            "attention": self.attention,
            "tumour_mask": self.tumour_mask_info,
            "seed": {"lps": list(self.seed_lps), "ras": list(lps_to_ras(self.seed_lps))},
            "box": {**self.box.to_dict(), "proposed": self.box_proposed},
            "crop_grid": self.crop_grid.to_dict(),
            "coordinates_note": "LPS = ITK/DICOM patient frame; RAS = (-x, -y, z), the frame 3D Slicer shows. mm.",
            "ct": self.ct_info,
            "inputs": self.inputs,
            "device": self.device_used,
            "timings_s": self.timings,
            "warnings": self.warnings,
        }


def _report(progress: Progress, cancel, fraction: float, message: str):
    if cancel is not None and cancel():
        raise TMBRBCancelled("Cancelled by the user.")
    if progress is not None:
        progress(float(fraction), message)


def _is_oom(e: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", RuntimeError)
    return isinstance(e, oom) or "out of memory" in str(e).lower()


# True: with a given box the tumour is segmented from the seed in a thread while the model runs (the segmentation
# needs the box, not the model). Off by default: on 2 cores it gained 0.06 s a case with OpenMP's threads sleeping
# but lost 0-0.09 s with them spinning (libgomp's default, and the engine worker's GOMP_SPINCOUNT), as the two compete
# for the cores (benchmarks/bench_worker.py prints both in process; docs/slicer.md, stop 14).
OVERLAP_SEGMENTATION = False
_SEGMENTER: Optional[ThreadPoolExecutor] = None


def _forget_segmenter() -> None:
    """A forked child has none of its parent's threads: it makes its own segmentation thread when it needs one (the
    parent's executor would take the work and never run it)."""
    global _SEGMENTER
    _SEGMENTER = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_segmenter)


def _start_segmentation(ct: sitk.Image, seed: Point, box: Box, meta: Dict) -> Future:
    """Segment the tumour inside a given box (``segment_from_seed``), in a background thread when
    :data:`OVERLAP_SEGMENTATION`; the Future's result is ``(segmentation, seconds)``."""
    global _SEGMENTER

    def run():
        t = time.perf_counter()
        seg = segment_from_seed(ct, seed, box, meta.get("proposal"), meta.get("regions"))
        return seg, time.perf_counter() - t

    if not OVERLAP_SEGMENTATION:
        done: Future = Future()
        done.set_result(run())
        return done
    if _SEGMENTER is None:
        _SEGMENTER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tmbrb-seed-segmentation")
    return _SEGMENTER.submit(run)


# Shifted crops per forward pass: on a 2-core CPU batches of 4 ran about 8% faster per crop than one batch of 8
# (benchmarks/bench_engine.py); on a GPU the difference is small either way.
TTA_BATCH = 4


class Scorer:
    """A bundle's model and its class activation map on one device; reuse it for many cases.

    Parameters
    ----------
    bundle : Bundle
        A loaded bundle (``load_bundle``).
    device : str or torch.device, default "auto"
        "auto" takes CUDA when available, else the CPU; or e.g. "cpu", "cuda:0".

    Notes
    -----
    The model and the CAM hooks are built on first use, once per device. ``run`` scores one crop and its shifted
    copies; ``run_with_fallback`` moves a case to the CPU when the GPU runs out of memory. Pass a Scorer to
    ``score_case(..., scorer=...)`` to score many cases with one model.

    Examples
    --------
    >>> from TMBRBLib.bundle import load_bundle
    >>> scorer = Scorer(load_bundle(), device="cpu")
    >>> scorer.device.type
    'cpu'
    >>> x = np.zeros((64, 64, 64), np.float32)  # one normalised 64^3 crop (all air)
    >>> score, tta, cam, timings = scorer.run(x, [x, x], scorer.device)
    >>> 0 <= score <= 1, len(tta), cam.shape
    (True, 2, (64, 64, 64))
    """

    def __init__(self, bundle: Bundle, device: Union[str, torch.device] = "auto"):
        self.bundle = bundle
        self.device = select_device(device)
        self._cams: Dict[str, ScoringGradCAM] = {}
        self.last_features: Optional[np.ndarray] = None  # deep features of the last ``run``'s unshifted crop

    def _cam(self, device: torch.device) -> ScoringGradCAM:
        key = str(device)
        if key not in self._cams:
            self._cams[key] = make_cam(self.bundle.model(device), self.bundle.tmbrb["cam"])
        return self._cams[key]

    def run(self, base: np.ndarray, shifted: Sequence[np.ndarray], device: torch.device, spacing_zyx=1.0):
        """(score, shifted scores, CAM on the crop, timings); ``last_features`` is set to the unshifted crop's deep
        features (None when the network has none).

        The map's pass (forward and backward) takes the unshifted crop and the first shifted one together: on a
        CPU a batch of two costs about what a batch of one does (oneDNN's 3D convolutions are slow at batch one),
        and the samples of a batch do not mix (the network is in eval mode), so the map and the scores are those
        of one crop at a time. The other shifted crops go through in batches of ``TTA_BATCH``.
        """
        cls = int(self.bundle.tmbrb["cam"].get("class_index", 1))
        shifted = list(shifted)
        first = [base] + shifted[:1]
        x = torch.from_numpy(np.stack(first))[:, None].to(device)
        t0 = time.perf_counter()
        layer = (self.bundle.tmbrb.get("ood") or {}).get("layer")  # the layer the bundle's OOD summary is for
        with capture_deep_features(self.bundle.model(device), layer) as feats:
            logits, cam = self._cam(device).logits_and_map(x, cls, spacing_zyx)
        self.last_features = feats[0][0].float().cpu().numpy() if feats else None
        t1 = time.perf_counter()
        probs = torch.softmax(logits.float(), 1)[:, cls].cpu().tolist()
        score, tta = probs[0], probs[1:]
        with torch.no_grad():
            for i in range(1, len(shifted), TTA_BATCH):
                xs = torch.from_numpy(np.stack(shifted[i:i + TTA_BATCH]))[:, None].to(device)
                tta += torch.softmax(self.bundle.model(device)(xs).float(), 1)[:, cls].cpu().tolist()
        t2 = time.perf_counter()
        return score, tta, cam[0, 0].cpu().numpy(), {"forward_cam": t1 - t0, "tta_forward": t2 - t1}

    def run_with_fallback(self, base, shifted, warnings: List[str], spacing_zyx=1.0):
        try:
            return self.run(base, shifted, self.device, spacing_zyx) + (str(self.device),)
        except Exception as e:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
            if self.device.type == "cpu" or not _is_oom(e):
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            warnings.append(f"The GPU ({self.device}) ran out of memory; this case was computed on the CPU instead.")
            cpu = torch.device("cpu")
            return self.run(base, shifted, cpu, spacing_zyx) + ("cpu",)


def ct_summary(ct: sitk.Image) -> Dict:
    return {"size_xyz": list(ct.GetSize()), "spacing_mm": [round(v, 6) for v in ct.GetSpacing()],
            "origin_lps": list(ct.GetOrigin()), "direction": list(ct.GetDirection())}


def score_case(ct: sitk.Image, seed_lps: Sequence[float], box_lps=None, tumour_mask: Optional[sitk.Image] = None,
               ecog=None, bundle: Union[Bundle, str, Path, None] = None, n_shifts: Optional[int] = None,
               device: Union[str, torch.device] = "auto", progress: Progress = None,
               cancel: Optional[Callable[[], bool]] = None, ring_width_mm: Optional[float] = None,
               scorer: Optional[Scorer] = None, mask_source: Optional[str] = None,
               ct_checked: bool = False) -> CaseResult:
    """Score one case: the TMBRB score, its test-time spread, risk groups, and the class activation map.

    Parameters
    ----------
    ct : SimpleITK.Image
        The chest CT in Hounsfield units, any orientation and spacing.
    seed_lps : sequence of 3 floats
        A point on the tumour, LPS mm (3D Slicer shows RAS = (-x, -y, z)).
    box_lps : Box or (min corner, max corner), optional
        The tumour's bounding box, LPS mm. None: a box is proposed from the seed.
    tumour_mask : SimpleITK.Image, optional
        The tumour's segmentation (any grid that overlaps the CT). None: segmented from the seed.
    ecog : int, optional
        ECOG performance status (0, 1 or 2) for the combined risk group.
    bundle : Bundle, str or Path, optional
        The model bundle; None means the default bundle (``load_bundle()``). Ignored when ``scorer`` is given.
    n_shifts : int, optional
        Test-time box shifts; None means the bundle's ``tta.n_shifts`` (``crop.DEFAULT_N_SHIFTS`` when absent).
    device : str or torch.device, default "auto"
        Where the model runs (ignored when ``scorer`` is given). A GPU that runs out of memory falls back to the CPU.
    progress : callable(fraction, message), optional
        Called at each step.
    cancel : callable() -> bool, optional
        Polled at each step; True raises TMBRBCancelled.
    ring_width_mm : float, optional
        Width of the peritumoral ring; None means the bundle's ``regions.ring_width_mm`` (10 mm).
    scorer : Scorer, optional
        A Scorer to reuse (its bundle and device) over many cases.
    mask_source : {"given", "proposed_edited"}, optional
        What ``tumour_mask`` is, for result.json's ``tumour_mask.source``: a segmentation given by the user (the
        default) or the proposed one after the user edited it. Without ``tumour_mask`` the source is "proposed".
    ct_checked : bool, default False
        True when ``ct`` comes from ``io.read_ct``, which checked it (``io.validate_ct``) and gave its warnings to the
        caller: the check is not run again (on a 512x512x300 CT it reads a sample of the whole volume).

    Returns
    -------
    CaseResult
        ``score`` (model probability of High-TMB for the box), ``tta_mean``/``tta_std``/``tta_scores`` (the box and
        its shifted copies), ``risk`` (OS/PFS groups), ``attention`` (CAM shares in tumour, ring and elsewhere), the
        box used, the CAM, tumour and ring on regions of the CT's grid, ``warnings``, ``timings`` and ``model`` (the
        bundle's identity). ``to_dict()`` gives the JSON report.

    Raises
    ------
    TMBRBInputError
        For a CT, seed, box, mask, ECOG or ring width that cannot be used (the message says which and what to do).
    TMBRBBundleError
        When the bundle cannot be loaded.
    TMBRBCancelled
        When ``cancel()`` returns True.

    Examples
    --------
    >>> from TMBRBLib.phantom import make_phantom
    >>> case = make_phantom(0)  # a small synthetic CT around a tumour
    >>> result = score_case(case.ct, case.seed_lps, n_shifts=0, device="cpu")
    >>> 0 <= result.score <= 1, len(result.tta_scores), result.box_proposed
    (True, 1, True)
    >>> result.risk["os"]["group"] in {"low", "high"}, result.model["demo"]
    (True, True)
    >>> float(result.cam_region.data.max()), result.cam_region.data.shape == result.tumour_region.data.shape
    (1.0, True)
    >>> shares = result.attention  # shares of the CAM's mass, and the ring width used
    >>> sorted(shares), round(shares["tumour"] + shares["ring"] + shares["elsewhere"], 6)
    (['elsewhere', 'ring', 'ring_width_mm', 'total_mass', 'tumour'], 1.0)
    """
    timings: Dict[str, float] = {}
    t_start = time.perf_counter()
    warnings: List[str] = []
    _report(progress, cancel, 0.02, "checking inputs")
    if not ct_checked:
        warnings += validate_ct(ct)
    ecog = check_ecog(ecog)
    scorer = scorer if scorer is not None else Scorer(bundle if isinstance(bundle, Bundle) else load_bundle(bundle),
                                                      device)
    meta = scorer.bundle.tmbrb
    if scorer.bundle.is_demo:
        warnings.insert(0, scorer.bundle.notice)
    seed = check_seed(ct, seed_lps)

    _report(progress, cancel, 0.08, "box")
    t = time.perf_counter()
    box, proposed, seg = resolve_box(ct, seed, box_lps, meta.get("proposal"), warnings, tumour_mask)
    timings["box"] = time.perf_counter() - t

    _report(progress, cancel, 0.15, "cropping")
    t = time.perf_counter()
    base, crop_img, grid, offsets, shifted = model_inputs(ct, box, meta, n_shifts)
    timings["crop"] = time.perf_counter() - t
    warnings += field_of_view_warnings(ct, grid)

    # a given box: the tumour is segmented inside it while the model runs
    pending = _start_segmentation(ct, seed, box, meta) if tumour_mask is None and seg is None else None
    _report(progress, cancel, 0.3, f"model ({scorer.device.type})")
    scorer.last_features = None
    score, tta, cam_crop, mt, dev_used = scorer.run_with_fallback(base, shifted, warnings, grid.spacing[::-1])
    timings.update(mt)
    tta_all = [score] + list(tta)
    if not np.all(np.isfinite(tta_all)):  # never a NaN score with risk groups assigned
        raise TMBRBBundleError(f"The model gave a score that is not a number ({score}) for this crop: the bundle's "
                               "weights or preprocessing values are broken. Check it with `tmbrb bundle verify`, "
                               "or use the bundle that came with TMBRB.")
    trust = case_trust(meta, scorer.last_features, ct.GetSpacing(), sitk.GetArrayViewFromImage(crop_img),
                       box.size, fraction_outside_scan(ct, grid), tta_all)
    warnings += trust_warnings(trust)

    _report(progress, cancel, 0.75, "regions and CAM on the CT grid")
    t = time.perf_counter()
    width = float(meta.get("regions", {}).get("ring_width_mm", 10.0) if ring_width_mm is None else ring_width_mm)
    if pending is not None:
        seg, timings["seed_segmentation"] = pending.result()
        warnings += seg.warnings
    cam_region, tumour_region, ring_region, shares = regions_and_cam(ct, seed, box, grid, cam_crop, tumour_mask,
                                                                     width, meta.get("regions"), warnings, seg)
    mask_info = dict(seg.info) if tumour_mask is None else {"source": mask_source or "given", "uncertain": False,
                                                            "reasons": []}
    timings["regions_cam_to_ct"] = time.perf_counter() - t

    risk = risk_groups(score, ecog, meta["risk"])
    timings["total"] = time.perf_counter() - t_start
    _report(progress, cancel, 0.95, "done")
    return CaseResult(
        score=float(score), tta_mean=float(np.mean(tta_all)), tta_std=float(np.std(tta_all)),
        tta_scores=[float(v) for v in tta_all], risk=risk, attention=shares, seed_lps=seed, box=box,
        box_proposed=proposed, crop_grid=grid, cam_region=cam_region, tumour_region=tumour_region,
        ring_region=ring_region, crop=crop_img,
        model=scorer.bundle.info(), warnings=warnings, timings={k: round(v, 4) for k, v in timings.items()},
        device_used=dev_used, ct_info=ct_summary(ct), tumour_mask_info=mask_info, trust=trust,
        inputs={"segmentation_given": tumour_mask is not None, "n_shifts": len(offsets),
                "tta_offsets_mm": [list(map(float, o)) for o in offsets]})


def score_to_folder(ct: sitk.Image, seed_lps: Sequence[float], out_dir: Union[str, Path], box_lps=None,
                    mask_path: Union[str, Path, None] = None, ecog=None, ct_path: Union[str, Path, None] = None,
                    ct_warnings: Sequence[str] = (), pictures: bool = True, progress: Progress = None,
                    cancel: Optional[Callable[[], bool]] = None, writer: Optional[Callable] = None,
                    **score_options):
    """Score one case and write its outputs: what ``tmbrb score`` and the engine worker do after reading the CT.

    Parameters
    ----------
    ct : SimpleITK.Image
        The CT as ``io.read_ct`` gave it.
    seed_lps, box_lps, ecog
        As for :func:`score_case`.
    out_dir : str or Path
        The output folder (result.json, cam.nrrd, crop.nrrd, tumour.nrrd, ring.nrrd, PNG overlays).
    mask_path : str or Path, optional
        The tumour segmentation file (``io.read_mask``); None: segmented from the seed.
    ct_path : str or Path, optional
        The CT's file, recorded in result.json (``inputs.ct_path``).
    ct_warnings : sequence of str
        Warnings from reading the CT, put first among the result's.
    pictures : bool
        Also write the PNG overlays.
    progress, cancel
        As for :func:`score_case`; ``cancel`` is polled once more before the files are written.
    writer : callable(result, out_dir, ct=, pictures=) -> dict, optional
        What writes the files; default ``outputs.write_outputs`` (the engine worker passes its own for a front end
        that reads the volumes as regions of the CT's grid).
    **score_options
        bundle, scorer, n_shifts, device, ring_width_mm: passed to :func:`score_case`.

    Returns
    -------
    (CaseResult, dict)
        The result and the files written (``outputs.write_outputs``).
    """
    from .io import read_mask
    from .outputs import check_out_dir, write_outputs

    check_out_dir(out_dir, [ct_path, mask_path])  # before computing: never replace an input
    mask = read_mask(mask_path, ct) if mask_path else None
    result = score_case(ct, seed_lps, box_lps, mask, ecog, progress=progress, cancel=cancel, **score_options)
    add_reading_warnings(result, ct_warnings)
    if ct_path is not None:
        result.inputs["ct_path"] = str(Path(ct_path).resolve())
    _report(progress, cancel, 0.96, "writing outputs")
    written = (writer or write_outputs)(result, out_dir, ct=ct, pictures=pictures)
    if progress is not None:
        progress(1.0, "finished")
    return result, written


def add_reading_warnings(result: CaseResult, ct_warnings: Sequence[str]) -> None:
    """Put the warnings from reading the CT (``io.read_ct``) first among the result's, after the model's demo or
    placeholder notice when there is one (that stays the first line a reader sees); none twice."""
    new = [w for w in ct_warnings if w not in result.warnings]
    at = 1 if result.warnings and result.warnings[0] == (result.model or {}).get("notice") else 0
    result.warnings[at:at] = new


def check_seed(ct: sitk.Image, seed_lps: Sequence[float]) -> Point:
    """The seed as three floats (LPS mm); TMBRBInputError unless it is three finite numbers inside the CT."""
    seed = tuple(float(v) for v in seed_lps)
    if len(seed) != 3 or not np.all(np.isfinite(seed)):
        raise TMBRBInputError(f"The seed {seed_lps} is not three finite coordinates.", "Give x,y,z in mm.")
    require_point_inside(ct, seed)
    return seed


def resolve_box(ct: sitk.Image, seed: Point, box_lps, proposal: Optional[Dict], warnings: List[str],
                tumour_mask: Optional[sitk.Image] = None):
    """(box, proposed, segmentation): the given box, checked against the scan and the seed, or one proposed.

    With no box, the box follows the given tumour mask (its extent plus the proposal's margin) or, with no mask, the
    tumour segmented from the seed (``proposal.segment_from_seed``, returned as the third item; None otherwise).
    A given box wholly outside the CT is refused; one partly outside, or one that does not hold the seed, gives a
    warning (appended to ``warnings``, as are the segmentation's).
    """
    if box_lps is None and tumour_mask is not None:
        ext = mask_extent_lps(tumour_mask)
        if ext is not None:
            margin = float({**PROPOSAL_DEFAULTS, **(proposal or {})}["margin_mm"])
            box = Box(tuple(np.asarray(ext.min) - margin), tuple(np.asarray(ext.max) + margin))
            warnings += mask_box_warnings(tumour_mask, seed, box)
            return box, True, None
    if box_lps is None:
        seg = segment_from_seed(ct, seed, None, proposal)
        warnings += seg.warnings
        return seg.box, True, seg
    box = box_lps if isinstance(box_lps, Box) else Box.from_corners(*box_lps)
    warnings += check_box_in_scan(ct, box)
    lo, hi = np.asarray(box.min), np.asarray(box.max)
    if np.any(np.asarray(seed) < lo) or np.any(np.asarray(seed) > hi):
        warnings.append("The seed lies outside the box; the crop is centred on the box.")
    return box, False, None


def mask_box_warnings(tumour_mask: sitk.Image, seed: Point, box: Box) -> List[str]:
    """Warnings for a box made from a given tumour mask: the seed outside it (the mask may be of another lesion),
    or a mask of several separate parts (one box around all of them).

    >>> import SimpleITK as sitk
    >>> m = sitk.Image(20, 20, 20, sitk.sitkUInt8)
    >>> for x in (3, 15):
    ...     m[x, 10, 10] = 1
    >>> mask_box_warnings(m, (10.0, 10.0, 10.0), Box((2.0, 9.0, 9.0), (16.0, 11.0, 11.0)))[0][:36]
    'The tumour mask has 2 separate parts'
    """
    warnings = []
    if np.any(np.asarray(seed) < np.asarray(box.min)) or np.any(np.asarray(seed) > np.asarray(box.max)):
        warnings.append("The seed lies outside the box made from the tumour mask: the mask may be of another lesion. "
                        "Check the seed and the mask; the crop is centred on the mask.")
    binary = sitk.Cast(tumour_mask != 0, sitk.sitkUInt8)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(binary)
    if stats.HasLabel(1):  # count the parts on the mask's own bounding region (cheap on a whole-CT grid)
        x, y, z, sx, sy, sz = stats.GetBoundingBox(1)
        parts = sitk.ConnectedComponentImageFilter()
        parts.FullyConnectedOn()
        parts.Execute(sitk.RegionOfInterest(binary, [sx, sy, sz], [x, y, z]))
        if parts.GetObjectCount() > 1:
            warnings.append(f"The tumour mask has {parts.GetObjectCount()} separate parts; the box holds all of "
                            "them. Give a mask of the one lesion to score.")
    return warnings


def model_inputs(ct: sitk.Image, box: Box, meta: Dict, n_shifts: Optional[int]):
    """(crop for the model, the crop in HU, its grid, test-time offsets in mm, the shifted crops)."""
    pre = meta["preprocessing"]
    tta = meta.get("tta", {})
    base, crop_img, grid = crop_for_model(ct, box, pre)
    offsets = shift_offsets(box, tta, n_shifts_of(tta, n_shifts))
    shifted = [crop_for_model(ct, box.shifted(o), pre)[0] for o in offsets]
    return base, crop_img, grid, offsets, shifted


def field_of_view_warnings(ct: sitk.Image, grid: CropGrid) -> List[str]:
    outside = fraction_outside_scan(ct, grid)
    if outside > 0.01:
        return [f"{100 * outside:.0f}% of the model's field of view lies outside the scan and is padded with air."]
    return []


def regions_and_cam(ct: sitk.Image, seed: Point, box: Box, grid: CropGrid, cam_crop: np.ndarray,
                    tumour_mask: Optional[sitk.Image], width: float, region_settings: Optional[Dict],
                    warnings: List[str], seg: Optional[SeedSegmentation] = None):
    """(cam_region, tumour_region, ring_region, attention shares) on one region of the CT's grid.

    The region holds the crop and a ring of ``width`` mm around the box. The tumour is ``tumour_mask`` when given,
    else ``seg`` (the segmentation from the seed); the ring surrounds it. The CAM is resampled from the crop grid,
    scaled to max 1.
    """
    if width <= 0:
        raise TMBRBInputError(f"The ring width {width} mm must be positive.", "Give e.g. 10.")
    roi_box = Box(tuple(np.minimum(grid.box.min, np.asarray(box.min) - width)),
                  tuple(np.maximum(grid.box.max, np.asarray(box.max) + width)))
    lo, hi, ref = region_of_interest(ct, roi_box)
    if tumour_mask is not None:
        tumour_sub = _given_tumour_on_region(ct, tumour_mask, lo, hi, warnings)
    else:
        tumour_sub = _segmented_tumour_on_region(seg, lo, ref)
    cam_sub = cam_to_reference(cam_image(normalise_cam(cam_crop), grid), ref)
    mx = float(cam_sub.max())
    if mx > 0:
        cam_sub = cam_sub / mx
    else:
        warnings.append("The class activation map is zero everywhere (the model's evidence for High-TMB is nil "
                        "at the chosen layer); attention shares are not defined.")
    ring_sub, shares = ring_and_shares(cam_sub, tumour_sub, width)

    geometry = Geometry.of(ct)
    lo3 = tuple(int(v) for v in lo)
    return (RegionVolume(cam_sub.astype(np.float32), lo3, geometry),
            RegionVolume(sitk.GetArrayFromImage(tumour_sub).astype(np.uint8), lo3, geometry),
            RegionVolume(sitk.GetArrayFromImage(ring_sub).astype(np.uint8), lo3, geometry), shares)


def _given_tumour_on_region(ct: sitk.Image, tumour_mask: sitk.Image, lo, hi, warnings: List[str]) -> sitk.Image:
    """The given segmentation on the CT's grid, cut to the region [lo, hi)."""
    full_mask = mask_on_ct_grid(tumour_mask, ct)
    tumour_sub = sitk.RegionOfInterest(full_mask, [int(h - l) for l, h in zip(lo, hi)], [int(v) for v in lo])
    if not sitk.GetArrayViewFromImage(tumour_sub).any():
        warnings.append("The given segmentation has no voxel near the box; check that it is the tumour's.")
    return tumour_sub


def _segmented_tumour_on_region(seg: SeedSegmentation, lo, ref: sitk.Image) -> sitk.Image:
    """The tumour segmented from the seed, pasted into the region ``ref`` (which starts at voxel ``lo``)."""
    tumour_sub_arr = np.zeros(sitk.GetArrayViewFromImage(ref).shape, np.uint8)
    _paste_clipped(tumour_sub_arr, sitk.GetArrayViewFromImage(seg.mask), np.asarray(seg.lo) - np.asarray(lo))
    tumour_sub = sitk.GetImageFromArray(tumour_sub_arr)
    tumour_sub.CopyInformation(ref)
    return tumour_sub


def _paste_clipped(dst: np.ndarray, src: np.ndarray, offset_xyz) -> None:
    """Write src (z, y, x) into dst at index offset (x, y, z), dropping what falls outside dst."""
    off = np.asarray(offset_xyz, int)[::-1]
    a = np.maximum(off, 0)
    b = np.minimum(off + np.array(src.shape), np.array(dst.shape))
    if np.any(b <= a):
        return
    dst[a[0]:b[0], a[1]:b[1], a[2]:b[2]] = src[a[0] - off[0]:b[0] - off[0], a[1] - off[1]:b[1] - off[1],
                                                a[2] - off[2]:b[2] - off[2]]
