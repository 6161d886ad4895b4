//===- Chips.cpp - the GPU target table -----------------------------------===//
//
// The numbers behind each GPU target (see Chips.h for their sources).
// sm_90a has the wgmma strategy; sm_100a compiles the portable strategy
// until its own (tcgen05) exists. An sm_90a / sm_100a cubin runs only on
// its chip family.
//
//===----------------------------------------------------------------------===//

#include "diffattn/Conversion/DiffAttnToGPU/Chips.h"

#include "llvm/ADT/SmallVector.h"
#include "llvm/ADT/StringExtras.h"

#include <string>

using namespace mlir;
using namespace mlir::diffattn;

static const GPUChipInfo kChips[] = {
    // name, PTX features, strategy, split target CTAs, PDL, smem, regs, SMs,
    // bulk copies
    {"sm_80", "+ptx80", "mma_sync", 108, false, 163 * 1024, 255, 108, false},
    // sm_90: one CTA per SM of a 132-SM H100/H200. 264 (two per SM) was
    // 3-19 % slower per decode step at B 1-4 and within 1 % at B 8 and 32
    // (docs/performance.md, runs 7-8 and serving-host run 1).
    {"sm_90", "+ptx80", "mma_sync", 132, true, 227 * 1024, 255, 132, true},
    {"sm_90a", "+ptx81", "wgmma", 132, true, 227 * 1024, 255, 132, true},
    {"sm_100a", "+ptx86", "mma_sync", 296, true, 227 * 1024, 255, 148, true},
};

ArrayRef<GPUChipInfo> mlir::diffattn::getGPUChips() { return kChips; }

const GPUChipInfo *mlir::diffattn::lookupGPUChip(StringRef name) {
  for (const GPUChipInfo &chip : kChips)
    if (chip.name == name)
      return &chip;
  return nullptr;
}

std::string mlir::diffattn::getGPUChipNames() {
  SmallVector<StringRef> names;
  for (const GPUChipInfo &chip : kChips)
    names.push_back(chip.name);
  return llvm::join(names, ", ");
}
