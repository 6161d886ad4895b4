//===- launch_cost.cpp - host cost of diffattn_launch, without torch ------===//
//
// Times the runtime's C API alone on a decode step of the serving
// configuration (32 query / 8 KV heads, D 128, bf16, kv_len given): the
// host time of diffattn_launch per call, and its phases
// (diffattn_launch_timing). Device buffers come from the driver
// (cuMemAlloc, zero-filled: kv_len 0, so the kernels do little); the
// stream is the legacy default stream, synchronised every 50 calls so
// that a full launch queue never makes a launch wait for the GPU.
//
//   g++ -O2 -std=c++17 benchmarks/launch_cost.cpp -I runtime/include \
//       -L BUILD/lib -ldiffattn_runtime -ldl -o launch_cost
//   ./launch_cost KERNEL_DIR B Sk [calls]
//
// Prints one JSON line. Run it with DIFFATTN_LAUNCH_PLANS=0 for the launch
// without plans.
//
//===----------------------------------------------------------------------===//

#include "diffattn/runtime.h"

#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <vector>

namespace {

using CUresult = int;
struct Cuda {
  CUresult (*init)(unsigned);
  CUresult (*deviceGet)(int *, int);
  CUresult (*primaryCtxRetain)(void **, int);
  CUresult (*ctxSetCurrent)(void *);
  CUresult (*memAlloc)(unsigned long long *, size_t);
  CUresult (*memsetD8)(unsigned long long, unsigned char, size_t);
  CUresult (*ctxSynchronize)();
};

bool openCuda(Cuda &c) {
  void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib)
    return false;
#define SYM(member, name)                                                      \
  c.member = reinterpret_cast<decltype(c.member)>(dlsym(lib, name));           \
  if (!c.member)                                                               \
    return false;
  SYM(init, "cuInit")
  SYM(deviceGet, "cuDeviceGet")
  SYM(primaryCtxRetain, "cuDevicePrimaryCtxRetain")
  SYM(ctxSetCurrent, "cuCtxSetCurrent")
  SYM(memAlloc, "cuMemAlloc_v2")
  SYM(memsetD8, "cuMemsetD8_v2")
  SYM(ctxSynchronize, "cuCtxSynchronize")
#undef SYM
  return true;
}

double nowUs() {
  return std::chrono::duration<double, std::micro>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

} // namespace

int main(int argc, char **argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s KERNEL_DIR B Sk [calls]\n", argv[0]);
    return 2;
  }
  const int64_t B = std::atoll(argv[2]), Sq = 1, Sk = std::atoll(argv[3]);
  const int calls = argc > 4 ? std::atoi(argv[4]) : 2000;
  Cuda cu;
  void *ctx = nullptr;
  int dev = 0;
  if (!openCuda(cu) || cu.init(0) || cu.deviceGet(&dev, 0) ||
      cu.primaryCtxRetain(&ctx, dev) || cu.ctxSetCurrent(ctx)) {
    std::fprintf(stderr, "no CUDA driver or device\n");
    return 1;
  }
  diffattn_module *module = nullptr;
  if (diffattn_module_load(argv[1], &module)) {
    std::fprintf(stderr, "%s\n", diffattn_last_error());
    return 1;
  }
  const char *kernel = diffattn_module_kernel_name(module, 0);
  int64_t ws = diffattn_workspace_elements(module, kernel, B, Sq, Sk);
  struct Spec {
    const char *name;
    int32_t dtype;
    std::vector<int64_t> shape;
  };
  std::vector<Spec> specs = {{"q", DIFFATTN_BF16, {B, Sq, 32, 128}},
                             {"k", DIFFATTN_BF16, {B, Sk, 8, 128}},
                             {"v", DIFFATTN_BF16, {B, Sk, 8, 128}},
                             {"lam", DIFFATTN_BF16, {B, Sq, 16}},
                             {"kv_len", DIFFATTN_I32, {B}},
                             {"out", DIFFATTN_BF16, {B, Sq, 16, 128}}};
  if (ws > 0)
    specs.push_back({"workspace", DIFFATTN_F32, {ws}});
  std::vector<diffattn_buffer> buffers;
  for (const Spec &s : specs) {
    diffattn_buffer buf{};
    buf.name = s.name;
    buf.dtype = s.dtype;
    buf.rank = static_cast<int32_t>(s.shape.size());
    size_t bytes = s.dtype == DIFFATTN_F32 || s.dtype == DIFFATTN_I32 ? 4 : 2;
    for (int d = 0; d < buf.rank; ++d) {
      buf.shape[d] = s.shape[d];
      bytes *= static_cast<size_t>(s.shape[d]);
    }
    unsigned long long ptr = 0;
    if (cu.memAlloc(&ptr, bytes) || cu.memsetD8(ptr, 0, bytes)) {
      std::fprintf(stderr, "cuMemAlloc of %zu bytes failed\n", bytes);
      return 1;
    }
    buf.data = reinterpret_cast<void *>(ptr);
    buffers.push_back(buf);
  }
  auto launch = [&] {
    return diffattn_launch(module, kernel, buffers.data(),
                           static_cast<int>(buffers.size()), B, Sq, Sk,
                           nullptr);
  };
  for (int i = 0; i < 20; ++i)
    if (launch()) {
      std::fprintf(stderr, "%s\n", diffattn_last_error());
      return 1;
    }
  cu.ctxSynchronize();
  // Per call: the median over blocks of 50 calls (each block then waits).
  std::vector<double> perCall;
  double sums[8] = {0};
  diffattn_launch_timing(0, nullptr, 0);
  for (int pass = 0; pass < 2; ++pass) {
    // Pass 0: wall time only; pass 1: with the runtime's phase timing.
    if (pass == 1)
      diffattn_launch_timing(1, nullptr, 0);
    for (int done = 0; done < calls; done += 50) {
      double t0 = nowUs();
      for (int i = 0; i < 50; ++i)
        if (launch()) {
          std::fprintf(stderr, "%s\n", diffattn_last_error());
          return 1;
        }
      double t1 = nowUs();
      cu.ctxSynchronize();
      if (pass == 0)
        perCall.push_back((t1 - t0) / 50);
    }
  }
  int n = diffattn_launch_timing(0, sums, 8);
  std::sort(perCall.begin(), perCall.end());
  double launches = n > 0 && sums[0] > 0 ? sums[0] : 1;
  std::printf("{\"B\": %lld, \"Sk\": %lld, \"workspace\": %lld, "
              "\"plans\": %s, \"launch_us_median\": %.3f, "
              "\"launch_us_min\": %.3f, \"misses\": %.0f, "
              "\"lookup_us\": %.3f, \"context_us\": %.3f, "
              "\"params_us\": %.3f, \"stage0_us\": %.3f, "
              "\"later_stages_us\": %.3f, \"total_us\": %.3f}\n",
              static_cast<long long>(B), static_cast<long long>(Sk),
              static_cast<long long>(ws),
              getenv("DIFFATTN_LAUNCH_PLANS") &&
                      std::string_view(getenv("DIFFATTN_LAUNCH_PLANS")) == "0"
                  ? "false"
                  : "true",
              perCall[perCall.size() / 2], perCall.front(), sums[1],
              sums[2] / launches, sums[3] / launches, sums[4] / launches,
              sums[5] / launches, sums[6] / launches, sums[7] / launches);
  diffattn_module_free(module);
  return 0;
}
