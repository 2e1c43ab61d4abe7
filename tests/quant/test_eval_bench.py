"""Perplexity with sliding windows, the eval command, and the GPU benchmark's logic in the interpreter."""

from __future__ import annotations

import math

import pytest
import torch

from floorline.api import LLM
from floorline.cli import main
from floorline.errors import FloorlineError
from floorline.eval.perplexity import DEFAULT_TEXT, perplexity, windows
from tests.quant.conftest import VOCAB, model_logits


def test_windows_cover_every_position_once():
    for n, window, stride in ((10, 4, 2), (1000, 512, 256), (7, 8, 8), (513, 512, 512), (9, 3, 1)):
        spans = windows(n, window, stride)
        scored = [p for _, end, first in spans for p in range(first, end)]
        assert scored == list(range(1, n))
        assert all(end - begin <= window and begin <= first - 1 for begin, end, first in spans)
    with pytest.raises(FloorlineError, match="stride"):
        windows(10, 4, 5)


def test_perplexity_equals_the_direct_computation(quant_tiny_dir):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (40,), generator=g).tolist()
    engine = LLM(quant_tiny_dir, num_kv_blocks=16).engine
    logp = torch.log_softmax(model_logits(engine.model, ids).double(), dim=-1)
    nll = -logp[torch.arange(39), torch.tensor(ids[1:])]
    whole = perplexity(engine, ids, window=64, stride=32)
    assert whole.num_tokens == 39 and whole.ppl == pytest.approx(math.exp(float(nll.mean())), rel=1e-5)
    assert torch.equal(whole.top1, logp.argmax(-1)[:39])
    # smaller windows see less context: close, but not the same numbers
    windowed = perplexity(engine, ids, window=16, stride=8)
    assert windowed.num_tokens == 39 and windowed.windows[1] == (8, 24)
    torch.testing.assert_close(windowed.nll[:15], whole.nll[:15], rtol=1e-5, atol=1e-5)  # first window: same
    assert whole.agreement(whole) == 1.0
    quant = perplexity(LLM(quant_tiny_dir, num_kv_blocks=16, quantization="int8").engine, ids, 64, 32)
    assert 0.5 < quant.agreement(whole) <= 1.0 and quant.ppl == pytest.approx(whole.ppl, rel=0.1)


@pytest.mark.slow
def test_eval_command_on_the_bundled_model(capsys, tmp_path):
    out = tmp_path / "rows.json"
    assert DEFAULT_TEXT.is_file() and len(DEFAULT_TEXT.read_text()) > 4000
    code = main(["eval", "ppl", "--quantization", "int8", "--max-tokens", "48", "--window", "32", "--stride", "16",
                 "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and "| none |" in text and "| int8 |" in text and "(48 tokens)" in text
    assert out.is_file()


def test_eval_command_errors(quant_tiny_dir, tmp_path, capsys):
    assert main(["eval", "ppl", "--model", quant_tiny_dir, "--file", str(tmp_path / "missing.txt")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["eval", "ppl", "--model", quant_tiny_dir]) == 2  # no tokenizer
    assert "no tokenizer" in capsys.readouterr().err


def test_benchmark_logic_runs_in_the_interpreter(monkeypatch, capsys):
    """The GPU benchmark's build / check / table path with fp32 weights and timing faked."""
    import floorline.bench.quant as bench

    monkeypatch.setattr(bench, "time_per_call", lambda calls: [c() for c in calls] and 1e-5)
    rows, failures = [], []
    for fmt in ("bf16", "int8", "fp8", "int4", "nf4", "nf4-select"):
        r, f = bench.bench_shape(fmt, "tiny", (1, 4), torch.device("cpu"), 0, sweep=fmt == "int4",
                                 deadline=math.inf, kn=(256, 64), dtype=torch.float32)
        rows += r
        failures += f
    assert not failures and len(rows) == 12 and all(math.isfinite(r.seconds) for r in rows)
    bench.print_tables(rows, 1e12, {1: 1e-5, 4: 1e-5})
    assert "nf4-select" in capsys.readouterr().out


def test_benchmark_down_rows_take_gate_up_and_the_sweep_writes_loadable_json(monkeypatch, tmp_path):
    import floorline.bench.quant as bench
    import floorline.kernels.quant_configs as qc

    monkeypatch.setattr(bench, "time_per_call", lambda calls: [c() for c in calls] and 1e-5)
    down, failures = bench.bench_shape("int8", "down", (1,), torch.device("cpu"), 0, sweep=False,
                                       deadline=math.inf, kn=(128, 32), dtype=torch.float32)
    assert not failures
    times = iter([2e-5] + [1e-5] * 100)  # the default config first, then every candidate is faster
    monkeypatch.setattr(bench, "time_per_call", lambda calls: [c() for c in calls] and next(times))
    rows, failures = bench.bench_shape("int8", "qkv", (1,), torch.device("cpu"), 0, sweep=True,
                                       deadline=math.inf, kn=(128, 32), dtype=torch.float32)
    assert not failures and rows[0].best is not None
    assert down[0].nbytes - rows[0].nbytes == 4 * 128  # same weights; down's x is gate | up, [1, 2K] fp32
    out = tmp_path / "swept.json"
    bench.write_json(rows, str(out))
    monkeypatch.setattr(qc, "TUNED_CONFIGS", {})
    assert qc.load_tuned_configs(out) == 1 and qc.TUNED_CONFIGS[("int8", 32, 128, 1)] == rows[0].best
    assert bench.main(["--out", str(out)]) == 2  # --out without --sweep


def test_benchmark_rows_past_16_and_the_dequant_path(monkeypatch, capsys):
    """32 rows: the quantized dot paths (or, with `dequant`, dequantize + matmul) and bf16's cuBLAS, checked
    against the reference like every row; --dequant with --sweep is refused."""
    import floorline.bench.quant as bench

    monkeypatch.setattr(bench, "time_per_call", lambda calls: [c() for c in calls] and 1e-5)
    labels = {}
    for fmt, dequant in (("int4", False), ("int4", True), ("bf16", False)):
        rows, failures = bench.bench_shape(fmt, "tiny", (32,), torch.device("cpu"), 0, sweep=False, deadline=math.inf,
                                           kn=(256, 64), dtype=torch.float32, dequant=dequant)
        assert not failures
        labels[fmt, dequant] = rows[0].config
    assert labels["int4", False].startswith("dot") and labels["int4", True] == "dequantize + cuBLAS"
    assert labels["bf16", False] == "cuBLAS"
    assert bench.main(["--dequant", "--sweep"]) == 2
    assert "pick one" in capsys.readouterr().err
