#!/usr/bin/env python3
"""Runs a model graph on the CPU before and after diffattn-fuse and compares.

    run_graph.py --opt diffattn-opt --runner mlir-runner --lib-dir DIR \
        [--tosa] [--expect-unfused] [--shape 2x5x64 ...] [--tile BQxBK] \
        GRAPH.mlir

GRAPH.mlir holds one public function (the model graph, tensors in and one
tensor out). The script adds a `@main` that fills every argument with a fixed
pseudo-random pattern (sin of the element index), calls the graph and prints
the result, then runs it twice through mlir-runner: as written, and after
`--diffattn-fuse` and `--diffattn-decompose` (the project's oracle lowering
of the fused op). It prints
what was fused, both checksums and the largest difference, and exits non-zero
when nothing was fused (unless --expect-unfused) or the outputs differ by more
than the tolerance (1e-4 relative for f32 graphs; bf16 and f16 graphs
round intermediates that the fused op keeps in f32). Arguments may be 0-d
or bf16/f16; a trailing `dialect_resources` section (torch-mlir's weights)
stays where it is. --tosa runs the TOSA front end (diffattn-tosa-frontend)
first. A graph with dynamic arguments runs at the static shapes given with
one --shape per argument (the arguments are cast to their dynamic types).
--tile lowers the fused op through diffattn-tile-flash at the given block
sizes (the CPU kernels' path, partial blocks included) instead of the
oracle. Used by the lit end-to-end tests and by README's main job
(scripts/run.sh example).
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

LOWER = [
    "--one-shot-bufferize=bufferize-function-boundaries "
    "function-boundary-type-conversion=identity-layout-map",
    "--convert-linalg-to-loops", "--math-expand-ops", "--lower-affine",
    "--convert-scf-to-cf", "--expand-strided-metadata", "--lower-affine",
    "--convert-vector-to-llvm", "--finalize-memref-to-llvm",
    "--convert-math-to-llvm",
    "--convert-math-to-libm", "--convert-arith-to-llvm",
    "--convert-index-to-llvm", "--convert-cf-to-llvm",
    "--convert-func-to-llvm", "--reconcile-unrealized-casts",
]
TOSA = ["--diffattn-tosa-frontend"]


def parse_tensor(t):
    """'tensor<2x?x8xbf16>' -> ([2, -1, 8], 'bf16')."""
    body = t[len("tensor<"):-1]
    parts = body.split("x")
    dims = [int(p) if p != "?" else -1 for p in parts[:-1]]
    return dims, parts[-1]


def module_end(text):
    """Index of the module's closing brace (before a trailing
    `{-# dialect_resources ... #-}` section, which torch-mlir's exports
    carry)."""
    res = text.find("{-#")
    head = text if res < 0 else text[:res]
    return head.rstrip().rfind("}")


def concrete_shapes(arg_types, shapes):
    """The static type each argument is filled as: its own, or for a
    dynamic argument the shape given with --shape (one per argument, in
    order, e.g. 2x5x64)."""
    if shapes and len(shapes) != len(arg_types):
        sys.exit(f"run_graph.py: {len(shapes)} --shape for {len(arg_types)} arguments")
    out = []
    for n, t in enumerate(arg_types):
        dims, elem = parse_tensor(t)
        if shapes:
            given = [int(d) for d in shapes[n].split("x")] if shapes[n] else []
            if len(given) != len(dims) or any(d >= 0 and d != g for d, g in zip(dims, given)):
                sys.exit(f"run_graph.py: --shape {shapes[n]} does not fit argument {n} ({t})")
            dims = given
        elif any(d < 0 for d in dims):
            sys.exit(f"run_graph.py: argument {n} has a dynamic shape ({t}); "
                     "give static shapes with --shape")
        out.append("tensor<" + "".join(f"{d}x" for d in dims) + elem + ">")
    return out


def add_driver(text, shapes=None):
    """Appends @main (inputs, call, print) inside the graph's module."""
    sig = re.search(r"func\.func @(\w+)\((.*?)\)\s*->\s*(tensor<[^>]*>)", text, re.S)
    if not sig:
        sys.exit("run_graph.py: no public function returning a tensor")
    name, args, result = sig.group(1), sig.group(2), sig.group(3)
    arg_types = re.findall(r"%\w+: (tensor<[^>]*>)", args)
    static_types = concrete_shapes(arg_types, shapes)
    lines = ["  func.func @main() {"]
    values = []
    for n, (t, filled) in enumerate(zip(arg_types, static_types)):
        dims, elem = parse_tensor(filled)
        t = filled
        rank = len(dims)
        idx = ", ".join(f"d{i}" for i in range(rank))
        lines.append(f"    %e{n} = tensor.empty() : {t}")
        iters = ", ".join(['"parallel"'] * rank)
        lines.append(f"    %a{n} = linalg.generic {{indexing_maps = [affine_map<({idx}) -> ({idx})>], "
                     f"iterator_types = [{iters}]}} outs(%e{n} : {t}) {{")
        lines.append(f"    ^bb0(%out: {elem}):")
        lin = None
        for i, size in enumerate(dims):
            lines.append(f"      %i{i} = linalg.index {i} : index")
            if lin is None:
                lin = f"%i{i}"
            else:
                lines.append(f"      %c{i} = arith.constant {size} : index")
                lines.append(f"      %m{i} = arith.muli {lin}, %c{i} : index")
                lines.append(f"      %l{i} = arith.addi %m{i}, %i{i} : index")
                lin = f"%l{i}"
        if lin is None:  # a 0-d argument
            lines.append("      %zero = arith.constant 0 : index")
            lin = "%zero"
        lines.append(f"      %int = arith.index_cast {lin} : index to i64")
        lines.append("      %fp = arith.sitofp %int : i64 to f32")
        lines.append(f"      %k = arith.constant {0.731 + 0.113 * n} : f32")
        lines.append("      %x = arith.mulf %fp, %k : f32")
        lines.append("      %s = math.sin %x : f32")
        if elem == "f32":
            lines.append("      linalg.yield %s : f32")
        else:
            lines.append(f"      %t = arith.truncf %s : f32 to {elem}")
            lines.append(f"      linalg.yield %t : {elem}")
        lines.append(f"    }} -> {t}")
        if arg_types[n] != t:  # a dynamic argument: pass it as such
            lines.append(f"    %a{n}d = tensor.cast %a{n} : {t} to {arg_types[n]}")
            values.append(f"%a{n}d")
        else:
            values.append(f"%a{n}")
    lines.append(f"    %r = func.call @{name}({', '.join(values)}) : "
                 f"({', '.join(arg_types)}) -> {result}")
    rdims, relem = parse_tensor(result)
    out = "%r"
    if relem != "f32":
        f32 = result.replace(relem + ">", "f32>")
        rank = len(rdims)
        idx = ", ".join(f"d{i}" for i in range(rank))
        iters = ", ".join(['"parallel"'] * rank)
        sizes = []
        for i, d in enumerate(rdims):
            if d < 0:
                lines.append(f"    %rc{i} = arith.constant {i} : index")
                lines.append(f"    %rd{i} = tensor.dim %r, %rc{i} : {result}")
                sizes.append(f"%rd{i}")
        lines.append(f"    %re = tensor.empty({', '.join(sizes)}) : {f32}")
        lines.append(f"    %rf = linalg.generic {{indexing_maps = [affine_map<({idx}) -> ({idx})>, "
                     f"affine_map<({idx}) -> ({idx})>], iterator_types = [{iters}]}} "
                     f"ins(%r : {result}) outs(%re : {f32}) {{")
        lines.append(f"    ^bb0(%in: {relem}, %o: f32):")
        lines.append(f"      %w = arith.extf %in : {relem} to f32")
        lines.append("      linalg.yield %w : f32")
        lines.append(f"    }} -> {f32}")
        out, result = "%rf", f32
    mem = result.replace("tensor<", "memref<")
    lines.append(f"    %b = bufferization.to_buffer {out} : {result} to {mem}")
    lines.append(f"    %u = memref.cast %b : {mem} to memref<*xf32>")
    lines.append("    func.call @printMemrefF32(%u) : (memref<*xf32>) -> ()")
    lines.append("    return")
    lines.append("  }")
    lines.append("  func.func private @printMemrefF32(memref<*xf32>)")
    end = module_end(text)
    return text[:end] + "\n".join(lines) + "\n" + text[end:]


def tolerance(text):
    """Relative tolerance of the comparison: f32 1e-4; bf16/f16 graphs round
    intermediate results the fused op keeps in f32."""
    sig = re.search(r"func\.func @\w+\((.*?)\)\s*->\s*(tensor<[^>]*>)", text, re.S)
    types = sig.group(1) + sig.group(2) if sig else ""
    if "bf16" in types:
        return 3e-2
    if "f16" in types:
        return 5e-3
    return 1e-4


def run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        sys.exit(f"run_graph.py: failed: {' '.join(cmd[:3])} ...")
    return p


def execute(args, source, passes, tmp, tag, lower=LOWER):
    src = os.path.join(tmp, f"{tag}.mlir")
    with open(src, "w") as f:
        f.write(source)
    low = run([args.opt, src] + passes + lower).stdout
    ll = os.path.join(tmp, f"{tag}.llvm.mlir")
    with open(ll, "w") as f:
        f.write(low)
    libs = ",".join(os.path.join(args.lib_dir, l) for l in
                    ("libmlir_runner_utils.so", "libmlir_c_runner_utils.so"))
    out = run([args.runner, ll, "-e", "main", "-entry-point-result=void",
               f"-shared-libs={libs}"]).stdout
    body = out[out.find("data =") + 6:] if "data =" in out else out
    return [float(x) for x in re.findall(r"-?(?:\d+\.\d*|\d+)(?:e[-+]?\d+)?|-?nan|-?inf", body)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--opt", required=True)
    ap.add_argument("--runner", required=True)
    ap.add_argument("--lib-dir", required=True)
    ap.add_argument("--tosa", action="store_true")
    ap.add_argument("--expect-unfused", action="store_true")
    ap.add_argument("--shape", action="append", default=[],
                    help="static shape of each argument, in order (for "
                         "graphs with dynamic arguments), e.g. 2x5x64")
    ap.add_argument("--tile", metavar="BQxBK",
                    help="lower the fused op with diffattn-tile-flash at "
                         "these block sizes instead of diffattn-decompose")
    ap.add_argument("graph")
    args = ap.parse_args()
    original = open(args.graph).read()
    text = add_driver(original, args.shape)
    tol = tolerance(original)
    pre = TOSA if args.tosa else []
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "graph.mlir")
        with open(src, "w") as f:
            f.write(text)
        fused = run([args.opt, src] + pre + ["--diffattn-fuse=remarks=true"])
        remarks = [l.split("remark: ", 1)[1] for l in fused.stderr.splitlines() if "remark: " in l]
        for r in remarks:
            print(r)
        nfused = sum(r.startswith("fused") for r in remarks)
        print(f"fused ops: {nfused}")
        ref = execute(args, text, pre, tmp, "unfused")
        lowering, lower = ["--diffattn-decompose"], LOWER
        if args.tile:
            # As diffattn-cpu-pipeline: the tiled loops carry tensors whose
            # buffers bufferization may reallocate per iteration.
            bq, bk = args.tile.split("x")
            lowering = [f"--diffattn-tile-flash=block-q={bq} block-k={bk}",
                        "--eliminate-empty-tensors", "--empty-tensor-to-alloc-tensor",
                        "--canonicalize", "--cse"]
            lower = [LOWER[0] + " allow-return-allocs-from-loops=1"] + LOWER[1:]
        got = execute(args, fused.stdout, lowering, tmp, "fused", lower)
    if len(ref) != len(got) or not ref:
        sys.exit(f"output sizes differ: {len(ref)} vs {len(got)}")
    diff = max(abs(a - b) for a, b in zip(ref, got))
    scale = max(1.0, max(abs(a) for a in ref))
    finite = all(x == x and abs(x) != float("inf") for x in got)
    print(f"elements: {len(ref)}; unfused sum {sum(ref):.6f}; fused sum {sum(got):.6f}; "
          f"max abs difference {diff:.3e}")
    ok = finite and diff <= tol * scale
    if nfused == 0 and not args.expect_unfused:
        ok = False
        print("nothing was fused")
    print("OK: fused and unfused outputs agree" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
