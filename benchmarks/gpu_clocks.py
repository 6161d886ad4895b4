"""The GPU's SM clock and board power while one kernel runs back to back,
read through NVML (PyPI `nvidia-ml-py`, module `pynvml`).

Why: ncu times kernels at locked clocks, gpu_ab at the clocks the board
chooses. Hopper runs 40, 54 and 57 put the project's prefill kernel at
1.12-1.17x FlashAttention-3's cycles under ncu, while gpu_ab's timings put
it 2-6% behind: one reading is that the two kernels run at different
clocks, the faster one held back by the board's power limit. `sustained`
measures that instead of assuming it. Hopper run 59 (docs/performance.md)
found every kernel power-capped at 700 W, FlashAttention-3's causal ones
at 5-7% lower clocks than the project's.

    python3 benchmarks/gpu_ab.py --clocks 2 ...

runs each entry of each shape for 2 s after its timing rounds (gpu_ab.py)
and records the means below in its row.
"""

import threading
import time

# NVML's clock-event reasons (nvml.h, nvmlClocksEventReason*): the bits
# that mean the board lowered the SM clock below what the application asked.
POWER_CAP = 0x4  # SwPowerCap: the power limit
HW_SLOWDOWN = 0x8  # HwSlowdown (thermal or power brake)
SW_THERMAL = 0x20  # SwThermalSlowdown
HW_THERMAL = 0x40  # HwThermalSlowdown
POWER_BRAKE = 0x80  # HwPowerBrakeSlowdown


def _handle(pynvml, uuid):
    """The NVML handle of the GPU whose UUID is `uuid` (torch's
    `get_device_properties(i).uuid`, with or without NVML's "GPU-" prefix),
    else of NVML index 0, the only GPU of the device machine."""
    if uuid is not None:
        text = str(uuid)
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(text if text.startswith("GPU-")
                                                    else "GPU-" + text)
        except pynvml.NVMLError:
            pass
    return pynvml.nvmlDeviceGetHandleByIndex(0)


def sustained(launch, seconds, synchronize, uuid=None, warmup=1.2, interval=0.01):
    """Runs `launch` (a callable that enqueues one kernel call on the current
    CUDA stream; `synchronize` waits for the stream, e.g.
    torch.cuda.synchronize; `uuid` names the GPU, see _handle) back to
    back for `warmup` + `seconds` seconds and samples,
    every `interval` seconds of the last `seconds`, the SM clock (MHz,
    nvmlDeviceGetClockInfo), the board power (W, nvmlDeviceGetPowerUsage,
    which NVML averages over the last second on Hopper: the default
    `warmup` outlasts that window, so the first samples do not average in
    what ran before) and the clock-event reasons.

    Returns a dict: sm_mhz and power_w (means of the samples), sm_mhz_min,
    samples, power_capped and thermal (the share of samples whose reasons
    include the power cap, respectively a thermal or hardware slowdown),
    calls_per_s (launches completed per second over the sampled part).
    Raises ImportError where pynvml is not installed, pynvml.NVMLError
    where NVML cannot be initialised or sampled, and whatever `launch` or
    `synchronize` raise."""
    import pynvml

    pynvml.nvmlInit()
    try:
        handle = _handle(pynvml, uuid)
        samples, failure = [], []
        stop = threading.Event()
        sampling = threading.Event()

        def sample():
            try:
                while not stop.is_set():
                    if sampling.is_set():
                        try:
                            reasons = pynvml.nvmlDeviceGetCurrentClocksEventReasons(handle)
                        except (AttributeError, pynvml.NVMLError):
                            reasons = pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle)
                        samples.append(
                            (pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
                             pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0, reasons))
                    time.sleep(interval)
            except Exception as e:  # re-raised by the caller after join()
                failure.append(e)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        start = time.perf_counter()
        calls, t0 = 0, None
        try:
            while True:
                for _ in range(8):
                    launch()
                synchronize()
                now = time.perf_counter()
                if t0 is None and now - start >= warmup:
                    t0, calls = now, 0
                    sampling.set()
                elif t0 is not None:
                    calls += 8
                    if now - t0 >= seconds:
                        break
        finally:
            stop.set()
            thread.join()
        if failure:
            raise failure[0]
        # Up to the last counted call, not the sampler's join.
        elapsed = now - t0
    finally:
        pynvml.nvmlShutdown()
    if not samples:
        return dict(samples=0)
    n = len(samples)
    return dict(
        samples=n,
        sm_mhz=sum(s[0] for s in samples) / n,
        sm_mhz_min=min(s[0] for s in samples),
        power_w=sum(s[1] for s in samples) / n,
        power_capped=sum(1 for s in samples if s[2] & POWER_CAP) / n,
        thermal=sum(1 for s in samples if s[2] & (HW_SLOWDOWN | SW_THERMAL | HW_THERMAL
                                                   | POWER_BRAKE)) / n,
        calls_per_s=calls / elapsed,
    )
