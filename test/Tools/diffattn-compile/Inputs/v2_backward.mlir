func.func @grad(%q: tensor<2x16x8x32xbf16>, %k: tensor<2x24x2x32xbf16>, %lam: tensor<2x16x4xbf16>, %o: tensor<2x16x4x32xbf16>, %do: tensor<2x16x4x32xbf16>, %lse: tensor<2x8x16xf32>) -> tensor<2x16x8x32xbf16> {
  %dq, %dk, %dv, %dl = diffattn.v2_backward %q, %k, %k, %lam, %o, %do, %lse {causal} : (tensor<2x16x8x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x16x4xbf16>, tensor<2x16x4x32xbf16>, tensor<2x16x4x32xbf16>, tensor<2x8x16xf32>) -> (tensor<2x16x8x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x24x2x32xbf16>, tensor<2x16x4xbf16>)
  return %dq : tensor<2x16x8x32xbf16>
}
