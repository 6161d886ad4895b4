// RUN: diffattn-opt %s --split-input-file --diffattn-tile-flash="target=cpu block-k=64" | FileCheck %s

// diffattn.v2_backward tiled over key blocks (FlashAttention-2's backward
// over keys): a first loop over the blocks of 64 keys accumulates r (the
// pair's second head's sum of P G), a second one recomputes each block's P
// and G from K and V slices, accumulates dq, and writes the block's dk and
// dv (complete after it) into rows t0 onwards of the gradients.

// CHECK-LABEL: func.func @tiled
// CHECK-SAME:    %[[Q:[a-z0-9]+]]: tensor<1x20x8x16xf32>, %[[K:[a-z0-9]+]]: tensor<1x150x2x16xf32>
// CHECK-DAG:   %[[C64:.*]] = arith.constant 64 : index
// CHECK-DAG:   %[[C150:.*]] = arith.constant 150 : index
// CHECK:       %[[R:.*]] = scf.for %[[T0:.*]] = %{{.*}} to %[[C150]] step %[[C64]] iter_args(%{{.*}} = %{{.*}}) -> (tensor<1x20x4xf32>)
// CHECK:         %[[N:.*]] = arith.minsi
// CHECK:         tensor.extract_slice %[[K]][0, %[[T0]], 0, 0] [1, %[[N]], 2, 16] [1, 1, 1, 1]
// CHECK:         linalg.index 3
// CHECK-NEXT:    arith.addi %{{.*}}, %[[T0]] : index
// CHECK:         scf.yield
// CHECK:       %[[GRADS:.*]]:3 = scf.for %[[T1:.*]] = %{{.*}} to %{{.*}} step %{{.*}} iter_args(%[[DQ:.*]] = %{{.*}}, %[[DK:.*]] = %{{.*}}, %[[DV:.*]] = %{{.*}}) -> (tensor<1x20x8x16xf32>, tensor<1x150x2x16xf32>, tensor<1x150x2x16xf32>)
// CHECK:         tensor.extract_slice %[[DK]][0, %[[T1]], 0, 0]
// CHECK:         tensor.insert_slice %{{.*}} into %[[DK]][0, %[[T1]], 0, 0]
// CHECK:         tensor.extract_slice %[[DV]][0, %[[T1]], 0, 0]
// CHECK:         tensor.insert_slice %{{.*}} into %[[DV]][0, %[[T1]], 0, 0]
// CHECK:         scf.yield
// CHECK:       linalg.generic {{.*}} ins(%[[GRADS]]#0 :
// CHECK:       linalg.generic {{.*}} ins(%[[R]], %{{.*}} :
// CHECK-NOT:   diffattn.v2_backward
func.func @tiled(%q: tensor<1x20x8x16xf32>, %k: tensor<1x150x2x16xf32>, %lam: tensor<1x20x4xf32>, %o: tensor<1x20x4x16xf32>, %lse: tensor<1x8x20xf32>) -> (tensor<1x20x8x16xf32>, tensor<1x150x2x16xf32>, tensor<1x150x2x16xf32>, tensor<1x20x4xf32>) {
  %dq, %dk, %dv, %dl = diffattn.v2_backward %q, %k, %k, %lam, %o, %o, %lse {causal} : (tensor<1x20x8x16xf32>, tensor<1x150x2x16xf32>, tensor<1x150x2x16xf32>, tensor<1x20x4xf32>, tensor<1x20x4x16xf32>, tensor<1x20x4x16xf32>, tensor<1x8x20xf32>) -> (tensor<1x20x8x16xf32>, tensor<1x150x2x16xf32>, tensor<1x150x2x16xf32>, tensor<1x20x4xf32>)
  return %dq, %dk, %dv, %dl : tensor<1x20x8x16xf32>, tensor<1x150x2x16xf32>, tensor<1x150x2x16xf32>, tensor<1x20x4xf32>
}

// -----

// Keys that fit one block: the untiled form, no loop.
// CHECK-LABEL: func.func @one_block
// CHECK-NOT:   scf.for
// CHECK:       return
func.func @one_block(%q: tensor<1x5x4x8xbf16>, %k: tensor<1x60x2x8xbf16>, %lam: tensor<1x5x2xbf16>, %o: tensor<1x5x2x8xbf16>, %lse: tensor<1x4x5xf32>) -> tensor<1x5x4x8xbf16> {
  %dq, %dk, %dv, %dl = diffattn.v2_backward %q, %k, %k, %lam, %o, %o, %lse : (tensor<1x5x4x8xbf16>, tensor<1x60x2x8xbf16>, tensor<1x60x2x8xbf16>, tensor<1x5x2xbf16>, tensor<1x5x2x8xbf16>, tensor<1x5x2x8xbf16>, tensor<1x4x5xf32>) -> (tensor<1x5x4x8xbf16>, tensor<1x60x2x8xbf16>, tensor<1x60x2x8xbf16>, tensor<1x5x2xbf16>)
  return %dq : tensor<1x5x4x8xbf16>
}
