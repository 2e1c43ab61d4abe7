"""Timing helpers shared by the benchmarks: CUDA-event medians of graph replays."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch


def median_event_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of `fn()` (launches or a graph replay), each call timed with CUDA events."""
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def median_replay_ms(graph: torch.cuda.CUDAGraph, repeats: int) -> float:
    """Median milliseconds of one replay of `graph`, each timed with CUDA events."""
    return median_event_ms(graph.replay, repeats)


def median_graph_ms(fn: Callable[[], object], repeats: int = 20) -> float:
    """Median milliseconds of one replay of a CUDA graph that calls `fn` once (run once first, to compile)."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return median_replay_ms(graph, repeats)
