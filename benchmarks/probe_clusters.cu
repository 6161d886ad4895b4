// probe_clusters.cu - how many thread block clusters of a given shape fit on
// the GPU at once (cudaOccupancyMaxActiveClusters), for a persistent
// cluster launch's grid: a grid of more clusters than fit runs the rest as a
// second wave. An occupancy probe with an empty kernel, not a kernel of the
// project (those come from the compiler).
//
//   nvcc -arch=sm_90a -o probe_clusters benchmarks/probe_clusters.cu
//   ./probe_clusters [CLUSTER_SIZE=2] [THREADS=384] [DYNAMIC_SMEM_BYTES=197744]
//
// Prints one line: "cluster_size=2 threads=384 smem=197744 sms=132
// max_active_clusters=66".
#include <cstdio>
#include <cstdlib>
#include <cuda_runtime.h>

__global__ void emptyKernel() {}

int main(int argc, char **argv) {
  int clusterSize = argc > 1 ? std::atoi(argv[1]) : 2;
  int threads = argc > 2 ? std::atoi(argv[2]) : 384;
  int smem = argc > 3 ? std::atoi(argv[3]) : 197744;
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
    std::fprintf(stderr, "probe_clusters: no CUDA device\n");
    return 1;
  }
  cudaFuncSetAttribute(emptyKernel,
                       cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(prop.multiProcessorCount / clusterSize * clusterSize);
  config.blockDim = dim3(threads);
  config.dynamicSmemBytes = smem;
  cudaLaunchAttribute attr;
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = clusterSize;
  attr.val.clusterDim.y = 1;
  attr.val.clusterDim.z = 1;
  config.attrs = &attr;
  config.numAttrs = 1;
  int clusters = 0;
  cudaError_t rc =
      cudaOccupancyMaxActiveClusters(&clusters, emptyKernel, &config);
  if (rc != cudaSuccess) {
    std::fprintf(stderr, "probe_clusters: %s\n", cudaGetErrorString(rc));
    return 1;
  }
  std::printf("cluster_size=%d threads=%d smem=%d sms=%d "
              "max_active_clusters=%d\n",
              clusterSize, threads, smem, prop.multiProcessorCount, clusters);
  return 0;
}
