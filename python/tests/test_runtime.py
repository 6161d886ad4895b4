"""The runtime library without a GPU: loading GPU artifacts, checking
launches against the manifest (errors name the buffer and the expected
shape), refusing malformed artifacts, and failing cleanly without a
driver. Needs ptxas (the CUDA toolkit) to build the artifact."""
import ctypes
import json
import os
import shutil
import subprocess

import pytest

from diffattn import _compiler, _gpu, _runtime

PTXAS = shutil.which("ptxas") or ("/usr/local/cuda/bin/ptxas"
                                  if os.path.exists("/usr/local/cuda/bin/ptxas") else None)
pytestmark = pytest.mark.skipif(PTXAS is None, reason="needs ptxas to build a GPU artifact")

KERNEL = "diffattn_v2_bf16_h8_kv2_d64_dv64_causal_kvlen"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpu-artifact")
    src = d / "k.mlir"
    src.write_text("""
func.func @f(%q: tensor<2x16x8x64xbf16>, %k: tensor<2x32x2x64xbf16>, %v: tensor<2x32x2x64xbf16>,
             %lam: tensor<2x16x4xbf16>, %len: tensor<2xi32>) -> tensor<2x16x4x64xbf16> {
  %o = diffattn.v2 %q, %k, %v, %lam kv_len(%len) {causal}
      : (tensor<2x16x8x64xbf16>, tensor<2x32x2x64xbf16>, tensor<2x32x2x64xbf16>, tensor<2x16x4xbf16>, tensor<2xi32>)
      -> tensor<2x16x4x64xbf16>
  return %o : tensor<2x16x4x64xbf16>
}
""")
    out = d / "out"
    subprocess.run([_compiler.compiler_path(), str(src), "--target=sm_90", "-o", str(out)], check=True)
    return str(out)


def _buffers(b=2, sq=16, sk=32, override=None):
    shapes = {"q": ("bf16", (b, sq, 8, 64)), "k": ("bf16", (b, sk, 2, 64)),
              "v": ("bf16", (b, sk, 2, 64)), "lam": ("bf16", (b, sq, 4)),
              "kv_len": ("i32", (b,)), "out": ("bf16", (b, sq, 4, 64))}
    shapes.update(override or {})
    # Fake device pointers: checks never dereference them.
    return [(name, elem, shape, 0x1000 * (i + 1)) for i, (name, (elem, shape)) in enumerate(shapes.items())]


def _with_workspace(artifact, named, sizes):
    n = _gpu.workspace_elements(artifact, sizes)
    return list(named) + ([("workspace", "f32", (n,), 0x9000)] if n > 0 else [])


def _check(artifact, named, sizes):
    handle, names = _runtime.load_module(artifact)
    lib = _runtime.runtime()
    bufs = _runtime.make_buffers(named)
    rc = lib.diffattn_check(handle, names[0].encode(), bufs, len(named), *sizes)
    return rc, lib.diffattn_last_error().decode()


def test_module_lists_its_kernel(artifact):
    _, names = _runtime.load_module(artifact)
    assert names == [KERNEL]


def test_valid_launch_passes_the_checks(artifact):
    assert _check(artifact, _with_workspace(artifact, _buffers(), (2, 16, 32)), (2, 16, 32)) == (0, "")
    # Other run-time sizes of the same kernel are fine too.
    sizes = (5, 3, 1000)
    assert _check(artifact, _with_workspace(artifact, _buffers(b=5, sq=3, sk=1000), sizes), sizes)[0] == 0


def _splits(artifact, sizes):
    # Workspace: B x Hkv x splits x (pairs per group x Sq) x 2 x (Dv + 2).
    b, sq, _ = sizes
    n = _gpu.workspace_elements(artifact, sizes)
    per_split = b * 2 * (2 * sq) * 2 * 66
    assert n % per_split == 0
    return n // per_split


def test_runtime_picks_the_split(artifact):
    # The manifest leaves the split size to the launch: multiples of
    # 16 keys x 4 warps, aiming at one wave of 132 CTAs (sm_90).
    manifest = json.load(open(os.path.join(artifact, "manifest.json")))
    assert manifest["kernels"][0]["launch"]["split"] == {"multiple_of": 64, "target_ctas": 132}
    # CTAs per split: ceil(2 pairs x Sq / 16) row blocks x Hkv 2 x B.
    assert _splits(artifact, (2, 16, 32)) == 1          # one block of keys
    # 132 / 2 = 66 splits of ceil(8192 / 66) = 125 keys, rounded up to 128:
    assert _splits(artifact, (1, 1, 8192)) == 64
    # 66 splits of ceil(100000 / 66) keys, rounded up to 1536:
    assert _splits(artifact, (1, 1, 100000)) == 66      # ceil(100000 / 1536)
    assert _splits(artifact, (64, 1, 8192)) == 1        # 132 / 128
    assert _splits(artifact, (200, 1, 8192)) == 1       # a wave without splitting
    assert _splits(artifact, (2, 16, 0)) == 0           # no keys: nothing to split


def test_decode_form_needs_a_workspace(artifact):
    assert _gpu.workspace_elements(artifact, (2, 16, 32)) == 2 * 2 * 1 * (2 * 16) * 2 * 66
    rc, err = _check(artifact, _buffers(), (2, 16, 32))
    assert rc == 1 and "with a 'workspace' of 16896 f32" in err
    small = _buffers() + [("workspace", "f32", (100,), 0x9000)]
    rc, err = _check(artifact, small, (2, 16, 32))
    assert rc == 1 and "needs a 'workspace' buffer of at least 16896 f32 elements" in err


@pytest.mark.parametrize("override,sizes,message", [
    ({"k": ("bf16", (2, 31, 2, 64))}, (2, 16, 32), "'k' must have shape [2, 32, 2, 64] for B = 2, Sq = 16, Sk = 32, got [2, 31, 2, 64]"),
    ({"q": ("f16", (2, 16, 8, 64))}, (2, 16, 32), "'q' must be bf16, got f16"),
    ({"lam": ("bf16", (2, 16, 4, 1))}, (2, 16, 32), "'lam' must have shape [2, 16, 4]"),
    ({"kv_len": ("i32", (3,))}, (2, 16, 32), "'kv_len' must have shape [2]"),
    ({}, (2, 16, -1), "sizes must be >= 0"),
    ({}, (70000, 16, 32), "sizes out of the supported range"),
], ids=["k-shape", "q-dtype", "lam-rank", "kvlen-shape", "negative", "huge-batch"])
def test_bad_launches_are_refused(artifact, override, sizes, message):
    rc, err = _check(artifact, _with_workspace(artifact, _buffers(override=override), sizes), sizes)
    assert rc == 1
    assert message in err


def test_missing_buffer_is_named(artifact):
    named = [b for b in _with_workspace(artifact, _buffers(), (2, 16, 32)) if b[0] != "v"]
    rc, err = _check(artifact, named, (2, 16, 32))
    assert rc == 1 and "expected 7 buffers (with a 'workspace' of 16896 f32), got 6" in err


def test_launch_without_a_driver_fails_cleanly(artifact):
    if os.path.exists("/dev/nvidia0"):
        pytest.skip("a GPU driver is present")
    with pytest.raises(_gpu.RuntimeFailure, match="the CUDA driver is not available"):
        _gpu.launch_v2(artifact, _buffers(), (2, 16, 32), 0, lambda n: 0x9000)


def test_cached_launch_plans_still_check_every_launch(artifact):
    # launch_v2 keeps a per-thread plan per (artifact, sizes, shapes): a
    # repeated launch only refills pointers, other shapes get their own
    # plan and their own checks, before any driver is needed.
    with pytest.raises(_gpu.RuntimeFailure, match="needs a workspace"):
        _gpu.launch_v2(artifact, _buffers(), (2, 16, 32), 0)
    bad = _buffers(override={"k": ("bf16", (2, 31, 2, 64))})
    for _ in range(2):
        with pytest.raises(_gpu.RuntimeFailure, match="'k'"):
            _gpu.launch_v2(artifact, bad, (2, 16, 32), 0, lambda n: 0x9000)


def test_malformed_artifacts_are_refused(tmp_path, artifact):
    lib = _runtime.runtime()
    handle = ctypes.c_void_p()
    assert lib.diffattn_module_load(str(tmp_path).encode(), ctypes.byref(handle)) == 2
    assert b"cannot read" in lib.diffattn_last_error()
    (tmp_path / "manifest.json").write_text('{"kernels": [ {"name": ')
    assert lib.diffattn_module_load(str(tmp_path).encode(), ctypes.byref(handle)) == 2
    assert b"malformed JSON" in lib.diffattn_last_error()
    manifest = json.load(open(os.path.join(artifact, "manifest.json")))
    del manifest["kernels"][0]["launch"]["stages"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    shutil.copy(os.path.join(artifact, KERNEL + ".cubin"), tmp_path)
    assert lib.diffattn_module_load(str(tmp_path).encode(), ctypes.byref(handle)) == 2
    assert b"no CUDA launch rule" in lib.diffattn_last_error()
    manifest["kernels"][0]["launch"] = {"stages": [{"function": "f", "grid": [1, 1], "block": [1, 1, 1],
                                                    "params": []}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert lib.diffattn_module_load(str(tmp_path).encode(), ctypes.byref(handle)) == 2
    assert b"malformed launch stage f" in lib.diffattn_last_error()
    # The combine stage of an sm_90 artifact is a programmatic dependent
    # launch; the flag must be a boolean.
    manifest = json.load(open(os.path.join(artifact, "manifest.json")))
    stages = manifest["kernels"][0]["launch"]["stages"]
    assert [st.get("programmatic_launch", False) for st in stages] == [False, True]
    stages[1]["programmatic_launch"] = 1
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert lib.diffattn_module_load(str(tmp_path).encode(), ctypes.byref(handle)) == 2
    assert b"malformed programmatic_launch of " + KERNEL.encode() + b"_combine" in lib.diffattn_last_error()
    # The combine stage is skipped for one split when one CTA holds a KV
    # group's G x Sq rows (G = 4 here: Sq <= 4); the bounds must name sizes.
    stages[1]["programmatic_launch"] = True
    assert stages[1]["skip_when"] == {"Sq": 4, "splits": 1}
    for bad in ({"Sq": "4"}, {"heads": 1}, {}):
        stages[1]["skip_when"] = bad
        (tmp_path / "manifest.json").write_text(json.dumps(manifest))
        assert lib.diffattn_module_load(str(tmp_path).encode(), ctypes.byref(handle)) == 2
        assert b"malformed skip_when of " + KERNEL.encode() + b"_combine" in lib.diffattn_last_error()


# The manifest format_version the runtime reads (kManifestFormatVersion in
# runtime/lib/manifest.h).
FORMAT_VERSION = 1


def _edited_artifact(artifact, tmp_path, edit):
    """A copy of the fixture's artifact directory with its manifest edited."""
    directory = tmp_path / "artifact"
    shutil.copytree(artifact, directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    edit(manifest)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def _load(directory):
    """(status, error message) of diffattn_module_load on `directory`."""
    lib = _runtime.runtime()
    handle = ctypes.c_void_p()
    rc = lib.diffattn_module_load(str(directory).encode(), ctypes.byref(handle))
    error = lib.diffattn_last_error().decode()
    if rc == 0:
        lib.diffattn_module_free(handle)
    return rc, error


def test_manifest_of_another_format_version_is_refused(tmp_path, artifact):
    manifest = json.load(open(os.path.join(artifact, "manifest.json")))
    assert manifest["format_version"] == FORMAT_VERSION
    directory = _edited_artifact(artifact, tmp_path,
                                 lambda m: m.update(format_version=7))
    rc, err = _load(directory)
    assert rc == 2
    assert err == (f"{directory}/manifest.json: format_version 7 is not supported by this "
                   f"runtime (it reads format_version {FORMAT_VERSION}); rebuild the kernels "
                   f"with a matching diffattn-compile")


@pytest.mark.parametrize("edit,message", [
    (lambda m: m.pop("format_version"), "no format_version (this runtime reads format_version 1)"),
    (lambda m: m.update(format_version="1"), "format_version is not a number"),
    (lambda m: m.update(format_version=1.5), "format_version 1.5 is not supported"),
], ids=["missing", "string", "fraction"])
def test_manifest_without_a_known_format_version_is_refused(tmp_path, artifact, edit, message):
    rc, err = _load(_edited_artifact(artifact, tmp_path, edit))
    assert rc == 2 and message in err and "matching diffattn-compile" in err


def test_unknown_manifest_fields_are_ignored(tmp_path, artifact):
    # Compatible additions keep the format_version (docs/manifest.md): the
    # compiler will add a kernel's `strategy`, for one.
    def edit(manifest):
        manifest["produced_by"] = {"note": "a field of a later compiler"}
        kernel = manifest["kernels"][0]
        kernel["strategy"] = "mma-sync"
        kernel["launch"]["future"] = [1, 2, 3]
        kernel["launch"]["stages"][0]["hint"] = None
        kernel["args"][0]["layout"] = "bshd"

    rc, err = _load(_edited_artifact(artifact, tmp_path, edit))
    assert rc == 0, err


def test_runtime_launch_plans_keep_every_check(artifact):
    # The runtime keeps a launch plan per configuration (names, dtypes,
    # shapes, B, Sq, Sk): a repeated configuration re-checks only the data
    # pointers, and a null one still gets the checking path's message.
    if os.path.exists("/dev/nvidia0"):
        pytest.skip("a GPU driver is present")
    handle, names = _runtime.load_module(artifact)
    sizes = (2, 16, 32)
    good = _with_workspace(artifact, _buffers(), sizes)
    _runtime.launch_timing(True)
    for _ in range(2):  # the first launch plans, the second finds the plan
        with pytest.raises(_gpu.RuntimeFailure, match="the CUDA driver is not available"):
            _runtime.launch(handle, names[0].encode(), _runtime.make_buffers(good), len(good),
                            sizes, 0)
    null_q = [(n, e, s, 0 if n == "q" else p) for n, e, s, p in good]
    with pytest.raises(_gpu.RuntimeFailure, match="'q' has a null data pointer"):
        _runtime.launch(handle, names[0].encode(), _runtime.make_buffers(null_q), len(null_q),
                        sizes, 0)
    # Another shape is another configuration, checked in full.
    bad = _with_workspace(artifact, _buffers(override={"k": ("bf16", (2, 31, 2, 64))}), sizes)
    with pytest.raises(_gpu.RuntimeFailure, match="'k' must have shape"):
        _runtime.launch(handle, names[0].encode(), _runtime.make_buffers(bad), len(bad), sizes, 0)
    timing = _runtime.launch_timing(False)
    assert set(timing) == set(_runtime.LAUNCH_TIMING_FIELDS)
    # Failed launches are not counted as launches; the checking path ran for
    # the first configuration once (if no earlier test planned it), then for
    # the null pointer and the bad shape.
    assert timing["launches"] == 0 and 2 <= timing["misses"] <= 3


@pytest.mark.parametrize("param, message", [
    ({"arg": "k", "field": "tensor_map", "swizzle": 128}, "malformed tensor_map parameter of"),
    ({"arg": "k", "field": "tensor_map", "box": [64, 1, 128], "swizzle": 128}, "malformed tensor_map parameter of"),
    ({"arg": "k", "field": "tensor_map", "box": [64, 1, 512, 1], "swizzle": 128}, "malformed tensor_map box of"),
    ({"arg": "k", "field": "tensor_map", "box": [64, 1, 128, 1], "swizzle": 96}, "malformed tensor_map swizzle of"),
])
def test_malformed_tensor_map_parameters_are_refused(tmp_path, artifact, param, message):
    # A tensor_map parameter (the Hopper strategy's TMA kernels) needs a
    # 4-element box of 1..256 and a swizzle of 0, 32, 64 or 128 bytes.
    def edit(manifest):
        stages = manifest["kernels"][0]["launch"]["stages"]
        stages[0]["params"].insert(0, param)
    rc, error = _load(_edited_artifact(artifact, tmp_path, edit))
    assert rc == 2 and message in error


def test_well_formed_tensor_map_parameter_is_read(tmp_path, artifact):
    # The reader accepts what diffattn-compile writes for sm_90a (box [64,
    # 1, block_k, 1], 128-byte swizzle); encoding happens at launch.
    def edit(manifest):
        stages = manifest["kernels"][0]["launch"]["stages"]
        stages[0]["params"].insert(0, {"arg": "k", "field": "tensor_map", "box": [64, 1, 128, 1], "swizzle": 128})
    rc, error = _load(_edited_artifact(artifact, tmp_path, edit))
    assert rc == 0, error


@pytest.mark.parametrize("at_most", [0, "132", -4])
def test_malformed_grid_cap_is_refused(tmp_path, artifact, at_most):
    # A persistent launch caps grid x: {product: [...], at_most: N >= 1}.
    def edit(manifest):
        stage = manifest["kernels"][0]["launch"]["stages"][0]
        stage["grid"][2] = {"product": [{"ceil_div": "B", "by": 1}], "at_most": at_most}
    rc, error = _load(_edited_artifact(artifact, tmp_path, edit))
    assert rc == 2 and "malformed grid" in error


def test_grid_cap_is_read(tmp_path, artifact):
    def edit(manifest):
        stage = manifest["kernels"][0]["launch"]["stages"][0]
        stage["grid"][2] = {"product": [{"ceil_div": "B", "by": 1}], "at_most": 132}
    rc, error = _load(_edited_artifact(artifact, tmp_path, edit))
    assert rc == 0, error


@pytest.mark.parametrize("options,elements", [((), 1), (("--gpu-options=persistent=false",), 0),
                                              (("--gpu-options=tile-scheduler=static",), 0)],
                         ids=["dynamic", "one-cta-per-tile", "static"])
def test_hopper_tile_counter_is_a_workspace(options, elements):
    # The sm_90a prefill kernel's persistent CTAs take their tiles from a
    # counter in a one-element workspace (zeroed by a first stage); one CTA
    # per tile and the static stride need none. Checked before any driver.
    shapes = ((2, 128, 8, 64), (2, 128, 2, 64), (2, 128, 2, 64), (2, 128, 4))
    directory, out_shape, sizes = _gpu.prepare_v2(*shapes, "bf16", "bf16", causal=True,
                                                  target="sm_90a", options=options)
    assert _gpu.workspace_elements(directory, sizes) == elements
    named = [(n, "bf16", s, 0x1000 * (i + 1))
             for i, (n, s) in enumerate(zip(("q", "k", "v", "lam", "out"), shapes + (out_shape,)))]
    handle, names = _runtime.load_module(directory)
    lib = _runtime.runtime()
    rc = lib.diffattn_check(handle, names[0].encode(), _runtime.make_buffers(named), len(named),
                            *sizes)
    error = lib.diffattn_last_error().decode()
    if elements:
        assert rc == 1 and "with a 'workspace' of 1 f32" in error
        with_ws = named + [("workspace", "f32", (1,), 0x9000)]
        assert lib.diffattn_check(handle, names[0].encode(), _runtime.make_buffers(with_ws),
                                  len(with_ws), *sizes) == 0
    else:
        assert rc == 0, error
