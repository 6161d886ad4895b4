//===- Passes.td - CPU target passes -----------------------*- tablegen -*-===//
//
// Passes of the CPU target: what turns lowered kernels into a shared object
// with plain C entry points.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_TARGET_CPU_PASSES_TD
#define DIFFATTN_TARGET_CPU_PASSES_TD

include "mlir/Pass/PassBase.td"

def DiffAttnEmitCEntryPoints
    : Pass<"diffattn-emit-c-entry-points", "ModuleOp"> {
  let summary = "Add a plain C entry point to each lowered CPU kernel";
  let description = [{
    Runs after lowering to the LLVM dialect. For every kernel function
    carrying `diffattn.kernel`, adds an exported `llvm.func` named after
    the kernel with a plain C signature: one pointer per tensor operand in
    the kernel's argument order (contiguous BSHD buffers), then `int64_t B,
    Sq, Sk`. It rebuilds the memref descriptors (row-major strides) and
    calls the lowered kernel, which becomes private.

    ```c
    void diffattn_v2_<config>(const T *q, const T *k, const T *v,
                              const L *lam, T *out,
                              int64_t B, int64_t Sq, int64_t Sk);
    ```
  }];
  let dependentDialects = ["::mlir::LLVM::LLVMDialect"];
}

#endif // DIFFATTN_TARGET_CPU_PASSES_TD
