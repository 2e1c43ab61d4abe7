"""Model sources: sharded safetensors with an index, and `org/name` from the local HF cache."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from floorline.api import LLM  # noqa: E402
from floorline.sampling_params import SamplingParams  # noqa: E402
from floorline.weights.resolve import resolve_model  # noqa: E402


def greedy_tokens(model: str, prompt: list[int]) -> list[int]:
    llm = LLM(model, device="cpu", num_kv_blocks=64)
    return llm.generate([prompt], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))[0].outputs[0].token_ids


def test_sharded_checkpoint_equals_single_file(tiny_model_dir, tmp_path):
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, safe_serialization=True, max_shard_size="40KB")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # really sharded
    prompt = [5, 17, 42, 9, 100]
    assert greedy_tokens(str(sharded), prompt) == greedy_tokens(tiny_model_dir, prompt)


def test_missing_shard_is_named(tiny_model_dir, tmp_path):
    from floorline.errors import ModelNotFoundError

    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="40KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(ModelNotFoundError, match=shard.name):
        LLM(str(tmp_path), device="cpu")


def test_org_name_resolves_from_the_hf_cache(tiny_model_dir, tmp_path, monkeypatch):
    """The hub cache layout: models--org--name/refs/main names a snapshot directory."""
    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        (snapshot / f).write_bytes((__import__("pathlib").Path(tiny_model_dir) / f).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never the network in tests
    source = resolve_model("acme/tiny-llama")
    assert source.kind == "hf_dir" and source.path == snapshot
    assert greedy_tokens("acme/tiny-llama", [1, 2, 3]) == greedy_tokens(tiny_model_dir, [1, 2, 3])


def test_org_name_missing_everywhere_says_where_it_looked(tmp_path, monkeypatch):
    from floorline.errors import ModelNotFoundError

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model("acme/absent")
    assert "Hugging Face cache" in str(e.value) and "offline" in str(e.value)


def test_shipped_config_and_dummy_weights(tmp_path):
    from floorline.weights.loader import load_model_config

    source = resolve_model("llama-3.2-1b")
    cfg = load_model_config(source)
    assert source.kind == "config" and cfg.num_layers == 16 and cfg.tie_word_embeddings
    # Dummy weights for a config-only directory (a shipped config's shape, shrunk to stay fast).
    small = json.loads(source.path.read_text()) | {"num_hidden_layers": 2, "hidden_size": 128,
                                                    "intermediate_size": 256, "vocab_size": 512}
    (tmp_path / "config.json").write_text(json.dumps(small))
    llm = LLM(str(tmp_path), load_format="dummy", device="cpu", max_model_len=64, num_kv_blocks=16)
    assert llm.tokenizer is None
    torch.testing.assert_close(llm.engine.model.lm_head.weight, llm.engine.model.embed_tokens.weight)
    out = llm.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))[0]
    assert len(out.outputs[0].token_ids) == 4
