"""Serving paths on the GPU (marked `gpu`: skipped without torch and a CUDA
device): the C++ kernel of torch.ops.diffattn.v2 (launch plans cached in
C++, Python only on a configuration's first call) and CUDA-graph capture
and replay of every GPU path.

Kernels: the configurations of benchmarks/gpu_cases.py's PYTEST_GPU_SHAPE
(2H = 8, Hkv = 2, D = 64, bf16) and SERVING_OPTION_VARIANTS; kernels are
keyed by configuration, so any B, Sq, Sk of them loads prepared kernels.
"""
import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

import diffattn  # noqa: E402
from diffattn import _gpu, _runtime, _torch, _torch_native  # noqa: E402

H2, HKV, D = 8, 2, 64
BF16 = torch.bfloat16


def _inputs(b, sq, sk, kv_len=True, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, device="cuda", generator=g).to(BF16)

    q, k, v, lam = rand(b, sq, H2, D), rand(b, sk, HKV, D), rand(b, sk, HKV, D), rand(b, sq, H2 // 2)
    kl = None
    if kv_len:
        # Valid lengths: at least Sq (the new tokens), at most Sk.
        kl = torch.randint(sq, sk + 1, (b,), device="cuda", generator=g, dtype=torch.int32)
    return q, k, v, lam, kl


def _op(q, k, v, lam, kl, causal=True):
    return torch.ops.diffattn.v2(q, k, v, lam, kl, causal, None, -1, -1)


def _python_kernel(q, k, v, lam, kl, causal=True):
    return _torch._run(q, k, v, lam, kl, causal, None, -1, -1)


def test_native_kernel_serves_cuda_calls_where_built():
    if not _torch_native.library_path():
        pytest.skip("the C++ kernel is not built (no torch at build time) or is disabled")
    assert _torch_native.active, _torch_native.reason


@pytest.fixture
def native():
    if not _torch_native.active:
        pytest.skip(f"the C++ kernel is not active: {_torch_native.reason}")


def test_repeated_call_does_not_reach_python(native, monkeypatch):
    """The first call of a configuration asks Python for its plan (the
    kernel cache is consulted there); later calls of it, with other data,
    run without it: with the Python planners made to fail they still
    launch."""
    q, k, v, lam, kl = _inputs(3, 1, 333)
    before = _torch_native.resolver_calls
    first = _op(q, k, v, lam, kl)
    assert _torch_native.resolver_calls == before + 1

    def refuse(*args, **kwargs):
        raise AssertionError("a repeated call reached Python")

    monkeypatch.setattr(_gpu, "prepare_v2", refuse)
    monkeypatch.setattr(_runtime, "load_module", refuse)
    monkeypatch.setattr(_torch_native, "_plan", refuse)
    q2, k2, v2, lam2, kl2 = _inputs(3, 1, 333, seed=1)
    again = _op(q, k, v, lam, kl)
    other = _op(q2, k2, v2, lam2, kl2)
    assert _torch_native.resolver_calls == before + 1
    assert torch.equal(first, again)
    monkeypatch.undo()
    assert torch.equal(other, _python_kernel(q2, k2, v2, lam2, kl2))


def test_kernel_host_time_breakdown(native):
    """diffattn_ext::timing counts the C++ kernel's calls and host time by
    phase (benchmarks/host_cost.py reports it)."""
    q, k, v, lam, kl = _inputs(2, 1, 500)
    _op(q, k, v, lam, kl)
    torch.ops.diffattn_ext.timing(True)
    for _ in range(3):
        _op(q, k, v, lam, kl)
    calls, lookup, alloc, launch, total = torch.ops.diffattn_ext.timing(False)
    assert calls == 3
    assert 0 < lookup + alloc + launch <= total * 1.01


@pytest.mark.parametrize("shape", [(2, 77, 90, False), (2, 1, 500, True), (2, 16, 300, True)],
                         ids=["prefill", "decode", "chunk"])
def test_native_kernel_matches_python_kernel(native, shape):
    b, sq, sk, with_kv_len = shape
    q, k, v, lam, kl = _inputs(b, sq, sk, kv_len=with_kv_len)
    assert torch.equal(_op(q, k, v, lam, kl), _python_kernel(q, k, v, lam, kl))


def test_invalid_calls_raise_named_errors_before_any_launch():
    """Errors name the argument, on the first call of a configuration and
    also after a valid call of the same shapes planned it (contiguity and
    dtypes are part of the plan's key)."""
    q, k, v, lam, kl = _inputs(2, 1, 128)
    _op(q, k, v, lam, kl)
    with pytest.raises(ValueError, match="lam"):
        _op(q, k, v, lam[:, :, :2], kl)
    with pytest.raises(ValueError, match="k: must be contiguous"):
        _op(q, k.transpose(1, 2).contiguous().transpose(1, 2), v, lam, kl)
    with pytest.raises(TypeError, match="kv_len"):
        _op(q, k, v, lam, kl.long())
    with pytest.raises(TypeError, match="v: expected dtype"):
        _op(q, k, v.half(), lam, kl)
    # CPU tensors reach the op's CPU kernel (float64 / float32 / float16).
    with pytest.raises(TypeError, match="q: CPU tensors must be torch.float64 or torch.float32 or "
                       "torch.float16"):
        _op(q.cpu(), k.cpu(), v.cpu(), lam.cpu(), None)


def test_torch_compile_fullgraph_keeps_the_op():
    q, k, v, lam, kl = _inputs(2, 1, 256)

    def block(q, k, v, lam, kl):
        return diffattn.v2(q * 1.0, k, v, lam, causal=True, kv_len=kl) * 2.0

    compiled = torch.compile(block, fullgraph=True)
    assert torch.equal(compiled(q, k, v, lam, kl), block(q, k, v, lam, kl))


# CUDA-graph capture. The rule (docs/design.md): a configuration's first
# launch loads its module into the CUDA context and sets kernel attributes,
# which capture does not allow, so each configuration is run once eagerly
# before it is captured. After that a call allocates only from torch's
# caching allocator (the graph's pool under capture), launches on the
# current stream and never synchronises.
GRAPH_CASES = {
    # (B, Sq, Sk, kv_len?)
    "prefill": (2, 77, 90, False),                # row-block kernels
    "decode-splits": (2, 1, 4096, True),          # 32 splits + combine (programmatic on sm_90)
    "chunk-combine": (2, 16, 1000, True),         # Sq > 16 / G: combine even for few splits
    "decode-one-split-direct": (132, 1, 200, True),  # B x Hkv = 264 CTAs (> 132): one split, no combine
    "chunk-one-split-direct": (132, 4, 200, True),   # G x Sq = 16 rows in one CTA
}


def _capture_and_replay(fn, b, sq, sk, with_kv_len):
    q, k, v, lam, kl = _inputs(b, sq, sk, kv_len=with_kv_len)
    fn(q, k, v, lam, kl)  # warm-up: loads the module (not capturable)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(q, k, v, lam, kl)
    for seed in (11, 12):
        fresh = _inputs(b, sq, sk, kv_len=with_kv_len, seed=seed)
        for static, new in zip((q, k, v, lam, kl), fresh):
            if static is not None:
                static.copy_(new)
        out.fill_(float("nan"))
        graph.replay()
        expected = fn(*fresh)
        torch.cuda.synchronize()
        assert torch.isfinite(out).all(), "the replay left elements unwritten"
        assert torch.equal(out, expected), \
            f"replay differs from eager by {(out.float() - expected.float()).abs().max().item()}"


@pytest.mark.parametrize("path", ["op", "python-kernel"])
@pytest.mark.parametrize("case", list(GRAPH_CASES))
def test_cuda_graph_capture_and_replay(case, path):
    fn = _op if path == "op" else _python_kernel
    _capture_and_replay(fn, *GRAPH_CASES[case])


def test_cuda_graph_capture_of_the_plain_combine_launch():
    """The combine stage without programmatic dependent launch
    (programmatic-launch=false), through the Python launch path."""
    options = ("--gpu-options=programmatic-launch=false",)
    b, sq, sk = 2, 1, 4096
    target = _torch._target_of(torch.cuda.current_device())

    def fn(q, k, v, lam, kl):
        directory, out_shape, sizes = _gpu.prepare_v2(
            tuple(q.shape), tuple(k.shape), tuple(v.shape), tuple(lam.shape), "bf16", "bf16",
            causal=True, kv_len_shape=(b,), target=target, options=options)
        out = torch.empty(out_shape, device="cuda", dtype=BF16)
        scratch = []

        def alloc(n):
            scratch.append(torch.empty(n, device="cuda", dtype=torch.float32))
            return scratch[-1].data_ptr()

        buffers = [(name, elem, tuple(t.shape), t.data_ptr()) for name, elem, t in
                   (("q", "bf16", q), ("k", "bf16", k), ("v", "bf16", v), ("lam", "bf16", lam),
                    ("kv_len", "i32", kl), ("out", "bf16", out))]
        _gpu.launch_v2(directory, buffers, sizes, torch.cuda.current_stream().cuda_stream, alloc)
        return out

    _capture_and_replay(fn, b, sq, sk, True)
    q, k, v, lam, kl = _inputs(b, sq, sk, seed=5)
    torch.testing.assert_close(fn(q, k, v, lam, kl), _python_kernel(q, k, v, lam, kl),
                               rtol=1e-2, atol=1e-2)


def _graph_replays_match(fn, make_inputs):
    """Captures fn(*inputs) after a warm-up, then replays it on fresh inputs
    copied into the captured tensors, against eager calls."""
    static = make_inputs(0)
    fn(*static)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*static)
    for seed in (11, 12):
        fresh = make_inputs(seed)
        for s, n in zip(static, fresh):
            s.copy_(n)
        out.fill_(float("nan"))
        graph.replay()
        expected = fn(*fresh)
        torch.cuda.synchronize()
        assert torch.isfinite(out).all(), "the replay left elements unwritten"
        assert torch.equal(out, expected)


def test_cuda_graph_capture_of_a_paged_cache_decode():
    """(2H = 32, Hkv = 8, D = 128: the kernels benchmarks/gpu_cases.py
    prepares for paged caches and packed sequences.) diffattn.v2_paged
    (split-KV with its workspace from the caching
    allocator): blocks scattered over the pool, table rows padded with an
    out-of-range sentinel; the table and lengths change between replays."""
    b, bs, mb, nb = 3, 16, 64, 200

    def make(seed):
        g = torch.Generator(device="cuda").manual_seed(seed)
        q = torch.randn(b, 1, 32, 128, device="cuda", generator=g).to(BF16)
        kc = torch.randn(nb, bs, 8, 128, device="cuda", generator=g).to(BF16)
        vc = torch.randn(nb, bs, 8, 128, device="cuda", generator=g).to(BF16)
        lam = torch.randn(b, 1, 16, device="cuda", generator=g).to(BF16)
        kl = torch.randint(1, mb * bs + 1, (b,), device="cuda", generator=g, dtype=torch.int32)
        perm = torch.randperm(nb, device="cuda", generator=g)[: b * mb].reshape(b, mb)
        used = (kl.long() + bs - 1) // bs
        slots = torch.arange(mb, device="cuda")[None, :]
        table = torch.where(slots < used[:, None], perm, torch.full_like(perm, -7)).to(torch.int32)
        return q, kc, vc, lam, kl, table

    _graph_replays_match(
        lambda q, kc, vc, lam, kl, t: diffattn.v2(q, kc, vc, lam, causal=True, kv_len=kl,
                                                  block_table=t), make)


def test_cuda_graph_capture_of_a_packed_prefill():
    """diffattn.v2_varlen: the offsets change between replays (same total)."""
    total = 600

    def make(seed):
        g = torch.Generator(device="cuda").manual_seed(seed)
        cuts = torch.sort(torch.randint(0, total + 1, (3,), device="cuda", generator=g))[0].tolist()
        cu = torch.tensor([0] + cuts + [total], dtype=torch.int32, device="cuda")
        q = torch.randn(total, 32, 128, device="cuda", generator=g).to(BF16)
        k = torch.randn(total, 8, 128, device="cuda", generator=g).to(BF16)
        v = torch.randn(total, 8, 128, device="cuda", generator=g).to(BF16)
        lam = torch.randn(total, 16, device="cuda", generator=g).to(BF16)
        return q, k, v, lam, cu

    _graph_replays_match(
        lambda q, k, v, lam, cu: diffattn.v2_varlen(q, k, v, lam, cu, cu, 600, 600, causal=True),
        make)
