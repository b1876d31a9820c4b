"""Peak memory of a block of code.

Two figures, because no single one is right for both in-process and external codecs:

* ``peak_rss_mb``: the highest resident set size of this process plus its child
  processes (ffmpeg, VTM), sampled every ``interval`` seconds by a thread while
  the block runs (psutil). It includes the interpreter, torch and loaded models,
  so it is a process-level figure; short spikes between samples can be missed.
* ``peak_alloc_mb``: the peak of memory traced by `tracemalloc` during the block
  above what was traced at its start: Python objects and numpy arrays allocated by
  the coding path itself (not torch tensor storage, not child processes).
"""

from __future__ import annotations

import threading
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import psutil

MB = 1024 * 1024


@dataclass
class PeakMemory:
    peak_rss_mb: float = 0.0
    peak_alloc_mb: float = 0.0


def _tree_rss(proc: psutil.Process) -> int:
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += child.memory_info().rss
    return total


@contextmanager
def measure_peak(interval: float = 0.005) -> Iterator[PeakMemory]:
    """Measure the block's peak memory into the yielded `PeakMemory`."""
    result = PeakMemory()
    proc = psutil.Process()
    peak = [_tree_rss(proc)]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            with suppress(psutil.Error):
                peak[0] = max(peak[0], _tree_rss(proc))

    started_here = not tracemalloc.is_tracing()
    if started_here:
        tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        _, traced_peak = tracemalloc.get_traced_memory()
        if started_here:
            tracemalloc.stop()
        peak[0] = max(peak[0], _tree_rss(proc))
        result.peak_rss_mb = peak[0] / MB
        result.peak_alloc_mb = max(0, traced_peak - base) / MB
