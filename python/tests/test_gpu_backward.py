"""The GPU backward (issue 15): diffattn.v2_backward's kernels and
diffattn.v2's lse on the GPU targets: the deterministic kernels (the
default) and, on sm_90 and later, the accumulating ones (dq through bulk
reductions; --gpu-options=deterministic=false). Compilation and argument
checks run wherever the compiler does (CI); execution is marked `gpu` and
skips without torch and a CUDA device (benchmarks/gpu_backward_check.py is
the full check: 37 shapes, timing, training)."""
import contextlib
import json
import os

import numpy as np
import pytest

from diffattn import _compiler, _gpu

needs_compiler = pytest.mark.skipif(_compiler.compiler_version() is None,
                                    reason="needs diffattn-compile")

# (B, Sq, Sk, 2H, Hkv, D): a configuration of gpu_cases.BACKWARD_CHECK_CASES
# (so that a GPU machine finds its kernels in the prepared cache).
SHAPE = (1, 77, 201, 8, 2, 64)


def _shapes(b, sq, sk, h2, hkv, d):
    out = (b, sq, h2 // 2, d)
    return dict(q_shape=(b, sq, h2, d), k_shape=(b, sk, hkv, d), v_shape=(b, sk, hkv, d),
                lam_shape=(b, sq, h2 // 2), out_shape=out, dout_shape=out,
                lse_shape=(b, h2, sq))


def _manifest(directory):
    with open(os.path.join(directory, "manifest.json")) as f:
        return json.load(f)["kernels"][0]


# The strategy option of the accumulating backward.
ACCUMULATE = _gpu.ACCUMULATE_OPTIONS


@needs_compiler
@pytest.mark.parametrize("target,options,stages,dq_floats", [
    # The default, deterministic.
    ("sm_90a", (), ["stats", "dq", "dkdv"], 0),
    ("sm_80", (), ["stats", "dq", "dkdv"], 0),
    # Accumulating, sm_90 on: the statistics kernel zeroes an f32 dq
    # accumulator (B x Sq x 2H x D after the records; on sm_90a Sq rounded
    # up to the dk/dv kernel's query blocks), the dk/dv kernel adds to it,
    # the last kernel converts it (with out_odd a kernel of its own zeroes
    # it first: test_backward_with_out_odd_reads_it); sm_80 has no bulk
    # reduction and keeps the deterministic kernels.
    ("sm_90a", ACCUMULATE, ["stats", "dkdv", "dq_convert"], SHAPE[3] * SHAPE[5]),
    ("sm_90", ACCUMULATE, ["stats", "dkdv", "dq_convert"], SHAPE[3] * SHAPE[5]),
    ("sm_80", ACCUMULATE, ["stats", "dq", "dkdv"], 0),
])
def test_backward_kernels_compile(target, options, stages, dq_floats):
    directory, sizes = _gpu.prepare_v2_backward(**_shapes(*SHAPE), elem="bf16", lam_elem="bf16",
                                                causal=True, target=target, options=options)
    assert sizes == (1, 77, 201)
    kernel = _manifest(directory)
    launch = kernel["launch"]
    # sm_90a's kernels are the wgmma ones, both formulations.
    assert launch["strategy"] == ("wgmma" if target == "sm_90a" else "mma_sync")
    product = launch["workspace"]["product"]
    assert product[1]["ceil_div"] == "Sq" and product[1]["mul"] == 1
    if target == "sm_90a" and options:
        # Sq rounded up to the dk/dv kernel's 64-row query blocks (D = 64).
        assert product[1]["by"] == 64 and product[2] == 64
    else:
        assert product[1]["by"] == 1 and len(product) == 2
    assert _gpu.workspace_elements(directory, sizes) == (
        1 * (128 if target == "sm_90a" and options else 77) * launch["workspace"]["times"])
    name = kernel["name"]
    assert [s["function"][len(name) + 1:] for s in launch["stages"]] == stages
    buffers = [a["name"] for a in kernel["args"] if "shape" in a]
    assert buffers == ["q", "k", "v", "lam", "out", "dout", "lse", "dq", "dk", "dv", "dlam"]
    # The workspace: an 8-float record per (b, pair, i), B x Sq x H x 8 f32,
    # then the dq accumulator.
    assert launch["workspace"]["times"] == SHAPE[3] // 2 * 8 + dq_floats


@needs_compiler
def test_forward_with_lse_compiles_on_hopper():
    s = _shapes(*SHAPE)
    directory, out_shape, _ = _gpu.prepare_v2(s["q_shape"], s["k_shape"], s["v_shape"],
                                              s["lam_shape"], "bf16", "bf16", causal=True,
                                              target="sm_90a", return_lse=True)
    kernel = _manifest(directory)
    assert kernel["launch"]["strategy"] == "wgmma"
    assert [a["name"] for a in kernel["args"] if "shape" in a][-2:] == ["out", "lse"]


@needs_compiler
@pytest.mark.parametrize("target,options", [
    ("sm_90a", ()), ("sm_90a", ACCUMULATE), ("sm_80", ()), ("sm_90", ACCUMULATE)])
def test_backward_with_out_odd_reads_it(target, options):
    # With the forward's out_odd the statistics kernel is the
    # bandwidth-bound one of both strategies (four threads per row, 64
    # (query row, pair) rows per CTA, no shared memory, no matrix
    # instruction); the other kernels are unchanged.
    s = _shapes(*SHAPE)
    directory, sizes = _gpu.prepare_v2_backward(**s, elem="bf16", lam_elem="bf16", causal=True,
                                                target=target, options=options,
                                                out_odd_shape=s["out_shape"])
    kernel = _manifest(directory)
    buffers = [a["name"] for a in kernel["args"] if "shape" in a]
    assert buffers == ["q", "k", "v", "lam", "out", "dout", "lse", "out_odd", "dq", "dk", "dv",
                       "dlam"]
    assert kernel["name"].endswith("_odd")
    # The accumulating formulation zeroes its dq accumulator in a kernel of
    # its own, launched first, so that the statistics kernel only reads.
    suffixes = [s["function"][len(kernel["name"]) + 1:] for s in kernel["launch"]["stages"]]
    assert suffixes == (["dq_zero", "stats", "dkdv", "dq_convert"] if options else
                        ["stats", "dq", "dkdv"])
    stats = kernel["launch"]["stages"][suffixes.index("stats")]
    assert stats["block"] == [256, 1, 1] and stats["dynamic_shared_memory"] == 0
    # 64 (query row, pair) rows per CTA, the pair fastest.
    assert stats["grid"][0] == {"ceil_div": "Sq", "by": 64, "mul": SHAPE[3] // 2}
    assert stats["grid"][1] == 1
    ptx = [f for f in os.listdir(directory) if f.endswith(".ptx")]
    with open(os.path.join(directory, ptx[0])) as f:
        text = f.read()
    body = text[text.index("_stats("):text.index(".entry", text.index("_stats("))]
    assert "mma" not in body and "ld.global.v4" in body and "st.global.v4" not in body
    if options:
        zero = kernel["launch"]["stages"][0]
        assert zero["block"] == [256, 1, 1] and zero["dynamic_shared_memory"] == 0
        start = text.index("_dq_zero(")
        body = text[start:text.index(".entry", start)]
        assert "ld.global" not in body and "mma" not in body
        assert "st.global.v4.b32" in body
    # The forward that writes it: out, lse, out_odd.
    fwd, _, _ = _gpu.prepare_v2(s["q_shape"], s["k_shape"], s["v_shape"], s["lam_shape"],
                                "bf16", "bf16", causal=True, target=target, return_lse=True,
                                return_out_odd=True)
    assert [a["name"] for a in _manifest(fwd)["args"] if "shape" in a][-3:] == [
        "out", "lse", "out_odd"]


@needs_compiler
def test_out_odd_errors():
    s = _shapes(*SHAPE)
    with pytest.raises(ValueError, match=r"out_odd: expected shape \(1, 77, 4, 64\)"):
        _gpu.prepare_v2_backward(**s, elem="bf16", lam_elem="bf16", causal=True,
                                 target="sm_80", out_odd_shape=(1, 77, 4, 32))
    with pytest.raises(ValueError, match="return_out_odd: needs return_lse"):
        _gpu.prepare_v2(s["q_shape"], s["k_shape"], s["v_shape"], s["lam_shape"], "bf16",
                        "bf16", target="sm_80", return_out_odd=True)


@needs_compiler
@pytest.mark.parametrize("name,change,error,match", [
    ("lse", dict(lse_shape=(1, 8, 76)), ValueError, r"lse: expected shape \(1, 8, 77\)"),
    ("dout", dict(dout_shape=(1, 77, 4, 32)), ValueError, "dout: expected shape"),
    ("out", dict(out_shape=(1, 77, 8, 64)), ValueError, "out: expected shape"),
    ("q", dict(q_shape=(1, 77, 8, 32), out_shape=(1, 77, 4, 32), dout_shape=(1, 77, 4, 32),
               k_shape=(1, 201, 2, 32), v_shape=(1, 201, 2, 32)),
     ValueError, "q: head dimension D = 32 has no GPU kernel"),
])
def test_backward_argument_errors(name, change, error, match):
    kwargs = dict(_shapes(*SHAPE), **change)
    with pytest.raises(error, match=match):
        _gpu.prepare_v2_backward(**kwargs, elem="bf16", lam_elem="bf16", causal=True,
                                 target="sm_80")


def test_backward_dtype_error():
    with pytest.raises(TypeError, match="q: expected dtype bfloat16 or float16 on the GPU"):
        _gpu.prepare_v2_backward(**_shapes(*SHAPE), elem="f32", lam_elem="f32", target="sm_80")


def _cuda_torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return torch


@contextlib.contextmanager
def _deterministic(torch):
    """torch.use_deterministic_algorithms(True) inside the block (the
    deterministic backward kernels, _torch.default_backward_options), the
    earlier setting restored after."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,tol,case", [
    ("bfloat16", 4e-2, (1, 77, 201, 8, 2, 64, True, (-1, -1), None)),
    ("float16", 1.2e-2, (2, 128, 128, 8, 2, 64, True, (-1, -1), None)),
    ("bfloat16", 4e-2, (2, 100, 100, 8, 2, 128, True, (-1, -1), [100, 37])),
    ("bfloat16", 4e-2, (1, 200, 300, 8, 2, 128, False, (17, 5), None)),
])
def test_gradients_match_reference(dtype, tol, case):
    torch = _cuda_torch()
    import diffattn

    b, sq, sk, h2, hkv, d, causal, window, kv_len = case
    dt = getattr(torch, dtype)
    q = torch.randn(b, sq, h2, d, device="cuda").to(dt)
    k = torch.randn(b, sk, hkv, d, device="cuda").to(dt)
    v = torch.randn(b, sk, hkv, d, device="cuda").to(dt)
    lam = torch.randn(b, sq, h2 // 2, device="cuda").to(dt)
    dout = torch.randn(b, sq, h2 // 2, d, device="cuda").to(dt)
    kl = None if kv_len is None else torch.tensor(kv_len, dtype=torch.int32, device="cuda")
    out, lse = diffattn.v2(q, k, v, lam, causal=causal, window=window, kv_len=kl,
                           return_lse=True)
    from diffattn import _torch

    def backward():
        return diffattn.v2_backward(q, k, v, lam, out, dout, lse, causal=causal,
                                    window=window, kv_len=kl)

    # The deterministic kernels (what torch.use_deterministic_algorithms(True)
    # selects; the default elsewhere than sm_90a).
    with _deterministic(torch):
        det, again = backward(), backward()
    grads = _torch.backward_cuda(q, k, v, lam, out, dout, lse, kl, causal, None, *window,
                                 options=ACCUMULATE)
    # The training forward's out_odd (A_{2h+1}), read by both formulations.
    out_t, lse_t, odd = _torch.v2_train_cuda(q, k, v, lam, kl, causal, None, *window)
    assert torch.equal(out_t, out) and torch.equal(lse_t, lse)
    odd_grads = [_torch.backward_cuda(q, k, v, lam, out, dout, lse, kl, causal, None, *window,
                                      options=o, out_odd=odd) for o in ((), ACCUMULATE)]
    np_in = [t.float().cpu().numpy() for t in (q, k, v, lam)]
    kv_np = None if kv_len is None else np.array(kv_len, np.int32)
    ref = diffattn.reference.v2_backward(*np_in, dout.float().cpu().numpy(), causal=causal,
                                         window=window, kv_len=kv_np)
    ref_odd = diffattn.reference._attention(
        *np_in[:3], scale=1.0 / np.sqrt(d), causal=causal, window=window,
        kv_len=kv_np)[:, :, 1::2]
    assert np.linalg.norm(odd.double().cpu().numpy() - ref_odd) / np.linalg.norm(ref_odd) < tol
    for name, got, d, want, twice, o0, o1 in zip(("dq", "dk", "dv", "dlam"), grads, det, ref,
                                                 again, *odd_grads):
        for x in (got, d, o0, o1):
            x_np = x.double().cpu().numpy()
            assert x.dtype == dt or name == "dlam", name
            assert np.all(np.isfinite(x_np)), name
            assert np.linalg.norm(x_np - want) / np.linalg.norm(want) < tol, name
        assert torch.equal(d, twice), f"{name}: not deterministic"


@pytest.mark.gpu
def test_autograd_on_cuda_matches_the_backward_op():
    torch = _cuda_torch()
    import diffattn

    b, sq, sk, h2, hkv, d = SHAPE
    q, k, v = (torch.randn(*s, device="cuda", dtype=torch.bfloat16).requires_grad_()
               for s in ((b, sq, h2, d), (b, sk, hkv, d), (b, sk, hkv, d)))
    lam = torch.randn(b, sq, h2 // 2, device="cuda", dtype=torch.bfloat16).requires_grad_()
    # Bit-equality needs the deterministic kernels (on sm_90a the default
    # accumulates dq in a varying order).
    with _deterministic(torch):
        out = torch.ops.diffattn.v2(q, k, v, lam, None, True, None, -1, -1)
        dout = torch.randn_like(out)
        out.backward(dout)
        with torch.no_grad():
            # Autograd saves out, lse and out_odd from the training forward
            # and its backward reads out_odd.
            from diffattn import _torch

            _, lse, odd = _torch.v2_train_cuda(q, k, v, lam, None, True, None, -1, -1)
            want = _torch.v2_backward_cuda(q, k, v, lam, out.detach(), dout, lse, None, True,
                                           None, -1, -1, out_odd=odd)
    for t, w in zip((q, k, v, lam), want):
        assert torch.equal(t.grad, w)


@pytest.mark.gpu
def test_training_steps_run_the_cpp_kernels(monkeypatch):
    """Where the build made the C++ library, the CUDA calls of the training
    forward and the backward run its kernels (python/csrc/torch_train.cpp):
    a configuration's first step asks Python for the plans, a later step
    with other data runs no Python kernel, planner or launcher and gets
    what the Python kernels compute (bit-identical with the deterministic
    kernels); the determinism setting is part of the backward's key."""
    torch = _cuda_torch()
    from diffattn import _runtime, _torch, _torch_native

    if not _torch_native.active:
        pytest.skip(f"the C++ kernel is not active: {_torch_native.reason}")
    assert _torch_native.training_in_cpp()
    b, sq, sk, h2, hkv, d = SHAPE

    def step(seed):
        g = torch.Generator(device="cuda").manual_seed(seed)
        q, k, v = (torch.randn(*s, device="cuda", generator=g).to(torch.bfloat16)
                   .requires_grad_() for s in ((b, sq, h2, d), (b, sk, hkv, d), (b, sk, hkv, d)))
        lam = torch.randn(b, sq, h2 // 2, device="cuda", generator=g).to(torch.bfloat16)
        lam.requires_grad_()
        out = torch.ops.diffattn.v2(q, k, v, lam, None, True, None, -1, -1)
        dout = torch.randn(out.shape, device="cuda", generator=g).to(torch.bfloat16)
        out.backward(dout)
        return (q, k, v, lam), out.detach(), dout

    with _deterministic(torch):
        step(0)
        before = _torch_native.resolver_calls

        def refuse(*args, **kwargs):
            raise AssertionError("a planned training call reached Python")

        # (The resolvers themselves are registered function objects: what
        # they call is what is replaced.)
        for module, name in ((_gpu, "prepare_v2"), (_gpu, "prepare_v2_backward"),
                             (_runtime, "load_module"), (_torch, "_launch")):
            monkeypatch.setattr(module, name, refuse)
        leaves, out, dout = step(1)
        assert _torch_native.resolver_calls == before
        monkeypatch.undo()
        q, k, v, lam = (t.detach() for t in leaves)
        want_out, lse, odd = _torch.v2_train_cuda(q, k, v, lam, None, True, None, -1, -1)
        want = _torch.v2_backward_cuda(q, k, v, lam, out, dout, lse, None, True, None, -1, -1,
                                       out_odd=odd)
    assert torch.equal(out, want_out)
    for name, t, w in zip(("dq", "dk", "dv", "dlam"), leaves, want):
        assert torch.equal(t.grad, w), name
    # Without torch's determinism the backward is another configuration
    # (its key holds the setting on every target; the kernels differ on
    # sm_90 and sm_90a): planned once more.
    before = _torch_native.resolver_calls
    step(2)
    assert _torch_native.resolver_calls == before + 1


@pytest.mark.gpu
@pytest.mark.parametrize("name,change,error,match", [
    ("lse", lambda t: t.bfloat16(), TypeError, "lse: expected dtype"),
    ("out_odd", lambda t: t[:, :-1], ValueError, "out_odd"),
    ("dout", lambda t: t.cpu(), ValueError, "dout: expected a CUDA tensor"),
])
def test_backward_op_errors_name_the_tensor(name, change, error, match):
    """torch.ops.diffattn.v2_backward on CUDA (the C++ kernel where built:
    its Python planner raises) rejects a saved tensor that does not match
    the forward's configuration, naming it, before anything runs."""
    torch = _cuda_torch()
    from diffattn import _torch

    b, sq, sk, h2, hkv, d = SHAPE
    q = torch.randn(b, sq, h2, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, sk, hkv, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(b, sk, hkv, d, device="cuda", dtype=torch.bfloat16)
    lam = torch.randn(b, sq, h2 // 2, device="cuda", dtype=torch.bfloat16)
    out, lse, odd = _torch.v2_train_cuda(q, k, v, lam, None, True, None, -1, -1)
    args = dict(out=out, dout=torch.randn_like(out), lse=lse, out_odd=odd)
    args[name] = change(args[name]).contiguous()
    with pytest.raises(error, match=match):
        torch.ops.diffattn.v2_backward(q, k, v, lam, args["out"], args["dout"], args["lse"],
                                       None, True, None, -1, -1, args["out_odd"])


@pytest.mark.gpu
def test_keys_past_kv_len_are_never_read():
    """Whatever the cache holds at t >= kv_len[b] (NaN, Inf) changes no
    gradient, and those keys get dk = dv = 0 (as on the CPU)."""
    torch = _cuda_torch()
    import diffattn

    b, sq, sk, h2, hkv, d, lens = 2, 100, 100, 8, 2, 128, [100, 37]
    q = torch.randn(b, sq, h2, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, sk, hkv, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(b, sk, hkv, d, device="cuda", dtype=torch.bfloat16)
    lam = torch.randn(b, sq, h2 // 2, device="cuda", dtype=torch.bfloat16)
    dout = torch.randn(b, sq, h2 // 2, d, device="cuda", dtype=torch.bfloat16)
    kl = torch.tensor(lens, dtype=torch.int32, device="cuda")
    out, lse = diffattn.v2(q, k, v, lam, causal=True, kv_len=kl, return_lse=True)
    from diffattn import _torch

    def backward(options=()):
        return _torch.backward_cuda(q, k, v, lam, out, dout, lse, kl, True, None, -1, -1,
                                    options=options)

    clean, clean_acc = backward(), backward(ACCUMULATE)
    k[1, lens[1]:], v[1, lens[1]:] = float("nan"), float("inf")
    dirty, dirty_acc = backward(), backward(ACCUMULATE)
    for name, x, y in zip(("dq", "dk", "dv", "dlam"), clean, dirty):
        assert torch.equal(x, y), name
    # With dq accumulated, only dq's order of summation may differ.
    for name, x, y in zip(("dq", "dk", "dv", "dlam"), clean_acc, dirty_acc):
        assert torch.isfinite(y).all(), name
        if name == "dq":
            torch.testing.assert_close(x, y, rtol=1e-2, atol=1e-2)
        else:
            assert torch.equal(x, y), name
    for grads in (dirty, dirty_acc):
        assert not grads[1][1, lens[1]:].any() and not grads[2][1, lens[1]:].any()


@pytest.mark.gpu
def test_default_backward_kernels_follow_torch_determinism(monkeypatch):
    # sm_90a and sm_90 (the portable kernels on Hopper): the accumulating
    # kernels unless torch asks for deterministic algorithms; sm_80 (no
    # bulk reductions): the deterministic kernels.
    torch = _cuda_torch()
    from diffattn import _torch

    for target in ("sm_90a", "sm_90"):
        monkeypatch.setattr(_torch, "_target_of", lambda index, t=target: t)
        assert _torch.default_backward_options(0) == ACCUMULATE == _torch.ACCUMULATE_OPTIONS
        with _deterministic(torch):
            assert _torch.default_backward_options(0) == ()
    monkeypatch.setattr(_torch, "_target_of", lambda index: "sm_80")
    assert _torch.default_backward_options(0) == ()


@pytest.mark.gpu
@pytest.mark.parametrize("d", [128, 64])
def test_dq_at_any_element_offset(d):
    # The accumulating backward's dq conversion stores whole 16-byte pieces
    # of dq's rows where dq starts 16-byte aligned, else 2-byte stores: a dq
    # one element into its buffer must get the same values as an aligned
    # one, and the element before it must stay untouched.
    torch = _cuda_torch()
    from diffattn import _torch

    if _torch._target_of(0) != "sm_90a":
        pytest.skip("the wgmma dq conversion runs on sm_90a")
    g = torch.Generator(device="cuda").manual_seed(5)
    b, sq, sk, h2, hkv = 2, 77, 90, 8, 2
    q, k, v = (torch.randn(b, s, h, d, device="cuda", generator=g).to(torch.bfloat16)
               for s, h in ((sq, h2), (sk, hkv), (sk, hkv)))
    lam = torch.randn(b, sq, h2 // 2, device="cuda", generator=g).to(torch.bfloat16)
    dout = torch.randn(b, sq, h2 // 2, d, device="cuda", generator=g).to(torch.bfloat16)
    out, lse = _torch.v2_lse_cuda(q, k, v, lam, None, True, None, -1, -1)
    want = _torch.backward_cuda(q, k, v, lam, out, dout, lse, None, True, None, -1, -1,
                                options=ACCUMULATE)[0]
    directory, sizes = _gpu.prepare_v2_backward(
        tuple(q.shape), tuple(k.shape), tuple(v.shape), tuple(lam.shape), tuple(out.shape),
        tuple(dout.shape), tuple(lse.shape), "bf16", "bf16", causal=True, target="sm_90a",
        options=ACCUMULATE)
    flat = torch.full((q.numel() + 1,), float("nan"), device="cuda", dtype=torch.bfloat16)
    flat[0] = 7.0
    dq = flat[1:].view(q.shape)
    assert dq.data_ptr() % 16 != 0
    grads = [dq] + [torch.empty_like(x) for x in (k, v, lam)]
    named = [("q", "x", q), ("k", "x", k), ("v", "x", v), ("lam", "x", lam), ("out", "x", out),
             ("dout", "x", dout), ("lse", "f32", lse)]
    named += list(zip(("dq", "dk", "dv", "dlam"), ("x",) * 4, grads))
    _torch._launch(directory, named, sizes, q.device)
    torch.cuda.synchronize()
    assert torch.isfinite(dq).all()
    rel = ((dq.float() - want.float()).norm() / want.float().norm()).item()
    assert rel < 1e-4  # the reductions' order is not fixed
    assert flat[0].item() == 7.0
