# Generates test/Dialect/DiffAttn/IR/invalid.mlir: one case per verifier rule.
import re
V2 = dict(q="2x16x8x32xf32", k="2x24x2x32xf32", v="2x24x2x32xf32", lam="2x16x4xf32", out="2x16x4x32xf32")
V1 = dict(q="2x16x8x32xf16", k="2x24x4x32xf16", v="2x24x2x64xf16", lam="f32", w="64xf16", out="2x16x4x64xf16")

def t(s):
    return f"tensor<{s}>"

cases = []
def v2(name, err, attrs="{causal}", kv_len=None, **over):
    d = dict(V2); d.update(over)
    ins = ["q", "k", "v", "lam"] + (["kv_len"] if kv_len else [])
    if kv_len: d["kv_len"] = kv_len
    sig = ", ".join(f"%{n}: {t(d[n])}" for n in ins)
    types = ", ".join(t(d[n]) for n in ins)
    ops = ", ".join(f"%{n}" for n in ins)
    cases.append(f"""// {name}
func.func @{name}({sig}) {{
  // expected-error @+1 {{{{{err}}}}}
  %o = "diffattn.v2"({ops}) {attrs} : ({types}) -> {t(d['out'])}
  return
}}""")

def v1(name, err, attrs="{lambda_init = 0.5 : f32}", **over):
    d = dict(V1); d.update(over)
    ins = ["q", "k", "v", "lam", "w"]
    sig = ", ".join(f"%{n}: {t(d[n])}" for n in ins)
    types = ", ".join(t(d[n]) for n in ins)
    ops = ", ".join(f"%{n}" for n in ins)
    cases.append(f"""// {name}
func.func @{name}({sig}) {{
  // expected-error @+1 {{{{{err}}}}}
  %o = "diffattn.v1"({ops}) {attrs} : ({types}) -> {t(d['out'])}
  return
}}""")

# --- V2: element types
v2("v2_q_elem", "'q' must have element type f64, f32, f16 or bf16, got 'f8E4M3FN'", q="2x16x8x32xf8E4M3FN")
v2("v2_k_elem_f64", "'k' must have the element type of 'q' ('f64'), got 'f32'",
   q="2x16x8x32xf64", v="2x24x2x32xf64", out="2x16x4x32xf64")
v2("v2_k_elem", "'k' must have the element type of 'q' ('f32'), got 'f16'", k="2x24x2x32xf16")
v2("v2_v_elem", "'v' must have the element type of 'q' ('f32'), got 'bf16'", v="2x24x2x32xbf16")
v2("v2_out_elem", "'out' must have the element type of 'q' ('f32'), got 'f16'", out="2x16x4x32xf16")
v2("v2_lam_elem", "'lam' must have element type 'f16' (as 'q') or f32, got 'bf16'",
   q="2x16x8x32xf16", k="2x24x2x32xf16", v="2x24x2x32xf16", out="2x16x4x32xf16", lam="2x16x4xbf16")
v2("v2_lam_elem_f64", "'lam' must have element type 'f64' (as 'q') or f32, got 'f16'",
   q="2x16x8x32xf64", k="2x24x2x32xf64", v="2x24x2x32xf64", out="2x16x4x32xf64", lam="2x16x4xf16")
v2("v2_kv_len_elem", "'kv_len' must have element type i32, got 'i64'", kv_len="2xi64")
# --- V2: ranks
v2("v2_q_rank", "'q' must have rank 4 [B, Sq, 2H, D], got 'tensor<16x8x32xf32>'", q="16x8x32xf32")
v2("v2_k_rank", "'k' must have rank 4 [B, Sk, Hkv, D], got 'tensor<2x24x2x32x1xf32>'", k="2x24x2x32x1xf32")
v2("v2_v_rank", "'v' must have rank 4 [B, Sk, Hkv, Dv], got 'tensor<2x24x64xf32>'", v="2x24x64xf32")
v2("v2_lam_rank", "'lam' must have rank 3 [B, Sq, H], got 'tensor<2x16x4x1xf32>'", lam="2x16x4x1xf32")
v2("v2_kv_len_rank", "'kv_len' must have rank 1 [B], got 'tensor<2x1xi32>'", kv_len="2x1xi32")
v2("v2_out_rank", "'out' must have rank 4 [B, Sq, H, Dv], got 'tensor<2x16x128xf32>'", out="2x16x128xf32")
# --- V2: dimension agreement
v2("v2_batch", "'k' dimension 0 (B) is 3, expected 2 to agree with 'q' dimension 0 (B = 2)", k="3x24x2x32xf32")
v2("v2_sq", "'lam' dimension 1 (Sq) is 15, expected 16 to agree with 'q' dimension 1 (Sq = 16)", lam="2x15x4xf32")
v2("v2_sk", "'v' dimension 1 (Sk) is 23, expected 24 to agree with 'k' dimension 1 (Sk = 24)", v="2x23x2x32xf32")
v2("v2_head_dim", "'k' dimension 3 (D) is 64, expected 32 to agree with 'q' dimension 3 (D = 32)", k="2x24x2x64xf32")
v2("v2_value_dim", "'out' dimension 3 (Dv) is 32, expected 16 to agree with 'v' dimension 3 (Dv = 16)", v="2x24x2x16xf32")
v2("v2_pairs", "'lam' dimension 2 (H) is 8, expected 4 to agree with 'q' dimension 2 (H = 4)", lam="2x16x8xf32")
v2("v2_out_pairs", "'out' dimension 2 (H) is 8, expected 4 to agree with 'q' dimension 2 (H = 4)", out="2x16x8x32xf32")
v2("v2_kv_heads", "'v' dimension 2 (Hkv) is 4, expected 2 to agree with 'k' dimension 2 (Hkv = 2)", v="2x24x4x32xf32")
v2("v2_kv_len_batch", "'kv_len' dimension 0 (B) is 3, expected 2 to agree with 'q' dimension 0 (B = 2)", kv_len="3xi32")
v2("v2_odd_query_heads", "'q' dimension 2 (2H) must be a multiple of 2, got 7", q="2x16x7x32xf32")
v2("v2_dynamic_heads", "'q' dimension 2 (2H) must be static: head counts and head dimensions specialise the kernel", q="2x16x?x32xf32")
v2("v2_dynamic_head_dim", "'k' dimension 3 (D) must be static", k="2x24x2x?xf32")
v2("v2_dynamic_value_dim", "'v' dimension 3 (Dv) must be static", v="2x24x2x?xf32")
v2("v2_dynamic_kv_heads", "'k' dimension 2 (Hkv) must be static", k="2x24x?x32xf32")
v2("v2_zero_head_dim", "'q' dimension 3 (D) must be positive, got 0", q="2x16x8x0xf32", k="2x24x2x0xf32")
v2("v2_zero_heads", "'q' dimension 2 (2H) must be positive, got 0", q="2x16x0x32xf32")
# --- V2: head grouping
v2("v2_heads_not_multiple", "'q' heads (2H = 8) must be a multiple of 'k' heads (Hkv = 3)", k="2x24x3x32xf32", v="2x24x3x32xf32")
v2("v2_odd_group", "group size G = 2H / Hkv = 8 / 8 = 1 must be even, so that both heads of a pair read the same KV head", k="2x24x8x32xf32", v="2x24x8x32xf32")
# --- V2: attributes
v2("v2_scale_zero", "attribute 'scale' must be finite and > 0, got 0", attrs="{scale = 0.0 : f32}")
v2("v2_scale_negative", "attribute 'scale' must be finite and > 0, got -2", attrs="{scale = -2.0 : f32}")
v2("v2_scale_inf", "attribute 'scale' must be finite and > 0, got INF", attrs="{scale = 0x7F800000 : f32}")
v2("v2_scale_nan", "attribute 'scale' must be finite and > 0, got nan", attrs="{scale = 0x7FC00000 : f32}")
v2("v2_scale_f64", "attribute 'scale' failed to satisfy constraint: 32-bit float attribute", attrs="{scale = 0.5 : f64}")
v2("v2_window_left", "attribute 'window_left' must be -1 (unlimited) or in [0, 2147483647], got -2", attrs="{window_left = -2}")
v2("v2_window_right", "attribute 'window_right' must be -1 (unlimited) or in [0, 2147483647], got -5", attrs="{window_right = -5}")
v2("v2_window_right_huge", "attribute 'window_right' must be -1 (unlimited) or in [0, 2147483647], got 9223372036854775807", attrs="{window_right = 9223372036854775807}")
v2("v2_window_left_int32", "attribute 'window_left' must be -1 (unlimited) or in [0, 2147483647], got 2147483648", attrs="{window_left = 2147483648}")
v2("v2_causal_window_right", "attribute 'window_right' must be -1 or 0 with 'causal', got 3", attrs="{causal, window_right = 3}")
v2("v2_window_type", "attribute 'window_left' failed to satisfy constraint: 64-bit signless integer attribute", attrs="{window_left = 2 : i32}")
# --- V2: structure
cases.append("""// v2_unranked
func.func @v2_unranked(%q: tensor<*xf32>, %k: tensor<2x24x2x32xf32>, %v: tensor<2x24x2x32xf32>, %lam: tensor<2x16x4xf32>) {
  // expected-error @+1 {{operand #0 must be ranked tensor of any type values, but got 'tensor<*xf32>'}}
  %o = "diffattn.v2"(%q, %k, %v, %lam) : (tensor<*xf32>, tensor<2x24x2x32xf32>, tensor<2x24x2x32xf32>, tensor<2x16x4xf32>) -> tensor<2x16x4x32xf32>
  return
}""")
cases.append("""// v2_too_few_operands
func.func @v2_too_few_operands(%q: tensor<2x16x8x32xf32>, %k: tensor<2x24x2x32xf32>, %v: tensor<2x24x2x32xf32>) {
  // expected-error @+1 {{expected 4 or more operands, but found 3}}
  %o = "diffattn.v2"(%q, %k, %v) : (tensor<2x16x8x32xf32>, tensor<2x24x2x32xf32>, tensor<2x24x2x32xf32>) -> tensor<2x16x4x32xf32>
  return
}""")
cases.append("""// v2_out_odd_type
func.func @v2_out_odd_type(%q: tensor<2x16x8x32xf32>, %k: tensor<2x24x2x32xf32>, %v: tensor<2x24x2x32xf32>, %lam: tensor<2x16x4xf32>) {
  // expected-error @+1 {{'out_odd' must have the type of 'out' ('tensor<2x16x4x32xf32>'), got 'tensor<2x8x16xf32>'}}
  %o:3 = "diffattn.v2"(%q, %k, %v, %lam) : (tensor<2x16x8x32xf32>, tensor<2x24x2x32xf32>, tensor<2x24x2x32xf32>, tensor<2x16x4xf32>) -> (tensor<2x16x4x32xf32>, tensor<2x8x16xf32>, tensor<2x8x16xf32>)
  return
}""")
cases.append("""// v2_four_results
func.func @v2_four_results(%q: tensor<2x16x8x32xf32>, %k: tensor<2x24x2x32xf32>, %v: tensor<2x24x2x32xf32>, %lam: tensor<2x16x4xf32>) {
  // expected-error @+1 {{expects at most 3 results (out, lse, out_odd), got 4}}
  %o:4 = "diffattn.v2"(%q, %k, %v, %lam) : (tensor<2x16x8x32xf32>, tensor<2x24x2x32xf32>, tensor<2x24x2x32xf32>, tensor<2x16x4xf32>) -> (tensor<2x16x4x32xf32>, tensor<2x8x16xf32>, tensor<2x16x4x32xf32>, tensor<2x16x4x32xf32>)
  return
}""")

# --- V1
v1("v1_q_elem", "'q' must have element type f64, f32, f16 or bf16, got 'i32'", q="2x16x8x32xi32")
v1("v1_v_elem", "'v' must have the element type of 'q' ('f16'), got 'f32'", v="2x24x2x64xf32")
v1("v1_lam_vector", "'lam' must be a scalar tensor<f32> (the layer's lambda), got 'tensor<1xf32>'", lam="1xf32")
v1("v1_lam_f16", "'lam' must be a scalar tensor<f32> (the layer's lambda), got 'tensor<f16>'", lam="f16")
v1("v1_norm_weight_elem", "'norm_weight' must have element type 'f16' (as 'q') or f32, got 'bf16'", w="64xbf16")
v1("v1_norm_weight_length", "'norm_weight' dimension 0 (2D) is 32, expected 64 to agree with 'q' dimension 3 (D = 32)", w="32xf16")
v1("v1_norm_weight_rank", "'norm_weight' must have rank 1 [2D], got 'tensor<1x64xf16>'", w="1x64xf16")
v1("v1_value_width", "'v' dimension 3 (2D) is 32, expected 64 to agree with 'q' dimension 3 (D = 32)", v="2x24x2x32xf16")
v1("v1_odd_key_heads", "'k' dimension 2 (2Hkv) must be a multiple of 2, got 3", k="2x24x3x32xf16")
v1("v1_kv_heads", "'v' dimension 2 (Hkv) is 4, expected 2 to agree with 'k' dimension 2 (Hkv = 2)", v="2x24x4x64xf16")
v1("v1_out_width", "'out' dimension 3 (2D) is 32, expected 64 to agree with 'q' dimension 3 (D = 32)", out="2x16x4x32xf16")
v1("v1_pairs_not_multiple", "head pairs (H = 4) must be a multiple of KV heads (Hkv = 3)", k="2x24x6x32xf16", v="2x24x3x64xf16")
v1("v1_dynamic_head_dim", "'q' dimension 3 (D) must be static", q="2x16x8x?xf16")
v1("v1_missing_lambda_init", "requires attribute 'lambda_init'", attrs="{causal}")
v1("v1_lambda_init_nan", "attribute 'lambda_init' must be finite, got nan", attrs="{lambda_init = 0x7FC00000 : f32}")
v1("v1_eps_zero", "attribute 'eps' must be finite and > 0, got 0", attrs="{lambda_init = 0.5 : f32, eps = 0.0 : f32}")
v1("v1_eps_inf", "attribute 'eps' must be finite and > 0, got INF", attrs="{lambda_init = 0.5 : f32, eps = 0x7F800000 : f32}")
v1("v1_scale_negative", "attribute 'scale' must be finite and > 0, got -1", attrs="{lambda_init = 0.5 : f32, scale = -1.0 : f32}")
cases.append("""// v1_kv_len_operand
func.func @v1_kv_len_operand(%q: tensor<2x16x8x32xf16>, %k: tensor<2x24x4x32xf16>, %v: tensor<2x24x2x64xf16>, %lam: tensor<f32>, %w: tensor<64xf16>, %len: tensor<2xi32>) {
  // expected-error @+1 {{expected 5 operands, but found 6}}
  %o = "diffattn.v1"(%q, %k, %v, %lam, %w, %len) {lambda_init = 0.5 : f32} : (tensor<2x16x8x32xf16>, tensor<2x24x4x32xf16>, tensor<2x24x2x64xf16>, tensor<f32>, tensor<64xf16>, tensor<2xi32>) -> tensor<2x16x4x64xf16>
  return
}""")

header = """// RUN: diffattn-opt %s --split-input-file --verify-diagnostics
// One case per verifier rule of diffattn.v2 and diffattn.v1 (see
// lib/Dialect/DiffAttn/IR/DiffAttnOps.cpp). Generated by
// test/Dialect/DiffAttn/IR/gen_invalid.py; regenerate rather than edit.

"""
print(header + "\n\n// -----\n\n".join(cases))
