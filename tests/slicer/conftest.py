"""Fixtures for the 3D Slicer module tests: real MRML scenes from the slicer-core wheel (no fakes of Slicer)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from _prereq import require

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "TMBRBModule"
for p in (MODULE_DIR, REPO):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))



def _import_real_slicer():
    """Import slicer-core's 'slicer' package. Its __init__ extends its path with every 'slicer' folder on sys.path
    and imports what it finds there, so this folder (tests/slicer) must not be visible while it is imported."""
    here = Path(__file__).resolve().parent
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if (Path(p or ".").resolve() / "slicer") != here]
    try:
        try:
            return importlib.import_module("slicer")
        except ImportError:
            require("slicer-core", "the slicer-core wheel (MRML classes) is not installed (pip install 'slicer-core==5.11.*')")
    finally:
        sys.path[:] = saved


slicer = _import_real_slicer()
if not hasattr(slicer, "vtkMRMLScene"):
    require("slicer-core", "the 'slicer' package has no MRML classes (install slicer-core 5.11)")

TESTING = REPO / "Testing"


@pytest.fixture()
def scene():
    from TMBRBLib.slicer import mrml

    s = mrml.create_scene()
    yield s
    mrml.release_scene(s)


@pytest.fixture()
def logic(scene, placeholder_bundle):
    import TMBRB

    lg = TMBRB.TMBRBLogic(scene)
    lg.bundle = placeholder_bundle
    yield lg
    lg.shutdown()  # the engine worker, when a background run started one


def node_ids(scene):
    return sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))


def add_ct(scene, image, name="CT"):
    from TMBRBLib.slicer import mrml

    return mrml.add_volume_node_from_sitk(scene, image, name)


def add_seed(scene, ras, name="seed"):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    node.AddControlPoint([float(v) for v in ras])
    return node


def slicer_cases():
    return json.loads((TESTING / "real_ct_cases.json").read_text())


@pytest.fixture(scope="session")
def real_case(real_ct_data):
    """lung2 (a 48 mL mass): CT + label as SimpleITK images and its seed (from Testing/real_ct_cases.json)."""
    import SimpleITK as sitk

    case = slicer_cases()["lung2"]
    ct = sitk.ReadImage(str(real_ct_data / case["ct"]))
    label = sitk.ReadImage(str(real_ct_data / case["label"]))
    return {"ct": ct, "label": label, "seed_ras": case["seed_ras_mm"], "name": "lung2"}


def label_points_ras(label_img) -> np.ndarray:
    """RAS coordinates of every labelled voxel centre."""
    import SimpleITK as sitk

    arr = sitk.GetArrayViewFromImage(label_img)
    kji = np.argwhere(arr > 0)
    d = np.array(label_img.GetDirection()).reshape(3, 3)
    m = d @ np.diag(label_img.GetSpacing())
    lps = kji[:, ::-1] @ m.T + np.array(label_img.GetOrigin())
    return lps * np.array([-1.0, -1.0, 1.0])
