// Strategy options out of range: a diagnostic on the op, no kernel.
// RUN: diffattn-opt %s --diffattn-outline-kernels --diffattn-to-mma-sync-kernels=stages=1 --verify-diagnostics
// RUN: not diffattn-opt %s --diffattn-outline-kernels --diffattn-to-mma-sync-kernels=warps=6 2>&1 | FileCheck %s --check-prefix=WARPS
// RUN: not diffattn-opt %s --diffattn-outline-kernels --diffattn-to-mma-sync-kernels=rescale-threshold=20 2>&1 | FileCheck %s --check-prefix=RESCALE
// RUN: not diffattn-opt %s --diffattn-outline-kernels "--diffattn-to-mma-sync-kernels=warps=8 block-k=128 stages=3" 2>&1 | FileCheck %s --check-prefix=SHARED
// RUN: not diffattn-opt %s --diffattn-outline-kernels --diffattn-to-mma-sync-kernels=block-k=24 2>&1 | FileCheck %s --check-prefix=BLOCKK
// RUN: not diffattn-opt %s --diffattn-outline-kernels --diffattn-to-mma-sync-kernels=smem-layout=diagonal 2>&1 | FileCheck %s --check-prefix=LAYOUT

// WARPS: error: 'diffattn.v2' op warps = 6 is not supported (expected 4 or 8)
// RESCALE: error: 'diffattn.v2' op rescale-threshold = 2.000000e+01 is not supported (expected 0 to 16)
// SHARED: error: 'diffattn.v2' op needs {{[0-9]+}} bytes of shared memory per CTA with block-k = 128 and stages = 3 (at most 166912 on sm_80)
// BLOCKK: error: 'diffattn.v2' op block-k = 24 is not supported (expected a multiple of 16 up to 128)
// LAYOUT: error: 'diffattn.v2' op smem-layout = 'diagonal' is not supported (expected auto, padded or swizzled)

func.func @f(%q: tensor<1x64x4x128xbf16>, %k: tensor<1x64x2x128xbf16>, %lam: tensor<1x64x2xbf16>) -> tensor<1x64x2x128xbf16> {
  // expected-error @+1 {{stages = 1 is not supported (expected 2 to 8)}}
  %o = diffattn.v2 %q, %k, %k, %lam : (tensor<1x64x4x128xbf16>, tensor<1x64x2x128xbf16>, tensor<1x64x2x128xbf16>, tensor<1x64x2xbf16>) -> tensor<1x64x2x128xbf16>
  return %o : tensor<1x64x2x128xbf16>
}
