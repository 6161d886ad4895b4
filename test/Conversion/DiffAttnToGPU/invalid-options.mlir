// Strategy options out of range: a diagnostic on the op, no kernel.
// RUN: diffattn-opt %s --diffattn-outline-kernels --diffattn-to-mma-sync-kernels=stages=1 --verify-diagnostics
// RUN: not diffattn-opt %s --diffattn-outline-kernels --diffattn-to-mma-sync-kernels=warps=6 2>&1 | FileCheck %s --check-prefix=WARPS
// RUN: not diffattn-opt %s --diffattn-outline-kernels --diffattn-to-mma-sync-kernels=rescale-threshold=20 2>&1 | FileCheck %s --check-prefix=RESCALE
// RUN: not diffattn-opt %s --diffattn-outline-kernels "--diffattn-to-mma-sync-kernels=chip=sm_80 warps=8 block-k=128 stages=3" 2>&1 | FileCheck %s --check-prefix=SHARED
// RUN: not diffattn-opt %s --diffattn-outline-kernels "--diffattn-to-mma-sync-kernels=warps=8 block-k=128 stages=3" 2>&1 | FileCheck %s --check-prefix=SHARED90
// RUN: not diffattn-opt %s --diffattn-outline-kernels --diffattn-to-mma-sync-kernels=chip=sm_75 2>&1 | FileCheck %s --check-prefix=CHIP
// RUN: not diffattn-opt %s --diffattn-outline-kernels --diffattn-to-mma-sync-kernels=strategy=wgmma 2>&1 | FileCheck %s --check-prefix=STRATEGY
// RUN: not diffattn-opt %s --diffattn-outline-kernels --diffattn-gpu-pipeline=chip=sm_75 2>&1 | FileCheck %s --check-prefix=PIPECHIP
// RUN: not diffattn-opt %s --diffattn-outline-kernels --diffattn-gpu-pipeline=chip=sm_90a 2>&1 | FileCheck %s --check-prefix=PIPEHOPPER
// RUN: not diffattn-opt %s --diffattn-outline-kernels --diffattn-gpu-pipeline=strategy=magic 2>&1 | FileCheck %s --check-prefix=PIPESTRATEGY
// RUN: not diffattn-opt %s --diffattn-outline-kernels "--diffattn-gpu-pipeline=chip=sm_80 warps=6" 2>&1 | FileCheck %s --check-prefix=WARPS
// RUN: not diffattn-opt %s --diffattn-outline-kernels --diffattn-to-mma-sync-kernels=block-k=24 2>&1 | FileCheck %s --check-prefix=BLOCKK
// RUN: not diffattn-opt %s --diffattn-outline-kernels --diffattn-to-mma-sync-kernels=smem-layout=diagonal 2>&1 | FileCheck %s --check-prefix=LAYOUT
// RUN: not diffattn-opt %s --diffattn-outline-kernels --diffattn-to-mma-sync-kernels=combine-splits-per-step=0 2>&1 | FileCheck %s --check-prefix=PERSTEP

// WARPS: error: 'diffattn.v2' op warps = 6 is not supported (expected 4 or 8)
// RESCALE: error: 'diffattn.v2' op rescale-threshold = 2.000000e+01 is not supported (expected 0 to 16)
// SHARED: error: 'diffattn.v2' op needs {{[0-9]+}} bytes of shared memory per CTA with block-k = 128 and stages = 3 (at most 166912 on sm_80)
// SHARED90: error: 'diffattn.v2' op needs 278528 bytes of shared memory per CTA with block-k = 128 and stages = 3 (at most 232448 on sm_90)
// CHIP: error: unknown chip 'sm_75' (expected sm_80, sm_90, sm_90a, sm_100a)
// STRATEGY: error: strategy 'wgmma' is not the portable tensor-core strategy (mma_sync) that diffattn-to-mma-sync-kernels emits
// PIPECHIP: error: diffattn-gpu-pipeline: unknown chip 'sm_75' (expected sm_80, sm_90, sm_90a, sm_100a)
// PIPEHOPPER: error: the wgmma strategy of chip=sm_90a is not implemented yet; --target=sm_90 compiles the portable mma.sync strategy, whose cubin runs on Hopper
// PIPESTRATEGY: error: diffattn-gpu-pipeline: unknown strategy 'magic' (expected auto or mma_sync)
// BLOCKK: error: 'diffattn.v2' op block-k = 24 is not supported (expected a multiple of 16 up to 128)
// LAYOUT: error: 'diffattn.v2' op smem-layout = 'diagonal' is not supported (expected auto, padded or swizzled)
// PERSTEP: error: 'diffattn.v2' op combine-splits-per-step = 0 is not supported (expected 1 to 16)

func.func @f(%q: tensor<1x64x4x128xbf16>, %k: tensor<1x64x2x128xbf16>, %lam: tensor<1x64x2xbf16>) -> tensor<1x64x2x128xbf16> {
  // expected-error @+1 {{stages = 1 is not supported (expected 2 to 8)}}
  %o = diffattn.v2 %q, %k, %k, %lam : (tensor<1x64x4x128xbf16>, tensor<1x64x2x128xbf16>, tensor<1x64x2x128xbf16>, tensor<1x64x2xbf16>) -> tensor<1x64x2x128xbf16>
  return %o : tensor<1x64x2x128xbf16>
}
