"""Deterministic synthetic chest-CT phantoms with a tumour and a TMB-linked imaging signal.

Public API::

    make_phantom(seed, ...) -> PhantomCase     # one case (CT, tumour mask, signal mask, seed, box, TMB)
    make_demo_case() -> PhantomCase            # the fixed demo case used by ``tmbrb demo``
    write_case(case, out_dir) -> dict          # NRRD files + JSON, returns a manifest row
    write_cohort(out_dir, ...) -> Path         # a training cohort split like the paper (236/26/65)
    read_manifest(path) -> DataFrame           # the manifest with absolute paths
    achievable_auc(strength), strength_for_auc(auc)
    make_immunotherapy_cohort(n, seed, hr) -> DataFrame   # the paper's immunotherapy cohort (Table 1, OS/PFS)
    write_immunotherapy_cohort(path, ...) -> Path         # that cohort as CSV + truth JSON (module ``cohort``)

Everything is built in physical (LPS mm) space and sampled through the grid's index->physical mapping,
so identity, flipped and oblique direction matrices show the same anatomy at the same place. Each random
component (anatomy, tumour, placement, acquisition, TMB, texture, noise, annotator) has its own stream
derived from the seed, so e.g. the tumour never depends on TMB; with ``signal='none'`` the image is
bit-identical whatever the TMB. See ``signal`` for how ``strength`` maps to the achievable AUC
(default 1.2 -> ~0.87).

Cost (2-core shared machine, CPU time): a cohort case (~160x160x24..157 voxels) ~0.3 s on average,
at most ~0.65 s (0.6 mm slices); the demo case (384x384x96) ~1.0 s; a 512x512x300 case ~9 s wall and
~0.9 GB peak memory.

Pure numpy/scipy/SimpleITK (pandas for the immunotherapy cohort); no Slicer, no Qt.
"""

from .cohort import PAPER_HR, make_immunotherapy_cohort, write_immunotherapy_cohort
from .generate import DEMO_SEED, PhantomCase, draw_case_params, make_demo_case, make_phantom
from .grid import Grid
from .signal import (
    DEFAULT_STRENGTH,
    HIGH_TMB_CUTOFF,
    SIGNALS,
    achievable_auc,
    draw_tmb,
    signal_amplitude,
    strength_for_auc,
)
from .writer import MANIFEST_COLUMNS, PAPER_SPLIT, read_manifest, split_sizes, write_case, write_cohort

__all__ = [
    "DEFAULT_STRENGTH", "DEMO_SEED", "HIGH_TMB_CUTOFF", "MANIFEST_COLUMNS", "PAPER_HR", "PAPER_SPLIT", "SIGNALS",
    "Grid", "PhantomCase", "achievable_auc", "draw_case_params", "draw_tmb", "make_demo_case",
    "make_immunotherapy_cohort", "make_phantom", "read_manifest", "signal_amplitude", "split_sizes",
    "strength_for_auc", "write_case", "write_cohort", "write_immunotherapy_cohort",
]
