//===- Passes.td - TOSA front-end passes -------------------*- tablegen -*-===//
//
// Passes that prepare TOSA graphs, as torch-mlir exports them, for MLIR's
// upstream TOSA-to-linalg pipeline and for diffattn-fuse.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_FRONTEND_TOSA_PASSES_TD
#define DIFFATTN_FRONTEND_TOSA_PASSES_TD

include "mlir/Pass/PassBase.td"

def DiffAttnTosaNarrowF64Compares
    : Pass<"diffattn-tosa-narrow-f64-compares", "func::FuncOp"> {
  let summary = "Compare in the operands' own float type where torch-mlir "
                "widened them to f64";
  let description = [{
    torch's SDPA decomposition guards its softmax with
    `where(all(scores == -inf, -1), 0, p)` and compares in f64; torch-mlir's
    TOSA export writes that as `tosa.cast` of the f32 (or bf16/f16) scores to
    f64 and a `tosa.equal` with an f64 constant. MLIR 22's `tosa-validate`,
    the first step of `--tosa-to-linalg-pipeline`, rejects every f64 value,
    so the graph cannot be lowered at all.

    A comparison (`tosa.equal`, `tosa.greater`, `tosa.greater_equal`) whose
    f64 operands are each a `tosa.cast` from one narrower float type T or a
    constant whose every element T represents exactly is rewritten to
    compare in T: the extension to f64 is exact and order-preserving, so the
    result is the same bit for bit. The casts and constants that die are
    erased. Comparisons whose constants T cannot represent are left alone
    (validation still reports them).

    Before:
    ```mlir
    %w = tosa.cast %s : (tensor<2x4x8x8xf32>) -> tensor<2x4x8x8xf64>
    %c = "tosa.const"() <{values = dense<0xFFF0000000000000> : tensor<1x1x1x1xf64>}> : () -> tensor<1x1x1x1xf64>
    %e = tosa.equal %w, %c : (tensor<2x4x8x8xf64>, tensor<1x1x1x1xf64>) -> tensor<2x4x8x8xi1>
    ```
    After:
    ```mlir
    %c = "tosa.const"() <{values = dense<0xFF800000> : tensor<1x1x1x1xf32>}> : () -> tensor<1x1x1x1xf32>
    %e = tosa.equal %s, %c : (tensor<2x4x8x8xf32>, tensor<1x1x1x1xf32>) -> tensor<2x4x8x8xi1>
    ```
  }];
  let dependentDialects = ["::mlir::tosa::TosaDialect"];
}

#endif // DIFFATTN_FRONTEND_TOSA_PASSES_TD
