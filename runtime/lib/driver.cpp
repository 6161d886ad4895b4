//===- driver.cpp - the CUDA driver API, opened at run time ---------------===//
//
// Opens libcuda.so.1 with dlopen once per process and fills the Driver
// table with dlsym. The runtime links no CUDA library, so a machine without
// a GPU loads it and checks arguments; only a launch needs the driver.
//
//===----------------------------------------------------------------------===//

#include "driver.h"

#include "diffattn/runtime.h"
#include "error.h"

#include <dlfcn.h>

#include <mutex>

using namespace diffattn::runtime;

const Driver *diffattn::runtime::loadDriver(std::string &why) {
  static Driver driver;
  static bool loaded = false, tried = false;
  static std::string failure;
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  why = failure;
  if (tried)
    return loaded ? &driver : nullptr;
  tried = true;
  void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    const char *err = dlerror();
    why = failure = err ? err : "dlopen(libcuda.so.1) failed";
    return nullptr;
  }
#define DIFFATTN_SYM(name, symbol)                                             \
  driver.name = reinterpret_cast<decltype(driver.name)>(dlsym(lib, symbol));   \
  if (!driver.name) {                                                          \
    why = failure = "libcuda.so.1 has no " symbol;                             \
    return nullptr;                                                            \
  }
  DIFFATTN_SYM(cuInit, "cuInit")
  DIFFATTN_SYM(cuCtxGetCurrent, "cuCtxGetCurrent")
  DIFFATTN_SYM(cuCtxSetCurrent, "cuCtxSetCurrent")
  DIFFATTN_SYM(cuDeviceGet, "cuDeviceGet")
  DIFFATTN_SYM(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain")
  DIFFATTN_SYM(cuModuleLoadData, "cuModuleLoadData")
  DIFFATTN_SYM(cuModuleGetFunction, "cuModuleGetFunction")
  DIFFATTN_SYM(cuFuncSetAttribute, "cuFuncSetAttribute")
  DIFFATTN_SYM(cuLaunchKernel, "cuLaunchKernel")
  DIFFATTN_SYM(cuGetErrorString, "cuGetErrorString")
  DIFFATTN_SYM(cuCtxGetDevice, "cuCtxGetDevice")
  DIFFATTN_SYM(cuDeviceGetAttribute, "cuDeviceGetAttribute")
#undef DIFFATTN_SYM
  driver.cuLaunchKernelEx = reinterpret_cast<decltype(driver.cuLaunchKernelEx)>(
      dlsym(lib, "cuLaunchKernelEx"));
  driver.cuTensorMapEncodeTiled =
      reinterpret_cast<decltype(driver.cuTensorMapEncodeTiled)>(
          dlsym(lib, "cuTensorMapEncodeTiled"));
  if (CUresult rc = driver.cuInit(0)) {
    why = failure = "cuInit failed with CUDA error " + std::to_string(rc);
    return nullptr;
  }
  loaded = true;
  return &driver;
}

int diffattn::runtime::cudaFail(const Driver *driver, CUresult rc,
                                const std::string &what) {
  const char *text = nullptr;
  driver->cuGetErrorString(rc, &text);
  return fail(DIFFATTN_ERROR_CUDA, what + " failed: CUDA error " +
                                       std::to_string(rc) + " (" +
                                       (text ? text : "unknown") + ")");
}
