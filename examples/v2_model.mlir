// The attention core of one Differential Transformer V2 layer at the tensor
// level, as diffattn-fuse (or the Python API) produces it: 2H = 32 query
// heads in 16 pairs over Hkv = 8 KV heads, D = 128, bf16, causal.
//
//   build/bin/diffattn-compile examples/v2_model.mlir --target=sm_90 -o out
//   python3 examples/run_gpu_example.py examples/v2_model.mlir out
// compile it to PTX and a cubin for sm_90 and run it where a GPU is present
// (README.md, "GPU").
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
