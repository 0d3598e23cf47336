"""Run the TMBRB engine in a background process and read its JSON-lines progress (no Slicer, no Qt here).

The 3D Slicer module starts ``python -m TMBRBLib.cli score ... --progress jsonl`` through :class:`EngineProcess`, a
reader thread puts each stdout line on a queue, and the GUI drains the queue from a timer (the pattern
SlicerMONAIAuto3DSeg uses), so Slicer never freezes. :meth:`EngineProcess.cancel` really stops the computation: it
stops the whole process tree (:func:`stop_process_tree`, psutil). On Windows no console window opens
(:func:`popen_kwargs`). :class:`EngineJob` is one such run with what it
was started from and where it writes.
"""

from __future__ import annotations

import atexit
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


# libgomp's default spins 300,000 times at each wait: when other programs keep the cores busy the waiting threads
# burn the time slices the working ones need (the model ran 6x slower beside four busy programs)
OPENMP_SPIN_COUNT = 100_000


def engine_environment(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """This process's environment with TMBRBModule/ first on PYTHONPATH (so `-m TMBRBLib.cli` resolves).

    OpenMP's threads spin at most :data:`OPENMP_SPIN_COUNT` times before they sleep (``GOMP_SPINCOUNT``, read by
    the libgomp of Linux's torch builds), unless the environment sets ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY``.
    The model's two passes on 2 cores (benchmarks/bench_openmp_wait.py, a fresh process per setting): idle 1.18 s with
    libgomp's default, 1.17 s with 100,000 spins, 1.37 s with ``OMP_WAIT_POLICY=PASSIVE``; beside four busy
    programs 7.5 s, 1.09 s and 3.4 s.
    """
    env = dict(os.environ)
    if "GOMP_SPINCOUNT" not in env and "OMP_WAIT_POLICY" not in env:
        env["GOMP_SPINCOUNT"] = str(OPENMP_SPIN_COUNT)
    parts = [str(MODULE_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def stop_process_tree(proc: subprocess.Popen, grace_s: float = 3.0, force: bool = False) -> None:
    """Stop a process started by this one and everything it started: its children first, then itself; wait up to
    grace_s; kill what is left.

    On Windows ``proc.kill()`` stops only the PythonSlicer launcher, so the tree comes from psutil (a requirement of
    the module); on Linux and macOS the process group is signalled as well, which also reaches children that psutil
    can no longer see (their parent already gone). Without psutil the process group (POSIX) or the process alone
    (Windows) is stopped.

    Parameters
    ----------
    proc : subprocess.Popen
        The process (started with :func:`popen_kwargs`, so in its own process group).
    grace_s : float
        How long the processes may take to end after being asked (SIGTERM; TerminateProcess on Windows).
    force : bool
        Kill at once (SIGKILL) instead of asking first.
    """
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a requirement; kept so a missing install still stops the run
        psutil = None
    children = []
    if psutil is not None:
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            children = []

    def ask(sig_kill: bool) -> None:
        for child in reversed(children):  # the deepest first
            try:
                child.kill() if sig_kill else child.terminate()
            except psutil.Error:
                pass
        if os.name != "nt":
            try:
                os.killpg(proc.pid, signal.SIGKILL if sig_kill else signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        if proc.poll() is None:
            try:
                proc.kill() if sig_kill else proc.terminate()
            except OSError:
                pass

    ask(force)
    alive = children
    if psutil is not None and children:
        _gone, alive = psutil.wait_procs(children, timeout=grace_s)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    if alive or proc.poll() is None:
        ask(True)
        if psutil is not None and alive:
            psutil.wait_procs(alive, timeout=grace_s)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process that survives SIGKILL
            pass


def popen_kwargs(os_name: Optional[str] = None, sp=subprocess) -> Dict[str, Any]:
    """Popen arguments for an engine process: in its own process group (so it can be stopped with its children) and,
    on Windows, without a console window (as ``slicer.util.launchConsoleProcess`` does: STARTUPINFO with
    STARTF_USESHOWWINDOW and SW_HIDE, plus CREATE_NO_WINDOW).

    Parameters
    ----------
    os_name : str, optional
        ``os.name`` (default this system's).
    sp : module
        Where the Windows constants come from (``subprocess``).
    """
    if (os_name or os.name) == "nt":
        info = sp.STARTUPINFO()
        info.dwFlags |= sp.STARTF_USESHOWWINDOW
        info.wShowWindow = sp.SW_HIDE
        return {"startupinfo": info, "creationflags": sp.CREATE_NEW_PROCESS_GROUP | sp.CREATE_NO_WINDOW}
    return {"start_new_session": True}


def _parse_line(text: str) -> Dict:
    """One line the engine printed, as an event: its JSON object, or {'log': text}."""
    if text.startswith("{"):
        try:
            event = json.loads(text)
            if isinstance(event, dict):
                return event
        except ValueError:
            pass
    return {"log": text}


class EngineRun:
    """What a background run reports, read from its JSON-lines events: progress, message, result path, error, log.

    Subclasses fill ``_queue`` with events (from a reader thread) and say when they are ``finished`` and with what
    ``returncode``; :meth:`poll` drains the events from a timer and :meth:`wait` blocks (scripts and tests).
    """

    def __init__(self):
        self._queue: "queue.Queue[Dict]" = queue.Queue()
        self.cancelled = False
        self.result_path: Optional[str] = None
        self.error: Optional[str] = None
        self.log: List[str] = []
        self.progress = 0.0
        self.message = ""
        self.started_at: Optional[float] = None
        self.answer: Optional[Dict] = None  # the last 'done' event (a worker's answer to a device or case request)

    @property
    def finished(self) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def returncode(self) -> Optional[int]:  # pragma: no cover - overridden
        raise NotImplementedError

    def outcome(self) -> str:
        """'running', 'done', 'cancelled', 'input-error' or 'failed'."""
        if not self.finished:
            return "running"
        if self.cancelled or self.returncode == EXIT_CANCELLED:
            return "cancelled"
        if self.returncode == EXIT_OK and (self.result_path or self.answer is not None):
            return "done"
        if self.returncode == EXIT_INPUT:
            return "input-error"
        return "failed"

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
                self.answer = ev
            if "error" in ev:
                self.error = str(ev["error"])
            if "log" in ev:
                self.log.append(ev["log"])
                del self.log[:-200]
            events.append(ev)
        return events

    def wait(self, timeout: Optional[float] = None, on_event=None) -> int:
        """Block until the run ends (for scripts and tests); on_event(event) sees every event."""
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


class EngineProcess(EngineRun):
    """A background engine run. start(), then call poll() from a timer until finished; cancel() stops it."""

    def __init__(self, cmd: Sequence[str], env: Optional[Dict[str, str]] = None, cwd=None):
        super().__init__()
        self.cmd = list(cmd)
        self.env = env if env is not None else engine_environment()
        self.cwd = cwd
        self.proc: Optional[subprocess.Popen] = None
        self._thread: Optional[threading.Thread] = None

    # lifecycle -------------------------------------------------------------------------------------------------------
    def start(self) -> "EngineProcess":
        # own process group: cancel() kills the engine and its children
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.env, cwd=self.cwd, text=True, encoding="utf-8", errors="replace",
                                     bufsize=1, **popen_kwargs())
        self.started_at = time.time()
        self._thread = threading.Thread(target=self._read, name="TMBRB engine output", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            text = line.rstrip("\r\n")
            if text:
                self._queue.put(_parse_line(text))
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

    def cancel(self, grace_s: float = 3.0) -> None:
        """Stop the run: ask the process and everything it started to end, kill what is left after grace_s."""
        self.cancelled = True
        if self.proc is None or self.proc.poll() is not None:
            return
        stop_process_tree(self.proc, grace_s)

    def failure_message(self) -> str:
        if self.error:
            return self.error
        tail = "\n".join(self.log[-15:])
        return f"The engine process ended with exit code {self.returncode}." + (f"\n{tail}" if tail else "")


# ----------------------------------------------------------------------------------------------------------------------
# the warm engine: one long-lived worker process (TMBRBLib.worker) that keeps the model loaded


class WorkerRequest(EngineRun):
    """One case sent to an :class:`EngineWorker`; reads like an :class:`EngineProcess` (poll, outcome,
    failure_message, cancel, wait), so an :class:`EngineJob` and the JobWatcher drive it the same way."""

    def __init__(self, worker: "EngineWorker", rid: str, timeout_s: Optional[float]):
        super().__init__()
        self.worker, self.id, self.timeout_s = worker, rid, timeout_s
        self.proc = worker.proc  # the worker process that serves it
        self.started_at = time.time()
        self._ended = threading.Event()  # set by the worker's reader thread at the request's last answer
        self._returncode: Optional[int] = None

    def _answer(self, event: Dict) -> None:
        """An answer of the worker (reader thread)."""
        self._queue.put(event)
        if event.get("done") or "error" in event or event.get("cancelled"):
            self._end(EXIT_OK if event.get("done") else EXIT_CANCELLED if event.get("cancelled")
                      else EXIT_INPUT if event.get("kind") == "input" else EXIT_INTERNAL)

    def _end(self, code: int, error: Optional[str] = None) -> None:
        if self._ended.is_set():
            return
        if error is not None:
            self._queue.put({"error": error})
        self._returncode = code
        self._ended.set()

    @property
    def running(self) -> bool:
        """True until the worker has answered this request for the last time (or was stopped)."""
        return not self._ended.is_set()

    @property
    def returncode(self) -> Optional[int]:
        """As a process's exit code: 0 done, 2 refused input, 130 cancelled, 1 failed; None while running."""
        return self._returncode

    @property
    def finished(self) -> bool:
        return self._ended.is_set() and self._queue.empty()

    def poll(self) -> List[Dict]:
        """As :meth:`EngineRun.poll`; also fails the case (and stops the worker) once it has run past its timeout."""
        if self.running and self.timeout_s is not None and time.time() - self.started_at > self.timeout_s:
            self.worker.kill(f"the case did not finish within {self.timeout_s:g} s")
        return super().poll()

    def cancel(self, grace_s: Optional[float] = None) -> None:
        """Stop this case; the worker stays alive unless it does not answer within grace_s (then it is killed)."""
        self.cancelled = True
        if self.running:
            self.worker.cancel(self, grace_s)

    def failure_message(self) -> str:
        if self.error:
            return self.error
        tail = "\n".join(self.log[-15:])
        return f"The engine worker gave no result (code {self.returncode})." + (f"\n{tail}" if tail else "")


class EngineWorker:
    """The warm engine: one long-lived ``python -m TMBRBLib.worker`` process that keeps the model loaded.

    :meth:`submit` starts it on first use (and again after it ended: crashed, killed, timed out), sends one case as a
    JSON line and gives a :class:`WorkerRequest`. A reader thread puts the worker's answers on each request's queue.
    Cancel asks the worker to stop the case at its next step; a worker that does not answer within ``grace_s`` is
    killed with its process tree. :meth:`shutdown` (also registered with atexit) ends it.

    Parameters
    ----------
    python : str, optional
        The interpreter (default :func:`python_executable`: PythonSlicer inside 3D Slicer).
    env : dict, optional
        The worker's environment (default :func:`engine_environment`).
    grace_s : float
        How long a cancelled case may take to stop before the worker is killed.
    timeout_s : float or None
        Default time limit of one case (from its submission); past it the case fails and the worker is killed.
    """

    def __init__(self, python: Optional[str] = None, env: Optional[Dict[str, str]] = None, grace_s: float = 5.0,
                 timeout_s: Optional[float] = 600.0):
        self.python = python
        self.env = env
        self.grace_s, self.timeout_s = grace_s, timeout_s
        self.proc: Optional[subprocess.Popen] = None
        self.log: List[str] = []  # the worker's stderr (last lines) and what it printed that was not an answer
        self.starts = 0
        self._requests: Dict[str, WorkerRequest] = {}
        self._lock = threading.Lock()
        self._stop_reason: Optional[str] = None  # why the worker was stopped, said to the next request
        self._counter = 0
        self._atexit = False

    @property
    def pid(self) -> Optional[int]:
        return None if self.proc is None else self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> "EngineWorker":
        """Start the worker process unless it runs (it imports torch while the first request is on its way)."""
        if self.alive:
            return self
        self.proc = subprocess.Popen([self.python or python_executable(), "-m", "TMBRBLib.worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=self.env if self.env is not None else engine_environment(), text=True,
                                     encoding="utf-8", errors="replace", bufsize=1, **popen_kwargs())
        self.starts += 1
        self._stop_reason = None
        for target, stream in ((self._read_answers, self.proc.stdout), (self._read_log, self.proc.stderr)):
            threading.Thread(target=target, args=(self.proc, stream), name="TMBRB worker output", daemon=True).start()
        if not self._atexit:
            atexit.register(self.shutdown)
            self._atexit = True
        return self

    def _read_answers(self, proc: subprocess.Popen, stream) -> None:
        for line in stream:
            text = line.rstrip("\r\n")
            if not text:
                continue
            event = _parse_line(text)
            with self._lock:
                request = self._requests.get(str(event.get("id")))
            if request is not None:
                request._answer(event)
            elif "log" in event:
                self._log(event["log"])
        proc.wait()
        self._ended(proc)

    def _read_log(self, proc: subprocess.Popen, stream) -> None:
        for line in stream:
            self._log(line.rstrip("\r\n"))

    def _log(self, text: str) -> None:
        with self._lock:
            self.log.append(text)
            del self.log[:-200]

    def _ended(self, proc: subprocess.Popen) -> None:
        """A worker process has ended: every case it still had fails, saying why."""
        with self._lock:
            current = proc is self.proc
            if current and self._stop_reason is None:
                self._stop_reason = f"the engine worker ended unexpectedly (exit code {proc.returncode})"
            reason = self._stop_reason if current else "the engine worker was replaced"
            mine = [r for r in self._requests.values() if r.proc is proc]
            for r in mine:
                del self._requests[r.id]
            tail = "\n".join(self.log[-15:])
        for request in mine:
            if request.cancelled:
                request._end(EXIT_CANCELLED)
            elif request.running:
                message = f"The case was stopped: {reason}. The engine starts again on the next Apply."
                request._end(EXIT_INTERNAL, message + (f"\n{tail}" if tail and "unexpectedly" in reason else ""))

    def submit(self, request: Dict[str, Any], timeout_s: Optional[float] = None, op: str = "score") -> WorkerRequest:
        """Send one request (the fields of a TMBRBLib.worker request of kind ``op``: 'score', 'case' or 'device';
        without 'id'); start the worker first when it does not run. ``timeout_s`` (default the worker's) limits
        it."""
        message = "queued"
        if not self.alive:
            message = "starting the engine"
            if self.starts:
                message = f"The engine had stopped ({self._stop_reason or 'it ended'}); starting it again."
            self.start()
        self._counter += 1
        run = WorkerRequest(self, f"{os.getpid()}-{self._counter}", self.timeout_s if timeout_s is None else timeout_s)
        run.message = message
        if self.starts > 1 and message != "queued":
            run.log.append(message)
        with self._lock:
            self._requests[run.id] = run
        self._send(dict(request, op=op, id=run.id))
        return run

    def _send(self, message: Dict) -> bool:
        try:
            assert self.proc is not None and self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
            return True
        except (OSError, ValueError, AssertionError):  # the worker is gone: its reader thread fails the request
            return False

    def cancel(self, run: WorkerRequest, grace_s: Optional[float] = None) -> None:
        """Ask the worker to stop the case; kill the worker when it does not answer within grace_s."""
        grace = self.grace_s if grace_s is None else grace_s
        if self._send({"op": "cancel", "id": run.id}) and run._ended.wait(grace):
            return
        self.kill(f"it did not stop within {grace:g} s of Cancel")

    def kill(self, reason: str) -> None:
        """Stop the worker and everything it started (its cases fail, saying ``reason``); the next submit starts a
        new one."""
        with self._lock:
            self._stop_reason = reason
        proc = self.proc
        if proc is not None and proc.poll() is None:
            stop_process_tree(proc, grace_s=10.0, force=True)
        if proc is not None:
            self._ended(proc)  # at once, not only when the reader thread gets there

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """End the worker: ask it to stop, kill it if it has not ended within timeout_s. Safe to call twice."""
        if self._atexit:
            atexit.unregister(self.shutdown)
            self._atexit = False
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        self._stop_reason = "the engine was shut down"
        self._send({"op": "shutdown"})
        try:
            proc.stdin.close()
        except (OSError, AttributeError):
            pass
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill("the engine was shut down")


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
