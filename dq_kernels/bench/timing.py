"""CUDA-event timing with a cold L2: median of many repetitions, the L2 flushed before each one."""

from __future__ import annotations

import functools
import statistics
from typing import Callable

import torch

FLUSH_BYTES = 256 * 2**20  # larger than the L2 of any current GPU (H100 50 MB, B200 126 MB)
TARGET_SECONDS = 0.4  # device time spent on one timed call, flushes included
MIN_REPS = 10
ESTIMATE_CALLS = 5

SLEEP_CYCLES = 1_000_000  # ~0.5 ms of GPU spin before each timed call (see median_us)

METHOD = (
    "CUDA events around each call; after warm-up, the median of as many repetitions as fit in "
    "about 0.4 s (at least 10); the L2 is flushed before every repetition by writing a 256 MB buffer, "
    "and a GPU spin after the flush covers the host's launch time, so the events time GPU work only"
)


@functools.cache
def _flush_buffer() -> torch.Tensor:
    """The 256 MB int32 buffer whose zeroing evicts the L2 (made on first use, never at import)."""
    return torch.empty(FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")


def _event() -> torch.cuda.Event:
    return torch.cuda.Event(enable_timing=True)


def _seconds_per_rep(fn: Callable[[], object], flush: torch.Tensor) -> float:
    """Device seconds of one flush + call, averaged over a few calls (which also warm up)."""
    start, end = _event(), _event()
    start.record()
    for _ in range(ESTIMATE_CALLS):
        flush.zero_()
        torch.cuda._sleep(SLEEP_CYCLES)
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / ESTIMATE_CALLS


def median_us(fn: Callable[[], object]) -> float:
    """Median device time of ``fn()`` in microseconds, each repetition starting with a cold L2.

    ``fn`` launches work on the current CUDA stream; call it once before (compilation, autotuning,
    lazy initialisation) so that the first call here is not an outlier.
    """
    flush = _flush_buffer()
    reps = max(MIN_REPS, int(TARGET_SECONDS / _seconds_per_rep(fn, flush)))
    starts = [_event() for _ in range(reps)]
    ends = [_event() for _ in range(reps)]
    for start, end in zip(starts, ends):
        flush.zero_()
        # keep the GPU busy while the host enqueues the start event and fn's launches, so a slow
        # Python launch path shows up as host time, not as GPU time between the events
        torch.cuda._sleep(SLEEP_CYCLES)
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) * 1e3
