"""scripts/decode_timeline.py: marginal costs of overlapping kernels on a timeline."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from decode_timeline import by_layer_position, marginal_costs, short_name  # noqa: E402


def test_marginal_costs_count_only_what_moves_the_end():
    events = [
        ("_gemv_kernel", 0.0, 10.0),
        ("_attn_kernel", 8.0, 13.0),  # launched early: 2 us overlap, 3 us marginal
        ("_gemv_kernel", 15.0, 20.0),  # after a 2 us idle gap: its whole 5 us
        ("_norm_kernel", 16.0, 19.0),  # inside the previous one: nothing
    ]
    costs = marginal_costs(events)
    assert costs["_gemv_kernel"] == (2, 15.0, 15.0)
    assert costs["_attn_kernel"] == (1, 3.0, 5.0)
    assert costs["_norm_kernel"] == (1, 0.0, 3.0)


def test_short_names():
    assert short_name("_decode_split_kernel_0d1d2d") == "_decode_split_kernel"
    torch_argmax = "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::ArgMaxOps<float>"
    assert short_name(torch_argmax) == "ArgMaxOps"


def test_by_layer_position_tells_the_shapes_of_one_kernel_apart():
    """Two steps of two layers: `_gemv_kernel` twice a layer (say qkv, o_proj) and once more at the
    step's end (the head); `_attn_kernel` once a layer."""
    step = ["_gemv_kernel", "_attn_kernel", "_gemv_kernel"] * 2 + ["_gemv_kernel"]
    events = [(name, float(t), t + 0.5) for t, name in enumerate(step + step)]
    labels = [name for name, _, _ in by_layer_position(list(reversed(events)), steps=2, layers=2)]
    one = ["_gemv_kernel[0]", "_attn_kernel[0]", "_gemv_kernel[1]"] * 2 + ["_gemv_kernel[+0]"]
    assert labels == one + one
    costs = marginal_costs(by_layer_position(events, steps=2, layers=2), key=str)
    assert costs["_gemv_kernel[+0]"][0] == 2 and costs["_gemv_kernel[1]"][0] == 4
