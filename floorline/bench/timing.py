"""Timing helpers shared by the benchmarks: CUDA-event medians of graph replays."""

from __future__ import annotations

import statistics

import torch


def median_replay_ms(graph: torch.cuda.CUDAGraph, repeats: int) -> float:
    """Median milliseconds of one replay of `graph`, each timed with CUDA events."""
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)
