"""Turns what the user typed (--model) into a model source: a GGUF file, an HF directory, or a shipped config."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from floorline.errors import CorruptFileError, ModelNotFoundError
from floorline.weights.bundled import BUNDLED_MODEL_NAME, bundled_model_path

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class ModelSource:
    """Where a model's config, weights and tokenizer come from."""

    kind: str  # "gguf" | "hf_dir" | "config"
    path: Path  # the .gguf file, the HF directory, or the shipped config.json
    name: str

    @property
    def has_weights(self) -> bool:
        return self.kind != "config"


def shipped_config_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def resolve_model(spec: str | None) -> ModelSource:
    """Resolves `spec`; raises ModelNotFoundError saying everywhere it looked."""
    if spec is None or spec.lower() in (BUNDLED_MODEL_NAME, "default"):
        return ModelSource("gguf", bundled_model_path(), BUNDLED_MODEL_NAME)
    looked: list[str] = []
    path = Path(spec).expanduser()
    if path.exists():
        return _from_path(path)
    looked.append(f"path {path.resolve()}")
    shipped = CONFIG_DIR / f"{spec.lower()}.json"
    if shipped.is_file():
        return ModelSource("config", shipped, spec.lower())
    looked.append(f"shipped configs ({', '.join(shipped_config_names())})")
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        cached = _hf_cache_snapshot(spec)
        if cached is not None:
            return _from_path(cached)
        looked.append(f"the Hugging Face cache ({_hf_cache_dir()})")
        downloaded, why = _download(spec)
        if downloaded is not None:
            return _from_path(downloaded)
        looked.append(f"the Hugging Face hub ({why})")
    raise ModelNotFoundError(f"model {spec!r} not found; looked in: {'; '.join(looked)}")


def load_hf_config(source: ModelSource) -> dict[str, Any]:
    """The source's Hugging Face config: its config.json, or for a GGUF file the one its metadata gives."""
    if source.kind == "gguf":
        from floorline.weights.gguf_config import gguf_to_hf_config
        from floorline.weights.gguf_file import GGUFFile

        return gguf_to_hf_config(GGUFFile(source.path))
    path = source.path if source.kind == "config" else source.path / "config.json"
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise CorruptFileError(f"{path}: not valid JSON ({e})") from None


def _from_path(path: Path) -> ModelSource:
    if path.is_file():
        if path.suffix == ".gguf":
            return ModelSource("gguf", path, path.stem)
        if path.name == "config.json":
            return _from_path(path.parent)
        raise ModelNotFoundError(f"{path} is neither a .gguf file nor a model directory (config.json + *.safetensors)")
    if (path / "config.json").is_file():
        return ModelSource("hf_dir", path, path.name)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSource("gguf", ggufs[0], ggufs[0].stem)
    if len(ggufs) > 1:
        names = ", ".join(g.name for g in ggufs[:4])
        raise ModelNotFoundError(f"{path} holds several .gguf files ({names}); pass the file itself")
    raise ModelNotFoundError(f"{path} has no config.json and no .gguf file")


def _hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return home / "hub"


def _hf_cache_snapshot(repo_id: str) -> Path | None:
    repo_dir = _hf_cache_dir() / f"models--{repo_id.replace('/', '--')}"
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        snap = repo_dir / "snapshots" / ref.read_text().strip()
        if snap.is_dir():
            return snap
    snaps = sorted((repo_dir / "snapshots").glob("*")) if (repo_dir / "snapshots").is_dir() else []
    return snaps[-1] if snaps else None


def _download(repo_id: str) -> tuple[Path | None, str]:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return None, "offline: HF_HUB_OFFLINE=1"
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None, "huggingface_hub is not installed: pip install floorline[hub]"
    try:
        patterns = ["*.json", "*.safetensors", "tokenizer*", "*.jinja"]
        return Path(snapshot_download(repo_id, allow_patterns=patterns)), ""
    except Exception as e:  # network down, repo missing, gated...
        return None, f"download failed: {type(e).__name__}"
