func.func @fwd(%q: tensor<2x100x8x128xbf16>, %k: tensor<2x77x2x128xbf16>, %v: tensor<2x77x2x128xbf16>, %lam: tensor<2x100x4xbf16>) -> (tensor<2x100x4x128xbf16>, tensor<2x8x100xf32>, tensor<2x100x4x128xbf16>) {
  %o, %l, %odd = diffattn.v2 %q, %k, %v, %lam {causal} : (tensor<2x100x8x128xbf16>, tensor<2x77x2x128xbf16>, tensor<2x77x2x128xbf16>, tensor<2x100x4xbf16>) -> (tensor<2x100x4x128xbf16>, tensor<2x8x100xf32>, tensor<2x100x4x128xbf16>)
  return %o, %l, %odd : tensor<2x100x4x128xbf16>, tensor<2x8x100xf32>, tensor<2x100x4x128xbf16>
}
