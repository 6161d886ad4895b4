"""The software exponential of the GPU kernels' online softmax (the
``exp2-emulation`` strategy option; GPUKernelBuilder::exp2Polynomial):
its constants and steps are read back from the PTX the compiler writes and
evaluated here in f32, step by step, against float64's 2^x. No GPU needed.

The claims checked are the ones the option's documentation makes: relative
error at most 1.1e-4 for x in [-126, 16] (below bf16's and f16's rounding
of the probabilities), exactly 1 at x = 0 (a row's max), exactly 0 from -127
down and at -inf (masked keys), NaN kept."""
import glob
import os
import re

import numpy as np
import pytest

from diffattn import _compiler, _gpu

F32 = r"0f([0-9A-F]{8})"
REG = r"(%r\d+)"
# One emulated exponential as diffattn-compile emits it (the lit test
# test/Target/GPU/exp2-emulation.test pins the same sequence).
SEQUENCE = re.compile(
    rf"max\.NaN\.f32\s+{REG}, %r\d+, {F32};\s*"
    rf"add\.rn\.f32\s+{REG}, \1, {F32};\s*"
    rf"add\.rn\.f32\s+{REG}, \3, {F32};\s*"
    rf"sub\.rn\.f32\s+{REG}, \1, \5;\s*"
    rf"fma\.rn\.f32\s+{REG}, \7, {F32}, {F32};\s*"
    rf"fma\.rn\.f32\s+{REG}, \7, \8, {F32};\s*"
    rf"fma\.rn\.f32\s+{REG}, \7, \11, {F32};\s*"
    rf"shl\.b32\s+{REG}, \3, (\d+);\s*"
    rf"add\.s32\s+{REG}, \15, (\d+);\s*"
    rf"mul\.rn\.f32\s+%r\d+, \13, \17;")


def f32(hex_bits):
    return np.array([int(hex_bits, 16)], dtype=np.uint32).view(np.float32)[0]


@pytest.fixture(scope="module")
def emulated_ptx():
    if _compiler.compiler_version() is None:
        pytest.skip("needs diffattn-compile (the compiler is not built here)")
    shapes = ((1, 128, 8, 128), (1, 128, 2, 128), (1, 128, 2, 128), (1, 128, 4))
    directory, _, _ = _gpu.prepare_v2(*shapes, "bf16", "bf16", causal=True, target="sm_90a",
                                      options=("--gpu-options=exp2-emulation=2",))
    (ptx,) = glob.glob(os.path.join(directory, "*.ptx"))
    with open(ptx) as f:
        return f.read()


def steps_from(ptx):
    found = SEQUENCE.findall(ptx)
    assert found, "no emulated exp2 in the PTX of exp2-emulation=2"
    # Every copy uses the same constants.
    assert len(set(found_constants(m) for m in found)) == 1
    return found_constants(found[0])


def found_constants(m):
    clamp, rounding, minus_rounding = m[1], m[3], m[5]
    c3, c2, c1, c0 = m[8], m[9], m[11], m[13]
    shift, bias = int(m[15]), int(m[17])
    return clamp, rounding, minus_rounding, c3, c2, c1, c0, shift, bias


def fma(a, b, c):
    # One rounding of the exact a * b + c (an f32 product is exact in f64).
    return np.float32(np.float64(a) * np.float64(b) + np.float64(c))


def emulate(x, constants):
    clamp, rounding, minus_rounding, c3, c2, c1, c0, shift, bias = constants
    x = np.float32(x)
    with np.errstate(invalid="ignore", over="ignore"):
        clamped = np.float32(np.nan) if np.isnan(x) else max(x, f32(clamp))
        t = np.float32(clamped + f32(rounding))
        whole = np.float32(t + f32(minus_rounding))
        fraction = np.float32(clamped - whole)
        p = fma(fraction, f32(c3), f32(c2))
        p = fma(fraction, p, f32(c1))
        p = fma(fraction, p, f32(c0))
        bits = (int(np.array([t], np.float32).view(np.uint32)[0]) << shift) + bias
        power = np.array([bits & 0xFFFFFFFF], np.uint32).view(np.float32)[0]
        return np.float32(p * power)


def test_emulated_exp2_error_bound(emulated_ptx):
    constants = steps_from(emulated_ptx)
    xs = np.concatenate([np.linspace(-126, 16, 60001, dtype=np.float32),
                         np.float32(-0.5) + np.float32(2 ** -24) * np.arange(-50, 50, dtype=np.float32)])
    worst = max(abs(float(emulate(x, constants)) / 2.0 ** float(x) - 1) for x in xs)
    assert worst <= 1.1e-4, f"relative error {worst:.3g}"


def test_emulated_exp2_special_values(emulated_ptx):
    constants = steps_from(emulated_ptx)
    assert emulate(0.0, constants) == 1.0
    for x in (-127.0, -127.5, -1000.0, -np.inf):
        assert emulate(x, constants) == 0.0
    assert np.isnan(emulate(np.nan, constants))
