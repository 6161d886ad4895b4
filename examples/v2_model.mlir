// A differential-attention V2 block at the tensor level: the attention core
// of one decoder layer (2H = 16 query heads in 8 pairs, Hkv = 4 KV heads,
// D = 64), causal, as the Python API or the fusion pass produces it.
//
//   bash scripts/run.sh example    parses, verifies and prints this file
func.func @diff_attn_v2_block(%q: tensor<2x256x16x64xf32>,
                              %k: tensor<2x256x4x64xf32>,
                              %v: tensor<2x256x4x64xf32>,
                              %lam: tensor<2x256x8xf32>)
    -> tensor<2x256x8x64xf32> {
  %out = diffattn.v2 %q, %k, %v, %lam {causal}
      : (tensor<2x256x16x64xf32>, tensor<2x256x4x64xf32>,
         tensor<2x256x4x64xf32>, tensor<2x256x8xf32>)
      -> tensor<2x256x8x64xf32>
  return %out : tensor<2x256x8x64xf32>
}
