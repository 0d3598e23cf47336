"""A long-lived engine process: the model loaded once, cases served as JSON lines (``python -m TMBRBLib.worker``).

The 3D Slicer module and the browser viewer keep scoring in a separate process (a crash or an out-of-memory there
cannot take the application down), but starting a process per case costs the import of torch and MONAI and the
loading of the model, each time. This worker pays that once and then serves requests, one JSON object per line on
stdin; it answers one JSON object per line on stdout, each carrying the request's ``id``:

- ``{"op": "score", "id": "r1", "ct": "ct.nrrd", "seed_lps": [x, y, z], "out": "folder", "box_lps": [[min], [max]],
  "segmentation": "mask.nrrd", "ecog": 1, "shifts": 8, "model": "bundle folder", "device": "auto",
  "ring_mm": 10, "pictures": false, "volumes": "full"}`` (only ``id``, ``ct``, ``seed_lps`` and ``out`` are
  required) scores one case with the same steps as ``tmbrb score`` (:func:`TMBRBLib.pipeline.score_to_folder`) and
  writes the same files; with ``"volumes": "regions"`` (and no pictures) the map, tumour and ring are written as the
  region of the CT's grid they live in (:func:`write_region_outputs`: a front end that reads them at once and
  removes the folder skips writing and reading three full-grid volumes); ``"regions_out": "folder"`` writes those
  regions there too, with ``regions.json`` (``region_index_lo``, ``files`` and ``request``, the request's id), next
  to the full outputs (a front end that keeps the output folder reads the regions of its own request and removes
  that folder).
  Answers: ``{"id", "progress", "message"}`` lines, then ``{"id", "done": true, "result": ".../result.json",
  "timings_s": {"read_ct", "score", "write"}}``, or ``{"id", "error": message, "kind": "input"|"internal"}``, or
  ``{"id", "cancelled": true}``.
- ``{"op": "save", "id": "s1", "of": "r1", "out": "folder", "pictures": true}`` writes the full outputs of the
  last case scored (request ``r1``; ``tmbrb score``'s files, pictures included unless false) into ``folder``, from
  the result held in memory: a front end scores with ``"volumes": "regions"`` and pays for the full-grid files only
  when the user saves. Answers ``{"id", "done": true, "result": ".../result.json"}``, or an input error when the
  worker no longer holds that case (it keeps only the last one).
- ``{"op": "cancel", "id": "r1"}`` stops that request at its next step (a reader thread sets the flag that
  ``score_case`` polls); the worker stays alive.
- ``{"op": "device", "id": "d1", "device": "auto"}`` answers ``{"id", "done": true, "device": {"device": "cuda:0"
  or "cpu", "name": GPU name or "CPU", "reason": why the CPU ("" on a GPU), "gpus": [names],
  "cuda_visible_devices": the variable as the worker sees it}}`` (:func:`device_info`).
- ``{"op": "case", "id": "c1", "row": {manifest row}, "number": 1, "base": "manifest folder", "out": "batch output
  folder", "model", "device", "shifts", "ring_mm", "pictures"}`` scores one manifest row as ``tmbrb batch`` does
  (resume on the inputs key, folder replaced whole) and answers ``{"id", "done": true, "row": {summary row}}``.
- ``{"op": "shutdown"}`` (or the end of stdin) ends the worker.

The loaded model is kept per (bundle folder, device): a request for another bundle or device loads that one instead.
The CT is kept per (file, modification time, size): a front end writes a volume once and sends the same file again.
On start the worker prints ``{"ready": true, "pid": ...}``. Everything else the process prints (library warnings,
tracebacks) goes to stderr, so stdout carries only the protocol.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Set, TextIO, Tuple

from .errors import TMBRBCancelled, TMBRBError, TMBRBInputError

REQUIRED_FIELDS = ("id", "ct", "seed_lps", "out")
# the volumes of a "regions" answer: result.json's ``files`` names them; ``region_index_lo`` is where they start
REGION_FILES = {"cam": "cam_region.nrrd", "tumour": "tumour_region.nrrd", "ring": "ring_region.nrrd",
                "crop": "crop.nrrd"}


class CtCache:
    """The CTs read last, keyed by (resolved path, modification time, size): a changed file is read again."""

    def __init__(self, size: int = 2):
        self.size = size
        self._items: Dict[Tuple[str, int, int], Tuple[Any, list]] = {}
        self.reads = 0

    def get(self, path) -> Tuple[Any, list]:
        """(CT image, reading warnings), from the cache when the file has not changed."""
        from .io import read_ct

        p = Path(path).resolve()
        try:
            st = p.stat()
        except OSError:
            raise TMBRBInputError(f"The CT file '{path}' does not exist.", "Give an existing CT file.") from None
        key = (str(p), st.st_mtime_ns, st.st_size)
        if key not in self._items:
            ct, warnings = read_ct(p)
            self.reads += 1
            self._items[key] = (ct, list(warnings))
            while len(self._items) > self.size:
                del self._items[next(iter(self._items))]
        return self._items[key]


class ScorerCache:
    """One loaded model (a :class:`TMBRBLib.pipeline.Scorer`), kept while requests name the same bundle and device."""

    def __init__(self):
        self.key: Optional[Tuple[str, str]] = None
        self.scorer = None
        self.loads = 0

    def get(self, model, device: str):
        from .bundle import default_bundle_path, load_bundle
        from .pipeline import Scorer

        path = Path(model) if model else default_bundle_path()
        key = (str(path.resolve()) if path.exists() else str(path), str(device))
        if key != self.key:
            self.key, self.scorer = None, None  # the old model is freed before the new one loads
            self.scorer = Scorer(load_bundle(model), device)
            self.key = key
            self.loads += 1
        return self.scorer


def _box(value):
    if value is None:
        return None
    try:
        lo, hi = value
        return tuple(float(v) for v in lo), tuple(float(v) for v in hi)
    except (TypeError, ValueError):
        raise TMBRBInputError(f"The box {value!r} is not two corners of three numbers.",
                              "Send box_lps as [[xmin, ymin, zmin], [xmax, ymax, zmax]].") from None


class Worker:
    """Serves score requests read from ``inp`` and writes answers to ``out`` (both text streams of JSON lines).

    The reader thread reads every line as it comes: 'cancel' and 'shutdown' act at once, 'score' requests wait in a
    queue and the main thread (:meth:`serve`) scores them one at a time.
    """

    def __init__(self, inp: TextIO, out: TextIO):
        self.inp, self.out = inp, out
        self._lock = threading.Lock()
        self._queue: "queue.Queue[Optional[str]]" = queue.Queue()  # ids of score requests, in order
        self._pending: Dict[str, Dict] = {}  # requests read and not started yet
        self._current: Optional[str] = None  # the request being scored
        self._cancelled: Set[str] = set()
        self.cts = CtCache()
        self.scorers = ScorerCache()
        self.last: Optional[Dict[str, Any]] = None  # the last case scored: id, result, CT, request (for 'save')

    def send(self, **event) -> None:
        line = json.dumps(event)
        with self._lock:
            self.out.write(line + "\n")
            self.out.flush()

    def _read(self) -> None:
        for line in self.inp:
            line = line.strip()
            if not line:
                continue
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("not an object")
            except ValueError:
                self.send(error=f"The worker could not read the request line {line[:200]!r} (one JSON object per "
                          "line is expected).", kind="internal")
                continue
            op = request.get("op", "score")
            if op == "shutdown":
                break
            if op == "cancel":
                self._cancel(str(request.get("id")))
            else:
                rid = str(request.get("id"))
                with self._lock:
                    self._pending[rid] = request
                self._queue.put(rid)
        self._queue.put(None)

    def _cancel(self, rid: str) -> None:
        """A request not started yet is dropped and answered at once; the running one stops at its next step."""
        with self._lock:
            dropped = self._pending.pop(rid, None) is not None
            if not dropped and rid == self._current:
                self._cancelled.add(rid)
        if dropped:
            self.send(id=rid, cancelled=True)

    def serve(self) -> int:
        """Announce readiness, then score requests until 'shutdown' or the end of the input. Returns 0."""
        threading.Thread(target=self._read, name="TMBRB worker requests", daemon=True).start()
        self.send(ready=True, pid=os.getpid())
        from . import pipeline  # noqa: F401 - torch and MONAI, imported while the first request may be on its way

        while True:
            rid = self._queue.get()
            if rid is None:
                return 0
            with self._lock:
                request = self._pending.pop(rid, None)
                self._current = rid if request is not None else None
            if request is not None:  # else: cancelled before it started (answered already)
                self.handle(request)
                with self._lock:
                    self._current = None

    def handle(self, request: Dict) -> None:
        """Score one request and answer done, error or cancelled (never raises)."""
        rid = str(request.get("id"))
        cancel: Callable[[], bool] = lambda: rid in self._cancelled  # noqa: E731 - read by score_case at each step
        try:
            op = request.get("op", "score")
            if op == "device":
                self.send(id=rid, done=True, device=device_info(request.get("device") or "auto"))
                return
            if op == "case":
                self.send(id=rid, progress=0.0, message="scoring")  # the case's own time starts here
                self.send(id=rid, done=True, row=self._case(request, cancel))
                return
            if op == "save":
                self.send(id=rid, done=True, result=str(self._save(request)["result"]))
                return
            if op != "score":
                raise TMBRBInputError(f"Unknown request '{op}'.",
                                      "Send op 'score', 'save', 'case', 'device' or 'cancel'.")
            missing = [k for k in REQUIRED_FIELDS if request.get(k) in (None, "")]
            if missing:
                raise TMBRBInputError(f"The request lacks {', '.join(missing)}.", "Send every required field.")
            written, timings = self._score(request, rid, cancel)
            self.send(id=rid, done=True, result=str(written["result"]), timings_s=timings)
        except TMBRBCancelled:
            self.send(id=rid, cancelled=True)
        except (TMBRBError, ValueError) as e:
            self.send(id=rid, error=str(e), kind="input")
        except Exception as e:  # noqa: BLE001 - reported on the request; the worker serves the next one
            traceback.print_exc(file=sys.stderr)
            self.send(id=rid, error=f"internal error ({type(e).__name__}: {e}).", kind="internal")
        finally:
            with self._lock:
                self._cancelled.discard(rid)

    def _case(self, request: Dict, cancel: Callable[[], bool]) -> Dict:
        """One manifest row as ``tmbrb batch`` scores it (TMBRBLib.batch); its summary row. A cancel stops it
        between the engine's steps (TMBRBCancelled), so the worker stays warm."""
        from .batch import run_case, row_to_case

        number = int(request.get("number") or 1)
        case = row_to_case(dict(request.get("row") or {}), Path(request.get("base") or "."), number)
        scorer = self.scorers.get(request.get("model"), request.get("device") or "auto")
        shifts = request.get("shifts")
        row = run_case((case, case["case_id"], ""), Path(request["out"]), scorer, scorer.bundle,
                        None if shifts is None else int(shifts), request.get("ring_mm"),
                        bool(request.get("pictures", False)), cancel=cancel)
        return dict(row, row=number)

    def _score(self, request: Dict, rid: str, cancel: Callable[[], bool]) -> Tuple[Dict, Dict[str, float]]:
        """(files written, seconds spent reading the CT, scoring and writing)."""
        import time

        from .outputs import write_outputs
        from .pipeline import score_to_folder
        from .risk import check_ecog

        def progress(fraction: float, message: str) -> None:
            self.send(id=rid, progress=round(float(fraction), 3), message=message)

        if cancel():
            raise TMBRBCancelled("Cancelled by the user.")
        ecog = check_ecog(request.get("ecog"))
        volumes = request.get("volumes") or "full"
        if volumes not in ("full", "regions"):
            raise TMBRBInputError(f"Unknown volumes {volumes!r}.", "Send volumes 'full' or 'regions'.")
        pictures = bool(request.get("pictures", False))
        timings = {"read_ct": time.perf_counter()}
        progress(0.0, "reading the CT")
        ct, warnings = self.cts.get(request["ct"])
        timings["read_ct"] = time.perf_counter() - timings["read_ct"]
        progress(0.01, "loading the model")
        scorer = self.scorers.get(request.get("model"), request.get("device") or "auto")
        shifts = request.get("shifts")
        full = volumes == "full" or pictures

        def writer(result, out_dir, **options):
            t = time.perf_counter()
            written = write_outputs(result, out_dir, **options) if full else write_region_outputs(result, out_dir)
            if request.get("regions_out"):
                write_region_volumes(result, request["regions_out"])
                _write_json(Path(request["regions_out"]) / "regions.json",
                            {"files": REGION_FILES, "region_index_lo": [int(v) for v in result.cam_region.lo],
                             "request": rid})
            timings["write"] = time.perf_counter() - t
            return written

        t0 = time.perf_counter()
        result, written = score_to_folder(
            ct, request["seed_lps"], request["out"], _box(request.get("box_lps")), request.get("segmentation"),
            ecog, ct_path=request["ct"], ct_warnings=warnings, pictures=pictures, progress=progress, cancel=cancel,
            writer=writer, scorer=scorer, n_shifts=None if shifts is None else int(shifts),
            ring_width_mm=request.get("ring_mm"), ct_checked=True)  # read_ct checked it
        timings["score"] = time.perf_counter() - t0 - timings.get("write", 0.0)
        self.last = {"id": rid, "result": result, "ct": ct, "request": request}
        return written, {k: round(v, 4) for k, v in timings.items()}

    def _save(self, request: Dict) -> Dict[str, Path]:
        """The full outputs of the last case scored (``"of"``: its request id), as ``tmbrb score`` writes them,
        into ``"out"``; the files written."""
        from .outputs import check_out_dir, write_outputs

        last = self.last
        if last is None or str(request.get("of")) != last["id"]:
            raise TMBRBInputError("The engine no longer holds that result (it keeps the last case it scored, and a "
                                  "restarted engine keeps none).", "Press Apply again, then save.")
        if request.get("out") in (None, ""):
            raise TMBRBInputError("The save request lacks out.", "Send the folder to write the outputs to.")
        scored = last["request"]
        check_out_dir(request["out"], [scored["ct"], scored.get("segmentation")])  # never replace an input
        return write_outputs(last["result"], request["out"], ct=last["ct"],
                             pictures=bool(request.get("pictures", True)))


def write_region_outputs(result, out_dir) -> Dict[str, Path]:
    """result.json and the case's volumes as the region of the CT's grid they live in, for a front end.

    The class activation map, the tumour and the ring are written as the region that holds them (the crop and a
    ring's width around the box; uncompressed NRRDs with the region's own origin), not as full-grid volumes: a
    front end that reads them at once and removes the folder places them on the CT's grid itself. result.json is
    ``CaseResult.to_dict()`` as ``outputs.result_record`` records it (no absolute path) with ``files`` naming them
    (:data:`REGION_FILES`) and ``region_index_lo``, the index (x, y, z) on the CT's grid where the region starts; it
    is written last, whole.

    Parameters
    ----------
    result : CaseResult
        The scored case.
    out_dir : str or Path
        The folder (made when missing); a link planted under one of the names is removed, not written through.

    Returns
    -------
    dict
        The paths written, by kind (cam, tumour, ring, crop, result).
    """
    from .outputs import result_record

    written = write_region_volumes(result, out_dir)
    d = result_record(result.to_dict(), out_dir)
    d["files"] = dict(REGION_FILES, result="result.json")
    d["region_index_lo"] = [int(v) for v in result.cam_region.lo]
    written["result"] = _write_json(Path(out_dir) / "result.json", d)
    return written


def write_region_volumes(result, folder) -> Dict[str, Path]:
    """The map, tumour, ring (regions of the CT's grid) and crop of a scored case as uncompressed NRRDs named
    :data:`REGION_FILES` in ``folder`` (made when missing; a link planted under a name is removed, not written
    through). Returns the paths by kind."""
    import SimpleITK as sitk

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    images = {"cam": result.cam_region.region_image(), "tumour": result.tumour_region.region_image(),
              "ring": result.ring_region.region_image(), "crop": result.crop}
    written: Dict[str, Path] = {}
    for kind, name in REGION_FILES.items():
        written[kind] = out / name
        if written[kind].is_symlink():
            written[kind].unlink()
        sitk.WriteImage(images[kind], str(written[kind]), useCompression=False)
    return written


def _write_json(path: Path, content: Dict) -> Path:
    """``content`` as JSON at ``path``, whole: written beside it, then renamed over it (links are not followed)."""
    part = path.with_name(path.name + ".part")
    for p in (part, path):
        if p.is_symlink():
            p.unlink()
    part.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    part.replace(path)
    return path


def device_info(requested: str = "auto") -> Dict[str, Any]:
    """What a case asking for ``requested`` runs on in this process, and why the CPU when it is the CPU.

    Parameters
    ----------
    requested : str
        "auto", "cpu", "cuda", "cuda:1"...

    Returns
    -------
    dict
        device ("cuda:0", "cpu"...), name (the GPU's name, or "CPU"), reason (why the CPU; "" on a GPU), gpus (the
        names of the GPUs this process sees), cuda_visible_devices (the variable, or None when unset).
    """
    import torch

    from .model import select_device

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() \
        else []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    info = {"gpus": gpus, "cuda_visible_devices": visible}
    device = select_device(requested)
    if device.type == "cuda":
        index = device.index or 0
        name = gpus[index] if index < len(gpus) else "GPU"
        return dict(info, device=f"cuda:{index}", name=name, reason="")
    if str(requested).lower() == "cpu":
        reason = "the CPU was chosen (force CPU)"
    elif visible is not None and visible.strip() in ("", "-1"):
        reason = "no GPU is visible to the engine (CUDA_VISIBLE_DEVICES is empty: CPU forced)"
    elif torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        reason = f"this PyTorch ({torch.__version__}) is built without GPU support"
    else:
        reason = "no CUDA GPU was found (none in this computer, or its driver is missing or too old for this PyTorch)"
    return dict(info, device=device.type, name="CPU", reason=reason)


def protocol_streams() -> Tuple[TextIO, TextIO]:
    """(requests, answers): this process's stdin, and its stdout kept for the protocol alone; whatever else writes
    to stdout (Python or C libraries) goes to stderr from now on."""
    import io

    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8"), answers


def main() -> int:
    """Run the worker on this process's stdin/stdout (``python -m TMBRBLib.worker``)."""
    inp, out = protocol_streams()
    return Worker(inp, out).serve()


if __name__ == "__main__":
    sys.exit(main())
