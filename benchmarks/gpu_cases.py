"""The shapes the GPU check and benchmark run (shared by gpu_prepare.py,
which compiles their kernels on a machine with the compiler, and
gpu_check.py, which runs them on the GPU)."""

# Correctness: (B, Sq, Sk, 2H, Hkv, D, dtype, causal, window, kv_len or None)
CHECK_CASES = [
    (2, 128, 128, 8, 2, 64, "bf16", True, (-1, -1), None),
    (2, 128, 128, 8, 2, 64, "bf16", False, (-1, -1), None),
    (1, 77, 77, 8, 2, 64, "bf16", True, (-1, -1), None),        # odd length
    (1, 77, 201, 8, 2, 64, "bf16", True, (-1, -1), None),       # Sq < Sk causal
    (1, 201, 77, 8, 2, 64, "bf16", True, (-1, -1), None),       # Sq > Sk causal: empty rows
    (3, 65, 129, 8, 2, 64, "bf16", False, (-1, -1), None),
    (2, 130, 130, 8, 2, 128, "bf16", True, (-1, -1), None),
    (1, 333, 333, 8, 2, 128, "bf16", False, (-1, -1), None),
    (1, 64, 1000, 8, 2, 128, "bf16", True, (-1, -1), None),
    (2, 128, 128, 16, 2, 64, "bf16", True, (-1, -1), None),     # G = 8
    (2, 128, 128, 4, 2, 128, "bf16", True, (-1, -1), None),     # G = 2
    (1, 256, 256, 8, 2, 64, "bf16", True, (63, 0), None),       # sliding window
    (1, 256, 256, 8, 2, 64, "bf16", False, (40, 40), None),
    (2, 128, 128, 8, 2, 64, "f16", True, (-1, -1), None),
    (1, 99, 150, 8, 2, 128, "f16", False, (-1, -1), None),
    (1, 300, 300, 32, 8, 128, "f16", True, (-1, -1), None),
    (4, 1, 500, 32, 8, 128, "bf16", True, (-1, -1), [0, 1, 257, 500]),   # ragged decode
    (3, 4, 300, 32, 8, 128, "bf16", True, (-1, -1), [4, 150, 300]),
    (2, 16, 777, 32, 8, 64, "bf16", True, (-1, -1), [16, 700]),
    (5, 2, 129, 8, 2, 128, "f16", True, (-1, -1), [2, 64, 65, 128, 129]),
    (1, 1024, 1024, 32, 8, 128, "bf16", True, (-1, -1), None),
    (2, 512, 512, 32, 16, 128, "bf16", True, (-1, -1), None),
    # Decode launches with one split (B x Hkv CTAs fill a wave): with
    # G x Sq <= 16 the split kernel writes the output itself (no combine),
    # else the combine merges one split.
    (32, 1, 300, 32, 8, 128, "bf16", True, (-1, -1), [(37 * i) % 301 for i in range(32)]),
    (32, 4, 300, 32, 8, 128, "bf16", True, (-1, -1), [4 + (29 * i) % 297 for i in range(32)]),
    (32, 8, 200, 32, 8, 64, "f16", True, (-1, -1), [8 + (13 * i) % 193 for i in range(32)]),
]

# Prefill timing (SPEC.md's anchor table): (B, S, 2H, Hkv, D, causal)
BENCH_PREFILL = [
    (4, 4096, 32, 8, 128, True),
    (4, 4096, 32, 8, 128, False),
    (1, 16384, 32, 8, 128, True),
    (4, 4096, 32, 8, 64, True),
    (8, 2048, 32, 16, 128, True),
]

# Targets (and diffattn-compile options) whose kernels are timed beside
# the default target's on the prefill shapes, where the GPU runs them, with
# the head dimensions they apply to (None: all): on an H100/H200 (default
# sm_90a, wgmma) the portable strategy (sm_90), the wgmma kernel with one
# CTA per tile (the default until Hopper run 33) and with persistent CTAs
# on the static stride, and at D = 64 wider key blocks (FlashAttention-3
# takes 192 there; the default since Hopper run 26).
BENCH_TARGETS = [
    ("sm_90", (), None),
    ("sm_90a", ("--gpu-options=persistent=false",), None),
    ("sm_90a", ("--gpu-options=tile-scheduler=static",), None),
    ("sm_90a", ("--gpu-options=block-k=176",), (64,)),
    ("sm_90a", ("--gpu-options=block-k=192",), (64,)),
]


# Decode timing: (B, kv_len, 2H, Hkv, D), one new token
BENCH_DECODE = [
    (32, 8192, 32, 8, 128),
    (8, 32768, 32, 8, 128),
    (1, 16384, 32, 8, 128),   # small batch: the split size matters most
    # The first shape's bytes with one KV head per batch row: each head's
    # K/V contiguous (as in the anchors' BHSD copies) instead of 256-byte
    # rows 2 KiB apart (BSHD with 8 KV heads).
    (256, 8192, 4, 1, 128),
]


# Strategy variants timed beside the default kernel on the prefill shapes
# with this head dimension: (D, diffattn-compile options).
BENCH_VARIANTS = [
]

# Strategy variants timed beside the default split-KV kernel on the decode
# shapes: diffattn-compile options.
BENCH_DECODE_VARIANTS = [
    ("--gpu-options=l2-prefetch=true",),
]

# Paged KV cache (diffattn.v2_paged): block sizes whose decode kernels the
# GPU tests (python/tests/test_paged.py) and the paged decode timing use;
# 2H = 32, Hkv = 8, D = 128, bf16, causal.
# (benchmarks/serving_decode.py runs the 256 one: 32 query / 8 KV heads,
# D 128, bf16, causal.)
PAGED_BLOCK_SIZES = (16, 64, 256)
# Paged decode timing beside the contiguous cache: (B, kv_len, block size).
BENCH_PAGED_DECODE = [
    (32, 8192, 16),
    (32, 8192, 256),
]

# Packed variable-length prefill (diffattn.v2_varlen), 2H = 32, Hkv = 8,
# D = 128, bf16: the masks the GPU tests use, and the prefill shapes whose
# FLOP rate the timing compares with the equal-length batched kernel.
VARLEN_CAUSAL = (True, False)
BENCH_VARLEN = [(4, 4096, True), (4, 4096, False)]
# Kernel variants benchmarks/gpu_varlen_tiles.py times beside the default
# (and the portable sm_90 kernel): (target, diffattn-compile options). On
# sm_90a: the cp.async producer (the packed kernel before Hopper run 17)
# and a register split with a larger producer (its loads of cu_seqlens).
VARLEN_KERNEL_VARIANTS = [("sm_90a", ("--gpu-options=tma=false",)),
                          ("sm_90a", ("--gpu-options=consumer-registers=232",))]

# Small-batch decode under graph replay (benchmarks/gpu_small_decode.py):
# (B, kv_len) and the split-target variants timed beside the default.
# The sm_90 default aims at 132 CTAs (until serving-host run 1: 264) and
# merges 8 splits per combine step (combine-splits-per-step; 4 in
# serving-host runs 1-2, where "combine-splits-per-step=8" was a variant).
SMALL_DECODE = [(1, 4096), (1, 16384), (1, 32768), (4, 4096), (4, 16384)]
SMALL_DECODE_VARIANTS = ("split-target-ctas=264", "combine-splits-per-step=1",
                         "combine-splits-per-step=4",
                         "split-target-ctas=264 combine-splits-per-step=1")

# Small launches run under compute-sanitizer: (B, Sq, Sk, 2H, Hkv, D, causal,
# kv_len).
SANITIZE_CASES = [
    (2, 70, 90, 8, 2, 64, True, None),
    (2, 70, 90, 8, 2, 128, False, None),
    (2, 128, 160, 8, 2, 128, True, None),        # Sq % 64 == 0: Q through TMA (q-tma)
    (3, 1024, 512, 8, 2, 128, False, None),       # 192 tiles; again persistent, below
    (2, 70, 90, 8, 2, 128, True, [3, 90]),       # split-KV, two splits
    (2, 1, 60, 8, 2, 128, True, [3, 60]),        # one split: no combine
]

# ... the case above (B, Sq, Sk, 2H, Hkv, D, causal) again on sm_90a with
# one CTA per tile, which the default kernel (persistent CTAs: 132 over 192
# tiles, a second tile loading its Q into the second Q buffer while the
# first is computed, tiles after the first from the dynamic scheduler's
# counter) must match bit for bit.
SANITIZE_PERSISTENT = ((3, 1024, 512, 8, 2, 128, False), ("--gpu-options=persistent=false",))


# python/tests/test_gpu_overlap_tiles.py: the sm_90a forward with
# overlap-tiles=true against overlap-tiles=false (the default), bit for bit,
# on shapes whose persistent CTAs run several tiles each (more tiles than
# an H100/H200's 132 SMs): (B, Sq, Sk, 2H, Hkv, D, dtype, causal, window,
# further strategy options of both kernels). Pairs per KV group 1 (no
# 2-CTA clusters), 2, 4 and 8; Sq != Sk, odd lengths, a window, tiles
# without key blocks (causal, Sq > Sk), f16 and bf16; D = 64 at block-k
# 176 and 128 (auto's choices: 192 leaves too few registers), the exchange
# epilogue, Q after block 0, cp.async loads.
OVERLAP_CASES = [
    (3, 1024, 512, 8, 2, 128, "bf16", False, (-1, -1), ""),
    (2, 1000, 1200, 32, 8, 128, "bf16", True, (-1, -1), ""),
    (4, 333, 517, 16, 2, 64, "f16", True, (64, 0), "block-k=176"),
    (2, 2048, 2048, 32, 4, 128, "f16", False, (-1, -1), "epilogue=exchange"),
    (1, 4096, 4096, 16, 8, 128, "bf16", True, (-1, -1), ""),
    (2, 777, 777, 32, 2, 64, "bf16", True, (-1, -1), "block-k=128 q-first=false"),
    (2, 700, 300, 32, 8, 128, "bf16", True, (-1, -1), ""),
    (3, 1024, 512, 8, 2, 128, "bf16", True, (-1, -1), "tma=false consumer-registers=240"),
]


def overlap_options(extra, on):
    """The diffattn-compile flags of an OVERLAP_CASES kernel: overlap-tiles
    on or off, then the case's `extra` strategy options."""
    return (f"--gpu-options=overlap-tiles={'true' if on else 'false'}"
            + (f" {extra}" if extra else ""),)


def overlap_requests():
    """OVERLAP_CASES' kernel requests (keyword arguments of
    diffattn._gpu.prepare_v2, sm_90a), both settings each."""
    return [dict(q_shape=(b, sq, h2, d), k_shape=(b, sk, hkv, d), v_shape=(b, sk, hkv, d),
                 lam_shape=(b, sq, h2 // 2), elem=dtype, lam_elem=dtype, causal=causal,
                 window=window, kv_len_shape=None, options=overlap_options(extra, on),
                 target="sm_90a")
            for b, sq, sk, h2, hkv, d, dtype, causal, window, extra in OVERLAP_CASES
            for on in (True, False)]


# python/tests/test_gpu.py (the short GPU test of the pytest suite):
# (B, Sq, Sk, 2H, Hkv, D) in bf16 and f16, causal and not.
PYTEST_GPU_SHAPE = (2, 77, 90, 8, 2, 64)
# ... and its decode-form kernels (kv_len given; test_gpu.py's kv_len range
# checks and test_ignored_keys.py's NaN/Inf cache tails): 2H = 8, Hkv = 2,
# D = 64, bf16, causal and not.
PYTEST_GPU_KV_LEN_CAUSAL = (True, False)


# python/tests/test_gpu_serving.py: the decode-form kernel of the pytest
# configuration (2H = 8, Hkv = 2, D = 64, bf16, causal) built with these
# diffattn-compile options too (the combine launched without programmatic
# dependent launch, captured in a CUDA graph).
SERVING_OPTION_VARIANTS = [
    ("--gpu-options=programmatic-launch=false",),
]

# benchmarks/host_cost.py: decode steps (B, kv_len), one token, D 128,
# 32 query / 8 KV heads, bf16 (the kernel of BENCH_DECODE's configuration).
HOST_COST_DECODE = [(1, 4096), (1, 16384), (4, 4096), (4, 16384)]


# The backward (issue 15; benchmarks/gpu_backward_check.py).
# Gradients against the float64 reference, CHECK_CASES' tuple layout:
# odd lengths, Sq != Sk both ways, windows, G = 2..8, ragged kv_len
# (including 0), f16 and bf16, D 64 and 128.
BACKWARD_CHECK_CASES = [
    (2, 128, 128, 8, 2, 64, "bf16", True, (-1, -1), None),
    (2, 128, 128, 8, 2, 64, "bf16", False, (-1, -1), None),
    (1, 77, 77, 8, 2, 64, "bf16", True, (-1, -1), None),        # odd length
    (1, 77, 201, 8, 2, 64, "bf16", True, (-1, -1), None),       # Sq < Sk causal
    (1, 201, 77, 8, 2, 64, "bf16", True, (-1, -1), None),       # Sq > Sk causal: empty rows
    (3, 65, 129, 8, 2, 64, "bf16", False, (-1, -1), None),
    (2, 130, 130, 8, 2, 128, "bf16", True, (-1, -1), None),
    (1, 333, 333, 8, 2, 128, "bf16", False, (-1, -1), None),
    (1, 64, 1000, 8, 2, 128, "bf16", True, (-1, -1), None),
    (2, 128, 128, 16, 2, 64, "bf16", True, (-1, -1), None),     # G = 8
    (2, 128, 128, 4, 2, 128, "bf16", True, (-1, -1), None),     # G = 2
    (2, 96, 96, 12, 2, 64, "bf16", False, (-1, -1), None),      # G = 6
    (2, 48, 80, 16, 8, 64, "bf16", True, (-1, -1), None),       # G = 2, 8 KV heads
    (1, 256, 256, 8, 2, 64, "bf16", True, (63, 0), None),       # sliding window
    (1, 256, 256, 8, 2, 64, "bf16", False, (40, 40), None),
    (1, 200, 300, 8, 2, 128, "bf16", False, (17, 5), None),
    (1, 190, 190, 8, 4, 64, "f16", False, (30, -1), None),      # left bound only
    (1, 129, 257, 16, 4, 128, "bf16", True, (64, 0), None),
    (2, 128, 128, 8, 2, 64, "f16", True, (-1, -1), None),
    (1, 99, 150, 8, 2, 128, "f16", False, (-1, -1), None),
    (1, 300, 300, 32, 8, 128, "f16", True, (-1, -1), None),
    (2, 100, 100, 8, 2, 128, "bf16", True, (-1, -1), [100, 37]),  # ragged kv_len
    (3, 64, 300, 8, 2, 64, "bf16", False, (-1, -1), [0, 150, 300]),
    (3, 4, 300, 32, 8, 128, "bf16", True, (-1, -1), [4, 150, 300]),
    (2, 16, 777, 32, 8, 64, "bf16", True, (-1, -1), [16, 700]),
    (5, 2, 129, 8, 2, 128, "f16", True, (-1, -1), [2, 64, 65, 128, 129]),
    (1, 1, 64, 8, 2, 64, "bf16", False, (-1, -1), None),        # one row
    (1, 17, 5, 8, 2, 128, "bf16", True, (-1, -1), None),
    (2, 512, 512, 32, 16, 128, "bf16", True, (-1, -1), None),
    (1, 1024, 1024, 32, 8, 128, "bf16", True, (-1, -1), None),
    (1, 1000, 1000, 32, 8, 64, "f16", False, (-1, -1), None),
    (1, 640, 640, 16, 2, 64, "bf16", True, (-1, -1), None),
    # kv_len with the forward's lse: its row-block kernels (the wide 8-warp
    # tiles without a mask at D = 128), also under a window.
    (2, 100, 300, 8, 2, 128, "bf16", False, (-1, -1), [300, 77]),
    (1, 90, 200, 8, 2, 64, "bf16", False, (20, 10), [150]),
]
# Indices of the BACKWARD_CHECK_CASES run under compute-sanitizer (odd
# causal, a window with Sq != Sk, ragged kv_len at D 128).
BACKWARD_SANITIZE_CASES = (2, 15, 21)
# Gradients against SDPA-math autograd on fp32 upcasts: (B, S, 2H, Hkv, D,
# causal).
BACKWARD_LARGE = [
    (2, 2048, 32, 8, 128, True),
    (1, 4096, 32, 8, 64, True),
    (1, 2048, 32, 8, 128, False),
]
# Forward + backward timing (issue 15's table): (B, S, 2H, Hkv, D, causal).
BACKWARD_BENCH = [
    (4, 4096, 32, 8, 128, True),
    (1, 16384, 32, 8, 128, True),
    (4, 4096, 32, 8, 64, True),
    (4, 4096, 32, 8, 128, False),
]
# The training run (benchmarks/train_v2_layer.py on CUDA): the public V2
# layer as the Hopper issue runs it (d_model 2048, 16 pairs, 8 KV heads,
# head dim 128), B x S below.
TRAIN_LAYER = dict(batch=4, seq=4096, d_model=2048, heads=16, kv_heads=8, head_dim=128)


# The accumulating backward (dq through bulk reductions; Passes.td,
# `deterministic`), checked and timed beside the default.
ACCUMULATE_OPTIONS = ("--gpu-options=deterministic=false",)


def backward_requests():
    """The kernel requests of the backward's cases: per configuration, the
    forward with lse (diffattn::v2_lse) and with lse and out_odd (the
    training forward, diffattn::_v2_forward_saved), the backward without
    and with out_odd, and the forward without lse (the op's own forward),
    as keyword arguments of
    diffattn._gpu.prepare_v2 / prepare_v2_backward (key "backward")."""
    configs = []
    for b, sq, sk, h2, hkv, d, dtype, causal, window, kv_len in BACKWARD_CHECK_CASES:
        configs.append((b, sq, sk, h2, hkv, d, dtype, causal, window, kv_len is not None))
    for b, s, h2, hkv, d, causal in BACKWARD_LARGE + BACKWARD_BENCH:
        configs.append((b, s, s, h2, hkv, d, "bf16", causal, (-1, -1), False))
    t = TRAIN_LAYER
    configs.append((t["batch"], t["seq"], t["seq"], 2 * t["heads"], t["kv_heads"], t["head_dim"],
                    "bf16", True, (-1, -1), False))
    reqs = []
    for b, sq, sk, h2, hkv, d, dtype, causal, window, has_len in configs:
        fwd = dict(q_shape=(b, sq, h2, d), k_shape=(b, sk, hkv, d), v_shape=(b, sk, hkv, d),
                   lam_shape=(b, sq, h2 // 2), elem=dtype, lam_elem=dtype, causal=causal,
                   window=window, kv_len_shape=(b,) if has_len else None)
        reqs.append(fwd)
        reqs.append(dict(fwd, return_lse=True))
        reqs.append(dict(fwd, return_lse=True, return_out_odd=True))
        out = (b, sq, h2 // 2, d)
        # The default (deterministic) and the accumulating kernels, each
        # recomputing A_{2h+1} or reading out_odd.
        for options in ((), ACCUMULATE_OPTIONS):
            for odd in (None, out):
                reqs.append(dict(fwd, backward=True, out_shape=out, dout_shape=out,
                                 lse_shape=(b, h2, sq), options=options, out_odd_shape=odd))
    return reqs


def all_kernel_requests():
    """Every distinct kernel request of the cases above, as keyword
    arguments of diffattn._gpu.prepare_v2 (without the target, except the
    BENCH_TARGETS ones, which name theirs)."""
    reqs = []
    for b, sq, sk, h2, hkv, d, dtype, causal, window, kv_len in CHECK_CASES:
        reqs.append(dict(q_shape=(b, sq, h2, d), k_shape=(b, sk, hkv, d), v_shape=(b, sk, hkv, d),
                         lam_shape=(b, sq, h2 // 2), elem=dtype, lam_elem=dtype, causal=causal,
                         window=window, kv_len_shape=None if kv_len is None else (b,)))
    for b, s, h2, hkv, d, causal in BENCH_PREFILL:
        reqs.append(dict(q_shape=(b, s, h2, d), k_shape=(b, s, hkv, d), v_shape=(b, s, hkv, d),
                         lam_shape=(b, s, h2 // 2), elem="bf16", lam_elem="bf16", causal=causal,
                         window=(-1, -1), kv_len_shape=None))
    for b, s, h2, hkv, d, causal in BENCH_PREFILL:
        for vd, options in BENCH_VARIANTS:
            if vd == d:
                # The portable strategy's tile variants (gpu_check.py times
                # them on sm_90).
                reqs.append(dict(q_shape=(b, s, h2, d), k_shape=(b, s, hkv, d), v_shape=(b, s, hkv, d),
                                 lam_shape=(b, s, h2 // 2), elem="bf16", lam_elem="bf16",
                                 causal=causal, window=(-1, -1), kv_len_shape=None,
                                 options=options, target="sm_90"))
    for b, s, h2, hkv, d, causal in BENCH_PREFILL:
        for target, options, dims in BENCH_TARGETS:
            if dims is not None and d not in dims:
                continue
            reqs.append(dict(q_shape=(b, s, h2, d), k_shape=(b, s, hkv, d), v_shape=(b, s, hkv, d),
                             lam_shape=(b, s, h2 // 2), elem="bf16", lam_elem="bf16",
                             causal=causal, window=(-1, -1), kv_len_shape=None,
                             options=options, target=target))
    # python/tests/test_targets.py: a kernel for another chip (refused by the
    # runtime on the GPU) and the Hopper target's prefill and decode kernels.
    target_shapes = dict(q_shape=(1, 64, 8, 64), k_shape=(1, 64, 2, 64), v_shape=(1, 64, 2, 64),
                         lam_shape=(1, 64, 4), elem="bf16", lam_elem="bf16")
    reqs.append(dict(target_shapes, causal=False, window=(-1, -1), kv_len_shape=None,
                     target="sm_80"))
    for kv_len_shape in (None, (1,)):
        reqs.append(dict(target_shapes, causal=True, window=(-1, -1), kv_len_shape=kv_len_shape,
                         target="sm_90a"))
    for b, sq, sk, h2, hkv, d, causal, kv_len in SANITIZE_CASES:
        reqs.append(dict(q_shape=(b, sq, h2, d), k_shape=(b, sk, hkv, d), v_shape=(b, sk, hkv, d),
                         lam_shape=(b, sq, h2 // 2), elem="bf16", lam_elem="bf16", causal=causal,
                         window=(-1, -1), kv_len_shape=None if kv_len is None else (b,)))
    (b, sq, sk, h2, hkv, d, causal), options = SANITIZE_PERSISTENT
    reqs.append(dict(q_shape=(b, sq, h2, d), k_shape=(b, sk, hkv, d), v_shape=(b, sk, hkv, d),
                     lam_shape=(b, sq, h2 // 2), elem="bf16", lam_elem="bf16", causal=causal,
                     window=(-1, -1), kv_len_shape=None, options=options, target="sm_90a"))
    (b, sq, sk, h2, hkv, d, causal), _ = SANITIZE_PERSISTENT
    reqs.append(dict(q_shape=(b, sq, h2, d), k_shape=(b, sk, hkv, d), v_shape=(b, sk, hkv, d),
                     lam_shape=(b, sq, h2 // 2), elem="bf16", lam_elem="bf16", causal=causal,
                     window=(-1, -1), kv_len_shape=None, options=overlap_options("", True),
                     target="sm_90a"))
    reqs += overlap_requests()
    b, sq, sk, h2, hkv, d = PYTEST_GPU_SHAPE
    for dtype in ("bf16", "f16"):
        for causal in (True, False):
            reqs.append(dict(q_shape=(b, sq, h2, d), k_shape=(b, sk, hkv, d), v_shape=(b, sk, hkv, d),
                             lam_shape=(b, sq, h2 // 2), elem=dtype, lam_elem=dtype, causal=causal,
                             window=(-1, -1), kv_len_shape=None))
    for causal in VARLEN_CAUSAL:
        reqs.append(dict(varlen=True, q_shape=(8, 32, 128), k_shape=(8, 8, 128),
                         v_shape=(8, 8, 128), lam_shape=(8, 16), cu_q_shape=(2,),
                         cu_k_shape=(2,), elem="bf16", lam_elem="bf16", max_seqlen_q=8,
                         max_seqlen_k=8, causal=causal, window=(-1, -1)))
    for variant in SMALL_DECODE_VARIANTS:
        reqs.append(dict(q_shape=(1, 1, 32, 128), k_shape=(1, 64, 8, 128),
                         v_shape=(1, 64, 8, 128), lam_shape=(1, 1, 16), elem="bf16",
                         lam_elem="bf16", causal=True, window=(-1, -1), kv_len_shape=(1,),
                         options=(f"--gpu-options={variant}",)))
    for causal in VARLEN_CAUSAL:
        # The varlen kernel variants (gpu_varlen_tiles.py).
        for target, options in VARLEN_KERNEL_VARIANTS:
            reqs.append(dict(varlen=True, q_shape=(8, 32, 128), k_shape=(8, 8, 128),
                             v_shape=(8, 8, 128), lam_shape=(8, 16), cu_q_shape=(2,),
                             cu_k_shape=(2,), elem="bf16", lam_elem="bf16", max_seqlen_q=8,
                             max_seqlen_k=8, causal=causal, window=(-1, -1), options=options,
                             target=target))
    for bs in PAGED_BLOCK_SIZES:
        reqs.append(dict(q_shape=(1, 1, 32, 128), k_shape=(4, bs, 8, 128),
                         v_shape=(4, bs, 8, 128), lam_shape=(1, 1, 16), elem="bf16",
                         lam_elem="bf16", causal=True, window=(-1, -1), kv_len_shape=(1,),
                         block_table_shape=(1, 2)))
    for causal in PYTEST_GPU_KV_LEN_CAUSAL:
        reqs.append(dict(q_shape=(1, 1, 8, 64), k_shape=(1, 64, 2, 64), v_shape=(1, 64, 2, 64),
                         lam_shape=(1, 1, 4), elem="bf16", lam_elem="bf16", causal=causal,
                         window=(-1, -1), kv_len_shape=(1,)))
    for options in SERVING_OPTION_VARIANTS:
        reqs.append(dict(q_shape=(1, 1, 8, 64), k_shape=(1, 64, 2, 64), v_shape=(1, 64, 2, 64),
                         lam_shape=(1, 1, 4), elem="bf16", lam_elem="bf16", causal=True,
                         window=(-1, -1), kv_len_shape=(1,), options=options))
    for b, kvl in HOST_COST_DECODE:
        reqs.append(dict(q_shape=(b, 1, 32, 128), k_shape=(b, kvl, 8, 128),
                         v_shape=(b, kvl, 8, 128), lam_shape=(b, 1, 16), elem="bf16",
                         lam_elem="bf16", causal=True, window=(-1, -1), kv_len_shape=(b,)))
    for b, kvl, h2, hkv, d in BENCH_DECODE:
        for options in [None] + BENCH_DECODE_VARIANTS:
            req = dict(q_shape=(b, 1, h2, d), k_shape=(b, kvl, hkv, d), v_shape=(b, kvl, hkv, d),
                       lam_shape=(b, 1, h2 // 2), elem="bf16", lam_elem="bf16", causal=True,
                       window=(-1, -1), kv_len_shape=(b,))
            if options:
                req["options"] = options
            reqs.append(req)
    reqs += backward_requests()
    return reqs
