// RUN: diffattn-opt %s --split-input-file --diffattn-outline-kernels --diffattn-to-mma-sync-kernels --verify-diagnostics

// Valid ops the portable GPU strategy has no kernel for: a diagnostic each.

func.func @f32(%q: tensor<1x64x4x64xf32>, %k: tensor<1x64x2x64xf32>, %lam: tensor<1x64x2xf32>) -> tensor<1x64x2x64xf32> {
  // expected-error @+1 {{element type 'f32' is not supported by the portable GPU strategy (expected f16 or bf16)}}
  %o = diffattn.v2 %q, %k, %k, %lam : (tensor<1x64x4x64xf32>, tensor<1x64x2x64xf32>, tensor<1x64x2x64xf32>, tensor<1x64x2xf32>) -> tensor<1x64x2x64xf32>
  return %o : tensor<1x64x2x64xf32>
}

// -----

func.func @d96(%q: tensor<1x64x4x96xbf16>, %k: tensor<1x64x2x96xbf16>, %lam: tensor<1x64x2xbf16>) -> tensor<1x64x2x96xbf16> {
  // expected-error @+1 {{head dimension D = 96 is not supported by the portable GPU strategy (expected 64 or 128)}}
  %o = diffattn.v2 %q, %k, %k, %lam : (tensor<1x64x4x96xbf16>, tensor<1x64x2x96xbf16>, tensor<1x64x2x96xbf16>, tensor<1x64x2xbf16>) -> tensor<1x64x2x96xbf16>
  return %o : tensor<1x64x2x96xbf16>
}

// -----

func.func @dv(%q: tensor<1x64x4x64xbf16>, %k: tensor<1x64x2x64xbf16>, %v: tensor<1x64x2x128xbf16>, %lam: tensor<1x64x2xbf16>) -> tensor<1x64x2x128xbf16> {
  // expected-error @+1 {{value dimension Dv = 128 != D = 64 is not supported by the portable GPU strategy}}
  %o = diffattn.v2 %q, %k, %v, %lam : (tensor<1x64x4x64xbf16>, tensor<1x64x2x64xbf16>, tensor<1x64x2x128xbf16>, tensor<1x64x2xbf16>) -> tensor<1x64x2x128xbf16>
  return %o : tensor<1x64x2x128xbf16>
}

// -----

func.func @v1(%q: tensor<1x16x4x64xbf16>, %k: tensor<1x16x2x64xbf16>, %v: tensor<1x16x1x128xbf16>, %lam: tensor<f32>, %w: tensor<128xbf16>) -> tensor<1x16x2x128xbf16> {
  // expected-error @+1 {{is not supported by the portable GPU strategy yet (only diffattn.v2, diffattn.v2_paged and diffattn.v2_varlen have GPU kernels)}}
  %o = diffattn.v1 %q, %k, %v, %lam, %w {lambda_init = 0.2 : f32} : (tensor<1x16x4x64xbf16>, tensor<1x16x2x64xbf16>, tensor<1x16x1x128xbf16>, tensor<f32>, tensor<128xbf16>) -> tensor<1x16x2x128xbf16>
  return %o : tensor<1x16x2x128xbf16>
}

// -----

// f64 is a CPU-only element type (float64 reference gradients).
func.func @f64(%q: tensor<1x64x4x64xf64>, %k: tensor<1x64x2x64xf64>, %lam: tensor<1x64x2xf64>) -> tensor<1x64x2x64xf64> {
  // expected-error @+1 {{element type 'f64' is not supported by the portable GPU strategy (expected f16 or bf16)}}
  %o = diffattn.v2 %q, %k, %k, %lam : (tensor<1x64x4x64xf64>, tensor<1x64x2x64xf64>, tensor<1x64x2x64xf64>, tensor<1x64x2xf64>) -> tensor<1x64x2x64xf64>
  return %o : tensor<1x64x2x64xf64>
}
