func.func @grad(%q: tensor<2x16x8x64xf64>, %k: tensor<2x24x2x64xf64>, %lam: tensor<2x16x4xf32>, %o: tensor<2x16x4x64xf64>, %do: tensor<2x16x4x64xf64>, %lse: tensor<2x8x16xf64>) -> tensor<2x16x8x64xf64> {
  %dq, %dk, %dv, %dl = diffattn.v2_backward %q, %k, %k, %lam, %o, %do, %lse {causal} : (tensor<2x16x8x64xf64>, tensor<2x24x2x64xf64>, tensor<2x24x2x64xf64>, tensor<2x16x4xf32>, tensor<2x16x4x64xf64>, tensor<2x16x4x64xf64>, tensor<2x8x16xf64>) -> (tensor<2x16x8x64xf64>, tensor<2x24x2x64xf64>, tensor<2x24x2x64xf64>, tensor<2x16x4xf32>)
  return %dq : tensor<2x16x8x64xf64>
}
