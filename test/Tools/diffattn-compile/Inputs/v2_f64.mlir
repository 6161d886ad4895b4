func.func @fwd(%q: tensor<2x16x8x64xf64>, %k: tensor<2x24x2x64xf64>, %lam: tensor<2x16x4xf64>) -> (tensor<2x16x4x64xf64>, tensor<2x8x16xf64>) {
  %o, %l = diffattn.v2 %q, %k, %k, %lam {causal} : (tensor<2x16x8x64xf64>, tensor<2x24x2x64xf64>, tensor<2x24x2x64xf64>, tensor<2x16x4xf64>) -> (tensor<2x16x4x64xf64>, tensor<2x8x16xf64>)
  return %o, %l : tensor<2x16x4x64xf64>, tensor<2x8x16xf64>
}
