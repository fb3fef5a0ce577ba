"""Per-call overhead of the Python tool's sandbox against a bare child process and nanochat's in-process calculator.

    python benchmarks/python_tool.py --calls 100

Three ways to run ``print(1)`` (or ``--code``), each timed over ``--calls`` calls after a warm-up:

    sandbox     hf_pipeline.tools.python.PythonSandbox: unshare -rn, python -I -S, rlimits, Landlock, seccomp,
                a fresh temporary directory, output through files
    bare        subprocess.run([python, -I, -S, -c, code]): the cheapest fresh process (no isolation at all)
    in_process  nanochat's calculator: eval() of the expression in the caller (no process, no isolation)

The goal for the sandbox is under 50 ms per call on 2 cores. Last line:
``python_tool ms_per_call sandbox=<a> bare=<b> in_process=<c> sandbox/bare=<a/b>``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_pipeline.tools.python import PythonSandbox  # noqa: E402


def timed(fn, calls: int) -> float:
    """Median milliseconds per call."""
    fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def cpu() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--code", default="print(1)")
    args = parser.parse_args()
    sandbox = PythonSandbox()
    assert sandbox(args.code) == "1" or args.code != "print(1)"
    bare = [sys.executable, "-I", "-S", "-c", args.code]
    expr = args.code[len("print("):-1] if args.code.startswith("print(") else args.code
    results = {
        "sandbox": timed(lambda: sandbox.run(args.code), args.calls),
        "bare": timed(lambda: subprocess.run(bare, capture_output=True, check=True), args.calls),
        "in_process": timed(lambda: eval(expr, {"__builtins__": {}}, {}), args.calls),
    }
    print(f"CPU: {cpu()}; sandbox layers: {sandbox.guarantees}")
    for name, ms in results.items():
        print(f"  {name:<11} {ms:8.3f} ms per call (median of {args.calls})")
    print(f"python_tool ms_per_call sandbox={results['sandbox']:.2f} bare={results['bare']:.2f} "
          f"in_process={results['in_process']:.4f} sandbox/bare={results['sandbox'] / results['bare']:.2f}")


if __name__ == "__main__":
    main()
