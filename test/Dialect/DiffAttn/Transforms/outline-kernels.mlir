// RUN: diffattn-opt %s --diffattn-outline-kernels | FileCheck %s

// One private kernel per distinct configuration, in destination-passing
// style, with B/Sq/Sk dynamic; equal ops share a kernel; the rest of the
// module is dropped.

// CHECK-NOT:   func.func @model
// CHECK-LABEL: func.func private @diffattn_v2_f16_h8_kv2_d64_dv64_causal(
// CHECK-SAME:    %{{.*}}: tensor<?x?x8x64xf16>, %{{.*}}: tensor<?x?x2x64xf16>, %{{.*}}: tensor<?x?x2x64xf16>, %{{.*}}: tensor<?x?x4xf16>,
// CHECK-SAME:    %[[OUT:.*]]: tensor<?x?x4x64xf16> {bufferization.writable = true}) -> tensor<?x?x4x64xf16>
// CHECK-SAME:    diffattn.kernel = {args = [{dtype = "f16", name = "q", role = "input", shape = ["B", "Sq", 8, 64]}
// CHECK-SAME:    {dtype = "i64", name = "Sk", role = "size"}]
// CHECK-SAME:    kind = "v2", name = "diffattn_v2_f16_h8_kv2_d64_dv64_causal"
// CHECK-SAME:    params = {causal = true, element_type = "f16", group_size = 4 : i64, head_dim = 64 : i64, kv_heads = 2 : i64, kv_len = false, pairs = 4 : i64, query_heads = 8 : i64, scale = 1.250000e-01 : f32, value_dim = 64 : i64, window_left = -1 : i64, window_right = -1 : i64}
// CHECK:         %[[R:.*]] = diffattn.v2 {{.*}} {causal} : ({{.*}}) -> tensor<?x?x4x64xf16>
// CHECK:         %[[M:.*]] = bufferization.materialize_in_destination %[[R]] in %[[OUT]]
// CHECK:         return %[[M]]
// CHECK-LABEL: func.func private @diffattn_v2_f16_h8_kv2_d64_dv64_lamf32_kvlen_s3e800000(
// CHECK-SAME:    tensor<?xi32>
// CHECK-LABEL: func.func private @diffattn_v1_f32_h4_kv1_d16_dv32_li3e4ccccd_eps3727c5ac(
// CHECK-SAME:    tensor<f32>, %{{.*}}: tensor<32xf32>
// CHECK-NOT:   func.func
func.func @model(%q: tensor<2x128x8x64xf16>, %k: tensor<2x128x2x64xf16>,
                 %v: tensor<2x128x2x64xf16>, %lam: tensor<2x128x4xf16>,
                 %q2: tensor<1x7x8x64xf16>, %k2: tensor<1x9x2x64xf16>,
                 %lam2: tensor<1x7x4xf16>, %lam3: tensor<1x7x4xf32>, %len: tensor<1xi32>,
                 %q4: tensor<1x5x4x16xf32>, %k4: tensor<1x5x2x16xf32>, %v4: tensor<1x5x1x32xf32>,
                 %l4: tensor<f32>, %w4: tensor<32xf32>) {
  %a = diffattn.v2 %q, %k, %v, %lam {causal}
      : (tensor<2x128x8x64xf16>, tensor<2x128x2x64xf16>, tensor<2x128x2x64xf16>, tensor<2x128x4xf16>)
      -> tensor<2x128x4x64xf16>
  // Same configuration, other B/Sq/Sk: same kernel.
  %b = diffattn.v2 %q2, %k2, %k2, %lam2 {causal}
      : (tensor<1x7x8x64xf16>, tensor<1x9x2x64xf16>, tensor<1x9x2x64xf16>, tensor<1x7x4xf16>)
      -> tensor<1x7x4x64xf16>
  %c = diffattn.v2 %q2, %k2, %k2, %lam3 kv_len(%len) {scale = 0.25 : f32}
      : (tensor<1x7x8x64xf16>, tensor<1x9x2x64xf16>, tensor<1x9x2x64xf16>, tensor<1x7x4xf32>, tensor<1xi32>)
      -> tensor<1x7x4x64xf16>
  %d = diffattn.v1 %q4, %k4, %v4, %l4, %w4 {lambda_init = 0.2 : f32}
      : (tensor<1x5x4x16xf32>, tensor<1x5x2x16xf32>, tensor<1x5x1x32xf32>, tensor<f32>, tensor<32xf32>)
      -> tensor<1x5x2x32xf32>
  return
}

// The backward op: inputs q, k, v, lam, out, dout, lse (and kv_len), one
// output per gradient, kind v2_backward.
// CHECK-LABEL: func.func private @diffattn_v2_backward_f32_h8_kv2_d16_dv16_causal_kvlen(
// CHECK-SAME:    %{{.*}}: tensor<?x?x8x16xf32>, %{{.*}}: tensor<?x?x2x16xf32>, %{{.*}}: tensor<?x?x2x16xf32>, %{{.*}}: tensor<?x?x4xf32>, %{{.*}}: tensor<?x?x4x16xf32>, %{{.*}}: tensor<?x?x4x16xf32>, %{{.*}}: tensor<?x8x?xf32>, %{{.*}}: tensor<?xi32>, %{{.*}}: tensor<?x?x8x16xf32> {bufferization.writable = true}, %{{.*}}: tensor<?x?x2x16xf32> {bufferization.writable = true}, %{{.*}}: tensor<?x?x2x16xf32> {bufferization.writable = true}, %{{.*}}: tensor<?x?x4xf32> {bufferization.writable = true})
// CHECK-SAME:    kind = "v2_backward"
// CHECK:         diffattn.v2_backward
// CHECK-COUNT-4: bufferization.materialize_in_destination
func.func @backward(%q: tensor<2x7x8x16xf32>, %k: tensor<2x9x2x16xf32>, %lam: tensor<2x7x4xf32>, %o: tensor<2x7x4x16xf32>, %lse: tensor<2x8x7xf32>, %kvlen: tensor<2xi32>) -> tensor<2x7x8x16xf32> {
  %dq, %dk, %dv, %dl = diffattn.v2_backward %q, %k, %k, %lam, %o, %o, %lse kv_len(%kvlen) {causal} : (tensor<2x7x8x16xf32>, tensor<2x9x2x16xf32>, tensor<2x9x2x16xf32>, tensor<2x7x4xf32>, tensor<2x7x4x16xf32>, tensor<2x7x4x16xf32>, tensor<2x8x7xf32>, tensor<2xi32>) -> (tensor<2x7x8x16xf32>, tensor<2x9x2x16xf32>, tensor<2x9x2x16xf32>, tensor<2x7x4xf32>)
  return %dq : tensor<2x7x8x16xf32>
}
