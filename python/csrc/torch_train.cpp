//===- torch_train.cpp - C++ CUDA kernels of the training ops -------------===//
//
// The CUDA kernels of the two ops a training step runs (issue 15; schemas
// in diffattn._torch_autograd, where they are torch.library custom ops):
//
//   diffattn::_v2_forward_saved(q, k, v, lam, kv_len, causal, scale,
//       window_left, window_right) -> (out, lse, out_odd)
//   diffattn::v2_backward(q, k, v, lam, out, dout, lse, kv_len, causal,
//       scale, window_left, window_right, out_odd=None)
//       -> (dq, dk, dv, dlam)
//
// so that a forward + backward through autograd launches its kernels
// without the Python CUDA kernels' per-call work (validation, the kernel
// cache's look-up, torch.empty per output, the ctypes launch: 131-367 us
// per training forward and 203-498 us per backward on an H200 host,
// docs/performance.md, train-host run 66). As for diffattn::v2
// (torch_op.cpp), the first call of a configuration asks a Python resolver
// for its launch plan (diffattn::_v2_forward_saved_plan and
// diffattn::_v2_backward_plan, defined by diffattn._torch_native: the Python
// kernels' validation, errors naming the tensor, and kernel choice); for
// later calls of it the CUDA kernel runs no Python (custom_op's Python
// autograd wrapper still runs in front of each op, about 6 us).
//
// The backward's kernels depend on torch's determinism setting
// (diffattn._torch.default_backward_options: the accumulating kernels unless
// torch.use_deterministic_algorithms(True)), so the setting is part of the
// backward's key.
//
//===----------------------------------------------------------------------===//

#include "launch_plan.h"

#include <ATen/Context.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <string>
#include <tuple>

namespace diffattn_torch {

namespace {

/// Plan-cache tags (torch_op.cpp's diffattn::v2 is 1).
constexpr int64_t kForwardSavedTag = 2;
constexpr int64_t kBackwardTag = 3;

std::optional<c10::OperatorHandle> gForwardSavedPlanOp, gBackwardPlanOp;
std::unique_ptr<torch::Library> gTrainingImpl;

/// The CUDA kernel of diffattn::_v2_forward_saved: q [B, Sq, 2H, D], k and
/// v [B, Sk, Hkv, D / Dv], lam [B, Sq, H] (q's dtype or f32), kv_len an
/// optional [B] int32, BSHD and contiguous. Returns out [B, Sq, H, Dv] (q's
/// dtype), lse [B, 2H, Sq] f32 and out_odd [B, Sq, H, Dv] (q's dtype), from
/// one forward kernel (diffattn.v2's ODS, results lse and out_odd).
std::tuple<at::Tensor, at::Tensor, at::Tensor>
forwardSavedCuda(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v,
                 const at::Tensor &lam, const std::optional<at::Tensor> &kvLen,
                 bool causal, std::optional<double> scale, int64_t windowLeft,
                 int64_t windowRight) {
  Key key;
  bool keyed = key.push(kForwardSavedTag) && pushTensor(key, &q) &&
               pushTensor(key, &k) && pushTensor(key, &v) &&
               pushTensor(key, &lam) &&
               pushTensor(key, kvLen ? &*kvLen : nullptr) &&
               pushOptions(key, causal, scale, windowLeft, windowRight);
  // [module, B, Sq, Sk, workspace, out shape (4)]; the resolver raises (the
  // Python kernel's error) for an invalid call.
  const char *name = "diffattn::_v2_forward_saved_plan";
  const Plan *plan = planCache().findOrResolve(
      key, keyed,
      [&] {
        std::vector<int64_t> r = callResolver(
            gForwardSavedPlanOp,
            {q, k, v, lam, kvLen, causal, scale, windowLeft, windowRight},
            name);
        std::unique_ptr<Plan> fresh = planFromResolver(r, 9, name);
        for (int d = 0; d < 4; ++d)
          fresh->outShape[d] = r[5 + d];
        int32_t elem = runtimeDtype(q.scalar_type());
        fresh->add(describe("q", q));
        fresh->add(describe("k", k));
        fresh->add(describe("v", v));
        fresh->add(describe("lam", lam));
        if (kvLen)
          fresh->add(describe("kv_len", *kvLen));
        fresh->add(describe("out", elem, fresh->outShape));
        fresh->add(
            describe("lse", DIFFATTN_F32, {q.size(0), q.size(2), q.size(1)}));
        fresh->add(describe("out_odd", elem, fresh->outShape));
        fresh->addWorkspace();
        return fresh;
      },
      name);

  c10::DeviceGuard guard(q.device());
  at::Tensor out = newCudaTensor(plan->outShape, q.scalar_type(), q);
  at::Tensor lse =
      newCudaTensor({q.size(0), q.size(2), q.size(1)}, at::kFloat, q);
  at::Tensor outOdd = newCudaTensor(plan->outShape, q.scalar_type(), q);
  LaunchData data;
  for (const at::Tensor *t : {&q, &k, &v, &lam})
    data.push(*t);
  if (kvLen)
    data.push(*kvLen);
  for (const at::Tensor *t : {&out, &lse, &outOdd})
    data.push(*t);
  Workspace workspace = data.pushWorkspace(*plan, q);
  launch(*plan, data, q.device());
  return {out, lse, outOdd};
}

/// The CUDA kernel of diffattn::v2_backward: the forward's inputs (as
/// forwardSavedCuda takes them), out and dout [B, Sq, H, Dv] and lse
/// [B, 2H, Sq] f32 from the forward (out_odd, optional, its third result).
/// Returns dq, dk, dv, dlam shaped and typed like q, k, v, lam, from the
/// compiler's backward kernels (one module: its stages launch in order on
/// the current stream, with an f32 workspace where the accumulating kernels
/// add dq).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>
backwardCuda(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v,
             const at::Tensor &lam, const at::Tensor &out,
             const at::Tensor &dout, const at::Tensor &lse,
             const std::optional<at::Tensor> &kvLen, bool causal,
             std::optional<double> scale, int64_t windowLeft,
             int64_t windowRight, const std::optional<at::Tensor> &outOdd) {
  Key key;
  bool keyed = key.push(kBackwardTag);
  for (const at::Tensor *t : {&q, &k, &v, &lam, &out, &dout, &lse})
    keyed = keyed && pushTensor(key, t);
  keyed = keyed && pushTensor(key, kvLen ? &*kvLen : nullptr) &&
          pushTensor(key, outOdd ? &*outOdd : nullptr) &&
          pushOptions(key, causal, scale, windowLeft, windowRight) &&
          key.push(at::globalContext().deterministicAlgorithms() ? 1 : 0);
  // [module, B, Sq, Sk, workspace]; the resolver raises (the Python
  // kernel's error, naming the tensor) for an invalid call.
  const char *name = "diffattn::_v2_backward_plan";
  const Plan *plan = planCache().findOrResolve(
      key, keyed,
      [&] {
        std::vector<int64_t> r =
            callResolver(gBackwardPlanOp,
                         {q, k, v, lam, out, dout, lse, kvLen, causal, scale,
                          windowLeft, windowRight, outOdd},
                         name);
        std::unique_ptr<Plan> fresh = planFromResolver(r, 5, name);
        fresh->add(describe("q", q));
        fresh->add(describe("k", k));
        fresh->add(describe("v", v));
        fresh->add(describe("lam", lam));
        fresh->add(describe("out", out));
        fresh->add(describe("dout", dout));
        fresh->add(describe("lse", lse));
        if (kvLen)
          fresh->add(describe("kv_len", *kvLen));
        if (outOdd)
          fresh->add(describe("out_odd", *outOdd));
        fresh->add(describe("dq", q));
        fresh->add(describe("dk", k));
        fresh->add(describe("dv", v));
        fresh->add(describe("dlam", lam));
        fresh->addWorkspace();
        return fresh;
      },
      name);

  c10::DeviceGuard guard(q.device());
  at::Tensor dq = newCudaTensor(q.sizes(), q.scalar_type(), q);
  at::Tensor dk = newCudaTensor(k.sizes(), k.scalar_type(), q);
  at::Tensor dv = newCudaTensor(v.sizes(), v.scalar_type(), q);
  at::Tensor dlam = newCudaTensor(lam.sizes(), lam.scalar_type(), q);
  LaunchData data;
  for (const at::Tensor *t : {&q, &k, &v, &lam, &out, &dout, &lse})
    data.push(*t);
  if (kvLen)
    data.push(*kvLen);
  if (outOdd)
    data.push(*outOdd);
  for (const at::Tensor *t : {&dq, &dk, &dv, &dlam})
    data.push(*t);
  Workspace workspace = data.pushWorkspace(*plan, q);
  launch(*plan, data, q.device());
  return {dq, dk, dv, dlam};
}

} // namespace

/// Registers forwardSavedCuda and backwardCuda as the CUDA kernels of
/// diffattn::_v2_forward_saved and diffattn::v2_backward (their schemas
/// checked against the kernels' signatures). Needs install() first (the
/// runtime) and the resolvers defined. Returns "" on success (also when
/// already installed), else why not; nothing is registered then.
std::string installTraining() {
  if (gTrainingImpl)
    return "";
  if (!gRuntime.launch)
    return "the runtime is not open (diffattn_ext::install first)";
  auto &dispatcher = c10::Dispatcher::singleton();
  for (const char *op :
       {"diffattn::_v2_forward_saved", "diffattn::v2_backward"})
    if (!dispatcher.findSchema({op, ""}))
      return std::string(op) + " is not defined";
  auto forwardPlan =
      dispatcher.findSchema({"diffattn::_v2_forward_saved_plan", ""});
  auto backwardPlan =
      dispatcher.findSchema({"diffattn::_v2_backward_plan", ""});
  if (!forwardPlan || !backwardPlan)
    return "diffattn::_v2_forward_saved_plan and diffattn::_v2_backward_plan "
           "must be defined";
  try {
    // The resolvers first: a call may come (from any thread) as soon as a
    // kernel is registered.
    gForwardSavedPlanOp = forwardPlan;
    gBackwardPlanOp = backwardPlan;
    auto impl = std::make_unique<torch::Library>(
        torch::Library::IMPL, "diffattn", c10::DispatchKey::CUDA, __FILE__,
        __LINE__);
    impl->impl("_v2_forward_saved", TORCH_FN(forwardSavedCuda));
    impl->impl("v2_backward", TORCH_FN(backwardCuda));
    gTrainingImpl = std::move(impl);
  } catch (const c10::Error &e) {
    gForwardSavedPlanOp.reset();
    gBackwardPlanOp.reset();
    return e.what_without_backtrace();
  }
  return "";
}

bool trainingInstalled() { return gTrainingImpl != nullptr; }

} // namespace diffattn_torch
