"""Kernel classification and the gap arithmetic of the measured floor, with fake profiler events on CPU."""

import types

import pytest
import torch

from floorline.analysis import measure
from floorline.analysis.floor import decode_floor
from floorline.analysis.gpus import lookup_gpu
from floorline.analysis.measure import (DecodeMeasurement, KernelEvent, classify_kernel, kernel_breakdown,
                                        kernel_events_from_profiler, measure_decode)
from floorline.config import ModelConfig
from floorline.errors import FloorlineError


@pytest.mark.parametrize("name,cls", [
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize64x64x64_warpgroupsize1x1x1_execute_segment_k_off", "gemm"),
    ("void gemv2T_kernel_val<int, int, __nv_bfloat16, __nv_bfloat16, float, 128, 16, 4, 4, false>", "gemm"),
    ("nvjet_hsh_128x64_64x4_1x2_h_bz_coopA_NTN", "gemm"),
    ("ampere_bf16_s16816gemm_bf16_128x64_ldg8_f2f_stages_64x3_tn", "gemm"),
    ("void cublasLt::splitKreduce_kernel<32, 16, int, float, __nv_bfloat16>", "gemm"),
    ("_decode_attention_kernel", "attention"),
    ("_paged_attention_split_kernel", "attention"),
    ("_decode_split_kernel", "attention"),
    ("_prefill_kernel", "attention"),
    ("_skinny_gemm_kernel", "gemm"),
    ("_apply_rotary_kernel", "norm_elementwise"),
    ("fmha_cutlassF_bf16_aligned_64x64_rf_sm80", "attention"),
    ("_kv_write_kernel", "attention"),
    ("_rms_norm_kernel", "norm_elementwise"),
    ("_rotary_kernel", "norm_elementwise"),
    ("_silu_and_mul_kernel", "norm_elementwise"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>>",
     "norm_elementwise"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::ArgMaxOps<float>>>", "sampling"),
    ("void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float>", "sampling"),
    ("void at::native::distribution_elementwise_grid_stride_kernel<float, 4>", "sampling"),
    ("Memcpy DtoH (Device -> Pinned)", "other"),
    ("Memset (Device)", "other"),
    ("void at::native::indexSelectLargeIndex<c10::BFloat16, long>", "other"),
])
def test_classify_kernel(name, cls):
    assert classify_kernel(name) == cls


def test_kernel_breakdown_per_step():
    events = [KernelEvent("gemv2T_kernel", 4e-3), KernelEvent("_decode_attention_kernel", 1e-3),
              KernelEvent("_rms_norm_kernel", 2e-4), KernelEvent("argmax", 1e-4), KernelEvent("Memcpy HtoD", 1e-4)]
    prof = kernel_breakdown(events * 2, num_steps=2)
    assert prof.per_class == pytest.approx({"gemm": 4e-3, "attention": 1e-3, "norm_elementwise": 2e-4,
                                            "sampling": 1e-4, "other": 1e-4})
    assert prof.kernels_per_step == 5
    assert prof.top[0] == ("gemv2T_kernel", "gemm", pytest.approx(4e-3))
    assert [t[0] for t in prof.top][:2] == ["gemv2T_kernel", "_decode_attention_kernel"]


def _floor(bw=2.0e12):
    cfg = ModelConfig(architecture="LlamaForCausalLM", vocab_size=32000, hidden_size=2048, intermediate_size=8192,
                      num_layers=16, num_heads=16, num_kv_heads=4, head_dim=128, name="tiny")
    return decode_floor(cfg, lookup_gpu("h100"), 2048, 1, bandwidth=bw, bandwidth_source="measured")


def test_gap_decomposition_sums_to_gap():
    floor = _floor()
    kernel_s = {"gemm": floor.weight_bytes / 2.0e12 / 0.8, "attention": floor.kv_bytes / 2.0e12 / 0.5,
                "norm_elementwise": 1e-4, "sampling": 3e-5, "other": 2e-5}
    m = DecodeMeasurement("tiny", "H100 SXM", 2048, 1, 2.0e12, floor, step_graphs_s=2.5e-3, step_eager_s=4.0e-3,
                          kernel_s=kernel_s, kernels_per_step=300, profiled_mode="graphs")
    assert m.step_s == 2.5e-3 and m.ratio == pytest.approx(2.5e-3 / floor.floor_s)
    assert m.launch_overhead_s == pytest.approx(1.5e-3)
    assert m.gemv_efficiency == pytest.approx(0.8)
    assert m.attention_bytes_per_s == pytest.approx(1.0e12)
    assert m.idle_s == pytest.approx(2.5e-3 - sum(kernel_s.values()))
    assert sum(m.gap_components().values()) == pytest.approx(m.step_s - m.floor_s)
    assert m.attention_share == pytest.approx(kernel_s["attention"] / 2.5e-3)
    d = m.to_dict()
    assert d["ratio"] == m.ratio and "gap_components" in d


def test_measurement_report_renders():
    from floorline.analysis.report import grid_table, measurement_table

    floor = _floor()
    kernel_s = {"gemm": 2e-3, "attention": 2e-4, "norm_elementwise": 1e-4, "sampling": 3e-5, "other": 2e-5}
    m = DecodeMeasurement("tiny", "H100 SXM", 2048, 1, 2.0e12, floor, step_graphs_s=2.5e-3, step_eager_s=4.0e-3,
                          kernel_s=kernel_s, kernels_per_step=300, profiled_mode="graphs", notes=["a note"])
    text = measurement_table([m])
    assert "GEMV/GEMM" in text and "idle (launch gaps, host work)" in text and "note: a note" in text
    assert "1.500" in text  # launch overhead ms
    assert "tiny" in grid_table([m])


def test_no_graphs_uses_eager():
    m = DecodeMeasurement("tiny", "x", 2048, 1, 2e12, _floor(), step_graphs_s=None, step_eager_s=3e-3)
    assert m.step_s == 3e-3 and m.launch_overhead_s is None and m.gap_components() == {} and m.idle_s is None
    assert m.to_dict()["gemv_efficiency"] is None


def test_events_from_fake_profiler():
    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU

    def ev(name, dev, us, start=None):
        tr = types.SimpleNamespace(elapsed_us=lambda: us)
        if start is not None:
            tr.start = start
        return types.SimpleNamespace(name=name, device_type=dev, time_range=tr)

    prof = types.SimpleNamespace(events=lambda: [ev("aten::mm", cpu, 50), ev("gemv2T_kernel", cuda, 40, 100),
                                                 ev("_rms_norm_kernel", cuda, 2)])
    events = kernel_events_from_profiler(prof)
    assert [e.name for e in events] == ["gemv2T_kernel", "_rms_norm_kernel"]
    assert events[0].duration_s == pytest.approx(40e-6) and events[0].start_s == pytest.approx(100e-6)
    assert events[1].start_s is None  # a layout without start times


def test_breakdown_charges_overlapping_kernels_their_marginal_cost():
    """Early launch: attention starts inside the GEMV and waits for it; durations would count the overlap
    twice, marginal costs add up to the busy time."""
    events = [KernelEvent("gemv2T_kernel", 10e-6, 0.0), KernelEvent("_decode_split_kernel", 5e-6, 8e-6),
              KernelEvent("_rms_norm_kernel", 2e-6, 15e-6)]  # after a 2 us idle gap
    prof = kernel_breakdown(events, num_steps=1)
    assert prof.marginal
    assert prof.per_class["gemm"] == pytest.approx(10e-6)
    assert prof.per_class["attention"] == pytest.approx(3e-6)
    assert prof.per_class["norm_elementwise"] == pytest.approx(2e-6)
    without_starts = kernel_breakdown([KernelEvent(e.name, e.duration_s) for e in events], num_steps=1)
    assert not without_starts.marginal and without_starts.per_class["attention"] == pytest.approx(5e-6)


class _FakeEngine:
    """Enough of LLMEngine for measure_decode's control flow: steps emit one token per request."""

    def __init__(self):
        self.device = torch.device("cuda", 0)
        self.dtype = torch.bfloat16
        self.model = torch.nn.Module()  # no Linear layers: unquantized
        self.model_config = ModelConfig(
            architecture="LlamaForCausalLM", vocab_size=32000, hidden_size=2048, intermediate_size=8192,
            num_layers=16, num_heads=16, num_kv_heads=4, head_dim=128, name="tiny", max_position_embeddings=8192)
        self.max_model_len = 4096
        self.args = types.SimpleNamespace(max_num_batched_tokens=2048, enforce_eager=False)
        self.runner = types.SimpleNamespace(graphs=None, capture_cuda_graphs=self._capture)
        self.requests, self.aborted, self.modes = [], [], []

    def _capture(self, max_batch, max_model_len):
        self.runner.graphs = "graphs"

    def add_request(self, prompt, params):
        assert len(prompt) == 2048 and params.ignore_eos
        self.requests.append(f"r{len(self.requests)}")
        return self.requests[-1]

    def step(self):
        self.modes.append(self.runner.graphs)
        comp = types.SimpleNamespace(token_ids=[1])
        return [types.SimpleNamespace(request_id=r, error=None, outputs=[comp]) for r in self.requests]

    def abort_request(self, rid):
        self.aborted.append(rid)


def test_measure_decode_flow_with_fake_engine(monkeypatch):
    engine = _FakeEngine()
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    fake = [KernelEvent("gemv2T_kernel", 1e-3), KernelEvent("_decode_attention_kernel", 1e-4)]
    monkeypatch.setattr(measure, "_profile_steps", lambda eng, n: fake * n)
    m = measure_decode(engine, 2048, batch=2, num_steps=3, warmup=1, profile_steps=2, bandwidth=2e12,
                       gpu=lookup_gpu("h100"))
    assert m.step_graphs_s is not None and m.step_eager_s is not None
    assert "graphs" in engine.modes and None in engine.modes
    assert m.profiled_mode == "graphs" and m.kernel_s["gemm"] == pytest.approx(1e-3)
    assert m.top_kernels[0][0] == "gemv2T_kernel"
    assert engine.aborted == engine.requests and engine.runner.graphs is None  # restored
    assert m.floor.bandwidth_source == "measured" and m.floor.batch == 2


def test_measure_needs_cuda_engine():
    engine = types.SimpleNamespace(device=torch.device("cpu"))
    with pytest.raises(FloorlineError, match="CUDA"):
        measure_decode(engine, 2048)


@pytest.mark.gpu
def test_measure_decode_on_the_gpu():
    """The measured part end to end on a real engine: graphs beat eager, the gap adds up."""
    from floorline.analysis.measure import build_engine, measure_decode

    engine = build_engine("llama-3.2-1b", max_context=512)
    m = measure_decode(engine, context=256, num_steps=8, warmup=2, profile_steps=4)
    assert m.step_graphs_s and m.step_eager_s and m.step_graphs_s < m.step_eager_s
    assert 1.0 < m.ratio < 5.0
    assert abs(sum(m.gap_components().values()) - (m.step_s - m.floor_s)) < 1e-6
