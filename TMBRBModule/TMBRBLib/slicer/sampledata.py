"""The demo phantom as 3D Slicer Sample Data: generated on this computer on first use (nothing is downloaded), then
loaded with its seed and box, so that a new user can try the module in two clicks (Sample Data > TMBRB phantom,
then Apply). The self-test (TMBRBTest) loads the same case through :func:`loadPhantom`.

Registration needs the SampleData module of the application; without it (the slicer-core wheel, a Slicer built
without it) :func:`registerSampleData` registers nothing and says so by returning False.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Dict, Optional

from .. import __version__

CATEGORY = "TMBRB"
SAMPLE_NAME = "TMBRBPhantom"
NODE_NAMES = {"ct": "TMBRB phantom CT", "seed": "TMBRB phantom seed", "roi": "TMBRB phantom box"}


def cacheFolder(scene=None) -> Path:
    """Where the generated phantom is kept: the scene's remote cache folder (Sample Data's own cache) when the scene
    has a cache manager, else a TMBRB folder in the system's temporary folder."""
    manager = scene.GetCacheManager() if scene is not None and hasattr(scene, "GetCacheManager") else None
    folder = manager.GetRemoteCacheDirectory() if manager is not None else ""
    return Path(folder) if folder else Path(tempfile.gettempdir()) / "TMBRB-sample-data"


def phantomFiles(folder: Optional[Path] = None) -> Dict[str, Path]:
    """The demo phantom's CT (NRRD) and its seed and box (JSON, LPS mm) in `folder`, generated when missing.

    Parameters
    ----------
    folder : Path, optional
        The cache folder (default: :func:`cacheFolder` without a scene).

    Returns
    -------
    dict
        "ct" and "case" -> the files. Their names carry the TMBRB version, so a new version generates its own.
    """
    import SimpleITK as sitk

    folder = Path(folder or cacheFolder())
    ct, case = folder / f"{SAMPLE_NAME}-{__version__}.nrrd", folder / f"{SAMPLE_NAME}-{__version__}.json"
    if not (ct.is_file() and case.is_file()):
        from ..phantom import make_demo_case

        demo = make_demo_case()
        folder.mkdir(parents=True, exist_ok=True)
        part = ct.with_name(ct.stem + ".part.nrrd")  # a reader never sees half a file
        sitk.WriteImage(demo.ct, str(part), useCompression=True)
        part.replace(ct)
        case.write_text(json.dumps({"seed_lps": list(demo.seed_lps), "box_lps": [list(c) for c in demo.box_lps]}),
                        encoding="utf-8")
    return {"ct": ct, "case": case}


def loadPhantom(scene, folder: Optional[Path] = None) -> Dict[str, object]:
    """Add the demo phantom to `scene`: its CT volume, the seed at the tumour's centre and the box around it.

    Parameters
    ----------
    scene : vtkMRMLScene
        The scene.
    folder : Path, optional
        The cache folder (default: :func:`cacheFolder` of the scene).

    Returns
    -------
    dict
        "ct" (vtkMRMLScalarVolumeNode), "seed" (vtkMRMLMarkupsFiducialNode), "roi" (vtkMRMLMarkupsROINode).
    """
    import SimpleITK as sitk

    from ..geometry import Box, lps_to_ras
    from . import mrml

    files = phantomFiles(folder or cacheFolder(scene))
    case = json.loads(files["case"].read_text(encoding="utf-8"))
    ct = mrml.add_volume_node_from_sitk(scene, sitk.ReadImage(str(files["ct"])), NODE_NAMES["ct"])
    seed = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", NODE_NAMES["seed"])
    seed.AddControlPoint(lps_to_ras(case["seed_lps"]))
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", NODE_NAMES["roi"])
    mrml.set_roi_from_box(roi, Box(*case["box_lps"]))
    return {"ct": ct, "seed": seed, "roi": roi}


def registerSampleData(thumbnail: Optional[Path] = None) -> bool:
    """Register the phantom in the Sample Data module (category TMBRB), loaded by :func:`loadPhantom` into the
    application's scene.

    Parameters
    ----------
    thumbnail : Path, optional
        The picture Sample Data shows for it.

    Returns
    -------
    bool
        False when the SampleData module is not there (nothing registered).
    """
    try:
        import SampleData
    except ImportError:
        return False

    def load(source=None):
        import slicer

        nodes = loadPhantom(slicer.mrmlScene)
        if hasattr(slicer, "util") and hasattr(slicer.util, "setSliceViewerLayers"):
            slicer.util.setSliceViewerLayers(background=nodes["ct"], fit=True)
        return [nodes["ct"]]

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=CATEGORY, sampleName=SAMPLE_NAME, uris=[], fileNames=[],  # nothing to download
        thumbnailFileName=str(thumbnail) if thumbnail else None, customDownloader=load)
    return True
