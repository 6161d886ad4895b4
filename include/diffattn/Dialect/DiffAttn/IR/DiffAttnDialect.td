//===- DiffAttnDialect.td - diffattn dialect definition ----*- tablegen -*-===//
//
// The diffattn dialect: tensor-level operations with the semantics of
// differential attention (Differential Transformer V1 and V2).
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_DIALECT_DIFFATTN_IR_DIFFATTNDIALECT_TD
#define DIFFATTN_DIALECT_DIFFATTN_IR_DIFFATTNDIALECT_TD

include "mlir/IR/OpBase.td"

def DiffAttn_Dialect : Dialect {
  let name = "diffattn";
  let summary = "Differential attention (Differential Transformer V1 and V2)";
  let description = [{
    The `diffattn` dialect represents differential attention as single
    tensor-level operations, so that passes can recognise it in model graphs
    (`--diffattn-fuse`), decompose it into upstream linalg (the oracle), and
    tile it into FlashAttention-style kernels.

    Differential attention computes two softmax attention maps over the same
    keys and values and subtracts one from the other, scaled by lambda, so
    that attention mass both maps share cancels. All operations use the BSHD
    layout of `flash_attn_func`: batch, sequence, heads, head dimension.

    Batch and sequence lengths may be dynamic; head counts and head
    dimensions must be static, since kernels are specialised on them.
  }];
  let cppNamespace = "::mlir::diffattn";
}

class DiffAttn_Op<string mnemonic, list<Trait> traits = []>
    : Op<DiffAttn_Dialect, mnemonic, traits>;

#endif // DIFFATTN_DIALECT_DIFFATTN_IR_DIFFATTNDIALECT_TD
