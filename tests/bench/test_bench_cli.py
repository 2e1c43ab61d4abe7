"""`floorline bench decode|throughput` on CPU: they run, print their tables, and refuse bad flags."""

from __future__ import annotations

import json

import pytest

from floorline.cli import main


def test_bench_decode_prints_table_and_json(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "d.json"
    code = main(["bench", "decode", "--model", tiny_model_dir, "--device", "cpu", "--contexts", "32,64", "--steps", "4",
                 "--warmup", "1", "--bandwidth", "10", "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and "ms/token" in text and "floor ms" in text
    rows = json.loads(out.read_text())["rows"]
    assert [r["context"] for r in rows] == [32, 64] and all(r["ratio"] > 0 for r in rows)


@pytest.mark.parametrize("rate", [None, "200"])
def test_bench_throughput_all_at_once_and_poisson(tiny_model_dir, tmp_path, capsys, rate):
    out = tmp_path / "t.json"
    args = ["bench", "throughput", "--model", tiny_model_dir, "--device", "cpu", "--num-requests", "12",
            "--input-len", "5:40", "--output-len", "3:9", "--max-num-seqs", "4", "--json", str(out)]
    code = main(args + (["--request-rate", rate] if rate else []))
    text = capsys.readouterr().out
    assert code == 0 and "output tokens/s" in text
    result = json.loads(out.read_text())
    assert result["num_requests"] == 12 and 12 * 3 <= result["output_tokens"] <= 12 * 9
    assert result["ttft_ms"]["p50"] > 0
    # Host time by phase: every phase of the loop ran, and the CPU path launches eager steps only.
    phases = result["host_s_by_phase"]
    assert {"schedule", "update", "process", "launch_eager"} <= phases.keys() and all(v > 0 for v in phases.values())
    assert set(result["steps_by_kind"]) == {"eager"} and 0 < result["steps_by_kind"]["eager"] <= result["num_steps"]
    assert f"eager {1e3 * phases['launch_eager'] / result['steps_by_kind']['eager']:.2f} x" in text


def test_bench_bad_flags(capsys):
    assert main(["bench", "throughput", "--input-len", "9:3", "--device", "cpu"]) == 2
    assert "--input-len" in capsys.readouterr().err
    assert main(["bench", "decode", "--contexts", "abc", "--device", "cpu"]) == 2
    assert "--contexts" in capsys.readouterr().err
