// RUN: diffattn-opt %s --split-input-file --diffattn-tile-flash="target=cpu block-q=16 block-k=64" | FileCheck %s
// RUN: diffattn-opt %s --split-input-file --diffattn-tile-flash="target=cpu" | FileCheck %s --check-prefix=DEFAULT

// diffattn.v2_backward tiled as FlashAttention-2's backward: a loop over
// blocks of 16 query rows carries dq, the dk and dv sums and dlam. Per row
// block, the keys [lo, hi) that some of its rows see (the causal loop stops
// at the last row's diagonal key) are walked twice in blocks of 64: first
// for r (the pair's second head's sum of P G), then recomputing each key
// block's P and G from K and V slices to accumulate the block's dq, and to
// add its dk and dv into the sums at keys t0 onwards. The rows' dq and dlam
// are written once, after their key loops.

// CHECK-LABEL: func.func @tiled
// CHECK-SAME:    %[[Q:[a-z0-9]+]]: tensor<1x20x8x16xf32>, %[[K:[a-z0-9]+]]: tensor<1x150x2x16xf32>, %[[LAM:[a-z0-9]+]]: tensor<1x20x4xf32>, %[[O:[a-z0-9]+]]: tensor<1x20x4x16xf32>, %[[LSE:[a-z0-9]+]]: tensor<1x8x20xf32>
// CHECK-DAG:   %[[C16:.*]] = arith.constant 16 : index
// CHECK-DAG:   %[[C20:.*]] = arith.constant 20 : index
// CHECK:       %[[GRADS:.*]]:4 = scf.for %[[I0:.*]] = %{{.*}} to %[[C20]] step %[[C16]] iter_args(%[[DQ:.*]] = %{{.*}}, %[[DK:.*]] = %{{.*}}, %[[DV:.*]] = %{{.*}}, %[[DLAM:.*]] = %{{.*}}) -> (tensor<1x20x8x16xf32>, tensor<1x150x2x16xf32>, tensor<1x150x2x16xf32>, tensor<1x20x4xf32>)
// CHECK:         %[[ROWS:.*]] = arith.minsi %[[C16]]
// CHECK:         %[[QB:.*]] = tensor.extract_slice %[[Q]][0, %[[I0]], 0, 0] [1, %[[ROWS]], 8, 16]
// CHECK:         tensor.extract_slice %[[LSE]][0, 0, %[[I0]]] [1, 8, %[[ROWS]]]
// CHECK:         %[[HI:.*]] = arith.minsi %{{.*}}, %{{.*}} : index
// CHECK:         %[[R:.*]] = scf.for %[[T0:.*]] = %[[LO:.*]] to %[[HI]] step %{{.*}} iter_args(%{{.*}} = %{{.*}}) -> (tensor<1x?x4xf32>)
// CHECK:           tensor.extract_slice %[[K]][0, %[[T0]], 0, 0]
// CHECK:           linalg.generic {{.*}} ins(%[[QB]], %{{.*}} :
// CHECK:             linalg.index 2
// CHECK-NEXT:        arith.addi %{{.*}}, %[[I0]] : index
// CHECK-NEXT:        linalg.index 3
// CHECK-NEXT:        arith.addi %{{.*}}, %[[T0]] : index
// CHECK:           scf.yield
// CHECK:         tensor.extract_slice %[[DQ]][0, %[[I0]], 0, 0]
// CHECK:         %[[SUMS:.*]]:3 = scf.for %[[T1:.*]] = %[[LO]] to %[[HI]] step %{{.*}} iter_args(%{{.*}} = %{{.*}}, %[[DKS:.*]] = %[[DK]], %[[DVS:.*]] = %[[DV]]) -> (tensor<1x?x8x16xf32>, tensor<1x150x2x16xf32>, tensor<1x150x2x16xf32>)
// CHECK:           tensor.extract_slice %[[DKS]][0, %[[T1]], 0, 0]
// CHECK:           tensor.insert_slice %{{.*}} into %[[DKS]][0, %[[T1]], 0, 0]
// CHECK:           tensor.extract_slice %[[DVS]][0, %[[T1]], 0, 0]
// CHECK:           tensor.insert_slice %{{.*}} into %[[DVS]][0, %[[T1]], 0, 0]
// CHECK:           scf.yield
// CHECK:         tensor.insert_slice %[[SUMS]]#0 into %[[DQ]][0, %[[I0]], 0, 0] [1, %[[ROWS]], 8, 16]
// CHECK:         linalg.generic {{.*}} ins(%[[R]], %{{.*}} :
// CHECK:         tensor.insert_slice %{{.*}} into %[[DLAM]][0, %[[I0]], 0] [1, %[[ROWS]], 4]
// CHECK:         scf.yield %{{.*}}, %[[SUMS]]#1, %[[SUMS]]#2, %{{.*}} :
// CHECK:       return %[[GRADS]]#0, %[[GRADS]]#1, %[[GRADS]]#2, %[[GRADS]]#3
// CHECK-NOT:   diffattn.v2_backward
// The CPU target's default blocks: 64 rows (so 20 rows are one block) x 64 keys.
// DEFAULT-LABEL: func.func @tiled
// DEFAULT-NOT:   scf.for {{.*}} -> (tensor<1x20x8x16xf32>,
// DEFAULT:       scf.for {{.*}} -> (tensor<1x20x4xf32>)
// DEFAULT:       scf.for {{.*}} -> (tensor<1x20x8x16xf32>, tensor<1x150x2x16xf32>, tensor<1x150x2x16xf32>)
func.func @tiled(%q: tensor<1x20x8x16xf32>, %k: tensor<1x150x2x16xf32>, %lam: tensor<1x20x4xf32>, %o: tensor<1x20x4x16xf32>, %lse: tensor<1x8x20xf32>) -> (tensor<1x20x8x16xf32>, tensor<1x150x2x16xf32>, tensor<1x150x2x16xf32>, tensor<1x20x4xf32>) {
  %dq, %dk, %dv, %dl = diffattn.v2_backward %q, %k, %k, %lam, %o, %o, %lse {causal} : (tensor<1x20x8x16xf32>, tensor<1x150x2x16xf32>, tensor<1x150x2x16xf32>, tensor<1x20x4xf32>, tensor<1x20x4x16xf32>, tensor<1x20x4x16xf32>, tensor<1x8x20xf32>) -> (tensor<1x20x8x16xf32>, tensor<1x150x2x16xf32>, tensor<1x150x2x16xf32>, tensor<1x20x4xf32>)
  return %dq, %dk, %dv, %dl : tensor<1x20x8x16xf32>, tensor<1x150x2x16xf32>, tensor<1x150x2x16xf32>, tensor<1x20x4xf32>
}

// -----

// A left window: the key loops of a row block start at the first key its
// first row sees, rounded down to a block boundary (key blocks wholly left
// of the window are skipped), and end after its last row's diagonal.
// CHECK-LABEL: func.func @window
// CHECK:       scf.for %[[I0:.*]] = %{{.*}} to %{{.*}} step %{{.*}} iter_args
// CHECK:         %[[FIRST:.*]] = arith.maxsi %{{.*}}, %{{.*}} : index
// CHECK:         %[[HI:.*]] = arith.minsi %{{.*}}, %{{.*}} : index
// CHECK:         %[[REM:.*]] = arith.remui %[[FIRST]], %{{.*}} : index
// CHECK:         %[[LO:.*]] = arith.subi %[[FIRST]], %[[REM]] : index
// CHECK:         scf.for %{{.*}} = %[[LO]] to %[[HI]] step
// CHECK:         scf.for %{{.*}} = %[[LO]] to %[[HI]] step
func.func @window(%q: tensor<1x200x4x16xf32>, %k: tensor<1x200x2x16xf32>, %lam: tensor<1x200x2xf32>, %o: tensor<1x200x2x16xf32>, %lse: tensor<1x4x200xf32>) -> tensor<1x200x4x16xf32> {
  %dq, %dk, %dv, %dl = diffattn.v2_backward %q, %k, %k, %lam, %o, %o, %lse {causal, window_left = 20} : (tensor<1x200x4x16xf32>, tensor<1x200x2x16xf32>, tensor<1x200x2x16xf32>, tensor<1x200x2xf32>, tensor<1x200x2x16xf32>, tensor<1x200x2x16xf32>, tensor<1x4x200xf32>) -> (tensor<1x200x4x16xf32>, tensor<1x200x2x16xf32>, tensor<1x200x2x16xf32>, tensor<1x200x2xf32>)
  return %dq : tensor<1x200x4x16xf32>
}

// -----

// With kv_len the bounds hold for every sequence of the batch: hi from the
// largest key length, lo from the smallest (both found once, before the
// row loop).
// CHECK-LABEL: func.func @kv_len
// CHECK-SAME:    %[[KVLEN:[a-z0-9]+]]: tensor<2xi32>
// CHECK:       %[[LENS:.*]]:2 = scf.for %[[B:.*]] = %{{.*}} to %{{.*}} step %{{.*}} iter_args(%{{.*}} = %{{.*}}, %{{.*}} = %{{.*}}) -> (index, index)
// CHECK:         tensor.extract %[[KVLEN]][%[[B]]]
// CHECK:         arith.minsi
// CHECK:         arith.maxsi
// CHECK:       scf.for
// CHECK-DAG:     arith.subi %[[LENS]]#1, %{{.*}} : index
// CHECK-DAG:     arith.subi %[[LENS]]#0, %{{.*}} : index
// CHECK:         scf.for
func.func @kv_len(%q: tensor<2x40x4x16xf32>, %k: tensor<2x300x2x16xf32>, %lam: tensor<2x40x2xf32>, %o: tensor<2x40x2x16xf32>, %lse: tensor<2x4x40xf32>, %len: tensor<2xi32>) -> tensor<2x40x4x16xf32> {
  %dq, %dk, %dv, %dl = diffattn.v2_backward %q, %k, %k, %lam, %o, %o, %lse kv_len(%len) {causal, window_left = 50} : (tensor<2x40x4x16xf32>, tensor<2x300x2x16xf32>, tensor<2x300x2x16xf32>, tensor<2x40x2xf32>, tensor<2x40x2x16xf32>, tensor<2x40x2x16xf32>, tensor<2x4x40xf32>, tensor<2xi32>) -> (tensor<2x40x4x16xf32>, tensor<2x300x2x16xf32>, tensor<2x300x2x16xf32>, tensor<2x40x2xf32>)
  return %dq : tensor<2x40x4x16xf32>
}

// -----

// Keys that fit one block, rows that do not: a row loop without key loops,
// whose one key block's P and G serve both passes (one score contraction per
// row block).
// CHECK-LABEL: func.func @rows_only
// CHECK:       scf.for %{{.*}} -> (tensor<1x40x4x8xbf16>, tensor<1x30x2x8xf32>, tensor<1x30x2x8xf32>, tensor<1x40x2xbf16>)
// CHECK-NOT:     scf.for
// CHECK:         %[[QB:.*]] = tensor.extract_slice %arg0
// CHECK-NOT:     scf.for
// CHECK:         linalg.generic {{.*}} ins(%[[QB]], %arg1 :
// CHECK-NOT:     ins(%[[QB]], %arg1 :
// CHECK:         scf.yield
func.func @rows_only(%q: tensor<1x40x4x8xbf16>, %k: tensor<1x30x2x8xbf16>, %lam: tensor<1x40x2xbf16>, %o: tensor<1x40x2x8xbf16>, %lse: tensor<1x4x40xf32>) -> tensor<1x40x4x8xbf16> {
  %dq, %dk, %dv, %dl = diffattn.v2_backward %q, %k, %k, %lam, %o, %o, %lse : (tensor<1x40x4x8xbf16>, tensor<1x30x2x8xbf16>, tensor<1x30x2x8xbf16>, tensor<1x40x2xbf16>, tensor<1x40x2x8xbf16>, tensor<1x40x2x8xbf16>, tensor<1x4x40xf32>) -> (tensor<1x40x4x8xbf16>, tensor<1x30x2x8xbf16>, tensor<1x30x2x8xbf16>, tensor<1x40x2xbf16>)
  return %dq : tensor<1x40x4x8xbf16>
}

// -----

// Rows and keys that fit one block each: the untiled form, no loop over
// blocks (those carry several gradients); the only loops are the gradients'
// row loops, each carrying one tensor or one vector of accumulators.
// CHECK-LABEL: func.func @one_block
// CHECK-NOT:   scf.for {{.*}} -> ({{[^)]*}},
// CHECK:       scf.for {{.*}} -> (vector<8xf32>)
// CHECK-NOT:   scf.for {{.*}} -> ({{[^)]*}},
// CHECK:       return
func.func @one_block(%q: tensor<1x5x4x8xbf16>, %k: tensor<1x60x2x8xbf16>, %lam: tensor<1x5x2xbf16>, %o: tensor<1x5x2x8xbf16>, %lse: tensor<1x4x5xf32>) -> tensor<1x5x4x8xbf16> {
  %dq, %dk, %dv, %dl = diffattn.v2_backward %q, %k, %k, %lam, %o, %o, %lse : (tensor<1x5x4x8xbf16>, tensor<1x60x2x8xbf16>, tensor<1x60x2x8xbf16>, tensor<1x5x2xbf16>, tensor<1x5x2x8xbf16>, tensor<1x5x2x8xbf16>, tensor<1x4x5xf32>) -> (tensor<1x5x4x8xbf16>, tensor<1x60x2x8xbf16>, tensor<1x60x2x8xbf16>, tensor<1x5x2xbf16>)
  return %dq : tensor<1x5x4x8xbf16>
}
