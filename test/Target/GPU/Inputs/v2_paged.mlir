func.func @f(%q: tensor<2x1x32x128xbf16>, %k: tensor<?x16x8x128xbf16>, %v: tensor<?x16x8x128xbf16>,
             %lam: tensor<2x1x16xbf16>, %len: tensor<2xi32>, %bt: tensor<2x?xi32>) -> tensor<2x1x16x128xbf16> {
  %o = diffattn.v2_paged %q, %k, %v, %lam kv_len(%len) block_table(%bt) {causal}
      : (tensor<2x1x32x128xbf16>, tensor<?x16x8x128xbf16>, tensor<?x16x8x128xbf16>, tensor<2x1x16xbf16>, tensor<2xi32>, tensor<2x?xi32>) -> tensor<2x1x16x128xbf16>
  return %o : tensor<2x1x16x128xbf16>
}
