func.func @f(%q: tensor<2x16x8x32xf32>) {
  %o = "diffattn.v3"(%q) : (tensor<2x16x8x32xf32>) -> tensor<2x16x8x32xf32>
  return
}
