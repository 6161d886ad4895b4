"""Running CPU kernels: numpy arrays in, a compiled shared object called.

Validation happens here, before anything is compiled; every error names the
argument at fault. The math itself is only ever done by the kernel that
diffattn-compile generated.
"""

import ctypes

import numpy as np

from . import _compiler, _ops

_DTYPES = {np.dtype(np.float64): "f64", np.dtype(np.float32): "f32",
           np.dtype(np.float16): "f16"}


def lse_dtype(dtype):
    """The dtype of the log-sum-exp for operands of `dtype`: the kernels'
    accumulator type, float64 for float64 operands, else float32."""
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)
_LIBRARIES = {}


def _check_array(name, x, rank, layout):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray (float64, float32 or float16), "
                        f"got {type(x).__name__}")
    if x.ndim != rank:
        raise ValueError(f"{name}: expected rank {rank} {layout}, got shape {x.shape}")
    if x.dtype not in _DTYPES:
        raise TypeError(f"{name}: expected dtype float64, float32 or float16, got {x.dtype}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous (row-major {layout}); "
                         f"pass numpy.ascontiguousarray({name})")
    return x


def _check_same_dtype(name, x, dtype, allow_f32=False):
    if x.dtype == dtype or (allow_f32 and x.dtype == np.float32):
        return
    allowed = f"{dtype}" + (" or float32" if allow_f32 and dtype != np.float32 else "")
    raise TypeError(f"{name}: expected dtype {allowed} (as q), got {x.dtype}")


def _check_dim(name, x, axis, expected, what):
    if x.shape[axis] != expected:
        raise ValueError(f"{name}: dimension {axis} ({what}) is {x.shape[axis]}, "
                         f"expected {expected}; got shape {x.shape}")


def _check_out(out, shape, dtype):
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out: expected a numpy.ndarray, got {type(out).__name__}")
    if out.shape != tuple(shape) or out.dtype != dtype:
        raise ValueError(f"out: expected shape {tuple(shape)} and dtype {dtype}, "
                         f"got shape {out.shape} and dtype {out.dtype}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out: must be a writeable C-contiguous array")
    return out


def load_kernels(directory):
    """Loads every kernel of a diffattn-compile --target=cpu directory:
    {kernel name: (C function, manifest entry)}."""
    manifest = _compiler.load_manifest(directory)
    if manifest.get("target") != "cpu":
        raise ValueError(f"{directory}: not a CPU artifact (target {manifest.get('target')!r})")
    kernels = {}
    for kernel in manifest["kernels"]:
        path = f"{directory}/{kernel['library']}"
        lib = _LIBRARIES.get(path)
        if lib is None:
            try:
                lib = _LIBRARIES[path] = ctypes.CDLL(path)
            except OSError as e:
                raise _compiler.CacheError(
                    f"cannot load the cached kernel {path}: {e}; delete {directory} "
                    f"to compile it again") from None
        fn = getattr(lib, kernel["entry"])
        n_buffers = sum(1 for a in kernel["args"] if a["role"] != "size")
        n_sizes = len(kernel["args"]) - n_buffers
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p] * n_buffers + [ctypes.c_int64] * n_sizes
        kernels[kernel["name"]] = (fn, kernel)
    return kernels


def _check_int32(name, arr, rank):
    """TypeError naming `name` unless `arr` is a rank-`rank` int32 array."""
    if not isinstance(arr, np.ndarray) or arr.dtype != np.int32 or arr.ndim != rank:
        raise TypeError(f"{name}: expected a {rank}-D int32 numpy array, got "
                        f"{getattr(arr, 'dtype', type(arr).__name__)} "
                        f"{getattr(arr, 'shape', '')}")


def _dim(d, dims):
    """A manifest shape dimension: a size, a size symbol, or the rule
    {ceil_div: symbol, mul: m, by: n[, add: a]} = ceil(m * symbol / n) + a."""
    if isinstance(d, str):
        return dims[d]
    if isinstance(d, dict):
        return (d["mul"] * dims[d["ceil_div"]] + d["by"] - 1) // d["by"] + d.get("add", 0)
    return d


def call_kernel(fn, kernel, buffers, sizes):
    """Calls a loaded kernel with named contiguous arrays and its sizes (the
    manifest's size arguments in order: B, Sq, Sk, and num_blocks for a
    paged cache), after checking them against the kernel's manifest entry."""
    names = [a["name"] for a in kernel["args"] if a["role"] != "size"]
    if names != [n for n, _ in buffers]:
        raise RuntimeError(f"kernel {kernel['name']} takes {names}, got {[n for n, _ in buffers]}")
    size_names = [a["name"] for a in kernel["args"] if a["role"] == "size"]
    if len(size_names) != len(sizes):
        raise RuntimeError(f"kernel {kernel['name']} takes sizes {size_names}, got {tuple(sizes)}")
    dims = dict(zip(size_names, (int(s) for s in sizes)))
    for spec, (name, array) in zip((a for a in kernel["args"] if a["role"] != "size"), buffers):
        shape = tuple(_dim(d, dims) for d in spec["shape"])
        if array.shape != shape or _DTYPES.get(array.dtype, "i32" if array.dtype == np.int32 else None) \
                != spec["dtype"] or not array.flags.c_contiguous:
            raise ValueError(f"{name}: kernel {kernel['name']} expects a contiguous {spec['dtype']} "
                             f"array of shape {shape}, got {array.dtype} {array.shape}")
    fn(*[b.ctypes.data for _, b in buffers], *dims.values())


_LOWERINGS = ("flash", "decompose")


def _run(kind, params, mlir_text, buffers, sizes, lowering):
    if lowering not in _LOWERINGS:
        raise ValueError(f"lowering: expected one of {_LOWERINGS}, got {lowering!r}")
    options = () if lowering == "flash" else (f"--lowering={lowering}",)
    directory = _compiler.ensure_compiled(kind, params, "cpu", mlir_text, options)
    kernels = load_kernels(directory)
    if len(kernels) != 1:
        raise RuntimeError(f"{directory}: expected one kernel, found {len(kernels)}")
    (fn, kernel), = kernels.values()
    call_kernel(fn, kernel, buffers, sizes)


def v2(q, k, v, lam, *, causal=False, scale=None, window=(-1, -1), kv_len=None, out=None,
       block_table=None, lowering="flash", return_lse=False, return_out_odd=False):
    """diffattn.v2 on numpy arrays. ``lowering`` picks the kernel the
    compiler builds: "flash" (tiled, the default) or "decompose" (untiled
    oracle, quadratic memory; for tests and benchmarks). With
    ``block_table`` ([B, MB] int32), k and v are a paged cache [NB, BS, Hkv,
    D] (BS a multiple of 16) and ``kv_len`` is required. With
    ``return_lse`` returns ``(out, lse)``, lse [B, 2H, Sq] float32 (float64
    for float64 arrays; see diffattn.v2); with ``return_out_odd`` as well
    ``(out, lse, out_odd)``, out_odd [B, Sq, H, Dv] the pairs' second heads
    A_{2h+1} (what a training step saves for the backward's out_odd)."""
    return_lse = _ops.check_bool("return_lse", return_lse)
    return_out_odd = _ops.check_bool("return_out_odd", return_out_odd)
    q = _check_array("q", q, 4, "[B, Sq, 2H, D]")
    k = _check_array("k", k, 4, "[NB, BS, Hkv, D]" if block_table is not None else "[B, Sk, Hkv, D]")
    v = _check_array("v", v, 4, "[NB, BS, Hkv, Dv]" if block_table is not None else "[B, Sk, Hkv, Dv]")
    lam = _check_array("lam", lam, 3, "[B, Sq, H]")
    dtype = q.dtype
    _check_same_dtype("k", k, dtype)
    _check_same_dtype("v", v, dtype)
    _check_same_dtype("lam", lam, dtype, allow_f32=True)
    for name, arr, rank in (("kv_len", kv_len, 1), ("block_table", block_table, 2)):
        if arr is not None:
            _check_int32(name, arr, rank)
    params, text, out_shape, sizes = _ops.v2_request(
        q.shape, k.shape, v.shape, lam.shape, _DTYPES[dtype], _DTYPES[lam.dtype],
        causal=causal, scale=scale, window=window,
        kv_len_shape=None if kv_len is None else kv_len.shape,
        block_table_shape=None if block_table is None else block_table.shape,
        return_lse=bool(return_lse), return_out_odd=bool(return_out_odd))
    if kv_len is not None:
        sk = sizes[2]
        if np.any(kv_len < 0) or np.any(kv_len > sk):
            raise ValueError(f"kv_len: every value must lie in [0, Sk = {sk}], got {kv_len.tolist()}")
        kv_len = np.ascontiguousarray(kv_len)
    if block_table is not None:
        _ops.check_block_table(block_table, kv_len, k.shape[1], k.shape[0])
        block_table = np.ascontiguousarray(block_table)
    out = _check_out(out, out_shape, dtype)
    buffers = [("q", q), ("k", k), ("v", v), ("lam", lam)]
    if kv_len is not None:
        buffers.append(("kv_len", kv_len))
    if block_table is not None:
        buffers.append(("block_table", block_table))
    buffers.append(("out", out))
    if return_lse:
        b, sq, h2 = q.shape[0], q.shape[1], q.shape[2]
        lse = np.empty((b, h2, sq), dtype=lse_dtype(dtype))
        buffers.append(("lse", lse))
    if return_out_odd:
        out_odd = np.empty(out_shape, dtype=dtype)
        buffers.append(("out_odd", out_odd))
        _run("v2", params, text, buffers, sizes, lowering)
        return out, lse, out_odd
    _run("v2", params, text, buffers, sizes, lowering)
    return (out, lse) if return_lse else out


def v2_backward(q, k, v, lam, out, dout, lse, *, causal=False, scale=None, window=(-1, -1),
                kv_len=None, lowering="flash", out_odd=None):
    """diffattn.v2_backward on numpy arrays (see diffattn.v2_backward):
    (dq, dk, dv, dlam) shaped and typed like q, k, v and lam; ``lse`` is
    float32, or float64 for float64 arrays (what v2(..., return_lse=True)
    returns). ``lowering``:
    "flash" (the default: over blocks of 64 query rows x 64 keys, memory
    linear in Sq and Sk) or
    "decompose" (all keys at once, quadratic memory; the oracle).
    ``out_odd`` (v2(..., return_out_odd=True)'s third result) is checked
    and passed to the kernel, whose CPU lowerings recompute A_{2h+1}."""
    if lowering not in _LOWERINGS:
        raise ValueError(f"lowering: expected one of {_LOWERINGS}, got {lowering!r}")
    q = _check_array("q", q, 4, "[B, Sq, 2H, D]")
    k = _check_array("k", k, 4, "[B, Sk, Hkv, D]")
    v = _check_array("v", v, 4, "[B, Sk, Hkv, Dv]")
    lam = _check_array("lam", lam, 3, "[B, Sq, H]")
    out = _check_array("out", out, 4, "[B, Sq, H, Dv]")
    dout = _check_array("dout", dout, 4, "[B, Sq, H, Dv]")
    dtype = q.dtype
    want = lse_dtype(dtype)
    if not isinstance(lse, np.ndarray) or lse.dtype != want or lse.ndim != 3:
        raise TypeError(f"lse: expected a 3-D {want} numpy array [B, 2H, Sq] (the forward's "
                        f"return_lse=True result for {dtype} q), got "
                        f"{getattr(lse, 'dtype', type(lse).__name__)} "
                        f"{getattr(lse, 'shape', '')}")
    lse = _check_array("lse", lse, 3, "[B, 2H, Sq]")
    if out_odd is not None:
        out_odd = _check_array("out_odd", out_odd, 4, "[B, Sq, H, Dv]")
        _check_same_dtype("out_odd", out_odd, dtype)
    for name, arr in (("k", k), ("v", v), ("out", out), ("dout", dout)):
        _check_same_dtype(name, arr, dtype)
    _check_same_dtype("lam", lam, dtype, allow_f32=True)
    if kv_len is not None:
        _check_int32("kv_len", kv_len, 1)
    params, text, sizes = _ops.v2_backward_request(
        q.shape, k.shape, v.shape, lam.shape, out.shape, dout.shape, lse.shape,
        _DTYPES[dtype], _DTYPES[lam.dtype], causal=causal, scale=scale, window=window,
        kv_len_shape=None if kv_len is None else kv_len.shape,
        out_odd_shape=None if out_odd is None else out_odd.shape)
    buffers = [("q", q), ("k", k), ("v", v), ("lam", lam), ("out", out), ("dout", dout),
               ("lse", lse)]
    if kv_len is not None:
        sk = sizes[2]
        if np.any(kv_len < 0) or np.any(kv_len > sk):
            raise ValueError(f"kv_len: every value must lie in [0, Sk = {sk}], got {kv_len.tolist()}")
        buffers.append(("kv_len", np.ascontiguousarray(kv_len)))
    if out_odd is not None:
        buffers.append(("out_odd", out_odd))
    grads = [np.empty_like(x) for x in (q, k, v, lam)]
    buffers += list(zip(("dq", "dk", "dv", "dlam"), grads))
    _run("v2_backward", params, text, buffers, sizes, lowering)
    return tuple(grads)


def v2_varlen(q, k, v, lam, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *,
              causal=False, scale=None, window=(-1, -1), out=None, lowering="flash"):
    """diffattn.v2_varlen on numpy arrays (see diffattn.v2_varlen)."""
    q = _check_array("q", q, 3, "[Tq, 2H, D]")
    k = _check_array("k", k, 3, "[Tk, Hkv, D]")
    v = _check_array("v", v, 3, "[Tk, Hkv, Dv]")
    lam = _check_array("lam", lam, 2, "[Tq, H]")
    dtype = q.dtype
    _check_same_dtype("k", k, dtype)
    _check_same_dtype("v", v, dtype)
    _check_same_dtype("lam", lam, dtype, allow_f32=True)
    for name, arr in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        _check_int32(name, arr, 1)
    params, text, out_shape, sizes = _ops.v2_varlen_request(
        q.shape, k.shape, v.shape, lam.shape, cu_seqlens_q.shape, cu_seqlens_k.shape,
        _DTYPES[dtype], _DTYPES[lam.dtype], max_seqlen_q, max_seqlen_k, causal=causal,
        scale=scale, window=window)
    _ops.check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], max_seqlen_q)
    _ops.check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], max_seqlen_k)
    out = _check_out(out, out_shape, dtype)
    buffers = [("q", q), ("k", k), ("v", v), ("lam", lam),
               ("cu_seqlens_q", np.ascontiguousarray(cu_seqlens_q)),
               ("cu_seqlens_k", np.ascontiguousarray(cu_seqlens_k)), ("out", out)]
    _run("v2", params, text, buffers, sizes, lowering)
    return out


def v1(q, k, v, lam, norm_weight, *, lambda_init, causal=False, scale=None, eps=1e-5, out=None,
       lowering="flash"):
    """diffattn.v1 on numpy arrays; ``lowering`` as for v2."""
    causal = _ops.check_causal(causal)
    q = _check_array("q", q, 4, "[B, Sq, 2H, D]")
    k = _check_array("k", k, 4, "[B, Sk, 2Hkv, D]")
    v = _check_array("v", v, 4, "[B, Sk, Hkv, 2D]")
    norm_weight = _check_array("norm_weight", norm_weight, 1, "[2D]")
    dtype = q.dtype
    _check_same_dtype("k", k, dtype)
    _check_same_dtype("v", v, dtype)
    _check_same_dtype("norm_weight", norm_weight, dtype, allow_f32=True)
    lam_arr = np.asarray(lam)
    if lam_arr.ndim != 0 or not np.issubdtype(lam_arr.dtype, np.floating) and not np.issubdtype(lam_arr.dtype, np.integer):
        raise TypeError(f"lam: expected a float or a 0-d array (the layer's lambda), got {lam!r}")
    lam_value = _ops.check_f32("lam", lam_arr)
    b, sq, h2, d = q.shape
    sk, hk2 = k.shape[1], k.shape[2]
    if h2 == 0 or h2 % 2:
        raise ValueError(f"q: the number of query heads (2H = {h2}) must be even and positive")
    if hk2 == 0 or hk2 % 2:
        raise ValueError(f"k: the number of key heads (2Hkv = {hk2}) must be even and positive")
    h, hkv = h2 // 2, hk2 // 2
    if d == 0:
        raise ValueError("q: head dimension D must be positive")
    _check_dim("k", k, 0, b, "B")
    _check_dim("k", k, 3, d, "D")
    _check_dim("v", v, 0, b, "B")
    _check_dim("v", v, 1, sk, "Sk")
    _check_dim("v", v, 2, hkv, "Hkv")
    _check_dim("v", v, 3, 2 * d, "2D")
    _check_dim("norm_weight", norm_weight, 0, 2 * d, "2D")
    if h % hkv:
        raise ValueError(f"k: head pairs H = {h} must be a multiple of KV heads Hkv = {hkv}")
    scale = _ops.check_scale(scale)
    lambda_init = _ops.check_f32("lambda_init", lambda_init)
    eps = _ops.check_f32("eps", eps, positive=True)
    out = _check_out(out, (b, sq, h, 2 * d), dtype)

    elem, w_elem = _DTYPES[dtype], _DTYPES[norm_weight.dtype]
    params = {"element_type": elem, "weight_type": w_elem, "query_heads": h2, "kv_heads": hkv,
              "head_dim": d, "causal": bool(causal),
              "scale": None if scale is None else _ops.hex_f32(scale),
              "lambda_init": _ops.hex_f32(lambda_init), "eps": _ops.hex_f32(eps)}
    attrs = [f"lambda_init = {_ops.hex_f32(lambda_init)} : f32", f"eps = {_ops.hex_f32(eps)} : f32"]
    if causal:
        attrs.append("causal")
    if scale is not None:
        attrs.append(f"scale = {_ops.hex_f32(scale)} : f32")
    lam_buf = np.array(lam_value, dtype=np.float32)
    operands = [("q", _ops.tensor_type(q.shape, elem)), ("k", _ops.tensor_type(k.shape, elem)),
                ("v", _ops.tensor_type(v.shape, elem)), ("lam", "tensor<f32>"),
                ("norm_weight", _ops.tensor_type(norm_weight.shape, w_elem))]
    buffers = [("q", q), ("k", k), ("v", v), ("lam", lam_buf), ("norm_weight", norm_weight),
               ("out", out)]
    text = _ops.one_op_module("diffattn.v1", operands, attrs, out.shape, elem)
    _run("v1", params, text, buffers, (b, sq, sk), lowering)
    return out
