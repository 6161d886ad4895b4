// RUN: diffattn-opt %s --split-input-file --diffattn-decompose | FileCheck %s

// V2 as untiled linalg: scores over (b, j, i, t, d) reading KV head j / G,
// scale + mask, row max, exp, row sum, P·V, and the pair epilogue reading
// query heads 2h and 2h + 1.

// CHECK-DAG: #[[Q:.*]] = affine_map<(d0, d1, d2, d3, d4) -> (d0, d2, d1, d4)>
// CHECK-DAG: #[[K:.*]] = affine_map<(d0, d1, d2, d3, d4) -> (d0, d3, d1 floordiv 4, d4)>
// CHECK-DAG: #[[V:.*]] = affine_map<(d0, d1, d2, d3, d4) -> (d0, d4, d2 floordiv 4, d3)>
// CHECK-DAG: #[[EVEN:.*]] = affine_map<(d0, d1, d2, d3) -> (d0, d1, d2 * 2, d3)>
// CHECK-DAG: #[[ODD:.*]] = affine_map<(d0, d1, d2, d3) -> (d0, d1, d2 * 2 + 1, d3)>
// CHECK-LABEL: func.func @v2
// CHECK:       %[[S:.*]] = linalg.generic {indexing_maps = [#[[Q]], #[[K]], {{.*}}], iterator_types = ["parallel", "parallel", "parallel", "parallel", "reduction"]} ins(%arg0, %arg1 : {{.*}}) outs({{.*}} : tensor<2x8x48x64xf32>)
// CHECK:         arith.mulf {{.*}} fastmath<reassoc,contract>
// CHECK:       %[[M:.*]] = linalg.generic {{.*}} ins(%[[S]] :
// CHECK:         linalg.index 2
// CHECK:         linalg.index 3
// CHECK:         arith.cmpi sle
// CHECK:         arith.select
// CHECK:       %[[MAX:.*]] = linalg.generic {{.*}}iterator_types = ["parallel", "parallel", "parallel", "reduction"]} ins(%[[M]] :
// CHECK:         arith.maxnumf
// CHECK:       %[[P:.*]] = linalg.generic {{.*}} ins(%[[M]], %[[MAX]] :
// CHECK:         math.exp
// CHECK:       %[[L:.*]] = linalg.generic {{.*}} ins(%[[P]] :
// CHECK:         arith.addf
// CHECK:       %[[A:.*]] = linalg.generic {indexing_maps = [#[[Q]], #[[V]], {{.*}}]{{.*}} ins(%[[P]], %arg2 :
// CHECK:       linalg.generic {indexing_maps = [#[[EVEN]], #[[ODD]], {{.*}}]{{.*}} ins(%[[A]], %[[A]], %[[L]], %[[L]], %arg3 :
// CHECK:         math.exp
// CHECK:         arith.subf
// CHECK-NOT:   diffattn.v2
func.func @v2(%q: tensor<2x48x8x32xf32>, %k: tensor<2x64x2x32xf32>,
              %v: tensor<2x64x2x16xf32>, %lam: tensor<2x48x4xf32>)
    -> tensor<2x48x4x16xf32> {
  %o = diffattn.v2 %q, %k, %v, %lam {causal}
      : (tensor<2x48x8x32xf32>, tensor<2x64x2x32xf32>, tensor<2x64x2x16xf32>, tensor<2x48x4xf32>)
      -> tensor<2x48x4x16xf32>
  return %o : tensor<2x48x4x16xf32>
}

// -----

// Decode: kv_len enters the mask as an input indexed by batch; an unmasked
// op without kv_len has no comparison but the key bound.
// CHECK-DAG: #[[BATCH:.*]] = affine_map<(d0, d1, d2, d3) -> (d0)>
// CHECK-LABEL: func.func @v2_decode
// CHECK:       linalg.generic {indexing_maps = [{{.*}}, #[[BATCH]], {{.*}}]{{.*}} ins(%{{.*}}, %arg4 : tensor<?x4x?x?xf32>, tensor<?xi32>)
// CHECK:         arith.index_cast
// CHECK:         arith.maxsi
// CHECK:         arith.minsi
// CHECK-NOT:     arith.cmpi sle
// CHECK:         arith.select
// CHECK:       linalg.yield
func.func @v2_decode(%q: tensor<?x?x4x16xf16>, %k: tensor<?x?x2x16xf16>,
                     %v: tensor<?x?x2x16xf16>, %lam: tensor<?x?x2xf16>,
                     %len: tensor<?xi32>) -> tensor<?x?x2x16xf16> {
  %o = diffattn.v2 %q, %k, %v, %lam kv_len(%len)
      : (tensor<?x?x4x16xf16>, tensor<?x?x2x16xf16>, tensor<?x?x2x16xf16>, tensor<?x?x2xf16>, tensor<?xi32>)
      -> tensor<?x?x2x16xf16>
  return %o : tensor<?x?x2x16xf16>
}

// -----

// V1: query head j reads key head 2 * ((j / 2) / R) + j mod 2 (R = H / Hkv
// = 2) and value head j / 4; the epilogue squares, sums and rsqrt-scales.
// CHECK-DAG: #[[K1:.*]] = affine_map<(d0, d1, d2, d3, d4) -> (d0, d3, (d1 floordiv 4) * 2 + d1 mod 2, d4)>
// CHECK-DAG: #[[V1:.*]] = affine_map<(d0, d1, d2, d3, d4) -> (d0, d4, d2 floordiv 4, d3)>
// CHECK-DAG: #[[SCALAR:.*]] = affine_map<(d0, d1, d2, d3) -> ()>
// CHECK-LABEL: func.func @v1
// CHECK:       linalg.generic {indexing_maps = [#{{.*}}, #[[K1]], #{{.*}}]
// CHECK:       linalg.generic {indexing_maps = [#{{.*}}, #[[V1]], #{{.*}}]
// CHECK:       linalg.generic {{.*}} #[[SCALAR]]{{.*}} ins({{.*}}, %arg3 : {{.*}}, tensor<f32>)
// CHECK:       linalg.generic {{.*}}iterator_types = ["parallel", "parallel", "parallel", "reduction"]
// CHECK:         arith.mulf
// CHECK:       linalg.generic {{.*}} ins({{.*}}, {{.*}}, %arg4 :
// CHECK:         math.rsqrt
// CHECK:         arith.truncf {{.*}} : f32 to bf16
func.func @v1(%q: tensor<1x16x8x8xbf16>, %k: tensor<1x16x4x8xbf16>,
              %v: tensor<1x16x2x16xbf16>, %lam: tensor<f32>, %w: tensor<16xf32>)
    -> tensor<1x16x4x16xbf16> {
  %o = diffattn.v1 %q, %k, %v, %lam, %w {lambda_init = 0.5 : f32}
      : (tensor<1x16x8x8xbf16>, tensor<1x16x4x8xbf16>, tensor<1x16x2x16xbf16>, tensor<f32>, tensor<16xf32>)
      -> tensor<1x16x4x16xbf16>
  return %o : tensor<1x16x4x16xbf16>
}

// -----

// f64 operands compute in f64: scores, row max and sum, P·V, the epilogue
// and the log-sum-exp have no f32 anywhere, and the default scale is
// 1/sqrt(8) in double (f32 would be 0.353553385).
// CHECK-LABEL: func.func @v2_f64
// CHECK-NOT:     f32
// CHECK:         arith.constant {{0.35355339059327|3.5355339059327[0-9]*E-1}}{{[0-9]*}} : f64
// CHECK-NOT:     f32
// CHECK:         return %{{.*}}, %{{.*}} : tensor<1x5x2x8xf64>, tensor<1x4x5xf64>
func.func @v2_f64(%q: tensor<1x5x4x8xf64>, %k: tensor<1x7x2x8xf64>, %lam: tensor<1x5x2xf64>) -> (tensor<1x5x2x8xf64>, tensor<1x4x5xf64>) {
  %o, %l = diffattn.v2 %q, %k, %k, %lam {causal} : (tensor<1x5x4x8xf64>, tensor<1x7x2x8xf64>, tensor<1x7x2x8xf64>, tensor<1x5x2xf64>) -> (tensor<1x5x2x8xf64>, tensor<1x4x5xf64>)
  return %o, %l : tensor<1x5x2x8xf64>, tensor<1x4x5xf64>
}
