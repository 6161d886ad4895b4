// RUN: diffattn-opt %s --split-input-file --verify-diagnostics
// The verifier rules of diffattn.v2_varlen beyond those it shares with
// diffattn.v2 (see lib/Dialect/DiffAttn/IR/DiffAttnOps.cpp).

func.func @offsets_differ(%q: tensor<10x8x64xbf16>, %k: tensor<12x2x64xbf16>, %lam: tensor<10x4xbf16>, %cq: tensor<3xi32>, %ck: tensor<4xi32>) {
  // expected-error @+1 {{'cu_seqlens_k' dimension 0 (B+1) is 4, expected 3 to agree with 'cu_seqlens_q' dimension 0 (B+1 = 3)}}
  %o = diffattn.v2_varlen %q, %k, %k, %lam cu_seqlens(%cq, %ck) : (tensor<10x8x64xbf16>, tensor<12x2x64xbf16>, tensor<12x2x64xbf16>, tensor<10x4xbf16>, tensor<3xi32>, tensor<4xi32>) -> tensor<10x4x64xbf16>
  return
}

// -----

func.func @offsets_elem(%q: tensor<10x8x64xbf16>, %k: tensor<12x2x64xbf16>, %lam: tensor<10x4xbf16>, %cq: tensor<3xi64>, %ck: tensor<3xi32>) {
  // expected-error @+1 {{'cu_seqlens_q' must have element type i32, got 'i64'}}
  %o = diffattn.v2_varlen %q, %k, %k, %lam cu_seqlens(%cq, %ck) : (tensor<10x8x64xbf16>, tensor<12x2x64xbf16>, tensor<12x2x64xbf16>, tensor<10x4xbf16>, tensor<3xi64>, tensor<3xi32>) -> tensor<10x4x64xbf16>
  return
}

// -----

func.func @no_offsets(%q: tensor<10x8x64xbf16>, %k: tensor<12x2x64xbf16>, %lam: tensor<10x4xbf16>, %cq: tensor<0xi32>) {
  // expected-error @+1 {{'cu_seqlens_q' must hold B + 1 >= 1 offsets, got 0}}
  %o = diffattn.v2_varlen %q, %k, %k, %lam cu_seqlens(%cq, %cq) : (tensor<10x8x64xbf16>, tensor<12x2x64xbf16>, tensor<12x2x64xbf16>, tensor<10x4xbf16>, tensor<0xi32>, tensor<0xi32>) -> tensor<10x4x64xbf16>
  return
}

// -----

func.func @q_rank(%q: tensor<1x10x8x64xbf16>, %k: tensor<12x2x64xbf16>, %lam: tensor<10x4xbf16>, %cq: tensor<3xi32>) {
  // expected-error @+1 {{'q' must have rank 3 [Tq, 2H, D], got 'tensor<1x10x8x64xbf16>'}}
  %o = diffattn.v2_varlen %q, %k, %k, %lam cu_seqlens(%cq, %cq) : (tensor<1x10x8x64xbf16>, tensor<12x2x64xbf16>, tensor<12x2x64xbf16>, tensor<10x4xbf16>, tensor<3xi32>, tensor<3xi32>) -> tensor<10x4x64xbf16>
  return
}

// -----

func.func @tokens_differ(%q: tensor<10x8x64xbf16>, %k: tensor<12x2x64xbf16>, %lam: tensor<11x4xbf16>, %cq: tensor<3xi32>) {
  // expected-error @+1 {{'lam' dimension 0 (Tq) is 11, expected 10 to agree with 'q' dimension 0 (Tq = 10)}}
  %o = diffattn.v2_varlen %q, %k, %k, %lam cu_seqlens(%cq, %cq) : (tensor<10x8x64xbf16>, tensor<12x2x64xbf16>, tensor<12x2x64xbf16>, tensor<11x4xbf16>, tensor<3xi32>, tensor<3xi32>) -> tensor<10x4x64xbf16>
  return
}
