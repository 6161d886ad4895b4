"""benchmarks/gpu_ab.py --prepare, on the CPU (the compiler only): the cache it
writes holds every kernel its timing step loads, the defaults ("current",
which every timing compares against) as well as the named variants, so that a
GPU machine without a compiler can time them (Hopper run 74's first call
stopped with a CompileError when `--prepare` without `--shape` left the
defaults out); and timing an unprepared cache is a one-line error, not a
traceback (backward run 75)."""
import os
import subprocess
import sys

import pytest

from diffattn import _compiler, _gpu

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks")
sys.path.insert(0, BENCH)
import gpu_cases  # noqa: E402

pytestmark = pytest.mark.skipif(_compiler.compiler_version() is None,
                                reason="needs diffattn-compile")


def kernel_dirs(cache):
    return {d for d in os.listdir(cache) if os.path.isdir(os.path.join(cache, d))}


def test_prepare_without_shapes_also_prepares_the_defaults(tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    subprocess.run([sys.executable, os.path.join(BENCH, "gpu_ab.py"), "--prepare", cache,
                    "--target", "sm_90a", "--variant", "q1=q-buffers=1@128"],
                   check=True, capture_output=True, text=True)
    prepared = kernel_dirs(cache)
    assert prepared
    # Resolving every timed call's default kernel finds it in the cache: no
    # directory is added.
    monkeypatch.setenv("DIFFATTN_CACHE_DIR", cache)
    _gpu.prepare_v2.cache_clear()
    try:
        for b, s, h2, hkv, d, causal in gpu_cases.BENCH_PREFILL:
            directory = _gpu.prepare_v2((b, s, h2, d), (b, s, hkv, d), (b, s, hkv, d),
                                        (b, s, h2 // 2), "bf16", "bf16", causal=causal,
                                        target="sm_90a", options=())[0]
            assert os.path.basename(os.path.normpath(directory)) in prepared
    finally:
        _gpu.prepare_v2.cache_clear()
    assert kernel_dirs(cache) == prepared


@pytest.mark.parametrize("backward", [False, True])
def test_timing_an_unprepared_cache_names_the_missing_step(tmp_path, backward):
    env = dict(os.environ, DIFFATTN_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, os.path.join(BENCH, "gpu_ab.py"), "--out",
                           str(tmp_path / "out")] + (["--backward"] if backward else []),
                          capture_output=True, text=True, env=env)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "gpu_ab.py --prepare CACHE" + (" --backward" if backward else "") in lines[0]
