//===- torch_op.cpp - the C++ CUDA kernel of torch.ops.diffattn.v2 --------===//
//
// libdiffattn_torch.so: the CUDA kernel of torch.ops.diffattn.v2, so that a
// repeated eager call costs the dispatcher and a launch, not Python.
//
// The op's schema and its fake kernel are defined in Python
// (diffattn._torch_native); loading this library registers only the
// operator diffattn_ext::install(str runtime) -> str. Python calls it after
// defining diffattn::v2 and diffattn::_v2_plan; it opens the runtime library
// at that path (the one diffattn._runtime loads with ctypes, so both share
// one instance and its module handles) and registers v2Cuda as the CUDA
// kernel of diffattn::v2. It returns "" on success, else why not (e.g. the
// schema Python defined no longer matches this kernel's signature), and
// Python then keeps its own kernel.
//
// A call looks its configuration (each tensor's dtype, device, rank, sizes
// and contiguity, and the options) up in a launch-plan cache. The first call
// of a configuration asks diffattn::_v2_plan, a Python op, for the plan: it
// validates the call (TypeError / ValueError naming the argument), finds or
// builds the kernel in the kernel cache and loads its module. Later calls of
// that configuration do no Python work: they allocate the output (and the
// workspace of split-KV kernels) from torch's caching allocator on the
// current stream and launch through the runtime's C API.
//
// Autograd: install() also registers v2Autograd as diffattn::v2's Autograd
// kernel when Python defined diffattn::_v2_train (the same op with the
// autograd formula, torch.library.register_autograd): a call whose q, k, v
// or lam requires grad (with grad mode on) goes there; every other call
// goes straight to the backend kernel, with no Python on its way (a Python
// autograd kernel on diffattn::v2 itself would cost every eager call about
// 7 us of host time).
//
// Needs torch's headers and libc10 / libtorch_cpu only: no CUDA toolkit
// (the current stream comes from c10's device-guard interface), no Python
// headers, no MLIR.
//
//===----------------------------------------------------------------------===//

#include "diffattn/runtime.h"

#include <ATen/EmptyTensor.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <c10/core/Allocator.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <dlfcn.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

//===----------------------------------------------------------------------===//
// The runtime's C API, opened by install()
//===----------------------------------------------------------------------===//

struct Runtime {
  decltype(&diffattn_launch) launch = nullptr;
  decltype(&diffattn_last_error) lastError = nullptr;
  decltype(&diffattn_module_num_kernels) numKernels = nullptr;
  decltype(&diffattn_module_kernel_name) kernelName = nullptr;
};

Runtime gRuntime;

//===----------------------------------------------------------------------===//
// Launch plans
//===----------------------------------------------------------------------===//

/// What identifies a call's configuration: per tensor its dtype, device,
/// rank, sizes and contiguity; then the options. Two calls with equal keys
/// pass the same validation and launch the same kernel with the same sizes.
struct Key {
  static constexpr int kCapacity = 56;
  std::array<int64_t, kCapacity> values{};
  int size = 0;

  void push(int64_t value) { values[size++] = value; }
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

/// Appends `t`'s part of the key; false when `t` cannot be keyed.
bool pushTensor(Key &key, const at::Tensor *t) {
  if (!t) {
    key.push(-1);
    return true;
  }
  if (!t->defined() || t->dim() > kMaxRank)
    return false;
  key.push(static_cast<int64_t>(t->scalar_type()));
  key.push(static_cast<int64_t>(t->device().type()) * 1024 +
           t->device().index());
  key.push(t->is_contiguous() ? 1 : 0);
  key.push(t->dim());
  for (int64_t s : t->sizes())
    key.push(s);
  return true;
}

/// A configuration's launch: the runtime's module and kernel, the sizes,
/// and the buffers with everything but their data pointers filled in.
/// Buffers: q, k, v, lam, [kv_len], out, [workspace].
struct Plan {
  diffattn_module *module = nullptr;
  const char *kernel = nullptr;
  int64_t B = 0, Sq = 0, Sk = 0;
  /// f32 elements of the workspace (0: none).
  int64_t workspace = 0;
  std::array<int64_t, 4> outShape{};
  std::array<diffattn_buffer, 7> buffers{};
  int numBuffers = 0;
  int outIndex = 0;
};

std::mutex gPlansMutex;
std::unordered_map<Key, std::unique_ptr<Plan>, KeyHash> gPlans;

/// diffattn::_v2_plan, the Python resolver of a configuration (found by
/// install()).
std::optional<c10::OperatorHandle> gPlanOp;

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

diffattn_buffer describe(const char *name, const at::Tensor &t) {
  diffattn_buffer buf{};
  buf.name = name;
  buf.dtype = runtimeDtype(t.scalar_type());
  buf.rank = static_cast<int32_t>(t.dim());
  for (int64_t d = 0; d < t.dim() && d < 4; ++d)
    buf.shape[d] = t.size(d);
  return buf;
}

//===----------------------------------------------------------------------===//
// Allocation and timing
//===----------------------------------------------------------------------===//

/// The allocator at::empty uses for CUDA tensors, once a first call has
/// checked that c10::GetAllocator(CUDA) is that one (torch's caching
/// allocator, which under CUDA-graph capture serves the graph's pool).
/// Allocating from it directly skips a dispatcher round trip per buffer;
/// until then (and if the check fails) buffers come from at::empty.
std::atomic<c10::Allocator *> gCudaAllocator{nullptr};
std::atomic<bool> gAllocatorChecked{false};

/// Host time spent in the kernel, by phase (diffattn_ext::timing).
struct Timing {
  std::atomic<bool> enabled{false};
  std::atomic<int64_t> calls{0}, lookupNs{0}, allocNs{0}, launchNs{0},
      totalNs{0};
};
Timing gTiming;

int64_t nowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

/// Asks the Python resolver for the plan of this call. It raises (through
/// the dispatcher, as the original Python exception) when the call is
/// invalid, and otherwise returns [module handle, B, Sq, Sk, workspace
/// elements, out shape (4)].
std::unique_ptr<Plan> resolve(const at::Tensor &q, const at::Tensor &k,
                              const at::Tensor &v, const at::Tensor &lam,
                              const std::optional<at::Tensor> &kvLen,
                              bool causal, std::optional<double> scale,
                              int64_t windowLeft, int64_t windowRight) {
  TORCH_CHECK(gPlanOp, "diffattn: the native kernel is not installed");
  std::vector<c10::IValue> stack;
  stack.reserve(9);
  stack.emplace_back(q);
  stack.emplace_back(k);
  stack.emplace_back(v);
  stack.emplace_back(lam);
  stack.emplace_back(kvLen);
  stack.emplace_back(causal);
  stack.emplace_back(scale);
  stack.emplace_back(windowLeft);
  stack.emplace_back(windowRight);
  gPlanOp->callBoxed(stack);
  TORCH_CHECK(stack.size() == 1 && stack[0].isIntList(),
              "diffattn::_v2_plan must return int[]");
  std::vector<int64_t> r = stack[0].toIntVector();
  TORCH_CHECK(r.size() == 9, "diffattn::_v2_plan returned ", r.size(),
              " values, expected 9");

  auto plan = std::make_unique<Plan>();
  plan->module = reinterpret_cast<diffattn_module *>(r[0]);
  TORCH_CHECK(plan->module && gRuntime.numKernels(plan->module) == 1,
              "diffattn::_v2_plan: expected a module with one kernel");
  plan->kernel = gRuntime.kernelName(plan->module, 0);
  plan->B = r[1];
  plan->Sq = r[2];
  plan->Sk = r[3];
  plan->workspace = r[4];
  for (int d = 0; d < 4; ++d)
    plan->outShape[d] = r[5 + d];
  int n = 0;
  plan->buffers[n++] = describe("q", q);
  plan->buffers[n++] = describe("k", k);
  plan->buffers[n++] = describe("v", v);
  plan->buffers[n++] = describe("lam", lam);
  if (kvLen)
    plan->buffers[n++] = describe("kv_len", *kvLen);
  plan->outIndex = n;
  diffattn_buffer &out = plan->buffers[n++];
  out.name = "out";
  out.dtype = runtimeDtype(q.scalar_type());
  out.rank = 4;
  for (int d = 0; d < 4; ++d)
    out.shape[d] = plan->outShape[d];
  if (plan->workspace > 0) {
    diffattn_buffer &ws = plan->buffers[n++];
    ws.name = "workspace";
    ws.dtype = DIFFATTN_F32;
    ws.rank = 1;
    ws.shape[0] = plan->workspace;
  }
  plan->numBuffers = n;
  return plan;
}

/// The CUDA kernel of diffattn::v2 (schema in diffattn._torch: q, k, v,
/// lam as BSHD CUDA tensors, kv_len an optional [B] int32 tensor; returns
/// out [B, Sq, H, Dv] in q's dtype).
at::Tensor v2Cuda(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v,
                  const at::Tensor &lam, const std::optional<at::Tensor> &kvLen,
                  bool causal, std::optional<double> scale, int64_t windowLeft,
                  int64_t windowRight) {
  bool timing = gTiming.enabled.load(std::memory_order_relaxed);
  int64_t tStart = timing ? nowNs() : 0;
  Key key;
  bool keyed = pushTensor(key, &q) && pushTensor(key, &k) &&
               pushTensor(key, &v) && pushTensor(key, &lam) &&
               pushTensor(key, kvLen ? &*kvLen : nullptr);
  if (keyed) {
    double s = scale ? *scale : 0.0;
    int64_t bits;
    std::memcpy(&bits, &s, sizeof(bits));
    key.push(causal ? 1 : 0);
    key.push(scale ? 1 : 0);
    key.push(bits);
    key.push(windowLeft);
    key.push(windowRight);
  }

  const Plan *plan = nullptr;
  if (keyed) {
    std::lock_guard<std::mutex> lock(gPlansMutex);
    auto it = gPlans.find(key);
    if (it != gPlans.end())
      plan = it->second.get();
  }
  if (!plan) {
    // Not under the lock: the resolver runs Python (which may compile).
    std::unique_ptr<Plan> fresh =
        resolve(q, k, v, lam, kvLen, causal, scale, windowLeft, windowRight);
    TORCH_CHECK(keyed, "diffattn::_v2_plan accepted an unplannable call");
    std::lock_guard<std::mutex> lock(gPlansMutex);
    auto &slot = gPlans[key];
    if (!slot)
      slot = std::move(fresh);
    plan = slot.get();
  }

  // The runtime launches in the current CUDA context: that of q's device.
  c10::DeviceGuard guard(q.device());
  int64_t tLookup = timing ? nowNs() : 0;
  c10::Allocator *allocator = gCudaAllocator.load(std::memory_order_acquire);
  at::Tensor out;
  at::Tensor workspaceTensor;
  c10::DataPtr workspace;
  if (allocator) {
    out = at::detail::empty_generic(plan->outShape, allocator,
                                    c10::DispatchKeySet(c10::DispatchKey::CUDA),
                                    q.scalar_type(), std::nullopt);
  } else {
    out = at::empty(plan->outShape, q.options());
    if (!gAllocatorChecked.exchange(true)) {
      c10::Allocator *candidate = c10::GetAllocator(c10::DeviceType::CUDA);
      if (candidate && out.storage().allocator() == candidate)
        gCudaAllocator.store(candidate, std::memory_order_release);
    }
  }
  std::array<diffattn_buffer, 7> buffers = plan->buffers;
  int n = 0;
  buffers[n++].data = const_cast<void *>(q.const_data_ptr());
  buffers[n++].data = const_cast<void *>(k.const_data_ptr());
  buffers[n++].data = const_cast<void *>(v.const_data_ptr());
  buffers[n++].data = const_cast<void *>(lam.const_data_ptr());
  if (kvLen)
    buffers[n++].data = const_cast<void *>(kvLen->const_data_ptr());
  buffers[plan->outIndex].data = out.data_ptr();
  if (plan->workspace > 0) {
    // Stream-ordered: torch's caching allocator hands this block (freed
    // when this function returns) to other work only on this stream, after
    // the kernels queued here; under CUDA-graph capture it comes from the
    // graph's pool.
    size_t bytes = static_cast<size_t>(plan->workspace) * sizeof(float);
    if (allocator) {
      workspace = allocator->allocate(bytes);
      buffers[plan->outIndex + 1].data = workspace.get();
    } else {
      workspaceTensor =
          at::empty({plan->workspace}, q.options().dtype(at::kFloat));
      buffers[plan->outIndex + 1].data = workspaceTensor.data_ptr();
    }
  }
  void *stream = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)
                     ->getStream(q.device())
                     .native_handle();
  int64_t tAlloc = timing ? nowNs() : 0;
  int rc =
      gRuntime.launch(plan->module, plan->kernel, buffers.data(),
                      plan->numBuffers, plan->B, plan->Sq, plan->Sk, stream);
  TORCH_CHECK(rc == DIFFATTN_OK, "diffattn: ", gRuntime.lastError());
  if (timing) {
    int64_t tEnd = nowNs();
    gTiming.calls += 1;
    gTiming.lookupNs += tLookup - tStart;
    gTiming.allocNs += tAlloc - tLookup;
    gTiming.launchNs += tEnd - tAlloc;
    gTiming.totalNs += tEnd - tStart;
  }
  return out;
}

//===----------------------------------------------------------------------===//
// Installation
//===----------------------------------------------------------------------===//

std::mutex gInstallMutex;
std::unique_ptr<torch::Library> gCudaImpl;

/// diffattn::_v2_train (set by install() when Python defined it), and the
/// Autograd registration of v2Autograd.
std::optional<c10::OperatorHandle> gTrainOp;
std::unique_ptr<torch::Library> gAutogradImpl;

/// diffattn::v2's Autograd kernel (boxed; the stack holds the op's nine
/// arguments q, k, v, lam, kv_len, causal, scale, window_left,
/// window_right): to diffattn::_v2_train (the forward with lse, which
/// records the autograd formula and keeps lse for the backward; its out is
/// returned) when grad mode is on and q, k, v or lam requires grad; else to
/// the backend kernel below autograd.
void v2Autograd(const c10::OperatorHandle &op, torch::jit::Stack *stack) {
  constexpr size_t kArgs = 9;
  bool needsGrad = false;
  if (at::GradMode::is_enabled()) {
    size_t first = stack->size() - kArgs;
    for (size_t i = first; i < first + 4; ++i) {
      const c10::IValue &arg = (*stack)[i];
      if (arg.isTensor() && arg.toTensor().requires_grad())
        needsGrad = true;
    }
  }
  if (needsGrad) {
    // (out, lse, out_odd): the formula keeps lse and out_odd; the caller
    // gets out.
    gTrainOp->callBoxed(stack);
    size_t saved = gTrainOp->schema().returns().size() - 1;
    for (size_t i = 0; i < saved; ++i)
      stack->pop_back();
    return;
  }
  c10::impl::ExcludeDispatchKeyGuard noAutograd(c10::autograd_dispatch_keyset);
  op.callBoxed(stack);
}

/// diffattn_ext::install: opens the runtime at `runtimePath` and registers
/// v2Cuda as diffattn::v2's CUDA kernel. Returns "" on success (also when
/// already installed), else why not; the dispatcher is then unchanged.
std::string install(const std::string &runtimePath) {
  std::lock_guard<std::mutex> lock(gInstallMutex);
  if (gCudaImpl)
    return "";
  void *lib = dlopen(runtimePath.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    const char *why = dlerror();
    return std::string("cannot open the runtime library ") + runtimePath +
           ": " + (why ? why : "dlopen failed");
  }
  Runtime runtime;
#define DIFFATTN_SYM(member, symbol)                                           \
  runtime.member =                                                             \
      reinterpret_cast<decltype(runtime.member)>(dlsym(lib, symbol));          \
  if (!runtime.member)                                                         \
    return std::string(runtimePath) + " has no " symbol;
  DIFFATTN_SYM(launch, "diffattn_launch")
  DIFFATTN_SYM(lastError, "diffattn_last_error")
  DIFFATTN_SYM(numKernels, "diffattn_module_num_kernels")
  DIFFATTN_SYM(kernelName, "diffattn_module_kernel_name")
#undef DIFFATTN_SYM

  auto &dispatcher = c10::Dispatcher::singleton();
  if (!dispatcher.findSchema({"diffattn::v2", ""}))
    return "diffattn::v2 is not defined";
  std::optional<c10::OperatorHandle> planOp =
      dispatcher.findSchema({"diffattn::_v2_plan", ""});
  if (!planOp)
    return "diffattn::_v2_plan is not defined";
  gRuntime = runtime;
  gPlanOp = planOp;
  try {
    auto impl = std::make_unique<torch::Library>(
        torch::Library::IMPL, "diffattn", c10::DispatchKey::CUDA, __FILE__,
        __LINE__);
    // Checks the schema Python defined against v2Cuda's signature.
    impl->impl("v2", TORCH_FN(v2Cuda));
    gCudaImpl = std::move(impl);
  } catch (const c10::Error &e) {
    return e.what_without_backtrace();
  }
  // The autograd dispatch in C++ (Python registers the formula on
  // _v2_train); without _v2_train, Python registers it on v2 itself.
  gTrainOp = dispatcher.findSchema({"diffattn::_v2_train", ""});
  if (gTrainOp) {
    try {
      auto autograd = std::make_unique<torch::Library>(
          torch::Library::IMPL, "diffattn", c10::DispatchKey::Autograd,
          __FILE__, __LINE__);
      autograd->impl("v2",
                     torch::CppFunction::makeFromBoxedFunction<&v2Autograd>());
      gAutogradImpl = std::move(autograd);
    } catch (const c10::Error &) {
      // The CUDA kernel stays installed; without the C++ dispatch
      // (autograd_in_cpp() false) Python registers the formula on
      // diffattn::v2 itself.
      gTrainOp.reset();
    }
  }
  return "";
}

/// diffattn_ext::autograd_in_cpp: whether install() registered v2Autograd
/// (Python then registers the formula on diffattn::_v2_train).
bool autogradInCpp() { return gAutogradImpl != nullptr; }

/// diffattn_ext::timing: the kernel's host time since the last call, as
/// [calls, plan look-up us, allocation us, launch us, total us] (look-up:
/// key, plan cache, device guard; allocation: output and workspace, and
/// the stream; launch: diffattn_launch, i.e. checks and every stage's
/// cuLaunchKernel); resets the sums and turns the measurement on or off.
std::vector<double> timing(bool enable) {
  auto take = [](std::atomic<int64_t> &x) {
    return static_cast<double>(x.exchange(0));
  };
  double calls = take(gTiming.calls);
  std::vector<double> result = {
      calls, take(gTiming.lookupNs) / 1e3, take(gTiming.allocNs) / 1e3,
      take(gTiming.launchNs) / 1e3, take(gTiming.totalNs) / 1e3};
  gTiming.enabled.store(enable);
  return result;
}

} // namespace

TORCH_LIBRARY(diffattn_ext, m) {
  m.def("install(str runtime) -> str", &install);
  m.def("autograd_in_cpp() -> bool", &autogradInCpp);
  m.def("timing(bool enable) -> float[]", &timing);
}
