// RUN: diffattn-opt %s --split-input-file --verify-diagnostics
// The verifier rules of diffattn.v2_paged beyond those it shares with
// diffattn.v2 (see lib/Dialect/DiffAttn/IR/DiffAttnOps.cpp).

func.func @block_size(%q: tensor<2x1x8x64xbf16>, %k: tensor<9x24x2x64xbf16>, %lam: tensor<2x1x4xbf16>, %len: tensor<2xi32>, %bt: tensor<2x4xi32>) {
  // expected-error @+1 {{'k_cache' block size (dimension 1, BS) must be a multiple of 16, got 24}}
  %o = diffattn.v2_paged %q, %k, %k, %lam kv_len(%len) block_table(%bt) : (tensor<2x1x8x64xbf16>, tensor<9x24x2x64xbf16>, tensor<9x24x2x64xbf16>, tensor<2x1x4xbf16>, tensor<2xi32>, tensor<2x4xi32>) -> tensor<2x1x4x64xbf16>
  return
}

// -----

func.func @table_elem(%q: tensor<2x1x8x64xbf16>, %k: tensor<9x16x2x64xbf16>, %lam: tensor<2x1x4xbf16>, %len: tensor<2xi32>, %bt: tensor<2x4xi64>) {
  // expected-error @+1 {{'block_table' must have element type i32, got 'i64'}}
  %o = diffattn.v2_paged %q, %k, %k, %lam kv_len(%len) block_table(%bt) : (tensor<2x1x8x64xbf16>, tensor<9x16x2x64xbf16>, tensor<9x16x2x64xbf16>, tensor<2x1x4xbf16>, tensor<2xi32>, tensor<2x4xi64>) -> tensor<2x1x4x64xbf16>
  return
}

// -----

func.func @table_batch(%q: tensor<2x1x8x64xbf16>, %k: tensor<9x16x2x64xbf16>, %lam: tensor<2x1x4xbf16>, %len: tensor<2xi32>, %bt: tensor<3x4xi32>) {
  // expected-error @+1 {{'block_table' dimension 0 (B) is 3, expected 2 to agree with 'q' dimension 0 (B = 2)}}
  %o = diffattn.v2_paged %q, %k, %k, %lam kv_len(%len) block_table(%bt) : (tensor<2x1x8x64xbf16>, tensor<9x16x2x64xbf16>, tensor<9x16x2x64xbf16>, tensor<2x1x4xbf16>, tensor<2xi32>, tensor<3x4xi32>) -> tensor<2x1x4x64xbf16>
  return
}

// -----

func.func @table_rank(%q: tensor<2x1x8x64xbf16>, %k: tensor<9x16x2x64xbf16>, %lam: tensor<2x1x4xbf16>, %len: tensor<2xi32>, %bt: tensor<8xi32>) {
  // expected-error @+1 {{'block_table' must have rank 2 [B, MB], got 'tensor<8xi32>'}}
  %o = diffattn.v2_paged %q, %k, %k, %lam kv_len(%len) block_table(%bt) : (tensor<2x1x8x64xbf16>, tensor<9x16x2x64xbf16>, tensor<9x16x2x64xbf16>, tensor<2x1x4xbf16>, tensor<2xi32>, tensor<8xi32>) -> tensor<2x1x4x64xbf16>
  return
}

// -----

func.func @pools_differ(%q: tensor<2x1x8x64xbf16>, %k: tensor<9x16x2x64xbf16>, %v: tensor<8x16x2x64xbf16>, %lam: tensor<2x1x4xbf16>, %len: tensor<2xi32>, %bt: tensor<2x4xi32>) {
  // expected-error @+1 {{'v_cache' dimension 0 (NB) is 8, expected 9 to agree with 'k_cache' dimension 0 (NB = 9)}}
  %o = diffattn.v2_paged %q, %k, %v, %lam kv_len(%len) block_table(%bt) : (tensor<2x1x8x64xbf16>, tensor<9x16x2x64xbf16>, tensor<8x16x2x64xbf16>, tensor<2x1x4xbf16>, tensor<2xi32>, tensor<2x4xi32>) -> tensor<2x1x4x64xbf16>
  return
}

// -----

func.func @odd_group(%q: tensor<2x1x6x64xbf16>, %k: tensor<9x16x6x64xbf16>, %lam: tensor<2x1x3xbf16>, %len: tensor<2xi32>, %bt: tensor<2x4xi32>) {
  // expected-error @+1 {{group size G = 2H / Hkv = 6 / 6 = 1 must be even}}
  %o = diffattn.v2_paged %q, %k, %k, %lam kv_len(%len) block_table(%bt) : (tensor<2x1x6x64xbf16>, tensor<9x16x6x64xbf16>, tensor<9x16x6x64xbf16>, tensor<2x1x3xbf16>, tensor<2xi32>, tensor<2x4xi32>) -> tensor<2x1x3x64xbf16>
  return
}

// -----

func.func @missing_table(%q: tensor<2x1x8x64xbf16>, %k: tensor<9x16x2x64xbf16>, %lam: tensor<2x1x4xbf16>, %len: tensor<2xi32>) {
  // expected-error @+1 {{'diffattn.v2_paged' op expected 6 operands, but found 5}}
  %o = "diffattn.v2_paged"(%q, %k, %k, %lam, %len) : (tensor<2x1x8x64xbf16>, tensor<9x16x2x64xbf16>, tensor<9x16x2x64xbf16>, tensor<2x1x4xbf16>, tensor<2xi32>) -> tensor<2x1x4x64xbf16>
  return
}

// -----

func.func @heads_not_multiple(%q: tensor<2x1x6x64xbf16>, %k: tensor<9x16x4x64xbf16>, %lam: tensor<2x1x3xbf16>, %len: tensor<2xi32>, %bt: tensor<2x4xi32>) {
  // expected-error @+1 {{'q' heads (2H = 6) must be a multiple of 'k_cache' heads (Hkv = 4)}}
  %o = diffattn.v2_paged %q, %k, %k, %lam kv_len(%len) block_table(%bt) : (tensor<2x1x6x64xbf16>, tensor<9x16x4x64xbf16>, tensor<9x16x4x64xbf16>, tensor<2x1x3xbf16>, tensor<2xi32>, tensor<2x4xi32>) -> tensor<2x1x3x64xbf16>
  return
}
