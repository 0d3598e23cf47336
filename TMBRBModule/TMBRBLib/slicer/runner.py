"""Run the TMBRB engine in a background process and read its JSON-lines progress (no Slicer, no Qt here).

The 3D Slicer module starts ``python -m TMBRBLib.cli score ... --progress jsonl`` through :class:`EngineProcess`, a
reader thread puts each stdout line on a queue, and the GUI drains the queue from a timer (the pattern
SlicerMONAIAuto3DSeg uses), so Slicer never freezes. :meth:`EngineProcess.cancel` really stops the computation: it
kills the whole process group (the engine and anything it started). :class:`EngineJob` is one such run with what it
was started from and where it writes.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

MODULE_DIR = Path(__file__).resolve().parents[2]  # TMBRBModule/ (holds TMBRBLib/)

# exit codes of TMBRBLib.cli
EXIT_OK, EXIT_INTERNAL, EXIT_INPUT, EXIT_CANCELLED = 0, 1, 2, 130


def python_executable() -> str:
    """The Python to run the engine with: inside 3D Slicer its 'PythonSlicer' launcher (sys.executable there is the
    application), else this interpreter."""
    exe = Path(sys.executable)
    if exe.stem.lower().startswith("python"):
        return str(exe)
    for candidate in (exe.parent / "PythonSlicer", exe.parent / "PythonSlicer.exe",
                      exe.parent.parent / "bin" / "PythonSlicer", exe.parent.parent / "bin" / "PythonSlicer.exe"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("PythonSlicer")
    return found or str(exe)


def _fmt(values: Sequence[float]) -> str:
    return ",".join(repr(float(v)) for v in values)


def score_command(ct_path, seed_lps: Sequence[float], out_dir, box_lps=None, segmentation_path=None, ecog=None,
                  model=None, device: str = "auto", shifts: Optional[int] = None, pictures: bool = False,
                  python: Optional[str] = None) -> List[str]:
    """The command line of one background scoring run (LPS coordinates, JSON-lines progress)."""
    cmd = [python or python_executable(), "-m", "TMBRBLib.cli", "score", "--ct", str(ct_path),
           "--seed-lps", _fmt(seed_lps), "--out", str(out_dir), "--progress", "jsonl", "--device", str(device)]
    if box_lps is not None:
        lo, hi = (box_lps.min, box_lps.max) if hasattr(box_lps, "min") else box_lps
        cmd += ["--box-lps", _fmt(list(lo) + list(hi))]
    if segmentation_path is not None:
        cmd += ["--segmentation", str(segmentation_path)]
    if ecog is not None:
        cmd += ["--ecog", str(ecog)]
    if model is not None:
        cmd += ["--model", str(model)]
    if shifts is not None:
        cmd += ["--shifts", str(int(shifts))]
    if not pictures:
        cmd += ["--no-pictures"]
    return cmd


def engine_environment(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """This process's environment with TMBRBModule/ first on PYTHONPATH (so `-m TMBRBLib.cli` resolves)."""
    env = dict(os.environ)
    parts = [str(MODULE_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class EngineProcess:
    """A background engine run. start(), then call poll() from a timer until finished; cancel() stops it."""

    def __init__(self, cmd: Sequence[str], env: Optional[Dict[str, str]] = None, cwd=None):
        self.cmd = list(cmd)
        self.env = env if env is not None else engine_environment()
        self.cwd = cwd
        self.proc: Optional[subprocess.Popen] = None
        self._queue: "queue.Queue[Dict]" = queue.Queue()
        self._thread: Optional[threading.Thread] = None
        self.cancelled = False
        self.result_path: Optional[str] = None
        self.error: Optional[str] = None
        self.log: List[str] = []
        self.progress = 0.0
        self.message = ""
        self.started_at: Optional[float] = None

    # lifecycle -------------------------------------------------------------------------------------------------------
    def start(self) -> "EngineProcess":
        kwargs = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        else:
            kwargs["start_new_session"] = True  # own process group: cancel() kills the engine and its children
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.env, cwd=self.cwd, text=True, encoding="utf-8", errors="replace",
                                     bufsize=1, **kwargs)
        self.started_at = time.time()
        self._thread = threading.Thread(target=self._read, name="TMBRB engine output", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            text = line.rstrip("\r\n")
            if not text:
                continue
            event: Dict
            if text.startswith("{"):
                try:
                    event = json.loads(text)
                    if not isinstance(event, dict):
                        event = {"log": text}
                except ValueError:
                    event = {"log": text}
            else:
                event = {"log": text}
            self._queue.put(event)
        self.proc.wait()
        self._queue.put({"exit": self.proc.returncode})

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> Optional[int]:
        return None if self.proc is None else self.proc.poll()

    @property
    def finished(self) -> bool:
        """True once the process has ended and all its output has been read."""
        return self.proc is not None and self.proc.poll() is not None and \
            (self._thread is None or not self._thread.is_alive()) and self._queue.empty()

    def poll(self) -> List[Dict]:
        """Drain the output read so far; update progress/message/result_path/error. Never blocks."""
        events = []
        while True:
            try:
                ev = self._queue.get_nowait()
            except queue.Empty:
                break
            if "progress" in ev:
                try:
                    self.progress = float(ev["progress"])
                except (TypeError, ValueError):
                    pass
                self.message = str(ev.get("message", ""))
            if ev.get("done"):
                self.result_path = ev.get("result")
            if "error" in ev:
                self.error = str(ev["error"])
            if "log" in ev:
                self.log.append(ev["log"])
                del self.log[:-200]
            events.append(ev)
        return events

    def wait(self, timeout: Optional[float] = None, on_event=None) -> int:
        """Block until the process ends (for scripts and tests); on_event(event) sees every event."""
        deadline = None if timeout is None else time.time() + timeout
        while True:
            for ev in self.poll():
                if on_event is not None:
                    on_event(ev)
            if self.finished:
                for ev in self.poll():
                    if on_event is not None:
                        on_event(ev)
                return int(self.returncode)
            if deadline is not None and time.time() > deadline:
                raise TimeoutError(f"the engine did not finish within {timeout} s")
            time.sleep(0.05)

    def cancel(self, grace_s: float = 3.0) -> None:
        """Stop the run: terminate the process group, kill it if it does not end within grace_s."""
        self.cancelled = True
        if self.proc is None or self.proc.poll() is not None:
            return
        self._signal(signal.SIGTERM if os.name != "nt" else None)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL if os.name != "nt" else None)
            self.proc.wait(timeout=grace_s)

    def _signal(self, sig) -> None:
        assert self.proc is not None
        try:
            import psutil  # optional: also catches children that left the process group
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except Exception:  # noqa: BLE001 - psutil missing or process gone
            children = []
        if os.name == "nt":
            for c in children:
                try:
                    c.kill()
                except Exception:  # noqa: BLE001
                    pass
            self.proc.kill()
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        for c in children:
            try:
                c.send_signal(sig)
            except Exception:  # noqa: BLE001
                pass

    # outcome ---------------------------------------------------------------------------------------------------------
    def outcome(self) -> str:
        """'running', 'done', 'cancelled', 'input-error' or 'failed'."""
        if not self.finished:
            return "running"
        if self.cancelled or self.returncode == EXIT_CANCELLED:
            return "cancelled"
        if self.returncode == EXIT_OK and self.result_path:
            return "done"
        if self.returncode == EXIT_INPUT:
            return "input-error"
        return "failed"

    def failure_message(self) -> str:
        if self.error:
            return self.error
        tail = "\n".join(self.log[-15:])
        return f"The engine process ended with exit code {self.returncode}." + (f"\n{tail}" if tail else "")


# ----------------------------------------------------------------------------------------------------------------------
# a job: one background run, what it was started from, where it writes


@dataclass
class JobInputs:
    """What a background run was started from: the scene's nodes (kept to show the result on them, and to run the
    same case again) and the engine settings."""

    volume: Any = None
    seed: Any = None
    roi: Any = None
    segmentation: Any = None
    ecog: Optional[int] = None
    numberOfShifts: Optional[int] = None
    device: str = "auto"
    bundle: Any = None
    warnings: List[str] = field(default_factory=list)  # found while checking the inputs, shown with the result


@dataclass
class EngineJob:
    """One background scoring run.

    ``process`` is the engine process; ``workDir`` holds the inputs written for it and ``outputDir`` (inside it)
    its outputs; ``state`` is 'running' until the process has ended, then its outcome ('done', 'cancelled',
    'input-error' or 'failed'). ``ownsWorkDir``: the folder was made for this job and is removed by cleanup().
    """

    process: EngineProcess
    workDir: Path
    outputDir: Path
    inputs: JobInputs
    ownsWorkDir: bool = False
    startedAt: float = field(default_factory=time.time)
    state: str = "running"

    @property
    def progress(self) -> float:
        return self.process.progress

    @property
    def message(self) -> str:
        return self.process.message

    @property
    def elapsed(self) -> float:
        return time.time() - self.startedAt

    @property
    def resultPath(self) -> Optional[Path]:
        return Path(self.process.result_path) if self.process.result_path else None

    def poll(self) -> str:
        """Read what the engine printed so far (never blocks); returns and stores the state."""
        self.process.poll()
        self.state = self.process.outcome()
        return self.state

    def cancel(self) -> None:
        self.process.cancel()
        self.state = "cancelled"

    def cleanup(self) -> None:
        """Stop the process if it still runs; remove the work folder if the job made it."""
        if self.process.running:
            self.cancel()
        if self.ownsWorkDir:
            shutil.rmtree(self.workDir, ignore_errors=True)
