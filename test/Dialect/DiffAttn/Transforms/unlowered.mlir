// RUN: diffattn-opt %s --split-input-file --verify-diagnostics --diffattn-tile-flash
// Ops the contract defines but the tiling does not compute yet (the backward
// pass: decompose.mlir lowers it) are diagnosed, never dropped or half-lowered.

func.func @backward(%q: tensor<2x16x8x32xf32>, %k: tensor<2x24x2x32xf32>, %lam: tensor<2x16x4xf32>, %o: tensor<2x16x4x32xf32>, %do: tensor<2x16x4x32xf32>, %lse: tensor<2x8x16xf32>) -> tensor<2x16x8x32xf32> {
  // expected-error @+1 {{'diffattn.v2_backward' op has no lowering in diffattn-tile-flash yet: only --diffattn-decompose lowers the backward pass}}
  %dq, %dk, %dv, %dl = diffattn.v2_backward %q, %k, %k, %lam, %o, %do, %lse : (tensor<2x16x8x32xf32>, tensor<2x24x2x32xf32>, tensor<2x24x2x32xf32>, tensor<2x16x4xf32>, tensor<2x16x4x32xf32>, tensor<2x16x4x32xf32>, tensor<2x8x16xf32>) -> (tensor<2x16x8x32xf32>, tensor<2x24x2x32xf32>, tensor<2x24x2x32xf32>, tensor<2x16x4xf32>)
  return %dq : tensor<2x16x8x32xf32>
}
