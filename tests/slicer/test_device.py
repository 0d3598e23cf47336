"""The device shown before a run, from the engine worker (Slicer's process never imports torch), and the GPU
selection / force CPU through CUDA_VISIBLE_DEVICES in the worker's environment."""

from __future__ import annotations

import sys

import pytest

import TMBRB
from TMBRBLib.errors import TMBRBInputError


@pytest.fixture()
def dlogic(scene):
    lg = TMBRB.TMBRBLogic(scene)
    yield lg
    lg.shutdown()


def test_the_worker_reports_its_device_without_torch_in_this_process(dlogic):
    had_torch = "torch" in sys.modules
    calls = []
    info = dlogic.deviceInfo(timeout_s=300, processEvents=lambda: calls.append(1))
    assert ("torch" in sys.modules) == had_torch, "asking for the device imported torch into this process"
    assert calls, "the blocking form must process events while it waits"
    assert info["device"] == "cpu" or info["device"].startswith("cuda:")
    if info["device"] == "cpu":
        assert info["name"] == "CPU" and info["reason"], "a CPU run says why"
        assert dlogic.deviceText(info).startswith("CPU: ")
    else:
        assert info["name"] == info["gpus"][0] and info["reason"] == ""
        assert dlogic.deviceText(info) == f"GPU: {info['name']}"


def test_force_cpu_hides_the_gpus_from_a_new_worker_and_says_why(dlogic):
    dlogic.deviceInfo(timeout_s=300)
    first = dlogic.engineWorker().pid
    assert dlogic.setDeviceSelection(forceCpu=True)
    assert not dlogic.setDeviceSelection(forceCpu=True), "the same selection again changes nothing"
    info = dlogic.deviceInfo(timeout_s=300)
    assert dlogic.engineWorker().pid != first, "a new selection needs a worker started with it"
    assert info["cuda_visible_devices"] == "" and info["device"] == "cpu" and info["gpus"] == []
    assert "CUDA_VISIBLE_DEVICES" in info["reason"] or "force CPU" in info["reason"]


def test_an_empty_cuda_visible_devices_gives_the_cpu_with_its_reason(dlogic, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    info = dlogic.deviceInfo(timeout_s=300)
    assert info["device"] == "cpu" and "CUDA_VISIBLE_DEVICES is empty" in info["reason"]


def test_a_gpu_is_chosen_through_cuda_visible_devices(dlogic):
    assert dlogic.deviceEnvironment({}) == {}
    dlogic.setDeviceSelection(gpuIndex=1)
    assert dlogic.deviceEnvironment({}) == {"CUDA_VISIBLE_DEVICES": "1"}
    assert dlogic.deviceEnvironment({"CUDA_VISIBLE_DEVICES": "2,5"}) == {"CUDA_VISIBLE_DEVICES": "5"}
    with pytest.raises(TMBRBInputError, match="GPU 1 is not one of the 1 GPUs"):
        dlogic.deviceEnvironment({"CUDA_VISIBLE_DEVICES": "3"})
    dlogic.setDeviceSelection(gpuIndex=1, forceCpu=True)
    assert dlogic.deviceEnvironment({"CUDA_VISIBLE_DEVICES": "2,5"}) == {"CUDA_VISIBLE_DEVICES": ""}
    dlogic.setDeviceSelection(gpuIndex=-1)
    assert dlogic.gpuIndex is None and dlogic.deviceEnvironment({}) == {}
    dlogic.setDeviceSelection(gpuIndex=0)
    info = dlogic.deviceInfo(timeout_s=300)
    assert info["cuda_visible_devices"] == "0"  # what the worker process itself sees
