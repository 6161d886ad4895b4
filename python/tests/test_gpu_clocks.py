"""benchmarks/gpu_clocks.py's sampling and means, on the CPU: NVML and the
stream's synchronisation are replaced by fakes whose clock, power and clock-event reasons
are known, so the test checks what the benchmark records, not a GPU."""
import os
import sys
import types

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import gpu_clocks  # noqa: E402


def fake_nvml(clock_mhz, power_mw, reasons):
    calls = dict(init=0, shutdown=0)
    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = type("NVMLError", (Exception,), {})
    nvml.NVML_CLOCK_SM = 1
    nvml.nvmlInit = lambda: calls.__setitem__("init", calls["init"] + 1)
    nvml.nvmlShutdown = lambda: calls.__setitem__("shutdown", calls["shutdown"] + 1)
    nvml.nvmlDeviceGetHandleByUUID = lambda uuid: "handle"
    nvml.nvmlDeviceGetHandleByIndex = lambda i: "handle"
    nvml.nvmlDeviceGetClockInfo = lambda h, kind: clock_mhz if kind == 1 else 0
    nvml.nvmlDeviceGetPowerUsage = lambda h: power_mw
    nvml.nvmlDeviceGetCurrentClocksEventReasons = lambda h: reasons
    return nvml, calls


@pytest.mark.parametrize("reasons,capped,thermal", [
    (0, 0.0, 0.0), (gpu_clocks.POWER_CAP, 1.0, 0.0),
    (gpu_clocks.POWER_CAP | gpu_clocks.HW_THERMAL, 1.0, 1.0)])
def test_sustained_means(monkeypatch, reasons, capped, thermal):
    nvml, calls = fake_nvml(1755, 612000, reasons)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    launches = []
    got = gpu_clocks.sustained(lambda: launches.append(1), 0.1, lambda: None, "1234",
                                 warmup=0.02, interval=0.005)
    assert got["samples"] > 0
    assert got["sm_mhz"] == pytest.approx(1755)
    assert got["sm_mhz_min"] == 1755
    assert got["power_w"] == pytest.approx(612.0)
    assert got["power_capped"] == capped
    assert got["thermal"] == thermal
    assert got["calls_per_s"] > 0 and len(launches) % 8 == 0
    assert calls == dict(init=1, shutdown=1)


def test_nvml_shut_down_when_a_launch_fails(monkeypatch):
    nvml, calls = fake_nvml(1980, 300000, 0)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)

    def launch():
        raise RuntimeError("launch failed")

    with pytest.raises(RuntimeError, match="launch failed"):
        gpu_clocks.sustained(launch, 0.1, lambda: None)
    assert calls == dict(init=1, shutdown=1)
