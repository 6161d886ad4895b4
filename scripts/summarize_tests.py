#!/usr/bin/env python3
"""Combines the lit and pytest logs of `scripts/run.sh test` into one line.

Prints `tests: N passed, N failed, N skipped` last and exits 1 when anything
failed, when a runner failed without reporting failures (a build error), or
when no test ran at all.
"""
import argparse
import re
import sys


def lit_counts(text):
    """Returns (passed, failed, skipped) from lit's closing summary."""
    def count(label):
        m = re.search(rf"^\s*{label}\s*:\s*(\d+)", text, re.M)
        return int(m.group(1)) if m else 0
    passed = count("Passed") + count("Expectedly Failed")
    failed = count("Failed") + count("Unexpectedly Passed") + count("Unresolved") + count("Timed Out")
    skipped = count("Unsupported") + count("Excluded") + count("Skipped")
    return passed, failed, skipped


def pytest_counts(text):
    """Returns (passed, failed, skipped) from pytest's last summary line."""
    lines = [l for l in text.splitlines() if re.search(r"\d+ (passed|failed|error|skipped|deselected)", l)]
    if not lines:
        return 0, 0, 0
    last = lines[-1]
    def count(word):
        m = re.search(rf"(\d+) {word}", last)
        return int(m.group(1)) if m else 0
    return count("passed") + count("xfailed"), count("failed") + count("errors?") + count("xpassed"), count("skipped")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("lit_log")
    ap.add_argument("pytest_log")
    ap.add_argument("--lit-rc", type=int, default=0)
    ap.add_argument("--pytest-rc", type=int, default=0)
    args = ap.parse_args()
    lp, lf, ls = lit_counts(open(args.lit_log, errors="replace").read())
    pp, pf, ps = pytest_counts(open(args.pytest_log, errors="replace").read())
    # A runner that failed without naming a failed test (build error, crash
    # of the runner) counts as one failure, so the line never looks green.
    if args.lit_rc != 0 and lf == 0:
        lf = 1
    if args.pytest_rc not in (0,) and pf == 0:
        pf = 1
    passed, failed, skipped = lp + pp, lf + pf, ls + ps
    print(f"lit: {lp} passed, {lf} failed, {ls} skipped")
    print(f"pytest: {pp} passed, {pf} failed, {ps} skipped")
    print(f"tests: {passed} passed, {failed} failed, {skipped} skipped")
    sys.exit(1 if failed or passed == 0 else 0)


if __name__ == "__main__":
    main()
