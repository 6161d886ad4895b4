func.func @f(%q: tensor<?x32x128xbf16>, %k: tensor<?x8x128xbf16>, %v: tensor<?x8x128xbf16>,
             %lam: tensor<?x16xbf16>, %cq: tensor<?xi32>, %ck: tensor<?xi32>) -> tensor<?x16x128xbf16> {
  %o = diffattn.v2_varlen %q, %k, %v, %lam cu_seqlens(%cq, %ck) {causal}
      : (tensor<?x32x128xbf16>, tensor<?x8x128xbf16>, tensor<?x8x128xbf16>, tensor<?x16xbf16>, tensor<?xi32>, tensor<?xi32>) -> tensor<?x16x128xbf16>
  return %o : tensor<?x16x128xbf16>
}
