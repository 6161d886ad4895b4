// RUN: diffattn-opt %s --split-input-file --diffattn-outline-kernels --diffattn-to-mma-sync-kernels | FileCheck %s
// RUN: diffattn-opt %s --split-input-file --diffattn-outline-kernels --diffattn-to-mma-sync-kernels=smem-layout=swizzled | FileCheck %s --check-prefix=SWIZZLED
// RUN: diffattn-opt %s --split-input-file --diffattn-outline-kernels --diffattn-to-mma-sync-kernels=smem-layout=padded | FileCheck %s --check-prefix=PADDED
// RUN: diffattn-opt %s --split-input-file --diffattn-outline-kernels --diffattn-to-mma-sync-kernels=l2-prefetch=true | FileCheck %s --check-prefix=L2

// The portable strategy: one gpu.func per kernel, 128 threads, dynamic
// shared memory for Q (both heads), two K stages and two V stages, each row
// padded by 16 bytes; cp.async copies (zero-filling past the key length) in
// two commit groups; ldmatrix
// (transposed for V) feeding bf16 mma.sync m16n8k16 with f32 accumulation;
// exp2 on the SFU; lazy rescaling (a warp vote on whether any score grew
// past the row offsets by the threshold; quad shuffles for the row max only
// then); the launch rule
// on the kernel's manifest entry.

// CHECK-LABEL: gpu.module @diffattn_v2_bf16_h8_kv2_d64_dv64_causal_module
// CHECK:       gpu.func @diffattn_v2_bf16_h8_kv2_d64_dv64_causal(
// CHECK-SAME:    %{{.*}}: memref<?xbf16>, %{{.*}}: memref<?xbf16>, %{{.*}}: memref<?xbf16>, %{{.*}}: memref<?xbf16>, %{{.*}}: memref<?xbf16>, %{{.*}}: index, %{{.*}}: index, %{{.*}}: index) kernel
// CHECK-SAME:    diffattn.kernel = {{{.*}}launch = {block = [128, 1, 1], block_k = 64 : i64, block_q = 64 : i64, dynamic_shared_memory = 55296 : i64, function = "diffattn_v2_bf16_h8_kv2_d64_dv64_causal", grid = [{by = 64 : i64, ceil_div = "Sq", mul = 2 : i64}, 2, {by = 1 : i64, ceil_div = "B", mul = 1 : i64}], kind = "cuda"
// CHECK-SAME:    known_block_size = array<i32: 128, 1, 1>
// CHECK:         gpu.dynamic_shared_memory : memref<?xi8, #gpu.address_space<workgroup>>
// CHECK:         memref.view {{.*}} to memref<2x64x72xbf16, #gpu.address_space<workgroup>>
// CHECK-NOT:     arith.xori
// CHECK:         nvgpu.device_async_copy {{.*}}, 8, %{{.*}} {bypassL1} : memref<?xbf16> to memref<2x64x72xbf16, #gpu.address_space<workgroup>>
// CHECK:         nvvm.cp.async.commit.group
// CHECK:         scf.for
// CHECK:           nvvm.cp.async.commit.group
// CHECK:           nvvm.cp.async.wait.group 1
// CHECK:           gpu.barrier
// CHECK:           nvgpu.ldmatrix {{.*}} {numTiles = 4 : i32, transpose = false}
// CHECK:           nvvm.mma.sync {{.*}} {layoutA = #nvvm.mma_layout<row>, layoutB = #nvvm.mma_layout<col>, multiplicandAPtxType = #nvvm.mma_type<bf16>, multiplicandBPtxType = #nvvm.mma_type<bf16>, shape = #nvvm.shape<m = 16, n = 8, k = 16>} : (i32, i32, f32) -> !llvm.struct<(f32, f32, f32, f32)>
// CHECK:           scf.if
// CHECK:             arith.cmpi sle
// Lazy rescaling: each thread compares its own scores with the row offsets
// (no shuffle); only when the warp's vote says some grew past the threshold
// does the quad reduce the row max and rescale.
// CHECK-NOT:       gpu.shuffle
// CHECK:           nvvm.vote.sync  any
// CHECK-NEXT:      scf.if
// CHECK:             gpu.shuffle  xor
// CHECK:           llvm.call_intrinsic "llvm.nvvm.ex2.approx.ftz.f32"
// CHECK:           nvgpu.ldmatrix {{.*}} {numTiles = 4 : i32, transpose = true}
// CHECK:           gpu.barrier
// CHECK:         nvvm.cp.async.wait.group 0
// CHECK:         vector.store
// CHECK-NOT:   func.func
// smem-layout overrides the default layout of either kind of kernel.
// SWIZZLED-LABEL: gpu.func @diffattn_v2_bf16_h8_kv2_d64_dv64_causal(
// SWIZZLED-SAME:    dynamic_shared_memory = 49152 : i64
// SWIZZLED:         memref.view {{.*}} to memref<2x64x64xbf16, #gpu.address_space<workgroup>>
// SWIZZLED:         arith.xori
// SWIZZLED:         nvgpu.device_async_copy
// L2-LABEL:       gpu.func @diffattn_v2_bf16_h8_kv2_d64_dv64_causal(
// L2-NOT:           nvvm.inline_ptx
// L2-LABEL:       gpu.func @diffattn_v2_f16_h8_kv2_d128_dv128_lamf32_kvlen(
// L2:               scf.for
// L2:                 nvvm.inline_ptx "cp.async.cg.shared.global.L2::128B [$0], [$1], 16;" ro(%{{.*}}, %{{.*}} : !llvm.ptr<3>, !llvm.ptr<1>)
// PADDED-LABEL:   gpu.func @diffattn_v2_f16_h8_kv2_d128_dv128_lamf32_kvlen(
// PADDED-SAME:      dynamic_shared_memory = 108800 : i64
// PADDED:           memref.view {{.*}} to memref<1x16x136xf16, #gpu.address_space<workgroup>>
// PADDED-NOT:       arith.xori
// PADDED:           nvgpu.device_async_copy
func.func @v2(%q: tensor<2x100x8x64xbf16>, %k: tensor<2x100x2x64xbf16>,
              %v: tensor<2x100x2x64xbf16>, %lam: tensor<2x100x4xbf16>) -> tensor<2x100x4x64xbf16> {
  %o = diffattn.v2 %q, %k, %v, %lam {causal}
      : (tensor<2x100x8x64xbf16>, tensor<2x100x2x64xbf16>, tensor<2x100x2x64xbf16>, tensor<2x100x4xbf16>)
      -> tensor<2x100x4x64xbf16>
  return %o : tensor<2x100x4x64xbf16>
}

// -----

// f16 operands are vector<2xf16> registers of mma.sync. The decode form
// (kv_len) gets split-KV kernels: the main kernel takes a workspace, decodes
// (split, row block) from block x and clamps the key range to its split.
// Its rows are (query head, query row) couples: 16 of the group's 4 query
// heads x Sq. Its 4 warps share the rows and take the key blocks in turn, each
// with a 3-stage pipeline of its own (per-warp K/V tiles, warp barriers);
// after the loop they merge their states through shared memory (over the
// stages) and write the CTA's partial states; the combine kernel (Dv
// threads per row) merges the splits and applies the epilogue. The launch
// has two stages and a workspace rule; the keys per split are a kernel
// argument the runtime picks (a multiple of 64 keys, aiming at 132 CTAs).
// CHECK-LABEL: gpu.module @diffattn_v2_f16_h8_kv2_d128_dv128_lamf32_kvlen_module
// CHECK:       gpu.func @diffattn_v2_f16_h8_kv2_d128_dv128_lamf32_kvlen({{.*}}memref<?xf32>, %{{.*}}: memref<?xi32>, %{{.*}}: memref<?xf16>, %[[WS:.*]]: memref<?xf32>, %{{.*}}: index, %{{.*}}: index, %{{.*}}: index, %[[SPLIT:.*]]: index) kernel
// CHECK-SAME:    launch = {block_k = 16 : i64, block_q = 16 : i64, kind = "cuda", pipeline_stages = 3 : i64, split = {multiple_of = 64 : i64, target_ctas = 132 : i64}, stages = [{block = [128, 1, 1], dynamic_shared_memory = 102400 : i64, function = "diffattn_v2_f16_h8_kv2_d128_dv128_lamf32_kvlen", grid = [{product = [{by = 16 : i64, ceil_div = "Sq", mul = 4 : i64}, {by = 1 : i64, ceil_div = "splits", mul = 1 : i64}]}, 2,
// CHECK-SAME:    {arg = "Sk", field = "value"}, {arg = "split_keys", field = "value"}]
// CHECK-SAME:    {block = [128, 1, 1], dynamic_shared_memory = 0 : i64, function = "diffattn_v2_f16_h8_kv2_d128_dv128_lamf32_kvlen_combine", grid = [{by = 1 : i64, ceil_div = "Sq", mul = 2 : i64}, 2,
// The combine stage is skipped for one split when a CTA holds the group's
// G x Sq rows (G = 4: Sq <= 4).
// CHECK-SAME:    skip_when = {Sq = 4 : i64, splits = 1 : i64}
// CHECK-SAME:    workspace = {dtype = "f32", product = [{by = 1 : i64, ceil_div = "B", mul = 1 : i64}, {by = 1 : i64, ceil_div = "splits", mul = 1 : i64}, {by = 1 : i64, ceil_div = "Sq", mul = 1 : i64}], times = 1040 : i64}
// CHECK:         %[[BX:.*]] = gpu.block_id  x
// CHECK:         %[[B:.*]] = gpu.block_id  z
// CHECK:         arith.divui %[[BX]]
// CHECK:         arith.divui %{{.*}}, %[[SPLIT]]
// CHECK:         memref.load %{{.*}}[%[[B]]] : memref<?xi32>
// Its tiles are unpadded, their 16-byte chunks XOR-swizzled by the row
// (chunk c of row r at c ^ (r % 8)), so that each 8 threads' cp.async
// destinations are one 128-byte line.
// CHECK:         %[[SQ:.*]] = memref.view {{.*}} to memref<1x16x128xf16, #gpu.address_space<workgroup>>
// CHECK:         memref.view {{.*}} to memref<4x3x16x128xf16, #gpu.address_space<workgroup>>
// CHECK:         %[[ROW:.*]] = arith.divui %{{.*}}, %c16
// CHECK:         %[[COL:.*]] = arith.muli %{{.*}}, %c8
// CHECK:         %[[ROWMOD:.*]] = arith.andi %[[ROW]], %c7
// CHECK:         %[[SWZ:.*]] = arith.muli %[[ROWMOD]], %c8
// CHECK:         %[[SCOL:.*]] = arith.xori %[[COL]], %[[SWZ]]
// CHECK:         nvgpu.device_async_copy %{{.*}}[%{{.*}}], %[[SQ]][%c0{{.*}}, %[[ROW]], %[[SCOL]]], 8
// CHECK:         nvvm.cp.async.wait.group 2
// CHECK:         gpu.barrier
// The rows' Q fragments are loaded once and stay in registers (D / 16 = 8).
// CHECK-COUNT-8: nvgpu.ldmatrix {{.*}} transpose = false
// CHECK-NOT:     nvgpu.ldmatrix
// CHECK:         scf.for
// Whole K/V tiles: plain cp.async (l2-prefetch=true: with the L2::128B
// qualifier, the strategy's only inline PTX).
// CHECK:           nvgpu.device_async_copy {{.*}} to memref<4x3x16x128xf16, #gpu.address_space<workgroup>>
// CHECK-NOT:       nvvm.inline_ptx
// CHECK:           nvvm.cp.async.wait.group 2
// CHECK:           nvvm.bar.warp.sync
// CHECK:           nvvm.mma.sync {{.*}} : (vector<2xf16>, vector<2xf16>, f32) -> !llvm.struct<(f32, f32, f32, f32)>
// The block's V fragments (Dv / 16 = 8) are loaded before the softmax.
// CHECK-COUNT-8:   nvgpu.ldmatrix {{.*}} transpose = true
// CHECK-NOT:       nvgpu.ldmatrix
// CHECK:           nvvm.vote.sync  any
// CHECK:           nvvm.mma.sync
// CHECK:           nvvm.bar.warp.sync
// CHECK:         nvvm.cp.async.wait.group 0
// CHECK:         gpu.barrier
// CHECK:         memref.view {{.*}} to memref<4x1x16x128xf32, #gpu.address_space<workgroup>>
// CHECK:         gpu.barrier
// Same condition in the kernel: one split and Sq <= 4 write the output
// (normalised, epilogue applied); otherwise the partial state goes to the
// workspace.
// CHECK:         %[[SQOK:.*]] = arith.cmpi ule, %{{.*}}, %c4
// CHECK:         %[[ONE:.*]] = arith.cmpi eq, %{{.*}}, %c1
// CHECK:         %[[DIRECT:.*]] = arith.andi %[[ONE]], %[[SQOK]] : i1
// CHECK:         scf.if %[[DIRECT]] {
// CHECK:           scf.for
// CHECK-NOT:         %[[WS]]
// CHECK:             memref.store {{.*}} : memref<?xf16>
// CHECK:         } else {
// CHECK:           scf.for
// CHECK:             memref.store %{{.*}}, %[[WS]]
// CHECK-NOT:     memref<?xf16>
// CHECK:         gpu.return
// CHECK:       gpu.func @diffattn_v2_f16_h8_kv2_d128_dv128_lamf32_kvlen_combine(%{{.*}}: memref<?xf32>, %{{.*}}: memref<?xf32>, %{{.*}}: memref<?xf16>, %{{.*}}: index, %{{.*}}: index, %{{.*}}: index, %{{.*}}: index) kernel attributes {known_block_size = array<i32: 128, 1, 1>}
// The combine loads lam first, then merges the splits' states of both heads
// in one pass (online: running max, rescaled sums), eight splits per step:
// all 8 x 6 loads of a step come before its arithmetic (one wait on memory
// per step); splits past the last read the last one (minsi) and weigh 0.
// CHECK:         memref.load {{.*}} : memref<?xf32>
// CHECK:         scf.for %{{.*}} = %c0{{.*}} to %{{.*}} step %c8
// CHECK-COUNT-48:  memref.load %{{.*}} : memref<?xf32>
// CHECK-NOT:       memref.load
// CHECK:           arith.maxnumf
// CHECK:           llvm.call_intrinsic "llvm.nvvm.ex2.approx.ftz.f32"
// CHECK:           arith.maxnumf
// CHECK:           scf.yield
// CHECK-NOT:     scf.for
// CHECK:         memref.store {{.*}} : memref<?xf16>
func.func @decode(%q: tensor<4x1x8x128xf16>, %k: tensor<4x512x2x128xf16>,
                  %v: tensor<4x512x2x128xf16>, %lam: tensor<4x1x4xf32>,
                  %len: tensor<4xi32>) -> tensor<4x1x4x128xf16> {
  %o = diffattn.v2 %q, %k, %v, %lam kv_len(%len)
      : (tensor<4x1x8x128xf16>, tensor<4x512x2x128xf16>, tensor<4x512x2x128xf16>, tensor<4x1x4xf32>, tensor<4xi32>)
      -> tensor<4x1x4x128xf16>
  return %o : tensor<4x1x4x128xf16>
}

// -----

// D = 128 without a causal-like mask: 8 warps (128 rows) and 64 keys per
// block by default.
// CHECK-LABEL: gpu.module @diffattn_v2_bf16_h8_kv2_d128_dv128_module
// CHECK:       launch = {block = [256, 1, 1], block_k = 64 : i64, block_q = 128 : i64
// CHECK-SAME:    grid = [{by = 128 : i64, ceil_div = "Sq", mul = 2 : i64}
func.func @wide(%q: tensor<1x300x8x128xbf16>, %k: tensor<1x300x2x128xbf16>,
                %v: tensor<1x300x2x128xbf16>, %lam: tensor<1x300x4xbf16>) -> tensor<1x300x4x128xbf16> {
  %o = diffattn.v2 %q, %k, %v, %lam
      : (tensor<1x300x8x128xbf16>, tensor<1x300x2x128xbf16>, tensor<1x300x2x128xbf16>, tensor<1x300x4xbf16>)
      -> tensor<1x300x4x128xbf16>
  return %o : tensor<1x300x4x128xbf16>
}

// -----

// A fixed split (split-keys) is recorded for the runtime instead.
// RUN: diffattn-opt %s --split-input-file --diffattn-outline-kernels --diffattn-to-mma-sync-kernels=split-keys=512 | FileCheck %s --check-prefix=FIXED
// FIXED: split = {fixed = 512 : i64}
func.func @fixed_split(%q: tensor<4x1x8x64xbf16>, %k: tensor<4x512x2x64xbf16>,
                       %v: tensor<4x512x2x64xbf16>, %lam: tensor<4x1x4xbf16>,
                       %len: tensor<4xi32>) -> tensor<4x1x4x64xbf16> {
  %o = diffattn.v2 %q, %k, %v, %lam kv_len(%len)
      : (tensor<4x1x8x64xbf16>, tensor<4x512x2x64xbf16>, tensor<4x512x2x64xbf16>, tensor<4x1x4xbf16>, tensor<4xi32>)
      -> tensor<4x1x4x64xbf16>
  return %o : tensor<4x1x4x64xbf16>
}
