func.func @f(%q: tensor<1x8x6x16xf32>, %k: tensor<1x8x6x16xf32>, %lam: tensor<1x8x3xf32>) {
  %o = "diffattn.v2"(%q, %k, %k, %lam) : (tensor<1x8x6x16xf32>, tensor<1x8x6x16xf32>, tensor<1x8x6x16xf32>, tensor<1x8x3xf32>) -> tensor<1x8x3x16xf32>
  return
}
