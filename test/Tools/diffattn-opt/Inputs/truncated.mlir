func.func @f(%q: tensor<2x16x8x32xf32>) {
  %o = diffattn.v2 %q, %q,
