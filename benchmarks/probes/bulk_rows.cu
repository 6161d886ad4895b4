// Measurement probe, not part of the compiler or its kernels: the decode
// benchmark's K/V stream (as in cp_async_smem_layout.cu) with a synthetic
// compute delay (a clock spin) per 16-key block. MODE 0: cp.async 16 B into
// XOR-swizzled rows (the shipped split-KV copies); MODE 1: cp.async.bulk, one
// 256-byte row per lane, into rows padded to 272 bytes (bulk copies write
// rows linearly, so ldmatrix needs the padding), an mbarrier per stage.
//
//   nvcc -arch=sm_90a -O3 -std=c++17 bulk_rows.cu -o probe && ./probe
//
// H200, 2026-11-29 (TB/s, delay 0 / 1024 / 1536 / 2048 / 3072 cycles):
// cp.async 4.46 / 4.41 / 4.36 / 4.31 / 4.09; bulk 4.27 / 4.14 / 3.95 / 3.53
// / 2.91.
#include <cstdio>
#include <cstdint>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>
#define CK(x) do { cudaError_t err_ = (x); if (err_) { printf("%d %s\n", __LINE__, cudaGetErrorString(err_)); exit(1);} } while (0)
constexpr int ROWB = 256, BLK = 16, ST = 3, PADB = 272, STAGE = 2 * BLK * PADB;
__device__ __forceinline__ uint32_t su(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void spin(int cyc) { if (!cyc) return; long long t0 = clock64(); while (clock64() - t0 < cyc) {} }
template <int MODE>
__global__ void __launch_bounds__(128) probe(const char* K, const char* V, int S, int H, int delay, float* out) {
  extern __shared__ __align__(128) char smem[];
  __shared__ __align__(8) uint64_t bars[4][ST];
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32, b = blockIdx.x / H, h = blockIdx.x % H;
  size_t rs = (size_t)H * ROWB;
  const char* kb = K + ((size_t)b * S * H + h) * ROWB; const char* vb = V + ((size_t)b * S * H + h) * ROWB;
  char* ws = smem + warp * ST * STAGE;
  int mine = (S / BLK - warp + 3) / 4; float acc = 0;
  if (MODE == 1) {
    if (lane == 0) for (int s = 0; s < ST; ++s) asm volatile("mbarrier.init.shared.b64 [%0], 1;" :: "r"(su(&bars[warp][s])));
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    __syncwarp();
  }
  auto issue = [&](int i) {
    char* st = ws + (i % ST) * STAGE; size_t key = (size_t)(warp + 4 * i) * BLK;
    if (MODE == 0) {
      #pragma unroll
      for (int c = 0; c < 8; ++c) {
        int chunk = c * 32 + lane, r = chunk / 16, col = chunk % 16;
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(su(st + r * ROWB + ((col ^ (r & 7)) * 16))), "l"(kb + (key + r) * rs + col * 16));
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(su(st + BLK * PADB + r * ROWB + ((col ^ (r & 7)) * 16))), "l"(vb + (key + r) * rs + col * 16));
      }
      asm volatile("cp.async.commit_group;" ::: "memory");
    } else {
      uint32_t bar = su(&bars[warp][i % ST]);
      if (lane == 0) asm volatile("mbarrier.arrive.expect_tx.shared.b64 _, [%0], %1;" :: "r"(bar), "r"(2 * BLK * ROWB) : "memory");
      __syncwarp();
      const char* src = (lane < 16 ? kb : vb) + (key + (lane & 15)) * rs;
      asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::
          "r"(su(st + lane * PADB)), "l"(src), "r"(ROWB), "r"(bar) : "memory");
    }
  };
  for (int i = 0; i < ST - 1; ++i) { if (i < mine) issue(i); else if (MODE == 0) asm volatile("cp.async.commit_group;" ::: "memory"); }
  for (int i = 0; i < mine; ++i) {
    if (i + ST - 1 < mine) issue(i + ST - 1); else if (MODE == 0) asm volatile("cp.async.commit_group;" ::: "memory");
    if (MODE == 0) { asm volatile("cp.async.wait_group %0;" :: "n"(ST - 1) : "memory"); __syncwarp(); }
    else {
      uint32_t bar = su(&bars[warp][i % ST]), par = (i / ST) & 1;
      asm volatile("{ .reg .pred p; W: mbarrier.try_wait.parity.shared.b64 p, [%0], %1; @!p bra W; }" :: "r"(bar), "r"(par) : "memory");
    }
    const uint4* st = (const uint4*)(ws + (i % ST) * STAGE);
    #pragma unroll
    for (int c = 0; c < 16; ++c) { uint4 x = st[c * 32 + lane]; acc += __int_as_float(x.x ^ x.w); }
    spin(delay);
    __syncwarp();
  }
  if (acc == 12345.f) out[0] = acc;
}
template <int MODE> void run(const char* K, const char* V, int B, int S, int H, int delay, float* out) {
  size_t sm = 4 * ST * STAGE;
  CK(cudaFuncSetAttribute(probe<MODE>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm));
  cudaEvent_t a, e; cudaEventCreate(&a); cudaEventCreate(&e); std::vector<float> t;
  for (int it = 0; it < 25; ++it) {
    cudaEventRecord(a); probe<MODE><<<B * H, 128, sm>>>(K, V, S, H, delay, out); cudaEventRecord(e);
    CK(cudaEventSynchronize(e)); float ms; cudaEventElapsedTime(&ms, a, e); if (it >= 5) t.push_back(ms);
  }
  CK(cudaGetLastError()); std::sort(t.begin(), t.end()); float ms = t[t.size() / 2];
  int occ; cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, probe<MODE>, 128, sm);
  printf("%s delay=%5d occ=%d %.3f ms %.2f TB/s\n", MODE ? "bulk-row pad272" : "cp.async swizzle", delay, occ, ms, 2.0 * B * S * H * ROWB / ms / 1e9);
}
int main() {
  int B = 32, S = 8192, H = 8; size_t n = (size_t)B * S * H * ROWB; char *K, *V; float* out;
  CK(cudaMalloc(&K, n)); CK(cudaMalloc(&V, n)); CK(cudaMalloc(&out, 4)); CK(cudaMemset(K, 1, n)); CK(cudaMemset(V, 1, n));
  for (int d : {0, 1024, 1536, 2048, 3072}) { run<0>(K, V, B, S, H, d, out); run<1>(K, V, B, S, H, d, out); }
}
