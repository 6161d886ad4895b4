// RUN: diffattn-opt %s --split-input-file | FileCheck %s
// RUN: diffattn-opt %s --split-input-file --mlir-print-op-generic | FileCheck %s --check-prefix=GENERIC
// RUN: diffattn-opt %s --split-input-file --mlir-print-op-generic | diffattn-opt --split-input-file | FileCheck %s
// Round trip of diffattn.v2 / diffattn.v1 through the custom and generic forms.

// CHECK-LABEL: func.func @v2_causal
// CHECK: %[[O:.*]] = diffattn.v2 %arg0, %arg1, %arg2, %arg3 {causal} : (tensor<2x128x8x64xf32>, tensor<2x128x2x64xf32>, tensor<2x128x2x64xf32>, tensor<2x128x4xf32>) -> tensor<2x128x4x64xf32>
// CHECK: return %[[O]]
// GENERIC-LABEL: sym_name = "v2_causal"
// GENERIC: "diffattn.v2"(%{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}) <{causal, window_left = -1 : i64, window_right = -1 : i64}>
func.func @v2_causal(%q: tensor<2x128x8x64xf32>, %k: tensor<2x128x2x64xf32>,
                     %v: tensor<2x128x2x64xf32>, %lam: tensor<2x128x4xf32>)
    -> tensor<2x128x4x64xf32> {
  %o = diffattn.v2 %q, %k, %v, %lam {causal}
      : (tensor<2x128x8x64xf32>, tensor<2x128x2x64xf32>, tensor<2x128x2x64xf32>, tensor<2x128x4xf32>)
      -> tensor<2x128x4x64xf32>
  return %o : tensor<2x128x4x64xf32>
}

// -----

// The generic form as SPEC.md writes it (inherent attributes in the
// discardable dictionary) parses and verifies.
// CHECK-LABEL: func.func @v2_generic_input
// CHECK: diffattn.v2 %arg0, %arg1, %arg2, %arg3 {causal}
func.func @v2_generic_input(%q: tensor<2x128x8x64xf32>, %k: tensor<2x128x2x64xf32>,
                            %v: tensor<2x128x2x64xf32>, %lam: tensor<2x128x4xf32>)
    -> tensor<2x128x4x64xf32> {
  %o = "diffattn.v2"(%q, %k, %v, %lam) {causal} : (tensor<2x128x8x64xf32>,
      tensor<2x128x2x64xf32>, tensor<2x128x2x64xf32>, tensor<2x128x4xf32>) -> tensor<2x128x4x64xf32>
  return %o : tensor<2x128x4x64xf32>
}

// -----

// Every attribute, bf16 with an f32 lam, Dv != D, dynamic B/Sq/Sk.
// CHECK-LABEL: func.func @v2_all_attrs
// CHECK: diffattn.v2 %arg0, %arg1, %arg2, %arg3 {scale = 1.250000e-01 : f32, window_left = 16 : i64, window_right = 4 : i64} : (tensor<?x?x16x64xbf16>, tensor<?x?x2x64xbf16>, tensor<?x?x2x32xbf16>, tensor<?x?x8xf32>) -> tensor<?x?x8x32xbf16>
// GENERIC-LABEL: sym_name = "v2_all_attrs"
// GENERIC: <{scale = 1.250000e-01 : f32, window_left = 16 : i64, window_right = 4 : i64}>
func.func @v2_all_attrs(%q: tensor<?x?x16x64xbf16>, %k: tensor<?x?x2x64xbf16>,
                        %v: tensor<?x?x2x32xbf16>, %lam: tensor<?x?x8xf32>)
    -> tensor<?x?x8x32xbf16> {
  %o = diffattn.v2 %q, %k, %v, %lam {scale = 0.125 : f32, window_left = 16, window_right = 4}
      : (tensor<?x?x16x64xbf16>, tensor<?x?x2x64xbf16>, tensor<?x?x2x32xbf16>, tensor<?x?x8xf32>)
      -> tensor<?x?x8x32xbf16>
  return %o : tensor<?x?x8x32xbf16>
}

// -----

// Decode against a KV cache: the kv_len operand.
// CHECK-LABEL: func.func @v2_decode
// CHECK: diffattn.v2 %arg0, %arg1, %arg2, %arg3 kv_len(%arg4) {causal} : (tensor<4x1x32x128xf16>, tensor<4x4096x8x128xf16>, tensor<4x4096x8x128xf16>, tensor<4x1x16xf16>, tensor<4xi32>) -> tensor<4x1x16x128xf16>
// GENERIC-LABEL: sym_name = "v2_decode"
// GENERIC: "diffattn.v2"(%{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}) <{causal
func.func @v2_decode(%q: tensor<4x1x32x128xf16>, %k: tensor<4x4096x8x128xf16>,
                     %v: tensor<4x4096x8x128xf16>, %lam: tensor<4x1x16xf16>,
                     %len: tensor<4xi32>) -> tensor<4x1x16x128xf16> {
  %o = diffattn.v2 %q, %k, %v, %lam kv_len(%len) {causal}
      : (tensor<4x1x32x128xf16>, tensor<4x4096x8x128xf16>, tensor<4x4096x8x128xf16>,
         tensor<4x1x16xf16>, tensor<4xi32>) -> tensor<4x1x16x128xf16>
  return %o : tensor<4x1x16x128xf16>
}

// -----

// Causal with an explicit window_right of 0 and a left window.
// CHECK-LABEL: func.func @v2_causal_window
// CHECK: diffattn.v2 {{.*}} {causal, window_left = 128 : i64, window_right = 0 : i64}
func.func @v2_causal_window(%q: tensor<1x?x4x32xf32>, %k: tensor<1x?x2x32xf32>,
                            %v: tensor<1x?x2x32xf32>, %lam: tensor<1x?x2xf32>)
    -> tensor<1x?x2x32xf32> {
  %o = diffattn.v2 %q, %k, %v, %lam {causal, window_left = 128, window_right = 0}
      : (tensor<1x?x4x32xf32>, tensor<1x?x2x32xf32>, tensor<1x?x2x32xf32>, tensor<1x?x2xf32>)
      -> tensor<1x?x2x32xf32>
  return %o : tensor<1x?x2x32xf32>
}

// -----

// CHECK-LABEL: func.func @v1
// CHECK: diffattn.v1 %arg0, %arg1, %arg2, %arg3, %arg4 {causal, lambda_init = 2.000000e-01 : f32} : (tensor<1x64x8x32xf16>, tensor<1x64x4x32xf16>, tensor<1x64x2x64xf16>, tensor<f32>, tensor<64xf16>) -> tensor<1x64x4x64xf16>
// GENERIC-LABEL: sym_name = "v1"
// GENERIC: "diffattn.v1"({{.*}}) <{causal, eps = 9.99999974E-6 : f32, lambda_init = 2.000000e-01 : f32}>
func.func @v1(%q: tensor<1x64x8x32xf16>, %k: tensor<1x64x4x32xf16>,
              %v: tensor<1x64x2x64xf16>, %lam: tensor<f32>, %w: tensor<64xf16>)
    -> tensor<1x64x4x64xf16> {
  %o = diffattn.v1 %q, %k, %v, %lam, %w {causal, lambda_init = 0.2 : f32}
      : (tensor<1x64x8x32xf16>, tensor<1x64x4x32xf16>, tensor<1x64x2x64xf16>, tensor<f32>, tensor<64xf16>)
      -> tensor<1x64x4x64xf16>
  return %o : tensor<1x64x4x64xf16>
}

// -----

// V1 in the generic form, with scale, eps, an f32 weight and dynamic sizes.
// CHECK-LABEL: func.func @v1_generic_input
// CHECK: diffattn.v1 {{.*}} {eps = 9.99999997E-7 : f32, lambda_init = -1.000000e+00 : f32, scale = 5.000000e-01 : f32} : (tensor<?x?x4x16xbf16>, tensor<?x?x4x16xbf16>, tensor<?x?x2x32xbf16>, tensor<f32>, tensor<32xf32>) -> tensor<?x?x2x32xbf16>
func.func @v1_generic_input(%q: tensor<?x?x4x16xbf16>, %k: tensor<?x?x4x16xbf16>,
                            %v: tensor<?x?x2x32xbf16>, %lam: tensor<f32>, %w: tensor<32xf32>)
    -> tensor<?x?x2x32xbf16> {
  %o = "diffattn.v1"(%q, %k, %v, %lam, %w) {lambda_init = -1.0 : f32, eps = 1.0e-6 : f32, scale = 0.5 : f32}
      : (tensor<?x?x4x16xbf16>, tensor<?x?x4x16xbf16>, tensor<?x?x2x32xbf16>, tensor<f32>, tensor<32xf32>)
      -> tensor<?x?x2x32xbf16>
  return %o : tensor<?x?x2x32xbf16>
}

// -----

// A paged KV cache: dynamic pool and table sizes, block size 16.
// CHECK-LABEL: func.func @v2_paged
// CHECK: diffattn.v2_paged %arg0, %arg1, %arg2, %arg3 kv_len(%arg4) block_table(%arg5) {causal} : (tensor<?x1x8x64xbf16>, tensor<?x16x2x64xbf16>, tensor<?x16x2x64xbf16>, tensor<?x1x4xbf16>, tensor<?xi32>, tensor<?x?xi32>) -> tensor<?x1x4x64xbf16>
// GENERIC-LABEL: sym_name = "v2_paged"
// GENERIC: "diffattn.v2_paged"(%{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}) <{causal, window_left = -1 : i64, window_right = -1 : i64}>
func.func @v2_paged(%q: tensor<?x1x8x64xbf16>, %k: tensor<?x16x2x64xbf16>,
                    %v: tensor<?x16x2x64xbf16>, %lam: tensor<?x1x4xbf16>,
                    %len: tensor<?xi32>, %bt: tensor<?x?xi32>)
    -> tensor<?x1x4x64xbf16> {
  %o = diffattn.v2_paged %q, %k, %v, %lam kv_len(%len) block_table(%bt) {causal}
      : (tensor<?x1x8x64xbf16>, tensor<?x16x2x64xbf16>, tensor<?x16x2x64xbf16>, tensor<?x1x4xbf16>, tensor<?xi32>, tensor<?x?xi32>)
      -> tensor<?x1x4x64xbf16>
  return %o : tensor<?x1x4x64xbf16>
}

// -----

// Packed variable-length sequences.
// CHECK-LABEL: func.func @v2_varlen
// CHECK: diffattn.v2_varlen %arg0, %arg1, %arg2, %arg3 cu_seqlens(%arg4, %arg5) {causal} : (tensor<?x8x64xbf16>, tensor<?x2x64xbf16>, tensor<?x2x64xbf16>, tensor<?x4xbf16>, tensor<?xi32>, tensor<?xi32>) -> tensor<?x4x64xbf16>
// GENERIC-LABEL: sym_name = "v2_varlen"
// GENERIC: "diffattn.v2_varlen"(%{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}) <{causal, window_left = -1 : i64, window_right = -1 : i64}>
func.func @v2_varlen(%q: tensor<?x8x64xbf16>, %k: tensor<?x2x64xbf16>,
                     %v: tensor<?x2x64xbf16>, %lam: tensor<?x4xbf16>,
                     %cq: tensor<?xi32>, %ck: tensor<?xi32>) -> tensor<?x4x64xbf16> {
  %o = diffattn.v2_varlen %q, %k, %v, %lam cu_seqlens(%cq, %ck) {causal}
      : (tensor<?x8x64xbf16>, tensor<?x2x64xbf16>, tensor<?x2x64xbf16>, tensor<?x4xbf16>, tensor<?xi32>, tensor<?xi32>)
      -> tensor<?x4x64xbf16>
  return %o : tensor<?x4x64xbf16>
}

// -----

// The optional log-sum-exp result ([B, 2H, Sq] f32).
// CHECK-LABEL: func.func @v2_lse
// CHECK: %[[O:.*]], %[[L:.*]] = diffattn.v2 %arg0, %arg1, %arg2, %arg3 {causal} : (tensor<2x128x8x64xbf16>, tensor<2x96x2x64xbf16>, tensor<2x96x2x64xbf16>, tensor<2x128x4xbf16>) -> (tensor<2x128x4x64xbf16>, tensor<2x8x128xf32>)
// CHECK: return %[[O]], %[[L]]
// GENERIC-LABEL: sym_name = "v2_lse"
// GENERIC: "diffattn.v2"(%{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}) <{causal, window_left = -1 : i64, window_right = -1 : i64}> : ({{.*}}) -> (tensor<2x128x4x64xbf16>, tensor<2x8x128xf32>)
func.func @v2_lse(%q: tensor<2x128x8x64xbf16>, %k: tensor<2x96x2x64xbf16>,
                  %v: tensor<2x96x2x64xbf16>, %lam: tensor<2x128x4xbf16>)
    -> (tensor<2x128x4x64xbf16>, tensor<2x8x128xf32>) {
  %o, %lse = diffattn.v2 %q, %k, %v, %lam {causal}
      : (tensor<2x128x8x64xbf16>, tensor<2x96x2x64xbf16>, tensor<2x96x2x64xbf16>, tensor<2x128x4xbf16>)
      -> (tensor<2x128x4x64xbf16>, tensor<2x8x128xf32>)
  return %o, %lse : tensor<2x128x4x64xbf16>, tensor<2x8x128xf32>
}

// -----

// The training forward's results: out, lse and out_odd (A_{2h+1}, out's
// type), which the backward reads instead of recomputing it.
// CHECK-LABEL: func.func @v2_out_odd
// CHECK: %[[O:.*]], %[[S:.*]]:2 = diffattn.v2 %arg0, %arg1, %arg2, %arg3 {causal} : {{.*}} -> (tensor<2x128x4x64xbf16>, tensor<2x8x128xf32>, tensor<2x128x4x64xbf16>)
// CHECK: diffattn.v2_backward %arg0, %arg1, %arg2, %arg3, %[[O]], %[[O]], %[[S]]#0 out_odd(%[[S]]#1) {causal} : {{.*}}, tensor<2x8x128xf32>, tensor<2x128x4x64xbf16>) -> (
// GENERIC-LABEL: sym_name = "v2_out_odd"
// GENERIC: "diffattn.v2_backward"({{.*}}) <{causal, operandSegmentSizes = array<i32: 1, 1, 1, 1, 1, 1, 1, 0, 1>, window_left = -1 : i64, window_right = -1 : i64}>
func.func @v2_out_odd(%q: tensor<2x128x8x64xbf16>, %k: tensor<2x96x2x64xbf16>,
                      %v: tensor<2x96x2x64xbf16>, %lam: tensor<2x128x4xbf16>)
    -> (tensor<2x128x8x64xbf16>, tensor<2x96x2x64xbf16>, tensor<2x96x2x64xbf16>, tensor<2x128x4xbf16>) {
  %o, %lse, %odd = diffattn.v2 %q, %k, %v, %lam {causal}
      : (tensor<2x128x8x64xbf16>, tensor<2x96x2x64xbf16>, tensor<2x96x2x64xbf16>, tensor<2x128x4xbf16>)
      -> (tensor<2x128x4x64xbf16>, tensor<2x8x128xf32>, tensor<2x128x4x64xbf16>)
  %dq, %dk, %dv, %dlam = diffattn.v2_backward %q, %k, %v, %lam, %o, %o, %lse out_odd(%odd) {causal}
      : (tensor<2x128x8x64xbf16>, tensor<2x96x2x64xbf16>, tensor<2x96x2x64xbf16>, tensor<2x128x4xbf16>,
         tensor<2x128x4x64xbf16>, tensor<2x128x4x64xbf16>, tensor<2x8x128xf32>, tensor<2x128x4x64xbf16>)
      -> (tensor<2x128x8x64xbf16>, tensor<2x96x2x64xbf16>, tensor<2x96x2x64xbf16>, tensor<2x128x4xbf16>)
  return %dq, %dk, %dv, %dlam : tensor<2x128x8x64xbf16>, tensor<2x96x2x64xbf16>, tensor<2x96x2x64xbf16>, tensor<2x128x4xbf16>
}

// -----

// The backward op: gradients of q, k, v and lam from the saved forward.
// CHECK-LABEL: func.func @v2_backward
// CHECK: %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} = diffattn.v2_backward %arg0, %arg1, %arg2, %arg3, %arg4, %arg5, %arg6 kv_len(%arg7) {causal, scale = 1.250000e-01 : f32, window_left = 32 : i64} : (tensor<?x?x8x64xbf16>, tensor<?x?x2x64xbf16>, tensor<?x?x2x32xbf16>, tensor<?x?x4xf32>, tensor<?x?x4x32xbf16>, tensor<?x?x4x32xbf16>, tensor<?x8x?xf32>, tensor<?xi32>) -> (tensor<?x?x8x64xbf16>, tensor<?x?x2x64xbf16>, tensor<?x?x2x32xbf16>, tensor<?x?x4xf32>)
// GENERIC-LABEL: sym_name = "v2_backward"
// GENERIC: "diffattn.v2_backward"(%{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}) <{causal, operandSegmentSizes = array<i32: 1, 1, 1, 1, 1, 1, 1, 1, 0>, scale = 1.250000e-01 : f32, window_left = 32 : i64, window_right = -1 : i64}>
func.func @v2_backward(%q: tensor<?x?x8x64xbf16>, %k: tensor<?x?x2x64xbf16>,
                       %v: tensor<?x?x2x32xbf16>, %lam: tensor<?x?x4xf32>,
                       %out: tensor<?x?x4x32xbf16>, %dout: tensor<?x?x4x32xbf16>,
                       %lse: tensor<?x8x?xf32>, %kv_len: tensor<?xi32>)
    -> (tensor<?x?x8x64xbf16>, tensor<?x?x2x64xbf16>, tensor<?x?x2x32xbf16>, tensor<?x?x4xf32>) {
  %dq, %dk, %dv, %dlam = diffattn.v2_backward %q, %k, %v, %lam, %out, %dout, %lse kv_len(%kv_len)
      {causal, scale = 0.125 : f32, window_left = 32}
      : (tensor<?x?x8x64xbf16>, tensor<?x?x2x64xbf16>, tensor<?x?x2x32xbf16>, tensor<?x?x4xf32>,
         tensor<?x?x4x32xbf16>, tensor<?x?x4x32xbf16>, tensor<?x8x?xf32>, tensor<?xi32>)
      -> (tensor<?x?x8x64xbf16>, tensor<?x?x2x64xbf16>, tensor<?x?x2x32xbf16>, tensor<?x?x4xf32>)
  return %dq, %dk, %dv, %dlam : tensor<?x?x8x64xbf16>, tensor<?x?x2x64xbf16>, tensor<?x?x2x32xbf16>, tensor<?x?x4xf32>
}

// -----

// f64 operands (CPU only): the log-sum-exp is f64 too; lam may be f32.
// CHECK-LABEL: func.func @v2_f64
// CHECK: %[[O:.*]], %[[L:.*]] = diffattn.v2 %arg0, %arg1, %arg2, %arg3 {causal} : (tensor<?x?x4x16xf64>, tensor<?x?x2x16xf64>, tensor<?x?x2x16xf64>, tensor<?x?x2xf32>) -> (tensor<?x?x2x16xf64>, tensor<?x4x?xf64>)
// CHECK: diffattn.v2_backward %arg0, %arg1, %arg2, %arg3, %[[O]], %[[O]], %[[L]] {causal} : {{.*}} -> (tensor<?x?x4x16xf64>, tensor<?x?x2x16xf64>, tensor<?x?x2x16xf64>, tensor<?x?x2xf32>)
// GENERIC-LABEL: sym_name = "v2_f64"
// GENERIC: "diffattn.v2"(%{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}) <{causal, window_left = -1 : i64, window_right = -1 : i64}> : ({{.*}}) -> (tensor<?x?x2x16xf64>, tensor<?x4x?xf64>)
func.func @v2_f64(%q: tensor<?x?x4x16xf64>, %k: tensor<?x?x2x16xf64>,
                  %v: tensor<?x?x2x16xf64>, %lam: tensor<?x?x2xf32>)
    -> (tensor<?x?x4x16xf64>, tensor<?x?x2x16xf64>, tensor<?x?x2x16xf64>, tensor<?x?x2xf32>) {
  %o, %lse = diffattn.v2 %q, %k, %v, %lam {causal}
      : (tensor<?x?x4x16xf64>, tensor<?x?x2x16xf64>, tensor<?x?x2x16xf64>, tensor<?x?x2xf32>)
      -> (tensor<?x?x2x16xf64>, tensor<?x4x?xf64>)
  %dq, %dk, %dv, %dlam = diffattn.v2_backward %q, %k, %v, %lam, %o, %o, %lse {causal}
      : (tensor<?x?x4x16xf64>, tensor<?x?x2x16xf64>, tensor<?x?x2x16xf64>, tensor<?x?x2xf32>,
         tensor<?x?x2x16xf64>, tensor<?x?x2x16xf64>, tensor<?x4x?xf64>)
      -> (tensor<?x?x4x16xf64>, tensor<?x?x2x16xf64>, tensor<?x?x2x16xf64>, tensor<?x?x2xf32>)
  return %dq, %dk, %dv, %dlam : tensor<?x?x4x16xf64>, tensor<?x?x2x16xf64>, tensor<?x?x2x16xf64>, tensor<?x?x2xf32>
}
