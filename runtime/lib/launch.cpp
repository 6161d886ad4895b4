//===- launch.cpp - launching a checked kernel ----------------------------===//
//
// Evaluates each stage's grid for the launch's sizes, loads the cubin into
// the current CUDA context on first use, fills the kernel parameters (the
// memref-descriptor fields of each buffer, then the sizes) and launches,
// with cuLaunchKernelEx for programmatic dependent launches.
//
//===----------------------------------------------------------------------===//

#include "launch.h"

#include "driver.h"
#include "error.h"

#include <algorithm>
#include <string>

using namespace diffattn::runtime;

namespace {

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

/// Opens the driver into `d`, makes a context current (the primary context
/// of device 0 if none is) and loads `spec`'s cubin into it unless it is
/// loaded there already.
int prepare(KernelSpec &spec, const Driver *&d) {
  std::string why;
  d = loadDriver(why);
  if (!d)
    return fail(DIFFATTN_ERROR_NO_DRIVER,
                "the CUDA driver is not available: " + why);
  CUcontext ctx = nullptr;
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

/// The kernel parameters of `stage`: `args[i]` points at parameter i, held
/// in `values` (sizes, offsets, strides) or `pointers` (data pointers).
int fillParams(const KernelSpec &spec, const StageSpec &stage,
               const std::vector<const diffattn_buffer *> &ordered,
               const Sizes &sizes, std::vector<int64_t> &values,
               std::vector<void *> &pointers, std::vector<void *> &args) {
  values.assign(stage.params.size(), 0);
  pointers.assign(stage.params.size(), nullptr);
  args.assign(stage.params.size(), nullptr);
  for (size_t i = 0; i < stage.params.size(); ++i) {
    const ParamSpec &p = stage.params[i];
    if (p.field == "value") {
      values[i] = resolve({p.arg, 0, 1}, sizes);
      args[i] = &values[i];
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
      pointers[i] = buf->data;
      args[i] = &pointers[i];
    } else if (p.field == "offset") {
      values[i] = 0;
      args[i] = &values[i];
    } else if (p.field == "size") {
      int64_t n = 1;
      for (int d = 0; d < buf->rank; ++d)
        n *= buf->shape[d];
      values[i] = n;
      args[i] = &values[i];
    } else if (p.field == "stride") {
      values[i] = 1;
      args[i] = &values[i];
    } else {
      return fail(DIFFATTN_ERROR_ARTIFACT, "kernel '" + spec.name +
                                               "': unknown parameter field '" +
                                               p.field + "'");
    }
  }
  return DIFFATTN_OK;
}

/// Launches one stage; a programmatic stage goes through cuLaunchKernelEx
/// where the driver has it.
int launchStage(const Driver *d, const StageSpec &stage, const unsigned grid[3],
                std::vector<void *> &args, void *stream) {
  if (stage.programmatic && d->cuLaunchKernelEx) {
    CUlaunchAttribute attr = {};
    attr.id = kLaunchAttrProgrammaticStreamSerialization;
    attr.value.programmaticStreamSerializationAllowed = 1;
    CUlaunchConfig config = {};
    config.gridDimX = grid[0];
    config.gridDimY = grid[1];
    config.gridDimZ = grid[2];
    config.blockDimX = stage.block[0];
    config.blockDimY = stage.block[1];
    config.blockDimZ = stage.block[2];
    config.sharedMemBytes = static_cast<unsigned>(stage.sharedBytes);
    config.hStream = static_cast<CUstream>(stream);
    config.attrs = &attr;
    config.numAttrs = 1;
    if (CUresult rc =
            d->cuLaunchKernelEx(&config, stage.handle, args.data(), nullptr))
      return cudaFail(d, rc, "cuLaunchKernelEx(" + stage.function + ")");
    return DIFFATTN_OK;
  }
  if (CUresult rc = d->cuLaunchKernel(
          stage.handle, grid[0], grid[1], grid[2], stage.block[0],
          stage.block[1], stage.block[2],
          static_cast<unsigned>(stage.sharedBytes),
          static_cast<CUstream>(stream), args.data(), nullptr))
    return cudaFail(d, rc, "cuLaunchKernel(" + stage.function + ")");
  return DIFFATTN_OK;
}

} // namespace

int diffattn::runtime::launch(
    KernelSpec &spec, const std::vector<const diffattn_buffer *> &ordered,
    const Sizes &sizes, void *stream) {
  const Driver *d = nullptr;
  std::vector<int64_t> values;
  std::vector<void *> pointers, args;
  for (StageSpec &stage : spec.stages) {
    if (skipped(stage, sizes))
      continue;
    unsigned grid[3];
    bool empty = false;
    if (int rc = gridOf(spec, stage, sizes, grid, empty))
      return rc;
    if (empty)
      continue;
    if (!d)
      if (int rc = prepare(spec, d))
        return rc;
    if (int rc =
            fillParams(spec, stage, ordered, sizes, values, pointers, args))
      return rc;
    if (int rc = launchStage(d, stage, grid, args, stream))
      return rc;
  }
  return DIFFATTN_OK;
}
