//===- TileConfig.cpp - the tile configuration of a GPU kernel ------------===//
//
// Checks of a tile configuration against the chip table.
//
//===----------------------------------------------------------------------===//

#include "diffattn/Conversion/DiffAttnToGPU/TileConfig.h"

#include "mlir/IR/Diagnostics.h"

using namespace mlir;
using namespace mlir::diffattn;

LogicalResult mlir::diffattn::checkChipLimits(Operation *op,
                                              const TileConfig &config,
                                              StringRef what) {
  if (config.sharedBytes > config.chip->maxSharedBytesPerCTA)
    return op->emitOpError()
           << "needs " << config.sharedBytes
           << " bytes of shared memory per CTA with " << what << " (at most "
           << config.chip->maxSharedBytesPerCTA << " on " << config.chip->name
           << ")";
  return success();
}
