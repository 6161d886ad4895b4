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
// install_training() then registers the CUDA kernels of the training
// forward and the backward (torch_train.cpp) the same way; launch_plan.h
// holds what both files share.
//
// Needs torch's headers and libc10 / libtorch_cpu only: no CUDA toolkit
// (the current stream comes from c10's device-guard interface), no Python
// headers, no MLIR.
//
//===----------------------------------------------------------------------===//

#include "launch_plan.h"

#include <ATen/core/grad_mode.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <dlfcn.h>

#include <atomic>
#include <chrono>
#include <string>

namespace diffattn_torch {
// torch_train.cpp: registers the training kernels; "" or why not.
std::string installTraining();
bool trainingInstalled();
} // namespace diffattn_torch

namespace {

using namespace diffattn_torch;

/// Plan-cache tag of diffattn::v2's configurations (torch_train.cpp has
/// its own).
constexpr int64_t kV2Tag = 1;

/// diffattn::_v2_plan, the Python resolver of a configuration (found by
/// install()).
std::optional<c10::OperatorHandle> gPlanOp;

//===----------------------------------------------------------------------===//
// Timing
//===----------------------------------------------------------------------===//

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
/// elements, out shape (4)]. Buffers: q, k, v, lam, [kv_len], out,
/// [workspace].
std::unique_ptr<Plan> resolve(const at::Tensor &q, const at::Tensor &k,
                              const at::Tensor &v, const at::Tensor &lam,
                              const std::optional<at::Tensor> &kvLen,
                              bool causal, std::optional<double> scale,
                              int64_t windowLeft, int64_t windowRight) {
  std::vector<int64_t> r = callResolver(
      gPlanOp, {q, k, v, lam, kvLen, causal, scale, windowLeft, windowRight},
      "diffattn::_v2_plan");
  std::unique_ptr<Plan> plan = planFromResolver(r, 9, "diffattn::_v2_plan");
  for (int d = 0; d < 4; ++d)
    plan->outShape[d] = r[5 + d];
  plan->add(describe("q", q));
  plan->add(describe("k", k));
  plan->add(describe("v", v));
  plan->add(describe("lam", lam));
  if (kvLen)
    plan->add(describe("kv_len", *kvLen));
  plan->add(describe("out", runtimeDtype(q.scalar_type()), plan->outShape));
  plan->addWorkspace();
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
  bool keyed = key.push(kV2Tag) && pushTensor(key, &q) && pushTensor(key, &k) &&
               pushTensor(key, &v) && pushTensor(key, &lam) &&
               pushTensor(key, kvLen ? &*kvLen : nullptr) &&
               pushOptions(key, causal, scale, windowLeft, windowRight);
  const Plan *plan = planCache().findOrResolve(
      key, keyed,
      [&] {
        return resolve(q, k, v, lam, kvLen, causal, scale, windowLeft,
                       windowRight);
      },
      "diffattn::_v2_plan");

  // The runtime launches in the current CUDA context: that of q's device.
  c10::DeviceGuard guard(q.device());
  int64_t tLookup = timing ? nowNs() : 0;
  at::Tensor out = newCudaTensor(plan->outShape, q.scalar_type(), q);
  LaunchData data;
  for (const at::Tensor *t : {&q, &k, &v, &lam})
    data.push(*t);
  if (kvLen)
    data.push(*kvLen);
  data.push(out);
  Workspace workspace = data.pushWorkspace(*plan, q);
  int64_t tAlloc = timing ? nowNs() : 0;
  launch(*plan, data, q.device());
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
/// key, plan cache, device guard; allocation: output and workspace; launch:
/// the stream and diffattn_launch, i.e. checks and every stage's
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
  m.def("install_training() -> str", &diffattn_torch::installTraining);
  m.def("training_in_cpp() -> bool", &diffattn_torch::trainingInstalled);
  m.def("autograd_in_cpp() -> bool", &autogradInCpp);
  m.def("timing(bool enable) -> float[]", &timing);
}
