func.func @f(%q: tensor<2x16x8x32xf32>, %k: tensor<2x16x2x32xf32>, %lam: tensor<2x16x4xf32>) {
  %o = diffattn.v2 %q, %k, %k, %lam kv_len %lam {causal} : tensor<2x16x8x32xf32>
  return
}
