#!/usr/bin/env python3
"""Mutation fuzzer for diffattn-fuse's output.

    python3 scripts/fuzz_fuse.py build/bin/diffattn-opt COUNT SEED

Takes the fusion fixtures (test/Dialect/DiffAttn/Transforms/Inputs/fuse),
mutates each a few times textually (arithmetic ops, predicates, masking
constants, permutations, indexing maps, slice offsets, select operands,
TOSA ops), and runs `diffattn-opt [--diffattn-tosa-frontend]
--diffattn-fuse=remarks=true` on every mutant that parses. diffattn-opt
verifies the pass output, so a mutant whose input verifies but whose run
fails is a pass that produced invalid IR. Reports crashes (signals, stack
dumps, LLVM ERROR, assertions) and invalid outputs, keeps them under
/tmp/mutfuzz, prints a summary line, and exits 1 if any were found.
"""
import glob
import os
import random
import re
import subprocess
import sys

opt, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
rng = random.Random(seed)
files = sorted(glob.glob(os.path.join(ROOT, "test/Dialect/DiffAttn/Transforms/Inputs/fuse/*.mlir")))
files = [f for f in files if os.path.getsize(f) < 60000]
MUT = [
    (r"arith\.addf", ["arith.subf", "arith.mulf", "arith.maximumf"]),
    (r"arith\.subf", ["arith.addf", "arith.divf"]),
    (r"arith\.mulf", ["arith.addf", "arith.divf"]),
    (r"arith\.divf", ["arith.mulf", "arith.subf"]),
    (r"math\.exp", ["math.log", "math.sqrt", "math.exp2"]),
    (r"cmpi (sle|sgt|slt|sge|eq|ne)", ["cmpi sle", "cmpi sgt", "cmpi slt", "cmpi eq", "cmpi ne"]),
    (r"cmpf (oeq|ogt|olt|one)", ["cmpf oeq", "cmpf ogt", "cmpf une", "cmpf olt"]),
    (r"0xFF800000", ["0x7F800000", "0.000000e+00", "-1.000000e+00", "0xFF7FFFFF"]),
    (r"0xFFF0000000000000", ["0x7FF0000000000000", "0.0", "-1.0e+300"]),
    (r"permutation = \[[0-9, ]+\]", ["permutation = [0, 1, 3, 2]", "permutation = [1, 0, 2, 3]", "permutation = [0, 2, 1, 3]"]),
    (r"\(d0, d1, d2, d3\) -> \(d0, d1, d2, d3\)", ["(d0, d1, d2, d3) -> (d0, d1, d3, d2)", "(d0, d1, d2, d3) -> (d0, d2, d1, d3)", "(d0, d1, d2, d3) -> (d0, d1, d2, 0)"]),
    (r"\[1, 1, 2, 1\]", ["[1, 1, 1, 1]", "[1, 2, 1, 1]"]),
    (r"arith\.select %(\w+), %(\w+), %(\w+)", [None]),
    (r"0\.70710678118654757", ["-0.70710678118654757", "0.0", "1.5"]),
    (r"\"reduction\"", ["\"parallel\""]),
    (r"arith\.andi", ["arith.ori"]),
    (r"arith\.maximumf", ["arith.minimumf", "arith.addf"]),
    (r"tosa\.(add|sub|mul)\b", ["tosa.add", "tosa.sub", "tosa.maximum"]),
    (r"tosa\.reduce_(max|sum|all)", ["tosa.reduce_max", "tosa.reduce_sum", "tosa.reduce_min"]),
    (r"\[0, 0, ([0-9]), 0\]", ["[0, 0, 1, 0]", "[0, 0, 3, 0]", "[0, 1, 0, 0]"]),
]
crashes = invalid = ran = 0
os.makedirs("/tmp/mutfuzz", exist_ok=True)
for n in range(count):
    f = rng.choice(files)
    text = open(f).read()
    for _ in range(rng.randint(1, 3)):
        pat, choices = rng.choice(MUT)
        ms = list(re.finditer(pat, text))
        if not ms:
            continue
        m = rng.choice(ms)
        c = rng.choice(choices)
        if c is None:  # swap select operands
            c = f"arith.select %{m.group(1)}, %{m.group(3)}, %{m.group(2)}"
        text = text[:m.start()] + c + text[m.end():]
    extra = ["--diffattn-tosa-frontend"] if f.endswith(".tosa.mlir") else []
    p = subprocess.run([opt, "-"] + extra + ["--diffattn-fuse=remarks=true"], input=text, capture_output=True, text=True, timeout=300)
    err = p.stderr
    parsed_ok = "error:" not in err or "failed to verify" in err or "verification" in err
    if p.returncode < 0 or "Stack dump" in err or "LLVM ERROR" in err or "Assertion" in err:
        crashes += 1
        open(f"/tmp/mutfuzz/crash{n}.mlir", "w").write(text)
        print("CRASH", n, f, err[-300:])
    elif p.returncode != 0:
        # did the input itself verify?
        q = subprocess.run([opt, "-"] + extra, input=text, capture_output=True, text=True)
        if q.returncode == 0:
            invalid += 1
            open(f"/tmp/mutfuzz/invalid{n}.mlir", "w").write(text)
            print("INVALID OUTPUT", n, f, err[-400:])
    else:
        ran += 1
print(f"mutants {count}: ran {ran}, crashes {crashes}, invalid outputs {invalid}")
sys.exit(1 if crashes or invalid else 0)
