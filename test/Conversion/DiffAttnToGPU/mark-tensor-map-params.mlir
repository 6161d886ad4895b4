// RUN: diffattn-opt %s --split-input-file --verify-diagnostics --pass-pipeline="builtin.module(llvm.func(diffattn-mark-tensor-map-params))" | FileCheck %s

// diffattn-mark-tensor-map-params (part of diffattn-compile's PTX lowering, after
// GPU-to-NVVM conversion, which drops llvm.byval from kernel parameters).

// The leading diffattn.tensor_map_args parameters of an NVVM kernel become
// 128-byte, 64-byte aligned grid constants passed by value; the others stay.
// CHECK-LABEL: llvm.func @k(
// CHECK-SAME: %arg0: !llvm.ptr {llvm.align = 64 : i64, llvm.byval = !llvm.array<128 x i8>, nvvm.grid_constant}
// CHECK-SAME: %arg1: !llvm.ptr {llvm.align = 64 : i64, llvm.byval = !llvm.array<128 x i8>, nvvm.grid_constant}
// CHECK-SAME: %arg2: !llvm.ptr, %arg3: i64)
llvm.func @k(%a: !llvm.ptr, %b: !llvm.ptr, %c: !llvm.ptr, %n: i64) attributes {nvvm.kernel, diffattn.tensor_map_args = 2 : i64} {
  llvm.return
}

// -----

// Functions without the attribute are left alone.
// CHECK-LABEL: llvm.func @plain(
// CHECK-SAME: %arg0: !llvm.ptr) attributes {nvvm.kernel}
llvm.func @plain(%a: !llvm.ptr) attributes {nvvm.kernel} {
  llvm.return
}

// -----

// expected-error @below {{diffattn.tensor_map_args on a function that is not an NVVM kernel}}
llvm.func @device(%a: !llvm.ptr) attributes {diffattn.tensor_map_args = 1 : i64} {
  llvm.return
}

// -----

// expected-error @below {{diffattn.tensor_map_args = 3 but the kernel has 2 parameters}}
llvm.func @short(%a: !llvm.ptr, %b: !llvm.ptr) attributes {nvvm.kernel, diffattn.tensor_map_args = 3 : i64} {
  llvm.return
}

// -----

// expected-error @below {{tensor map parameter 0 is not a pointer}}
llvm.func @scalar(%a: i64) attributes {nvvm.kernel, diffattn.tensor_map_args = 1 : i64} {
  llvm.return
}
