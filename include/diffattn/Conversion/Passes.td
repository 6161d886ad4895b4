//===- Passes.td - diffattn conversion passes --------------*- tablegen -*-===//
//
// Conversions from the diffattn dialect to GPU kernels, one pass per
// strategy.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_CONVERSION_PASSES_TD
#define DIFFATTN_CONVERSION_PASSES_TD

include "mlir/Pass/PassBase.td"

// The options of every GPU strategy, declared once: each strategy pass and
// diffattn-gpu-pipeline take this list (the pipeline forwards its options
// to the strategy it picks), and diffattn-compile passes its
// --gpu-options string through it.
// The dialects GPU strategies emit.
defvar DiffAttnGPUKernelDialects = [
  "::mlir::arith::ArithDialect", "::mlir::cf::ControlFlowDialect",
  "::mlir::gpu::GPUDialect", "::mlir::LLVM::LLVMDialect",
  "::mlir::math::MathDialect", "::mlir::memref::MemRefDialect",
  "::mlir::NVVM::NVVMDialect", "::mlir::nvgpu::NVGPUDialect",
  "::mlir::scf::SCFDialect", "::mlir::vector::VectorDialect"
];

defvar DiffAttnGPUStrategyOptions = [
    Option<"chip", "chip", "std::string", /*default=*/"\"sm_90\"",
           "GPU target whose limits and defaults apply (the chip table, "
           "include/diffattn/Conversion/DiffAttnToGPU/Chips.h): sm_80, "
           "sm_90, sm_90a or sm_100a">,
    Option<"strategy", "strategy", "std::string", /*default=*/"\"auto\"",
           "GPU strategy: auto (the chip's: mma_sync on sm_80, sm_90 and, "
           "until the tcgen05 strategy exists, sm_100a; wgmma on sm_90a), "
           "mma_sync (the portable tensor-core strategy, any chip) or wgmma "
           "(Hopper's warpgroup MMA, sm_90a only)">,
    Option<"blockK", "block-k", "int64_t", /*default=*/"0",
           "Keys per block (0: the default: 64 for D = 64; for D = 128, 32 "
           "with a causal-like mask, else 64; 16 per warp for split-KV; "
           "wgmma: 192 for D = 64, else 128). Applies to the forward "
           "kernels; diffattn.v2_backward's tiles are fixed "
           "(docs/training.md)">,
    Option<"stages", "stages", "int64_t", /*default=*/"0",
           "K/V blocks per cp.async pipeline, stages - 1 of them in flight "
           "(0: the default: 2 for row blocks, 3 per warp for split-KV; "
           "wgmma: 2 or 3 K/V stages, 2 for D = 128 warp-specialised, else "
           "3). Applies to the forward kernels, as block-k does">,
    Option<"warps", "warps", "int64_t", /*default=*/"0",
           "Warps per CTA, 4 or 8 (0: the default: 8 for D = 128 without a "
           "causal-like mask, else 4); a row-block CTA holds 16 rows per "
           "warp. Applies to the forward kernels, as block-k does">,
    Option<"rescaleThreshold", "rescale-threshold", "double",
           /*default=*/"8",
           "Lazy softmax rescaling: move a row's offset (and rescale its "
           "accumulators) only when a probability would exceed "
           "2^threshold, 0 to 16 (0: with every block)">,
    Option<"exp2Emulation", "exp2-emulation", "int64_t", /*default=*/"0",
           "Forward kernels: of every 8 of a thread's 8-column slices of a "
           "block's scores, how many take their probabilities' exp2 from a "
           "degree-3 polynomial on the FMA pipe instead of the SFU's "
           "ex2.approx, 0 to 8 (FlashAttention-4's software exponential: "
           "the SFU returns 16 exponentials per clock per SM, and at "
           "D = 64 wgmma makes 16 scores per clock; relative error at most "
           "1.1e-4, below bf16's and f16's rounding). 0 by default: on an "
           "H200 every nonzero value measured slower (docs/performance.md, "
           "Hopper run 42: at D = 128 1 of 8 0.94-0.97x of 0, 2 of 8 "
           "0.93-0.95x; at D = 64 0.95-0.99x): the wgmma kernel waits on "
           "the softmax's instructions, not on the SFU">,
    Option<"l2Prefetch", "l2-prefetch", "bool", /*default=*/"false",
           "Split-KV kernels: copy whole K/V tiles with cp.async's "
           "L2::128B qualifier (the 128-byte line around each 16-byte chunk "
           "may be fetched into L2 at once; inline PTX, as no NVVM op "
           "carries it). Off by default: with swizzled tiles it measured "
           "no faster than plain cp.async">,
    Option<"smemLayout", "smem-layout", "std::string", /*default=*/"\"auto\"",
           "Q/K/V tiles in shared memory: padded (rows padded by 16 bytes), "
           "swizzled (unpadded, 16-byte chunks XOR-swizzled by the row) or "
           "auto (swizzled for split-KV, whose cp.async stream a padded "
           "destination slows; padded for row blocks, whose ldmatrix "
           "addresses then fold into immediates)">,
    Option<"programmaticLaunch", "programmatic-launch", "bool",
           /*default=*/"true",
           "Split-KV: launch the combine kernel as a programmatic dependent "
           "of the split kernel (griddepcontrol), where the chip has it "
           "(sm_90 and later; ignored on sm_80): it may start while the "
           "split kernel's CTAs finish and waits for their results itself. "
           "+0.7% decode bandwidth on an H200. Likewise the wgmma kernel "
           "after the dynamic tile scheduler's counter reset">,
    Option<"warpSpecialize", "warp-specialize", "std::string",
           /*default=*/"\"auto\"",
           "wgmma strategy: true (a producer warpgroup copies the K/V blocks "
           "and hands them to the two consumer warpgroups through "
           "mbarriers, with registers moved to the consumers by "
           "setmaxnreg), false (every thread copies, CTA barriers order "
           "the stages) or auto (true: with ping-pong, as fast or faster "
           "on every measured shape, docs/performance.md)">,
    Option<"pingPong", "ping-pong", "bool", /*default=*/"true",
           "wgmma strategy, warp-specialised: the two consumer warpgroups "
           "take turns issuing their products (named barriers), so that one "
           "warpgroup's softmax overlaps the other's products "
           "(FlashAttention-3's ping-pong schedule)">,
    Option<"pingPongEdges", "ping-pong-edges", "bool", /*default=*/"false",
           "wgmma strategy, ping-pong: a tile's first S = Q K_0^T and its "
           "last P V take a turn too. false: only the key loop's steps (S_j "
           "with P_{j-1} V_{j-1}) do, as in FlashAttention-3's mainloop "
           "with intra-warpgroup overlap, so that a warpgroup may start its "
           "next tile, or finish this one, while the other is in its "
           "epilogue (both warpgroups of a tile take the same number of "
           "turns either way)">,
    Option<"releaseArrivals", "release-arrivals", "std::string",
           /*default=*/"\"warpgroup\"",
           "wgmma strategy, warp-specialised: which consumer threads arrive "
           "on a K/V stage's empty mbarrier once the product that read the "
           "tile has landed. thread: all 256 (the mbarrier counts 256 "
           "arrivals); warp: lane 0 of each of the 8 consumer warps (after "
           "the warp's own wgmma.wait_group); warpgroup: one thread of each "
           "consumer warpgroup, as CUTLASS's PipelineTmaAsync consumer "
           "release (FlashAttention-3). H200, Hopper runs 51-53: the "
           "three measure level (run 53, shuffled rounds: thread "
           "0.99-1.00x warpgroup); warpgroup, FA3's form, is the "
           "default (docs/performance.md)">,
    Option<"overlapTiles", "overlap-tiles", "std::string",
           /*default=*/"\"false\"",
           "wgmma strategy, warp-specialised, dynamic tile scheduler, two Q "
           "buffers: true: each consumer warpgroup issues the next tile's "
           "first S = Q K_0^T before this tile's last P V and runs that "
           "block's softmax while the P V runs, as the key loop overlaps "
           "S_j with P_{j-1} V_{j-1} (cross-tile pipelining); the next tile "
           "starts with its first block's probabilities in registers. "
           "false: a tile's first S waits for the previous tile's epilogue. "
           "auto: true where the kernel has what it needs. false by default: "
           "H200, Hopper runs 80 and 83, 0.97-0.99x the default at D = 128 "
           "(docs/performance.md, docs/gpu-strategies.md)">,
    Option<"trimLastPV", "trim-last-pv", "bool", /*default=*/"true",
           "wgmma strategy: a tile's last P V issues only the first half of "
           "its k16 steps where no row of the tile sees the keys of the "
           "block's second half (their probabilities are exactly 0): with "
           "a causal mask and 64-row tiles, every other tile's last block "
           "at 128-key blocks, one tile in three at 192 (exact; level on "
           "H200, Hopper runs 52-53). Under overlap-tiles, only where the "
           "last P V issues alone (no next tile)">,
    Option<"tma", "tma", "bool", /*default=*/"true",
           "wgmma strategy, warp-specialised: one producer thread loads the "
           "K/V tiles with TMA (cp.async.bulk.tensor into the 128-byte "
           "swizzled tiles, completing on the stage's mbarrier; packed "
           "sequences through one map over the packed tensor); the runtime "
           "encodes the tensor maps and passes them by value (false: the "
           "producer warpgroup copies them with cp.async)">,
    Option<"persistent", "persistent", "std::string", /*default=*/"\"auto\"",
           "wgmma strategy, warp-specialised: true: launch at most one CTA "
           "per SM of the target's reference GPU (132 on sm_90a), each "
           "walking tiles (see tile-scheduler), its producer loading the "
           "next tile's first blocks and, into a second Q buffer where it "
           "fits, its Q while the consumers finish the current one; false: "
           "one CTA per tile; auto: true for batched sequences, false for "
           "packed ones (diffattn.v2_varlen) and without warp "
           "specialisation (H200 measurements: docs/performance.md, Hopper "
           "runs 27 and 33)">,
    Option<"tileScheduler", "tile-scheduler", "std::string",
           /*default=*/"\"dynamic\"",
           "wgmma strategy, persistent CTAs (persistent = true, or auto for "
           "batched sequences; ignored with one CTA per tile), batched "
           "sequences: how a CTA "
           "takes its tiles after its first (blockIdx.x). dynamic: the "
           "producer's loading thread takes the next from a tile counter "
           "(one 32-bit atomic add on the launch's workspace, zeroed by a "
           "one-thread first stage; FlashAttention-3's dynamic persistent "
           "scheduler) once it has issued the current tile's loads, and "
           "hands it to the consumers through shared memory, so that CTAs "
           "whose tiles were short take more; static: every gridDim.x-th "
           "tile. Packed sequences always use static">,
    Option<"qBuffers", "q-buffers", "int64_t", /*default=*/"0",
           "wgmma strategy, persistent CTAs (persistent = true, or auto for "
           "batched sequences): Q buffers per CTA. 2: the "
           "CTA's i-th tile's Q in buffer i % 2, so that the producer loads "
           "the next tile's Q while the consumers still read this one's; 1: "
           "it loads it once the consumers' last S of the tile has landed; "
           "0: 2 where shared memory holds them, else 1. A kernel of one "
           "tile per CTA has 1">,
    Option<"qFirst", "q-first", "std::string", /*default=*/"\"auto\"",
           "wgmma strategy, warp-specialised, two Q buffers: true: the "
           "producer loads a tile's Q before its first K/V block, so Q "
           "(whose buffer the consumers released a tile earlier) does not "
           "wait behind block 0's stages, which free only as the consumers "
           "finish the previous tile; false: block 0, then Q "
           "(FlashAttention-3's order, as with one Q buffer); auto: true "
           "with a causal mask, false otherwise (H200, docs/performance.md, "
           "Hopper runs 59-60, four timings per shape: 1.001-1.007x at "
           "4 x 4096 causal, 1.001-1.033x at 16K causal, 1.005-1.012x at "
           "D = 64 causal, 0.991-1.000x at 8 x 2048 causal, 0.996-0.997x "
           "unmasked). With one Q buffer Q always follows block 0">,
    Option<"clusterSize", "cluster-size", "int64_t", /*default=*/"0",
           "wgmma strategy, TMA loads, batched sequences: CTAs per thread "
           "block cluster. 2: the two CTAs of a cluster take the same row "
           "block of the two halves of a KV group's rows (pairs 0 .. P/2 - 1 "
           "and P/2 .. P - 1, the same query rows, so the same key blocks "
           "under any mask), and each producer loads half of every K/V "
           "tile's keys with TMA multicast into both CTAs (.multicast::"
           "cluster), the consumers releasing each stage in both CTAs "
           "(remote mbarrier arrivals): half the K/V traffic out of L2. "
           "Needs an even number of pairs per KV group; with the dynamic "
           "tile scheduler rank 0's loading thread takes each tile pair "
           "from the counter and hands it to rank 1 through distributed "
           "shared memory. The launch's grid is even and the kernel carries "
           ".reqnctapercluster 2, 1, 1. 1: no cluster. 0: the default, 2 "
           "for persistent CTAs with TMA loads, batched sequences and an "
           "even number of pairs per KV group where the shared memory "
           "fits, else 1: on an H200 (docs/performance.md, Hopper runs "
           "64-65) 2 measured 1.016-1.058x one CTA on SPEC.md's four shapes "
           "with P = 2 (with one CTA per tile 0.90-1.00x the default, run "
           "63, so not automatic there), exact on gpu_check.py's whole set (Hopper "
           "run 66)">,
    Option<"epilogue", "epilogue", "std::string", /*default=*/"\"auto\"",
           "wgmma strategy, warp-specialised: how the pair's two heads "
           "(the two consumer warpgroups) meet in the differential "
           "epilogue. exchange: each hands the other half of its "
           "normalised columns through shared memory and writes the other "
           "half, both waiting for each other; handoff: warpgroup 0 writes "
           "all its columns into the tile's Q buffer and goes on to its "
           "next tile while warpgroup 1 (half an iteration behind it under "
           "ping-pong) combines them with its own and writes the output "
           "(needs two Q buffers: the Q buffer is released after the "
           "epilogue; mbarriers order the two); auto: handoff with two Q "
           "buffers, else exchange (H200, docs/performance.md, Hopper runs "
           "43-44: handoff 1.07x the exchange at D = 64, 0.99-1.02x at "
           "D = 128)">,
    Option<"qTma", "q-tma", "bool", /*default=*/"true",
           "wgmma strategy, TMA loads, batched sequences: Q arrives through "
           "a third tensor map (one cp.async.bulk.tensor per head and "
           "64-column span, issued by the producer's loading thread) when "
           "Sq is a multiple of 64, so that a tile's rows lie in one pair; "
           "else, and with q-tma=false, the producer warpgroup copies it "
           "with cp.async">,
    Option<"qPrefetch", "q-prefetch", "bool", /*default=*/"true",
           "wgmma strategy, warp-specialised, batched sequences: once a "
           "tile's Q copies are issued, the producer prefetches into L2 "
           "(prefetch.global.L2) the Q rows of the tile that starts about "
           "one tile later (t + gridDim.x when persistent, else t + the "
           "reference GPU's SM count), so that its Q copy, which the "
           "consumers wait for at the start of a tile, reads L2 instead of "
           "DRAM">,
    Option<"consumerRegisters", "consumer-registers", "int64_t",
           /*default=*/"0",
           "wgmma strategy, warp-specialised: registers per consumer thread "
           "after setmaxnreg, a multiple of 8 from 168 to 240; the producer "
           "keeps the rest of the CTA's 168 x 384 (504 - 2 x this, at least "
           "24). 0: the default, 240 (producer 24) with TMA loads, 216 "
           "(producer 72) with the cp.async producer">,
    Option<"combineSplitsPerStep", "combine-splits-per-step", "int64_t",
           /*default=*/"8",
           "Split-KV: splits the combine kernel merges per step of its loop, "
           "1 to 16, all their loads issued before their arithmetic (1: one "
           "wait on memory per split). 8 measured 1-4% faster per decode "
           "step than 1 at B 1-2 on an H200, 4 was 2-7% slower than 1 at "
           "B 1; all equal from B 4 up">,
    Option<"deterministic", "deterministic", "bool", /*default=*/"true",
           "The backward (diffattn.v2_backward). true: three kernels "
           "without atomics (statistics, dq, dk/dv), bit-identical across "
           "runs; S and G are recomputed for dq (13 S-sized products per "
           "pair); on sm_90a all three are wgmma kernels (the statistics "
           "kernel the portable one with kv_len). false, on sm_90 and "
           "later: FlashAttention-2's formulation with dq accumulated in "
           "f32 (statistics, which also zeroes the accumulator in the "
           "workspace; dk/dv, which adds each key block's dq to it; the dq "
           "conversion): 10 products per pair (8 with out_odd), the order "
           "of dq's sums "
           "varying between runs. On sm_90a the wgmma dk/dv kernel computes "
           "dq^T = K^T dS^T and adds it from registers with "
           "red.global.add.v4.f32 into chunks of its query blocks: "
           "1.05-1.18x the deterministic kernels (H200, docs/performance.md, "
           "backward run 22), and what the PyTorch path runs on Hopper "
           "unless torch.use_deterministic_algorithms(True) is set. On "
           "sm_90 (the portable strategy) the dk/dv kernel has "
           "FlashAttention-2's warp layout (128 keys, 64-row query blocks, "
           "32 x 32 warp tiles) and adds dq with bulk reductions "
           "(cp.reduce.async.bulk): 1.14-1.29x the deterministic kernels "
           "(backward run 53), and the PyTorch path's default there too. "
           "On sm_80 (no bulk reductions) false is true">,
    Option<"backwardStacking", "backward-stacking", "std::string",
           /*default=*/"\"auto\"",
           "wgmma strategy, the backward's dk/dv kernel: which of its "
           "products take both heads of a pair as one operand. scores: S^T "
           "of both heads as one product K [q_2p; q_2p+1]^T (wgmma "
           "m64n{2 blockQ}k16: the warpgroup's K read once for both); dq "
           "(the accumulating formulation, deterministic = false): dq of "
           "both heads stacked as the 64 rows of dS K (m64n64k16; needs "
           "D = 128, whose query blocks have 32 rows: an error at D = 64; "
           "the deterministic formulation has no dq product, so there dq "
           "stacks nothing and both the scores alone); both; none: "
           "per-head products. auto: both at D = 128, none at D = 64 "
           "(H200, docs/performance.md: backward run 33, at D = 128 the "
           "stacked scores 1.02-1.05x the per-head products, at D = 64 all "
           "forms within 1%; backward runs 36-37, the stacked dq's dk/dv "
           "kernel 1.05x the per-head dq's once its conversion kernel "
           "wrote whole 16-byte pieces)">,
    Option<"splitKeys", "split-keys", "int64_t", /*default=*/"0",
           "Keys per split of the decode form's split-KV kernels, a "
           "multiple of block-k (0: the runtime picks it per launch)">,
    Option<"splitTargetCtas", "split-target-ctas", "int64_t",
           /*default=*/"0",
           "CTAs a split-KV launch aims for when the runtime picks the "
           "split (0: the chip's, about one wave: 108 on sm_80, 132 (1 per "
           "SM of a 132-SM H100/H200) on sm_90, 296 on sm_100a)">,
];

def DiffAttnToMmaSyncKernels
    : Pass<"diffattn-to-mma-sync-kernels", "ModuleOp"> {
  let summary = "Emit portable tensor-core (mma.sync) GPU kernels for "
                "outlined diffattn kernels";
  let description = [{
    The portable GPU strategy (sm_80 and later). Replaces every kernel
    function made by `diffattn-outline-kernels` with a `gpu.module` holding
    one `gpu.func` kernel that maps the FlashAttention tiled form onto the
    GPU:

    - the query-block and pair loops become the grid (x: blocks of 16 x
      `warps` rows of a KV group, a row being a (pair of the group, query
      row) couple; y: KV heads; z: batch); each warp handles 16 rows with
      both heads of each row's pair, so the differential epilogue needs no
      data from another thread's registers; with a causal-like mask the
      blocks run from the last rows to the first (longest CTAs first);
    - the key-block loop stays a loop (`scf.for`) whose bounds skip fully
      masked blocks; K and V tiles go global -> shared through `cp.async`
      (`nvgpu.device_async_copy`, zero-filling keys past the sequence only
      in the last tile) in a `stages`-deep pipeline; every K and V fragment
      feeds both heads;
    - Q·Kᵀ and P·V are `nvvm.mma.sync` m16n8k16 with f32 accumulation,
      fed by `nvgpu.ldmatrix` (V transposed); P stays in registers, converted
      from the accumulator layout of Q·Kᵀ to the operand layout of P·V;
    - the online softmax runs in registers (row max and sum reduced across
      the four lanes of a row with `gpu.shuffle`, `exp2` with the scale
      folded in); only blocks that straddle the mask are masked; with a
      `rescale-threshold`, a row's offset (and its accumulators) moves
      only when a warp vote finds a max that grew past it;
    - the epilogue multiplies by the inverse row sums, applies sigmoid(lam)
      and writes the pair's single output head.

    Ops in the decode form (with `kv_len`) get split-KV kernels: each CTA
    covers one split of the keys for 16 rows of a KV group, a row being a
    (query head, query row) couple (with few query rows, every query head
    of the group: each K/V byte is read once for all of them). Its warps
    share the rows and take the split's key blocks in turn, each with a
    pipeline of its own, then merge their states through shared memory and
    write the partial softmax state of the rows (accumulators, max, sum) to
    a workspace; a second kernel (`<name>_combine`, one CTA of Dv threads
    per row) merges the splits and applies the epilogue. The keys per
    split are a kernel argument: fixed by `split-keys`, or picked by the
    runtime per launch so that about `split-target-ctas` CTAs run.

    With the `lse` result, `diffattn.v2` gets the row-block kernel (also
    with `kv_len`), which writes each head's log-sum-exp. `diffattn.v2_backward`
    gets three or four kernels launched in order over a workspace, with tile
    configurations of their own: with `deterministic=true`, `<name>_stats`,
    `<name>_dq` and `<name>_dkdv` (4 warps; 64 rows x 32 keys, 64 keys x
    32 query rows; two stages); with `deterministic=false` on sm_90 and
    later, `<name>_stats` (which also zeroes the dq accumulator; with the
    forward's `out_odd`, where the statistics are two dot products, a
    first kernel `<name>_dq_zero` zeroes it instead and the statistics
    kernel only reads), `<name>_dkdv` (8 warps, 128 keys, 64-row query
    blocks, dq added with bulk reductions) and `<name>_dq_convert`. With a causal-like mask the
    dq and dk/dv CTAs take their blocks longest first across all heads and
    sequences (the last row blocks, the first key blocks: the x index
    counts slowest in launch order), so that the last wave holds the
    shortest. The options `block-k`, `warps` and `stages` configure the
    forward kernels only (docs/design.md).

    The kernel's manifest entry (`diffattn.kernel`) gains the launch rule:
    grid, block size, dynamic shared memory and the kernel parameter list.
    Configurations the strategy does not support (V1, f32, head dimensions
    other than 64 and 128, Dv != D) and options out of range (tiles that
    need more shared memory than a CTA of `chip` has) are diagnosed.
  }];
  let options = DiffAttnGPUStrategyOptions;
  let dependentDialects = DiffAttnGPUKernelDialects;
}

def DiffAttnToWgmmaKernels
    : Pass<"diffattn-to-wgmma-kernels", "ModuleOp"> {
  let summary = "Emit Hopper (sm_90a) warpgroup-MMA GPU kernels for "
                "outlined diffattn kernels";
  let description = [{
    The Hopper strategy (`chip=sm_90a`). Replaces every kernel function
    made by `diffattn-outline-kernels` with a `gpu.module` holding one
    `gpu.func` kernel:

    - the grid is the mma.sync strategy's (x: blocks of 64 rows of a KV
      group, a row being a (pair of the group, query row) couple; y: KV
      heads; z: batch; with a causal-like mask the longest blocks first);
    - a CTA is two warpgroups (256 threads); warpgroup w computes head
      2p + w of each row's pair p, so both heads of a pair run against every
      K/V tile the CTA loads;
    - Q, K and V tiles live in shared memory in wgmma's 128-byte swizzled
      layout (1024-byte aligned atoms), in a `stages`-deep ring of K/V
      stages (keys past the sequence zero-filled); warp-specialised (the
      default) a producer warpgroup loads them (TMA, or `cp.async`) and
      hands each stage's K and V tiles to the two consumer warpgroups
      through mbarriers, and the consumers hand each back once the product
      that reads it has landed; otherwise every thread copies with
      `cp.async` and CTA barriers order the stages;
    - S = Q·Kᵀ is `nvvm.wgmma.mma_async` m64n`block-k`k16 with both
      operands from shared memory (K-major descriptors); O += P·V is wgmma
      m64n`Dv`k16 with P from registers (the scores' accumulator layout is
      the A operand's), V from shared memory (MN-major descriptor) — inline
      PTX, as MLIR 22's NVVM op models only the shared-memory A form;
    - the online softmax runs on the accumulators in registers (shared with
      the mma.sync strategy); only blocks that straddle the mask are
      masked;
    - the epilogue meets the pair's two heads through shared memory
      (`epilogue`: warpgroup 0 hands all its columns to warpgroup 1, which
      writes the single output head, or each hands half of its columns to
      the other and writes the other half) and, with `diffattn.v2`'s
      `lse` result, each warpgroup writes its head's log-sum-exp.

    Ops this strategy has no kernel for are compiled by the portable
    strategy, and the manifest's `launch.strategy` records which made each
    kernel: the decode form (`kv_len`, with or without `lse`; the split-KV
    kernels, whose Hopper version must first be measured faster),
    and `diffattn.v2_paged`. `diffattn.v2_backward` gets wgmma
    statistics, dq and dk/dv kernels (docs/training.md), with the portable
    statistics kernel when it has `kv_len`; with `deterministic=false`
    wgmma statistics, dk/dv (with dq) and dq-conversion kernels. Configurations neither
    supports (V1, f32, head dimensions other than 64 and 128, Dv != D) are
    diagnosed, as are tile options out of range.
  }];
  let options = DiffAttnGPUStrategyOptions;
  let dependentDialects = DiffAttnGPUKernelDialects;
}

def DiffAttnMarkTensorMapParams
    : Pass<"diffattn-mark-tensor-map-params", "LLVM::LLVMFuncOp"> {
  let summary = "Pass a kernel's tensor maps by value (grid constants)";
  let description = [{
    Part of the PTX lowering (diffattn-compile's PTX pipeline, after
    `convert-gpu-to-nvvm`). A GPU kernel that loads tiles with TMA takes its
    CUtensorMaps (128 bytes, 64-byte aligned; PTX ISA "Tensor-map") as its
    leading parameters and says how many with the function attribute
    `diffattn.tensor_map_args = N`. GPU-to-NVVM conversion keeps the
    attribute but drops `llvm.byval` from the parameters, so this pass
    marks parameters 0 .. N-1 of each such `nvvm.kernel` as
    `llvm.byval = !llvm.array<128 x i8>`, `llvm.align = 64` and
    `nvvm.grid_constant`: the NVPTX backend then declares them
    `.param .align 64 .b8 name[128]` and hands `cp.async.bulk.tensor` their
    parameter-space address (`cvta.param`) without a local copy.
    Parameters that are not pointers are an error.
  }];
}

def DiffAttnGPUPipeline : Pass<"diffattn-gpu-pipeline", "ModuleOp"> {
  let summary = "Outlined diffattn kernels to gpu.module kernels ready for "
                "NVVM, with the chip's GPU strategy";
  let description = [{
    The GPU stage of `diffattn-compile`, replayable alone: from a module of
    kernel functions made by `diffattn-outline-kernels` to one
    `gpu.module` per kernel (with the launch rule in its manifest entry),
    ready for `gpu-lower-to-nvvm-pipeline`. Picks the strategy (`strategy`,
    or the chip's with `auto`) and runs its pass with the same options:

    ```
    diffattn-opt k.mlir --diffattn-outline-kernels \
        --diffattn-gpu-pipeline="chip=sm_90 warps=4"
    ```

    is what `diffattn-compile k.mlir --target=sm_90 --gpu-options="warps=4"`
    runs before PTX (each compiled kernel's manifest entry records its
    pipeline string under `pipeline`). A strategy that does not exist yet
    (tcgen05 for sm_100a) is a diagnostic that names the one that does.
    Options only the wgmma strategy reads (warp-specialize, ping-pong,
    ping-pong-edges, release-arrivals, overlap-tiles, trim-last-pv, tma,
    persistent, tile-scheduler, q-buffers, q-first, cluster-size, epilogue,
    q-tma, q-prefetch, consumer-registers), given where mma_sync compiles,
    are a diagnostic too: that strategy would ignore them unchecked.
  }];
  let options = DiffAttnGPUStrategyOptions;
  let dependentDialects = DiffAttnGPUKernelDialects;
}

#endif // DIFFATTN_CONVERSION_PASSES_TD
