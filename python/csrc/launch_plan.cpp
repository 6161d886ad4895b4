//===- launch_plan.cpp - launch plans of the torch ops' C++ kernels -------===//
//
// See launch_plan.h.
//
//===----------------------------------------------------------------------===//

#include "launch_plan.h"

#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <atomic>

namespace diffattn_torch {

Runtime gRuntime;

bool pushTensor(Key &key, const at::Tensor *t) {
  if (!t)
    return key.push(-1);
  if (!t->defined() || t->dim() > kMaxRank)
    return false;
  bool ok = key.push(static_cast<int64_t>(t->scalar_type())) &&
            key.push(static_cast<int64_t>(t->device().type()) * 1024 +
                     t->device().index()) &&
            key.push(t->is_contiguous() ? 1 : 0) && key.push(t->dim());
  for (int64_t s : t->sizes())
    ok = ok && key.push(s);
  return ok;
}

bool pushOptions(Key &key, bool causal, std::optional<double> scale,
                 int64_t windowLeft, int64_t windowRight) {
  double s = scale ? *scale : 0.0;
  int64_t bits;
  std::memcpy(&bits, &s, sizeof(bits));
  return key.push(causal ? 1 : 0) && key.push(scale ? 1 : 0) &&
         key.push(bits) && key.push(windowLeft) && key.push(windowRight);
}

int32_t runtimeDtype(at::ScalarType type) {
  switch (type) {
  case at::kFloat:
    return DIFFATTN_F32;
  case at::kHalf:
    return DIFFATTN_F16;
  case at::kBFloat16:
    return DIFFATTN_BF16;
  case at::kInt:
    return DIFFATTN_I32;
  default:
    return -1;
  }
}

diffattn_buffer describe(const char *name, int32_t dtype,
                         c10::ArrayRef<int64_t> shape) {
  diffattn_buffer buf{};
  buf.name = name;
  buf.dtype = dtype;
  buf.rank = static_cast<int32_t>(shape.size());
  for (size_t d = 0; d < shape.size() && d < 4; ++d)
    buf.shape[d] = shape[d];
  return buf;
}

diffattn_buffer describe(const char *name, const at::Tensor &t) {
  return describe(name, runtimeDtype(t.scalar_type()), t.sizes());
}

void Plan::add(const diffattn_buffer &buffer) {
  TORCH_CHECK(numBuffers < kMaxBuffers, "diffattn: a launch plan has at most ",
              kMaxBuffers, " buffers");
  buffers[numBuffers++] = buffer;
}

std::vector<int64_t> callResolver(const std::optional<c10::OperatorHandle> &op,
                                  std::vector<c10::IValue> stack,
                                  const char *resolverName) {
  TORCH_CHECK(op, "diffattn: ", resolverName, " is not installed");
  op->callBoxed(stack);
  TORCH_CHECK(stack.size() == 1 && stack[0].isIntList(), resolverName,
              " must return int[]");
  return stack[0].toIntVector();
}

std::unique_ptr<Plan> planFromResolver(const std::vector<int64_t> &r,
                                       size_t expectedSize,
                                       const char *resolverName) {
  TORCH_CHECK(r.size() == expectedSize, resolverName, " returned ", r.size(),
              " values, expected ", expectedSize);
  auto plan = std::make_unique<Plan>();
  plan->module = reinterpret_cast<diffattn_module *>(r[0]);
  TORCH_CHECK(plan->module && gRuntime.numKernels(plan->module) == 1,
              resolverName, ": expected a module with one kernel");
  plan->kernel = gRuntime.kernelName(plan->module, 0);
  plan->B = r[1];
  plan->Sq = r[2];
  plan->Sk = r[3];
  plan->workspace = r[4];
  return plan;
}

void Plan::addWorkspace() {
  if (workspace > 0)
    add(describe("workspace", DIFFATTN_F32, {workspace}));
}

const Plan *
PlanCache::findOrResolve(const Key &key, bool keyed,
                         c10::function_ref<std::unique_ptr<Plan>()> resolve,
                         const char *resolverName) {
  if (const Plan *plan = keyed ? find(key) : nullptr)
    return plan;
  std::unique_ptr<Plan> fresh = resolve();
  TORCH_CHECK(keyed, resolverName, " accepted an unplannable call");
  return insert(key, std::move(fresh));
}

const Plan *PlanCache::find(const Key &key) {
  std::lock_guard<std::mutex> lock(mutex);
  auto it = plans.find(key);
  return it == plans.end() ? nullptr : it->second.get();
}

const Plan *PlanCache::insert(const Key &key, std::unique_ptr<Plan> plan) {
  std::lock_guard<std::mutex> lock(mutex);
  auto &slot = plans[key];
  if (!slot)
    slot = std::move(plan);
  return slot.get();
}

PlanCache &planCache() {
  static PlanCache cache;
  return cache;
}

namespace {

/// The allocator at::empty uses for CUDA tensors, once a first allocation
/// has checked that c10::GetAllocator(CUDA) is that one (torch's caching
/// allocator, which under CUDA-graph capture serves the graph's pool).
/// Allocating from it directly skips a dispatcher round trip per buffer.
std::atomic<c10::Allocator *> gCudaAllocator{nullptr};
std::atomic<bool> gAllocatorChecked{false};

} // namespace

at::Tensor newCudaTensor(c10::ArrayRef<int64_t> shape, at::ScalarType dtype,
                         const at::Tensor &like) {
  if (c10::Allocator *allocator =
          gCudaAllocator.load(std::memory_order_acquire))
    return at::detail::empty_generic(
        shape, allocator, c10::DispatchKeySet(c10::DispatchKey::CUDA), dtype,
        std::nullopt);
  at::Tensor t = at::empty(shape, like.options().dtype(dtype));
  if (!gAllocatorChecked.exchange(true)) {
    c10::Allocator *candidate = c10::GetAllocator(c10::DeviceType::CUDA);
    if (candidate && t.storage().allocator() == candidate)
      gCudaAllocator.store(candidate, std::memory_order_release);
  }
  return t;
}

namespace {

/// A workspace of `elements` f32 on `like`'s device.
Workspace newWorkspace(int64_t elements, const at::Tensor &like) {
  Workspace w;
  if (c10::Allocator *allocator =
          gCudaAllocator.load(std::memory_order_acquire)) {
    w.block = allocator->allocate(static_cast<size_t>(elements) * 4);
    w.data = w.block.get();
  } else {
    w.tensor = newCudaTensor({elements}, at::kFloat, like);
    w.data = w.tensor.data_ptr();
  }
  return w;
}

} // namespace

void *currentStream(c10::Device device) {
  return c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)
      ->getStream(device)
      .native_handle();
}

Workspace LaunchData::pushWorkspace(const Plan &plan, const at::Tensor &like) {
  Workspace w;
  if (plan.workspace > 0) {
    w = newWorkspace(plan.workspace, like);
    pointers[size++] = w.data;
  }
  return w;
}

void launch(const Plan &plan, const LaunchData &data, c10::Device device) {
  TORCH_CHECK(data.size == plan.numBuffers, "diffattn: ", data.size,
              " data pointers for a plan of ", plan.numBuffers, " buffers");
  std::array<diffattn_buffer, Plan::kMaxBuffers> buffers = plan.buffers;
  for (int i = 0; i < plan.numBuffers; ++i)
    buffers[i].data = data.pointers[i];
  int rc =
      gRuntime.launch(plan.module, plan.kernel, buffers.data(), plan.numBuffers,
                      plan.B, plan.Sq, plan.Sk, currentStream(device));
  TORCH_CHECK(rc == DIFFATTN_OK, "diffattn: ", gRuntime.lastError());
}

} // namespace diffattn_torch
