// Two kernel configurations (V2 f32 causal, V1 f16), three ops: the two V2
// ops share one kernel.
func.func @layer(%q: tensor<2x64x8x32xf32>, %k: tensor<2x64x2x32xf32>,
                 %v: tensor<2x64x2x32xf32>, %lam: tensor<2x64x4xf32>,
                 %q1: tensor<1x16x4x16xf16>, %k1: tensor<1x16x2x16xf16>,
                 %v1: tensor<1x16x1x32xf16>, %l1: tensor<f32>, %w1: tensor<32xf16>)
    -> (tensor<2x64x4x32xf32>, tensor<2x64x4x32xf32>, tensor<1x16x2x32xf16>) {
  %a = diffattn.v2 %q, %k, %v, %lam {causal}
      : (tensor<2x64x8x32xf32>, tensor<2x64x2x32xf32>, tensor<2x64x2x32xf32>, tensor<2x64x4xf32>)
      -> tensor<2x64x4x32xf32>
  %b = diffattn.v2 %q, %k, %v, %lam {causal}
      : (tensor<2x64x8x32xf32>, tensor<2x64x2x32xf32>, tensor<2x64x2x32xf32>, tensor<2x64x4xf32>)
      -> tensor<2x64x4x32xf32>
  %c = diffattn.v1 %q1, %k1, %v1, %l1, %w1 {lambda_init = 0.2 : f32}
      : (tensor<1x16x4x16xf16>, tensor<1x16x2x16xf16>, tensor<1x16x1x32xf16>, tensor<f32>, tensor<32xf16>)
      -> tensor<1x16x2x32xf16>
  return %a, %b, %c : tensor<2x64x4x32xf32>, tensor<2x64x4x32xf32>, tensor<1x16x2x32xf16>
}
