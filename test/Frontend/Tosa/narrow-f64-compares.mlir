// RUN: diffattn-opt %s --split-input-file --diffattn-tosa-narrow-f64-compares | FileCheck %s

// torch's safe-softmax guard as torch-mlir's TOSA export writes it: the f32
// scores widened to f64 and compared with an f64 -inf.
// CHECK-LABEL: func.func @guard
// CHECK-SAME: (%[[S:.*]]: tensor<2x4x8x8xf32>)
// CHECK-NOT: f64
// CHECK: %[[C:.*]] = "tosa.const"() <{values = dense<0xFF800000> : tensor<1x1x1x1xf32>}>
// CHECK: tosa.equal %[[S]], %[[C]] : (tensor<2x4x8x8xf32>, tensor<1x1x1x1xf32>) -> tensor<2x4x8x8xi1>
func.func @guard(%s: tensor<2x4x8x8xf32>) -> tensor<2x4x8x8xi1> {
  %c = "tosa.const"() <{values = dense<0xFFF0000000000000> : tensor<1x1x1x1xf64>}> : () -> tensor<1x1x1x1xf64>
  %w = tosa.cast %s : (tensor<2x4x8x8xf32>) -> tensor<2x4x8x8xf64>
  %e = tosa.equal %w, %c : (tensor<2x4x8x8xf64>, tensor<1x1x1x1xf64>) -> tensor<2x4x8x8xi1>
  return %e : tensor<2x4x8x8xi1>
}

// -----

// bf16 scores, the constant on the left, an ordering compare.
// CHECK-LABEL: func.func @bf16_greater
// CHECK-SAME: (%[[S:.*]]: tensor<4x8xbf16>)
// CHECK: %[[C:.*]] = "tosa.const"() <{values = dense<1.500000e+00> : tensor<1x1xbf16>}>
// CHECK: tosa.greater %[[C]], %[[S]] : (tensor<1x1xbf16>, tensor<4x8xbf16>) -> tensor<4x8xi1>
func.func @bf16_greater(%s: tensor<4x8xbf16>) -> tensor<4x8xi1> {
  %c = "tosa.const"() <{values = dense<1.5> : tensor<1x1xf64>}> : () -> tensor<1x1xf64>
  %w = tosa.cast %s : (tensor<4x8xbf16>) -> tensor<4x8xf64>
  %e = tosa.greater %c, %w : (tensor<1x1xf64>, tensor<4x8xf64>) -> tensor<4x8xi1>
  return %e : tensor<4x8xi1>
}

// -----

// Both sides widened from the same type.
// CHECK-LABEL: func.func @two_casts
// CHECK-SAME: (%[[A:.*]]: tensor<8xf16>, %[[B:.*]]: tensor<8xf16>)
// CHECK: tosa.greater_equal %[[A]], %[[B]] : (tensor<8xf16>, tensor<8xf16>) -> tensor<8xi1>
func.func @two_casts(%a: tensor<8xf16>, %b: tensor<8xf16>) -> tensor<8xi1> {
  %wa = tosa.cast %a : (tensor<8xf16>) -> tensor<8xf64>
  %wb = tosa.cast %b : (tensor<8xf16>) -> tensor<8xf64>
  %e = tosa.greater_equal %wa, %wb : (tensor<8xf64>, tensor<8xf64>) -> tensor<8xi1>
  return %e : tensor<8xi1>
}

// -----

// Left alone: 0.1 is not an f32, so comparing in f32 could change the result.
// CHECK-LABEL: func.func @inexact_constant
// CHECK: tosa.equal %{{.*}}, %{{.*}} : (tensor<4xf64>, tensor<1xf64>) -> tensor<4xi1>
func.func @inexact_constant(%s: tensor<4xf32>) -> tensor<4xi1> {
  %c = "tosa.const"() <{values = dense<0.1> : tensor<1xf64>}> : () -> tensor<1xf64>
  %w = tosa.cast %s : (tensor<4xf32>) -> tensor<4xf64>
  %e = tosa.equal %w, %c : (tensor<4xf64>, tensor<1xf64>) -> tensor<4xi1>
  return %e : tensor<4xi1>
}

// -----

// Left alone: operands widened from different types.
// CHECK-LABEL: func.func @mixed_sources
// CHECK: tosa.equal %{{.*}}, %{{.*}} : (tensor<4xf64>, tensor<4xf64>) -> tensor<4xi1>
func.func @mixed_sources(%a: tensor<4xf32>, %b: tensor<4xf16>) -> tensor<4xi1> {
  %wa = tosa.cast %a : (tensor<4xf32>) -> tensor<4xf64>
  %wb = tosa.cast %b : (tensor<4xf16>) -> tensor<4xf64>
  %e = tosa.equal %wa, %wb : (tensor<4xf64>, tensor<4xf64>) -> tensor<4xi1>
  return %e : tensor<4xi1>
}
