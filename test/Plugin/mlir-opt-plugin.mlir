// Debian's stock mlir-opt loads libDiffAttnPlugin.so (tools/diffattn-plugin):
// the dialect parses, and diffattn-fuse and the lowering passes run without
// the project's tools. Plugin passes are named through --pass-pipeline.

// RUN: %stock_mlir_opt %s --split-input-file \
// RUN:   --load-dialect-plugin=%diffattn_plugin --load-pass-plugin=%diffattn_plugin \
// RUN:   --pass-pipeline="builtin.module(diffattn-fuse{remarks=true})" 2>&1 | FileCheck %s --check-prefix=FUSE

// RUN: %stock_mlir_opt %s --split-input-file \
// RUN:   --load-dialect-plugin=%diffattn_plugin --load-pass-plugin=%diffattn_plugin \
// RUN:   --pass-pipeline="builtin.module(diffattn-fuse,diffattn-decompose)" | FileCheck %s --check-prefix=DECOMPOSE

// RUN: %stock_mlir_opt %s --split-input-file \
// RUN:   --load-dialect-plugin=%diffattn_plugin --load-pass-plugin=%diffattn_plugin \
// RUN:   --pass-pipeline="builtin.module(diffattn-fuse,diffattn-cpu-pipeline)" | FileCheck %s --check-prefix=CPU

// A V2 core written out: two attentions over paired query heads sharing one
// KV head, softmax as a linalg.softmax, sigmoid-gated difference.
#q = affine_map<(b, i, h, t, d) -> (b, i, 2 * h, d)>
#q1 = affine_map<(b, i, h, t, d) -> (b, i, 2 * h + 1, d)>
#k = affine_map<(b, i, h, t, d) -> (b, t, 0, d)>
#s = affine_map<(b, i, h, t, d) -> (b, h, i, t)>
#p = affine_map<(b, i, h, d, t) -> (b, h, i, t)>
#v = affine_map<(b, i, h, d, t) -> (b, t, 0, d)>
#o = affine_map<(b, i, h, d, t) -> (b, i, h, d)>
#id = affine_map<(b, i, h, d) -> (b, i, h, d)>
#lam = affine_map<(b, i, h, d) -> (b, i, h)>
func.func @v2_core(%q: tensor<1x4x2x8xf32>, %k: tensor<1x4x1x8xf32>,
                   %v: tensor<1x4x1x8xf32>, %lam: tensor<1x4x1xf32>) -> tensor<1x4x1x8xf32> {
  %zero = arith.constant 0.0 : f32
  %es = tensor.empty() : tensor<1x1x4x4xf32>
  %zs = linalg.fill ins(%zero : f32) outs(%es : tensor<1x1x4x4xf32>) -> tensor<1x1x4x4xf32>
  %s0 = linalg.generic {indexing_maps = [#q, #k, #s], iterator_types = ["parallel", "parallel", "parallel", "reduction", "reduction"]}
      ins(%q, %k : tensor<1x4x2x8xf32>, tensor<1x4x1x8xf32>) outs(%zs : tensor<1x1x4x4xf32>) {
  ^bb0(%a: f32, %b: f32, %c: f32):
    %m = arith.mulf %a, %b : f32
    %r = arith.addf %c, %m : f32
    linalg.yield %r : f32
  } -> tensor<1x1x4x4xf32>
  %s1 = linalg.generic {indexing_maps = [#q1, #k, #s], iterator_types = ["parallel", "parallel", "parallel", "reduction", "reduction"]}
      ins(%q, %k : tensor<1x4x2x8xf32>, tensor<1x4x1x8xf32>) outs(%zs : tensor<1x1x4x4xf32>) {
  ^bb0(%a: f32, %b: f32, %c: f32):
    %m = arith.mulf %a, %b : f32
    %r = arith.addf %c, %m : f32
    linalg.yield %r : f32
  } -> tensor<1x1x4x4xf32>
  %p0 = linalg.softmax dimension(3) ins(%s0 : tensor<1x1x4x4xf32>) outs(%es : tensor<1x1x4x4xf32>) -> tensor<1x1x4x4xf32>
  %p1 = linalg.softmax dimension(3) ins(%s1 : tensor<1x1x4x4xf32>) outs(%es : tensor<1x1x4x4xf32>) -> tensor<1x1x4x4xf32>
  %eo = tensor.empty() : tensor<1x4x1x8xf32>
  %zo = linalg.fill ins(%zero : f32) outs(%eo : tensor<1x4x1x8xf32>) -> tensor<1x4x1x8xf32>
  %a0 = linalg.generic {indexing_maps = [#p, #v, #o], iterator_types = ["parallel", "parallel", "parallel", "parallel", "reduction"]}
      ins(%p0, %v : tensor<1x1x4x4xf32>, tensor<1x4x1x8xf32>) outs(%zo : tensor<1x4x1x8xf32>) {
  ^bb0(%a: f32, %b: f32, %c: f32):
    %m = arith.mulf %a, %b : f32
    %r = arith.addf %c, %m : f32
    linalg.yield %r : f32
  } -> tensor<1x4x1x8xf32>
  %a1 = linalg.generic {indexing_maps = [#p, #v, #o], iterator_types = ["parallel", "parallel", "parallel", "parallel", "reduction"]}
      ins(%p1, %v : tensor<1x1x4x4xf32>, tensor<1x4x1x8xf32>) outs(%zo : tensor<1x4x1x8xf32>) {
  ^bb0(%a: f32, %b: f32, %c: f32):
    %m = arith.mulf %a, %b : f32
    %r = arith.addf %c, %m : f32
    linalg.yield %r : f32
  } -> tensor<1x4x1x8xf32>
  %one = arith.constant 1.0 : f32
  %out = linalg.generic {indexing_maps = [#id, #id, #lam, #id], iterator_types = ["parallel", "parallel", "parallel", "parallel"]}
      ins(%a0, %a1, %lam : tensor<1x4x1x8xf32>, tensor<1x4x1x8xf32>, tensor<1x4x1xf32>) outs(%eo : tensor<1x4x1x8xf32>) {
  ^bb0(%x: f32, %y: f32, %l: f32, %c: f32):
    %n = arith.negf %l : f32
    %e = math.exp %n : f32
    %d = arith.addf %e, %one : f32
    %g = arith.divf %one, %d : f32
    %gy = arith.mulf %g, %y : f32
    %r = arith.subf %x, %gy : f32
    linalg.yield %r : f32
  } -> tensor<1x4x1x8xf32>
  return %out : tensor<1x4x1x8xf32>
}
// FUSE: remark: fused differential attention V2: 2 query heads in 1 pairs, 1 KV heads, head dim 8, value dim 8, no mask, scale 1
// FUSE-LABEL: func.func @v2_core
// FUSE: diffattn.v2 %arg0, %arg1, %arg2, %arg3 {scale = 1.000000e+00 : f32} : (tensor<1x4x2x8xf32>, tensor<1x4x1x8xf32>, tensor<1x4x1x8xf32>, tensor<1x4x1xf32>) -> tensor<1x4x1x8xf32>
// FUSE-NOT: linalg.softmax
// DECOMPOSE-LABEL: func.func @v2_core
// DECOMPOSE-NOT: diffattn.
// DECOMPOSE: math.exp
// CPU: llvm.func @diffattn_v2_f32_h2_kv1_d8_dv8
// CPU-NOT: diffattn.v2

// -----

// The dialect alone: a diffattn op parses and verifies.
// FUSE-LABEL: func.func @op
// FUSE: diffattn.v2 %arg0, %arg1, %arg2, %arg3 {causal}
func.func @op(%q: tensor<2x16x8x8xf32>, %k: tensor<2x16x2x8xf32>, %v: tensor<2x16x2x8xf32>, %l: tensor<2x16x4xf32>) -> tensor<2x16x4x8xf32> {
  %o = diffattn.v2 %q, %k, %v, %l {causal} : (tensor<2x16x8x8xf32>, tensor<2x16x2x8xf32>, tensor<2x16x2x8xf32>, tensor<2x16x4xf32>) -> tensor<2x16x4x8xf32>
  return %o : tensor<2x16x4x8xf32>
}
