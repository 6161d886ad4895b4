//===- Chips.h - the GPU target table ---------------------------*- C++ -*-===//
//
// One table of the GPU targets diffattn compiles for: the chip ptxas and
// LLVM compile for, the PTX ISA features, the strategy that makes kernels
// for it, and the per-chip limits the tile configuration is checked
// against. The strategies, the GPU pipeline and the compile driver all read
// it; nothing else spells a chip's numbers.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_CONVERSION_DIFFATTNTOGPU_CHIPS_H
#define DIFFATTN_CONVERSION_DIFFATTNTOGPU_CHIPS_H

#include "mlir/Support/LLVM.h"
#include "llvm/ADT/ArrayRef.h"
#include "llvm/ADT/StringRef.h"

#include <cstdint>
#include <string>

namespace mlir::diffattn {

/// One GPU target (a `--target` / `chip=` name).
struct GPUChipInfo {
  /// The target name (sm_80, sm_90, sm_90a, sm_100a), also the chip ptxas
  /// and LLVM compile for.
  StringRef name;
  /// PTX ISA feature string for LLVM (sm_90a needs PTX ISA >= 8.0, sm_100a
  /// >= 8.6).
  StringRef ptxFeatures;
  /// The strategy that makes its kernels (`strategy=auto` in the GPU
  /// pipeline): "mma_sync" (the portable tensor-core strategy).
  StringRef strategy;
  /// CTAs a split-KV (decode) launch aims for when the runtime picks the
  /// split size: about one wave of the decode kernel on the target's
  /// reference GPU (A100: 108 SMs, 1 CTA each; H100/H200: 132 SMs, 2 each;
  /// B200: 148 SMs, 2 each).
  int64_t splitTargetCtas;
  /// The chip has programmatic dependent launch (sm_90 and later): a kernel
  /// may start before the previous one on its stream ends and wait for it
  /// itself (griddepcontrol).
  bool programmaticLaunch;
  /// Dynamic shared memory one CTA may use, in bytes (CUDA C Programming
  /// Guide, "Technical Specifications per Compute Capability": 163 KiB on
  /// compute capability 8.0, 227 KiB on 9.0 and 10.0).
  int64_t maxSharedBytesPerCTA;
  /// Registers one thread may use (255 on every listed chip).
  int64_t maxRegistersPerThread;
  /// SMs of the target's reference GPU (A100 108, H100/H200 SXM 132, B200
  /// 148): persistent kernels launch at most this many CTAs. On a GPU with
  /// fewer SMs the extra CTAs wait for a free SM (correct, a little slower).
  int64_t multiprocessors;
  /// The chip has the bulk asynchronous copies (cp.async.bulk,
  /// cp.reduce.async.bulk: sm_90 and later; PTX ISA 8.0).
  bool bulkCopies;
};

/// Every GPU target, in order of compute capability.
ArrayRef<GPUChipInfo> getGPUChips();

/// The target called `name`, or null.
const GPUChipInfo *lookupGPUChip(StringRef name);

/// The target names, comma separated ("sm_80, sm_90, ..."), for messages.
std::string getGPUChipNames();

} // namespace mlir::diffattn

#endif // DIFFATTN_CONVERSION_DIFFATTNTOGPU_CHIPS_H
