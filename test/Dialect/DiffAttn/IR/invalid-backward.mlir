// RUN: diffattn-opt %s --split-input-file --verify-diagnostics
// The verifier rules of diffattn.v2's log-sum-exp result and of
// diffattn.v2_backward beyond those it shares with diffattn.v2 (see
// lib/Dialect/DiffAttn/IR/DiffAttnOps.cpp).

func.func @lse_elem(%q: tensor<2x16x8x32xbf16>, %k: tensor<2x24x2x32xbf16>, %lam: tensor<2x16x4xbf16>) {
  // expected-error @+1 {{'lse' must have element type 'f32' (for 'q' of 'bf16'), got 'bf16'}}
  %o, %l = diffattn.v2 %q, %k, %k, %lam : (tensor<2x16x8x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x16x4xbf16>) -> (tensor<2x16x4x32xbf16>, tensor<2x8x16xbf16>)
  return
}

// -----

// f64 operands compute in f64, so their log-sum-exp is f64, not f32.
func.func @lse_elem_f64(%q: tensor<2x16x8x32xf64>, %k: tensor<2x24x2x32xf64>, %lam: tensor<2x16x4xf64>) {
  // expected-error @+1 {{'lse' must have element type 'f64' (for 'q' of 'f64'), got 'f32'}}
  %o, %l = diffattn.v2 %q, %k, %k, %lam : (tensor<2x16x8x32xf64>, tensor<2x24x2x32xf64>, tensor<2x24x2x32xf64>, tensor<2x16x4xf64>) -> (tensor<2x16x4x32xf64>, tensor<2x8x16xf32>)
  return
}

// -----

func.func @lse_elem_f64_for_f32(%q: tensor<2x16x8x32xf32>, %k: tensor<2x24x2x32xf32>, %lam: tensor<2x16x4xf32>) {
  // expected-error @+1 {{'lse' must have element type 'f32' (for 'q' of 'f32'), got 'f64'}}
  %o, %l = diffattn.v2 %q, %k, %k, %lam : (tensor<2x16x8x32xf32>, tensor<2x24x2x32xf32>, tensor<2x24x2x32xf32>, tensor<2x16x4xf32>) -> (tensor<2x16x4x32xf32>, tensor<2x8x16xf64>)
  return
}

// -----

func.func @bwd_lse_elem_f64(%q: tensor<2x16x8x32xf64>, %k: tensor<2x24x2x32xf64>, %lam: tensor<2x16x4xf32>, %o: tensor<2x16x4x32xf64>, %do: tensor<2x16x4x32xf64>, %lse: tensor<2x8x16xf32>) {
  // expected-error @+1 {{'lse' must have element type 'f64' (for 'q' of 'f64'), got 'f32'}}
  %dq, %dk, %dv, %dl = diffattn.v2_backward %q, %k, %k, %lam, %o, %do, %lse : (tensor<2x16x8x32xf64>, tensor<2x24x2x32xf64>, tensor<2x24x2x32xf64>, tensor<2x16x4xf32>, tensor<2x16x4x32xf64>, tensor<2x16x4x32xf64>, tensor<2x8x16xf32>) -> (tensor<2x16x8x32xf64>, tensor<2x24x2x32xf64>, tensor<2x24x2x32xf64>, tensor<2x16x4xf32>)
  return
}

// -----

func.func @bwd_dlam_f64(%q: tensor<2x16x8x32xf64>, %k: tensor<2x24x2x32xf64>, %lam: tensor<2x16x4xf32>, %o: tensor<2x16x4x32xf64>, %do: tensor<2x16x4x32xf64>, %lse: tensor<2x8x16xf64>) {
  // expected-error @+1 {{result 'dlam' must have the type of its input ('tensor<2x16x4xf32>'), got 'tensor<2x16x4xf64>'}}
  %dq, %dk, %dv, %dl = diffattn.v2_backward %q, %k, %k, %lam, %o, %do, %lse : (tensor<2x16x8x32xf64>, tensor<2x24x2x32xf64>, tensor<2x24x2x32xf64>, tensor<2x16x4xf32>, tensor<2x16x4x32xf64>, tensor<2x16x4x32xf64>, tensor<2x8x16xf64>) -> (tensor<2x16x8x32xf64>, tensor<2x24x2x32xf64>, tensor<2x24x2x32xf64>, tensor<2x16x4xf64>)
  return
}

// -----

func.func @lse_heads(%q: tensor<2x16x8x32xbf16>, %k: tensor<2x24x2x32xbf16>, %lam: tensor<2x16x4xbf16>) {
  // expected-error @+1 {{'lse' dimension 1 (2H) is 4, expected 8 to agree with 'q' dimension 2 (H = 4)}}
  %o, %l = diffattn.v2 %q, %k, %k, %lam : (tensor<2x16x8x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x16x4xbf16>) -> (tensor<2x16x4x32xbf16>, tensor<2x4x16xf32>)
  return
}

// -----

func.func @lse_layout(%q: tensor<2x16x8x32xbf16>, %k: tensor<2x24x2x32xbf16>, %lam: tensor<2x16x4xbf16>) {
  // expected-error @+1 {{'lse' dimension 2 (Sq) is 8, expected 16 to agree with 'q' dimension 1 (Sq = 16)}}
  %o, %l = diffattn.v2 %q, %k, %k, %lam : (tensor<2x16x8x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x16x4xbf16>) -> (tensor<2x16x4x32xbf16>, tensor<2x8x8xf32>)
  return
}

// -----

func.func @lse_rank(%q: tensor<2x16x8x32xbf16>, %k: tensor<2x24x2x32xbf16>, %lam: tensor<2x16x4xbf16>) {
  // expected-error @+1 {{'lse' must have rank 3 [B, 2H, Sq], got 'tensor<2x8x16x1xf32>'}}
  %o, %l = diffattn.v2 %q, %k, %k, %lam : (tensor<2x16x8x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x16x4xbf16>) -> (tensor<2x16x4x32xbf16>, tensor<2x8x16x1xf32>)
  return
}

// -----

func.func @bwd_dout_elem(%q: tensor<2x16x8x32xbf16>, %k: tensor<2x24x2x32xbf16>, %lam: tensor<2x16x4xbf16>, %o: tensor<2x16x4x32xbf16>, %do: tensor<2x16x4x32xf16>, %lse: tensor<2x8x16xf32>) {
  // expected-error @+1 {{'dout' must have the element type of 'q' ('bf16'), got 'f16'}}
  %dq, %dk, %dv, %dl = diffattn.v2_backward %q, %k, %k, %lam, %o, %do, %lse : (tensor<2x16x8x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x16x4xbf16>, tensor<2x16x4x32xbf16>, tensor<2x16x4x32xf16>, tensor<2x8x16xf32>) -> (tensor<2x16x8x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x16x4xbf16>)
  return
}

// -----

func.func @bwd_out_elem(%q: tensor<2x16x8x32xbf16>, %k: tensor<2x24x2x32xbf16>, %lam: tensor<2x16x4xbf16>, %o: tensor<2x16x4x32xf32>, %do: tensor<2x16x4x32xbf16>, %lse: tensor<2x8x16xf32>) {
  // expected-error @+1 {{'out' must have the element type of 'q' ('bf16'), got 'f32'}}
  %dq, %dk, %dv, %dl = diffattn.v2_backward %q, %k, %k, %lam, %o, %do, %lse : (tensor<2x16x8x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x16x4xbf16>, tensor<2x16x4x32xf32>, tensor<2x16x4x32xbf16>, tensor<2x8x16xf32>) -> (tensor<2x16x8x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x16x4xbf16>)
  return
}

// -----

func.func @bwd_dout_shape(%q: tensor<2x16x8x32xbf16>, %k: tensor<2x24x2x32xbf16>, %lam: tensor<2x16x4xbf16>, %o: tensor<2x16x4x32xbf16>, %do: tensor<2x12x4x32xbf16>, %lse: tensor<2x8x16xf32>) {
  // expected-error @+1 {{'dout' dimension 1 (Sq) is 12, expected 16 to agree with 'q' dimension 1 (Sq = 16)}}
  %dq, %dk, %dv, %dl = diffattn.v2_backward %q, %k, %k, %lam, %o, %do, %lse : (tensor<2x16x8x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x16x4xbf16>, tensor<2x16x4x32xbf16>, tensor<2x12x4x32xbf16>, tensor<2x8x16xf32>) -> (tensor<2x16x8x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x16x4xbf16>)
  return
}

// -----

func.func @bwd_lse_batch(%q: tensor<2x16x8x32xbf16>, %k: tensor<2x24x2x32xbf16>, %lam: tensor<2x16x4xbf16>, %o: tensor<2x16x4x32xbf16>, %do: tensor<2x16x4x32xbf16>, %lse: tensor<3x8x16xf32>) {
  // expected-error @+1 {{'lse' dimension 0 (B) is 3, expected 2 to agree with 'q' dimension 0 (B = 2)}}
  %dq, %dk, %dv, %dl = diffattn.v2_backward %q, %k, %k, %lam, %o, %do, %lse : (tensor<2x16x8x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x16x4xbf16>, tensor<2x16x4x32xbf16>, tensor<2x16x4x32xbf16>, tensor<3x8x16xf32>) -> (tensor<2x16x8x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x16x4xbf16>)
  return
}

// -----

func.func @bwd_lse_elem(%q: tensor<2x16x8x32xbf16>, %k: tensor<2x24x2x32xbf16>, %lam: tensor<2x16x4xbf16>, %o: tensor<2x16x4x32xbf16>, %do: tensor<2x16x4x32xbf16>, %lse: tensor<2x8x16xbf16>) {
  // expected-error @+1 {{'lse' must have element type 'f32' (for 'q' of 'bf16'), got 'bf16'}}
  %dq, %dk, %dv, %dl = diffattn.v2_backward %q, %k, %k, %lam, %o, %do, %lse : (tensor<2x16x8x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x16x4xbf16>, tensor<2x16x4x32xbf16>, tensor<2x16x4x32xbf16>, tensor<2x8x16xbf16>) -> (tensor<2x16x8x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x16x4xbf16>)
  return
}

// -----

func.func @bwd_dk_type(%q: tensor<2x16x8x32xbf16>, %k: tensor<2x24x2x32xbf16>, %lam: tensor<2x16x4xbf16>, %o: tensor<2x16x4x32xbf16>, %do: tensor<2x16x4x32xbf16>, %lse: tensor<2x8x16xf32>) {
  // expected-error @+1 {{result 'dk' must have the type of its input ('tensor<2x24x2x32xbf16>'), got 'tensor<2x24x2x32xf32>'}}
  %dq, %dk, %dv, %dl = diffattn.v2_backward %q, %k, %k, %lam, %o, %do, %lse : (tensor<2x16x8x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x16x4xbf16>, tensor<2x16x4x32xbf16>, tensor<2x16x4x32xbf16>, tensor<2x8x16xf32>) -> (tensor<2x16x8x32xbf16>, tensor<2x24x2x32xf32>, tensor<2x24x2x32xbf16>, tensor<2x16x4xbf16>)
  return
}

// -----

func.func @bwd_dlam_type(%q: tensor<2x16x8x32xbf16>, %k: tensor<2x24x2x32xbf16>, %lam: tensor<2x16x4xf32>, %o: tensor<2x16x4x32xbf16>, %do: tensor<2x16x4x32xbf16>, %lse: tensor<2x8x16xf32>) {
  // expected-error @+1 {{result 'dlam' must have the type of its input ('tensor<2x16x4xf32>'), got 'tensor<2x16x4xbf16>'}}
  %dq, %dk, %dv, %dl = diffattn.v2_backward %q, %k, %k, %lam, %o, %do, %lse : (tensor<2x16x8x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x16x4xf32>, tensor<2x16x4x32xbf16>, tensor<2x16x4x32xbf16>, tensor<2x8x16xf32>) -> (tensor<2x16x8x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x16x4xbf16>)
  return
}

// -----

func.func @bwd_group(%q: tensor<2x16x6x32xbf16>, %k: tensor<2x24x6x32xbf16>, %lam: tensor<2x16x3xbf16>, %o: tensor<2x16x3x32xbf16>, %do: tensor<2x16x3x32xbf16>, %lse: tensor<2x6x16xf32>) {
  // expected-error @+1 {{group size G = 2H / Hkv = 6 / 6 = 1 must be even}}
  %dq, %dk, %dv, %dl = diffattn.v2_backward %q, %k, %k, %lam, %o, %do, %lse : (tensor<2x16x6x32xbf16>, tensor<2x24x6x32xbf16>, tensor<2x24x6x32xbf16>, tensor<2x16x3xbf16>, tensor<2x16x3x32xbf16>, tensor<2x16x3x32xbf16>, tensor<2x6x16xf32>) -> (tensor<2x16x6x32xbf16>, tensor<2x24x6x32xbf16>, tensor<2x24x6x32xbf16>, tensor<2x16x3xbf16>)
  return
}

// -----

func.func @bwd_kv_len(%q: tensor<2x16x8x32xbf16>, %k: tensor<2x24x2x32xbf16>, %lam: tensor<2x16x4xbf16>, %o: tensor<2x16x4x32xbf16>, %do: tensor<2x16x4x32xbf16>, %lse: tensor<2x8x16xf32>, %kl: tensor<3xi32>) {
  // expected-error @+1 {{'kv_len' dimension 0 (B) is 3, expected 2 to agree with 'q' dimension 0 (B = 2)}}
  %dq, %dk, %dv, %dl = diffattn.v2_backward %q, %k, %k, %lam, %o, %do, %lse kv_len(%kl) : (tensor<2x16x8x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x16x4xbf16>, tensor<2x16x4x32xbf16>, tensor<2x16x4x32xbf16>, tensor<2x8x16xf32>, tensor<3xi32>) -> (tensor<2x16x8x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x16x4xbf16>)
  return
}

// -----

func.func @bwd_window(%q: tensor<2x16x8x32xbf16>, %k: tensor<2x24x2x32xbf16>, %lam: tensor<2x16x4xbf16>, %o: tensor<2x16x4x32xbf16>, %do: tensor<2x16x4x32xbf16>, %lse: tensor<2x8x16xf32>) {
  // expected-error @+1 {{attribute 'window_right' must be -1 or 0 with 'causal', got 3}}
  %dq, %dk, %dv, %dl = diffattn.v2_backward %q, %k, %k, %lam, %o, %do, %lse {causal, window_right = 3} : (tensor<2x16x8x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x16x4xbf16>, tensor<2x16x4x32xbf16>, tensor<2x16x4x32xbf16>, tensor<2x8x16xf32>) -> (tensor<2x16x8x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x16x4xbf16>)
  return
}

// -----

// out_odd (the forward's A_{2h+1}) has out's type.
func.func @out_odd_type(%q: tensor<2x16x8x32xbf16>, %k: tensor<2x24x2x32xbf16>, %lam: tensor<2x16x4xbf16>, %o: tensor<2x16x4x32xbf16>, %lse: tensor<2x8x16xf32>, %odd: tensor<2x16x4x32xf16>) {
  // expected-error @+1 {{'out_odd' must have the type of 'out' ('tensor<2x16x4x32xbf16>'), got 'tensor<2x16x4x32xf16>'}}
  %dq, %dk, %dv, %dl = diffattn.v2_backward %q, %k, %k, %lam, %o, %o, %lse out_odd(%odd) : (tensor<2x16x8x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x16x4xbf16>, tensor<2x16x4x32xbf16>, tensor<2x16x4x32xbf16>, tensor<2x8x16xf32>, tensor<2x16x4x32xf16>) -> (tensor<2x16x8x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x16x4xbf16>)
  return
}
