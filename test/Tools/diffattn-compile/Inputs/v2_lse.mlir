func.func @fwd(%q: tensor<2x16x8x32xbf16>, %k: tensor<2x24x2x32xbf16>, %lam: tensor<2x16x4xbf16>) -> (tensor<2x16x4x32xbf16>, tensor<2x8x16xf32>) {
  %o, %l = diffattn.v2 %q, %k, %k, %lam {causal} : (tensor<2x16x8x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x16x4xbf16>) -> (tensor<2x16x4x32xbf16>, tensor<2x8x16xf32>)
  return %o, %l : tensor<2x16x4x32xbf16>, tensor<2x8x16xf32>
}
