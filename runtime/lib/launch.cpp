//===- launch.cpp - launching a checked kernel ----------------------------===//
//
// A launch of a configuration seen before (same buffer names, dtypes and
// shapes, same B, Sq, Sk) takes its launch plan: stages, grids and the
// kernel parameter arrays were resolved when the configuration was first
// checked, so the launch re-checks the data pointers and the context,
// writes the pointers and calls the driver. A new configuration is checked
// (check.h), its plan built (each stage's grid for the launch's sizes, the
// memref-descriptor fields of each buffer, then the sizes), the cubin
// loaded into the current CUDA context on first use, and launched, with
// cuLaunchKernelEx for programmatic dependent launches.
//
//===----------------------------------------------------------------------===//

#include "launch.h"

#include "check.h"
#include "driver.h"
#include "error.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

using namespace diffattn::runtime;

namespace {

//===----------------------------------------------------------------------===//
// Timing (diffattn_launch_timing)
//===----------------------------------------------------------------------===//

/// Sums of the host time of launch()'s phases, in ns, while enabled.
struct Timing {
  std::atomic<bool> enabled{false};
  std::atomic<int64_t> launches{0}, misses{0}, lookupNs{0}, contextNs{0},
      paramsNs{0}, stageNs[2]{{0}, {0}}, totalNs{0};
};
Timing gTiming;

int64_t nowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

/// Adds the time since `mark` to `sum` and moves `mark` to now (when on).
void lap(bool on, int64_t &mark, std::atomic<int64_t> &sum) {
  if (!on)
    return;
  int64_t now = nowNs();
  sum.fetch_add(now - mark, std::memory_order_relaxed);
  mark = now;
}

//===----------------------------------------------------------------------===//
// Building a plan
//===----------------------------------------------------------------------===//

/// Whether the stage's skip_when holds for `sizes`: every listed size is at
/// most its bound.
bool skipped(const StageSpec &stage, const Sizes &sizes) {
  return !stage.skipWhen.empty() &&
         std::all_of(
             stage.skipWhen.begin(), stage.skipWhen.end(),
             [&](const auto &bound) {
               return resolve({bound.first, 0, 1}, sizes) <= bound.second;
             });
}

/// Fills `grid` for `sizes`. `empty` says a dimension is 0: nothing to
/// compute, and no launch (a zero grid dimension is a CUDA error).
int gridOf(const KernelSpec &spec, const StageSpec &stage, const Sizes &sizes,
           unsigned grid[3], bool &empty) {
  empty = false;
  for (int i = 0; i < 3; ++i) {
    int64_t n = evaluate(stage.grid[i], sizes);
    if (n <= 0) {
      empty = true;
      return DIFFATTN_OK;
    }
    // CUDA's grid limits: x < 2^31, y and z <= 65535.
    if (n > (i == 0 ? int64_t(0x7fffffff) : int64_t(65535)))
      return fail(DIFFATTN_ERROR_INVALID_ARGUMENT,
                  "kernel '" + spec.name + "': grid dimension " +
                      std::to_string(i) + " would be " + std::to_string(n) +
                      ", over CUDA's limit");
    grid[i] = static_cast<unsigned>(n);
  }
  return DIFFATTN_OK;
}

/// Lays out the kernel parameters of `stage` in `out`: sizes, offsets and
/// strides as values, data pointers as slots naming the caller's buffer
/// (an index into `buffers`, found through `ordered`, check()'s result).
int planParams(const KernelSpec &spec, const StageSpec &stage,
               const diffattn_buffer *buffers,
               const std::vector<const diffattn_buffer *> &ordered,
               const Sizes &sizes, StagePlan &out) {
  size_t n = stage.params.size();
  out.values.assign(n, 0);
  out.pointers.assign(n, nullptr);
  out.args.assign(n, nullptr);
  size_t maps =
      std::count_if(stage.params.begin(), stage.params.end(),
                    [](const ParamSpec &p) { return p.field == "tensor_map"; });
  if (maps)
    out.tensorMaps = std::make_unique<CUtensorMap[]>(maps);
  for (size_t i = 0; i < n; ++i) {
    const ParamSpec &p = stage.params[i];
    out.args[i] = &out.values[i];
    if (p.field == "value") {
      out.values[i] = resolve({p.arg, 0, 1}, sizes);
      continue;
    }
    const diffattn_buffer *buf = nullptr;
    for (const diffattn_buffer *candidate : ordered)
      if (p.arg == candidate->name)
        buf = candidate;
    if (!buf)
      return fail(DIFFATTN_ERROR_ARTIFACT, "kernel '" + spec.name +
                                               "': launch parameter of "
                                               "unknown argument '" +
                                               p.arg + "'");
    if (p.field == "allocated" || p.field == "aligned") {
      out.args[i] = &out.pointers[i];
      out.pointerSlots.emplace_back(static_cast<int>(i),
                                    static_cast<int>(buf - buffers));
    } else if (p.field == "offset") {
      out.values[i] = 0;
    } else if (p.field == "size") {
      int64_t elements = 1;
      for (int d = 0; d < buf->rank; ++d)
        elements *= buf->shape[d];
      out.values[i] = elements;
    } else if (p.field == "stride") {
      out.values[i] = 1;
    } else if (p.field == "tensor_map") {
      // A tiled tensor map over the row-major 4-D buffer [d3, d2, d1, d0]
      // (a 3-D buffer, such as packed sequences' [total, Hkv, D], is
      // [1, d2, d1, d0]): dimensions innermost first, byte strides of
      // dimensions 1 .. 3.
      int dataType = buf->dtype == DIFFATTN_BF16  ? kTensorMapBFloat16
                     : buf->dtype == DIFFATTN_F16 ? kTensorMapFloat16
                     : buf->dtype == DIFFATTN_F32 ? kTensorMapFloat32
                                                  : -1;
      // parseStage checked the box (4 extents) and the swizzle.
      if ((buf->rank != 3 && buf->rank != 4) || dataType < 0)
        return fail(DIFFATTN_ERROR_ARTIFACT,
                    "kernel '" + spec.name + "': tensor map over '" + p.arg +
                        "' needs a 3-D or 4-D f16, bf16 or f32 buffer");
      StagePlan::TensorMapSlot slot;
      slot.buffer = static_cast<int>(buf - buffers);
      slot.dataType = dataType;
      slot.swizzle = p.swizzle == 128  ? 3
                     : p.swizzle == 64 ? 2
                     : p.swizzle == 32 ? 1
                                       : 0;
      unsigned long long elementBytes = buf->dtype == DIFFATTN_F32 ? 4 : 2;
      unsigned long long stride = elementBytes;
      for (int d = 0; d < 4; ++d) {
        int dim = buf->rank - 1 - d;
        slot.dims[d] =
            dim >= 0 ? static_cast<unsigned long long>(buf->shape[dim]) : 1;
        if (d > 0)
          slot.strides[d - 1] = stride;
        stride *= slot.dims[d];
        slot.box[d] = static_cast<unsigned>(p.box[d]);
      }
      out.args[i] = &out.tensorMaps[out.tensorMapSlots.size()];
      out.tensorMapSlots.push_back(slot);
    } else {
      return fail(DIFFATTN_ERROR_ARTIFACT, "kernel '" + spec.name +
                                               "': unknown parameter field '" +
                                               p.field + "'");
    }
  }
  return DIFFATTN_OK;
}

/// Checks a new configuration and builds its plan (not yet bound to a
/// context: no handles).
int buildPlan(const KernelSpec &spec, const diffattn_buffer *buffers,
              int numBuffers, int64_t B, int64_t Sq, int64_t Sk,
              LaunchPlan &plan) {
  std::vector<const diffattn_buffer *> ordered;
  Sizes sizes;
  if (int rc = check(spec, buffers, numBuffers, B, Sq, Sk, ordered, sizes))
    return rc;
  plan.B = B;
  plan.Sq = Sq;
  plan.Sk = Sk;
  plan.buffers.resize(numBuffers);
  for (int j = 0; j < numBuffers; ++j) {
    const diffattn_buffer &buf = buffers[j];
    LaunchPlan::Buffer &desc = plan.buffers[j];
    desc.name = buf.name ? buf.name : "";
    desc.dtype = buf.dtype;
    desc.rank = buf.rank;
    desc.needsData = true;
    for (int d = 0; d < 4; ++d) {
      desc.shape[d] = d < buf.rank ? buf.shape[d] : 0;
      if (d < buf.rank && buf.shape[d] == 0)
        desc.needsData = false;
    }
    // Buffers check() did not take (a name given twice) need nothing.
    if (std::find(ordered.begin(), ordered.end(), &buf) == ordered.end())
      desc.needsData = false;
  }
  for (const StageSpec &stage : spec.stages) {
    if (skipped(stage, sizes))
      continue;
    StagePlan sp;
    bool empty = false;
    if (int rc = gridOf(spec, stage, sizes, sp.grid, empty))
      return rc;
    if (empty)
      continue;
    sp.spec = &stage;
    if (int rc = planParams(spec, stage, buffers, ordered, sizes, sp))
      return rc;
    plan.stages.push_back(std::move(sp));
  }
  return DIFFATTN_OK;
}

/// The plan of this configuration, or null.
LaunchPlan *findPlan(KernelSpec &spec, const diffattn_buffer *buffers,
                     int numBuffers, int64_t B, int64_t Sq, int64_t Sk) {
  for (const auto &plan : spec.plans) {
    if (plan->B != B || plan->Sq != Sq || plan->Sk != Sk ||
        plan->buffers.size() != static_cast<size_t>(numBuffers))
      continue;
    bool same = true;
    for (int j = 0; same && j < numBuffers; ++j) {
      const diffattn_buffer &buf = buffers[j];
      const LaunchPlan::Buffer &desc = plan->buffers[j];
      same =
          buf.dtype == desc.dtype && buf.rank == desc.rank && buf.name &&
          buf.rank >= 0 && buf.rank <= 4 &&
          std::memcmp(buf.shape, desc.shape, buf.rank * sizeof(int64_t)) == 0 &&
          std::strcmp(buf.name, desc.name.c_str()) == 0;
    }
    if (same)
      return plan.get();
  }
  return nullptr;
}

/// Keeps `plan` among the kernel's plans (replacing the oldest when full).
LaunchPlan *keepPlan(KernelSpec &spec, std::unique_ptr<LaunchPlan> plan) {
  if (spec.plans.size() < KernelSpec::kMaxLaunchPlans) {
    spec.plans.push_back(std::move(plan));
    return spec.plans.back().get();
  }
  size_t slot = spec.nextPlan++ % KernelSpec::kMaxLaunchPlans;
  spec.plans[slot] = std::move(plan);
  return spec.plans[slot].get();
}

//===----------------------------------------------------------------------===//
// The driver and the context
//===----------------------------------------------------------------------===//

/// Fails unless the current context's device runs `spec`'s cubin: a cubin
/// of sm_XY runs on compute capability X.Z for Z >= Y, one of an
/// arch-specific target (sm_90a, sm_100a) on X.Y only (CUDA C Programming
/// Guide, "Binary Compatibility" and "Feature Availability").
int checkChip(const Driver *d, const KernelSpec &spec) {
  const std::string &chip = spec.chip;
  if (chip.size() < 5 || chip.compare(0, 3, "sm_") != 0)
    return DIFFATTN_OK; // not recorded: the driver's own check applies
  bool archSpecific = chip.back() == 'a';
  std::string digits = chip.substr(3, chip.size() - 3 - (archSpecific ? 1 : 0));
  if (digits.size() < 2 ||
      digits.find_first_not_of("0123456789") != std::string::npos)
    return DIFFATTN_OK;
  int major = std::stoi(digits.substr(0, digits.size() - 1));
  int minor = digits.back() - '0';
  CUdevice dev;
  if (CUresult rc = d->cuCtxGetDevice(&dev))
    return cudaFail(d, rc, "cuCtxGetDevice");
  int devMajor = 0, devMinor = 0;
  if (CUresult rc =
          d->cuDeviceGetAttribute(&devMajor, kComputeCapabilityMajorAttr, dev))
    return cudaFail(d, rc, "cuDeviceGetAttribute");
  if (CUresult rc =
          d->cuDeviceGetAttribute(&devMinor, kComputeCapabilityMinorAttr, dev))
    return cudaFail(d, rc, "cuDeviceGetAttribute");
  bool runs = devMajor == major &&
              (archSpecific ? devMinor == minor : devMinor >= minor);
  if (runs)
    return DIFFATTN_OK;
  std::string wanted = std::to_string(major) + "." + std::to_string(minor);
  return fail(
      DIFFATTN_ERROR_CUDA,
      "kernel '" + spec.name + "' is a " + chip + " cubin, which runs " +
          (archSpecific ? "only on compute capability " + wanted
                        : "on compute capability " + wanted + " and later " +
                              std::to_string(major) + ".x") +
          "; this GPU is " + std::to_string(devMajor) + "." +
          std::to_string(devMinor) +
          ": compile the kernel for this GPU's target");
}

/// The driver, opened once (a failure is asked again, for its message).
const Driver *driver(std::string &why) {
  static std::atomic<const Driver *> opened{nullptr};
  if (const Driver *d = opened.load(std::memory_order_acquire))
    return d;
  const Driver *d = loadDriver(why);
  if (d)
    opened.store(d, std::memory_order_release);
  return d;
}

/// Makes a context current (the primary context of device 0 if none is)
/// into `ctx` and loads `spec`'s cubin into it unless it is loaded there
/// already.
int prepare(const Driver *d, KernelSpec &spec, CUcontext &ctx) {
  ctx = nullptr;
  if (CUresult rc = d->cuCtxGetCurrent(&ctx))
    return cudaFail(d, rc, "cuCtxGetCurrent");
  if (!ctx) {
    CUdevice dev;
    if (CUresult rc = d->cuDeviceGet(&dev, 0))
      return cudaFail(d, rc, "cuDeviceGet");
    if (CUresult rc = d->cuDevicePrimaryCtxRetain(&ctx, dev))
      return cudaFail(d, rc, "cuDevicePrimaryCtxRetain");
    if (CUresult rc = d->cuCtxSetCurrent(ctx))
      return cudaFail(d, rc, "cuCtxSetCurrent");
  }
  if (spec.context == ctx)
    return DIFFATTN_OK;
  if (int rc = checkChip(d, spec))
    return rc;
  CUmodule mod;
  if (CUresult rc = d->cuModuleLoadData(&mod, spec.cubin.data()))
    return cudaFail(d, rc, "cuModuleLoadData(" + spec.name + ")");
  for (StageSpec &st : spec.stages) {
    if (CUresult rc =
            d->cuModuleGetFunction(&st.handle, mod, st.function.c_str()))
      return cudaFail(d, rc, "cuModuleGetFunction(" + st.function + ")");
    // Without the opt-in a CTA gets 48 KiB of shared memory in all, static
    // (a byte or so of the module's) included: opt in for any dynamic
    // shared memory.
    if (st.sharedBytes > 0)
      if (CUresult rc = d->cuFuncSetAttribute(st.handle, kMaxDynamicSharedAttr,
                                              static_cast<int>(st.sharedBytes)))
        return cudaFail(d, rc, "cuFuncSetAttribute(shared memory)");
  }
  spec.context = ctx;
  return DIFFATTN_OK;
}

/// Encodes the stage's tensor maps over this launch's buffers: they hold
/// the addresses, so a map is encoded again whenever its buffer moved (a
/// host-side call, no device work, so CUDA graph capture is unaffected;
/// the launch copies the parameters, so rewriting them later is safe).
int encodeTensorMaps(const Driver *d, const KernelSpec &spec, StagePlan &stage,
                     const diffattn_buffer *buffers) {
  if (stage.tensorMapSlots.empty())
    return DIFFATTN_OK;
  if (!d->cuTensorMapEncodeTiled)
    return fail(DIFFATTN_ERROR_CUDA,
                "kernel '" + spec.name +
                    "' loads through tensor maps, and this CUDA driver has "
                    "no cuTensorMapEncodeTiled (CUDA 12 or later needed)");
  static const unsigned kElementStrides[4] = {1, 1, 1, 1};
  for (size_t m = 0; m < stage.tensorMapSlots.size(); ++m) {
    StagePlan::TensorMapSlot &slot = stage.tensorMapSlots[m];
    const diffattn_buffer &buf = buffers[slot.buffer];
    if (slot.encoded && slot.encodedFor == buf.data)
      continue;
    // TMA needs 16-byte aligned addresses and strides.
    if (reinterpret_cast<uintptr_t>(buf.data) % 16)
      return fail(DIFFATTN_ERROR_INVALID_ARGUMENT,
                  std::string("kernel '") + spec.name + "': buffer '" +
                      (buf.name ? buf.name : "") +
                      "' must be 16-byte aligned (it is loaded with TMA)");
    if (CUresult rc = d->cuTensorMapEncodeTiled(
            &stage.tensorMaps[m], slot.dataType, 4, buf.data, slot.dims,
            slot.strides, slot.box, kElementStrides, /*interleave=*/0,
            slot.swizzle, kTensorMapL2Promotion256B, /*oobFill=*/0)) {
      slot.encoded = false;
      return cudaFail(d, rc,
                      std::string("cuTensorMapEncodeTiled(") +
                          (buf.name ? buf.name : "") + ") for " + spec.name);
    }
    slot.encoded = true;
    slot.encodedFor = buf.data;
  }
  return DIFFATTN_OK;
}

/// Launches one planned stage; a programmatic stage goes through
/// cuLaunchKernelEx where the driver has it.
int launchStage(const Driver *d, StagePlan &stage, void *stream) {
  const StageSpec &spec = *stage.spec;
  if (spec.programmatic && d->cuLaunchKernelEx) {
    CUlaunchAttribute attr = {};
    attr.id = kLaunchAttrProgrammaticStreamSerialization;
    attr.value.programmaticStreamSerializationAllowed = 1;
    CUlaunchConfig config = {};
    config.gridDimX = stage.grid[0];
    config.gridDimY = stage.grid[1];
    config.gridDimZ = stage.grid[2];
    config.blockDimX = spec.block[0];
    config.blockDimY = spec.block[1];
    config.blockDimZ = spec.block[2];
    config.sharedMemBytes = static_cast<unsigned>(spec.sharedBytes);
    config.hStream = static_cast<CUstream>(stream);
    config.attrs = &attr;
    config.numAttrs = 1;
    if (CUresult rc = d->cuLaunchKernelEx(&config, stage.handle,
                                          stage.args.data(), nullptr))
      return cudaFail(d, rc, "cuLaunchKernelEx(" + spec.function + ")");
    return DIFFATTN_OK;
  }
  if (CUresult rc = d->cuLaunchKernel(
          stage.handle, stage.grid[0], stage.grid[1], stage.grid[2],
          spec.block[0], spec.block[1], spec.block[2],
          static_cast<unsigned>(spec.sharedBytes),
          static_cast<CUstream>(stream), stage.args.data(), nullptr))
    return cudaFail(d, rc, "cuLaunchKernel(" + spec.function + ")");
  return DIFFATTN_OK;
}

} // namespace

int diffattn::runtime::launch(KernelSpec &spec, const diffattn_buffer *buffers,
                              int numBuffers, int64_t B, int64_t Sq, int64_t Sk,
                              void *stream) {
  bool on = gTiming.enabled.load(std::memory_order_relaxed);
  int64_t start = on ? nowNs() : 0, mark = start;
  // DIFFATTN_LAUNCH_PLANS=0: every launch takes the checking path (to
  // measure what the plans save).
  static const bool usePlans = [] {
    const char *env = std::getenv("DIFFATTN_LAUNCH_PLANS");
    return !env || std::strcmp(env, "0") != 0;
  }();
  LaunchPlan *plan = usePlans && numBuffers >= 0 && buffers
                         ? findPlan(spec, buffers, numBuffers, B, Sq, Sk)
                         : nullptr;
  // A null data pointer takes the checking path, which names the buffer.
  for (size_t j = 0; plan && j < plan->buffers.size(); ++j)
    if (plan->buffers[j].needsData && !buffers[j].data)
      plan = nullptr;
  if (!plan) {
    if (on)
      gTiming.misses.fetch_add(1, std::memory_order_relaxed);
    auto fresh = std::make_unique<LaunchPlan>();
    if (int rc = buildPlan(spec, buffers, numBuffers, B, Sq, Sk, *fresh))
      return rc;
    plan = keepPlan(spec, std::move(fresh));
  }
  lap(on, mark, gTiming.lookupNs);
  if (!plan->stages.empty()) {
    std::string why;
    const Driver *d = driver(why);
    if (!d)
      return fail(DIFFATTN_ERROR_NO_DRIVER,
                  "the CUDA driver is not available: " + why);
    CUcontext ctx = nullptr;
    if (CUresult rc = d->cuCtxGetCurrent(&ctx))
      return cudaFail(d, rc, "cuCtxGetCurrent");
    if (!ctx || ctx != plan->context) {
      if (int rc = prepare(d, spec, ctx))
        return rc;
      for (StagePlan &stage : plan->stages)
        stage.handle = stage.spec->handle;
      plan->context = ctx;
    }
    lap(on, mark, gTiming.contextNs);
    int index = 0;
    for (StagePlan &stage : plan->stages) {
      for (const auto &[param, buffer] : stage.pointerSlots)
        stage.pointers[param] = buffers[buffer].data;
      if (int rc = encodeTensorMaps(d, spec, stage, buffers))
        return rc;
      lap(on, mark, gTiming.paramsNs);
      if (int rc = launchStage(d, stage, stream))
        return rc;
      lap(on, mark, gTiming.stageNs[std::min(index++, 1)]);
    }
  }
  if (on) {
    gTiming.launches.fetch_add(1, std::memory_order_relaxed);
    gTiming.totalNs.fetch_add(nowNs() - start, std::memory_order_relaxed);
  }
  return DIFFATTN_OK;
}

int diffattn::runtime::takeLaunchTiming(int enable, double *out, int capacity) {
  auto take = [](std::atomic<int64_t> &x) {
    return static_cast<double>(x.exchange(0));
  };
  double values[] = {
      take(gTiming.launches),         take(gTiming.misses),
      take(gTiming.lookupNs) / 1e3,   take(gTiming.contextNs) / 1e3,
      take(gTiming.paramsNs) / 1e3,   take(gTiming.stageNs[0]) / 1e3,
      take(gTiming.stageNs[1]) / 1e3, take(gTiming.totalNs) / 1e3};
  gTiming.enabled.store(enable != 0);
  int n = std::min<int>(capacity, sizeof(values) / sizeof(values[0]));
  for (int i = 0; out && i < n; ++i)
    out[i] = values[i];
  return out ? std::max(n, 0) : 0;
}
