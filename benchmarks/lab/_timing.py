"""Shared by the lab scripts: a median timer and the check-then-time loop (llm.c dev/cuda
style: every variant is checked against the shipped reference before it is timed)."""

import statistics
import time


def median_ms(fn, repeat=15, warmup=2):
    """Median wall time of ``fn()`` in milliseconds, after ``warmup`` calls (JIT, caches)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def report(name, cases):
    """Print one line per (label, fn) with its median time."""
    for label, fn in cases:
        print(f"{name:>20s}  {label:<28s} {median_ms(fn):9.3f} ms")
