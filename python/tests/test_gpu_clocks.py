"""benchmarks/gpu_clocks.py's sampling and means, on the CPU: NVML and the
stream's synchronisation are replaced by fakes whose clock, power and
clock-event reasons are known, so the test checks what the benchmark
records, not a GPU."""
import itertools
import os
import sys
import time
import types

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import gpu_clocks  # noqa: E402


def fake_nvml(clocks_mhz, power_mw, reasons, event_reasons=True):
    """A pynvml module whose SM clock cycles through `clocks_mhz`; records
    init/shutdown counts and the UUID it was asked for."""
    calls = dict(init=0, shutdown=0, uuid=None)
    clock = itertools.cycle(clocks_mhz)
    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = type("NVMLError", (Exception,), {})
    nvml.NVML_CLOCK_SM = 1
    nvml.nvmlInit = lambda: calls.__setitem__("init", calls["init"] + 1)
    nvml.nvmlShutdown = lambda: calls.__setitem__("shutdown", calls["shutdown"] + 1)
    nvml.nvmlDeviceGetHandleByUUID = lambda uuid: calls.__setitem__("uuid", uuid) or "handle"
    nvml.nvmlDeviceGetHandleByIndex = lambda i: "handle"
    nvml.nvmlDeviceGetClockInfo = lambda h, kind: next(clock) if kind == 1 else 0
    nvml.nvmlDeviceGetPowerUsage = lambda h: power_mw
    if event_reasons:
        nvml.nvmlDeviceGetCurrentClocksEventReasons = lambda h: reasons
    else:  # nvidia-ml-py before 12.535: only the older name
        nvml.nvmlDeviceGetCurrentClocksThrottleReasons = lambda h: reasons
    return nvml, calls


# NVML's bits (nvml.h): 0x4 SwPowerCap; 0x8 HwSlowdown, 0x20
# SwThermalSlowdown, 0x40 HwThermalSlowdown, 0x80 HwPowerBrakeSlowdown
# count as thermal; 0x1 (GpuIdle) as neither.
@pytest.mark.parametrize("reasons,capped,thermal", [
    (0, 0.0, 0.0), (0x1, 0.0, 0.0), (0x4, 1.0, 0.0), (0x4 | 0x40, 1.0, 1.0),
    (0x8, 0.0, 1.0), (0x20, 0.0, 1.0), (0x80, 0.0, 1.0)])
def test_sustained_means(monkeypatch, reasons, capped, thermal):
    nvml, calls = fake_nvml([1700, 1800], 612000, reasons)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    got = gpu_clocks.sustained(lambda: None, 0.1, lambda: None, "1234",
                               warmup=0.02, interval=0.005)
    assert got["samples"] > 2
    assert 1700 < got["sm_mhz"] < 1800
    assert got["sm_mhz_min"] == 1700
    assert got["power_w"] == pytest.approx(612.0)
    assert got["power_capped"] == capped
    assert got["thermal"] == thermal
    assert calls == dict(init=1, shutdown=1, uuid="GPU-1234")


def test_throttle_reasons_fallback(monkeypatch):
    nvml, calls = fake_nvml([1500], 700000, 0x4, event_reasons=False)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    got = gpu_clocks.sustained(lambda: None, 0.05, lambda: None, "GPU-ab",
                               warmup=0.01, interval=0.005)
    assert got["power_capped"] == 1.0 and got["sm_mhz"] == 1500
    assert calls["uuid"] == "GPU-ab"


def test_calls_per_s_counts_the_sampled_calls(monkeypatch):
    # Each synchronize takes 20 ms (a little more) for 8 launches: just
    # under 400 calls/s over the sampled part, whatever the warm-up and the
    # sampler's join (up to one 0.3 s interval, which counted would put it
    # near 290).
    nvml, _ = fake_nvml([1980], 300000, 0)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    got = gpu_clocks.sustained(lambda: None, 0.4, lambda: time.sleep(0.02),
                               warmup=0.1, interval=0.3)
    assert 340 < got["calls_per_s"] <= 400


def test_sampler_failure_is_raised(monkeypatch):
    nvml, calls = fake_nvml([1980], 300000, 0)

    def broken(h):
        raise nvml.NVMLError("power reading failed")

    nvml.nvmlDeviceGetPowerUsage = broken
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    with pytest.raises(nvml.NVMLError, match="power reading failed"):
        gpu_clocks.sustained(lambda: None, 0.05, lambda: None, warmup=0.01, interval=0.005)
    assert calls["shutdown"] == 1


def test_nvml_shut_down_when_a_launch_fails(monkeypatch):
    nvml, calls = fake_nvml([1980], 300000, 0)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)

    def launch():
        raise RuntimeError("launch failed")

    with pytest.raises(RuntimeError, match="launch failed"):
        gpu_clocks.sustained(launch, 0.1, lambda: None)
    assert calls["shutdown"] == 1
