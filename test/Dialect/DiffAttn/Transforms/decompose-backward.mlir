// RUN: diffattn-opt %s --split-input-file --diffattn-decompose | FileCheck %s

// diffattn.v2_backward as untiled linalg (one block of all keys):
// rowsum(dout * out), the masked scores, P from lse (0 where masked),
// G = dout V^T (0 at keys past kv_len), r = sum_t P_{2h+1} G_{2h+1}, D_j
// per query head, scale * dS (the scale of dq and dk, applied once per
// element) and w_j P, then dq (keys past kv_len never read; accumulated in
// its f32 destination, no copy after), dk and dv summed over the KV group
// through expand_shape (j = g * G + jj), and dlam. The three gradient
// contractions are loops over the gradient's rows, each row one vector of D
// accumulators across the reductions (an axpy per step on a contiguous row;
// as linalg.generics LLVM fully unrolled D = 32 and left it scalar or
// gathered).

// CHECK-DAG: #[[ODD:.*]] = affine_map<(d0, d1, d2, d3) -> (d0, d2 * 2 + 1, d1, d3)>
// CHECK-DAG: #[[PAIR:.*]] = affine_map<(d0, d1, d2) -> (d0, d2, d1 floordiv 2)>
// CHECK-LABEL: func.func @backward
// CHECK-SAME:    %[[Q:[a-z0-9]+]]: tensor<2x7x8x16xf32>, %[[K:[a-z0-9]+]]: tensor<2x9x2x16xf32>, %[[V:[a-z0-9]+]]: tensor<2x9x2x16xf32>, %[[LAM:[a-z0-9]+]]: tensor<2x7x4xf32>, %[[O:[a-z0-9]+]]: tensor<2x7x4x16xf32>, %[[DO:[a-z0-9]+]]: tensor<2x7x4x16xf32>, %[[LSE:[a-z0-9]+]]: tensor<2x8x7xf32>, %[[KVLEN:[a-z0-9]+]]: tensor<2xi32>
// CHECK-NOT:   scf.for
// CHECK:       %[[OD:.*]] = linalg.generic {{.*}} ins(%[[DO]], %[[O]] :
// CHECK:       %[[S:.*]] = linalg.generic {{.*}} ins(%[[Q]], %[[K]] :
// CHECK:       %[[M:.*]] = linalg.generic {{.*}} ins(%[[S]], %[[KVLEN]] :
// CHECK:         arith.cmpi sle
// CHECK:       %[[P:.*]] = linalg.generic {{.*}} ins(%[[M]], %[[LSE]] :
// CHECK:         arith.cmpf oeq
// CHECK:         math.exp
// CHECK:         arith.select
// CHECK:       %[[G:.*]] = linalg.generic {{.*}} ins(%[[DO]], %[[V]], %[[KVLEN]] :
// CHECK:         arith.cmpi ult
// CHECK:       %[[R:.*]] = linalg.generic {indexing_maps = [#[[ODD]], #[[ODD]], {{.*}}]{{.*}} ins(%[[P]], %[[G]] :
// CHECK:       %[[D:.*]] = linalg.generic {indexing_maps = [#[[PAIR]], #[[PAIR]], #[[PAIR]], {{.*}}]{{.*}} ins(%[[R]], %[[OD]], %[[LAM]] :
// CHECK:       %[[DS:.*]]:2 = linalg.generic {{.*}} ins(%[[P]], %[[G]], %[[D]], %[[LAM]], %[[M]] :
// CHECK:         %[[SCALE:.*]] = arith.constant 2.500000e-01 : f32
// CHECK-NEXT:    arith.mulf %{{.*}}, %[[SCALE]] : f32
// The gradients: each output row (dq[b, i, j], dk[b, t, g], dv[b, t, g])
// one vector of D accumulators across the reduction loops, an axpy per step
// on a contiguous row of k, q or dout (buildRowContraction).
// CHECK:       %[[DQSUM:.*]] = scf.for %[[B0:[a-z0-9]+]] = {{.*}} -> (tensor<2x7x8x16xf32>)
// CHECK:         scf.for %[[I0:[a-z0-9]+]] =
// CHECK:           scf.for %[[J0:[a-z0-9]+]] =
// CHECK:             vector.transfer_read %{{.*}}[%[[B0]], %[[I0]], %[[J0]], %{{.*}}], {{.*}} : tensor<2x7x8x16xf32>, vector<16xf32>
// CHECK:             scf.for %[[T0:[a-z0-9]+]] = {{.*}} -> (vector<16xf32>)
// CHECK:               tensor.extract %[[DS]]#0[%[[B0]], %[[J0]], %[[I0]], %[[T0]]]
// CHECK:               vector.transfer_read %[[K]][%[[B0]], %[[T0]], %{{.*}}, %{{.*}}], {{.*}} : tensor<2x9x2x16xf32>, vector<16xf32>
// CHECK:               tensor.extract %[[KVLEN]][%[[B0]]]
// CHECK:               arith.cmpi ult, %[[T0]],
// CHECK:               arith.select {{.*}} : vector<16xf32>
// CHECK:             vector.transfer_write
// CHECK-NOT:   ins(%[[DQSUM]]
// CHECK:       %[[DSG:.*]] = tensor.expand_shape %[[DS]]#0 {{\[}}[0], [1, 2], [3], [4]] output_shape [2, 2, 4, 7, 9]
// CHECK:       %[[QG:.*]] = tensor.expand_shape %[[Q]] {{\[}}[0], [1], [2, 3], [4]] output_shape [2, 7, 2, 4, 16]
// CHECK:       scf.for %[[B1:[a-z0-9]+]] = {{.*}} -> (tensor<2x9x2x16xf32>)
// CHECK:         scf.for %[[G1:[a-z0-9]+]] =
// CHECK:           scf.for %[[T1:[a-z0-9]+]] =
// CHECK:             vector.transfer_read %{{.*}}[%[[B1]], %[[T1]], %[[G1]], %{{.*}}]
// CHECK:             scf.for %[[JJ1:[a-z0-9]+]] = {{.*}} -> (vector<16xf32>)
// CHECK:               scf.for %[[I1:[a-z0-9]+]] = {{.*}} -> (vector<16xf32>)
// CHECK:                 tensor.extract %[[DSG]][%[[B1]], %[[G1]], %[[JJ1]], %[[I1]], %[[T1]]]
// CHECK:                 vector.transfer_read %[[QG]][%[[B1]], %[[I1]], %[[G1]], %[[JJ1]], %{{.*}}]
// CHECK:       tensor.expand_shape %[[DS]]#1 {{\[}}[0], [1, 2, 3], [4], [5]] output_shape [2, 2, 2, 2, 7, 9]
// CHECK:       %[[DOG:.*]] = tensor.expand_shape %[[DO]] {{\[}}[0], [1], [2, 3], [4]] output_shape [2, 7, 2, 2, 16]
// CHECK:                   vector.transfer_read %[[DOG]]
// CHECK:       linalg.generic {{.*}} ins(%[[R]], %[[LAM]] :
// CHECK-NOT:   diffattn.v2_backward
func.func @backward(%q: tensor<2x7x8x16xf32>, %k: tensor<2x9x2x16xf32>, %v: tensor<2x9x2x16xf32>, %lam: tensor<2x7x4xf32>, %o: tensor<2x7x4x16xf32>, %do: tensor<2x7x4x16xf32>, %lse: tensor<2x8x7xf32>, %kvlen: tensor<2xi32>) -> (tensor<2x7x8x16xf32>, tensor<2x9x2x16xf32>, tensor<2x9x2x16xf32>, tensor<2x7x4xf32>) {
  %dq, %dk, %dv, %dl = diffattn.v2_backward %q, %k, %v, %lam, %o, %do, %lse kv_len(%kvlen) {causal} : (tensor<2x7x8x16xf32>, tensor<2x9x2x16xf32>, tensor<2x9x2x16xf32>, tensor<2x7x4xf32>, tensor<2x7x4x16xf32>, tensor<2x7x4x16xf32>, tensor<2x8x7xf32>, tensor<2xi32>) -> (tensor<2x7x8x16xf32>, tensor<2x9x2x16xf32>, tensor<2x9x2x16xf32>, tensor<2x7x4xf32>)
  return %dq, %dk, %dv, %dl : tensor<2x7x8x16xf32>, tensor<2x9x2x16xf32>, tensor<2x9x2x16xf32>, tensor<2x7x4xf32>
}

// -----

// bf16 gradients are converted from the f32 sums (dv too); lam in f32 keeps
// dlam in f32.
// CHECK-LABEL: func.func @backward_bf16
// CHECK-COUNT-3: arith.truncf %{{.*}} : f32 to bf16
// CHECK-NOT:   arith.truncf
// CHECK:       return
func.func @backward_bf16(%q: tensor<1x5x4x8xbf16>, %k: tensor<1x6x2x8xbf16>, %lam: tensor<1x5x2xf32>, %o: tensor<1x5x2x8xbf16>, %do: tensor<1x5x2x8xbf16>, %lse: tensor<1x4x5xf32>) -> (tensor<1x5x4x8xbf16>, tensor<1x6x2x8xbf16>, tensor<1x6x2x8xbf16>, tensor<1x5x2xf32>) {
  %dq, %dk, %dv, %dl = diffattn.v2_backward %q, %k, %k, %lam, %o, %do, %lse : (tensor<1x5x4x8xbf16>, tensor<1x6x2x8xbf16>, tensor<1x6x2x8xbf16>, tensor<1x5x2xf32>, tensor<1x5x2x8xbf16>, tensor<1x5x2x8xbf16>, tensor<1x4x5xf32>) -> (tensor<1x5x4x8xbf16>, tensor<1x6x2x8xbf16>, tensor<1x6x2x8xbf16>, tensor<1x5x2xf32>)
  return %dq, %dk, %dv, %dl : tensor<1x5x4x8xbf16>, tensor<1x6x2x8xbf16>, tensor<1x6x2x8xbf16>, tensor<1x5x2xf32>
}

// -----

// f64 operands: every intermediate of the backward is f64 (no f32 in the
// function), the scale of dq and dk is 1/sqrt(8) in double.
// CHECK-LABEL: func.func @backward_f64
// CHECK-NOT:     f32
// CHECK:         arith.constant {{0.35355339059327|3.5355339059327[0-9]*E-1}}{{[0-9]*}} : f64
// CHECK-NOT:     f32
// CHECK:         return
func.func @backward_f64(%q: tensor<1x5x4x8xf64>, %k: tensor<1x7x2x8xf64>, %lam: tensor<1x5x2xf64>, %o: tensor<1x5x2x8xf64>, %lse: tensor<1x4x5xf64>) -> (tensor<1x5x4x8xf64>, tensor<1x7x2x8xf64>, tensor<1x7x2x8xf64>, tensor<1x5x2xf64>) {
  %dq, %dk, %dv, %dl = diffattn.v2_backward %q, %k, %k, %lam, %o, %o, %lse {causal} : (tensor<1x5x4x8xf64>, tensor<1x7x2x8xf64>, tensor<1x7x2x8xf64>, tensor<1x5x2xf64>, tensor<1x5x2x8xf64>, tensor<1x5x2x8xf64>, tensor<1x4x5xf64>) -> (tensor<1x5x4x8xf64>, tensor<1x7x2x8xf64>, tensor<1x7x2x8xf64>, tensor<1x5x2xf64>)
  return %dq, %dk, %dv, %dl : tensor<1x5x4x8xf64>, tensor<1x7x2x8xf64>, tensor<1x7x2x8xf64>, tensor<1x5x2xf64>
}
