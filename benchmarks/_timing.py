"""What the benchmark scripts share: the median wall-clock time of a few calls."""

import statistics
import time


def median_time(fn, repeat: int = 3) -> float:
    """Median seconds of `repeat` calls of fn()."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
