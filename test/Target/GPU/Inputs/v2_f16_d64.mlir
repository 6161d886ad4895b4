func.func @attn(%q: tensor<1x64x8x64xf16>, %k: tensor<1x64x2x64xf16>,
                %v: tensor<1x64x2x64xf16>, %lam: tensor<1x64x4xf32>) -> tensor<1x64x4x64xf16> {
  %o = diffattn.v2 %q, %k, %v, %lam {window_left = 16 : i64, window_right = 16 : i64}
      : (tensor<1x64x8x64xf16>, tensor<1x64x2x64xf16>, tensor<1x64x2x64xf16>, tensor<1x64x4xf32>)
      -> tensor<1x64x4x64xf16>
  return %o : tensor<1x64x4x64xf16>
}
