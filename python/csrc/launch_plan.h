//===- launch_plan.h - launch plans of the torch ops' C++ kernels -*- C++
//-*-===//
//
// What the C++ CUDA kernels of libdiffattn_torch.so share
// (torch_op.cpp: diffattn::v2; torch_train.cpp: the training forward and
// the backward): the runtime's C API opened by install(), the key of a
// call's configuration, the cache of launch plans, allocation from torch's
// caching allocator, and the launch on the current stream.
//
// A plan is what the first call of a configuration learns from its Python
// resolver (a diffattn::_v2*_plan op: validation with the Python kernel's
// errors, the kernel cache, the module load): the module, the kernel, the
// sizes (B, Sq, Sk), the workspace size and every buffer's name, dtype and
// shape. A later call of the configuration fills in the data pointers and
// launches; it runs no Python.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_PYTHON_CSRC_LAUNCH_PLAN_H
#define DIFFATTN_PYTHON_CSRC_LAUNCH_PLAN_H

#include "diffattn/runtime.h"

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/Allocator.h>
#include <c10/util/FunctionRef.h>

#include <array>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>

namespace diffattn_torch {

/// The runtime's C API (runtime/include/diffattn/runtime.h), resolved by
/// install() from the library Python's diffattn._runtime loaded, so that both
/// share one instance and its module handles.
struct Runtime {
  decltype(&diffattn_launch) launch = nullptr;
  decltype(&diffattn_last_error) lastError = nullptr;
  decltype(&diffattn_module_num_kernels) numKernels = nullptr;
  decltype(&diffattn_module_kernel_name) kernelName = nullptr;
};

/// Set once by install() (torch_op.cpp) before any kernel is registered.
extern Runtime gRuntime;

/// What identifies a call's configuration: the op, then per tensor its
/// dtype, device, contiguity, rank and sizes, then the options. Two calls
/// with equal keys pass the same validation and launch the same kernel with
/// the same sizes and buffer shapes.
struct Key {
  static constexpr int kCapacity = 96;
  std::array<int64_t, kCapacity> values{};
  int size = 0;

  /// False once a value did not fit (the call is then never planned).
  bool push(int64_t value) {
    if (size == kCapacity)
      return false;
    values[size++] = value;
    return true;
  }
  bool operator==(const Key &other) const {
    return size == other.size && std::memcmp(values.data(), other.values.data(),
                                             size * sizeof(int64_t)) == 0;
  }
};

struct KeyHash {
  size_t operator()(const Key &key) const {
    uint64_t h = 1469598103934665603ull; // FNV-1a over the values
    for (int i = 0; i < key.size; ++i) {
      h ^= static_cast<uint64_t>(key.values[i]);
      h *= 1099511628211ull;
    }
    return static_cast<size_t>(h);
  }
};

/// Tensors of rank above this are never planned (the call is invalid; the
/// resolver says why).
constexpr int64_t kMaxRank = 4;

/// Appends `t`'s part of the key (-1 for an absent optional tensor); false
/// when `t` cannot be keyed.
bool pushTensor(Key &key, const at::Tensor *t);

/// Appends the options every op shares: causal, scale (absent, or its bits),
/// the window.
bool pushOptions(Key &key, bool causal, std::optional<double> scale,
                 int64_t windowLeft, int64_t windowRight);

/// The runtime's element type of a torch dtype (-1: none).
int32_t runtimeDtype(at::ScalarType type);

/// A buffer named `name` with `t`'s dtype and shape (data filled per call).
diffattn_buffer describe(const char *name, const at::Tensor &t);

/// A buffer named `name` of runtime dtype `dtype` and shape `shape`.
diffattn_buffer describe(const char *name, int32_t dtype,
                         c10::ArrayRef<int64_t> shape);

/// A configuration's launch. Buffers in the manifest's order, their data
/// pointers filled in per call; the last one is the workspace where
/// `workspace` > 0.
struct Plan {
  static constexpr int kMaxBuffers = 16;
  diffattn_module *module = nullptr;
  const char *kernel = nullptr;
  int64_t B = 0, Sq = 0, Sk = 0;
  /// f32 elements of the workspace (0: none).
  int64_t workspace = 0;
  /// The first output's shape where the resolver returns one (v2's out).
  std::array<int64_t, 4> outShape{};
  std::array<diffattn_buffer, kMaxBuffers> buffers{};
  int numBuffers = 0;

  /// Appends a buffer (a plan has at most kMaxBuffers).
  void add(const diffattn_buffer &buffer);
  /// Appends the f32 workspace buffer where the kernel needs one (it is
  /// always the last).
  void addWorkspace();
};

/// Builds a plan from a resolver's result `r` = [module handle, B, Sq, Sk,
/// workspace elements, ...]: the module (one kernel), the kernel's name and
/// the sizes. Errors (TORCH_CHECK) when `r` is short or the module is not
/// one kernel.
std::unique_ptr<Plan> planFromResolver(const std::vector<int64_t> &r,
                                       size_t expectedSize,
                                       const char *resolverName);

/// Calls the resolver op `op` on `stack` (the op's arguments) and returns
/// its int[] result; a Python exception (the call is invalid) propagates.
/// Errors (TORCH_CHECK) when `op` is not installed.
std::vector<int64_t> callResolver(const std::optional<c10::OperatorHandle> &op,
                                  std::vector<c10::IValue> stack,
                                  const char *resolverName);

/// The launch plans of every op, by key (thread-safe).
class PlanCache {
public:
  /// The plan of `key`, or null.
  const Plan *find(const Key &key);
  /// Stores `plan` under `key` unless a plan is there already; returns the
  /// stored one.
  const Plan *insert(const Key &key, std::unique_ptr<Plan> plan);
  /// The plan of `key`, or (first call of a configuration) the one
  /// `resolve` builds, stored under `key`. `resolve` runs outside the lock
  /// (it calls Python, which may compile) and raises for an invalid call;
  /// `keyed` false (the call could not be keyed) with a plan resolved is an
  /// error naming `resolverName`.
  const Plan *findOrResolve(const Key &key, bool keyed,
                            c10::function_ref<std::unique_ptr<Plan>()> resolve,
                            const char *resolverName);

private:
  std::mutex mutex;
  std::unordered_map<Key, std::unique_ptr<Plan>, KeyHash> plans;
};

PlanCache &planCache();

/// A new CUDA tensor on `like`'s device from torch's caching allocator
/// (directly, once a first call has checked that c10::GetAllocator(CUDA) is
/// the one at::empty uses; at::empty until then).
at::Tensor newCudaTensor(c10::ArrayRef<int64_t> shape, at::ScalarType dtype,
                         const at::Tensor &like);

/// A workspace of f32 elements, stream-ordered: torch's caching allocator
/// hands the block (freed when the Workspace goes) to other work only on
/// this stream, after the kernels queued here; under CUDA-graph capture it
/// comes from the graph's pool.
struct Workspace {
  c10::DataPtr block; // from the caching allocator directly
  at::Tensor tensor;  // or from at::empty, until the allocator is checked
  void *data = nullptr;
};

/// A call's data pointers, in the plan's buffer order.
struct LaunchData {
  std::array<void *, Plan::kMaxBuffers> pointers{};
  int size = 0;

  void push(const at::Tensor &t) {
    pointers[size++] = const_cast<void *>(t.const_data_ptr());
  }
  /// The plan's workspace (allocated on `like`'s device) where it has one,
  /// as the last pointer; the returned Workspace keeps it until the launch
  /// is queued.
  Workspace pushWorkspace(const Plan &plan, const at::Tensor &like);
};

/// The current CUDA stream of `device`, as the runtime's void *.
void *currentStream(c10::Device device);

/// Launches `plan` with `data` (one pointer per buffer, in order) on the
/// current stream of `device`, whose context must be current (a
/// DeviceGuard). Errors (TORCH_CHECK) with the runtime's message.
void launch(const Plan &plan, const LaunchData &data, c10::Device device);

} // namespace diffattn_torch

#endif // DIFFATTN_PYTHON_CSRC_LAUNCH_PLAN_H
