//===- runtime.cpp - the runtime's C API ----------------------------------===//
//
// Implements include/diffattn/runtime.h on top of the runtime's parts:
// manifest.h (reading an artifact directory), check.h (a launch's
// arguments), launch.h (running the stages) and error.h (the message of
// diffattn_last_error). Self-contained C++17; no MLIR, no CUDA headers.
//
//===----------------------------------------------------------------------===//

#include "diffattn/runtime.h"

#include "check.h"
#include "error.h"
#include "launch.h"
#include "manifest.h"

#include <memory>
#include <mutex>
#include <string>
#include <vector>

using namespace diffattn::runtime;

/// A loaded artifact directory: its kernels, and the lock that serialises
/// launches (which load cubins into CUDA contexts on first use).
struct diffattn_module {
  std::string dir;
  std::vector<std::unique_ptr<KernelSpec>> kernels;
  std::mutex mutex;

  KernelSpec *find(const char *name) const {
    for (const auto &k : kernels)
      if (name && k->name == name)
        return k.get();
    return nullptr;
  }
};

namespace {

/// The kernel `name` of `module`, or null after recording why not.
KernelSpec *findKernel(const diffattn_module *module, const char *name) {
  if (!module) {
    fail(DIFFATTN_ERROR_INVALID_ARGUMENT, "null module");
    return nullptr;
  }
  KernelSpec *spec = module->find(name);
  if (!spec)
    fail(DIFFATTN_ERROR_INVALID_ARGUMENT, std::string("no kernel '") +
                                              (name ? name : "(null)") +
                                              "' in " + module->dir);
  return spec;
}

} // namespace

extern "C" {

const char *diffattn_last_error(void) { return lastError(); }

int diffattn_module_load(const char *dir, diffattn_module **module) {
  if (!dir || !module)
    return fail(DIFFATTN_ERROR_INVALID_ARGUMENT, "null argument");
  *module = nullptr;
  auto result = std::make_unique<diffattn_module>();
  result->dir = dir;
  if (int rc = loadManifest(result->dir, result->kernels))
    return rc;
  *module = result.release();
  return DIFFATTN_OK;
}

void diffattn_module_free(diffattn_module *module) { delete module; }

int diffattn_module_num_kernels(const diffattn_module *module) {
  return module ? static_cast<int>(module->kernels.size()) : 0;
}

const char *diffattn_module_kernel_name(const diffattn_module *module, int i) {
  if (!module || i < 0 || i >= static_cast<int>(module->kernels.size()))
    return nullptr;
  return module->kernels[i]->name.c_str();
}

int diffattn_check(const diffattn_module *module, const char *kernel,
                   const diffattn_buffer *buffers, int num_buffers, int64_t B,
                   int64_t Sq, int64_t Sk) {
  const KernelSpec *spec = findKernel(module, kernel);
  if (!spec)
    return DIFFATTN_ERROR_INVALID_ARGUMENT;
  std::vector<const diffattn_buffer *> ordered;
  Sizes sizes;
  return check(*spec, buffers, num_buffers, B, Sq, Sk, ordered, sizes);
}

int diffattn_launch(diffattn_module *module, const char *kernel,
                    const diffattn_buffer *buffers, int num_buffers, int64_t B,
                    int64_t Sq, int64_t Sk, void *stream) {
  KernelSpec *spec = findKernel(module, kernel);
  if (!spec)
    return DIFFATTN_ERROR_INVALID_ARGUMENT;
  // The plans and the loaded state of the module's kernels change under
  // the lock only.
  std::lock_guard<std::mutex> lock(module->mutex);
  return launch(*spec, buffers, num_buffers, B, Sq, Sk, stream);
}

int diffattn_launch_timing(int enable, double *sums, int capacity) {
  return takeLaunchTiming(enable, sums, capacity);
}

int64_t diffattn_workspace_elements(const diffattn_module *module,
                                    const char *kernel, int64_t B, int64_t Sq,
                                    int64_t Sk) {
  const KernelSpec *spec = findKernel(module, kernel);
  if (!spec)
    return -1;
  if (B < 0 || Sq < 0 || Sk < 0)
    return 0;
  return spec->workspace.empty()
             ? 0
             : evaluate(spec->workspace, sizesFor(*spec, B, Sq, Sk));
}

} // extern "C"
