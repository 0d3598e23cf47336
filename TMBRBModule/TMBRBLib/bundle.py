"""Model bundles: weights + metadata + checksum, in the MONAI Bundle layout.

    <bundle>/configs/metadata.json   what the model is: architecture, crop policy, cut-offs, hazard ratios,
                                     training provenance, intended use, version, weights checksum
    <bundle>/models/model.safetensors  the weights (safetensors: no pickle is ever loaded)
    <bundle>/docs/README.md          human-readable model card
    <bundle>/checksums.sha256        the sha256 of each file above, in `sha256sum` format (`sha256sum -c` checks it)

A bundle whose weights do not match their sha256, or whose format this software does not know, is refused. A bundle
whose files do not match its checksums (metadata edited after export: cut-offs, name, `demo: false`...) is loaded but
reported as MODIFIED in every output, and `tmbrb bundle verify` fails on it. Whether a model is the demo model is
decided by its weights' sha256 (`DEMO_WEIGHTS_SHA256`), not by the editable `demo` flag.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from .cam import DEFAULT_CAM_METHOD, DEFAULT_CAM_TARGET_LAYER, DEFAULT_SMOOTH_MM, cam_settings_of
from .crop import DEFAULT_TTA, MAX_SHIFTS
from .errors import TMBRBBundleError
from .model import DEFAULT_ARCHITECTURE, architecture_class, build_model

BUNDLE_FORMAT = 1
METADATA_PATH = Path("configs") / "metadata.json"
WEIGHTS_PATH = Path("models") / "model.safetensors"
CHECKSUMS_PATH = Path("checksums.sha256")
# The weights of every demo model TMBRB has shipped: the demo notice follows these, whatever the metadata says.
DEMO_WEIGHTS_SHA256 = frozenset({
    "23e3a9f4c44b1d740580f7be7818069fea5494396d64bc271f3627eb8edfa90d",  # Resources/models/tmbrb_demo, 0.1.0
})
DEMO_NOTICE = ("DEMO MODEL trained on synthetic phantoms - not for clinical or research conclusions.")
PLACEHOLDER_NOTICE = ("PLACEHOLDER MODEL with untrained random weights - the score means nothing. "
                      "Train a model (training/) or use a trained bundle.")

_MODULE_DIR = Path(__file__).resolve().parent


def default_bundle_path() -> Path:
    """The bundle shipped with the module (TMBRBModule/Resources/models/tmbrb_demo), or $TMBRB_MODEL."""
    env = os.environ.get("TMBRB_MODEL")
    if env:
        return Path(env)
    return _MODULE_DIR.parent / "Resources" / "models" / "tmbrb_demo"


def sha256_file(path: Union[str, Path]) -> str:
    """The SHA-256 of a file's bytes as 64 hex digits (read in 1 MiB chunks: any size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def default_tmbrb_metadata() -> Dict[str, Any]:
    """The paper's settings; a site may edit these in its bundle's metadata."""
    return {
        "bundle_format": BUNDLE_FORMAT,
        "model_id": "tmbrb-untrained",
        "demo": True,
        "placeholder": True,
        "notice": PLACEHOLDER_NOTICE,
        "architecture": {"name": DEFAULT_ARCHITECTURE, "init_features": 32, "growth_rate": 32,
                         "block_config": [6, 12, 24, 16], "bn_size": 2, "hidden_features": 128,
                         "num_classes": 2, "n_features": 1020, "dropout_prob": 0.0, "classifier_dropout": 0.0},
        "preprocessing": {
            "mode": "box_margin",           # cube around the box centre: max box side + 2*margin, clipped to fov limits
            "margin_mm": 15.0,              # peritumoral context beyond the box on each side
            "min_fov_mm": 50.0,             # at least FMCIB's 50 mm cube
            "max_fov_mm": 160.0,
            "fov_mm": 64.0,                 # used by mode "fixed_fov"
            "shape": [64, 64, 64],          # model input (z, y, x)
            "hu_window": [-1000.0, 400.0],  # clipped then scaled to [0, 1]
            "pad_hu": -1000.0,              # outside the scan = air
            "interpolation": "linear",
            "training_slice_mm_max": 3.0,
        },
        "tta": dict(DEFAULT_TTA),
        # Grad-CAM at 16^3 times smoothed input x gradient (TMBRBLib.cam); "GradCAM" alone is the coarse classic
        "cam": {"method": DEFAULT_CAM_METHOD, "target_layer": DEFAULT_CAM_TARGET_LAYER, "smooth_mm": DEFAULT_SMOOTH_MM,
                "class_index": 1},
        "regions": {"ring_width_mm": 10.0, "tumour_hu_range": [-500.0, 500.0]},
        "proposal": {"hu_range": [-400.0, 500.0], "max_half_size_mm": 40.0, "margin_mm": 3.0,
                     "opening_mm": [3.0, 1.5, 0.0]},
        "risk": {
            "source": "He et al., J Immunother Cancer 2020;8:e000550 (X-tile cut-offs, figure 3; Cox models, figure 4B)",
            "os": {"cutoff": 0.61, "operator": ">=", "group_if_true": "low", "group_if_false": "high", "hr": 0.54,
                   "hr_ci95": [0.31, 0.95]},
            "pfs": {"cutoff": 0.46, "operator": ">", "group_if_true": "high", "group_if_false": "low", "hr": 1.78,
                    "hr_ci95": [1.07, 2.95]},
            "ecog_cox": {
                "os": {"tmbrb_hr": 0.54, "tmbrb_hr_ci95": [0.31, 0.95], "ecog_hr": 2.33, "ecog_hr_ci95": [1.14, 4.77]},
                "pfs": {"tmbrb_hr": 1.76, "tmbrb_hr_ci95": [1.06, 2.92], "ecog_hr": 1.90, "ecog_hr_ci95": [1.14, 3.19]},
                "note": "TMBRB enters as the indicator of meeting the endpoint's cut-off rule, ECOG PS as 0/1/2 "
                        "(per level); relative hazard is against TMBRB not meeting the rule and ECOG 0.",
            },
        },
        "training": {},
    }


def default_metadata(name: str = "TMBRB (untrained placeholder)", version: str = "0.0.1") -> Dict[str, Any]:
    import monai
    import numpy
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": version,
        "changelog": {version: "initial"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "name": name,
        "task": "Tumour mutational burden (High-TMB >= 10 mut/Mb) from a chest CT around a lung tumour",
        "description": "3D DenseNet (4 dense blocks, 1020 deep features) + FC 1020-128-2, after He et al. 2020.",
        "authors": "TMBRB developers",
        "copyright": "TMBRB developers",
        "intended_use": "Research use only. Not a medical device; not for diagnosis or treatment decisions.",
        "references": ["He B, et al. A neural network framework for predicting the tumor mutational burden of "
                       "non-small-cell lung cancer. J Immunother Cancer 2020;8:e000550."],
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                                 "spatial_shape": [64, 64, 64], "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": True, "channel_def": {"0": "image"}}},
            "outputs": {"pred": {"type": "probabilities", "format": "classes", "num_channels": 2,
                                 "spatial_shape": [2], "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": False, "channel_def": {"0": "Low-TMB", "1": "High-TMB"}}},
        },
        "tmbrb": default_tmbrb_metadata(),
    }


class Bundle:
    """A verified model bundle. `model(device)` gives the network in eval mode (built once per device)."""

    def __init__(self, path: Path, metadata: Dict[str, Any], weights_sha256: str,
                 integrity: Optional[Dict[str, Any]] = None):
        self.path = Path(path)
        self.metadata = metadata
        self.sha256 = weights_sha256
        self.integrity = integrity if integrity is not None else check_files(self.path)
        self._models: Dict[str, torch.nn.Module] = {}

    @property
    def tmbrb(self) -> Dict[str, Any]:
        return self.metadata["tmbrb"]

    @property
    def name(self) -> str:
        return self.metadata.get("name", self.path.name)

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", "?"))

    @property
    def has_demo_weights(self) -> bool:
        """Whether the weights are those of a demo model TMBRB shipped (by their sha256, not by the metadata)."""
        return self.sha256 in DEMO_WEIGHTS_SHA256

    @property
    def is_demo(self) -> bool:
        return (self.has_demo_weights or bool(self.tmbrb.get("demo", False))
                or bool(self.tmbrb.get("placeholder", False)))

    @property
    def is_modified(self) -> bool:
        """Whether the bundle's files differ from its checksums (edited after export)."""
        return self.integrity["status"] == "modified"

    @property
    def notice(self) -> str:
        t = self.tmbrb
        if t.get("placeholder"):
            return PLACEHOLDER_NOTICE
        if self.has_demo_weights:  # an edited metadata cannot remove or reword the demo weights' notice
            own = t.get("notice") if t.get("demo") and not self.is_modified else None
            return own or DEMO_NOTICE
        if t.get("demo"):
            return t.get("notice") or DEMO_NOTICE
        return t.get("notice", "Research use only.")

    def info(self) -> Dict[str, Any]:
        """What a result records about its model: name, version, sha256s, demo flag, notice, integrity, CAM.

        ``path`` is the bundle folder's name only (results never record where a bundle lies on disk);
        ``integrity`` is :func:`check_files`'s answer and ``modified`` is True when it found edited files.
        """
        return {"name": self.name, "model_id": self.tmbrb.get("model_id"), "version": self.version,
                "sha256": self.sha256, "metadata_sha256": sha256_json(self.metadata),
                "path": self.path.resolve().name, "demo": self.is_demo,
                "placeholder": bool(self.tmbrb.get("placeholder")),
                "notice": self.notice, "intended_use": self.metadata.get("intended_use", ""),
                "modified": self.is_modified, "integrity": copy.deepcopy(self.integrity),
                "cam": dict(self.tmbrb.get("cam", {}))}

    def model(self, device: Union[str, torch.device] = "cpu") -> torch.nn.Module:
        key = str(device)
        if key not in self._models:
            try:
                net = build_model(self.tmbrb["architecture"])
            except ValueError as e:
                raise TMBRBBundleError(f"The architecture in the metadata of '{self.path}' cannot be built: {e}. "
                                       "Fix configs/metadata.json or re-export the bundle.") from None
            state = _load_weights(self.path / WEIGHTS_PATH)
            own = net.state_dict()
            self._check_weights_fit(own, state)
            net.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
            net.eval()
            for p in net.parameters():
                p.requires_grad_(False)
            self._models[key] = net.to(device)
        return self._models[key]

    def _check_weights_fit(self, own: Dict[str, torch.Tensor], state: Dict[str, torch.Tensor]) -> None:
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        shape_bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        if missing or unexpected or shape_bad:
            raise TMBRBBundleError(
                f"The weights in '{self.path}' do not fit the architecture in its metadata "
                f"({len(missing)} missing, {len(unexpected)} unexpected, {len(shape_bad)} of other shape, "
                f"e.g. {(missing + unexpected + shape_bad)[:3]}). The bundle is mismatched: re-export it with "
                "`python -m training export` or use the bundle that came with TMBRB.")


def _load_weights(path: Path) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        raise TMBRBBundleError(f"The weights file '{path}' cannot be read ({e}). The bundle is corrupt: "
                               "restore it from its source.") from None


def load_bundle(path: Union[str, Path, None] = None, verify: bool = True) -> Bundle:
    """Load and verify a model bundle folder.

    Parameters
    ----------
    path : str or Path, optional
        The bundle folder (holding configs/metadata.json and models/model.safetensors). None means
        ``default_bundle_path()``: $TMBRB_MODEL when set, else the demo bundle shipped with the module.
    verify : bool, default True
        Check the weights against the sha256 in the metadata.

    Returns
    -------
    Bundle
        The bundle; ``Bundle.model(device)`` builds the network (once per device), ``Bundle.tmbrb`` is the metadata's
        ``tmbrb`` section.

    Raises
    ------
    TMBRBBundleError
        With a message that says what is wrong and what to do, when the folder or metadata is missing or broken, the
        format version is another, a section is missing, the ``cam`` settings or ``architecture.name`` are not known
        to this TMBRB, or the weights are missing or fail their checksum.

    Examples
    --------
    >>> b = load_bundle()  # the demo bundle shipped with TMBRB (when $TMBRB_MODEL is not set)
    >>> b.is_demo, b.tmbrb["architecture"]["name"], b.tmbrb["cam"]["method"]
    (True, 'TMBRBNet (MONAI DenseNet, 3D)', 'GradCAM-IxG')
    >>> len(b.sha256)
    64
    >>> load_bundle("no/such/folder")
    Traceback (most recent call last):
    ...
    TMBRBLib.errors.TMBRBBundleError: The model bundle 'no/such/folder' is not a folder. Give the folder that holds ...
    """
    p = Path(path) if path is not None else default_bundle_path()
    metadata = _read_metadata(p)
    t = metadata["tmbrb"]
    _check_sections(p, t)
    _check_values(p, t)
    w = p / WEIGHTS_PATH
    if not w.is_file():
        raise TMBRBBundleError(f"The model bundle '{p}' has no weights file {WEIGHTS_PATH}.")
    digest = sha256_file(w)
    expected = t["weights"].get("sha256")
    if verify and digest != expected:
        raise TMBRBBundleError(f"The weights of the model bundle '{p}' fail their checksum (sha256 {digest[:12]}..., "
                               f"metadata says {str(expected)[:12]}...). The file is corrupt or was replaced: "
                               "restore the bundle from its source.")
    integrity = check_files(p, known={WEIGHTS_PATH.as_posix(): digest})  # the weights are hashed once
    if integrity["status"] == "unverified" and digest in DEMO_WEIGHTS_SHA256:  # shipped with its checksums
        integrity = {**integrity, "status": "modified",
                     "message": f"MODIFIED BUNDLE: the demo model's {CHECKSUMS_PATH} was removed"}
    return Bundle(p, metadata, digest, integrity)


def check_files(path: Union[str, Path], known: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Compare a bundle's files with its checksums file (``checksums.sha256``, written at export).

    Parameters
    ----------
    path : str or Path
        The bundle folder.
    known : dict, optional
        ``{path inside the bundle: sha256}`` of files the caller has just hashed (not hashed again).

    Returns
    -------
    dict
        ``status``: "verified" (every listed file matches), "modified" (a listed file differs or is missing, or the
        checksums file is unreadable) or "unverified" (no checksums file: a bundle exported before TMBRB wrote
        them); ``changed`` and ``missing``: the files concerned (paths inside the bundle); ``message``: one sentence
        for a person (empty when verified).
    """
    p = Path(path)
    listing = p / CHECKSUMS_PATH
    if not listing.is_file():
        return {"status": "unverified", "changed": [], "missing": [],
                "message": f"the bundle has no {CHECKSUMS_PATH} (exported by an older TMBRB): its metadata cannot "
                           "be checked for edits"}
    entries = _read_checksums(listing)
    if entries is None or METADATA_PATH.as_posix() not in entries or WEIGHTS_PATH.as_posix() not in entries:
        return {"status": "modified", "changed": [CHECKSUMS_PATH.as_posix()], "missing": [],
                "message": f"MODIFIED BUNDLE: its {CHECKSUMS_PATH} is damaged or does not list the metadata and "
                           "weights"}
    changed, missing = [], []
    for name, digest in sorted(entries.items()):
        f = p / name
        if not f.is_file():
            missing.append(name)
        elif ((known or {}).get(name) or sha256_file(f)) != digest:
            changed.append(name)
    if not (changed or missing):
        return {"status": "verified", "changed": [], "missing": [], "message": ""}
    what = ", ".join(changed + [f"{m} (missing)" for m in missing])
    return {"status": "modified", "changed": changed, "missing": missing,
            "message": f"MODIFIED BUNDLE: {what} changed after export (cut-offs, name or notice may not be the "
                       "exporter's); results from it are not those of the model as published"}


def _read_checksums(listing: Path) -> Optional[Dict[str, str]]:
    """{path inside the bundle: sha256} from a `sha256sum`-format file; None when a line is malformed or unsafe."""
    entries: Dict[str, str] = {}
    try:
        text = listing.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    for line in text.splitlines():
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        name = name.lstrip("*")
        parts = Path(name).parts
        if (not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or not name
                or Path(name).is_absolute() or ".." in parts):
            return None
        entries[Path(name).as_posix()] = digest
    return entries


def write_checksums(path: Union[str, Path]) -> Path:
    """Write ``checksums.sha256`` for every file in the bundle folder ``path`` (metadata, weights, model card) and
    return its path. The format is `sha256sum`'s: ``cd BUNDLE && sha256sum -c checksums.sha256`` checks it."""
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file() and not f.is_symlink()
                   and f.relative_to(p) != CHECKSUMS_PATH and not f.name.endswith(".tmp"))
    text = "".join(f"{sha256_file(f)}  {f.relative_to(p).as_posix()}\n" for f in files)
    tmp = p / (CHECKSUMS_PATH.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(p / CHECKSUMS_PATH)
    return p / CHECKSUMS_PATH


def write_metadata(path: Union[str, Path], metadata: Dict[str, Any]) -> Path:
    """Replace a bundle's metadata (atomically) and write its checksums again: the one way tools edit a bundle.

    Parameters
    ----------
    path : str or Path
        The bundle folder.
    metadata : dict
        The whole metadata (as ``Bundle.metadata``).

    Returns
    -------
    Path
        The metadata file.
    """
    target = Path(path) / METADATA_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    tmp.replace(target)
    write_checksums(path)
    return target


def _read_metadata(p: Path) -> Dict[str, Any]:
    """The bundle's metadata.json, checked to be a TMBRB bundle of this format."""
    if not p.is_dir():
        raise TMBRBBundleError(f"The model bundle '{p}' is not a folder. Give the folder that holds "
                               "configs/metadata.json and models/model.safetensors.")
    meta_path = p / METADATA_PATH
    if not meta_path.is_file():
        raise TMBRBBundleError(f"The model bundle '{p}' has no {METADATA_PATH}. It is not a TMBRB bundle.")
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TMBRBBundleError(f"The metadata of the model bundle '{p}' is not valid JSON ({e}).") from None
    t = metadata.get("tmbrb") if isinstance(metadata, dict) else None
    if not isinstance(t, dict):
        raise TMBRBBundleError(f"The metadata of '{p}' has no 'tmbrb' section: it is not a TMBRB bundle.")
    fmt = t.get("bundle_format")
    if fmt != BUNDLE_FORMAT:
        raise TMBRBBundleError(f"The model bundle '{p}' has format {fmt!r}; this TMBRB reads format {BUNDLE_FORMAT}. "
                               "Use a TMBRB version that matches the bundle, or re-export the bundle.")
    return metadata


def _check_sections(p: Path, t: Dict[str, Any]) -> None:
    """The sections the engine needs are there, and the architecture and CAM they name are known."""
    for key in ("architecture", "preprocessing", "risk", "weights"):
        if key not in t:
            raise TMBRBBundleError(f"The metadata of '{p}' lacks the '{key}' section. Re-export the bundle.")
    arch = t["architecture"]
    try:
        if isinstance(arch, dict):
            architecture_class(arch.get("name", DEFAULT_ARCHITECTURE))
    except ValueError as e:
        raise TMBRBBundleError(f"The metadata of '{p}' cannot be used: {e}. Use a TMBRB version that has this "
                               "architecture, or re-export the bundle.") from None
    cam = t.get("cam")
    if not isinstance(cam, dict) or "target_layer" not in cam:
        raise TMBRBBundleError(f"The metadata of '{p}' lacks the 'cam' section (method, target_layer). "
                               "Re-export the bundle.")
    try:
        cam_settings_of(cam)
    except ValueError as e:
        raise TMBRBBundleError(f"The 'cam' settings in the metadata of '{p}' cannot be used: {e}. "
                               "Fix configs/metadata.json or re-export the bundle.") from None


# The bounds `bundle verify` (and every load) holds each value the engine reads to, when it is given: (section, key,
# kind, low, high). Kinds: "num" a finite number, "int" a whole number, "choice" one of the listed strings. Sizes are
# bounded so that building the network cannot exhaust memory (the paper's network: 32, 32, [6, 12, 24, 16], 2, 128).
_VALUE_RULES = (
    ("preprocessing", "mode", "choice", ("box_margin", "fixed_fov"), None),
    ("preprocessing", "margin_mm", "num", 0.0, 200.0),
    ("preprocessing", "min_fov_mm", "num", 1.0, 1000.0),
    ("preprocessing", "max_fov_mm", "num", 1.0, 1000.0),
    ("preprocessing", "fov_mm", "num", 1.0, 1000.0),
    ("preprocessing", "pad_hu", "num", -3100.0, 5000.0),
    ("preprocessing", "interpolation", "choice", ("linear", "nearest", "bspline"), None),
    ("preprocessing", "training_slice_mm_max", "num", 0.1, 20.0),
    ("architecture", "init_features", "int", 1, 256),
    ("architecture", "growth_rate", "int", 1, 256),
    ("architecture", "bn_size", "int", 1, 16),
    ("architecture", "hidden_features", "int", 1, 8192),
    ("architecture", "num_classes", "int", 2, 64),
    ("architecture", "n_features", "int", 1, 100000),
    ("architecture", "in_channels", "int", 1, 1),
    ("architecture", "spatial_dims", "int", 3, 3),
    ("architecture", "dropout_prob", "num", 0.0, 0.99),
    ("architecture", "classifier_dropout", "num", 0.0, 0.99),
    ("tta", "n_shifts", "int", 0, MAX_SHIFTS),
    ("tta", "shift_fraction", "num", 0.0, 1.0),
    ("tta", "max_shift_mm", "num", 0.0, 100.0),
    ("tta", "seed", "int", 0, 2**32 - 1),
    ("regions", "ring_width_mm", "num", 0.1, 50.0),
    ("proposal", "max_half_size_mm", "num", 1.0, 200.0),
    ("proposal", "margin_mm", "num", 0.0, 100.0),
)
_MAX_SHAPE = 256  # per axis of the model input; 64 in the paper
_MAX_BLOCKS, _MAX_LAYERS_PER_BLOCK = 8, 128
_RISK_OPERATORS = (">=", ">", "<=", "<")


def _bad_value(p: Path, where: str, value: Any, need: str) -> TMBRBBundleError:
    return TMBRBBundleError(f"The metadata of '{p}' has {where} = {json.dumps(value)}: it must be {need}. "
                            "Fix configs/metadata.json or re-export the bundle.")


def _is_finite_number(value: Any) -> bool:
    """A JSON number that is a finite float: not NaN, not infinite, not a whole number too large for a float."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int over about 1.8e308
        return False


def _check_number(p: Path, where: str, value: Any, kind: str, low: float, high: float) -> None:
    ok = _is_finite_number(value)
    if ok and kind == "int":
        ok = float(value) == int(value)
    if not ok or not low <= value <= high:
        raise _bad_value(p, where, value, f"a {'whole number' if kind == 'int' else 'finite number'} "
                                          f"from {low:g} to {high:g}")


def _check_range_pair(p: Path, where: str, value: Any, min_width: float) -> None:
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_finite_number(v) for v in value)
    if not ok or value[1] - value[0] < min_width:
        raise _bad_value(p, where, value, f"two finite numbers [low, high] with high - low of at least {min_width:g}")


def _check_values(p: Path, t: Dict[str, Any]) -> None:
    """Every value the engine reads is of the right kind and within bounds (a NaN score or cut-off cannot come out,
    and building the network cannot exhaust memory)."""
    if not isinstance(t["weights"], dict):
        raise _bad_value(p, "weights", t["weights"], "a section (a JSON object) with the weights' sha256")
    for section, key, kind, low, high in _VALUE_RULES:
        sec = t.get(section, {})
        if not isinstance(sec, dict):
            raise _bad_value(p, section, sec, "a section (a JSON object)")
        if key not in sec:
            continue
        if kind == "choice":
            if sec[key] not in low:
                raise _bad_value(p, f"{section}.{key}", sec[key], "one of " + ", ".join(map(repr, low)))
        else:
            _check_number(p, f"{section}.{key}", sec[key], kind, low, high)
    _check_preprocessing(p, t["preprocessing"])
    _check_architecture(p, t["architecture"])
    _check_risk(p, t["risk"])
    classes = t["architecture"].get("num_classes", 2)
    _check_number(p, "cam.class_index", t["cam"].get("class_index", 1), "int", 0, classes - 1)
    for where, sec, key, width in (("regions.tumour_hu_range", t.get("regions", {}), "tumour_hu_range", 1.0),
                                   ("proposal.hu_range", t.get("proposal", {}), "hu_range", 1.0)):
        if key in sec:
            _check_range_pair(p, where, sec[key], width)


def _check_preprocessing(p: Path, pre: Dict[str, Any]) -> None:
    if "hu_window" not in pre:
        raise _bad_value(p, "preprocessing.hu_window", None, "given ([low, high] HU)")
    _check_range_pair(p, "preprocessing.hu_window", pre["hu_window"], 1.0)  # zero width: 0/0 = NaN scores
    shape = pre.get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(
            isinstance(v, int) and not isinstance(v, bool) and 8 <= v <= _MAX_SHAPE for v in shape)):
        raise _bad_value(p, "preprocessing.shape", shape, f"three whole numbers from 8 to {_MAX_SHAPE} (z, y, x)")
    if pre.get("min_fov_mm", 0.0) > pre.get("max_fov_mm", 1000.0):
        raise _bad_value(p, "preprocessing.min_fov_mm", pre.get("min_fov_mm"), "at most max_fov_mm")


def _check_architecture(p: Path, arch: Any) -> None:
    import inspect
    if not isinstance(arch, dict):
        raise _bad_value(p, "architecture", arch, "a section (a JSON object)")
    cls = architecture_class(arch.get("name", DEFAULT_ARCHITECTURE))
    known = set(inspect.signature(cls).parameters) | {"name", "n_features"}
    unknown = sorted(set(arch) - known)
    if unknown:
        raise _bad_value(p, "architecture." + unknown[0], arch[unknown[0]], "absent: the network has no such "
                         f"setting (it takes {', '.join(sorted(known - {'name'}))})")
    blocks = arch.get("block_config", [6, 12, 24, 16])
    if not (isinstance(blocks, list) and 1 <= len(blocks) <= _MAX_BLOCKS and all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= _MAX_LAYERS_PER_BLOCK for v in blocks)):
        raise _bad_value(p, "architecture.block_config", blocks,
                         f"1 to {_MAX_BLOCKS} whole numbers from 1 to {_MAX_LAYERS_PER_BLOCK}")


def _check_risk(p: Path, risk: Any) -> None:
    if not isinstance(risk, dict):
        raise _bad_value(p, "risk", risk, "a section (a JSON object)")
    cox_models = risk.get("ecog_cox")
    if cox_models is not None and not isinstance(cox_models, dict):
        raise _bad_value(p, "risk.ecog_cox", cox_models, "a section (a JSON object) or absent")
    for ep in ("os", "pfs"):
        rule = risk.get(ep)
        if not isinstance(rule, dict):
            raise _bad_value(p, f"risk.{ep}", rule, "a section with cutoff, operator, group_if_true, group_if_false")
        _check_number(p, f"risk.{ep}.cutoff", rule.get("cutoff"), "num", 0.0, 1.0)
        if rule.get("operator") not in _RISK_OPERATORS:
            raise _bad_value(p, f"risk.{ep}.operator", rule.get("operator"), "one of " + ", ".join(_RISK_OPERATORS))
        for key in ("group_if_true", "group_if_false"):
            if not isinstance(rule.get(key), str) or not rule.get(key):
                raise _bad_value(p, f"risk.{ep}.{key}", rule.get(key), "a group name such as \"low\" or \"high\"")
        if "hr" in rule and rule["hr"] is not None:
            _check_number(p, f"risk.{ep}.hr", rule["hr"], "num", 1e-3, 1e3)
        cox = (cox_models or {}).get(ep)
        if cox is not None and not isinstance(cox, dict):
            raise _bad_value(p, f"risk.ecog_cox.{ep}", cox, "a section with tmbrb_hr and ecog_hr, or absent")
        if cox is not None:
            for key in ("tmbrb_hr", "ecog_hr"):
                _check_number(p, f"risk.ecog_cox.{ep}.{key}", cox.get(key), "num", 1e-3, 1e3)


def save_bundle(net: torch.nn.Module, path: Union[str, Path], metadata: Dict[str, Any], dtype: str = "float16",
                model_card: Optional[str] = None) -> Bundle:
    """Write a bundle: weights (safetensors, floating tensors stored as `dtype`), metadata with their sha256."""
    from safetensors.torch import save_file
    p = Path(path)
    (p / "models").mkdir(parents=True, exist_ok=True)
    (p / "configs").mkdir(parents=True, exist_ok=True)
    tdtype = {"float16": torch.float16, "float32": torch.float32}[dtype]
    state = {k: (v.detach().to("cpu", tdtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
             for k, v in net.state_dict().items()}
    save_file(state, str(p / WEIGHTS_PATH))
    meta = copy.deepcopy(metadata)
    meta["tmbrb"]["weights"] = {"file": WEIGHTS_PATH.as_posix(), "sha256": sha256_file(p / WEIGHTS_PATH),
                                "dtype": dtype}
    if model_card is not None:
        (p / "docs").mkdir(exist_ok=True)
        (p / "docs" / "README.md").write_text(model_card, encoding="utf-8")
    write_metadata(p, meta)  # also the checksums of every file
    return load_bundle(p)


def make_placeholder_bundle(path: Union[str, Path], seed: int = 0) -> Bundle:
    """An untrained bundle (random weights from a fixed seed): for tests, and loud about what it is."""
    meta = default_metadata()
    torch.manual_seed(seed)
    net = build_model(meta["tmbrb"]["architecture"])
    meta["tmbrb"]["training"] = {"note": "untrained: random initialisation", "seed": seed}
    card = "# TMBRB placeholder bundle\n\n" + PLACEHOLDER_NOTICE + "\n"
    return save_bundle(net, path, meta, model_card=card)
