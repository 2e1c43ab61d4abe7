"""`floorline bench serve` against the live test server: a short run prints the percentile table."""

from __future__ import annotations

import json

from floorline.bench.serve import arrival_gaps, percentile
from floorline.cli import main


def test_arrivals_are_seeded_poisson():
    gaps = arrival_gaps(2000, rate=4.0, seed=3)
    assert gaps == arrival_gaps(2000, rate=4.0, seed=3) and gaps != arrival_gaps(2000, rate=4.0, seed=4)
    assert abs(sum(gaps) / len(gaps) - 0.25) < 0.03  # mean gap 1/rate
    assert arrival_gaps(3, rate=float("inf"), seed=0) == [0.0, 0.0, 0.0]
    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile([], 50) is None


def test_bench_serve_table(live_server, capsys, tmp_path):
    out_json = tmp_path / "bench.json"
    rc = main(["bench", "serve", "--url", live_server.url, "--num-prompts", "6", "--request-rate", "20",
               "--input-len", "8", "--output-len", "4", "--seed", "1", "--json", str(out_json)])
    table = capsys.readouterr().out
    assert rc == 0, table
    assert "TTFT (ms)" in table and "TPOT (ms)" in table and "p99" in table
    assert "completed: 6 | failed: 0" in table
    data = json.loads(out_json.read_text())
    assert data["output_tokens"] == 6 * 4 and data["stats"]["ttft_ms"]["p50"] > 0
    assert not any(live_server.wait_idle().values())


def test_bench_serve_unreachable_server(capsys):
    rc = main(["bench", "serve", "--url", "http://127.0.0.1:9", "--num-prompts", "1"])
    assert rc == 2 and "cannot reach" in capsys.readouterr().err
