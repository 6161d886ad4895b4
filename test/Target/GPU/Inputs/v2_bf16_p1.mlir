// One pair per KV group (8 query heads, 4 KV heads: P = 1), unmasked.
func.func @attn(%q: tensor<2x256x8x128xbf16>, %k: tensor<2x320x4x128xbf16>,
                %v: tensor<2x320x4x128xbf16>, %lam: tensor<2x256x4xbf16>) -> tensor<2x256x4x128xbf16> {
  %o = diffattn.v2 %q, %k, %v, %lam
      : (tensor<2x256x8x128xbf16>, tensor<2x320x4x128xbf16>, tensor<2x320x4x128xbf16>, tensor<2x256x4xbf16>)
      -> tensor<2x256x4x128xbf16>
  return %o : tensor<2x256x4x128xbf16>
}
