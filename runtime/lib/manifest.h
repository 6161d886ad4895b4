//===- manifest.h - the runtime's model of manifest.json --------*- C++ -*-===//
//
// The runtime's reader of the contract between diffattn-compile and the
// runtime: manifest.json (docs/manifest.md describes its schema). A kernel's
// entry becomes a KernelSpec: its tensor arguments with symbolic shapes,
// its launch stages (grid rules, block, shared memory, parameter list), its
// split-KV rule and its workspace rule. Rules are evaluated here for the
// sizes of one launch, so the argument checks, the workspace query and the
// launch all agree on them.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_RUNTIME_LIB_MANIFEST_H
#define DIFFATTN_RUNTIME_LIB_MANIFEST_H

#include "driver.h"

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace diffattn::runtime {

struct Json;

/// The manifest format_version this runtime reads. diffattn-compile writes
/// it; a manifest with any other version (or none) is refused at load.
/// Bump it on both sides with any incompatible change of the schema.
constexpr int kManifestFormatVersion = 1;

/// A dimension: a symbol (B, Sq, Sk, splits, split_keys) or a fixed size.
/// As a factor of a rule, ceil(mul * symbol / size).
struct Dim {
  std::string symbol;
  int64_t size = 0;
  int64_t mul = 1;
  /// Added after the division, in shapes (cu_seqlens: B + 1 offsets).
  int64_t add = 0;
};

/// The sizes of one launch: the caller's B, Sq, Sk; for split-KV kernels,
/// the keys per split and the number of splits; and the free sizes, bound
/// from the buffers' shapes by check() (-1 until then): a paged cache's
/// pool blocks (`num_blocks`), packed tokens (`total_q`, `total_k`).
struct Sizes {
  int64_t B = 0, Sq = 0, Sk = 0, splitKeys = 0, splits = 0;
  int64_t numBlocks = -1, totalQ = -1, totalK = -1;
};

/// The free size called `symbol` in `sizes`, or null when `symbol` is not
/// a free size.
int64_t *freeSize(Sizes &sizes, const std::string &symbol);

/// Resolves `dim` for the sizes of one launch (-1: an unknown symbol).
int64_t resolve(const Dim &dim, const Sizes &sizes);

/// The size of a shape dimension: a fixed size, a symbol, or the rule
/// ceil(mul * symbol / size) + add (e.g. a block table's ceil(Sk / BS)).
int64_t shapeDimSize(const Dim &dim, const Sizes &sizes);

/// Whether `symbol` names a size a launch knows: the caller's or the
/// split's.
bool isSizeSymbol(const std::string &symbol);

/// A tensor argument: its name, element type (a runtime.h DIFFATTN_* code)
/// and symbolic row-major shape.
struct ArgSpec {
  std::string name;
  int32_t dtype = -1;
  std::vector<Dim> shape;
};

/// One kernel parameter: a memref-descriptor field of a tensor argument
/// (allocated, aligned, offset, size, stride) or the value of a size
/// (field "value", arg naming the size symbol).
struct ParamSpec {
  std::string arg;
  std::string field;
  /// field "tensor_map": the box (elements per dimension, innermost first)
  /// and the swizzle span in bytes (0, 32, 64 or 128) of a tiled tensor
  /// map over the 3-D or 4-D buffer `arg` (docs/manifest.md).
  std::vector<int64_t> box;
  int64_t swizzle = 0;
};

/// A grid extent or a size: the product of its factors, capped at `atMost`
/// when that is > 0 (a persistent launch: {product: [...], at_most: N}).
struct Rule : std::vector<Dim> {
  int64_t atMost = 0;
};

/// One kernel launch of a kernel's launch sequence.
struct StageSpec {
  std::string function;
  std::vector<ParamSpec> params;
  Rule grid[3];
  unsigned block[3] = {1, 1, 1};
  int64_t sharedBytes = 0;
  /// May start before the previous stage on the stream ends (the kernel
  /// waits for it itself): a programmatic dependent launch.
  bool programmatic = false;
  /// Not launched when every listed size is at most its bound (symbol,
  /// bound): the previous stage then did this one's work.
  std::vector<std::pair<std::string, int64_t>> skipWhen;
  /// Loaded state: the stage's CUfunction in KernelSpec::context, set at
  /// the first launch in that context.
  void *handle = nullptr;
};

/// A stage of a launch plan: everything cuLaunchKernel(Ex) takes, with the
/// parameter array laid out once; a launch only writes the data pointers
/// (and re-encodes the tensor maps whose buffer moved).
struct StagePlan {
  void *handle = nullptr;
  unsigned grid[3] = {1, 1, 1};
  const StageSpec *spec = nullptr;
  /// Parameter storage: `values` (sizes, offsets, strides) and `pointers`
  /// (data pointers); `args[i]` points at parameter i in one of them.
  std::vector<int64_t> values;
  std::vector<void *> pointers;
  std::vector<void *> args;
  /// (parameter index, caller's buffer index): the pointers a launch writes.
  std::vector<std::pair<int, int>> pointerSlots;
  /// Tensor-map parameters (they hold the buffer's address): caller's
  /// buffer index, the map's dimensions, byte strides (dimensions 1 ..),
  /// box and swizzle, and the address the map was last encoded for.
  struct TensorMapSlot {
    int buffer = 0, dataType = 0, swizzle = 0;
    unsigned long long dims[4] = {0, 0, 0, 0}, strides[3] = {0, 0, 0};
    unsigned box[4] = {1, 1, 1, 1};
    bool encoded = false;
    const void *encodedFor = nullptr;
  };
  std::vector<TensorMapSlot> tensorMapSlots;
  /// Storage of the encoded maps, one per slot (the parameter array points
  /// here); a unique_ptr array keeps the 64-byte alignment and the
  /// addresses stable.
  std::unique_ptr<CUtensorMap[]> tensorMaps;
};

/// A launch configuration that passed check(): the caller's buffers as
/// they were described (name, dtype, rank, shape, in the caller's order)
/// and B, Sq, Sk, with the stages to launch resolved for them. A later
/// launch whose description is equal passes the same checks, so it only
/// re-checks data pointers and writes them (launch.cpp).
struct LaunchPlan {
  int64_t B = 0, Sq = 0, Sk = 0;
  struct Buffer {
    std::string name;
    int32_t dtype = 0, rank = 0;
    int64_t shape[4] = {0, 0, 0, 0};
    /// Every dimension is non-zero: the data pointer must not be null.
    bool needsData = false;
  };
  std::vector<Buffer> buffers;
  /// The CUcontext the stages' handles belong to.
  void *context = nullptr;
  std::vector<StagePlan> stages;
};

/// One kernel of a module: a manifest entry and its cubin.
struct KernelSpec {
  std::string name;
  std::vector<char> cubin;
  /// The chip the cubin was assembled for (the manifest's `chip`, e.g.
  /// sm_90a); empty in artifacts that do not record it.
  std::string chip;
  /// Tensor arguments in order (the size arguments B, Sq, Sk are implied).
  std::vector<ArgSpec> args;
  /// The launches of one call, in order.
  std::vector<StageSpec> stages;
  /// f32 elements of the scratch buffer the stages share (empty: none).
  Rule workspace;
  /// Split-KV kernels: keys per split, fixed (splitFixed > 0) or picked per
  /// launch as a multiple of splitMultiple making about splitTarget CTAs.
  bool hasSplit = false;
  int64_t splitFixed = 0, splitMultiple = 0, splitTarget = 0;
  /// Loaded state: the CUcontext the stages' handles belong to (null:
  /// not loaded yet).
  void *context = nullptr;
  /// Launch plans of the configurations launched last (at most
  /// kMaxLaunchPlans; the oldest is replaced), valid in `context`.
  std::vector<std::unique_ptr<LaunchPlan>> plans;
  size_t nextPlan = 0;
  static constexpr size_t kMaxLaunchPlans = 16;
};

/// The manifest's name of a runtime.h element type ("unknown" for none).
const char *dtypeName(int32_t dtype);

/// The value of a rule: the product of its factors, each a constant or
/// ceil(mul * symbol / by).
int64_t evaluate(const Rule &rule, const Sizes &sizes);

/// The launch sizes of `spec` for B, Sq, Sk (>= 0). A split-KV kernel
/// without a fixed split gets the fewest splits that give its first stage
/// about splitTarget CTAs (one wave), each a multiple of splitMultiple keys.
Sizes sizesFor(const KernelSpec &spec, int64_t B, int64_t Sq, int64_t Sk);

/// Fills `spec` from the manifest entry `kernel` of the artifact directory
/// `dir`, reading its cubin. Returns DIFFATTN_OK or records why the entry is
/// malformed and returns DIFFATTN_ERROR_ARTIFACT.
int parseKernel(const Json &kernel, const std::string &dir, KernelSpec &spec);

/// Reads `dir`/manifest.json: checks its format_version against
/// kManifestFormatVersion, then parses every kernel entry into `kernels`.
/// Members the runtime does not read are ignored. Returns DIFFATTN_OK or
/// records why the artifact is refused and returns DIFFATTN_ERROR_ARTIFACT.
int loadManifest(const std::string &dir,
                 std::vector<std::unique_ptr<KernelSpec>> &kernels);

} // namespace diffattn::runtime

#endif // DIFFATTN_RUNTIME_LIB_MANIFEST_H
