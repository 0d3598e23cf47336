"""Engine processes are stopped with their whole process tree (psutil) and open no console window on Windows."""

from __future__ import annotations

import subprocess
import sys
import time
import types

import pytest

from TMBRBLib.slicer import runner
from TMBRBLib.slicer.runner import EngineProcess, popen_kwargs, stop_process_tree

psutil = pytest.importorskip("psutil")

# a parent that starts a grandchild (which ignores SIGTERM when asked to), prints its pid, then waits
PARENT = r"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import signal, sys, time\nif sys.argv[1] == 'stubborn': signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "time.sleep(600)", sys.argv[1]])
print(child.pid, flush=True)
time.sleep(600)
"""


def gone(pid: int) -> bool:
    if not psutil.pid_exists(pid):
        return True
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # ended, not yet reaped by its new parent
    except psutil.NoSuchProcess:
        return True


def start_tree(mode: str):
    run = EngineProcess([sys.executable, "-c", PARENT, mode]).start()
    deadline = time.time() + 30
    while not run.log and time.time() < deadline:
        run.poll()
        time.sleep(0.05)
    assert run.log, "the test process did not report its child"
    return run, int(run.log[0])


@pytest.mark.parametrize("mode", ["polite", "stubborn"])
def test_cancel_stops_the_engine_and_the_process_it_started(mode):
    run, grandchild = start_tree(mode)
    parent = run.proc.pid
    assert psutil.pid_exists(grandchild) and not gone(grandchild)
    assert grandchild in [c.pid for c in psutil.Process(parent).children(recursive=True)]
    run.cancel(grace_s=1.0)  # the stubborn grandchild ignores SIGTERM: it must be killed after the grace time
    deadline = time.time() + 10
    while not (gone(grandchild) and gone(parent)) and time.time() < deadline:
        time.sleep(0.05)
    assert gone(parent), "the engine process survived Cancel"
    assert gone(grandchild), "the process the engine started survived Cancel"
    assert run.outcome() in ("running", "cancelled")


def test_stop_process_tree_reaches_a_child_outside_the_process_group():
    """A grandchild that left the engine's process group (its own session) is found through psutil."""
    code = ("import subprocess, sys, time\n"
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True)\n"
            "print(c.pid, flush=True)\ntime.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, **popen_kwargs())
    grandchild = int(proc.stdout.readline())
    stop_process_tree(proc, grace_s=2.0)
    deadline = time.time() + 10
    while not gone(grandchild) and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is not None and gone(grandchild)


def test_windows_processes_get_a_hidden_console_and_their_own_group():
    class StartupInfo:
        def __init__(self):
            self.dwFlags, self.wShowWindow = 0, 1

    # the values of Windows' subprocess module
    win = types.SimpleNamespace(STARTUPINFO=StartupInfo, STARTF_USESHOWWINDOW=1, SW_HIDE=0,
                                CREATE_NEW_PROCESS_GROUP=0x200, CREATE_NO_WINDOW=0x08000000)
    kw = popen_kwargs("nt", win)
    assert kw["startupinfo"].dwFlags & 1 and kw["startupinfo"].wShowWindow == 0
    assert kw["creationflags"] == 0x200 | 0x08000000
    assert "start_new_session" not in kw
    assert popen_kwargs("posix") == {"start_new_session": True}
    if runner.os.name != "nt":  # the running system's own form (on Windows, STARTUPINFO objects do not compare)
        assert runner.popen_kwargs() == {"start_new_session": True}
