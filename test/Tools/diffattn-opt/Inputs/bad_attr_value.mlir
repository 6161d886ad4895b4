func.func @f(%q: tensor<1x4x4x8xf32>, %k: tensor<1x4x2x8xf32>, %v: tensor<1x4x1x16xf32>, %w: tensor<16xf32>, %lam: tensor<f32>) {
  %o = diffattn.v1 %q, %k, %v, %lam, %w {lambda_init = "x", causal = 1 : i32} : (tensor<1x4x4x8xf32>, tensor<1x4x2x8xf32>, tensor<1x4x1x16xf32>, tensor<f32>, tensor<16xf32>) -> tensor<1x4x2x16xf32>
  return
}
