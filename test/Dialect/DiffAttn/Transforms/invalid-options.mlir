// RUN: not diffattn-opt %s --split-input-file --diffattn-tile-flash="target=sm_75" 2>&1 | FileCheck %s --check-prefix=TARGET
// RUN: not diffattn-opt %s --split-input-file --diffattn-tile-flash="block-k=-1" 2>&1 | FileCheck %s --check-prefix=BLOCK
// RUN: not diffattn-opt %s --split-input-file --diffattn-outline-kernels 2>&1 | FileCheck %s --check-prefix=NOOPS

// TARGET: error: diffattn-tile-flash: unknown target 'sm_75' (expected cpu, sm_80, sm_90, sm_90a or sm_100a)
// BLOCK: error: 'diffattn.v2' op block sizes must be positive, got block-q = 64, block-k = -1
// NOOPS: error: no diffattn.v2 or diffattn.v1 op to compile
func.func @f(%q: tensor<1x8x4x16xf32>, %k: tensor<1x8x2x16xf32>, %lam: tensor<1x8x2xf32>) -> tensor<1x8x2x16xf32> {
  %o = diffattn.v2 %q, %k, %k, %lam : (tensor<1x8x4x16xf32>, tensor<1x8x2x16xf32>, tensor<1x8x2x16xf32>, tensor<1x8x2xf32>) -> tensor<1x8x2x16xf32>
  return %o : tensor<1x8x2x16xf32>
}

// -----

// A module without diffattn ops has no kernel to outline.
func.func @g(%x: tensor<4xf32>) -> tensor<4xf32> {
  return %x : tensor<4xf32>
}
