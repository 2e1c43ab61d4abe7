"""`floorline floor` and `floorline plan` through floorline.cli.main: tables, JSON, errors, plots."""

import json

import pytest
import torch

from floorline.cli import main


def test_floor_table(capsys):
    assert main(["floor", "--model", "llama-3.1-8b", "--gpu", "h100", "--context", "2048,16k",
                 "--bandwidth", "2.88TB/s"]) == 0
    out = capsys.readouterr().out
    assert "llama-3.1-8b" in out and "H100 SXM" in out
    assert "5.305" in out and "5.957" in out and "16384" in out


def test_floor_json(capsys):
    assert main(["floor", "-m", "llama-3.1-8b", "--gpu", "h100,l4", "--context", "2048,4096", "--batch", "1,8",
                 "--weight-format", "int4", "--kv-format", "fp8", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["floors"]) == 8 and data["measurements"] == []
    row = data["floors"][0]
    assert row["gpu"] == "H100 SXM" and row["weight_format"] == "int4" and row["kv_format"] == "fp8"
    assert row["floor_ms"] == pytest.approx(row["floor_s"] * 1e3)


def test_plan_table_and_json(capsys):
    assert main(["plan", "--model", "llama-3.1-8b", "--gpus", "h100,l4,rtx4090"]) == 0
    out = capsys.readouterr().out
    assert "16.06 GB" in out and "131,072 bytes per token" in out and "RTX 4090" in out
    assert main(["plan", "-m", "deepseek-v3", "--gpus", "h200", "--weight-format", "fp8", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["gpus"][0]["fits"] is False and data["kv_bytes_per_token"] == 70272
    assert "each token reads 37B" in data["params_text"]


@pytest.mark.parametrize("argv,needle", [
    (["floor", "-m", "llama-3.1-8b", "--gpu", "v100"], "unknown GPU 'v100'; known: L4"),
    (["floor", "-m", "llama-3.1-8b", "--gpu", "h100", "--context", "200000"],
     "200000 exceeds llama-3.1-8b's maximum context of 131072"),
    (["floor", "-m", "llama-3.1-8b", "--gpu", "h100", "--weight-format", "int3"],
     "unknown weight format 'int3'; accepted:"),
    (["floor", "-m", "llama-3.1-8b", "--gpu", "h100", "--kv-format", "q4"], "unknown KV-cache format 'q4'; accepted:"),
    (["floor", "-m", "llama-3.1-8b", "--gpu", "h100", "--context", "lots"], "bad context 'lots'"),
    (["plan", "-m", "llama-3.1-8b", "--gpus", "h100,tpu"], "unknown GPU 'tpu'"),
    (["plan", "-m", "no-such-model", "--gpus", "h100"], "not found"),
])
def test_errors_are_one_line_exit_2(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_measure_without_cuda(capsys):
    assert main(["floor", "-m", "llama-3.1-8b", "--gpu", "h100", "--measure"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert main(["floor", "-m", "llama-3.1-8b"]) == 2  # no --gpu and none present
    assert "name a GPU with --gpu" in capsys.readouterr().err


@pytest.mark.parametrize("weights,kv,expected", [
    ("bf16", "bf16", ("bfloat16", None)), ("fp16", "fp16", ("float16", None)),
    ("int4", "bf16", ("bfloat16", "int4")), ("nf4", "fp16", ("float16", "nf4")),
    ("fp8-w8a8", "bf16", ("bfloat16", "fp8-w8a8")),
])
def test_measured_engine_settings(weights, kv, expected):
    import argparse

    from floorline.analysis.cli import _engine_settings

    assert _engine_settings(argparse.Namespace(weight_format=weights, kv_format=kv)) == expected


@pytest.mark.parametrize("weights,kv", [("q4_k", "bf16"), ("int4", "fp8"), ("bf16", "fp16")])
def test_measured_engine_settings_refused(weights, kv):
    import argparse

    from floorline.analysis.cli import _engine_settings
    from floorline.errors import FloorlineError

    with pytest.raises(FloorlineError, match="quantized on load \\(int8, int4, nf4, fp8, fp8-w8a8\\)"):
        _engine_settings(argparse.Namespace(weight_format=weights, kv_format=kv))


@pytest.mark.parametrize("head,quantization,expected", [
    (None, "int4", None), ("bf16", None, None), ("int8", "int4", "int8"), ("INT4", "nf4", "int4"),
])
def test_measured_lm_head_setting(head, quantization, expected):
    import argparse

    from floorline.analysis.cli import _head_setting

    assert _head_setting(argparse.Namespace(lm_head_format=head), quantization) == expected


@pytest.mark.parametrize("head,quantization,message", [
    ("q6_k", "int4", "measuring takes --lm-head-format bf16, fp16 or one of int8, int4, nf4, fp8"),
    ("int8", None, "needs weights quantized on load too"),
])
def test_measured_lm_head_setting_refused(head, quantization, message):
    import argparse

    from floorline.analysis.cli import _head_setting
    from floorline.errors import FloorlineError

    with pytest.raises(FloorlineError, match=message):
        _head_setting(argparse.Namespace(lm_head_format=head), quantization)


def test_plot_written(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "floor.png"
    assert main(["floor", "-m", "llama-3.1-8b", "--gpu", "h100,l4", "--context", "2048,4096,8192",
                 "--plot", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_plot_of_measurements(tmp_path):
    pytest.importorskip("matplotlib")
    from floorline.analysis.report import plot_series

    path = tmp_path / "ratio.png"
    plot_series(str(path), {"a": [(2048, 1.3), (4096, 1.25)], "b": [(2048, 1.5), (4096, 1.4)]}, "ratio", "t")
    assert path.stat().st_size > 0
