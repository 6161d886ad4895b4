// Strategy options out of range: a diagnostic on the op, no kernel.
// RUN: diffattn-opt %s --diffattn-outline-kernels --diffattn-to-mma-sync-kernels=stages=1 --verify-diagnostics
// RUN: not diffattn-opt %s --diffattn-outline-kernels --diffattn-to-mma-sync-kernels=warps=6 2>&1 | FileCheck %s --check-prefix=WARPS
// RUN: not diffattn-opt %s --diffattn-outline-kernels --diffattn-to-mma-sync-kernels=rescale-threshold=20 2>&1 | FileCheck %s --check-prefix=RESCALE
// RUN: not diffattn-opt %s --diffattn-outline-kernels --diffattn-to-mma-sync-kernels=exp2-emulation=9 2>&1 | FileCheck %s --check-prefix=EXP2
// RUN: not diffattn-opt %s --diffattn-outline-kernels "--diffattn-gpu-pipeline=chip=sm_90a exp2-emulation=-1" 2>&1 | FileCheck %s --check-prefix=WGEXP2
// RUN: not diffattn-opt %s --diffattn-outline-kernels "--diffattn-to-mma-sync-kernels=chip=sm_80 warps=8 block-k=128 stages=3" 2>&1 | FileCheck %s --check-prefix=SHARED
// RUN: not diffattn-opt %s --diffattn-outline-kernels "--diffattn-to-mma-sync-kernels=warps=8 block-k=128 stages=3" 2>&1 | FileCheck %s --check-prefix=SHARED90
// RUN: not diffattn-opt %s --diffattn-outline-kernels --diffattn-to-mma-sync-kernels=chip=sm_75 2>&1 | FileCheck %s --check-prefix=CHIP
// RUN: not diffattn-opt %s --diffattn-outline-kernels --diffattn-to-mma-sync-kernels=strategy=wgmma 2>&1 | FileCheck %s --check-prefix=STRATEGY
// RUN: not diffattn-opt %s --diffattn-outline-kernels --diffattn-gpu-pipeline=chip=sm_75 2>&1 | FileCheck %s --check-prefix=PIPECHIP
// RUN: not diffattn-opt %s --diffattn-outline-kernels "--diffattn-gpu-pipeline=chip=sm_100a strategy=tcgen05" 2>&1 | FileCheck %s --check-prefix=PIPEBLACKWELL
// RUN: not diffattn-opt %s --diffattn-outline-kernels --diffattn-to-wgmma-kernels=chip=sm_90 2>&1 | FileCheck %s --check-prefix=WGCHIP
// RUN: not diffattn-opt %s --diffattn-outline-kernels "--diffattn-gpu-pipeline=chip=sm_90 strategy=wgmma" 2>&1 | FileCheck %s --check-prefix=WGCHIP
// RUN: not diffattn-opt %s --diffattn-outline-kernels "--diffattn-to-wgmma-kernels=chip=sm_90a strategy=mma_sync" 2>&1 | FileCheck %s --check-prefix=WGSTRATEGY
// RUN: not diffattn-opt %s --diffattn-outline-kernels "--diffattn-gpu-pipeline=chip=sm_90a stages=4" 2>&1 | FileCheck %s --check-prefix=WGSTAGES
// RUN: not diffattn-opt %s --diffattn-outline-kernels "--diffattn-gpu-pipeline=chip=sm_90a stages=2 warp-specialize=false" 2>&1 | FileCheck %s --check-prefix=WGSTAGES2
// RUN: not diffattn-opt %s --diffattn-outline-kernels "--diffattn-gpu-pipeline=chip=sm_90a warps=4 warp-specialize=false" 2>&1 | FileCheck %s --check-prefix=WGWARPS
// RUN: not diffattn-opt %s --diffattn-outline-kernels "--diffattn-gpu-pipeline=chip=sm_90a persistent=true warp-specialize=false" 2>&1 | FileCheck %s --check-prefix=WGPERSISTENT
// RUN: not diffattn-opt %s --diffattn-outline-kernels "--diffattn-gpu-pipeline=chip=sm_90a warps=8 warp-specialize=true" 2>&1 | FileCheck %s --check-prefix=WGWARPSWS
// RUN: not diffattn-opt %s --diffattn-outline-kernels "--diffattn-gpu-pipeline=chip=sm_90a block-k=24" 2>&1 | FileCheck %s --check-prefix=WGBLOCKK
// RUN: not diffattn-opt %s --diffattn-outline-kernels "--diffattn-gpu-pipeline=chip=sm_90a smem-layout=padded" 2>&1 | FileCheck %s --check-prefix=WGLAYOUT
// RUN: not diffattn-opt %s --diffattn-outline-kernels "--diffattn-gpu-pipeline=chip=sm_90a warp-specialize=maybe" 2>&1 | FileCheck %s --check-prefix=WGSPEC
// RUN: not diffattn-opt %s --diffattn-outline-kernels "--diffattn-gpu-pipeline=chip=sm_90a block-k=256" 2>&1 | FileCheck %s --check-prefix=WGSHARED
// RUN: not diffattn-opt %s --diffattn-outline-kernels "--diffattn-gpu-pipeline=chip=sm_90a q-first=yes" 2>&1 | FileCheck %s --check-prefix=WGQFIRST
// RUN: not diffattn-opt %s --diffattn-outline-kernels "--diffattn-gpu-pipeline=chip=sm_90a cluster-size=2 tile-scheduler=static" 2>&1 | FileCheck %s --check-prefix=WGCLUSTERPAIRS
// RUN: not diffattn-opt %s --diffattn-outline-kernels "--diffattn-gpu-pipeline=chip=sm_90a consumer-registers=244" 2>&1 | FileCheck %s --check-prefix=WGREGS
// RUN: not diffattn-opt %s --diffattn-outline-kernels "--diffattn-gpu-pipeline=chip=sm_90a consumer-registers=160" 2>&1 | FileCheck %s --check-prefix=WGREGS160
// RUN: not diffattn-opt %s --diffattn-outline-kernels --diffattn-gpu-pipeline=strategy=magic 2>&1 | FileCheck %s --check-prefix=PIPESTRATEGY
// RUN: not diffattn-opt %s --diffattn-outline-kernels "--diffattn-gpu-pipeline=chip=sm_80 warps=6" 2>&1 | FileCheck %s --check-prefix=WARPS
// RUN: not diffattn-opt %s --diffattn-outline-kernels --diffattn-to-mma-sync-kernels=block-k=24 2>&1 | FileCheck %s --check-prefix=BLOCKK
// RUN: not diffattn-opt %s --diffattn-outline-kernels --diffattn-to-mma-sync-kernels=smem-layout=diagonal 2>&1 | FileCheck %s --check-prefix=LAYOUT
// RUN: not diffattn-opt %s --diffattn-outline-kernels --diffattn-to-mma-sync-kernels=combine-splits-per-step=0 2>&1 | FileCheck %s --check-prefix=PERSTEP

// WARPS: error: 'diffattn.v2' op warps = 6 is not supported (expected 4 or 8)
// RESCALE: error: 'diffattn.v2' op rescale-threshold = 2.000000e+01 is not supported (expected 0 to 16)
// EXP2: error: 'diffattn.v2' op exp2-emulation = 9 is not supported (expected 0 to 8 of every 8 slices)
// WGEXP2: error: 'diffattn.v2' op exp2-emulation = -1 is not supported (expected 0 to 8 of every 8 slices)
// SHARED: error: 'diffattn.v2' op needs {{[0-9]+}} bytes of shared memory per CTA with block-k = 128 and stages = 3 (at most 166912 on sm_80)
// SHARED90: error: 'diffattn.v2' op needs 278528 bytes of shared memory per CTA with block-k = 128 and stages = 3 (at most 232448 on sm_90)
// CHIP: error: unknown chip 'sm_75' (expected sm_80, sm_90, sm_90a, sm_100a)
// STRATEGY: error: strategy 'wgmma' is not the portable tensor-core strategy (mma_sync) that diffattn-to-mma-sync-kernels emits
// PIPECHIP: error: diffattn-gpu-pipeline: unknown chip 'sm_75' (expected sm_80, sm_90, sm_90a, sm_100a)
// PIPEBLACKWELL: error: the tcgen05 strategy of chip=sm_100a is not implemented yet; strategy=mma_sync compiles the portable strategy, whose cubin runs on Blackwell
// PIPESTRATEGY: error: diffattn-gpu-pipeline: unknown strategy 'magic' (expected auto, mma_sync or wgmma)
// WGCHIP: error: the wgmma strategy needs chip=sm_90a (wgmma and its descriptors are sm_90a instructions), got chip=sm_90
// WGSTRATEGY: error: strategy 'mma_sync' is not the Hopper strategy (wgmma) that diffattn-to-wgmma-kernels emits
// WGSTAGES: error: 'diffattn.v2' op stages = 4 is not supported by the wgmma strategy (expected 3, or 2 with warp specialisation)
// WGSTAGES2: error: 'diffattn.v2' op stages = 2 is not supported by the wgmma strategy (expected 3, or 2 with warp specialisation)
// WGPERSISTENT: error: 'diffattn.v2' op persistent = true needs warp specialisation (the uniform form launches one CTA per tile)
// WGWARPS: error: 'diffattn.v2' op warps = 4 is not supported by the wgmma strategy (its CTA is two warpgroups: 8)
// WGWARPSWS: error: 'diffattn.v2' op warps = 8 is not supported by the wgmma strategy (its CTA is a producer and two consumer warpgroups: 12)
// WGBLOCKK: error: 'diffattn.v2' op block-k = 24 is not supported by the wgmma strategy (expected a multiple of 16 up to 256)
// WGLAYOUT: error: 'diffattn.v2' op smem-layout = 'padded' is not supported by the wgmma strategy (its tiles are in wgmma's 128-byte swizzled layout: auto or swizzled)
// WGSPEC: error: 'diffattn.v2' op warp-specialize = 'maybe' is not supported (expected auto, true or false)
// WGQFIRST: error: 'diffattn.v2' op q-first = 'yes' is not supported (expected auto, true or false)
// WGCLUSTERPAIRS: error: 'diffattn.v2' op cluster-size = 2 needs an even number of pairs per KV group (the cluster's CTAs take its two halves), got 1
// WGREGS: error: 'diffattn.v2' op consumer-registers = 244 is not supported (expected a multiple of 8 from 168 to 240, or 0 for the default)
// WGREGS160: error: 'diffattn.v2' op consumer-registers = 160 is not supported
// WGSHARED: error: 'diffattn.v2' op needs {{[0-9]+}} bytes of shared memory per CTA with block-k = 256 and stages = 2 (at most 232448 on sm_90a)
// BLOCKK: error: 'diffattn.v2' op block-k = 24 is not supported (expected a multiple of 16 up to 128)
// LAYOUT: error: 'diffattn.v2' op smem-layout = 'diagonal' is not supported (expected auto, padded or swizzled)
// PERSTEP: error: 'diffattn.v2' op combine-splits-per-step = 0 is not supported (expected 1 to 16)

func.func @f(%q: tensor<1x64x4x128xbf16>, %k: tensor<1x64x2x128xbf16>, %lam: tensor<1x64x2xbf16>) -> tensor<1x64x2x128xbf16> {
  // expected-error @+1 {{stages = 1 is not supported (expected 2 to 8)}}
  %o = diffattn.v2 %q, %k, %k, %lam : (tensor<1x64x4x128xbf16>, tensor<1x64x2x128xbf16>, tensor<1x64x2x128xbf16>, tensor<1x64x2xbf16>) -> tensor<1x64x2x128xbf16>
  return %o : tensor<1x64x2x128xbf16>
}
