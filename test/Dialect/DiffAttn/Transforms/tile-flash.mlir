// RUN: diffattn-opt %s --split-input-file --diffattn-tile-flash="block-q=32 block-k=16" | FileCheck %s
// RUN: diffattn-opt %s --split-input-file --diffattn-tile-flash | FileCheck %s --check-prefix=DEFAULT
// RUN: diffattn-opt %s --split-input-file --diffattn-tile-flash="target=sm_90" | FileCheck %s --check-prefix=GPU

// The FlashAttention form of a causal V2 op: loops over batch, head pairs
// and query blocks; inside, one key loop whose iterations extract one K tile
// and one V tile shared by both heads of the pair, each head with its own
// online softmax (running max, sum, accumulator: six loop-carried tensors);
// the epilogue writes the pair's single output head once.

// CHECK-LABEL: func.func @v2_causal
// CHECK-DAG:     %[[BQ:[a-z0-9_]+]] = arith.constant 32 : index
// CHECK-DAG:     %[[BK:[a-z0-9_]+]] = arith.constant 16 : index
// CHECK:         scf.for %[[B:[a-z0-9_]+]] = %{{.*}} to %{{.*}} step %{{.*}} iter_args
// CHECK:           scf.for %[[H:[a-z0-9_]+]] = %{{.*}} to %{{.*}} step %{{.*}} iter_args
// CHECK:             %[[H0:[a-z0-9_]+]] = arith.muli %[[H]], %{{.*}} : index
// CHECK:             %[[H1:[a-z0-9_]+]] = arith.addi %[[H0]], %{{.*}} : index
// CHECK:             %[[KVH:[a-z0-9_]+]] = affine.apply #{{.*}}(%[[H0]])
// CHECK:             scf.for %[[I0:[a-z0-9_]+]] = %{{.*}} to %{{.*}} step %[[BQ]] iter_args(%[[OUT:[a-z0-9_]+]] = 
// CHECK:               %[[Q0:[a-z0-9_]+]] = tensor.extract_slice %arg0[%[[B]], %[[I0]], %[[H0]], 0]
// CHECK:               %[[Q1:[a-z0-9_]+]] = tensor.extract_slice %arg0[%[[B]], %[[I0]], %[[H1]], 0]
// Block skipping: the key loop ends at the last key the block's last row sees.
// CHECK:               %[[HI:[a-z0-9_]+]] = arith.minsi
// CHECK:               %[[R:[a-z0-9_]+]]:6 = scf.for %[[T0:[a-z0-9_]+]] = %{{.*}} to %[[HI]] step %[[BK]] iter_args(
// CHECK:                 %[[KT:[a-z0-9_]+]] = tensor.extract_slice %arg1[%[[B]], %[[T0]], %[[KVH]], 0]
// CHECK:                 %[[VT:[a-z0-9_]+]] = tensor.extract_slice %arg2[%[[B]], %[[T0]], %[[KVH]], 0]
// CHECK-NOT:             tensor.extract_slice %arg1
// CHECK-NOT:             tensor.extract_slice %arg2
// Head 0: scores from the shared K tile, masked only on straddling blocks.
// CHECK:                 linalg.generic {{.*}} ins(%[[Q0]], %[[KT]] :
// CHECK:                 scf.if
// CHECK:                   linalg.index
// CHECK:                   arith.select
// CHECK:                 } else {
// CHECK-NOT:               linalg.index
// CHECK:                 }
// CHECK:                 arith.maxnumf
// CHECK:                 arith.maxnumf
// CHECK:                 math.exp
// CHECK:                 math.exp
// CHECK:                 scf.for %[[ROW:[a-z0-9_]+]] = {{.*}} iter_args(%[[ACC:[a-z0-9_]+]] = {{.*}}) -> (tensor<?x32xf32>)
// CHECK:                   vector.transfer_read %[[ACC]][%[[ROW]], %{{.*}}], %{{.*}} {in_bounds = [true]} : tensor<?x32xf32>, vector<32xf32>
// CHECK:                   scf.for %[[KEY:[a-z0-9_]+]] = {{.*}} -> (vector<32xf32>)
// CHECK:                     tensor.extract %{{.*}}[%[[ROW]], %[[KEY]]]
// CHECK:                     vector.transfer_read %[[VT]][%[[KEY]], %{{.*}}], %{{.*}} {in_bounds = [true]} : tensor<?x32xf32>, vector<32xf32>
// CHECK:                     arith.mulf {{.*}} fastmath<reassoc,contract> : vector<32xf32>
// CHECK:                     arith.addf {{.*}} fastmath<reassoc,contract> : vector<32xf32>
// CHECK:                   vector.transfer_write {{.*}}, %[[ACC]][%[[ROW]], %{{.*}}] {in_bounds = [true]}
// Head 1: the same K and V tiles.
// CHECK:                 linalg.generic {{.*}} ins(%[[Q1]], %[[KT]] :
// CHECK:                 scf.if
// CHECK:                 arith.maxnumf
// CHECK:                 arith.maxnumf
// CHECK:                 math.exp
// CHECK:                 math.exp
// CHECK:                 scf.for %[[ROW:[a-z0-9_]+]] = {{.*}} iter_args(%[[ACC:[a-z0-9_]+]] = {{.*}}) -> (tensor<?x32xf32>)
// CHECK:                   vector.transfer_read %[[ACC]][%[[ROW]], %{{.*}}], %{{.*}} {in_bounds = [true]} : tensor<?x32xf32>, vector<32xf32>
// CHECK:                   scf.for %[[KEY:[a-z0-9_]+]] = {{.*}} -> (vector<32xf32>)
// CHECK:                     tensor.extract %{{.*}}[%[[ROW]], %[[KEY]]]
// CHECK:                     vector.transfer_read %[[VT]][%[[KEY]], %{{.*}}], %{{.*}} {in_bounds = [true]} : tensor<?x32xf32>, vector<32xf32>
// CHECK:                     arith.mulf {{.*}} fastmath<reassoc,contract> : vector<32xf32>
// CHECK:                     arith.addf {{.*}} fastmath<reassoc,contract> : vector<32xf32>
// CHECK:                   vector.transfer_write {{.*}}, %[[ACC]][%[[ROW]], %{{.*}}] {in_bounds = [true]}
// CHECK:                 scf.yield {{.*}} : tensor<?xf32>, tensor<?xf32>, tensor<?x32xf32>, tensor<?xf32>, tensor<?xf32>, tensor<?x32xf32>
// Epilogue: A0/l0 - sigmoid(lam) * A1/l1, inserted once into out[b, i0, h].
// CHECK:               %[[LAM:[a-z0-9_]+]] = tensor.extract_slice %arg3[%[[B]], %[[I0]], %[[H]]]
// CHECK:               linalg.generic {{.*}} ins(%[[R]]#2, %[[R]]#5, %[[R]]#1, %[[R]]#4, %[[LAM]] :
// CHECK:                 math.exp
// CHECK:                 arith.subf
// CHECK:               tensor.insert_slice %{{.*}} into %[[OUT]][%[[B]], %[[I0]], %[[H]], 0]
// CHECK-NOT:     diffattn.v2

// DEFAULT-LABEL: func.func @v2_causal
// DEFAULT-DAG:     arith.constant 64 : index
// GPU-LABEL: func.func @v2_causal
// GPU-DAG:     arith.constant 128 : index
// GPU-DAG:     arith.constant 64 : index
func.func @v2_causal(%q: tensor<2x100x8x32xf32>, %k: tensor<2x90x2x32xf32>,
                     %v: tensor<2x90x2x32xf32>, %lam: tensor<2x100x4xf32>)
    -> tensor<2x100x4x32xf32> {
  %o = diffattn.v2 %q, %k, %v, %lam {causal}
      : (tensor<2x100x8x32xf32>, tensor<2x90x2x32xf32>, tensor<2x90x2x32xf32>, tensor<2x100x4xf32>)
      -> tensor<2x100x4x32xf32>
  return %o : tensor<2x100x4x32xf32>
}

// -----

// Without a mask no block is masked: no scf.if, the key loop runs to Sk.
// CHECK-LABEL: func.func @v2_unmasked
// CHECK:         %[[SK:[a-z0-9_]+]] = tensor.dim %arg1, %{{.*}}
// CHECK:         scf.for %{{.*}} = %{{.*}} to %[[SK]] step %{{.*}} iter_args(%{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}})
// CHECK-NOT:     scf.if
// CHECK-NOT:     linalg.index
// CHECK:         return
func.func @v2_unmasked(%q: tensor<?x?x4x16xf16>, %k: tensor<?x?x2x16xf16>,
                       %v: tensor<?x?x2x8xf16>, %lam: tensor<?x?x2xf32>)
    -> tensor<?x?x2x8xf16> {
  %o = diffattn.v2 %q, %k, %v, %lam
      : (tensor<?x?x4x16xf16>, tensor<?x?x2x16xf16>, tensor<?x?x2x8xf16>, tensor<?x?x2xf32>)
      -> tensor<?x?x2x8xf16>
  return %o : tensor<?x?x2x8xf16>
}

// -----

// A left window also moves the start of the key loop (blocks left of the
// window are skipped) and decode bounds the loop by kv_len[b].
// CHECK-LABEL: func.func @v2_window_decode
// CHECK:         scf.for %[[B:[a-z0-9_]+]] =
// CHECK:           %[[LEN:[a-z0-9_]+]] = tensor.extract %arg4[%[[B]]]
// CHECK:           arith.index_cast %[[LEN]]
// CHECK:             scf.for
// CHECK:               arith.maxsi
// CHECK:               %[[LO:[a-z0-9_]+]] = arith.subi
// CHECK:               scf.for %{{.*}} = %[[LO]] to
// CHECK:                 scf.if
func.func @v2_window_decode(%q: tensor<4x2x8x16xf32>, %k: tensor<4x512x2x16xf32>,
                            %v: tensor<4x512x2x16xf32>, %lam: tensor<4x2x4xf32>,
                            %len: tensor<4xi32>) -> tensor<4x2x4x16xf32> {
  %o = diffattn.v2 %q, %k, %v, %lam kv_len(%len) {causal, window_left = 100}
      : (tensor<4x2x8x16xf32>, tensor<4x512x2x16xf32>, tensor<4x512x2x16xf32>, tensor<4x2x4xf32>, tensor<4xi32>)
      -> tensor<4x2x4x16xf32>
  return %o : tensor<4x2x4x16xf32>
}

// -----

// V1: each head of the pair reads its own K tile; the V tile is shared;
// the epilogue is the subtraction, RMSNorm, weight and (1 - lambda_init).
// CHECK-LABEL: func.func @v1
// CHECK:         scf.for
// CHECK:           %[[K0:[a-z0-9_]+]] = tensor.extract_slice %arg1
// CHECK:           %[[K1:[a-z0-9_]+]] = tensor.extract_slice %arg1
// CHECK:           %[[VT:[a-z0-9_]+]] = tensor.extract_slice %arg2
// CHECK-NOT:       tensor.extract_slice %arg2
// CHECK:           linalg.generic {{.*}} ins(%{{.*}}, %[[K0]] :
// CHECK:           vector.transfer_read %[[VT]]{{.*}} : tensor<?x64xf16>, vector<64xf16>
// CHECK:           arith.extf {{.*}} : vector<64xf16> to vector<64xf32>
// CHECK:           linalg.generic {{.*}} ins(%{{.*}}, %[[K1]] :
// CHECK:           vector.transfer_read %[[VT]]{{.*}} : tensor<?x64xf16>, vector<64xf16>
// CHECK:           arith.extf {{.*}} : vector<64xf16> to vector<64xf32>
// CHECK:         tensor.extract %arg3[] : tensor<f32>
// CHECK:         math.rsqrt
// CHECK:         arith.constant 8.000000e-01 : f32
func.func @v1(%q: tensor<1x64x8x32xf16>, %k: tensor<1x64x4x32xf16>,
              %v: tensor<1x64x2x64xf16>, %lam: tensor<f32>, %w: tensor<64xf16>)
    -> tensor<1x64x4x64xf16> {
  %o = diffattn.v1 %q, %k, %v, %lam, %w {causal, lambda_init = 0.2 : f32}
      : (tensor<1x64x8x32xf16>, tensor<1x64x4x32xf16>, tensor<1x64x2x64xf16>, tensor<f32>, tensor<64xf16>)
      -> tensor<1x64x4x64xf16>
  return %o : tensor<1x64x4x64xf16>
}

// -----

// With the log-sum-exp result, the loops carry it beside the output; after
// each block of rows' key loop, max + log(sum) of each head of the pair
// goes into its rows of lse [B, 2H, Sq] (heads 2p and 2p + 1).
// CHECK-LABEL: func.func @v2_lse
// CHECK:         %[[LSE0:.*]] = tensor.empty() : tensor<2x8x64xf32>
// CHECK:         scf.for {{.*}} iter_args(%{{.*}} = %{{.*}}, %{{.*}} = %[[LSE0]]) -> (tensor<2x64x4x32xf32>, tensor<2x8x64xf32>)
// CHECK:           math.log
// CHECK:           tensor.insert_slice %{{.*}} into %{{.*}}[%{{.*}}, %{{.*}}, %{{.*}}] [1, 1, %{{.*}}] [1, 1, 1] : tensor<?xf32> into tensor<2x8x64xf32>
// CHECK:           math.log
// CHECK:           tensor.insert_slice %{{.*}} into %{{.*}}[%{{.*}}, %{{.*}}, %{{.*}}] [1, 1, %{{.*}}] [1, 1, 1] : tensor<?xf32> into tensor<2x8x64xf32>
// CHECK:         return %{{.*}}#0, %{{.*}}#1
func.func @v2_lse(%q: tensor<2x64x8x32xf32>, %k: tensor<2x64x2x32xf32>,
                  %v: tensor<2x64x2x32xf32>, %lam: tensor<2x64x4xf32>)
    -> (tensor<2x64x4x32xf32>, tensor<2x8x64xf32>) {
  %o, %lse = diffattn.v2 %q, %k, %v, %lam {causal}
      : (tensor<2x64x8x32xf32>, tensor<2x64x2x32xf32>, tensor<2x64x2x32xf32>, tensor<2x64x4xf32>)
      -> (tensor<2x64x4x32xf32>, tensor<2x8x64xf32>)
  return %o, %lse : tensor<2x64x4x32xf32>, tensor<2x8x64xf32>
}

// -----

// f64 operands: the online softmax state (running max, sum, accumulator)
// and the lse written after each key loop are f64; no f32 anywhere.
// CHECK-LABEL: func.func @v2_f64
// CHECK-NOT:     f32
// CHECK:         scf.for {{.*}} -> (tensor<?xf64>, tensor<?xf64>, tensor<?x8xf64>, tensor<?xf64>, tensor<?xf64>, tensor<?x8xf64>)
// CHECK-NOT:     f32
// CHECK:         return %{{.*}}, %{{.*}} : tensor<1x40x2x8xf64>, tensor<1x4x40xf64>
func.func @v2_f64(%q: tensor<1x40x4x8xf64>, %k: tensor<1x50x2x8xf64>, %lam: tensor<1x40x2xf64>) -> (tensor<1x40x2x8xf64>, tensor<1x4x40xf64>) {
  %o, %l = diffattn.v2 %q, %k, %k, %lam {causal} : (tensor<1x40x4x8xf64>, tensor<1x50x2x8xf64>, tensor<1x50x2x8xf64>, tensor<1x40x2xf64>) -> (tensor<1x40x2x8xf64>, tensor<1x4x40xf64>)
  return %o, %l : tensor<1x40x2x8xf64>, tensor<1x4x40xf64>
}
