// RUN: diffattn-opt %s --diffattn-cpu-pipeline | FileCheck %s --check-prefixes=CHECK,FLASH
// RUN: diffattn-opt %s --diffattn-cpu-pipeline="lowering=decompose" | FileCheck %s
// RUN: not diffattn-opt %s --diffattn-cpu-pipeline="lowering=magic" 2>&1 | FileCheck %s --check-prefix=BAD

// The whole CPU pipeline: LLVM-dialect kernels whose public entry point
// takes plain pointers (q, k, v, lam, kv_len, out) and B, Sq, Sk, rebuilds
// the memref descriptors with row-major strides and calls the kernel body,
// which is internal; nothing calls an MLIR runtime library.

// CHECK-LABEL: llvm.func @diffattn_v2_f32_h4_kv2_d16_dv16_causal_kvlen(
// CHECK-SAME:    %[[Q:.*]]: !llvm.ptr, %{{.*}}: !llvm.ptr, %{{.*}}: !llvm.ptr, %{{.*}}: !llvm.ptr, %{{.*}}: !llvm.ptr, %{{.*}}: !llvm.ptr,
// CHECK-SAME:    %[[B:.*]]: i64, %[[SQ:.*]]: i64, %[[SK:.*]]: i64)
// CHECK:         llvm.call @diffattn_v2_f32_h4_kv2_d16_dv16_causal_kvlen_impl(%[[Q]], %[[Q]], %{{.*}}, %[[B]], %[[SQ]],
// CHECK:         llvm.return
// CHECK:       llvm.func internal @diffattn_v2_f32_h4_kv2_d16_dv16_causal_kvlen_impl(
// CHECK-NOT:   memrefCopy
// The tiled kernel's P V: each row's Dv accumulators are one vector, an axpy
// per key (a scalar-per-element loop ran 3-6x slower at Dv = 32).
// FLASH:       llvm.load %{{.*}} -> vector<16xf32>
// FLASH:       llvm.fmul %{{.*}}, %{{.*}} {fastmathFlags = #llvm.fastmath<contract, reassoc>} : vector<16xf32>
// FLASH:       llvm.fadd %{{.*}}, %{{.*}} {fastmathFlags = #llvm.fastmath<contract, reassoc>} : vector<16xf32>
// FLASH:       llvm.store %{{.*}}, %{{.*}} {{.*}}: vector<16xf32>, !llvm.ptr
// BAD: diffattn-cpu-pipeline: unknown lowering 'magic'
func.func @decode(%q: tensor<2x1x4x16xf32>, %k: tensor<2x64x2x16xf32>,
                  %v: tensor<2x64x2x16xf32>, %lam: tensor<2x1x2xf32>,
                  %len: tensor<2xi32>) -> tensor<2x1x2x16xf32> {
  %o = diffattn.v2 %q, %k, %v, %lam kv_len(%len) {causal}
      : (tensor<2x1x4x16xf32>, tensor<2x64x2x16xf32>, tensor<2x64x2x16xf32>, tensor<2x1x2xf32>, tensor<2xi32>)
      -> tensor<2x1x2x16xf32>
  return %o : tensor<2x1x2x16xf32>
}
