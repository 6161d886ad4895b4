// RUN: diffattn-opt %s --split-input-file --diffattn-fuse | FileCheck %s
// RUN: diffattn-opt %s --split-input-file --diffattn-fuse=remarks=true 2>&1 >/dev/null | FileCheck %s --check-prefix=REMARK

// Dynamic views as torch-mlir writes them: tensor.reshape of a shape
// computed from tensor.dim in i64 (view(B, S, 32) then view(B, S, 4, 8)).
// Both reshapes only merge and split the static head dims, which the fusion
// proves from the shape operands, so it reads through them: one op with
// dynamic B and S that reads %qf and %k, %v, %lam.

#q = affine_map<(b, j, i, t, d) -> (b, i, j, d)>
#k = affine_map<(b, j, i, t, d) -> (b, t, 0, d)>
#s = affine_map<(b, j, i, t, d) -> (b, j, i, t)>
#p = affine_map<(b, i, j, c, t) -> (b, j, i, t)>
#v = affine_map<(b, i, j, c, t) -> (b, t, 0, c)>
#o = affine_map<(b, i, j, c, t) -> (b, i, j, c)>
#id = affine_map<(b, i, h, c) -> (b, i, h, c)>
#even = affine_map<(b, i, h, c) -> (b, i, h * 2, c)>
#odd = affine_map<(b, i, h, c) -> (b, i, h * 2 + 1, c)>
#lam = affine_map<(b, i, h, c) -> (b, i, h)>

// CHECK-LABEL: func.func @v2_reshaped
// REMARK: remark: fused differential attention V2: 4 query heads in 2 pairs, 1 KV heads
// CHECK-NOT: tensor.reshape
// CHECK-NOT: linalg.softmax
// CHECK: %[[Q:.*]] = linalg.generic {{.*}} ins(%arg0 : tensor<?x?x32xf32>)
// CHECK: diffattn.v2 %[[Q]], %arg1, %arg2, %arg3 {scale = 1.000000e+00 : f32} : (tensor<?x?x4x8xf32>, tensor<?x?x1x8xf32>, tensor<?x?x1x8xf32>, tensor<?x?x2xf32>) -> tensor<?x?x2x8xf32>
// CHECK-NOT: linalg.softmax
// CHECK: return
func.func @v2_reshaped(%qf: tensor<?x?x32xf32>, %k: tensor<?x?x1x8xf32>,
                       %v: tensor<?x?x1x8xf32>, %lam: tensor<?x?x2xf32>)
    -> tensor<?x?x2x8xf32> {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %c4 = arith.constant 4 : i64
  %c8 = arith.constant 8 : i64
  %c32 = arith.constant 32 : i64
  %zero = arith.constant 0.0 : f32
  %one = arith.constant 1.0 : f32
  %db = tensor.dim %qf, %c0 : tensor<?x?x32xf32>
  %ds = tensor.dim %qf, %c1 : tensor<?x?x32xf32>
  %b = arith.index_cast %db : index to i64
  %s = arith.index_cast %ds : index to i64
  %shape4 = tensor.from_elements %b, %s, %c4, %c8 : tensor<4xi64>
  %q = tensor.reshape %qf(%shape4) : (tensor<?x?x32xf32>, tensor<4xi64>) -> tensor<?x?x4x8xf32>
  %se = tensor.empty(%db, %ds, %ds) : tensor<?x4x?x?xf32>
  %sf = linalg.fill ins(%zero : f32) outs(%se : tensor<?x4x?x?xf32>) -> tensor<?x4x?x?xf32>
  %sc = linalg.generic {indexing_maps = [#q, #k, #s], iterator_types = ["parallel", "parallel", "parallel", "parallel", "reduction"]} ins(%q, %k : tensor<?x?x4x8xf32>, tensor<?x?x1x8xf32>) outs(%sf : tensor<?x4x?x?xf32>) {
  ^bb0(%a: f32, %bb: f32, %acc: f32):
    %m = arith.mulf %a, %bb : f32
    %r = arith.addf %acc, %m : f32
    linalg.yield %r : f32
  } -> tensor<?x4x?x?xf32>
  %pe = tensor.empty(%db, %ds, %ds) : tensor<?x4x?x?xf32>
  %p = linalg.softmax dimension(3) ins(%sc : tensor<?x4x?x?xf32>) outs(%pe : tensor<?x4x?x?xf32>) -> tensor<?x4x?x?xf32>
  %oe = tensor.empty(%db, %ds) : tensor<?x?x4x8xf32>
  %of = linalg.fill ins(%zero : f32) outs(%oe : tensor<?x?x4x8xf32>) -> tensor<?x?x4x8xf32>
  %o = linalg.generic {indexing_maps = [#p, #v, #o], iterator_types = ["parallel", "parallel", "parallel", "parallel", "reduction"]} ins(%p, %v : tensor<?x4x?x?xf32>, tensor<?x?x1x8xf32>) outs(%of : tensor<?x?x4x8xf32>) {
  ^bb0(%a: f32, %bb: f32, %acc: f32):
    %m = arith.mulf %a, %bb : f32
    %r = arith.addf %acc, %m : f32
    linalg.yield %r : f32
  } -> tensor<?x?x4x8xf32>
  // view(B, S, 32), then view(B, S, 4, 8), with the sizes read back from
  // the tensor that is reshaped (as torch-mlir does).
  %d0 = tensor.dim %o, %c0 : tensor<?x?x4x8xf32>
  %d1 = tensor.dim %o, %c1 : tensor<?x?x4x8xf32>
  %b2 = arith.index_cast %d0 : index to i64
  %s2 = arith.index_cast %d1 : index to i64
  %shape3 = tensor.from_elements %b2, %s2, %c32 : tensor<3xi64>
  %flat = tensor.reshape %o(%shape3) : (tensor<?x?x4x8xf32>, tensor<3xi64>) -> tensor<?x?x32xf32>
  %shape4b = tensor.from_elements %b2, %s2, %c4, %c8 : tensor<4xi64>
  %heads = tensor.reshape %flat(%shape4b) : (tensor<?x?x32xf32>, tensor<4xi64>) -> tensor<?x?x4x8xf32>
  %re = tensor.empty(%db, %ds) : tensor<?x?x2x8xf32>
  %out = linalg.generic {indexing_maps = [#even, #odd, #lam, #id], iterator_types = ["parallel", "parallel", "parallel", "parallel"]} ins(%heads, %heads, %lam : tensor<?x?x4x8xf32>, tensor<?x?x4x8xf32>, tensor<?x?x2xf32>) outs(%re : tensor<?x?x2x8xf32>) {
  ^bb0(%a0: f32, %a1: f32, %l: f32, %unused: f32):
    %neg = arith.negf %l : f32
    %e = math.exp %neg : f32
    %den = arith.addf %e, %one : f32
    %sig = arith.divf %one, %den : f32
    %w = arith.mulf %sig, %a1 : f32
    %r = arith.subf %a0, %w : f32
    linalg.yield %r : f32
  } -> tensor<?x?x2x8xf32>
  return %out : tensor<?x?x2x8xf32>
}

// -----

// The same graph, but the second view's batch and sequence sizes are
// opaque values %n and %m: view(n, m, 4, 8) regroups the B*S rows in a
// way the fusion cannot prove to be (B, S), so it refuses, naming the
// reshape and the reason.

#q = affine_map<(b, j, i, t, d) -> (b, i, j, d)>
#k = affine_map<(b, j, i, t, d) -> (b, t, 0, d)>
#s = affine_map<(b, j, i, t, d) -> (b, j, i, t)>
#p = affine_map<(b, i, j, c, t) -> (b, j, i, t)>
#v = affine_map<(b, i, j, c, t) -> (b, t, 0, c)>
#o = affine_map<(b, i, j, c, t) -> (b, i, j, c)>
#id = affine_map<(b, i, h, c) -> (b, i, h, c)>
#even = affine_map<(b, i, h, c) -> (b, i, h * 2, c)>
#odd = affine_map<(b, i, h, c) -> (b, i, h * 2 + 1, c)>
#lam = affine_map<(b, i, h, c) -> (b, i, h)>

// CHECK-LABEL: func.func @v2_opaque_view
// REMARK: remark: not fused: an attention feeds the difference through %reshape_{{[0-9]+}} (tensor.reshape), which the fusion does not look through: it regroups source dims [0, 2) as result dims [0, 2) with a dynamic size that is not the first of its group
// CHECK: linalg.softmax
// CHECK-NOT: diffattn.v2
func.func @v2_opaque_view(%q: tensor<?x?x4x8xf32>, %k: tensor<?x?x1x8xf32>,
                          %v: tensor<?x?x1x8xf32>, %lam: tensor<?x?x2xf32>,
                          %n: i64, %m: i64) -> tensor<?x?x2x8xf32> {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %c4 = arith.constant 4 : i64
  %c8 = arith.constant 8 : i64
  %c32 = arith.constant 32 : i64
  %zero = arith.constant 0.0 : f32
  %one = arith.constant 1.0 : f32
  %db = tensor.dim %q, %c0 : tensor<?x?x4x8xf32>
  %ds = tensor.dim %q, %c1 : tensor<?x?x4x8xf32>
  %se = tensor.empty(%db, %ds, %ds) : tensor<?x4x?x?xf32>
  %sf = linalg.fill ins(%zero : f32) outs(%se : tensor<?x4x?x?xf32>) -> tensor<?x4x?x?xf32>
  %sc = linalg.generic {indexing_maps = [#q, #k, #s], iterator_types = ["parallel", "parallel", "parallel", "parallel", "reduction"]} ins(%q, %k : tensor<?x?x4x8xf32>, tensor<?x?x1x8xf32>) outs(%sf : tensor<?x4x?x?xf32>) {
  ^bb0(%a: f32, %bb: f32, %acc: f32):
    %mm = arith.mulf %a, %bb : f32
    %r = arith.addf %acc, %mm : f32
    linalg.yield %r : f32
  } -> tensor<?x4x?x?xf32>
  %pe = tensor.empty(%db, %ds, %ds) : tensor<?x4x?x?xf32>
  %p = linalg.softmax dimension(3) ins(%sc : tensor<?x4x?x?xf32>) outs(%pe : tensor<?x4x?x?xf32>) -> tensor<?x4x?x?xf32>
  %oe = tensor.empty(%db, %ds) : tensor<?x?x4x8xf32>
  %of = linalg.fill ins(%zero : f32) outs(%oe : tensor<?x?x4x8xf32>) -> tensor<?x?x4x8xf32>
  %o = linalg.generic {indexing_maps = [#p, #v, #o], iterator_types = ["parallel", "parallel", "parallel", "parallel", "reduction"]} ins(%p, %v : tensor<?x4x?x?xf32>, tensor<?x?x1x8xf32>) outs(%of : tensor<?x?x4x8xf32>) {
  ^bb0(%a: f32, %bb: f32, %acc: f32):
    %mm = arith.mulf %a, %bb : f32
    %r = arith.addf %acc, %mm : f32
    linalg.yield %r : f32
  } -> tensor<?x?x4x8xf32>
  %d0 = tensor.dim %o, %c0 : tensor<?x?x4x8xf32>
  %d1 = tensor.dim %o, %c1 : tensor<?x?x4x8xf32>
  %b2 = arith.index_cast %d0 : index to i64
  %s2 = arith.index_cast %d1 : index to i64
  %shape3 = tensor.from_elements %b2, %s2, %c32 : tensor<3xi64>
  %flat = tensor.reshape %o(%shape3) : (tensor<?x?x4x8xf32>, tensor<3xi64>) -> tensor<?x?x32xf32>
  %shape4 = tensor.from_elements %n, %m, %c4, %c8 : tensor<4xi64>
  %heads = tensor.reshape %flat(%shape4) : (tensor<?x?x32xf32>, tensor<4xi64>) -> tensor<?x?x4x8xf32>
  %re = tensor.empty(%db, %ds) : tensor<?x?x2x8xf32>
  %out = linalg.generic {indexing_maps = [#even, #odd, #lam, #id], iterator_types = ["parallel", "parallel", "parallel", "parallel"]} ins(%heads, %heads, %lam : tensor<?x?x4x8xf32>, tensor<?x?x4x8xf32>, tensor<?x?x2xf32>) outs(%re : tensor<?x?x2x8xf32>) {
  ^bb0(%a0: f32, %a1: f32, %l: f32, %unused: f32):
    %neg = arith.negf %l : f32
    %e = math.exp %neg : f32
    %den = arith.addf %e, %one : f32
    %sig = arith.divf %one, %den : f32
    %w = arith.mulf %sig, %a1 : f32
    %r = arith.subf %a0, %w : f32
    linalg.yield %r : f32
  } -> tensor<?x?x2x8xf32>
  return %out : tensor<?x?x2x8xf32>
}
