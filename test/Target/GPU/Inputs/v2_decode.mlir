func.func @decode(%q: tensor<4x1x32x128xbf16>, %k: tensor<4x1024x8x128xbf16>,
                  %v: tensor<4x1024x8x128xbf16>, %lam: tensor<4x1x16xbf16>,
                  %len: tensor<4xi32>) -> tensor<4x1x16x128xbf16> {
  %o = diffattn.v2 %q, %k, %v, %lam kv_len(%len) {causal}
      : (tensor<4x1x32x128xbf16>, tensor<4x1024x8x128xbf16>, tensor<4x1024x8x128xbf16>, tensor<4x1x16xbf16>, tensor<4xi32>)
      -> tensor<4x1x16x128xbf16>
  return %o : tensor<4x1x16x128xbf16>
}
