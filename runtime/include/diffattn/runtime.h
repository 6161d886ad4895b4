/*===- runtime.h - diffattn runtime: load artifacts, launch kernels -----===*\
|*                                                                        *|
|* A small C API over the CUDA driver API. It loads a directory written   *|
|* by `diffattn-compile --target=sm_80|sm_90 -o DIR` (manifest.json plus  *|
|* one .cubin per kernel), checks a launch's buffers against the kernel's *|
|* manifest entry, and launches on the caller's stream. The driver        *|
|* (libcuda.so.1) is opened at run time: building, loading this library   *|
|* and validating arguments need no GPU. No MLIR inside.                  *|
|*                                                                        *|
\*===----------------------------------------------------------------------===*/

#ifndef DIFFATTN_RUNTIME_H
#define DIFFATTN_RUNTIME_H

#include <stdint.h>

#ifndef DIFFATTN_RUNTIME_EXPORT
#define DIFFATTN_RUNTIME_EXPORT
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes. */
enum {
  DIFFATTN_OK = 0,
  DIFFATTN_ERROR_INVALID_ARGUMENT = 1, /* bad shapes, dtypes, names, sizes */
  DIFFATTN_ERROR_ARTIFACT = 2,         /* unreadable or malformed artifact */
  DIFFATTN_ERROR_NO_DRIVER = 3,        /* libcuda.so.1 not loadable */
  DIFFATTN_ERROR_CUDA = 4              /* a CUDA driver call failed */
};

/* Element types of buffers. */
enum {
  DIFFATTN_F32 = 0,
  DIFFATTN_F16 = 1,
  DIFFATTN_BF16 = 2,
  DIFFATTN_I32 = 3
};

/* One tensor argument: a contiguous row-major device buffer. */
typedef struct {
  const char *name; /* the manifest's argument name: q, k, v, lam, ... */
  void *data;       /* device pointer */
  int32_t dtype;    /* DIFFATTN_F32, ... */
  int32_t rank;
  int64_t shape[4];
} diffattn_buffer;

typedef struct diffattn_module diffattn_module;

/* Loads the artifact directory `dir` (manifest.json and cubins; cubins are
   read now and loaded into the CUDA context at the first launch). */
DIFFATTN_RUNTIME_EXPORT int diffattn_module_load(const char *dir,
                                                 diffattn_module **module);
DIFFATTN_RUNTIME_EXPORT void diffattn_module_free(diffattn_module *module);

/* Number of kernels and the name of kernel `i`. */
DIFFATTN_RUNTIME_EXPORT int
diffattn_module_num_kernels(const diffattn_module *module);
DIFFATTN_RUNTIME_EXPORT const char *
diffattn_module_kernel_name(const diffattn_module *module, int i);

/* Checks `buffers` (any order, matched by name) and the sizes B, Sq, Sk
   against kernel `kernel`'s manifest entry, without launching. */
DIFFATTN_RUNTIME_EXPORT int diffattn_check(const diffattn_module *module,
                                           const char *kernel,
                                           const diffattn_buffer *buffers,
                                           int num_buffers, int64_t B,
                                           int64_t Sq, int64_t Sk);

/* f32 elements of the scratch buffer kernel `kernel` needs for these sizes
   (0: none; -1: no such kernel). When it is > 0, the launch takes one more
   buffer named "workspace" (f32, rank 1, at least that many elements),
   which the caller allocates (e.g. from its framework's stream-ordered
   allocator) and keeps alive until the launch's work is done. */
DIFFATTN_RUNTIME_EXPORT int64_t
diffattn_workspace_elements(const diffattn_module *module, const char *kernel,
                            int64_t B, int64_t Sq, int64_t Sk);

/* Checks as diffattn_check, then launches kernel `kernel` (all its stages,
   in order) on `stream` (a CUstream; 0 is the legacy default stream) in the
   calling thread's current CUDA context (the device's primary context if
   none is current). A launch of a configuration (buffer names, dtypes and
   shapes in the caller's order; B, Sq, Sk) launched before reuses that
   launch's plan (the checks' outcome, grids, kernel parameter layout): it
   checks the data pointers for null and the current context, writes the
   pointers and calls the driver. The environment variable
   DIFFATTN_LAUNCH_PLANS=0 turns the plans off (every launch checks and
   lays out everything), to measure them. */
DIFFATTN_RUNTIME_EXPORT int
diffattn_launch(diffattn_module *module, const char *kernel,
                const diffattn_buffer *buffers, int num_buffers, int64_t B,
                int64_t Sq, int64_t Sk, void *stream);

/* For benchmarks: host time of diffattn_launch by phase, summed over the
   launches since the last call (all threads and modules), written to
   `sums` (at most `capacity` values): launches, launches without a plan,
   then microseconds in the plan look-up (or the checks and the new plan),
   the driver and context (loading the cubin on first use), the pointer
   writes, the first stage's driver launch, the later stages' driver
   launches, and the whole call. Resets the sums and turns the timing on
   (enable != 0) or off (the default; then nothing is timed). Returns the
   number of values written. */
DIFFATTN_RUNTIME_EXPORT int diffattn_launch_timing(int enable, double *sums,
                                                   int capacity);

/* The message of the calling thread's last failure. */
DIFFATTN_RUNTIME_EXPORT const char *diffattn_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* DIFFATTN_RUNTIME_H */
