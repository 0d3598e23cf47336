"""Files a person or a program reads: result.json, NRRD volumes aligned with the CT, PNG overlays."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path, PureWindowsPath
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .errors import TMBRBInputError
from .io import write_image

VIEWS = ("axial", "coronal", "sagittal")


def _plane_grid(center: Sequence[float], view: str, fov_mm: float, n: int) -> Tuple[sitk.Image, Tuple[str, str]]:
    """A one-voxel-thick grid through `center` in LPS axes, oriented for radiological display.

    axial: columns go to patient Left, rows to Posterior; coronal: columns Left, rows Inferior;
    sagittal: columns Posterior, rows Inferior. (Patient right is on the viewer's left, as on a scanner console.)
    """
    cols, rows = {"axial": (np.array([1.0, 0, 0]), np.array([0, 1.0, 0])),
                  "coronal": (np.array([1.0, 0, 0]), np.array([0, 0, -1.0])),
                  "sagittal": (np.array([0, 1.0, 0]), np.array([0, 0, -1.0]))}[view]
    normal = np.cross(cols, rows)
    sp = fov_mm / n
    direction = np.stack([cols, rows, normal], axis=1)  # columns of the direction matrix are the axes
    origin = np.asarray(center, float) - sp * (n - 1) / 2 * (cols + rows)
    ref = sitk.Image([n, n, 1], sitk.sitkUInt8)
    ref.SetSpacing([sp, sp, 1.0])
    ref.SetDirection(direction.ravel().tolist())
    ref.SetOrigin(origin.tolist())
    labels = {"axial": ("R  <->  L", "A  <->  P"), "coronal": ("R  <->  L", "S  <->  I"),
              "sagittal": ("A  <->  P", "S  <->  I")}[view]
    return ref, labels


def _sample(img: sitk.Image, ref: sitk.Image, interp, default: float) -> np.ndarray:
    out = sitk.Resample(img, ref, sitk.Transform(), interp, default, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)[0]


OVERLAY_PIXELS = 384  # pixels across each view
OVERLAY_KEYS = ("score", "os", "pfs", "ecog", "os_ecog", "pfs_ecog", "model")  # the lines written on each view


def _panels(result, ct: sitk.Image, fov: float, n: int) -> Dict[str, Dict]:
    """For each view: the CT, CAM, tumour and ring sampled on a plane through the seed, its grid and axis labels."""
    panels = {}
    for view in VIEWS:
        ref, labels = _plane_grid(result.seed_lps, view, fov, n)
        panels[view] = dict(
            ct=_sample(ct, ref, sitk.sitkLinear, -1000.0),
            cam=_sample(result.cam_region.region_image(), ref, sitk.sitkLinear, 0.0),
            tumour=_sample(result.tumour_region.region_image(), ref, sitk.sitkNearestNeighbor, 0),
            ring=_sample(result.ring_region.region_image(), ref, sitk.sitkNearestNeighbor, 0),
            ref=ref, labels=labels, view=view)
    return panels


def _banner(model: Dict) -> Optional[str]:
    if model.get("modified"):
        return ("MODIFIED MODEL BUNDLE (fails its checksums) - "
                + ("DEMO MODEL" if model.get("demo") else "NOT AS EXPORTED"))
    if model.get("placeholder"):
        return "PLACEHOLDER MODEL (untrained) - SCORE MEANS NOTHING"
    if model.get("demo"):
        return "DEMO MODEL (synthetic phantoms) - NOT FOR CLINICAL OR RESEARCH CONCLUSIONS"
    return None


def _draw_view(ax, panel: Dict, box, fov: float, n: int, cam_threshold: float):
    """CT (lung window), CAM heat map above the threshold, tumour/ring outlines, the box and the seed."""
    from matplotlib.patches import Rectangle

    ext = [0, fov, fov, 0]
    ax.imshow(panel["ct"], cmap="gray", vmin=-1350, vmax=150, extent=ext, interpolation="bilinear")
    cam = np.ma.masked_less(panel["cam"], cam_threshold)
    im = ax.imshow(cam, cmap="inferno", vmin=0, vmax=1, alpha=0.55, extent=ext, interpolation="bilinear")
    xs = (np.arange(n) + 0.5) * fov / n
    if panel["tumour"].any():
        ax.contour(xs, xs, panel["tumour"], levels=[0.5], colors=["#00ff66"], linewidths=1.2)
    if panel["ring"].any():
        ax.contour(xs, xs, panel["ring"] + panel["tumour"], levels=[0.5], colors=["#33ccff"], linewidths=0.9,
                   linestyles="--")
    # box rectangle: project the LPS box onto the plane's axes
    d = np.array(panel["ref"].GetDirection()).reshape(3, 3)
    o = np.array(panel["ref"].GetOrigin())
    lo, hi = np.asarray(box.min), np.asarray(box.max)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    uv = (corners - o) @ d[:, :2] + fov / n / 2
    ax.add_patch(Rectangle((uv[:, 0].min(), uv[:, 1].min()), np.ptp(uv[:, 0]), np.ptp(uv[:, 1]),
                           fill=False, ec="#ffd400", lw=1.0, ls=":"))
    ax.plot([fov / 2], [fov / 2], marker="+", color="#ff3366", ms=10, mew=1.5)
    ax.set_title(f"{panel['view']} through the seed", fontsize=10)
    ax.set_xlabel(panel["labels"][0], fontsize=8)
    ax.set_ylabel(panel["labels"][1], fontsize=8)
    ax.tick_params(labelsize=7)
    return im


def render_overlays(result, ct: sitk.Image, out_dir: Union[str, Path], cam_threshold: float = 0.15) -> Dict[str, Path]:
    """PNG per view through the seed (CT, CAM heat map, tumour/ring outlines, box, score) and a summary figure.

    The words on them are the result's lines (TMBRBLib.present), as every front end shows them."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .present import by_key, result_lines, select

    out_dir = Path(out_dir)
    fov, n = max(1.6 * float(max(result.crop_grid.box.size)), 100.0), OVERLAY_PIXELS
    panels = _panels(result, ct, fov, n)
    lines = result_lines(result.to_dict())
    banner = _banner(result.model)
    text = "\n".join(_wrap(f"{line.label}: {line.value}", 62) for line in select(lines, OVERLAY_KEYS))
    cam_line = by_key(lines).get("cam")
    cam_label = f"CAM for High-TMB ({cam_line.value if cam_line else 'GradCAM'})"
    written: Dict[str, Path] = {}
    for view in VIEWS:
        fig, ax = plt.subplots(figsize=(5.2, 5.6), dpi=110)
        im = _draw_view(ax, panels[view], result.box, fov, n, cam_threshold)
        ax.text(0.01, 0.99, text, transform=ax.transAxes, va="top", ha="left", fontsize=7, color="white",
                bbox=dict(facecolor="black", alpha=0.6, lw=0))
        if banner:
            fig.suptitle(banner, color="#cc0000", fontsize=9, fontweight="bold")
        fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label=cam_label)
        written[f"overlay_{view}"] = out_dir / f"overlay_{view}.png"
        fig.savefig(written[f"overlay_{view}"], bbox_inches="tight")
        plt.close(fig)

    fig, axes = plt.subplots(1, 4, figsize=(17, 4.8), dpi=100, gridspec_kw={"width_ratios": [1, 1, 1, 0.9]})
    for ax, view in zip(axes[:3], VIEWS):
        im = _draw_view(ax, panels[view], result.box, fov, n, cam_threshold)
    fig.colorbar(im, ax=axes[2], fraction=0.04, pad=0.02, label=cam_label)
    axes[3].axis("off")
    summary = "\n".join(_wrap(line.text, 60) for line in lines if line.key not in ("notice", "model_sha256"))
    summary += "\n\ngreen: tumour   cyan dashed: peritumoral ring\nyellow dotted: box   +: seed"
    axes[3].text(0, 1, summary, va="top", ha="left", fontsize=8, family="monospace", transform=axes[3].transAxes)
    fig.suptitle((banner + "   |   " if banner else "") + "TMBRB - research use only", color="#cc0000" if banner
                 else "black", fontsize=10, fontweight="bold")
    written["summary"] = out_dir / "summary.png"
    fig.savefig(written["summary"], bbox_inches="tight")
    plt.close(fig)
    return written


def _wrap(s: str, width: int) -> str:
    import textwrap
    return "\n  ".join(textwrap.wrap(s, width))


OUTPUT_NAMES = ("result.json", "result.json.part", "cam.nrrd", "crop.nrrd", "tumour.nrrd", "ring.nrrd",
                "summary.png") + tuple(f"overlay_{v}.png" for v in VIEWS)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _can_write_in(folder: Path) -> bool:
    """Whether a file can be created in `folder` (tried: root passes permission bits, not read-only mounts)."""
    import tempfile

    if not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
        return False
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def check_out_dir(out_dir: Union[str, Path], inputs: Sequence[Union[str, Path, None]] = (),
                  names: Sequence[str] = OUTPUT_NAMES, option: str = "--out") -> Path:
    """Refuse, before any computing, an output folder that cannot be written or whose outputs would replace an input.

    Parameters
    ----------
    out_dir : str or Path
        The output folder (created later when missing).
    inputs : sequence of paths
        The run's input files or folders (None entries are skipped).
    names : sequence of str
        The file names the run writes in `out_dir`.
    option : str
        The option's name, for the messages.

    Returns
    -------
    Path
        `out_dir` as a Path.

    Raises
    ------
    TMBRBInputError
        `out_dir` is an existing file, lies in a folder this user cannot write, or one of `names` in it is an input
        (the same file, through any path or link) or a file inside an input folder (e.g. a DICOM folder).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TMBRBInputError(f"{option} '{out}' is an existing file, not a folder.",
                              f"Give {option} a folder (it is created when missing).")
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not _can_write_in(probe):
        raise TMBRBInputError(f"Cannot write in {option} '{out}' ('{probe}' is read-only for this user).",
                              f"Give {option} a folder you can write in.")
    given = [Path(p) for p in inputs if p]
    for name in names:
        target = out / name
        if not (target.exists() or target.is_symlink()):
            continue
        for inp in given:
            inside = inp.is_dir() and target.resolve().parent == inp.resolve()
            if inside or _same_file(target, inp):
                raise TMBRBInputError(
                    f"{option} '{out}' would replace the input '{inp}' with the output {name}.",
                    f"Give {option} another folder (outputs never overwrite a run's inputs).")
    return out


def write_outputs(result, out_dir: Union[str, Path], ct: Optional[sitk.Image] = None, pictures: bool = True,
                  extra: Optional[Dict] = None) -> Dict[str, Path]:
    """Write result.json, cam.nrrd, crop.nrrd, tumour.nrrd, ring.nrrd (aligned with the CT) and PNG overlays."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_NAMES:  # a link planted under an output's name would send the write outside the folder
        if (out_dir / name).is_symlink():
            (out_dir / name).unlink()
    written: Dict[str, Path] = {}
    # full CT-grid volumes written slice by slice from their regions (no full-size copy in memory)
    written["cam"] = result.cam_region.write_nrrd(out_dir / "cam.nrrd")
    written["crop"] = write_image(result.crop, out_dir / "crop.nrrd")
    written["tumour"] = result.tumour_region.write_nrrd(out_dir / "tumour.nrrd")
    written["ring"] = result.ring_region.write_nrrd(out_dir / "ring.nrrd")
    if pictures and ct is not None:
        written.update(render_overlays(result, ct, out_dir))
    d = result.to_dict()
    if extra:
        d.update(extra)
    d = result_record(d, out_dir)
    d["files"] = {k: p.name for k, p in written.items()}
    d["files"]["result"] = "result.json"
    tmp = out_dir / "result.json.part"
    tmp.write_text(json.dumps(d, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out_dir / "result.json")  # result.json appears last and whole: it marks a finished case
    written["result"] = out_dir / "result.json"
    return written


RECORDED_PATHS = ("ct_path", "mask_path")  # the paths result.json records (under "inputs"), relative to its folder
MAX_CLIMB = 1  # a recorded path may go up this many folders from the record's folder (``../ct.nrrd`` beside --out)
_QUOTED_PATH = re.compile(r"""(['"])((?:/|[A-Za-z]:[\\/])[^'"]*)\1""")  # '/abs/path' or "C:\abs\path"


def path_sha256(path: Union[str, Path]) -> str:
    """sha256 (hex) of a path's absolute, resolved form: tells files apart without recording where they are.

    >>> path_sha256("/data/a/ct.nrrd") == path_sha256("/data/a/../a/ct.nrrd")
    True
    """
    return hashlib.sha256(str(Path(path).resolve()).encode("utf-8")).hexdigest()


def _near_path(path: Union[str, Path], folder: Union[str, Path]) -> Optional[str]:
    """``path`` relative to ``folder`` (POSIX) when it goes up at most :data:`MAX_CLIMB` folders; else None."""
    if os.name != "nt" and PureWindowsPath(path).drive:  # C:\\... named in a message read on another system
        return None
    try:
        rel = Path(os.path.relpath(Path(path).resolve(), Path(folder).resolve()))
    except ValueError:  # another drive (Windows)
        return None
    climb = next((i for i, part in enumerate(rel.parts) if part != ".."), len(rel.parts))
    return rel.as_posix() if climb <= MAX_CLIMB else None


def _name(path: Union[str, Path]) -> str:
    """The last part of a path, whichever separator it uses."""
    return re.split(r"[\\/]", str(Path(path).resolve()) if PureWindowsPath(path).drive == "" else str(path))[-1]


def path_record(path: Union[str, Path], folder: Union[str, Path]) -> Union[str, Dict[str, str]]:
    """How a record in ``folder`` (result.json) names an input file without saying where the machine keeps it.

    Parameters
    ----------
    path : str or Path
        A file or folder (absolute, or relative to the current folder).
    folder : str or Path
        The folder the record describes (e.g. the output folder holding result.json).

    Returns
    -------
    str or dict
        The path relative to ``folder`` when it goes up at most one folder (``../ct.nrrd``, ``ct/ct.nrrd``), which
        :func:`recorded_path` takes back; else ``{"name": ..., "path_sha256": ...}`` (as ``batch.file_identity``):
        the folders above, which may name a patient, are not recorded.

    Examples
    --------
    >>> path_record("/data/study/ct.nrrd", "/data/study/out")
    '../ct.nrrd'
    >>> sorted(path_record("/data/DOE_JOHN/ct.nrrd", "/home/me/results/case1"))
    ['name', 'path_sha256']
    """
    near = _near_path(path, folder)
    return near if near is not None else {"name": _name(path), "path_sha256": path_sha256(path)}


def relative_path(path: Union[str, Path], folder: Union[str, Path]) -> str:
    """``path`` as a message or a shared file may show it: relative to ``folder`` when it goes up at most one folder,
    else its name and the start of its path's sha256 (no folder above it, which may name a patient, is shown).

    Parameters
    ----------
    path : str or Path
        A file or folder (absolute, or relative to the current folder).
    folder : str or Path
        The folder the message or record describes (e.g. the output folder holding result.json).

    Returns
    -------
    str
        e.g. ``../ct.nrrd``, or ``ct.nrrd [path sha256 1f2e3d4c5b6a]``.

    Examples
    --------
    >>> relative_path("/data/study/ct.nrrd", "/data/study/out")
    '../ct.nrrd'
    >>> shown = relative_path("/data/patients/DOE_JOHN_1234/ct.nrrd", "/home/me/results/case1")
    >>> shown.startswith("ct.nrrd [path sha256 "), "DOE_JOHN" in shown
    (True, False)
    """
    near = _near_path(path, folder)
    return near if near is not None else f"{_name(path)} [path sha256 {path_sha256(path)[:12]}]"


def paths_in_message(message: Optional[str], folder: Union[str, Path]) -> Optional[str]:
    """A message with each quoted absolute path (``'/data/PAT-1/ct.nrrd'`` or ``"/data/..."``, as ITK quotes) written
    as :func:`relative_path` shows it; None and "" stay as they are.

    >>> paths_in_message('The file "/data/study/ct.nrrd" cannot be read', "/data/study/out")
    'The file "../ct.nrrd" cannot be read'
    """
    if not message:
        return message
    return _QUOTED_PATH.sub(lambda m: m.group(1) + relative_path(m.group(2), folder) + m.group(1), message)


def recorded_path(result_dir: Union[str, Path], recorded: Union[str, Dict, None]) -> Optional[Path]:
    """The file a result.json in ``result_dir`` records (``inputs.ct_path``...): relative paths are taken from
    ``result_dir``, absolute ones (older results) as they are; None, or a file recorded by name and path sha256
    (:func:`path_record`: its folder is not known), gives None."""
    return None if not recorded or isinstance(recorded, dict) else Path(result_dir) / recorded


def result_record(result: Dict, folder: Union[str, Path]) -> Dict:
    """What result.json in ``folder`` records of a result (``CaseResult.to_dict()`` or an updated one): every writer
    of result.json goes through it, so no absolute path (which may name a patient) is recorded.

    Parameters
    ----------
    result : dict
        The result; it is not changed.
    folder : str or Path
        The folder result.json goes into.

    Returns
    -------
    dict
        A copy with ``inputs.ct_path`` / ``inputs.mask_path`` as :func:`path_record` gives them (absolute or
        relative to the current folder before) and the quoted absolute paths of ``warnings`` as
        :func:`relative_path` shows them.
    """
    d = dict(result)
    inputs = dict(d.get("inputs") or {})
    for key in RECORDED_PATHS:
        if isinstance(inputs.get(key), (str, Path)) and inputs[key]:
            inputs[key] = path_record(inputs[key], folder)
    if "inputs" in d:
        d["inputs"] = inputs
    if "warnings" in d:
        d["warnings"] = [paths_in_message(str(w), folder) for w in d["warnings"]]
    return d
