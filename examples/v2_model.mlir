// The attention core of one Differential Transformer V2 layer at the tensor
// level, as diffattn-fuse (or the Python API) produces it: 2H = 32 query
// heads in 16 pairs over Hkv = 8 KV heads, D = 128, bf16, causal.
//
//   bash scripts/run.sh example    compiles it to PTX and a cubin for sm_90
//                                  (and runs it where a GPU is present)
func.func @diff_attn_v2_block(%q: tensor<2x256x32x128xbf16>,
                              %k: tensor<2x256x8x128xbf16>,
                              %v: tensor<2x256x8x128xbf16>,
                              %lam: tensor<2x256x16xbf16>)
    -> tensor<2x256x16x128xbf16> {
  %out = diffattn.v2 %q, %k, %v, %lam {causal}
      : (tensor<2x256x32x128xbf16>, tensor<2x256x8x128xbf16>,
         tensor<2x256x8x128xbf16>, tensor<2x256x16xbf16>)
      -> tensor<2x256x16x128xbf16>
  return %out : tensor<2x256x16x128xbf16>
}
