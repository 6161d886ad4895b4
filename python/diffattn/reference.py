"""Float64 numpy reference implementations of differential attention.

Two variants are provided, both in BSHD layout ([batch, seq, heads, dim]) and
both computed entirely in float64 (inputs of any float dtype are converted
first; bf16 callers must convert to a numpy float type themselves):

* :func:`v2` -- "differential attention V2": 2H query heads grouped over Hkv
  KV heads (GQA); output head h is ``A_{2h} - sigmoid(lam) * A_{2h+1}`` with a
  per-token, per-head lambda logit.  Supports causal masking, sliding windows
  and ragged KV lengths (decode).
* :func:`v2_backward` -- V2's gradients (dq, dk, dv, dlam) for a given
  output gradient; :func:`v2` with ``return_lse=True`` also returns the
  per-row log-sum-exp a FlashAttention-style backward starts from.
* :func:`v1` -- the original DIFF Transformer formulation: paired q/k heads,
  shared double-width V, scalar lambda, per-head RMSNorm and a
  ``(1 - lambda_init)`` output scale.

Masking convention (shared by both): with ``L`` visible keys and ``Sq``
queries, query ``i`` sits at key position ``i + (L - Sq)`` (bottom-right
alignment).  A query row that sees no key produces exactly 0 (never NaN).

Only numpy and the standard library are used.
"""

import math

import numpy as np

__all__ = ["v2", "v2_backward", "v2_varlen", "v1"]


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------

def _as_f64(name, x, rank, layout):
    """Convert ``x`` to a float64 array and check its rank."""
    arr = np.asarray(x)
    if not (np.issubdtype(arr.dtype, np.floating)
            or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name}: expected a real numeric array, "
                         f"got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim != rank:
        raise ValueError(f"{name}: expected rank {rank} {layout}, "
                         f"got shape {arr.shape}")
    return arr


def _check_dim(name, layout, shape, axis, expected, what):
    if shape[axis] != expected:
        raise ValueError(f"{name}: expected shape {layout} with {what}, "
                         f"got shape {shape}")


def _resolve_scale(scale, d):
    if scale is None:
        if d <= 0:
            raise ValueError(f"q: head dim D must be positive, got {d}")
        return 1.0 / math.sqrt(d)
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale: must be finite, got {scale}")
    return scale


def _check_window(window):
    try:
        left, right = window
    except (TypeError, ValueError):
        raise ValueError(f"window: expected a pair (left, right), "
                         f"got {window!r}") from None
    out = []
    for side, w in (("left", left), ("right", right)):
        if isinstance(w, (bool, np.bool_)) or not isinstance(
                w, (int, np.integer)):
            raise ValueError(f"window: {side} must be an int, got {w!r}")
        if w < -1:
            raise ValueError(f"window: {side} must be -1 (unlimited) or "
                             f">= 0, got {w}")
        out.append(int(w))
    return tuple(out)


def _check_kv_len(kv_len, b, sk):
    if kv_len is None:
        return None
    arr = np.asarray(kv_len)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"kv_len: expected an integer array, "
                         f"got dtype {arr.dtype}")
    if arr.shape != (b,):
        raise ValueError(f"kv_len: expected shape ({b},) [B], "
                         f"got shape {arr.shape}")
    if np.any(arr < 0) or np.any(arr > sk):
        raise ValueError(f"kv_len: values must lie in [0, Sk={sk}], "
                         f"got {arr.tolist()}")
    return arr.astype(np.int64)


# --------------------------------------------------------------------------
# shared attention core
# --------------------------------------------------------------------------

def _visible_mask(b, sq, sk, causal, window, kv_len):
    """Boolean [B, Sq, Sk]: True where key t is visible to query i."""
    # A bound of Sq + Sk or more hides nothing; clamping it keeps pos +/-
    # bound inside int64 (window=(-1, 2**63 - 1) would wrap).
    left, right = (min(w, sq + sk) for w in window)
    lens = (np.full(b, sk, dtype=np.int64) if kv_len is None else kv_len)
    i = np.arange(sq)[None, :, None]                      # [1, Sq, 1]
    t = np.arange(sk)[None, None, :]                      # [1, 1, Sk]
    L = lens[:, None, None]                               # [B, 1, 1]
    pos = i + (L - sq)                                    # query position
    mask = t < L
    if causal:
        mask = mask & (t <= pos)
    if left >= 0:
        mask = mask & (t >= pos - left)
    if right >= 0:
        mask = mask & (t <= pos + right)
    return np.broadcast_to(mask, (b, sq, sk))


def _attention_parts(q, k, v, *, scale, causal, window=(-1, -1), kv_len=None):
    """Masked softmax attention with grouped KV heads, and its parts.

    q [B, Sq, Hq, D], k [B, Sk, Hkv, D], v [B, Sk, Hkv, Dv], Hq = G * Hkv;
    query head j reads KV head j // G.  Returns (out [B, Sq, Hq, Dv],
    p [B, Hkv, G, Sq, Sk] the probabilities, lse [B, Hkv, G, Sq] the natural
    log of each row's sum of exp(scale * q.k) over visible keys (-inf for a
    row with none), k and v with keys at t >= kv_len zeroed), float64.
    The softmax max is taken over visible keys only; rows with no visible
    key are exactly 0.
    """
    b, sq, hq, d = q.shape
    sk, hkv = k.shape[1], k.shape[2]
    g = hq // hkv
    mask = _visible_mask(b, sq, sk, causal, window, kv_len)
    mask = mask[:, None, None, :, :]                      # [B, 1, 1, Sq, Sk]
    if kv_len is not None:
        # Keys at t >= kv_len[b] are never read into a product: a cache may
        # hold NaN or Inf there (uninitialised memory), and 0 * NaN is NaN.
        stored = (np.arange(sk)[None, :] < kv_len[:, None])[:, :, None, None]
        k = np.where(stored, k, 0.0)
        v = np.where(stored, v, 0.0)

    qg = q.reshape(b, sq, hkv, g, d)
    s = scale * np.einsum("bikgd,btkd->bkgit", qg, k)     # [B, Hkv, G, Sq, Sk]
    s = np.where(mask, s, -np.inf)
    m = np.max(s, axis=-1, keepdims=True, initial=-np.inf)
    m = np.where(np.isfinite(m), m, 0.0)                  # empty rows
    p = np.exp(s - m)                                     # masked -> exactly 0
    denom = p.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        lse = np.where(denom > 0.0, m + np.log(denom), -np.inf)[..., 0]
    p = p / np.where(denom > 0.0, denom, 1.0)             # empty rows stay 0
    out = np.einsum("bkgit,btkv->bikgv", p, v)            # [B, Sq, Hkv, G, Dv]
    return out.reshape(b, sq, hq, v.shape[-1]), p, lse, k, v


def _attention(q, k, v, *, scale, causal, window=(-1, -1), kv_len=None):
    """Masked softmax attention with grouped KV heads (see _attention_parts):
    [B, Sq, Hq, Dv] float64."""
    return _attention_parts(q, k, v, scale=scale, causal=causal, window=window,
                            kv_len=kv_len)[0]


def _gather_paged(k_cache, v_cache, kv_len, block_table):
    """The logical caches [B, MB * BS, Hkv, D] of a paged cache; keys at
    t >= kv_len[b] are 0 (never read from the pool)."""
    k_cache = np.asarray(k_cache)
    v_cache = np.asarray(v_cache)
    table = np.asarray(block_table)
    if table.ndim != 2 or not np.issubdtype(table.dtype, np.integer):
        raise ValueError(f"block_table: expected an integer array [B, MB], got "
                         f"{table.dtype} {table.shape}")
    if kv_len is None:
        raise ValueError("kv_len: required with block_table")
    if k_cache.ndim != 4 or v_cache.ndim != 4:
        raise ValueError(f"k/v: expected paged caches [NB, BS, Hkv, D], got "
                         f"{k_cache.shape} and {v_cache.shape}")
    b, mb = table.shape
    nb, bs = k_cache.shape[0], k_cache.shape[1]
    lens = np.asarray(kv_len).astype(np.int64)
    if lens.shape != (b,) or np.any(lens < 0) or np.any(lens > mb * bs):
        raise ValueError(f"kv_len: values must lie in [0, MB * BS = {mb * bs}], "
                         f"got {lens.tolist()}")
    k = np.zeros((b, mb * bs) + k_cache.shape[2:], np.float64)
    v = np.zeros((b, mb * bs) + v_cache.shape[2:], np.float64)
    for i in range(b):
        for slot in range((int(lens[i]) + bs - 1) // bs):
            blk = int(table[i, slot])
            if not 0 <= blk < nb:
                raise ValueError(f"block_table: entry [{i}, {slot}] = {blk} is "
                                 f"outside the pool [0, {nb})")
            n = min(bs, int(lens[i]) - slot * bs)
            k[i, slot * bs:slot * bs + n] = k_cache[blk, :n]
            v[i, slot * bs:slot * bs + n] = v_cache[blk, :n]
    return k, v, lens


def _sigmoid(x):
    # Overflow-free logistic function.
    return 0.5 * (1.0 + np.tanh(0.5 * x))


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------

def _v2_inputs(q, k, v, lam, scale, window, kv_len, block_table):
    """v2's argument checks and conversions: (q, k, v, lam, scale, window,
    kv_len) as float64 arrays and checked values."""
    if block_table is not None:
        k, v, kv_len = _gather_paged(k, v, kv_len, block_table)
    q = _as_f64("q", q, 4, "[B, Sq, 2H, D]")
    k = _as_f64("k", k, 4, "[B, Sk, Hkv, D]")
    v = _as_f64("v", v, 4, "[B, Sk, Hkv, Dv]")
    lam = _as_f64("lam", lam, 3, "[B, Sq, H]")

    b, sq, h2, d = q.shape
    if h2 == 0 or h2 % 2 != 0:
        raise ValueError(f"q: expected [B, Sq, 2H, D] with an even, positive "
                         f"number of heads, got shape {q.shape}")
    h = h2 // 2
    _check_dim("k", "[B, Sk, Hkv, D]", k.shape, 0, b, f"B={b} (from q)")
    _check_dim("k", "[B, Sk, Hkv, D]", k.shape, 3, d, f"D={d} (from q)")
    sk, hkv = k.shape[1], k.shape[2]
    if hkv == 0 or h2 % hkv != 0 or (h2 // hkv) % 2 != 0:
        raise ValueError(f"k: Hkv={hkv} must divide 2H={h2} with an even "
                         f"quotient G = 2H / Hkv, got shape {k.shape}")
    layout = "[B, Sk, Hkv, Dv]"
    _check_dim("v", layout, v.shape, 0, b, f"B={b} (from q)")
    _check_dim("v", layout, v.shape, 1, sk, f"Sk={sk} (from k)")
    _check_dim("v", layout, v.shape, 2, hkv, f"Hkv={hkv} (from k)")
    if lam.shape != (b, sq, h):
        raise ValueError(f"lam: expected shape ({b}, {sq}, {h}) [B, Sq, H], "
                         f"got shape {lam.shape}")
    return (q, k, v, lam, _resolve_scale(scale, d), _check_window(window),
            _check_kv_len(kv_len, b, sk))


def v2(q, k, v, lam, *, causal=False, scale=None, window=(-1, -1),
       kv_len=None, block_table=None, return_lse=False):
    """Differential attention V2 (float64 reference).

    q [B, Sq, 2H, D], k [B, Sk, Hkv, D], v [B, Sk, Hkv, Dv], lam [B, Sq, H]
    (raw logits).  Query head j reads KV head j // G with G = 2H / Hkv, which
    must be an even integer.  Returns [B, Sq, H, Dv] float64 with
    ``out[:, :, h] = A_{2h} - sigmoid(lam[:, :, h]) * A_{2h+1}``.

    ``window = (left, right)`` (-1 = unlimited) and ``causal`` (same as
    right = 0) are applied bottom-right aligned against the per-batch key
    length L (``kv_len[b]`` if given, else Sk).

    With ``block_table`` ([B, MB] integers), k and v are a paged cache
    [NB, BS, Hkv, D]: key t of sequence b is k[block_table[b, t // BS],
    t % BS] (Sk = MB * BS); ``kv_len`` is required, and only the blocks
    holding keys below kv_len[b] are read (they must lie in [0, NB)).

    With ``return_lse``, returns ``(out, lse)``: lse [B, 2H, Sq] float64 is
    the natural log of sum_t exp(scale * q_j . k_t) over the keys query
    head j's row sees (both heads of each pair; -inf where a row sees no
    key), the statistic a FlashAttention-style backward recomputes P from.
    """
    q, k, v, lam, scale, window, kv_len = _v2_inputs(q, k, v, lam, scale,
                                                     window, kv_len,
                                                     block_table)
    b, sq, h2, _ = q.shape
    a, _, lse, _, _ = _attention_parts(q, k, v, scale=scale, causal=bool(causal),
                                       window=window, kv_len=kv_len)
    a = a.reshape(b, sq, h2 // 2, 2, v.shape[-1])
    out = a[:, :, :, 0, :] - _sigmoid(lam)[..., None] * a[:, :, :, 1, :]
    if not return_lse:
        return out
    return out, lse.reshape(b, h2, sq)


def v2_backward(q, k, v, lam, dout, *, causal=False, scale=None,
                window=(-1, -1), kv_len=None):
    """Gradients of differential attention V2 (float64 reference).

    Arguments as for :func:`v2` (no paged caches) plus ``dout`` [B, Sq, H,
    Dv], the gradient of the loss with respect to v2's output.  Returns
    ``(dq, dk, dv, dlam)`` shaped like q, k, v and lam, float64:

    * dA_{2h} = dout_h and dA_{2h+1} = -sigmoid(lam_h) dout_h (the
      differential epilogue's chain rule);
    * dlam_h = dout_h . (-sigma'(lam_h) A_{2h+1}), sigma' = sigmoid (1 -
      sigmoid), per row and pair;
    * per query head (FlashAttention-2's backward, Dao 2023, Algorithm 2):
      dP = dA V^T, D_i = rowsum(dA o A), dS = P o (dP - D_i), dQ = scale dS K,
      dK = scale dS^T Q and dV = P^T dA, with dK and dV summed over the G
      query heads of each KV head. Masked keys, keys at t >= kv_len and
      rows that see no key get zero gradients.
    """
    q, k, v, lam, scale, window, kv_len = _v2_inputs(q, k, v, lam, scale,
                                                     window, kv_len, None)
    b, sq, h2, d = q.shape
    h, hkv, dv_dim = h2 // 2, k.shape[2], v.shape[-1]
    g = h2 // hkv
    dout = _as_f64("dout", dout, 4, "[B, Sq, H, Dv]")
    if dout.shape != (b, sq, h, dv_dim):
        raise ValueError(f"dout: expected shape ({b}, {sq}, {h}, {dv_dim}) "
                         f"[B, Sq, H, Dv], got shape {dout.shape}")
    a, p, _, k0, v0 = _attention_parts(q, k, v, scale=scale,
                                       causal=bool(causal), window=window,
                                       kv_len=kv_len)
    sig = _sigmoid(lam)                                    # [B, Sq, H]
    pairs = a.reshape(b, sq, h, 2, dv_dim)
    dlam = -sig * (1.0 - sig) * np.sum(dout * pairs[:, :, :, 1, :], axis=-1)
    da = np.stack([dout, -sig[..., None] * dout], axis=3)  # [B, Sq, H, 2, Dv]
    da = da.reshape(b, sq, hkv, g, dv_dim)
    ag = a.reshape(b, sq, hkv, g, dv_dim)
    qg = q.reshape(b, sq, hkv, g, d)
    dv = np.einsum("bkgit,bikgv->btkv", p, da)
    dp = np.einsum("bikgv,btkv->bkgit", da, v0)
    rows = np.einsum("bikgv,bikgv->bkgi", da, ag)          # D_i
    ds = p * (dp - rows[..., None])
    dq = scale * np.einsum("bkgit,btkd->bikgd", ds, k0).reshape(b, sq, h2, d)
    dk = scale * np.einsum("bkgit,bikgd->btkd", ds, qg)
    return dq, dk, dv, dlam


def v2_varlen(q, k, v, lam, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None,
              max_seqlen_k=None, *, causal=False, scale=None, window=(-1, -1)):
    """Differential attention V2 on packed variable-length sequences
    (float64 reference, flash_attn_varlen_func's layout): q [Tq, 2H, D],
    k/v [Tk, Hkv, D/Dv], lam [Tq, H], cu_seqlens [B + 1]; sequence b is
    v2 on q[cu_q[b]:cu_q[b+1]] against k[cu_k[b]:cu_k[b+1]] (masks aligned
    per sequence). Returns [Tq, H, Dv]; rows past cu_seqlens_q[B] are 0."""
    q = _as_f64("q", q, 3, "[Tq, 2H, D]")
    k = _as_f64("k", k, 3, "[Tk, Hkv, D]")
    v = _as_f64("v", v, 3, "[Tk, Hkv, Dv]")
    lam = _as_f64("lam", lam, 2, "[Tq, H]")
    cu_q = np.asarray(cu_seqlens_q).astype(np.int64)
    cu_k = np.asarray(cu_seqlens_k).astype(np.int64)
    if cu_q.shape != cu_k.shape or cu_q.ndim != 1 or cu_q.shape[0] < 1:
        raise ValueError(f"cu_seqlens: expected two [B + 1] arrays, got shapes "
                         f"{cu_q.shape} and {cu_k.shape}")
    for name, cu, total in (("cu_seqlens_q", cu_q, q.shape[0]),
                            ("cu_seqlens_k", cu_k, k.shape[0])):
        if cu[0] != 0 or np.any(np.diff(cu) < 0) or cu[-1] > total:
            raise ValueError(f"{name}: must start at 0, be non-decreasing and end "
                             f"at most at {total}, got {cu.tolist()}")
    out = np.zeros((q.shape[0], q.shape[1] // 2, v.shape[2]))
    for b in range(cu_q.shape[0] - 1):
        qs, qe, ks, ke = cu_q[b], cu_q[b + 1], cu_k[b], cu_k[b + 1]
        out[qs:qe] = v2(q[None, qs:qe], k[None, ks:ke], v[None, ks:ke],
                        lam[None, qs:qe], causal=causal, scale=scale,
                        window=window)[0]
    return out


def v1(q, k, v, lam, norm_weight, *, lambda_init, causal=False, scale=None,
       eps=1e-5):
    """Differential attention V1 (DIFF Transformer, float64 reference).

    q [B, Sq, 2H, D] (heads 2h, 2h+1 are q1, q2 of head h),
    k [B, Sk, 2Hkv, D] (k1 = k[:, :, 0::2], k2 = k[:, :, 1::2]),
    v [B, Sk, Hkv, 2D], lam a scalar, norm_weight [2D].  Pair h uses KV head
    h // (H / Hkv).  Returns [B, Sq, H, 2D] float64::

        (1 - lambda_init) * RMSNorm(A1 - lam * A2) * norm_weight
    """
    q = _as_f64("q", q, 4, "[B, Sq, 2H, D]")
    k = _as_f64("k", k, 4, "[B, Sk, 2Hkv, D]")
    v = _as_f64("v", v, 4, "[B, Sk, Hkv, 2D]")
    lam = np.asarray(lam)
    if lam.ndim != 0:
        raise ValueError(f"lam: expected a scalar, got shape {lam.shape}")
    lam = float(lam)
    norm_weight = _as_f64("norm_weight", norm_weight, 1, "[2D]")

    b, sq, h2, d = q.shape
    if h2 == 0 or h2 % 2 != 0:
        raise ValueError(f"q: expected [B, Sq, 2H, D] with an even, positive "
                         f"number of heads, got shape {q.shape}")
    h = h2 // 2
    layout = "[B, Sk, 2Hkv, D]"
    _check_dim("k", layout, k.shape, 0, b, f"B={b} (from q)")
    _check_dim("k", layout, k.shape, 3, d, f"D={d} (from q)")
    sk, hk2 = k.shape[1], k.shape[2]
    if hk2 == 0 or hk2 % 2 != 0:
        raise ValueError(f"k: expected {layout} with an even, positive number "
                         f"of heads, got shape {k.shape}")
    hkv = hk2 // 2
    if h % hkv != 0:
        raise ValueError(f"k: Hkv={hkv} must divide H={h}, "
                         f"got shape {k.shape}")
    layout = "[B, Sk, Hkv, 2D]"
    _check_dim("v", layout, v.shape, 0, b, f"B={b} (from q)")
    _check_dim("v", layout, v.shape, 1, sk, f"Sk={sk} (from k)")
    _check_dim("v", layout, v.shape, 2, hkv, f"Hkv={hkv} (from k)")
    _check_dim("v", layout, v.shape, 3, 2 * d, f"2D={2 * d} (from q)")
    if norm_weight.shape != (2 * d,):
        raise ValueError(f"norm_weight: expected shape ({2 * d},) [2D], "
                         f"got shape {norm_weight.shape}")
    scale = _resolve_scale(scale, d)

    q1, q2 = q[:, :, 0::2], q[:, :, 1::2]
    k1, k2 = k[:, :, 0::2], k[:, :, 1::2]
    a1 = _attention(q1, k1, v, scale=scale, causal=bool(causal))
    a2 = _attention(q2, k2, v, scale=scale, causal=bool(causal))
    x = a1 - lam * a2                                     # [B, Sq, H, 2D]
    rms = np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + float(eps))
    rms = np.where(rms > 0.0, rms, 1.0)                   # eps=0, empty rows
    return (1.0 - float(lambda_init)) * (x / rms) * norm_weight
