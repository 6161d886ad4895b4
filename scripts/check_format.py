#!/usr/bin/env python3
"""Checks (or with --fix, applies) .clang-format on the project's C and C++
sources: every tracked .cpp and .h under include/, lib/, tools/, runtime/
and python/csrc/ (benchmarks/probes/ are measurement sketches, not built).

    python3 scripts/check_format.py [ROOT] [--fix]

Exit status 1 and one line per unformatted file when a check fails."""
import os
import shutil
import subprocess
import sys

DIRS = ("include", "lib", "tools", "runtime", "python/csrc")


def sources(root):
    out = []
    for top in DIRS:
        for dirpath, _, files in os.walk(os.path.join(root, top)):
            out += [os.path.join(dirpath, f) for f in sorted(files) if f.endswith((".cpp", ".h"))]
    return sorted(out)


def main():
    args = [a for a in sys.argv[1:] if a != "--fix"]
    root = os.path.abspath(args[0] if args else os.path.dirname(os.path.dirname(__file__)))
    tool = shutil.which("clang-format")
    if not tool:
        print("check_format: clang-format not found")
        return 1
    files = sources(root)
    if "--fix" in sys.argv:
        subprocess.run([tool, "-i", *files], check=True)
        return 0
    bad = []
    for f in files:
        r = subprocess.run([tool, "--dry-run", "-Werror", f], capture_output=True, text=True)
        if r.returncode != 0:
            bad.append(os.path.relpath(f, root))
    for f in bad:
        print(f"not formatted: {f} (python3 scripts/check_format.py --fix)")
    print(f"{len(files) - len(bad)} of {len(files)} files formatted")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
