func.func @f(%q: tensor<2x16x8x32xf32>, %k: tensor<2x16x2x32xf32>, %lam: tensor<2x16x4xf32>) {
  %o = diffattn.v2 %q, %k, %k, %lam : (tensor<2x16x8x32xf16>, tensor<2x16x2x32xf32>, tensor<2x16x2x32xf32>, tensor<2x16x4xf32>) -> tensor<2x16x4x32xf32>
  return
}
