//===- DiffAttnOps.td - diffattn operations ----------------*- tablegen -*-===//
//
// The diffattn.v2 and diffattn.v1 operations. Operand constraints are
// ranked tensors here; the shape, element type and head-count rules relate
// several operands to each other and live in the shared C++ verifier
// (DiffAttnOps.cpp), which names the operand at fault in every diagnostic.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_DIALECT_DIFFATTN_IR_DIFFATTNOPS_TD
#define DIFFATTN_DIALECT_DIFFATTN_IR_DIFFATTNOPS_TD

include "diffattn/Dialect/DiffAttn/IR/DiffAttnDialect.td"
include "mlir/Interfaces/SideEffectInterfaces.td"
include "mlir/IR/CommonAttrConstraints.td"

//===----------------------------------------------------------------------===//
// V2
//===----------------------------------------------------------------------===//

def DiffAttn_V2Op : DiffAttn_Op<"v2", [Pure]> {
  let summary = "Differential attention V2 (paired query heads sharing KV)";
  let description = [{
    Differential Transformer V2 attention in the BSHD layout.

    | operand  | shape           | element type |
    | -------- | --------------- | ------------ |
    | `q`      | [B, Sq, 2H, D]  | T            |
    | `k`      | [B, Sk, Hkv, D] | T            |
    | `v`      | [B, Sk, Hkv, Dv]| T            |
    | `lam`    | [B, Sq, H]      | T or f32     |
    | `kv_len` | [B] (optional)  | i32          |
    | `out`    | [B, Sq, H, Dv]  | T            |
    | `lse`    | [B, 2H, Sq] (optional result) | A |
    | `out_odd`| [B, Sq, H, Dv] (optional result, after `lse`) | T |

    T is one of f64, f32, f16, bf16. A is the accumulator type, in which
    scores, softmax statistics and sums are computed: f64 when T is f64,
    f32 for f32, f16 and bf16 (`getAccumulatorType`). f64 is lowered on the
    CPU only (for float64 reference gradients and gradcheck); the GPU
    strategies reject it with a diagnostic. Query head `j` reads KV head
    `g(j) = j / G` with `G = 2H / Hkv`; the op requires `2H % Hkv == 0` and
    `G` even, so that query heads `2h` and `2h + 1` (pair `h`) read the same
    K and V:

    ```
    A_j[i, :] = sum_t softmax_t(scale * q[b,i,j,:] . k[b,t,g(j),:] + mask(i,t))
                      * v[b,t,g(j),:]
    out[b,i,h,:] = A_{2h}[i,:] - sigmoid(lam[b,i,h]) * A_{2h+1}[i,:]
    ```

    `scale` defaults to `1/sqrt(D)`, computed in A; an explicit `scale` is
    an f32 attribute, so f64 ops use its f32 value exactly. With `causal`,
    query `i` sees key `t` only when `t <= i + (L - Sq)` (bottom-right
    alignment, L = Sk).
    `window_left` / `window_right` (-1 = unlimited, else at most
    2147483647, as FlashAttention's int `window_size`) restrict it further to
    `i + (L - Sq) - left <= t <= i + (L - Sq) + right`; `causal` is the same
    as `window_right = 0`. A row that sees no key yields 0.

    The optional second result `lse` is the per-row log-sum-exp of every
    query head (both heads of each pair), what a backward pass
    (`diffattn.v2_backward`) needs to recompute the probabilities:
    `lse[b, j, i] = log sum_t exp(scale * q[b,i,j,:] . k[b,t,g(j),:] +
    mask(i,t))` (natural log), `-inf` for a row that sees no key. The layout
    is FlashAttention's softmax_lse ([B, heads, Sq], f32; f64 for f64
    operands), with heads in q's order. The CPU lowerings
    (diffattn-tile-flash, diffattn-decompose) compute it, and so do the GPU
    kernels (f16/bf16): the portable strategy's
    row-block kernel (with `kv_len` it serves instead of split-KV, also on
    sm_90a) and the Hopper (sm_90a) wgmma kernel.

    The optional third result `out_odd` (only with `lse`) is what training
    saves beside `out`: `out_odd[b, i, h, :] = A_{2h+1}[i, :]`, the second
    head's attention output of every pair, in T. With it the backward
    (`diffattn.v2_backward ... out_odd(...)`) reads `r = rowsum(dout *
    A_{2h+1})` instead of recomputing `A_{2h+1}` (as FlashAttention reads
    `D = rowsum(dout * out)`). The CPU lowerings and the GPU kernels that
    write `lse` write it too.

    With the optional `kv_len` operand (decode against a KV cache),
    `kv_len[b]` counts the valid keys of sequence `b` (the `Sq` new ones
    included): keys `t >= kv_len[b]` are ignored and `L = kv_len[b]` in the
    mask above. `0 <= kv_len[b] <= Sk` is checked at run time.

    Tiling preserves the op: the B, Sq and pair dimensions are parallel and
    can be split freely; the key dimension is a reduction carried by an
    online softmax (running max and sum per head of the pair) whose
    differential epilogue runs once, after the last key block.

    Example:

    ```mlir
    %o = diffattn.v2 %q, %k, %v, %lam {causal}
        : (tensor<2x128x8x64xf32>, tensor<2x128x2x64xf32>,
           tensor<2x128x2x64xf32>, tensor<2x128x4xf32>)
        -> tensor<2x128x4x64xf32>
    ```
  }];

  let arguments = (ins
    AnyRankedTensor:$q,
    AnyRankedTensor:$k,
    AnyRankedTensor:$v,
    AnyRankedTensor:$lam,
    Optional<AnyRankedTensor>:$kv_len,
    UnitAttr:$causal,
    OptionalAttr<F32Attr>:$scale,
    DefaultValuedAttr<I64Attr, "-1">:$window_left,
    DefaultValuedAttr<I64Attr, "-1">:$window_right
  );
  // `saved`: nothing, (lse) or (lse, out_odd); one variadic group keeps
  // the textual form `-> (out, lse, out_odd)` (getLse, getOutOdd).
  let results = (outs AnyRankedTensor:$out, Variadic<AnyRankedTensor>:$saved);

  let assemblyFormat = [{
    $q `,` $k `,` $v `,` $lam (`kv_len` `(` $kv_len^ `)`)? attr-dict `:`
    functional-type(operands, results)
  }];

  let extraClassDeclaration = [{
    /// The softmax scale: the `scale` attribute, or 1/sqrt(D) when absent.
    float getScaleOrDefault();
    /// Number of output heads H (half the query heads).
    int64_t getNumPairs();
    /// Number of KV heads.
    int64_t getNumKvHeads();
    /// Query heads per KV head, G = 2H / Hkv.
    int64_t getGroupSize();
    /// Query/key head dimension D and value head dimension Dv.
    int64_t getHeadDim();
    int64_t getValueDim();
    /// The window bounds as signed values (-1 = unlimited).
    int64_t getWindowLeftBound() { return getWindowLeftAttr().getInt(); }
    int64_t getWindowRightBound() { return getWindowRightAttr().getInt(); }
    /// True when the op reads a KV cache with per-sequence lengths.
    bool isDecode() { return static_cast<bool>(getKvLen()); }
    /// The optional results: the log-sum-exp [B, 2H, Sq] of A, and the
    /// second heads' outputs A_{2h+1} [B, Sq, H, Dv] of T (null if absent).
    ::mlir::Value getLse() {
      return getSaved().empty() ? ::mlir::Value() : getSaved()[0];
    }
    ::mlir::Value getOutOdd() {
      return getSaved().size() < 2 ? ::mlir::Value() : getSaved()[1];
    }
  }];

  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// V2 on a paged KV cache
//===----------------------------------------------------------------------===//

def DiffAttn_V2PagedOp : DiffAttn_Op<"v2_paged", [Pure]> {
  let summary = "Differential attention V2 against a paged KV cache";
  let description = [{
    `diffattn.v2` in its decode form (`kv_len`), with K and V kept in a pool
    of fixed-size blocks as serving engines keep them (vLLM,
    `flash_attn_with_kvcache`'s `block_table`):

    | operand       | shape                        | element type |
    | ------------- | ---------------------------- | ------------ |
    | `q`           | [B, Sq, 2H, D]               | T            |
    | `k_cache`     | [NB, BS, Hkv, D]             | T            |
    | `v_cache`     | [NB, BS, Hkv, Dv]            | T            |
    | `lam`         | [B, Sq, H]                   | T or f32     |
    | `kv_len`      | [B]                          | i32          |
    | `block_table` | [B, MB]                      | i32          |
    | result        | [B, Sq, H, Dv]               | T            |

    Key `t` of sequence `b` is row `t % BS` of block `block_table[b, t / BS]`
    of the pool: the op computes `diffattn.v2` on the logical cache
    `k[b, t] = k_cache[block_table[b, t / BS], t % BS]` (likewise v) of
    `Sk = MB * BS` keys with `kv_len` (the causal alignment uses
    `kv_len[b]`, keys `t >= kv_len[b]` are ignored and never read: block
    table entries past a sequence's last block may hold any value). The
    block size `BS` is static and a multiple of 16; the pool size `NB`, the
    table width `MB`, B and Sq may be dynamic. `0 <= kv_len[b] <= MB * BS`
    and `0 <= block_table[b, t / BS] < NB` for every `t < kv_len[b]` are
    checked at run time. Attributes and element types (T in f64, f32, f16,
    bf16) as for `diffattn.v2`.

    Example:

    ```mlir
    %o = diffattn.v2_paged %q, %kc, %vc, %lam kv_len(%len) block_table(%bt)
        {causal} : (tensor<2x1x8x64xbf16>, tensor<?x16x2x64xbf16>,
                    tensor<?x16x2x64xbf16>, tensor<2x1x4xbf16>,
                    tensor<2xi32>, tensor<2x?xi32>) -> tensor<2x1x4x64xbf16>
    ```
  }];

  let arguments = (ins
    AnyRankedTensor:$q,
    AnyRankedTensor:$k_cache,
    AnyRankedTensor:$v_cache,
    AnyRankedTensor:$lam,
    AnyRankedTensor:$kv_len,
    AnyRankedTensor:$block_table,
    UnitAttr:$causal,
    OptionalAttr<F32Attr>:$scale,
    DefaultValuedAttr<I64Attr, "-1">:$window_left,
    DefaultValuedAttr<I64Attr, "-1">:$window_right
  );
  let results = (outs AnyRankedTensor:$out);

  let assemblyFormat = [{
    $q `,` $k_cache `,` $v_cache `,` $lam `kv_len` `(` $kv_len `)`
    `block_table` `(` $block_table `)` attr-dict `:`
    functional-type(operands, results)
  }];

  let extraClassDeclaration = [{
    /// The softmax scale: the `scale` attribute, or 1/sqrt(D) when absent.
    float getScaleOrDefault();
    int64_t getNumPairs();
    int64_t getNumKvHeads();
    int64_t getGroupSize();
    int64_t getHeadDim();
    int64_t getValueDim();
    /// Keys per block of the pool (BS).
    int64_t getBlockSize();
    int64_t getWindowLeftBound() { return getWindowLeftAttr().getInt(); }
    int64_t getWindowRightBound() { return getWindowRightAttr().getInt(); }
  }];

  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// V2 on packed variable-length sequences
//===----------------------------------------------------------------------===//

def DiffAttn_V2VarlenOp : DiffAttn_Op<"v2_varlen", [Pure]> {
  let summary = "Differential attention V2 on packed variable-length batches";
  let description = [{
    `diffattn.v2` on a batch of sequences of different lengths packed along
    one token dimension, as `flash_attn_varlen_func` takes them:

    | operand        | shape             | element type |
    | -------------- | ----------------- | ------------ |
    | `q`            | [Tq, 2H, D]       | T            |
    | `k`            | [Tk, Hkv, D]      | T            |
    | `v`            | [Tk, Hkv, Dv]     | T            |
    | `lam`          | [Tq, H]           | T or f32     |
    | `cu_seqlens_q` | [B + 1]           | i32          |
    | `cu_seqlens_k` | [B + 1]           | i32          |
    | result         | [Tq, H, Dv]       | T            |

    Sequence `b` owns query tokens `[cu_seqlens_q[b], cu_seqlens_q[b+1])`
    and keys `[cu_seqlens_k[b], cu_seqlens_k[b+1])`; on each, the op
    computes `diffattn.v2` with `Sq = cu_seqlens_q[b+1] - cu_seqlens_q[b]`
    and `Sk` likewise (so the causal mask and windows are aligned
    bottom-right per sequence, as in flash_attn >= 2.1). Query tokens
    outside every sequence (past `cu_seqlens_q[B]`) are left unwritten.
    `cu_seqlens_q` and `cu_seqlens_k` must start at 0, be non-decreasing and
    end at most at Tq, Tk: checked at run time. Tq, Tk and B may be dynamic.
    Attributes and element types as for `diffattn.v2`.

    Example:

    ```mlir
    %o = diffattn.v2_varlen %q, %k, %v, %lam cu_seqlens(%cq, %ck) {causal}
        : (tensor<?x8x64xbf16>, tensor<?x2x64xbf16>, tensor<?x2x64xbf16>,
           tensor<?x4xbf16>, tensor<3xi32>, tensor<3xi32>)
        -> tensor<?x4x64xbf16>
    ```
  }];

  let arguments = (ins
    AnyRankedTensor:$q,
    AnyRankedTensor:$k,
    AnyRankedTensor:$v,
    AnyRankedTensor:$lam,
    AnyRankedTensor:$cu_seqlens_q,
    AnyRankedTensor:$cu_seqlens_k,
    UnitAttr:$causal,
    OptionalAttr<F32Attr>:$scale,
    DefaultValuedAttr<I64Attr, "-1">:$window_left,
    DefaultValuedAttr<I64Attr, "-1">:$window_right
  );
  let results = (outs AnyRankedTensor:$out);

  let assemblyFormat = [{
    $q `,` $k `,` $v `,` $lam `cu_seqlens` `(` $cu_seqlens_q `,`
    $cu_seqlens_k `)` attr-dict `:` functional-type(operands, results)
  }];

  let extraClassDeclaration = [{
    float getScaleOrDefault();
    int64_t getNumPairs();
    int64_t getNumKvHeads();
    int64_t getGroupSize();
    int64_t getHeadDim();
    int64_t getValueDim();
    int64_t getWindowLeftBound() { return getWindowLeftAttr().getInt(); }
    int64_t getWindowRightBound() { return getWindowRightAttr().getInt(); }
  }];

  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// V2 backward
//===----------------------------------------------------------------------===//

def DiffAttn_V2BackwardOp : DiffAttn_Op<"v2_backward", [Pure, AttrSizedOperandSegments]> {
  let summary = "Gradients of diffattn.v2 (dq, dk, dv, dlam)";
  let description = [{
    The backward pass of `diffattn.v2` with the same configuration (masks,
    windows, scale, GQA and pair rules, `kv_len`), from the forward's inputs,
    its output, the output's gradient and the forward's log-sum-exp:

    | operand  | shape            | element type |
    | -------- | ---------------- | ------------ |
    | `q`      | [B, Sq, 2H, D]   | T            |
    | `k`      | [B, Sk, Hkv, D]  | T            |
    | `v`      | [B, Sk, Hkv, Dv] | T            |
    | `lam`    | [B, Sq, H]       | T or f32     |
    | `out`    | [B, Sq, H, Dv]   | T            |
    | `dout`   | [B, Sq, H, Dv]   | T            |
    | `lse`    | [B, 2H, Sq]      | A            |
    | `kv_len` | [B] (optional)   | i32          |
    | `out_odd`| [B, Sq, H, Dv] (optional) | T   |

    T and A as for `diffattn.v2` (A: f64 when T is f64, else f32; the
    lowerings compute in A). Results `dq`, `dk`, `dv`, `dlam` have the
    types of `q`, `k`, `v` and `lam`. With `P_j = exp(scale * S_j -
    lse_j)` recomputed per head and `A_j = P_j V` (so `out = A_{2h} -
    sigmoid(lam) A_{2h+1}`):

    ```
    dA_{2h} = dout_h,   dA_{2h+1} = -sigmoid(lam_h) dout_h
    dlam_h  = rowsum(dout_h * (-sigmoid'(lam_h) A_{2h+1}))
    D_j     = rowsum(dA_j * A_j)
    dS_j    = P_j * (dA_j V^T - D_j)
    dq_j    = scale * dS_j K,  dk += scale * dS_j^T q_j,  dv += P_j^T dA_j
    ```

    `dk` and `dv` sum over every query head of a KV group (FlashAttention-2's
    backward, Dao 2023, with the differential epilogue's chain rule;
    `diffattn.reference.v2_backward` is the float64 reference). Since `out =
    A_{2h} - sigmoid(lam_h) A_{2h+1}`, only the odd head's `A_{2h+1}` is
    recomputed: `D_{2h} = rowsum(dout * out) + sigmoid(lam) r`, `D_{2h+1} =
    -sigmoid(lam) r` with `r = rowsum(dout * A_{2h+1})`, and `dlam = -sigmoid'(lam) r`.
    With the optional `out_odd` (the forward's third result, A_{2h+1} in
    T), r is read from it, `r = rowsum(dout * out_odd)`, instead of
    recomputed: the GPU strategies' row-statistics kernel then reads three
    row vectors instead of recomputing two products per key block. The CPU
    lowerings recompute r either way (the result is the same up to
    out_odd's rounding to T).
    Rows with no visible key (`lse = -inf`) and keys at `t >= kv_len` get
    zero gradients, whatever the cache holds there.

    `--diffattn-tile-flash` lowers it over blocks of query rows and keys
    (FlashAttention-2's backward, the CPU target's default): per block of
    rows, the key blocks some of its rows see (causal, window and `kv_len`
    bound the loop) are walked twice, P and `G = dout V^T` recomputed per
    key block: r accumulated in the first pass; in the second, the rows' dq
    accumulated (written once) and each key block's dk, dv added to their
    sums. `--diffattn-decompose` lowers it over all rows and keys at once
    (the oracle, quadratic memory). The GPU strategies (mma.sync, and
    wgmma on sm_90a) emit three kernels launched in order over an f32
    workspace of one 8-float record per (b, pair, query row): row
    statistics (r, `D_j`, dlam), dq (per row block over its key blocks)
    and dk/dv (per block of keys over the query blocks of every pair of
    its KV group), none with atomics, so the gradients are deterministic;
    or, with the strategy option `deterministic=false` on sm_90 and
    later, row statistics, dk/dv adding each block's dq to an f32
    accumulator in the workspace, and dq's conversion (docs/training.md);
    f16/bf16, D = Dv = 64 or 128.
  }];

  let arguments = (ins
    AnyRankedTensor:$q,
    AnyRankedTensor:$k,
    AnyRankedTensor:$v,
    AnyRankedTensor:$lam,
    AnyRankedTensor:$out,
    AnyRankedTensor:$dout,
    AnyRankedTensor:$lse,
    Optional<AnyRankedTensor>:$kv_len,
    Optional<AnyRankedTensor>:$out_odd,
    UnitAttr:$causal,
    OptionalAttr<F32Attr>:$scale,
    DefaultValuedAttr<I64Attr, "-1">:$window_left,
    DefaultValuedAttr<I64Attr, "-1">:$window_right
  );
  let results = (outs AnyRankedTensor:$dq, AnyRankedTensor:$dk,
                      AnyRankedTensor:$dv, AnyRankedTensor:$dlam);

  let assemblyFormat = [{
    $q `,` $k `,` $v `,` $lam `,` $out `,` $dout `,` $lse
    (`kv_len` `(` $kv_len^ `)`)? (`out_odd` `(` $out_odd^ `)`)? attr-dict `:`
    functional-type(operands, results)
  }];

  let extraClassDeclaration = [{
    /// As diffattn.v2's accessors: scale (default 1/sqrt(D)), H, Hkv, D, Dv.
    float getScaleOrDefault();
    int64_t getNumPairs();
    int64_t getNumKvHeads();
    int64_t getHeadDim();
    int64_t getValueDim();
    /// The window bounds as signed values (-1 = unlimited).
    int64_t getWindowLeftBound() { return getWindowLeftAttr().getInt(); }
    int64_t getWindowRightBound() { return getWindowRightAttr().getInt(); }
  }];

  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// V1
//===----------------------------------------------------------------------===//

def DiffAttn_V1Op : DiffAttn_Op<"v1", [Pure]> {
  let summary = "Differential attention V1 (double-width values, RMSNorm)";
  let description = [{
    Differential Transformer V1 attention in the BSHD layout.

    | operand       | shape            | element type |
    | ------------- | ---------------- | ------------ |
    | `q`           | [B, Sq, 2H, D]   | T            |
    | `k`           | [B, Sk, 2Hkv, D] | T            |
    | `v`           | [B, Sk, Hkv, 2D] | T            |
    | `lam`         | [] (scalar)      | f32          |
    | `norm_weight` | [2D]             | T or f32     |
    | result        | [B, Sq, H, 2D]   | T            |

    T is one of f64, f32, f16, bf16 (f64 on the CPU only; it computes in
    f64, the others in f32). Query heads `2h`, `2h + 1` are (q1, q2) of head
    `h`; key heads likewise (k1, k2). Pair `h` reads KV head `h / (H / Hkv)`, so `H % Hkv == 0`.

    ```
    A1 = attention(q1, k1, v), A2 = attention(q2, k2, v)     // [B,Sq,H,2D]
    out = (1 - lambda_init) * RMSNorm(A1 - lam * A2) * norm_weight
    RMSNorm(x) = x / sqrt(mean(x^2 over the last dim) + eps)
    ```

    `lam` is the layer's scalar lambda, computed upstream as
    `exp(sum(lq1*lk1)) - exp(sum(lq2*lk2)) + lambda_init`. `scale` defaults
    to `1/sqrt(D)`; `causal` uses the bottom-right alignment of `diffattn.v2`.
    Rows that see no key yield 0.

    Example:

    ```mlir
    %o = diffattn.v1 %q, %k, %v, %lam, %w {causal, lambda_init = 0.2 : f32}
        : (tensor<1x64x8x32xf16>, tensor<1x64x4x32xf16>,
           tensor<1x64x2x64xf16>, tensor<f32>, tensor<64xf16>)
        -> tensor<1x64x4x64xf16>
    ```
  }];

  let arguments = (ins
    AnyRankedTensor:$q,
    AnyRankedTensor:$k,
    AnyRankedTensor:$v,
    AnyRankedTensor:$lam,
    AnyRankedTensor:$norm_weight,
    UnitAttr:$causal,
    OptionalAttr<F32Attr>:$scale,
    F32Attr:$lambda_init,
    DefaultValuedAttr<F32Attr, "1.0e-5f">:$eps
  );
  let results = (outs AnyRankedTensor:$out);

  let assemblyFormat = [{
    $q `,` $k `,` $v `,` $lam `,` $norm_weight attr-dict `:`
    functional-type(operands, results)
  }];

  let extraClassDeclaration = [{
    /// The softmax scale: the `scale` attribute, or 1/sqrt(D) when absent.
    float getScaleOrDefault();
    /// Number of output heads H.
    int64_t getNumPairs();
    /// Number of KV heads (v's head count).
    int64_t getNumKvHeads();
    /// Query/key head dimension D (values are 2D wide).
    int64_t getHeadDim();
  }];

  let hasVerifier = 1;
}

#endif // DIFFATTN_DIALECT_DIFFATTN_IR_DIFFATTNOPS_TD
