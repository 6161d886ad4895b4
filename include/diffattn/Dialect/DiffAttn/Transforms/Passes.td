//===- Passes.td - diffattn transformation passes ----------*- tablegen -*-===//
//
// Passes over the diffattn dialect: fusion of model graphs into it,
// decomposition into upstream linalg (the oracle), FlashAttention tiling,
// and kernel outlining.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_DIALECT_DIFFATTN_TRANSFORMS_PASSES_TD
#define DIFFATTN_DIALECT_DIFFATTN_TRANSFORMS_PASSES_TD

include "mlir/Pass/PassBase.td"

def DiffAttnFuse : Pass<"diffattn-fuse"> {
  let summary = "Replace differential attention written out in linalg with "
                "diffattn.v2 / diffattn.v1";
  let description = [{
    Finds, in linalg-on-tensors graphs (TOSA graphs after
    `--diffattn-tosa-frontend`), the attention core of Differential
    Transformer V2 and V1 and replaces it with one `diffattn.v2` /
    `diffattn.v1` that reads the graph's own q, k, v and lambda tensors. The
    projections, RoPE and everything else stay as they are; the ops that
    only fed the replaced subgraph are erased.

    Recognised: softmax written as max/sub/exp/sum/div, with a reciprocal,
    or as `linalg.softmax`, optionally behind torch's safe-softmax guard
    `where(all_t(s == -inf), 0, softmax(s))` (SDPA's decomposition; checked
    exactly and absorbed: it is the op's rule that a row seeing no key gives
    0); matmuls as named ops or generics, with any transposes, head reshapes
    and slices (q, k, v from one packed projection are read through slices
    with their offsets); the two attentions as strided slices, a
    `view(..., H, 2, D)` pairing or halves (h, h + H) of a 2H-head
    attention, or as separate attentions; GQA written as
    broadcast/expand/repeat/repeat_interleave of K and V (the fused op
    reads the Hkv-head tensors); causal and sliding-window masks as an
    additive -inf/large negative tensor, selects in either orientation on
    an iota comparison or a constant mask tensor, in any order; the scale on
    the scores, split over q and k, or folded into either; bf16/f16 graphs
    computed in f32 inside (looked through: the op accumulates in f32).
    Masks that depend on the positions only through `t - i` are proven to be
    a band for every size; others are evaluated on every (query, key)
    position. Dynamic B, Sq and Sk: torch-mlir's `tensor.reshape` of shapes
    computed from `tensor.dim` and its `select(size == 1, 0, i)` broadcast
    gathers are read where their sizes prove them plain splits/merges and
    copies.

    V2: `A_{2h} - sigmoid(lam) * A_{2h+1}`. V1: `c * RMSNorm(A1 - lam * A2)
    * w` with `lambda_init = 1 - c`.

    Anything that would change the computation is refused and, with
    `remarks`, explained at the furthest step reached, naming the value:
    pairs of query heads that do not share a KV head (named as the graph
    numbers them), a lambda without its sigmoid, a mask that is not causal
    or windowed or is read from a runtime tensor, the probabilities scaled
    or multiplied (dropout) after the softmax, the difference in the other
    order, a softmax over another axis, views the fusion cannot read (a
    `tensor.reshape` not provably a split or merge of its source's dims,
    named with the reason), unsupported element types.
    Every op the pass creates is verified before it replaces anything.

    Before (sketch):
    ```mlir
    %s = linalg.batch_matmul ins(%q, %kT ...)      // scores, then scale, mask
    %m = linalg.generic {reduction} ...            // row max
    %e = linalg.generic {exp(s - m)} ...
    %p = linalg.generic {e / sum(e)} ...
    %a = linalg.batch_matmul ins(%p, %v ...)
    %d = linalg.generic {a[2h] - sigmoid(lam) * a[2h+1]} ...
    ```
    After:
    ```mlir
    %d = diffattn.v2 %q, %k, %v, %lam {causal, scale = 0.125 : f32} : ...
    ```
  }];
  let options = [
    Option<"remarks", "remarks", "bool", /*default=*/"false",
           "Emit a remark for every fusion and for every attention-like "
           "subgraph left unfused, saying why">,
  ];
  let dependentDialects = [
    "::mlir::arith::ArithDialect", "::mlir::linalg::LinalgDialect",
    "::mlir::tensor::TensorDialect"
  ];
}

def DiffAttnDecompose : Pass<"diffattn-decompose"> {
  let summary = "Rewrite diffattn ops into upstream linalg/tensor/arith/math";
  let description = [{
    Replaces every `diffattn.v2` and `diffattn.v1` with untiled
    linalg-on-tensors that computes SPEC.md's semantics directly: the full
    score tensor `[B, 2H, Sq, Sk]` (f32), the mask, a max/exp/sum softmax,
    the P·V product and the differential epilogue. This is the oracle every
    other lowering is checked against, and a fallback for any target. Its
    memory is quadratic in the sequence length.

    Before:
    ```mlir
    %o = diffattn.v2 %q, %k, %v, %lam {causal} : (...) -> tensor<2x128x4x64xf32>
    ```
    After (sketch):
    ```mlir
    %s = linalg.generic {...} ins(%q, %k) outs(%zero)      // q·kᵀ, f32
    %m = linalg.generic {...} ins(%s) outs(%ninf)         // scale, mask, row max
    %p = linalg.generic {...} ins(%s, %m) ...              // exp, row sum
    %a = linalg.generic {...} ins(%p, %v) ...              // P·V
    %o = linalg.generic {...} ins(%a, %l, %lam) ...        // A0/l0 - σ(λ)·A1/l1
    ```
  }];
  let dependentDialects = [
    "::mlir::affine::AffineDialect", "::mlir::arith::ArithDialect",
    "::mlir::linalg::LinalgDialect", "::mlir::math::MathDialect",
    "::mlir::scf::SCFDialect", "::mlir::tensor::TensorDialect",
    "::mlir::vector::VectorDialect"
  ];
}

def DiffAttnTileFlash : Pass<"diffattn-tile-flash"> {
  let summary = "FlashAttention tiling of diffattn ops";
  let description = [{
    Rewrites every `diffattn.v2` / `diffattn.v1` into the tiled form that
    every target strategy starts from: loops over batch, head pairs and
    query blocks; inside, a loop over key/value blocks in which both heads of
    the pair share the one K/V tile extracted per iteration, each with its
    own online softmax (running max and sum, rescaled accumulator),
    and after the loop the fused differential epilogue (sigmoid(lam) and
    subtraction for V2; subtraction, RMSNorm, weight and (1 - lambda_init)
    for V1) that writes the pair's single output head once.

    Causal and window masks bound the key loop so that fully masked blocks
    are never visited; only blocks that straddle the mask boundary are
    masked element-wise (an `scf.if` per block). With `kv_len`, the key loop
    of sequence `b` stops at `kv_len[b]`. Rows that see no key produce 0.

    `diffattn.v2_backward` becomes FlashAttention-2's backward over the same
    blocks: a loop over blocks of `block-q` query rows carrying dq, dlam and
    the dk, dv sums; per row block, two loops over the blocks of `block-k`
    keys that its rows may see (bounded as above; with `kv_len`, by the
    smallest and largest length of the batch), the first summing r (the
    odd heads' rowsum of P G), the second recomputing P and G to accumulate
    the rows' dq (written once after it) and add each key block's dk and dv
    into rows t0 onwards of their sums. Intermediates are B x 2H x block-q x
    block-k. A dimension that fits one block is not tiled.

    Arithmetic is in the accumulator type: f64 for f64 operands, else f32.

    Block sizes are options; 0 selects the default of `target`.

    Sketch:
    ```mlir
    scf.for %b ... scf.for %h ... scf.for %i0 = 0 to %Sq step BQ {
      %q0 = tensor.extract_slice %q[%b, %i0, 2h, 0] ...
      %q1 = tensor.extract_slice %q[%b, %i0, 2h+1, 0] ...
      %r:6 = scf.for %t0 = %lo to %hi step BK iter_args(m0, l0, acc0, m1, l1, acc1) {
        %kt = tensor.extract_slice %k[...]   // one K tile, both heads
        %vt = tensor.extract_slice %v[...]   // one V tile, both heads
        ... online softmax of head 0 and head 1; each head's P V row by
            row, its Dv accumulators in one vector (vector.transfer_read,
            an axpy per key, vector.transfer_write) ...
      }
      ... epilogue, tensor.insert_slice into out[%b, %i0, %h, 0]
    }
    ```
  }];
  let options = [
    Option<"target", "target", "std::string", /*default=*/"\"cpu\"",
           "Target whose default block sizes apply (cpu, sm_80, sm_90, "
           "sm_90a, sm_100a)">,
    Option<"blockQ", "block-q", "int64_t", /*default=*/"0",
           "Query rows per block (0: the target's default)">,
    Option<"blockK", "block-k", "int64_t", /*default=*/"0",
           "Keys per block (0: the target's default)">,
  ];
  let dependentDialects = [
    "::mlir::affine::AffineDialect", "::mlir::arith::ArithDialect",
    "::mlir::linalg::LinalgDialect", "::mlir::math::MathDialect",
    "::mlir::scf::SCFDialect", "::mlir::tensor::TensorDialect",
    "::mlir::vector::VectorDialect"
  ];
}

def DiffAttnOutlineKernels : Pass<"diffattn-outline-kernels", "ModuleOp"> {
  let summary = "Move each distinct diffattn op into its own kernel function";
  let description = [{
    Builds, for every distinct configuration of `diffattn.v2` /
    `diffattn.v1` in the module (op kind, head counts, head dimensions,
    element types, attributes), one private kernel function in
    destination-passing style (the target pipelines add the public entry
    points):

    ```mlir
    func.func private @diffattn_v2_<config>(%q: tensor<?x?x8x64xf16>, ...,
        %out: tensor<?x?x4x64xf16> {bufferization.writable = true})
        -> tensor<?x?x4x64xf16>
    ```

    Batch and sequence lengths become dynamic (run-time arguments of the
    kernel); everything the kernel is specialised on stays static. The
    kernel carries `diffattn.kernel` (its manifest entry as a dictionary).
    Every other function of the module is erased: the result is the module
    of kernels that the target pipelines compile.
  }];
  let dependentDialects = [
    "::mlir::bufferization::BufferizationDialect",
    "::mlir::func::FuncDialect", "::mlir::tensor::TensorDialect"
  ];
}

#endif // DIFFATTN_DIALECT_DIFFATTN_TRANSFORMS_PASSES_TD
