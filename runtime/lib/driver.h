//===- driver.h - the CUDA driver API, opened at run time -------*- C++ -*-===//
//
// The few CUDA driver entry points the runtime calls, looked up with dlsym
// in libcuda.so.1 at the first launch. The types below mirror cuda.h
// (CUDA 12) so the runtime builds without the CUDA toolkit; building,
// loading the runtime and checking arguments need no driver.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_RUNTIME_LIB_DRIVER_H
#define DIFFATTN_RUNTIME_LIB_DRIVER_H

#include <string>

namespace diffattn::runtime {

using CUresult = int;
using CUdevice = int;
using CUcontext = void *;
using CUmodule = void *;
using CUfunction = void *;
using CUstream = void *;

/// CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES.
constexpr int kMaxDynamicSharedAttr = 8;

/// CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR (cuda.h).
constexpr int kComputeCapabilityMajorAttr = 75;
constexpr int kComputeCapabilityMinorAttr = 76;

/// CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION: the launch may
/// start before the previous work on the stream ends.
constexpr int kLaunchAttrProgrammaticStreamSerialization = 6;

/// cuda.h's CUlaunchAttribute, reduced to the member the runtime sets.
struct CUlaunchAttribute {
  int id;
  char pad[8 - sizeof(int)];
  union {
    char bytes[64];
    int programmaticStreamSerializationAllowed;
  } value;
};
static_assert(sizeof(CUlaunchAttribute) == 72, "cuda.h's CUlaunchAttribute");

/// cuda.h's CUlaunchConfig: cuLaunchKernelEx's configuration.
struct CUlaunchConfig {
  unsigned gridDimX, gridDimY, gridDimZ;
  unsigned blockDimX, blockDimY, blockDimZ;
  unsigned sharedMemBytes;
  CUstream hStream;
  CUlaunchAttribute *attrs;
  unsigned numAttrs;
};

/// cuda.h's CUtensorMap: 128 opaque bytes, 64-byte aligned.
struct alignas(64) CUtensorMap {
  unsigned long long opaque[16];
};
static_assert(sizeof(CUtensorMap) == 128, "cuda.h's CUtensorMap");
/// cuda.h's CUtensorMapDataType values used here.
constexpr int kTensorMapFloat16 = 6, kTensorMapFloat32 = 7,
              kTensorMapBFloat16 = 9;
/// CUtensorMapSwizzle (NONE, 32B, 64B, 128B = 0 .. 3) and
/// CUtensorMapL2promotion's L2_256B.
constexpr int kTensorMapL2Promotion256B = 3;

/// The driver's entry points the runtime uses.
struct Driver {
  CUresult (*cuInit)(unsigned);
  CUresult (*cuCtxGetCurrent)(CUcontext *);
  CUresult (*cuCtxSetCurrent)(CUcontext);
  CUresult (*cuDeviceGet)(CUdevice *, int);
  CUresult (*cuDevicePrimaryCtxRetain)(CUcontext *, CUdevice);
  CUresult (*cuModuleLoadData)(CUmodule *, const void *);
  CUresult (*cuModuleGetFunction)(CUfunction *, CUmodule, const char *);
  CUresult (*cuFuncSetAttribute)(CUfunction, int, int);
  CUresult (*cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned,
                             unsigned, unsigned, unsigned, CUstream, void **,
                             void **);
  CUresult (*cuGetErrorString)(CUresult, const char **);
  CUresult (*cuCtxGetDevice)(CUdevice *);
  CUresult (*cuDeviceGetAttribute)(int *, int, CUdevice);
  /// Optional (CUDA 12 drivers): null where the driver lacks it, and then
  /// programmatic launches are plain ones.
  CUresult (*cuLaunchKernelEx)(const CUlaunchConfig *, CUfunction, void **,
                               void **);
  /// Optional (CUDA 12 drivers): kernels with tensor-map parameters need it.
  CUresult (*cuTensorMapEncodeTiled)(CUtensorMap *, int dataType, unsigned rank,
                                     void *globalAddress,
                                     const unsigned long long *globalDim,
                                     const unsigned long long *globalStrides,
                                     const unsigned *boxDim,
                                     const unsigned *elementStrides,
                                     int interleave, int swizzle,
                                     int l2Promotion, int oobFill);
};

/// The driver, opened and initialised (cuInit) by the first call; null with
/// `why` saying what is missing when libcuda.so.1 cannot be opened, lacks
/// a required entry point or fails to initialise. Later calls give the
/// first call's answer. Thread-safe.
const Driver *loadDriver(std::string &why);

/// Records the failure of the driver call `what` with CUDA error `rc` (its
/// number and the driver's text) and returns DIFFATTN_ERROR_CUDA.
int cudaFail(const Driver *driver, CUresult rc, const std::string &what);

} // namespace diffattn::runtime

#endif // DIFFATTN_RUNTIME_LIB_DRIVER_H
