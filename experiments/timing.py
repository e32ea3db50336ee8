"""One timing rule for the benchmarks: the best of ``repeat`` runs after a warm-up."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


def best_time(fn: Callable[[], object], repeat: int, clock: Callable[[], float] = time.process_time) -> float:
    """Seconds of the fastest of ``repeat`` calls of ``fn`` after one warm-up call (numba kernels
    compiled or loaded from the cache, caches warm), on ``clock``: process CPU time by default
    (what other tenants of a shared machine take is not counted), ``time.perf_counter`` for wall time."""
    fn()
    best = math.inf
    for _ in range(repeat):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best
