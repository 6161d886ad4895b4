"""What the CPU (numpy) and GPU (torch) front ends share: the shape and
option checks of diffattn.v2 (every error names its argument) and the
one-op module plus cache parameters of a call's kernel configuration."""

import math
import numbers
import struct

# INT32_MAX: the largest window bound the op takes (its verifier's, as
# FlashAttention's int window_size) and the largest max_seqlen (cu_seqlens
# are int32 offsets).
INT32_MAX = 2**31 - 1


def _is_bool(value):
    """A Python bool or a numpy bool (numpy.bool_, matched by name: numpy is
    not imported here)."""
    return isinstance(value, bool) or type(value).__name__ == "bool_"


def hex_f32(value):
    """An exact MLIR f32 literal."""
    return "0x%08X" % struct.unpack("<I", struct.pack("<f", value))[0]


def _f32(value):
    return struct.unpack("<f", struct.pack("<f", value))[0]


def lse_elem(elem):
    """The MLIR element type of the log-sum-exp for operands of `elem`: the
    ops' accumulator type, f64 for f64, else f32."""
    return "f64" if elem == "f64" else "f32"


def tensor_type(shape, elem):
    return "tensor<" + "".join(f"{d}x" for d in shape) + elem + ">"


def one_op_module(op, operands, attrs, result_shape, elem, extra_results=(),
                  result_types=None):
    """A function holding one diffattn op with the call's static shapes;
    `extra_results` are further result types (diffattn.v2's lse), or
    `result_types` all of them (diffattn.v2_backward's four)."""
    args = ", ".join(f"%a{i}: {t}" for i, (_, t) in enumerate(operands))
    names = ", ".join(f"%a{i}" for i in range(len(operands)))
    types = ", ".join(t for _, t in operands)
    results = list(result_types) if result_types is not None else \
        [tensor_type(result_shape, elem)] + list(extra_results)
    result = results[0] if len(results) == 1 else "(" + ", ".join(results) + ")"
    attr_text = "{" + ", ".join(attrs) + "}" if attrs else ""
    values = ", ".join(f"%r#{i}" for i in range(len(results))) if len(results) > 1 else "%r"
    count = f":{len(results)}" if len(results) > 1 else ""
    return (f"func.func @call({args}) -> {result} {{\n"
            f"  %r{count} = \"{op}\"({names}) {attr_text} : ({types}) -> {result}\n"
            f"  return {values} : {', '.join(results)}\n}}\n")


def _check_rank(name, shape, rank, layout):
    if len(shape) != rank:
        raise ValueError(f"{name}: expected rank {rank} {layout}, got shape {tuple(shape)}")


def _check_dim(name, shape, axis, expected, what):
    if shape[axis] != expected:
        raise ValueError(f"{name}: dimension {axis} ({what}) is {shape[axis]}, "
                         f"expected {expected}; got shape {tuple(shape)}")


def check_f32(name, value, *, positive=False):
    """`value` as the f32 the kernel receives (an MLIR f32 attribute or an f32
    buffer). Raises TypeError when it is not a real number, ValueError naming
    `name` when it is not finite, does not fit f32 (|x| > 3.4028235e38, which
    would round to Inf), or, with `positive`, is not > 0 in f32 (a tiny
    positive float such as 1e-46 rounds to 0)."""
    if isinstance(value, (str, bytes)) or _is_bool(value):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__} {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a real number, got {value!r}") from None
    rule = "finite and > 0" if positive else "finite"
    if not math.isfinite(x):
        raise ValueError(f"{name}: must be {rule}, got {value!r}")
    try:
        f = _f32(x)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f):
        raise ValueError(f"{name}: {x!r} does not fit in f32 (largest finite f32 "
                         f"magnitude is 3.4028235e+38)")
    if positive and f <= 0.0:
        if x > 0.0:
            raise ValueError(f"{name}: {x!r} rounds to 0 in f32; must be > 0 "
                             f"(smallest positive f32 is about 1.4e-45)")
        raise ValueError(f"{name}: must be {rule}, got {value!r}")
    return f


def check_scale(scale):
    if scale is None:
        return None
    return check_f32("scale", scale, positive=True)


def check_bool(name, value):
    """`value` as a bool: a bool or a numpy bool; anything else (a string,
    an int, None) is a TypeError naming `name` rather than its truthiness."""
    if not _is_bool(value):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def check_causal(causal):
    return check_bool("causal", causal)


# The largest window bound; max(Sq, Sk) already means unlimited.
MAX_WINDOW = INT32_MAX


def check_window(window, causal):
    """(left, right) of `window`, checked (ints -1 or in [0, MAX_WINDOW];
    right <= 0 with `causal`, which is checked too); fractional or
    infinite values are a ValueError rather than truncated."""
    causal = check_causal(causal)
    try:
        left, right = window
        if type(left) is not int or type(right) is not int:  # the fast path takes plain ints
            if any(isinstance(w, bool) or int(w) != w for w in (left, right)):
                raise ValueError
            left, right = int(left), int(right)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"window: expected a pair (left, right) of ints, got {window!r}") from None
    for side, w in (("left", left), ("right", right)):
        if w < -1 or w > MAX_WINDOW:
            raise ValueError(f"window: {side} must be -1 (unlimited) or in [0, {MAX_WINDOW}], "
                             f"got {w}")
    if causal and right > 0:
        raise ValueError(f"window: right must be -1 or 0 with causal=True, got {right}")
    return left, right


def v2_attributes(causal, scale, left, right):
    """The attribute list of a diffattn.v2-family op (checked values)."""
    attrs = []
    if causal:
        attrs.append("causal")
    if scale is not None:
        attrs.append(f"scale = {hex_f32(scale)} : f32")
    if left != -1:
        attrs.append(f"window_left = {left} : i64")
    if right != -1:
        attrs.append(f"window_right = {right} : i64")
    return attrs


def check_block_table(block_table, kv_len, block_size, num_blocks):
    """Every block a sequence reads (positions below kv_len[b]) must lie in
    the pool [0, num_blocks); entries past a sequence's last block are not
    read and may hold anything (e.g. a sentinel). Raises ValueError naming
    block_table."""
    import numpy as np

    used = (np.asarray(kv_len, np.int64) + block_size - 1) // block_size    # [B]
    slots = np.arange(block_table.shape[1])[None, :] < used[:, None]       # [B, MB]
    bad = slots & ((block_table < 0) | (block_table >= num_blocks))
    if np.any(bad):
        b, i = (int(x) for x in np.argwhere(bad)[0])
        raise ValueError(f"block_table: entry [{b}, {i}] = {int(block_table[b, i])} is outside "
                         f"the pool [0, {num_blocks}) but sequence {b} reads keys up to "
                         f"kv_len = {int(kv_len[b])}")


def v2_request(q_shape, k_shape, v_shape, lam_shape, elem, lam_elem, *, causal, scale,
               window, kv_len_shape=None, block_table_shape=None, return_lse=False,
               return_out_odd=False):
    """Checks a diffattn.v2 call's shapes and options; returns
    (params, mlir_text, out_shape, sizes), sizes being (B, Sq, Sk) or, with a
    paged cache (`block_table_shape` given: k, v are [NB, BS, Hkv, D]),
    (B, Sq, Sk = MB * BS, NB). `params` identifies the kernel configuration
    in the cache. With `return_lse` the op also returns the log-sum-exp
    [B, 2H, Sq] in the accumulator type (f64 for f64 operands, else f32;
    contiguous caches only), and with `return_out_odd` (which needs
    `return_lse`) also out_odd [B, Sq, H, Dv], the pairs' second heads
    A_{2h+1} that a backward reads instead of recomputing them."""
    paged = block_table_shape is not None
    if return_out_odd and not return_lse:
        raise ValueError("return_out_odd: needs return_lse (out_odd is the third result)")
    if return_lse and paged:
        raise ValueError("return_lse: not supported with block_table (a paged cache)")
    _check_rank("q", q_shape, 4, "[B, Sq, 2H, D]")
    _check_rank("k", k_shape, 4, "[NB, BS, Hkv, D]" if paged else "[B, Sk, Hkv, D]")
    _check_rank("v", v_shape, 4, "[NB, BS, Hkv, Dv]" if paged else "[B, Sk, Hkv, Dv]")
    _check_rank("lam", lam_shape, 3, "[B, Sq, H]")
    b, sq, h2, d = q_shape
    sk, hkv, dv = k_shape[1], k_shape[2], v_shape[3]
    if h2 == 0 or h2 % 2:
        raise ValueError(f"q: the number of query heads (2H = {h2}) must be even and positive")
    h = h2 // 2
    if d == 0 or dv == 0:
        raise ValueError(f"q/v: head dimensions must be positive, got D = {d}, Dv = {dv}")
    if paged:
        block_size = k_shape[1]
        if block_size == 0 or block_size % 16:
            raise ValueError(f"k: the block size (dimension 1, BS) must be a positive multiple of "
                             f"16, got {block_size}")
        if kv_len_shape is None:
            raise ValueError("kv_len: required with block_table (a paged cache)")
        _check_rank("block_table", block_table_shape, 2, "[B, MB]")
        _check_dim("block_table", block_table_shape, 0, b, "B")
        _check_dim("v", v_shape, 0, k_shape[0], "NB")
        _check_dim("v", v_shape, 1, block_size, "BS")
        sk = block_table_shape[1] * block_size
    else:
        _check_dim("k", k_shape, 0, b, "B")
        _check_dim("v", v_shape, 0, b, "B")
        _check_dim("v", v_shape, 1, sk, "Sk")
    _check_dim("k", k_shape, 3, d, "D")
    _check_dim("v", v_shape, 2, hkv, "Hkv")
    if hkv == 0 or h2 % hkv or (h2 // hkv) % 2:
        raise ValueError(f"k: Hkv = {hkv} KV heads must divide 2H = {h2} query heads with an "
                         f"even group size G = 2H / Hkv")
    if tuple(lam_shape) != (b, sq, h):
        raise ValueError(f"lam: expected shape {(b, sq, h)} [B, Sq, H], got {tuple(lam_shape)}")
    if kv_len_shape is not None and tuple(kv_len_shape) != (b,):
        raise ValueError(f"kv_len: expected shape ({b},) [B], got {tuple(kv_len_shape)}")
    scale = check_scale(scale)
    left, right = check_window(window, causal)

    params = {"element_type": elem, "lam_type": lam_elem, "query_heads": h2, "kv_heads": hkv,
              "head_dim": d, "value_dim": dv, "causal": bool(causal),
              "scale": None if scale is None else hex_f32(scale),
              "window": [left, right], "kv_len": kv_len_shape is not None}
    if paged:
        params["paged_block_size"] = k_shape[1]
    if return_lse:
        params["lse"] = True
    if return_out_odd:
        params["out_odd"] = True
    attrs = v2_attributes(causal, scale, left, right)
    operands = [("q", tensor_type(q_shape, elem)), ("k", tensor_type(k_shape, elem)),
                ("v", tensor_type(v_shape, elem)), ("lam", tensor_type(lam_shape, lam_elem))]
    if kv_len_shape is not None:
        operands.append(("kv_len", tensor_type(kv_len_shape, "i32")))
    if paged:
        operands.append(("block_table", tensor_type(block_table_shape, "i32")))
    out_shape = (b, sq, h, dv)
    text = one_op_module("diffattn.v2_paged" if paged else "diffattn.v2", operands, attrs,
                         out_shape, elem,
                         ([tensor_type((b, h2, sq), lse_elem(elem))] if return_lse else []) +
                         ([tensor_type(out_shape, elem)] if return_out_odd else []))
    sizes = (b, sq, sk, k_shape[0]) if paged else (b, sq, sk)
    return params, text, out_shape, sizes


def check_cu_seqlens(name, cu, total, max_seqlen):
    """cu_seqlens ([B + 1] ints) must start at 0, be non-decreasing, end at
    most at `total` and hold no sequence longer than `max_seqlen`; raises
    ValueError naming `name`."""
    import numpy as np

    cu = np.asarray(cu)
    if cu.ndim != 1 or cu.shape[0] < 1:
        raise ValueError(f"{name}: expected [B + 1] offsets, got shape {cu.shape}")
    if cu[0] != 0:
        raise ValueError(f"{name}: must start at 0, got {int(cu[0])}")
    lengths = np.diff(cu.astype(np.int64))
    if np.any(lengths < 0):
        i = int(np.argmax(lengths < 0))
        raise ValueError(f"{name}: must be non-decreasing, got {int(cu[i])} then {int(cu[i + 1])}")
    if cu[-1] > total:
        raise ValueError(f"{name}: ends at {int(cu[-1])}, past the {total} packed tokens")
    if lengths.size and lengths.max() > max_seqlen:
        raise ValueError(f"{name}: a sequence of {int(lengths.max())} tokens is longer than "
                         f"max_seqlen = {max_seqlen}")


def check_max_seqlen(name, value):
    """`value` as an int in [0, 2^31 - 1] (cu_seqlens are int32 offsets):
    TypeError naming `name` for a non-integer (a bool, a float), ValueError
    when out of range. numpy integers are accepted."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if not 0 <= value <= INT32_MAX:
        raise ValueError(f"{name}: must lie in [0, {INT32_MAX}] (cu_seqlens are int32), "
                         f"got {value}")
    return int(value)


def v2_varlen_request(q_shape, k_shape, v_shape, lam_shape, cu_q_shape, cu_k_shape, elem,
                      lam_elem, max_seqlen_q, max_seqlen_k, *, causal, scale, window):
    """Checks a diffattn.v2_varlen call (packed q [Tq, 2H, D], k/v [Tk, Hkv,
    D/Dv], lam [Tq, H], cu_seqlens [B + 1]); returns (params, mlir_text,
    out_shape, sizes), sizes being (B, max_seqlen_q, max_seqlen_k, Tq, Tk)."""
    _check_rank("q", q_shape, 3, "[Tq, 2H, D]")
    _check_rank("k", k_shape, 3, "[Tk, Hkv, D]")
    _check_rank("v", v_shape, 3, "[Tk, Hkv, Dv]")
    _check_rank("lam", lam_shape, 2, "[Tq, H]")
    _check_rank("cu_seqlens_q", cu_q_shape, 1, "[B + 1]")
    _check_rank("cu_seqlens_k", cu_k_shape, 1, "[B + 1]")
    tq, h2, d = q_shape
    tk, hkv, dv = k_shape[0], k_shape[1], v_shape[2]
    if h2 == 0 or h2 % 2:
        raise ValueError(f"q: the number of query heads (2H = {h2}) must be even and positive")
    h = h2 // 2
    _check_dim("k", k_shape, 2, d, "D")
    _check_dim("v", v_shape, 0, tk, "Tk")
    _check_dim("v", v_shape, 1, hkv, "Hkv")
    if hkv == 0 or h2 % hkv or (h2 // hkv) % 2:
        raise ValueError(f"k: Hkv = {hkv} KV heads must divide 2H = {h2} query heads with an "
                         f"even group size G = 2H / Hkv")
    if tuple(lam_shape) != (tq, h):
        raise ValueError(f"lam: expected shape {(tq, h)} [Tq, H], got {tuple(lam_shape)}")
    if cu_q_shape[0] < 1:
        raise ValueError(f"cu_seqlens_q: expected [B + 1] offsets, at least one, got shape "
                         f"{tuple(cu_q_shape)}")
    if tuple(cu_k_shape) != tuple(cu_q_shape):
        raise ValueError(f"cu_seqlens_k: expected shape {tuple(cu_q_shape)} (as cu_seqlens_q), "
                         f"got {tuple(cu_k_shape)}")
    max_seqlen_q = check_max_seqlen("max_seqlen_q", max_seqlen_q)
    max_seqlen_k = check_max_seqlen("max_seqlen_k", max_seqlen_k)
    scale = check_scale(scale)
    left, right = check_window(window, causal)
    params = {"element_type": elem, "lam_type": lam_elem, "query_heads": h2, "kv_heads": hkv,
              "head_dim": d, "value_dim": dv, "causal": bool(causal),
              "scale": None if scale is None else hex_f32(scale),
              "window": [left, right], "varlen": True}
    attrs = v2_attributes(causal, scale, left, right)
    operands = [("q", tensor_type(q_shape, elem)), ("k", tensor_type(k_shape, elem)),
                ("v", tensor_type(v_shape, elem)), ("lam", tensor_type(lam_shape, lam_elem)),
                ("cu_seqlens_q", tensor_type(cu_q_shape, "i32")),
                ("cu_seqlens_k", tensor_type(cu_k_shape, "i32"))]
    out_shape = (tq, h, dv)
    text = one_op_module("diffattn.v2_varlen", operands, attrs, out_shape, elem)
    sizes = (cu_q_shape[0] - 1, max_seqlen_q, max_seqlen_k, tq, tk)
    return params, text, out_shape, sizes


def v2_backward_request(q_shape, k_shape, v_shape, lam_shape, out_shape, dout_shape, lse_shape,
                        elem, lam_elem, *, causal, scale, window, kv_len_shape=None,
                        out_odd_shape=None):
    """Checks a diffattn.v2_backward call: the forward's inputs as for
    v2_request (contiguous caches), then out and dout [B, Sq, H, Dv], lse
    [B, 2H, Sq] and, if given, out_odd [B, Sq, H, Dv] (the forward's third
    result), each error naming the tensor. Returns (params, mlir_text,
    sizes) with sizes (B, Sq, Sk); the gradients are shaped like q, k, v and
    lam."""
    params, _, expected_out, sizes = v2_request(
        q_shape, k_shape, v_shape, lam_shape, elem, lam_elem, causal=causal, scale=scale,
        window=window, kv_len_shape=kv_len_shape)
    b, sq, h2, _ = q_shape
    for name, shape, expected, layout in (("out", out_shape, expected_out, "[B, Sq, H, Dv]"),
                                          ("dout", dout_shape, expected_out, "[B, Sq, H, Dv]"),
                                          ("lse", lse_shape, (b, h2, sq), "[B, 2H, Sq]"),
                                          ("out_odd", out_odd_shape, expected_out,
                                           "[B, Sq, H, Dv]")):
        if shape is not None and tuple(shape) != tuple(expected):
            raise ValueError(f"{name}: expected shape {tuple(expected)} {layout} (from the "
                             f"forward's q, k, v), got {tuple(shape)}")
    params = dict(params, backward=True)
    left, right = check_window(window, causal)
    attrs = v2_attributes(causal, check_scale(scale), left, right)
    operands = [("q", tensor_type(q_shape, elem)), ("k", tensor_type(k_shape, elem)),
                ("v", tensor_type(v_shape, elem)), ("lam", tensor_type(lam_shape, lam_elem)),
                ("out", tensor_type(out_shape, elem)), ("dout", tensor_type(dout_shape, elem)),
                ("lse", tensor_type(lse_shape, lse_elem(elem)))]
    if kv_len_shape is not None:
        operands.append(("kv_len", tensor_type(kv_len_shape, "i32")))
    if out_odd_shape is not None:
        operands.append(("out_odd", tensor_type(out_odd_shape, elem)))
        params["out_odd"] = True
    # The generic form names the optional operands' segments.
    segments = [1] * 7 + [int(kv_len_shape is not None), int(out_odd_shape is not None)]
    attrs = list(attrs) + ["operandSegmentSizes = array<i32: " +
                           ", ".join(map(str, segments)) + ">"]
    text = one_op_module("diffattn.v2_backward", operands, attrs, None, elem,
                         result_types=[t for _, t in operands[:4]])
    return params, text, sizes
