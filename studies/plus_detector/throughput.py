"""decision_function throughput of DTPMMultiScale against DTPMNonParametric on the same data.

Usage: python studies/plus_detector/throughput.py [N_TRAIN=100000] [N_QUERY=100000] [D=32] [REPEATS=2]

Gaussian rows (seed 0), both detectors on the CPU with their default search ("auto": the native
brute force at d = 32); the two are timed alternately, REPEATS times, and the best time of each kept,
both wall-clock and the process's CPU time (less sensitive to other processes on a shared machine).
"""

import sys
import time

import numpy as np

from dtpm_fast import DTPMMultiScale, DTPMNonParametric, _core

n_train, n_query, d, repeats = (
    list(map(int, sys.argv[1:])) + [100_000, 100_000, 32, 2][len(sys.argv) - 1 :]
)[:4]
rng = np.random.default_rng(0)
X = rng.standard_normal((n_train, d), dtype=np.float32)
Q = rng.standard_normal((n_query, d), dtype=np.float32)
print(f"n_train={n_train} n_query={n_query} d={d} threads={_core.max_threads()}", flush=True)
detectors = {"np": DTPMNonParametric(device="cpu"), "plus": DTPMMultiScale(device="cpu")}
fit_s, score_s, score_cpu = {}, {}, {}
for name, det in detectors.items():
    start = time.perf_counter()
    det.fit(X)
    fit_s[name] = time.perf_counter() - start
    print(f"{name}: fit {fit_s[name]:.1f} s", flush=True)
for _r in range(repeats):
    for name, det in detectors.items():
        start, cpu = time.perf_counter(), time.process_time()
        det.decision_function(Q)
        t, c = time.perf_counter() - start, time.process_time() - cpu
        score_s[name] = min(t, score_s.get(name, np.inf))
        score_cpu[name] = min(c, score_cpu.get(name, np.inf))
        print(
            f"{name}: decision_function {t:.1f} s wall, {c:.1f} s CPU ({n_query / t:,.0f} rows/s)", flush=True
        )
print(
    f"throughput ratio plus/np: {score_s['np'] / score_s['plus']:.3f} "
    f"(np {n_query / score_s['np']:,.0f} rows/s, plus {n_query / score_s['plus']:,.0f} rows/s); "
    f"fit time ratio plus/np: {fit_s['plus'] / fit_s['np']:.2f}"
)
print(
    f"CPU-time throughput ratio plus/np: {score_cpu['np'] / score_cpu['plus']:.3f} "
    f"(np {score_cpu['np']:.1f} s, plus {score_cpu['plus']:.1f} s CPU)"
)
